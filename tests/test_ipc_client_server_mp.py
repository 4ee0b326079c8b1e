"""apps/client_server_mp end to end: rings for the items, IPC for the
reports, the stop broadcast and exit notices (see its README)."""

from __future__ import annotations

import subprocess
import sys

from fhtest import FIXTURES, LineReader, ROOT, RUNNER, reap

APP = ROOT / "apps" / "client_server_mp"


def test_one_command(runtime_dir):
    r = subprocess.run([sys.executable, str(APP / "server.py"), "--runtime-dir",
                        runtime_dir, "--prefix", "cs", "--clients", "3", "--items", "30001"],
                       capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    # (the clients' lines and the server's interleave as they happen)
    assert any("stop broadcast reached 3 of 3 clients" in ln for ln in lines), lines
    # 30001 items round robin over 3 clients: 10001, 10000, 10000
    for i, count in enumerate((10001, 10000, 10000)):
        mine = [ln for ln in lines if ln.startswith(f"server: client {i} ")]
        assert len(mine) == 1 and mine[0].endswith(": ok"), lines
        assert f"sent {count} items" in mine[0] and f"processed {count} " in mine[0]
        assert any(ln.startswith(f"client {i}: {count} items") for ln in lines), "\n".join(lines)
    assert lines[-1].startswith("server: all 30001 items processed exactly once")
    assert r.stderr == ""


def test_external_clients_as_in_dpdk(runtime_dir):
    server = subprocess.Popen([sys.executable, str(APP / "server.py"), "--runtime-dir",
                               runtime_dir, "--prefix", "cs", "--clients", "2",
                               "--items", "5000", "--external"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
    clients = []
    try:
        out = LineReader(server.stdout)
        assert out.readline(60).startswith(b"server: prefix 'cs', 2 clients")
        assert b"start the clients with" in out.readline(10)
        env = {"FORKHOST_RUNTIME_DIR": runtime_dir, "PATH": "/usr/bin:/bin"}
        for i in range(2):
            clients.append(subprocess.Popen(
                [RUNNER, "--prefix", "cs", str(APP / "client.py"), "--id", str(i)],
                env=env, cwd=str(FIXTURES), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE))
        for c in clients:
            assert c.wait(60) == 0, c.stderr.read()
        assert server.wait(60) == 0
        rest = out.rest(10).decode()
        assert "server: all 5000 items processed exactly once" in rest, rest
    finally:
        reap(*clients, server)
