"""python -m stress [PART ...] [--all] [counts] [--write-docs]

Runs parts of forkhost's reliability suite against the installed forkhost
(`pip install '.[test]'` first) and prints each cell's outcome; exits 1 if
any cell did not turn out as expected.  --write-docs rewrites the figures
in docs/reliability.md (between its markers) from this run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import ROOT  # noqa: F401  (sets sys.path up before forkhost is imported)
from . import report
from .common import FULL

PARTS = ("kill", "fuzz-launch", "fuzz-ipc", "soak", "load", "hostile")

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stress", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", metavar="PART",
                    help=f"which parts to run: {', '.join(PARTS)} (default with --all: every one)")
    ap.add_argument("--all", action="store_true", help="run every part")
    ap.add_argument("--rounds", type=int, default=FULL["kill_rounds"],
                    help="kill matrix: times every cell runs (default %(default)s)")
    ap.add_argument("--burst", type=int, default=FULL["burst"],
                    help="kill matrix: clients in a burst (default %(default)s)")
    ap.add_argument("--count", type=int, default=None,
                    help="inputs for each fuzzer (default 1,000,000: the C target, "
                         "the live template and the live primary each get COUNT)")
    ap.add_argument("--launches", type=int, default=FULL["soak"],
                    help="leak soak: launches (default %(default)s)")
    ap.add_argument("--clients", type=int, nargs="+", default=list(FULL["clients"]),
                    help="concurrent-client load: client counts, one round each "
                         "(default %(default)s)")
    ap.add_argument("--max-secondaries", type=int, default=FULL["max_secondaries"],
                    help="concurrent-client load: the primary's cap (default %(default)s)")
    ap.add_argument("--seed", type=int, default=None, help="fuzzers' seed (default: time)")
    ap.add_argument("--write-docs", action="store_true",
                    help="rewrite the figures in docs/reliability.md from this run")
    return ap


def main(argv=None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    for part in a.parts:
        if part not in PARTS:
            ap.error(f"unknown part {part!r} (choose from {', '.join(PARTS)})")
    if a.write_docs and a.parts and set(a.parts) != set(PARTS):
        ap.error("--write-docs rewrites every part's figures: run them all (--all)")
    parts = list(PARTS) if a.all or not a.parts else a.parts
    count = a.count if a.count is not None else FULL["launch_count"]
    seed = a.seed if a.seed is not None else int(time.time())
    results = []
    for part in parts:
        results.append(run_part(part, a, count, seed))
        print(results[-1].summary(), flush=True)
    bad = sum(len(r.failures) for r in results)
    total = sum(len(r.cells) for r in results)
    print(f"== {total - bad}/{total} cells as expected", flush=True)
    if a.write_docs:
        path = report.write(results, machine=report.machine(), argv=sys.argv[1:]
                            if argv is None else argv)
        print(f"== wrote {os.path.relpath(path)}")
    return 1 if bad else 0


def run_part(part: str, a, count: int, seed: int):
    if part == "kill":
        from . import kill
        return kill.run(burst=a.burst, rounds=a.rounds)
    if part == "fuzz-launch":
        from . import fuzz_launch
        return fuzz_launch.run(count=count, c_count=count, seed=seed)
    if part == "fuzz-ipc":
        from . import fuzz_ipc
        return fuzz_ipc.run(count=a.count if a.count is not None else FULL["ipc_count"],
                            seed=seed)
    if part == "soak":
        from . import soak
        return soak.run(launches=a.launches)
    if part == "load":
        from . import load
        return load.run(clients=a.clients, max_secondaries=a.max_secondaries)
    from . import hostile
    return hostile.run()


if __name__ == "__main__":
    sys.exit(main())
