"""C shared-memory benchmark: libforkhost's ring and hash table against DPDK's
rte_ring and rte_hash, measured in the same run on the same cores.

Run by hand (not part of the tests; no thresholds anywhere):

    python3 benchmarks/shm_c/run.py [--rounds N] [--no-dpdk]

What it does:
  1. builds libforkhost (build_native.py, -O2) and bench.c into a temp dir;
  2. when dpdk-test is installed and we are root: reserves 512 x 2 MiB huge
     pages and mounts hugetlbfs at /dev/hugepages (if not mounted), so both
     sides run on huge pages (forkhost's arena takes them as the primary's
     default --huge-pages auto does);
  3. N rounds (default 5), each: our ring table (3 runs, pinned to CPUs 0
     and 1), the same built without the waiter check (what waiting costs
     the fast path when nobody waits), then DPDK's ring_perf_autotest; the
     best of the N rounds of each figure is kept on both sides, so a round
     disturbed by other load counts on neither, and our worst run is
     printed beside it (the spread); then enqueue + dequeue in one
     process on one core, with and without the waiter check (the check's
     own cost, free of cross-core noise), and the wake-up latency of a
     blocked consumer (median of 2000, two processes);
  4. --hash-rounds times (default 2): our hash figures, then DPDK's
     hash_perf_autotest (about 3 minutes: it measures ten key sizes in five
     table configurations); the best of the rounds is kept on each side and
     the worst printed beside it, so a change in the machine's load shows
     as a spread instead of silently favouring either side;
  5. gives the huge pages back (nr_hugepages restored, our mount removed,
     DPDK's leftover page files deleted) and prints one table with the
     ratios forkhost / DPDK.

The reservation is machine-wide for the ~5 minutes of the run: anything
else that maps huge pages meanwhile gets them, forkhost primaries included
(--huge-pages auto), and keeps them until it exits.  The figures are only as
good as the machine is quiet: the header prints the load average.  On a VM
the two-core ring figures also move with where the host runs the two vCPUs
(seen here: 2-3x between rounds, for DPDK and forkhost alike), which is why
the rounds alternate and the best of each side is kept.

Units are TSC cycles (rdtsc), as DPDK's tests print them; lower is better,
and a ratio below 1 means forkhost is faster.  What is compared:
  ring  DPDK's "two physical cores" test: one producer and one consumer on
        CPUs 0 and 1, cycles per object of the producer plus the consumer.
        Ours runs them as two processes (forked from the primary after the
        arena exists), DPDK as two threads.  DPDK 22.11 measures only bulk
        calls of 8 and 32 there; our burst calls are set against its bulk
        figure of the same size, and n=1 has no DPDK figure.  DPDK calls
        its sp/sc functions on a ring created with flags 0, which runs the
        same code as a ring created SP/SC; ours runs the sp/sc cases on a
        ring created SP/SC, which enables its cached-tail fast path, and
        the mp/mc cases on a ring created with flags 0.
  hash  hash_perf_autotest's table for 16-byte keys, "without locks" (DPDK's
        default: no writer lock, readers not safe against a writer; ours is
        the single-writer table, whose readers are), keys in the primary or
        secondary bucket, no data.  "add (writer lock)" is set against
        DPDK's "with locks" table.  Same keys (counters, 64 bytes apart),
        same hash function (jhash, called through the table's pointer),
        same sequence and loops (see bench.c), the bulk lookups through
        fh_hash_lookup_bulk_ptrs (key pointers, as rte_hash_lookup_bulk);
        ours adds in the primary and looks up from a forked secondary.
        Extra rows: bulk lookups through the packed-keys call with the keys
        gathered by the caller (set against the same DPDK bulk figure), and
        lookups through our default CRC32C (no DPDK counterpart).

This script installs nothing.  Without dpdk-test it says how to get it and
prints our figures only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))
import build_native  # noqa: E402
from hugepages import HugePages  # noqa: E402

DPDK_PREFIX = "fhbench"          # --file-prefix: names DPDK's page files
HUGE_PAGES = 512                 # x 2 MiB: the reservation the issue uses
DPDK_EAL = ["--no-pci", "-l", "0-1", f"--file-prefix={DPDK_PREFIX}"]
# Targets from the issue, as ratios of cycles (forkhost / DPDK).
RING_TARGET = 1.0                # at least as fast: SP/SC burst 32
HASH_TARGET = 1 / 0.9            # 0.9x rte_hash's speed or better


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------- building

def build(work: Path, extra: tuple[str, ...] = (), name: str = "bench") -> Path:
    if not (work / "libforkhost.so").exists():
        build_native.build_library(work, opt="-O2")
    exe = work / name
    build_native.run(build_native.cc() + [
        "-std=gnu11", "-D_GNU_SOURCE", "-O2", "-g", "-pthread",
        "-I", str(build_native.INCLUDE)] + build_native.WARNINGS + list(extra)
        + ["-o", str(exe), str(HERE / "bench.c"), "-L", str(work),
           "-lforkhost", f"-Wl,-rpath,{work}"])
    return exe


# The same ring code without the waiter check after each tail store
# (forkhost/ring.h, FH__RING_BENCH_NO_WAKEUP): what waiting costs the fast
# path when nobody waits.
NO_WAKE = ("-DFH__RING_BENCH_NO_WAKEUP",)


# ------------------------------------------------------------ our figures

def run_bench(exe: Path, *args: str) -> tuple[str, dict]:
    """Run bench; returns its header line and {key tuple: value}."""
    r = subprocess.run([str(exe), *args], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"bench {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stdout}{r.stderr}")
    if r.stderr:
        log(r.stderr.rstrip())
    header, figures = "", {}
    for line in r.stdout.splitlines():
        f = line.split()
        if f and f[0] == "ring":       # ring sp/sc bulk 8 prod cons sum med worst
            figures[("ring", f[1], f[2], int(f[3]))] = float(f[6])
            if len(f) >= 9:
                figures[("ring_worst", f[1], f[2], int(f[3]))] = float(f[8])
        elif f and f[0] == "ring1":    # ring1 sp/sc 8 cycles
            figures[("ring1", f[1], int(f[2]))] = float(f[3])
        elif f and f[0] == "wake":     # wake median p10 p90 (cycles)
            figures[("wake",)] = tuple(float(x) for x in f[1:4])
        elif f and f[0] == "hash":     # hash lookup 123.4
            figures[("hash", f[1])] = float(f[2])
        elif line.startswith("forkhost C benchmark"):
            header = line
    return header, figures


# ----------------------------------------------------------- DPDK figures

def dpdk_version() -> str:
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpdk-dev"],
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"
    except OSError:
        return "?"


def run_dpdk(test: str, timeout: int) -> str:
    """dpdk-test's output for one test, or "" when it failed (said why)."""
    # dpdk-test 22.11 runs the command in $DPDK_TEST and, with stdin not a
    # terminal, exits after it; the return code is the test's.
    env = dict(os.environ, DPDK_TEST=test)
    try:
        r = subprocess.run(["dpdk-test", *DPDK_EAL], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"dpdk-test {test}: no result within {timeout} s")
        return ""
    if r.returncode != 0 or "Test OK" not in r.stdout:
        log(f"dpdk-test {test} failed ({r.returncode}):\n"
            f"{r.stdout[-3000:]}{r.stderr[-2000:]}")
        return ""
    return r.stdout


RING_LINE = re.compile(r"^legacy APIs: (SP/SC|MP/MC): bulk \(size: (\d+)\): ([\d.]+)")


def parse_ring(out: str) -> dict:
    """The legacy (pointer) API's two-core section: {(mode, n): cycles}."""
    figures, section = {}, ""
    for line in out.splitlines():
        if line.startswith("###"):
            section = line
            continue
        m = RING_LINE.match(line)
        if m and "two physical cores" in section:
            figures.setdefault((m[1].lower(), int(m[2])), float(m[3]))
    return figures


def parse_hash(out: str, key_len: int = 16) -> dict:
    """{(locks, placement, data, precomputed): (add, lookup, bulk, delete)}
    for key_len, from hash_perf_autotest's result tables."""
    figures = {}
    locks = placement = data = pre = None
    for line in out.splitlines():
        s = line.strip()
        if s == "Without locks in the code":
            locks = False
        elif s == "With locks in the code":
            locks = True
        elif s == "EXTENDABLE BUCKETS PERFORMANCE":
            locks = "ext"
        elif s == "ALL ELEMENTS IN PRIMARY LOCATION":
            placement = "primary"
        elif s == "ELEMENTS IN PRIMARY OR SECONDARY LOCATION":
            placement = "either"
        elif s == "Operations without data":
            data = False
        elif s == "Operations with 8-byte data":
            data = True
        elif s == "Without pre-computed hash values":
            pre = False
        elif s == "With pre-computed hash values":
            pre = True
        else:
            f = s.split()
            if len(f) == 5 and f[0] == str(key_len) and locks is not None:
                figures[(locks, placement, data, pre)] = tuple(float(x) for x in f[1:])
    return figures


# ------------------------------------------------------------------ table

def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}" if ours is not None and theirs else "-"


def fmt(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def keep(into: dict, figs: dict, pick) -> None:
    """Merge one round's figures into into, keeping pick(old, new) (min for
    the best of the rounds, max for the worst)."""
    for k, v in figs.items():
        into[k] = pick(into[k], v) if k in into else v


def print_table(ours: dict, ring_d: dict, hash_d: dict, hash_w: dict,
                hash_rounds: int, ghz: float | None) -> None:
    log(f"\n{'':34}{'forkhost':>10}{'DPDK':>10}{'fh/DPDK':>10}")
    log("ring, two processes (DPDK: two threads) on CPUs 0 and 1, "
        "cycles per object, enqueue + dequeue")
    for mode in ("sp/sc", "mp/mc"):
        for kind in ("bulk", "burst"):
            for n in (1, 8, 32):
                o = ours.get(("ring", mode, kind, n))
                d = ring_d.get((mode, n))
                note = ""
                if (mode, kind, n) == ("sp/sc", "burst", 32):
                    note = f"   (target <= {RING_TARGET:.2f})"
                if kind == "burst" and d is not None:
                    note += "   vs DPDK bulk"
                w = ours.get(("ring_worst", mode, kind, n))
                nw = ours.get(("nowake", mode, kind, n))
                log(f"  {mode.upper()} {kind:<5} n={n:<3}{'':15}{fmt(o):>10}"
                    f"{fmt(d):>10}{ratio(o, d):>10}{note}"
                    f"   worst {fmt(w)}, no waiter check {fmt(nw)}")

    if ours.get(("ring1", "sp/sc", 8)) is not None:
        log("ring, one process on one core, enqueue then dequeue (cycles per "
            "object): with the waiter check / without it")
        for mode in ("sp/sc", "mp/mc"):
            for n in (8, 32):
                w, nw = ours.get(("ring1", mode, n)), ours.get(("nowake1", mode, n))
                log(f"  {mode.upper()} bulk n={n:<3}{'':20}{fmt(w):>10}{fmt(nw):>10}"
                    f"{ratio(w, nw):>10}")
    wk = ours.get(("wake",))
    if wk and ghz:
        log(f"ring wake-up, a consumer process asleep in "
            f"fh_ring_dequeue_bulk_timed, after another's enqueue (CPUs 1, 0): "
            f"median {wk[0] / ghz / 1e3:.1f} us (10%..90%: {wk[1] / ghz / 1e3:.1f}"
            f"..{wk[2] / ghz / 1e3:.1f} us)")

    def d_at(where, table):
        """DPDK's figure at where = (locks, column, precomputed) in table."""
        if where is None:
            return None
        locks, col, pre = where
        row = table.get((locks, "either", False, pre))
        return row[col] if row else None

    log(f"hash, 2^19 entries, 16-byte keys, 75% full, cycles per operation, "
        f"best (worst) of {hash_rounds} round(s) on each side; "
        f"the ratio is of the bests")
    # (name, our key, DPDK's figure as (locks, column, precomputed), target)
    rows = [
        ("lookup", "lookup", (False, 1, False), True),
        ("lookup, hash precomputed", "lookup_with_hash", (False, 1, True), True),
        ("lookup, bulk of 16", "lookup_bulk", (False, 2, False), True),
        # Our packed-keys bulk call, keys gathered by the caller: against
        # the same DPDK figure, for scale.
        ("  same, packed keys", "lookup_bulk_packed", (False, 2, False), False),
        ("add, single writer", "add", (False, 0, False), False),
        ("add, writer lock", "add_locked", (True, 0, False), False),
        # Not in DPDK's test: our default hash function (no ratio).
        ("lookup, built-in CRC32C", "lookup_crc32c", None, False),
    ]
    for name, key, where, target in rows:
        o, ow = ours.get(("hash", key)), ours.get(("hash_worst", key))
        d, dw = d_at(where, hash_d), d_at(where, hash_w)
        note = f"   (target <= {HASH_TARGET:.2f})" if target else ""
        mine = f"{fmt(o)} ({fmt(ow)})"
        theirs = f"{fmt(d)} ({fmt(dw)})" if d is not None else "-"
        log(f"  {name:<28}{mine:>16}{theirs:>16}{ratio(o, d):>8}{note}")
    if ghz:
        lk = ours.get(("hash", "lookup"))
        bk = ours.get(("hash", "lookup_bulk"))
        if lk and bk:
            log(f"  forkhost: {ghz * 1e3 / lk:.1f} M lookups/s single, "
                f"{ghz * 1e3 / bk:.1f} M lookups/s bulk, on one core")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the ring tables, best kept (1..16)")
    ap.add_argument("--no-dpdk", action="store_true",
                    help="our figures only, even when dpdk-test is installed")
    ap.add_argument("--hash-rounds", type=int, default=2,
                    help="rounds of the hash tables, best kept (1..8); each "
                         "runs DPDK's three-minute hash test once")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 16:
        ap.error("--rounds must be 1..16")
    if not 1 <= a.hash_rounds <= 8:
        ap.error("--hash-rounds must be 1..8")

    dpdk = None if a.no_dpdk else shutil.which("dpdk-test")
    if not a.no_dpdk and dpdk is None:
        log("dpdk-test is not installed: our figures only.  DPDK 22.11 is in "
            "Debian 12's packages; dpdk-test is in dpdk-dev (the dpdk package "
            "holds only the libraries):\n"
            "    apt-get update && apt-get install -y dpdk-dev")
    elif dpdk is not None and os.geteuid() != 0:
        log("dpdk-test needs huge pages, which only root can reserve: "
            "our figures only (run as root for DPDK's)")
        dpdk = None
    if os.cpu_count() is None or os.cpu_count() < 2:
        raise SystemExit("needs two CPUs (0 and 1)")

    work = Path(tempfile.mkdtemp(prefix="fhb-shmc-"))
    ours: dict = {}
    ring_d: dict = {}
    hash_d: dict = {}     # DPDK's best hash figures over the rounds
    hash_w: dict = {}     # and its worst
    header = ""
    load_before = os.getloadavg()
    try:
        exe = build(work)
        exe_nw = build(work, NO_WAKE, "bench_nowake")
        with HugePages(HUGE_PAGES, DPDK_PREFIX) if dpdk else contextlib.nullcontext():
            log(f"\nload average before: {load_before[0]:.2f} {load_before[1]:.2f} "
                f"{load_before[2]:.2f} ({os.cpu_count()} CPUs)")
            if dpdk:
                log(f"DPDK: {dpdk} (dpdk-dev {dpdk_version()}), EAL "
                    f"{' '.join(DPDK_EAL)}")
            for i in range(a.rounds):
                log(f"round {i + 1}/{a.rounds}: forkhost ring"
                    + (", DPDK ring_perf_autotest" if dpdk else ""))
                header, figs = run_bench(exe, "--repeat", "3", "ring")
                keep(ours, {k: v for k, v in figs.items() if k[0] == "ring"}, min)
                keep(ours, {k: v for k, v in figs.items() if k[0] == "ring_worst"}, max)
                _, figs = run_bench(exe_nw, "--repeat", "3", "ring")
                keep(ours, {("nowake",) + k[1:]: v for k, v in figs.items()
                            if k[0] == "ring"}, min)
                if dpdk:
                    keep(ring_d, parse_ring(run_dpdk("ring_perf_autotest", 600)), min)
            for _ in range(3):          # alternating, best kept
                _, figs = run_bench(exe, "ring1")
                keep(ours, figs, min)
                _, figs = run_bench(exe_nw, "ring1")
                keep(ours, {("nowake1",) + k[1:]: v for k, v in figs.items()}, min)
            _, figs = run_bench(exe, "wake")
            keep(ours, figs, min)
            # Hash: each round ours, then DPDK's (about 3 minutes), so both
            # sides see the machine's load drift alike; the best of the
            # rounds is kept on each side, as for the rings, and the worst
            # is printed next to it to show the spread.
            for i in range(a.hash_rounds):
                log(f"hash round {i + 1}/{a.hash_rounds}: forkhost"
                    + (", DPDK hash_perf_autotest (about 3 minutes)" if dpdk else ""))
                _, figs = run_bench(exe, "hash")
                keep(ours, figs, min)
                keep(ours, {("hash_worst",) + k[1:]: v for k, v in figs.items()}, max)
                if dpdk:
                    rows = parse_hash(run_dpdk("hash_perf_autotest", 1800))
                    keep(hash_d, rows, lambda a_, b_: tuple(map(min, a_, b_)))
                    keep(hash_w, rows, lambda a_, b_: tuple(map(max, a_, b_)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()
    log(f"\n{header}")
    log(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"ring figures: best of {a.rounds} round(s)"
        + (" on each side" if dpdk else ""))
    m = re.search(r"tsc ([\d.]+) GHz", header)
    print_table(ours, ring_d, hash_d, hash_w, a.hash_rounds,
                float(m[1]) if m else None)
    if dpdk and (not ring_d or not hash_d):
        log("note: some DPDK figures could not be parsed from dpdk-test's output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
