"""What a launch cannot cost less than: CPU per launch beside its floor.

A launch through forkhost runs a client (a static binary, exec'd like
/bin/true) and forks a copy of the template, which is a CPython process;
a Python entry then runs CPython's after-fork work and the entry.  This
script measures, in one run, the CPU of each of those pieces alone and of
real launches, per operation, against posix_spawn + waitpid of /bin/true:

  true             posix_spawn + waitpid of /bin/true
  client alone     forkhost-run against a prefix with no primary (refused,
                   exit 125): the client's exec, start and exit
  fork+exit        fork() + _exit() + waitpid() in C, run inside a secondary
                   (a copy of the template): the kernel's cost of copying
                   and tearing down a template-sized process
  os.fork          os.fork() whose child calls os._exit(0), inside a
                   secondary: the same plus CPython's after-fork work
  fh native        forkhost-run of int main(void){return 0;} as a shared
                   object, back to back, one client
  fh script        forkhost-run of a script holding `pass`, back to back

CPU is counted for every process involved: this process and its children
(getrusage), and the primary and template with the members and
secondaries the template reaped (/proc/PID/stat).  Variants alternate in
blocks so that the machine's other load spreads over all of them.

    python benchmarks/launch_floor.py [--launches 300] [--blocks 6]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launch import Primaries, find_runner, native_entry  # noqa: E402
from perf_report import TICK, proc_cpu_ticks  # noqa: E402

FORK_EXIT_C = r"""
#include <sys/wait.h>
#include <unistd.h>
int fork_exit_wait(int n)
{
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0 || waitpid(pid, NULL, 0) != pid)
            return -1;
    }
    return 0;
}
"""

# Run through forkhost-run, so inside a copy of the template: times n forks
# of one kind and prints the CPU they took (this process and its children).
PROBE_PY = """
import ctypes, os, resource, sys
kind, n = sys.argv[1], int(sys.argv[2])
fork_exit = ctypes.CDLL(sys.argv[3]).fork_exit_wait
def cpu():
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime
c0 = cpu()
for _ in range(n):
    if kind == "c":
        if fork_exit(1) != 0:
            sys.exit("fork failed")
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
print(cpu() - c0)
"""


def cpu_now(pids: list[int]) -> float:
    """CPU seconds so far of this process, its reaped children and pids."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime
            + sum(proc_cpu_ticks(p) for p in pids) * TICK)


def spawn_wait(argv: list[str], env: dict, expect: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 1),
                   (os.POSIX_SPAWN_DUP2, devnull, 2)]
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != expect:
        raise SystemExit(f"{argv} exited {os.waitstatus_to_exitcode(status)}, "
                         f"expected {expect}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--launches", type=int, default=300,
                    help="operations per variant in all (default 300)")
    ap.add_argument("--blocks", type=int, default=6,
                    help="blocks per variant, interleaved (default 6)")
    a = ap.parse_args()
    runner = find_runner()
    work = tempfile.mkdtemp(prefix="fhfloor-", dir="/tmp")
    Path(work, "pass.py").write_text("pass\n")
    Path(work, "probe.py").write_text(PROBE_PY)
    triv = native_entry(work)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", f"{work}/fe.so",
                    "-x", "c", "-"], input=FORK_EXIT_C.encode(), check=True)

    with open("/proc/loadavg") as f:
        load0 = " ".join(f.read().split()[:3])
    print(f"launch floor: {a.launches} operations per variant in {a.blocks} "
          f"interleaved blocks, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, load {load0}")
    prim = Primaries(work)
    try:
        # A primary per kind: a pool that serves Python entries prepares its
        # members for them (CPython's after-fork work, ahead), which a native
        # launch would pay for; and the probes' secondaries are reaped (their
        # CPU counted by their template) after their block has ended.
        owned: dict[str, list[int]] = {}
        for prefix in ("floor", "floornat", "floorprobe"):
            ready = prim.start(prefix, "--arena-size", "64M", "--huge-pages", "never")
            owned[prefix] = [int(re.search(r"pid (\d+), template (\d+)", ready)[k])
                             for k in (1, 2)]
        env = dict(os.environ, FORKHOST_RUNTIME_DIR=work)
        os.chdir(work)

        def probe(kind: str):
            """A block of forks of one kind inside a secondary: the CPU it
            reports (the launch around it is not counted)."""
            def block(count: int) -> float:
                out = subprocess.run(
                    [runner, "--prefix", "floorprobe", "probe.py", kind, str(count),
                     f"{work}/fe.so"], env=env, check=True,
                    capture_output=True).stdout
                return float(out)
            return block

        variants = {
            "true": lambda: spawn_wait(["/bin/true"], env, 0),
            "client alone": lambda: spawn_wait(
                [runner, "--prefix", "floor-none", triv], env, 125),
            "fork+exit": probe("c"),
            "os.fork": probe("py"),
            "fh native": lambda: spawn_wait(
                [runner, "--prefix", "floornat", triv], env, 0),
            "fh script": lambda: spawn_wait(
                [runner, "--prefix", "floor", "pass.py"], env, 0),
        }
        probes = {"fork+exit", "os.fork"}
        for name, fn in variants.items():   # warm: caches, the pool, bytecode
            if name in probes:
                fn(10)
            else:
                for _ in range(10):
                    fn()
        per_block = max(1, a.launches // a.blocks)
        cpu = dict.fromkeys(variants, 0.0)
        for _ in range(a.blocks):
            for name, fn in variants.items():
                if name in probes:
                    cpu[name] += fn(per_block)
                    continue
                pids = {"fh native": owned["floornat"],
                        "fh script": owned["floor"]}.get(name, [])
                c0 = cpu_now(pids)
                for _ in range(per_block):
                    fn()
                if pids:
                    # The last secondary's exit and reaping, and the pool's
                    # refill, run after its client has its status.
                    time.sleep(0.1)
                cpu[name] += cpu_now(pids) - c0
        n = per_block * a.blocks
    finally:
        prim.stop()
        shutil.rmtree(work, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load1 = " ".join(f.read().split()[:3])

    true = cpu["true"] / n
    print(f"\nCPU per operation ({n} each; load at the end {load1}):")
    print(f"  {'variant':14} {'ms':>7} {'÷ true':>7}")
    for name, c in cpu.items():
        print(f"  {name:14} {c / n * 1e3:7.3f} {c / n / true:7.2f}")
    per = {k: v / n for k, v in cpu.items()}
    nat_floor = per["client alone"] + per["fork+exit"]
    py_floor = per["client alone"] + per["os.fork"]
    print(f"\nfloor of a native launch (client alone + fork+exit): "
          f"{nat_floor / true:.2f}x true; measured {per['fh native'] / true:.2f}x")
    print(f"floor of a Python launch (client alone + os.fork):   "
          f"{py_floor / true:.2f}x true; measured {per['fh script'] / true:.2f}x "
          f"(issue target for 16 clients: <= 2.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
