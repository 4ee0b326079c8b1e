"""gen: the packet generator (DPDK's RX side).  Takes objects from the
pool, writes an Ethernet/5-tuple header for one of the flows, and enqueues
them on l2fwd.rx.  ``sent`` counts what went in the ring.  Exits 0 when
asked to stop (the drain: ``run.py drain``, or the supervisor's stop);
the objects it holds then go back to the pool, never sent."""

import os
from array import array

import l2fwd as L


def fill(o: L.Objects, addrs, seq: int) -> None:
    mem, base = o.mem, o.base
    for k, a in enumerate(addrs):
        p = a - base
        flow = (seq + k) * 7 % L.FLOWS         # every flow, interleaved
        mem[p + L.DST_MAC:p + L.DST_MAC + 6] = L.INGRESS_MAC
        mem[p + L.SRC_MAC:p + L.SRC_MAC + 6] = L.INGRESS_MAC
        mem[p + L.ETHERTYPE:p + L.ETHERTYPE + 2] = L.ETH_IPV4
        mem[p + L.KEY:p + L.KEY + L.KEY_LEN] = L.flow_key(flow)
        L.U64.pack_into(mem, p + L.SEQ, seq + k)
        mem[p + L.TTL] = L.TTL_START


def main() -> None:
    o = L.Objects()
    stop = L.Stop("gen")
    stats = o.stats
    L.say(f"gen (pid {os.getpid()}): generating {L.FLOWS} flows into {L.RX}; "
          f"sent so far {stats[L.SENT]}")
    held = array("Q")                 # got from the pool, not yet enqueued
    while not stop and not stats[L.GEN_STOP]:
        if not held:
            try:
                held = o.pool.get_bulk(L.BURST, timeout=0.1)
            except TimeoutError:
                continue
            fill(o, held, stats[L.SENT])
        n = o.rx.enqueue_burst(held, timeout=0.1)
        if n:
            stats[L.SENT] += n        # only gen writes it
            del held[:n]
    if held:
        o.pool.put_bulk(held)         # never sent: not counted anywhere
    if stop:
        stop.done(f"sent {stats[L.SENT]}")
    L.say(f"gen (pid {os.getpid()}): generation stopped; sent {stats[L.SENT]}")


if __name__ == "__main__":
    main()
