"""Entry forms: decide what an entry names (in the template, before the fork)
and load Python entries (in the secondary, after it).

| form                      | runs                                          |
|---------------------------|-----------------------------------------------|
| ``pkg.module:function``   | ``function(argv)``; int return is the status  |
| ``path/to/script.py``     | the script as ``__main__``; or a .pyc, or a   |
|                           | directory or zip file with a __main__.py      |
| ``-m pkg.module``         | the module as ``__main__``                    |
| ``path/lib.so[:symbol]``  | dlopen + ``int symbol(argc, argv, envp)``      |
| a PIE executable          | the same, via fh_entry_load                   |

Classification needs only a stat and the first four bytes of a file, so the
template can answer "not found" (127) without forking, and pick the native
fork path (no Python in the child) for ELF files.  It is done in C
(fh_entry_decide, csrc/lib/request.c); classify() is its Python face.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import marshal
import os
import re
import stat
import sys
import time
import types
import zipimport
from dataclasses import dataclass

from .errors import EXIT_CANNOT_RUN, EXIT_NOT_FOUND

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

NATIVE, SCRIPT, MODULE, FUNCTION = "native", "script", "module", "function"


@dataclass(frozen=True)
class Target:
    kind: str
    path: str = ""          # file entries: as given (relative to client's cwd)
    name: str = ""          # module name (MODULE, FUNCTION)
    symbol: str | None = None  # native symbol or Python attribute path


class EntryError(Exception):
    """An entry that is not found (127) or cannot be run (126); or, with
    as_python, Python code that python itself refuses to run (a syntax
    error): the secondary says what python says (the exception, the
    __cause__) and exits as python does (1)."""

    def __init__(self, message: str, exit_code: int, as_python: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.as_python = as_python


# python's status when the program it runs raises, or does not compile.
EXIT_PYTHON_ERROR = 1


def _function_parts(entry: str) -> tuple[str, str] | None:
    """(module, function) when ``entry`` is spelled MODULE:FUNCTION (what
    to read ahead for it; what an entry names is classify()'s to say)."""
    head, sep, tail = entry.rpartition(":")
    if sep and head and tail and _DOTTED.match(head) and _DOTTED.match(tail):
        return head, tail
    return None


_AT_FDCWD = -100   # <fcntl.h>'s, for cwd_fd None


def classify(entry: str, module_flag: bool, cwd_fd: int | None) -> Target:
    """What ``entry`` names for a client whose cwd is ``cwd_fd`` (None: this
    process's cwd), as the template and pool members decide it: C's
    fh_entry_decide() (request.h), one stat and a 4-byte read.

    Raises EntryError(127) when it names nothing, EntryError(126) for a
    ':symbol' on a file that is not ELF.
    """
    from ._native import ffi, lib    # `forkhost run` loads no native code

    raw = os.fsencode(entry)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    t = ffi.new("struct fh_entry_target *")
    kind = lib.fh_entry_decide(raw, bool(module_flag),
                               _AT_FDCWD if cwd_fd is None else cwd_fd, t)
    if kind == lib.FH_ENTRY_ERROR:
        raise EntryError(ffi.string(t.message).decode("utf-8", "surrogateescape"),
                         t.exit_code)
    name = os.fsdecode(ffi.string(t.name))
    symbol = os.fsdecode(ffi.string(t.symbol)) if t.symbol != ffi.NULL else None
    if kind == lib.FH_ENTRY_NATIVE:
        return Target(NATIVE, path=name, symbol=symbol)
    if kind == lib.FH_ENTRY_SCRIPT:
        return Target(SCRIPT, path=name)
    if kind == lib.FH_ENTRY_FUNCTION:
        return Target(FUNCTION, name=name, symbol=symbol)
    return Target(MODULE, name=name)


# -- in the template, after a launch ---------------------------------------

_FILEFINDER_HOOK = "FileFinder.path_hook.<locals>.path_hook_for_FileFinder"
# How many client directories, entry modules and scripts the template keeps
# ready (each); the least recently launched goes first.
PREFETCH_MAX = 32
# The client directories whose finders prepare_finder() added, least
# recent first.
_finder_dirs: dict[str, None] = {}


def _importer(path: str):
    """The import finder for ``path`` as a sys.path entry, or None: each of
    sys.path_hooks in turn until one accepts it, as the import system's
    first search there does (and ``python PATH`` first, to see whether
    PATH is a directory or zip file to run: PyImport_GetImporter); the
    finder is cached in sys.path_importer_cache, as they cache it."""
    for hook in sys.path_hooks:
        try:
            finder = hook(path)
        except ImportError:
            continue
        sys.path_importer_cache[path] = finder
        return finder
    return None


def prepare_finder(path: str) -> bool:
    """Make sure the import finder for directory ``path`` is in
    sys.path_importer_cache, adding it as the import system would on its
    first search there (each of sys.path_hooks in turn until one accepts
    the path).

    A Python secondary's sys.path starts with the client's directory; a
    directory the template never searched costs the secondary a finder of
    its own on every launch (the zip importer refusing it with an
    exception, then a FileFinder).  The template does this once, off the
    clients' path, for the PREFETCH_MAX directories its clients used last,
    and the members it forks afterwards inherit the finder.  The finder's
    listing is not read here: the secondary forgets it anyway
    (secondary._set_path), so what a client changed in its directory is
    always seen.  Only the standard hooks are called (the zip importer,
    FileFinder's): the template runs no code a preloaded module may have
    installed.  Returns True when ``path`` has a finder (one of the
    template's own sys.path entries, too)."""
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
    if _importer(path) is None:
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


# What the template read ahead for the module entries its clients launch
# (prefetch), by (directory, module name), least recent first; members
# forked afterwards inherit it and import_function / load_module use it
# when nothing it depends on has changed (_prefetched).
# Files larger than this are not read ahead: the template's loop waits
# while it compiles (5-10 KiB a millisecond measured) or unmarshals.
PREFETCH_MAX_BYTES = 128 << 10
# A directory or file changed less than this long before the template read
# it is not read ahead: file timestamps are coarse (a few ms), and a change
# in the same tick would leave them equal.
PREFETCH_SETTLED_NS = 100_000_000


@dataclass(frozen=True)
class _Prefetch:
    spec: importlib.machinery.ModuleSpec
    code: types.CodeType
    stats: tuple        # _files_state() when it was read
    meta_path: tuple    # sys.meta_path when it was read
    pyc_current: bool   # else compiled: an import would write the .pyc
                        # unless sys.dont_write_bytecode


_prefetched: dict[tuple[str, str], _Prefetch] = {}
# (directory, name), ("script", directory, path) -> when to try again
# after a miss (time.monotonic()).
_retry_at: dict[tuple, float] = {}
PREFETCH_RETRY = 1.0


def _key_of(st: os.stat_result) -> tuple:
    """What tells one version of a file from another (ctime last)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat_key(path: str) -> tuple | None:
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


def _files_state(directory: str, spec) -> tuple:
    """What a fresh import of spec's module depends on: the directory's
    listing, the source and the .pyc (None while there is none)."""
    return (_stat_key(directory), _stat_key(spec.origin), _stat_key(spec.cached))


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
    """In the template, after a launch of module ``name`` (``name:function``
    or ``-m name``) from ``directory``: find the module and read its code
    as the secondary's import would, so that the members forked from now on
    have both.  Only the plain case is read ahead: a top-level source
    module found in ``directory`` (the first entry of the secondary's
    sys.path) past builtin and frozen modules, whose import writes nothing;
    no user code runs.  Returns True when a current copy is held."""
    key = (directory, name)
    old = _prefetched.pop(key, None)
    if old is not None and _current(old, directory):
        _prefetched[key] = old           # the most recent now
        return True
    if not _may_try(key) or not _DOTTED.match(name) or "." in name or \
            name in sys.modules:
        return False
    finder = sys.path_importer_cache.get(directory)
    if type(finder) is not importlib.machinery.FileFinder or not _meta_path_passes(name):
        return False
    try:
        before = _stat_key(directory)
        spec = finder.find_spec(name)
        if (spec is None or os.path.dirname(spec.origin or "") != directory or
                not _plain_source(spec)):
            return False
        pyc_current = _pyc_current(spec)
        if not (pyc_current or sys.dont_write_bytecode):
            return False               # its import writes: leave it to one
        stats = _files_state(directory, spec)
        # Changed too recently to be told from a change to come?
        if time.time_ns() - max(st[4] for st in stats if st) < PREFETCH_SETTLED_NS:
            return False
        if max(st[2] for st in stats[1:] if st) > PREFETCH_MAX_BYTES:
            return False
        code = spec.loader.get_code(name)
        if code is None or stats[0] != before or _files_state(directory, spec) != stats:
            return False
    except Exception:      # whatever the files hold, the template goes on
        return False
    _keep(_prefetched, key,
          _Prefetch(spec, code, stats, tuple(sys.meta_path), pyc_current), key)
    return True


def _current(p: _Prefetch, directory: str) -> bool:
    """Nothing a fresh import depends on changed since p was read, and
    that import would write nothing (in a secondary, sys.dont_write_bytecode
    follows the client's PYTHONDONTWRITEBYTECODE, not the template's)."""
    try:
        return ((p.pyc_current or sys.dont_write_bytecode) and
                tuple(sys.meta_path) == p.meta_path and
                _files_state(directory, p.spec) == p.stats)
    except OSError:
        return False


# Scripts compiled ahead, by (directory, path as the client gave it): the
# code, the _stat_key of the file it was compiled from and its real path.
_scripts: dict[tuple[str, str], tuple[types.CodeType, tuple, str]] = {}


def script_file(path: str, cwd: str | None = None) -> str:
    """What ``python PATH`` calls its script: ``__file__`` and the file name
    in its code and tracebacks.  CPython makes a relative PATH absolute by
    joining it to the cwd, not normalizing it (_Py_abspath): ``./x.py``
    run from /a is ``/a/./x.py``, and from / it is ``//x.py``."""
    if os.path.isabs(path):
        return path
    return (os.getcwd() if cwd is None else cwd) + "/" + path


def _real_path(fd: int, file: str) -> str:
    """The real path of the file open at fd, which was opened as ``file``:
    what realpath(3) gives, which is where ``python`` puts sys.path[0]."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real.startswith("/") and not real.endswith(" (deleted)"):
            return real
    except OSError:
        pass
    try:          # not a path (pipe:[...]), or one not visible to us
        return os.path.realpath(file, strict=True)
    except (OSError, RuntimeError):
        return file


def _is_pyc(path: str, data: bytes) -> bool:
    """``python PATH`` runs PATH as compiled code: by its name, or by its
    first two bytes, as CPython's maybe_pyc_file() checks."""
    return path.endswith(".pyc") or data[:2] == importlib.util.MAGIC_NUMBER[:2]


def _runs_as_source(path: str, data: bytes) -> bool:
    """Surely compiled as source by ``python PATH``: neither a .pyc nor,
    maybe, a zip file (which only zipimport can tell)."""
    return not (_is_pyc(path, data) or _may_be_zip(data))


def _may_be_zip(data: bytes) -> bool:
    """A zip file's end record is in its last 64 KiB + 22 bytes: without
    one, zipimport would refuse the file (a zipapp starts with a #! line)."""
    return data.rfind(b"PK\x05\x06", max(0, len(data) - 65557)) >= 0


def prefetch_script(directory: str, path: str) -> bool:
    """In the template, after a launch of script ``path`` (as the client
    gave it) from ``directory``: compile it as the secondary would
    (``python`` compiles a script on every run; so did every launch), for
    the members forked from now on.  Returns True when a current copy is
    held."""
    key = (directory, path)
    full = os.path.join(directory, path)
    old = _scripts.pop(key, None)
    try:
        if old is not None and _stat_key(full) == old[1]:
            _scripts[key] = old
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
            real = _real_path(fd, full)
        finally:
            os.close(fd)
        if _stat_key(full) != key_st or not _runs_as_source(path, source):
            return False
        code = compile(source, script_file(path, directory), "exec", dont_inherit=True)
    except Exception:      # whatever the file holds, the template goes on
        return False
    _keep(_scripts, key, (code, key_st, real), ("script", *key))
    return True


def prefetch_entry(directory: str, entry: str, module_flag: bool,
                   mounts: list[tuple[str, str]]) -> bool:
    """prefetch() or prefetch_script(), as the entry names a module or a
    script (a native entry never comes here).  ``directory`` is known not
    to be on a network or FUSE filesystem; a script elsewhere that is
    (``mounts``: parse_mounts()) is left to the secondary, since the
    template could wait on its server."""
    module = module_of(entry, module_flag)
    if module is not None:
        return prefetch(directory, module)
    full = os.path.normpath(os.path.join(directory, entry))
    return not on_remote_fs(full, mounts) and prefetch_script(directory, entry)


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


def module_of(entry: str, module_flag: bool) -> str | None:
    """The module a Python entry imports by name (``-m name`` or
    ``name:function``), None for a script; as classify() tells them."""
    if module_flag:
        return entry
    parts = _function_parts(entry)
    return parts[0] if parts else None


def prefetched() -> list[str]:
    """What is read ahead, as "module (directory)" then "script (directory)",
    least recent first."""
    return ([f"{name} ({directory})" for directory, name in _prefetched] +
            [f"{path} ({directory})" for directory, path in _scripts])


# -- in the secondary ----------------------------------------------------

def _take_prefetched(name: str) -> _Prefetch | None:
    """The template's copy of module ``name``, if a fresh import would find
    and read exactly that: sys.path[0] (the client's directory) is where
    it was found, nothing imported it yet, and the directory, the source
    and the .pyc are unchanged."""
    if not _prefetched or not sys.path or name in sys.modules:
        return None
    p = _prefetched.get((sys.path[0], name))
    return p if p is not None and _current(p, sys.path[0]) else None


def _import_prefetched(p: _Prefetch) -> types.ModuleType:
    """What importlib's _load_unlocked does with a spec whose loader's
    get_code would return p.code."""
    spec = p.spec
    module = importlib.util.module_from_spec(spec)
    spec._initializing = True
    try:
        sys.modules[spec.name] = module
        try:
            exec(p.code, module.__dict__)
        except BaseException:
            sys.modules.pop(spec.name, None)
            raise
        module = sys.modules.pop(spec.name)   # to the end, as importlib does
        sys.modules[spec.name] = module
    finally:
        spec._initializing = False
    return module


def _not_found_name(err: ModuleNotFoundError, name: str) -> bool:
    """True when the module itself (or a parent package) is what is missing,
    as opposed to something it imports."""
    missing = err.name or ""
    return missing == name or name.startswith(missing + ".")


def import_function(target: Target):
    """Import target.name and return the callable target.symbol names."""
    p = _take_prefetched(target.name)
    try:
        mod = _import_prefetched(p) if p else importlib.import_module(target.name)
    except ModuleNotFoundError as err:
        if _not_found_name(err, target.name):
            raise EntryError(f"module {target.name!r} not found (searched the "
                             f"client's cwd, PYTHONPATH and the primary's sys.path)",
                             EXIT_NOT_FOUND) from err
        raise EntryError(f"module {target.name!r} cannot be imported",
                         EXIT_CANNOT_RUN) from err
    except Exception as err:   # KeyboardInterrupt, SystemExit: as python
        raise EntryError(f"module {target.name!r} cannot be imported",
                         EXIT_CANNOT_RUN) from err
    obj = mod
    for attr in target.symbol.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise EntryError(
                f"module {target.name!r} ({getattr(mod, '__file__', None)}) has no "
                f"attribute {target.symbol!r}", EXIT_NOT_FOUND) from None
    if not callable(obj):
        raise EntryError(f"{target.name}:{target.symbol} is not callable "
                         f"(it is {type(obj).__name__})", EXIT_CANNOT_RUN)
    return obj


def _main_module(file: str | None, spec=None, loader=None) -> types.ModuleType:
    """A fresh ``__main__`` as ``python`` makes it, its names in python's
    order: the module's own, then ``__annotations__`` and ``__builtins__``
    (pylifecycle.c's add_main_module), then ``__file__`` and
    ``__cached__``.  For a script, its loader and no spec; for a module
    (-m, or a directory or zip file's __main__.py), what runpy sets from
    the spec."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__package__=spec.parent if spec else None,
                         __loader__=spec.loader if spec else loader,
                         __spec__=spec, __annotations__={},
                         __builtins__=builtins, __file__=file,
                         __cached__=spec.cached if spec else None)
    if file is None:
        del main.__file__
    sys.modules["__main__"] = main
    return main


@dataclass(frozen=True)
class Script:
    """A script entry loaded: its code, its ``__main__``, and the
    sys.path[0] ``python`` would give it."""
    code: types.CodeType
    main: types.ModuleType
    path0: str


def _take_script(path: str) -> tuple[types.CodeType, str] | None:
    """The template's compiled copy of script ``path`` and its real path,
    if the file the secondary would read now is the one it was compiled
    from."""
    if not _scripts:
        return None
    try:
        cwd = os.getcwd()
        hit = _scripts.get((cwd, path))
        if hit is not None and _stat_key(os.path.join(cwd, path)) == hit[1]:
            return hit[0], hit[2]
    except OSError:
        pass
    return None


def load_script(path: str) -> Script:
    """Load what ``python PATH`` runs: a source file, a .pyc file, or a
    directory or zip file holding a __main__.py."""
    file = script_file(path)
    hit = _take_script(path)
    if hit is not None:
        code, real = hit
        return _script(code, file, real, importlib.machinery.SourceFileLoader)
    try:
        with open(path, "rb") as f:
            data = f.read()
            real = _real_path(f.fileno(), file)
    except IsADirectoryError:
        return _load_main_from(path, file)
    except FileNotFoundError:
        raise EntryError(f"script {path!r} not found", EXIT_NOT_FOUND) from None
    except OSError as err:
        raise EntryError(f"cannot read script {path!r}: {err.strerror}",
                         EXIT_CANNOT_RUN) from err
    if _may_be_zip(data):
        finder = _importer(file)
        if finder is not None:
            return _load_main_from(path, file, finder)
    if _is_pyc(path, data):
        return _script(_pyc_code(path, data), file, real,
                       importlib.machinery.SourcelessFileLoader)
    try:
        if b"\0" in data:
            raise _null_bytes(data, file)
        code = compile(data, file, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as err:
        raise EntryError(f"cannot compile script {path!r}", EXIT_PYTHON_ERROR,
                         as_python=True) from err
    return _script(code, file, real, importlib.machinery.SourceFileLoader)


def _null_bytes(data: bytes, file: str) -> SyntaxError:
    """What ``python FILE`` says of a source file with a NUL in it (its
    tokenizer reads the file; compile() of the bytes words it otherwise)."""
    at = data.index(b"\0")
    start = data.rfind(b"\n", 0, at) + 1
    text = data[start:at].decode("utf-8", "replace")
    return SyntaxError("source code cannot contain null bytes",
                       (file, data.count(b"\n", 0, at) + 1, None, text))


def _script(code: types.CodeType, file: str, real: str, loader_class) -> Script:
    """A script file's Script: ``__main__`` with the loader ``python`` gives
    it, sys.path[0] the directory of its real path."""
    return Script(code, _main_module(file, loader=loader_class("__main__", file)),
                  os.path.dirname(real))


def _pyc_code(path: str, data: bytes) -> types.CodeType:
    """The code in a .pyc file, read as run_pyc_file() reads it: the magic
    number, three more header words, then one marshalled code object."""
    if data[:4] != importlib.util.MAGIC_NUMBER:
        raise EntryError(f"cannot run {path!r}: bad magic number in .pyc file "
                         f"(not compiled by this Python)", EXIT_CANNOT_RUN)
    try:
        code = marshal.loads(memoryview(data)[16:])
    except (EOFError, ValueError, TypeError):
        code = None
    if not isinstance(code, types.CodeType):
        raise EntryError(f"cannot run {path!r}: bad code object in .pyc file",
                         EXIT_CANNOT_RUN)
    return code


def _load_main_from(path: str, file: str, finder=None) -> Script:
    """``python DIR`` or ``python APP.zip``: DIR (or the zip) goes first on
    sys.path, and its __main__ module runs as runpy runs it.  finder: the
    zip file's importer, when the caller made it."""
    if finder is None:
        finder = _importer(file)
    try:
        spec = finder.find_spec("__main__") if finder is not None else None
    except Exception as err:   # KeyboardInterrupt, SystemExit: as python
        raise EntryError(f"cannot look for '__main__' in {path!r}",
                         EXIT_CANNOT_RUN) from err
    if spec is None or spec.loader is None:
        raise EntryError(f"can't find '__main__' module in {path!r} "
                         f"(for a package use '-m PACKAGE')", EXIT_NOT_FOUND)
    try:
        code = spec.loader.get_code("__main__")
    except Exception as err:   # KeyboardInterrupt, SystemExit: as python
        raise EntryError(f"cannot load '__main__' from {path!r}", EXIT_CANNOT_RUN) from err
    if code is None:
        raise EntryError(f"'__main__' in {path!r} has no code to run", EXIT_CANNOT_RUN)
    return Script(code, _main_module(spec.origin, spec), file)


def load_module(name: str):
    """Find ``name`` like ``python -m``; returns (code, __main__ module)."""
    p = _take_prefetched(name)
    if p is not None:
        return p.code, _main_module(p.spec.origin, p.spec)
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as err:
        if _not_found_name(err, name):
            spec = None
        else:
            raise EntryError(f"module {name!r} cannot be imported",
                             EXIT_CANNOT_RUN) from err
    except Exception as err:   # KeyboardInterrupt, SystemExit: as python
        raise EntryError(f"module {name!r} cannot be imported",
                         EXIT_CANNOT_RUN) from err
    if spec is None:
        raise EntryError(f"module {name!r} not found (searched the client's cwd, "
                         f"PYTHONPATH and the primary's sys.path)", EXIT_NOT_FOUND)
    if spec.submodule_search_locations is not None:
        pkg_main = name + ".__main__"
        try:
            spec = importlib.util.find_spec(pkg_main)
        except Exception as err:   # KeyboardInterrupt, SystemExit: as python
            raise EntryError(f"module {pkg_main!r} cannot be imported",
                             EXIT_CANNOT_RUN) from err
        if spec is None:
            raise EntryError(f"{name!r} is a package and cannot be directly "
                             f"executed (it has no __main__)", EXIT_CANNOT_RUN)
    try:
        code = spec.loader.get_code(spec.name)
    except (SyntaxError, ValueError) as err:
        # python -m says so through runpy, which the secondary lets say it.
        raise EntryError(f"cannot compile module {spec.name!r}", EXIT_PYTHON_ERROR,
                         as_python=True) from err
    except Exception as err:   # KeyboardInterrupt, SystemExit: as python
        raise EntryError(f"cannot load module {spec.name!r}", EXIT_CANNOT_RUN) from err
    if code is None:
        raise EntryError(f"module {spec.name!r} has no code to run", EXIT_CANNOT_RUN)
    return code, _main_module(spec.origin, spec)
