"""The runtime directory of a prefix: where it is, its lock and config record.

Layout (docs/architecture.md, "The runtime directory"): <runtime>/<prefix>/
with ``lock`` (held by the live primary, holds its pid), ``config.json``
(arena base/size/page size, versions, pids, library identity) and
``template.sock``.  Every directory on the way is checked the way ssh and
systemd check theirs before anything is created or opened in it: owned by
root or by us and not writable by group or others unless sticky; the
runtime directory itself is ours and not writable by others, and a shared
sticky directory given as the runtime directory is used only through our
private subdirectory in it (forkhost/rundir.h, the rule forkhost-run
follows too).  Files are opened with O_NOFOLLOW relative to a checked
directory's fd.  Only directories forkhost creates are made 0700; an
existing directory's mode is never changed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ._wire import (PREFIX_INVALID, PREFIX_MAX_LEN, RUNDIR_SHARED_SUBDIR,
                    SOCKET_PATH_MAX, SOCKET_PATH_TOO_LONG)
from .errors import ForkhostError, PrefixInUseError

DEFAULT_PREFIX = "forkhost"
# Same rule as forkhost-run (forkhost/rundir.h): one path component of sane
# length.
_PREFIX_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{PREFIX_MAX_LEN}}}")
# Temporary files of write_config: the next holder of the lock removes them.
_CONFIG_TMP_RE = re.compile(r"\.config\.[0-9]+\.tmp")


def _shared_sticky(st: os.stat_result) -> bool:
    """A directory others may create entries in, protected only by its
    sticky bit (/tmp, any 1777 directory)."""
    return (stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_ISVTX)
            and bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)))


def runtime_dir(explicit: str | os.PathLike | None = None) -> Path:
    """First of: explicit, $FORKHOST_RUNTIME_DIR, $RUNTIME_DIRECTORY/forkhost,
    $XDG_RUNTIME_DIR/forkhost, /run/forkhost for root, /tmp/forkhost-<uid>;
    when that is a shared sticky directory, our private subdirectory in it
    (forkhost-<uid>; forkhost/rundir.h).  Empty values count as unset."""
    env = os.environ
    if explicit:
        d = Path(explicit)
    elif env.get("FORKHOST_RUNTIME_DIR"):
        d = Path(env["FORKHOST_RUNTIME_DIR"])
    elif env.get("RUNTIME_DIRECTORY") or env.get("XDG_RUNTIME_DIR"):
        d = Path(env.get("RUNTIME_DIRECTORY") or env["XDG_RUNTIME_DIR"]) / "forkhost"
    elif os.geteuid() == 0:
        d = Path("/run/forkhost")
    else:
        d = Path("/tmp") / (RUNDIR_SHARED_SUBDIR % os.getuid())
    try:
        if _shared_sticky(os.stat(d)):
            d = d / (RUNDIR_SHARED_SUBDIR % os.getuid())
    except OSError:
        pass
    return d


def resolve_prefix(prefix: str | None = None, origin: str = "--prefix") -> str:
    """prefix as given (origin: where it came from, for the message), else
    $FORKHOST_PREFIX if set and not empty, else the default; refused with
    forkhost-run's text unless it is a valid prefix."""
    if prefix is None:
        prefix, origin = os.environ.get("FORKHOST_PREFIX") or None, "FORKHOST_PREFIX"
        if prefix is None:
            prefix, origin = DEFAULT_PREFIX, "the default"
    if not _PREFIX_RE.fullmatch(prefix) or prefix in (".", ".."):
        raise ForkhostError(PREFIX_INVALID % (prefix, origin))
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

    def check_socket_length(self) -> None:
        """Refuse a socket path that does not fit sun_path (forkhost-run's
        text), before anything is created."""
        path = str(self.socket)
        n = len(os.fsencode(path))
        if n > SOCKET_PATH_MAX:
            raise ForkhostError(SOCKET_PATH_TOO_LONG % (n, SOCKET_PATH_MAX, path))


def paths(prefix: str | None = None,
          runtime: str | os.PathLike | None = None) -> PrefixPaths:
    return PrefixPaths(resolve_prefix(prefix), runtime_dir(runtime))


_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40


def _check_dir(st: os.stat_result, shown: str, last: bool) -> None:
    """One directory on the way to the runtime directory (last: the runtime
    directory itself).  Raise ForkhostError naming what is wrong."""
    euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    writable = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if last:
        if st.st_uid != euid:
            raise ForkhostError(f"refusing the runtime directory {shown}: it belongs "
                                f"to uid {st.st_uid}, not to us (uid {euid})")
        if writable:
            raise ForkhostError(f"refusing the runtime directory {shown}: its mode "
                                f"{mode:04o} lets other users write in it")
    else:
        if st.st_uid not in (0, euid):
            raise ForkhostError(f"refusing the runtime directory under {shown}: {shown} "
                                f"belongs to uid {st.st_uid}, neither root nor us "
                                f"(uid {euid})")
        if writable and not mode & stat.S_ISVTX:
            raise ForkhostError(f"refusing the runtime directory under {shown}: its "
                                f"mode {mode:04o} lets other users write in it "
                                f"without the sticky bit")


def _walk(path: str | os.PathLike, create: bool) -> int:
    """An O_PATH fd of the runtime directory path, every directory on the
    way checked (_check_dir) from / down, symbolic links followed only where
    they sit in a checked directory.  create: make what is missing, 0700.
    FileNotFoundError when it is missing and not create."""
    full = os.path.abspath(path)
    todo = [c for c in full.split("/") if c]
    root = os.open("/", _DIR_FLAGS)
    stack = [(root, "/")]
    links = 0
    try:
        _check_dir(os.fstat(root), "/", not todo)
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            parent, where = stack[-1]
            shown = os.path.join(where, name)
            made = False
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=parent)
                    made = True
                except FileExistsError:
                    pass      # someone of ours was quicker: check theirs
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise ForkhostError(f"cannot use the runtime directory {full}: "
                                        f"too many symbolic links")
                target = os.readlink(name, dir_fd=parent)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                todo[:0] = [c for c in target.split("/") if c]
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ForkhostError(f"cannot use the runtime directory {full}: {shown} "
                                    f"is not a directory")
            if made and stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(name, 0o700, dir_fd=parent)   # ours; the umask took bits
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            stack.append((fd, shown))
            _check_dir(os.fstat(fd), shown, not todo)
        return stack.pop()[0]
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not create:
            raise
        raise ForkhostError(_os_error(f"cannot create the runtime directory {full}"
                                      if create else f"cannot use {full}", err)) from err
    finally:
        for fd, _ in stack:
            os.close(fd)


def _os_error(what: str, err: OSError) -> str:
    """One line for a failed write, naming a full file system as such."""
    if err.errno == errno.ENOSPC:
        return f"{what}: the file system is full ({err.strerror})"
    if err.errno == errno.EDQUOT:
        return f"{what}: the disk quota is used up ({err.strerror})"
    return f"{what}: {err.strerror or err}"


def _prefix_dir(p: PrefixPaths, create: bool) -> int:
    """A readable fd of <runtime>/<prefix>, checked (ours, 0700: the
    directory is what keeps other users from the sockets), the runtime
    directory on the way checked by _walk.  FileNotFoundError when missing
    and not create."""
    root = _walk(p.root, create)
    try:
        made = False
        if create:
            try:
                os.mkdir(p.prefix, 0o700, dir_fd=root)
                made = True
            except FileExistsError:
                pass
            except OSError as err:
                raise ForkhostError(_os_error(f"cannot create {p.dir}", err)) from err
        try:
            fd = os.open(p.prefix, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC, dir_fd=root)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise ForkhostError(f"refusing {p.dir}: not a directory"
                                if err.errno in (errno.ENOTDIR, errno.ELOOP)
                                else f"cannot open {p.dir}: {err.strerror}") from err
    finally:
        os.close(root)
    st = os.fstat(fd)
    if made and stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)               # ours; the umask took bits
        st = os.fstat(fd)
    euid = os.geteuid()
    why = (f"it belongs to uid {st.st_uid}, not to us (uid {euid})" if st.st_uid != euid
           else f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700"
           if stat.S_IMODE(st.st_mode) & 0o077 else "")
    if why:
        os.close(fd)
        raise ForkhostError(f"refusing the prefix directory {p.dir}: {why}")
    return fd


def open_log(p: PrefixPaths) -> int:
    """<runtime>/<prefix>.log for appending (a --detach primary's output),
    opened only after the runtime directory passed its checks, without
    following a symbolic link, and only if it is a file of ours."""
    root = _walk(p.root, create=True)
    try:
        fd = os.open(p.log.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o600, dir_fd=root)
    except OSError as err:
        raise ForkhostError(f"refusing the log {p.log}: it is a symbolic link"
                            if err.errno == errno.ELOOP else
                            _os_error(f"cannot open the log {p.log}", err)) from err
    finally:
        os.close(root)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise ForkhostError(f"refusing the log {p.log}: not a file of ours")
    os.set_blocking(fd, True)
    return fd


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
        dfd = _prefix_dir(p, create=True)
        try:
            while True:
                fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise PrefixInUseError(p.prefix, pid, p.dir) from None
                # A stopping primary unlinks the lock before releasing it; if
                # we locked a file that is no longer at the path, try again.
                try:
                    same = os.fstat(fd).st_ino == os.stat(
                        "lock", dir_fd=dfd, follow_symlinks=False).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            old = _read_pid(fd)
            if old and old != os.getpid():
                self.stale_pid = old
            try:
                self._clean_leftovers(dfd)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError as err:
                os.close(fd)
                self._remove(dfd)
                raise ForkhostError(_os_error(f"cannot write {p.lock}", err)) from err
        except OSError as err:
            try:
                os.rmdir(p.dir)     # only if empty: it may be another's
            except OSError:
                pass
            raise ForkhostError(_os_error(f"cannot lock {p.lock}", err)) from err
        finally:
            os.close(dfd)
        self.fd = fd

    def _clean_leftovers(self, dfd: int) -> None:
        """What a dead primary left: its sockets, its config and the
        temporary files of its config writes (.config.<pid>.tmp; only the
        lock's holder writes them, so all of them are stale now)."""
        names = ["template.sock", "config.json", "ipc.sock"]
        for name in names:
            try:
                os.unlink(name, dir_fd=dfd)
                if self.stale_pid is None:
                    self.stale_pid = 0
            except FileNotFoundError:
                pass
        for name in os.listdir(dfd):
            if _CONFIG_TMP_RE.fullmatch(name):
                try:
                    os.unlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    pass

    def _remove(self, dfd: int) -> None:
        """Unlink the prefix's files and its directory (when empty)."""
        for name in ("template.sock", "config.json", "ipc.sock", "lock"):
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.paths.dir)
        except OSError:
            pass

    def release(self, remove: bool = True) -> None:
        if self.fd < 0:
            return
        if remove:
            try:
                dfd = os.open(self.paths.dir, os.O_RDONLY | os.O_DIRECTORY
                              | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                dfd = -1
            if dfd >= 0:
                try:
                    self._remove(dfd)
                finally:
                    os.close(dfd)
        os.close(self.fd)
        self.fd = -1


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (ValueError, IndexError, OSError):
        return 0


def write_config(p: PrefixPaths, record: dict) -> None:
    """Atomically replace config.json: write .config.<pid>.tmp, rename.  A
    failed write removes its temporary file (and one a killed primary
    left is removed by the next one's PrefixLock)."""
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    tmp = f".config.{os.getpid()}.tmp"
    dfd = _prefix_dir(p, create=False)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, "config.json", src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as err:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise ForkhostError(_os_error(f"cannot write {p.config}", err)) from err
    finally:
        os.close(dfd)


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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["DEFAULT_PREFIX", "PrefixPaths", "PrefixLock", "paths",
           "runtime_dir", "resolve_prefix", "read_config", "write_config",
           "open_log", "pid_alive"]
