"""IPC benchmark (run by hand): request round trip and message rate from
Python and C secondaries, against bare Unix-socket ping-pongs measured in
the same run, and broadcast requests to 1, 4 and 16 secondaries.

    python benchmarks/ipc.py [--n 20000] [--batches 10] [--fanout 1,4,16]
                             [--placements same,split]

This process is the primary (forkhost.Primary + Primary.ipc()); its
actions are Python, so a C secondary's requests are answered in Python too
and the fair baseline for them is a C client of a Python echo server.
Round trips are the best batch's mean (see ipc_bench_sec.py).  Target
(issue 4): a request round trip within 2x the bare ping-pong.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import forkhost
from forkhost import ipc

HERE = Path(__file__).resolve().parent


def build_c(outdir: Path) -> str:
    flags = subprocess.run(["forkhost", "config", "--cflags", "--libs"],
                           capture_output=True, text=True, check=True).stdout.split()
    out = outdir / "ipc_bench.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-pthread", "-o", str(out),
                    str(HERE / "ipc_bench.c"), *flags], check=True)
    return str(out)


# Round-trip placements: the requester's CPU, the answerer's (the primary
# with its IPC thread, the echo servers), and how the table says it.
PLACEMENTS = {
    "same": (0, 0, "all on CPU 0"),
    "split": (0, 1, "requester on CPU 0, answerer on CPU 1"),
    "free": (None, None, "placed by the scheduler"),
}


def pin_process(cpus: set[int] | None) -> None:
    """Every thread of this process (the primary's IPC thread too) to cpus;
    None: every CPU again.  Processes started afterwards inherit it."""
    cpus = cpus or set(range(os.cpu_count() or 1))
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), cpus)


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="fhb-", dir="/tmp"))
        self.counted = 0
        ipc.register("echo", lambda m, p: ipc.reply(p, m.name, m.param))
        ipc.register("count", self._count)
        ipc.register("flush", self._flush)
        self.primary = forkhost.Primary(prefix="ipcbench", runtime_dir=self.tmp, pool=0)
        self.primary.start()
        self.ep = self.primary.ipc()
        self.so = build_c(self.tmp)

    def _count(self, msg, peer):
        self.counted += 1

    def _flush(self, msg, peer):
        n, self.counted = self.counted, 0
        ipc.reply(peer, "flush", str(n).encode())

    def close(self):
        self.primary.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running things ---------------------------------------------------

    def secondary(self, entry: str, *argv) -> dict:
        r, w = os.pipe()
        try:
            s = forkhost.launch(entry, [str(a) for a in argv], prefix="ipcbench",
                                runtime_dir=self.tmp, cwd=str(HERE), stdout=w)
        finally:
            os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        code = s.wait()
        if code != 0:
            raise SystemExit(f"{entry} {argv} exited {code}: {out}")
        return json.loads(out.strip().splitlines()[-1])

    def plain(self, *argv) -> dict:
        out = subprocess.run([sys.executable, str(HERE / "ipc_bench_sec.py"), *map(str, argv)],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def echo_server(self):
        path = str(self.tmp / "bare.sock")
        if os.path.exists(path):
            os.unlink(path)
        p = subprocess.Popen([sys.executable, str(HERE / "ipc_bench_sec.py"),
                              "echo-server", path], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        return p, path

    # -- the measurements -------------------------------------------------

    def round_trips(self, placement: str) -> None:
        """placement: 'same' runs every process of a round trip on CPU 0
        (each hop a context switch); 'split' puts the requester on CPU 0
        and whoever answers (the primary with its IPC thread, the echo
        servers) on CPU 1 (each hop a cross-CPU wake-up); 'free' leaves it
        to the scheduler, whose choice can differ between the IPC and the
        bare ping-pong and so skews their ratio either way."""
        n, b = self.args.n, self.args.batches
        here, there, where = PLACEMENTS[placement]
        pin_process(None if there is None else {there})
        for var, cpu in (("FHB_CPU", here), ("FHB_PEER_CPU", there)):
            if cpu is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = str(cpu)
        server, path = self.echo_server()
        try:
            # Each secondary alternates batches of IPC requests with batches
            # of a bare ping-pong with the same Python echo server, so both
            # numbers of a ratio see the same machine.
            py = self.secondary("ipc_bench_sec:main", "rtt", path, n, b)
            c = self.secondary(self.so, "rtt", path, n, b)
            bare_cc = self.secondary(self.so, "bare-cc", n, b)["rtt_us"]
        finally:
            server.kill()
            server.wait()
            server.stdout.close()
            pin_process(None)
            os.environ.pop("FHB_CPU", None)
            os.environ.pop("FHB_PEER_CPU", None)
        ipc_py, bare_py = py["rtt_us"], py["bare_us"]
        ipc_c, bare_cpy = c["rtt_us"], c["bare_us"]
        print(f"\nrequest round trip (64-byte param), {where}, best batch mean "
              "(target: within 2x the bare ping-pong)")
        print(f"  {'':34} {'us':>8} {'ratio':>8}")
        print(f"  {'bare ping-pong Python <-> Python':34} {bare_py:8.1f}")
        print(f"  {'IPC request Python -> primary':34} {ipc_py:8.1f} {ipc_py / bare_py:7.2f}x")
        print(f"  {'bare ping-pong C <-> Python':34} {bare_cpy:8.1f}")
        print(f"  {'IPC request C -> primary':34} {ipc_c:8.1f} {ipc_c / bare_cpy:7.2f}x")
        print(f"  {'bare ping-pong C <-> C':34} {bare_cc:8.1f}"
              f"   (C IPC / this: {ipc_c / bare_cc:.2f}x; the primary is Python)")

    def message_rates(self) -> None:
        n = self.args.n * 5
        server, path = self.echo_server()
        try:
            bare = self.plain("bare-rate", path, n)
        finally:
            server.kill()
            server.wait()
            server.stdout.close()
        py = self.secondary("ipc_bench_sec:main", "rate", n)
        c = self.secondary(self.so, "rate", n)
        assert py["counted"] == n and c["counted"] == n, (py, c)
        print(f"\nmessage rate, {n} messages to a Python receiver")
        print(f"  {'bare send, Python -> Python':34} {bare['rate']:10.0f}/s")
        print(f"  {'IPC send, Python -> primary':34} {py['rate']:10.0f}/s "
              f"{py['rate'] / bare['rate']:7.2f}x")
        print(f"  {'IPC send, C -> primary':34} {c['rate']:10.0f}/s "
              f"{c['rate'] / bare['rate']:7.2f}x")

    def broadcasts(self) -> None:
        print("\nbroadcast request from the primary, best batch mean")
        print(f"  {'secondaries':>12} {'Python us':>10} {'per peer':>9} "
              f"{'C us':>9} {'per peer':>9}")
        for k in self.args.fanout:
            row = []
            for entry in ("ipc_bench_sec:main", self.so):
                row.append(self._broadcast(entry, k))
            print(f"  {k:12d} {row[0]:10.1f} {row[0] / k:9.1f} {row[1]:9.1f} "
                  f"{row[1] / k:9.1f}")

    def _broadcast(self, entry: str, k: int) -> float:
        secs, pipes = [], []
        try:
            for _ in range(k):
                r, w = os.pipe()
                rr, ww = os.pipe()
                try:
                    secs.append(forkhost.launch(entry, ["serve"], prefix="ipcbench",
                                                runtime_dir=self.tmp, cwd=str(HERE),
                                                stdin=rr, stdout=w))
                finally:
                    os.close(w)
                    os.close(rr)
                pipes.append((r, ww))
            for r, _ in pipes:
                assert os.read(r, 64).startswith(b"ready")
            assert self.ep.wait_members(lambda ms: len(ms) == k, 30)
            n = max(50, self.args.n // (4 * k))
            per = max(1, n // self.args.batches)
            best = float("inf")
            for batch in range(self.args.batches + 1):
                t = time.perf_counter()
                for _ in range(per):
                    r = ipc.request("echo", b"x" * 64, timeout=5)
                    assert r.nb_received == k, r
                dt = (time.perf_counter() - t) / per
                if batch:                   # the first one warms up
                    best = min(best, dt)
            return best * 1e6
        finally:
            for r, ww in pipes:
                os.close(ww)                # EOF on stdin: they exit
            for s in secs:
                s.wait()
            for r, _ in pipes:
                os.close(r)
            self.ep.wait_members(lambda ms: not ms, 30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="round trips per measurement")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--fanout", default="1,4,16",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--placements", default="same,split",
                    type=lambda s: s.split(","),
                    help="round-trip placements, of same, split and free "
                         "(see Bench.round_trips)")
    args = ap.parse_args()
    if not set(args.placements) <= set(PLACEMENTS) or \
            (os.cpu_count() or 1) < 2 and "split" in args.placements:
        ap.error("--placements: same, split (needs 2 CPUs) or free")
    b = Bench(args)
    try:
        print(f"forkhost {forkhost.__version__}, Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        for placement in args.placements:
            b.round_trips(placement)
        b.message_rates()
        b.broadcasts()
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
