"""HashTable's C lookups (forkhost/_native/hashfast.c) against its Python
(cffi) paths: the same results and the same exceptions for good keys, bad
keys and bad buffers, in a usable table and in one whose hash function is
not mapped in the process; bytes keys never fall back to Python."""

from __future__ import annotations

import pytest

from shmtest import py, shm_primary


@pytest.fixture
def primary(runtime_dir, shm_native):
    p = shm_primary(runtime_dir, shm_native)
    yield p
    code, _, err = p.stop()
    assert code == 0, err


def test_c_lookups_agree_with_the_python_paths(primary):
    assert py(primary, "hash_fast_paths", "t.fast").stdout == b"ok\n"
