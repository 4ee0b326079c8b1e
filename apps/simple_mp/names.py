"""The names and sizes simple_mp's primary and secondaries share.

Like DPDK's simple_mp: two rings (one per direction) and one pool of
message buffers.  Both roles import this module, so they cannot disagree.
"""

PREFIX = "simple_mp"

PRI_2_SEC = "simple_mp.pri_2_sec"    # ring: the primary sends, secondaries receive
SEC_2_PRI = "simple_mp.sec_2_pri"    # ring: secondaries send, the primary receives
MSG_POOL = "simple_mp.msg_pool"      # mempool: one buffer per message in flight

RING_SIZE = 64       # messages in flight per direction (a power of two)
POOL_SIZE = 1024     # buffers; more than both rings hold, the rest sit in caches
POOL_CACHE = 32      # per-thread cache, as DPDK's simple_mp uses
MSG_SIZE = 256       # bytes per buffer: a 4-byte header and up to 252 of text
