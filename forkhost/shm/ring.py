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

Waiting: every enqueue and dequeue method takes ``timeout=``: 0 (the
default) does not wait, None waits as long as it takes, a number of seconds
waits at most that long, for room (enqueue) or for items (dequeue), across
processes, sleeping in the kernel (no polling; see "Waiting" in
forkhost/ring.h).  A wait that times out returns what the non-waiting call
returns when there is nothing to do (0, None or an empty array).  The GIL
is released while the thread sleeps; a signal (Ctrl-C) interrupts the wait
and its handler runs.  From asyncio, the ``*_async`` methods wait in a
thread of a pool of their own (wait_pool: one per wait in progress, not
the event loop's default executor), in slices of at most ASYNC_SLICE
seconds, so a cancelled wait gives its thread back within one slice.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from array import array

from functools import partial

from .._native import _ring, ffi, lib
from ._util import (Checked, address, cname, created_checked, find_checked,
                    in_buffer, raise_destroyed, raise_errno)

NAMESIZE = lib.FH_RING_NAMESIZE
SP_ENQ = lib.FH_RING_F_SP_ENQ      # one producer at a time: no CAS on enqueue
SC_DEQ = lib.FH_RING_F_SC_DEQ      # one consumer at a time: no CAS on dequeue
SIZE_MAX = lib.FH_RING_SZ_MAX
ELEM_MAX = lib.FH_RING_ELEM_MAX

_NULL = ffi.NULL
_new = ffi.new
_from_buffer = ffi.from_buffer
_dequeue_bulk = lib.fh_ring_dequeue_bulk
_dequeue_burst = lib.fh_ring_dequeue_burst
_enqueue_bulk_timed = lib.fh_ring_enqueue_bulk_timed
_enqueue_burst_timed = lib.fh_ring_enqueue_burst_timed
_dequeue_bulk_timed = lib.fh_ring_dequeue_bulk_timed
_dequeue_burst_timed = lib.fh_ring_dequeue_burst_timed
_gen = lib.fh_memzone_gen
_EINTR = -errno.EINTR
_ETIMEDOUT = -errno.ETIMEDOUT

# The longest one waiting thread sleeps for an *_async call (seconds).
ASYNC_SLICE = 0.1
# The *_async calls wait in threads of their own pool (wait_pool), one per
# wait in progress up to this many (idle ones reused); more wait their turn.
ASYNC_THREADS = 256

_pool = None
_pool_pid = 0
_pool_lock = threading.Lock()


def wait_pool():
    """This process's pool of threads for the *_async waits: not the event
    loop's default executor, whose few threads (min(32, CPUs + 4)) asyncio
    also runs getaddrinfo and every run_in_executor(None, ...) in, so that
    waits neither queue behind each other there nor hold those back.  Made
    anew in a forked child (the parent's threads are not there)."""
    global _pool, _pool_pid
    pid = os.getpid()
    with _pool_lock:
        if _pool is None or _pool_pid != pid:
            from concurrent.futures import ThreadPoolExecutor
            _pool = ThreadPoolExecutor(ASYNC_THREADS, thread_name_prefix="forkhost-wait")
            _pool_pid = pid
        return _pool


def timeout_ns(timeout) -> int:
    """The C side's timeout_ns for a Python ``timeout=``: None -> -1
    (forever), seconds -> nanoseconds; ValueError when negative."""
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError(f"timeout must be None or >= 0 (got {timeout!r})")
    return int(timeout * 1e9)


def call_timed(fn, args, timeout, check):
    """fn(*args, timeout_ns) until it returns something other than -EINTR,
    with what is left of the timeout each time; Python's signal handlers run
    between the calls (a KeyboardInterrupt ends the wait there).  check()
    (the handle's) runs before each call again: the object may have been
    destroyed while the handler ran, when the waiter held no slot."""
    ns = timeout_ns(timeout)
    end = None if ns <= 0 else time.monotonic() + timeout
    while True:
        rc = fn(*args, ns)
        if rc != _EINTR:
            return rc
        if end is not None:
            ns = max(0, int((end - time.monotonic()) * 1e9))
        check()


def running_loop():
    """The running asyncio loop.  asyncio is imported here, not with the
    module: only a coroutine asks, and its caller has imported it."""
    import asyncio
    return asyncio.get_running_loop()


async def wait_async(wait_fn, n, timeout, what):
    """Await wait_fn(n, timeout_ns) == 0 in executor slices: True when it
    was satisfied, False at the timeout; an error raised about ``what``."""
    timeout_ns(timeout)                     # the same ValueError as above
    loop = running_loop()
    end = None if timeout is None else loop.time() + timeout
    while True:
        left = ASYNC_SLICE if end is None else min(ASYNC_SLICE, end - loop.time())
        rc = await loop.run_in_executor(wait_pool(), wait_fn, n, int(max(left, 0) * 1e9))
        if rc == 0:
            return True
        if rc not in (_ETIMEDOUT, _EINTR):
            raise_errno(rc, what)
        if end is not None and loop.time() >= end:
            return False


def _pack(items, elem_size: int):
    """A list of ints (8-byte rings) or of elem_size-byte strings, packed."""
    if elem_size == 8:
        return array("Q", items)
    for it in items:
        if len(it) != elem_size:
            raise ValueError(f"one element is {elem_size} bytes, got {len(it)}")
    return b"".join(items)


class Ring(Checked):
    """A ring found by name from any process of the prefix.  A checked
    handle: once the ring is destroyed (by any process) every use raises
    DestroyedError (docs/shm.md, Freeing)."""

    SP_ENQ = SP_ENQ
    SC_DEQ = SC_DEQ
    _WHAT = "ring"

    __slots__ = ("_r", "_h", "_mz", "_gen", "name", "elem_size", "capacity", "flags")

    def __init__(self, r, mz, gen, name: bytes):
        """r: the struct fh_ring *; mz, gen: its memzone's slot and
        generation (forkhost.shm._util.object_zone); name: its name."""
        self._r = r
        self._mz = mz
        self._gen = gen
        self.name = name.decode(errors="replace")
        self._h = _ring.Handle(address(r), address(mz), gen,    # the hot calls
                               partial(raise_destroyed, "ring", self.name))
        self.elem_size = lib.fh_ring_elem_size(r)
        self.capacity = lib.fh_ring_capacity(r)
        self.flags = lib.fh_ring_flags(r)

    # -- create / lookup --------------------------------------------------

    @classmethod
    def create(cls, name: str | bytes, count: int, *, elem_size: int = 8,
               flags: int = 0, pool=None) -> "Ring":
        """A ring of ``count`` slots (a power of two, all usable) of
        ``elem_size`` bytes (a multiple of 4; 8 = uint64 items).  ``flags``:
        SP_ENQ and/or SC_DEQ; multi-producer/multi-consumer by default.
        ``pool``: a Mempool created with ``track=True`` whose object
        addresses this ring carries (8-byte items): a dequeue attributes
        them to the dequeuer, and the unfinished call of a dead process
        gives them back to the pool (docs/shm.md, "When a process dies").
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
        if pool is None:
            r = lib.fh_ring_create(b, count, elem_size, flags)
        else:
            if elem_size != 8 or not pool.tracked:
                raise ValueError(f"ring {name!r}: pool= needs 8-byte items and "
                                 f"a mempool created with track=True")
            r = lib.fh_ring_create_for(b, count, flags, pool.cdata)
        if r == _NULL:
            raise_errno(ffi.errno, f"cannot create ring {name!r}", name=b)
        return created_checked(cls, b, r, lib.FH_RING_MZ_PREFIX)

    @classmethod
    def lookup(cls, name: str | bytes) -> "Ring":
        """The ring called ``name``; NotFoundError if there is none (or its
        creator has not finished)."""
        return find_checked(cls, cname(name, NAMESIZE, "ring"), lib.fh_ring_lookup,
                            lib.FH_RING_MZ_PREFIX)

    # -- one item -----------------------------------------------------------

    def enqueue(self, item, *, timeout=0) -> bool:
        """Put one item in: an int (8-byte rings) or elem_size bytes.
        False when the ring is full (after waiting up to ``timeout``)."""
        if _gen(self._mz) != self._gen:
            self._check()
        if self.elem_size == 8 and isinstance(item, int):
            if lib.fh_ring_enqueue_u64(self._r, item) == 0:
                return True
            if timeout == 0:
                return False
            item = array("Q", (item,))
        p, n = in_buffer(item, self.elem_size)
        if n != 1:
            raise ValueError(f"one element is {self.elem_size} bytes, got {len(p)}")
        if timeout == 0:
            return lib.fh_ring_enqueue(self._r, p) == 0
        return self._timed(_enqueue_bulk_timed, p, 1, timeout) == 1

    def dequeue(self, *, timeout=0):
        """Take one item out: an int (8-byte rings) or bytes; None when the
        ring is empty (after waiting up to ``timeout``)."""
        if _gen(self._mz) != self._gen:
            self._check()
        if self.elem_size == 8:
            v = _new("uint64_t *")
            if lib.fh_ring_dequeue_u64(self._r, v) == 0:
                return v[0]
            if timeout == 0:
                return None
            return v[0] if self._timed(_dequeue_bulk_timed, v, 1, timeout) == 1 else None
        buf = bytearray(self.elem_size)
        p = _from_buffer(buf)
        if timeout == 0:
            return bytes(buf) if lib.fh_ring_dequeue(self._r, p) == 0 else None
        return bytes(buf) if self._timed(_dequeue_bulk_timed, p, 1, timeout) == 1 else None

    # -- waiting ------------------------------------------------------------

    def _timed(self, fn, p, n, timeout) -> int:
        """A timed C call's count; 0 at the timeout."""
        self._check()
        rc = call_timed(fn, (self._r, p, n, _NULL), timeout, self._check)
        if rc >= 0:
            return rc
        if rc == _ETIMEDOUT:
            return 0
        if rc == -errno.EINVAL:
            raise ValueError(f"ring {self.name!r}: {n} items can never fit its "
                             f"{self.capacity} slots")
        raise_errno(rc, f"ring {self.name!r}")

    def _wait(self, fn, n, timeout, what) -> bool:
        self._check()
        if not 0 <= n <= self.capacity:
            raise ValueError(f"ring {self.name!r}: n={n} is not in 0..{self.capacity}")
        rc = call_timed(fn, (self._r, n), timeout, self._check)
        if rc == 0:
            return True
        if rc == _ETIMEDOUT:
            return False
        raise_errno(rc, f"ring {self.name!r}: {what}")

    def wait_elements(self, n: int = 1, *, timeout=None) -> bool:
        """Sleep until at least n items are in the ring (not taking them):
        True, or False at the timeout."""
        return self._wait(lib.fh_ring_wait_elements, n, timeout, "wait")

    def wait_room(self, n: int = 1, *, timeout=None) -> bool:
        """Sleep until at least n slots are free: True, or False at the
        timeout."""
        return self._wait(lib.fh_ring_wait_room, n, timeout, "wait")

    async def wait_elements_async(self, n: int = 1, *, timeout=None) -> bool:
        """wait_elements for asyncio (in executor slices, see the module)."""
        if not 0 <= n <= self.capacity:
            raise ValueError(f"ring {self.name!r}: n={n} is not in 0..{self.capacity}")
        return await wait_async(lambda k, ns: self._check() or
                                lib.fh_ring_wait_elements(self._r, k, ns), n, timeout,
                                f"ring {self.name!r}: wait")

    async def wait_room_async(self, n: int = 1, *, timeout=None) -> bool:
        """wait_room for asyncio."""
        if not 0 <= n <= self.capacity:
            raise ValueError(f"ring {self.name!r}: n={n} is not in 0..{self.capacity}")
        return await wait_async(lambda k, ns: self._check() or
                                lib.fh_ring_wait_room(self._r, k, ns), n, timeout,
                                f"ring {self.name!r}: wait")

    async def dequeue_burst_async(self, n: int, *, timeout=None):
        """Up to n items, waiting (asyncio) until there is at least one:
        array('Q') or bytes, empty at the timeout."""
        loop = running_loop()
        end = None if timeout is None else loop.time() + timeout_ns(timeout) / 1e9
        while True:
            got = self.dequeue_burst(n)
            if len(got) or n == 0:
                return got
            left = None if end is None else max(0.0, end - loop.time())
            if not await self.wait_elements_async(1, timeout=left) and left is not None:
                return self.dequeue_burst(n)

    async def enqueue_burst_async(self, items, *, timeout=None) -> int:
        """Enqueue as many of ``items`` as fit, waiting (asyncio) until at
        least one does: how many went in, 0 at the timeout."""
        loop = running_loop()
        end = None if timeout is None else loop.time() + timeout_ns(timeout) / 1e9
        while True:
            got = self.enqueue_burst(items)
            if got or len(items) == 0:
                return got
            left = None if end is None else max(0.0, end - loop.time())
            if not await self.wait_room_async(1, timeout=left) and left is not None:
                return self.enqueue_burst(items)

    @property
    def waiting_consumers(self) -> int:
        """Threads (any process) asleep waiting for items: a snapshot."""
        self._check()
        return lib.fh_ring_waiting_consumers(self._r)

    @property
    def waiting_producers(self) -> int:
        """Threads (any process) asleep waiting for room: a snapshot."""
        self._check()
        return lib.fh_ring_waiting_producers(self._r)

    # -- many items per call ------------------------------------------------

    # The four methods below are the hot path: one call into
    # forkhost._native._ring (pyring.c: the buffer taken with the buffer
    # protocol, no cffi object per call); only a call that moved nothing
    # and may wait goes on to the cffi timed calls.

    def enqueue_bulk(self, items, *, timeout=0) -> int:
        """Enqueue all of ``items`` or none: returns len(items) or 0.
        ``items``: array('Q'), a list of ints, or any buffer of packed
        elements (bytes, bytearray, memoryview, numpy array)."""
        if type(items) is list or type(items) is tuple:
            items = _pack(items, self.elem_size)
        got = self._h.enqueue_bulk(items)
        if got or timeout == 0:
            return got
        p = _from_buffer(items)
        n = len(p) // self.elem_size
        return self._timed(_enqueue_bulk_timed, p, n, timeout) if n else 0

    def enqueue_burst(self, items, *, timeout=0) -> int:
        """Enqueue as many of ``items`` as fit, in order: returns how many
        (the first k of them went in)."""
        if type(items) is list or type(items) is tuple:
            items = _pack(items, self.elem_size)
        got = self._h.enqueue_burst(items)
        if got or timeout == 0:
            return got
        p = _from_buffer(items)
        n = len(p) // self.elem_size
        return self._timed(_enqueue_burst_timed, p, n, timeout) if n else 0

    def dequeue_bulk_into(self, out, *, timeout=0) -> int:
        """Fill the whole writable buffer ``out`` (array('Q'), bytearray,
        memoryview...) or nothing: returns its length in elements, or 0."""
        got = self._h.dequeue_bulk_into(out)
        if got or timeout == 0:
            return got
        p = _from_buffer("char[]", out, True)
        n = len(p) // self.elem_size
        return self._timed(_dequeue_bulk_timed, p, n, timeout) if n else 0

    def dequeue_burst_into(self, out, n: int | None = None, *, timeout=0) -> int:
        """Dequeue up to len(out) (or n) items into ``out`` from its start,
        without allocating: returns how many."""
        got = self._h.dequeue_burst_into(out, n)
        if got or timeout == 0:
            return got
        p = _from_buffer("char[]", out, True)
        cap = len(p) // self.elem_size if n is None else n
        return self._timed(_dequeue_burst_timed, p, cap, timeout) if cap else 0

    def dequeue_bulk(self, n: int, *, timeout=0):
        """Exactly n items or none: array('Q') (8-byte rings) or bytes."""
        return self._dequeue(n, _dequeue_bulk, _dequeue_bulk_timed, timeout)

    def dequeue_burst(self, n: int, *, timeout=0):
        """Up to n items, as many as there are: array('Q') or bytes."""
        return self._dequeue(n, _dequeue_burst, _dequeue_burst_timed, timeout)

    def _dequeue(self, n, fn, tfn, timeout):
        self._check()
        if n < 0:
            raise ValueError("n must be >= 0")
        if self.elem_size == 8:
            out = array("Q", bytes(n << 3))
            with _from_buffer(out) as p:      # released before the resize
                got = fn(self._r, p, n, _NULL)
                if not got and timeout != 0 and n:
                    got = self._timed(tfn, p, n, timeout)
            if got != n:
                del out[got:]
            return out
        buf = bytearray(n * self.elem_size)
        with _from_buffer(buf) as p:
            got = fn(self._r, p, n, _NULL)
            if not got and timeout != 0 and n:
                got = self._timed(tfn, p, n, timeout)
        del buf[got * self.elem_size:]
        return bytes(buf)

    # -- queries (snapshots while others use the ring) -----------------------

    def __len__(self) -> int:
        if _gen(self._mz) != self._gen:
            self._check()
        return lib.fh_ring_count(self._r)

    @property
    def count(self) -> int:
        self._check()
        return lib.fh_ring_count(self._r)

    @property
    def free_count(self) -> int:
        self._check()
        return lib.fh_ring_free_count(self._r)

    @property
    def full(self) -> bool:
        self._check()
        return bool(lib.fh_ring_full(self._r))

    @property
    def empty(self) -> bool:
        self._check()
        return bool(lib.fh_ring_empty(self._r))

    @property
    def lost(self) -> int:
        """Items given up with dead processes' unfinished enqueues and
        dequeues (docs/shm.md, "When a process dies")."""
        self._check()
        return lib.fh_ring_lost(self._r, 2)

    def recover(self) -> int:
        """Give up now the slots that dead producers (consumers) of a multi
        side left claimed; how many.  A single side is recovered by its
        next call."""
        self._check()
        return lib.fh_ring_recover(self._r)

    @property
    def single_producer(self) -> bool:
        return bool(self.flags & SP_ENQ)

    @property
    def single_consumer(self) -> bool:
        return bool(self.flags & SC_DEQ)

    @property
    def addr(self) -> int:
        self._check()
        return address(self._r)

    @property
    def cdata(self):
        """The raw ``struct fh_ring *`` for forkhost._native.lib calls (not
        checked: C code using it follows the rule of docs/shm.md,
        Freeing)."""
        self._check()
        return self._r

    def __repr__(self):
        if not self.alive:
            return f"<Ring {self.name!r} (destroyed)>"
        mode = ("SP" if self.single_producer else "MP") + \
               ("SC" if self.single_consumer else "MC")
        return (f"<Ring {self.name!r} {mode} {self.count}/{self.capacity} x "
                f"{self.elem_size} bytes at 0x{self.addr:x}>")

    def destroy(self) -> None:
        """Destroy the ring: lookups of its name fail from now on, the name
        can be created again at once and its memory goes back to the arena.
        Every handle on it, in any process, raises DestroyedError from now
        on, even if a ring of the same name is created again at the same
        address (docs/shm.md, Freeing).  Threads waiting on it (timeout=,
        wait_*, *_async) are woken with DestroyedError first; ShmError,
        nothing destroyed, if one of them has not left within
        FH_RING_DRAIN_NS (a stopped process)."""
        from ._util import disable
        self._check()
        if lib.fh_ring_destroy(self._r) < 0:
            raise_errno(ffi.errno, f"cannot destroy ring {self.name!r}")
        disable(self, "ring")
