"""What every part of the suite shares: its results, a private runtime
directory that is checked for stray processes when it goes, and samples
of what a process holds (fds, RSS) and of its children."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import forkhost
from fhtest import (RUNNER, PrimaryProc, children_of, fd_count, forkhost_procs,
                    pool_title, proc_state, rss_bytes, settled, wait_until)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"        # stressfix.py: the suite's entries and preload

# The counts of a run by hand (`python -m stress --all`): the issue's.
FULL = dict(kill_rounds=1, burst=16, launch_count=1_000_000, ipc_count=1_000_000,
            soak=10_000, clients=(200, 1000), max_secondaries=50)

# What a process's RSS may grow by over a whole part (after its warm-up)
# and still count as flat: allocator arenas and caches settle in steps.
RSS_SLACK = 1 << 20


class Skip(Exception):
    """A cell that cannot run here (its reason is the message)."""


@dataclass
class Cell:
    name: str
    expected: str
    observed: str = ""
    ok: bool = False
    expected_fail: str = ""      # the fix it asserts (what a failure points at)
    skipped: str = ""            # why it could not run here


@dataclass
class Result:
    part: str
    counts: dict = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    duration: float = 0.0

    @property
    def failures(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]

    def check(self, name: str, expected: str, fn, expected_fail: str = "") -> Cell:
        """Run fn() -> observed text; an AssertionError (or any error) is
        the cell's failure, with its message as what was observed."""
        cell = Cell(name, expected, expected_fail=expected_fail)
        try:
            cell.observed = fn() or "as expected"
            cell.ok = True
        except Skip as why:
            cell.ok, cell.skipped = True, str(why)
            cell.observed = f"skipped: {why}"
        except Exception as exc:             # noqa: BLE001 (a cell's failure, reported)
            text = re.sub(r"/[^\s'\"]*/site-packages/", ".../site-packages/",
                          f"{type(exc).__name__}: {exc}")
            cell.observed = text.replace("\n", " ")[:600]
        self.cells.append(cell)
        return cell

    def summary(self) -> str:
        bad = self.failures
        lines = [f"== {self.part}: {len(self.cells) - len(bad)}/{len(self.cells)} "
                 f"cells as expected, {self.duration:.1f} s"]
        for c in self.cells:
            mark = "skip" if c.skipped else "ok  " if c.ok else "FAIL"
            lines.append(f"  {mark} {c.name}: {c.observed}")
        for k, v in self.figures.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


def sample(pid: int) -> tuple[int, int]:
    """(open fds, RSS in bytes) of a process, from /proc."""
    return fd_count(pid), rss_bytes(pid)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Runtime:
    """A private runtime directory (short: socket paths are limited to 108
    bytes) and the primaries started on it."""

    def __init__(self, dir: str | None = None):
        self.own = dir is None              # ours to remove
        self.dir = tempfile.mkdtemp(prefix="fhs-", dir="/tmp") if dir is None else dir
        self.primaries: list[PrimaryProc] = []

    def primary(self, prefix: str = "s", args=(), pool: int = 2) -> PrimaryProc:
        """A `forkhost primary` with the suite's preload (its IPC actions)."""
        p = PrimaryProc(self.dir, prefix,
                        args=("--pool", str(pool), "--preload", "stressfix", *args),
                        env=dict(os.environ, STRESS_PRIMARY="1"), cwd=FIXTURES)
        self.primaries.append(p)
        _live_primaries.add(p.proc.pid)
        return p

    def close(self) -> list[int]:
        """Stop every primary still running, kill and return the strays."""
        for p in self.primaries:
            stop(p)
        strays = forkhost_procs(self.dir)
        for s in strays:
            try:
                s.kill()
            except psutil.Error:
                pass
        if self.own:
            shutil.rmtree(self.dir, ignore_errors=True)
        return [s.pid for s in strays]


def stop(p: PrimaryProc, sig=signal.SIGTERM) -> tuple[int, str, str]:
    """Stop a primary (once; later calls return the first result)."""
    if getattr(p, "result", None) is None:
        if p.proc.poll() is None:
            p.proc.send_signal(sig)
        try:
            out, err = p.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            out, err = p.proc.communicate()
        p.proc.stdout.close()
        p.proc.stderr.close()
        p.result = (p.proc.returncode, out.decode(), err.decode())
        _live_primaries.discard(p.proc.pid)
    return p.result


@contextmanager
def runtime(result: Result, dir: str | None = None):
    rt = Runtime(dir)
    try:
        yield rt
    finally:
        strays = rt.close()
        result.check("no stray process of the runtime directory",
                     "every process of the prefix ended with its primary",
                     lambda: _no_strays(strays))


def _no_strays(strays):
    assert not strays, f"stray forkhost processes: {strays}"
    return "none"


# -- processes ----------------------------------------------------------------

def zombies_of(pid: int) -> list[int]:
    return [k for k in children_of(pid) if proc_state(k) == "Z"]


def template_settled(p: PrimaryProc, pool: int = 2) -> int:
    """The template idle with a full pool and a steady fd count; no zombie
    among its children.  Returns its fd count."""
    n = settled(p.template_pid, pool)
    z = zombies_of(p.template_pid)
    assert not z, f"zombies under the template: {z}"
    return n


def primary_settled(p: PrimaryProc) -> int:
    """The primary's fd count once it holds still (IPC members leave a
    little after their processes end)."""
    last = []

    def steady():
        last.append(fd_count(p.pid))
        return len(last) >= 3 and last[-1] == last[-2] == last[-3]

    wait_until(steady, what="the primary's fd count to hold still", interval=0.1)
    assert children_of(p.pid) == [p.template_pid], \
        f"the primary's children: {children_of(p.pid)}"
    return last[-1]


def serves(p: PrimaryProc) -> str:
    """The template launches, and the primary answers an IPC request from
    the secondary (stressfix:ipc_echo exits 0 only then)."""
    r = p.run("stressfix:ipc_echo", cwd=FIXTURES)
    assert r.returncode == 0, f"a launch after it: {r.returncode} {r.stderr!r}"
    return "serves launches and IPC"


def info(p: PrimaryProc) -> dict:
    return forkhost.info(p.prefix, p.runtime_dir)


def my_children() -> list[psutil.Process]:
    """This process's children but the primaries still running (a client
    left behind, a zombie not reaped)."""
    return [c for c in psutil.Process().children()
            if c.pid not in _live_primaries]


_live_primaries: set[int] = set()


def kill(pid: int, sig=signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def runner() -> str:
    assert RUNNER, "forkhost-run is not on PATH: run `pip install '.[test]'`"
    return RUNNER


class Stopwatch:
    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.t0


__all__ = ["FULL", "Skip", "Cell", "Result", "Runtime", "runtime", "sample", "mib", "zombies_of",
           "template_settled", "primary_settled", "serves", "info", "my_children",
           "kill", "runner", "Stopwatch", "stop", "pool_title", "RSS_SLACK", "FIXTURES"]
