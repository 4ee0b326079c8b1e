"""In the secondary: load the Python entry the launch names (a
forkhost._classify.Target) as ``python`` would, taking what the template
read ahead (forkhost._readahead) when nothing it was read from changed.
secondary.py runs what these return."""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import types
from collections import namedtuple

from . import _pyfile, _readahead
from ._classify import EntryError, Target
from ._errors import EXIT_CANNOT_RUN, EXIT_NOT_FOUND

# python's status when the program it runs raises, or does not compile.
EXIT_PYTHON_ERROR = 1


def _take_prefetched(name: str) -> _readahead.ModuleAhead | None:
    """The template's copy of module ``name``, if a fresh import would find
    and read exactly that: sys.path[0] (the client's directory) is where
    it was found, nothing imported it yet, and the directory, the source
    and the .pyc are unchanged."""
    if not _readahead.modules or not sys.path or name in sys.modules:
        return None
    p = _readahead.modules.get((sys.path[0], name))
    return p if p is not None and _readahead.module_current(p, sys.path[0]) else None


def _import_prefetched(p: _readahead.ModuleAhead) -> types.ModuleType:
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


# A script entry loaded: its code, its ``__main__`` and the sys.path[0]
# ``python`` would give it.
Script = namedtuple("Script", "code main path0")


def _take_script(path: str) -> tuple[types.CodeType, str] | None:
    """The template's compiled copy of script ``path`` and its real path,
    if the file the secondary would read now is the one it was compiled
    from."""
    if not _readahead.scripts:
        return None
    try:
        cwd = os.getcwd()
        hit = _readahead.scripts.get((cwd, path))
        if hit is not None and _readahead.stat_key(os.path.join(cwd, path)) == hit[1]:
            return hit[0], hit[2]
    except OSError:
        pass
    return None


def load_script(path: str) -> Script:
    """Load what ``python PATH`` runs: a source file, a .pyc file, or a
    directory or zip file holding a __main__.py."""
    file = _pyfile.script_file(path)
    hit = _take_script(path)
    if hit is not None:
        code, real = hit
        return _script(code, file, real, importlib.machinery.SourceFileLoader)
    try:
        with open(path, "rb") as f:
            data = f.read()
            real = _pyfile.real_path(f.fileno(), file)
    except IsADirectoryError:
        return _load_main_from(path, file)
    except FileNotFoundError:
        raise EntryError(f"script {path!r} not found", EXIT_NOT_FOUND) from None
    except OSError as err:
        raise EntryError(f"cannot read script {path!r}: {err.strerror}",
                         EXIT_CANNOT_RUN) from err
    if _pyfile.may_be_zip(data):
        finder = _pyfile.importer(file)
        if finder is not None:
            return _load_main_from(path, file, finder)
    if _pyfile.is_pyc(path, data):
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
        finder = _pyfile.importer(file)
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
