"""The primary's log lines (--log-level, the log file of --detach and its
reopening on SIGUSR1) and `forkhost stats` (text, --json, --prometheus):
real launches against one detached primary, and the lines and figures
must say exactly what the test did."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

import forkhost
from forkhost import _cli
from fhtest import FIXTURES, RUNNER, PrimaryProc, ended, secondary_pids, wait_until

LINE = re.compile(r"<(\d)>(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) forkhost\[(\S+)\] "
                  r"(\w+)((?: \w+=(?:\"(?:[^\"\\]|\\.)*\"|\S+))*)$")
FIELD = re.compile(r" (\w+)=(\"(?:[^\"\\]|\\.)*\"|\S+)")


def events(path) -> list[tuple[int, str, dict]]:
    """The log lines of a file as (level, event, fields); the other lines
    (the ready line printed as before) are left out.  Every line that
    looks like one must parse whole."""
    out = []
    with open(path) as f:
        for line in f.read().splitlines():
            if not line.startswith("<"):
                continue
            m = LINE.match(line)
            assert m, f"not a log line: {line!r}"
            fields = {k: json.loads(v) if v.startswith('"') else v
                      for k, v in FIELD.findall(m.group(5))}
            assert m.group(3) == "s"
            out.append((int(m.group(1)), m.group(4), fields))
    return out


def launch(env, *argv) -> tuple[int, int]:
    """forkhost-run ARGV: (client pid, exit status)."""
    p = subprocess.Popen([RUNNER, *argv], env=env, cwd=FIXTURES,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p.pid, p.wait(60)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """forkhost ARGV in this process: (status, stdout, stderr)."""
    try:
        code = _cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_log_lines_stats_and_reopen_say_what_was_done(runtime_dir, capsys):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="s")
    log = os.path.join(runtime_dir, "s.log")
    pid = tpid = tpid2 = 0
    try:
        r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--detach",
                            "--log-level", "debug", "--grace", "2"], env=env,
                           cwd=FIXTURES, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        cfg = forkhost._runtime.read_config(forkhost._runtime.paths("s", runtime_dir))
        pid, tpid = cfg["pid"], cfg["template_pid"]

        ok = launch(env, "fhfix:exit_with", "0")
        three = launch(env, "fhfix:exit_with", "3")
        killed = launch(env, "fhfix:die_by", "SIGKILL")
        refused = launch(env, "./no-such-entry.so")
        assert [ok[1], three[1], killed[1], refused[1]] == [0, 3, -9, 127]
        # Exits are counted when the template reaps them.
        wait_until(lambda: not secondary_pids("s", runtime_dir),
                   what="the secondaries to be reaped")

        code, out, err = cli(capsys, "stats", "--json", "--runtime-dir", runtime_dir,
                             "--prefix", "s")
        assert code == 0, err
        s = json.loads(out)
        assert (s["prefix"], s["primary_pid"], s["template_pid"]) == ("s", pid, tpid)
        assert (s["launches"], s["refusals"], s["secondaries"]) == (3, 1, 0)
        assert s["exits"] == {"status": {"0": 1, "3": 1}, "signal": {"SIGKILL": 1}}
        lat = s["latency"]
        assert lat["count"] == sum(lat["buckets"]) == 3
        assert len(lat["buckets"]) == len(lat["bounds_us"]) + 1
        assert lat["bounds_us"] == sorted(lat["bounds_us"])
        assert s["pool"]["size"] == 2 and s["pool"]["idle"] + s["pool"]["busy"] <= 2
        assert 0 < s["arena"]["used"] < s["arena"]["size"] <= s["arena"]["max"]

        code, out, err = cli(capsys, "stats", "--prometheus", "--runtime-dir",
                             runtime_dir, "--prefix", "s")
        assert code == 0, err
        prom = out.splitlines()
        for want in ['forkhost_launches_total{prefix="s"} 3',
                     'forkhost_refusals_total{prefix="s"} 1',
                     'forkhost_exits_total{prefix="s",status="0"} 1',
                     'forkhost_exits_total{prefix="s",status="3"} 1',
                     'forkhost_killed_total{prefix="s",signal="SIGKILL"} 1',
                     'forkhost_secondaries{prefix="s"} 0',
                     'forkhost_launch_latency_seconds_bucket{prefix="s",le="+Inf"} 3',
                     'forkhost_launch_latency_seconds_count{prefix="s"} 3',
                     f'forkhost_arena_max_bytes{{prefix="s"}} {s["arena"]["max"]}']:
            assert want in prom, want
        # The textfile collector's rules: HELP and TYPE before a family's
        # samples, each once; counters end in _total; buckets cumulative.
        typed, buckets = {}, []
        for line in prom:
            if line.startswith("# "):
                kind, name = line.split()[1:3]
                assert (name, kind) not in typed
                typed[name, kind] = line.split(None, 3)[3]
                continue
            m = re.fullmatch(r'(\w+)\{prefix="s"(?:,\w+="[^"]*")*\} (\S+)', line)
            assert m, line
            name = re.sub(r"_(bucket|sum|count)$", "", m.group(1)) \
                if m.group(1).startswith("forkhost_launch_latency") else m.group(1)
            assert (name, "HELP") in typed and (name, "TYPE") in typed, line
            if typed[name, "TYPE"] == "counter":
                assert name.endswith("_total")
            if m.group(1).endswith("_bucket"):
                buckets.append(int(m.group(2)))
        assert buckets == sorted(buckets) and len(buckets) == len(lat["buckets"])

        code, out, err = cli(capsys, "stats", "--runtime-dir", runtime_dir, "--prefix", "s")
        assert code == 0 and "launches     3" in out and "SIGKILL: 1" in out, out

        # The log says the same, line by line.
        ev = events(log)
        kinds = [e for _, e, _ in ev]
        assert kinds[:2] == ["start", "ready"]
        assert ev[1][2]["template_pid"] == str(tpid) and ev[0][2]["pid"] == str(pid)
        launches = {f["client_pid"]: f for lvl, e, f in ev if e == "launch" and lvl == 7}
        exits = {f["pid"]: f for lvl, e, f in ev if e == "exit" and lvl == 7}
        assert {k: f["entry"] for k, f in launches.items()} == {
            str(ok[0]): "fhfix:exit_with", str(three[0]): "fhfix:exit_with",
            str(killed[0]): "fhfix:die_by"}
        how = {c: {k: v for k, v in exits[launches[str(c)]["pid"]].items()
                   if k in ("status", "signal", "client_pid")}
               for c in (ok[0], three[0], killed[0])}
        assert how == {ok[0]: {"status": "0", "client_pid": str(ok[0])},
                       three[0]: {"status": "3", "client_pid": str(three[0])},
                       killed[0]: {"signal": "SIGKILL", "client_pid": str(killed[0])}}
        assert all(float(f["duration"]) >= 0 for f in exits.values())
        assert sum(round(float(f["latency"]) * 1e6) for f in launches.values()) == \
            lat["sum_us"]
        (refusal,) = [f for lvl, e, f in ev if e == "refusal" and lvl == 6]
        assert refusal["client_pid"] == str(refused[0]) and refusal["code"] == "127"
        assert "./no-such-entry.so" in refusal["reason"]

        # logrotate: move, then SIGUSR1; the primary and the template write
        # to the new file from then on.
        os.rename(log, log + ".1")
        os.kill(pid, signal.SIGUSR1)
        wait_until(lambda: os.path.exists(log) and
                   any(e == "reopen" and f["pid"] == str(tpid) for _, e, f in events(log)),
                   what="the template to reopen the log")
        again = launch(env, "fhfix:exit_with", "5")
        assert again[1] == 5
        wait_until(lambda: any(e == "exit" and f["status"] == "5" for _, e, f in events(log)),
                   what="the exit line in the new log")
        assert [e for _, e, _ in events(log)][:2] == ["reopen", "reopen"]
        assert events(log + ".1") == ev        # nothing more in the old one

        # SIGHUP reloads a detached primary (as nginx's and gunicorn's):
        # one reload line, and the counters go on across generations.
        os.kill(pid, signal.SIGHUP)
        reload = wait_until(lambda: [f for lvl, e, f in events(log) if e == "reload"],
                            what="the reload line")
        tpid2 = int(reload[0]["template_pid"])
        assert reload == [{"pid": str(pid), "template_pid": str(tpid2),
                           "old_template_pid": str(tpid), "generation": "2"}]
        assert launch(env, "fhfix:exit_with", "6")[1] == 6
        wait_until(lambda: not secondary_pids("s", runtime_dir), what="its exit")
        code, out, err = cli(capsys, "stats", "--json", "--runtime-dir", runtime_dir,
                             "--prefix", "s")
        s = json.loads(out)
        assert (s["template_pid"], s["generation"], s["reloads"]) == (tpid2, 2, 1)
        assert (s["launches"], s["refusals"]) == (5, 1), s
        assert s["exits"]["status"] == {"0": 1, "3": 1, "5": 1, "6": 1}, s

        code, out, err = cli(capsys, "stop", "--runtime-dir", runtime_dir, "--prefix", "s")
        assert code == 0, err
        assert events(log)[-1] == (6, "stop", {"pid": str(pid), "cause": "SIGTERM"})
        wait_until(lambda: ended(tpid) and ended(tpid2), what="the templates to end")
    finally:
        for leftover in (pid, tpid, tpid2):   # not our children: only if the test failed
            if leftover and not ended(leftover):
                os.kill(leftover, signal.SIGKILL)


def test_default_level_writes_no_event_line_and_ignores_sigusr1(runtime_dir):
    """The default level keeps stderr as it was; without --detach SIGUSR1
    has no log to reopen and stops nothing."""
    p = PrimaryProc(runtime_dir, prefix="q")
    try:
        p.proc.send_signal(signal.SIGUSR1)
        assert p.run("fhfix:exit_with", "4", cwd=FIXTURES).returncode == 4
        assert p.run("./no-such-entry.so", cwd=FIXTURES).returncode == 127
        wait_until(lambda: forkhost.info("q", runtime_dir)["refused"] == 1,
                   what="the refusal")
    finally:
        code, out, err = p.stop()
    assert code == 0, err
    assert err == "", err
    assert out.splitlines()[-1] == "forkhost primary: stopped (prefix 'q')"


def test_bad_values_and_no_primary_get_one_clear_error(runtime_dir, capsys):
    code, _, err = cli(capsys, "primary", "--log-level", "loud")
    assert code == 2
    assert "argument --log-level: invalid choice: 'loud' (choose from 'error', " \
           "'warning', 'info', 'debug')" in err
    code, _, err = cli(capsys, "stats", "--json", "--prometheus")
    assert code == 2 and "argument --prometheus: not allowed with argument --json" in err
    with pytest.raises(forkhost.ForkhostError, match="invalid log level 'loud': use one "
                       "of error, warning, info, debug"):
        forkhost.Primary("x", runtime_dir=runtime_dir, log_level="loud")
    # No primary: ps's line and exit status, in stats's name.
    ps = cli(capsys, "ps", "--runtime-dir", runtime_dir, "--prefix", "none")
    stats = cli(capsys, "stats", "--prometheus", "--runtime-dir", runtime_dir,
                "--prefix", "none")
    assert ps[0] == stats[0] == 1 and ps[1] == stats[1] == ""
    assert stats[2] == ps[2].replace("forkhost ps:", "forkhost stats:")
    assert stats[2].count("\n") == 1 and "no forkhost primary for prefix 'none'" in stats[2]
