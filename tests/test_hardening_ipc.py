"""Issue 22, items 6 and 7: an IPC record never costs a member its
membership, a malformed first record is answered with REFUSE at once, and
the primary's death is said on the stderr of the clients whose secondaries
the template then ends (docs/ipc.md "Checks", docs/cli.md "Exit status")."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys

import pytest

from forkhost import ipc
from fhtest import (FIXTURES, RUNNER, LineReader, PrimaryProc, ended, reap,
                    secondary_pids, wait_until)
from test_ipc import IPCPrimary, _raw_member


@pytest.fixture
def prim(runtime_dir):
    p = IPCPrimary(runtime_dir)
    yield p
    err = p.close()
    assert "Traceback" not in err, err


def _members(prim) -> list[int]:
    return [m["pid"] for m in prim.cmd("members")["members"]]


# -- item 6: zero-length and malformed records ----------------------------------

def test_zero_length_record_keeps_membership_and_is_counted(prim):
    """recvmsg() reads an empty SEQPACKET record as 0 bytes, as it reads EOF;
    the member is still there and keeps its membership."""
    with _raw_member(prim.ready["socket"]) as sock:
        assert os.getpid() in _members(prim)
        before = prim.stats()["malformed"]
        sock.send(b"")
        sock.send(ipc._encode(ipc.MSG, b"note", b"after"))
        got = wait_until(lambda: prim.log("note"), 10, "the note after the empty record")
        assert [e["param"] for e in got] == [b"after".hex()]
        assert prim.stats()["malformed"] == before + 1
        # a request still works, and the member is still listed
        sock.send(ipc._encode(ipc.REQUEST, b"echo", b"x", rid=7))
        data = sock.recv(ipc.RECORD_MAX)
        _, _, mtype, _, _, rid, _, status, _ = ipc.HDR.unpack_from(data)
        assert (mtype, rid, status) == (ipc.REPLY, 7, ipc.OK)
        assert data[ipc.HDR.size:] == b"primary:x"
        assert os.getpid() in _members(prim)


_HELLO = ipc._encode(ipc.HELLO, b"", ipc.HELLO_BODY.pack(os.getpid(), os.getppid(), 0, 0))
_MALFORMED = "the first IPC record must be HELLO; this one is malformed: "
FIRST_RECORDS = {
    "empty": (b"", _MALFORMED + "an empty record"),
    "garbage": (b"garbage", _MALFORMED + "a truncated record (7 bytes)"),
    "truncated HELLO": (_HELLO[:50], _MALFORMED + "a truncated record (50 bytes)"),
    "bad magic": (struct.pack("=I", 0xDEADBEEF) + _HELLO[4:],
                  _MALFORMED + "bad magic 0xdeadbeef, not an IPC record"),
    "HELLO len field": (_HELLO[:8] + struct.pack("=I", 50) + _HELLO[12:],
                        _MALFORMED + "its header says 50 bytes with a param of 16, "
                                     "112 arrived"),
    "MSG first": (ipc._encode(ipc.MSG, b"note", b"x"),
                  "the first IPC record must be HELLO, not MSG"),
    "HELLO short param": (ipc._encode(ipc.HELLO, b"", b"12345678"),
                          "malformed HELLO: its param is 8 bytes, not 16"),
}


@pytest.mark.parametrize("case", sorted(FIRST_RECORDS))
def test_malformed_first_record_gets_refuse_at_once(prim, case):
    data, why = FIRST_RECORDS[case]
    before = prim.stats()["malformed"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
        s.settimeout(30)
        s.connect(prim.ready["socket"])
        s.send(data)
        reply = s.recv(ipc.RECORD_MAX)
        # Before: nothing (the connection closed at HELLO_TIMEOUT, or at
        # once for the empty record, which was read as EOF).
        assert len(reply) >= ipc.HDR.size, f"no REFUSE, got {reply!r}"
        assert ipc.HDR.unpack_from(reply)[2] == ipc.REFUSE
        assert reply[ipc.HDR.size:].decode() == why
        assert s.recv(16) == b""
    assert prim.stats()["malformed"] == before + 1
    # the primary goes on serving: a member joins and is heard
    with _raw_member(prim.ready["socket"]) as member:
        member.send(ipc._encode(ipc.MSG, b"note", case.encode()))
        got = wait_until(lambda: prim.log("note"), 10, "a note from the next member")
        assert [bytes.fromhex(e["param"]) for e in got] == [case.encode()]


# -- item 7: the primary's death on the clients' stderr ----------------------------

CLIENTS = {
    "forkhost-run": ([RUNNER], "forkhost-run"),
    "forkhost run": ([sys.executable, "-m", "forkhost", "run"], "forkhost run"),
}


@pytest.mark.parametrize("client, entry, death", [
    ("forkhost-run", "fhfix:sleeper", signal.SIGTERM),
    ("forkhost run", "fhfix:sleeper", signal.SIGTERM),
    ("forkhost-run", "fhfix:ignore_term", signal.SIGKILL),   # after the grace
])
def test_primary_death_is_one_line_on_the_clients_stderr(runtime_dir, client, entry,
                                                         death):
    """SIGKILL of a primary started with --on-primary-death stop: its
    template ends the secondaries (SIGTERM, SIGKILL after --grace); each client says why in one line and still
    exits as its secondary did."""
    argv, prog = CLIENTS[client]
    p = PrimaryProc(runtime_dir, args=("--on-primary-death", "stop"))
    c = None
    try:
        c = subprocess.Popen(argv + [entry], env=p.env, cwd=str(FIXTURES),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert LineReader(c.stdout).readline() == b"ready\n"
        sec = secondary_pids(p.prefix, runtime_dir)[0]
        p.proc.kill()
        assert c.wait(60) == -death
        wait_until(lambda: ended(sec), what="the secondary to end")
        assert c.stderr.read().decode() == (
            f"{prog}: the primary of prefix '{p.prefix}' died; its template ended "
            f"secondary {sec} with SIGTERM (SIGKILL if still running after the 2s "
            f"grace)\n")
        wait_until(lambda: ended(p.template_pid), what="the template to end")
    finally:
        reap(c)
        code, _, _ = p.stop()
    assert code == -signal.SIGKILL


def test_primary_stop_says_nothing_on_the_clients_stderr(runtime_dir):
    """An orderly stop (SIGTERM to the primary) is not a death: the client
    dies by its secondary's SIGTERM without a word, as before."""
    p = PrimaryProc(runtime_dir)
    c = None
    try:
        c = p.popen("fhfix:sleeper", cwd=str(FIXTURES), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
        assert LineReader(c.stdout).readline() == b"ready\n"
        p.proc.send_signal(signal.SIGTERM)
        assert c.wait(60) == -signal.SIGTERM
        assert c.stderr.read() == b""
        p.proc.wait(30)
    finally:
        reap(c)
        code, _, err = p.stop()
    assert code == 0, err
