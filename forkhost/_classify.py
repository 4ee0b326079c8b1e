"""What an entry names, decided before the fork.

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
fork path (no Python in the child) for ELF files.  It has one
implementation, in C (fh_entry_decide, forkhost/request.h), which pool
members and the template's loop call for every launch; classify() is its
Python face, for the checks made outside the launch path (``forkhost
check``, doctor, supervised workers).  The secondary loads what it names
with forkhost._load.
"""

from __future__ import annotations

import os
from ._record import Record

NATIVE, SCRIPT, MODULE, FUNCTION = "native", "script", "module", "function"


class Target(Record):
    """An entry classified: its kind; path, for file entries, as given
    (relative to the client's cwd); name, the module's (MODULE, FUNCTION);
    symbol, the native symbol or the Python attribute path (or None)."""
    _fields = ("kind", "path", "name", "symbol")
    _defaults = ("", "", None)


class EntryError(Exception):
    """An entry that is not found (127) or cannot be run (126); or, with
    as_python, Python code that python itself refuses to run (a syntax
    error): the secondary says what python says (the exception, the
    __cause__) and exits as python does (1)."""

    def __init__(self, message: str, exit_code: int, as_python: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.as_python = as_python


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
                               lib.AT_FDCWD if cwd_fd is None else cwd_fd, t)
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
