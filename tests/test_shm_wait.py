"""Waiting on rings and mempools across processes (timeout=, the *_async
methods): timeouts, a consumer woken by every enqueue, many waiters at
once, a waiter killed while asleep, a producer blocked on a full ring, a
mempool getter woken by puts, asyncio, and destroys of what a process
waits on (woken with DestroyedError; a stopped waiter makes destroy give
up).  Every process is a real secondary
of a real primary; no timing thresholds (the waits are bounded only by the
helpers' generous timeouts)."""

from __future__ import annotations

import os
import signal

import pytest

from fhtest import LineReader, leaves_nothing, reap
from shmtest import fixture_run, fixture_start, module_fixtures_primary, names


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    with module_fixtures_primary(tmp_path_factory) as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: each test only launches secondaries on its
    arena, waits on rings and pools no other test names (n()) and leaves
    none running."""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.fixture
def n(request):
    """The test's own name for an shm object (shmtest.names)."""
    return names(request)


def run(primary, name, *args):
    return fixture_run(primary, "shmwait", name, *args)


def start(primary, name, *args):
    return fixture_start(primary, "shmwait", name, *args)


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exited {proc.returncode}:\n{out}{err.decode()}"
    return out


def test_timeouts(primary):
    assert run(primary, "timeouts") == b"timeouts ok\n"


@pytest.mark.parametrize("mode", ["mpmc", "spsc"])
def test_consumer_woken_by_every_enqueue(primary, mode, n):
    ring = n("w.every")
    run(primary, "ring_create", ring, 64, mode)
    cons = start(primary, "consume_each", ring, 200)
    try:
        run(primary, "produce_when_waited", ring, 200)
        finish(cons)
    finally:
        reap(cons)


def test_many_waiters_each_get_one_item(primary):
    """More sleepers than a side has registered slots (16): the extra ones
    take the polling path, and every one gets its item."""
    k = 20
    run(primary, "ring_create", "w.many", 64, "mpmc")
    cons = [start(primary, "take_one", "w.many") for _ in range(k)]
    try:
        # The feeder waits for the 16 registered sleepers (the others
        # sleep unregistered, or are still starting), then feeds all k.
        run(primary, "feed_waiters", "w.many", 16, k)
        got = sorted(int(finish(c)) for c in cons)
    finally:
        reap(*cons)
    assert got == list(range(1, k + 1))


def test_waiter_killed_while_asleep(primary):
    run(primary, "ring_create", "w.kill", 16, "mpmc")
    waiter = start(primary, "sleep_in_dequeue", "w.kill")
    try:
        pid = int(LineReader(waiter.stdout).readline())
        assert run(primary, "after_kill", "w.kill", pid) == b"reclaimed\n"
    finally:
        reap(waiter)
    # Later waiters and wakers work as before.
    cons = start(primary, "consume_each", "w.kill", 20)
    try:
        run(primary, "produce_when_waited", "w.kill", 20)
        finish(cons)
    finally:
        reap(cons)


def test_enqueue_blocked_when_full(primary):
    run(primary, "ring_create", "w.full", 8, "mpmc")
    run(primary, "fill", "w.full")
    prod = start(primary, "produce_blocked", "w.full")
    try:
        run(primary, "drain_when_producer_waits", "w.full")
        finish(prod)
    finally:
        reap(prod)


def exhausted_pool(primary, n, name):
    """A pool of 4 (per-thread caches), all taken: its name, and the ring
    that holds the 4 objects' addresses."""
    pool, objs = n(name), n(name + ".objs")
    run(primary, "ring_create", objs, 8, "mpmc")
    run(primary, "pool_exhaust", pool, objs)
    return pool, objs


@pytest.mark.parametrize("how", ["sync", "async"])
def test_mempool_getter_woken_by_puts(primary, how, n):
    pool, objs = exhausted_pool(primary, n, "w.pool")
    getter = start(primary, "pool_get_waiting", pool, how)
    try:
        run(primary, "pool_put_when_waited", pool, objs)
        assert finish(getter) == b"got one\n"
    finally:
        reap(getter)


def test_asyncio_consumer_keeps_the_loop_running(primary):
    run(primary, "ring_create", "w.async", 16, "mpmc")
    cons = start(primary, "async_consume", "w.async")
    try:
        run(primary, "feed_three", "w.async")
        assert finish(cons) == b"async ok\n"
    finally:
        reap(cons)


@pytest.mark.parametrize("how", ["dequeue", "wait", "enqueue", "async"])
def test_destroy_wakes_a_waiter_with_destroyed_error(primary, how, n):
    """A ring destroyed under a thread that waits on it: the waiter gets
    DestroyedError (it never sleeps on, or touches, freed memory), and the
    name is free as soon as destroy() returns."""
    ring = n("w.destroy")
    run(primary, "ring_create", ring, 8, "mpmc")
    if how == "enqueue":
        run(primary, "fill", ring)
    waiter = start(primary, "destroyed_while_waiting", ring, how)
    try:
        run(primary, "destroy_when_waited", ring, 1)
        said = finish(waiter)
        # An async wait between two slices learns it from its handle's
        # check rather than from the C wait, whose message adds ": wait".
        assert said in ((f"destroyed: ring {ring!r}"
                         + (": wait" if how in ("wait", "async") else "")
                         + ": it was destroyed\n").encode(),
                        *((f"destroyed: ring {ring!r}: it was destroyed\n".encode(),)
                          if how == "async" else ())), said
    finally:
        reap(waiter)


@pytest.mark.parametrize("how", ["sync", "async"])
def test_destroy_wakes_a_mempool_getter(primary, how, n):
    pool, _ = exhausted_pool(primary, n, "w.dpool")
    getter = start(primary, "pool_destroyed_while_waiting", pool, how)
    try:
        run(primary, "pool_destroy_when_waited", pool)
        assert finish(getter) == f"destroyed: mempool {pool!r}: it was destroyed\n".encode()
    finally:
        reap(getter)


def test_destroy_gives_up_on_a_stopped_waiter(primary, n):
    """A waiter that cannot leave (stopped): destroy() raises after
    FH_RING_DRAIN_NS and changes nothing; the waiter, continued, gets the
    next item."""
    ring = n("w.stopped")
    run(primary, "ring_create", ring, 8, "mpmc")
    waiter = start(primary, "wait_for_one", ring)
    try:
        pid = int(LineReader(waiter.stdout).readline())
        out = run(primary, "destroy_stopped", ring, pid)
        # The stopped secondary stopped its forkhost-run too (job control,
        # docs/cli.md); the fixture continued the secondary, this the client.
        os.kill(waiter.pid, signal.SIGCONT)
        assert out.startswith(f"refused: cannot destroy ring {ring!r}: a thread "
                              f"waiting on it did not leave within".encode()), out
        assert finish(waiter) == b"5\n"
    finally:
        reap(waiter)


def test_asyncio_waits_do_not_use_the_default_executor(primary, n):
    """Ten coroutines wait at once while the loop's default executor has
    one thread, busy until all ten wait: the waits run in forkhost's own
    threads (before, they queued behind each other in that executor)."""
    ring = n("w.amany")
    run(primary, "ring_create", ring, 16, "mpmc")
    cons = start(primary, "async_many", ring, 10)
    try:
        run(primary, "feed_waiters", ring, 10, 10)
        assert finish(cons) == b"async many ok\n"
    finally:
        reap(cons)


def test_async_get_leaves_no_cache_that_blocks_destroy(primary, n):
    pool = n("w.apool")
    run(primary, "pool_create", pool)
    assert run(primary, "pool_async_then_destroy", pool) == b"destroyed\n"


def signalled(primary, ring, entry):
    """Start ENTRY RING (it prints its pid, then waits on RING) and SIGUSR1
    it once it waits: the waiter, and a reader of its further lines."""
    run(primary, "ring_create", ring, 8, "mpmc")
    waiter = start(primary, entry, ring)
    lines = LineReader(waiter.stdout)
    try:
        run(primary, "signal_when_waiting", ring, int(lines.readline()))
    except BaseException:
        reap(waiter)
        raise
    return waiter, lines


def test_a_signal_handler_runs_and_the_wait_goes_on(primary, n):
    """A signal ends the C wait with -EINTR; its Python handler runs, the
    handle is checked again, and the wait goes on until the item comes."""
    ring = n("w.sig")
    waiter, lines = signalled(primary, ring, "wait_through_signal")
    try:
        assert lines.readline() == b"handled\n"
        run(primary, "enqueue_when_waiting", ring, 9)
        assert lines.readline() == b"got 9\n"
        finish(waiter)
    finally:
        reap(waiter)


def test_a_wait_whose_ring_a_handler_destroyed_does_not_go_on(primary, n):
    """The handler that interrupted a wait destroys the ring and makes one
    of the same name: the resumed wait checks its handle first and raises
    DestroyedError, instead of sleeping on the new ring."""
    ring = n("w.sigd")
    waiter, lines = signalled(primary, ring, "destroyed_in_handler")
    try:
        assert lines.readline() == f"destroyed: ring {ring!r}: it was destroyed\n".encode()
        finish(waiter)
    finally:
        reap(waiter)
