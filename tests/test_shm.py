"""Shared memory across processes: memzones, rings, mempools and hash tables
created in one secondary and used from others, Python and native alike;
the stored hash-function pointer; locks held by a process that dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
from array import array

import pytest

from fhtest import FIXTURES, LineReader, leaves_nothing, reap, wait_until
from shmtest import KINDS, entry, module_shm_primary, names, py, run


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory, shm_native):
    with module_shm_primary(tmp_path_factory, shm_native) as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: every test only launches secondaries on its
    arena, names what it creates there with n(), and leaves none running.
    (The crash tests leave the arena as they check it: repaired.)"""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.fixture
def n(request):
    """The test's own name for an shm object (shmtest.names)."""
    return names(request)


def other(kind: str) -> str:
    return "native" if kind == "python" else "python"


# -- memzones ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_memzone_written_in_one_secondary_read_in_another(primary, shm_native, kind, n):
    run(primary, kind, "mz_write", shm_native, n("t.zone"), 5000, 7)
    for k in KINDS:
        r = run(primary, k, "mz_check", shm_native, n("t.zone"), 5000, 7)
        assert r.stdout == f"ok {n('t.zone')}\n".encode()


# -- rings ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_ring_spsc_in_order_across_processes(primary, shm_native, kind, n):
    """A producer of one kind, a consumer (Python) checking FIFO order."""
    py(primary, "ring_create", n("t.spsc"), 64, "spsc")
    cons = primary.popen("shmfix:ring_order", n("t.spsc"), 5, 100000, cwd=FIXTURES,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run(primary, kind, "ring_produce", shm_native, n("t.spsc"), 5, 100000, 7)
        out, err = cons.communicate(timeout=60)
        assert cons.returncode == 0, err.decode()
    finally:
        reap(cons)


def test_ring_mpmc_stress_every_item_accounted(primary, shm_native, tmp_path, n):
    """Four producers and four consumers, half Python, half native, on one
    small MP/MC ring: every item arrives exactly once, and each consumer sees
    each producer's items in increasing order."""
    n_items = 100000
    producers = [("python", 1, 1), ("python", 2, 32), ("native", 3, 1), ("native", 4, 32)]
    consumers = ["python", "native", "python", "native"]
    ring = n("t.mpmc")
    py(primary, "ring_create", ring, 256, "mpmc")
    procs = []
    try:
        outs = []
        for i, kind in enumerate(consumers):
            out = tmp_path / f"consumer{i}.bin"
            outs.append(out)
            procs.append(primary.popen(entry(kind, "ring_consume", shm_native), ring,
                                       out, cwd=FIXTURES, stderr=subprocess.PIPE))
        prods = [primary.popen(entry(kind, "ring_produce", shm_native), ring, pid,
                               n_items, burst, cwd=FIXTURES, stderr=subprocess.PIPE)
                 for kind, pid, burst in producers]
        procs += prods
        for p in prods:
            assert p.wait(120) == 0, p.stderr.read().decode()
        py(primary, "ring_sentinels", ring, len(consumers))
        for p in procs[:len(consumers)]:
            assert p.wait(120) == 0, p.stderr.read().decode()
    finally:
        reap(*procs)
    seen = []
    for out in outs:
        items = array("Q")
        items.frombytes(out.read_bytes())
        last = {}
        for v in items:       # per producer, increasing within one consumer
            pid, seq = v >> 32, v & 0xFFFFFFFF
            assert seq > last.get(pid, -1), (out.name, pid, seq)
            last[pid] = seq
        seen.extend(items)
    assert len(seen) == n_items * len(producers)
    expect = sorted((pid << 32) | s for _, pid, _ in producers for s in range(n_items))
    assert sorted(seen) == expect
    py(primary, "ring_order", ring, 0, 0)      # and the ring is empty


def test_ring_bulk_and_burst_at_full_and_empty(primary):
    assert py(primary, "ring_semantics").stdout == b"ring semantics ok\n"


# -- mempools ---------------------------------------------------------------------

def test_mempool_exhaustion_and_return(primary, n):
    assert py(primary, "mempool_semantics", n("sem.pool")).stdout == b"mempool semantics ok\n"


def test_mempool_objects_travel_between_processes(primary, n):
    """Objects taken in one secondary (and never put back there) are put
    back by another that got their addresses through a ring."""
    pool, ring = n("sem.pool"), n("t.handoff")
    py(primary, "ring_create", ring, 64, "mpmc")
    run(primary, "python", "mempool_semantics", None, pool)     # creates the pool
    r = py(primary, "mempool_take", pool, ring, 20)
    assert r.stdout == b"20\n"
    r = py(primary, "mempool_give_back", pool, ring, 20)
    assert r.stdout == b"0\n"


def test_mempool_cache_of_a_killed_process_is_reclaimed(primary, n):
    pool = n("sem.pool")
    py(primary, "mempool_semantics", pool)
    holder = primary.popen("shmfix:mempool_hold", pool, 10, 4, cwd=FIXTURES,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = LineReader(holder.stdout).readline()
        assert line == b"holding 6\n", holder.stderr.read1() if not line else line
        os.kill(_secondary_of(primary, holder.pid), signal.SIGKILL)
        assert holder.wait(30) == -signal.SIGKILL
    finally:
        reap(holder)
    in_use, avail, back = map(int, py(primary, "mempool_counts", pool).stdout.split())
    # The 6 objects it held are lost with it (as in DPDK); the 4 in its
    # cache came back.
    assert (in_use, avail) == (6, 26), (in_use, avail, back)


def _secondary_of(primary, client_pid: int) -> int:
    """The secondary serving client_pid (the module's primary is shared: an
    earlier test's secondary may still be listed for a moment)."""
    import forkhost
    secs = wait_until(lambda: [s for s in forkhost.info(primary.prefix, primary.runtime_dir)
                               ["secondaries"] if s["client_pid"] == client_pid],
                      what="the secondary")
    return secs[0]["pid"]


# -- hash tables ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_hash_added_in_one_process_found_in_another(primary, shm_native, kind, n):
    t = n("t.hash")
    py(primary, "hash_create", t, 4096, 16)
    run(primary, kind, "hash_add", shm_native, t, 0, 2000)
    run(primary, other(kind), "hash_check", shm_native, t, 0, 2000, 1)
    py(primary, "hash_del", t, 0, 1000)
    run(primary, kind, "hash_check", shm_native, t, 0, 1000, 0)
    run(primary, other(kind), "hash_check", shm_native, t, 1000, 1000, 1)


def test_stored_function_pointer_from_different_native_entries(primary, shm_native):
    """The table's hash function lives in a module the primary loaded before
    the template fork.  A Python secondary creates the table; the native
    entry shm_entry.so adds keys through the stored pointer; a different
    native program, shm_lookup.so, and Python find them through it."""
    r = py(primary, "hash_create", "t.fn", 8192, 16, shm_native.hashfn, "fix_hash")
    assert r.stdout.decode().strip() == os.path.realpath(shm_native.hashfn)
    run(primary, "native", "hash_add", shm_native, "t.fn", 0, 3000)
    py(primary, "hash_add", "t.fn", 3000, 3000)
    r = primary.run(f"{shm_native.lookup}:lookup", "t.fn", 0, 6000, cwd=FIXTURES)
    assert r.returncode == 0, r.stderr.decode()
    c_sig = int(r.stdout.split(b"hash(0)=")[1].split()[0])
    for kind in ("python", "native"):
        run(primary, kind, "hash_check", shm_native, "t.fn", 0, 6000, 1)
    # the pointer really is the module's function, as Python calls it too
    r = py(primary, "hash_same_fn", "t.fn", shm_native.hashfn, "fix_hash", 0)
    assert int(r.stdout) == c_sig


@pytest.mark.parametrize("kind", KINDS)
def test_function_of_a_module_loaded_after_the_fork_is_refused(primary, shm_native, kind, n):
    """A secondary loads a module the template never had and stores its
    function in a table.  Another secondary does not have that module: it
    gets a clear error naming the module, not a jump into unmapped memory."""
    t = n("t.late")
    r = py(primary, "hash_create", t, 64, 16, shm_native.late, "fix_hash")
    assert r.stdout.decode().strip() == os.path.realpath(shm_native.late)
    r = run(primary, kind, "hash_check", shm_native, t, 0, 1, 1, expect=3)
    msg = r.stdout.decode()
    assert t in msg and os.path.realpath(shm_native.late) in msg
    assert "is not loaded in this process" in msg, msg
    if kind == "python":
        msg = py(primary, "hash_mismatch", t).stdout.decode()
        assert "shm_hashfn_late.so" in msg


# -- a process that dies holding a lock -----------------------------------------------

def test_memzone_lock_holder_killed_next_user_recovers(primary, n):
    holder = primary.popen("shmfix:mz_hold_lock", cwd=FIXTURES,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert LineReader(holder.stdout).readline() == b"locked\n"
        os.kill(_secondary_of(primary, holder.pid), signal.SIGKILL)
        assert holder.wait(30) == -signal.SIGKILL
    finally:
        reap(holder)
    assert py(primary, "mz_after_crash", n("t.after")).stdout == b"recovered\n"
    # and the lock is clean again for the one after
    assert py(primary, "mz_after_crash", n("t.after2")).stdout == b"clean\n"


@pytest.mark.parametrize("step", [1, 2, 3])
def test_memzone_reserve_dies_midway_directory_repaired(primary, step, n):
    py(primary, "mz_write", n("t.before"), 100, 3)
    py(primary, "mz_crash_at", step, n(f"t.crash{step}"), expect=99)
    assert py(primary, "mz_after_crash", n("t.next")).stdout == b"recovered\n"
    py(primary, "mz_check", n("t.before"), 100, 3)


@pytest.mark.parametrize("step", [1, 2])
def test_hash_writer_dies_holding_the_lock(primary, step, n):
    t = n("t.crash")
    py(primary, "hash_create", t, 1024, 16)
    py(primary, "hash_add", t, 0, 500)
    py(primary, "hash_crash_at", t, step, 600 if step == 1 else 10, expect=99)
    count = int(py(primary, "hash_consistent", t, 0, 601).stdout)
    assert count in (500, 501) if step == 1 else count in (499, 500)
    # untouched keys are all still there, found from a native secondary too
    run(primary, "python", "hash_check", None, t, 11, 489, 1)


def test_every_form_of_hash_function(primary, shm_native):
    assert py(primary, "hash_fn_forms", shm_native.hashfn).stdout == b"ok\n"
