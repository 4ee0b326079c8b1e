"""What every part of the l2fwd_fork sample shares: the names and sizes of
its shared objects, the packet layout, the flows, and the handles.

A packet is one object of the pool ``l2fwd.pool``; its address travels
through the rings ``l2fwd.rx`` (gen -> fwd) and ``l2fwd.tx`` (fwd -> sink).
The flow table ``l2fwd.flows`` maps a packet's 5-tuple to its flow number
and output port.  The counters live in the array ``l2fwd.stats`` (and the
per-flow arrays), so they outlive any worker: each word has one writer at
a time (a worker and its restarted instance never run together), so plain
8-byte stores and loads suffice.

``setup()`` runs in the primary, before the template fork (the
configuration preloads ``l2fwd_setup``): the workers only look the
objects up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

from forkhost import ipc
from forkhost.shm import SC_DEQ, SP_ENQ, Array, HashTable, Mempool, Ring

import accounting

# -- shared objects -----------------------------------------------------------

POOL = "l2fwd.pool"
RX = "l2fwd.rx"              # gen -> fwd
TX = "l2fwd.tx"              # fwd -> sink
FLOWS_TABLE = "l2fwd.flows"
STATS = "l2fwd.stats"
FLOW_FWD = "l2fwd.flow_fwd"  # per flow: forwarded by fwd
FLOW_DLV = "l2fwd.flow_dlv"  # per flow: delivered to sink

POOL_SIZE = 4096             # packets in flight at most
OBJ_SIZE = 64
RING_SIZE = 1024
BURST = 32
FLOWS = 256
PORTS = 4

# Words of l2fwd.stats (uint64), and their one writer.
SENT = 0          # gen: packets enqueued on rx
DELIVERED = 1     # sink: packets received and about to go back to the pool
FORWARDED = 2     # fwd: packets enqueued on tx
MISSES = 3        # fwd: packets whose flow was not in the table
BAD = 4           # sink: packets that reached it without fwd's rewrite
GEN_STOP = 5      # ctl sets it: gen stops generating and exits 0
CRASH_FWD = 6     # ctl sets it, fwd clears it and crashes holding a burst
PORT_DLV = 8      # sink: PORTS words, packets delivered per output port
NSTATS = PORT_DLV + PORTS

# -- packet layout (in the pool object) ---------------------------------------

DST_MAC = 0       # 6 bytes
SRC_MAC = 6       # 6 bytes
ETHERTYPE = 12    # 2 bytes, big-endian
KEY = 14          # the 5-tuple, KEY_LEN bytes
KEY_LEN = 16
SEQ = 32          # uint64: gen's sequence number
FLOW = 40         # uint32: written by fwd
PORT = 44         # uint32: written by fwd
TTL = 48          # uint8: 64 from gen, decremented by fwd
TTL_START = 64
ETH_IPV4 = b"\x08\x00"
_KEY = struct.Struct("!4s4sHHB3x")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")


def flow_key(i: int) -> bytes:
    """Flow i's 5-tuple: 10.0.x.y:(1024+i) -> 192.168.p.1:80, UDP."""
    src = bytes((10, 0, i >> 8 & 255, i & 255))
    dst = bytes((192, 168, i % PORTS, 1))
    return _KEY.pack(src, dst, 1024 + i, 80, 17)


def flow_port(i: int) -> int:
    return i % PORTS


def port_mac(port: int) -> bytes:
    """The MAC address of output port ``port`` (the new source MAC)."""
    return bytes((0x02, 0, 0, 0, 0, port))


def next_hop_mac(i: int) -> bytes:
    """Flow i's next hop (the new destination MAC)."""
    return bytes((0x02, 0, 0, 1, i >> 8 & 255, i & 255))


INGRESS_MAC = bytes((0x02, 0, 0, 0xFF, 0, 0))

# -- creation (in the primary) and lookup (everywhere) ------------------------


def setup() -> None:
    """Create every shared object of the sample and fill the flow table."""
    pool = accounting.create_pool(POOL, POOL_SIZE, OBJ_SIZE)
    accounting.create_ring(RX, RING_SIZE, SP_ENQ | SC_DEQ, pool)
    accounting.create_ring(TX, RING_SIZE, SP_ENQ | SC_DEQ, pool)
    table = HashTable.create(FLOWS_TABLE, FLOWS, KEY_LEN)
    for i in range(FLOWS):
        table.add(flow_key(i), flow_port(i) << 32 | i)
    Array.create(STATS, (NSTATS,), "uint64")
    Array.create(FLOW_FWD, (FLOWS,), "uint64")
    Array.create(FLOW_DLV, (FLOWS,), "uint64")


class Objects:
    """Handles on the sample's shared objects, found by name."""

    def __init__(self):
        self.pool = Mempool.lookup(POOL)
        self.rx = Ring.lookup(RX)
        self.tx = Ring.lookup(TX)
        self.table = HashTable.lookup(FLOWS_TABLE)
        self.stats = Array.lookup(STATS).buffer()
        self.flow_fwd = Array.lookup(FLOW_FWD).buffer()
        self.flow_dlv = Array.lookup(FLOW_DLV).buffer()
        # Every object's bytes as one view: a packet at address a is
        # mem[a - base : a - base + OBJ_SIZE] (objects are contiguous,
        # pool.elt_size apart).
        self.base = self.pool.at(0)
        size = self.pool.elt_size * self.pool.count
        self.mem = memoryview((ctypes.c_ubyte * size).from_address(self.base)).cast("B")

    def off(self, addr: int) -> int:
        return addr - self.base


# -- worker plumbing ----------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


class Stop:
    """Truthy once the worker is asked to stop: by the supervisor's
    forkhost.stop notice (whose reason it prints) or by SIGTERM.  The
    worker then finishes the burst in hand and exits 0."""

    def __init__(self, name: str):
        self.name = name
        self.reason: str | None = None
        signal.signal(signal.SIGTERM, self._term)
        ipc.register("forkhost.stop", self._notice)     # joins the IPC

    def _notice(self, msg, peer) -> None:
        self.reason = msg.param.decode(errors="replace")
        say(f"{self.name} (pid {os.getpid()}): forkhost.stop: {self.reason}; "
            f"finishing the burst in hand")

    def _term(self, *_):
        if self.reason is None:
            self.reason = "SIGTERM"

    def __bool__(self) -> bool:
        return self.reason is not None

    def done(self, what: str) -> None:
        say(f"{self.name} (pid {os.getpid()}): stopped ({self.reason}); {what}")
        sys.exit(0)
