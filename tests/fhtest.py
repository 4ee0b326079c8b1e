"""Helpers shared by the tests: where things are, and a real primary.

Importable from test modules because conftest.py puts this directory (and
only it: never the checkout, whose forkhost/ has no compiled parts) on
sys.path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import forkhost
import forkhost.runtime

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
ROOT = HERE.parent
RUNNER = shutil.which("forkhost-run")


class PrimaryProc:
    """A `forkhost primary` subprocess on a private prefix."""

    def __init__(self, runtime_dir: str, prefix: str = "t", args=(), env=None):
        self.runtime_dir = runtime_dir
        self.prefix = prefix
        self.env = dict(os.environ if env is None else env,
                        FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX=prefix)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forkhost", "primary", "--grace", "2", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            cwd=str(HERE))
        self.ready = self.proc.stdout.readline().decode()
        if "ready" not in self.ready:
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"primary did not start: {self.ready}{out.decode()}"
                                 f"{err.decode()}")
        cfg = forkhost.runtime.read_config(forkhost.runtime.paths(prefix, runtime_dir))
        self.pid = cfg["pid"]
        self.template_pid = cfg["template_pid"]
        self.socket = cfg["socket"]
        self.config = cfg

    def run(self, *argv, **kw) -> subprocess.CompletedProcess:
        """forkhost-run ARGV with this primary's prefix; captures output."""
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 60)
        env = dict(self.env, **kw.pop("extra_env", {}))
        return subprocess.run([RUNNER, *map(str, argv)], env=env, **kw)

    def popen(self, *argv, **kw) -> subprocess.Popen:
        env = dict(self.env, **kw.pop("extra_env", {}))
        return subprocess.Popen([RUNNER, *map(str, argv)], env=env, **kw)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out.decode(), err.decode()
