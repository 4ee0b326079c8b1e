"""Classic attach: map a prefix's arena into a process that did not descend
from its template (a debugger, an inspection tool, a DPDK-style program).

Secondaries need none of this: they inherit the arena through fork.  A
separate process must map it itself, at the very address the primary used,
because the arena is full of raw pointers.  The arena is a memfd, reachable
as /proc/<primary pid>/fd/<fd> (the template holds the same fd, a fallback
when the primary is gone but the template lives on).  The mapping uses
MAP_FIXED_NOREPLACE, so when ASLR put something else there, attach fails
and names that mapping instead of clobbering it.

Even attached, such a process has libforkhost.so and every other library
at addresses of its own: data pointers into the arena work, function
pointers stored by the primary's processes do not.  Hash tables with a
native function detect this and raise ModuleMismatchError.
"""

from __future__ import annotations

import errno
import os

from .. import _runtime as runtime
from .._native import ffi, lib, library_base
from .._errors import AttachError
from .._record import Record

ERRLEN = 512


class Attachment(Record):
    """What attach() mapped, and where the native library sits on each
    side: libforkhost.so at library_base_primary in the primary, at
    library_base_here in this process; already: this process had the
    arena before the call."""
    _fields = ("prefix", "base", "size", "primary_pid", "library_path",
               "library_base_primary", "library_base_here", "already")
    _defaults = (False,)

    @property
    def library_same_address(self) -> bool:
        return self.library_base_primary == self.library_base_here


def _open_arena(cfg: dict, name: str) -> tuple[int, str]:
    """An O_RDWR fd on the arena's memfd, through the primary's (or else
    the template's) /proc/PID/fd entry."""
    fd_no = cfg["arena"]["fd"]
    tried = []
    for pid in (cfg.get("pid"), cfg.get("template_pid")):
        if not pid:
            continue
        path = f"/proc/{pid}/fd/{fd_no}"
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC), path
        except OSError as err:
            tried.append(f"{path}: {err.strerror}")
    raise AttachError(f"cannot attach to prefix {name!r}: cannot open its arena "
                      f"({'; '.join(tried) or 'no pid recorded'})", errno.ENOENT)


def attach(prefix: str | None = None, runtime_dir=None) -> Attachment:
    """Map the arena of ``prefix`` into this process at the primary's
    address.  Returns an Attachment; AttachError when there is no primary,
    its arena cannot be opened, the native library differs, or the address
    range is taken here (the message names the mapping in the way)."""
    paths = runtime.paths(prefix, runtime_dir)
    cfg = runtime.read_config(paths)
    name = paths.prefix
    if not cfg or not runtime.pid_alive(cfg.get("pid", 0)):
        raise AttachError(f"cannot attach to prefix {name!r}: no forkhost primary "
                          f"(looked for {paths.config})", errno.ESRCH)
    arena = cfg["arena"]
    # The whole range the arena can grow into ("max"; "size" is where it
    # started), mapped here as in every process of the prefix.
    base, size = int(arena["base"]), int(arena.get("max", arena["size"]))
    lib_cfg = cfg.get("library", {})
    here_version = ffi.string(lib.fh_version()).decode()
    if lib_cfg.get("version") and lib_cfg["version"] != here_version:
        raise AttachError(f"cannot attach to prefix {name!r}: its primary runs "
                          f"libforkhost {lib_cfg['version']}, this process has "
                          f"{here_version}; the arena layouts may differ", errno.EPROTO)
    info = Attachment(name, base, size, int(cfg["pid"]),
                      lib_cfg.get("path", ""), int(lib_cfg.get("base", 0)),
                      library_base())
    have = lib.fh_arena_base()
    if have != ffi.NULL:
        here = int(ffi.cast("uintptr_t", have))
        hdr = lib.fh_arena_hdr()
        if here == base and lib.fh_arena_max() == size and \
                hdr.primary_pid == info.primary_pid:
            return info._replace(already=True)
        raise AttachError(f"cannot attach to prefix {name!r}: this process already "
                          f"has an arena at 0x{here:x} (one arena per process)",
                          errno.EEXIST)
    fd, path = _open_arena(cfg, name)
    err = ffi.new("char[]", ERRLEN)
    try:
        rc = lib.fh_arena_attach(fd, base, size, err, ERRLEN)
        e = ffi.errno
    finally:
        os.close(fd)       # fh_arena_attach keeps a dup of its own
    if rc < 0:
        text = ffi.string(err).decode(errors="replace") or os.strerror(e)
        msg = f"cannot attach to prefix {name!r} ({path}): {text}"
        if e == errno.EEXIST:
            msg += (" -- ASLR placed that mapping where the primary has its "
                    "arena; secondaries (forkhost-run) never have this problem")
        raise AttachError(msg, e) from OSError(e, os.strerror(e))
    return info
