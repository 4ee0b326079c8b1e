"""Concurrent clients against --max-secondaries: N forkhost-run clients at
once on a primary whose cap is MAX; each secondary (stressfix:hold) holds
until the suite closes the stdin they share, so that every client has been
either served (its secondary runs) or refused before any secondary ends.
Every client must then exit 0 (served) or 125 with one documented line
(the cap, or the template's limit on connections waiting), no more than
MAX - (idle pool members) served at once, at least one refused when N >
MAX, and afterwards nothing left: a full pool, no zombie, the template's
and the primary's fds as before."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from fhtest import wait_until

from .common import (FIXTURES, Result, info, my_children, primary_settled, runner,
                     runtime, serves, template_settled)

# The refusals a client of a crowded template may print (csrc/lib/template.c):
# the cap, and the limits on connections waiting (in all, per process, per uid).
REFUSALS = ("too many secondaries: the template of prefix",
            "the template is busy: ")


def run(clients=(200,), max_secondaries: int = 50) -> Result:
    res = Result("concurrent clients", counts={"clients": list(clients),
                                               "max_secondaries": max_secondaries})
    t0 = time.monotonic()
    with runtime(res) as rt:
        p = rt.primary(args=("--max-secondaries", str(max_secondaries)))
        for n in clients:
            res.check(f"{n} clients, --max-secondaries {max_secondaries}",
                      "each served (exit 0) or refused (125, one documented line); "
                      "nothing left behind",
                      lambda n=n: _round(p, n, max_secondaries, res))
    res.duration = time.monotonic() - t0
    return res


def _round(p, n: int, cap: int, res: Result) -> str:
    tf0, pf0 = template_settled(p), primary_settled(p)
    clients = []
    r, w = os.pipe2(os.O_CLOEXEC)
    t1 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fhs-load-") as d:
        try:
            for i in range(n):
                with open(os.path.join(d, f"{i}.err"), "wb") as err:
                    clients.append(subprocess.Popen(
                        [runner(), "--connect-timeout", "inf", "stressfix:hold"],
                        env=p.env, cwd=FIXTURES, stdin=r, stdout=subprocess.DEVNULL,
                        stderr=err))
            os.close(r)
            r = None
            peak = [0]

            def decided():
                running = {s["client_pid"] for s in info(p)["secondaries"]}
                peak[0] = max(peak[0], len(running))
                return all(c.pid in running or c.poll() is not None for c in clients)

            wait_until(decided, timeout=300, what="every client to be served or refused",
                       interval=0.05)
        finally:
            if r is not None:
                os.close(r)
            os.close(w)                     # release every secondary
            for c in clients:
                c.wait(120)
        elapsed = time.monotonic() - t1
        served = refused = 0
        bad = []
        for i, c in enumerate(clients):
            with open(os.path.join(d, f"{i}.err"), "rb") as f:
                err = f.read()
            if c.returncode == 0 and not err:
                served += 1
            elif (c.returncode == 125 and err.count(b"\n") == 1
                  and any(x.encode() in err for x in REFUSALS)):
                refused += 1
            else:
                bad.append((c.returncode, err[:200]))
    assert not bad, f"{len(bad)} clients neither served nor refused cleanly: {bad[:3]}"
    assert not my_children(), f"children left: {my_children()}"
    assert peak[0] <= cap, f"{peak[0]} secondaries at once, cap {cap}"
    assert n <= cap or refused > 0, "nobody refused past the cap"
    tf1, pf1 = template_settled(p), primary_settled(p)
    assert (tf0, pf0) == (tf1, pf1), f"fds: template {tf0} -> {tf1}, primary {pf0} -> {pf1}"
    serves(p)
    res.figures[f"{n} clients"] = (f"{served} served, {refused} refused, at most "
                                   f"{peak[0]} at once; template fds {tf0} -> {tf1}, "
                                   f"primary fds {pf0} -> {pf1}; {elapsed:.1f} s")
    return f"{served} served, {refused} refused (peak {peak[0]} running)"
