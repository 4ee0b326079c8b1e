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

from shmtest import build_shm_native, py, shm_primary


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return build_shm_native(tmp_path_factory.mktemp("shm_model"))


@pytest.fixture
def primary(runtime_dir, native):
    p = shm_primary(runtime_dir, native)
    yield p
    code, _, err = p.stop()
    assert code == 0, err


@pytest.mark.parametrize("entries,key_len,fn", [
    (16, 4, None),              # small: full tables are common
    (100, 13, None),            # odd key length
    (64, 16, "fix_hash"),       # the native function of the tests' module
    (40, 8, "weak_hash"),       # four hash values: everything collides
])
def test_hash_table_matches_a_dict(primary, native, entries, key_len, fn):
    args = ["t.model", entries, key_len, 60]
    if fn:
        args += [native.hashfn, fn]
    r = py(primary, "hash_model", *args, timeout=600)
    assert r.stdout == b"t.model: 60 examples ok\n"
