"""The names and sizes client_server_mp's server and clients share.

Like DPDK's client_server_mp: one ring per client, which only the server
fills and only that client drains (single producer, single consumer), and
IPC for everything else.  Both roles import this module, so they cannot
disagree.
"""

PREFIX = "csmp"

RING_SIZE = 2048       # items in flight per client (a power of two)
BURST = 32             # items moved per ring call, as DPDK's sample does
REPORT_EVERY = 4096    # a client reports its counts after this many items

STATS = "csmp.stats"   # IPC request, client -> server: {"id", "items", "sum", "reports", "final"}
STOP = "csmp.stop"     # IPC message, server -> every client: no more items


def ring(client_id: int) -> str:
    """The ring of one client."""
    return f"csmp.client.{client_id}"
