"""Many launches in a row leave the template as they found it: the same
open fds and (within a small bound) the same resident memory.

A leak of one fd or a few hundred bytes per launch is invisible in any
single test and fatal to a long-running primary.  No timing is measured:
only what the template holds after a warm-up and after a thousand more
launches of every kind (Python and native entries, forkhost.launch() and
forkhost-run, launches the template refuses).
"""

from __future__ import annotations

import psutil
import pytest

import forkhost
from fhtest import launch_mix, settled

RSS_SLACK = 1 << 20       # what the template's RSS may grow by


def launches(primary, native_so, n: int) -> None:
    launch_mix(primary.prefix, primary.runtime_dir, primary.env, native_so, n)


@pytest.mark.heavy
def test_thousand_launches_leave_the_template_flat(primary, native_so):
    t = psutil.Process(primary.template_pid)
    launches(primary, native_so, 100)          # warm-up: caches, allocator arenas
    fds_before = settled(primary.template_pid)
    rss_before = t.memory_info().rss
    launches(primary, native_so, 1000)
    fds_after = settled(primary.template_pid)
    rss_after = t.memory_info().rss
    assert fds_after == fds_before, f"template fds: {fds_before} -> {fds_after}"
    assert rss_after - rss_before <= RSS_SLACK, \
        f"template RSS grew by {(rss_after - rss_before) / 1024:.0f} KiB"
    assert t.num_threads() == 1
    info = forkhost.info(primary.prefix, primary.runtime_dir)
    assert info["launched"] >= 1100 - 55     # the refused ones are not launches
