"""Can an entry be loaded in a secondary, and if not, why?

The check behind ``forkhost doctor ENTRY``.  It is an entry itself,
``forkhost.entry_check:main``, launched in a secondary of the prefix
like any other, so it sees exactly what a launch of ENTRY would see: the
template's loaded libraries and modules, the static TLS they left, the
loader's search path, and the client's environment and cwd.  It resolves
ENTRY with the code a launch uses and stops before running it:

- a native entry: libforkhost's fh_entry_check(), which classifies and
  loads it as fh_entry_load() does (its ELF constructors run, as at a
  launch; its symbol is not called);
- a script (source, ``.pyc``, a directory or zip file with ``__main__.py``):
  ``_load.load_script``, which reads and compiles it;
- ``-m MODULE``: ``_load.load_module``, which finds and compiles it (the
  parent packages of a dotted name are imported, as ``python -m`` imports
  them before it runs anything);
- ``MODULE:FUNCTION``: a module the primary imported already is asked as a
  launch asks it (``_load.import_function``); any other is found and
  compiled but not imported, since importing runs it, and FUNCTION is looked
  for among the names its code binds at top level.

Prints one line, ``entry-check: CAUSE: MESSAGE`` (fh_entry_check's form;
forkhost/_doctor.py maps each CAUSE to its fix), and returns 0 when the
entry loads, else the status a launch would exit with (126, 127); 2 on a
usage error.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

from . import _classify, _load, _pyfile
from ._errors import EXIT_CANNOT_RUN, EXIT_NOT_FOUND

PREFIX = "entry-check"

# The first .pyc magic number of each Python 3 release before 3.11, from
# the list in importlib._bootstrap_external; from 3.11 on, Python 3.n starts
# at 2900 + 50n.
_MAGIC_FIRST = ((3000, "3.0"), (3141, "3.1"), (3160, "3.2"), (3190, "3.3"),
                (3250, "3.4"), (3320, "3.5"), (3360, "3.6"), (3390, "3.7"),
                (3400, "3.8"), (3420, "3.9"), (3430, "3.10"))
# Python 2's magic numbers lie between these.
_PY2_MAGIC = (20121, 62211)


def main(argv: list[str]) -> int:
    """The entry: ``forkhost-run forkhost.entry_check:main [-m] ENTRY``."""
    args = list(argv[1:])
    module = args[:1] == ["-m"]
    if module:
        del args[0]
    if len(args) != 1:
        sys.stderr.write("usage: forkhost-run forkhost.entry_check:main [-m] ENTRY\n")
        return 2
    code, cause, text = check(args[0], module)
    if cause is not None:              # a native entry's line is C's
        text = " ".join(text.split())
        print(f"{PREFIX}: {cause}: {text}", flush=True)
    return code


def check(entry: str, module: bool = False) -> tuple[int, str | None, str]:
    """(exit status, cause, message) for ``entry``; for a native entry the
    cause is None: fh_entry_check() has printed its line."""
    try:
        target = _classify.classify(entry, module, None)
    except _classify.EntryError as err:
        cause = "not-found" if err.exit_code == EXIT_NOT_FOUND else "not-elf"
        return err.exit_code, cause, str(err)
    except ValueError as err:          # a NUL: no launch can even send it
        return EXIT_NOT_FOUND, "not-found", f"entry {entry!r}: {err}"
    if target.kind == _classify.NATIVE:
        return _native(entry), None, ""
    try:
        if target.kind == _classify.SCRIPT:
            return 0, "ok", _script(target.path)
        if target.kind == _classify.MODULE:
            return 0, "ok", _module(target.name)
        return _function(target)
    except _classify.EntryError as err:
        return err.exit_code, *_failure(err, target)


def _native(entry: str) -> int:
    from ._native import ffi, lib
    sys.stdout.flush()
    args = [ffi.new("char[]", b"fh_entry_check"), ffi.new("char[]", os.fsencode(entry))]
    argv = ffi.new("char *[]", args + [ffi.NULL])
    return lib.fh_entry_check(2, argv, ffi.NULL)


def _script(path: str) -> str:
    script = _load.load_script(path)
    main = script.main
    if main.__spec__ is not None:
        return (f"{path!r} runs {main.__spec__.origin} as __main__, which "
                f"{_reads(main.__loader__)}")
    if isinstance(main.__loader__, importlib.machinery.SourcelessFileLoader):
        return (f"{path!r} is a .pyc file of this Python ({_this_python()}) "
                f"and its code object reads")
    return f"{path!r} is a Python script and compiles"


def _module(name: str) -> str:
    _, main = _load.load_module(name)
    return f"module {name!r} is {main.__file__}, which {_reads(main.__loader__)}"


def _reads(loader) -> str:
    return ("reads (compiled code)"
            if isinstance(loader, importlib.machinery.SourcelessFileLoader)
            else "compiles")


def _function(target: _classify.Target) -> tuple[int, str, str]:
    """MODULE:FUNCTION without running the module."""
    name, first = target.name, target.symbol.split(".")[0]
    where = f"{target.name}:{target.symbol}"
    if name in sys.modules:
        # Imported in the primary already: a launch imports nothing, and
        # neither does this.
        try:
            _load.import_function(target)
        except _classify.EntryError as err:
            return err.exit_code, ("no-attribute" if err.exit_code == EXIT_NOT_FOUND
                                   else "not-callable"), str(err)
        return 0, "ok", (f"{where} is callable (module {name!r} is one the "
                         f"primary imported)")
    spec = _find_spec(name)
    try:
        code = spec.loader.get_code(spec.name) if hasattr(spec.loader, "get_code") \
            else None
    except Exception as err:
        raise _classify.EntryError(f"module {name!r} cannot be imported",
                                 EXIT_CANNOT_RUN) from err
    if code is None:
        return 0, "unverified", (f"module {name!r} is {spec.origin}, whose "
                                 f"names only an import would show (this check "
                                 f"does not run it): {first!r} is not verified")
    bound = _binds(code, first)
    if bound is None:
        return 0, "unverified", (f"module {name!r} ({spec.origin}) compiles; it "
                                 f"binds names with 'import *' or a module "
                                 f"__getattr__, so whether it has {first!r} shows "
                                 f"only when it is imported")
    if bound is False:
        return EXIT_NOT_FOUND, "no-attribute", (
            f"module {name!r} ({spec.origin}) has no attribute {first!r}: its "
            f"code binds no such name at top level (read, not run)")
    return 0, "ok", (f"module {name!r} is {spec.origin}, which compiles and binds "
                     f"{first!r} at line {bound} (read, not run)")


def _find_spec(name: str):
    """The module's spec, failing as _load.import_function would."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as err:
        if not _load._not_found_name(err, name):
            raise _classify.EntryError(f"module {name!r} cannot be imported",
                                     EXIT_CANNOT_RUN) from err
        spec = None
    except Exception as err:       # a parent package failed to import
        raise _classify.EntryError(f"module {name!r} cannot be imported",
                                 EXIT_CANNOT_RUN) from err
    if spec is None:
        raise _classify.EntryError(f"module {name!r} not found (searched the "
                                 f"client's cwd, PYTHONPATH and the primary's "
                                 f"sys.path)", EXIT_NOT_FOUND)
    return spec


def _binds(code: types.CodeType, name: str) -> int | bool | None:
    """The line where a module's top-level code binds ``name`` (def,
    class, import, assignment), False when it binds no such name, None
    when it cannot be told without running it (``import *``, a module
    ``__getattr__``)."""
    import dis
    unknown = False
    for ins in dis.get_instructions(code):
        if ins.opname in ("STORE_NAME", "STORE_GLOBAL"):
            if ins.argval == name:
                return (ins.positions.lineno if ins.positions else None) or True
            unknown |= ins.argval == "__getattr__"
        unknown |= ins.opname == "IMPORT_STAR"
    return None if unknown else False


def _failure(err: _classify.EntryError, target: _classify.Target) -> tuple[str, str]:
    """(cause, message) for a Python entry a launch could not run."""
    cause = err.__cause__
    if err.exit_code == EXIT_NOT_FOUND:
        return "not-found", str(err)
    if target.kind == _classify.SCRIPT and cause is None:
        magic = _pyc_magic(target.path)
        if magic is not None and magic != _MAGIC:
            return "pyc-magic", (f"{err}: the file is for {_python_of(magic)} "
                                 f"(magic number {magic}); the primary's is "
                                 f"{_this_python()}")
        if magic is not None:
            return "pyc-bad", str(err)
    if target.kind == _classify.MODULE and cause is None and _is_package(target.name):
        return "package-no-main", str(err)
    if isinstance(cause, SyntaxError) or (
            isinstance(cause, ValueError) and "null bytes" in str(cause)):
        return "syntax-error", f"{err}: {type(cause).__name__}: {cause}"
    if isinstance(cause, OSError):
        return "unreadable", str(err)
    if cause is not None:
        return "import-error", f"{err}: {type(cause).__name__}: {cause}"
    return "cannot-run", str(err)


def _is_package(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        return False
    return spec is not None and spec.submodule_search_locations is not None


def _pyc_magic(path: str) -> int | None:
    """The magic number of ``path`` when ``python PATH`` would run it as
    compiled code (a .pyc), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if not _pyfile.is_pyc(path, head) or len(head) < 2:
        return None
    return int.from_bytes(head[:2], "little")


def _python_of(magic: int) -> str:
    """The Python release whose .pyc files start with ``magic``."""
    if magic >= 3450:
        return f"Python 3.{(magic - 2900) // 50}"
    if _PY2_MAGIC[0] <= magic <= _PY2_MAGIC[1]:
        return "Python 2"
    release = None
    for first, name in _MAGIC_FIRST:
        if magic >= first:
            release = name
    return f"Python {release}" if release else "no known Python"


_MAGIC = int.from_bytes(importlib.util.MAGIC_NUMBER[:2], "little")


def _this_python() -> str:
    return f"Python {sys.version.split()[0]}, magic number {_MAGIC}"
