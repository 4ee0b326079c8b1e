"""Entry forms: decide what an entry names (in the template, before the fork)
and load Python entries (in the secondary, after it).

| form                      | runs                                          |
|---------------------------|-----------------------------------------------|
| ``pkg.module:function``   | ``function(argv)``; int return is the status  |
| ``path/to/script.py``     | the script as ``__main__``                    |
| ``-m pkg.module``         | the module as ``__main__``                    |
| ``path/lib.so[:symbol]``  | dlopen + ``int symbol(argc, argv, envp)``      |
| a PIE executable          | the same, via fh_entry_load                   |

Classification needs only a stat and the first four bytes of a file, so the
template can answer "not found" (127) without forking, and pick the native
fork path (no Python in the child) for ELF files.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import stat
import sys
import types
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
    """An entry that is not found (127) or cannot be run (126)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _is_file(path: str, cwd_fd: int) -> bool:
    """A regular file at path, relative to the client's cwd (dir_fd is
    ignored for absolute paths)."""
    try:
        return stat.S_ISREG(os.stat(path, dir_fd=cwd_fd).st_mode)
    except (OSError, ValueError):
        return False


def _is_elf(path: str, cwd_fd: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=cwd_fd)
    except OSError:
        return False
    try:
        return os.pread(fd, 4, 0) == b"\x7fELF"
    finally:
        os.close(fd)


def _cwd_name(cwd_fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{cwd_fd}")
    except OSError:
        return "the client's cwd"


def classify(entry: str, module_flag: bool, cwd_fd: int) -> Target:
    """What ``entry`` names for a client whose cwd is ``cwd_fd``.

    Raises EntryError(127) when it names nothing.
    """
    if module_flag:
        if not _DOTTED.match(entry):
            raise EntryError(f"invalid module name {entry!r}", EXIT_NOT_FOUND)
        return Target(MODULE, name=entry)
    path, symbol = entry, None
    if not _is_file(path, cwd_fd):
        head, sep, tail = entry.rpartition(":")
        if sep and head and _is_file(head, cwd_fd):
            path, symbol = head, tail or None
        elif sep and head and tail and _DOTTED.match(head) and _DOTTED.match(tail):
            return Target(FUNCTION, name=head, symbol=tail)
        else:
            where = "" if os.path.isabs(path) else f" (relative to {_cwd_name(cwd_fd)})"
            looks_like_path = "/" in entry or entry.endswith((".py", ".so")) or \
                re.search(r"\.so[.:]", entry)
            hint = "" if looks_like_path or sep else \
                "; for a module use '-m MODULE' or 'MODULE:FUNCTION'"
            raise EntryError(f"entry {entry!r} not found: no such file{where}{hint}",
                             EXIT_NOT_FOUND)
    if _is_elf(path, cwd_fd):
        return Target(NATIVE, path=path, symbol=symbol)
    if symbol is not None:
        raise EntryError(
            f"entry {entry!r}: a ':symbol' applies to shared objects and "
            f"executables, and {path!r} is not ELF", EXIT_CANNOT_RUN)
    return Target(SCRIPT, path=path)


# -- in the template, after a launch ---------------------------------------

def prepare_finder(path: str) -> bool:
    """Put the import finder for directory ``path`` in
    sys.path_importer_cache, as the import system would on its first search
    there (each of sys.path_hooks in turn until one accepts the path).

    A Python secondary's sys.path starts with the client's directory; a
    directory the template never searched costs the secondary a finder of
    its own on every launch (the zip importer refusing it with an
    exception, then a FileFinder).  The template does this once, off the
    clients' path, for the directories its clients use, and the members it
    forks afterwards inherit the finder.  The finder's listing is not read
    here: the secondary forgets it anyway (secondary._set_path), so what a
    client changed in its directory is always seen.  Returns True when a
    finder was added."""
    cache = sys.path_importer_cache
    if path in cache or not os.path.isabs(path):
        return False
    for hook in sys.path_hooks:
        try:
            finder = hook(path)
        except ImportError:
            continue
        cache[path] = finder
        return True
    return False


# -- in the secondary ----------------------------------------------------

def _not_found_name(err: ModuleNotFoundError, name: str) -> bool:
    """True when the module itself (or a parent package) is what is missing,
    as opposed to something it imports."""
    missing = err.name or ""
    return missing == name or name.startswith(missing + ".")


def import_function(target: Target):
    """Import target.name and return the callable target.symbol names."""
    try:
        mod = importlib.import_module(target.name)
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


def _main_module(file: str | None, spec=None) -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=file, __spec__=spec, __builtins__=__builtins__,
                         __loader__=spec.loader if spec else None,
                         __package__=spec.parent if spec else None,
                         __cached__=None)
    if file is None:
        del main.__file__
    sys.modules["__main__"] = main
    return main


def load_script(path: str):
    """Compile the script; returns (code, __main__ module)."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except FileNotFoundError:
        raise EntryError(f"script {path!r} not found", EXIT_NOT_FOUND) from None
    except OSError as err:
        raise EntryError(f"cannot read script {path!r}: {err.strerror}",
                         EXIT_CANNOT_RUN) from err
    abspath = os.path.abspath(path)
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as err:
        raise EntryError(f"cannot compile script {path!r}", EXIT_CANNOT_RUN) from err
    return code, _main_module(abspath)


def load_module(name: str):
    """Find ``name`` like ``python -m``; returns (code, __main__ module)."""
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
    except Exception as err:   # KeyboardInterrupt, SystemExit: as python
        raise EntryError(f"cannot load module {spec.name!r}", EXIT_CANNOT_RUN) from err
    if code is None:
        raise EntryError(f"module {spec.name!r} has no code to run", EXIT_CANNOT_RUN)
    return code, _main_module(spec.origin, spec)
