"""The shared heap (C's fh_malloc family, DPDK's rte_malloc) from Python.

Blocks of any size in the arena, allocated and freed by any process of the
prefix, at the same address in all of them:

    from forkhost.shm import heap
    with heap.malloc(4096) as blk:          # freed when the block is left
        blk.buffer()[:5] = b"hello"        # a memoryview, no copy
        ring.enqueue(blk.addr)             # another process: heap.Block.at(addr)
    x = heap.calloc(1000, 8).numpy((1000,), "float64")   # an ndarray over a block

Named arrays (created or found by name, numpy ndarrays in every process)
are :func:`forkhost.shm.array`.  Layout, locking and statistics:
docs/shm.md ("The shared heap").
"""

from __future__ import annotations

import errno as E

from .._native import ffi, lib
from .._record import Record
from .._errors import ShmError
from ._util import address, raise_errno

SEGMENT_SIZE = lib.FH_HEAP_SEGMENT_SIZE
MAX_ALIGN = lib.FH_HEAP_MAX_ALIGN
PROC_SLOTS = lib.FH_HEAP_PROC_SLOTS

NOT_A_BLOCK = ("not a block in use of the shared heap (freed already, or not "
               "from the heap)")


_SEGMENTS_FULL = (f"the heap holds {lib.FH_HEAP_MAX_SEGMENTS} segments, its most (the "
                  f"shared ones, and one for each block over "
                  f"{SEGMENT_SIZE // 4 >> 20} MiB until it is freed)")


def _fail(err: int, what: str, detail: str | None = None):
    """The exception for a heap call's errno, as every shm call's
    (NoSpaceError for ENOSPC: no room in the arena at its maximum, or a
    request beyond any arena; ShmError for ENOMEM: the arena cannot grow),
    and: ENOBUFS, NoSpaceError saying the segment table is full; EINVAL, a
    ShmError saying the address is not a block."""
    if err == E.ENOBUFS and detail is None:
        detail = _SEGMENTS_FULL
    if err == E.EINVAL and detail is None:
        detail = NOT_A_BLOCK
    raise_errno(err, what, detail)


def _size(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"invalid {what} {n!r}: an int >= 0")
    return n


class Block:
    """A block of the shared heap: ``addr`` (its first byte, the same in
    every process), ``size`` (the bytes asked for), ``buffer()`` (a
    writable memoryview of them), ``free()``, ``realloc()``; ``with``
    frees it on leaving.  Another process gets it from its address:
    :meth:`Block.at`."""

    __slots__ = ("addr", "size", "_live")

    def __init__(self, addr: int, size: int):
        self.addr = addr
        self.size = size
        self._live = True

    @classmethod
    def at(cls, addr: int, size: int | None = None) -> "Block":
        """The block in use at ``addr`` (allocated by any process), of
        ``size`` bytes (default: all of its usable size).  ShmError
        (EINVAL) when no block in use starts there; ValueError when it is
        smaller than ``size``."""
        usable = lib.fh_malloc_usable_size(ffi.cast("void *", addr))
        if usable == 0:
            _fail(ffi.errno, f"heap block at 0x{addr:x}")
        if size is None:
            size = usable
        elif _size(size, "size") > usable:
            raise ValueError(f"heap block at 0x{addr:x} has {usable} bytes, not {size}")
        return cls(addr, size)

    @property
    def usable_size(self) -> int:
        """Bytes the block really has (size rounded up to 64)."""
        self._check()
        n = lib.fh_malloc_usable_size(ffi.cast("void *", self.addr))
        if n == 0:
            _fail(ffi.errno, repr(self))
        return int(n)

    @property
    def freed(self) -> bool:
        """Whether this object freed its block (free(), realloc to a new
        place, or leaving ``with``)."""
        return not self._live

    def _check(self):
        if not self._live:
            raise ShmError(f"heap block at 0x{self.addr:x}: used after it was freed",
                           E.EINVAL)

    def buffer(self) -> memoryview:
        """A writable memoryview of the block's ``size`` bytes, no copy."""
        self._check()
        return memoryview(ffi.buffer(ffi.cast("char *", self.addr), self.size))

    def __buffer__(self, flags: int) -> memoryview:      # memoryview(b), Python >= 3.12
        return self.buffer()

    def numpy(self, shape=None, dtype="uint8"):
        """A numpy.ndarray over the block, no copy: ``shape`` (default: as
        many ``dtype`` elements as ``size`` holds) and ``dtype`` as for
        :class:`~forkhost.shm.Array`; ValueError when they need more than
        ``size`` bytes."""
        from ._dtype import DTYPES, _dtype_name, _numpy, _shape
        self._check()
        dt = _dtype_name(dtype)
        itemsize = DTYPES[dt][1]
        dims = (self.size // itemsize,) if shape is None else _shape(shape)
        nbytes = itemsize
        for d in dims:
            nbytes *= d
        if nbytes > self.size:
            raise ValueError(f"shape {dims} of {dt} needs {nbytes} bytes; the block "
                             f"has {self.size}")
        return _numpy(self.addr, dims, dt)

    def free(self) -> None:
        """Give the block back.  Freeing it again (through this object)
        raises ShmError (EINVAL); through another object for the same
        address, the heap refuses it (ShmError, EINVAL) unless the bytes
        were handed out again meanwhile."""
        self._check()
        if lib.fh_free(ffi.cast("void *", self.addr)) < 0:
            _fail(ffi.errno, f"free of heap block at 0x{self.addr:x}")
        self._live = False

    def realloc(self, size: int) -> "Block":
        """Resize to ``size`` bytes (>= 1), keeping the contents up to the
        smaller size; ``addr`` changes when the block had to move.
        NoSpaceError when there is no room (the block is then unchanged)."""
        self._check()
        if _size(size, "size") == 0:
            raise ValueError("realloc to 0 bytes: use free()")
        p = lib.fh_realloc(ffi.cast("void *", self.addr), size)
        if p == ffi.NULL:
            _fail(ffi.errno, f"realloc of heap block at 0x{self.addr:x} to {size} bytes")
        self.addr = address(p)
        self.size = size
        return self

    def __enter__(self) -> "Block":
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self.free()

    def __eq__(self, other):
        return isinstance(other, Block) and self.addr == other.addr

    def __hash__(self):
        return hash(self.addr)

    def __repr__(self):
        state = "" if self._live else ", freed"
        return f"<heap.Block at 0x{self.addr:x}, {self.size} bytes{state}>"


def malloc(size: int, align: int = 0) -> Block:
    """A block of ``size`` bytes (not zeroed), 64-byte aligned, or aligned
    to ``align`` (a power of two up to 1 GiB).  NoSpaceError when the arena
    has no room; ValueError for a bad size or alignment; NoArenaError."""
    _size(size, "size")
    _size(align, "alignment")
    if align & (align - 1) or align > MAX_ALIGN:
        raise ValueError(f"invalid alignment {align}: a power of two up to {MAX_ALIGN}")
    p = lib.fh_malloc_aligned(size, align)
    if p == ffi.NULL:
        _fail(ffi.errno, f"heap malloc of {size} bytes")
    return Block(address(p), size)


def calloc(n: int, size: int) -> Block:
    """A zeroed block of ``n * size`` bytes."""
    _size(n, "count")
    _size(size, "size")
    p = lib.fh_calloc(n, size)
    if p == ffi.NULL:
        _fail(ffi.errno, f"heap calloc of {n} x {size} bytes")
    return Block(address(p), n * size)


def _struct_fields(struct: str) -> tuple[str, ...]:
    return tuple(name for name, _ in ffi.typeof(struct).fields)


class HeapStats(Record):
    """The heap as a whole (struct fh_heap_stats, field for field); zeros
    before any use."""
    _fields = _struct_fields("struct fh_heap_stats")


class ProcStats(Record):
    """One process's allocations and frees, in blocks and usable bytes
    (struct fh_heap_proc_stats, field for field).  pid 0 gathers ended
    processes whose slot was reused and processes that found the table
    full."""
    _fields = _struct_fields("struct fh_heap_proc_stats")


def stats() -> HeapStats:
    """A consistent snapshot of the heap (it walks every block)."""
    st = ffi.new("struct fh_heap_stats *")
    if lib.fh_heap_get_stats(st) < 0:
        _fail(ffi.errno, "heap statistics")
    return HeapStats(*(int(getattr(st, f)) for f in HeapStats._fields))


def process_stats() -> dict[int, ProcStats]:
    """Every process's counters, by pid."""
    out = ffi.new("struct fh_heap_proc_stats[]", PROC_SLOTS)
    n = lib.fh_heap_get_proc_stats(out, PROC_SLOTS)
    if n < 0:
        _fail(ffi.errno, "heap statistics")
    fields = ProcStats._fields
    return {int(out[i].pid): ProcStats(*(int(getattr(out[i], f)) for f in fields))
            for i in range(min(n, PROC_SLOTS))}


def validate() -> None:
    """Check every invariant of the heap (fh_heap_validate); ShmError
    (EUCLEAN) when one fails, with the details on stderr."""
    if lib.fh_heap_validate() < 0:
        err = ffi.errno
        raise_errno(err, "heap validation",
                    "the heap is inconsistent (details on stderr)" if err == E.EUCLEAN
                    else None)
