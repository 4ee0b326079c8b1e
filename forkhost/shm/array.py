"""Arrays: typed, shaped data in the arena, found by name (Python only).

What a preload would otherwise keep in private memory (a model's weights,
a big table) can live in the arena instead: forks do not copy the page
tables of a shared mapping, so the template's pool members and the
secondaries pay nothing for it, and every process of the prefix sees the
same bytes at the same address.

    a = Array.create("app.weights", (1024, 1024), dtype="float32")
    a.numpy()[:] = ...            # an ndarray over the arena, no copy
    w = Array.lookup("app.weights").numpy()          # in a secondary
    m = Array.lookup("app.weights").buffer()         # without numpy

    x = forkhost.shm.array("app.grid", (64, 64), "int32")   # made or found

An array is memzone ``AR_<name>``: a 128-byte header (magic, version,
ndim, data offset, byte count, dtype name, shape) and the data right after
it, 64-byte aligned, zero-filled.  With ``heap=True`` the data is a block
of the shared heap instead (forkhost.shm.heap) and the header (version 2)
holds its address.  The header is written once by the creator, magic
last; a lookup that finds no magic (no such array, or its creator has not
finished) raises NotFoundError.  Nothing synchronises the data: the
processes that share it agree on who writes what, as with a memzone.
destroy() gives the memzone (and the heap block) back; the handles are
checked as the other types' are (DestroyedError), the views taken from
them are not.
"""

from __future__ import annotations

import errno
import struct
import time

from .._native import ffi, lib
from .._errors import DestroyedError, NameExistsError, NotFoundError
from ._dtype import DTYPES, MAX_NDIM, _dtype_name, _import_numpy, _shape
from ._util import address, cname, destroyed_error, raise_errno
from .memzone import Memzone

NAMESIZE = lib.FH_MEMZONE_NAMESIZE - 3      # "AR_" + name + NUL fit a memzone name
HEADER_SIZE = 128
MAGIC = int.from_bytes(b"FHARRAY1", "little")
VERSION = 1          # the data follows the header in the memzone
VERSION_HEAP = 2     # the data is a heap block; data_offset is its address
# How long array() waits for a creator that has reserved the name to
# publish its header, before NotFoundError.
CREATOR_WAIT = 2.0

# header: magic, version, ndim, data_offset, nbytes, dtype[16], shape[8]
_HDR = struct.Struct("<QIIQQ16s8Q")
assert _HDR.size <= HEADER_SIZE


class Array:
    """A typed, shaped array in the arena, found by name from any process of
    the prefix: ``buffer()`` (a memoryview) and ``numpy()`` (an ndarray)
    are views of the same memory, at the same address everywhere."""

    __slots__ = ("_zone", "name", "dtype", "shape", "addr", "nbytes", "heap")

    def __init__(self, zone, name: str, dtype: str, shape: tuple[int, ...],
                 addr: int, nbytes: int, heap: bool = False):
        self._zone = zone      # its memzone's (checked) Memzone handle
        self.name = name
        self.dtype = dtype     # canonical name, e.g. "float64"
        self.shape = shape
        self.addr = addr       # of the first element
        self.nbytes = nbytes
        self.heap = heap       # the data is a heap block

    # -- create / lookup --------------------------------------------------

    @classmethod
    def create(cls, name: str | bytes, shape, dtype="float64", *,
               heap: bool = False) -> "Array":
        """A zero-filled array of ``shape`` (an int or a tuple of 1 to 8
        ints >= 1) and ``dtype`` (bool, int8 ... uint64, float32, float64,
        or numpy's spellings of them), its data in its memzone or, with
        ``heap=True``, in a block of the shared heap.  NameExistsError,
        NoSpaceError; ValueError for a bad name, shape or dtype."""
        b = cname(name, NAMESIZE, "array")
        dt = _dtype_name(dtype)
        dims = _shape(shape)
        nbytes = DTYPES[dt][1]
        for d in dims:
            nbytes *= d
        what = f"cannot create array {name!r} ({nbytes} bytes of {dt}, shape {dims})"
        if HEADER_SIZE + nbytes >= 1 << 63:
            raise_errno(errno.ENOSPC, what)
        block = None
        if heap:
            from .heap import calloc
            from .._errors import NoSpaceError
            try:
                block = calloc(1, nbytes)
            except NoSpaceError as exc:
                raise NoSpaceError(f"{what}: {exc}", exc.errno) from exc
        mz = lib.fh_memzone_reserve(b"AR_" + b, HEADER_SIZE + (0 if heap else nbytes),
                                    64, 0)
        if mz == ffi.NULL:
            err = ffi.errno
            if block is not None:
                block.free()            # nothing left behind
            raise_errno(err, what, name=b)
        base = address(mz.addr)
        data = block.addr if heap else base + HEADER_SIZE
        hdr = ffi.buffer(ffi.cast("char *", mz.addr), HEADER_SIZE)
        _HDR.pack_into(hdr, 0, 0, VERSION_HEAP if heap else VERSION, len(dims),
                       data if heap else HEADER_SIZE, nbytes,
                       dt.encode(), *dims, *([0] * (MAX_NDIM - len(dims))))
        # Published last, with a release store (a lookup acquires it): a
        # lookup before it raises NotFoundError, one after it sees the
        # whole header.
        zone = Memzone(mz)
        lib.fh_publish_u64(ffi.cast("uint64_t *", mz.addr), MAGIC)
        return cls(zone, b.decode(errors="replace"), dt, dims, data, nbytes, heap)

    @classmethod
    def lookup(cls, name: str | bytes) -> "Array":
        """The array called ``name``; NotFoundError if there is none (or its
        creator has not finished, or it was destroyed while it was looked
        up)."""
        b = cname(name, NAMESIZE, "array")
        zone = b"AR_" + b
        mz = lib.fh_memzone_lookup(zone)
        if mz == ffi.NULL:
            err = ffi.errno
            raise_errno(err, f"array {name!r}", "not found" if err == errno.ENOENT else None,
                        b)
        # A handle on the memzone, from a consistent copy of its slot
        # (generation, address and length together) taken before the
        # header is read, and checked again after: what was read while the
        # array was destroyed (the bytes maybe handed out again) counts for
        # nothing.
        found = Memzone._found(zone, mz)
        gone = "not found (destroyed while it was looked up)"
        if found is None:
            raise_errno(errno.ENOENT, f"array {name!r}", gone)
        base, length = address(found._addr), found._size
        if length < HEADER_SIZE or \
                lib.fh_published_u64(ffi.cast("uint64_t *", base)) != MAGIC:
            raise_errno(errno.ENOENT, f"array {name!r}", "not found (its creator "
                        "has not finished, or memzone AR_... is not an array)")
        (_, version, ndim, offset, nbytes, dt, *dims) = _HDR.unpack_from(
            ffi.buffer(ffi.cast("char *", base), HEADER_SIZE))
        dt = dt.rstrip(b"\0").decode(errors="replace")
        heap = version == VERSION_HEAP
        bad = None
        if (version not in (VERSION, VERSION_HEAP) or dt not in DTYPES
                or not 1 <= ndim <= MAX_NDIM
                or (not heap and offset + nbytes > length)):
            bad = (f"its header is not one this version of forkhost reads "
                   f"(version {version}, dtype {dt!r}, ndim {ndim})")
        elif heap and lib.fh_malloc_usable_size(ffi.cast("void *", offset)) < nbytes:
            bad = (f"its data (heap block at 0x{offset:x}) is not a block in use "
                   f"of {nbytes} bytes")
        if not found.alive:
            raise_errno(errno.ENOENT, f"array {name!r}", gone)
        if bad:
            raise_errno(errno.EINVAL, f"array {name!r}", bad)
        return cls(found, b.decode(errors="replace"), dt, tuple(dims[:ndim]),
                   offset if heap else base + offset, nbytes, heap)

    # -- destroy ------------------------------------------------------------

    def _check(self) -> None:
        """DestroyedError once the array was destroyed (by any process)."""
        if not self._zone.alive:
            raise destroyed_error("array", self.name)

    @property
    def alive(self) -> bool:
        """False once the array was destroyed, by any process."""
        return self._zone.alive

    def destroy(self) -> None:
        """Destroy the array: its memzone and, with ``heap=True``, its heap
        block go back, lookups of its name fail and the name can be created
        again.  Every Array handle on it, in any process, raises
        DestroyedError from now on (buffer(), numpy(), destroy()); views
        taken before (a memoryview, an ndarray) are not checked, as with a
        memzone's buffer(): whoever destroys it must know nobody uses them.
        When two processes destroy it at once, one does and the other gets
        DestroyedError."""
        self._check()
        # The memzone's free, checked against our generation, decides who
        # destroys it (a lookup that raced it sees the generation change:
        # NotFoundError); the winner frees the heap block, which nobody
        # can find any more, so nobody frees it twice.  A destroyer killed
        # between the two leaves the block taken for good.
        try:
            self._zone.free()
        except DestroyedError:
            raise destroyed_error("array", self.name) from None
        if self.heap and lib.fh_free(ffi.cast("void *", self.addr)) < 0:
            raise_errno(ffi.errno, f"array {self.name!r}: its heap block at "
                        f"0x{self.addr:x}", "not a block in use of the shared heap")

    # -- views --------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def size(self) -> int:
        """Number of elements."""
        return self.nbytes // self.itemsize

    @property
    def format(self) -> str:
        """The struct/memoryview format of one element ("d" for float64)."""
        return DTYPES[self.dtype][0]

    def buffer(self) -> memoryview:
        """A writable memoryview of the data with this array's format and
        shape, without copying (``.cast("B")`` for the raw bytes)."""
        self._check()
        raw = memoryview(ffi.buffer(ffi.cast("char *", self.addr), self.nbytes))
        return raw.cast(self.format, self.shape)

    def __buffer__(self, flags: int) -> memoryview:      # memoryview(a), Python >= 3.12
        return self.buffer()

    @property
    def __array_interface__(self) -> dict:
        """numpy.asarray(a) is a view, not a copy, on any Python."""
        self._check()
        return {"version": 3, "shape": self.shape, "typestr": DTYPES[self.dtype][2],
                "data": (self.addr, False)}

    def numpy(self):
        """A writable numpy.ndarray over the data, without copying (numpy is
        imported here: the rest of Array works without it)."""
        self._check()       # numpy may swallow __array_interface__'s error
        return _import_numpy("Array.numpy()").asarray(self)

    @property
    def memzone(self):
        self._check()
        return self._zone

    def __len__(self) -> int:
        return self.shape[0]

    def __eq__(self, other):
        return isinstance(other, Array) and self._zone == other._zone

    def __hash__(self):
        return hash(self.addr)

    def __repr__(self):
        where = ", in the heap" if self.heap else ""
        gone = "" if self.alive else " (destroyed)"
        return (f"<Array {self.name!r} {self.dtype} shape {self.shape} at "
                f"0x{self.addr:x}, {self.nbytes} bytes{where}>{gone}")


def array(name: str | bytes, shape=None, dtype="float64", *, heap: bool = False):
    """The numpy.ndarray (a view, no copy) of array ``name``: found when it
    exists, else created zero-filled with ``shape`` and ``dtype`` (its data
    in the shared heap with ``heap=True``).  Every process that calls it
    with the same name gets the same memory; when several create at once,
    one does and the others find it.  Without ``shape`` it only finds
    (NotFoundError).  ValueError when the array found has another shape or
    dtype than the ones given.  Needs numpy (ImportError before anything
    is made); :class:`Array` works without it."""
    numpy = _import_numpy("forkhost.shm.array()")
    dims = None if shape is None else _shape(shape)
    dt = _dtype_name(dtype)
    try:
        a = Array.lookup(name)
    except NotFoundError:
        if dims is None:
            raise
        try:
            a = Array.create(name, dims, dt, heap=heap)
        except NameExistsError:
            a = _await_creator(name)
    if dims is not None and (a.shape != dims or a.dtype != dt):
        raise ValueError(f"array {name!r} exists as {a.dtype} of shape {a.shape}, "
                         f"not {dt} of shape {dims}")
    return numpy.asarray(a)


def _await_creator(name):
    """The array another process is creating: its name is taken, its
    header not published yet (NotFoundError if that lasts CREATOR_WAIT)."""
    deadline = time.monotonic() + CREATOR_WAIT
    while True:
        try:
            return Array.lookup(name)
        except NotFoundError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.001)
