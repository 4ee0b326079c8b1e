"""The runtime directory of a prefix: where it is, its lock and config record.

Layout (docs/architecture.md, "Runtime directory"): <runtime>/<prefix>/
with ``lock`` (held by the live primary, holds its pid), ``config.json``
(arena base/size/page size, versions, pids, library identity) and
``template.sock``.  The rules live once, in C (forkhost/rundir.h):
csrc/lib/rundir_path.c finds the places, as forkhost-run does with the same
code, and csrc/lib/rundir.c checks every directory on the way the way ssh
and systemd do, creates what is missing 0700, holds the lock and writes the
record, as a C primary (fh_init) does with the same code.  This module is
their Python face: the same names and exceptions as before, the texts
being C's.

The native library is loaded by the first function that needs it, not by
importing this module (``forkhost run`` and ``ps`` import it too).
"""

from __future__ import annotations

import errno
import json
import os
import select
import time
from _thread import allocate_lock     # no threading module for `forkhost run`
from collections import namedtuple
from pathlib import Path

from ._wire import PREFIX_DEFAULT, PREFIX_INVALID, RUNDIR_TOO_LONG
from ._errors import ForkhostError, PrefixInUseError

_CONFIG_LOCK = allocate_lock()        # write_config()

DEFAULT_PREFIX = PREFIX_DEFAULT


def _native():
    """(ffi, lib), loading libforkhost on first use."""
    from ._native import ffi, lib
    return ffi, lib


class _Call:
    """One call's error buffer, and its text as a ForkhostError."""

    def __init__(self):
        self.ffi, self.lib = _native()
        self.err = self.ffi.new("char[]", self.lib.FH_RUNDIR_ERR_MAX)

    def error(self) -> ForkhostError:
        return ForkhostError(os.fsdecode(self.ffi.string(self.err)))

    def paths(self, p: "PrefixPaths"):
        """p as the C library's struct fh_prefix_paths."""
        c = self.ffi.new("struct fh_prefix_paths *")
        root, prefix = _bytes(p.root), _bytes(p.prefix)
        if len(root) >= len(c.root) or len(prefix) >= len(c.prefix):
            raise ForkhostError(RUNDIR_TOO_LONG % os.fsdecode(root[:200]))
        c.root, c.prefix = root, prefix
        return c


def _bytes(s) -> bytes:
    b = os.fsencode(s)
    if b"\0" in b:
        raise ValueError("embedded null byte")
    return b


def runtime_dir(explicit: str | os.PathLike | None = None) -> Path:
    """First of: explicit, $FORKHOST_RUNTIME_DIR, $RUNTIME_DIRECTORY/forkhost,
    $XDG_RUNTIME_DIR/forkhost, /run/forkhost for root, /tmp/forkhost-<uid>;
    when that is a shared sticky directory, our private subdirectory in it
    (forkhost-<uid>).  Empty values count as unset (fh_rundir_path)."""
    c = _Call()
    out = c.ffi.new("char[]", c.lib.FH_RUNDIR_PATH_MAX)
    given = _bytes(explicit) if explicit else c.ffi.NULL
    if c.lib.fh_rundir_path(out, len(out), given, c.err, len(c.err)) < 0:
        raise c.error()
    return Path(os.fsdecode(c.ffi.string(out)))


def resolve_prefix(prefix: str | None = None, origin: str = "--prefix") -> str:
    """prefix as given (origin: where it came from, for the message), else
    $FORKHOST_PREFIX if set and not empty, else the default; refused with
    forkhost-run's text unless it is a valid prefix (fh_prefix_name)."""
    if prefix is not None and "\0" in prefix:
        raise ForkhostError(PREFIX_INVALID % (prefix, origin))
    c = _Call()
    out = c.ffi.new("char[]", c.lib.FH_PREFIX_MAX_LEN + 1)
    given = os.fsencode(prefix) if prefix is not None else c.ffi.NULL
    if c.lib.fh_prefix_name(out, given, os.fsencode(origin), c.err, len(c.err)) < 0:
        raise c.error()
    return c.ffi.string(out).decode()


class PrefixPaths(namedtuple("PrefixPaths", "prefix root")):
    """A prefix's files: ``root`` is the runtime directory (a Path)."""
    __slots__ = ()

    @property
    def dir(self) -> Path:
        return self.root / self.prefix

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def socket(self) -> Path:
        return self.dir / "template.sock"

    @property
    def ipc_socket(self) -> Path:
        """The primary's IPC listener (forkhost/ipc/, docs/ipc.md)."""
        return self.dir / "ipc.sock"

    @property
    def log(self) -> Path:
        """Where a --detach primary writes: beside the prefix directory,
        so it survives the directory's cleanup at stop."""
        return self.root / f"{self.prefix}.log"

    def check_socket_length(self) -> None:
        """Refuse a socket path that does not fit sun_path (forkhost-run's
        text), before anything is created (fh_prefix_socket_path)."""
        c = _Call()
        out = c.ffi.new("char[]", c.lib.FH_RUNDIR_PATH_MAX)
        if c.lib.fh_prefix_socket_path(c.paths(self), out, len(out), c.err,
                                       len(c.err)) < 0:
            raise c.error()


def paths(prefix: str | None = None,
          runtime: str | os.PathLike | None = None) -> PrefixPaths:
    return PrefixPaths(resolve_prefix(prefix), runtime_dir(runtime))


def _prefix_dir(p: PrefixPaths, create: bool) -> int:
    """A readable fd of <runtime>/<prefix>, checked with every directory on
    the way (fh_prefix_dir_open).  FileNotFoundError when missing and not
    create."""
    c = _Call()
    fd = c.lib.fh_prefix_dir_open(c.paths(p), int(create), c.err, len(c.err))
    if fd == c.lib.FH_RUNDIR_MISSING:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(p.dir))
    if fd < 0:
        raise c.error()
    return fd


def open_log(p: PrefixPaths) -> int:
    """<runtime>/<prefix>.log for appending (a --detach primary's output),
    opened only after the runtime directory passed its checks, without
    following a symbolic link, and only if it is a file of ours
    (fh_prefix_log_open)."""
    c = _Call()
    fd = c.lib.fh_prefix_log_open(c.paths(p), c.err, len(c.err))
    if fd < 0:
        raise c.error()
    return fd


class PrefixLock:
    """The primary's claim on a prefix: an flock on <prefix>/lock
    (fh_prefix_lock).

    The lock is an open file description held only by the primary (the
    template closes its copy), so it is released the moment the primary
    dies, however it dies; what that primary left behind is then stale.
    """

    def __init__(self, p: PrefixPaths, keep: int = 0):
        self.paths = p
        self.fd = -1
        self.stale_pid: int | None = None   # set when we recovered leftovers
        # FH_PREFIX_KEEP_* bits: sockets systemd made (socket activation),
        # which are not ours to remove (fh_prefix_lock_keep).
        self.keep = keep

    def acquire(self, leave_leftovers: bool = False) -> None:
        """Take the prefix.  leave_leftovers: a dead holder's files stay
        (stale_pid is then its pid from the lock, or None) until clean():
        a primary that may adopt its orphaned template (forkhost/_adopt.py)
        needs them."""
        p = self.paths
        c = _Call()
        holder = c.ffi.new("pid_t *")
        stale = c.ffi.new("pid_t *")
        keep = self.keep | (c.lib.FH_PREFIX_KEEP_LEFTOVERS if leave_leftovers else 0)
        fd = c.lib.fh_prefix_lock_keep(c.paths(p), keep, holder, stale, c.err,
                                       len(c.err))
        if fd == c.lib.FH_PREFIX_BUSY:
            raise PrefixInUseError(p.prefix, holder[0], p.dir)
        if fd < 0:
            raise c.error()
        self.stale_pid = None if stale[0] < 0 else stale[0]
        self.fd = fd

    def clean(self) -> int | None:
        """After acquire(leave_leftovers=True): remove what the dead holder
        left, as acquire() does by default.  Returns the recovered pid as
        stale_pid has it (None: nothing was left; 0: files of no named
        holder) and sets stale_pid to it."""
        c = _Call()
        stale = c.ffi.new("pid_t *")
        stale[0] = -1 if self.stale_pid is None else self.stale_pid
        if c.lib.fh_prefix_clean_leftovers(c.paths(self.paths), self.keep, stale,
                                           c.err, len(c.err)) < 0:
            raise c.error()
        self.stale_pid = None if stale[0] < 0 else stale[0]
        return self.stale_pid

    def release(self, remove: bool = True) -> None:
        """Give the prefix up; remove: its files and directory too
        (fh_prefix_release), else only the lock's fd is closed."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        c = _Call()
        if remove:
            c.lib.fh_prefix_release_keep(c.paths(self.paths), self.keep, fd)
        elif self.stale_pid:        # a dead holder's files, left: its pid too
            c.lib.fh_prefix_lock_leave(fd, self.stale_pid)
        else:
            os.close(fd)


def running_children(pid: int) -> list[int]:
    """pid's running children (not the zombies it has yet to reap)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return [kid for kid in kids if pid_alive(kid)]


def retiring_secondaries(cfg: dict) -> dict[int, list[int]]:
    """The older template generations a config record lists as retiring
    (a reload) that still run, each with its running secondaries: its
    children but the next generation."""
    gens = {cfg.get("template_pid"), *cfg.get("retiring", [])}
    return {pid: [k for k in running_children(pid) if k not in gens]
            for pid in cfg.get("retiring", []) if pid_alive(pid)}


def write_config(p: PrefixPaths, record: dict) -> None:
    """Atomically replace config.json (fh_prefix_write_config: through
    .config.<pid>.tmp, renamed; a failed write removes its temporary file,
    and one a killed primary left is removed by the next one's
    PrefixLock)."""
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    c = _Call()
    # One writer at a time: the primary's threads (IPC, the supervisor, a
    # reload) share the temporary file's name.
    with _CONFIG_LOCK:
        if c.lib.fh_prefix_write_config(c.paths(p), text.encode(), c.err,
                                        len(c.err)) < 0:
            raise c.error()


def read_config(p: PrefixPaths) -> dict | None:
    """The prefix's config record, or None when there is none; its
    directories are checked as for writing (a planted one is refused)."""
    try:
        dfd = _prefix_dir(p, create=False)
    except FileNotFoundError:
        return None
    try:
        fd = os.open("config.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dfd)
        with open(fd, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ForkhostError(f"cannot read {p.config}: {err}") from err
    finally:
        os.close(dfd)


def pid_alive(pid: int) -> bool:
    """pid is a process that has not exited: a zombie (killed, not reaped
    yet by its parent) has."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True         # no /proc for it: kill() said it exists
    return state not in (b"Z", b"X")


def readable(fd, timeout: float | None) -> bool:
    """fd (or an object with fileno()) is readable, now (timeout 0) or
    within timeout seconds (None: waits)."""
    return bool(ready([fd], timeout))


def ready(fds, timeout: float | None) -> list[int]:
    """The fds of fds readable (or hung up) now (timeout 0) or within
    timeout seconds (None: waits for one): select() over poll(2), not
    select(2), which refuses fds from 1024 on, as a program with many open
    files (a primary with many IPC members) has.  InterruptedError as
    poll raises it."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return [fd for fd, _ in p.poll(None if timeout is None else timeout * 1000)]


__all__ = ["readable", "ready", "DEFAULT_PREFIX", "PrefixPaths", "PrefixLock", "paths",
           "runtime_dir", "resolve_prefix", "read_config", "write_config",
           "running_children",
           "open_log", "pid_alive"]


def proc_line(pid: int) -> tuple[str, float]:
    """pid's command line (or name) and how long it has run; ("?", 0.0)
    when it cannot be read.  From /proc, as ps reads it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/uptime", "rb") as f:
            now = float(f.read().split()[0])
    except (OSError, ValueError):
        return "?", 0.0
    end = stat.rfind(b")")
    # A title set in place keeps the argv area's length: spaces at the end.
    cmd = raw.replace(b"\0", b" ").decode(errors="replace").rstrip() or \
        stat[stat.find(b"(") + 1:end].decode(errors="replace")
    started = int(stat[end + 2:].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22
    return cmd, max(now - started, 0.0)


def ask_primary(prefix, runtime_dir, action: str, request: dict, timeout: float,
                check=None) -> dict:
    """The running primary's JSON answer to one IPC request (action, a JSON
    request body), this process attached to its IPC for the time of it:
    `forkhost reload`, `forkhost restart`, `forkhost stop --worker`.
    check(cfg, paths) may refuse first (raise) from the config record.
    ForkhostError when there is no primary, it refuses the action or does
    not answer within timeout seconds."""
    from . import ipc
    p = paths(prefix, runtime_dir)
    cfg = read_config(p)
    if cfg is None or not pid_alive(cfg.get("pid", 0)):
        raise ForkhostError(f"no forkhost primary for prefix {p.prefix!r} "
                            f"(looked for {p.config})")
    if check is not None:
        check(cfg, p)
    ipc.start(prefix=p.prefix, runtime_dir=p.root)
    try:
        with ipc.request(action, json.dumps(request).encode(), timeout=timeout) as r:
            if r.nb_received != 1:
                raise ForkhostError(f"the primary (pid {cfg['pid']}) did not answer "
                                    f"within {timeout:g}s")
            msg = r.msgs[0]
            if not msg.ok:
                raise ForkhostError(f"the primary refused: {msg.error}")
            return json.loads(bytes(msg.param))
    finally:
        ipc.stop()
