"""In the template, after a launch of a Python entry: read it ahead for the
pool members forked next (fh_py_read_ahead, forkhost/_template.py, at most
once a FH_TEMPLATE_READ_AHEAD_US per directory and entry).

Three things are kept ready, each for the PREFETCH_MAX most recent:

- the import finder of the client's directory (prepare_finder), which the
  members inherit in sys.path_importer_cache;
- a module entry's spec and code (prefetch), for ``name:function`` and
  ``-m name``;
- a script entry's compiled code (prefetch_script).

Nothing here runs the entry's code, and nothing waits on a network
filesystem (parse_mounts, on_remote_fs).  The secondary takes a copy only
while nothing it was read from has changed (forkhost._load)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import stat
import sys
import time
import types
import zipimport
from collections import namedtuple

from . import _pyfile
from ._classify import FUNCTION, MODULE, SCRIPT, EntryError, classify

_FILEFINDER_HOOK = "FileFinder.path_hook.<locals>.path_hook_for_FileFinder"
# How many client directories, entry modules and scripts the template keeps
# ready (each); the least recently launched goes first.
PREFETCH_MAX = 32
# The client directories whose finders prepare_finder() added, least
# recent first.
_finder_dirs: dict[str, None] = {}


def prepare_finder(path: str) -> bool:
    """Make sure the import finder for directory ``path`` is in
    sys.path_importer_cache, adding it as the import system would on its
    first search there (each of sys.path_hooks in turn until one accepts
    the path), for the PREFETCH_MAX directories launched from last.

    A secondary's sys.path starts with the client's directory, and a
    finder the template made is one the secondary need not make.  Its
    listing is not read here (the secondary forgets it anyway:
    secondary._set_path).  Only the standard hooks are called (the zip
    importer, FileFinder's): the template runs no code a preloaded module
    may have installed.  Returns True when ``path`` has a finder (one of
    the template's own sys.path entries, too)."""
    cache = sys.path_importer_cache
    if path in _finder_dirs:
        _finder_dirs[path] = _finder_dirs.pop(path)     # the most recent now
        return True
    if path in cache:
        return True
    if not os.path.isabs(path) or not all(
            hook is zipimport.zipimporter or
            getattr(hook, "__qualname__", "") == _FILEFINDER_HOOK
            for hook in sys.path_hooks):
        return False
    if _pyfile.importer(path) is None:
        return False
    _finder_dirs[path] = None
    while len(_finder_dirs) > PREFETCH_MAX:
        oldest = next(iter(_finder_dirs))
        del _finder_dirs[oldest]
        if oldest not in sys.path:
            cache.pop(oldest, None)
    return True


def import_dirs() -> list[str]:
    """The client directories whose finders the template added, least
    recently launched first."""
    return list(_finder_dirs)


# Files larger than this are not read ahead: the template's loop waits
# while it compiles or unmarshals.
PREFETCH_MAX_BYTES = 128 << 10
# A directory or file changed less than this long before the template read
# it is not read ahead: file timestamps are coarse (a few ms), and a change
# in the same tick would leave them equal.
PREFETCH_SETTLED_NS = 100_000_000
# After a miss, the same module or script is not tried again for this long
# (seconds).
PREFETCH_RETRY = 1.0


# A module entry read ahead: its spec and code, files_state() and
# sys.meta_path when it was read, and pyc_current (else it was compiled: an
# import would write the .pyc unless sys.dont_write_bytecode).
ModuleAhead = namedtuple("ModuleAhead", "spec code stats meta_path pyc_current")


# What is read ahead, least recent first: modules by (directory, module
# name); scripts by (directory, path as the client gave it), as (code,
# stat_key() of the file it was compiled from, its real path).
modules: dict[tuple[str, str], ModuleAhead] = {}
scripts: dict[tuple[str, str], tuple[types.CodeType, tuple, str]] = {}
# (directory, name), ("script", directory, path) -> when to try again
# after a miss (time.monotonic()).
_retry_at: dict[tuple, float] = {}


def _key_of(st: os.stat_result) -> tuple:
    """What tells one version of a file from another (ctime last)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def stat_key(path: str) -> tuple | None:
    """_key_of() the file at path now, None while there is none."""
    try:
        return _key_of(os.stat(path))
    except FileNotFoundError:
        return None


def _may_try(key: tuple) -> bool:
    """False while a miss on key is less than PREFETCH_RETRY old; a try
    counts as a miss until _keep() says otherwise."""
    now = time.monotonic()
    if _retry_at.get(key, 0.0) > now:
        return False
    _retry_at[key] = now + PREFETCH_RETRY
    while len(_retry_at) > 4 * PREFETCH_MAX:
        del _retry_at[next(iter(_retry_at))]
    return True


def _keep(cache: dict, key: tuple, value, retry_key: tuple) -> None:
    """value read ahead for key, the most recent; the least recent go."""
    _retry_at.pop(retry_key, None)
    cache[key] = value
    while len(cache) > PREFETCH_MAX:
        del cache[next(iter(cache))]


def files_state(directory: str, spec) -> tuple:
    """What a fresh import of spec's module depends on: the directory's
    listing, the source and the .pyc (None while there is none)."""
    return (stat_key(directory), stat_key(spec.origin), stat_key(spec.cached))


def _meta_path_passes(name: str) -> bool:
    """True when every finder on sys.meta_path before PathFinder is one we
    know, and none of them claims ``name`` (asking them has no effect)."""
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            return True
        if finder in (importlib.machinery.BuiltinImporter,
                      importlib.machinery.FrozenImporter):
            if finder.find_spec(name) is not None:
                return False
        elif type(finder).__qualname__ == "DistutilsMetaFinder":
            # setuptools' distutils shim answers only for the names it has
            # a spec_for_ method for.
            if hasattr(finder, f"spec_for_{name}"):
                return False
        else:
            return False
    return False


def _plain_source(spec) -> bool:
    """A plain source module (not a package) with a place for its .pyc."""
    return (type(spec.loader) is importlib.machinery.SourceFileLoader and
            spec.submodule_search_locations is None and bool(spec.cached))


def _pyc_current(spec) -> bool:
    """spec's .pyc is current: its import reads it and writes nothing.
    Otherwise the import compiles the source and writes the .pyc, unless
    sys.dont_write_bytecode (SourceFileLoader.get_code)."""
    try:
        with open(spec.cached, "rb") as f:
            head = f.read(16)
        st = os.stat(spec.origin)
    except OSError:
        return False
    # A timestamp-based .pyc (PEP 552 flags 0) of this very source.
    return (len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER and
            int.from_bytes(head[4:8], "little") == 0 and
            int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF and
            int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF)


def prefetch(directory: str, name: str) -> bool:
    """After a launch of module ``name`` (``name:function`` or ``-m name``)
    from ``directory``: find the module and read its code as the
    secondary's import would, so that the members forked from now on have
    both.  Only the plain case is read ahead: a top-level source module
    found in ``directory`` (the first entry of the secondary's sys.path)
    past builtin and frozen modules, whose import writes nothing; no user
    code runs.  Returns True when a current copy is held."""
    key = (directory, name)
    old = modules.pop(key, None)
    if old is not None and module_current(old, directory):
        modules[key] = old           # the most recent now
        return True
    if not _may_try(key) or not (name.isascii() and name.isidentifier()) or \
            name in sys.modules:
        return False
    finder = sys.path_importer_cache.get(directory)
    if type(finder) is not importlib.machinery.FileFinder or not _meta_path_passes(name):
        return False
    try:
        before = stat_key(directory)
        spec = finder.find_spec(name)
        if (spec is None or os.path.dirname(spec.origin or "") != directory or
                not _plain_source(spec)):
            return False
        pyc_current = _pyc_current(spec)
        if not (pyc_current or sys.dont_write_bytecode):
            return False               # its import writes: leave it to one
        stats = files_state(directory, spec)
        # Changed too recently to be told from a change to come?
        if time.time_ns() - max(st[4] for st in stats if st) < PREFETCH_SETTLED_NS:
            return False
        if max(st[2] for st in stats[1:] if st) > PREFETCH_MAX_BYTES:
            return False
        code = spec.loader.get_code(name)
        if code is None or stats[0] != before or files_state(directory, spec) != stats:
            return False
    except Exception:      # whatever the files hold, the template goes on
        return False
    _keep(modules, key,
          ModuleAhead(spec, code, stats, tuple(sys.meta_path), pyc_current), key)
    return True


def module_current(p: ModuleAhead, directory: str) -> bool:
    """Nothing a fresh import depends on changed since p was read, and
    that import would write nothing (in a secondary, sys.dont_write_bytecode
    follows the client's PYTHONDONTWRITEBYTECODE, not the template's)."""
    try:
        return ((p.pyc_current or sys.dont_write_bytecode) and
                tuple(sys.meta_path) == p.meta_path and
                files_state(directory, p.spec) == p.stats)
    except OSError:
        return False


def prefetch_script(directory: str, path: str) -> bool:
    """After a launch of script ``path`` (as the client gave it) from
    ``directory``: compile it as the secondary would (``python`` compiles
    a script on every run; so did every launch), for the members forked
    from now on.  Returns True when a current copy is held."""
    key = (directory, path)
    full = os.path.join(directory, path)
    old = scripts.pop(key, None)
    try:
        if old is not None and stat_key(full) == old[1]:
            scripts[key] = old
            return True
    except OSError:
        return False
    if not _may_try(("script", *key)):
        return False
    try:
        # Non-blocking: whatever the path names now, the template must
        # not wait on it (a FIFO put in the script's place).
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            key_st = _key_of(st)
            if (not stat.S_ISREG(st.st_mode) or st.st_size > PREFETCH_MAX_BYTES or
                    time.time_ns() - st.st_ctime_ns < PREFETCH_SETTLED_NS):
                return False
            with open(fd, "rb", closefd=False) as f:
                source = f.read()
            real = _pyfile.real_path(fd, full)
        finally:
            os.close(fd)
        if stat_key(full) != key_st or not _pyfile.runs_as_source(path, source):
            return False
        code = compile(source, _pyfile.script_file(path, directory), "exec",
                       dont_inherit=True)
    except Exception:      # whatever the file holds, the template goes on
        return False
    _keep(scripts, key, (code, key_st, real), ("script", *key))
    return True


def prefetch_entry(directory: str, entry: str, module_flag: bool,
                   mounts: list[tuple[str, str]], cwd_fd: int | None = None) -> bool:
    """prefetch() or prefetch_script(), as classify() names the entry for
    a client in ``directory`` (cwd_fd, or None: opened here); a native
    entry is not read ahead.  ``directory`` is known not to be on a network
    or FUSE filesystem; an entry's path that is (``mounts``:
    parse_mounts()) is left to the secondary, since the template could
    wait on its server."""
    if not module_flag and on_remote_fs(
            os.path.normpath(os.path.join(directory, entry)), mounts):
        return False
    try:
        if cwd_fd is not None:
            target = classify(entry, module_flag, cwd_fd)
        else:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                target = classify(entry, module_flag, fd)
            finally:
                os.close(fd)
    except (EntryError, OSError, ValueError):
        return False
    if target.kind in (MODULE, FUNCTION):
        return prefetch(directory, target.name)
    return target.kind == SCRIPT and prefetch_script(directory, target.path)


def prefetched() -> list[str]:
    """What is read ahead, as "module (directory)" then "script (directory)",
    least recent first."""
    return ([f"{name} ({directory})" for directory, name in modules] +
            [f"{path} ({directory})" for directory, path in scripts])


# Filesystem types whose calls may wait on a server (or a FUSE daemon,
# "fuse" and "fuse.*").
_REMOTE_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p",
                        "afs", "coda", "ncpfs", "glusterfs", "lustre", "gfs2",
                        "ocfs2", "davfs", "orangefs", "pvfs2", "virtiofs"})
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def parse_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) from /proc/self/mountinfo text, the
    longest mount points first, and of two on the same point the one
    mounted last (the one seen there) first."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail:
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            mounts.append((point, tail[0]))
    mounts.reverse()
    mounts.sort(key=lambda m: len(m[0]), reverse=True)    # stable
    return mounts


def on_remote_fs(path: str, mounts: list[tuple[str, str]]) -> bool:
    """True when absolute ``path`` lies on a network or FUSE filesystem as
    ``mounts`` (parse_mounts()) has them; the path is matched as a string,
    without looking at the filesystem."""
    for point, fstype in mounts:
        if path == point or path.startswith(point.rstrip("/") + "/"):
            return fstype in _REMOTE_FS or fstype.startswith("fuse")
    return False
