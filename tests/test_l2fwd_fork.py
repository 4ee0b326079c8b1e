"""The l2fwd_fork sample (apps/l2fwd_fork, docs/supervision.md), end to
end: a supervised pipeline gen -> fwd -> sink passing mempool objects
through rings, fwd killed with SIGKILL twice and crashed from inside once;
each time the supervisor stops sink (forkhost.stop, then its exit),
reclaims fwd's objects and restarts both; at the end every packet sent is
delivered or reported lost by the pool, every object is back, and nothing
is left running.

One run of `python apps/l2fwd_fork/run.py`, which waits for events (a
worker's restart in `forkhost ps --json`, packets delivered), never for
time; this test reads its output and the primary's log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fhtest import FIXTURES, ROOT, ended

APP = ROOT / "apps" / "l2fwd_fork"


@pytest.mark.heavy
def test_l2fwd_fork_crashes_recovered_and_accounted(runtime_dir):
    r = subprocess.run([sys.executable, str(APP / "run.py"), "--prefix", "l2f",
                        "--runtime-dir", runtime_dir, "--kills", "2", "--crashes", "1",
                        "--between", "500"],
                       cwd=str(FIXTURES), capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    out, err = r.stdout, r.stderr      # the runner's, the workers' and the primary's
                                       # lines; the supervisor's log
    assert r.returncode == 0, out + err
    assert out.rstrip().endswith("l2fwd_fork: every packet accounted for"), out

    # fwd died three times: two SIGKILLs from the runner, then its own crash.
    exits = re.findall(r"worker fwd \(pid (\d+)\) exited: killed by (SIG\w+)", err)
    assert [sig for _, sig in exits] == ["SIGKILL", "SIGKILL", "SIGSEGV"], err
    assert re.findall(r"run: killed fwd \(pid (\d+)\) with SIGKILL", out) == \
        [pid for pid, _ in exits[:2]]
    assert f"fwd (pid {exits[2][0]}): crash requested" in out

    # Each time: sink, which requires fwd, got forkhost.stop with the
    # reason, exited by itself, and only then were fwd and sink restarted,
    # fwd first.
    stops = re.findall(r"worker sink \(pid (\d+)\): stopping \(forkhost\.stop sent, "
                       r"SIGTERM after [0-9.]+s\): fwd exited \(killed by (SIG\w+)\)", err)
    assert [sig for _, sig in stops] == ["SIGKILL", "SIGKILL", "SIGSEGV"], err
    for n, (pid, sig) in enumerate(stops, 1):
        assert f"sink (pid {pid}): forkhost.stop: fwd exited (killed by {sig})" in out
        gone = err.index(f"worker sink (pid {pid}) exited: exit status 0 (stopped: "
                         f"fwd exited (killed by {sig})")
        fwd_back = [m.start() for m in re.finditer(r"worker fwd restarted \(pid", err)][n - 1]
        sink_back = [m.start() for m in re.finditer(r"worker sink restarted \(pid", err)][n - 1]
        assert gone < fwd_back < sink_back
    for name in ("fwd", "sink"):
        assert re.findall(rf"worker {name} restarted \(pid \d+; restart (\d+),", err) == \
            ["1", "2", "3"]
    assert "run: restarts: gen 0, fwd 3, sink 3" in out

    # The supervisor's reclaim of each dead fwd and each stopped sink, as
    # `forkhost ps --json` shows it after the restart: what they give back
    # is part of what the pool counts as recovered.
    reports = {name: [json.loads(m) for m in
                      re.findall(rf"^run: {name}'s reclaim report: (\{{.*\}})$", out, re.M)]
               for name in ("fwd", "sink")}
    assert [rep["pid"] for rep in reports["fwd"]] == [int(pid) for pid, _ in exits]
    assert [rep["pid"] for rep in reports["sink"]] == [int(pid) for pid, _ in stops]
    assert all(rep["tracked"] for rep in reports["fwd"] + reports["sink"]), reports
    # Each report names what its own process held: the stopped sink (it
    # ends cleanly) nothing, the dead fwd what it had in hand.
    assert all(rep["reclaimed"]["mempool objects"] == 0 for rep in reports["sink"]), reports
    given_back = sum(rep["reclaimed"]["mempool objects"] for rep in reports["fwd"])

    # The accounting: lost is what the pool reports (objects recovered from
    # dead holders), never sent - delivered.
    sent, delivered, lost, rx_lost, tx_lost = map(int, re.search(
        r"run: sent (\d+), delivered (\d+), lost (\d+) \(the pool's recovered objects; "
        r"rings' lost elements: rx (\d+), tx (\d+)\)", out).groups())
    assert sent > 0 and sent == delivered + lost, out
    assert lost >= 1       # fwd's crash from inside happens with a burst in hand
    assert 1 <= given_back <= lost
    assert rx_lost + tx_lost <= lost
    free, count = map(int, re.search(r"pool: (\d+) of (\d+) objects free", out).groups())
    assert free == count
    assert "in rings: rx 0, tx 0" in out and "bad headers 0" in out and "(misses 0)" in out

    # Nothing left running: every worker the primary started has ended, and
    # the primary stopped cleanly (the runtime_dir fixture also looks for
    # strays).
    assert "forkhost primary: stopped (prefix 'l2f')" in out
    assert "run: primary exited 0" in out
    pids = {int(p) for p in re.findall(r"worker \w+ (?:started|restarted) \(pid (\d+)", err)}
    assert len(pids) == 3 + 6
    assert all(ended(p) for p in pids)
