"""The odds that a classic attach collides under ASLR.

A classic (DPDK-style) secondary is a separate program: it must map a
prefix's arena at the primary's address (forkhost/shm/attach.py,
MAP_FIXED_NOREPLACE), and that fails with EEXIST when ASLR put one of its
own mappings there.  ``odds()`` measures how often that happens for a given
program: it starts the program ``runs`` times under the machine's normal
ASLR, stops each one at its ELF entry point (after the kernel and the
dynamic loader have mapped the executable, the loader, the vDSO, the stack
and every DT_NEEDED library, before the program's own constructors and
``main`` run), reads /proc/PID/maps, kills and reaps it, and counts the runs
in which some mapping overlaps each range.  It also reports the "free
ranges", the address ranges no run ever had a mapping in.

How a run is stopped before main (x86-64 only): the child asks to be traced
(PTRACE_TRACEME) and execs the program, which stops it with SIGTRAP right
after the exec, before the dynamic loader has run.  The tracer (this
process) reads AT_ENTRY from /proc/PID/auxv, writes an int3 there with
PTRACE_POKETEXT, continues, and waits for the trap.  The child is either
forked by os.fork() (when this process has a single thread: nothing can
hold a lock across the fork) or, in a multi-threaded process, spawned with
posix_spawn as a tiny Python helper that makes the same two calls; either
way the traced process is this process's own child.  PTRACE_O_EXITKILL
kills it if this process dies mid-run; every path kills and reaps it.

Exit statuses of main_odds (``forkhost attach --odds``): 0 no run collided
with any range, 1 at least one run collided, 2 usage or bad input (a
malformed range, no range and no primary on the prefix, a program that
cannot be started or that ends before its entry point, ptrace refused).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import math
import os
import platform
import re
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import _layout as layout, _runtime as runtime
from ._errors import ForkhostError

EXIT_CLEAN = 0          # no run collided
EXIT_COLLIDED = 1       # at least one run collided with a range
EXIT_USAGE = 2          # usage / bad input / the program cannot be measured

PAGE = os.sysconf("SC_PAGE_SIZE")
# The 47-bit user address space the kernel hands out on x86-64 (also with
# 5-level paging, unless a program asks for higher addresses).
USER_TOP = 0x7FFFFFFFF000
DEFAULT_RUNS = 100
RUN_TIMEOUT = 10.0      # seconds for one run to reach its entry point
FREE_RANGES_SHOWN = 5

_PTRACE_TRACEME = 0
_PTRACE_PEEKTEXT = 1
_PTRACE_POKETEXT = 4
_PTRACE_CONT = 7
_PTRACE_GETREGS = 12
_PTRACE_SETOPTIONS = 0x4200
_PTRACE_O_EXITKILL = 0x100000
_AT_BASE = 7
_AT_ENTRY = 9
_RIP = 16               # index of rip in x86-64 struct user_regs_struct
_NREGS = 27
_ADDR_NO_RANDOMIZE = 0x0040000

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_personality = _libc.personality
_personality.restype = ctypes.c_int
_personality.argtypes = [ctypes.c_ulong]

# The helper for multi-threaded callers (posix_spawn, no Python code runs in
# a forked copy of this process): trace me, close the error pipe on exec,
# exec the program; report a failure as "what:errno" on fd 3.
_HELPER = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(0, 0, None, None) != 0:
    os.write(3, b"ptrace:%d" % ctypes.get_errno())
    os._exit(127)
os.set_inheritable(3, False)
try:
    os.execve(sys.argv[1], sys.argv[2:], os.environ)
except OSError as err:
    os.write(3, b"exec:%d" % err.errno)
os._exit(127)
"""


class OddsError(ForkhostError):
    """Bad input, or a program that cannot be measured (exit status 2)."""

    exit_code = EXIT_USAGE


# -- ranges ------------------------------------------------------------------

@dataclass(frozen=True)
class AddrRange:
    start: int
    end: int            # exclusive
    label: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start

    def overlaps(self, start: int, end: int) -> bool:
        return start < self.end and self.start < end

    def __str__(self) -> str:
        return f"0x{self.start:x}-0x{self.end:x}"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NUM_RE = re.compile(r"^(0[xX][0-9a-fA-F_]+|[0-9][0-9_]*)([KMGT]?)$")


def _number(text: str, what: str, whole: str) -> int:
    m = _NUM_RE.match(text.strip().upper().replace("0X", "0x").removesuffix("B")
                      .removesuffix("I"))
    if not m:
        raise OddsError(f"invalid range {whole!r}: {what} {text.strip()!r} is not a "
                        f"number (use hex 0x... or decimal, optionally K/M/G/T)")
    return int(m.group(1), 0) * _UNITS[m.group(2)]


def parse_range(text: str) -> AddrRange:
    """``START-END`` (END exclusive) or ``START+SIZE``; each number hex
    (0x...) or decimal, with an optional binary K/M/G/T suffix."""
    s = text.strip()
    if "+" in s:
        a, _, b = s.partition("+")
        start = _number(a, "start", text) if a.strip() else None
        size = _number(b, "size", text) if b.strip() else None
        if start is None or size is None:
            raise OddsError(f"invalid range {text!r}: use START-END or START+SIZE")
        end = start + size
    elif "-" in s:
        a, _, b = s.partition("-")
        if not a.strip() or not b.strip():
            raise OddsError(f"invalid range {text!r}: use START-END or START+SIZE")
        start, end = _number(a, "start", text), _number(b, "end", text)
    else:
        raise OddsError(f"invalid range {text!r}: use START-END or START+SIZE "
                        f"(e.g. 0x100000000+64M)")
    if end <= start:
        raise OddsError(f"invalid range {text!r}: it is empty (the end must be above "
                        f"the start)")
    if end > 1 << 64:
        raise OddsError(f"invalid range {text!r}: it ends beyond the 64-bit address space")
    return AddrRange(start, end, str(AddrRange(start, end)))


def arena_range(prefix: str | None = None, runtime_dir=None) -> tuple[int, int]:
    """(base, base + max) of the prefix's arena (the whole range it maps,
    which it grows into), from its config.json."""
    p = runtime.paths(prefix, runtime_dir)
    cfg = runtime.read_config(p)
    if not cfg or "arena" not in cfg:
        raise OddsError(f"no range: prefix {p.prefix!r} has no primary (no "
                        f"{p.config}); start one or give --range")
    arena = cfg["arena"]
    base, size = int(arena["base"]), int(arena.get("max", arena["size"]))
    return base, base + size


# -- /proc -------------------------------------------------------------------

@dataclass(frozen=True)
class Occupant:
    start: int
    end: int
    perms: str
    path: str           # "" for anonymous, "[heap]", "/usr/lib/.../libc.so.6"
    name: str           # what the report calls it
    kind: str           # program, loader, library, file, heap, stack, vdso, vvar,
    #                     anonymous, special

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "perms": self.perms,
                "path": self.path, "name": self.name, "kind": self.kind}


def _parse_maps(text: str, exe: str, loader: str) -> list[Occupant]:
    """A run's mappings (layout.parse_maps), named for the report."""
    out = []
    for m in layout.parse_maps(text):
        path = m.path
        if not path:
            name, kind = "anonymous", "anonymous"
        elif path.startswith("["):
            kind = {"[heap]": "heap", "[stack]": "stack", "[vdso]": "vdso",
                    "[vvar]": "vvar", "[vvar_vclock]": "vvar"}.get(path, "special")
            name = path
        else:
            base = os.path.basename(path)
            if path == exe:
                name, kind = f"{base} (the program)", "program"
            elif path == loader:
                name, kind = f"{base} (the dynamic loader)", "loader"
            elif ".so" in base:
                name, kind = base, "library"
            else:
                name, kind = base, "file"
        out.append(Occupant(m.start, m.end, m.perms, path, name, kind))
    return out


def aslr_setting() -> int | None:
    """/proc/sys/kernel/randomize_va_space: 0 off, 1 stack/mmap/vDSO, 2 also brk."""
    try:
        with open("/proc/sys/kernel/randomize_va_space") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


_ASLR_MEANING = {0: "off", 1: "stack, mmap, vDSO and PIE randomised; heap (brk) not",
                 2: "full: stack, mmap, vDSO, PIE and heap (brk) randomised"}


def _no_randomize_personality() -> bool:
    """setarch -R (or a debugger) turned ASLR off for this process and its
    children: the personality flag is inherited."""
    pers = _personality(0xFFFFFFFF)
    return pers != -1 and bool(pers & _ADDR_NO_RANDOMIZE)


def _mmap_min_addr() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr") as f:
            return max(PAGE, int(f.read().strip()))
    except (OSError, ValueError):
        return 0x10000


# -- one stopped run -----------------------------------------------------------

@dataclass
class RunLayout:
    """One run's address space at its entry point."""

    index: int
    pid: int
    entry: int
    maps: list[Occupant]


def _resolve(program: str, env: dict) -> str:
    """The file execve will run, as execvp would find it; OddsError if none."""
    if "/" in program:
        candidates = [program]
    else:
        dirs = (env.get("PATH") or os.defpath).split(os.pathsep)
        candidates = [os.path.join(d or ".", program) for d in dirs]
    denied = None
    for c in candidates:
        if os.path.isdir(c):
            if "/" in program:
                raise OddsError(f"cannot start {program!r}: it is a directory")
            continue
        if os.path.exists(c):
            if os.access(c, os.X_OK):
                return c
            denied = denied or c
    if denied:
        raise OddsError(f"cannot start {program!r}: {denied} is not executable "
                        f"(permission denied)")
    if "/" in program:
        raise OddsError(f"cannot start {program!r}: no such file")
    raise OddsError(f"cannot start {program!r}: not found in PATH")


def _high_fd(fd: int) -> int:
    """A CLOEXEC duplicate of fd at 10 or above (then closes fd), so that
    dup2 onto 0-3 in the child never meets the same number."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def _ptrace_call(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    rc = _ptrace(req, pid, addr, data)
    e = ctypes.get_errno()
    if rc == -1 and e:
        raise OSError(e, f"ptrace({req}): {os.strerror(e)}")
    return rc


def _regs_rip(pid: int) -> int:
    regs = (ctypes.c_ulonglong * _NREGS)()
    _ptrace_call(_PTRACE_GETREGS, pid, 0, ctypes.addressof(regs))
    return regs[_RIP]


def _auxv(pid: int) -> dict[int, int]:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        data = f.read()
    vals = {}
    for key, val in struct.iter_unpack("=QQ", data[: len(data) // 16 * 16]):
        if key == 0:
            break
        vals[key] = val
    return vals


def _wait(pid: int, deadline: float) -> int | None:
    """waitpid(pid) with a deadline; the status, or None when it passed."""
    delay = 0.0001
    while True:
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            raise OddsError(f"run process {pid} was reaped by someone else (a SIGCHLD "
                            f"handler in this process?)") from None
        if wpid:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def _spawn(path: str, argv: list[str], env: dict, errfile: int, threaded: bool) -> int:
    """Start the traced child (stopped at its exec), return its pid."""
    r, w = os.pipe()
    r, w = _high_fd(r), _high_fd(w)
    null = _high_fd(os.open(os.devnull, os.O_RDWR))
    pid = -1
    try:
        if threaded:
            pid = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", "-c", _HELPER, path, *argv],
                env, file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                   (os.POSIX_SPAWN_DUP2, null, 1),
                                   (os.POSIX_SPAWN_DUP2, errfile, 2),
                                   (os.POSIX_SPAWN_DUP2, w, 3)],
                setsigmask=())
        else:
            pid = os.fork()
            if pid == 0:          # the child: no allocation-heavy work here
                try:
                    signal.pthread_sigmask(signal.SIG_SETMASK, ())
                    os.dup2(null, 0)
                    os.dup2(null, 1)
                    os.dup2(errfile, 2)
                    if _ptrace(_PTRACE_TRACEME, 0, None, None) != 0:
                        os.write(w, b"ptrace:%d" % ctypes.get_errno())
                    else:
                        os.execve(path, argv, env)
                except OSError as err:
                    os.write(w, b"exec:%d" % (err.errno or 0))
                finally:
                    os._exit(127)
        os.close(w)
        w = -1
        msg = b""
        while True:               # EOF at the exec (CLOEXEC) or the child's exit
            chunk = os.read(r, 256)
            if not chunk:
                break
            msg += chunk
    except BaseException:
        if pid > 0:
            _kill_reap(pid)
        raise
    finally:
        for fd in (r, w, null):
            if fd >= 0:
                os.close(fd)
    if msg:
        _kill_reap(pid)
        what, _, num = msg.decode(errors="replace").partition(":")
        e = int(num) if num.isdigit() else 0
        if what == "ptrace":
            raise OddsError(f"cannot trace {argv[0]!r}: ptrace(PTRACE_TRACEME) failed: "
                            f"{os.strerror(e)} (a seccomp policy or a container may "
                            f"forbid ptrace)")
        raise OddsError(f"cannot start {argv[0]!r} ({path}): {os.strerror(e)}")
    return pid


def _kill_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _first_line(errfile: int) -> str:
    try:
        os.lseek(errfile, 0, os.SEEK_SET)
        text = os.read(errfile, 4096).decode(errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[0].strip() if text else ""


def _ended(program: str, status: int, errfile: int, when: str) -> OddsError:
    if os.WIFEXITED(status):
        how = f"exited with status {os.WEXITSTATUS(status)}"
    else:
        sig = os.WTERMSIG(status)
        how = f"was killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() \
            else f"was killed by signal {sig}"
    line = _first_line(errfile)
    return OddsError(f"{program!r} {how} {when}" + (f": {line}" if line else ""))


class _Ended(OddsError):
    """The traced process ended (and was reaped) before its stop."""


def _run_to_trap(pid: int, deadline: float, argv0: str, errfile: int, here,
                 tries: int, late: str, when: str, never: str) -> None:
    """Wait for pid's stops, passing every other signal on, until a SIGTRAP
    for which here() holds.  OddsError with late (deadline passed) or
    never (tries stops), _Ended when the process ended instead."""
    for _ in range(tries):
        status = _wait(pid, deadline)
        if status is None:
            raise OddsError(late)
        if not os.WIFSTOPPED(status):
            raise _Ended(str(_ended(argv0, status, errfile, when)))
        sig = os.WSTOPSIG(status)
        if sig == signal.SIGTRAP and here():
            return
        _ptrace_call(_PTRACE_CONT, pid, 0, sig)
    raise OddsError(never)


def _one_run(index: int, path: str, argv: list[str], env: dict, threaded: bool,
             timeout: float) -> RunLayout:
    tmp = tempfile.TemporaryFile()       # the program's stderr, for errors
    try:
        errfile = tmp.fileno()
        pid = _spawn(path, argv, env, errfile, threaded)
        reaped = False
        try:
            deadline = time.monotonic() + timeout
            # 1. the stop right after the exec (SIGTRAP).
            _run_to_trap(pid, deadline, argv[0], errfile, lambda: True, 64,
                         f"{argv[0]!r} did not reach its exec within {timeout:g}s",
                         "before its exec completed",
                         f"{argv[0]!r} never stopped at its exec")
            _ptrace_call(_PTRACE_SETOPTIONS, pid, 0, _PTRACE_O_EXITKILL)
            aux = _auxv(pid)
            entry, interp = aux.get(_AT_ENTRY, 0), aux.get(_AT_BASE, 0)
            if not entry:
                raise OddsError(f"{argv[0]!r}: no AT_ENTRY in /proc/{pid}/auxv")
            # 2. an int3 at the entry point, then run the dynamic loader.
            word = _ptrace_call(_PTRACE_PEEKTEXT, pid, entry, 0) & 0xFFFFFFFFFFFFFFFF
            patched = (word & ~0xFF) | 0xCC
            _ptrace_call(_PTRACE_POKETEXT, pid, entry, patched)
            _ptrace_call(_PTRACE_CONT, pid, 0, 0)
            _run_to_trap(pid, deadline, argv[0], errfile,
                         lambda: _regs_rip(pid) == entry + 1, 1024,
                         f"{argv[0]!r} did not reach its entry point within "
                         f"{timeout:g}s (a library constructor that blocks?)",
                         "before reaching its entry point",
                         f"{argv[0]!r} kept stopping before its entry point")
            # 3. the layout, then the end of it.
            with open(f"/proc/{pid}/maps") as f:
                text = f.read()
            exe = os.readlink(f"/proc/{pid}/exe")
            loader = next((m.path for m in layout.parse_maps(text)
                           if interp and m.start == interp), "")
            return RunLayout(index, pid, entry, _parse_maps(text, exe, loader))
        except _Ended:
            reaped = True
            raise
        except OSError as err:
            raise OddsError(f"cannot trace {argv[0]!r}: {err.strerror or err}") from err
        finally:
            if not reaped:
                _kill_reap(pid)
    finally:
        tmp.close()


# -- the report ----------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def human(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if n % (1 << shift) == 0 else f"{v:.1f} {unit}"
    return f"{n} bytes"


@dataclass
class RangeResult:
    range: AddrRange
    runs: int
    # run index -> the mappings of that run overlapping the range
    collisions: dict[int, list[Occupant]] = field(default_factory=dict)

    @property
    def collided(self) -> int:
        return len(self.collisions)

    @property
    def percent(self) -> float:
        return 100.0 * self.collided / self.runs if self.runs else 0.0

    def by_name(self) -> list[tuple[str, int]]:
        """(mapping name, runs in which it was in the way), most first."""
        count: dict[str, int] = {}
        for maps in self.collisions.values():
            for name in dict.fromkeys(m.name for m in maps):
                count[name] = count.get(name, 0) + 1
        return sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))

    def to_dict(self) -> dict:
        lo, hi = wilson(self.collided, self.runs)
        return {"label": self.range.label, "start": self.range.start,
                "end": self.range.end, "size": self.range.size,
                "collided": self.collided, "runs": self.runs,
                "percent": round(self.percent, 2),
                "ci95_percent": [round(100 * lo, 2), round(100 * hi, 2)],
                "mappings": dict(self.by_name()),
                "collisions": [{"run": i, "mappings": [m.to_dict() for m in ms]}
                               for i, ms in sorted(self.collisions.items())]}


@dataclass
class Report:
    program: str            # the file that was run
    argv: list[str]
    runs: int
    aslr: int | None        # /proc/sys/kernel/randomize_va_space
    no_randomize: bool      # this process runs with ADDR_NO_RANDOMIZE
    spawn: str              # "fork" or "helper"
    ranges: list[RangeResult]
    layouts: list[RunLayout]
    free: list[tuple[int, int]]    # never mapped in any run, largest first
    free_min_size: int
    user_space: tuple[int, int]
    distinct_layouts: int
    warnings: list[str]

    @property
    def exit_status(self) -> int:
        return EXIT_COLLIDED if any(r.collided for r in self.ranges) else EXIT_CLEAN

    def to_dict(self) -> dict:
        return {"program": self.program, "argv": self.argv, "runs": self.runs,
                "stopped_at": "entry point (AT_ENTRY), before main",
                "aslr": {"randomize_va_space": self.aslr,
                         "meaning": _ASLR_MEANING.get(self.aslr, "unknown"),
                         "personality_no_randomize": self.no_randomize},
                "distinct_layouts": self.distinct_layouts,
                "spawn": self.spawn,
                "ranges": [r.to_dict() for r in self.ranges],
                "free_ranges": [{"start": a, "end": b, "size": b - a}
                                for a, b in self.free],
                "free_min_size": self.free_min_size,
                "user_space": list(self.user_space),
                "warnings": self.warnings,
                "exit_status": self.exit_status}

    def format(self) -> str:
        n = self.runs
        plural = "s" if n != 1 else ""
        out = [f"{' '.join(self.argv)}: {n} run{plural}, each stopped at its entry "
               f"point (libraries mapped, main not run)"]
        meaning = _ASLR_MEANING.get(self.aslr, "unknown")
        out.append(f"ASLR: randomize_va_space={self.aslr if self.aslr is not None else '?'}"
                   f" ({meaning}); {self.distinct_layouts} distinct layout"
                   f"{'s' if self.distinct_layouts != 1 else ''} in {n} run{plural}")
        out += [f"warning: {w}" for w in self.warnings]
        for r in self.ranges:
            lo, hi = wilson(r.collided, n)
            out.append(f"{r.range.label} ({human(r.range.size)}): collided in "
                       f"{r.collided}/{n} runs ({r.percent:.1f}%; 95% interval "
                       f"{100 * lo:.1f}-{100 * hi:.1f}%)")
            for name, k in r.by_name():
                out.append(f"    in the way: {name} in {k}/{n} runs")
        out.append(f"free ranges (>= {human(self.free_min_size)}, never mapped in any "
                   f"of the {n} runs, largest first):")
        if not self.free:
            out.append("    none")
        for a, b in self.free:
            out.append(f"    0x{a:012x}-0x{b:012x}  {human(b - a)}")
        return "\n".join(out)


def _free_ranges(layouts: list[RunLayout], lo: int, hi: int, min_size: int,
                 count: int) -> list[tuple[int, int]]:
    spans = sorted((m.start, m.end) for lay in layouts for m in lay.maps
                   if m.end > lo and m.start < hi)
    gaps, cur = [], lo
    for s, e in spans:
        if s > cur:
            gaps.append((cur, s))
        cur = max(cur, e)
    if cur < hi:
        gaps.append((cur, hi))
    gaps = [(a, b) for a, b in gaps if b - a >= min_size]
    gaps.sort(key=lambda g: (-(g[1] - g[0]), g[0]))
    return gaps[:count]


def odds(program_argv: list[str], runs: int, ranges: list, env=None, *,
         timeout: float = RUN_TIMEOUT, free_count: int = FREE_RANGES_SHOWN,
         spawn: str | None = None) -> Report:
    """Start program_argv ``runs`` times, each stopped at its entry point,
    and count the runs whose mappings overlap each of ``ranges`` (AddrRange
    or (start, end) pairs).  OddsError when the input is bad or the program
    cannot be started or ends before its entry point.  ``spawn`` forces
    "fork" or "helper" (default: fork when this process has one thread)."""
    if platform.machine() != "x86_64":
        raise OddsError(f"stopping a program at its entry point is implemented for "
                        f"x86_64 only, not {platform.machine()}")
    if not program_argv or not program_argv[0]:
        raise OddsError("no program given")
    if not isinstance(runs, int) or runs < 1:
        raise OddsError(f"invalid number of runs {runs!r}: use 1 or more")
    rs = [r if isinstance(r, AddrRange) else
          AddrRange(int(r[0]), int(r[1]), f"0x{int(r[0]):x}-0x{int(r[1]):x}")
          for r in ranges]
    for r in rs:
        if r.end <= r.start:
            raise OddsError(f"invalid range {r.label}: it is empty")
    env = dict(os.environ if env is None else env)
    argv = [str(a) for a in program_argv]
    path = _resolve(argv[0], env)
    if spawn is None:
        threaded = len(os.listdir("/proc/self/task")) > 1
    elif spawn in ("fork", "helper"):
        threaded = spawn == "helper"
    else:
        raise ValueError(f"spawn must be 'fork' or 'helper', not {spawn!r}")

    warnings = []
    aslr = aslr_setting()
    no_rand = _no_randomize_personality()
    if aslr == 0:
        warnings.append("ASLR is off (randomize_va_space=0): every run has the same "
                        "layout, so the odds are 0 or 100%")
    if no_rand:
        warnings.append("this process runs with ASLR disabled (personality "
                        "ADDR_NO_RANDOMIZE, e.g. setarch -R or a debugger), and so do "
                        "the runs: every run has the same layout")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                warnings.append(f"{path} is not an ELF executable (a script?): the "
                                f"layout measured is its interpreter's")
    except OSError:
        pass

    layouts = [_one_run(i, path, argv, env, threaded, timeout) for i in range(runs)]
    results = []
    for r in rs:
        res = RangeResult(r, runs)
        for lay in layouts:
            hit = [m for m in lay.maps if r.overlaps(m.start, m.end)]
            if hit:
                res.collisions[lay.index] = hit
        results.append(res)
    lo = _mmap_min_addr()
    min_size = max([PAGE] + [-(-r.size // PAGE) * PAGE for r in rs])
    free = _free_ranges(layouts, lo, USER_TOP, min_size, free_count)
    distinct = len({tuple((m.start, m.end, m.path) for m in lay.maps)
                    for lay in layouts})
    return Report(path, argv, runs, aslr, no_rand, "helper" if threaded else "fork",
                  results, layouts, free, min_size, (lo, USER_TOP), distinct, warnings)


# -- the command ---------------------------------------------------------------

def main_odds(argv_program: list[str], runs: int = DEFAULT_RUNS,
              range_texts: list[str] | None = None, prefix: str | None = None,
              runtime_dir=None, json_out: bool = False) -> int:
    """``forkhost attach --odds PROGRAM [ARGS...] [--runs N] [--range R]...
    [--json]``: print the report (text or JSON) and return 0 (no run
    collided), 1 (at least one did) or 2 (bad input, or the program cannot
    be measured; one line on stderr)."""
    try:
        if range_texts:
            ranges = [parse_range(t) for t in range_texts]
        else:
            base, end = arena_range(prefix, runtime_dir)
            name = runtime.paths(prefix, runtime_dir).prefix
            ranges = [AddrRange(base, end, f"arena of prefix {name!r} "
                                           f"0x{base:x}-0x{end:x}")]
        report = odds(list(argv_program or []), runs, ranges)
    except ForkhostError as err:
        print(f"forkhost attach --odds: {err}", file=sys.stderr)
        return EXIT_USAGE
    if json_out:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return report.exit_status


__all__ = ["AddrRange", "Occupant", "OddsError", "RangeResult", "Report", "RunLayout",
           "arena_range", "aslr_setting", "main_odds", "odds", "parse_range",
           "EXIT_CLEAN", "EXIT_COLLIDED", "EXIT_USAGE", "DEFAULT_RUNS"]
