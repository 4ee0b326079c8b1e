"""The leak soak: LAUNCHES launches of every kind (tests/fhtest.py's
launch_mix: Python and native entries, forkhost.launch() and forkhost-run,
one in 20 refused), each waited for, after a warm-up; then the template's
and the primary's fds (settled) and RSS must be as before, no zombie
under either, the template single-threaded, INFO's `launched` grown by the
launches that were not refused."""

from __future__ import annotations

import tempfile
import time

from fhtest import build_native_so, launch_mix

from .common import (RSS_SLACK, Result, info, mib, primary_settled, runtime, sample,
                     serves, template_settled, zombies_of)

WARM_UP = 100


def run(launches: int = 10_000) -> Result:
    res = Result("leak soak", counts={"launches": launches})
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fhs-so-") as d, runtime(res) as rt:
        so = build_native_so(d)
        p = rt.primary()
        res.check("the run itself", "completes",
                  lambda: _soak(p, so, launches, res) or "completed")
        res.check("the prefix keeps serving", "a launch and an IPC request after",
                  lambda: serves(p))
    res.duration = time.monotonic() - t0
    return res


def _soak(p, so: str, n: int, res: Result) -> None:
    launch_mix(p.prefix, p.runtime_dir, p.env, so, WARM_UP)
    tf0, pf0 = template_settled(p), primary_settled(p)
    _, tr0 = sample(p.template_pid)
    _, pr0 = sample(p.pid)
    before = info(p)["launched"]
    t1 = time.monotonic()
    refused = launch_mix(p.prefix, p.runtime_dir, p.env, so, n)
    elapsed = time.monotonic() - t1
    tf1, pf1 = template_settled(p), primary_settled(p)
    _, tr1 = sample(p.template_pid)
    _, pr1 = sample(p.pid)
    inf = info(p)
    launched = inf["launched"] - before
    res.figures.update({
        "launches": f"{n:,} ({refused:,} refused by design) after a warm-up of {WARM_UP}",
        "template fds before/after": f"{tf0} / {tf1}",
        "template RSS before/after": f"{mib(tr0)} / {mib(tr1)}",
        "primary fds before/after": f"{pf0} / {pf1}",
        "primary RSS before/after": f"{mib(pr0)} / {mib(pr1)}",
        "duration": f"{elapsed:.1f} s ({n / elapsed:,.0f} launches/s)",
    })

    def check(cond, text):
        assert cond, text
        return text

    res.check("template fds flat", "equal", lambda: check(tf0 == tf1, f"{tf0} -> {tf1}"))
    res.check("primary fds flat", "equal", lambda: check(pf0 == pf1, f"{pf0} -> {pf1}"))
    res.check("template RSS flat", f"grows by at most {mib(RSS_SLACK)}",
              lambda: check(tr1 - tr0 <= RSS_SLACK, f"{mib(tr0)} -> {mib(tr1)}"))
    res.check("primary RSS flat", f"grows by at most {mib(RSS_SLACK)}",
              lambda: check(pr1 - pr0 <= RSS_SLACK, f"{mib(pr0)} -> {mib(pr1)}"))
    res.check("no zombie, one thread", "none under the template or the primary; the "
              "template single-threaded",
              lambda: check(not zombies_of(p.template_pid) and not zombies_of(p.pid)
                            and inf["threads"] == 1, f"threads {inf['threads']}"))
    res.check("every launch counted", "INFO launched grows by the launches not refused",
              lambda: check(launched == n - refused, f"+{launched} of {n - refused}"))
