"""The names and sizes flow_table's roles share (Python side; the C
secondary gets the table name on its command line)."""

PREFIX = "flow_table"

TABLE = "flow_table.flows"   # the shared hash table
ENTRIES = 1 << 16            # flows the table holds
KEY_LEN = 16                 # a packed 5-tuple (flows.py)

HASH_SOURCE = "flowhash.c"             # the native hash function ...
HASH_LIBRARY = "libflowhash.so"        # ... built into this library
HASH_SYMBOL = "flow_hash"
C_SOURCE = "c_secondary.c"             # the C secondary ...
C_LIBRARY = "libflow_secondary.so"     # ... a separate shared object
C_SYMBOL = "flow_secondary"

# Who added a flow: the high half of its data, and the owner byte of its
# source address (flows.py).  The same numbers are in c_secondary.c.
PRIMARY, PY_SECONDARY, C_SECONDARY = 1, 2, 3
FLOWS_EACH = 2000
