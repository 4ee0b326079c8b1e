"""forkhost.Executor against concurrent.futures.ProcessPoolExecutor, and
the design it did not take (one secondary per task), for small tasks.

Run by hand (not part of the tests; no thresholds anywhere):

    python benchmarks/executor.py [--rounds N] [--tasks N] [--workers N]

Variants, each with --workers workers:
  pool fork        ProcessPoolExecutor, start method fork
  pool forkserver  ProcessPoolExecutor, start method forkserver
  forkhost         forkhost.Executor: long-lived workers that are secondaries
                   (ProcessPoolExecutor's own machinery, workers launched
                   through the template; the primary preloads what a worker
                   imports, forkhost.futures and runpy)
  per-task         one secondary per task: forkhost.run of an entry that
                   unpickles (fn, args) from stdin and pickles the result to
                   stdout, --workers threads launching

Figures, each the median over rounds (variants interleaved, order shuffled
with a fixed seed in each round):
  first result     executor made, one trivial task submitted, its result:
                   what a program pays to start a pool and use it once
  per task         --tasks trivial tasks through map(chunksize=1) on a pool
                   that already runs, divided by --tasks
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import forkhost

TASKS_PY = '''import pickle
import sys


def noop(x):
    return x


def run_pickled(argv):
    fn, args = pickle.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(pickle.dumps(fn(*args)))
    return 0
'''


class PerTask(cf.Executor):
    """One secondary per task (the alternative design), run from threads."""

    def __init__(self, workers: int):
        self._threads = cf.ThreadPoolExecutor(workers)

    @staticmethod
    def _one(fn, args):
        r = forkhost.run(["fhbench_tasks:run_pickled"], input=pickle.dumps((fn, args)),
                         capture_output=True, check=True)
        return pickle.loads(r.stdout)

    def submit(self, fn, *args):
        return self._threads.submit(self._one, fn, args)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._threads.shutdown(wait, cancel_futures=cancel_futures)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="fhb-", dir="/tmp")
    Path(work, "fhbench_tasks.py").write_text(TASKS_PY)
    sys.path.insert(0, work)
    os.chdir(work)
    import fhbench_tasks

    prim = subprocess.Popen(
        [sys.executable, "-m", "forkhost", "primary", "--prefix", "bex",
         "--runtime-dir", work, "--preload", "fhbench_tasks",
         # What a worker imports: ready in the template, as in a program
         # that imported forkhost.Executor before it started its primary.
         "--preload", "forkhost.futures", "--preload", "runpy"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=work))
    line = prim.stdout.readline().decode()
    if "ready" not in line:
        raise SystemExit(f"the primary did not start: {line}{prim.stderr.read().decode()}")
    os.environ.update(FORKHOST_PREFIX="bex", FORKHOST_RUNTIME_DIR=work)
    print(f"forkhost.Executor benchmark: {a.rounds} rounds, {a.tasks} tasks, "
          f"{a.workers} workers, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}, Python {sys.version.split()[0]}")

    makers = {
        "pool fork": lambda: cf.ProcessPoolExecutor(
            a.workers, mp_context=multiprocessing.get_context("fork")),
        "pool forkserver": lambda: cf.ProcessPoolExecutor(
            a.workers, mp_context=multiprocessing.get_context("forkserver")),
        "forkhost": lambda: forkhost.Executor(a.workers),
        "per-task": lambda: PerTask(a.workers),
    }
    first: dict[str, list[float]] = {k: [] for k in makers}
    per_task: dict[str, list[float]] = {k: [] for k in makers}
    rng = random.Random(17)
    try:
        # The fork server itself starts once per program: started before the
        # first round, as a long-running program would have it.
        multiprocessing.get_context("forkserver").Process(target=fhbench_tasks.noop,
                                                           args=(0,)).start()
        for _ in range(a.rounds):
            order = list(makers)
            rng.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                ex = makers[name]()
                ex.submit(fhbench_tasks.noop, 1).result()
                t1 = time.perf_counter()
                # Every worker up before the timed run.
                list(ex.map(fhbench_tasks.noop, range(4 * a.workers)))
                n = a.tasks if name != "per-task" else max(50, a.tasks // 20)
                t2 = time.perf_counter()
                list(ex.map(fhbench_tasks.noop, range(n), chunksize=1))
                t3 = time.perf_counter()
                ex.shutdown()
                first[name].append(t1 - t0)
                per_task[name].append((t3 - t2) / n)
    finally:
        for p in multiprocessing.active_children():
            p.join()
        prim.terminate()
        prim.communicate(timeout=30)

    med_first = {k: statistics.median(v) for k, v in first.items()}
    med_task = {k: statistics.median(v) for k, v in per_task.items()}
    print(f"{'variant':<16} {'first result':>14} {'per task':>12}")
    for k in makers:
        print(f"{k:<16} {med_first[k] * 1e3:>11.2f} ms {med_task[k] * 1e6:>9.1f} us")
    print("ratios (forkhost / other; below 1 is faster):")
    for other in ("pool fork", "pool forkserver", "per-task"):
        print(f"  vs {other:<16} first result {med_first['forkhost'] / med_first[other]:5.2f}"
              f"   per task {med_task['forkhost'] / med_task[other]:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
