"""The runtime directory of a prefix: where it is, its lock and config record.

Layout (docs/architecture.md): <runtime>/<prefix>/ with ``lock`` (held by the live
primary, holds its pid), ``config.json`` (arena base/size/page size,
versions, pids, library identity) and ``template.sock``.  The runtime
directory and each prefix directory are mode 0700: the directory, not only
the socket's mode, is what keeps other users out.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ForkhostError, PrefixInUseError

DEFAULT_PREFIX = "forkhost"
# Same rule as forkhost-run: a prefix is one path component of sane length.
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def runtime_dir(explicit: str | os.PathLike | None = None) -> Path:
    """First of: explicit, $FORKHOST_RUNTIME_DIR, $RUNTIME_DIRECTORY/forkhost,
    $XDG_RUNTIME_DIR/forkhost, /run/forkhost for root, /tmp/forkhost-<uid>."""
    if explicit:
        return Path(explicit)
    env = os.environ
    if env.get("FORKHOST_RUNTIME_DIR"):
        return Path(env["FORKHOST_RUNTIME_DIR"])
    for var in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        if env.get(var):
            return Path(env[var]) / "forkhost"
    if os.geteuid() == 0:
        return Path("/run/forkhost")
    return Path(f"/tmp/forkhost-{os.getuid()}")


def resolve_prefix(prefix: str | None = None) -> str:
    prefix = prefix or os.environ.get("FORKHOST_PREFIX") or DEFAULT_PREFIX
    if not _PREFIX_RE.match(prefix) or prefix in (".", ".."):
        raise ForkhostError(
            f"invalid prefix {prefix!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return prefix


@dataclass(frozen=True)
class PrefixPaths:
    prefix: str
    root: Path          # the runtime directory

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
        """The primary's IPC listener (forkhost/ipc.py, docs/ipc.md)."""
        return self.dir / "ipc.sock"

    @property
    def log(self) -> Path:
        """Where a --detach primary writes: beside the prefix directory,
        so it survives the directory's cleanup at stop."""
        return self.root / f"{self.prefix}.log"


def paths(prefix: str | None = None,
          runtime: str | os.PathLike | None = None) -> PrefixPaths:
    return PrefixPaths(resolve_prefix(prefix), runtime_dir(runtime))


def _private_dir(path: Path) -> None:
    """mkdir -m 0700, refusing a directory someone else owns or can enter."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ForkhostError(f"{path} exists and is not a directory")
    if st.st_uid != os.geteuid():
        raise ForkhostError(
            f"{path} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


class PrefixLock:
    """The primary's claim on a prefix: an flock on <prefix>/lock.

    The lock is an open file description held only by the primary (the
    template closes its copy), so it is released the moment the primary
    dies, however it dies; what that primary left behind is then stale.
    """

    def __init__(self, p: PrefixPaths):
        self.paths = p
        self.fd = -1
        self.stale_pid: int | None = None   # set when we recovered leftovers

    def acquire(self) -> None:
        p = self.paths
        p.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_dir(p.root)
        _private_dir(p.dir)
        while True:
            fd = os.open(p.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise PrefixInUseError(p.prefix, pid, p.dir) from None
            # A stopping primary unlinks the lock before releasing it; if we
            # locked a file that is no longer at the path, try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(p.lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_pid(fd)
        if old and old != os.getpid():
            self.stale_pid = old
        self._clean_leftovers()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def _clean_leftovers(self) -> None:
        p = self.paths
        for leftover in (p.socket, p.config, p.ipc_socket):
            try:
                os.unlink(leftover)
                if self.stale_pid is None:
                    self.stale_pid = 0
            except FileNotFoundError:
                pass

    def release(self, remove: bool = True) -> None:
        if self.fd < 0:
            return
        if remove:
            for f in (self.paths.socket, self.paths.config, self.paths.ipc_socket,
                      self.paths.lock):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(self.paths.dir)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (ValueError, IndexError, OSError):
        return 0


def write_config(p: PrefixPaths, record: dict) -> None:
    """Atomically replace config.json (write a temp file, rename)."""
    tmp = p.dir / f".config.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    os.rename(tmp, p.config)


def read_config(p: PrefixPaths) -> dict | None:
    try:
        with open(p.config) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ForkhostError(f"cannot read {p.config}: {err}") from err


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["DEFAULT_PREFIX", "PrefixPaths", "PrefixLock", "paths",
           "runtime_dir", "resolve_prefix", "read_config", "write_config",
           "pid_alive"]
