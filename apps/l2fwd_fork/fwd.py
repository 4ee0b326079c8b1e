"""fwd: the forwarding stage (DPDK's l2fwd core loop).  Dequeues bursts
from l2fwd.rx, looks each packet's 5-tuple up in the flow table, rewrites
its header (source MAC = the output port's, destination MAC = the flow's
next hop, TTL - 1, flow and port numbers), counts it per flow and enqueues
it on l2fwd.tx.

``run.py crash fwd`` sets a word in l2fwd.stats; fwd clears it and dies
of a segmentation fault while it holds a burst, as a bug would."""

import ctypes
import os
import resource
from array import array

import l2fwd as L


def crash() -> None:
    L.say(f"fwd (pid {os.getpid()}): crash requested: dereferencing NULL "
          f"with a burst in hand")
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    ctypes.string_at(0)


def main() -> None:
    o = L.Objects()
    stop = L.Stop("fwd")
    stats, mem, base, get = o.stats, o.mem, o.base, o.table.get
    flow_fwd = o.flow_fwd
    macs = [L.next_hop_mac(i) + L.port_mac(L.flow_port(i)) for i in range(L.FLOWS)]
    L.say(f"fwd (pid {os.getpid()}): forwarding {L.RX} -> {L.TX} through "
          f"{len(o.table)} flows")
    buf = array("Q", bytes(8 * L.BURST))
    while not stop:
        n = o.rx.dequeue_burst_into(buf, timeout=0.1)
        if not n:
            continue
        if stats[L.CRASH_FWD]:
            stats[L.CRASH_FWD] = 0
            crash()
        misses = 0
        for a in buf[:n]:
            p = a - base
            data = get(bytes(mem[p + L.KEY:p + L.KEY + L.KEY_LEN]))
            if data is None:
                misses += 1
                data = 0                          # flow 0, port 0
            flow, port = data & 0xFFFFFFFF, data >> 32
            mem[p:p + 12] = macs[flow]
            L.U32.pack_into(mem, p + L.FLOW, flow)
            L.U32.pack_into(mem, p + L.PORT, port)
            mem[p + L.TTL] -= 1
            flow_fwd[flow] += 1
        if misses:
            stats[L.MISSES] += misses
        # Everything dequeued goes on: wait for room as long as it takes
        # (a stop does not drop packets; if the sink never comes back, the
        # supervisor's SIGKILL ends this and the burst is recovered).
        sent = 0
        while sent < n:
            sent += o.tx.enqueue_burst(buf[sent:n], timeout=0.1)
        stats[L.FORWARDED] += n
    stop.done(f"forwarded {stats[L.FORWARDED]}")


if __name__ == "__main__":
    main()
