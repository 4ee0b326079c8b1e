"""When a process dies, what it held in the arena comes back (docs/shm.md,
"When a process dies"): a tracked mempool's objects held by a secondary
killed with SIGKILL, with the ones it had put in transit in a bound ring
left there; a hash table whose writer died holding the lock.  The primary
does it by itself after the template reports the death, says so in one
log line and a forkhost.reclaim notice, and `forkhost ps` shows it.  The
C library's own tests kill producers and consumers inside ring calls
hundreds of times (csrc/tests/test_ring_kill.c, test_mempool.c)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from fhtest import FIXTURES, LineReader, reap
from shmtest import fixture_run, fixture_start, fixtures_primary


@pytest.fixture
def primary(runtime_dir):
    with fixtures_primary(runtime_dir) as p:
        yield p


def run(primary, name, *args):
    return fixture_run(primary, "shmown", name, *args)


def start(primary, name):
    return fixture_start(primary, "shmown", name)


def ps_json(primary):
    r = subprocess.run([sys.executable, "-m", "forkhost", "ps", "--json"],
                       env=primary.env, cwd=FIXTURES, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_killed_holder_objects_come_back(primary):
    run(primary, "setup")
    listener = start(primary, "listen")
    holder = None
    try:
        assert LineReader(listener.stdout).readline() == b"listening\n"
        holder = start(primary, "hold")
        pid = int(LineReader(holder.stdout).readline())
        os.kill(pid, signal.SIGKILL)
        assert holder.wait(30) == -signal.SIGKILL     # as if run directly
        after = json.loads(run(primary, "after"))
        # The 5 it held came back; the 5 it had enqueued stayed in the
        # ring (in transit, not its own) and were drained by `after`.
        assert after == {"recovered": 5, "drained": 5, "avail": 64, "count": 64}
        out, err = listener.communicate(timeout=60)
        note = json.loads(out.decode().splitlines()[-1])
        assert note["pid"] == pid
        assert note["reclaimed"]["mempool objects"] == 5
    finally:
        reap(listener, holder)
    rows = [r for r in ps_json(primary) if r["role"] == "reclaim"]
    assert [r["pid"] for r in rows] == [pid]
    assert rows[0]["reclaimed"]["mempool objects"] == 5


def test_writer_killed_holding_the_lock(primary):
    run(primary, "setup")
    r = primary.run("shmown:crash_in_add", cwd=FIXTURES)
    assert r.returncode == 99, r.stderr
    after = json.loads(run(primary, "table_after"))
    # The half-done add is rolled back or forward: k1 there or not, whole.
    assert after["repairs"] == 1 and after["count"] in (2, 3), after
    rows = [x for x in ps_json(primary) if x["role"] == "reclaim"]
    assert len(rows) == 1 and rows[0]["reclaimed"]["hash writer locks"] == 1


def test_clean_exit_reclaims_nothing(primary):
    """A secondary that ends with status 0 is not looked at: no report."""
    run(primary, "setup")
    run(primary, "after")
    assert [x for x in ps_json(primary) if x["role"] == "reclaim"] == []
