"""Element types and shapes of the arena's typed memory, and NumPy views of
it without a copy: shared by forkhost.shm.array (named arrays) and
forkhost.shm.heap (blocks viewed as arrays)."""

from __future__ import annotations

MAX_NDIM = 8

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


class _View:
    """What numpy.asarray needs to view memory it does not own."""

    __slots__ = ("__array_interface__",)

    def __init__(self, addr: int, shape: tuple[int, ...], dtype: str):
        self.__array_interface__ = {"version": 3, "shape": shape,
                                    "typestr": DTYPES[dtype][2],
                                    "data": (addr, False)}


def _import_numpy(what: str):
    try:
        import numpy
    except ImportError as exc:
        raise ImportError(f"{what} needs numpy ({exc}); Array.buffer() "
                          f"gives a memoryview without it") from exc
    return numpy


def _numpy(addr: int, shape: tuple[int, ...], dtype: str):
    """A writable ndarray over shape x dtype at addr, no copy."""
    return _import_numpy("numpy()").asarray(_View(addr, shape, dtype))
