"""Reload (docs/reliability.md, "Reload"): `forkhost reload` and SIGHUP
start a new generation (preloads imported afresh, a new template and
pool) while the old one serves its running secondaries to their end; the
arena and what is in it stay; a failing preload leaves the old generation
serving; systemd hears RELOADING=1 then READY=1; the log has a reload
line; `forkhost stats` counts across generations."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import forkhost
from forkhost import _protocol as protocol
from fhtest import (FIXTURES, RUNNER, LineReader, PrimaryProc, ended, reap,
                    secondary_pids, wait_until)

ENTRY = r'''
import sys
import rlmod
from forkhost.shm import HashTable, Memzone, ModuleMismatchError

def key(i):
    return i.to_bytes(8, "little")

mode = sys.argv[1]
if mode == "version":
    print(rlmod.VERSION)
elif mode == "hold":            # runs across the reload, to its stdin's end
    print("start", rlmod.VERSION, flush=True)
    sys.stdin.read()
    print("end", rlmod.VERSION, flush=True)
    sys.exit(3)
elif mode == "make":
    mz = Memzone.reserve("rl.zone", 4096)
    mz.buffer()[:] = bytes(range(256)) * 16
    h = HashTable.create("rl.table", 1024, 8, hash_fn=(sys.argv[2], "fix_hash"))
    for i in range(200):
        h.add(key(i), i * 7)
    # a function in a module only this secondary loads: refused elsewhere
    late = HashTable.create("rl.late", 64, 8, hash_fn=(sys.argv[3], "fix_hash"))
    late.add(key(1), 1)
    print(mz.addr, h.fn_module)
elif mode == "check":
    mz = Memzone.lookup("rl.zone")
    assert bytes(mz.buffer()) == bytes(range(256)) * 16
    h = HashTable.lookup("rl.table")
    assert all(h[key(i)] == i * 7 for i in range(200))
    assert key(500) not in h
    h.add(key(500), 1)
    try:
        HashTable.lookup("rl.late").get(key(1))
        print("late table called")
    except ModuleMismatchError as err:
        print("refused:", err)
    print(mz.addr, rlmod.VERSION)
'''


class ReloadPrimary:
    """A `forkhost primary` preloading rlmod (which loads the native hash
    module) from a directory of the test's, under a test NOTIFY_SOCKET."""

    def __init__(self, d: str, hashfn: str):
        self.d = Path(d)
        self.mod = self.d / "rlmod.py"
        self.write_module("VERSION = 1")
        (self.d / "rl_entry.py").write_text(ENTRY)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind(f"{d}/notify")
        env = dict(os.environ, PYTHONPATH=d, FH_TEST_HASHFN=hashfn,
                   NOTIFY_SOCKET=f"{d}/notify")
        try:
            self.p = PrimaryProc(d, args=("--preload", "rlmod", "--pool", "2",
                                          "--log-level", "info"), env=env, cwd=FIXTURES)
        except BaseException:
            self.notify.close()
            raise
        self.env = dict(self.p.env)
        del self.env["NOTIFY_SOCKET"]

    def write_module(self, body: str) -> None:
        # Each version a different length: a .pyc written in the same
        # second as the source it replaces is told apart by its size.
        self.versions = getattr(self, "versions", 0) + 1
        self.mod.write_text("import os\nimport forkhost.shm\n"
                            "forkhost.shm.load_native(os.environ['FH_TEST_HASHFN'])\n"
                            f"{body}\n" + "#" * self.versions + "\n")

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([RUNNER, str(self.d / "rl_entry.py"), *args],
                              capture_output=True, env=self.env, timeout=60, **kw)

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "forkhost", *args], capture_output=True,
                              env=self.env, timeout=120, cwd=str(FIXTURES))

    def config(self) -> dict:
        return json.loads((self.d / "t" / "config.json").read_text())

    def reload_notices(self) -> list[str]:
        """The next RELOADING=1 sd_notify message and the READY=1 after it."""
        self.notify.settimeout(60)
        got: list[str] = []
        while not (got and got[-1].startswith("READY=1\n")):
            msg = self.notify.recv(4096).decode()
            if got or msg.startswith("RELOADING=1\n"):
                got.append(msg)
        return got

    def close(self) -> tuple[int, str, str]:
        try:
            return self.p.stop()
        finally:
            self.notify.close()


@pytest.fixture
def rp(runtime_dir, shm_native):
    p = ReloadPrimary(runtime_dir, shm_native.hashfn)
    try:
        yield p
    finally:
        if p.p.proc.poll() is None:
            p.close()
        else:
            p.notify.close()


def test_reload_while_secondaries_run_and_launches_continue(rp, shm_native):
    made = rp.run("make", shm_native.hashfn, shm_native.late)
    assert made.returncode == 0, made.stderr
    zone_addr, fn_module = made.stdout.split()
    assert fn_module.decode() == os.path.realpath(shm_native.hashfn)
    old_template = rp.p.template_pid
    holders = [subprocess.Popen([RUNNER, str(rp.d / "rl_entry.py"), "hold"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=rp.env) for _ in range(20)]
    results: list[tuple[bool, int, bytes, bytes]] = []
    reloaded, stop = threading.Event(), threading.Event()

    def launch_on() -> None:       # launches while the reload happens
        while not stop.is_set() and len(results) < 200:
            after = reloaded.is_set()
            r = rp.run("version")
            results.append((after, r.returncode, r.stdout, r.stderr))
    launcher = threading.Thread(target=launch_on)
    try:
        for h in holders:
            assert LineReader(h.stdout).readline() == b"start 1\n"
        launcher.start()
        wait_until(lambda: results, what="a launch before the reload")
        rp.write_module("VERSION = 2")
        out = rp.cli("reload")
        reloaded.set()
        wait_until(lambda: any(a for a, *_ in results), what="a launch after it")
        stop.set()
        launcher.join()
        assert out.returncode == 0, out.stderr
        new_template = rp.config()["template_pid"]
        assert out.stdout.decode() == (
            f"forkhost reload: prefix 't': generation 2, template {new_template} "
            f"(template {old_template} retires when its last secondary ends)\n")
        assert new_template != old_template and rp.config()["retiring"] == [old_template]
        # Every launch around the reload ran, to its end, with one version;
        # those that began after it, with the new one.
        assert all(rc == 0 and o in (b"1\n", b"2\n") and not e
                   for _, rc, o, e in results), results
        assert all(o == b"2\n" for a, _, o, _ in results if a), results
        after = rp.run("version")
        assert (after.returncode, after.stdout) == (0, b"2\n"), after.stderr
        # systemd: RELOADING=1 (with the monotonic clock) then READY=1.
        msgs = rp.reload_notices()
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading: "
                            r"prefix 't'", msgs[0]), msgs
        assert msgs[1].startswith("READY=1\n"), msgs
        # ps shows the old generation apart, with its 20 secondaries.
        rows = json.loads(rp.cli("ps", "--json").stdout)
        old = [r for r in rows if r["state"] == "retiring"]
        assert [r["pid"] for r in old if r["role"] == "template"] == [old_template]
        assert len([r for r in old if r["role"] == "secondary"]) == 20, rows
        assert forkhost.info("t", rp.p.runtime_dir)["generation"] == 2
        # The holders were never cut off: they end now, as they would have.
        for h in holders:
            o, e = h.communicate(b"", timeout=60)
            assert (h.returncode, o, e) == (3, b"end 1\n", b""), (o, e)
    finally:
        stop.set()
        if launcher.ident is not None:
            launcher.join()
        reap(*holders)
    # The old generation ends with its last secondary.
    wait_until(lambda: not rp.config()["retiring"], what="the old template to end")
    # The arena's objects, at the same address, from the new generation:
    # the table's native function (inherited, its module imported again at
    # the same base) keeps working; one no generation loaded is refused.
    chk = rp.run("check")
    assert chk.returncode == 0, chk.stderr
    lines = chk.stdout.decode().splitlines()
    assert lines[0].startswith("refused: ") and shm_native.late in lines[0], lines
    assert lines[1] == f"{zone_addr.decode()} 2"
    # stats: every generation's launches and exits (counted when reaped).
    wait_until(lambda: not secondary_pids("t", rp.p.runtime_dir), what="the last exit")
    st = json.loads(rp.cli("stats", "--json").stdout)
    launches = 1 + 20 + len(results) + 1 + 1
    assert (st["generation"], st["reloads"], st["launches"]) == (2, 1, launches), st
    assert st["exits"]["status"] == {"0": launches - 20, "3": 20}, st
    code, _, err = rp.close()
    assert code == 0, err
    line = [ln for ln in err.splitlines() if " reload " in ln]
    assert len(line) == 1 and line[0].startswith("<6>") and \
        f"template_pid={new_template} old_template_pid={old_template} generation=2" \
        in line[0], err


def test_failing_preload_keeps_the_old_generation_then_sighup_reloads(rp):
    template = rp.p.template_pid
    rp.write_module("raise RuntimeError('boom on reload')")
    out = rp.cli("reload")
    assert out.returncode == 1, out
    err = out.stderr.decode()
    assert err.startswith("forkhost reload: prefix 't': the reload failed; the old "
                          "generation serves on:\n"), err
    assert "Traceback (most recent call last)" in err and \
        err.rstrip().endswith("RuntimeError: boom on reload"), err
    assert rp.config()["template_pid"] == template and rp.config()["generation"] == 1
    r = rp.run("version")
    assert (r.returncode, r.stdout) == (0, b"1\n"), r.stderr
    assert len(rp.reload_notices()) == 2    # READY=1 again, on the old one
    # Only the primary may ask the template for a reload.
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(rp.p.socket)
        protocol.send(s, protocol.RELOAD)
        msg = protocol.recv(s)
    code, text = protocol.decode_error(msg.body)
    assert (msg.type, code) == (protocol.ERROR, 125)
    assert text == (f"only the primary of prefix 't' (pid {rp.p.pid}) may reload its "
                    f"template; ask it with forkhost reload")
    # Under systemd (NOTIFY_SOCKET), SIGHUP reloads, as nginx's does.
    rp.write_module("VERSION = 3")
    os.kill(rp.p.pid, signal.SIGHUP)
    wait_until(lambda: rp.config()["generation"] == 2, what="the SIGHUP's reload")
    r = rp.run("version")
    assert (r.returncode, r.stdout) == (0, b"3\n"), r.stderr
    # A reload longer than its --timeout is not abandoned: the primary
    # takes the new generation when the template answers.
    rp.write_module("import time\ntime.sleep(1)\nVERSION = 4")
    out = rp.cli("reload", "--timeout", "0.2")
    assert out.returncode == 1, out
    assert out.stderr.decode() == (
        "forkhost reload: prefix 't': the reload did not finish within 0.2s; the "
        f"template (pid {rp.config()['template_pid']}) goes on with it, and its "
        "outcome will be logged\n")
    wait_until(lambda: rp.config()["generation"] == 3, what="the slow reload")
    r = rp.run("version")
    assert (r.returncode, r.stdout) == (0, b"4\n"), r.stderr
    assert rp.p.proc.poll() is None
    code, _, err = rp.close()
    assert code == 0, err
    failed = [ln for ln in err.splitlines() if " reload " in ln and "failed=" in ln]
    assert len(failed) == 2 and failed[0].startswith("<4>") and \
        'failed="RuntimeError: boom on reload"' in failed[0], err
    assert "did not finish within 0.2s" in failed[1], err
    assert len([ln for ln in err.splitlines() if " reload " in ln and
                " generation=3" in ln and "failed=" not in ln]) == 1, err


# A C primary's template (fh_template_fork, no Python hooks) reloads too:
# the same loop again as the next generation.  Played by a single-threaded
# python that only calls libforkhost, as a C program would.
C_PRIMARY = r'''
import os, signal, socket, sys
from forkhost._native import ffi, lib
from forkhost import _protocol as protocol
rd, prefix = sys.argv[1], sys.argv[2]
d = os.path.join(rd, prefix)
os.mkdir(d, 0o700)
path = os.path.join(d, "template.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
s.bind(path)
s.listen(64)
keep = [ffi.new("char[]", prefix.encode()), ffi.new("char[]", path.encode())]
c = ffi.new("struct fh_template_config *")
c.listen_fd, c.prefix, c.socket_path = s.fileno(), keep[0], keep[1]
c.socket_ino = os.stat(path).st_ino
c.max_secondaries, c.grace_ms, c.pool_size = 8, 1000, 1
c.exit_notice_fd = c.ready_fd = -1
first = lib.fh_template_fork(c)
assert first > 0, os.strerror(ffi.errno)
s.close()
print(first, flush=True)
sys.stdin.readline()
with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as r:
    r.connect(path)
    protocol.send(r, protocol.RELOAD)
    msg = protocol.recv(r)
assert msg.type == protocol.RELOADED, msg
second = protocol.decode_reloaded(msg.body)
print(second, flush=True)
sys.stdin.readline()
fds = [os.pidfd_open(second), os.pidfd_open(first)]
for fd in fds:
    signal.pidfd_send_signal(fd, signal.SIGTERM)
_, status = os.waitpid(first, 0)
import select
select.select([fds[0]], [], [], 30)
print("stopped", os.waitstatus_to_exitcode(status), flush=True)
'''


def test_a_c_primarys_template_reloads(runtime_dir, native_so, tmp_path):
    p = subprocess.Popen([sys.executable, "-c", C_PRIMARY, runtime_dir, "cr"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tmp_path)
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="cr")
    try:
        out = LineReader(p.stdout)
        first = int(out.readline() or p.stderr.read())
        # A secondary of the first generation, running across the reload.
        hold = subprocess.Popen([RUNNER, native_so + ":signals"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert LineReader(hold.stdout).readline() == b"ready\n"
        p.stdin.write(b"reload\n")
        p.stdin.flush()
        second = int(out.readline() or p.stderr.read())
        assert second not in (first, 0)
        r = subprocess.run([RUNNER, native_so + ":other"], env=env,
                           capture_output=True, timeout=60)
        assert (r.returncode, r.stdout) == (42, b"other\n"), r.stderr
        hold.send_signal(signal.SIGTERM)     # its exit: the old template reports it
        assert hold.wait(60) == 3 and hold.stderr.read() == b""
        wait_until(lambda: ended(first), what="the retired template to end")
        p.stdin.write(b"stop\n")
        p.stdin.close()
        p.stdin = None
        assert out.readline() == b"stopped 0\n", p.stderr.read()
        assert p.wait(30) == 0, p.stderr.read()
        wait_until(lambda: ended(second), what="the new template to end")
    finally:
        reap(p, locals().get("hold"))
