"""Hash tables against a dict model: hypothesis drives random sequences of
add (and update), delete, lookup, bulk lookup (with and without
precomputed hashes) and iteration, and the table must agree with a dict at
every step, including when full.  The state machine runs inside a
secondary (where the arena is); the table's hash function is the built-in
CRC32C, the tests' native one, or a deliberately weak one (four values) that
turns the table into long collision chains.
"""

from __future__ import annotations

import pytest

from fhtest import leaves_nothing
from shmtest import module_shm_primary, names, py

EXAMPLES = 30       # hypothesis's examples per case, of up to 60 steps each


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory, shm_native):
    with module_shm_primary(tmp_path_factory, shm_native) as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: each case runs in one secondary, on a table of
    its own name."""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.mark.parametrize("entries,key_len,fn", [
    (16, 4, None),              # small: full tables are common
    (100, 13, None),            # odd key length
    (64, 16, "fix_hash"),       # the native function of the tests' module
    (40, 8, "weak_hash"),       # four hash values: everything collides
])
@pytest.mark.heavy
def test_hash_table_matches_a_dict(primary, shm_native, entries, key_len, fn, request):
    table = names(request)("t.model")
    args = [table, entries, key_len, EXAMPLES]
    if fn:
        args += [shm_native.hashfn, fn]
    r = py(primary, "hash_model", *args, timeout=600)
    assert r.stdout == f"{table}: {EXAMPLES} examples ok\n".encode()
