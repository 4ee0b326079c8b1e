"""Terminals and job control: a program started from a terminal through
forkhost-run behaves as it does when run directly.

Each case runs a program from tests/fixtures/ttyfix.py on a fresh
pseudo-terminal twice, directly and through forkhost-run, under
tests/fixtures/jobshell.py (a minimal job-control shell, the session leader
of that terminal), and compares what the program printed, what the shell
saw (stopped by which signal, exit status) and the terminal's modes after.
Keys are written to the pty's master as a user types them: ^C is \\x03, ^Z
\\x1a.  The shell's fg gives the job the terminal, then SIGCONT.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import psutil
import pytest

from fhtest import FIXTURES, RUNNER, LineReader, proc_state, reap, wait_until

JOBSHELL = str(FIXTURES / "jobshell.py")
WAYS = ["direct", "forkhost-run"]
TIMEOUT = 30.0      # a bound for failures, never a measurement


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


class Term:
    """One pseudo-terminal with jobshell.py on it running one job."""

    def __init__(self, primary, way: str, case: str, mode: str = "fg",
                 rows: int = 24, cols: int = 80, env=None, argv=None):
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        ev_r, ev_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        prog = [sys.executable, "ttyfix.py", case]
        if argv is None:
            argv = prog if way == "direct" else [RUNNER, "ttyfix.py", case]
        full_env = dict(primary.env, JOBSHELL_EVENTS=str(ev_w),
                        JOBSHELL_COMMANDS=str(cmd_r))
        full_env.pop("FORKHOST_TTY", None)      # the default, whatever the runner has
        full_env.update(env or {})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, JOBSHELL, mode, *argv], stdin=slave, stdout=slave,
                stderr=slave, start_new_session=True, pass_fds=(ev_w, cmd_r),
                env=full_env, cwd=FIXTURES)
        finally:
            os.close(slave)
            os.close(ev_w)
            os.close(cmd_r)
        self.modes = termios.tcgetattr(self.master)
        self.events = os.fdopen(ev_r, "r")
        self.commands = os.fdopen(cmd_w, "w", buffering=1)
        self.out = b""
        self.seen = 0

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("4H", rows, cols, 0, 0))

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def _read(self, wait: float) -> bool:
        r, _, _ = select.select([self.master], [], [], wait)
        if not r:
            return False
        try:
            data = os.read(self.master, 4096)
        except OSError:         # EIO: every slave fd is closed
            return False
        self.out += data
        return bool(data)

    def expect(self, text: bytes) -> bytes:
        """Read the terminal until a whole line with text comes after what
        expect() saw last; that line from text on."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            at = self.out.find(text, self.seen)
            end = self.out.find(b"\n", at) if at >= 0 else -1
            if end >= 0:
                break
            left = deadline - time.monotonic()
            assert left > 0 and self._read(left), \
                f"{text!r} never came; the terminal showed {self.out!r}"
        self.seen = end
        return self.out[at:end].rstrip(b"\r")

    def wait_for(self, text: bytes) -> None:
        """Read the terminal until text comes (a prompt: no newline)."""
        deadline = time.monotonic() + TIMEOUT
        while text not in self.out[self.seen:]:
            left = deadline - time.monotonic()
            assert left > 0 and self._read(left), \
                f"{text!r} never came; the terminal showed {self.out!r}"
        self.seen = self.out.index(text, self.seen) + len(text)

    def wait_raw(self) -> None:
        """Until the terminal is out of canonical mode: someone reads it key
        by key (readline, or forkhost-run relaying)."""
        wait_until(lambda: not termios.tcgetattr(self.master)[3] & termios.ICANON,
                   what="the terminal to leave canonical mode")

    def wait_foreground(self, job: psutil.Process, way: str) -> None:
        """Until fg has given the job the terminal, and forkhost-run relays
        it raw again: keys typed from now on are the job's."""
        wait_until(lambda: os.tcgetpgrp(self.master) == job.pid,
                   what="fg to give the job the terminal")
        if way != "direct":
            self.wait_raw()

    def event(self) -> str:
        r, _, _ = select.select([self.events], [], [], TIMEOUT)
        assert r, f"the shell reported nothing; the terminal showed {self.out!r}"
        return self.events.readline().strip()

    def command(self, what: str) -> None:
        self.commands.write(what + "\n")

    def job(self) -> psutil.Process:
        kids = wait_until(lambda: psutil.Process(self.proc.pid).children(),
                          what="the shell to start its job")
        return kids[0]

    def __enter__(self) -> "Term":
        return self

    def __exit__(self, *exc) -> None:
        """After a failure: end the job and the shell, close everything."""
        if self.master < 0:
            return
        try:
            for kid in psutil.Process(self.proc.pid).children():
                os.killpg(kid.pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)
        self.master = -1
        self.events.close()
        self.commands.close()

    def close(self) -> list:
        """Wait for the shell, read the rest; the terminal's modes now."""
        try:
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            while self._read(0):
                pass
            modes = termios.tcgetattr(self.master)
            os.close(self.master)
            self.master = -1
            self.events.close()
            self.commands.close()
        return modes


def lines(out: bytes, *prefixes: bytes) -> list[bytes]:
    return [ln.rstrip(b"\r") for ln in out.split(b"\n")
            if ln.lstrip(b"\r").startswith(prefixes)]


def run_info(primary, way, env=None, mode="fg", screen=False):
    with Term(primary, way, "info", rows=37, cols=111, env=env, mode=mode) as t:
        line = t.expect(b"info ")
        assert t.event() == "exited 0"
        assert t.close() == t.modes
        info = json.loads(line[5:])
        return (info, t.out) if screen else info


def test_controlling_terminal(primary):
    """/dev/tty opens, tcgetpgrp() is the program's group, stdio are
    terminals, and the size is the terminal's."""
    direct, through = (run_info(primary, way) for way in WAYS)
    assert direct == {"dev_tty": "opens", "foreground": True,
                      "isatty": [True, True, True], "size": [37, 111]}
    assert through == direct


def test_background_job_that_does_not_read_runs_on(primary):
    """A background job that only writes is not stopped; it is not the
    terminal's foreground group, in the pty as on the terminal."""
    direct, through = (run_info(primary, way, mode="bg", screen=True) for way in WAYS)
    assert direct[0] == {"dev_tty": "opens", "foreground": False,
                         "isatty": [True, True, True], "size": [37, 111]}
    assert through == direct        # the bytes too: one CR NL per line


def test_relay_off(primary):
    """FORKHOST_TTY=0: the terminal is passed as it is, as before: no
    controlling terminal in the secondary (the difference the relay
    removes)."""
    through = run_info(primary, "forkhost-run", env={"FORKHOST_TTY": "0"})
    assert through["dev_tty"] != "opens"
    assert through["isatty"] == [True, True, True]
    assert through["size"] == [37, 111]


def test_relay_value_checked(primary):
    r = primary.run("ttyfix.py", "info", extra_env={"FORKHOST_TTY": "yes"},
                    cwd=FIXTURES, start_new_session=True)
    assert r.returncode == 125
    assert r.stderr.decode().startswith("forkhost-run: invalid FORKHOST_TTY 'yes'")


def test_no_terminal_nothing_relayed(primary):
    """Pipes, no controlling terminal: the same as running it directly."""
    out = {}
    for way in WAYS:
        argv = ([sys.executable] if way == "direct" else [RUNNER]) + ["ttyfix.py", "info"]
        r = subprocess.run(argv, env=primary.env, cwd=FIXTURES, capture_output=True,
                           stdin=subprocess.DEVNULL, start_new_session=True,
                           timeout=TIMEOUT)
        assert r.returncode == 1, r.stderr      # no size: not a terminal
        out[way] = r.stderr.decode().splitlines()[-1]
    assert out["direct"] == out["forkhost-run"]


def run_interrupt(primary, way):
    with Term(primary, way, "interrupt") as t:
        t.expect(b"started")
        t.send(b"\x03")
        rc = t.expect(b"rc ")
        assert t.event() == "exited 0"
        assert t.close() == t.modes
        return rc, t.out


def test_ctrl_c_reaches_the_whole_group(primary):
    """^C interrupts os.system()'s child at once: system() returns the
    child's SIGINT (2), where a forwarded signal would reach only the
    program and sleep would run on."""
    direct, through = (run_interrupt(primary, way) for way in WAYS)
    assert direct[0] == b"rc 2"
    assert through == direct        # the screen too, ^C echoed and all


def run_suspend(primary, way, how="^Z"):
    with Term(primary, way, "suspend") as t:
        child = int(t.expect(b"ready ").split()[1])
        job = t.job()
        if how == "^Z":
            t.send(b"\x1a")
        else:                       # a shell's kill -TSTP %1
            os.killpg(job.pid, signal.SIGTSTP)
        events = [t.event()]
        # Everything of the job is stopped: the client (or the program) the
        # shell sees, and the program's own child.
        states = [proc_state(job.pid),
                  wait_until(lambda: proc_state(child) == "T" and "T",
                             what="the program's child to stop")]
        modes_while_stopped = termios.tcgetattr(t.master)
        t.command("fg")
        t.wait_foreground(job, way)
        wait_until(lambda: proc_state(child) != "T", what="fg to continue the child")
        t.send(b"hello\r")
        got = t.expect(b"got ")
        events.append(t.event())
        assert t.close() == t.modes
        assert modes_while_stopped == t.modes
        return events, states, got


def test_ctrl_z_stops_the_group_and_fg_continues_it(primary):
    direct, through = (run_suspend(primary, way) for way in WAYS)
    assert direct == (["stopped %d" % signal.SIGTSTP, "exited 0"], ["T", "T"],
                      b"got hello")
    assert through == direct


def test_kill_tstp_to_the_job(primary):
    """SIGTSTP sent to the job's process group, not typed: the same stop."""
    direct, through = (run_suspend(primary, way, how="kill") for way in WAYS)
    assert direct == (["stopped %d" % signal.SIGTSTP, "exited 0"], ["T", "T"],
                      b"got hello")
    assert through == direct


def run_cbreak(primary, way):
    with Term(primary, way, "cbreak") as t:
        t.expect(b"ready")
        t.send(b"x")
        key = t.expect(b"key ")
        assert t.event() == "exited 0"
        assert t.close() == t.modes
        return key, t.out.count(b"x")


def test_cbreak_key(primary):
    """A program that reads one key in cbreak mode gets it at once, not
    echoed; the terminal's modes are back after."""
    results = [run_cbreak(primary, way) for way in WAYS]
    assert results == [(b"key x", 1)] * 2


def run_winch(primary, way):
    with Term(primary, way, "winch", rows=30, cols=90) as t:
        ready = t.expect(b"ready ")
        t.resize(41, 123)       # the kernel signals the terminal's foreground group
        winch = t.expect(b"winch ")
        t.send(b"done\r")
        got = t.expect(b"got ")
        assert t.event() == "exited 0"
        assert t.close() == t.modes
        return ready, winch, got


def test_window_size_and_resize(primary):
    results = [run_winch(primary, way) for way in WAYS]
    assert results == [(b"ready 30 90", b"winch 41 123", b"got done")] * 2


def run_background_read(primary, way):
    with Term(primary, way, "read", mode="bg") as t:
        job = t.job()
        events = [t.event()]
        state = proc_state(job.pid)
        t.command("fg")
        t.wait_foreground(job, way)
        t.send(b"typed\r")
        got = t.expect(b"got ")
        events.append(t.event())
        assert t.close() == t.modes
        return events, state, got, t.out


def test_background_read_stops_with_sigttin(primary):
    """A background job reading the terminal stops ("Stopped (tty input)")
    instead of taking the keys; fg gives it the terminal and it reads."""
    direct, through = (run_background_read(primary, way) for way in WAYS)
    assert direct[:3] == (["stopped %d" % signal.SIGTTIN, "exited 0"], "T", b"got typed")
    assert through == direct


def run_repl(primary, way):
    with Term(primary, way, "repl") as t:
        t.wait_for(b">>> ")
        t.send(b"6*7\r")
        t.wait_for(b">>> ")
        t.send(b"\x1a")
        events = [t.event()]
        t.command("fg")
        t.wait_raw()
        t.send(b"'x'*3\r")
        t.wait_for(b">>> ")
        t.send(b"\x04")
        events.append(t.event())
        assert t.close() == t.modes
        return events, t.out


def test_readline_console_suspend(primary):
    """Python's console with readline, which catches SIGTSTP, restores the
    terminal and stops itself: the same screen, byte for byte."""
    direct, through = (run_repl(primary, way) for way in WAYS)
    assert direct[0] == ["stopped %d" % signal.SIGTSTP, "exited 0"]
    assert b"42\r\n" in direct[1] and b"'xxx'\r\n" in direct[1]
    assert through == direct


def run_killed(primary, way, sig):
    with Term(primary, way, "winch") as t:
        t.expect(b"ready ")
        os.kill(t.job().pid, sig)
        event = t.event()
        assert t.close() == t.modes
        return event


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGALRM])
def test_killed_by_a_signal_restores_the_terminal(primary, sig):
    """A signal the client forwards (TERM) or not (ALRM, on releases that
    do not forward it): the job dies of it, the terminal's modes are back."""
    results = [run_killed(primary, way, sig) for way in WAYS]
    assert results == ["killed %d" % sig] * 2


def run_native(primary, way, native_so):
    argv = ["sleep", "1000"] if way == "direct" else [RUNNER, f"{native_so}:sleeper"]
    with Term(primary, way, None, argv=argv) as t:
        job = t.job()
        if way == "direct":
            wait_until(lambda: job.name() == "sleep", what="sleep to start")
        else:
            t.expect(b"ready")
        t.send(b"\x1a")
        events = [t.event()]
        t.command("fg")
        t.wait_foreground(job, way)
        t.send(b"\x03")
        events.append(t.event())
        assert t.close() == t.modes
        return events


def test_native_entry(primary, native_so):
    """A native (C) entry through forkhost-run against sleep run directly:
    ^Z stops it, fg continues it, ^C ends it."""
    direct, through = (run_native(primary, way, native_so) for way in WAYS)
    assert direct == ["stopped %d" % signal.SIGTSTP, "killed %d" % signal.SIGINT]
    assert through == direct


def test_python_init_client_relays_too(primary):
    """forkhost.init()'s client (the C client, as fh_init's) relays the
    terminal like forkhost-run: ^Z and fg through a program that hands
    itself over, against the same case run directly."""
    env = dict(primary.env)
    env.pop("FORKHOST_PREFIX", None)
    prim = subprocess.Popen([sys.executable, "ttyinit.py", "--file-prefix=ti"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=FIXTURES)
    try:
        assert LineReader(prim.stdout).readline().startswith(b"primary ")
        results = []
        for way in WAYS:
            argv = ([sys.executable, "ttyfix.py", "suspend"] if way == "direct" else
                    [sys.executable, "ttyinit.py", "--file-prefix=ti", "suspend"])
            with Term(primary, way, None, argv=argv) as t:
                child = int(t.expect(b"ready ").split()[1])
                job = t.job()
                t.send(b"\x1a")
                events = [t.event()]
                wait_until(lambda: proc_state(child) == "T", what="the child to stop")
                t.command("fg")
                t.wait_foreground(job, way)
                t.send(b"hello\r")
                got = t.expect(b"got ")
                events.append(t.event())
                assert t.close() == t.modes
                results.append((events, got))
        assert results[0] == (["stopped %d" % signal.SIGTSTP, "exited 0"], b"got hello")
        assert results[1] == results[0]
        prim.send_signal(signal.SIGTERM)
        _, err = prim.communicate(timeout=TIMEOUT)
        assert prim.returncode == 0, err
    finally:
        reap(prim)
