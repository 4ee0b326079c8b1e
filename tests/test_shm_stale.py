"""Checked handles: a Ring, Mempool or HashTable handle whose object another
process (or another handle) destroyed raises DestroyedError on every use,
even once an object of the same name lives at the same address, and the
new object is never touched through it (docs/shm.md, Freeing).

The checks run in secondaries (tests/fixtures/shm_stale_fix.py); the test
process never maps the arena.
"""

from __future__ import annotations

import subprocess

import pytest

from fhtest import FIXTURES, leaves_nothing, reap
from shmtest import fix_output, module_arena_primary, names

FIX = "shm_stale_fix"


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    with module_arena_primary(tmp_path_factory, "16M", "256M") as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: each test only launches secondaries on its
    arena, creates names no other test does and leaves none running.
    First fit still hands a destroyed object's bytes back ("same") or to
    the filler ("moved") on a used arena: nothing is freed between an
    object's creation and its replacement, and every object the module
    destroys is replaced by one of its size at its place."""
    with leaves_nothing(_module_primary) as p:
        yield p


def sec(primary, name, *args):
    return fix_output(primary, f"{FIX}:{name}", *args)


@pytest.mark.parametrize("where", ["same", "moved"])
@pytest.mark.parametrize("kind", ["ring", "mempool", "hash"])
def test_stale_handle_in_another_secondary(primary, kind, where, request):
    """Secondary A holds a handle; secondary B destroys the object and
    creates the name again, at the same address ("same": first fit hands
    the freed bytes back) or elsewhere ("moved": a memzone took them
    first).  Every call through A's handle (the C extension's hot calls
    and the cffi ones) raises the same DestroyedError; the new object is
    untouched and a fresh lookup in A works."""
    name = names(request)(f"st.{kind}")
    sec(primary, "make", kind, name)
    holder = primary.popen(f"{FIX}:hold", kind, name, cwd=FIXTURES,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        word, old = holder.stdout.readline().split()
        assert word == "ready"
        new = sec(primary, "replace", kind, name, where).strip()
        if where == "same":
            assert new == old
        else:
            assert new != old
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out, err = holder.communicate(timeout=60)
        assert holder.returncode == 0, err
        assert out == f"stale ok {old}\n"
    finally:
        reap(holder)
    sec(primary, "check_new", kind, name)      # and from a third secondary


def test_stale_handle_in_the_destroying_process(primary):
    """Another handle in the process that destroyed the object is checked
    too; the destroying handle stays disabled."""
    assert sec(primary, "same_process") == "ok\n"
