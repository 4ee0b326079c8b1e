"""Refusals the template decides before the fork, and fairness between
the processes that connect to template.sock (issue 22, items 5 and 9).

- A Python entry whose stdin, stdout or stderr is a directory: python
  itself stops in init_sys_streams before running a line; forkhost answers
  the same, before STARTED and without forking a secondary: the same text
  on the client's stderr and the same exit status as `python3 SCRIPT` run
  directly with the same redirection.  A native entry runs with it, as
  the program does directly.
- A cwd fd that is not a directory (only a raw client sends one): one
  ERROR line, exit code 125, no STARTED; the template keeps serving.
- One process's idle connections (no request sent) take at most its share
  of the template's waiting connections; its surplus is refused with one
  ERROR line, and other clients' launches are served meanwhile.  Pool
  members hand such connections to the template and are idle again.
"""

from __future__ import annotations

import array
import json
import os
import re
import select
import socket
import subprocess
import sys

import pytest

import forkhost
from forkhost import _protocol as protocol
from fhtest import FIXTURES, RUNNER, LineReader, PrimaryProc, raw_connect, wait_until

POOLS = {"pool": [], "no-pool": ["--pool", "0"]}

# python prints the address of its main thread, which ASLR places anew in
# every process: the one byte sequence that cannot match between two runs.
THREAD = re.compile(rb"^Current thread 0x[0-9a-f]+ ", re.M)


def normalised(err: bytes) -> bytes:
    return THREAD.sub(b"Current thread 0xADDRESS ", err)


@pytest.fixture(params=list(POOLS))
def any_primary(request, runtime_dir):
    p = PrimaryProc(runtime_dir, args=POOLS[request.param])
    yield p
    code, _, err = p.stop()
    assert code == 0, err


def launched(p: PrimaryProc) -> int:
    return forkhost.info(p.prefix, p.runtime_dir)["launched"]


def run_with_dir_on(fd: int, argv: list[str], env=None, cwd=None):
    """argv with fd `fd` a directory (as the shell's `FD</tmp`); the other
    two of stdin/stdout/stderr are pipes.  (returncode, stdout, stderr)."""
    d = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        stdio = [subprocess.DEVNULL, subprocess.PIPE, subprocess.PIPE]
        stdio[fd] = d
        r = subprocess.run(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                           env=env, cwd=cwd, timeout=60)
    finally:
        os.close(d)
    return r.returncode, r.stdout or b"", r.stderr or b""


# -- a directory as a Python entry's stdio -----------------------------------

@pytest.mark.parametrize("fd", [0, 1, 2])
def test_python_entry_with_a_directory_as_stdio_is_refused_like_python(
        any_primary, tmp_path, fd):
    script = tmp_path / "t.py"
    script.write_text("print('ran')\n")
    direct = run_with_dir_on(fd, [sys.executable, str(script)])
    before = launched(any_primary)
    via = run_with_dir_on(fd, [RUNNER, "--connect-timeout", "30", str(script)],
                          env=any_primary.env)
    assert via[0] == direct[0] == 1, (direct, via)
    assert via[1] == direct[1] == b""
    assert normalised(via[2]) == normalised(direct[2]), (direct, via)
    if fd != 2:                 # with fd 2 a directory, nothing shows
        assert direct[2].startswith(b"Fatal Python error: init_sys_streams: ")
    # Refused before the fork: no secondary was started for it.
    assert launched(any_primary) == before
    r = any_primary.run("fhfix:exit_with", 5, cwd=FIXTURES)
    assert r.returncode == 5, r.stderr


def test_forkhost_run_and_launch_say_it_like_python(primary, tmp_path):
    """The Python clients: `forkhost run` writes python's words as they
    are; forkhost.launch() writes them to the stderr it was given and
    raises RefusedError with python's exit status."""
    script = tmp_path / "t.py"
    script.write_text("print('ran')\n")
    direct = run_with_dir_on(1, [sys.executable, str(script)])
    via = run_with_dir_on(1, [sys.executable, "-m", "forkhost", "run", str(script)],
                          env=primary.env)
    assert via[0] == direct[0] == 1, (direct, via)
    assert normalised(via[2]) == normalised(direct[2]), (direct, via)
    d = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with pytest.raises(forkhost.RefusedError) as err:
            forkhost.launch(str(script), stdout=d, stderr=w, prefix=primary.prefix,
                            runtime_dir=primary.runtime_dir)
        os.close(w)
        w = -1
        with open(r, "rb", closefd=False) as f:
            said = f.read()
    finally:
        for fd in (d, r, w):
            if fd >= 0:
                os.close(fd)
    assert err.value.exit_code == 1
    assert normalised(said) == normalised(direct[2])


def test_python_module_entry_with_stdout_a_directory(any_primary):
    """-m and module:function entries are Python too."""
    direct = run_with_dir_on(1, [sys.executable, "-m", "fhfix"], cwd=FIXTURES)
    via = run_with_dir_on(1, [RUNNER, "--connect-timeout", "30", "-m", "fhfix"],
                          env=any_primary.env, cwd=FIXTURES)
    assert via[0] == direct[0] == 1, (direct, via)
    assert normalised(via[2]) == normalised(direct[2]), (direct, via)
    via = run_with_dir_on(1, [RUNNER, "--connect-timeout", "30", "fhfix:exit_with", "0"],
                          env=any_primary.env, cwd=FIXTURES)
    assert via[0] == 1 and normalised(via[2]) == normalised(direct[2]), via


NATIVE = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    if (write(1, "hello\n", 6) < 0) {
        fprintf(stderr, "write: %s\n", strerror(errno));
        return 3;
    }
    return 0;
}
"""


def test_native_entry_with_stdout_a_directory_runs_as_directly(any_primary, tmp_path):
    src = tmp_path / "w.c"
    src.write_text(NATIVE)
    exe = tmp_path / "w"
    subprocess.run(["cc", "-fPIE", "-pie", "-o", str(exe), str(src)], check=True)
    direct = run_with_dir_on(1, [str(exe)])
    # The shell's `1</tmp` opens it read-only: the write fails (EBADF).
    assert direct[0] == 3 and direct[2].startswith(b"write: "), direct
    before = launched(any_primary)
    via = run_with_dir_on(1, [RUNNER, "--connect-timeout", "30", str(exe)],
                          env=any_primary.env)
    assert via == direct
    assert launched(any_primary) == before + 1


# -- a cwd fd that is not a directory ------------------------------------------

def launch_record(entry: bytes, args: list[bytes], nfds: int) -> bytes:
    strings = b"".join(s + b"\0" for s in [entry, entry, *args])
    body = protocol.LAUNCH_BODY.pack(0, 0o022, 0, 0, 1 + len(args), 0,
                                     len(strings), 0, 0, 0) + strings
    return protocol.HDR.pack(protocol.MAGIC, protocol.VERSION, protocol.LAUNCH,
                             protocol.HDR.size + len(body), nfds, 0) + body


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_PATH], ids=["rdonly", "path"])
def test_cwd_fd_not_a_directory_is_refused_before_started(any_primary, tmp_path, flags):
    f = tmp_path / "plain"
    f.write_bytes(b"not a directory\n")
    before = launched(any_primary)
    fd = os.open(f, flags | os.O_CLOEXEC)
    try:
        with raw_connect(any_primary.socket) as sock:
            sock.sendmsg([launch_record(b"fhfix:exit_with", [b"0"], 1)],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            msg = protocol.recv(sock)
            assert msg is not None
            msg.close_fds()
            assert msg.type == protocol.ERROR, hex(msg.type)
            code, text = protocol.decode_error(msg.body)
            assert protocol.recv(sock) is None
    finally:
        os.close(fd)
    assert code == 125
    assert text == ("the client's cwd fd is not a directory (a client sends its "
                    "cwd as an O_PATH directory fd)")
    assert launched(any_primary) == before
    r = any_primary.run("fhfix:exit_with", 6, cwd=FIXTURES)
    assert r.returncode == 6, r.stderr


# -- fairness between peers ------------------------------------------------------

SHARE = re.compile(r"the template is busy: process (\d+) has (\d+) connections "
                   r"waiting for their request \(the limit is (\d+) per process\)")
GLOBAL_CAP = 256       # docs/protocol.md, Limits: connections waiting

# A process that opens N connections to template.sock and sends nothing:
# it prints "connected", then one JSON line per connection answered
# ([exit_code, text], or null for a close without ERROR), and ends when
# its stdin does.
HOG = r"""
import json, select, socket, sys
from forkhost import _protocol as protocol
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(30)
    s.connect(sys.argv[1])
    socks.append(s)
print("connected", flush=True)
open_ = set(socks)
while True:
    r, _, _ = select.select([sys.stdin, *open_], [], [])
    if sys.stdin in r:
        break
    for s in r:
        msg = protocol.recv(s)
        open_.discard(s)
        if msg is not None:
            msg.close_fds()
        out = None if msg is None or msg.type != protocol.ERROR else \
            list(protocol.decode_error(msg.body))
        print(json.dumps(out), flush=True)
"""


def test_one_process_idle_connections_do_not_block_another_launch(any_primary):
    """One process connects more than the template keeps waiting in all
    (before: every slot full for the request timeout, 10 s, and every
    other launch refused)."""
    n = GLOBAL_CAP + 8
    hog = subprocess.Popen([sys.executable, "-c", HOG, any_primary.socket, str(n)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=FIXTURES)
    try:
        out = LineReader(hog.stdout)
        assert out.readline() == b"connected\n"
        # Another client's launch, queued behind all of those, is served.
        before = launched(any_primary)
        r = any_primary.run("--connect-timeout", "30", "fhfix:exit_with", 9,
                            cwd=FIXTURES)
        assert r.returncode == 9, r.stderr
        assert launched(any_primary) == before + 1
        # The hog's share is kept waiting, the rest refused: one line each.
        first = json.loads(out.readline())
        assert first is not None and first[0] == 125, first
        m = SHARE.fullmatch(first[1])
        assert m, first
        assert int(m[1]) == hog.pid
        limit = int(m[3])
        assert 0 < limit < GLOBAL_CAP
        for _ in range(n - limit - 1):
            answer = json.loads(out.readline())
            assert answer is not None and answer[0] == 125, answer
            assert SHARE.fullmatch(answer[1]), answer
        # The kept ones are still open and unanswered.
        assert select.select([hog.stdout], [], [], 0)[0] == []
        r = any_primary.run("fhfix:exit_with", 0, cwd=FIXTURES)
        assert r.returncode == 0, r.stderr
    finally:
        hog.stdin.close()
        hog.wait(30)
        hog.stdout.close()
    assert hog.returncode == 0


def test_idle_connections_do_not_park_the_pool_members(runtime_dir):
    """Members that accepted idle connections hand them to the template and
    are idle again; the next launch is a pool member's."""
    p = PrimaryProc(runtime_dir, args=["--pool", "2"])
    socks: list[socket.socket] = []
    try:
        for _ in range(4):
            socks.append(raw_connect(p.socket))

        def members_idle():
            info = forkhost.info(p.prefix, runtime_dir)
            return [m["state"] for m in info["members"]] == ["idle", "idle"]

        wait_until(members_idle, timeout=30, what="both members idle")
        info = forkhost.info(p.prefix, runtime_dir)
        r = p.run("--connect-timeout", "30", "fhfix:exit_with", 4, cwd=FIXTURES)
        assert r.returncode == 4, r.stderr
        after = forkhost.info(p.prefix, runtime_dir)
        assert after["pool_launches"] == info["pool_launches"] + 1
        # The idle connections were neither answered nor closed meanwhile.
        assert select.select(socks, [], [], 0)[0] == []
    finally:
        for s in socks:
            s.close()
        code, _, err = p.stop()
    assert code == 0, err
