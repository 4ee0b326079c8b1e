"""Memzones: named, aligned allocations in the arena (fh_memzone_*).

Every ring, mempool and hash table lives in a memzone, so this is also how
tools see what a prefix holds.  A Memzone is a checked handle: it keeps the
directory slot and the generation the memzone had when it was found, and
checks it before every use, so once the memzone is freed (by any process)
every use raises DestroyedError, even if the name and the bytes were handed
out again since (docs/shm.md, Freeing).
"""

from __future__ import annotations

import errno

from .._native import ffi, lib
from ._util import address, cname, raise_errno
from .._errors import DestroyedError

NAMESIZE = lib.FH_MEMZONE_NAMESIZE
MAX_MEMZONES = lib.FH_MEMZONE_MAX


class Memzone:
    """One memzone: ``name``, ``addr`` (valid in every process of the
    prefix), ``size``, ``align``; ``buffer()`` is a zero-copy view;
    ``free()`` gives it back."""

    __slots__ = ("_mz", "_gen", "name", "_addr", "_size", "_align", "_flags")

    def __init__(self, mz, copy=None):
        """mz: the directory slot (const struct fh_memzone *); copy: a
        consistent copy of it (fh_memzone_copy), made here when None."""
        if copy is None:
            copy = ffi.new("struct fh_memzone *")
            if lib.fh_memzone_copy(mz, copy) < 0:
                raise_errno(ffi.errno, "memzone")
        self._mz = mz
        self._gen = copy.gen
        self.name = ffi.string(copy.name).decode(errors="replace")
        self._addr = copy.addr
        self._size = int(copy.len)
        self._align = int(copy.align)
        self._flags = int(copy.flags)

    @classmethod
    def _found(cls, b: bytes, mz) -> "Memzone | None":
        """A handle on slot mz if it still holds memzone b, else None."""
        copy = ffi.new("struct fh_memzone *")
        if lib.fh_memzone_copy(mz, copy) < 0 or ffi.string(copy.name) != b:
            return None                 # freed (and maybe reused) meanwhile
        return cls(mz, copy)

    @classmethod
    def reserve(cls, name: str | bytes, size: int, align: int = 0) -> "Memzone":
        """Reserve ``size`` zero-filled bytes aligned to ``align`` (a power
        of two; 0 = one cache line).  NameExistsError, WrongTypeError (the
        name is another type's), NoSpaceError."""
        b = cname(name, NAMESIZE, "memzone")
        if size < 0 or align < 0 or (align & (align - 1)):
            raise ValueError(f"memzone {name!r}: size must be >= 0 and align a "
                             f"power of two (got size {size}, align {align})")
        mz = lib.fh_memzone_reserve(b, size, align, 0)
        if mz == ffi.NULL:
            err = ffi.errno
            raise_errno(err, f"cannot reserve memzone {b.decode(errors='replace')!r}"
                        f" ({size} bytes)", name=b)
        found = cls._found(b, mz)
        if found is None:
            raise DestroyedError(f"memzone {b.decode(errors='replace')!r} was freed "
                                 f"as soon as it was reserved", errno.EIDRM)
        return found

    @classmethod
    def lookup(cls, name: str | bytes) -> "Memzone":
        """The memzone called ``name``; NotFoundError if there is none,
        WrongTypeError if the name is another type's."""
        b = cname(name, NAMESIZE, "memzone")
        while True:
            mz = lib.fh_memzone_lookup(b)
            if mz == ffi.NULL:
                err = ffi.errno
                raise_errno(err, f"memzone {b.decode(errors='replace')!r}",
                            "not found" if err == errno.ENOENT else None, b)
            found = cls._found(b, mz)
            if found is not None:
                return found

    def _check(self):
        if lib.fh_memzone_gen(self._mz) != self._gen:
            raise DestroyedError(f"memzone {self.name!r}: it was freed", errno.EIDRM)

    @property
    def alive(self) -> bool:
        """False once the memzone was freed (by any process)."""
        return lib.fh_memzone_gen(self._mz) == self._gen

    @property
    def addr(self) -> int:
        self._check()
        return address(self._addr)

    @property
    def size(self) -> int:
        self._check()
        return self._size

    @property
    def align(self) -> int:
        self._check()
        return self._align

    @property
    def flags(self) -> int:
        self._check()
        return self._flags

    def buffer(self) -> memoryview:
        """A writable memoryview of the whole zone, without copying.  The
        view itself is not checked: do not use it after the zone is freed."""
        self._check()
        return memoryview(ffi.buffer(ffi.cast("char *", self._addr), self._size))

    def cast(self, ctype: str):
        """The zone's address as cffi type ``ctype`` (e.g. "uint64_t *")."""
        self._check()
        return ffi.cast(ctype, self._addr)

    def free(self) -> None:
        """Give the memzone back (rte_memzone_free): lookups of its name fail
        from now on, the name can be reserved again, and every handle on it,
        in any process, raises DestroyedError from now on.  Nobody may use
        the bytes (a buffer() view, an object living there) afterwards.
        DestroyedError if it was freed already."""
        copy = ffi.new("struct fh_memzone *")
        b = self.name.encode()
        ffi.memmove(copy.name, b, len(b))
        copy.gen = self._gen
        if lib.fh_memzone_free(copy) < 0:
            raise_errno(ffi.errno, f"cannot free memzone {self.name!r}")

    def __eq__(self, other):
        return isinstance(other, Memzone) and self._mz == other._mz and \
            self._gen == other._gen

    def __hash__(self):
        return hash((address(self._mz), self._gen))

    def __repr__(self):
        if not self.alive:
            return f"<Memzone {self.name!r} (freed)>"
        return (f"<Memzone {self.name!r} at 0x{address(self._addr):x}, {self._size} "
                f"bytes, align {self._align}>")


# fh_memzone_walk calls back into Python through an extern "Python"
# function (cdef/shm_extra.h); arg is a handle to the list being filled.
@ffi.def_extern()
def _fh_shm_memzone_cb(mz, arg):
    copy = ffi.new("struct fh_memzone *")
    if lib.fh_memzone_copy(mz, copy) == 0:       # else freed since the walk saw it
        ffi.from_handle(arg).append(Memzone(mz, copy))
    return 0


def memzones() -> list[Memzone]:
    """Every live memzone of the prefix, in directory order (creation order
    until something is freed)."""
    found: list[Memzone] = []
    if lib.fh_arena_base() == ffi.NULL:
        raise_errno(errno.ENODEV, "cannot list memzones")
    handle = ffi.new_handle(found)     # alive until the walk returns
    lib.fh_memzone_walk(lib._fh_shm_memzone_cb, handle)
    return found


def free_bytes() -> int:
    """Bytes the arena can still hand out to new memzones, up to its maximum
    size (in however many pieces)."""
    if lib.fh_arena_base() == ffi.NULL:
        raise_errno(errno.ENODEV, "cannot count free bytes")
    return int(lib.fh_memzone_free_bytes())


def memzone_count() -> int:
    if lib.fh_arena_base() == ffi.NULL:
        raise_errno(errno.ENODEV, "cannot count memzones")
    return int(lib.fh_memzone_count())
