"""forkhost-run's own behaviour: its options and messages, and how it
treats a template that misbehaves, end to end; and `forkhost run`, the
Python client, taking the same options.

The template here is a fake one: a real SEQPACKET socket in the runtime
directory, served by a thread of the test, so that each reply (or the lack
of one) is exactly what the test wants the client to see.  On x86_64 Linux
the client runs on its own libc-free runtime (csrc/client/rt/rt.c), so
these messages are also the check that its formatting and strerror print
what libc would.
"""

from __future__ import annotations

import ast
import errno
import os
import platform
import socket
import struct
import subprocess
import sys
import threading

import pytest

from fhtest import FIXTURES, RUNNER

import forkhost
from forkhost import _protocol as protocol


# Where forkhost-run is built on csrc/client/rt/rt.c (build_native.py).
NO_LIBC_BUILD = sys.platform == "linux" and platform.machine() == "x86_64"


def run_client(argv, runtime_dir, extra_env=None, **kw):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir)
    for name in ("FORKHOST_PREFIX", "FORKHOST_CONNECT_TIMEOUT"):
        env.pop(name, None)
    env.update(extra_env or {})
    return subprocess.run([RUNNER, *argv], env=env, capture_output=True, timeout=60,
                          **kw)


class FakeTemplate:
    """Listens at RUNTIME/PREFIX/template.sock and serves one connection:
    reads the LAUNCH (closing the fds it carries), sends `replies`, each a
    (bytes, fds) pair, then holds the connection until the client closes."""

    def __init__(self, runtime_dir: str, prefix: str, replies=()):
        d = os.path.join(runtime_dir, prefix)
        os.makedirs(d, mode=0o700)
        self.path = os.path.join(d, "template.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.replies = list(replies)
        self.launches: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            msg, fds, _, _ = socket.recv_fds(conn, protocol.MAX_MSG, protocol.MAX_FDS)
            for fd in fds:
                os.close(fd)
            self.launches.append(msg)
            for data, fds in self.replies:
                conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack(f"{len(fds)}i", *fds))] if fds else [])
            while conn.recv(protocol.MAX_MSG):
                pass

    def close(self):
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.sock.close()


@pytest.fixture
def fake(runtime_dir):
    made = []

    def make(replies=(), prefix="fake"):
        t = FakeTemplate(runtime_dir, prefix, replies)
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()


def record(mtype: int, body: bytes = b"", nfds: int = 0, *, magic=protocol.MAGIC,
           version=protocol.VERSION, length=None) -> bytes:
    n = protocol.HDR.size + len(body) if length is None else length
    return protocol.HDR.pack(magic, version, mtype, n, nfds, 0) + body


# -- options and usage -----------------------------------------------------

def test_help_and_version(runtime_dir):
    r = run_client(["--help"], runtime_dir)
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.startswith(b"Usage: forkhost-run [OPTIONS] ENTRY [ARGS...]\n")
    assert b"at most 32)" in r.stdout
    r = run_client(["--version"], runtime_dir)
    assert r.returncode == 0
    built = ", without libc" if NO_LIBC_BUILD else ""
    assert r.stdout == (f"forkhost-run {forkhost.__version__} "
                        f"(protocol {protocol.VERSION}{built})\n").encode()


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "x:y"], "unrecognized option '--bogus'"),
    (["-x", "x:y"], "invalid option -- 'x'"),
    ([], "missing ENTRY"),
    (["--prefix"], "option '--prefix' requires an argument"),
    (["-m"], "option '-m' requires a MODULE"),
    (["--runtime-dir=", "x:y"], "option '--runtime-dir' requires a non-empty value"),
    (["--fd", "3x", "x:y"], "invalid --fd value '3x': not a file descriptor number"),
    (["--connect-timeout", "0x10", "x:y"],
     "invalid --connect-timeout value '0x10': not a number of seconds"),
    (["--connect-timeout=-1", "x:y"],
     "invalid --connect-timeout value '-1': not a number of seconds"),
    (["--connect-timeout", " 1", "x:y"],
     "invalid --connect-timeout value ' 1': not a number of seconds"),
])
def test_usage_errors_say_what_and_where_to_read(runtime_dir, argv, message):
    r = run_client(argv, runtime_dir)
    assert r.returncode == 125
    assert r.stdout == b""
    assert r.stderr.decode() == (f"forkhost-run: {message}\n"
                                 f"Try 'forkhost-run --help'.\n")


@pytest.mark.parametrize("argv, env, message", [
    (["--fd", "1", "x:y"], {}, "--fd 1: the standard streams 0, 1 and 2 are always "
     "passed; --fd is for fds 3 and up"),
    (["--fd", "999", "x:y"], {}, "--fd 999: not an open file descriptor"),
    (["--prefix", "a/b", "x:y"], {}, "invalid prefix 'a/b' (from --prefix): use 1 to 64 "
     "of A-Z a-z 0-9 . _ -, not '.' or '..'"),
    (["x:y"], {"FORKHOST_PREFIX": ".."}, "invalid prefix '..' (from FORKHOST_PREFIX): "
     "use 1 to 64 of A-Z a-z 0-9 . _ -, not '.' or '..'"),
    (["x:y"], {"FORKHOST_CONNECT_TIMEOUT": "soon"},
     "invalid FORKHOST_CONNECT_TIMEOUT 'soon': not a number of seconds"),
])
def test_bad_options_and_environment(runtime_dir, argv, env, message):
    r = run_client(argv, runtime_dir, env)
    assert r.returncode == 125
    assert r.stderr.decode() == f"forkhost-run: {message}\n"


def test_too_many_fds(runtime_dir):
    r, w = os.pipe()
    try:
        argv = []
        for _ in range(protocol.MAX_EXTRA_FDS + 1):
            argv += ["--fd", str(r)]
        res = run_client(argv + ["x:y"], runtime_dir, pass_fds=[r])
    finally:
        os.close(r)
        os.close(w)
    assert res.returncode == 125
    assert res.stderr.decode() == ("forkhost-run: too many --fd options: at most 32 "
                                   "fds can be passed\n")


def test_socket_path_too_long(runtime_dir):
    long_dir = runtime_dir + "/" + "d" * 100
    r = run_client(["--runtime-dir", long_dir, "x:y"], runtime_dir)
    path = f"{long_dir}/forkhost/template.sock"
    assert r.returncode == 125
    assert r.stderr.decode() == (f"forkhost-run: socket path is too long for a Unix "
                                 f"socket ({len(path)} bytes; the limit is 107): {path}\n")


def test_connect_error_names_the_system_error(runtime_dir):
    # A file where the prefix's directory should be: ENOTDIR from connect.
    open(os.path.join(runtime_dir, "file"), "w").close()
    r = run_client(["--prefix", "p", "x:y"], os.path.join(runtime_dir, "file"))
    sock = os.path.join(runtime_dir, "file", "p", "template.sock")
    assert r.returncode == 125
    assert r.stderr.decode() == (f"forkhost-run: cannot connect to {sock}: "
                                 f"{os.strerror(errno.ENOTDIR)}\n")


# -- a template that does not answer as it should ----------------------------

@pytest.mark.parametrize("how, seconds", [("option", "0.25"), ("env", "25e-2"),
                                          ("option", "1e-1")])
def test_connect_timeout_when_the_template_never_answers(runtime_dir, fake, how,
                                                         seconds):
    t = fake()
    if how == "option":
        r = run_client(["--prefix", "fake", "--connect-timeout", seconds, "x:y"],
                       runtime_dir)
    else:
        r = run_client(["--prefix", "fake", "x:y"], runtime_dir,
                       {"FORKHOST_CONNECT_TIMEOUT": seconds})
    assert r.returncode == 125
    assert r.stderr.decode() == (f"forkhost-run: timed out after {float(seconds):g}s "
                                 f"waiting for the template at {t.path} to start the "
                                 f"secondary\n")
    t.close()
    # What it sent is a well-formed LAUNCH of entry x:y.
    magic, version, mtype, length, nfds, _ = protocol.HDR.unpack_from(t.launches[0])
    assert (magic, version, mtype, length) == (protocol.MAGIC, protocol.VERSION,
                                               protocol.LAUNCH, len(t.launches[0]))
    assert nfds == 4 and b"\0x:y\0x:y\0" in t.launches[0]


@pytest.mark.parametrize("reply, message", [
    (record(protocol.EXITED, protocol.encode_exited(0, 0), magic=0x12345678),
     "protocol error: {path} did not answer as a forkhost template"),
    (record(protocol.EXITED, protocol.encode_exited(0, 0), version=9),
     f"protocol version mismatch: forkhost-run speaks {protocol.VERSION}, the template speaks 9"),
    (record(0x7F), "protocol error: unexpected message type 0x7f from {path}"),
    (record(protocol.EXITED, protocol.encode_exited(0, 0), length=99),
     "protocol error: a reply from {path} is 32 bytes, its header says 99"),
    (record(protocol.STARTED, b"\0" * 3),
     "protocol error: message type 0x81 from {path} has a bad length (27 bytes)"),
    (record(protocol.EXITED, protocol.encode_exited(0, 0)),
     "protocol error: {path} sent EXITED before STARTED"),
    (record(protocol.ERROR, protocol.ERROR_BODY.pack(300, 2) + b"no"),
     "protocol error: an ERROR from {path} has exit code 300: no"),
])
def test_a_misbehaving_template_gets_125_and_one_line(runtime_dir, fake, reply,
                                                      message):
    t = fake([(reply, [])])
    r = run_client(["--prefix", "fake", "x:y"], runtime_dir)
    assert r.returncode == 125
    assert r.stderr.decode() == "forkhost-run: " + message.format(path=t.path) + "\n"


def test_started_with_a_bad_pid(runtime_dir, fake):
    r_, w_ = os.pipe()
    try:
        t = fake([(record(protocol.STARTED, protocol.encode_started(-5), 1), [r_])])
        r = run_client(["--prefix", "fake", "x:y"], runtime_dir)
    finally:
        os.close(r_)
        os.close(w_)
    assert r.returncode == 125
    assert r.stderr.decode() == (f"forkhost-run: protocol error: {t.path} sent STARTED "
                                 f"with pid -5\n")


def test_the_templates_error_text_and_code(runtime_dir, fake):
    fake([(record(protocol.ERROR, protocol.encode_error(126, "cannot load x: why")), [])])
    r = run_client(["--prefix", "fake", "x:y"], runtime_dir)
    assert (r.returncode, r.stderr) == (126, b"forkhost-run: cannot load x: why\n")


# -- forkhost run: the same options in Python ----------------------------------

FORKHOST_RUN = [sys.executable, "-m", "forkhost", "run"]


def test_python_run_takes_forkhost_runs_options(primary):
    """Options before ENTRY, as forkhost-run takes them (argparse once
    refused every one of them as 'unrecognized arguments', exit 2)."""
    env = {k: v for k, v in primary.env.items()
           if k not in ("FORKHOST_PREFIX", "FORKHOST_RUNTIME_DIR")}
    where = ["--prefix", primary.prefix, f"--runtime-dir={primary.runtime_dir}"]
    r_, w_ = os.pipe()
    try:
        r = subprocess.run(FORKHOST_RUN + where + ["--connect-timeout", "inf", "--fd",
                                                   str(w_), "fhfix:write_fds"],
                           env=env, cwd=FIXTURES, pass_fds=[w_], capture_output=True,
                           timeout=60)
        os.close(w_)
        w_ = -1
        assert r.returncode == 1, r.stderr
        assert os.read(r_, 100) == b"fd 3\n"
    finally:
        os.close(r_)
        if w_ >= 0:
            os.close(w_)
    for module in (["-m", "pkgfix.mod"], ["-mpkgfix.mod"]):
        r = subprocess.run(FORKHOST_RUN + where + module + ["x", "seven"], env=env,
                           cwd=FIXTURES, capture_output=True, timeout=60)
        assert (r.returncode, r.stdout) == (7, b"pkgfix.mod ['x', 'seven'] __main__\n")
    # Outside the checkout, whose forkhost/ (without its generated parts)
    # would shadow the installed package.
    r = subprocess.run(FORKHOST_RUN + ["--help"], env=env, capture_output=True,
                       cwd=FIXTURES, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(b"usage: forkhost run [--prefix P]")


@pytest.mark.parametrize("argv, env, message", [
    (["--bogus", "x:y"], {}, "unknown option '--bogus'\nTry 'forkhost run --help'."),
    (["--connect-timeout", "nan", "x:y"], {},
     "invalid --connect-timeout value 'nan': not a number of seconds\n"
     "Try 'forkhost run --help'."),
    (["--connect-timeout=-1", "x:y"], {},
     "invalid --connect-timeout value '-1': not a number of seconds\n"
     "Try 'forkhost run --help'."),
    (["x:y"], {"FORKHOST_CONNECT_TIMEOUT": "soon"},
     "invalid FORKHOST_CONNECT_TIMEOUT 'soon': not a number of seconds"),
    # Read by libforkhost's C, whose strtod, unlike forkhost-run's, takes hex.
    (["x:y"], {"FORKHOST_CONNECT_TIMEOUT": "0x10"},
     "invalid FORKHOST_CONNECT_TIMEOUT '0x10': not a number of seconds"),
    (["-m"], {}, "missing MODULE after -m\nTry 'forkhost run --help'."),
    (["--fd", "+3", "x:y"], {}, "invalid value '+3' for --fd\nTry 'forkhost run --help'."),
])
def test_python_run_usage_errors_exit_125(runtime_dir, argv, env, message):
    r = subprocess.run(FORKHOST_RUN + argv, capture_output=True, timeout=60, cwd="/",
                       env=dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, **env))
    assert r.returncode == 125
    assert r.stderr.decode() == f"forkhost run: {message}\n"


def test_the_commands_that_talk_to_a_primary_load_no_native_code():
    """`import forkhost` binds its names on first use: `forkhost run`, `ps`
    and `stop` need neither the native library nor the primary."""
    probe = ("import sys, forkhost, forkhost._cli\n"
             "print(sorted(m for m in sys.modules if m.startswith('forkhost')))\n"
             "from forkhost import *\n"
             "missing = [n for n in forkhost.__all__ if n not in globals()]\n"
             "print(missing, forkhost.Primary.__module__, forkhost.launch.__module__,\n"
             "      forkhost.ipc.__name__, forkhost.Ring.__module__)\n"
             "try:\n"
             "    forkhost.no_such_name\n"
             "except AttributeError as e:\n"
             "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    loaded, names, error = r.stdout.splitlines()
    assert not {"forkhost._native", "forkhost.primary", "forkhost.shm",
                "forkhost.ipc"} & set(ast.literal_eval(loaded)), loaded
    assert names == ("[] forkhost.primary forkhost._client forkhost.ipc "
                     "forkhost.shm.ring")
    assert error == "module 'forkhost' has no attribute 'no_such_name'"


def test_secondaries_find_the_shared_memory_layer_imported(primary, tmp_path):
    """What `import forkhost` no longer imports, the primary still does
    before the template fork: a secondary using forkhost.shm does not
    import it on every launch."""
    (tmp_path / "shmcheck.py").write_text(
        "import sys\n"
        "def main(argv):\n"
        "    print(sorted(m for m in ('forkhost.shm', 'forkhost.shm.ring',\n"
        "                             'forkhost.shm.hash') if m in sys.modules))\n")
    r = primary.run("shmcheck:main", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"['forkhost.shm', 'forkhost.shm.hash', 'forkhost.shm.ring']\n"


# -- how it is built ---------------------------------------------------------

def _program_headers(path: str) -> list[int]:
    """The p_type of each ELF64 little-endian program header."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "ELF64 LE"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + k * phentsize)[0]
            for k in range(phnum)]


@pytest.mark.skipif(not NO_LIBC_BUILD,
                    reason="the libc-free runtime is written for x86_64 Linux")
def test_client_links_no_libc_on_x86_64():
    """build_native falls back to libc when the libc-free build fails; this
    catches that happening where it should not.  A libc-free binary has no
    interpreter (PT_INTERP, 3) and no thread-local storage (PT_TLS, 7):
    glibc, static or not, has TLS for errno and its own state."""
    types = _program_headers(RUNNER)
    assert 3 not in types and 7 not in types, types


def test_python_run_too_many_fds(runtime_dir):
    """As forkhost-run says it, not an IndexError from the C struct's array."""
    r, w = os.pipe()
    try:
        argv = []
        for _ in range(protocol.MAX_EXTRA_FDS + 1):
            argv += ["--fd", str(r)]
        res = subprocess.run(FORKHOST_RUN + argv + ["x:y"], capture_output=True,
                             timeout=60, cwd="/", pass_fds=[r],
                             env=dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir))
    finally:
        os.close(r)
        os.close(w)
    assert res.returncode == 125
    assert res.stderr.decode() == (f"forkhost run: too many --fd options: at most "
                                   f"{protocol.MAX_EXTRA_FDS} fds can be passed\n")


def test_python_run_with_stdout_closed(runtime_dir):
    """sys.stdout is None then: forkhost run still launches (here: finds no
    primary, as forkhost-run would say it)."""
    r = subprocess.run(FORKHOST_RUN + ["x:y"], capture_output=True, timeout=60,
                       cwd="/", preexec_fn=lambda: os.close(1),
                       env=dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir))
    sock = os.path.join(runtime_dir, "forkhost", "template.sock")
    assert r.returncode == 125
    assert r.stderr.decode() == (f"forkhost run: no forkhost primary for prefix "
                                 f"'forkhost' (looked for {sock})\n")
