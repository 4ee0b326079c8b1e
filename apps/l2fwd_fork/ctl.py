"""The sample's control entry, run in a secondary of the primary (run.py
launches it; by hand: ``forkhost-run --prefix l2fwd apps/l2fwd_fork/ctl.py
stats``):

    ctl.py stats        one JSON object: the counters, the rings, the pool
    ctl.py stop-gen     gen stops generating (then exits 0)
    ctl.py crash fwd    fwd crashes at its next burst, holding it
"""

import json
import sys

import accounting
import l2fwd as L


def stats(o: L.Objects) -> dict:
    s = o.stats
    return {
        "sent": s[L.SENT], "delivered": s[L.DELIVERED],
        "lost": accounting.lost(o.pool),
        "forwarded": s[L.FORWARDED], "misses": s[L.MISSES], "bad": s[L.BAD],
        "port_delivered": [s[L.PORT_DLV + p] for p in range(L.PORTS)],
        "flow_forwarded_min": min(o.flow_fwd), "flow_forwarded_max": max(o.flow_fwd),
        "flow_delivered_min": min(o.flow_dlv), "flow_delivered_max": max(o.flow_dlv),
        "rx_count": len(o.rx), "tx_count": len(o.tx),
        "rx_lost": accounting.ring_lost(o.rx), "tx_lost": accounting.ring_lost(o.tx),
        "pool_avail": o.pool.avail, "pool_count": o.pool.count,
        "gen_stop": s[L.GEN_STOP], "crash_fwd": s[L.CRASH_FWD],
    }


def main(argv) -> int:
    o = L.Objects()
    match argv:
        case ["stats"]:
            print(json.dumps(stats(o)))
        case ["stop-gen"]:
            o.stats[L.GEN_STOP] = 1
        case ["crash", "fwd"]:
            o.stats[L.CRASH_FWD] = 1
        case ["crash", other]:
            print(f"ctl.py: crash: only fwd can crash on request (not {other!r}): "
                  "the other workers hold counters (README.md)", file=sys.stderr)
            return 2
        case _:
            print(f"ctl.py: expected stats, stop-gen or crash fwd; got {argv}",
                  file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
