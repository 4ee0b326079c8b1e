"""forkhost.shm.heap (the shared heap, C's fh_malloc family) and
forkhost.shm.array (named ndarrays), across real processes: three
secondaries run random malloc/free calls against one model (hypothesis),
each freeing blocks the others allocated; a secondary killed holding the
heap lock, and at each step of a call; arrays written in one secondary and
read in another and in the primary.  Entries: tests/fixtures/shm_heap_fix.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhtest import FIXTURES, LineReader, PrimaryProc, leaves_nothing, module_primary, reap
from forkhost._native import lib

# numpy in a secondary would start OpenBLAS's threads for nothing.
NP_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
HDR = lib.FH_HEAP_HDR_SIZE


# Room for the model's big blocks (each its own segment) at once.
ARENA = ("--arena-size", "512M")


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    with module_primary(tmp_path_factory, ARENA) as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: its tests check per-process statistics, or
    heap-wide ones as differences and sums, which what other tests left in
    the heap does not change, and leave no secondary running.  A test that
    counts what the whole heap holds (after a crash) has own_primary."""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.fixture
def own_primary(runtime_dir):
    p = PrimaryProc(runtime_dir, args=ARENA)
    yield p
    code, _, err = p.stop()
    assert code == 0, f"primary exited {code}: {err}"


def run(primary, name, *args, expect=0):
    r = primary.run(f"shm_heap_fix:{name}", *args, cwd=FIXTURES, extra_env=NP_ENV)
    assert r.returncode == expect, (
        f"{name} {args} exited {r.returncode}, expected {expect}:\n"
        f"{r.stdout.decode(errors='replace')}{r.stderr.decode(errors='replace')}")
    return r


class Server:
    """A secondary running shm_heap_fix:serve: one heap call per line."""

    def __init__(self, primary):
        self.proc = primary.popen("shm_heap_fix:serve", stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, cwd=FIXTURES,
                                  extra_env=NP_ENV)
        self.lines = LineReader(self.proc.stdout)
        self.pid = self._reply()["pid"]

    def _reply(self) -> dict:
        line = self.lines.readline(60)
        assert line, f"server exited {self.proc.wait(30)}"
        return json.loads(line)

    def __call__(self, *cmd) -> dict:
        self.proc.stdin.write((" ".join(map(str, cmd)) + "\n").encode())
        self.proc.stdin.flush()
        return self._reply()

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0
        reap(self.proc)


@pytest.fixture
def servers(primary):
    started = []
    try:
        for _ in range(3):
            started.append(Server(primary))
        yield started
        for s in started:
            s.close()
    finally:
        reap(*(s.proc for s in started))


SIZES = st.one_of(st.integers(1, 5000), st.integers(1, 3 << 19))
OPS = st.lists(st.one_of(
    st.tuples(st.just("malloc"), st.integers(0, 2), SIZES),
    st.tuples(st.just("aligned"), st.integers(0, 2),
              st.tuples(st.integers(1, 5000), st.integers(7, 16))),
    st.tuples(st.just("calloc"), st.integers(0, 2),
              st.tuples(st.integers(1, 40), st.integers(1, 300))),
    st.tuples(st.just("realloc"), st.integers(0, 2),
              st.tuples(st.integers(0, 10**6), SIZES)),
    st.tuples(st.just("free"), st.integers(0, 2), st.integers(0, 10**6)),
    st.tuples(st.just("refree"), st.integers(0, 2), st.integers(0, 10**6)),
), max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_calls_from_three_secondaries_against_a_model(servers, ops):
    """Blocks any process allocated, freed by any process: contents kept
    (no overlap), refused frees change nothing, and the per-process and
    heap-wide statistics move exactly as the model says."""
    before = servers[0]("stats")
    live = []            # [addr, size, usable, fill]
    freed = []           # addresses freed in this example
    moves = {s.pid: [0, 0, 0, 0] for s in servers}   # allocs, bytes, frees, bytes
    for n, (op, who, arg) in enumerate(ops):
        s = servers[who]
        fill = n % 251 + 1
        if op in ("malloc", "aligned", "calloc"):
            if op == "malloc":
                size, r = arg, s("malloc", arg, fill)
            elif op == "aligned":
                size, r = arg[0], s("malloc", arg[0], fill, 1 << arg[1])
            else:
                size, r = arg[0] * arg[1], s("calloc", *arg, fill)
            assert r["addr"] % 64 == 0 and r["usable"] >= size
            live.append([r["addr"], size, r["usable"], fill])
            moves[s.pid][0] += 1
            moves[s.pid][1] += r["usable"]
        elif op == "realloc" and live:
            # Any process resizes any block; one that keeps its place and
            # its size (nothing worth giving back) moves no counter, any
            # other counts as an allocation of the new and a free of the old.
            i, new = arg[0] % len(live), arg[1]
            addr, size, usable, old_fill = live[i]
            r = s("realloc", addr, size, old_fill, new, fill)
            assert r["addr"] % 64 == 0 and r["usable"] >= new
            if (r["addr"], r["usable"]) != (addr, usable):
                moves[s.pid] = [m + d for m, d in
                                zip(moves[s.pid], (1, r["usable"], 1, usable))]
            if r["addr"] != addr:
                freed.append(addr)
            live[i] = [r["addr"], new, r["usable"], fill]
        elif op == "free" and live:
            addr, size, usable, fill = live.pop(arg % len(live))
            assert s("check", addr, size, fill)["ok"], "block overwritten"
            s("free", addr)
            freed.append(addr)
            moves[s.pid][2] += 1
            moves[s.pid][3] += usable
        elif op == "refree" and freed:
            addr = freed[arg % len(freed)]
            if all(b[0] != addr for b in live):       # not handed out again
                r = s("refree", addr)
                assert r["errno"] == 22 and "not a block in use" in r["msg"], r
    spans = sorted((a, a + u) for a, _, u, _ in live)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end + HDR <= start, "blocks overlap"
    for i, (addr, size, usable, fill) in enumerate(live):
        s = servers[i % 3]
        assert s("check", addr, size, fill)["ok"], "block overwritten"
        s("free", addr)
        moves[s.pid][2] += 1
        moves[s.pid][3] += usable
    servers[1]("validate")
    after = servers[2]("stats")
    assert after["heap"]["alloc_count"] == before["heap"]["alloc_count"]
    assert after["heap"]["alloc_bytes"] == before["heap"]["alloc_bytes"]
    for s in servers:
        b = before["procs"].get(str(s.pid), {})
        a = after["procs"][str(s.pid)] if any(moves[s.pid]) else \
            after["procs"].get(str(s.pid), {})
        got = [a.get(k, 0) - b.get(k, 0) for k in
               ("alloc_count", "alloc_bytes", "free_count", "free_bytes")]
        assert got == moves[s.pid], (s.pid, got, moves[s.pid])
    procs = after["procs"].values()
    assert sum(p["alloc_count"] - p["free_count"] for p in procs) == \
        after["heap"]["alloc_count"]
    assert sum(p["alloc_bytes"] - p["free_bytes"] for p in procs) == \
        after["heap"]["alloc_bytes"]


def test_segment_table_full_is_no_space_and_freeing_gives_segments_back(primary):
    """Big blocks, each with a segment of its own, fill the heap's segment
    table well before the arena (512M) is full: NoSpaceError (ENOBUFS)
    that says so.  Freed, their segments go back to the arena."""
    n = int(run(primary, "segments_full").stdout)
    assert n > 0


def test_blocks_in_one_secondary(primary):
    mine = json.loads(run(primary, "basics").stdout)
    assert mine["alloc_count"] >= 8 and mine["alloc_count"] == mine["free_count"]


def test_a_secondary_killed_holding_the_heap_lock(own_primary):
    primary = own_primary       # it counts every block in the heap
    holder = primary.popen("shm_heap_fix:lock_and_wait", stdout=subprocess.PIPE,
                           cwd=FIXTURES)
    try:
        word, pid = LineReader(holder.stdout).readline(60).split()
        assert word == b"locked"
        os.kill(int(pid), signal.SIGKILL)
        assert holder.wait(60) != 0
    finally:
        reap(holder)
    got = json.loads(run(primary, "after_crash").stdout)
    assert got["heap"]["alloc_count"] == 0


@pytest.mark.parametrize("step", range(1, lib.FH_HEAP_CRASH_RESIZE + 1))
def test_killed_at_each_step_of_a_call(own_primary, step):
    primary = own_primary       # one dead process's blocks in the whole heap
    r = run(primary, "crash", step, expect=99)
    assert r.stderr == b"", r.stderr
    got = json.loads(run(primary, "after_crash").stdout)
    heap, procs = got["heap"], got["procs"]
    assert sum(p["alloc_count"] - p["free_count"] for p in procs.values()) == \
        heap["alloc_count"]
    # The dead process's own blocks stay allocated to it (b, d, and the
    # block of a malloc that committed); nothing else is.
    dead = [p for pid, p in procs.items() if p["alloc_count"] > p["free_count"]]
    assert len(dead) == 1
    held = dead[0]["alloc_count"] - dead[0]["free_count"]
    committed_alloc = step in (lib.FH_HEAP_CRASH_ALLOC, lib.FH_HEAP_CRASH_ALLOC_STAT)
    committed_free = step in (lib.FH_HEAP_CRASH_FREE_STAT, lib.FH_HEAP_CRASH_MERGE)
    assert held == 2 + committed_alloc - committed_free, (step, dead)


def test_arrays_written_in_one_secondary_read_in_another_and_the_primary(runtime_dir):
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), **NP_ENV)
    r = subprocess.run([sys.executable, str(FIXTURES / "shm_heap_primary.py"), "hp",
                        runtime_dir], capture_output=True, timeout=120, env=env,
                       cwd=FIXTURES)
    assert r.returncode == 0, r.stderr.decode()
    got = json.loads(r.stdout)
    for name in ("t.mz", "t.heap"):
        g = got[name]
        assert g["writer"] == g["reader"] == g["primary"], g
        assert g["heap"] is g["lookup_heap"] is (name == "t.heap")
    assert got["t.prim"]["primary"] == got["t.prim"]["reader"]


def test_array_errors(primary):
    assert run(primary, "array_errors").stdout == b"array errors ok\n"


def test_two_secondaries_make_the_same_array_at_once(primary):
    procs = [primary.popen("shm_heap_fix:array_write", "t.race", stdout=subprocess.PIPE,
                           cwd=FIXTURES, extra_env=NP_ENV) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
    finally:
        reap(*procs)
    addrs = {json.loads(o)["addr"] for o in outs}
    assert len(addrs) == 1, outs


ATTACH = """
import json, sys
import forkhost.shm as shm
from forkhost.shm import heap
try:
    shm.attach(sys.argv[1], sys.argv[2])
except shm.AttachError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
b = heap.malloc(300)
b.buffer()[:] = bytes(range(256)) + bytes(44)
x = shm.array("t.att", (5,), "int32", heap=True)
x[:] = [1, 2, 3, 4, 5]
heap.validate()
print(json.dumps({"addr": b.addr, "pid": __import__("os").getpid()}))
"""


def test_a_classically_attached_process_allocates_a_secondary_frees(primary):
    for _ in range(5):        # a fresh process's ASLR may overlap the arena
        r = subprocess.run([sys.executable, "-c", ATTACH, primary.prefix,
                            primary.runtime_dir], capture_output=True, timeout=60,
                           cwd=FIXTURES, env=dict(os.environ, **NP_ENV))
        if r.returncode != 2:
            break
    assert r.returncode == 0, r.stderr.decode()
    made = json.loads(r.stdout)
    s = Server(primary)
    try:
        assert s("read", made["addr"], 256)["hex"] == bytes(range(256)).hex()
        s("free", made["addr"])
        r2 = s("refree", made["addr"])
        assert r2["errno"] == 22, r2
        st = s("stats")
        assert st["procs"][str(made["pid"])]["alloc_count"] == 2    # block + array
        assert st["procs"][str(s.pid)]["free_count"] == 1
        s("validate")
    finally:
        s.close()
    out = run(primary, "array_read_att").stdout
    assert out == b"[1, 2, 3, 4, 5]\n"
