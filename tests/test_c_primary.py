"""A C program that is its own primary: it links libforkhost, maps the
arena, binds template.sock and forks the template, whose loop is C, with
no Python anywhere in the process.  It serves native entries exactly as a
Python primary does and refuses Python entries with 126."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from fhtest import (FIXTURES, RUNNER, LineReader, ended, forkhost_flags, reap,
                    wait_until)


@pytest.fixture(scope="module")
def c_primary_exe(tmp_path_factory) -> str:
    flags = forkhost_flags()
    out = tmp_path_factory.mktemp("cprimary") / "c_primary"
    subprocess.run(["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(FIXTURES / "c_primary.c"), *flags], check=True)
    return str(out)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_c_primary_serves_native_launches_without_python(c_primary_exe, runtime_dir,
                                                           native_so, tmp_path):
    p = subprocess.Popen([c_primary_exe, runtime_dir, "cp"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        line = LineReader(p.stdout).readline().decode()
        assert line.startswith("ready "), (line, p.stderr.read() if p.poll() else "")
        template = int(line.split()[1])
        for pid in (p.pid, template):
            assert "libpython" not in _maps(pid) and "python3" not in Path(
                f"/proc/{pid}/exe").resolve().name
        env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="cp")
        out = subprocess.run([RUNNER, native_so, "exit", "7"], env=env,
                             capture_output=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 7, out.stderr
        lines = out.stdout.decode().splitlines()
        assert lines[:5] == ["argc=3", f"argv[0]={native_so}", "argv[1]=exit",
                             "argv[2]=7", f"cwd={tmp_path}"], lines
        assert out.stderr == b""
        py = subprocess.run([RUNNER, "fhfix:exit_with", "3"], env=env,
                            capture_output=True, timeout=60, cwd=FIXTURES)
        assert py.returncode == 126, py
        assert b"runs no Python" in py.stderr
        assert py.stderr.count(b"\n") == 1
        # Back to serving after the refusal.
        again = subprocess.run([RUNNER, native_so + ":other"], env=env,
                               capture_output=True, timeout=60)
        assert (again.returncode, again.stdout) == (42, b"other\n"), again.stderr
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.stderr.read()
        wait_until(lambda: ended(template), what="the template to end")
        assert not os.path.exists(os.path.join(runtime_dir, "cp", "template.sock"))
    finally:
        reap(p)
