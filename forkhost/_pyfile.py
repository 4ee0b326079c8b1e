"""What ``python PATH`` does with the file it is given, as far as forkhost
must do the same: the name it gives the script, where it puts sys.path[0],
how it tells a .pyc or a zip file from source, and how it finds the import
finder of a path.  Shared by the template's read-ahead (forkhost._readahead)
and the secondary's loading (forkhost._load), so both see a file alike."""

from __future__ import annotations

import importlib.util
import os
import sys


def script_file(path: str, cwd: str | None = None) -> str:
    """What ``python PATH`` calls its script: ``__file__`` and the file name
    in its code and tracebacks.  CPython makes a relative PATH absolute by
    joining it to the cwd, not normalizing it (_Py_abspath): ``./x.py``
    run from /a is ``/a/./x.py``, and from / it is ``//x.py``."""
    if os.path.isabs(path):
        return path
    return (os.getcwd() if cwd is None else cwd) + "/" + path


def real_path(fd: int, file: str) -> str:
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


def is_pyc(path: str, data: bytes) -> bool:
    """``python PATH`` runs PATH as compiled code: by its name, or by its
    first two bytes, as CPython's maybe_pyc_file() checks."""
    return path.endswith(".pyc") or data[:2] == importlib.util.MAGIC_NUMBER[:2]


def may_be_zip(data: bytes) -> bool:
    """A zip file's end record is in its last 64 KiB + 22 bytes: without
    one, zipimport would refuse the file (a zipapp starts with a #! line)."""
    return data.rfind(b"PK\x05\x06", max(0, len(data) - 65557)) >= 0


def runs_as_source(path: str, data: bytes) -> bool:
    """Surely compiled as source by ``python PATH``: neither a .pyc nor,
    maybe, a zip file (which only zipimport can tell)."""
    return not (is_pyc(path, data) or may_be_zip(data))


def importer(path: str):
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
