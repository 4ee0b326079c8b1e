"""Signals end to end: what a caller does to the client reaches the
secondary, and what happens to the secondary happens to the client.

A secondary is the template's child, not the client's, and it is in its own
process group: nothing reaches it unless the client forwards it.  Every
test runs the same body for a Python and a native (C) secondary, and most
for both clients, forkhost-run (C) and `forkhost run` (Python).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

import forkhost
from fhtest import (FIXTURES, RUNNER, LineReader, describe, ended, entry,
                    leaves_nothing, module_primary, proc_state, reap, secondary_pids,
                    wait_until, stop_and_resume, signals_job)

KINDS = ["python", "native"]
CLIENTS = ["forkhost-run", "forkhost run"]

# SIGTERM ends fhfix:signals (exit 3), so it is sent last.
FORWARDED = [signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH]

GRACE = 2.0          # PrimaryProc starts its primary with --grace 2


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


def client_popen(primary, client, argv, extra_env=None, **kw) -> subprocess.Popen:
    kw.setdefault("cwd", FIXTURES)
    if client == "forkhost-run":
        return primary.popen(*argv, extra_env=extra_env or {}, **kw)
    return subprocess.Popen([sys.executable, "-m", "forkhost", "run", *map(str, argv)],
                            env=dict(primary.env, **(extra_env or {})), **kw)


def only_secondary(primary) -> int:
    pids = wait_until(lambda: secondary_pids(primary.prefix, primary.runtime_dir),
                      what="the template to report the secondary")
    assert len(pids) == 1, pids
    return pids[0]


def status_mask(pid: int, *fields: str) -> int:
    """The union of signal masks from /proc/PID/status (SigCgt: which have
    a handler; SigPnd, ShdPnd: which are pending)."""
    mask = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in fields:
                    mask |= int(value, 16)
    except FileNotFoundError:
        pass
    return mask


def sigstate(out: bytes) -> dict[bytes, int]:
    return {k: int(v, 16) for k, v in
            (line.split(b":") for line in out.splitlines())}


def bit(*sigs) -> int:
    return sum(1 << (s - 1) for s in sigs)


@pytest.fixture(scope="module", params=["pool", "no-pool"])
def _module_primary_pool(request, tmp_path_factory):
    with module_primary(tmp_path_factory,
                        ["--pool", "0"] if request.param == "no-pool" else []) as p:
        yield p


@pytest.fixture
def primary_pool(_module_primary_pool):
    """A primary whose template launches through its pool of pre-forked
    members, or (--pool 0) forks each secondary on demand: one of each for
    the module, as `primary`."""
    with leaves_nothing(_module_primary_pool) as p:
        yield p


@pytest.mark.parametrize("kind", KINDS)
def test_secondary_starts_with_a_fresh_programs_signals(primary_pool, native_so, kind):
    """Nothing blocked; a C program handles and ignores nothing, a Python
    one catches SIGINT (KeyboardInterrupt) and ignores SIGPIPE and SIGXFSZ,
    as `python` itself does; whether the launch went through a pool member
    or a fresh fork."""
    for _ in range(3):      # the pool hands out more than one member
        r = primary_pool.run(entry(kind, "sigstate", native_so), cwd=FIXTURES)
        assert r.returncode == 0, r.stderr
        got = sigstate(r.stdout)
        if kind == "native":
            assert got == {b"SigBlk": 0, b"SigIgn": 0, b"SigCgt": 0}
        else:
            assert got == {b"SigBlk": 0, b"SigIgn": bit(signal.SIGPIPE, signal.SIGXFSZ),
                           b"SigCgt": bit(signal.SIGINT)}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_forwarded_signal_reaches_the_secondary(primary, native_so, kind, client):
    proc = client_popen(primary, client, [entry(kind, "signals", native_so)],
                        stdout=subprocess.PIPE)
    try:
        out = LineReader(proc.stdout)
        assert out.readline() == b"ready\n"
        for sig in FORWARDED:
            proc.send_signal(sig)
            # One at a time: standard signals pending together coalesce.
            assert out.readline() == f"{sig.name}\n".encode(), sig.name
        proc.send_signal(signal.SIGTERM)
        assert out.readline() == b"SIGTERM\n"
        assert proc.wait(30) == 3
    finally:
        reap(proc)


@pytest.mark.parametrize("sig", FORWARDED[:-1] + [signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("kind", KINDS)
def test_forwarded_signal_kills_a_secondary_that_does_not_handle_it(
        primary_pool, native_so, kind, sig, tmp_path):
    """The default action, as for a normal child: a Ctrl-C ends a program
    that does not catch it (a Python one through KeyboardInterrupt).
    SIGWINCH is left out: its default is to do nothing."""
    proc = primary_pool.popen(entry(kind, "sleeper", native_so), cwd=tmp_path,
                              extra_env={"PYTHONPATH": str(FIXTURES)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert LineReader(proc.stdout).readline() == b"ready\n"
        sec = only_secondary(primary_pool)
        proc.send_signal(sig)
        try:
            err = LineReader(proc.stderr).rest()
        except AssertionError as exc:
            raise AssertionError(f"{exc}; client {describe(proc.pid)}; "
                                 f"secondary {describe(sec)}") from None
        assert proc.wait(30) == -sig, err
        if kind == "python" and sig == signal.SIGINT:
            assert b"KeyboardInterrupt" in err
    finally:
        reap(proc)


def test_ctrl_c_interrupts_a_busy_python_loop(primary_pool, tmp_path):
    """A Python secondary running bytecode (no system call to interrupt)
    still runs SIGINT's handler between bytecodes and ends by
    KeyboardInterrupt, as the direct run does: the interpreter must flag
    the thread state the entry runs on (Python 3.13 flags the main one by
    pointer, see pystack.c)."""
    env = {"PYTHONPATH": str(FIXTURES)}
    direct = [sys.executable, "-c", "import sys, fhfix; sys.exit(fhfix.spinner([]))"]
    outcomes = []
    for proc in (subprocess.Popen(direct, cwd=tmp_path, env=dict(primary_pool.env, **env),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                 primary_pool.popen("fhfix:spinner", cwd=tmp_path, extra_env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)):
        try:
            assert LineReader(proc.stdout).readline() == b"ready\n"
            time.sleep(0.2)             # into the loop
            proc.send_signal(signal.SIGINT)
            err = LineReader(proc.stderr).rest()
            outcomes.append((proc.wait(30), b"KeyboardInterrupt" in err))
        finally:
            reap(proc)
    assert outcomes == [(-signal.SIGINT, True)] * 2, outcomes


@pytest.mark.parametrize("kind", KINDS)
def test_signal_queued_before_started_is_delivered(primary_pool, native_so, kind):
    """The client has its handlers but no secondary yet (the template is
    frozen, so STARTED cannot come): the signal waits in the client and
    reaches the secondary as soon as it exists, even before the secondary
    has finished setting itself up."""
    primary = primary_pool
    os.kill(primary.template_pid, signal.SIGSTOP)
    proc = None
    try:
        proc = primary.popen(entry(kind, "sleeper", native_so), cwd=FIXTURES,
                             stdout=subprocess.DEVNULL)
        term = bit(signal.SIGTERM)
        wait_until(lambda: status_mask(proc.pid, "SigCgt") & term,
                   what="forkhost-run to install its signal handlers")
        proc.send_signal(signal.SIGTERM)
        # Caught (no longer pending) while the template still sleeps.
        wait_until(lambda: not status_mask(proc.pid, "SigPnd", "ShdPnd") & term,
                   what="forkhost-run to take the signal")
        assert proc.poll() is None
    finally:
        os.kill(primary.template_pid, signal.SIGCONT)
    try:
        assert proc.wait(30) == -signal.SIGTERM
    finally:
        reap(proc)
    assert primary.run("fhfix:exit_with", 4, cwd=FIXTURES).returncode == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("kind", KINDS)
def test_signal_right_after_popen_is_not_lost(primary_pool, native_so, kind, sig):
    """No synchronisation at all: the signal lands before the client's
    handlers exist (the client dies by it), while it waits for STARTED, or
    just after the secondary was forked, before it is set up.  Every case
    must end by that signal, and the template must go on serving: these
    three are the template's own stop signals, and one that hit a fresh
    child while it still had the template's handlers would wake the
    template instead."""
    primary = primary_pool
    for _ in range(10):
        proc = primary.popen(entry(kind, "sleeper", native_so), cwd=FIXTURES,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.send_signal(sig)
            err = LineReader(proc.stderr).rest()
            assert proc.wait(30) == -sig, err
        finally:
            reap(proc)
    assert not ended(primary.template_pid)
    assert primary.run("fhfix:exit_with", 5, cwd=FIXTURES).returncode == 5
    # A secondary reports its status just before it exits; the template
    # reaps it a moment after its client was answered.
    wait_until(lambda: secondary_pids(primary.prefix, primary.runtime_dir) == [],
               what="every secondary to be reaped")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=lambda s: s.name)
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_client_dies_by_the_secondarys_signal(primary, native_so, kind, client, sig,
                                              tmp_path):
    # cwd: a scratch directory, where a core dump would land.
    proc = client_popen(primary, client, [entry(kind, "die_by", native_so), sig.name],
                        cwd=tmp_path, extra_env={"PYTHONPATH": str(FIXTURES)},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -sig, err
        assert err == b"" and out == b""
    finally:
        reap(proc)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=lambda s: s.name)
@pytest.mark.parametrize("kind", KINDS)
def test_shell_sees_128_plus_signal(primary, native_so, kind, sig, tmp_path):
    r = subprocess.run(["bash", "-c", '"$@"; echo "status $?"', "bash", RUNNER,
                        entry(kind, "die_by", native_so), sig.name],
                       env=dict(primary.env, PYTHONPATH=str(FIXTURES)), cwd=tmp_path,
                       capture_output=True, timeout=60)
    assert r.stdout == f"status {128 + sig}\n".encode(), r.stderr


@contextlib.contextmanager
def job(primary, client, kind, native_so):
    """fhfix:signals (or its C twin) as a shell's job: yields the client,
    its output and the secondary's pid; on the way out checks that both run
    and forward (SIGUSR1 goes through, SIGTERM ends it with 3)."""
    proc = client_popen(primary, client, [entry(kind, "signals", native_so)],
                        stdout=subprocess.PIPE)
    with signals_job(proc, lambda: only_secondary(primary)) as (out, sec):
        yield proc, out, sec


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_sigtstp_stops_both_sigcont_resumes_both(primary, native_so, kind, client):
    with job(primary, client, kind, native_so) as (proc, out, sec):
        stop_and_resume(proc, out, sec, lambda: proc.send_signal(signal.SIGTSTP))


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_secondary_stopped_by_anyone_stops_the_client(primary_pool, native_so, kind,
                                                      client):
    """kill -STOP of the program itself: a shell's job stops with it (the
    template tells the client, STOPPED), and the shell's SIGCONT to the job
    resumes both, each time; from a pool member and from a fork on demand."""
    with job(primary_pool, client, kind, native_so) as (proc, out, sec):
        for _ in range(2):
            stop_and_resume(proc, out, sec, lambda: os.kill(sec, signal.SIGSTOP))


def test_launch_api_is_not_told_of_stops(primary, native_so):
    """forkhost.launch() did not ask (no LAUNCH_JOBCTL): a stopped
    secondary does not stop the calling program, and its handle still
    reports the exit."""
    sec = forkhost.launch("fhfix:sleeper", ["0.5"], prefix=primary.prefix,
                          runtime_dir=primary.runtime_dir, cwd=FIXTURES,
                          stdout=forkhost.DEVNULL)
    with sec:
        os.kill(sec.pid, signal.SIGSTOP)
        wait_until(lambda: proc_state(sec.pid) == "T", what="the secondary to stop")
        time.sleep(0.2)
        assert sec.poll() is None
        sec.send_signal(signal.SIGCONT)
        assert sec.wait(30) == 0


@pytest.mark.heavy
@pytest.mark.parametrize("kind", KINDS)
def test_sigkilled_client_secondary_killed_after_grace(primary, native_so, kind):
    """The secondary ignores SIGTERM: only the SIGKILL the template sends
    when the grace period is over ends it, not before."""
    proc = primary.popen(entry(kind, "ignore_term", native_so), cwd=FIXTURES,
                         stdout=subprocess.PIPE)
    try:
        assert LineReader(proc.stdout).readline() == b"ready\n"
        sec = only_secondary(primary)
        t0 = time.monotonic()
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        info = wait_until(
            lambda: [s for s in forkhost.info(primary.prefix, primary.runtime_dir)
                     ["secondaries"] if not s["client_connected"]],
            what="the template to notice the client is gone")
        assert [s["pid"] for s in info] == [sec]
        wait_until(lambda: ended(sec), timeout=GRACE + 3,
                   what="the secondary to be killed after the grace period")
        elapsed = time.monotonic() - t0
        # The template arms its SIGKILL after it saw the client go, which
        # is after t0: it cannot have fired sooner than the grace period.
        assert elapsed >= GRACE * 0.95, elapsed
    finally:
        reap(proc)
    wait_until(lambda: secondary_pids(primary.prefix, primary.runtime_dir) == [],
               what="the template to reap the secondary")


@pytest.mark.parametrize("name", ["sleeper", "signals"])
@pytest.mark.parametrize("kind", KINDS)
def test_sigkilled_client_secondary_gets_sigterm(primary, native_so, kind, name):
    proc = primary.popen(entry(kind, name, native_so), cwd=FIXTURES,
                         stdout=subprocess.PIPE)
    try:
        out = LineReader(proc.stdout)
        assert out.readline() == b"ready\n"
        sec = only_secondary(primary)
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        if name == "signals":
            # It still writes to our pipe: it was told SIGTERM, not killed.
            assert out.readline() == b"SIGTERM\n"
        wait_until(lambda: ended(sec), timeout=GRACE + 3,
                   what="the secondary to end after its client was killed")
    finally:
        reap(proc)
    wait_until(lambda: secondary_pids(primary.prefix, primary.runtime_dir) == [],
               what="the template to reap the secondary")
