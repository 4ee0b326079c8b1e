"""forkhost.Secondary's own bookkeeping, on a socket pair standing in for
the template's launch connection (no primary needed)."""

import os
import resource
import socket
import subprocess
import sys

import pytest

from forkhost._client import Secondary
from forkhost._errors import ForkhostError


@pytest.fixture
def sleeper():
    """A process to be the 'secondary' (its pidfd is what kill() uses)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fd = os.pidfd_open(p.pid)
    yield p.pid, fd
    os.close(fd)
    p.kill()
    p.wait()


def _high_socketpair(at: int):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = os.dup2(a.fileno(), at, inheritable=False)
    a.close()
    return socket.socket(fileno=fd), b


def test_poll_works_on_an_fd_past_1024(sleeper):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1200:
        pytest.skip("RLIMIT_NOFILE too low")
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    pid, pidfd = sleeper
    sock, peer = _high_socketpair(1100)
    sec = Secondary(sock, pid, os.dup(pidfd), [b"x"])
    try:
        assert sec.poll() is None          # select() raised ValueError here
    finally:
        sec.close()
        peer.close()


def test_a_lost_template_is_said_again_not_ebadf(sleeper):
    pid, pidfd = sleeper
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sec = Secondary(a, pid, os.dup(pidfd), [b"x"])
    b.close()
    with pytest.raises(ForkhostError, match="lost the template"):
        sec.poll()
    # The connection is closed now: later calls say the same, rather than
    # ValueError/OSError from a closed socket.
    with pytest.raises(ForkhostError, match="lost the template"):
        sec.poll()
    with pytest.raises(ForkhostError, match="lost the template"):
        sec.wait()
    with pytest.raises(ForkhostError, match="lost the template"):
        sec.wait(0.1)
    assert os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT).si_status == 9


def test_the_umask_is_read_without_setting_it(monkeypatch):
    """launch() finds the umask to pass on without os.umask(), which would
    change it for a moment under the program's other threads."""
    from forkhost import _client as client
    old = os.umask(0o027)
    try:
        def no_umask(_mask):
            raise AssertionError("os.umask() called")
        monkeypatch.setattr(os, "umask", no_umask)
        assert client.current_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_template_pidfd_past_1024_and_readable():
    """Primary.template_alive()/wait_template() and runtime.readable() take
    any fd number (a primary started late in a program with many files)."""
    from types import SimpleNamespace

    from forkhost import _runtime as runtime
    from forkhost.primary import Primary
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1200:
        pytest.skip("RLIMIT_NOFILE too low")
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    r, w = os.pipe()
    high = os.dup2(r, 1150, inheritable=False)
    os.close(r)
    try:
        assert runtime.readable(high, 0) is False
        fake = SimpleNamespace(template_pidfd=high, template_pid=0)
        assert Primary.template_alive(fake) is True
        assert Primary.wait_template(fake, 0) is None
        os.write(w, b"x")
        assert runtime.readable(high, 0) is True
    finally:
        os.close(high)
        os.close(w)


@pytest.mark.parametrize("body", ["bad_pid", "short"])
def test_a_bad_started_leaks_nothing(runtime_dir, body):
    """launch() given a malformed STARTED (or one with pid <= 0) raises
    ProtocolError and closes the pidfd it came with and the connection
    (the fixture checks for leaked fds), as forkhost-run refuses it."""
    from test_client import FakeTemplate, record

    import forkhost
    from forkhost import _protocol as protocol
    data = protocol.encode_started(-5) if body == "bad_pid" else b"\0\0"
    r, w = os.pipe()
    try:
        t = FakeTemplate(runtime_dir, "fake", [(record(protocol.STARTED, data, 1), [r])])
        with pytest.raises(forkhost.ProtocolError, match="STARTED"):
            forkhost.launch("x:y", prefix="fake", runtime_dir=runtime_dir)
        t.close()
    finally:
        os.close(r)
        os.close(w)


def test_clients_stdio_constants_are_subprocess_values():
    """client.py keeps PIPE/STDOUT/DEVNULL as literals (`forkhost run`
    starts without importing subprocess): they must stay subprocess's."""
    from forkhost import _client as client
    assert (client.PIPE, client.STDOUT, client.DEVNULL) == \
        (subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL)
