"""sink: the TX side.  Dequeues bursts from l2fwd.tx, checks fwd's
rewrite, counts each packet (in total, per flow, per port) and puts the
objects back in the pool."""

import os
from array import array

import l2fwd as L


def main() -> None:
    o = L.Objects()
    stop = L.Stop("sink")
    stats, mem, base, flow_dlv = o.stats, o.mem, o.base, o.flow_dlv
    macs = [L.port_mac(p) for p in range(L.PORTS)]
    L.say(f"sink (pid {os.getpid()}): receiving from {L.TX}; delivered so far "
          f"{stats[L.DELIVERED]}")
    buf = array("Q", bytes(8 * L.BURST))
    while not stop:
        n = o.tx.dequeue_burst_into(buf, timeout=0.1)
        if not n:
            continue
        bad = 0
        for a in buf[:n]:
            p = a - base
            flow = L.U32.unpack_from(mem, p + L.FLOW)[0]
            port = L.U32.unpack_from(mem, p + L.PORT)[0]
            if (mem[p + L.TTL] != L.TTL_START - 1 or port >= L.PORTS or
                    flow >= L.FLOWS or mem[p + 6:p + 12] != macs[port]):
                bad += 1
                continue
            flow_dlv[flow] += 1
            stats[L.PORT_DLV + port] += 1
        if bad:
            stats[L.BAD] += bad
        stats[L.DELIVERED] += n
        o.pool.put_bulk(buf[:n])
    stop.done(f"delivered {stats[L.DELIVERED]}")


if __name__ == "__main__":
    main()
