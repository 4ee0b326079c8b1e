"""flow_table's third run: a separate program, started with plain
``python`` (not a secondary), that attaches to the arena the classic way.

    python apps/flow_table/attach.py --hash-lib build/libflowhash.so [--prefix P] [--runtime-dir D]

It is what DPDK's multi-process model gives you: a process with its own
address layout.  It maps the arena at the primary's address (or fails,
naming the mapping ASLR put there), loads libflowhash.so like a program
linked with it would (at an address of its own), and tries a lookup
through the pointer stored in the table.  forkhost refuses that call with
a clear error instead of jumping to an address that means nothing here;
then the DPDK workaround (hash with our own copy, *_with_hash) works.

Exit 0 when what happened is one of the expected outcomes (refused with a
clear error, or worked because the addresses happen to agree); 1 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

import forkhost.shm as shm

import flows
import names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flow_table attach")
    ap.add_argument("--prefix", default=names.PREFIX)
    ap.add_argument("--runtime-dir")
    ap.add_argument("--hash-lib", required=True)
    a = ap.parse_args(argv)

    try:
        att = shm.attach(a.prefix, a.runtime_dir)
    except shm.AttachError as err:
        print(f"classic attach: refused, as it should be when the range is taken: {err}")
        return 0 if err.errno == 17 else 1
    print(f"classic attach (pid {os.getpid()}): arena mapped at 0x{att.base:x}, the "
          f"primary's address; libforkhost.so is at 0x{att.library_base_here:x} here, "
          f"0x{att.library_base_primary:x} in the primary")
    table = shm.HashTable.lookup(names.TABLE)
    lib = shm.load_native(a.hash_lib)        # as a program linked with it would
    key = flows.flow(names.PRIMARY, 0)
    try:
        value = table[key]
    except shm.ModuleMismatchError as err:
        print(f"classic attach: lookup through the stored pointer refused: {err}")
    else:
        print(f"classic attach: lookup through the stored pointer worked (data "
              f"0x{value:x}): libflowhash.so happens to be at the same address here "
              f"as in the primary (ASLR off, or luck)")
        return 0 if value == flows.data(names.PRIMARY, 0) else 1
    # The DPDK workaround: hash with this process's own copy of the function.
    fn = lib[names.HASH_SYMBOL]
    fn.restype = ctypes.c_uint32
    fn.argtypes = (ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32)
    value = table.lookup_with_hash(key, fn(key, len(key), 0))
    print(f"classic attach: with the hash computed here and lookup_with_hash: "
          f"{flows.describe(key)} -> data 0x{value:x}")
    return 0 if value == flows.data(names.PRIMARY, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
