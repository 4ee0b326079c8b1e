"""client_server_mp's client: a secondary that drains its own ring.

    forkhost-run --prefix csmp apps/client_server_mp/client.py --id N

It looks up its ring by name, counts and sums the items it takes out, and
reports both to the server with an IPC request every REPORT_EVERY items
and once more at the end.  It ends when the server's stop message has
arrived and its ring is empty: the server broadcasts the stop only after
it enqueued its last item, so nothing can arrive after that.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from array import array

from forkhost import ipc
from forkhost.shm import Ring

import names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="client_server_mp client")
    ap.add_argument("--id", type=int, required=True)
    a = ap.parse_args(argv)

    ring = Ring.lookup(names.ring(a.id))
    stop = threading.Event()
    # Registering joins the primary's IPC: from now on the stop reaches us.
    ipc.register(names.STOP, lambda msg, peer: stop.set())

    items = total = reports = since = 0

    def report(final: bool) -> None:
        nonlocal reports
        reports += 1
        body = json.dumps({"id": a.id, "items": items, "sum": total,
                           "reports": reports, "final": final}).encode()
        with ipc.request(names.STATS, body, timeout=10) as r:
            if r.nb_received != 1 or not r.msgs[0].ok:
                raise SystemExit(f"client {a.id}: the server did not take the report")

    buf = array("Q", bytes(8 * names.BURST))
    idle = 0.0001
    while True:
        n = ring.dequeue_burst_into(buf)
        if n:
            items += n
            total += sum(buf[:n])
            since += n
            if since >= names.REPORT_EVERY:
                report(False)
                since = 0
            idle = 0.0001
            continue
        if stop.is_set() and ring.empty:
            break
        time.sleep(idle)              # nothing yet: back off, up to 5 ms
        idle = min(idle * 2, 0.005)
    report(True)
    # One write: with PYTHONUNBUFFERED print() writes the newline apart, and
    # the clients share the server's stdout.
    sys.stdout.write(f"client {a.id}: {items} items, sum {total}, {reports} reports\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
