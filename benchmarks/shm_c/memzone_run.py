"""Memzone benchmark: fh_memzone_reserve/free/lookup against DPDK's
rte_memzone_reserve/free/lookup, the same loops (memzone_loop.h) on both
sides, one process each, pinned to CPU 0.

Run by hand (not part of the tests; no thresholds anywhere):

    python3 benchmarks/shm_c/memzone_run.py [--rounds N]

Both sides use normal pages (our arena created without huge pages, DPDK's
EAL with --no-huge), so nothing machine-wide is reserved.  Each round runs
ours then DPDK's; the best of the rounds of each figure is kept on each side
and the worst printed beside it.  Units are TSC cycles; a ratio below 1
means forkhost is faster.  What differs by design: our reserve zeroes the
4 KiB it hands out again (DPDK's rte_free clears freed bytes instead), and
our lookup of a missing name also looks for the name as a ring, mempool,
hash table and array (to say "exists as another type"): five scans of the
directory instead of one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
import build_native  # noqa: E402

CASES = ("pair", "lookup", "miss")
DPDK_EAL = ["--no-huge", "-m", "256", "--no-pci", "-l", "0",
            "--file-prefix=fhmzbench", "--log-level=error"]


def log(text: str) -> None:
    print(text, flush=True)


def parse(out: str) -> dict:
    figures = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == "memzone":
            figures[f[1]] = float(f[2])
    return figures


def build(work: Path) -> tuple[Path, Path | None]:
    build_native.build_library(work, ["-O2"], opt="-O2")
    ours = work / "memzone_bench"
    build_native.run(build_native.cc() + build_native.CFLAGS
                     + ["-O2", "-o", str(ours), str(HERE / "memzone_bench.c"),
                        "-L", str(work), "-lforkhost", f"-Wl,-rpath,{work}"])
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libdpdk"],
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        log("DPDK's development files (pkg-config libdpdk) are missing: our figures only")
        return ours, None
    peer = work / "memzone_dpdk"
    build_native.run(build_native.cc() + ["-O2", "-o", str(peer),
                                          str(HERE / "memzone_dpdk.c")] + flags)
    return ours, peer


def run(cmd: list[str]) -> dict:
    r = subprocess.run(["taskset", "-c", "0", *cmd], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return parse(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    load = os.getloadavg()
    log(f"memzone benchmark, {a.rounds} rounds; load average {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="fh-mzbench-") as tmp:
        ours_exe, peer_exe = build(Path(tmp))
        ours: dict[str, list[float]] = {c: [] for c in CASES}
        theirs: dict[str, list[float]] = {c: [] for c in CASES}
        for _ in range(a.rounds):
            for c, v in run([str(ours_exe)]).items():
                ours[c].append(v)
            if peer_exe is not None:
                for c, v in run([str(peer_exe), *DPDK_EAL]).items():
                    theirs[c].append(v)
    load = os.getloadavg()
    log(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    log(f"{'cycles (best, worst)':<28}{'forkhost':>18}{'DPDK':>18}{'ratio':>8}")
    for c in CASES:
        o, d = ours[c], theirs[c]
        fo = f"{min(o):.0f} ({max(o):.0f})" if o else "-"
        fd = f"{min(d):.0f} ({max(d):.0f})" if d else "-"
        r = f"{min(o) / min(d):.2f}" if o and d else "-"
        what = {"pair": "reserve + free, 4 KiB",
                "lookup": "lookup, 100 zones",
                "miss": "lookup of a missing name"}[c]
        log(f"{what:<28}{fo:>18}{fd:>18}{r:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
