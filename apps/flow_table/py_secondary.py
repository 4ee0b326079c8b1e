"""flow_table's Python secondary (started by run.py with forkhost.launch).

Adds its flows and looks up the primary's.  Both go through the hash
function pointer the primary stored in the table: a native function in
libflowhash.so, which this process has at the primary's address because
it was forked from the primary's template.
"""

import os
import sys

from forkhost.shm import HashTable

import flows
import names


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else names.FLOWS_EACH
    table = HashTable.lookup(names.TABLE)
    for i, key in enumerate(flows.keys(names.PY_SECONDARY, n)):
        table.add(key, flows.data(names.PY_SECONDARY, i))
    found = flows.check(table, names.PRIMARY, n)
    first = flows.flow(names.PRIMARY, 0)
    print(f"python secondary (pid {os.getpid()}): added {n} flows through the stored "
          f"hash function in {os.path.basename(table.fn_module)}; found {found}/{n} "
          f"of the primary's (e.g. {flows.describe(first)} -> data "
          f"0x{table[first]:x})", flush=True)
    return 0 if found == n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
