"""Performance report: launch latency, throughput, CPU per launch, big preloads.

Run by hand (never by the tests; nothing passes or fails, speed is
measured, not asserted):

    python benchmarks/perf_report.py [--quick] [--svg-dir DIR] [--json FILE]
                                     [--no-dpdk]

Against the forkhost installed in the active environment (`forkhost-run` on
PATH, `import forkhost`), in one run:

  A. single launches: each variant once per round, round after round, the
     order shuffled in every round (seeded), as benchmarks/launch.py does;
     median, p90 and p99 over the rounds and their ratios to /bin/true.
     Whole-process variants are started with posix_spawn and reaped with
     waitpid.  Variants: /bin/true; forkhost-run of a trivial Python entry
     (module:function), of a script file holding `pass`, of a trivial
     native entry (a .so from `int main(void){return 0;}`), of the trivial
     Python entry against a primary holding 1 GiB of touched private
     memory, and of an entry importing numpy with numpy preloaded; a cold
     `python -c pass` (a clean venv) and `python -c "import numpy"`; a
     multiprocessing forkserver Process start + join; a DPDK secondary
     (rte_eal_init + rte_eal_cleanup with --proc-type=secondary against a
     running DPDK primary of the same --file-prefix), when DPDK's
     development package is installed and we are root (it needs huge
     pages: 64 x 2 MiB are reserved for the run and given back).
  B. sustained launches: a small C driver (built here) runs N clients
     (16; then 1), each launching back to back with posix_spawn + waitpid
     for a fixed time; launches/s, and CPU per launch as the whole
     machine's busy time from /proc/stat (user+nice+system+irq+softirq
     deltas over the run, which counts the primary, template, pool
     members, secondaries, clients and driver alike, and any other work
     on the machine) divided by the launches, and beside it the CPU of the
     run's own processes (the driver and its clients by getrusage, the
     primary and template by /proc/PID/stat with the times of the members
     and secondaries the template reaped).  Rounds alternate the
     variants, shuffled.
  C. a primary holding 1 GiB of touched private memory (a bytearray
     filled by its --preload module; 4 KiB pages unless transparent huge
     pages are "always"), against a plain primary: one client back to
     back; also 1 GiB in an madvise(MADV_HUGEPAGE) mapping (when THP is
     not "never") and 1 GiB in the arena (a memzone), the two remedies.
  D. the numpy-importing entry with numpy preloaded against a cold
     `import numpy` (from A).

Every forkhost primary runs with --huge-pages never (the DPDK reservation
must not change what they measure) and the default --pool 2.  A full run
takes about 4 minutes on 2 CPUs; --quick about 1.  The figures are only as
good as the machine is quiet: the load average is printed at the start and
the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import py_compile
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import forkhost
from launch import (clean_interpreter, find_runner, native_entry,  # noqa: E402
                    numpy_available, spawn_wait)
from hugepages import HugePages  # noqa: E402

TRIV_PY = ("def main(argv):\n    return 0\n\n\n"
           "def np_main(argv):\n    import numpy\n    return 0\n\n\n"
           "def noop():\n    pass\n")
# The forkserver peer runs in a helper started with `python -c`: a __main__
# without a file is not re-imported in every child (a script's would be,
# through runpy, by each forkserver child).  The target and the preload
# are the small module above.  Each line on stdin: one Process start +
# join, timed in the helper, the seconds printed.
FORKSERVER_HELPER = """\
import multiprocessing, sys, time
import fhperf_triv
ctx = multiprocessing.get_context("forkserver")
ctx.set_forkserver_preload(["fhperf_triv"])
for line in sys.stdin:
    t0 = time.perf_counter()
    p = ctx.Process(target=fhperf_triv.noop)
    p.start()
    p.join()
    dt = time.perf_counter() - t0
    print(dt if p.exitcode == 0 else -1, flush=True)
"""
PASS_SCRIPT = "pass\n"
GIB = 1 << 30

# --preload modules for section C.  The bytearray is filled by repetition,
# so every page is written (bytearray(n) alone would leave calloc'd pages
# untouched).
BIG_PRIVATE = f"""\
DATA = bytearray(b"\\x5a") * {GIB}
"""
BIG_THP = f"""\
import mmap
MAP = mmap.mmap(-1, {GIB}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
MAP.madvise(mmap.MADV_HUGEPAGE)
_chunk = b"\\x5a" * (64 << 20)
for _off in range(0, {GIB}, len(_chunk)):
    MAP[_off:_off + len(_chunk)] = _chunk
del _chunk, _off
"""
BIG_ARENA = f"""\
from forkhost.shm import Memzone
ZONE = Memzone.reserve("perf.big", {GIB})
_view = ZONE.buffer()
_chunk = b"\\x5a" * (64 << 20)
for _off in range(0, {GIB}, len(_chunk)):
    _view[_off:_off + len(_chunk)] = _chunk
del _view, _chunk, _off
"""

# Where a big preload's cost comes from, without forkhost: a Python process
# holding nothing / 1 GiB of touched 4 KiB pages / 1 GiB on transparent huge
# pages forks a child that _exits at once; the median of fork + waitpid.
FORK_PROBE = """\
import mmap, os, statistics, sys, time
kind, n = sys.argv[1], int(sys.argv[2])
if kind == "4k":
    data = bytearray(b"\\x5a") * (1 << 30)
elif kind == "thp":
    data = mmap.mmap(-1, 1 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    data.madvise(mmap.MADV_HUGEPAGE)
    chunk = b"\\x5a" * (64 << 20)
    for off in range(0, 1 << 30, len(chunk)):
        data[off:off + len(chunk)] = chunk
ts = []
for _ in range(n):
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""

# The load generator: N clients, each a process launching argv back to back
# (posix_spawn + waitpid, stdout to /dev/null) until the deadline; prints
# "launches failures seconds".  In C so that the driver's own cost per
# launch is small and the same for every variant.
DRIVER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: driver N SECONDS ARGV...\n"); return 2; }
    int n = atoi(argv[1]);
    double seconds = atof(argv[2]);
    char **cmd = argv + 3;
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, devnull, 1);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int res[2];
    if (pipe(res) < 0) { perror("pipe"); return 1; }
    double t0 = now() + 0.02, end = t0 + seconds;
    struct timespec start = {(time_t)t0, (long)((t0 - (time_t)t0) * 1e9)};
    pid_t *kids = calloc(n, sizeof *kids);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); stop = 1; n = i; break; }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            close(res[0]);
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &start, NULL) == EINTR && !stop) {}
            long ok = 0, bad = 0;
            while (!stop && now() < end) {
                pid_t p;
                if (posix_spawn(&p, cmd[0], &fa, NULL, cmd, environ) != 0) { bad++; break; }
                int st;
                while (waitpid(p, &st, 0) < 0 && errno == EINTR) {}
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0) ok++; else bad++;
            }
            long out[2] = {ok, bad};
            if (write(res[1], out, sizeof out) != sizeof out) _exit(1);
            _exit(0);
        }
        kids[i] = pid;
    }
    close(res[1]);
    int forwarded = 0;
    for (int left = n; left > 0;) {
        if (stop && !forwarded) {
            for (int i = 0; i < n; i++) kill(kids[i], SIGTERM);
            forwarded = 1;
        }
        if (waitpid(-1, NULL, 0) > 0) left--;
        else if (errno == ECHILD) break;
    }
    double elapsed = now() - t0;
    long ok = 0, bad = 0, out[2];
    while (read(res[0], out, sizeof out) == sizeof out) { ok += out[0]; bad += out[1]; }
    printf("%ld %ld %.6f\n", ok, bad, elapsed);
    return stop ? 1 : 0;
}
"""

# A DPDK program that only initialises the EAL and cleans up; with "wait"
# after its EAL arguments it prints "ready" and stays until stdin closes
# (the primary the secondaries attach to).
DPDK_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <rte_eal.h>

int main(int argc, char **argv) {
    int n = rte_eal_init(argc, argv);
    if (n < 0) { fprintf(stderr, "rte_eal_init failed\n"); return 1; }
    argc -= n; argv += n;
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        char buf[64];
        printf("ready\n");
        fflush(stdout);
        while (read(0, buf, sizeof buf) > 0) {}
    }
    rte_eal_cleanup();
    return 0;
}
"""
DPDK_PREFIX = "fhperf"
DPDK_HUGE_PAGES = 64                 # x 2 MiB; the DPDK primary takes -m 64
DPDK_COMMON = ["--no-pci", f"--file-prefix={DPDK_PREFIX}", "--log-level=lib.eal:error"]

# Targets from the issue: (section key, comparison, value).  Printed in
# parentheses; nothing is checked against them.
TARGETS = {
    "cpu16": "<= 2.5", "rate16": ">= 0.4", "b2b": "<= 1.3", "big": "<= 1.3",
    "py": "<= 1.2", "native": "<= 1.0", "native_p90": "<= 1.2",
    "numpy": "<= 0.012",
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_busy_ticks() -> int:
    """The machine's busy time so far, in USER_HZ ticks (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    assert fields[0] == "cpu"
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    return user + nice + system + irq + softirq


TICK = 1 / os.sysconf("SC_CLK_TCK")


def proc_cpu_ticks(pid: int) -> int:
    """utime+stime of a live process plus those of the children it reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11:15])


def own_children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def pct(sorted_v: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of an already sorted list."""
    return sorted_v[min(len(sorted_v) - 1, max(0, math.ceil(q * len(sorted_v)) - 1))]


# ------------------------------------------------------------- processes

class Primaries:
    """forkhost primaries on a private runtime dir; stop() stops them all."""

    def __init__(self, runtime: str):
        self.runtime = runtime
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def start(self, prefix: str, *args: str, env: dict | None = None,
              timeout: float = 120) -> int:
        logf = open(f"{self.runtime}/{prefix}.out", "w+b")
        self.logs.append(logf)
        proc = subprocess.Popen(
            [sys.executable, "-m", "forkhost", "primary", "--prefix", prefix,
             "--runtime-dir", self.runtime, "--huge-pages", "never", *args],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
        self.procs[prefix] = proc
        deadline = time.monotonic() + timeout
        while True:
            logf.seek(0)
            text = logf.read().decode(errors="replace")
            if "ready" in text:
                log(f"  {text.splitlines()[0].strip()}")
                return proc.pid
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"primary {prefix} did not start:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self.logs:
            f.close()


class Dpdk:
    """A DPDK primary on reserved huge pages; close() undoes all of it."""

    def __init__(self, work: str):
        self.work = work
        self.binary = f"{work}/dpdk_eal"
        self.huge: HugePages | None = None
        self.primary: subprocess.Popen | None = None
        self.log = None
        self.note = ""

    def setup(self) -> str | None:
        """None when a secondary can be timed, else why not."""
        if os.geteuid() != 0:
            return "not root (huge pages must be reserved)"
        if shutil.which("pkg-config") is None:
            return "pkg-config not found"
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libdpdk"],
                               capture_output=True, text=True)
        if flags.returncode != 0:
            return "libdpdk not found by pkg-config (Debian: apt-get install dpdk-dev)"
        version = subprocess.run(["pkg-config", "--modversion", "libdpdk"],
                                 capture_output=True, text=True).stdout.strip()
        Path(self.work, "dpdk_eal.c").write_text(DPDK_C)
        cc = subprocess.run(["cc", "-O2", "-o", self.binary, f"{self.work}/dpdk_eal.c",
                             *flags.stdout.split()], capture_output=True, text=True)
        if cc.returncode != 0:
            return f"building the EAL program failed: {cc.stderr.strip()[:200]}"
        self.huge = HugePages(DPDK_HUGE_PAGES, DPDK_PREFIX).__enter__()
        self.log = open(f"{self.work}/dpdk_primary.out", "w+b")
        self.primary = subprocess.Popen(
            [self.binary, "-l", "0", "--proc-type=primary", "-m", "64", *DPDK_COMMON,
             "--", "wait"],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            self.log.seek(0)
            out = self.log.read().decode(errors="replace")
            if "ready\n" in out:
                break
            if self.primary.poll() is not None or time.monotonic() > deadline:
                return f"the DPDK primary did not start: {out.strip()[:300]}"
            time.sleep(0.05)
        # Give back the pages the primary did not take, for the rest of the run.
        self.huge.give_back_unused()
        self.note = (f"DPDK {version}: primary on {DPDK_HUGE_PAGES} x 2 MiB huge pages "
                     f"(-m 64, -l 0), secondary `-l 1 --proc-type=secondary "
                     f"{' '.join(DPDK_COMMON)}` (rte_eal_init + rte_eal_cleanup)")
        return None

    def secondary_argv(self) -> list[str]:
        return [self.binary, "-l", "1", "--proc-type=secondary", *DPDK_COMMON]

    def close(self) -> None:
        if self.primary is not None:
            try:
                self.primary.stdin.close()
                self.primary.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.primary.kill()
                self.primary.wait()
            self.primary = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.huge is not None:
            self.huge.__exit__(None, None, None)
            self.huge = None


class Driver:
    """The C load generator: run(n, seconds, argv) -> stats dict."""

    def __init__(self, work: str):
        self.path = f"{work}/driver"
        Path(work, "driver.c").write_text(DRIVER_C)
        subprocess.run(["cc", "-O2", "-o", self.path, f"{work}/driver.c"], check=True)
        self.proc: subprocess.Popen | None = None

    def run(self, n: int, seconds: float, argv: list[str], env: dict,
            pids: list[int]) -> dict:
        """CPU two ways: the machine's busy time (/proc/stat), and the run's
        own processes: the driver, its clients and what they started (ours
        to reap), plus the primary and template of pids and every member
        and secondary the template reaped (its children's times)."""
        c0 = cpu_busy_ticks()
        o0 = own_children_cpu() + sum(map(proc_cpu_ticks, pids)) * TICK
        self.proc = subprocess.Popen([self.path, str(n), str(seconds), *argv],
                                     stdout=subprocess.PIPE, env=env)
        out, _ = self.proc.communicate()
        rc = self.proc.returncode
        self.proc = None
        c1 = cpu_busy_ticks()
        time.sleep(0.05)        # the last secondaries' exits, reaped
        o1 = own_children_cpu() + sum(map(proc_cpu_ticks, pids)) * TICK
        ok, bad, elapsed = out.split()
        ok, bad, elapsed = int(ok), int(bad), float(elapsed)
        if rc != 0 or bad:
            raise RuntimeError(f"driver {n} x {argv}: exit {rc}, {bad} failed launches")
        return {"launches": ok, "seconds": elapsed, "cpu_seconds": (c1 - c0) * TICK,
                "own_cpu_seconds": o1 - o0}

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def smaps_rollup(pid: int) -> dict[str, int]:
    """kB figures of a process's memory, summed over its mappings."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for ln in f:
                parts = ln.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def template_pid(runtime: str, prefix: str) -> int | None:
    try:
        cfg = json.loads(Path(runtime, prefix, "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("template_pid", "template"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


# ------------------------------------------------------------------ SVG

PALETTE = {"true": "#7f7f7f", "forkhost": "#1f77b4", "native": "#ff7f0e",
           "peer": "#9467bd", "dpdk": "#d62728", "big": "#d62728",
           "thp": "#2ca02c", "arena": "#17becf"}
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def text(x: float, y: float, s: str, size: int = 12, anchor: str = "start",
         extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" '
            f'text-anchor="{anchor}" {extra}>{esc(s)}</text>')


def svg_doc(w: int, h: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" {FONT}>\n'
            f'<rect width="{w}" height="{h}" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def nice_ticks(vmax: float, n: int = 5) -> list[float]:
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(vmax / step) + 2)]


def fmt_num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def svg_latency(path: Path, rows: list[dict], subtitle: str) -> None:
    """Horizontal box plots on a log time axis, one row per variant."""
    rows = sorted(rows, key=lambda r: r["median"])
    left, right, top, row_h = 150, 130, 58, 30
    plot_w = 520
    w = left + plot_w + right
    h = top + row_h * len(rows) + 78
    lo = min(r["p1"] for r in rows) * 0.8
    hi = max(r["p99"] for r in rows) * 1.25
    l0, l1 = math.log10(lo), math.log10(hi)

    def X(v: float) -> float:
        return left + (math.log10(v) - l0) / (l1 - l0) * plot_w

    b = [text(w / 2, 22, "Single-launch latency (posix_spawn + waitpid)", 15, "middle",
              'font-weight="bold"'),
         text(w / 2, 40, subtitle, 11, "middle", 'fill="#555"')]
    y_axis = top + row_h * len(rows) + 6
    for e in range(math.floor(l0), math.ceil(l1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= v <= hi:
                x = X(v)
                b.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{y_axis}" '
                         f'stroke="#ddd" stroke-width="1"/>')
                b.append(text(x, y_axis + 16, fmt_num(v * 1e3), 11, "middle"))
    b.append(f'<line x1="{left}" y1="{y_axis}" x2="{left + plot_w}" y2="{y_axis}" stroke="#333"/>')
    b.append(text(left + plot_w / 2, y_axis + 34, "time per launch, ms (log scale)", 12, "middle"))
    true_med = next((r["median"] for r in rows if r["name"] == "true"), None)
    if true_med:
        x = X(true_med)
        b.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{y_axis}" '
                 f'stroke="#7f7f7f" stroke-dasharray="4 3"/>')
    for i, r in enumerate(rows):
        yc = top + row_h * i + row_h / 2
        color = PALETTE.get(r["kind"], "#1f77b4")
        b.append(text(left - 8, yc + 4, r["name"], 12, "end"))
        b.append(f'<line x1="{X(r["p1"]):.1f}" y1="{yc}" x2="{X(r["p99"]):.1f}" y2="{yc}" '
                 f'stroke="{color}" stroke-width="1.5"/>')
        for q in ("p1", "p99"):
            b.append(f'<line x1="{X(r[q]):.1f}" y1="{yc - 5}" x2="{X(r[q]):.1f}" '
                     f'y2="{yc + 5}" stroke="{color}" stroke-width="1.5"/>')
        x0, x1 = X(r["p25"]), X(r["p75"])
        b.append(f'<rect x="{x0:.1f}" y="{yc - 9}" width="{max(x1 - x0, 1):.1f}" height="18" '
                 f'fill="{color}" fill-opacity="0.35" stroke="{color}"/>')
        xm = X(r["median"])
        b.append(f'<line x1="{xm:.1f}" y1="{yc - 11}" x2="{xm:.1f}" y2="{yc + 11}" '
                 f'stroke="black" stroke-width="2.5"/>')
        xp = X(r["p90"])
        b.append(f'<circle cx="{xp:.1f}" cy="{yc}" r="3" fill="white" stroke="black"/>')
        label = f'{r["median"] * 1e3:.3g} ms'
        if true_med and r["name"] != "true":
            label += f' ({r["median"] / true_med:.2f}x)'
        b.append(text(left + plot_w + 8, yc + 4, label, 11))
    ly = h - 14
    b.append(f'<rect x="{left}" y="{ly - 9}" width="22" height="10" fill="#888" '
             f'fill-opacity="0.35" stroke="#888"/>')
    b.append(text(left + 27, ly, "p25-p75, bar = median, o = p90, whiskers p1-p99; "
                  "dashed: /bin/true median", 11))
    path.write_text(svg_doc(w, h, b))


def bar_panel(x: float, y: float, pw: float, ph: float, title: str, unit: str,
              bars: list[tuple[str, float, str, str]]) -> list[str]:
    """One bar chart; bars: (label, value, color, annotation)."""
    b = [text(x + pw / 2, y - 10, title, 13, "middle", 'font-weight="bold"')]
    vmax = max(v for _, v, _, _ in bars) * 1.15
    ticks = [t for t in nice_ticks(vmax) if t <= vmax * 1.02]
    top = max(ticks[-1], vmax)

    def Y(v: float) -> float:
        return y + ph - v / top * ph

    for t in ticks:
        b.append(f'<line x1="{x}" y1="{Y(t):.1f}" x2="{x + pw}" y2="{Y(t):.1f}" stroke="#e5e5e5"/>')
        b.append(text(x - 6, Y(t) + 4, fmt_num(t), 11, "end"))
    b.append(f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y + ph}" stroke="#333"/>')
    b.append(f'<line x1="{x}" y1="{y + ph}" x2="{x + pw}" y2="{y + ph}" stroke="#333"/>')
    b.append(text(x - 40, y + ph / 2, unit, 11, "middle",
                  f'transform="rotate(-90 {x - 40} {y + ph / 2})"'))
    slot = pw / len(bars)
    for i, (label, v, color, note) in enumerate(bars):
        bw = slot * 0.6
        bx = x + slot * i + (slot - bw) / 2
        b.append(f'<rect x="{bx:.1f}" y="{Y(v):.1f}" width="{bw:.1f}" '
                 f'height="{y + ph - Y(v):.1f}" fill="{color}"/>')
        b.append(text(bx + bw / 2, Y(v) - 5, note, 11, "middle"))
        for j, part in enumerate(label.split("\n")):
            b.append(text(bx + bw / 2, y + ph + 16 + 13 * j, part, 11, "middle"))
    return b


def svg_bars(path: Path, title: str, subtitle: str,
             panels: list[tuple[str, str, list[tuple[str, float, str, str]]]]) -> None:
    pw = max(300, 100 * max(len(bars) for _, _, bars in panels))
    ph, gap, left, top = 230, 90, 70, 80
    w = left + len(panels) * pw + (len(panels) - 1) * gap + 30
    h = top + ph + 60
    b = [text(w / 2, 22, title, 15, "middle", 'font-weight="bold"'),
         text(w / 2, 40, subtitle, 11, "middle", 'fill="#555"')]
    for i, (ptitle, unit, bars) in enumerate(panels):
        b += bar_panel(left + i * (pw + gap), top, pw, ph, ptitle, unit, bars)
    path.write_text(svg_doc(w, h, b))


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, for a trial")
    ap.add_argument("--svg-dir", default=str(Path(__file__).resolve().parent.parent
                                             / "docs" / "perf"),
                    help="where to write the SVG plots (default docs/perf); '' for none")
    ap.add_argument("--json", help="save the raw numbers to this file")
    ap.add_argument("--no-dpdk", action="store_true", help="leave DPDK out")
    ap.add_argument("--rounds", type=int, help="single-launch rounds (default 400; quick 60)")
    a = ap.parse_args()
    quick = a.quick
    rounds = a.rounds or (60 if quick else 400)
    dur16, rounds16 = (2.0, 1) if quick else (5.0, 3)
    dur1, rounds1 = (1.0, 1) if quick else (2.0, 3)
    durbig, roundsbig = (1.0, 1) if quick else (2.0, 4)
    clients = 16

    runner = find_runner()
    have_numpy = numpy_available()
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split()
        thp_mode = next(w.strip("[]") for w in thp if w.startswith("["))
    except (OSError, StopIteration):
        thp_mode = "unknown"

    # SIGTERM ends the run like Ctrl-C: through the finally below.
    def on_term(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    load_start = loadavg()
    t_start = time.monotonic()
    result: dict = {"machine": {
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "kernel": platform.release(), "forkhost": getattr(forkhost, "__version__", "?"),
        "thp": thp_mode, "load_start": load_start}}
    log(f"forkhost performance report{' (--quick)' if quick else ''}: "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{sys.version.split()[0]}, forkhost {result['machine']['forkhost']}, "
        f"THP {thp_mode}")
    log(f"load average at start: {load_start}")

    work = tempfile.mkdtemp(prefix="fhperf-", dir="/tmp")
    prim = Primaries(work)
    dpdk: Dpdk | None = None
    driver: Driver | None = None
    helpers: list[subprocess.Popen] = []
    cwd = os.getcwd()
    try:
        Path(work, "fhperf_triv.py").write_text(TRIV_PY)
        py_compile.compile(f"{work}/fhperf_triv.py", doraise=True)
        Path(work, "fhperf_pass.py").write_text(PASS_SCRIPT)
        Path(work, "fhperf_big.py").write_text(BIG_PRIVATE)
        Path(work, "fhperf_thp.py").write_text(BIG_THP)
        Path(work, "fhperf_arena.py").write_text(BIG_ARENA)
        native_entry(work)
        clean_python = clean_interpreter(work)
        driver = Driver(work)

        dpdk_reason = "left out (--no-dpdk)" if a.no_dpdk else None
        if not a.no_dpdk:
            dpdk = Dpdk(work)
            dpdk_reason = dpdk.setup()
        if dpdk_reason:
            log(f"DPDK: not available ({dpdk_reason})")
            if dpdk is not None:
                dpdk.close()
                dpdk = None
        else:
            log(f"DPDK: {dpdk.note}")
        result["dpdk"] = dpdk.note if dpdk else f"not available ({dpdk_reason})"

        log("starting primaries (--huge-pages never, --pool 2):")
        os.chdir(work)          # the clients' cwd: where the entries are
        penv = dict(os.environ, OPENBLAS_NUM_THREADS="1",
                    PYTHONPATH=os.pathsep.join(
                        [work] + ([os.environ["PYTHONPATH"]]
                                  if os.environ.get("PYTHONPATH") else [])))
        # One primary per single-launch variant (each finds its pool full),
        # the sustained runs reuse them; plain/big for section C.
        for prefix in ("ppy", "pscr", "pnat", "pplain"):
            prim.start(prefix, env=penv)
        prim.start("pbig", "--preload", "fhperf_big", env=penv)
        big_variants = {"plain": "pplain", "1 GiB private": "pbig"}
        if thp_mode != "never":
            prim.start("pthp", "--preload", "fhperf_thp", env=penv)
            big_variants["1 GiB THP"] = "pthp"
        prim.start("parena", "--arena-size", "1088M", "--preload", "fhperf_arena", env=penv)
        big_variants["1 GiB arena"] = "parena"
        mem = {}
        for name, prefix in big_variants.items():
            pid = prim.procs[prefix].pid
            tpid = template_pid(work, prefix)
            r = smaps_rollup(tpid or pid)
            mem[name] = {"role": "template" if tpid else "primary",
                         "Rss_kB": r.get("Rss"), "Anonymous_kB": r.get("Anonymous"),
                         "AnonHugePages_kB": r.get("AnonHugePages")}
            log(f"  {name:14s} {mem[name]['role']} Rss {r.get('Rss', 0) / 1024:7.0f} MiB, "
                f"anonymous {r.get('Anonymous', 0) / 1024:7.0f} MiB, "
                f"of it THP {r.get('AnonHugePages', 0) / 1024:6.0f} MiB")
        result["big_memory"] = mem
        if have_numpy:
            prim.start("pnp", "--preload", "numpy", env=penv)
        env = dict(os.environ, FORKHOST_RUNTIME_DIR=work, OPENBLAS_NUM_THREADS="1")

        def fh_argv(prefix: str, entry: str) -> list[str]:
            return [runner, "--prefix", prefix, entry]

        def fh(prefix: str, entry: str):
            argv = fh_argv(prefix, entry)
            return lambda: spawn_wait(argv, env)

        # ---------------------------------------------------- A. single
        kinds = {"true": "true", "fh python": "forkhost", "fh script": "forkhost",
                 "fh native": "native", "fh python 1GiB": "big",
                 "python -c pass": "peer", "forkserver": "peer",
                 "fh numpy": "forkhost", "cold numpy": "peer", "dpdk secondary": "dpdk"}
        variants = {
            "true": lambda: spawn_wait(["/bin/true"], env),
            "fh python": fh("ppy", "fhperf_triv:main"),
            "fh script": fh("pscr", "./fhperf_pass.py"),
            "fh native": fh("pnat", f"{work}/triv.so"),
            "fh python 1GiB": fh("pbig", "fhperf_triv:main"),
            "python -c pass": lambda: spawn_wait([clean_python, "-c", "pass"], env),
        }
        fs_helper = subprocess.Popen(
            [sys.executable, "-c", FORKSERVER_HELPER], cwd=work,
            env=dict(env, PYTHONPATH=penv["PYTHONPATH"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        helpers.append(fs_helper)

        def forkserver():
            fs_helper.stdin.write("\n")
            fs_helper.stdin.flush()
            dt = float(fs_helper.stdout.readline() or -1)
            if dt < 0:
                raise RuntimeError("forkserver child failed")
            return dt

        forkserver()   # starts the server itself, outside the timing
        variants["forkserver"] = forkserver
        if have_numpy:
            variants["fh numpy"] = fh("pnp", "fhperf_triv:np_main")
            variants["cold numpy"] = lambda: spawn_wait(
                [sys.executable, "-c", "import numpy"], env)
        if dpdk:
            dargv = dpdk.secondary_argv()
            variants["dpdk secondary"] = lambda: spawn_wait(dargv, env)

        log(f"\nA. single launches: {rounds} interleaved rounds (shuffled) ...")
        times: dict[str, list[float]] = {k: [] for k in variants}
        for fn in variants.values():      # warm-up: caches, pools, page cache
            fn()
            fn()
        order = list(variants)
        rng = random.Random(2017)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                times[name].append(variants[name]())
        single = {}
        for k, v in times.items():
            s = sorted(v)
            single[k] = {"name": k, "kind": kinds[k], "median": statistics.median(s),
                         "p1": pct(s, 0.01), "p25": pct(s, 0.25), "p75": pct(s, 0.75),
                         "p90": pct(s, 0.90), "p99": pct(s, 0.99), "n": len(s)}
        result["single"] = {"rounds": rounds, "stats": single, "samples": times}

        # ------------------------------------------------ B. sustained
        sus_variants = {
            "true": ["/bin/true"],
            "fh script": fh_argv("pscr", "./fhperf_pass.py"),
            "fh native": fh_argv("pnat", f"{work}/triv.so"),
        }
        one_variants = dict(sus_variants)
        one_variants["fh python"] = fh_argv("ppy", "fhperf_triv:main")

        def pids_of(argv: list[str]) -> list[int]:
            if argv[0] != runner:
                return []
            prefix = argv[2]
            return [prim.procs[prefix].pid, template_pid(work, prefix) or 0]

        def sustained(vs: dict, n: int, seconds: float, nrounds: int, seed: int) -> dict:
            acc = {k: {"launches": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                       "own_cpu_seconds": 0.0, "rounds": []} for k in vs}
            order = list(vs)
            rng = random.Random(seed)
            for _ in range(nrounds):
                rng.shuffle(order)
                for k in order:
                    r = driver.run(n, seconds, vs[k], env, pids_of(vs[k]))
                    acc[k]["rounds"].append(r)
                    for f in ("launches", "seconds", "cpu_seconds", "own_cpu_seconds"):
                        acc[k][f] += r[f]
            for k, r in acc.items():
                r["rate"] = r["launches"] / r["seconds"]
                r["per_launch"] = r["seconds"] / r["launches"] * n
                r["cpu_per_launch"] = r["cpu_seconds"] / r["launches"]
                r["own_cpu_per_launch"] = r["own_cpu_seconds"] / r["launches"]
            return acc

        # What the rest of the machine is doing: /proc/stat counts it too.
        b0, tb = cpu_busy_ticks(), time.monotonic()
        time.sleep(2)
        background = (cpu_busy_ticks() - b0) * TICK / (time.monotonic() - tb)
        result["background_cpus_busy"] = background
        log(f"   background before B: {background:.2f} of {os.cpu_count()} CPUs busy "
            f"(other processes; /proc/stat counts them too)")

        log(f"B. {clients} clients back to back: {rounds16} rounds x {dur16:g} s "
            f"per variant ...")
        sus16 = sustained(sus_variants, clients, dur16, rounds16, 16)
        log(f"   one client back to back: {rounds1} rounds x {dur1:g} s per variant ...")
        sus1 = sustained(one_variants, 1, dur1, rounds1, 1)
        result["sustained16"] = {"clients": clients, "seconds": dur16, "rounds": rounds16,
                                 "results": sus16}
        result["sustained1"] = {"seconds": dur1, "rounds": rounds1, "results": sus1}

        # --------------------------------------------------- C. 1 GiB
        log(f"C. one client back to back against the 1 GiB primaries: "
            f"{roundsbig} rounds x {durbig:g} s ...")
        big = sustained({k: fh_argv(p, "fhperf_triv:main") for k, p in big_variants.items()},
                        1, durbig, roundsbig, 1024)
        result["big"] = {"seconds": durbig, "rounds": roundsbig, "results": big}
        probe_kinds = ["none", "4k"] + (["thp"] if thp_mode != "never" else [])
        fork_probe = {}
        for kind in probe_kinds:
            out = subprocess.run([sys.executable, "-c", FORK_PROBE, kind,
                                  "10" if quick else "30"],
                                 capture_output=True, text=True, check=True, env=env)
            fork_probe[kind] = float(out.stdout)
        result["fork_probe"] = fork_probe
    finally:
        for h in helpers:
            try:
                h.stdin.close()     # the helper ends, and its forkserver with it
                h.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                h.kill()
                h.wait()
        if driver is not None:
            driver.kill()
        prim.stop()
        if dpdk is not None:
            dpdk.close()
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    load_end = loadavg()
    result["machine"]["load_end"] = load_end
    result["machine"]["wall_seconds"] = time.monotonic() - t_start

    # ------------------------------------------------------------ table
    st = single
    tmed = st["true"]["median"]
    log(f"\nA. single launch, {rounds} rounds: median / p90 / p99, and ratios to /bin/true")
    log(f"{'variant':<17}{'median':>10}{'p90':>10}{'p99':>10}"
        f"{'med/true':>10}{'p90/true':>10}{'p99/true':>10}  target")
    tgt_single = {"fh python": f"({TARGETS['py']})", "fh script": f"({TARGETS['py']})",
                  "fh native": f"({TARGETS['native']}, p90 {TARGETS['native_p90']})"}
    for k, s in st.items():
        log(f"{k:<17}{s['median'] * 1e3:>8.3f}ms{s['p90'] * 1e3:>8.3f}ms"
            f"{s['p99'] * 1e3:>8.3f}ms{s['median'] / tmed:>10.2f}"
            f"{s['p90'] / st['true']['p90']:>10.2f}{s['p99'] / st['true']['p99']:>10.2f}"
            f"  {tgt_single.get(k, '')}")
    if not dpdk:
        log(f"dpdk secondary: {result['dpdk']}")

    t16 = sus16["true"]
    log(f"\nB. {clients} clients, each back to back, {rounds16} x {dur16:g} s per variant")
    log(f"   CPU per launch: 'run' = the run's own processes (driver, clients, primary, "
        f"template, members, secondaries); 'machine' = /proc/stat, which also counts "
        f"the {result['background_cpus_busy']:.2f} CPUs of other work")
    log(f"{'variant':<11}{'launches/s':>11}{'/true':>7} {'(target)':<9}"
        f"{'CPU run':>10}{'/true':>7}{'CPU machine':>13}{'/true':>7} (target)")
    for k, r in sus16.items():
        t1 = "" if k == "true" else f"({TARGETS['rate16']})"
        t2 = "" if k == "true" else f"({TARGETS['cpu16']})"
        log(f"{k:<11}{r['rate']:>11.0f}{r['rate'] / t16['rate']:>7.2f} {t1:<9}"
            f"{r['own_cpu_per_launch'] * 1e3:>8.3f}ms"
            f"{r['own_cpu_per_launch'] / t16['own_cpu_per_launch']:>7.2f}"
            f"{r['cpu_per_launch'] * 1e3:>11.3f}ms"
            f"{r['cpu_per_launch'] / t16['cpu_per_launch']:>7.2f} {t2}")
    t1c = sus1["true"]
    log(f"\n   one client back to back, {rounds1} x {dur1:g} s: time per launch ÷ the "
        f"single-launch median")
    log(f"{'variant':<11}{'per launch':>11}{'single':>10}{'ratio':>7} {'(target)':<9}"
        f"{'CPU run':>10}{'/true':>7}{'CPU machine':>13}{'/true':>7}")
    for k, r in sus1.items():
        tgt = "" if k == "true" else f"({TARGETS['b2b']})"
        log(f"{k:<11}{r['per_launch'] * 1e3:>9.3f}ms{st[k]['median'] * 1e3:>8.3f}ms"
            f"{r['per_launch'] / st[k]['median']:>7.2f} {tgt:<9}"
            f"{r['own_cpu_per_launch'] * 1e3:>8.3f}ms"
            f"{r['own_cpu_per_launch'] / t1c['own_cpu_per_launch']:>7.2f}"
            f"{r['cpu_per_launch'] * 1e3:>11.3f}ms"
            f"{r['cpu_per_launch'] / t1c['cpu_per_launch']:>7.2f}")

    bp = big["plain"]
    log(f"\nC. trivial Python entry, one client back to back, {roundsbig} x {durbig:g} s, "
        f"against primaries holding 1 GiB")
    log(f"{'primary':<14}{'per launch':>11}{'/plain':>7} {'(target)':<9}"
        f"{'CPU run':>10}{'/plain':>7}{'CPU machine':>13}{'/plain':>7}"
        f"{'anon MiB':>9}{'THP MiB':>8}")
    for k, r in big.items():
        tgt = "" if k == "plain" else f"({TARGETS['big']})"
        m = mem[k]
        log(f"{k:<14}{r['per_launch'] * 1e3:>9.3f}ms{r['per_launch'] / bp['per_launch']:>7.2f}"
            f" {tgt:<9}{r['own_cpu_per_launch'] * 1e3:>8.3f}ms"
            f"{r['own_cpu_per_launch'] / bp['own_cpu_per_launch']:>7.2f}"
            f"{r['cpu_per_launch'] * 1e3:>11.3f}ms"
            f"{r['cpu_per_launch'] / bp['cpu_per_launch']:>7.2f}"
            f"{(m['Anonymous_kB'] or 0) / 1024:>9.0f}{(m['AnonHugePages_kB'] or 0) / 1024:>8.0f}")
    fp = result["fork_probe"]
    log("   fork + _exit + waitpid of a bare Python process holding: " + ", ".join(
        f"{ {'none': 'nothing', '4k': '1 GiB (4 KiB pages)', 'thp': '1 GiB (THP)'}[k]} "
        f"{v * 1e3:.2f} ms" for k, v in fp.items()))
    log(f"   single launch (A): fh python 1GiB / fh python = "
        f"{st['fh python 1GiB']['median'] / st['fh python']['median']:.2f}")

    log("\nD. numpy")
    if have_numpy:
        r = st["fh numpy"]["median"] / st["cold numpy"]["median"]
        log(f"fh numpy (numpy preloaded) / cold import numpy: {r:.3g}   "
            f"({TARGETS['numpy']})")
        log(f"   (0.012 of cold numpy is {st['cold numpy']['median'] * 0.012 / tmed:.2f}x "
            f"/bin/true on this machine)")
    else:
        log("numpy is not installed: left out")

    log(f"\nload average at start: {load_start}; at end: {load_end}; "
        f"{result['machine']['wall_seconds']:.0f} s")

    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
        log(f"raw numbers: {a.json}")

    if a.svg_dir:
        d = Path(a.svg_dir)
        d.mkdir(parents=True, exist_ok=True)
        sub = (f"{os.cpu_count()} CPUs, {rounds} interleaved rounds; "
               f"load {load_start} at start, {load_end} at end")
        svg_latency(d / "latency.svg", list(st.values()), sub)
        colors = {"true": PALETTE["true"], "fh script": PALETTE["forkhost"],
                  "fh native": PALETTE["native"]}
        names = {"true": "/bin/true", "fh script": "forkhost-run\nscript (pass)",
                 "fh native": "forkhost-run\nnative .so"}
        svg_bars(d / "throughput.svg",
                 f"{clients} clients launching back to back",
                 f"{rounds16} x {dur16:g} s per variant; load {load_start} at start, "
                 f"{load_end} at end",
                 [("launches per second", "launches/s",
                   [(names[k], r["rate"], colors[k],
                     f"{r['rate']:.0f}" + ("" if k == "true" else
                                           f" ({r['rate'] / t16['rate']:.2f}x)"))
                    for k, r in sus16.items()]),
                  ("CPU time per launch (the run's processes)", "ms",
                   [(names[k], r["own_cpu_per_launch"] * 1e3, colors[k],
                     f"{r['own_cpu_per_launch'] * 1e3:.2f}" + (
                         "" if k == "true" else
                         f" ({r['own_cpu_per_launch'] / t16['own_cpu_per_launch']:.2f}x)"))
                    for k, r in sus16.items()])])
        bcolors = {"plain": PALETTE["forkhost"], "1 GiB private": PALETTE["big"],
                   "1 GiB THP": PALETTE["thp"], "1 GiB arena": PALETTE["arena"]}
        bnames = {"plain": "plain", "1 GiB private": "1 GiB private\n(4 KiB pages)",
                  "1 GiB THP": "1 GiB private\n(THP)", "1 GiB arena": "1 GiB in\nthe arena"}
        svg_bars(d / "big_preload.svg",
                 "Back to back: trivial Python entry against a primary holding 1 GiB",
                 f"one client, {roundsbig} x {durbig:g} s per primary; load {load_start} at start, "
                 f"{load_end} at end",
                 [("time per launch", "ms",
                   [(bnames[k], r["per_launch"] * 1e3, bcolors[k],
                     f"{r['per_launch'] * 1e3:.2f}" + (
                         "" if k == "plain" else f" ({r['per_launch'] / bp['per_launch']:.2f}x)"))
                    for k, r in big.items()]),
                  ("CPU time per launch (the run's processes)", "ms",
                   [(bnames[k], r["own_cpu_per_launch"] * 1e3, bcolors[k],
                     f"{r['own_cpu_per_launch'] * 1e3:.2f}" + (
                         "" if k == "plain" else
                         f" ({r['own_cpu_per_launch'] / bp['own_cpu_per_launch']:.2f}x)"))
                    for k, r in big.items()])])
        log(f"plots: {d}/latency.svg, throughput.svg, big_preload.svg")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
