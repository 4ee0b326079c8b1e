"""forkhost.shm from Python: ring throughput between two processes and hash
lookups per second, against multiprocessing.Queue and dict in the same run.

Run by hand (not part of the tests; no thresholds anywhere):

    python benchmarks/shm_python.py [--quick]

Rings.  This process is the primary (forkhost.Primary); for each case it
creates a 1024-slot ring of uint64 and launches two secondaries (this file
as a script): a producer that pushes N items and a consumer that takes them
out.  Both use the Python API with one preallocated array per burst
(enqueue_burst / dequeue_burst_into; `single` uses enqueue()/dequeue(), one
item per call).  The consumer times from its first item to its last.
Cases: SP/SC and MP/MC rings (one producer and one consumer each, the
MP/MC ring paying its CAS), bursts of 1, 8 and 32, MP/MC with two
producers and two consumers, and bursts of 32 whose both sides sleep with
timeout=None when the ring is empty or full instead of spinning.  The baseline is multiprocessing.Queue between
two processes (fork context), one item per put()/get(), and, for
reference, one list of 32 items per put().

Hash lookups.  A 2^19-entry table of 16-byte keys (DPDK's
hash_perf_autotest size) filled to 75% with random keys, with the
built-in CRC32C; lookups in shuffled order: table[key] (one call per key),
lookup_bulk_into of 64 packed keys per call, lookup_bulk and get_bulk of
a list of 64 keys and of 64 packed keys (allocating their results), and a
dict of the same keys for reference (targets: table[key] >= 0.5x dict,
bulk >= 10x dict); each case runs 8 times, interleaved with the others,
each round starting one case later, and its best rate is kept.  One more row looks nothing up: b"".join of
each list of 64 keys, which reads every key object once, as any call
over a list of bytes objects must before it can hash a key.  A lookup
over a list pays that and a packed-keys lookup's table misses; when
memory-level parallelism is what limits both, they add up.
table[key], get, `in`, position and the bulk lookups are C methods
(forkhost/_native/hashfast.c) calling libforkhost without cffi.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from array import array

import forkhost
from forkhost.shm import SC_DEQ, SP_ENQ, HashTable, Ring

RING_SLOTS = 1024
HASH_ROUNDS = 8                  # interleaved rounds of the hash cases, best kept


# -- the secondaries (this file run as a script by forkhost.launch) ------------------

def producer(ring_name: str, n: int, burst: int) -> None:
    ring = Ring.lookup(ring_name)
    sent = 0
    if burst == 0:                        # single-item API
        enqueue = ring.enqueue
        while sent < n:
            if enqueue(sent):
                sent += 1
        return
    # burst < 0: the same burst, sleeping while the ring is full
    # (timeout=None) instead of spinning.
    wait = None if burst < 0 else 0
    burst = abs(burst)
    buf = array("Q", range(burst))
    enqueue_burst = ring.enqueue_burst
    while n - sent >= burst:
        sent += enqueue_burst(buf, timeout=wait)
    while sent < n:
        sent += enqueue_burst(buf[:n - sent], timeout=wait)


def consumer(ring_name: str, n: int, burst: int) -> None:
    ring = Ring.lookup(ring_name)
    got = 0
    t0 = None
    if burst == 0:
        dequeue = ring.dequeue
        while got < n:
            if dequeue() is not None:
                if t0 is None:
                    t0 = time.perf_counter()
                got += 1
    else:
        wait = None if burst < 0 else 0       # as in producer()
        buf = array("Q", bytes(8 * abs(burst)))
        dequeue_burst_into = ring.dequeue_burst_into
        while got < n:
            k = dequeue_burst_into(buf, timeout=wait)
            if k and t0 is None:
                t0 = time.perf_counter()
            got += k
    print(f"{got} {time.perf_counter() - t0:.6f}", flush=True)


# -- ring cases ---------------------------------------------------------------------------

def ring_case(prefix: str, rdir: str, name: str, flags: int, burst: int, n: int,
              producers: int = 1, consumers: int = 1) -> float:
    """Items per second through one ring: total items over the slowest
    consumer's time."""
    Ring.create(name, RING_SLOTS, flags=flags)
    per_p, per_c = n // producers, n // consumers
    r_fd, w_fd = os.pipe()
    secs = []
    try:
        for _ in range(consumers):
            secs.append(forkhost.launch(__file__, ["consumer", name, str(per_c), str(burst)],
                                        prefix=prefix, runtime_dir=rdir, stdout=w_fd,
                                        stdin=forkhost.DEVNULL))
        for _ in range(producers):
            secs.append(forkhost.launch(__file__, ["producer", name, str(per_p), str(burst)],
                                        prefix=prefix, runtime_dir=rdir,
                                        stdin=forkhost.DEVNULL))
        os.close(w_fd)
        w_fd = -1
        for s in secs:
            if s.wait() != 0:
                raise SystemExit(f"a {name} secondary failed")
        with os.fdopen(r_fd) as f:
            r_fd = -1
            lines = f.read().split("\n")
    finally:
        for s in secs:
            s.close()
        for fd in (r_fd, w_fd):
            if fd >= 0:
                os.close(fd)
    results = [line.split() for line in lines if line.strip()]
    total = sum(int(x[0]) for x in results)
    slowest = max(float(x[1]) for x in results)
    return total / slowest


def queue_case(n: int, batch: int = 0) -> float:
    ctx = multiprocessing.get_context("fork")
    q, back = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_queue_consumer_wrap, args=(q, back, n, batch))
    p.start()
    if batch:
        chunk = list(range(batch))
        for _ in range(n // batch):
            q.put(chunk)
    else:
        for i in range(n):
            q.put(i)
    dt = back.get()
    p.join()
    for queue in (q, back):
        queue.close()
        queue.join_thread()
    return n / dt


def _queue_consumer_wrap(q, back, n, batch):
    got = 0
    t0 = None
    while got < n:
        item = q.get()
        if t0 is None:
            t0 = time.perf_counter()
        got += len(item) if batch else 1
    back.put(time.perf_counter() - t0)


# -- hash ---------------------------------------------------------------------------------

def hash_cases(quick: bool) -> list[tuple[str, float]]:
    entries = 1 << (17 if quick else 19)
    n_keys = entries * 3 // 4
    rnd = random.Random(42)
    keys = list({rnd.randbytes(16) for _ in range(n_keys)})
    h = HashTable.create("bench.hash", entries, 16)
    for i, k in enumerate(keys):
        h.add(k, i)
    order = keys[:]
    rnd.shuffle(order)
    packed = [b"".join(order[i:i + 64]) for i in range(0, len(order) - 63, 64)]
    lists = [order[i:i + 64] for i in range(0, len(order) - 63, 64)]
    pos, data = array("i", bytes(4 * 64)), array("Q", bytes(8 * 64))
    d = {k: i for i, k in enumerate(keys)}

    def one_by_one():
        for k in order:
            h[k]
        return len(order)

    def bulk_into():
        found = 0
        for p in packed:
            found += h.lookup_bulk_into(p, pos, data)
        assert found == 64 * len(packed)
        return found

    def each(call, batches):
        """A case: call(batch) for every batch of 64 keys."""
        def case():
            for b in batches:
                call(b)
            return 64 * len(batches)
        return case

    # b"".join reads each key object of the lists once, and nothing of the
    # table: what any call over a list of bytes objects pays first.
    bulk, get_bulk = each(h.lookup_bulk, lists), each(h.get_bulk, lists)
    bulk_packed, get_bulk_packed = each(h.lookup_bulk, packed), each(h.get_bulk, packed)
    join = each(b"".join, lists)

    def dict_loop():
        for k in order:
            d[k]
        return len(order)

    cases = [("table[key], one key per call", one_by_one),
             ("lookup_bulk_into, 64 packed keys per call", bulk_into),
             ("lookup_bulk, a list of 64 keys per call", bulk),
             ("get_bulk, a list of 64 keys per call", get_bulk),
             ("lookup_bulk, 64 packed keys per call", bulk_packed),
             ("get_bulk, 64 packed keys per call", get_bulk_packed),
             ("b''.join of a list of 64 keys (no lookup)", join),
             ("dict[key] (local, for reference)", dict_loop)]
    # Every case HASH_ROUNDS times, the cases interleaved, the best rate
    # of each kept: a round slowed by other load on the machine decides
    # nothing, and a drift in that load falls on every case alike.  Each
    # round starts one case later, so that no case always follows the same
    # one: a case finds in the cache what the one before it left there
    # (the dict loop ran 125 to 185 ns a key by what preceded it).
    best = [0.0] * len(cases)
    for r in range(HASH_ROUNDS):
        for i in ((r + j) % len(cases) for j in range(len(cases))):
            fn = cases[i][1]
            t0 = time.perf_counter()
            n = fn()
            best[i] = max(best[i], n / (time.perf_counter() - t0))
    out = [(what, rate) for (what, _), rate in zip(cases, best)]
    return out


# -- main ---------------------------------------------------------------------------------

def fmt(rate: float) -> str:
    return f"{rate / 1e6:8.3f} M/s" if rate >= 1e5 else f"{rate / 1e3:8.1f} k/s"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer items (a smoke run)")
    a = ap.parse_args()
    scale = 0.1 if a.quick else 1.0

    rdir = tempfile.mkdtemp(prefix="fh-bench-")
    prefix = f"bench-{os.getpid()}"
    print(f"forkhost.shm Python benchmark: {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}")
    ring_rows = []
    # The primary first: Queue's feeder threads may outlive join_thread()
    # for a moment, and the template must be forked single-threaded.
    with forkhost.Primary(prefix, runtime_dir=rdir, arena_size="256M", pool=0):
        q_rate = queue_case(int(100_000 * scale))
        qb_rate = queue_case(int(1_000_000 * scale), batch=32)
        print(f"\nmultiprocessing.Queue, 1 item per put/get:     {fmt(q_rate)}")
        print(f"multiprocessing.Queue, lists of 32 per put:    {fmt(qb_rate)}")
        cases = [("SP/SC", SP_ENQ | SC_DEQ, 0, 300_000, 1, 1),
                 ("SP/SC", SP_ENQ | SC_DEQ, 1, 500_000, 1, 1),
                 ("SP/SC", SP_ENQ | SC_DEQ, 8, 2_000_000, 1, 1),
                 ("SP/SC", SP_ENQ | SC_DEQ, 32, 6_000_000, 1, 1),
                 ("MP/MC", 0, 0, 300_000, 1, 1),
                 ("MP/MC", 0, 1, 500_000, 1, 1),
                 ("MP/MC", 0, 8, 2_000_000, 1, 1),
                 ("MP/MC", 0, 32, 6_000_000, 1, 1),
                 ("MP/MC 2x2", 0, 32, 6_000_000, 2, 2),
                 # Both sides sleep (timeout=None) instead of spinning when
                 # the ring is empty or full.
                 ("SP/SC", SP_ENQ | SC_DEQ, -32, 6_000_000, 1, 1),
                 ("MP/MC", 0, -32, 6_000_000, 1, 1)]
        for i, (mode, flags, burst, n, np_, nc) in enumerate(cases):
            rate = ring_case(prefix, rdir, f"bench.ring{i}", flags, burst,
                             int(n * scale), np_, nc)
            ring_rows.append((mode, burst, rate))
        hash_rows = hash_cases(a.quick)
    shutil.rmtree(rdir, ignore_errors=True)

    print(f"\nRing of {RING_SLOTS} uint64 between two secondaries, Python API "
          f"(ratio = items/s over Queue's 1 item per put/get):")
    print(f"  {'mode':<10} {'per call':<22} {'items/s':>12}  {'vs Queue':>9}")
    for mode, burst, rate in ring_rows:
        how = ("enqueue()/dequeue()" if burst == 0 else f"burst of {burst}"
               if burst > 0 else f"burst of {-burst}, waiting")
        print(f"  {mode:<10} {how:<22} {fmt(rate):>12}  {rate / q_rate:8.1f}x")
    best32 = min(r for m, b, r in ring_rows if b == 32 and m in ("SP/SC", "MP/MC"))
    print(f"  burst-32 API vs Queue (1 item per call): {best32 / q_rate:.0f}x "
          f"(target 100x); vs Queue with lists of 32: {best32 / qb_rate:.1f}x")

    print("\nHash table lookups from Python (2^%d entries, 75%% full, 16-byte keys):"
          % (17 if a.quick else 19))
    dict_rate = hash_rows[-1][1]
    for what, rate in hash_rows:
        print(f"  {what:<44} {fmt(rate):>12}  {rate / dict_rate:6.2f}x dict")
    print("  (targets: table[key] >= 0.5x dict, bulk lookups >= 10x dict; the\n"
          "   join row looks nothing up: it reads the lists' key objects once)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("producer", "consumer"):
        role, name, n, burst = sys.argv[1:5]
        (producer if role == "producer" else consumer)(name, int(n), int(burst))
        sys.exit(0)
    sys.exit(main())
