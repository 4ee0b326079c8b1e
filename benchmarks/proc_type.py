"""proc_type.py - a secondary started as DPDK starts them, against peers.

    python benchmarks/proc_type.py [--rounds N]

One small C program, built twice: on forkhost (fh_init) and on DPDK
(rte_eal_init), each started as its own primary and then again and again
as a secondary from a shell (`--proc-type=secondary`), whole process:
start, hand-over (forkhost) or attach (DPDK), exit.  Against `posix_spawn`
of `/bin/true` in the same run, rounds interleaved and shuffled.  The
DPDK part needs root (huge pages are reserved for it and given back) and
libdpdk (Debian: apt-get install dpdk-dev); without them it is left out
and says why.  Target from the issue, printed in parentheses: the forkhost
secondary <= 2x /bin/true, i.e. >= 25x faster than DPDK's.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import find_runner, spawn_wait  # noqa: E402
from perf_report import DPDK_C, Dpdk, loadavg  # noqa: E402

# The same program as perf_report's DPDK one, on forkhost: built from its
# text, so the two differ only in the calls.
FH_C = (DPDK_C.replace("#include <rte_eal.h>", '#include "forkhost.h"')
        .replace("rte_eal_init", "fh_init").replace("rte_eal_cleanup(", "fh_cleanup("))


def build_fh(work: str) -> str:
    src, exe = f"{work}/fh_eal.c", f"{work}/fh_eal"
    Path(src).write_text(FH_C)
    flags = subprocess.run(["forkhost", "config", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["cc", "-O2", "-fPIC", "-pie", "-rdynamic", "-o", exe, src, *flags],
                   check=True)
    return exe


def start_primary(argv: list[str], env: dict) -> subprocess.Popen:
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    line = p.stdout.readline()
    if line != b"ready\n":
        raise RuntimeError(f"{argv[0]} did not start as primary: {line!r}")
    return p


def stop_primary(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(30)
    p.stdout.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fh-proctype-")
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=f"{work}/run")
    print(f"load average {loadavg()} at the start; {os.cpu_count()} CPUs")
    fh = build_fh(work)
    fh_primary = start_primary([fh, "--proc-type=primary", "--file-prefix=bench",
                                "--", "wait"], env)
    variants = {
        "/bin/true": ["/bin/true"],
        "fh_init secondary": [fh, "--proc-type=secondary", "--file-prefix=bench"],
        "forkhost-run of it": [find_runner(), "--prefix", "bench", fh],
    }
    dpdk = Dpdk(work)
    why = dpdk.setup()
    if why is None:
        variants["DPDK secondary"] = dpdk.secondary_argv()
        print(dpdk.note)
    else:
        print(f"DPDK secondary: not measured: {why}")
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(1)
    try:
        for name, argv in variants.items():        # warm caches, check they run
            spawn_wait(argv, env)
        for _ in range(args.rounds):
            order = list(variants)
            rng.shuffle(order)
            for name in order:
                times[name].append(spawn_wait(variants[name], env))
    finally:
        stop_primary(fh_primary)
        dpdk.close()
    print(f"load average {loadavg()} at the end; {args.rounds} rounds, interleaved\n")
    true = statistics.median(times["/bin/true"])
    print(f"{'variant':<22} {'median':>10} {'p90':>10} {'÷ true':>8}")
    for name, xs in times.items():
        xs = sorted(xs)
        med, p90 = statistics.median(xs), xs[int(0.9 * (len(xs) - 1))]
        target = "  (target <= 2)" if name == "fh_init secondary" else ""
        print(f"{name:<22} {med * 1e3:>8.3f}ms {p90 * 1e3:>8.3f}ms "
              f"{med / true:>8.2f}{target}")
    if "DPDK secondary" in times:
        ratio = statistics.median(times["DPDK secondary"]) / statistics.median(
            times["fh_init secondary"])
        print(f"\nDPDK secondary ÷ fh_init secondary: {ratio:.1f}  (target >= 25)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
