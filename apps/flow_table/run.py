"""flow_table in one command.

    python apps/flow_table/run.py [--prefix P] [--runtime-dir D] [--flows N]

1. builds libflowhash.so (the hash function) and libflow_secondary.so (the
   C secondary) with `cc ... $(forkhost config --cflags --libs)`;
2. loads libflowhash.so, *then* starts the primary, so the template (and
   every secondary) has it at this process's address;
3. creates the table with a pointer to flow_hash and adds the primary's flows;
4. launches the Python secondary and the C secondary: each adds flows and
   looks the others' up through the stored pointer;
5. checks every flow from the primary, then runs attach.py, a separate
   process that attaches the classic way and shows what happens there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import forkhost
from forkhost.shm import HashTable, load_native

import flows
import names

HERE = Path(__file__).resolve().parent


def build(outdir: Path) -> tuple[Path, Path]:
    cc = os.environ.get("CC", "cc")
    flags = subprocess.run(["forkhost", "config", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout.split()
    hashlib_ = outdir / names.HASH_LIBRARY
    secondary = outdir / names.C_LIBRARY
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(hashlib_),
                    str(HERE / names.HASH_SOURCE)], check=True)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(secondary),
                    str(HERE / names.C_SOURCE), *flags], check=True)
    return hashlib_, secondary


def launch(what: str, entry: str, args, a) -> bool:
    sec = forkhost.launch(entry, [str(x) for x in args], prefix=a.prefix,
                          runtime_dir=a.runtime_dir, stdin=forkhost.DEVNULL)
    with sec:
        status = sec.wait(120)
    if status != 0:
        print(f"primary: the {what} failed (exit {status})", flush=True)
    return status == 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flow_table")
    ap.add_argument("--prefix", default=names.PREFIX)
    ap.add_argument("--runtime-dir")
    ap.add_argument("--flows", type=int, default=names.FLOWS_EACH)
    a = ap.parse_args(argv)
    n = a.flows

    build_dir = Path(tempfile.mkdtemp(prefix="flow_table-"))
    try:
        hash_lib, c_secondary = build(build_dir)
        # Before the template fork: every secondary inherits this mapping.
        lib = load_native(hash_lib)
        with forkhost.Primary(a.prefix, runtime_dir=a.runtime_dir, pool=0) as p:
            table = HashTable.create(names.TABLE, names.ENTRIES, names.KEY_LEN,
                                     hash_fn=(hash_lib, names.HASH_SYMBOL))
            print(f"primary (pid {p.pid}): table {names.TABLE!r} at 0x{table.addr:x}, "
                  f"hash function {names.HASH_SYMBOL} at "
                  f"0x{forkhost.shm.native_function(hash_lib, names.HASH_SYMBOL):x} in "
                  f"{hash_lib.name} (loaded at 0x{table.fn_base:x})", flush=True)
            for i, key in enumerate(flows.keys(names.PRIMARY, n)):
                table.add(key, flows.data(names.PRIMARY, i))
            print(f"primary: added {n} flows", flush=True)

            ok = launch("Python secondary", str(HERE / "py_secondary.py"), [n], a)
            ok = launch("C secondary", f"{c_secondary}:{names.C_SYMBOL}",
                        [names.TABLE, n], a) and ok
            counts = [flows.check(table, owner, n) for owner in
                      (names.PRIMARY, names.PY_SECONDARY, names.C_SECONDARY)]
            print(f"primary: the table holds {len(table)} flows; found "
                  f"{counts[0]}/{n} of the primary's, {counts[1]}/{n} of the Python "
                  f"secondary's, {counts[2]}/{n} of the C secondary's", flush=True)
            ok = ok and counts == [n, n, n]

            r = subprocess.run([sys.executable, str(HERE / "attach.py"), "--prefix",
                                a.prefix, "--hash-lib", str(hash_lib)]
                               + (["--runtime-dir", a.runtime_dir] if a.runtime_dir else []),
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                print(f"primary: the classic attach run exited {r.returncode}", flush=True)
            ok = ok and r.returncode == 0
        del lib
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    print("flow_table: " + ("all flows found everywhere" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
