"""Many launches in a row leave the template as they found it: the same
open fds and (within a small bound) the same resident memory.

A leak of one fd or a few hundred bytes per launch is invisible in any
single test and fatal to a long-running primary.  No timing is measured:
only what the template holds after a warm-up and after a thousand more
launches of every kind (Python and native entries, forkhost.launch() and
forkhost-run, launches the template refuses).
"""

from __future__ import annotations

import os
import subprocess

import psutil

import forkhost
from fhtest import FIXTURES, RUNNER, children_of, wait_until

POOL = 2                  # the default --pool of a primary
RSS_SLACK = 1 << 20       # what the template's RSS may grow by


def pool_title(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"forkhost pool [")
    except FileNotFoundError:
        return False


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled(primary) -> int:
    """Wait until the template is idle with a full pool (no secondary left
    to reap, no member missing) and its fd count holds still; return it."""
    t = primary.template_pid

    def idle():
        kids = children_of(t)
        return len(kids) == POOL and all(pool_title(k) for k in kids)

    wait_until(idle, what="the template to be idle with a full pool")
    last = []

    def steady():
        last.append(fd_count(t))
        return len(last) >= 3 and last[-1] == last[-2] == last[-3]

    wait_until(steady, what="the template's fd count to hold still", interval=0.1)
    return last[-1]


def launches(primary, native_so, n: int) -> None:
    """n launches of every kind, each waited for."""
    kw = dict(prefix=primary.prefix, runtime_dir=primary.runtime_dir, cwd=FIXTURES,
              stdout=forkhost.DEVNULL, stderr=forkhost.DEVNULL)
    for i in range(n):
        k = i % 20
        if k < 14:
            with forkhost.launch("fhfix:exit_with", ["0"], **kw) as sec:
                assert sec.wait(30) == 0
        elif k < 17:
            with forkhost.launch(native_so, ["exit", "3"], **kw) as sec:
                assert sec.wait(30) == 3
        elif k < 19:
            r = subprocess.run([RUNNER, "fhfix:exit_with", "5"], env=primary.env,
                               cwd=FIXTURES, timeout=60)
            assert r.returncode == 5
        else:
            try:
                forkhost.launch("no_such_script.py", **kw)
            except forkhost.RefusedError as err:
                assert err.exit_code == 127
            else:
                raise AssertionError("a launch of a missing script was not refused")


def test_thousand_launches_leave_the_template_flat(primary, native_so):
    t = psutil.Process(primary.template_pid)
    launches(primary, native_so, 100)          # warm-up: caches, allocator arenas
    fds_before = settled(primary)
    rss_before = t.memory_info().rss
    launches(primary, native_so, 1000)
    fds_after = settled(primary)
    rss_after = t.memory_info().rss
    assert fds_after == fds_before, f"template fds: {fds_before} -> {fds_after}"
    assert rss_after - rss_before <= RSS_SLACK, \
        f"template RSS grew by {(rss_after - rss_before) / 1024:.0f} KiB"
    assert t.num_threads() == 1
    info = forkhost.info(primary.prefix, primary.runtime_dir)
    assert info["launched"] >= 1100 - 55     # the refused ones are not launches
