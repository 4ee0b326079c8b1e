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
  4. --hash-rounds times (default 3): our hash figures and DPDK's
     hash_perf_autotest (about 3 minutes: it measures ten key sizes in five
     table configurations), one run of each per round, in alternating
     order (ours first in odd rounds, DPDK's first in even ones), both
     pinned to CPU 0; every figure is printed as best / median / worst
     over the rounds on each side, with the ratio of the bests and of the
     medians, so that one round disturbed by other load decides nothing
     and a change in the machine's load shows as a spread;
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
        Extra rows: bulk lookups through the packed-keys call, the keys
        packed by the caller beforehand (as Python and any caller holding
        packed keys has them; set against the same DPDK bulk figure), the
        same with the 16 keys gathered from the 64-byte-stride array inside
        the timed loop (that copy is the caller's, and costs it several
        cycles per key: the pointer call prefetches those lines itself and
        overlaps them with hashing), and lookups through our default
        CRC32C (no DPDK counterpart).

Run with --hash-only for the hash parts alone (no ring or heap).

  hash, steady (--hash-ab N, default 4; 0 skips it): hash_ab.c, one
        program with both tables (built against libforkhost and, when
        pkg-config knows libdpdk, DPDK, whose rte_jhash both tables then
        call), run N times for the single-writer and N for the
        writer-locked tables, on normal pages (--no-huge).  The same
        loops as above in batches of 4096 operations; each case runs on
        one table and then the other (the order alternating between
        repetitions), every batch's fastest of 9 repetitions kept.  Two
        programs run one after the other moved by 0.9x to 1.2x against
        each other with the memory bandwidth and cache the host's other
        guests left to this one; one program running both sees the same
        phases.  Printed as median (min-max) per side and the median and
        worst of the runs' ratios.

  ring, steady (--ring-ab N, default 6; 0 skips it): ring_ab.c, one
        program with both rings (built against libforkhost and, when
        pkg-config knows libdpdk, DPDK), run N times.  The same two-core
        shape as above, but both sides as two threads of one process on
        normal pages, and every batch of 4096 calls on our ring followed
        by the same batch on DPDK's; each batch's fastest of 15
        repetitions kept.  On a VM the cost of a cache line moving
        between the two vCPUs changes by about 3x for seconds at a time
        (the host moves them); interleaved batch by batch, both sides see
        the same phases, so each run's ratio holds where figures taken
        minutes apart do not.  Printed: median (min-max) of the N runs per
        side, the median of the runs' ratios and the worst of them.

Heap (the last part): fh_malloc/fh_free against rte_malloc/rte_free, the
same loops (heap_loop.h) in bench.c and in heap_dpdk.c, which is built
against DPDK's development files (pkg-config libdpdk) and runs on the main
lcore of an EAL with the arguments above; cycles per malloc + free, best
of 5 runs inside each program, one program run per side.  Note that
rte_free clears the freed bytes (rte_zmalloc relies on it) and fh_free
does not (fh_calloc clears on allocation), which is most of DPDK's cost for
big blocks.

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
RING_TARGET = 1.1                # every ring case, bulk and burst of 8 and 32
HASH_TARGET = 1.0                # hash lookups and adds: at least as fast


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


def dpdk_flags(what: str) -> tuple[list[str], list[str]] | None:
    """DPDK's compiler and linker flags (pkg-config libdpdk), or None after
    saying that `what` runs without DPDK."""
    try:
        cflags, libs = (subprocess.run(["pkg-config", opt, "libdpdk"], check=True,
                                       capture_output=True, text=True).stdout.split()
                        for opt in ("--cflags", "--libs"))
    except (OSError, subprocess.CalledProcessError):
        log(f"pkg-config has no libdpdk (apt-get install dpdk-dev): "
            f"{what} runs our side only")
        return None
    return cflags, libs


def build_ab(work: Path, prog: str, with_dpdk: bool = True) -> tuple[Path, bool]:
    """prog.c (ring_ab, hash_ab) against libforkhost (built by build() into
    work), with DPDK in the same program when asked and pkg-config knows
    libdpdk; returns the program and whether DPDK is in it."""
    exe = work / prog
    flags = dpdk_flags(prog) if with_dpdk else None
    # DPDK's headers warn under our warning set: with them, -Wall only.
    build_native.run(build_native.cc() + [
        "-std=gnu11", "-D_GNU_SOURCE", "-O2", "-g", "-pthread"]
        + (["-Wall", "-DWITH_DPDK"] + flags[0] if flags else build_native.WARNINGS)
        + ["-I", str(build_native.INCLUDE), "-o", str(exe), str(HERE / f"{prog}.c"),
           "-L", str(work), "-lforkhost", f"-Wl,-rpath,{work}"]
        + (flags[1] if flags else []))
    return exe, flags is not None


def run_ab(exe: Path, *args: str) -> list[list[str]]:
    """One run of hash_ab or ring_ab: its output lines that start with a
    side's name, split; its DPDK runtime dir removed."""
    p = subprocess.Popen([str(exe), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    # DPDK's runtime directory for --file-prefix=fhab<pid> (root's, or a
    # user's under XDG_RUNTIME_DIR).
    for d in ("/var/run/dpdk", os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"),
                                            "dpdk")):
        shutil.rmtree(f"{d}/fhab{p.pid}", ignore_errors=True)
    lines = [f for f in (line.split() for line in out.splitlines())
             if f and f[0] in ("fh", "dpdk")]
    if p.returncode != 0 or not lines:
        log(f"{exe.name} failed ({p.returncode}):\n{out[-2000:]}{err[-2000:]}")
        return []
    return lines


def run_hash_ab(exe: Path, locked: bool) -> dict:
    """One hash_ab run: {side: {name: cycles}}."""
    return {f[0]: {k: float(v) for k, v in (x.split("=") for x in f[1:])}
            for f in run_ab(exe, *(["L"] if locked else []))}


def run_ring_ab(exe: Path) -> dict:
    """One ring_ab run: {(side, mode, kind, n): cycles per object}."""
    return {(f[0], f[1], f[2], int(f[3])): float(f[4]) for f in run_ab(exe)
            if len(f) == 5}


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


def print_table(ours: dict, ring_d: dict, ghz: float | None) -> None:
    log(f"\n{'':34}{'forkhost':>10}{'DPDK':>10}{'fh/DPDK':>10}")
    log("ring, two processes (DPDK: two threads) on CPUs 0 and 1, "
        "cycles per object, enqueue + dequeue")
    for mode in ("sp/sc", "mp/mc"):
        for kind in ("bulk", "burst"):
            for n in (1, 8, 32):
                o = ours.get(("ring", mode, kind, n))
                d = ring_d.get((mode, n))
                note = ""
                if n > 1:
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


def median(v: list[float]) -> float:
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def print_hash_table(ours_rounds: list[dict], dpdk_rounds: list[dict],
                     ghz: float | None) -> None:
    """The hash rows: best / median / worst over the rounds on each side
    (ours_rounds: run_bench's figures per round; dpdk_rounds: parse_hash's
    per round) and the ratios of the bests and of the medians."""
    def dpdk_at(where, rnd):
        """DPDK's figure at where = (locks, column, precomputed)."""
        locks, col, pre = where
        row = rnd.get((locks, "either", False, pre))
        return row[col] if row else None

    def spread(v: list[float]) -> str:
        return (f"{min(v):.0f}/{median(v):.0f}/{max(v):.0f}" if v else "-")

    log(f"\nhash, 2^19 entries, 16-byte keys, 75% full, cycles per operation, "
        f"best/median/worst of {len(ours_rounds)} round(s) on each side, CPU 0")
    log(f"  {'':34}{'forkhost':>16}{'DPDK':>16}{'best':>7}{'median':>8}")
    # (name, our key, DPDK's figure as (locks, column, precomputed), target)
    rows = [
        ("lookup", "lookup", (False, 1, False), True),
        ("lookup, hash precomputed", "lookup_with_hash", (False, 1, True), True),
        ("lookup, bulk of 16", "lookup_bulk", (False, 2, False), True),
        # Our packed-keys bulk call, keys packed by the caller beforehand:
        # against the same DPDK figure.
        ("  same, packed keys", "lookup_bulk_packed", (False, 2, False), True),
        # The same with the caller's gather of the 16 keys timed too.
        ("  same, packed in the loop", "lookup_bulk_gather", (False, 2, False), False),
        ("add, single writer", "add", (False, 0, False), True),
        ("add, writer lock", "add_locked", (True, 0, False), True),
        # Not in DPDK's test: our default hash function (no ratio).
        ("lookup, built-in CRC32C", "lookup_crc32c", None, False),
    ]
    for name, key, where, target in rows:
        o = [r[("hash", key)] for r in ours_rounds if ("hash", key) in r]
        d = [] if where is None else [
            x for x in (dpdk_at(where, r) for r in dpdk_rounds) if x is not None]
        best = ratio(min(o), min(d)) if o and d else "-"
        med = ratio(median(o), median(d)) if o and d else "-"
        note = f"   (target <= {HASH_TARGET:.2f})" if target else ""
        log(f"  {name:<34}{spread(o):>16}{spread(d):>16}{best:>7}{med:>8}{note}")
    if ghz:
        lk = [r[("hash", "lookup")] for r in ours_rounds if ("hash", "lookup") in r]
        bk = [r[("hash", "lookup_bulk")] for r in ours_rounds
              if ("hash", "lookup_bulk") in r]
        if lk and bk:
            log(f"  forkhost (best): {ghz * 1e3 / min(lk):.1f} M lookups/s single, "
                f"{ghz * 1e3 / min(bk):.1f} M lookups/s bulk, on one core")


def print_ring_ab(runs: list[dict]) -> None:
    """runs: one run_ring_ab dict per run."""
    log(f"\nring, steady (ring_ab.c): both rings in one program, two threads on "
        f"CPUs 0 and 1, normal pages, batches of 4096 calls alternating "
        f"between the two, each batch's fastest of 15 repetitions; cycles per "
        f"object (enqueue + dequeue), median (min-max) of {len(runs)} run(s)")
    log(f"  {'':22}{'forkhost':>20}{'DPDK':>20}{'median':>8}{'worst':>7}")
    for mode in ("sp/sc", "mp/mc"):
        for kind in ("bulk", "burst"):
            for size in (8, 32):
                o = [r[("fh", mode, kind, size)] for r in runs
                     if ("fh", mode, kind, size) in r]
                d = [r[("dpdk", mode, kind, size)] for r in runs
                     if ("dpdk", mode, kind, size) in r]
                # Each run's ratio: its two sides ran batch by batch together.
                q = [r[("fh", mode, kind, size)] / r[("dpdk", mode, kind, size)]
                     for r in runs if ("dpdk", mode, kind, size) in r
                     and ("fh", mode, kind, size) in r]

                def cell(v):
                    return f"{median(v):.1f} ({min(v):.1f}-{max(v):.1f})" if v else "-"
                log(f"  {mode.upper()} {kind:<5} n={size:<3}{'':7}{cell(o):>20}"
                    f"{cell(d):>20}"
                    f"{f'{median(q):.2f}' if q else '-':>8}"
                    f"{f'{max(q):.2f}' if q else '-':>7}"
                    f"   (target <= {RING_TARGET:.2f})")


def print_hash_ab(runs: dict) -> None:
    """runs: {locked: [run_hash_ab dicts]}."""
    names = [("add", "add, single writer", False), ("add_locked", "add, writer lock", True),
             ("lookup", "lookup", False), ("with_hash", "lookup, hash precomputed", False),
             ("bulk", "lookup, bulk of 16 (key pointers)", False),
             ("bulk_packed", "  same, packed keys", False)]
    n = max((len(v) for v in runs.values()), default=0)
    log(f"\nhash, steady (hash_ab.c): both tables in one program, each case on "
        f"one then the other, per batch the fastest of 9 repetitions; median "
        f"(min-max) of {n} run(s), and the median and worst of the runs' ratios; "
        f"normal pages, CPU 0")
    log(f"  {'':34}{'forkhost':>18}{'DPDK':>18}{'median':>8}{'worst':>7}")
    for key, name, locked in names:
        # DPDK has no packed-keys call: its bulk figure (key pointers).
        dkey = "bulk" if key == "bulk_packed" else key
        pairs = [(r["fh"][key], r.get("dpdk", {}).get(dkey))
                 for r in runs.get(locked, []) if key in r.get("fh", {})]
        o = [a for a, _ in pairs]
        d = [b for _, b in pairs if b is not None]
        q = [a / b for a, b in pairs if b]

        def cell(v):
            return f"{median(v):.0f} ({min(v):.0f}-{max(v):.0f})" if v else "-"
        log(f"  {name:<34}{cell(o):>18}{cell(d):>18}"
            f"{f'{median(q):.2f}' if q else '-':>8}{f'{max(q):.2f}' if q else '-':>7}"
            f"   (target <= {HASH_TARGET:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of the ring tables, best kept (1..16)")
    ap.add_argument("--no-dpdk", action="store_true",
                    help="our figures only, even when dpdk-test is installed")
    ap.add_argument("--no-heap", action="store_true",
                    help="skip the shared-heap part")
    ap.add_argument("--hash-rounds", type=int, default=3,
                    help="rounds of the hash tables (1..8), each one run of "
                         "ours and one of DPDK's three-minute hash test; "
                         "best, median and worst printed")
    ap.add_argument("--hash-only", action="store_true",
                    help="the hash parts only (no ring or heap)")
    ap.add_argument("--hash-ab", type=int, default=4,
                    help="runs of hash_ab.c, the steady "
                         "hash comparison (0..16; 0 skips it)")
    ap.add_argument("--ring-ab", type=int, default=6,
                    help="runs of ring_ab.c, the steady "
                         "ring comparison (0..16; 0 skips it)")
    a = ap.parse_args()
    if not 0 <= a.ring_ab <= 16:
        ap.error("--ring-ab must be 0..16")
    if not 1 <= a.rounds <= 16:
        ap.error("--rounds must be 1..16")
    if not 1 <= a.hash_rounds <= 8:
        ap.error("--hash-rounds must be 1..8")
    if not 0 <= a.hash_ab <= 16:
        ap.error("--hash-ab must be 0..16")

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
    hash_ours: list[dict] = []    # our hash figures, one dict per round
    hash_dpdk: list[dict] = []    # DPDK's, one parse_hash dict per round
    hash_ab: dict = {}            # {locked: [run_hash_ab dicts]}
    ring_ab: list[dict] = []      # ring_ab figures, one dict per run
    header = ""
    heap_ours: dict = {}
    heap_d: dict = {}
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
            for i in range(0 if a.hash_only else a.rounds):
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
            for _ in range(0 if a.hash_only else 3):    # alternating, best kept
                _, figs = run_bench(exe, "ring1")
                keep(ours, figs, min)
                _, figs = run_bench(exe_nw, "ring1")
                keep(ours, {("nowake1",) + k[1:]: v for k, v in figs.items()}, min)
            if not a.hash_only:
                _, figs = run_bench(exe, "wake")
                keep(ours, figs, min)
            # Hash: one run of ours and one of DPDK's per round, the order
            # alternating, so that a drift in the machine's load falls on
            # both sides alike; every round's figures are kept.
            for i in range(a.hash_rounds):
                dpdk_first = dpdk is not None and i % 2 == 1
                log(f"hash round {i + 1}/{a.hash_rounds}: "
                    + ("DPDK hash_perf_autotest (about 3 minutes), forkhost"
                       if dpdk_first else "forkhost"
                       + (", DPDK hash_perf_autotest (about 3 minutes)" if dpdk else "")))
                if dpdk_first:
                    hash_dpdk.append(parse_hash(run_dpdk("hash_perf_autotest", 1800)))
                hh, figs = run_bench(exe, "hash")
                header = header or hh
                hash_ours.append(figs)
                if dpdk and not dpdk_first:
                    hash_dpdk.append(parse_hash(run_dpdk("hash_perf_autotest", 1800)))
            if not a.no_heap and not a.hash_only:
                heap_ours, heap_d = heap_round(exe, work, dpdk)
        if a.ring_ab and not a.hash_only:
            # Threads of one process on normal pages on both sides: outside
            # the reservation.
            exe_ab, with_dpdk = build_ab(work, "ring_ab", not a.no_dpdk)
            log(f"ring_ab: {a.ring_ab} run(s)"
                + ("" if with_dpdk else " (forkhost only)"))
            for _ in range(a.ring_ab):
                ring_ab.append(run_ring_ab(exe_ab))
        if a.hash_ab:
            # Normal pages on both sides: outside the reservation.
            exe_ab, with_dpdk = build_ab(work, "hash_ab", not a.no_dpdk)
            log(f"hash_ab: {a.hash_ab} run(s) of each table kind"
                + ("" if with_dpdk else " (forkhost only)"))
            for _ in range(a.hash_ab):
                for locked in (False, True):
                    hash_ab.setdefault(locked, []).append(run_hash_ab(exe_ab, locked))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()
    log(f"\n{header}")
    log(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"ring figures: best of {a.rounds} round(s)"
        + (" on each side" if dpdk else ""))
    m = re.search(r"tsc ([\d.]+) GHz", header)
    if not a.hash_only:
        print_table(ours, ring_d, float(m[1]) if m else None)
    if ring_ab:
        print_ring_ab(ring_ab)
    print_hash_table(hash_ours, hash_dpdk, float(m[1]) if m else None)
    if hash_ab:
        print_hash_ab(hash_ab)
    if not a.no_heap and not a.hash_only:
        print_heap(heap_ours, heap_d)
    if dpdk and ((not ring_d and not a.hash_only)
                 or not any(hash_dpdk)):
        log("note: some DPDK figures could not be parsed from dpdk-test's output")
    return 0


# ------------------------------------------------------------------- heap

def build_heap_dpdk(work: Path) -> Path | None:
    """heap_dpdk.c against libdpdk (pkg-config), or None (said why)."""
    flags = dpdk_flags("heap")
    if flags is None:
        return None
    exe = work / "heap_dpdk"
    build_native.run(build_native.cc() + ["-O2", "-g", "-o", str(exe),
                                          str(HERE / "heap_dpdk.c")] + flags[0] + flags[1])
    return exe


def parse_heap(out: str) -> dict:
    """{(kind, size): cycles} from "heap KIND SIZE CYCLES" lines."""
    figures = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4 and f[0] == "heap":
            figures[(f[1], int(f[2]))] = float(f[3])
    return figures


def heap_round(exe: Path, work: Path, dpdk: str | None) -> tuple[dict, dict]:
    """Our heap figures, then DPDK's (when dpdk-test could run, so that the
    huge pages are reserved for it as for the other parts)."""
    log("heap: forkhost" + (", DPDK rte_malloc" if dpdk else ""))
    r = subprocess.run([str(exe), "heap"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"bench heap failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    ours = parse_heap(r.stdout)
    theirs: dict = {}
    peer = build_heap_dpdk(work) if dpdk else None
    if peer is not None:
        r = subprocess.run([str(peer), *DPDK_EAL], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
        if r.returncode != 0:
            log(f"heap_dpdk failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        theirs = parse_heap(r.stdout)
    return ours, theirs


def print_heap(ours: dict, theirs: dict) -> None:
    log("heap, one process on CPU 0, cycles per malloc + free "
        "(DPDK: rte_malloc/rte_free, which also clears the freed bytes)")
    for kind in ("pair", "batch"):
        for size in sorted({k[1] for k in ours if k[0] == kind}):
            o, d = ours.get((kind, size)), theirs.get((kind, size))
            log(f"  {kind:<5} {size:>7} bytes{'':14}{fmt(o):>10}{fmt(d):>10}"
                f"{ratio(o, d):>10}")


if __name__ == "__main__":
    sys.exit(main())
