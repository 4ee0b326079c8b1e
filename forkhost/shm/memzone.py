"""Memzones: named, aligned allocations in the arena (fh_memzone_*).

Every ring, mempool and hash table lives in a memzone, so this is also how
tools see what a prefix holds.  A Memzone wraps the directory slot, which
never changes once published, so the object stays valid (and usable from
any process of the prefix) for the arena's lifetime.
"""

from __future__ import annotations

import errno

from .._native import ffi, lib
from ._util import address, cname, raise_errno

NAMESIZE = lib.FH_MEMZONE_NAMESIZE
MAX_MEMZONES = lib.FH_MEMZONE_MAX


class Memzone:
    """One memzone: ``name``, ``addr`` (valid in every process of the
    prefix), ``size``, ``align``; ``buffer()`` is a zero-copy view."""

    __slots__ = ("_mz",)

    def __init__(self, mz):
        self._mz = mz          # const struct fh_memzone * into the directory

    @classmethod
    def reserve(cls, name: str | bytes, size: int, align: int = 0) -> "Memzone":
        """Reserve ``size`` zero-filled bytes aligned to ``align`` (a power
        of two; 0 = one cache line).  NameExistsError, NoSpaceError."""
        b = cname(name, NAMESIZE, "memzone")
        if size < 0 or align < 0 or (align & (align - 1)):
            raise ValueError(f"memzone {name!r}: size must be >= 0 and align a "
                             f"power of two (got size {size}, align {align})")
        mz = lib.fh_memzone_reserve(b, size, align, 0)
        if mz == ffi.NULL:
            raise_errno(ffi.errno, f"cannot reserve memzone {b.decode(errors='replace')!r}"
                        f" ({size} bytes)")
        return cls(mz)

    @classmethod
    def lookup(cls, name: str | bytes) -> "Memzone":
        """The memzone called ``name``; NotFoundError if there is none."""
        b = cname(name, NAMESIZE, "memzone")
        mz = lib.fh_memzone_lookup(b)
        if mz == ffi.NULL:
            raise_errno(ffi.errno, f"memzone {b.decode(errors='replace')!r}",
                        "not found" if ffi.errno == errno.ENOENT else None)
        return cls(mz)

    @property
    def name(self) -> str:
        return ffi.string(self._mz.name).decode(errors="replace")

    @property
    def addr(self) -> int:
        return address(self._mz.addr)

    @property
    def size(self) -> int:
        return int(self._mz.len)

    @property
    def align(self) -> int:
        return int(self._mz.align)

    @property
    def flags(self) -> int:
        return int(self._mz.flags)

    def buffer(self) -> memoryview:
        """A writable memoryview of the whole zone, without copying."""
        return memoryview(ffi.buffer(ffi.cast("char *", self._mz.addr), self._mz.len))

    def cast(self, ctype: str):
        """The zone's address as cffi type ``ctype`` (e.g. "uint64_t *")."""
        return ffi.cast(ctype, self._mz.addr)

    def __eq__(self, other):
        return isinstance(other, Memzone) and self._mz == other._mz

    def __hash__(self):
        return hash(address(self._mz))

    def __repr__(self):
        return (f"<Memzone {self.name!r} at 0x{self.addr:x}, {self.size} bytes, "
                f"align {self.align}>")


# fh_memzone_walk calls back into Python through an extern "Python"
# function (cdef/shm_extra.h); arg is a handle to the list being filled.
@ffi.def_extern()
def _fh_shm_memzone_cb(mz, arg):
    ffi.from_handle(arg).append(Memzone(mz))
    return 0


def memzones() -> list[Memzone]:
    """Every memzone of the prefix, in creation order."""
    found: list[Memzone] = []
    if lib.fh_arena_base() == ffi.NULL:
        raise_errno(errno.ENODEV, "cannot list memzones")
    handle = ffi.new_handle(found)     # alive until the walk returns
    lib.fh_memzone_walk(lib._fh_shm_memzone_cb, handle)
    return found


def free_bytes() -> int:
    """Bytes the arena can still hand out to new memzones."""
    if lib.fh_arena_base() == ffi.NULL:
        raise_errno(errno.ENODEV, "cannot count free bytes")
    return int(lib.fh_memzone_free_bytes())


def memzone_count() -> int:
    if lib.fh_arena_base() == ffi.NULL:
        raise_errno(errno.ENODEV, "cannot count memzones")
    return int(lib.fh_memzone_count())
