"""Hash tables in the arena whose hash function is a stored pointer
(fh_hash_*, DPDK's rte_hash minus its multi-process catch).

Keys are bytes of the table's fixed ``key_len``; each key has a 64-bit data
value and a position (0 .. max_entries-1, stable while the key is in the
table).  The hash function is the built-in CRC32C or one from native code:
a cffi/ctypes function pointer, an address, or a ``(library path, symbol)``
pair.  Every secondary maps that library at the primary's address, so any
process of the prefix may call through the stored pointer; a process whose
mapping differs (a classically attached one, or a library loaded after the
template fork) gets ModuleMismatchError naming the module and both
addresses, never a crash.  The ``*_with_hash`` methods never call the
function and work anywhere.

Readers take no lock; writers serialise on a robust mutex in the table (or
not at all with ``single_writer=True``: then the caller guarantees it).
"""

from __future__ import annotations

import ctypes
import errno
import os
from array import array

from .._native import ffi, lib
from .._native._hashfast import TableBase
from ._util import (Checked, address, cname, created_checked, find_checked,
                    in_buffer, raise_errno, raise_message)

NAMESIZE = lib.FH_HASH_NAMESIZE
KEY_LEN_MAX = lib.FH_HASH_KEY_LEN_MAX
ENTRIES_MAX = lib.FH_HASH_ENTRIES_MAX
F_SINGLE_WRITER = lib.FH_HASH_F_SINGLE_WRITER

_NULL = ffi.NULL
_gen = lib.fh_memzone_gen
_ENOENT = -errno.ENOENT

# Libraries loaded through load_native() or a (path, symbol) hash function:
# kept referenced so they are never unloaded while a table may point in.
_loaded: dict[str, ctypes.CDLL] = {}


def load_native(path: str | os.PathLike) -> ctypes.CDLL:
    """Load a shared library into this process and keep it loaded.

    Call it in the primary *before* the template fork (before
    ``Primary.start()``) for every library whose functions go into shared
    memory: every secondary then maps it at the same address.  Loading the
    same path again returns the same library.
    """
    real = os.path.realpath(path)
    dll = _loaded.get(real)
    if dll is None:
        try:
            dll = ctypes.CDLL(real)
        except OSError as err:
            raise_errno(errno.ENOENT, f"cannot load {path}", str(err))
        _loaded[real] = dll
    return dll


def native_function(path: str | os.PathLike, symbol: str) -> int:
    """The address of ``symbol`` in the shared library at ``path`` (loaded,
    and kept loaded, if it was not)."""
    dll = load_native(path)
    try:
        fn = getattr(dll, symbol)
    except AttributeError:
        raise_errno(errno.ENOENT, f"symbol {symbol!r}", f"not found in {path}")
    return ctypes.cast(fn, ctypes.c_void_p).value


# cffi's address of the built-in function is a wrapper in the cffi module,
# not fh_hash_crc32c itself: recognise it, so the table records the
# built-in function (resolved in each process, attached ones included).
_BUILTIN = int(ffi.cast("uintptr_t", ffi.addressof(lib, "fh_hash_crc32c")))


def _fn_pointer(hash_fn):
    """NULL (built-in CRC32C) or an fh_hash_fn for what the user gave."""
    if hash_fn is None:
        return _NULL
    if isinstance(hash_fn, tuple):
        path, symbol = hash_fn
        addr = native_function(path, symbol)
    elif isinstance(hash_fn, int):
        addr = hash_fn
    elif isinstance(hash_fn, ffi.CData):            # any cffi instance's pointer
        addr = int(ffi.cast("uintptr_t", hash_fn))
    elif isinstance(hash_fn, ctypes._CFuncPtr):
        addr = ctypes.cast(hash_fn, ctypes.c_void_p).value
    elif hash_fn is lib.fh_hash_crc32c:
        return _NULL
    else:
        raise TypeError("hash_fn must be None, a (library path, symbol) pair, a "
                        "cffi or ctypes function pointer, or an address")
    return _NULL if addr == _BUILTIN else ffi.cast("fh_hash_fn", addr)


def _error_text() -> str:
    return ffi.string(lib.fh_hash_error()).decode(errors="replace")


class HashTable(TableBase, Checked):
    """A hash table found by name from any process of the prefix.

    ``table[key]``, ``key in table``, ``get``, ``position`` and the bulk
    lookups are the C methods of TableBase (forkhost/_native/hashfast.c),
    which handle bytes keys of the right length and hand everything else
    (other types, wrong lengths, ``sigs``, errors) to the ``*_slow``
    methods below, the one place that checks arguments and raises.

    A checked handle: once the table is destroyed (by any process) every
    use raises DestroyedError (docs/shm.md, Freeing); the C methods check
    the generation themselves and hand a destroyed table's calls to the
    slow methods, which raise."""

    _WHAT = "hash table"

    __slots__ = ("_h", "_mz", "_gen", "name", "key_len", "max_entries")

    def __init__(self, h, mz, gen, name: bytes):
        """h: the struct fh_hash *; mz, gen: its memzone's slot and
        generation (forkhost.shm._util.object_zone); name: its name."""
        self._h = h
        self._mz = mz
        self._gen = gen
        self._bind(address(h), address(mz), gen)
        self.name = name.decode(errors="replace")
        self.key_len = lib.fh_hash_key_len(h)
        self.max_entries = lib.fh_hash_max_entries(h)

    # -- create / lookup -----------------------------------------------------

    @classmethod
    def create(cls, name: str | bytes, entries: int, key_len: int, *,
               hash_fn=None, init_val: int = 0,
               single_writer: bool = False) -> "HashTable":
        """A table for up to ``entries`` keys of ``key_len`` bytes.
        ``hash_fn``: None (CRC32C), ``(library path, symbol)``, a cffi or
        ctypes function pointer ``uint32_t (*)(const void *key, uint32_t
        key_len, uint32_t init_val)``, or its address.  The function must
        lie in a loaded shared library (not a Python callback).
        NameExistsError, NoSpaceError, ShmError (bad argument)."""
        b = cname(name, NAMESIZE, "hash table")
        if not 1 <= entries <= ENTRIES_MAX or not 1 <= key_len <= KEY_LEN_MAX:
            raise ValueError(f"hash table {name!r}: need 1 <= entries <= "
                             f"{ENTRIES_MAX} and 1 <= key_len <= {KEY_LEN_MAX}")
        fn = _fn_pointer(hash_fn)
        h = lib.fh_hash_create(b, entries, key_len, fn, init_val & 0xFFFFFFFF,
                               F_SINGLE_WRITER if single_writer else 0)
        if h == _NULL:
            err = ffi.errno
            if err == errno.EINVAL and _error_text():
                raise_message(err, _error_text())
            raise_errno(err, f"cannot create hash table {name!r}", name=b)
        return created_checked(cls, b, h, lib.FH_HASH_MZ_PREFIX)

    @classmethod
    def lookup(cls, name: str | bytes) -> "HashTable":
        """The table called ``name``; NotFoundError if there is none."""
        return find_checked(cls, cname(name, NAMESIZE, "hash table"),
                            lib.fh_hash_find_existing, lib.FH_HASH_MZ_PREFIX)

    # -- helpers ------------------------------------------------------------

    def _key(self, key) -> bytes:
        """key as bytes of key_len, once the table is checked alive: every
        call that takes a key goes through here first."""
        self._check()
        if len(key) != self.key_len:
            raise ValueError(f"hash table {self.name!r}: keys are {self.key_len} "
                             f"bytes, got {len(key)}")
        return key if isinstance(key, bytes) else bytes(key)

    def _keys(self, keys):
        """Packed keys (cdata, n) from a list of keys or one buffer of
        n * key_len bytes, once the table is checked alive."""
        self._check()
        if isinstance(keys, (list, tuple)):
            kl = self.key_len
            for k in keys:
                if len(k) != kl:
                    raise ValueError(f"hash table {self.name!r}: keys are {kl} "
                                     f"bytes, got {len(k)}")
            keys = b"".join(keys)
        return in_buffer(keys, self.key_len)

    def _fail(self, rc: int, what: str, key=None):
        """Raise for a negative return of a write or lookup call."""
        if rc == _ENOENT:
            raise KeyError(key)
        if rc == -errno.ENOSPC:
            raise_errno(rc, f"hash table {self.name!r}",
                        f"full ({self.max_entries} keys)")
        if rc in (-errno.EFAULT, -errno.EINVAL):
            raise_message(rc, _error_text() or f"hash table {self.name!r}: {what}: "
                          f"{os.strerror(-rc)}")
        raise_errno(rc, f"hash table {self.name!r}: {what}")

    # -- the table's function ------------------------------------------------

    def check(self) -> None:
        """ModuleMismatchError unless this process may call the table's hash
        function (the built-in one always passes)."""
        self._check()
        rc = lib.fh_hash_check(self._h)
        if rc < 0:
            self._fail(rc, "check")

    @property
    def usable(self) -> bool:
        """True when this process may call the table's hash function."""
        self._check()
        return lib.fh_hash_check(self._h) == 0

    def hash(self, key) -> int:
        """The table's hash of ``key`` (the signature *_with_hash takes)."""
        k = self._key(key)
        sig = ffi.new("uint32_t *")
        rc = lib.fh_hash_hash(self._h, k, sig)
        if rc < 0:
            self._fail(rc, "hash", key)
        return sig[0]

    # -- add / lookup / delete ------------------------------------------------

    def add(self, key, data: int = 0) -> int:
        """Add ``key`` with ``data`` (or update its data): its position.
        NoSpaceError when full, ModuleMismatchError."""
        rc = lib.fh_hash_add_key_data(self._h, self._key(key), data)
        if rc < 0:
            self._fail(rc, "add", key)
        return rc

    def _getitem_slow(self, key) -> int:
        """The data of ``key``; KeyError if absent."""
        d = ffi.new("uint64_t *")
        rc = lib.fh_hash_lookup_data(self._h, self._key(key), d)
        if rc < 0:
            self._fail(rc, "lookup", key)
        return d[0]

    def _position_slow(self, key) -> int:
        """The position of ``key``; KeyError if absent."""
        rc = lib.fh_hash_lookup(self._h, self._key(key))
        if rc < 0:
            self._fail(rc, "lookup", key)
        return rc

    def _get_slow(self, key, default=None):
        """The data of ``key``, or ``default``."""
        d = ffi.new("uint64_t *")
        rc = lib.fh_hash_lookup_data(self._h, self._key(key), d)
        if rc < 0:
            if rc == _ENOENT:
                return default
            self._fail(rc, "lookup", key)
        return d[0]

    def delete(self, key) -> int:
        """Remove ``key``: the position it had; KeyError if absent."""
        rc = lib.fh_hash_del_key(self._h, self._key(key))
        if rc < 0:
            self._fail(rc, "delete", key)
        return rc

    def __setitem__(self, key, data: int) -> None:
        self.add(key, data)

    def __delitem__(self, key) -> None:
        self.delete(key)

    def _contains_slow(self, key) -> bool:
        rc = lib.fh_hash_lookup(self._h, self._key(key))
        if rc < 0 and rc != _ENOENT:
            self._fail(rc, "lookup", key)
        return rc >= 0

    # -- with a precomputed hash (no call through the stored pointer) ----------

    def add_with_hash(self, key, sig: int, data: int = 0) -> int:
        rc = lib.fh_hash_add_key_with_hash_data(self._h, self._key(key), sig, data)
        if rc < 0:
            self._fail(rc, "add", key)
        return rc

    def lookup_with_hash(self, key, sig: int) -> int:
        d = ffi.new("uint64_t *")
        rc = lib.fh_hash_lookup_with_hash_data(self._h, self._key(key), sig, d)
        if rc < 0:
            self._fail(rc, "lookup", key)
        return d[0]

    def delete_with_hash(self, key, sig: int) -> int:
        rc = lib.fh_hash_del_key_with_hash(self._h, self._key(key), sig)
        if rc < 0:
            self._fail(rc, "delete", key)
        return rc

    # -- bulk lookups ---------------------------------------------------------

    def _lookup_bulk_slow(self, keys, sigs=None) -> tuple[array, array]:
        """Look up many keys in one call: a list of keys or one buffer of
        n * key_len bytes; ``sigs`` (optional) their precomputed hashes.
        Returns (positions array('i'), data array('Q')): a missing key has
        a negative position and data 0."""
        p, n = self._keys(keys)
        positions = array("i", bytes(n << 2))
        data = array("Q", bytes(n << 3))
        self._lookup_bulk_into_slow(p, positions, data, sigs)
        return positions, data

    def _lookup_bulk_into_slow(self, keys, positions, data=None, sigs=None) -> int:
        """Like lookup_bulk into caller-owned writable buffers (int32 and
        uint64, at least as many as keys); returns the number found."""
        if isinstance(keys, ffi.CData):
            self._check()
            p, n = keys, len(keys) // self.key_len
        else:
            p, n = self._keys(keys)
        pos = ffi.from_buffer("int32_t[]", positions, require_writable=True)
        dat = _NULL if data is None else ffi.from_buffer("uint64_t[]", data,
                                                         require_writable=True)
        if len(pos) < n or (data is not None and len(dat) < n):
            raise ValueError(f"output buffers hold fewer than {n} results")
        if sigs is None:
            rc = lib.fh_hash_lookup_bulk_data(self._h, p, n, pos, dat)
        else:
            s = ffi.from_buffer("uint32_t[]", sigs if not isinstance(sigs, list)
                                else array("I", sigs))
            if len(s) < n:
                raise ValueError(f"{len(s)} signatures for {n} keys")
            rc = lib.fh_hash_lookup_bulk_with_hash(self._h, p, s, n, pos, dat)
        if rc < 0:
            self._fail(rc, "bulk lookup")
        return rc

    def _get_bulk_slow(self, keys, default=None) -> list:
        """The data of each key, ``default`` for missing ones."""
        positions, data = self._lookup_bulk_slow(keys)
        return [d if pos >= 0 else default for pos, d in zip(positions, data)]

    # -- walking ----------------------------------------------------------------

    def iterate(self):
        """Yield (position, key, data) for every key (a snapshot per bucket
        while writers run)."""
        keyp = ffi.new("void **")
        d = ffi.new("uint64_t *")
        nxt = ffi.new("uint32_t *")
        kl = self.key_len
        while True:
            self._check()
            pos = lib.fh_hash_iterate(self._h, ffi.cast("const void **", keyp), d, nxt)
            if pos < 0:
                if pos == _ENOENT:
                    return
                self._fail(pos, "iterate")
            yield pos, ffi.buffer(keyp[0], kl)[:], d[0]

    def __iter__(self):
        return (k for _, k, _ in self.iterate())

    def keys(self) -> list[bytes]:
        return [k for _, k, _ in self.iterate()]

    def items(self) -> list[tuple[bytes, int]]:
        return [(k, d) for _, k, d in self.iterate()]

    def key_at(self, position: int) -> bytes:
        """The key stored at ``position``; KeyError if none."""
        self._check()
        keyp = ffi.new("void **")
        rc = lib.fh_hash_get_key_with_position(self._h, position,
                                               ffi.cast("const void **", keyp))
        if rc < 0:
            self._fail(rc, "key_at", position)
        return ffi.buffer(keyp[0], self.key_len)[:]

    def reset(self) -> None:
        """Remove every key."""
        self._check()
        rc = lib.fh_hash_reset(self._h)
        if rc < 0:
            self._fail(rc, "reset")

    def __len__(self) -> int:
        if _gen(self._mz) != self._gen:
            self._check()
        return lib.fh_hash_count(self._h)

    def recover(self) -> bool:
        """If a writer was killed holding the writer lock, repair the table
        now (its half-done change rolled back or forward) and free the
        lock; True when this call repaired.  The next writer would too."""
        self._check()
        return bool(lib.fh_hash_recover(self._h))

    @property
    def repairs(self) -> int:
        """Repairs after dead writers since creation."""
        self._check()
        return lib.fh_hash_repairs(self._h)

    # -- identity -----------------------------------------------------------------

    @property
    def fn_module(self) -> str:
        """Path of the module holding the hash function ("" = built in)."""
        self._check()
        return ffi.string(lib.fh_hash_fn_module(self._h)).decode(errors="replace")

    @property
    def fn_base(self) -> int:
        """That module's load address in the process that created the table."""
        self._check()
        return int(lib.fh_hash_fn_base(self._h))

    @property
    def addr(self) -> int:
        self._check()
        return address(self._h)

    @property
    def cdata(self):
        """The raw ``struct fh_hash *`` (not checked: C code using it
        follows the rule of docs/shm.md, Freeing)."""
        self._check()
        return self._h

    def __repr__(self):
        if not self.alive:
            return f"<HashTable {self.name!r} (destroyed)>"
        fn = self.fn_module or "crc32c (built in)"
        return (f"<HashTable {self.name!r} {len(self)}/{self.max_entries} keys of "
                f"{self.key_len} bytes, hash in {fn}>")

    def destroy(self) -> None:
        """Destroy the hash table: lookups of its name fail from now on, the name
        can be created again at once and its memory goes back to the arena.
        Every handle on it, in any process, raises DestroyedError from now
        on, even if a table of the same name is created again at the same
        address (docs/shm.md, Freeing)."""
        from ._util import disable
        self._check()
        if lib.fh_hash_destroy(self._h) < 0:
            raise_errno(ffi.errno, f"cannot destroy hash table {self.name!r}")
        disable(self, "hash table")
