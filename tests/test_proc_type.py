"""One program, either role: fh_init() in C and forkhost.init() in Python.

The C program is tests/fixtures/proc_type.c, built as DPDK programs are
run (a PIE, ASLR on); the Python one is tests/fixtures/init_app.py.  The
primary is the program itself, started from a shell; its secondaries are
the same program started again, which hand themselves over and exit as
the forked secondary does, exactly as through forkhost-run.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import forkhost

from fhtest import (FIXTURES, RUNNER, LineReader, ended, forkhost_flags, reap, secondary_pids,
                    signals_job, stop_and_resume, wait_until)

CC = os.environ.get("CC", "cc")


def _flags() -> list[str]:
    return list(forkhost_flags())


def _build(out: Path, *extra: str) -> str:
    subprocess.run([CC, "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    str(FIXTURES / "proc_type.c"), *extra, *_flags()], check=True)
    return str(out)


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> str:
    return _build(tmp_path_factory.mktemp("proc_type") / "proc_type",
                  "-fPIC", "-pie", "-rdynamic")


@pytest.fixture(autouse=True)
def aslr_on():
    assert Path("/proc/sys/kernel/randomize_va_space").read_text().strip() == "2"


def _env(runtime_dir: str) -> dict:
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir)
    env.pop("FORKHOST_PREFIX", None)
    return env


class Primary:
    """The program as its own primary: started, ready line read, stopped."""

    def __init__(self, argv: list[str], runtime_dir: str, cwd=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_env(runtime_dir),
                                     cwd=cwd)
        self.line = LineReader(self.proc.stdout).readline().decode()
        assert self.line.startswith("primary "), (self.line, self._err())
        self.pid = int(self.line.split()[1])
        assert self.pid == self.proc.pid

    def _err(self) -> str:
        return self.proc.stderr.read().decode() if self.proc.poll() is not None else ""

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        reap(self.proc)
        return code


def _run(argv, runtime_dir, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    return subprocess.run(argv, env=_env(runtime_dir), **kw)


def _template(runtime_dir: str, prefix: str) -> int:
    import forkhost._runtime as rt
    return rt.read_config(rt.paths(prefix, runtime_dir))["template_pid"]


def test_primary_and_secondaries_from_a_shell(exe, runtime_dir):
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=pa"], runtime_dir)
    try:
        template = _template(runtime_dir, "pa")
        # The function pointer the primary stored, called in a secondary.
        r = _run([exe, "--proc-type=secondary", "--file-prefix=pa", "call", "21"],
                 runtime_dir)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"42 same\n", b"")
        # argv after fh_init: the program's name, then its own arguments.
        r = _run([exe, "--file-prefix", "pa", "--", "args", "x", "--y"], runtime_dir)
        assert r.stdout == f"{exe}\nargs\nx\n--y\n".encode(), r.stderr
        r = _run([exe, "--file-prefix=pa", "role"], runtime_dir)
        assert r.stdout == b"secondary pa\n"
        # IPC: the primary (no Python in it) answers a secondary's request.
        r = _run([exe, "--file-prefix=pa", "ping", "forkhost"], runtime_dir)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"tsohkrof\n", b"")
        assert _run([exe, "--file-prefix=pa", "exit", "7"], runtime_dir).returncode == 7
        # The Python tools read a C primary's config record.
        for cmd in (["doctor"], ["ps"], ["verify", "--all"]):
            r = _run([sys.executable, "-m", "forkhost", *cmd, "--prefix", "pa"],
                     runtime_dir, cwd=FIXTURES)
            assert r.returncode == 0, (cmd, r.stdout, r.stderr)
            assert b"Traceback" not in r.stderr
        # No reload for a C primary: one line, exit 1, and it serves on.
        r = _run([sys.executable, "-m", "forkhost", "reload", "--prefix", "pa"],
                 runtime_dir, cwd=FIXTURES)
        assert (r.returncode, r.stdout) == (1, b""), r.stderr
        assert r.stderr.endswith(b"is a C program (fh_init): it has no preloads to "
                                 b"import afresh; restart it to run new code\n"), r.stderr
        assert r.stderr.count(b"\n") == 1
        assert _template(runtime_dir, "pa") == template
        # The secondary was the template's child, and is gone.
        assert ended(template) is False
    finally:
        code = prim.stop()
    assert code == 0
    wait_until(lambda: ended(template), what="the template to end")
    # fh_cleanup removed the prefix's files.
    assert not os.path.exists(os.path.join(runtime_dir, "pa"))


@pytest.mark.parametrize("how", ["fh_init", "forkhost-run"])
def test_exit_codes_signals_and_stdio_as_through_forkhost_run(exe, runtime_dir, how,
                                                              tmp_path):
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=pb"], runtime_dir)
    try:
        def run(*args, **kw):
            argv = ([exe, "--file-prefix=pb", *args] if how == "fh_init"
                    else [RUNNER, "--prefix", "pb", exe, *args])
            return _run(argv, runtime_dir, cwd=tmp_path, **kw)
        assert run("exit", "0").returncode == 0
        assert run("exit", "200").returncode == 200
        r = run("die", str(int(signal.SIGKILL)))
        assert r.returncode == -signal.SIGKILL and r.stderr == b""
        r = run("die", str(int(signal.SIGSEGV)))
        assert r.returncode == -signal.SIGSEGV and r.stderr == b""
        data = os.urandom(200_000)
        r = run("cat", input=data)
        assert r.returncode == 0 and r.stdout == data
        r = run("nonsense")
        assert (r.returncode, r.stderr) == (2, b"unknown command nonsense\n")
        # A shell sees 128+N for a secondary's death by signal N.
        sh = subprocess.run(["bash", "-c", '"$@"; echo "status $?"', "bash",
                             *([exe, "--file-prefix=pb"] if how == "fh_init"
                               else [RUNNER, "--prefix", "pb", exe]),
                             "die", str(int(signal.SIGTERM))],
                            env=_env(runtime_dir), capture_output=True, timeout=60)
        assert sh.stdout == f"status {128 + signal.SIGTERM}\n".encode()
    finally:
        assert prim.stop() == 0


def test_ctrl_z_and_fg_and_forwarded_signals(exe, runtime_dir):
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=pc"], runtime_dir)
    try:
        proc = subprocess.Popen([exe, "--file-prefix=pc", "signals"],
                                stdout=subprocess.PIPE, env=_env(runtime_dir))
        with signals_job(proc, lambda: secondary_pids("pc", runtime_dir)[0]) as (out, sec):
            # ^Z stops the client and the secondary; fg resumes both.
            stop_and_resume(proc, out, sec, lambda: proc.send_signal(signal.SIGTSTP))
    finally:
        assert prim.stop() == 0


def test_eight_at_once_with_auto_make_one_primary(exe, runtime_dir):
    """Eight copies started together with --proc-type=auto: exactly one
    becomes the primary (it keeps running), seven hand themselves over to it
    and exit with their own statuses."""
    procs = [subprocess.Popen([exe, "--file-prefix=pd", "exit", str(10 + i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(runtime_dir)) for i in range(8)]
    try:
        primaries = []
        for i, p in enumerate(procs):
            line = LineReader(p.stdout).readline().decode()
            if line.startswith("primary"):
                primaries.append(p)
            else:
                assert p.wait(60) == 10 + i, p.stderr.read()
                assert line == "", line
        assert len(primaries) == 1
        primaries[0].send_signal(signal.SIGTERM)
        assert primaries[0].wait(30) == 0
    finally:
        reap(*procs)


def test_secondary_without_a_primary_is_125_and_one_line(exe, runtime_dir):
    r = _run([exe, "--proc-type=secondary", "--file-prefix=none", "exit", "0"],
             runtime_dir)
    assert r.returncode == 125
    assert r.stdout == b""
    assert r.stderr.decode() == (f"proc_type: no forkhost primary for prefix 'none' "
                                 f"(looked for {runtime_dir}/none/template.sock)\n")


@pytest.mark.parametrize("args, text", [
    (["--proc-type=both"], "invalid --proc-type 'both': use primary, secondary or auto"),
    (["--pool=-1"], "invalid --pool '-1': use a number from 0 to 1024"),
    (["--arena-size=lots"], "invalid size 'lots': use bytes or a K/M/G suffix"),
    (["--arena-max=lots"], "invalid size 'lots': use bytes or a K/M/G suffix"),
    (["--arena-max=0"], "invalid size '0': use bytes or a K/M/G suffix"),
    (["--arena-size=64M", "--arena-max=32M", "--"],
     "cannot create a 67108864-byte arena: Invalid argument (--arena-max must be "
     "at least --arena-size)"),
    (["--file-prefix=../x"], "invalid prefix '../x' (from --file-prefix): use 1 to 64 "
                             "of A-Z a-z 0-9 . _ -, not '.' or '..'"),
    (["-l", "0-3", "--"], "unrecognized option '-l' (forkhost's options come first and end "
                    "at '--': --proc-type, --file-prefix, --runtime-dir, "
                    "--arena-size, --arena-max, --huge-pages, --pool, --on-primary-death)"),
    (["--proc-typ=auto"], "unrecognized option '--proc-typ=auto' (forkhost's options "
                          "come first and end at '--': --proc-type, --file-prefix, "
                          "--runtime-dir, --arena-size, --arena-max, --huge-pages, --pool, "
                          "--on-primary-death)"),
    (["--proc-type"], "option '--proc-type' requires a value"),
    (["--on-primary-death=maybe"], "invalid --on-primary-death 'maybe': use survive "
                                   "or stop"),
])
def test_bad_options_are_125_and_one_line(exe, runtime_dir, args, text):
    r = _run([exe, *args], runtime_dir)
    assert (r.returncode, r.stdout) == (125, b"")
    assert r.stderr.decode() == f"proc_type: {text}\n"


def test_a_second_primary_for_the_prefix_is_refused(exe, runtime_dir):
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=pe"], runtime_dir)
    try:
        r = _run([exe, "--proc-type=primary", "--file-prefix=pe"], runtime_dir)
        assert r.returncode == 125
        assert r.stderr.decode() == (f"proc_type: prefix 'pe' is in use by the primary "
                                     f"with pid {prim.pid} ({runtime_dir}/pe)\n")
        # The first one still serves.
        assert _run([exe, "--file-prefix=pe", "exit", "4"], runtime_dir).returncode == 4
    finally:
        assert prim.stop() == 0


@pytest.mark.parametrize("build, fix", [
    (["-no-pie", "-fno-pie"], "is a non-PIE executable; build with -fPIE -pie"),
], ids=["non-pie"])
def test_a_program_that_cannot_be_a_secondary_is_told_why_126(runtime_dir, tmp_path,
                                                             exe, build, fix):
    bad = _build(tmp_path / "bad", *build)
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=pf"], runtime_dir)
    try:
        r = _run([bad, "--file-prefix=pf", "exit", "0"], runtime_dir)
        assert (r.returncode, r.stdout) == (126, b"")
        err = r.stderr.decode()
        assert err.startswith(f"bad: cannot run as a forkhost secondary: {bad} "), err
        assert fix in err and err.count("\n") == 1
    finally:
        assert prim.stop() == 0


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="main is read from glibc's _start on x86_64 only")
@pytest.mark.parametrize("build", [["-fPIC", "-pie", "-s"], ["-fPIE", "-pie", "-s"]],
                         ids=["fpic-stripped", "fpie-stripped"])
def test_a_stripped_program_without_exported_main_runs_as_a_secondary(
        runtime_dir, tmp_path, build):
    """main is what its _start passes to __libc_start_main."""
    prog = _build(tmp_path / "stripped", *build)
    prim = Primary([prog, "--proc-type=primary", "--file-prefix=ps"], runtime_dir)
    try:
        r = _run([prog, "--file-prefix=ps", "exit", "4"], runtime_dir)
        assert r.returncode == 4, r.stderr
    finally:
        assert prim.stop() == 0


def test_a_primary_killed_leaves_nothing_running(exe, runtime_dir):
    """SIGKILL of a primary with --on-primary-death=stop: its template (and
    the secondaries) end with it; the next primary of the prefix takes over
    its leftovers."""
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=pg",
                    "--on-primary-death=stop"], runtime_dir)
    template = _template(runtime_dir, "pg")
    assert prim.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: ended(template), what="the template to end")
    again = Primary([exe, "--file-prefix=pg"], runtime_dir)
    assert again.stop() == 0


def test_a_killed_primarys_orphan_serves_and_a_c_primary_does_not_adopt(exe,
                                                                        runtime_dir):
    """By default the template outlives its primary: the program started
    again serves as a secondary of the orphan (auto), is refused as a
    primary (a C primary does not adopt), and forkhost stop ends it."""
    prim = Primary([exe, "--proc-type=primary", "--file-prefix=po"], runtime_dir)
    template = _template(runtime_dir, "po")
    assert prim.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: forkhost.info("po", runtime_dir)["orphaned"],
               what="the template to hear of its primary's death")
    refused = (f"proc_type: prefix 'po' has an orphaned template (its primary, pid "
               f"{prim.pid}, died): `forkhost primary` adopts it, `forkhost stop` "
               f"ends it\n").encode()
    r = _run([exe, "--proc-type=primary", "--file-prefix=po"], runtime_dir)
    assert (r.returncode, r.stdout, r.stderr) == (125, b"", refused)
    assert _run([exe, "--file-prefix=po", "exit", "4"], runtime_dir).returncode == 4
    # Still the dead primary's pid: the runs before left the lock as they found it.
    r = _run([exe, "--proc-type=primary", "--file-prefix=po"], runtime_dir)
    assert (r.returncode, r.stdout, r.stderr) == (125, b"", refused)
    r = subprocess.run([sys.executable, "-m", "forkhost", "stop", "--prefix", "po"],
                       env=_env(runtime_dir), capture_output=True, timeout=60,
                       cwd=str(FIXTURES))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: ended(template), what="the template to end")
    assert not os.path.exists(os.path.join(runtime_dir, "po"))


# -- Python: forkhost.init() ---------------------------------------------------

APP = FIXTURES / "init_app.py"


def test_python_init_both_roles(runtime_dir, tmp_path):
    env = _env(runtime_dir)
    prim = subprocess.Popen([sys.executable, str(APP), "--file-prefix=py"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tmp_path)
    try:
        line = LineReader(prim.stdout).readline().decode()
        assert line == f"primary {prim.pid}\n", (line, prim.poll())
        for args, code, out in [(["exit", "5"], 5, "secondary ['exit', '5']\n"),
                                (["--", "--x", "y"], 0, "secondary ['--x', 'y']\n")]:
            r = subprocess.run([sys.executable, str(APP), "--file-prefix=py", *args],
                               env=env, capture_output=True, timeout=60, cwd=tmp_path)
            assert (r.returncode, r.stdout.decode(), r.stderr) == (code, out, b"")
        # python -m: the module is handed over by name.
        r = subprocess.run([sys.executable, "-m", "init_app", "--file-prefix=py",
                            "exit", "6"], env=dict(env, PYTHONPATH=str(FIXTURES)),
                           capture_output=True, timeout=60, cwd=tmp_path)
        assert (r.returncode, r.stdout) == (6, b"secondary ['exit', '6']\n"), r.stderr
        r = subprocess.run([sys.executable, str(APP), "--proc-type=primary",
                            "--file-prefix=py"], env=env, capture_output=True,
                           timeout=60, cwd=tmp_path)
        assert r.returncode == 125
        assert r.stderr.decode() == (f"init_app.py: prefix 'py' is in use by the "
                                     f"primary with pid {prim.pid} ({runtime_dir}/py)\n")
        prim.send_signal(signal.SIGTERM)
        out, err = prim.communicate(timeout=30)
        assert prim.returncode == 0, err
    finally:
        reap(prim)
    assert not os.path.exists(os.path.join(runtime_dir, "py"))


def test_python_init_bad_option_keeps_what_was_printed(runtime_dir, tmp_path):
    # C's exit(125) in fh_init_parse skips Python's own flush at exit: what
    # the program printed before init() must still reach a pipe.
    code = ("import forkhost; print('before', end=''); "
            "forkhost.init(['app', '--pool=bad'])")
    env = dict(_env(runtime_dir))
    env.pop("PYTHONUNBUFFERED", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (125, b"before"), r.stderr
    assert r.stderr == b"app: invalid --pool 'bad': use a number from 0 to 1024\n"


def test_a_primary_from_a_path_that_is_not_utf8_writes_a_readable_record(exe, runtime_dir,
                                                                         tmp_path):
    """config.json names the program's path as Python's json would: an
    undecodable byte as its surrogate, so `forkhost ps` still reads it."""
    import shutil
    where = os.path.join(os.fsencode(tmp_path), b"dir\xff")
    os.mkdir(where)
    prog = os.path.join(where, b"proc_type")
    shutil.copy(exe, prog)
    prim = Primary([os.fsdecode(prog), "--proc-type=primary", "--file-prefix=pu"],
                   runtime_dir)
    try:
        import forkhost._runtime as rt
        cfg = rt.read_config(rt.paths("pu", runtime_dir))
        assert os.fsencode(cfg["program"]["executable"]) == os.path.realpath(prog)
        r = _run([sys.executable, "-m", "forkhost", "ps", "--prefix", "pu"], runtime_dir,
                 cwd=FIXTURES)
        assert r.returncode == 0, r.stderr
    finally:
        assert prim.stop() == 0
