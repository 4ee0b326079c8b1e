"""Supervision (docs/supervision.md): workers the primary starts and
restarts, with real processes.

Each test runs `forkhost primary --config FILE` (or --worker) on a private
runtime directory, its stdout and stderr in files; workers are a small
script that records every start (and the SIGTERMs it gets) in files.
Waits are for events (a line in the primary's log, a record in a file,
a state in `forkhost ps --json`) with generous timeouts; nothing is timed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fhtest import FIXTURES, wait_until

from forkhost._supervise import EXIT_CONFIG, EXIT_GAVE_UP

TIMEOUT = 60.0

WORKER = r'''
import os, sys, signal
name, outdir, mode = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "run")
starts = os.path.join(outdir, name + ".starts")
runs = len(open(starts).read().split()) if os.path.exists(starts) else 0

stop_reasons = []

def term(*_):
    # The forkhost.stop notices it got before the signal, their reasons.
    reasons = "|".join(stop_reasons) if mode == "ipc" else "-"
    with open(os.path.join(outdir, name + ".term"), "a") as f:
        f.write(f"{os.getpid()} {reasons}\n")
    os._exit(0)

signal.signal(signal.SIGTERM, term)
if mode == "ipc":
    from forkhost import ipc
    ipc.register("forkhost.stop",                            # joins the IPC
                 lambda msg, peer: stop_reasons.append(msg.param.decode()))
# Recorded once it is ready: its SIGTERM handler is in place.
with open(starts, "a") as f:
    f.write(f"{os.getpid()}\n")
os.write(1, f"{name} out {os.getpid()}\n".encode())
os.write(2, f"{name} err {os.getpid()}\n".encode())
if mode.startswith("exit"):
    sys.exit(int(mode[4:]))
if mode.startswith("once") and runs == 0:
    sys.exit(int(mode[4:]))
while True:
    signal.pause()
'''


class Sup:
    """A supervising `forkhost primary` on a private prefix."""

    def __init__(self, tmp: Path, runtime_dir: str, toml: str | None = None,
                 args=(), prefix="sv", expect_ready=True):
        self.tmp, self.runtime_dir, self.prefix = tmp, runtime_dir, prefix
        (tmp / "w.py").write_text(WORKER)
        self.env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir,
                        FORKHOST_PREFIX=prefix)
        argv = [sys.executable, "-m", "forkhost", "primary", "--grace", "2", *args]
        if toml is not None:
            (tmp / "forkhost.toml").write_text(textwrap.dedent(toml))
            argv += ["--config", str(tmp / "forkhost.toml")]
        self.out, self.err = tmp / "primary.out", tmp / "primary.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=self.env,
                                         cwd=str(FIXTURES))
        if expect_ready:
            wait_until(lambda: "ready" in self.out.read_text() or
                       self.proc.poll() is not None, TIMEOUT, "the ready line")
            assert self.proc.poll() is None, self.err.read_text()

    # -- looking ----------------------------------------------------------

    def log(self) -> str:
        return self.err.read_text()

    def wait_log(self, pattern: str, count: int = 1) -> list[str]:
        rx = re.compile(pattern)

        def found():
            lines = [ln for ln in self.log().splitlines() if rx.search(ln)]
            return lines if len(lines) >= count else None
        return wait_until(found, TIMEOUT, f"{count} log line(s) matching {pattern!r}")

    def starts(self, name: str) -> list[int]:
        f = self.tmp / f"{name}.starts"
        return [int(x) for x in f.read_text().split()] if f.exists() else []

    def wait_starts(self, name: str, n: int) -> list[int]:
        return wait_until(lambda: len(self.starts(name)) >= n and self.starts(name),
                          TIMEOUT, f"{n} starts of {name}")

    def terms(self, name: str) -> list[tuple[int, str]]:
        """(pid, the forkhost.stop reasons it had got) per SIGTERM."""
        f = self.tmp / f"{name}.term"
        if not f.exists():
            return []
        return [(int(pid), rest) for pid, rest in
                (ln.split(" ", 1) for ln in f.read_text().splitlines())]

    def cli(self, *argv, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "forkhost", *argv], env=self.env,
                           cwd=str(FIXTURES), capture_output=True, text=True,
                           timeout=TIMEOUT * 2)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def workers(self) -> dict[str, dict]:
        rows = json.loads(self.cli("ps", "--json").stdout)
        return {r["name"]: r for r in rows if r["role"] == "worker"}

    def wait_workers(self, pred, what: str) -> dict[str, dict]:
        return wait_until(lambda: (lambda w: w if pred(w) else None)(self.workers()),
                          TIMEOUT, what, interval=0.05)

    # -- ending -------------------------------------------------------------

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop()
        else:
            self.proc.wait()


def workers_toml(tmp: Path, spec: dict[str, dict], supervisor: str = "") -> str:
    """A config with one [workers.NAME] per entry of spec (extra keys as
    TOML text) running w.py NAME TMP [MODE]."""
    parts = [f"[supervisor]\n{supervisor}\n"]
    for name, extra in spec.items():
        mode = extra.pop("mode", "run")
        lines = [f"[workers.{name}]", f'entry = "{tmp / "w.py"}"',
                 f'args = ["{name}", "{tmp}", "{mode}"]']
        lines += [f"{k} = {v}" for k, v in extra.items()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# -- policies -----------------------------------------------------------------

def test_permanent_killed_three_times_restarts_with_growing_delays(tmp_path, runtime_dir):
    toml = workers_toml(tmp_path, {"a": {}}, "intensity = 10\nperiod = 600\nbackoff = 0.2\n")
    with Sup(tmp_path, runtime_dir, toml) as s:
        for n in range(1, 4):
            kill(s.wait_starts("a", n)[-1])
            s.wait_starts("a", n + 1)
        lines = s.wait_log(r"worker a restarted", 3)
        delays = [float(re.search(r"after ([0-9.]+)s", ln).group(1)) for ln in lines]
        assert delays == [0.2, 0.4, 0.8]
        assert [int(re.search(r"restart (\d+),", ln).group(1)) for ln in lines] == [1, 2, 3]
        w = s.wait_workers(lambda w: w["a"]["state"] == "running" and w["a"]["restarts"] == 3,
                           "a running after 3 restarts")
        assert w["a"]["pid"] == s.starts("a")[-1]
        assert w["a"]["last_exit"] == -signal.SIGKILL
        assert s.stop() == 0
    assert len(s.starts("a")) == 4


def test_transient_and_temporary(tmp_path, runtime_dir):
    toml = workers_toml(tmp_path, {
        "t0": {"restart": '"transient"', "mode": "exit0"},
        "t3": {"restart": '"transient"', "mode": "once3"},
        "tmp": {"restart": '"temporary"', "mode": "exit3"},
        "dep": {"requires": '["tmp"]'},     # stopped with tmp, and stays stopped
    }, "intensity = 10\nperiod = 600\nbackoff = 0.05\n")
    with Sup(tmp_path, runtime_dir, toml) as s:
        w = s.wait_workers(lambda w: w["t0"]["state"] == "exited"
                           and w["tmp"]["state"] == "exited"
                           and w["dep"]["state"] == "stopped"
                           and w["t3"]["state"] == "running" and w["t3"]["restarts"] == 1,
                           "t0 and tmp exited, t3 restarted once")
        assert (w["t0"]["restarts"], w["t0"]["last_exit"]) == (0, 0)
        assert (w["tmp"]["restarts"], w["tmp"]["last_exit"]) == (0, 3)
        assert "restart = transient: not restarted" in w["t0"]["reason"]
        assert "restart = temporary: not restarted" in w["tmp"]["reason"]
        assert len(s.starts("t0")) == 1 and len(s.starts("tmp")) == 1
        assert len(s.starts("t3")) == 2
        assert w["dep"]["restarts"] == 0 and "requires tmp" in w["dep"]["reason"]
        s.wait_log(r"worker t3 restarted .*restart 1, after 0.05s; exit status 3")
        assert s.stop() == 0


# -- strategies ---------------------------------------------------------------

@pytest.mark.parametrize("strategy,restarted", [
    ("one_for_one", {"b"}),
    ("rest_for_one", {"b", "c", "d"}),
    ("one_for_all", {"a", "b", "c", "d"}),
])
def test_strategies(tmp_path, runtime_dir, strategy, restarted):
    names = ["a", "b", "c", "d"]
    toml = workers_toml(tmp_path, {n: {"grace": 5} for n in names},
                        f'strategy = "{strategy}"\nbackoff = 0.05\n')
    with Sup(tmp_path, runtime_dir, toml) as s:
        first = {n: s.wait_starts(n, 1)[0] for n in names}
        kill(first["b"])
        w = s.wait_workers(lambda w: all(w[n]["state"] == "running" and
                                         w[n]["restarts"] == (n in restarted)
                                         for n in names), f"{strategy}: {restarted} restarted")
        for n in names:
            assert len(s.starts(n)) == (2 if n in restarted else 1), n
            assert (w[n]["pid"] == first[n]) == (n not in restarted), n
        # The siblings were stopped by SIGTERM (they record it), b was killed.
        assert {n for n in names if s.terms(n)} == restarted - {"b"}
        # Restarted in start order.
        order = [re.search(r"worker (\w) restarted", ln).group(1)
                 for ln in s.wait_log(r"worker \w restarted", len(restarted))]
        assert order == sorted(restarted)
        assert s.stop() == 0


def test_dependents_get_stop_notice_then_sigterm(tmp_path, runtime_dir):
    toml = workers_toml(tmp_path, {
        "a": {},
        "b": {"requires": '["a"]', "grace": 1, "mode": "ipc"},
        "c": {},                      # not a dependent: left alone
    }, "backoff = 0.05\n")
    with Sup(tmp_path, runtime_dir, toml) as s:
        a0, b0, c0 = (s.wait_starts(n, 1)[0] for n in "abc")
        kill(a0)
        s.wait_starts("a", 2)
        s.wait_starts("b", 2)
        (stopping,) = s.wait_log(rf"worker b \(pid {b0}\): stopping")
        assert "forkhost.stop sent, SIGTERM after 1s" in stopping
        assert "a exited (killed by SIGKILL)" in stopping
        # b got the forkhost.stop notice, with the reason, before its
        # SIGTERM.
        (pid, reasons), = s.terms("b")
        assert pid == b0 and "a exited (killed by SIGKILL)" in reasons, reasons
        # (a restarted worker can be running before the supervisor's line)
        s.wait_log(r"worker b restarted")
        log = s.log()
        assert log.index("worker a restarted") < log.index("worker b restarted")
        assert log.index(f"worker b (pid {b0}) exited") < log.index("worker a restarted")
        assert s.starts("c") == [c0] and not s.terms("c")
        w = s.workers()
        assert (w["b"]["restarts"], w["c"]["restarts"]) == (1, 0)
        assert s.stop() == 0


# -- intensity ----------------------------------------------------------------

def test_intensity_exceeded_gives_up_and_exits(tmp_path, runtime_dir):
    toml = workers_toml(tmp_path, {"steady": {}, "crash": {"mode": "exit1"}},
                        "intensity = 2\nperiod = 600\nbackoff = 0\nexit_on_give_up = true\n")
    with Sup(tmp_path, runtime_dir, toml, expect_ready=False) as s:
        assert s.proc.wait(TIMEOUT) == EXIT_GAVE_UP
        log = s.log()
        (line,) = [ln for ln in log.splitlines() if ln.startswith("forkhost primary: supervisor gave up")]
        assert "worker crash exited (exit status 1) after 2 restarts in 600s" in line
        assert f"the primary exits with status {EXIT_GAVE_UP}" in line
        assert len(s.starts("crash")) == 3
        # The group stopped: the steady worker was stopped, not left running.
        assert re.search(r"worker steady \(pid (\d+)\) exited: .* \(stopped: the "
                         r"supervisor gave up: worker crash exited", log)
        assert "steady restarted" not in log
    assert not (Path(runtime_dir) / "sv").exists()


def test_intensity_exceeded_without_exit(tmp_path, runtime_dir):
    toml = workers_toml(tmp_path, {"crash": {"mode": "exit1"}},
                        "intensity = 1\nperiod = 600\nbackoff = 0\n")
    with Sup(tmp_path, runtime_dir, toml) as s:
        s.wait_log("supervisor gave up")
        w = s.wait_workers(lambda w: w["crash"]["state"] == "gave-up", "gave-up state")
        assert w["crash"]["restarts"] == 1
        assert "gave up: worker crash exited" in s.cli("ps").stdout
        assert s.proc.poll() is None          # the primary itself stays up
        # The operator can start the group again.
        assert "restarted crash" in s.cli("restart", "crash").stdout
        assert s.stop() == 0


# -- the operator's commands --------------------------------------------------

def test_ps_restart_stop_commands(tmp_path, runtime_dir):
    toml = workers_toml(tmp_path, {"a": {}, "b": {"requires": '["a"]'}, "c": {}})
    with Sup(tmp_path, runtime_dir, toml) as s:
        for n in "abc":
            s.wait_starts(n, 1)
        text = s.cli("ps").stdout
        assert re.search(r"^a\s+running\s+\d+\s+0\s+[0-9.]+s\s+-\s+.*w\.py a", text, re.M)
        r = s.cli("restart", "a")
        assert "restarted a (pid" in r.stdout and "b (pid" in r.stdout
        s.wait_starts("a", 2)
        s.wait_starts("b", 2)
        w = s.workers()
        assert w["a"]["pid"] == s.starts("a")[-1] and w["a"]["restarts"] == 1
        assert w["b"]["pid"] == s.starts("b")[-1] and w["b"]["restarts"] == 1
        assert w["c"]["restarts"] == 0
        r = s.cli("stop", "--worker", "a")
        assert "worker 'a' stopped with b" in r.stdout
        w = s.workers()
        assert (w["a"]["state"], w["b"]["state"], w["c"]["state"]) == \
            ("stopped", "stopped", "running")
        assert w["a"]["pid"] is None and w["a"]["last_exit"] == 0
        assert "stopped by the operator" in w["a"]["reason"]
        # Stopped stays stopped: the next exit of anything else changes nothing.
        assert s.cli("restart", "b").returncode == 0
        w = s.workers()
        assert w["b"]["state"] == "stopped" and "requires a" in w["b"]["reason"]
        s.cli("restart", "a")
        w = s.workers()
        assert (w["a"]["state"], w["b"]["state"]) == ("running", "running")
        r = s.cli("restart", "nope", check=False)
        assert r.returncode == 1 and "no worker named 'nope'" in r.stderr
        log = s.log()
        assert "worker a started" in log and "worker a restarted" in log
        assert "worker a (pid" in log and "exited: exit status 0 (stopped: a stopped " \
            "by the operator)" in log
        assert s.stop() == 0
        assert "the primary is stopping" in s.log()


def test_worker_stdio_to_files_or_the_primarys(tmp_path, runtime_dir):
    (tmp_path / "logs").mkdir()
    toml = workers_toml(tmp_path, {"a": {"stdout": '"logs/a.out"', "stderr": '"stdout"'},
                                   "b": {"stderr": '"logs/b.err"'}})
    with Sup(tmp_path, runtime_dir, toml) as s:
        (a,), (b,) = s.wait_starts("a", 1), s.wait_starts("b", 1)
        wait_until(lambda: (tmp_path / "logs/b.err").exists() and
                   f"b out {b}" in s.out.read_text(), TIMEOUT, "b's output")
        assert s.stop() == 0
    assert (tmp_path / "logs/a.out").read_text() == f"a out {a}\na err {a}\n"
    assert (tmp_path / "logs/b.err").read_text() == f"b err {b}\n"
    assert f"b out {b}" in s.out.read_text() and f"a out" not in s.out.read_text()
    assert f"b err" not in s.log()


def test_config_sets_the_primarys_options(tmp_path, runtime_dir):
    toml = 'prefix = "filepfx"\ngrace = 1.5\n' + workers_toml(tmp_path, {"a": {}})
    # The command line's --grace 2 (Sup's) is not the default: it wins.
    with Sup(tmp_path, runtime_dir, toml, prefix="unused") as s:
        s.wait_starts("a", 1)
        r = s.cli("ps", "--prefix", "filepfx", "--json")
        assert [w["name"] for w in json.loads(r.stdout) if w["role"] == "worker"] == ["a"]
        assert not (Path(runtime_dir) / "unused").exists()
        assert s.stop() == 0
    assert "SIGKILL after 2s" in s.log()
    toml = 'grace = 1.5\n' + workers_toml(tmp_path, {"b": {}})
    (tmp_path / "forkhost.toml").write_text(toml)
    env = dict(s.env, FORKHOST_PREFIX="g")
    with open(tmp_path / "g.out", "wb") as out, open(tmp_path / "g.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "forkhost", "primary", "--config",
                                 str(tmp_path / "forkhost.toml")], stdout=out, stderr=err,
                                env=env, cwd=str(FIXTURES))
    try:
        wait_until(lambda: s.starts("b") and "ready" in (tmp_path / "g.out").read_text(),
                   TIMEOUT, "b started and the ready line")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    assert "SIGKILL after 1.5s" in (tmp_path / "g.err").read_text()


def test_worker_option_and_no_workers(tmp_path, runtime_dir):
    (tmp_path / "w.py").write_text(WORKER)
    with Sup(tmp_path, runtime_dir, args=[
            "--worker", f"one={tmp_path / 'w.py'} one {tmp_path}",
            "--worker", f"two={tmp_path / 'w.py'} 'two' '{tmp_path}'"]) as s:
        s.wait_starts("one", 1)
        s.wait_starts("two", 1)
        assert set(s.workers()) == {"one", "two"}
        assert s.stop() == 0
    with Sup(tmp_path, runtime_dir, prefix="plain") as s:
        r = s.cli("restart", "x", check=False)
        assert r.returncode == 1 and "supervises no workers" in r.stderr
        assert s.stop() == 0


# -- configuration errors -----------------------------------------------------

BAD = {
    "syntax": ("[workers.a]\nentry = \n", r"line 2"),
    "unknown-top-key": ("prefx = 'x'\n", r"unknown key 'prefx'"),
    "unknown-worker-key": ("[workers.a]\nentry = 'ENTRY'\nrestrat = 'permanent'\n",
                           r"\[workers\.a\] unknown key 'restrat'"),
    "unknown-supervisor-key": ("[supervisor]\nintensty = 3\n",
                               r"\[supervisor\] unknown key 'intensty'"),
    "bad-type": ("[workers.a]\nentry = 'ENTRY'\ngrace = 'soon'\n",
                 r"\[workers\.a\] grace: expected a number of seconds"),
    "bad-policy": ("[workers.a]\nentry = 'ENTRY'\nrestart = 'always'\n",
                   r"\[workers\.a\] restart: expected one of permanent, transient"),
    "bad-strategy": ("[supervisor]\nstrategy = 'all_for_one'\n",
                     r"\[supervisor\] strategy: expected one of"),
    "cycle": ("[workers.a]\nentry = 'ENTRY'\nafter = ['c']\n"
              "[workers.b]\nentry = 'ENTRY'\nrequires = ['a']\n"
              "[workers.c]\nentry = 'ENTRY'\nrequires = ['b']\n",
              r"dependency cycle: a -> c -> b -> a"),
    "unknown-after": ("[workers.a]\nentry = 'ENTRY'\nafter = ['x']\n",
                      r"\[workers\.a\] after: unknown worker 'x'"),
    "unknown-requires": ("[workers.a]\nentry = 'ENTRY'\nrequires = ['x']\n",
                         r"\[workers\.a\] requires: unknown worker 'x'"),
    "bad-entry-file": ("[workers.a]\nentry = './no-such-script.py'\n",
                       r"\[workers\.a\] entry './no-such-script.py': "),
    "bad-entry-module": ("[workers.a]\nentry = 'no_such_module_x:main'\n",
                         r"\[workers\.a\] entry 'no_such_module_x:main': no module named"),
    "bad-output-dir": ("[workers.a]\nentry = 'ENTRY'\nstdout = 'no-such-dir/a.out'\n",
                       r"\[workers\.a\] stdout: no directory for .*no-such-dir/a\.out"),
    "missing-entry": ("[workers.a]\nargs = []\n", r"\[workers\.a\] entry: missing"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_config_refused_before_anything_starts(tmp_path, runtime_dir, kind):
    text, expect = BAD[kind]
    (tmp_path / "w.py").write_text(WORKER)
    text = text.replace("ENTRY", str(tmp_path / "w.py"))
    cfg = tmp_path / "forkhost.toml"
    cfg.write_text(text)
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="bad")
    r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--config", str(cfg)],
                       env=env, cwd=str(FIXTURES), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == EXIT_CONFIG, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"forkhost primary: {cfg}: ")
    assert re.search(expect, lines[0]), lines[0]
    assert r.stdout == ""
    assert not (Path(runtime_dir) / "bad").exists()     # nothing started
    assert not list(tmp_path.glob("*.starts"))


def test_bad_worker_option_refused(tmp_path, runtime_dir):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="bad")
    for arg, expect in (("noequals", "expected NAME=ENTRY"),
                        ("x=", "no ENTRY after x="),
                        ("x=./missing.py", "worker 'x': entry './missing.py'"),
                        ("x='open", "No closing quotation")):
        r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--worker", arg],
                           env=env, cwd=str(FIXTURES), capture_output=True, text=True,
                           timeout=TIMEOUT)
        assert r.returncode == EXIT_CONFIG and len(r.stderr.splitlines()) == 1, r.stderr
        assert expect in r.stderr, r.stderr
    assert not (Path(runtime_dir) / "bad").exists()


# -- Python -------------------------------------------------------------------

PY_PRIMARY = r'''
import json, sys
import forkhost
from forkhost.primary import Primary, Worker
from forkhost._supervise import ConfigError

tmp, rt = sys.argv[1], sys.argv[2]
events = []


def say(line):
    # One write a line: the workers write to the same pipe, and print()
    # writes the line and its newline apart when stdout is unbuffered
    # (PYTHONUNBUFFERED), where a worker's line could fall in between.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


with Primary(prefix="py", runtime_dir=rt) as p:
    try:
        p.supervise([{"name": "a", "entry": "x.py", "requires": ["b"]}])
    except ConfigError as err:
        say(f"refused: {err}")
    sup = p.supervise([Worker("a", f"{tmp}/w.py", [ "a", tmp]),
                       {"name": "b", "entry": f"{tmp}/w.py", "args": ["b", tmp],
                        "requires": ["a"]}],
                      strategy="one_for_one", backoff=0.05,
                      on_event=lambda e: events.append(e))
    say(json.dumps(sup.restart("a")))
    say(json.dumps([(w["name"], w["state"], w["restarts"])
                    for w in sup.status()["workers"]]))
say(json.dumps([(e["event"], e["worker"]) for e in events]))
'''


def test_primary_supervise_python(tmp_path, runtime_dir):
    (tmp_path / "w.py").write_text(WORKER)
    r = subprocess.run([sys.executable, "-c", PY_PRIMARY, str(tmp_path), runtime_dir],
                       cwd=str(FIXTURES), capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert r.returncode == 0, r.stderr
    ours = [ln for ln in r.stdout.splitlines() if not re.match(r"[ab] out \d+$", ln)]
    assert len(ours) == 4, r.stdout + "\n----\n" + r.stderr
    refused, restart, status, events = ours
    assert refused == "refused: worker 'a': requires: unknown worker 'b'"
    assert json.loads(restart)["ok"]
    assert json.loads(status) == [["a", "running", 1], ["b", "running", 1]]
    assert json.loads(events) == [
        ["start", "a"], ["start", "b"],
        ["stop", "b"], ["exit", "b"], ["stop", "a"], ["exit", "a"],
        ["restart", "a"], ["restart", "b"],
        ["stop", "b"], ["exit", "b"], ["stop", "a"], ["exit", "a"]]
