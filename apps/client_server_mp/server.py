"""client_server_mp's server: DPDK's client/server sample on forkhost.

    python apps/client_server_mp/server.py [--clients 4] [--items 100000]
                                           [--prefix csmp] [--runtime-dir D]
                                           [--external]

The server is the primary.  It creates one ring per client, launches the
clients (secondaries running client.py; with --external it waits for you
to start them, as in DPDK), hands out the items 1..N round robin in bursts,
then broadcasts a stop over IPC.  The clients report what they processed
through IPC requests; the server checks that every item was processed
exactly once, by the client it was sent to, and exits 0 if so.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from array import array
from pathlib import Path

import forkhost
from forkhost import ipc
from forkhost.shm import SC_DEQ, SP_ENQ, Ring

import names

HERE = Path(__file__).resolve().parent


def say(line: str) -> None:
    """One write per line: the clients write to the same stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Reports:
    """What the clients said, filled in by the IPC thread."""

    def __init__(self, clients: int):
        self.lock = threading.Lock()
        self.exited = threading.Condition(self.lock)
        self.last: dict[int, dict] = {}
        self.exits: dict[int, int | None] = {}    # pid -> returncode
        self.done = threading.Event()   # all final reports in, or a client died
        self.clients = clients

    def on_stats(self, msg, peer) -> None:
        rec = json.loads(msg.param)
        rec["pid"] = msg.pid
        with self.lock:
            self.last[rec["id"]] = rec
            if self.all_final():
                self.done.set()
        ipc.reply(peer, names.STATS, b"ok")

    def all_final(self) -> bool:
        return len(self.last) == self.clients and all(r["final"] for r in self.last.values())

    def wait_exits(self, timeout: float) -> dict[int, int | None]:
        """Wait until every client that reported has exited: a primary that
        stops ends the secondaries still running."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                pids = [r["pid"] for r in self.last.values()]
                left = deadline - time.monotonic()
                if all(p in self.exits for p in pids) or left <= 0:
                    return {p: self.exits.get(p) for p in pids}
                self.exited.wait(left)

    def on_exit(self, msg, peer) -> None:
        """forkhost.exit: a secondary ended.  A client that ends before its
        final report will never send it: stop waiting."""
        pid, code = ipc.parse_exit_notice(msg)
        with self.lock:
            self.exits[pid] = code
            self.exited.notify_all()
            finished = any(r["pid"] == pid and r["final"] for r in self.last.values())
            if not finished:
                self.done.set()


def distribute(rings: list[Ring], items: int) -> tuple[list[int], list[int]]:
    """Items 1..items, item k to client (k-1) % n, BURST per ring call;
    returns what each client was sent: counts and sums."""
    n = len(rings)
    counts, sums = [0] * n, [0] * n
    step = names.BURST * n
    for start in range(1, items + 1, step):
        end = min(start + step, items + 1)
        for i, ring in enumerate(rings):
            burst = array("Q", range(start + i, end, n))
            done = 0
            while done < len(burst):   # a full ring: its client is behind
                got = ring.enqueue_burst(burst[done:] if done else burst)
                done += got
                if not got:
                    time.sleep(0.0001)
            counts[i] += len(burst)
            sums[i] += sum(burst)
    return counts, sums


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="client_server_mp server")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--items", type=int, default=100000)
    ap.add_argument("--prefix", default=names.PREFIX)
    ap.add_argument("--runtime-dir")
    ap.add_argument("--external", action="store_true",
                    help="do not launch the clients: wait for them to be started "
                         "with forkhost-run --prefix P client.py --id N")
    a = ap.parse_args(argv)
    n = a.clients

    reports = Reports(n)
    # Before the primary exists: allowed, it runs once IPC does.
    ipc.register(names.STATS, reports.on_stats)
    ipc.register(ipc.EXIT_NOTICE, reports.on_exit)
    with forkhost.Primary(a.prefix, runtime_dir=a.runtime_dir, arena_size="32M",
                          pool=0) as p:
        ep = p.ipc()     # after the template fork: the IPC thread may start
        rings = [Ring.create(names.ring(i), names.RING_SIZE, flags=SP_ENQ | SC_DEQ)
                 for i in range(n)]
        say(f"server: prefix {p.prefix!r}, {n} clients, {a.items} items, rings "
              f"{names.ring(0)}..{names.ring(n - 1)} of {names.RING_SIZE}")
        clients = []
        if a.external:
            say(f"server: start the clients with: forkhost-run --prefix {p.prefix} "
                  f"{HERE / 'client.py'} --id N  (N = 0..{n - 1})")
        else:
            clients = [forkhost.launch(str(HERE / "client.py"), ["--id", str(i)],
                                       prefix=p.prefix, runtime_dir=a.runtime_dir)
                       for i in range(n)]
        # The stop must reach every client: wait until all of them joined.
        if not ep.wait_members(lambda ms: len(ms) >= n, 3600 if a.external else 60):
            print("server: the clients did not all join", file=sys.stderr)
            return 1

        t0 = time.monotonic()
        counts, sums = distribute(rings, a.items)
        reached = ipc.send(names.STOP)
        say(f"server: distributed {a.items} items in {time.monotonic() - t0:.2f}s; "
              f"stop broadcast reached {reached} of {n} clients")
        reports.done.wait(120)
        finished = reports.all_final()
        codes = [c.wait(60) for c in clients] or \
            list(reports.wait_exits(60).values())     # --external
        elapsed = time.monotonic() - t0

        ok = finished and reached == n and all(c == 0 for c in codes)
        for i in range(n):
            rec = reports.last.get(i, {"items": 0, "sum": 0, "reports": 0, "pid": 0})
            good = rec["items"] == counts[i] and rec["sum"] == sums[i]
            ok &= good
            say(f"server: client {i} (pid {rec['pid']}): sent {counts[i]} items "
                  f"(sum {sums[i]}), processed {rec['items']} (sum {rec['sum']}), "
                  f"{rec['reports']} reports: {'ok' if good else 'MISMATCH'}")
        total = sum(r["items"] for r in reports.last.values())
        if ok:
            say(f"server: all {a.items} items processed exactly once in "
                  f"{elapsed:.2f}s ({a.items / elapsed:,.0f} items/s)")
        else:
            say(f"server: FAILED: {total} of {a.items} items reported, client exit "
                  f"codes {codes}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
