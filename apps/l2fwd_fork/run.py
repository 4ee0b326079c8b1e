"""The l2fwd_fork sample in one command, and its controls.

    python apps/l2fwd_fork/run.py [demo] [--kills 2] [--crashes 1] [--between N]
        starts `forkhost primary --config forkhost.toml` (gen -> fwd -> sink,
        supervised), lets traffic run, kills fwd with SIGKILL --kills times
        and makes it crash from inside --crashes times (each time waiting
        for the supervisor to stop sink, restart both, and for --between
        more packets to be delivered), stops generation, drains, prints the
        accounting and stops the primary.  Exit 0 when every packet sent is
        delivered or reported lost, and every object is back in the pool.

    python apps/l2fwd_fork/run.py kill fwd     SIGKILL to fwd (pid from `forkhost ps --json`)
    python apps/l2fwd_fork/run.py crash fwd    fwd crashes itself at its next burst
    python apps/l2fwd_fork/run.py stats        the counters and the accounting, now
    python apps/l2fwd_fork/run.py drain        stop generation, drain, accounting (exit 0/1)

The controls act on a primary started by hand (README.md).  Every command
takes --prefix (default the file's, l2fwd) and --runtime-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import forkhost
import forkhost._runtime

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "forkhost.toml"
WORKERS = ("gen", "fwd", "sink")
WAIT = 60.0          # the longest any one step may take before the run fails


class Failed(Exception):
    pass


def say(text: str) -> None:
    print(f"run: {text}", flush=True)


class Sample:
    def __init__(self, a):
        self.prefix, self.runtime_dir = a.prefix, a.runtime_dir
        self.env = dict(os.environ, FORKHOST_PREFIX=a.prefix)
        if a.runtime_dir:
            self.env["FORKHOST_RUNTIME_DIR"] = a.runtime_dir
        self.primary: subprocess.Popen | None = None

    # -- looking -------------------------------------------------------------

    def workers(self) -> dict[str, dict]:
        r = subprocess.run([sys.executable, "-m", "forkhost", "ps", "--json"],
                           env=self.env, cwd=HERE, capture_output=True, text=True,
                           timeout=WAIT)
        if r.returncode != 0:
            raise Failed(f"forkhost ps: {r.stderr.strip()}")
        return {w["name"]: w for w in json.loads(r.stdout) if w["role"] == "worker"}

    def ctl(self, *args: str) -> str:
        r = forkhost.run([str(HERE / "ctl.py"), *args], prefix=self.prefix,
                         runtime_dir=self.runtime_dir, cwd=HERE, capture_output=True,
                         text=True, timeout=WAIT)
        if r.returncode != 0:
            raise Failed(f"ctl.py {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def stats(self) -> dict:
        return json.loads(self.ctl("stats"))

    def wait(self, pred, what: str, interval: float = 0.05):
        deadline = time.monotonic() + WAIT
        while True:
            if self.primary is not None and self.primary.poll() is not None:
                raise Failed(f"the primary exited ({self.primary.returncode}) while "
                             f"waiting for {what}")
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise Failed(f"no {what} within {WAIT:g}s")
            time.sleep(interval)

    # -- the primary -----------------------------------------------------------

    def start(self) -> None:
        env = dict(self.env, PYTHONPATH=os.pathsep.join(
            [str(HERE)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])))
        self.primary = subprocess.Popen(
            [sys.executable, "-m", "forkhost", "primary", "--config", str(CONFIG),
             "--prefix", self.prefix], env=env, cwd=HERE, stdin=subprocess.DEVNULL)
        self.wait(self.all_running, "workers running")
        say(f"primary (pid {self.primary.pid}) runs gen, fwd and sink")

    def all_running(self) -> bool:
        if forkhost._runtime.read_config(
                forkhost._runtime.paths(self.prefix, self.runtime_dir)) is None:
            return False                  # not started yet: nothing for ps
        w = self.workers()
        return all(w.get(n, {}).get("state") == "running" for n in WORKERS)

    def stop(self) -> int:
        if self.primary is None:
            return 0
        if self.primary.poll() is None:
            self.primary.send_signal(signal.SIGTERM)
        try:
            return self.primary.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.primary.kill()
            return self.primary.wait()

    # -- acting ----------------------------------------------------------------

    def kill(self, name: str) -> tuple[int, dict]:
        before = self.workers()
        pid = before[name]["pid"]
        if pid is None:
            raise Failed(f"worker {name} is not running ({before[name]['state']})")
        os.kill(pid, signal.SIGKILL)
        say(f"killed {name} (pid {pid}) with SIGKILL")
        return pid, before

    def crash(self, name: str) -> tuple[int, dict]:
        before = self.workers()
        self.ctl("crash", name)
        say(f"asked {name} (pid {before[name]['pid']}) to crash from inside")
        return before[name]["pid"], before

    def recovered(self, name: str, before: dict) -> None:
        """Wait until the supervisor restarted `name` and everything that
        requires it (sink), and traffic flows again."""
        def back():
            w = self.workers()
            return w if all(w[n]["state"] == "running" and
                            w[n]["restarts"] > before[n]["restarts"]
                            for n in (name, "sink")) else None
        w = self.wait(back, f"{name} and sink restarted")
        say(f"{name} restarted (pid {w[name]['pid']}, restart {w[name]['restarts']}), "
            f"sink restarted (pid {w['sink']['pid']})")
        # The supervisor's reclaim(pid) of the dead worker and of the
        # stopped sink (forkhost ps --json keeps each worker's last one).
        for n in dict.fromkeys((name, "sink")):
            if w[n].get("reclaim"):
                say(f"{n}'s reclaim report: {json.dumps(w[n]['reclaim'], sort_keys=True)}")

    def traffic(self, packets: int) -> None:
        start = self.stats()["delivered"]
        self.wait(lambda: self.stats()["delivered"] >= start + packets,
                  f"{packets} packets delivered")

    def drain(self) -> dict:
        self.ctl("stop-gen")
        say("generation stopped; draining")
        self.wait(lambda: self.workers()["gen"]["state"] == "exited", "gen's exit")
        def drained():
            s = self.stats()
            empty = s["rx_count"] == s["tx_count"] == 0
            return s if empty and s["pool_avail"] == s["pool_count"] else None
        try:
            return self.wait(drained, "drained rings and a full pool")
        except Failed as err:
            say(f"{err}")
            return self.stats()


def report(s: dict, workers: dict | None) -> bool:
    ok = s["sent"] == s["delivered"] + s["lost"] and s["pool_avail"] == s["pool_count"]
    say(f"sent {s['sent']}, delivered {s['delivered']}, lost {s['lost']} "
        f"(the pool's recovered objects; rings' lost elements: rx {s['rx_lost']}, "
        f"tx {s['tx_lost']})")
    say(f"sent == delivered + lost: {'yes' if s['sent'] == s['delivered'] + s['lost'] else 'NO'}; "
        f"pool: {s['pool_avail']} of {s['pool_count']} objects free; "
        f"in rings: rx {s['rx_count']}, tx {s['tx_count']}")
    say(f"forwarded {s['forwarded']} (misses {s['misses']}); delivered per port "
        f"{s['port_delivered']}; per flow {s['flow_delivered_min']}..{s['flow_delivered_max']}; "
        f"bad headers {s['bad']}")
    if workers:
        say("restarts: " + ", ".join(f"{n} {w['restarts']}" for n, w in workers.items()))
    return ok


def demo(a) -> int:
    s = Sample(a)
    ok = False
    try:
        s.start()
        s.traffic(a.between)
        events = ["kill"] * a.kills + ["crash"] * a.crashes
        for ev in events:
            _, before = (s.kill if ev == "kill" else s.crash)("fwd")
            s.recovered("fwd", before)
            s.traffic(a.between)
        final = s.drain()
        ok = report(final, s.workers())
    except Failed as err:
        say(f"failed: {err}")
    finally:
        code = s.stop()
        say(f"primary exited {code}")
        ok = ok and code == 0
    print("l2fwd_fork: " + ("every packet accounted for" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="l2fwd_fork")
    ap.add_argument("command", nargs="?", default="demo",
                    choices=("demo", "kill", "crash", "stats", "drain"))
    ap.add_argument("worker", nargs="?", choices=("fwd",),
                    help="kill, crash: the worker (only fwd: README.md says why)")
    ap.add_argument("--prefix", default="l2fwd")
    ap.add_argument("--runtime-dir")
    ap.add_argument("--kills", type=int, default=2, help="demo: SIGKILLs of fwd")
    ap.add_argument("--crashes", type=int, default=1, help="demo: crashes from inside")
    ap.add_argument("--between", type=int, default=2000,
                    help="demo: packets delivered before the first event and after each")
    a = ap.parse_args(argv)
    if a.command in ("kill", "crash") and a.worker is None:
        ap.error(f"{a.command}: which worker? (fwd)")
    if a.command == "demo":
        return demo(a)
    s = Sample(a)
    try:
        if a.command == "kill":
            s.kill(a.worker)
        elif a.command == "crash":
            s.crash(a.worker)
        elif a.command == "stats":
            report(s.stats(), s.workers())
        else:
            return 0 if report(s.drain(), s.workers()) else 1
    except Failed as err:
        print(f"l2fwd_fork: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
