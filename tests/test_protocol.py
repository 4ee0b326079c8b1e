"""The launch protocol at its edges: what the template does with requests
no real client sends, the limits both ends enforce, who may connect, and
the cap on concurrent secondaries.

Raw clients speak to template.sock with a plain AF_UNIX SOCK_SEQPACKET
socket and forkhost._protocol's framing.  Every bad request must get one
ERROR record (exit code 125, a text saying what was wrong), then the
connection is closed, and the next real client is served as usual.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
import stat
import subprocess
import sys

import pytest

import forkhost
from forkhost import _protocol as protocol
from fhtest import (FIXTURES, RUNNER, LineReader, PrimaryProc, need_root, raw_connect,
                    reap, wait_until)

HDR = protocol.HDR
BODY = protocol.LAUNCH_BODY
MAX_MSG = protocol.MAX_MSG


@pytest.fixture
def primary(shared_primary):
    """Bad requests, raw clients and refused launches leave the template
    serving as before and nothing behind: one primary for the module
    (conftest.py, own_primary).  Tests that count the template's fds or its
    refusals, or need other primary arguments, start their own."""
    return shared_primary


# -- raw clients -------------------------------------------------------------

def send_raw(sock: socket.socket, data: bytes, fds=()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def closed(sock: socket.socket) -> bool:
    """The template closed its end (orderly EOF, or a reset)."""
    try:
        msg = protocol.recv(sock)
    except ConnectionResetError:
        return True
    if msg is not None:
        msg.close_fds()
    return msg is None


def expect_error(sock: socket.socket) -> str:
    """One ERROR record with exit code 125, then the end of the connection."""
    msg = protocol.recv(sock)
    assert msg is not None, "the template closed the connection without an ERROR"
    msg.close_fds()
    assert msg.type == protocol.ERROR, hex(msg.type)
    code, text = protocol.decode_error(msg.body)
    assert code == 125, (code, text)
    assert text and "\n" not in text
    assert closed(sock), "the connection stayed open after the ERROR"
    return text


def launch_body(argc=None, envc=None, strings_len=None, stdio_mask=0b111, nextra=0,
                strings=b"fhfix:exit_with\0fhfix:exit_with\0" b"0\0A=1\0") -> bytes:
    """A LAUNCH body (without header) whose counts can lie."""
    real_argc, real_envc = 2, 1
    targets = range(3, 3 + min(nextra, protocol.MAX_EXTRA_FDS))
    return (BODY.pack(0, 0o022, stdio_mask, nextra,
                      real_argc if argc is None else argc,
                      real_envc if envc is None else envc,
                      len(strings) if strings_len is None else strings_len, 0, 0, 0)
            + struct.pack(f"={len(targets)}I", *targets) + strings)


def record(body: bytes, *, mtype=protocol.LAUNCH, nfds=0, magic=protocol.MAGIC,
           version=protocol.VERSION, length=None) -> bytes:
    n = HDR.size + len(body) if length is None else length
    return HDR.pack(magic, version, mtype, n, nfds, 0) + body


class Fds:
    """n descriptors to pass (dups of one /dev/null), closed afterwards."""

    def __init__(self, n: int):
        self.fds = []
        base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.fds.append(base)
        for _ in range(n - 1):
            self.fds.append(os.dup(base))

    def __enter__(self):
        return self.fds

    def __exit__(self, *exc):
        for fd in self.fds:
            os.close(fd)


# name -> (record, number of fds to send, what the ERROR must say)
BAD_REQUESTS = {
    "bad-magic": (lambda: record(b"", magic=0xDEADBEEF), 0, "bad magic 0xdeadbeef"),
    "short-header": (lambda: record(b"")[:10], 0, "truncated message (10 bytes"),
    "length-mismatch": (lambda: record(b"x" * 10, length=100), 0,
                        "header says 100 bytes, 34 arrived"),
    "oversized": (lambda: record(b"\0" * (MAX_MSG + 1024 - HDR.size)), 0,
                  f"message too large (the limit is {MAX_MSG} bytes)"),
    "wrong-version": (lambda: record(launch_body(), version=1, nfds=4), 4,
                      "protocol version mismatch: the client speaks 1"),
    "too-many-fds": (lambda: record(launch_body(nextra=32), nfds=40), 40,
                     "too many file descriptors (the limit is 36)"),
    "nfds-mismatch": (lambda: record(launch_body(), nfds=2), 1,
                      "header says 2 file descriptors, 1 arrived"),
    "launch-fds-mismatch": (lambda: record(launch_body(stdio_mask=0b111), nfds=1), 1,
                            "announces 4 file descriptors, 1 arrived"),
    "argv-count-mismatch": (lambda: record(launch_body(argc=5), nfds=4), 4,
                            "malformed LAUNCH request"),
    "strings-length-mismatch": (lambda: record(launch_body(strings_len=999), nfds=4), 4,
                                "truncated LAUNCH request"),
    "empty-argv": (lambda: record(launch_body(argc=0, envc=3), nfds=4), 4, "empty argv"),
    "too-many-extra-fds": (lambda: record(launch_body(nextra=33), nfds=4), 4,
                           "too many extra fds (33; the limit is 32)"),
    "truncated-launch-body": (lambda: record(launch_body()[:20], nfds=4), 4,
                              "truncated LAUNCH request"),
    "unknown-type": (lambda: record(b"", mtype=0x33), 0, "unexpected message type 0x33"),
    "reply-type-from-client": (lambda: record(protocol.encode_exited(0, 0),
                                              mtype=protocol.EXITED), 0,
                               "unexpected message type 0x82"),
}


def send_bad(path: str, name: str) -> str:
    make, nfds, _ = BAD_REQUESTS[name]
    with raw_connect(path) as sock, Fds(max(nfds, 1)) as fds:
        send_raw(sock, make(), fds[:nfds])
        return expect_error(sock)


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_an_error_and_the_next_client_is_served(primary, name):
    text = send_bad(primary.socket, name)
    assert BAD_REQUESTS[name][2] in text, text
    assert primary.run("fhfix:exit_with", 7, cwd=FIXTURES).returncode == 7


def template_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_bad_requests_leave_no_fd_in_the_template(runtime_dir):
    """Every fd a bad request carried is closed again (--pool 0: no pool
    member comes and goes while we count)."""
    p = PrimaryProc(runtime_dir, args=["--pool", "0"])
    try:
        before = template_fds(p.template_pid)
        for _ in range(3):
            for name in BAD_REQUESTS:
                send_bad(p.socket, name)
        assert p.run("fhfix:exit_with", 0, cwd=FIXTURES).returncode == 0
        wait_until(lambda: template_fds(p.template_pid) == before, timeout=10,
                   what=f"the template to be back to {before} fds")
        info = forkhost.info(p.prefix, runtime_dir)
        assert info["refused"] == 3 * len(BAD_REQUESTS)
    finally:
        code, _, err = p.stop()
    assert code == 0, err


def test_idle_connection_does_not_block_others(primary):
    """A client that connects and says nothing: others are served meanwhile."""
    with raw_connect(primary.socket) as idle:
        for code in (1, 2, 3):
            assert primary.run("fhfix:exit_with", code, cwd=FIXTURES).returncode == code
        sec = forkhost.launch("fhfix:exit_with", ["4"], prefix=primary.prefix,
                              runtime_dir=primary.runtime_dir, cwd=FIXTURES)
        with sec:
            assert sec.wait(30) == 4
        idle.shutdown(socket.SHUT_RDWR)


# The template's request timeout (FH_TEMPLATE_REQUEST_TIMEOUT_MS) as these
# tests set it, through FH_TEMPLATE_REQUEST_TIMEOUT_ENV: short, so that they
# wait for the timeout they check rather than for the default.
REQUEST_TIMEOUT_ENV = "FORKHOST_REQUEST_TIMEOUT_MS"


def test_idle_connection_times_out(runtime_dir):
    """After the request timeout, an idle connection gets an ERROR saying
    so and is closed."""
    p = PrimaryProc(runtime_dir, env=dict(os.environ, **{REQUEST_TIMEOUT_ENV: "200"}))
    try:
        with raw_connect(p.socket) as idle:
            text = expect_error(idle)
        assert text == "no request within 0.2s"
    finally:
        code, _, err = p.stop()
    assert code == 0, err


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "ten", "", "99999999999"])
def test_a_bad_request_timeout_is_refused_at_start(runtime_dir, value):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, **{REQUEST_TIMEOUT_ENV: value})
    r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--prefix", "rt"],
                       capture_output=True, text=True, env=env, cwd=FIXTURES, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert (f"template failed to start: {REQUEST_TIMEOUT_ENV} is not a number of "
            f"milliseconds from 1 up") in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_info_answers_and_closes(primary):
    with raw_connect(primary.socket) as sock:
        protocol.send(sock, protocol.INFO)
        msg = protocol.recv(sock)
        assert msg.type == protocol.INFO_REPLY and not msg.fds
        assert closed(sock)


# -- the client's limits -----------------------------------------------------

def launch_record_size(env: dict, argv: list[str]) -> int:
    """What forkhost-run sends: header+body, entry, argv (entry first), environ."""
    strings = [argv[0], *argv]
    strings += [f"{k}={v}" for k, v in env.items()]
    return HDR.size + BODY.size + sum(len(os.fsencode(s)) + 1 for s in strings)


def test_argv_and_env_at_and_over_the_limit(primary):
    """Exactly 192 KiB goes through; one byte more is refused by the client
    before it connects (125, the limit in the message)."""
    env = dict(primary.env)
    # No single string may exceed the kernel's MAX_ARG_STRLEN (128 KiB).
    base = ["fhfix:exit_with", "0", "a" * 100_000]
    room = MAX_MSG - launch_record_size(env, base + [""])
    argv = base + ["b" * room]
    assert launch_record_size(env, argv) == MAX_MSG
    r = subprocess.run([RUNNER, *argv], env=env, cwd=FIXTURES, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr

    argv[-1] += "b"
    r = subprocess.run([RUNNER, *argv], env=env, cwd=FIXTURES, capture_output=True,
                       timeout=60)
    assert r.returncode == 125
    assert r.stderr.decode() == (
        f"forkhost-run: argument list and environment too long ({MAX_MSG + 1} bytes; "
        f"the limit is {MAX_MSG})\n")
    # The Python clients refuse the same way.
    with pytest.raises(forkhost.ForkhostError, match="too long"):
        forkhost.launch("fhfix:exit_with", ["0", "a" * 200_000], prefix=primary.prefix,
                        runtime_dir=primary.runtime_dir, cwd=FIXTURES)
    r = subprocess.run([sys.executable, "-m", "forkhost", "run", *argv], env=env,
                       cwd=FIXTURES, capture_output=True, timeout=60)
    assert r.returncode == 125 and b"too long" in r.stderr


def test_at_most_32_extra_fds(primary):
    rd, wr = os.pipe()
    try:
        r = primary.run(*["--fd", wr] * 32, "fhfix:write_fds", cwd=FIXTURES,
                        pass_fds=(wr,))
        assert r.returncode == 32, r.stderr
        os.close(wr)
        wr = -1
        got = LineReader(rd).rest()
        assert got.splitlines() == [f"fd {n}".encode() for n in range(3, 35)]

        with open(os.devnull) as null:
            fd = null.fileno()
            r = primary.run(*["--fd", fd] * 33, "fhfix:write_fds", cwd=FIXTURES,
                            pass_fds=(fd,))
            assert r.returncode == 125
            assert r.stderr.decode() == ("forkhost-run: too many --fd options: at most "
                                         "32 fds can be passed\n")
            with pytest.raises(forkhost.ForkhostError, match="too many pass_fds"):
                forkhost.launch("fhfix:write_fds", prefix=primary.prefix,
                                runtime_dir=primary.runtime_dir, cwd=FIXTURES,
                                pass_fds=[fd] * 33)
    finally:
        os.close(rd)
        if wr >= 0:
            os.close(wr)


# -- other users -------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def run_as_nobody(primary, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, RUNNER, *map(str, argv)], env=primary.env, cwd="/",
                          capture_output=True, timeout=60)


@pytest.fixture
def as_root():
    need_root("running a client as another user (setpriv)")


def test_other_uid_cannot_reach_the_socket(as_root, primary):
    """The runtime directory is 0700: another user cannot even connect."""
    assert stat.S_IMODE(os.stat(primary.runtime_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(primary.socket).st_mode) == 0o600
    r = run_as_nobody(primary, "fhfix:exit_with", 0)
    assert r.returncode == 125
    assert r.stderr.decode() == (f"forkhost-run: cannot connect to {primary.socket}: "
                                 f"Permission denied\n")


@contextlib.contextmanager
def open_to_others(primary):
    """The runtime directory, the prefix's directory and the socket open
    to every user, for the time of the block."""
    prefix_dir = os.path.dirname(primary.socket)
    saved = {p: stat.S_IMODE(os.stat(p).st_mode)
             for p in (primary.runtime_dir, prefix_dir, primary.socket)}
    try:
        os.chmod(primary.runtime_dir, 0o711)
        os.chmod(prefix_dir, 0o711)
        os.chmod(primary.socket, 0o666)
        yield
    finally:
        for path, mode in saved.items():
            os.chmod(path, mode)


def test_other_uid_is_refused_by_the_template(as_root, primary):
    """Even when the modes let another user connect, the template checks
    SO_PEERCRED and refuses it."""
    with open_to_others(primary):
        for _ in range(3):
            r = run_as_nobody(primary, "fhfix:exit_with", 0)
            assert r.returncode == 125, r.stderr
            line = r.stderr.decode()
            assert line.startswith("forkhost-run: permission denied: uid 65534 may not "
                                   f"use the template of prefix '{primary.prefix}'"), line
            assert line.count("\n") == 1
    assert primary.run("fhfix:exit_with", 3, cwd=FIXTURES).returncode == 3


def test_other_uid_is_refused_the_python_client_too(as_root, primary):
    """`forkhost run` (the Python client) says the same."""
    r = subprocess.run([*NOBODY, sys.executable, "-c", "pass"], cwd="/",
                       capture_output=True, timeout=60)
    if r.returncode != 0:       # e.g. pyenv's libpython under /root
        pytest.skip(f"{sys.executable} does not start as uid 65534: "
                    f"{r.stderr.decode(errors='replace').strip()}")
    with open_to_others(primary):
        r = subprocess.run([*NOBODY, sys.executable, "-m", "forkhost", "run",
                            "fhfix:exit_with", "0"], env=primary.env, cwd="/",
                           capture_output=True, timeout=60)
    assert r.returncode == 125, r.stderr
    assert r.stderr.decode().startswith("forkhost run: permission denied: uid 65534"), \
        r.stderr
    assert primary.run("fhfix:exit_with", 3, cwd=FIXTURES).returncode == 3


# -- capacity ----------------------------------------------------------------

def test_max_secondaries_refuses_then_recovers(runtime_dir):
    p = PrimaryProc(runtime_dir, args=["--max-secondaries", "2"])
    sleepers = []
    try:
        for _ in range(2):
            s = p.popen("fhfix:sleeper", cwd=FIXTURES, stdout=subprocess.PIPE)
            sleepers.append(s)
            assert LineReader(s.stdout).readline() == b"ready\n"
        r = p.run("fhfix:exit_with", 0, cwd=FIXTURES)
        assert r.returncode == 125
        assert r.stderr.decode() == (
            "forkhost-run: too many secondaries: the template of prefix 't' runs its "
            "limit of 2 (--max-secondaries)\n")
        with pytest.raises(forkhost.RefusedError, match="too many secondaries"):
            forkhost.launch("fhfix:exit_with", ["0"], prefix=p.prefix,
                            runtime_dir=runtime_dir, cwd=FIXTURES)
        sleepers[0].terminate()
        assert sleepers[0].wait(30) == -15
        assert p.run("fhfix:exit_with", 9, cwd=FIXTURES).returncode == 9
    finally:
        reap(*sleepers)
        code, _, err = p.stop()
    assert code == 0, err


def test_max_secondaries_counts_only_running_ones(runtime_dir):
    """One at a time under --max-secondaries 1: each launch starts after the
    previous client saw its secondary exit, so none may be refused."""
    p = PrimaryProc(runtime_dir, args=["--max-secondaries", "1"])
    try:
        codes = [p.run("fhfix:exit_with", 0, cwd=FIXTURES) for _ in range(20)]
        refused = [r.stderr.decode() for r in codes if r.returncode != 0]
        assert refused == []
    finally:
        code, _, err = p.stop()
    assert code == 0, err
