"""Shared helpers of forkhost.shm: names, errno -> exception, buffers.

The C library returns -1/NULL with errno, or a negative errno on hot paths;
every wrapper funnels that through :func:`raise_errno`, so the
mapping from errno to forkhost's exceptions lives in one place and each
exception is chained to the OSError it came from.
"""

from __future__ import annotations

import errno as E
import os
from array import array

from .._native import ffi, lib
from .._errors import (DestroyedError, ModuleMismatchError, NameExistsError,
                      NoArenaError, NoSpaceError, NotFoundError, ShmError,
                      WrongTypeError)

# The C library's errno for "the name exists as another type" (memzone.h).
EWRONGTYPE = lib.FH_EWRONGTYPE

_EXC = {
    E.EEXIST: NameExistsError,
    E.ENOENT: NotFoundError,
    E.ENOSPC: NoSpaceError,
    E.ENOBUFS: NoSpaceError,
    E.ENODEV: NoArenaError,
    E.EFAULT: ModuleMismatchError,
    EWRONGTYPE: WrongTypeError,
    E.EIDRM: DestroyedError,
}

# What an errno means for a shm call, where strerror would mislead.
_DETAIL = {
    E.EEXIST: "the name is in use",
    E.ENOSPC: "no space left in the arena (at its maximum size) or the memzone "
              "directory is full",
    EWRONGTYPE: "the name exists as another type",
    E.EIDRM: "it was destroyed",
    E.ENOMEM: "the arena cannot grow: no free huge pages (or memory) to back it, "
              "or its memfd cannot be reached (the primary is gone)",
    E.EBUSY: "a live thread still holds a cache of it (it calls cache_flush(), "
             "or exits)",
    # Only a destroy raises ETIMEDOUT (a timed call's returns 0 or raises
    # TimeoutError itself).
    E.ETIMEDOUT: f"a thread waiting on it did not leave within "
                 f"{lib.FH_RING_DRAIN_NS / 1e9:g} s (a stopped process?); "
                 f"nothing was destroyed",
}

NO_ARENA = ("this process has no forkhost arena: run it as a secondary "
            "(forkhost-run, forkhost.launch) or call forkhost.shm.attach() first")

# array('Q') is the 64-bit unsigned array type everywhere forkhost.shm moves
# ring items, object addresses or hash data in bulk.
if array("Q").itemsize != 8:      # pragma: no cover  (every LP64 platform)
    raise ImportError("forkhost.shm needs array('Q') to be 64 bits")


def raise_errno(err: int, what: str, detail: str | None = None,
                name: bytes | None = None):
    """Raise the forkhost exception for errno ``err`` (positive or negative)
    about ``what``; ``detail`` replaces strerror in the message.  ``name``:
    the bare name the call was about, so that a WrongTypeError says which
    type it exists as."""
    err = abs(err)
    oserr = OSError(err, os.strerror(err))
    cls = _EXC.get(err, ShmError)
    if detail is None and name is not None and err == EWRONGTYPE:
        detail = wrong_type_detail(name)
    if detail is None:
        detail = NO_ARENA if err == E.ENODEV else _DETAIL.get(err)
    raise cls(f"{what}: {detail or os.strerror(err)}", err) from oserr


def wrong_type_detail(name: bytes) -> str:
    """What a WrongTypeError says: the type the bare name exists as."""
    kind = lib.fh_memzone_name_kind(name)
    if kind == ffi.NULL:
        return _DETAIL[EWRONGTYPE]
    return f"{_DETAIL[EWRONGTYPE]} (a {ffi.string(kind).decode()})"


# Special methods a disabled handle keeps (the rest raise DestroyedError).
_KEEP = frozenset({"__class__", "__repr__", "__str__", "__init_subclass__",
                   "__subclasshook__", "__new__", "__init__", "__getattribute__",
                   "__setattr__", "__delattr__", "__eq__", "__ne__", "__hash__",
                   "__reduce__", "__reduce_ex__", "__sizeof__", "__dir__",
                   "__format__", "__slots__", "__module__", "__doc__", "__dict__",
                   "__weakref__", "__qualname__", "__annotations__", "__getstate__"})
_DISABLED: dict[type, type] = {}


def disable(obj, what: str) -> None:
    """Make every later use of handle ``obj`` (a Ring, Mempool, HashTable whose
    object this process destroyed) raise DestroyedError: its class becomes a
    subclass without state of its own whose attributes and operators all
    raise.  Costs the live handles nothing."""
    cls = type(obj)
    dead = _DISABLED.get(cls)
    if dead is None:
        def gone(self, *args, **kwargs):
            raise destroyed_error(what, object.__getattribute__(self, "name"))

        def getattribute(self, attr):
            if attr in _KEEP or attr == "name":
                return object.__getattribute__(self, attr)
            if attr == "alive":
                return False
            gone(self)

        def rep(self):
            return f"<destroyed {what} {object.__getattribute__(self, 'name')!r}>"

        ns = {"__slots__": (), "__getattribute__": getattribute, "__repr__": rep}
        for attr in dir(cls):
            if attr.startswith("__") and attr not in _KEEP and \
                    callable(getattr(cls, attr, None)):
                ns[attr] = gone
        dead = type(f"Destroyed{cls.__name__}", (cls,), ns)
        _DISABLED[cls] = dead
    obj.__class__ = dead


def destroyed_error(what: str, name: str) -> DestroyedError:
    """The DestroyedError a use of the destroyed ``what`` ``name`` raises:
    one text for every path (disabled handle, stale handle, C extension)."""
    return DestroyedError(f"{what} {name!r}: {_DETAIL[E.EIDRM]}", E.EIDRM)


def raise_destroyed(what: str, name: str):
    """Raise destroyed_error(what, name) (the C extensions call it, through
    a functools.partial, when their generation check fails)."""
    raise destroyed_error(what, name)


_gen = lib.fh_memzone_gen
_lookup_zone = lib.fh_memzone_lookup
_copy_zone = lib.fh_memzone_copy


class Checked:
    """What a checked handle on a ring, mempool or hash table shares with
    Memzone: the memzone slot its object lives in (``_mz``, a const struct
    fh_memzone *) and the generation the memzone had when the handle was
    made (``_gen``).  A memzone's generation changes when it is freed, so a
    handle whose object was destroyed (by any process) sees it before each
    use and raises DestroyedError, even if an object of the same name now
    lives at the same address (docs/shm.md, Freeing).  Subclasses declare
    the slots ``_mz``, ``_gen`` and ``name`` and a class attribute
    ``_WHAT`` (the type's name in messages)."""

    __slots__ = ()

    def _check(self) -> None:
        # fh_memzone_gen: one acquire load of the slot's generation word.
        if _gen(self._mz) != self._gen:
            raise destroyed_error(self._WHAT, self.name)

    @property
    def alive(self) -> bool:
        """False once the object was destroyed (by any process)."""
        return _gen(self._mz) == self._gen


def object_zone(prefix, name: bytes, obj):
    """(slot, generation) of the memzone that holds object ``obj`` (a cffi
    pointer) called ``name``, whose memzone name is ``prefix`` (a
    FH_*_MZ_PREFIX cdata string) + name; None when no memzone of that name
    holds obj any more (it was destroyed, and maybe created again
    elsewhere, since obj was found)."""
    mz = _lookup_zone(ffi.string(prefix) + name)
    if mz == ffi.NULL:
        return None
    copy = ffi.new("struct fh_memzone *")
    if _copy_zone(mz, copy) < 0 or copy.addr != ffi.cast("void *", obj):
        return None
    return mz, copy.gen


def find_checked(cls, name: bytes, find, prefix):
    """cls(obj, mz, gen, name) for the object ``find(name)`` returns (NULL:
    raise for its errno), checked: ``prefix`` is its type's memzone-name
    prefix.  An object destroyed between its lookup and its memzone's is
    looked up again."""
    what = cls._WHAT
    while True:
        obj = find(name)
        if obj == ffi.NULL:
            err = ffi.errno
            raise_errno(err, f"{what} {name.decode(errors='replace')!r}",
                        "not found" if err == E.ENOENT else None, name)
        zone = object_zone(prefix, name, obj)
        # Found again once the generation is read: the object published in
        # that generation, not one destroyed since the first find while a
        # new one, not yet published, took its place at the same address
        # (whose header the constructor would read half-written).
        if zone is not None and find(name) == obj:
            h = cls(obj, *zone, name)
            # What the constructor read counts only if the object was not
            # destroyed meanwhile.
            if _gen(zone[0]) == zone[1]:
                return h


def created_checked(cls, name: bytes, obj, prefix):
    """cls(obj, mz, gen, name) for the object a create call just returned;
    DestroyedError if another thread or process destroyed it already."""
    zone = object_zone(prefix, name, obj)
    h = None if zone is None else cls(obj, *zone, name)
    if h is None or _gen(zone[0]) != zone[1]:
        raise DestroyedError(f"{cls._WHAT} {name.decode(errors='replace')!r} was "
                             f"destroyed as soon as it was created", E.EIDRM)
    return h


def raise_message(err: int, message: str):
    """Raise the exception for errno ``err`` with ``message`` as it is (the
    C side's own message, which already names the object)."""
    err = abs(err)
    raise _EXC.get(err, ShmError)(message, err) from OSError(err, os.strerror(err))


def cname(name: str | bytes, size: int, what: str) -> bytes:
    """A name for the C side: str or bytes, 1..size-1 bytes, no NUL."""
    b = name.encode() if isinstance(name, str) else bytes(name)
    if not b or len(b) >= size or b"\0" in b:
        raise ValueError(f"invalid {what} name {name!r}: 1 to {size - 1} bytes, "
                         f"no NUL")
    return b


def in_buffer(items, elem_size: int):
    """(cdata char[], count) for a run of packed elements: an array, bytes,
    bytearray, memoryview or any contiguous buffer of count * elem_size
    bytes, or (for 8-byte elements) a list/tuple of ints."""
    if isinstance(items, (list, tuple)):
        if elem_size != 8:
            items = b"".join(items)
        else:
            items = array("Q", items)
    p = ffi.from_buffer(items)
    nbytes = len(p)
    if nbytes % elem_size:
        raise ValueError(f"a buffer of {nbytes} bytes is not a whole number of "
                         f"{elem_size}-byte elements")
    return p, nbytes // elem_size


def address(cdata) -> int:
    return int(ffi.cast("uintptr_t", cdata))
