"""Freeing shared objects, with real secondaries: memzones freed and their
names and bytes reused, rings, mempools and hash tables destroyed, handles
held by other processes across a free, lookups racing frees and creates,
and names that exist as another type (docs/shm.md, Freeing).

The checks run in secondaries (tests/fixtures/shm_free_fix.py); the test
process never maps the arena.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from fhtest import FIXTURES, leaves_nothing, reap, wait_until
from shmtest import fix_output, module_arena_primary, names

FIX = "shm_free_fix"


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    with module_arena_primary(tmp_path_factory, "16M", "256M") as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: each test only launches secondaries on its
    arena, creates names no other test does (n()) and leaves none running.
    What they check of the arena as a whole (free_bytes() back where it
    was, first fit handing freed bytes back) holds on a used arena too:
    one secondary at a time, and the module's objects take a small part of
    its 16 MiB, so nothing grows it."""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.fixture
def n(request):
    """The test's own name for an shm object (shmtest.names)."""
    return names(request)


def sec(primary, name, *args, expect=0):
    return fix_output(primary, f"{FIX}:{name}", *args, expect=expect)


def held(primary, name, *args):
    """A secondary that talks over stdin/stdout."""
    return primary.popen(f"{FIX}:{name}", *args, cwd=FIXTURES, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_free_gives_back_bytes_and_name_and_stale_handles_raise(primary):
    assert sec(primary, "free_reuse") == "ok\n"


def test_handle_in_another_secondary_is_stale_after_free_and_reuse(primary):
    sec(primary, "mz_make", "s.zone", 8192, 1)
    holder = held(primary, "mz_hold", "s.zone")
    try:
        assert holder.stdout.readline() == "ready\n"
        sec(primary, "mz_free", "s.zone")
        sec(primary, "mz_make", "s.zone", 8192, 2)       # same name, same bytes
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out, err = holder.communicate(timeout=60)
        assert holder.returncode == 0, err
        assert out == "stale ok\n"
    finally:
        reap(holder)


def test_destroy_ring_mempool_hash_and_reuse_the_name(primary):
    assert sec(primary, "destroy_objects") == "ok\n"


@pytest.mark.parametrize("kind", ["ring", "mempool", "hash"])
def test_destroy_from_another_secondary(primary, kind, n):
    name = n("x.obj")
    sec(primary, "obj_make", kind, name)
    sec(primary, "obj_destroy", kind, name)
    sec(primary, "obj_destroy", kind, name, expect=1)      # NotFoundError
    sec(primary, "obj_make", kind, name)                    # the name is free


def test_destroying_twice_from_two_secondaries(primary):
    """The second destroy, through a handle another process holds, fails
    with DestroyedError (a NotFoundError): handles are checked, so it would
    even if the name had been created again at the same bytes
    (tests/test_shm_stale.py, docs/shm.md)."""
    sec(primary, "obj_make", "ring", "x.twice")
    holder = held(primary, "ring_hold_destroy", "x.twice")
    try:
        assert holder.stdout.readline() == "ready\n"
        sec(primary, "obj_destroy", "ring", "x.twice")
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out, err = holder.communicate(timeout=60)
        assert holder.returncode == 0, err
    finally:
        reap(holder)
    sec(primary, "obj_make", "ring", "x.twice")               # the name is free


def test_mempool_destroy_waits_for_a_live_cache(primary):
    sec(primary, "obj_make", "mempool", "p.busy")
    holder = held(primary, "pool_hold", "p.busy")
    try:
        assert holder.stdout.readline().split()[0] == "holding"
        sec(primary, "pool_destroy", "p.busy", "busy")
        holder.stdin.write("flush\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "flushed\n"
        sec(primary, "pool_destroy", "p.busy", "ok")
        holder.stdin.write("bye\n")
        holder.stdin.flush()
        holder.communicate(timeout=60)
        assert holder.returncode == 0
    finally:
        reap(holder)


def test_killed_cache_holder_does_not_block_destroy(primary):
    """A secondary killed while it holds a cache: once it is gone (reaped
    by the template), destroy reclaims its cache and goes ahead."""
    sec(primary, "obj_make", "mempool", "p.dead")
    holder = held(primary, "pool_hold", "p.dead")
    try:
        word, pid = holder.stdout.readline().split()
        assert word == "holding"
        os.kill(int(pid), signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"),
                   what=f"secondary {pid} to be reaped")
    finally:
        reap(holder)
    sec(primary, "pool_destroy", "p.dead", "ok")


def test_lookups_race_frees_and_creates_of_one_name(primary):
    """One secondary frees and creates name as each type in turn; two
    others look it up as every type meanwhile: each lookup finds a whole
    object or fails cleanly."""
    sec(primary, "mz_make", "r.name.stop", 64, 0)
    lookers = [held(primary, "look", "r.name") for _ in range(2)]
    try:
        sec(primary, "churn", "r.name", 2000)
        found = 0
        for p in lookers:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            word, n, *_ = out.split()
            assert word == "found", out
            found += int(n)
        # Each finds the name now and then (churn runs 2000 rounds while
        # they look): a looker that never finds anything checks nothing.
        assert found > 0, "no lookup ever found the name"
    finally:
        reap(*lookers)


@pytest.mark.parametrize("kind", ["memzone", "ring", "mempool", "hash", "array"])
def test_name_of_another_type(primary, kind):
    sec(primary, "obj_make", kind, f"w.{kind}")
    assert sec(primary, "wrong_type", kind) == "ok\n"
