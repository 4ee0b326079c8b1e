"""Mempools: fixed-size objects in the arena (fh_mempool_*, DPDK's rte_mempool).

Objects are handed out as their addresses (ints), valid in every process
of the prefix, so they travel through rings as plain uint64 items; view()
gives a zero-copy memoryview of one.  Each thread keeps a small cache (the C
side keeps it correct across fork and gives back the caches of dead
threads); objects in a cache count as available, not in use.

get() and get_bulk() take ``timeout=`` (0 by default: NoSpaceError at once
when exhausted; None: wait as long as it takes; seconds: at most that long,
then TimeoutError): the thread sleeps in the kernel until another thread or
process puts objects back (see "Waiting" in forkhost/mempool.h).
get_async() is the asyncio form.
"""

from __future__ import annotations

import errno
from array import array

from .._native import ffi, lib
from ._util import (Checked, address, cname, created_checked, find_checked,
                    in_buffer, raise_errno)
from .ring import ASYNC_SLICE, call_timed, running_loop, timeout_ns, wait_pool

NAMESIZE = lib.FH_MEMPOOL_NAMESIZE
CACHE_MAX = lib.FH_MEMPOOL_CACHE_MAX
COUNT_MAX = lib.FH_MEMPOOL_COUNT_MAX
F_NO_CACHE_ALIGN = lib.FH_MEMPOOL_F_NO_CACHE_ALIGN

_NULL = ffi.NULL
_gen = lib.fh_memzone_gen


def _get_in_pool(mp, p, ns) -> int:
    """A timed get in a wait-pool thread, which then gives its cache of the
    pool back: the pool's threads live on idle, and a destroy refuses while
    a live thread holds a cache."""
    rc = lib.fh_mempool_get_timed(mp, p, ns)
    lib.fh_mempool_cache_flush(mp)
    return rc


class Mempool(Checked):
    """A pool found by name from any process of the prefix.  A checked
    handle: once the pool is destroyed (by any process) every use raises
    DestroyedError (docs/shm.md, Freeing)."""

    _WHAT = "mempool"

    __slots__ = ("_mp", "_mz", "_gen", "name", "count", "obj_size", "elt_size",
                 "cache_size", "flags")

    def __init__(self, mp, mz, gen, name: bytes):
        """mp: the struct fh_mempool *; mz, gen: its memzone's slot and
        generation (forkhost.shm._util.object_zone); name: its name."""
        self._mp = mp
        self._mz = mz
        self._gen = gen
        self.name = name.decode(errors="replace")
        self.count = lib.fh_mempool_count(mp)
        self.obj_size = lib.fh_mempool_obj_size(mp)
        self.elt_size = lib.fh_mempool_elt_size(mp)
        self.cache_size = lib.fh_mempool_cache_size(mp)
        self.flags = lib.fh_mempool_flags(mp)

    @classmethod
    def create(cls, name: str | bytes, n: int, obj_size: int, *,
               cache_size: int = 0, flags: int = 0,
               track: bool = False) -> "Mempool":
        """``n`` objects of ``obj_size`` bytes (64-byte aligned; 8 with
        F_NO_CACHE_ALIGN), zero-filled, with per-thread caches of
        ``cache_size`` objects (0: none).  ``track``: attribute each object
        to the thread that holds it, so that a dead process's objects come
        back (docs/shm.md, "When a process dies").  NameExistsError,
        NoSpaceError."""
        if track:
            flags |= lib.FH_MEMPOOL_F_TRACK
        b = cname(name, NAMESIZE, "mempool")
        if not 1 <= n <= COUNT_MAX or obj_size < 1 or not 0 <= cache_size <= CACHE_MAX:
            raise ValueError(f"mempool {name!r}: need 1 <= n <= {COUNT_MAX}, "
                             f"obj_size >= 1, 0 <= cache_size <= {CACHE_MAX}")
        mp = lib.fh_mempool_create(b, n, obj_size, cache_size, flags)
        if mp == _NULL:
            raise_errno(ffi.errno, f"cannot create mempool {name!r}", name=b)
        return created_checked(cls, b, mp, lib.FH_MEMPOOL_MZ_PREFIX)

    @classmethod
    def lookup(cls, name: str | bytes) -> "Mempool":
        return find_checked(cls, cname(name, NAMESIZE, "mempool"),
                            lib.fh_mempool_lookup, lib.FH_MEMPOOL_MZ_PREFIX)

    # -- get / put -----------------------------------------------------------

    def _empty(self, n):
        raise_errno(errno.ENOSPC, f"mempool {self.name!r}",
                    ("no free object " if n == 1 else f"not {n} free objects ") +
                    f"({self.in_use} of {self.count} in use)")

    def get(self, *, timeout=0) -> int:
        """One object's address.  timeout=0 (default): NoSpaceError at once
        when the pool is exhausted; None: wait until an object is put back
        (any process); seconds: wait at most that long, then TimeoutError."""
        if _gen(self._mz) != self._gen:
            self._check()
        p = ffi.new("void **")
        if lib.fh_mempool_get(self._mp, p) < 0:
            if timeout == 0:
                self._empty(1)
            self._get_timed(p, 1, timeout)
        return address(p[0])

    def get_bulk(self, n: int, *, timeout=0) -> array:
        """n addresses as array('Q'), all or nothing (NoSpaceError; with a
        timeout, waiting as get() does)."""
        self._check()
        out = array("Q", bytes(n << 3))
        with ffi.from_buffer(out) as buf:
            rc = lib.fh_mempool_get_bulk(self._mp, ffi.cast("void **", buf), n)
            if rc < 0 and timeout != 0:
                self._get_timed(ffi.cast("void **", buf), n, timeout)
                rc = 0
        if rc < 0:
            self._empty(n)
        return out

    def _get_timed(self, p, n, timeout) -> None:
        self._check()
        rc = call_timed(lib.fh_mempool_get_bulk_timed, (self._mp, p, n), timeout,
                        self._check)
        if rc == -errno.ETIMEDOUT:
            raise TimeoutError(f"mempool {self.name!r}: "
                               + ("no object" if n == 1 else f"not {n} objects")
                               + f" came back within {timeout} s")
        if rc == -errno.EINVAL:
            raise ValueError(f"mempool {self.name!r}: {n} objects can never be "
                             f"free at once (count {self.count})")
        if rc < 0:
            raise_errno(rc, f"mempool {self.name!r}")

    async def get_async(self, *, timeout=None) -> int:
        """get() for asyncio: waits in slices of at most
        forkhost.shm.ring.ASYNC_SLICE seconds, in a thread of
        forkhost.shm.ring's wait pool, which keeps no cache of the pool
        afterwards; TimeoutError at the timeout."""
        loop = running_loop()
        end = None if timeout is None else loop.time() + timeout_ns(timeout) / 1e9
        p = ffi.new("void **")
        while True:
            self._check()
            left = ASYNC_SLICE if end is None else min(ASYNC_SLICE, end - loop.time())
            rc = await loop.run_in_executor(
                wait_pool(), _get_in_pool, self._mp, p, int(max(left, 0) * 1e9))
            if rc == 0:
                return address(p[0])
            if rc not in (-errno.ETIMEDOUT, -errno.EINTR):
                raise_errno(rc, f"mempool {self.name!r}")
            if end is not None and loop.time() >= end:
                raise TimeoutError(f"mempool {self.name!r}: no object came back "
                                   f"within {timeout} s")

    @property
    def waiting(self) -> int:
        """Threads (any process) asleep in a waiting get: a snapshot."""
        self._check()
        return lib.fh_mempool_waiting(self._mp)

    def put(self, addr: int) -> None:
        """Give one object back (ValueError if it is not one of ours)."""
        if _gen(self._mz) != self._gen:
            self._check()
        p = ffi.cast("void *", addr)
        if lib.fh_mempool_put(self._mp, p) < 0:
            raise ValueError(f"0x{addr:x} is not an object of mempool {self.name!r}")

    def put_bulk(self, addrs) -> None:
        """Give objects back: array('Q'), list of ints or a buffer of uint64
        addresses.  None is taken back if one of them is not the start of
        one of the pool's objects."""
        self._check()
        p, n = in_buffer(addrs, 8)
        if lib.fh_mempool_put_bulk(self._mp, ffi.cast("void *const *", p), n) < 0:
            raise ValueError(f"an address given is not an object of mempool "
                             f"{self.name!r}; none was put back")

    # -- objects -------------------------------------------------------------

    def view(self, addr: int) -> memoryview:
        """A writable memoryview of the object at ``addr`` (obj_size bytes).
        The view itself is not checked: do not use it after the pool is
        destroyed."""
        self._check()
        if lib.fh_mempool_obj_index(self._mp, ffi.cast("void *", addr)) < 0:
            raise ValueError(f"0x{addr:x} is not an object of mempool {self.name!r}")
        return memoryview(ffi.buffer(ffi.cast("char *", addr), self.obj_size))

    def index(self, addr: int) -> int:
        """The object's index in 0..count-1 (a handle that fits 32 bits)."""
        self._check()
        i = lib.fh_mempool_obj_index(self._mp, ffi.cast("void *", addr))
        if i < 0:
            raise ValueError(f"0x{addr:x} is not an object of mempool {self.name!r}")
        return i

    def at(self, index: int) -> int:
        """The address of object ``index``."""
        self._check()
        if not 0 <= index < self.count:
            raise IndexError(f"mempool {self.name!r} has {self.count} objects")
        return address(lib.fh_mempool_obj_at(self._mp, index))

    # -- counts (exact when quiescent, snapshots otherwise) ------------------

    @property
    def in_use(self) -> int:
        """Objects handed out by get and not yet put back."""
        self._check()
        return lib.fh_mempool_in_use_count(self._mp)

    @property
    def avail(self) -> int:
        """Free objects, in the shared ring and in every thread's cache."""
        self._check()
        return lib.fh_mempool_avail_count(self._mp)

    @property
    def full(self) -> bool:
        self._check()
        return bool(lib.fh_mempool_full(self._mp))

    @property
    def empty(self) -> bool:
        self._check()
        return bool(lib.fh_mempool_empty(self._mp))

    def cache_flush(self) -> None:
        """Return this thread's cached objects to the shared ring."""
        self._check()
        lib.fh_mempool_cache_flush(self._mp)

    def reclaim(self) -> int:
        """Give back the caches of threads that no longer exist and, in a
        tracked pool, the objects they held; returns how many objects went
        back."""
        self._check()
        return lib.fh_mempool_reclaim(self._mp)

    @property
    def tracked(self) -> bool:
        """Created with ``track=True``."""
        return bool(self.flags & lib.FH_MEMPOOL_F_TRACK)

    @property
    def recovered(self) -> int:
        """Objects a tracked pool got back from dead processes: those they
        held, and those inside their unfinished calls on rings bound to the
        pool; since creation."""
        self._check()
        return lib.fh_mempool_recovered(self._mp)

    def held(self, tid: int = 0) -> int:
        """Objects of a tracked pool held by thread ``tid`` (a process's pid
        is its main thread's), or by any thread (0)."""
        self._check()
        return lib.fh_mempool_held_count(self._mp, tid)

    @property
    def addr(self) -> int:
        self._check()
        return address(self._mp)

    @property
    def cdata(self):
        """The raw ``struct fh_mempool *`` (not checked: C code using it
        follows the rule of docs/shm.md, Freeing)."""
        self._check()
        return self._mp

    def __repr__(self):
        if not self.alive:
            return f"<Mempool {self.name!r} (destroyed)>"
        return (f"<Mempool {self.name!r} {self.in_use}/{self.count} in use, "
                f"{self.obj_size}-byte objects at 0x{self.addr:x}>")

    def destroy(self) -> None:
        """Destroy the mempool: lookups of its name fail from now on, the name
        can be created again at once and its memory goes back to the arena.
        Every handle on it, in any process, raises DestroyedError from now
        on, even if a pool of the same name is created again at the same
        address (docs/shm.md, Freeing).
        A live thread (of any process) that still holds a cache of the pool
        makes it fail with ShmError (errno EBUSY), changing nothing: that
        thread calls ``cache_flush()``, or exits.  Threads waiting in a
        get (timeout=, get_async) are woken with DestroyedError first;
        ShmError (errno ETIMEDOUT), nothing destroyed, if one of them has
        not left within FH_RING_DRAIN_NS (a stopped process)."""
        from ._util import disable
        self._check()
        if lib.fh_mempool_destroy(self._mp) < 0:
            raise_errno(ffi.errno, f"cannot destroy mempool {self.name!r}")
        disable(self, "mempool")
