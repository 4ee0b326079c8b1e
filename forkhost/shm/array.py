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

An array is memzone ``AR_<name>``: a 128-byte header (magic, version,
ndim, data offset, byte count, dtype name, shape) and the data right after
it, 64-byte aligned, zero-filled.  The header is written once by the
creator, magic last; a lookup that finds no magic (no such array, or its
creator has not finished) raises NotFoundError.  Nothing synchronises the
data: the processes that share it agree on who writes what, as with a
memzone.
"""

from __future__ import annotations

import errno
import struct

from .._native import ffi, lib
from ._util import address, cname, raise_errno

NAMESIZE = lib.FH_MEMZONE_NAMESIZE - 3      # "AR_" + name + NUL fit a memzone name
MAX_NDIM = 8
HEADER_SIZE = 128
MAGIC = int.from_bytes(b"FHARRAY1", "little")
VERSION = 1

# dtype name -> (struct/memoryview format, itemsize, numpy typestr).  Native
# (little-endian on every platform forkhost runs on) fixed-size types that
# both memoryview and numpy understand.
DTYPES = {
    "bool": ("?", 1, "|b1"),
    "int8": ("b", 1, "|i1"), "uint8": ("B", 1, "|u1"),
    "int16": ("h", 2, "<i2"), "uint16": ("H", 2, "<u2"),
    "int32": ("i", 4, "<i4"), "uint32": ("I", 4, "<u4"),
    "int64": ("q", 8, "<i8"), "uint64": ("Q", 8, "<u8"),
    "float32": ("f", 4, "<f4"), "float64": ("d", 8, "<f8"),
}
# numpy's short spellings of the same types: "f8", "<f8", "i4", "u1", "?", ...
_ALIASES = {}
for _name, (_fmt, _size, _typestr) in DTYPES.items():
    _ALIASES[_typestr] = _ALIASES[_typestr[1:]] = _ALIASES[_typestr.replace("|", "=")] = _name
    _ALIASES["=" + _typestr[1:]] = _name
_ALIASES["?"] = "bool"

# header: magic, version, ndim, data_offset, nbytes, dtype[16], shape[8]
_HDR = struct.Struct("<QIIQQ16s8Q")
assert _HDR.size <= HEADER_SIZE


def _dtype_name(dtype) -> str:
    """The canonical name of dtype: a name ("float64"), a numpy short
    spelling ("<f8"), a numpy dtype or scalar type."""
    key = dtype
    if not isinstance(dtype, str):
        # numpy.dtype("f8").name / numpy.float64.__name__, without numpy
        key = getattr(dtype, "name", None) or getattr(dtype, "__name__", None)
    if isinstance(key, str):
        if key in DTYPES:
            return key
        if key in _ALIASES:
            return _ALIASES[key]
    raise ValueError(f"unsupported dtype {dtype!r}: one of {', '.join(DTYPES)} "
                     f"(or numpy's spellings of them, e.g. '<f8')")


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"invalid shape {shape!r}: an int or a tuple of ints") from None
    if not 1 <= len(dims) <= MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise ValueError(f"invalid shape {shape!r}: 1 to {MAX_NDIM} dimensions, "
                         f"each an int >= 1")
    return dims


class Array:
    """A typed, shaped array in the arena, found by name from any process of
    the prefix: ``buffer()`` (a memoryview) and ``numpy()`` (an ndarray)
    are views of the same memory, at the same address everywhere."""

    __slots__ = ("_mz", "name", "dtype", "shape", "addr", "nbytes")

    def __init__(self, mz, name: str, dtype: str, shape: tuple[int, ...],
                 addr: int, nbytes: int):
        self._mz = mz          # const struct fh_memzone *
        self.name = name
        self.dtype = dtype     # canonical name, e.g. "float64"
        self.shape = shape
        self.addr = addr       # of the first element
        self.nbytes = nbytes

    # -- create / lookup --------------------------------------------------

    @classmethod
    def create(cls, name: str | bytes, shape, dtype="float64") -> "Array":
        """A zero-filled array of ``shape`` (an int or a tuple of 1 to 8
        ints >= 1) and ``dtype`` (bool, int8 ... uint64, float32, float64,
        or numpy's spellings of them).  NameExistsError, NoSpaceError;
        ValueError for a bad name, shape or dtype."""
        b = cname(name, NAMESIZE, "array")
        dt = _dtype_name(dtype)
        dims = _shape(shape)
        nbytes = DTYPES[dt][1]
        for d in dims:
            nbytes *= d
        if HEADER_SIZE + nbytes >= 1 << 63:
            raise_errno(errno.ENOSPC, f"cannot create array {name!r} ({nbytes} bytes)")
        mz = lib.fh_memzone_reserve(b"AR_" + b, HEADER_SIZE + nbytes, 64, 0)
        if mz == ffi.NULL:
            raise_errno(ffi.errno, f"cannot create array {name!r} ({nbytes} bytes "
                        f"of {dt}, shape {dims})")
        base = address(mz.addr)
        hdr = ffi.buffer(ffi.cast("char *", mz.addr), HEADER_SIZE)
        _HDR.pack_into(hdr, 0, 0, VERSION, len(dims), HEADER_SIZE, nbytes,
                       dt.encode(), *dims, *([0] * (MAX_NDIM - len(dims))))
        # Published last, with a release store (a lookup acquires it): a
        # lookup before it raises NotFoundError, one after it sees the
        # whole header.
        lib.fh_publish_u64(ffi.cast("uint64_t *", mz.addr), MAGIC)
        return cls(mz, b.decode(errors="replace"), dt, dims, base + HEADER_SIZE, nbytes)

    @classmethod
    def lookup(cls, name: str | bytes) -> "Array":
        """The array called ``name``; NotFoundError if there is none (or its
        creator has not finished)."""
        b = cname(name, NAMESIZE, "array")
        mz = lib.fh_memzone_lookup(b"AR_" + b)
        if mz == ffi.NULL:
            err = ffi.errno
            raise_errno(err, f"array {name!r}", "not found" if err == errno.ENOENT else None)
        if mz.len < HEADER_SIZE or \
                lib.fh_published_u64(ffi.cast("uint64_t *", mz.addr)) != MAGIC:
            raise_errno(errno.ENOENT, f"array {name!r}", "not found (its creator "
                        "has not finished, or memzone AR_... is not an array)")
        (_, version, ndim, offset, nbytes, dt, *dims) = _HDR.unpack_from(
            ffi.buffer(ffi.cast("char *", mz.addr), HEADER_SIZE))
        dt = dt.rstrip(b"\0").decode(errors="replace")
        if (version != VERSION or dt not in DTYPES or not 1 <= ndim <= MAX_NDIM
                or offset + nbytes > mz.len):
            raise_errno(errno.EINVAL, f"array {name!r}", "its header is not one this "
                        f"version of forkhost reads (version {version}, dtype {dt!r}, "
                        f"ndim {ndim})")
        return cls(mz, b.decode(errors="replace"), dt, tuple(dims[:ndim]),
                   address(mz.addr) + offset, nbytes)

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
        raw = memoryview(ffi.buffer(ffi.cast("char *", self.addr), self.nbytes))
        return raw.cast(self.format, self.shape)

    def __buffer__(self, flags: int) -> memoryview:      # memoryview(a), Python >= 3.12
        return self.buffer()

    @property
    def __array_interface__(self) -> dict:
        """numpy.asarray(a) is a view, not a copy, on any Python."""
        return {"version": 3, "shape": self.shape, "typestr": DTYPES[self.dtype][2],
                "data": (self.addr, False)}

    def numpy(self):
        """A writable numpy.ndarray over the data, without copying (numpy is
        imported here: the rest of Array works without it)."""
        try:
            import numpy
        except ImportError as exc:
            raise ImportError(f"Array.numpy() needs numpy ({exc}); Array.buffer() "
                              f"gives a memoryview without it") from exc
        return numpy.asarray(self)

    @property
    def memzone(self):
        from .memzone import Memzone
        return Memzone(self._mz)

    def __len__(self) -> int:
        return self.shape[0]

    def __eq__(self, other):
        return isinstance(other, Array) and self._mz == other._mz

    def __hash__(self):
        return hash(self.addr)

    def __repr__(self):
        return (f"<Array {self.name!r} {self.dtype} shape {self.shape} at "
                f"0x{self.addr:x}, {self.nbytes} bytes>")
