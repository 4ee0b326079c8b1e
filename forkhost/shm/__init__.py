"""forkhost.shm: the shared-memory objects of a prefix, from Python.

Memzones, rings, mempools, hash tables, arrays and the shared heap
(``forkhost.shm.heap``: malloc/calloc blocks) live in the arena the
primary mapped before it forked the template.  Any process of the prefix
(the primary after ``Primary.start()``, any secondary, or a process that
called :func:`attach`) creates them or finds them by name; addresses in
them are valid in all of those processes.  Thin wrappers over forkhost._native (cffi
API mode): one C call per Python call, and the bulk/burst methods move whole
arrays per call.

    from forkhost.shm import Ring
    ring = Ring.lookup("app.jobs")
    ring.enqueue_burst(array('Q', range(32)))

Errors are forkhost exceptions (NameExistsError, WrongTypeError,
NotFoundError, DestroyedError, NoSpaceError, ModuleMismatchError,
NoArenaError, AttachError: all ShmError), chained to the OSError of the C
call.  Memzones are freed with ``Memzone.free()``, rings, mempools and hash
tables with ``.destroy()`` (docs/shm.md, Freeing).
"""

from .._errors import (AttachError, DestroyedError, ModuleMismatchError,
                      NameExistsError, NoArenaError, NoSpaceError,
                      NotFoundError, ShmError, WrongTypeError)
from . import heap
from .array import Array, array
from .attach import Attachment, attach
from .hash import HashTable, load_native, native_function
from .heap import Block, calloc, malloc
from .memzone import Memzone, free_bytes, memzone_count, memzones
from .mempool import Mempool
from .ring import SC_DEQ, SP_ENQ, Ring


def arena() -> tuple[int, int] | None:
    """(base address, size) of this process's arena, or None if it has none.
    The size is what is usable now: the arena grows up to arena_max()."""
    from .._native import ffi, lib
    base = lib.fh_arena_base()
    if base == ffi.NULL:
        return None
    return int(ffi.cast("uintptr_t", base)), int(lib.fh_arena_size())


def arena_max() -> int | None:
    """The size this process's arena can grow to (the address range every
    process maps for it, --arena-max), or None if it has none."""
    from .._native import ffi, lib
    if lib.fh_arena_base() == ffi.NULL:
        return None
    return int(lib.fh_arena_max())


__all__ = [
    "Memzone", "memzones", "free_bytes", "memzone_count", "arena", "arena_max",
    "Ring", "SP_ENQ", "SC_DEQ",
    "Mempool",
    "HashTable", "load_native", "native_function",
    "Array", "array",
    "heap", "malloc", "calloc", "Block",
    "attach", "Attachment",
    "ShmError", "NoArenaError", "NameExistsError", "WrongTypeError",
    "NotFoundError", "DestroyedError", "NoSpaceError", "ModuleMismatchError",
    "AttachError",
]
