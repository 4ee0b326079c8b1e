"""The shared-memory sample apps, end to end, each with its one command."""

from __future__ import annotations

import subprocess
import sys

from fhtest import ROOT

APPS = ROOT / "apps"


def test_simple_mp(runtime_dir):
    script = "send hello\nsend two words\nstatus\nbogus\nsend last\nquit\n"
    r = subprocess.run([sys.executable, str(APPS / "simple_mp" / "run.py"),
                        "--prefix", "smp", "--runtime-dir", runtime_dir],
                       input=script, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    for text in ("hello", "two words", "last"):
        assert f"primary: sent {text!r}" in lines
        assert f"secondary: received {text!r}" in lines
        assert f"primary: received 'echo: {text}'" in lines
    # the secondary answers in order
    got = [ln for ln in lines if ln.startswith("primary: received")]
    assert got == ["primary: received 'echo: hello'",
                   "primary: received 'echo: two words'",
                   "primary: received 'echo: last'"]
    assert "primary: unknown command 'bogus' (try help)" in lines
    assert "secondary: quit" in lines
    # every buffer went back to the pool
    assert lines[-2].startswith("primary: pool: 0 of 1024 buffers in use"), lines[-2]
    assert lines[-1] == "primary: bye"
    assert r.stderr == ""


def test_flow_table(runtime_dir):
    r = subprocess.run([sys.executable, str(APPS / "flow_table" / "run.py"),
                        "--prefix", "ft", "--runtime-dir", runtime_dir, "--flows", "1500"],
                       capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "found 1500/1500 of the primary's" in out          # Python secondary
    assert ("c secondary: added 1500 flows through the stored hash function" in out
            and "found 1500/1500 of the primary's and 1500/1500 of the Python" in out)
    assert "the table holds 4500 flows" in out
    attach = [ln for ln in out.splitlines() if ln.startswith("classic attach")]
    assert attach, out
    # one of the three outcomes, each said plainly
    assert ("lookup through the stored pointer refused" in out
            and "libflowhash.so is loaded at 0x" in out
            and "with the hash computed here and lookup_with_hash" in out) \
        or "happens to be at the same address" in out \
        or "refused, as it should be when the range is taken" in out, out
    assert out.rstrip().endswith("flow_table: all flows found everywhere")
