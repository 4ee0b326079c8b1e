"""A big preload: what 1 GiB of touched memory in the primary does to
launches back to back, and what the two remedies give back.

Run by hand (not part of the tests; no thresholds anywhere):

    python benchmarks/big_preload.py [--launches 50] [--rounds 3] [--size 1G]

Four primaries run side by side, each with a trivial Python entry
preloaded (bp_triv:main, launched through forkhost-run):

  (a) plain      nothing else
  (b) private    a preload that allocates --size of private memory
                 (a bytearray) and writes one byte in every page;
                 FORKHOST_THP=0: left in 4 KiB pages
  (c) private+thp  the same, with the primary's huge-page collapse on
                 (the default: forkhost/_thp.py)
  (d) arena      the same size as a forkhost.shm.Array in the arena
                 (shared memory: forks copy no page tables for it)
  (e) private+tunable  as (b) (FORKHOST_THP=0), the primary started with
                 GLIBC_TUNABLES=glibc.malloc.hugetlb=1: malloc marks its
                 big allocations MADV_HUGEPAGE, so they fault in huge

In each round every variant (in a shuffled, seeded order) runs --launches
launches back to back, each started when the one before exited (a shell
loop); the figure is the time per launch, median over rounds (min and max
beside it).  Then, per variant: the template's RSS and page-table size
(VmPTE, /proc/PID/status), an idle pool member's VmPTE, the template's
AnonHugePages, and what the collapse reported.

Last, the fork alone, in this process: fork() + the child's _exit +
waitpid while this process holds --size of touched private memory in
4 KiB pages, then after forkhost._thp.collapse() (median of 20 each).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import forkhost
import forkhost._runtime
from launch import find_runner, spawn_wait  # noqa: E402  (benchmarks/launch.py)

TRIV = "def main(argv):\n    return 0\n"

PRIVATE = """\
import os
SIZE = int(os.environ["BP_SIZE"])
DATA = bytearray(SIZE)                         # malloc -> mmap, zero-filled
DATA[::4096] = bytes([1]) * len(range(0, SIZE, 4096))   # every page written
"""

ARENA = """\
import os
from forkhost.shm import Array
SIZE = int(os.environ["BP_SIZE"])
DATA = Array.create("bp.data", SIZE // 8, "float64")
raw = DATA.buffer().cast("B")
raw[::4096] = bytes([1]) * len(range(0, SIZE, 4096))    # every page written
del raw
"""


def status(pid: int) -> dict[str, int]:
    """VmRSS, VmPTE (kB) from /proc/PID/status; AnonHugePages (kB) from
    smaps_rollup."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmPTE"):
                    out[k] = int(v.split()[0])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    out["AnonHuge"] = int(line.split()[1])
    except OSError:
        pass
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}M"


def fork_exit(n: int = 20) -> tuple[float, float]:
    """Median fork() time and fork + child _exit + waitpid time."""
    got = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        t1 = time.perf_counter()
        os.waitpid(pid, 0)
        got.append((t1 - t0, time.perf_counter() - t0))
    return (statistics.median(g[0] for g in got), statistics.median(g[1] for g in got))


def fork_alone(size: int) -> None:
    from forkhost import _thp as thp
    small = fork_exit()
    data = bytearray(size)
    data[::4096] = bytes([1]) * len(range(0, size, 4096))
    plain = fork_exit()
    report = thp.collapse()
    huge = fork_exit()
    del data
    print("\nfork() alone, in this process (median of 20; fork / fork+exit+wait):")
    print(f"  without the {size >> 20} MiB:     {small[0] * 1e3:.2f} / {small[1] * 1e3:.2f} ms")
    print(f"  {size >> 20} MiB in 4 KiB pages:  {plain[0] * 1e3:.2f} / {plain[1] * 1e3:.2f} ms")
    print(f"  {size >> 20} MiB collapsed ({report['collapsed_bytes'] >> 20} MiB in "
          f"{report['seconds']:.2f}s): {huge[0] * 1e3:.2f} / {huge[1] * 1e3:.2f} ms")
    print(f"  fork+exit+wait, collapsed / 4 KiB pages: {huge[1] / plain[1]:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launches", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1G", help="the big preload (default 1G)")
    a = ap.parse_args()
    from forkhost.primary import parse_size
    size = parse_size(a.size)

    runner = find_runner()
    work = tempfile.mkdtemp(prefix="fhbp-", dir="/tmp")
    Path(work, "bp_triv.py").write_text(TRIV)
    Path(work, "bp_private.py").write_text(PRIVATE)
    Path(work, "bp_arena.py").write_text(ARENA)
    arena_size = max(64 << 20, 2 * size)

    base_env = {k: v for k, v in os.environ.items() if k != "FORKHOST_THP"}
    base_env.update(PYTHONPATH=work, BP_SIZE=str(size), FORKHOST_RUNTIME_DIR=work)
    variants = {
        "(a) plain": ("bpa", [], {}),
        "(b) private": ("bpb", ["--preload", "bp_private"], {"FORKHOST_THP": "0"}),
        "(c) private+thp": ("bpc", ["--preload", "bp_private"], {}),
        "(d) arena": ("bpd", ["--preload", "bp_arena"], {}),
        "(e) private+tunable": ("bpe", ["--preload", "bp_private"],
                                {"FORKHOST_THP": "0",
                                 "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    }
    print(f"big preload benchmark: {size >> 20} MiB, {a.launches} launches back to "
          f"back x {a.rounds} rounds (shuffled), {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}, kernel {os.uname().release}, "
          f"load {loadavg()}")
    procs: dict[str, subprocess.Popen] = {}
    started: dict[str, float] = {}
    times: dict[str, list[float]] = {k: [] for k in variants}
    os.chdir(work)          # the client's cwd: where bp_triv.py is
    try:
        for name, (prefix, args, env) in variants.items():
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "forkhost", "primary", "--prefix", prefix,
                 "--runtime-dir", work, "--arena-size", str(arena_size),
                 "--preload", "bp_triv", *args],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=dict(base_env, **env))
            procs[name] = proc
            line = proc.stdout.readline().decode()
            started[name] = time.perf_counter() - t0
            if "ready" not in line:
                raise SystemExit(f"primary {name} did not start: {line}"
                                 f"{proc.stderr.read().decode()}")
            print(f"  {name}: {line.strip()}")

        def burst(prefix: str) -> float:
            argv = [runner, "--prefix", prefix, "bp_triv:main"]
            t0 = time.perf_counter()
            for _ in range(a.launches):
                spawn_wait(argv, base_env)
            return (time.perf_counter() - t0) / a.launches

        for prefix, _, _ in variants.values():      # warm-up
            for _ in range(5):
                spawn_wait([runner, "--prefix", prefix, "bp_triv:main"], base_env)
        order = list(variants)
        rng = random.Random(2017)
        for _ in range(a.rounds):
            rng.shuffle(order)
            for name in order:
                times[name].append(burst(variants[name][0]))
                time.sleep(0.2)     # let the pool refill and the exits finish

        mem = {}
        for name, (prefix, _, _) in variants.items():
            info = forkhost.info(prefix, work)
            members = [m["pid"] for m in info["members"] if m["state"] == "idle"]
            cfg = forkhost._runtime.read_config(forkhost._runtime.paths(prefix, work))
            mem[name] = (status(info["template_pid"]),
                         status(members[0]) if members else {}, cfg.get("thp", {}))
        end_load = loadavg()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.communicate(timeout=60)
        os.chdir("/")
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["(a) plain"]
    print(f"\n{'variant':<20}{'per launch':>11}{'(min-max)':>16}{'vs (a)':>8}"
          f"{'tmpl RSS':>10}{'tmpl PTE':>10}{'member PTE':>12}{'tmpl THP':>10}"
          f"{'start':>8}")
    for k, v in times.items():
        tmpl, member, _ = mem[k]
        spread = f"{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f}ms"
        print(f"{k:<20}{med[k] * 1e3:>9.2f}ms{spread:>16}"
              f"{med[k] / base:>8.2f}{mib(tmpl.get('VmRSS')):>10}"
              f"{mib(tmpl.get('VmPTE')):>10}{mib(member.get('VmPTE')):>12}"
              f"{mib(tmpl.get('AnonHuge')):>10}{started[k]:>7.2f}s")
    print("\nratios of medians (time per launch, back to back)")
    for k in list(variants)[1:]:
        print(f"  {k} / (a) plain: {med[k] / base:.2f}")
    b, c = med["(b) private"], med["(c) private+thp"]
    print(f"  (c) private+thp / (b) private: {c / b:.2f}")
    print(f"  (d) arena / (b) private: {med['(d) arena'] / b:.2f}")
    print("(VmPTE counts, for each huge page, the page table the kernel keeps\n"
          " deposited for a later split: fork allocates one of those per 2 MiB\n"
          " but copies no PTEs; start: the primary's start to its ready line)")
    print("\nthe primaries' huge-page collapse (config.json \"thp\")")
    for k in variants:
        t = mem[k][2]
        if not t.get("enabled"):
            print(f"  {k}: off ({t.get('why', '?')})")
        elif "unsupported" in t:
            print(f"  {k}: {t['unsupported']}")
        else:
            print(f"  {k}: {t['regions']} region(s), {t['collapsed_bytes'] >> 20} MiB "
                  f"collapsed, {t['failed_bytes'] >> 20} MiB failed"
                  + (f" ({t['first_error']}, chunks {t['failed_chunks']})"
                     if t["failed_bytes"] else "")
                  + f", {t['sparse_bytes'] >> 20} MiB sparse, in {t['seconds']:.3f}s")
    fork_alone(size)
    print(f"load: {end_load} after the launches, {loadavg()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
