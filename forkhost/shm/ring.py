"""Rings: lock-free fixed-size FIFOs in the arena (fh_ring_*, DPDK's rte_ring).

A ring holds 64-bit values (object addresses, handles, offsets: anything
that fits a uint64) or fixed-size elements of ``elem_size`` bytes.  Python
pays one C call per *call*, not per item, so the bulk and burst methods move
a whole array per call:

    ring.enqueue_burst(array('Q', range(32)))     # -> how many went in
    got = ring.dequeue_burst(32)                  # -> array('Q') of 0..32
    n = ring.dequeue_burst_into(buf)              # no allocation at all

bulk: all n or none; burst: as many as fit (or are there), maybe none.  The
single/multi producer and consumer mode is fixed at creation (``flags``);
every method uses the mode the ring was created with.
"""

from __future__ import annotations

import errno
from array import array

from .._native import ffi, lib
from ._util import address, cname, in_buffer, raise_errno

NAMESIZE = lib.FH_RING_NAMESIZE
SP_ENQ = lib.FH_RING_F_SP_ENQ      # one producer at a time: no CAS on enqueue
SC_DEQ = lib.FH_RING_F_SC_DEQ      # one consumer at a time: no CAS on dequeue
SIZE_MAX = lib.FH_RING_SZ_MAX
ELEM_MAX = lib.FH_RING_ELEM_MAX

_NULL = ffi.NULL
_new = ffi.new
_from_buffer = ffi.from_buffer
_enqueue_bulk = lib.fh_ring_enqueue_bulk
_enqueue_burst = lib.fh_ring_enqueue_burst
_dequeue_bulk = lib.fh_ring_dequeue_bulk
_dequeue_burst = lib.fh_ring_dequeue_burst


def _pack(items, elem_size: int):
    """A list of ints (8-byte rings) or of elem_size-byte strings, packed."""
    if elem_size == 8:
        return array("Q", items)
    for it in items:
        if len(it) != elem_size:
            raise ValueError(f"one element is {elem_size} bytes, got {len(it)}")
    return b"".join(items)


def _bad_length(nbytes: int, elem_size: int):
    raise ValueError(f"a buffer of {nbytes} bytes is not a whole number of "
                     f"{elem_size}-byte elements")


class Ring:
    """A ring found by name from any process of the prefix."""

    SP_ENQ = SP_ENQ
    SC_DEQ = SC_DEQ

    __slots__ = ("_r", "name", "elem_size", "capacity", "flags")

    def __init__(self, r):
        self._r = r                                    # struct fh_ring *
        self.name = ffi.string(lib.fh_ring_name(r)).decode(errors="replace")
        self.elem_size = lib.fh_ring_elem_size(r)
        self.capacity = lib.fh_ring_capacity(r)
        self.flags = lib.fh_ring_flags(r)

    # -- create / lookup --------------------------------------------------

    @classmethod
    def create(cls, name: str | bytes, count: int, *, elem_size: int = 8,
               flags: int = 0) -> "Ring":
        """A ring of ``count`` slots (a power of two, all usable) of
        ``elem_size`` bytes (a multiple of 4; 8 = uint64 items).  ``flags``:
        SP_ENQ and/or SC_DEQ; multi-producer/multi-consumer by default.
        NameExistsError, NoSpaceError."""
        b = cname(name, NAMESIZE, "ring")
        if not 1 <= count <= SIZE_MAX or count & (count - 1):
            raise ValueError(f"ring {name!r}: count must be a power of two in "
                             f"1..{SIZE_MAX} (got {count})")
        if not 4 <= elem_size <= ELEM_MAX or elem_size % 4:
            raise ValueError(f"ring {name!r}: elem_size must be a multiple of 4 "
                             f"in 4..{ELEM_MAX} (got {elem_size})")
        if flags & ~lib.FH_RING_F_MASK:
            raise ValueError(f"ring {name!r}: unknown flags 0x{flags:x}")
        r = lib.fh_ring_create(b, count, elem_size, flags)
        if r == _NULL:
            raise_errno(ffi.errno, f"cannot create ring {name!r}")
        return cls(r)

    @classmethod
    def lookup(cls, name: str | bytes) -> "Ring":
        """The ring called ``name``; NotFoundError if there is none (or its
        creator has not finished)."""
        b = cname(name, NAMESIZE, "ring")
        r = lib.fh_ring_lookup(b)
        if r == _NULL:
            err = ffi.errno
            raise_errno(err, f"ring {name!r}", "not found" if err == errno.ENOENT else None)
        return cls(r)

    # -- one item -----------------------------------------------------------

    def enqueue(self, item) -> bool:
        """Put one item in: an int (8-byte rings) or elem_size bytes.
        False when the ring is full."""
        if self.elem_size == 8 and isinstance(item, int):
            return lib.fh_ring_enqueue_u64(self._r, item) == 0
        p, n = in_buffer(item, self.elem_size)
        if n != 1:
            raise ValueError(f"one element is {self.elem_size} bytes, got {len(p)}")
        return lib.fh_ring_enqueue(self._r, p) == 0

    def dequeue(self):
        """Take one item out: an int (8-byte rings) or bytes; None when the
        ring is empty."""
        if self.elem_size == 8:
            v = _new("uint64_t *")
            return v[0] if lib.fh_ring_dequeue_u64(self._r, v) == 0 else None
        buf = bytearray(self.elem_size)
        return bytes(buf) if lib.fh_ring_dequeue(self._r, _from_buffer(buf)) == 0 else None

    # -- many items per call ------------------------------------------------

    # The four methods below are the hot path: no helper calls, the cffi
    # functions looked up once at import, one from_buffer and one C call
    # each (a Python call costs more than moving 32 items).

    def enqueue_bulk(self, items) -> int:
        """Enqueue all of ``items`` or none: returns len(items) or 0.
        ``items``: array('Q'), a list of ints, or any buffer of packed
        elements (bytes, bytearray, memoryview, numpy array)."""
        if type(items) is list or type(items) is tuple:
            items = _pack(items, self.elem_size)
        p = _from_buffer(items)
        es = self.elem_size
        n = len(p) // es
        if n * es != len(p):
            _bad_length(len(p), es)
        return _enqueue_bulk(self._r, p, n, _NULL)

    def enqueue_burst(self, items) -> int:
        """Enqueue as many of ``items`` as fit, in order: returns how many
        (the first k of them went in)."""
        if type(items) is list or type(items) is tuple:
            items = _pack(items, self.elem_size)
        p = _from_buffer(items)
        es = self.elem_size
        n = len(p) // es
        if n * es != len(p):
            _bad_length(len(p), es)
        return _enqueue_burst(self._r, p, n, _NULL)

    def dequeue_bulk_into(self, out) -> int:
        """Fill the whole writable buffer ``out`` (array('Q'), bytearray,
        memoryview...) or nothing: returns its length in elements, or 0."""
        p = _from_buffer("char[]", out, True)
        return _dequeue_bulk(self._r, p, len(p) // self.elem_size, _NULL)

    def dequeue_burst_into(self, out, n: int | None = None) -> int:
        """Dequeue up to len(out) (or n) items into ``out`` from its start,
        without allocating: returns how many."""
        p = _from_buffer("char[]", out, True)
        cap = len(p) // self.elem_size
        if n is not None:
            if not 0 <= n <= cap:
                raise ValueError(f"n={n} does not fit a buffer of {cap} elements")
            cap = n
        return _dequeue_burst(self._r, p, cap, _NULL)

    def dequeue_bulk(self, n: int):
        """Exactly n items or none: array('Q') (8-byte rings) or bytes."""
        return self._dequeue(n, _dequeue_bulk)

    def dequeue_burst(self, n: int):
        """Up to n items, as many as there are: array('Q') or bytes."""
        return self._dequeue(n, _dequeue_burst)

    def _dequeue(self, n, fn):
        if n < 0:
            raise ValueError("n must be >= 0")
        if self.elem_size == 8:
            out = array("Q", bytes(n << 3))
            with _from_buffer(out) as p:      # released before the resize
                got = fn(self._r, p, n, _NULL)
            if got != n:
                del out[got:]
            return out
        buf = bytearray(n * self.elem_size)
        with _from_buffer(buf) as p:
            got = fn(self._r, p, n, _NULL)
        del buf[got * self.elem_size:]
        return bytes(buf)

    # -- queries (snapshots while others use the ring) -----------------------

    def __len__(self) -> int:
        return lib.fh_ring_count(self._r)

    @property
    def count(self) -> int:
        return lib.fh_ring_count(self._r)

    @property
    def free_count(self) -> int:
        return lib.fh_ring_free_count(self._r)

    @property
    def full(self) -> bool:
        return bool(lib.fh_ring_full(self._r))

    @property
    def empty(self) -> bool:
        return bool(lib.fh_ring_empty(self._r))

    @property
    def single_producer(self) -> bool:
        return bool(self.flags & SP_ENQ)

    @property
    def single_consumer(self) -> bool:
        return bool(self.flags & SC_DEQ)

    @property
    def addr(self) -> int:
        return address(self._r)

    @property
    def cdata(self):
        """The raw ``struct fh_ring *`` for forkhost._native.lib calls."""
        return self._r

    def __repr__(self):
        mode = ("SP" if self.single_producer else "MP") + \
               ("SC" if self.single_consumer else "MC")
        return (f"<Ring {self.name!r} {mode} {self.count}/{self.capacity} x "
                f"{self.elem_size} bytes at 0x{self.addr:x}>")

    def destroy(self) -> None:
        """Destroy the ring: lookups of its name fail from now on, the name
        can be created again at once and its memory goes back to the arena.
        This handle raises DestroyedError from now on; other handles on it
        (other processes') are not checked: nobody may use them any more
        (docs/shm.md, Freeing)."""
        from ._util import disable
        if lib.fh_ring_destroy(self._r) < 0:
            raise_errno(ffi.errno, f"cannot destroy ring {self.name!r}")
        disable(self, "ring")
