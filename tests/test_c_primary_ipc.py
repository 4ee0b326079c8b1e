"""IPC in a C primary, with no Python in the process: fixtures/c_primary.c
with --ipc runs libforkhost's primary endpoint (fh_ipc_primary_*), and
native secondaries (fixtures/ipc_sec.c, the C secondary of test_ipc.py)
launched with forkhost-run talk to it through the same forkhost/ipc.h.
What they see is what they see with a Python primary (test_ipc.py)."""

from __future__ import annotations

import array
import os
import re
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from forkhost import ipc
from fhtest import (FIXTURES, RUNNER, LineReader, ended, forkhost_flags, reap,
                    wait_until)


def _cc(out: Path, src: Path, *extra: str) -> str:
    flags = forkhost_flags()
    subprocess.run(["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread",
                    *extra, "-o", str(out), str(src), *flags], check=True)
    return str(out)


@pytest.fixture(scope="module")
def c_primary_exe(tmp_path_factory) -> str:
    return _cc(tmp_path_factory.mktemp("cprimary_ipc") / "c_primary", FIXTURES / "c_primary.c")


@pytest.fixture(scope="module")
def ipc_sec_so(tmp_path_factory) -> str:
    return _cc(tmp_path_factory.mktemp("cprimary_ipc_sec") / "ipc_sec.so",
               FIXTURES / "ipc_sec.c", "-shared", "-fPIC")


class Lines:
    """A process that prints lines: expect(prefix) takes the first line,
    seen or to come, whose first word is prefix."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.out = LineReader(proc.stdout)
        self.lines: list[list[str]] = []

    def expect(self, prefix: str, timeout: float = 20) -> list[str]:
        for i, words in enumerate(self.lines):
            if words[0] == prefix:
                return self.lines.pop(i)
        while True:
            raw = self.out.readline(timeout)
            if not raw:
                raise AssertionError(f"EOF waiting for {prefix!r}; had {self.lines}; "
                                     f"stderr: {self.proc.stderr.read().decode()}")
            words = raw.decode().split()
            if words and words[0] == prefix:
                return words
            self.lines.append(words)

    def cmd(self, line: str, prefix: str, timeout: float = 20) -> list[str]:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.expect(prefix, timeout)


class CPrimary(Lines):
    def __init__(self, exe: str, runtime_dir: str, prefix: str = "ci"):
        self.env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir,
                        FORKHOST_PREFIX=prefix)
        self.socket = os.path.join(runtime_dir, prefix, "ipc.sock")
        super().__init__(subprocess.Popen(
            [exe, runtime_dir, prefix, "--ipc"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        words = self.expect("ready")
        self.template_pid, self.pid = int(words[1]), int(words[2])
        self.secs: list[Lines] = []

    def launch(self, so: str, *args: str) -> Lines:
        s = Lines(subprocess.Popen([RUNNER, so, *args], env=self.env, cwd=str(FIXTURES),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE))
        self.secs.append(s)
        s.pid = int(s.expect("ready")[1])
        return s

    def members(self, n: int) -> list[tuple[int, int, int]]:
        words = self.cmd(f"members {n}", "members", 40)
        assert "timeout" not in words, words
        return [tuple(int(x) for x in w.split(":")) for w in words[1:]]

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (w.split("=") for w in self.cmd("stats", "stats")[1:])}

    def close(self) -> None:
        for s in self.secs:
            if s.proc.poll() is None:
                s.proc.stdin.close()
                try:
                    s.proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            reap(s.proc)
        if self.proc.poll() is None:
            self.proc.stdin.close()     # EOF: IPC stopped, the template ended
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        reap(self.proc)


@pytest.fixture
def cprim(c_primary_exe, runtime_dir):
    p = CPrimary(c_primary_exe, runtime_dir)
    yield p
    p.close()


def _hex(b: bytes) -> str:
    return b.hex() or "-"


def _raw_member(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(10)
    sock.connect(path)
    sock.send(ipc._encode(ipc.HELLO, b"", ipc.HELLO_BODY.pack(os.getpid(), os.getppid(),
                                                             0, 0)))
    data = sock.recv(ipc.RECORD_MAX)
    hdr = ipc.HDR.unpack_from(data)
    assert hdr[2] == ipc.WELCOME
    return sock, ipc.WELCOME_BODY.unpack_from(data, ipc.HDR.size)


def test_ipc_runs_in_a_c_primary_without_python(cprim, ipc_sec_so):
    for pid in (cprim.pid, cprim.template_pid):
        assert "libpython" not in Path(f"/proc/{pid}/maps").read_text()
    # the primary: main and its IPC thread; the template stays single-threaded
    assert len(os.listdir(f"/proc/{cprim.pid}/task")) == 2
    assert len(os.listdir(f"/proc/{cprim.template_pid}/task")) == 1
    assert (os.stat(cprim.socket).st_mode & 0o777) == 0o600
    a = cprim.launch(ipc_sec_so)
    b = cprim.launch(ipc_sec_so)
    assert cprim.members(2) == sorted([(a.pid, cprim.template_pid, 1),
                                       (b.pid, cprim.template_pid, 1)])


def test_secondary_requests_answered_by_the_primarys_actions(cprim, ipc_sec_so):
    s = cprim.launch(ipc_sec_so)
    assert s.cmd("request echo 6869 5000", "reply") == \
        ["reply", "1", "1", "0", _hex(b"primary:hi")]
    # no action: answered NO_ACTION at once; a failing one: ACTION_FAILED
    assert s.cmd("request nobody - 5000", "reply")[:4] == ["reply", "1", "1", "1"]
    assert s.cmd("request fail - 5000", "reply")[:4] == ["reply", "1", "1", "2"]
    # a sync request from inside an action would deadlock: refused
    assert s.cmd("request try_recursive - 5000", "reply")[4] == _hex(b"refused: EDEADLK")
    assert s.cmd("request_async echo 6173 5000", "async") == \
        ["async", "1", "1", "0", _hex(b"primary:as"), "onipc=1"]
    assert s.cmd("send note 6e6f7465 -", "sent") == ["sent", "1"]
    assert cprim.expect("note") == ["note", str(s.pid), _hex(b"note"), "0"]
    st = cprim.stats()
    assert (st["no_action"], st["action_errors"]) == (1, 1)


def test_broadcast_request_from_the_primary_counts_replies(cprim, ipc_sec_so):
    a = cprim.launch(ipc_sec_so)
    b = cprim.launch(ipc_sec_so)
    cprim.members(2)
    words = cprim.cmd("request echo 7171 5000 0", "reply")
    assert words[:3] == ["reply", "2", "2"]
    assert words[3:] == [f"{pid}:0:{_hex(b'c:qq')}" for pid in sorted((a.pid, b.pid))]
    words = cprim.cmd("request_async echo 7171 5000", "async")
    assert words[:4] == ["async", "2", "2", "onipc=1"]
    # to one member only
    assert cprim.cmd(f"request echo 01 5000 {b.pid}", "reply") == \
        ["reply", "1", "1", f"{b.pid}:0:{_hex(b'c:' + bytes([1]))}"]
    # a silent member: its answer never comes, counted as a timeout
    c = cprim.launch(ipc_sec_so, "--silent")
    cprim.members(3)
    before = cprim.stats()["timeouts"]
    words = cprim.cmd("request echo - 500 0", "reply")
    assert words[:3] == ["reply", "3", "2"]
    assert c.pid not in [int(w.split(":")[0]) for w in words[3:]]
    assert cprim.stats()["timeouts"] == before + 1
    # messages: every member, or one
    assert cprim.cmd("send note 6d 0", "sent") == ["sent", "3"]
    for s in (a, b, c):
        assert s.expect("note") == ["note", str(cprim.pid), "6d", "0"]
    assert cprim.cmd(f"send note 6e {a.pid}", "sent") == ["sent", "1"]
    assert a.expect("note") == ["note", str(cprim.pid), "6e", "0"]


ANSWERED, NO_ACTION_P, TIMED_OUT, DIED = (int(s) for s in (
    ipc.PeerStatus.ANSWERED, ipc.PeerStatus.NO_ACTION, ipc.PeerStatus.TIMED_OUT,
    ipc.PeerStatus.DIED))


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def _who(words: list[str]) -> dict[int, tuple[int, str, str]]:
    """A who line's entries (fixtures/ipc_fixture.h, who_line()) by pid:
    (status, the answer's status or "-", name); its counts agree.  A name
    (a process's comm) may hold spaces: an entry ends where the next begins."""
    assert words[3] == "1", f"peers and msgs disagree: {words}"
    out = {}
    for m in re.finditer(r"(\d+)/(-?\d+)/(-|-?\d+)/(.*?)(?= \d+/-?\d+/(?:-|-?\d+)/|$)",
                         " ".join(words[4:])):
        pid, status, msg_status, name = m.groups()
        out[int(pid)] = (int(status), msg_status, name)
    assert len(out) == int(words[1])
    return out


@pytest.mark.heavy
@pytest.mark.parametrize("op", ["who", "who_async"])
def test_reply_lists_each_member_and_what_became_of_it(cprim, ipc_sec_so, op):
    """As in test_ipc.py, with a C primary: one member answers, one has no
    such action, one answers only after the timeout, one is killed while the
    request is pending, and a raw member plays an older peer that never
    says NO_ACTION."""
    ok = cprim.launch(ipc_sec_so)
    lacking = cprim.launch(ipc_sec_so, "--no-actions")
    slow = cprim.launch(ipc_sec_so, "--slow")
    victim = cprim.launch(ipc_sec_so, "--silent")
    old, _ = _raw_member(cprim.socket)
    try:
        cprim.members(5)
        names = {s.pid: _comm(s.pid) for s in (ok, lacking, slow, victim)}
        names[os.getpid()] = _comm(os.getpid())
        before = cprim.stats()
        line = f"{op} echo 6162 2000" + (" 0" if op == "who" else "")
        cprim.proc.stdin.write(line.encode() + b"\n")
        cprim.proc.stdin.flush()
        assert victim.expect("got") == ["got", "echo"]
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.proc.wait(20) == -signal.SIGKILL
        assert old.recv(ipc.RECORD_MAX)[:8]     # the request reached it
        words = cprim.expect(op)
        assert words[1:3] == ["5", "2"]
        got = _who(words)
        assert {pid: e[:2] for pid, e in got.items()} == {
            ok.pid: (ANSWERED, str(ipc.OK)), lacking.pid: (NO_ACTION_P, str(ipc.NO_ACTION)),
            slow.pid: (TIMED_OUT, "-"), victim.pid: (DIED, "-"),
            os.getpid(): (TIMED_OUT, "-")}
        assert {pid: e[2] for pid, e in got.items()} == names
        after = cprim.stats()
        assert after["timeouts"] == before["timeouts"] + 2
        assert after["peer_died"] == before["peer_died"] + 1
        slow.cmd("late", "late")
        wait_until(lambda: cprim.stats()["late_replies"] == before["late_replies"] + 1,
                   what="the slow answer")
    finally:
        old.close()


@pytest.mark.parametrize("op", ["who", "who_async"])
def test_a_secondarys_reply_lists_the_c_primary(cprim, ipc_sec_so, op):
    s = cprim.launch(ipc_sec_so)
    me = f"{cprim.pid}/%d/%s/{_comm(cprim.pid)}"
    assert s.cmd(f"{op} echo 01 5000", op) == [op, "1", "1", "1", me % (ANSWERED, ipc.OK)]
    assert s.cmd(f"{op} nobody - 5000", op) == \
        [op, "1", "1", "1", me % (NO_ACTION_P, ipc.NO_ACTION)]
    assert s.cmd(f"{op} hang - 300", op) == [op, "1", "0", "1", me % (TIMED_OUT, "-")]
    assert s.cmd(f"{op} fail - 5000", op) == \
        [op, "1", "1", "1", me % (ANSWERED, ipc.ACTION_FAILED)]


def test_an_attached_request_to_a_c_primary_killed_meanwhile_lists_it_as_died(
        cprim, runtime_dir):
    ep = ipc.start(prefix="ci", runtime_dir=runtime_dir)
    got: list = []
    try:
        name = _comm(cprim.pid)
        cprim.members(1)
        t = threading.Thread(target=lambda: got.append(ipc.request("hang", timeout=60)))
        t.start()
        assert cprim.expect("hang") == ["hang", str(os.getpid())]   # it is pending
        os.kill(cprim.pid, signal.SIGKILL)
        t.join(30)
        (r,) = got
        assert (r.nb_sent, r.nb_received, r.msgs) == (1, 0, [])
        (e,) = r.peers
        assert (e.pid, e.name, e.status, e.msg) == (cprim.pid, name, ipc.PeerStatus.DIED,
                                                    None)
    finally:
        ipc.stop()
        wait_until(lambda: ended(cprim.template_pid), what="the template to end")


def test_fds_pass_both_ways(cprim, ipc_sec_so):
    s = cprim.launch(ipc_sec_so)
    cprim.members(1)
    assert s.cmd("send_fd fd_write", "fd_read") == \
        ["fd_read", "1", _hex(b"written by the primary")]
    assert cprim.cmd(f"send_fd fd_write {s.pid}", "fd_read") == \
        ["fd_read", "1", _hex(b"written by the c secondary")]
    # an fd sent with a request comes back with the echo
    sock, _ = _raw_member(cprim.socket)
    r, w = os.pipe()
    try:
        sock.sendmsg([ipc._encode(ipc.REQUEST, b"echo", b"fd", nfds=1, rid=5)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        os.close(w)
        w = -1
        data, anc, _, _ = sock.recvmsg(ipc.RECORD_MAX, socket.CMSG_SPACE(4 * 8))
        hdr = ipc.HDR.unpack_from(data)
        assert (hdr[2], hdr[5], hdr[4]) == (ipc.REPLY, 5, 1)
        got = array.array("i")
        got.frombytes(anc[0][2])
        os.write(got[0], b"back")
        os.close(got[0])
        assert os.read(r, 10) == b"back"
    finally:
        sock.close()
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.parametrize("first, why", [
    (ipc._encode(ipc.MSG, b"note", b"x"),
     "the first IPC record must be HELLO, not MSG"),
    (b"short",
     "the first IPC record must be HELLO; this one is malformed: a truncated record (5 bytes)"),
    (struct.pack("=I", 0xDEADBEEF) + ipc._encode(ipc.MSG, b"note", b"")[4:],
     "the first IPC record must be HELLO; this one is malformed: "
     "bad magic 0xdeadbeef, not an IPC record"),
    (b"",
     "the first IPC record must be HELLO; this one is malformed: an empty record"),
    (ipc._encode(ipc.HELLO, b"", b"12345678"),
     "malformed HELLO: its param is 8 bytes, not 16"),
    (lambda h: h[:4] + struct.pack("=H", 2) + h[6:],
     "IPC version mismatch: the secondary speaks 2, the primary speaks 1"),
])
def test_a_first_record_that_is_not_hello_is_refused_in_words(cprim, first, why):
    if callable(first):
        first = first(ipc._encode(ipc.HELLO, b"", ipc.HELLO_BODY.pack(1, 1, 0, 0)))
    before = cprim.stats()["malformed"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
        s.settimeout(10)
        s.connect(cprim.socket)
        s.send(first)
        data = s.recv(ipc.RECORD_MAX)
        hdr = ipc.HDR.unpack_from(data)
        assert hdr[2] == ipc.REFUSE
        assert data[ipc.HDR.size:].decode() == why
        assert s.recv(10) == b""        # then closed
    assert cprim.stats()["malformed"] == before + 1
    assert cprim.members(0) == []


def test_bad_records_from_a_member_are_counted_not_fatal(cprim):
    sock, welcome = _raw_member(cprim.socket)
    assert welcome == (cprim.pid, cprim.template_pid, ipc.NAME_MAX, ipc.PARAM_MAX)
    with sock:
        sock.send(b"short")
        sock.send(ipc._encode(ipc.REQUEST, b"note", b"", rid=0))
        sock.send(ipc._encode(ipc.MSG, b"note", b"after"))
        assert cprim.expect("note") == ["note", str(os.getpid()), _hex(b"after"), "0"]
        assert cprim.stats()["malformed"] == 2


def test_exits_reach_the_primary_and_the_members_as_forkhost_exit(cprim, ipc_sec_so):
    watcher = cprim.launch(ipc_sec_so)
    s = cprim.launch(ipc_sec_so)
    cprim.members(2)
    s.proc.stdin.close()                # quit: main returns 0
    assert s.proc.wait(20) == 0
    assert cprim.expect("exit") == ["exit", str(s.pid), "0"]
    assert watcher.expect("exit") == ["exit", str(s.pid), "0"]
    k = cprim.launch(ipc_sec_so)
    cprim.members(2)
    os.kill(k.pid, signal.SIGKILL)
    assert cprim.expect("exit") == ["exit", str(k.pid), str(-signal.SIGKILL)]
    assert watcher.expect("exit") == ["exit", str(k.pid), str(-signal.SIGKILL)]
    # an attached process that closes without BYE: reported, status unknown
    sock, _ = _raw_member(cprim.socket)
    cprim.members(2)
    sock.close()
    assert cprim.expect("exit") == ["exit", str(os.getpid()), "unknown"]
    assert watcher.expect("exit") == ["exit", str(os.getpid()), "unknown"]
    cprim.members(1)


def test_an_attached_python_process_talks_to_a_c_primary(cprim, runtime_dir):
    ep = ipc.start(prefix="ci", runtime_dir=runtime_dir)
    try:
        assert ep.primary_pid == cprim.pid
        assert cprim.members(1) == [(os.getpid(), os.getppid(), 0)]
        with ipc.request("echo", b"from outside", timeout=5) as r:
            assert (r.nb_sent, r.nb_received) == (1, 1)
            assert r.msgs[0].param == b"primary:from outside"
    finally:
        ipc.stop()                      # BYE: left, not exited
    assert cprim.members(0) == []
    assert cprim.cmd("send note - 0", "sent") == ["sent", "0"]
    assert not [w for w in cprim.lines if w[0] == "exit"]


def test_shutdown_lets_secondaries_wind_down(cprim, ipc_sec_so):
    polite = cprim.launch(ipc_sec_so)
    deaf = cprim.launch(ipc_sec_so, "--no-actions")
    cprim.members(2)
    assert cprim.cmd("stop 5000", "stopped") == ["stopped"]
    assert polite.expect("shutdown")
    assert polite.proc.wait(20) == 0            # it left on its own
    assert deaf.proc.wait(30) == -signal.SIGTERM  # the template ended it
    assert cprim.proc.wait(30) == 0
    wait_until(lambda: ended(cprim.template_pid), what="the template to end")
    assert not os.path.exists(cprim.socket)
