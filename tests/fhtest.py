"""Helpers shared by the tests: where things are, and a real primary.

Importable from test modules because conftest.py puts this directory (and
only it: never the checkout, whose forkhost/ has no compiled parts) on
sys.path.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import select
import shutil
import socket
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

import forkhost
import forkhost._runtime

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
ROOT = HERE.parent
RUNNER = shutil.which("forkhost-run")


class PrimaryProc:
    """A `forkhost primary` subprocess on a private prefix."""

    def __init__(self, runtime_dir: str, prefix: str = "t", args=(), env=None,
                 cwd=HERE):
        self.runtime_dir = runtime_dir
        self.prefix = prefix
        self.env = dict(os.environ if env is None else env,
                        FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX=prefix)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forkhost", "primary", "--grace", "2", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            cwd=str(cwd))
        self.ready = self.proc.stdout.readline().decode()
        if "ready" not in self.ready:
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"primary did not start: {self.ready}{out.decode()}"
                                 f"{err.decode()}")
        cfg = forkhost._runtime.read_config(forkhost._runtime.paths(prefix, runtime_dir))
        self.pid = cfg["pid"]
        self.template_pid = cfg["template_pid"]
        self.socket = cfg["socket"]
        self.config = cfg

    def run(self, *argv, **kw) -> subprocess.CompletedProcess:
        """forkhost-run ARGV with this primary's prefix; captures output."""
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 60)
        env = dict(self.env, **kw.pop("extra_env", {}))
        return subprocess.run([RUNNER, *map(str, argv)], env=env, **kw)

    def popen(self, *argv, **kw) -> subprocess.Popen:
        env = dict(self.env, **kw.pop("extra_env", {}))
        return subprocess.Popen([RUNNER, *map(str, argv)], env=env, **kw)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out.decode(), err.decode()


# -- waiting and looking at processes --------------------------------------

def wait_until(pred, timeout: float = 30.0, what: str = "the condition",
               interval: float = 0.01):
    """Poll pred() until it is truthy and return its value; fail after
    timeout seconds (a generous bound, never a performance threshold)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, T, Z, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def ended(pid: int) -> bool:
    """The process has exited.  A zombie counts: PID 1 of a container may
    never reap orphans (a killed primary's template is one)."""
    return proc_state(pid) in (None, "Z", "X")


def end_template(pid: int) -> None:
    """A template a test left running after its primary was killed (an
    orphan, --on-primary-death survive: its parent is init, and its title
    hides its runtime directory from the leak guard): stopped as a primary
    stops it (SIGTERM; it ends its pool and secondaries)."""
    if not ended(pid):
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: ended(pid), what=f"template {pid} to end")


def describe(pid: int) -> str:
    """A process's state and signal masks, for a failure message."""
    try:
        with open(f"/proc/{pid}/status") as f:
            keep = [line.strip().replace("\t", " ") for line in f
                    if line.startswith(("Name", "State", "SigPnd", "ShdPnd", "SigBlk",
                                        "SigIgn", "SigCgt", "Threads"))]
        with open(f"/proc/{pid}/wchan") as f:
            keep.append(f"wchan {f.read()}")
        return f"pid {pid}: " + ", ".join(keep)
    except OSError:
        return f"pid {pid}: gone"


def forkhost_procs(runtime_dir: str) -> list[psutil.Process]:
    """Every process (but this one) of a runtime directory: named in its
    command line or its FORKHOST_RUNTIME_DIR.  Read from /proc directly:
    every test's fixtures ask, and psutil's per-process objects cost more
    than the reading."""
    name = runtime_dir.encode()
    var = b"\0FORKHOST_RUNTIME_DIR=" + name + b"\0"
    found = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit() or int(e.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{e.name}/cmdline", "rb") as f:
                hit = name in f.read()
            if not hit:
                with open(f"/proc/{e.name}/environ", "rb") as f:
                    hit = var in b"\0" + f.read()
            if hit:
                found.append(psutil.Process(int(e.name)))
        except (OSError, psutil.Error):
            pass            # gone, or not ours to read
    return found


def children_of(pid: int) -> list[int]:
    """pid's children, zombies included: those of each of its threads
    (a child belongs to the thread that forked it)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += map(int, f.read().split())
        except OSError:
            pass        # the thread ended meanwhile
    return out


def secondary_pids(prefix: str, runtime_dir: str) -> list[int]:
    """The running secondaries, as the template reports them (INFO)."""
    return [s["pid"] for s in forkhost.info(prefix, runtime_dir)["secondaries"]]


@contextlib.contextmanager
def signals_job(proc: subprocess.Popen, find_secondary):
    """A client running a "signals" program (fhfix:signals, its C twins,
    proc_type.c's) as a shell's job: waits for its "ready", yields its
    output and the secondary's pid (find_secondary()); on the way out
    checks that both run and forward (SIGUSR1 goes through, SIGTERM ends
    it with 3), and reaps the client whatever happened."""
    try:
        out = LineReader(proc.stdout)
        assert out.readline() == b"ready\n"
        yield out, find_secondary()
        proc.send_signal(signal.SIGUSR1)
        assert out.readline() == b"SIGUSR1\n"
        proc.send_signal(signal.SIGTERM)
        assert out.readline() == b"SIGTERM\n"
        assert proc.wait(30) == 3
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        reap(proc)


def stop_and_resume(proc, out, sec: int, stop) -> None:
    """stop() stops the job: the secondary and the client end up stopped;
    a SIGCONT to the client (the shell's fg) resumes both."""
    stop()
    wait_until(lambda: proc_state(sec) == "T", what="the secondary to stop")
    wait_until(lambda: proc_state(proc.pid) == "T", what="the client to stop")
    proc.send_signal(signal.SIGCONT)
    # The program (fhfix:signals and its twins) prints SIGCONT: the
    # client forwarded it once resumed.
    assert out.readline() == b"SIGCONT\n"
    wait_until(lambda: proc_state(proc.pid) in ("S", "R"), what="the client to run")
    wait_until(lambda: proc_state(sec) in ("S", "R"), what="the secondary to run")


class LineReader:
    """Read lines from a pipe with a timeout, without a buffered reader
    hiding data from select()."""

    def __init__(self, fileobj):
        self.fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self.buf = b""

    def readline(self, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not r:
                raise AssertionError(f"no line within {timeout:g}s (have {self.buf!r})")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                line, self.buf = self.buf, b""
                return line        # EOF: whatever was left, maybe b""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def rest(self, timeout: float = 30.0) -> bytes:
        """Everything until EOF."""
        out = []
        while True:
            line = self.readline(timeout)
            if not line:
                return b"".join(out)
            out.append(line)


def reap(*procs: subprocess.Popen, timeout: float = 30.0) -> None:
    """Kill (if still running), wait for and close the pipes of procs."""
    for p in procs:
        if p is None:
            continue
        if p.poll() is None:
            p.kill()
        p.wait(timeout)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass    # stdin's unflushed bytes, to a process now gone


# -- what a template holds -------------------------------------------------
# (test_soak.py and the reliability suite, stress/, compare these before and
# after many launches)

def pool_title(pid: int) -> bool:
    """The process is an idle pool member (by its title)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"forkhost pool [")
    except FileNotFoundError:
        return False


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled(template_pid: int, pool: int = 2) -> int:
    """Wait until the template is idle with a full pool of `pool` members
    (no secondary left to reap, no member missing) and its fd count holds
    still; return that count."""
    def idle():
        kids = children_of(template_pid)
        return len(kids) == pool and all(pool_title(k) for k in kids)

    wait_until(idle, what="the template to be idle with a full pool")
    last = []

    def steady():
        last.append(fd_count(template_pid))
        return len(last) >= 3 and last[-1] == last[-2] == last[-3]

    wait_until(steady, what="the template's fd count to hold still", interval=0.1)
    return last[-1]


def launch_mix(prefix: str, runtime_dir: str, env: dict, native_so: str,
               n: int) -> int:
    """n launches of every kind, each waited for: Python and native entries,
    forkhost.launch() and forkhost-run, and one in 20 a launch the template
    refuses (127).  Returns how many were refused."""
    kw = dict(prefix=prefix, runtime_dir=runtime_dir, cwd=FIXTURES,
              stdout=forkhost.DEVNULL, stderr=forkhost.DEVNULL)
    refused = 0
    for i in range(n):
        k = i % 20
        if k < 14:
            with forkhost.launch("fhfix:exit_with", ["0"], **kw) as sec:
                assert sec.wait(30) == 0
        elif k < 17:
            with forkhost.launch(native_so, ["exit", "3"], **kw) as sec:
                assert sec.wait(30) == 3
        elif k < 19:
            r = subprocess.run([RUNNER, "fhfix:exit_with", "5"], env=env,
                               cwd=FIXTURES, timeout=60)
            assert r.returncode == 5
        else:
            try:
                forkhost.launch("no_such_script.py", **kw)
            except forkhost.RefusedError as err:
                assert err.exit_code == 127
                refused += 1
            else:
                raise AssertionError("a launch of a missing script was not refused")
    return refused


# -- the native fixture ---------------------------------------------------

@functools.cache
def forkhost_flags() -> tuple[str, ...]:
    """`forkhost config --cflags --libs`, as the fixtures' C is built with
    (asked once per process)."""
    return tuple(subprocess.run(["forkhost", "config", "--cflags", "--libs"],
                                capture_output=True, text=True, check=True).stdout.split())


def build_native_so(outdir: Path) -> str:
    """tests/fixtures/native_entry.c as a shared object linked to libforkhost."""
    flags = forkhost_flags()
    out = Path(outdir) / "entry.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out),
                    str(FIXTURES / "native_entry.c"), *flags], check=True)
    return str(out)


# Entries that do the same thing in Python and in C, by name.
def entry(kind: str, name: str, native_so: str) -> str:
    return f"fhfix:{name}" if kind == "python" else f"{native_so}:{name}"


def raw_connect(path: str) -> socket.socket:
    """A raw client connection to a template socket (a hostile or test
    client that speaks the protocol itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(30)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


# -- what this machine and user allow ----------------------------------------
# A test that needs more than an ordinary user on any Linux skips with the
# reason instead of failing: the suite runs anywhere.

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def need_root(why: str) -> None:
    """Skip the calling test unless it runs as root; why: what needs it."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def meminfo(field: str) -> int:
    """A /proc/meminfo figure (kB for sizes, a count for HugePages_*)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    pytest.skip(f"no huge pages here: /proc/meminfo has no {field}")


def free_huge_pages() -> int:
    """Free huge pages no mapping has reserved."""
    return meminfo("HugePages_Free") - meminfo("HugePages_Rsvd")


def _read_nr_hugepages() -> int:
    with open(NR_HUGEPAGES) as f:
        return int(f.read())


@contextlib.contextmanager
def more_huge_pages(extra: int):
    """extra more pages in the kernel's huge page pool for the test (yields
    the huge page size), given back after.  Skips when this user or kernel
    cannot: not root, no huge page support, a pool that cannot be sized (a
    container's read-only /proc/sys) or that the kernel does not grow."""
    need_root(f"sizing the huge page pool ({NR_HUGEPAGES})")
    size = meminfo("Hugepagesize") * 1024
    try:
        before = _read_nr_hugepages()
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before + extra))
    except OSError as err:
        pytest.skip(f"cannot size the huge page pool here: {err}")
    try:
        got = _read_nr_hugepages() - before
        if got < extra:
            pytest.skip(f"the kernel gave {got} of {extra} more huge pages")
        yield size
    finally:
        with open(NR_HUGEPAGES, "w") as f:
            f.write(str(before))


# -- shared primaries -------------------------------------------------------

# Primaries shared by the tests of a module (shared_primary): the leak
# guard leaves them and what they start to the fixture, which checks after
# every test that no secondary of theirs is left.
SHARED_PRIMARIES: set[int] = set()


# The run's tests marked exclusive, when they come first (conftest's
# order): the others start once all of them are done (exclusive_done).
EXCLUSIVE_TESTS = 0
# How long the others wait for that at most (a worker may die in one).
EXCLUSIVE_WAIT = 120.0


def _exclusive_done_file(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp().parent / "exclusive.done"


def exclusive_done(tmp_path_factory) -> None:
    """Count one exclusive test of this run as done, passed or not."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        with open(_exclusive_done_file(tmp_path_factory), "a") as f:
            f.write("x")        # one byte each, appended


@contextlib.contextmanager
def run_lock(tmp_path_factory, exclusive: bool):
    """Under pytest-xdist, the lock that keeps an exclusive test alone:
    shared by the rest, on a file of this run, which take it only once
    the exclusive tests are all done (EXCLUSIVE_TESTS).  A gate taken
    around each request keeps a waiting exclusive test from being
    overtaken by the other workers' next tests.  Without xdist, nothing."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    if not exclusive and EXCLUSIVE_TESTS:
        done = _exclusive_done_file(tmp_path_factory)
        deadline = time.monotonic() + EXCLUSIVE_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(done).st_size >= EXCLUSIVE_TESTS:
                    break
            time.sleep(0.02)
    shared = tmp_path_factory.getbasetemp().parent      # the workers' common one
    with open(shared / "exclusive.gate", "a") as gate, \
            open(shared / "exclusive.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_primary(p: PrimaryProc) -> tuple[str, str]:
    """Stop p: it must exit 0 and its template must be gone; its stdout
    and stderr."""
    code, out, err = p.stop()
    assert code == 0, f"primary exited {code}: {err}"
    assert not psutil.pid_exists(p.template_pid) or \
        psutil.Process(p.template_pid).status() == psutil.STATUS_ZOMBIE
    return out, err


@contextlib.contextmanager
def module_primary(tmp_path_factory, args=(), env=None, *, prefix: str = "t",
                   make=None, stop=stop_primary, check_stop=None):
    """A primary (started with ARGS, ENV if given and PREFIX) for a
    module-scoped fixture: see shared_primary, and leaves_nothing for the
    check after each test.  make(runtime_dir), if given, starts it instead
    (a module's own way of starting a primary), and stop(p) stops it,
    giving (out, err).  check_stop(out, err), if given, checks what the
    primary wrote by the time it stopped, at the module's end."""
    d = tempfile.mkdtemp(prefix="fh-", dir="/tmp")
    try:
        with run_lock(tmp_path_factory, False):
            p = make(d) if make is not None else \
                PrimaryProc(d, prefix=prefix, args=args, env=env)
        SHARED_PRIMARIES.add(p.proc.pid)
        try:
            yield p
        finally:
            SHARED_PRIMARIES.discard(p.proc.pid)
            with run_lock(tmp_path_factory, False):
                out, err = stop(p)
            if check_stop is not None:
                check_stop(out, err)
    finally:
        strays = forkhost_procs(d)
        for proc in strays:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)
    assert not strays, f"stray forkhost processes left: {[proc.pid for proc in strays]}"


@contextlib.contextmanager
def leaves_nothing(p: PrimaryProc):
    """Around one test on a shared primary: it is alive before, and every
    secondary the test launched has ended after."""
    assert p.proc.poll() is None, f"the shared primary died: {p.proc.returncode}"
    yield p
    no_secondaries_left(p.prefix, p.runtime_dir)


def no_secondaries_left(prefix: str, runtime_dir: str) -> None:
    """Wait (a few seconds) until no secondary of the prefix runs; fail,
    killing those left, if some still do."""
    left = []

    def none_left():
        left[:] = secondary_pids(prefix, runtime_dir)
        return not left
    try:
        wait_until(none_left, timeout=5, what="the secondaries to end")
    except AssertionError:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"secondaries left running: {left}") from None
