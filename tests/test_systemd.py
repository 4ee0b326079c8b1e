"""`forkhost primary` under systemd (docs/systemd.md), with the protocol
played by the test: its own NOTIFY_SOCKET (a datagram socket it reads),
socket activation by fixtures/sd_activate.py (binds, puts the sockets at
fds 3 and 4 with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, execs the
primary), and a client moved into a child cgroup of this machine's cgroup2
mount.  systemd itself is not needed (nor, here, running).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fhtest import (FIXTURES, RUNNER, LineReader, leaves_nothing, module_primary, reap,
                    stop_primary, wait_until)
from forkhost import _doctor

ACTIVATE = str(FIXTURES / "sd_activate.py")

WORKER = """\
import json, os, sys
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({k: os.environ.get(k) for k in
               ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
"""

JOIN_IPC = """\
from forkhost import ipc
ipc.start()
print("joined")
"""

EARLY_PY = """\
import forkhost, sys
r = forkhost.run(["script.py", "early-py"], connect_timeout=0.1, capture_output=True)
sys.stdout.buffer.write(r.stdout)
sys.exit(r.returncode)
"""

CGROUP = """\
with open("/proc/self/cgroup") as f:
    print([l[3:].strip() for l in f if l.startswith("0::")][0])
"""


class ActivatedPrimary:
    """A primary started the way systemd starts a Type=notify service with
    a .socket unit: template.sock and ipc.sock passed as fds 3 and 4, a
    NOTIFY_SOCKET and a 400 ms watchdog.  A client connects (and sends its
    LAUNCH) before the primary is exec'd, with a connect timeout far below
    the primary's start: it must wait, not fail."""

    def __init__(self, d: str):
        self.runtime_dir, self.prefix = d, "t"
        self.dir = Path(d) / "t"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind(f"{d}/notify")
        self.notify.setblocking(False)
        self.messages: list[str] = []
        (Path(d) / "worker.py").write_text(WORKER)
        (Path(d) / "forkhost.toml").write_text(
            f'[workers.env]\nentry = "{d}/worker.py"\nargs = ["{d}/worker.json"]\n'
            f'restart = "temporary"\n')
        (Path(d) / "join.py").write_text(JOIN_IPC)
        (Path(d) / "cgroup.py").write_text(CGROUP)
        self.env = dict(os.environ, FORKHOST_RUNTIME_DIR=d, FORKHOST_PREFIX="t")
        env = dict(self.env, NOTIFY_SOCKET=f"{d}/notify", WATCHDOG_USEC="400000")
        self.proc = subprocess.Popen(
            [sys.executable, ACTIVATE, "--hold", f"launch=seqpacket:{self.dir}/template.sock",
             f"ipc=seqpacket:{self.dir}/ipc.sock", "--",
             sys.executable, "-m", "forkhost", "primary", "--grace", "2", "--pool", "1",
             "--config", f"{d}/forkhost.toml"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=str(FIXTURES))
        out = LineReader(self.proc.stdout)
        try:
            assert out.readline() == b"bound\n"
            self.early = subprocess.Popen(
                [RUNNER, "--connect-timeout", "0.1", "script.py", "early"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                cwd=str(FIXTURES))
            self.early_py = subprocess.Popen(     # forkhost.run's own client
                [sys.executable, "-c", EARLY_PY], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=self.env, cwd=str(FIXTURES))
            time.sleep(0.5)        # the client is past its timeout: it waits
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
            self.proc.stdin = None
            self.ready = out.readline().decode()
            assert "ready" in self.ready, self.ready + self.proc.stderr.read().decode()
            self.early_out, self.early_err = self.early.communicate(timeout=60)
            self.early_py_out, self.early_py_err = self.early_py.communicate(timeout=60)
        except BaseException:
            reap(self.proc, getattr(self, "early", None), getattr(self, "early_py", None))
            self.notify.close()
            raise
        cfg = json.loads((self.dir / "config.json").read_text())
        self.pid, self.template_pid, self.config = cfg["pid"], cfg["template_pid"], cfg

    def received(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.notify.recv(4096).decode())
        return self.messages

    def stop(self) -> tuple[int, str, str]:
        self.received()     # room in the queue for STOPPING=1
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out.decode(), err.decode()


def _stop(p: ActivatedPrimary):
    """Stopped on SIGTERM: STOPPING=1, and the sockets' files, systemd's,
    are still there (a restarted service keeps its socket)."""
    try:
        out, err = stop_primary(p)
        msgs = p.received()
        assert any(m.startswith("STOPPING=1\n") for m in msgs), msgs
        assert (p.dir / "template.sock").exists() and (p.dir / "ipc.sock").exists()
        assert not (p.dir / "config.json").exists()
        return out, err
    finally:
        p.notify.close()


@pytest.fixture(scope="module")
def _activated(tmp_path_factory):
    with module_primary(tmp_path_factory, make=ActivatedPrimary, stop=_stop) as p:
        yield p


@pytest.fixture
def activated(_activated):
    with leaves_nothing(_activated) as p:
        yield p


def test_ready_and_watchdog_notified(activated):
    p = activated
    msgs = wait_until(lambda: (m := p.received()) and "WATCHDOG=1" in m and m,
                      what="READY=1 and WATCHDOG=1")
    ready = msgs[0].split("\n")
    assert ready[:2] == ["READY=1", f"MAINPID={p.pid}"], msgs
    assert ready[2].startswith("STATUS=ready: prefix 't'"), msgs


def test_client_waits_for_the_activated_primary(activated):
    """Connected before the primary ran, with a 0.1 s timeout: served,
    through forkhost-run and through forkhost.run."""
    p = activated
    assert p.early.returncode == 0, p.early_err
    assert json.loads(p.early_out)["argv"] == [
        "script.py".encode().hex(), "early".encode().hex()]
    assert p.early_py.returncode == 0, p.early_py_err
    assert json.loads(p.early_py_out)["argv"] == [
        "script.py".encode().hex(), "early-py".encode().hex()]


def test_launch_and_ipc_through_passed_sockets(activated):
    p = activated
    assert p.config["socket"] == str(p.dir / "template.sock")
    r = subprocess.run([RUNNER, f"{p.runtime_dir}/join.py"], capture_output=True,
                       env=p.env, cwd=str(FIXTURES), timeout=60)
    assert (r.returncode, r.stdout) == (0, b"joined\n"), r.stderr


def test_children_do_not_inherit_the_service_variables(activated):
    """A supervised worker gets the primary's environment: without
    NOTIFY_SOCKET, WATCHDOG_USEC and LISTEN_*."""
    path = Path(activated.runtime_dir) / "worker.json"
    wait_until(path.exists, what="the worker's report")
    assert json.loads(path.read_text()) == dict.fromkeys(
        ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID"))


@pytest.mark.parametrize("spec, why", [
    ("launch=stream:{d}/t/template.sock", "is a SOCK_STREAM socket"),
    ("launch=seqpacket:{d}/elsewhere.sock", "is bound to {d}/elsewhere.sock"),
    ("forkhost.socket=seqpacket:{d}/t/template.sock", "is named 'forkhost.socket'"),
])
def test_wrong_socket_refused(tmp_path, spec, why):
    d = str(tmp_path)
    r = subprocess.run([sys.executable, ACTIVATE, spec.format(d=d), "--",
                        sys.executable, "-m", "forkhost", "primary"],
                       capture_output=True, text=True, timeout=60, cwd=str(FIXTURES),
                       env=dict(os.environ, FORKHOST_RUNTIME_DIR=d, FORKHOST_PREFIX="t"))
    assert r.returncode == 78, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("forkhost primary: socket "
                                                   "activation: fd 3"), r.stderr
    assert why.format(d=d) in lines[0]
    assert not (tmp_path / "t" / "lock").exists()


def _child_cgroup(tmp_name: str) -> Path:
    """A new cgroup under this process's own, in the cgroup2 hierarchy;
    skips with the reason where there is none or it cannot be made."""
    mount, own = _doctor.cgroup2_mount(), _doctor.cgroup_of(os.getpid())
    if mount is None or own is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    cg = Path(mount + (own if own != "/" else "")) / tmp_name
    try:
        cg.mkdir()
    except OSError as err:
        pytest.skip(f"cannot create a cgroup under {cg.parent}: {err.strerror}")
    if not os.access(cg / "cgroup.procs", os.W_OK):
        cg.rmdir()
        pytest.skip(f"{cg}/cgroup.procs is not writable")
    return cg


def test_secondary_joins_the_clients_cgroup(activated):
    p = activated
    cg = _child_cgroup(f"fhtest-{os.getpid()}")
    try:
        rel = "/" + str(cg.relative_to(_doctor.cgroup2_mount()))
        # The client moves itself into the cgroup, then becomes forkhost-run.
        r = subprocess.run(
            ["sh", "-c", 'echo 0 > "$1/cgroup.procs" && exec "$2" "$3"', "sh",
             str(cg), RUNNER, f"{p.runtime_dir}/cgroup.py"],
            capture_output=True, text=True, env=p.env, cwd=str(FIXTURES), timeout=60)
        assert (r.returncode, r.stdout) == (0, rel + "\n"), r.stderr
        # What doctor says for a shell in that cgroup.
        shell = subprocess.Popen(["sh", "-c", 'echo 0 > "$1/cgroup.procs" && exec sleep 60',
                                  "sh", str(cg)])
        try:
            wait_until(lambda: _doctor.cgroup_of(shell.pid) == rel, what="the move")
            level, text = _doctor.cgroup_line(shell.pid, p.template_pid)
            assert level == "OK" and f"join its cgroup {rel}" in text, text
        finally:
            reap(shell)
    finally:
        wait_until(lambda: not (cg / "cgroup.procs").read_text(), what="the cgroup empty")
        cg.rmdir()


def test_notifier_abstract_socket_and_watchdog_pid():
    """In this process: an "@" address is the abstract namespace; a
    WATCHDOG_PID of another process turns the pings off; --detach with
    socket activation is refused."""
    from forkhost import _systemd
    name = f"fhtest-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind("\0" + name)
        sd = _systemd.Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        try:
            assert sd.interval == 1.0 and sd.timeout() == 0.0
            sd.tick()
            sd.status("hello")
            assert rx.recv(64) == b"WATCHDOG=1" and rx.recv(64) == b"STATUS=hello"
        finally:
            sd.close()
    other = _systemd.Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000",
                               "WATCHDOG_PID": "1"})
    assert other.interval is None and other.timeout() is None
    other.close()
    with pytest.raises(_systemd.ActivationError, match="--detach"):
        _systemd.listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"},
                            "t", "/nonexistent", detach=True)


def test_refused_cgroup_leaves_the_secondary_in_the_primarys(tmp_path):
    """A primary that may not write the client's cgroup (root without
    CAP_DAC_OVERRIDE, the cgroup's cgroup.procs 0444): the launch runs, in
    the primary's cgroup, and doctor's line says why."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to start a primary without "
                    "capabilities")
    cg = _child_cgroup(f"fhtest-ro-{os.getpid()}")
    d = str(tmp_path)
    (tmp_path / "cgroup.py").write_text(CGROUP)
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=d, FORKHOST_PREFIX="t")
    prim = subprocess.Popen(["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
                             sys.executable, "-m", "forkhost", "primary", "--grace", "2",
                             "--pool", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(FIXTURES))
    try:
        assert b"ready" in LineReader(prim.stdout).readline()
        own = _doctor.cgroup_of(prim.pid)
        os.chmod(cg / "cgroup.procs", 0o444)
        r = subprocess.run(
            ["sh", "-c", 'echo 0 > "$1/cgroup.procs" && exec "$2" "$3"', "sh",
             str(cg), RUNNER, str(tmp_path / "cgroup.py")],
            capture_output=True, text=True, env=env, cwd=str(FIXTURES), timeout=60)
        assert (r.returncode, r.stdout) == (0, own + "\n"), r.stderr
        template = json.loads((tmp_path / "t" / "config.json").read_text())["template_pid"]
        level, text = _doctor.cgroup_line(os.getpid(), template)
        assert level == "OK"        # this process is in the primary's cgroup
        shell = subprocess.Popen(["sh", "-c", 'echo 0 > "$1/cgroup.procs" && exec sleep 60',
                                  "sh", str(cg)])
        try:
            wait_until(lambda: _doctor.cgroup_of(shell.pid) != own, what="the move")
            level, text = _doctor.cgroup_line(shell.pid, template)
            assert level == "WARN" and f"{cg}/cgroup.procs is not writable by uid 0" \
                in text, text
        finally:
            reap(shell)
    finally:
        prim.send_signal(signal.SIGTERM)
        prim.communicate(timeout=30)
        wait_until(lambda: not (cg / "cgroup.procs").read_text(), what="the cgroup empty")
        cg.rmdir()
