"""IPC between a primary and its secondaries (docs/ipc.md), end to end.

A real primary (fixtures/ipc_primary.py, driven by JSON lines) and real
secondaries launched with forkhost-run: fixtures/ipc_sec.py and its C twin
fixtures/ipc_sec.c run the same commands and print the same lines, so every
test body runs for Python and native secondaries alike.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import forkhost
from forkhost import ipc
from fhtest import (FIXTURES, RUNNER, LineReader, end_template, ended, forkhost_flags,
                    module_primary, no_secondaries_left, reap, wait_until)

KINDS = ["py", "c"]


@pytest.fixture(scope="session")
def ipc_sec_so(tmp_path_factory):
    flags = forkhost_flags()
    out = tmp_path_factory.mktemp("ipc_native") / "ipc_sec.so"
    subprocess.run(["cc", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-pthread",
                    "-o", str(out), str(FIXTURES / "ipc_sec.c"), *flags], check=True)
    return str(out)


class IPCPrimary:
    """fixtures/ipc_primary.py: a Primary with IPC and recording actions."""

    def __init__(self, runtime_dir: str, prefix: str = "i", args=()):
        self.env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir,
                        FORKHOST_PREFIX=prefix, PYTHONPATH=str(FIXTURES))
        self.proc = subprocess.Popen(
            [sys.executable, str(FIXTURES / "ipc_primary.py"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=str(FIXTURES))
        self.out = LineReader(self.proc.stdout)
        line = self.out.readline(30)
        if not line:
            err = self.proc.stderr.read().decode()
            reap(self.proc)
            raise AssertionError(f"ipc primary did not start: {err}")
        self.ready = json.loads(line)
        self.pid = self.ready["pid"]
        self.template_pid = self.ready["template_pid"]
        self.secs: list[Sec] = []

    def cmd(self, op: str, wait: float = 30, **kw) -> dict:
        self.start_cmd(op, **kw)
        return self.result(wait)

    def start_cmd(self, op: str, **kw) -> None:
        """A command whose answer result() reads (meanwhile the test acts)."""
        self.proc.stdin.write(json.dumps(dict(kw, op=op)).encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, wait: float = 30) -> dict:
        line = self.out.readline(wait)
        assert line, f"the primary died: {self.proc.stderr.read().decode()}"
        return json.loads(line)

    def wait_members(self, n: int) -> list[int]:
        got = self.cmd("wait_members", n=n)
        assert got["ok"], got
        return got["members"]

    def log(self, name: str | None = None) -> list[dict]:
        return [e for e in self.cmd("log")["log"] if name is None or e["name"] == name]

    def stats(self) -> dict:
        return self.cmd("stats")["stats"]

    def launch(self, entry: str, *args, wait_ready: bool = True) -> "Sec":
        s = Sec(self, entry, args, wait_ready)
        self.secs.append(s)
        return s

    def stop(self) -> dict:
        out = self.cmd("stop", wait=60)
        self.proc.stdin.close()
        self.proc.wait(30)
        return out

    def close(self) -> str:
        for s in self.secs:
            s.close()
        if self.proc.poll() is None:
            try:
                self.stop()
            except (AssertionError, BrokenPipeError, ValueError):
                pass
        err = self.proc.stderr.read().decode()
        reap(self.proc)
        return err


class Sec:
    """One secondary (ipc_sec.py or ipc_sec.so) behind forkhost-run."""

    def __init__(self, prim: IPCPrimary, entry: str, args, wait_ready: bool):
        self.proc = subprocess.Popen([RUNNER, entry, *args], env=prim.env,
                                     cwd=str(FIXTURES), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = LineReader(self.proc.stdout)
        self.lines: list[str] = []
        self.pid = 0
        if wait_ready:
            words = self.expect("ready")
            self.pid = int(words[1])

    def expect(self, prefix: str, timeout: float = 20) -> list[str]:
        """The first line (seen or to come) whose first word is prefix."""
        for i, line in enumerate(self.lines):
            if line.split()[0] == prefix:
                del self.lines[i]
                return line.split()
        deadline = time.monotonic() + timeout
        while True:
            raw = self.out.readline(max(0.01, deadline - time.monotonic()))
            if not raw:
                raise AssertionError(f"EOF waiting for {prefix!r}; had {self.lines}; "
                                     f"stderr: {self.proc.stderr.read().decode()}")
            line = raw.decode().strip()
            if line.split()[0] == prefix:
                return line.split()
            self.lines.append(line)

    def none_of(self, prefix: str, wait: float = 0.3) -> None:
        try:
            words = self.expect(prefix, wait)
        except AssertionError:
            return
        raise AssertionError(f"unexpected line {words}")

    def cmd(self, line: str, prefix: str, timeout: float = 20) -> list[str]:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.expect(prefix, timeout)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        reap(self.proc)


@pytest.fixture
def own_prim(runtime_dir):
    """An IPC primary of the test's own: for a test that restarts its IPC,
    or looks at exit notices (which a shared primary's earlier secondaries
    may still send) or at the log that notices go to."""
    p = IPCPrimary(runtime_dir)
    yield p
    _close_checked(p)


def _close_checked(p: IPCPrimary) -> tuple[str, str]:
    err = p.close()
    assert "Traceback" not in err or "failed on purpose" in err, err
    return "", err


@pytest.fixture(scope="module")
def _module_prim(tmp_path_factory):
    with module_primary(tmp_path_factory, make=IPCPrimary, stop=_close_checked) as p:
        yield p


def _no_secondaries_nor_members(p: IPCPrimary) -> None:
    no_secondaries_left("i", p.env["FORKHOST_RUNTIME_DIR"])
    got = p.cmd("wait_members", n=0, timeout=5)
    assert got["ok"], f"IPC members left: {got['members']}"


@pytest.fixture
def prim(_module_prim):
    """The module's IPC primary, for a test that starts from a clean one:
    no secondary and no IPC member (each test's have ended), the log
    emptied, its stats compared as deltas.  After the test, the
    secondaries it launched are ended and must be gone, and so must its
    IPC members."""
    p = _module_prim
    assert p.proc.poll() is None, f"the shared IPC primary died: {p.proc.returncode}"
    _no_secondaries_nor_members(p)
    p.log()                                   # empties it
    p.secs = []
    yield p
    for s in p.secs:
        s.close()
    p.secs = []
    _no_secondaries_nor_members(p)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def entry(kind, ipc_sec_so):
    return "ipc_sec:main" if kind == "py" else ipc_sec_so


def prefix_of(kind: str) -> bytes:
    return b"py:" if kind == "py" else b"c:"


# -- messages -----------------------------------------------------------------

def test_message_each_way(prim, entry):
    s = prim.launch(entry)
    assert s.cmd("send note " + b"hello".hex(), "sent") == ["sent", "1"]
    got = wait_until(lambda: prim.log("note"), 10, "the note")
    assert got == [{"name": "note", "pid": s.pid, "param": b"hello".hex(), "nfds": 0,
                    "thread": "forkhost-ipc"}]
    # primary -> that one secondary, by pid
    assert prim.cmd("send", name="note", param=b"to you".hex(), to=s.pid) == {"n": 1}
    assert s.expect("note") == ["note", str(prim.pid), b"to you".hex(), "0"]
    # to a pid that is not a member: nobody
    assert prim.cmd("send", name="note", to=1) == {"n": 0}


def test_broadcast_reaches_exactly_the_live_secondaries(prim, entry, kind):
    secs = [prim.launch(entry) for _ in range(3)]
    # A secondary that never used IPC is not a member.
    other = prim.launch("fhfix:sleeper", wait_ready=False)
    assert other.expect("ready")
    pids = sorted(s.pid for s in secs)
    members = prim.cmd("members")["members"]
    assert sorted(m["pid"] for m in members) == pids
    assert all(m["secondary"] and m["ppid"] == prim.template_pid for m in members)

    dead = secs.pop(1)
    os.kill(dead.pid, signal.SIGKILL)
    assert dead.wait() == -signal.SIGKILL        # the client dies like it
    # Its connection is closed by the kernel: it is gone at once.
    assert prim.wait_members(2) == sorted(s.pid for s in secs)
    assert prim.cmd("send", name="note", param="01") == {"n": 2}
    for s in secs:
        assert s.expect("note")[2] == "01"
    other.proc.send_signal(signal.SIGTERM)      # a sleeper: it does not read stdin
    other.close()


def test_message_without_action_is_dropped_and_counted(prim, entry):
    s = prim.launch(entry)
    before = prim.stats()
    assert s.cmd("send nothing_here -", "sent") == ["sent", "1"]
    wait_until(lambda: prim.stats()["dropped"] == before["dropped"] + 1, 10,
               "the drop to be counted")
    # and the other way
    assert prim.cmd("send", name="nothing_here", to=s.pid) == {"n": 1}
    wait_until(lambda: int(dict(w.split("=") for w in s.cmd("stats", "stats")[1:])
                           ["dropped"]) == 1, 10, "the secondary's count")


# -- requests from the primary -------------------------------------------------

def test_sync_request_all_answer(prim, entry, kind):
    secs = [prim.launch(entry) for _ in range(3)]
    r = prim.cmd("request", name="echo", param=b"ping".hex(), timeout=10)
    assert (r["nb_sent"], r["nb_received"]) == (3, 3)
    assert [m["pid"] for m in r["msgs"]] == sorted(s.pid for s in secs)
    assert all(m["status"] == ipc.OK and bytes.fromhex(m["param"]) ==
               prefix_of(kind) + b"ping" for m in r["msgs"])
    # to one of them
    r = prim.cmd("request", name="echo", param="00", to=secs[0].pid)
    assert (r["nb_sent"], r["nb_received"]) == (1, 1)
    assert r["msgs"][0]["pid"] == secs[0].pid


def test_request_with_silent_secondaries_counts_the_timeout(prim, entry):
    talk = [prim.launch(entry) for _ in range(2)]
    silent = prim.launch(entry, "--silent")
    before = prim.stats()["timeouts"]
    r = prim.cmd("request", name="echo", param="aa", timeout=0.5)
    assert (r["nb_sent"], r["nb_received"]) == (3, 2)
    assert 0.5 <= r["elapsed"] < 5
    assert silent.pid not in [m["pid"] for m in r["msgs"]]
    assert sorted(m["pid"] for m in r["msgs"]) == sorted(s.pid for s in talk)
    assert prim.stats()["timeouts"] == before + 1


def test_request_to_a_secondary_that_dies_is_unanswered_at_once(prim, entry):
    ok = prim.launch(entry)
    dying = prim.launch(entry, "--die-on-request")
    before = prim.stats()["peer_died"]
    r = prim.cmd("request", name="echo", param="bb", timeout=20)
    assert (r["nb_sent"], r["nb_received"]) == (2, 1)
    assert r["msgs"][0]["pid"] == ok.pid
    assert r["elapsed"] < 5, "a dead peer must not cost the whole timeout"
    assert prim.stats()["peer_died"] == before + 1
    assert dying.wait() == 3
    assert prim.wait_members(1) == [ok.pid]


@pytest.mark.parametrize("mode", ["all", "silent", "dying"])
def test_async_request(prim, entry, mode):
    prim.launch(entry)
    extra = {"all": (), "silent": ("--silent",), "dying": ("--die-on-request",)}[mode]
    prim.launch(entry, *extra)
    timeout = 0.5 if mode == "silent" else 20
    r = prim.cmd("request_async", name="echo", param="cc", timeout=timeout)
    assert r["returned_after"] < 0.5          # it did not wait
    assert r["thread"] == "forkhost-ipc"      # the callback runs on the IPC thread
    assert r["request"] == "echo"
    assert r["nb_sent"] == 2
    assert r["nb_received"] == (2 if mode == "all" else 1)
    if mode == "silent":
        assert r["elapsed"] >= 0.5
    else:
        assert r["elapsed"] < 5


def test_request_without_action_is_answered_not_timed_out(prim, entry):
    s = prim.launch(entry, "--no-actions")
    r = prim.cmd("request", name="echo", param="dd", timeout=10)
    assert (r["nb_sent"], r["nb_received"]) == (1, 1)
    assert r["msgs"][0]["status"] == ipc.NO_ACTION
    assert "has no action 'echo'" in r["msgs"][0]["error"]
    assert r["elapsed"] < 5
    # the other way
    words = s.cmd("request nothing_here - 10000", "reply")
    assert words[1:4] == ["1", "1", str(ipc.NO_ACTION)]


def test_request_with_no_members_returns_at_once(prim):
    r = prim.cmd("request", name="echo", timeout=10)
    assert (r["nb_sent"], r["nb_received"], r["msgs"]) == (0, 0, [])
    assert r["elapsed"] < 1


# -- who answered: a reply's peer entries ------------------------------------------

ANSWERED, NO_ACTION_P, TIMED_OUT, DIED = (int(ipc.PeerStatus.ANSWERED),
                                          int(ipc.PeerStatus.NO_ACTION),
                                          int(ipc.PeerStatus.TIMED_OUT),
                                          int(ipc.PeerStatus.DIED))


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def check_peers(r: dict) -> dict[int, dict]:
    """The peer entries of a reply_json() agree with its other fields; by
    pid."""
    peers = r["peers"]
    assert len(peers) == r["nb_sent"] == len({e["pid"] for e in peers})
    with_msg = [e for e in peers if e["status"] in (ANSWERED, NO_ACTION_P)]
    assert len(with_msg) == r["nb_received"] == len(r["msgs"])
    for e in peers:
        if e["status"] in (ANSWERED, NO_ACTION_P):
            assert e["msg"] is not None and e["msg_pid"] == e["pid"], e
        else:
            assert e["msg"] is None and e["msg_pid"] is None, e
    return {e["pid"]: e for e in peers}


@pytest.mark.heavy
@pytest.mark.parametrize("op", ["request", "request_async"])
def test_reply_lists_who_answered_lacked_the_action_timed_out_or_died(prim, entry, op):
    """One broadcast request, four secondaries: one answers, one has no such
    action, one answers only after the timeout, one is killed while the
    request is pending.  Each is listed by pid and name with what became of it."""
    ok = prim.launch(entry)
    lacking = prim.launch(entry, "--no-actions")
    slow = prim.launch(entry, "--slow")
    victim = prim.launch(entry, "--silent")
    secs = (ok, lacking, slow, victim)
    names = {s.pid: comm(s.pid) for s in secs}
    prim.wait_members(4)
    before = prim.stats()
    prim.start_cmd(op, name="echo", param="ab", timeout=2)
    assert victim.expect("got") == ["got", "echo"]     # it has the request
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    r = prim.result()
    assert (r["nb_sent"], r["nb_received"]) == (4, 2)
    peers = check_peers(r)
    assert {pid: (e["status"], e["msg_status"]) for pid, e in peers.items()} == {
        ok.pid: (ANSWERED, ipc.OK), lacking.pid: (NO_ACTION_P, ipc.NO_ACTION),
        slow.pid: (TIMED_OUT, None), victim.pid: (DIED, None)}
    assert {pid: e["status_name"] for pid, e in peers.items()} == {
        ok.pid: "ANSWERED", lacking.pid: "NO_ACTION", slow.pid: "TIMED_OUT",
        victim.pid: "DIED"}
    assert {pid: e["name"] for pid, e in peers.items()} == names
    after = prim.stats()
    assert after["timeouts"] == before["timeouts"] + 1
    assert after["peer_died"] == before["peer_died"] + 1
    # the slow one answers after all: too late, counted as such
    slow.cmd("late", "late")
    wait_until(lambda: prim.stats()["late_replies"] == before["late_replies"] + 1,
               what="the slow answer")


def test_a_peer_that_never_says_no_action_is_listed_as_timed_out(prim):
    """An older peer without NO_ACTION stays silent when it has no such
    action: a raw member plays it."""
    sock = _raw_member(prim.ready["socket"])
    try:
        prim.wait_members(1)
        r = prim.cmd("request", name="echo", timeout=0.3)
        assert sock.recv(ipc.RECORD_MAX)[:8]        # the REQUEST reached it
        assert (r["nb_sent"], r["nb_received"]) == (1, 0)
        assert check_peers(r)[os.getpid()]["status"] == TIMED_OUT
        assert check_peers(r)[os.getpid()]["name"] == comm(os.getpid())
    finally:
        sock.close()


@pytest.mark.parametrize("op", ["who", "who_async"])
def test_a_secondarys_reply_lists_the_primary(prim, entry, op):
    s = prim.launch(entry)
    me = f"{prim.pid}/%d/%s/{comm(prim.pid)}"
    assert s.cmd(f"{op} echo 01 5000", op) == [op, "1", "1", "1", me % (ANSWERED, ipc.OK)]
    assert s.cmd(f"{op} nothing_here - 5000", op) == \
        [op, "1", "1", "1", me % (NO_ACTION_P, ipc.NO_ACTION)]
    assert s.cmd(f"{op} hang - 300", op) == [op, "1", "0", "1", me % (TIMED_OUT, "-")]
    assert s.cmd(f"{op} fail - 5000", op) == \
        [op, "1", "1", "1", me % (ANSWERED, ipc.ACTION_FAILED)]


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_request_to_a_primary_killed_meanwhile_lists_it_as_died(runtime_dir, how):
    """A process attached to a primary that dies while its request is
    pending: the primary is listed as DIED, at once, not at the timeout."""
    prim = IPCPrimary(runtime_dir, args=("--on-primary-death-stop",))
    got: list = []
    done = threading.Event()
    try:
        ipc.start(prefix="i", runtime_dir=runtime_dir)
        name = comm(prim.pid)

        def call():
            with ipc.request("hang", b"", timeout=60) as r:
                got.append(r)
            done.set()

        def cb(req, r):
            got.append(r)
            done.set()

        if how == "sync":
            t = threading.Thread(target=call)
            t.start()
        else:
            ipc.request_async("hang", b"", timeout=60, callback=cb)
        wait_until(lambda: prim.log("hang"), what="the request at the primary")
        os.kill(prim.pid, signal.SIGKILL)
        assert done.wait(30)
        if how == "sync":
            t.join(30)
        (r,) = got
        assert (r.nb_sent, r.nb_received, r.msgs) == (1, 0, [])
        (e,) = r.peers
        assert (e.pid, e.name, e.status, e.msg) == (prim.pid, name, ipc.PeerStatus.DIED,
                                                    None)
        assert ipc.stats()["peer_died"] >= 1
    finally:
        ipc.stop()
        prim.close()
        wait_until(lambda: ended(prim.template_pid), what="the template to end")


# -- requests from a secondary ------------------------------------------------------

def test_secondary_requests_the_primary(own_prim, entry):
    prim = own_prim
    # its `later 2` answer comes after the test, from a thread of the primary
    s = prim.launch(entry)
    words = s.cmd("request echo " + b"hi".hex() + " 5000", "reply")
    assert words[1:5] == ["1", "1", "0", b"primary:hi".hex()]
    words = s.cmd("request_async echo " + b"ho".hex() + " 5000", "async")
    assert words[1:6] == ["1", "1", "0", b"primary:ho".hex(), "onipc=1"]
    # answered later, from another thread of the primary
    words = s.cmd("request later " + b"0.3".hex() + " 5000", "reply")
    assert words[1:5] == ["1", "1", "0", b"later".hex()]
    # the action raised: an error answer, not a timeout
    words = s.cmd("request fail - 5000", "reply")
    assert words[1:4] == ["1", "1", str(ipc.ACTION_FAILED)]
    assert b"failed on purpose" in bytes.fromhex(words[4])
    # timed out: the primary answers `later` after 2 s
    words = s.cmd("request later " + b"2".hex() + " 300", "reply")
    assert words[1:3] == ["1", "0"]


@pytest.mark.heavy
def test_actions_run_while_a_sync_request_waits(prim, entry):
    """A Python requester reads its own reply (it leads); records that are
    not its reply still go to the IPC thread, which answers them at once."""
    s = prim.launch(entry)
    s.proc.stdin.write(f"request later {b'3'.hex()} 20000\n".encode())
    s.proc.stdin.flush()
    time.sleep(0.3)        # in flight: the primary answers it after 3 s
    r = prim.cmd("request", name="echo", param="ee", to=s.pid, timeout=10)
    assert (r["nb_sent"], r["nb_received"]) == (1, 1)
    assert r["elapsed"] < 2.5, "answered while the other request waited"
    assert prim.cmd("send", name="note", param="ff", to=s.pid) == {"n": 1}
    assert s.expect("note")[2] == "ff"
    assert s.expect("reply")[1:5] == ["1", "1", "0", b"later".hex()]


def test_message_right_after_a_request_is_not_held(prim, entry):
    """A requester leaves its connection masked for its next request and
    the IPC thread takes it back within milliseconds (docs/ipc.md,
    "Threads, and fork"): what the primary sends just after still arrives
    at once, not at the next request."""
    s = prim.launch(entry)
    for i in range(5):
        s.cmd("request echo - 5000", "reply")
        t0 = time.monotonic()
        assert prim.cmd("send", name="note", param=f"{i:02x}", to=s.pid) == {"n": 1}
        assert s.expect("note", 10)[2] == f"{i:02x}"
        assert time.monotonic() - t0 < 1.0


# -- fds ---------------------------------------------------------------------------

def test_fds_passed_and_usable_both_ways(prim, entry, kind):
    s = prim.launch(entry)
    # secondary -> primary: the primary writes into the pipe we sent
    words = s.cmd("send_fd fd_write", "fd_read")
    assert bytes.fromhex(words[2]) == b"written by the primary"
    # primary -> secondary (and the same fds would be copied to each member)
    got = prim.cmd("send_fd", name="fd_write", to=s.pid)
    lang = "python" if kind == "py" else "c"
    assert got == {"n": 1, "data": f"written by the {lang} secondary"}
    # and in a broadcast to two: each gets its own copy
    s2 = prim.launch(entry)
    got = prim.cmd("send_fd", name="fd_write")
    assert got["n"] == 2
    assert got["data"] == f"written by the {lang} secondary" * 2
    s2.close()


# -- checks --------------------------------------------------------------------------

def test_oversized_and_bad_names_are_rejected_at_the_sender(prim, entry):
    s = prim.launch(entry)
    assert s.cmd("oversized", "error") == ["error", "EMSGSIZE"]
    assert s.cmd("badname", "error") == ["error", "ENAMETOOLONG"]
    errors = prim.cmd("errors")
    assert all(errors.values()), errors
    assert "over the limit of 4096" in errors["oversized"]
    assert "the limit is 63" in errors["long_name"]
    assert "reserved" in errors["reserved"]
    assert "over the limit of 8" in errors["too_many_fds"]
    assert "not an open file descriptor" in errors["bad_fd"]
    # nothing of it reached anyone
    assert not [w for w in s.lines if w.startswith("note")]


def _raw_member(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(10)
    sock.connect(path)
    sock.send(ipc._encode(ipc.HELLO, b"", ipc.HELLO_BODY.pack(os.getpid(),
                                                             os.getppid(), 0, 0)))
    hdr = ipc.HDR.unpack_from(sock.recv(ipc.RECORD_MAX))
    assert hdr[2] == ipc.WELCOME
    return sock


def test_malformed_records_are_ignored_and_counted(prim):
    path = prim.ready["socket"]
    good = ipc._encode(ipc.MSG, b"note", b"after")
    bad = [
        b"short",                                                   # truncated
        struct.pack("=I", 0xDEADBEEF) + good[4:],                   # bad magic
        good[:4] + struct.pack("=H", 9) + good[6:],                 # version
        good + b"x",                                                # len
        good[:8] + struct.pack("=I", 1000) + good[12:],             # len field
        ipc._encode(0x7F, b"note", b""),                            # type
        ipc._encode(ipc.MSG, b"", b""),                             # empty name
        good[:32] + b"n" * 64 + good[96:],                          # unterminated name
        ipc._encode(ipc.REQUEST, b"note", b"", rid=0),              # request id 0
        ipc._encode(ipc.MSG, b"note", b"x" * 5000),                 # too long
    ]
    before = prim.stats()["malformed"]
    sock = _raw_member(path)
    r, w = os.pipe()
    try:
        for data in bad:
            sock.send(data)
        # fds: more than announced, more than FDS_MAX
        hdr1 = ipc._encode(ipc.MSG, b"note", b"", nfds=0)
        sock.sendmsg([hdr1], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        hdr9 = ipc._encode(ipc.MSG, b"note", b"", nfds=9)
        sock.sendmsg([hdr9], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               array.array("i", [w] * 9))])
        sock.send(good)           # the connection is still a member
        got = wait_until(lambda: prim.log("note"), 10, "the good note")
        assert [e["param"] for e in got] == [b"after".hex()]
        assert prim.stats()["malformed"] == before + len(bad) + 2
        # the primary closed the write ends that came with the bad records:
        # once ours is closed too, the read end reports EOF
        os.close(w)
        w = -1
        assert os.read(r, 1) == b""
    finally:
        sock.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def test_hello_of_another_version_is_refused_in_words(prim):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    with sock:
        sock.settimeout(10)
        sock.connect(prim.ready["socket"])
        hello = ipc._encode(ipc.HELLO, b"", ipc.HELLO_BODY.pack(os.getpid(), 1, 0, 0))
        sock.send(hello[:4] + struct.pack("=H", 2) + hello[6:])
        data = sock.recv(ipc.RECORD_MAX)
        hdr = ipc.HDR.unpack_from(data)
        assert hdr[2] == ipc.REFUSE
        assert b"IPC version mismatch: the secondary speaks 2, the primary speaks 1" \
            in data[ipc.HDR.size:]
        assert sock.recv(10) == b""


# Records only the one parser (fh_ipc_record_check) refuses, since Python
# lost its own: a name with bytes after its NUL, an id on a type that has
# none, a type the other end sends.
_HOSTILE = {
    "name after NUL": ipc._encode(ipc.MSG, b"note\0x", b"hi"),
    "MSG with an id": ipc._encode(ipc.MSG, b"note", b"hi", rid=5),
    "WELCOME from a member": ipc._encode(ipc.WELCOME, b"", bytes(16)),
}


def test_first_records_get_the_c_parsers_verdict_in_words(prim):
    from forkhost.ipc import _wire
    hello = ipc._encode(ipc.HELLO, b"", ipc.HELLO_BODY.pack(os.getpid(), 1, 0, 0))
    firsts = dict(_HOSTILE, **{"HELLO with an id": hello[:16] + struct.pack("=Q", 9)
                               + hello[24:]})
    for case, data in firsts.items():
        t, want = _wire.record_verdict(data, side=_wire.FIRST_RECORD)
        assert t == -1 and want, case
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
            s.settimeout(10)
            s.connect(prim.ready["socket"])
            s.send(data)
            reply = s.recv(ipc.RECORD_MAX)
            assert ipc.HDR.unpack_from(reply)[2] == ipc.REFUSE, case
            assert reply[ipc.HDR.size:].decode() == want, case
            assert s.recv(16) == b""


def test_a_members_hostile_records_are_counted_not_run(prim):
    from forkhost.ipc import _wire
    for data in _HOSTILE.values():
        assert _wire.record_verdict(data, side=_wire.FROM_SECONDARY)[0] == -1
    before = prim.stats()["malformed"]
    with _raw_member(prim.ready["socket"]) as sock:
        for data in _HOSTILE.values():
            sock.send(data)
        sock.send(ipc._encode(ipc.MSG, b"note", b"after"))
        got = wait_until(lambda: prim.log("note"), 10, "the good note")
        assert [e["param"] for e in got] == [b"after".hex()]
        assert prim.stats()["malformed"] == before + len(_HOSTILE)


def test_recursive_request_from_an_action_is_refused(prim, entry):
    s = prim.launch(entry)
    # the secondary's action tries a sync request
    r = prim.cmd("request", name="try_recursive", to=s.pid, timeout=10)
    assert r["nb_received"] == 1
    assert bytes.fromhex(r["msgs"][0]["param"]).startswith(b"refused: ")
    # the primary's action tries one
    words = s.cmd("request try_recursive - 10000", "reply")
    text = bytes.fromhex(words[4])
    assert text.startswith(b"refused: ") and b"would deadlock" in text
    assert r["elapsed"] < 5


# -- threads -----------------------------------------------------------------------------

def test_template_stays_single_threaded_with_ipc_running(prim, entry):
    assert "IPC is not started in this primary" in prim.ready["before_ipc"]
    s = prim.launch(entry)
    s.cmd("request echo - 5000", "reply")
    t = prim.cmd("threads")
    assert t["template"] == 1
    assert t["primary"] >= 2              # main + forkhost-ipc


def test_primary_ipc_refuses_before_the_template_exists(runtime_dir):
    p = forkhost.Primary(prefix="never", runtime_dir=runtime_dir)
    with pytest.raises(forkhost.IPCError, match="after the template is forked"):
        p.ipc()


def test_secondary_starts_its_ipc_thread_on_first_use(prim, entry):
    # A secondary has one thread until it uses IPC (test_launch checks a
    # fresh one); "ready PID THREADS" is printed right after joining.
    s = prim.launch(entry)
    assert prim.cmd("members")["members"][0]["pid"] == s.pid
    assert len(os.listdir(f"/proc/{s.pid}/task")) >= 2


# -- notices ----------------------------------------------------------------------------

def test_exit_notices_carry_pid_and_status(own_prim, entry, native_so):
    prim = own_prim
    # exit notices: only this test's secondaries may send them
    watcher = prim.launch(entry)
    done = subprocess.run([RUNNER, "fhfix:exit_with", "7"], env=prim.env,
                          cwd=str(FIXTURES), capture_output=True, timeout=30)
    assert done.returncode == 7
    words = watcher.expect("exit")
    pid = int(words[1])
    assert words[2] == "7"
    killed = subprocess.run([RUNNER, f"{native_so}:die_by", "SIGKILL"], env=prim.env,
                            cwd=str(FIXTURES), capture_output=True, timeout=30)
    assert killed.returncode == -signal.SIGKILL
    words = watcher.expect("exit")
    assert words[2] == str(-signal.SIGKILL) and int(words[1]) != pid
    # the primary's own action heard both (waiting for both: the exit
    # notices reach the watcher and the primary independently, and may
    # reach the primary in two polls of its log, which hands each record
    # over once: keep what each poll got)
    got: list[dict] = []

    def both() -> bool:
        got.extend(prim.log(ipc.EXIT_NOTICE))
        return len(got) >= 2
    wait_until(both, 10, "the primary's notices")
    assert [e["code"] for e in got] == [7, -signal.SIGKILL]


def test_ipc_restarted_in_the_primary_keeps_exit_notices(own_prim):
    prim = own_prim
    # it restarts the primary's IPC, and counts exit notices
    assert prim.cmd("restart") == {"socket": prim.ready["socket"], "started": True}
    done = subprocess.run([RUNNER, "fhfix:exit_with", "5"], env=prim.env,
                          cwd=str(FIXTURES), capture_output=True, timeout=30)
    assert done.returncode == 5
    got = wait_until(lambda: prim.log(ipc.EXIT_NOTICE), 10, "the notice")
    assert [e["code"] for e in got] == [5]


def test_exit_notices_span_a_reload(own_prim):
    """After a reload both generations' secondaries are the template's:
    each exit is told once, with its status, whichever template reaps it."""
    prim = own_prim
    old = prim.launch("ipc_sec:main")          # the first generation's, a member
    r = prim.cmd("reload")
    assert (r["generation"], r["old_template_pid"]) == (2, prim.ready["template_pid"])
    new = prim.launch("ipc_sec:main")          # the second generation's
    done = subprocess.run([RUNNER, "fhfix:exit_with", "7"], env=prim.env,
                          cwd=str(FIXTURES), capture_output=True, timeout=30)
    assert done.returncode == 7
    assert old.expect("exit")[2] == "7" and new.expect("exit")[2] == "7"
    for leaving, staying in ((new, old), (old, None)):
        leaving.proc.stdin.write(b"quit\n")    # its own template reports its end
        leaving.proc.stdin.flush()
        assert leaving.wait() == 0
        if staying is not None:
            assert staying.expect("exit")[1:] == [str(leaving.pid), "0"]
            staying.none_of("exit")             # once, not again without a status
    got: list[dict] = []

    def three() -> bool:
        got.extend(prim.log(ipc.EXIT_NOTICE))
        return len(got) >= 3
    wait_until(three, 10, "the primary's notices")
    assert [(e["pid"], e["code"]) for e in got[1:]] == [(new.pid, 0), (old.pid, 0)]
    assert got[0]["code"] == 7


def test_attached_process_exit_is_reported_without_status(own_prim, entry):
    prim = own_prim
    # the watcher's first exit notice must be this test's
    watcher = prim.launch(entry)
    sock = _raw_member(prim.ready["socket"])
    prim.wait_members(2)
    sock.close()                # gone without BYE: it "exited", status unknown
    assert watcher.expect("exit") == ["exit", str(os.getpid()), "unknown"]


def test_shutdown_notice_lets_secondaries_wind_down(runtime_dir, ipc_sec_so):
    prim = IPCPrimary(runtime_dir)
    try:
        py = prim.launch("ipc_sec:main")
        c = prim.launch(ipc_sec_so)
        deaf = prim.launch("ipc_sec:main", "--no-actions")
        out = prim.stop()
        assert out["stopped"]
        assert py.expect("shutdown") and c.expect("shutdown")
        assert py.wait() == 0 and c.wait() == 0     # they left on their own
        assert deaf.wait() == -signal.SIGTERM        # the template ended it
        assert out["elapsed"] < 2 + 2 + 5            # IPC grace + template grace
    finally:
        prim.close()


# -- the primary goes away, another comes ------------------------------------------------

def test_members_rejoin_the_next_primary_with_their_actions(own_prim, entry, kind):
    """The primary's IPC ends without forkhost.shutdown (what its death
    looks like to a member) and starts again at the same socket: the member
    goes on, its calls fail at once meanwhile (a 60 s request too), and it
    rejoins by itself with the actions it had, told so by forkhost.primary."""
    prim = own_prim
    s = prim.launch(entry)
    prim.wait_members(1)
    assert prim.cmd("ipc_stop") == {"started": False}
    wait_until(lambda: s.cmd("rejoining", "rejoining") == ["rejoining", "1"],
               what="the member to notice")
    assert s.cmd("request echo 00 60000", "error")[:2] == ["error", "ENOTCONN"]
    assert s.cmd("send note 00", "error")[:2] == ["error", "ENOTCONN"]
    s.none_of("primary", 0)
    assert prim.cmd("ipc_start")["started"]
    assert s.expect("primary") == ["primary", str(prim.pid), str(prim.template_pid)]
    assert prim.wait_members(1) == [s.pid]
    assert prim.cmd("members")["members"] == [
        {"pid": s.pid, "ppid": prim.template_pid, "secondary": True}]
    assert s.cmd("rejoining", "rejoining") == ["rejoining", "0"]
    # its actions serve the new endpoint; its requests reach it
    r = prim.cmd("request", name="echo", param=b"again".hex(), to=s.pid)
    assert [m["param"] for m in r["msgs"]] == [(prefix_of(kind) + b"again").hex()]
    words = s.cmd("request echo " + b"hi".hex() + " 5000", "reply")
    assert words[1:5] == ["1", "1", "0", b"primary:hi".hex()]


def test_a_member_joins_a_new_primary_after_its_primary_is_killed(runtime_dir):
    """kill -9 of the primary (one this test started): a process attached
    to it waits, then joins the primary started next on the prefix, whose
    forkhost.primary names it and its template; a request meanwhile raises
    PrimaryGoneError.  (Whether the next primary adopts the old template or
    makes its own, the member's side is the same.)"""
    first = IPCPrimary(runtime_dir)
    second = None
    notices = []
    got = threading.Event()

    def on_primary(msg, peer):
        notices.append(ipc.parse_primary_notice(msg))
        got.set()

    try:
        ipc.register(ipc.PRIMARY_NOTICE, on_primary)
        ipc.start(prefix="i", runtime_dir=runtime_dir)
        os.kill(first.pid, signal.SIGKILL)
        assert first.proc.wait(30) == -signal.SIGKILL
        wait_until(ipc.rejoining, what="the member to notice")
        with pytest.raises(ipc.PrimaryGoneError, match="rejoins the next one"):
            ipc.request("echo", b"x", timeout=60)
        second = IPCPrimary(runtime_dir)
        # It adopted the orphaned template (--on-primary-death survive).
        assert second.template_pid == first.template_pid
        assert got.wait(30)
        assert notices == [(second.pid, second.template_pid)]
        assert not ipc.rejoining()
        with ipc.request("echo", b"x", timeout=30) as r:
            assert [(m.pid, m.param) for m in r.msgs] == [(second.pid, b"primary:x")]
    finally:
        ipc.stop()
        ipc.unregister(ipc.PRIMARY_NOTICE)
        if second is not None:
            second.close()      # (an adopted template, holding first's
        else:                   # stderr, ends with it)
            end_template(first.template_pid)
        first.close()
        wait_until(lambda: ended(first.template_pid), what="the first template to end")


def test_a_member_waiting_for_a_primary_can_leave(own_prim):
    """stop() while waiting to rejoin: the thread ends, its fds with it
    (leaves_nothing checks them), and nothing rejoins afterwards."""
    prim = own_prim
    ipc.start(prefix="i", runtime_dir=prim.env["FORKHOST_RUNTIME_DIR"])
    try:
        prim.wait_members(1)
        assert prim.cmd("ipc_stop") == {"started": False}
        wait_until(ipc.rejoining, what="the member to notice")
    finally:
        ipc.stop()
    assert not ipc.rejoining() and not ipc.started()
    assert prim.cmd("ipc_start")["started"]


def test_secondaries_rejoin_the_primary_that_adopts_their_template(runtime_dir, ipc_sec_so):
    """kill -9 of the primary (one this test started): its secondaries, Python
    and native, go on with no primary (calls fail at once), then rejoin the
    primary that adopts their template, told by forkhost.primary, listed as
    its secondaries, their actions serving it; its stop ends them."""
    first = IPCPrimary(runtime_dir)
    second = None
    try:
        py = first.launch("ipc_sec:main")
        c = first.launch(ipc_sec_so)
        first.wait_members(2)
        os.kill(first.pid, signal.SIGKILL)
        assert first.proc.wait(30) == -signal.SIGKILL
        for s in (py, c):
            wait_until(lambda: s.cmd("rejoining", "rejoining") == ["rejoining", "1"],
                       what="the member to notice")
            assert s.cmd("request echo 00 60000", "error")[:2] == ["error", "ENOTCONN"]
        second = IPCPrimary(runtime_dir)
        assert second.template_pid == first.template_pid, "not adopted"
        for s in (py, c):
            assert s.expect("primary") == ["primary", str(second.pid),
                                           str(first.template_pid)]
        assert sorted(second.wait_members(2)) == sorted([py.pid, c.pid])
        assert all(m["secondary"] for m in second.cmd("members")["members"])
        r = second.cmd("request", name="echo", param=b"x".hex())
        assert sorted(m["param"] for m in r["msgs"]) == sorted(
            (prefix_of(k) + b"x").hex() for k in KINDS)
        words = py.cmd("request echo " + b"hi".hex() + " 5000", "reply")
        assert words[1:5] == ["1", "1", "0", b"primary:hi".hex()]
        assert second.stop()["stopped"]
        assert py.expect("shutdown") and c.expect("shutdown")
        assert py.wait() == 0 and c.wait() == 0
    finally:
        if second is not None:
            second.close()
        elif not ended(first.template_pid):
            # the orphan, which holds first's stderr: `forkhost stop` ends it
            subprocess.run([sys.executable, "-m", "forkhost", "stop"], env=first.env,
                           cwd=str(FIXTURES), capture_output=True, timeout=60)
        first.close()
        wait_until(lambda: ended(first.template_pid), what="the template to end")


def test_after_forkhost_shutdown_a_member_does_not_rejoin(runtime_dir):
    """A primary that stops says forkhost.shutdown first: that end is final."""
    prim = IPCPrimary(runtime_dir)
    try:
        ipc.start(prefix="i", runtime_dir=runtime_dir)
        prim.stop()
        wait_until(_send_fails, what="the end of its IPC")
        assert not ipc.rejoining()
        with pytest.raises(ipc.PrimaryGoneError, match="the primary stopped"):
            ipc.send("note", b"")
    finally:
        ipc.stop()
        prim.close()


def _send_fails() -> bool:
    try:
        ipc.send("note", b"")
    except ipc.PrimaryGoneError:
        return True
    return False


# -- other processes and the CLI -------------------------------------------------------

def test_attach_from_another_process(own_prim):
    prim = own_prim
    # it counts the exit notices that reach the primary
    ep = ipc.start(prefix="i", runtime_dir=prim.env["FORKHOST_RUNTIME_DIR"])
    try:
        assert ep.primary_pid == prim.pid
        members = prim.cmd("members")["members"]
        assert members == [{"pid": os.getpid(), "ppid": os.getppid(), "secondary": False}]
        with ipc.request("echo", b"from outside", timeout=5) as r:
            assert (r.nb_sent, r.nb_received) == (1, 1)
            assert r.msgs[0].param == b"primary:from outside"
        with pytest.raises(ipc.IPCError, match="talks to its primary"):
            ipc.send("note", to=1)
    finally:
        ipc.stop()              # BYE: left, not exited
    prim.wait_members(0)
    assert not prim.log(ipc.EXIT_NOTICE)
    assert not ipc.started()


def test_forkhost_primary_command_runs_ipc(primary, ipc_sec_so):
    for entry in ("ipc_sec:main", ipc_sec_so):
        p = subprocess.Popen([RUNNER, entry, "--no-actions"], env=primary.env,
                             cwd=str(FIXTURES), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = LineReader(p.stdout).readline(20).decode()
            assert line.startswith("ready"), p.stderr.read()
            p.stdin.close()
            assert p.wait(20) == 0
        finally:
            reap(p)
