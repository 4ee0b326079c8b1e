"""forkhost.Popen, forkhost.run and forkhost.Executor against subprocess and
concurrent.futures.ProcessPoolExecutor: each case runs the same code both
ways (`python -m popenfix CASE` as a child, `["-m", "popenfix", CASE]` as a
secondary) and compares what came back: output, status, exceptions, and
that the process is gone.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys

import pytest

from fhtest import FIXTURES, ended, wait_until

import forkhost

CASES_DIRECT = [sys.executable, "-m", "popenfix"]
CASES_FH = ["-m", "popenfix"]


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


def env_of(primary, **extra):
    return dict(primary.env, PYTHONPATH=str(FIXTURES), **extra)


class Both:
    """The subprocess and forkhost callables for one primary, with the
    same env and cwd by default."""

    def __init__(self, primary):
        self.env = env_of(primary)
        self.fh_kw = dict(prefix=primary.prefix, runtime_dir=primary.runtime_dir)

    def _kw(self, kw, fh):
        kw = dict(kw)
        kw.setdefault("env", self.env)
        kw.setdefault("cwd", FIXTURES)
        if fh:
            kw.update(self.fh_kw)
        return kw

    def run(self, case, *args, **kw):
        """(subprocess.run's result, forkhost.run's), or their exceptions."""
        out = []
        for fh in (False, True):
            argv = [*(CASES_FH if fh else CASES_DIRECT), case, *args]
            fn = forkhost.run if fh else subprocess.run
            try:
                out.append(fn(argv, **self._kw(kw, fh)))
            except (subprocess.SubprocessError, UnicodeError) as err:
                out.append(err)
        return out

    def popen(self, fh, case, *args, **kw):
        argv = [*(CASES_FH if fh else CASES_DIRECT), case, *args]
        return (forkhost.Popen if fh else subprocess.Popen)(argv, **self._kw(kw, fh))


@pytest.fixture
def both(primary):
    return Both(primary)


def same_result(direct, fh):
    assert type(fh) is type(direct)
    assert (fh.returncode, fh.stdout, fh.stderr) == \
        (direct.returncode, direct.stdout, direct.stderr)


def test_capture_output_input_and_status(both):
    direct, fh = both.run("upper", "3", input=b"some input\n", capture_output=True)
    assert direct.returncode == 3 and direct.stdout == b"SOME INPUT\n"
    same_result(direct, fh)
    assert fh.args == ["-m", "popenfix", "upper", "3"]


def test_module_function_entry(both):
    """The entry `popenfix:main` is the same code as `python -m popenfix`."""
    direct = subprocess.run(CASES_DIRECT + ["upper", "5"], input=b"x", capture_output=True,
                            env=both.env, cwd=FIXTURES)
    fh = forkhost.run(["popenfix:main", "upper", "5"], input=b"x", capture_output=True,
                      env=both.env, cwd=FIXTURES, **both.fh_kw)
    same_result(direct, fh)


def test_pipes_both_ways_with_large_data(both):
    """Megabytes into stdin while the program writes megabytes to stdout
    and stderr: communicate() must read both while it writes."""
    data = os.urandom(3 << 20)
    direct, fh = both.run("stream", input=data, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)
    assert direct.stdout.startswith(data) and len(direct.stderr) == len(data)
    same_result(direct, fh)


def test_stderr_to_stdout_keeps_the_order(both):
    direct, fh = both.run("interleave", "200", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    assert direct.stderr is None and b"err 1\nout 2\n" in direct.stdout
    same_result(direct, fh)


@pytest.mark.parametrize("mode,arg", [
    (dict(text=True), "good"), (dict(universal_newlines=True), "good"),
    (dict(encoding="utf-8", errors="replace"), "bad"), (dict(encoding="latin-1"), "bad"),
    (dict(errors="surrogateescape"), "bad")])
def test_text_mode(both, mode, arg):
    direct, fh = both.run("text", arg, input="ïn\r\n", capture_output=True, **mode)
    assert isinstance(direct.stdout, str)
    same_result(direct, fh)


def test_text_mode_undecodable_output(both):
    direct, fh = both.run("text", "bad", capture_output=True, text=True, encoding="utf-8")
    assert type(direct) is type(fh) is UnicodeDecodeError
    assert str(direct) == str(fh)


def test_devnull_fds_and_file_objects(both, tmp_path):
    src = tmp_path / "in"
    src.write_bytes(b"from a file\n")
    got = []
    for fh in (False, True):
        out = tmp_path / f"out{fh}"
        with open(src, "rb") as fin, open(out, "wb") as fout:
            r = both.run("upper", stdin=fin.fileno(), stdout=fout,
                         stderr=subprocess.DEVNULL)[fh]
        assert r.stdout is None and r.stderr is None
        got.append((r.returncode, out.read_bytes()))
    assert got[0] == got[1] == (0, b"FROM A FILE\n")
    direct, fh = both.run("upper", stdin=subprocess.DEVNULL, capture_output=True)
    same_result(direct, fh)


def test_check_raises_called_process_error(both):
    direct, fh = both.run("upper", "7", input=b"in", capture_output=True, check=True)
    assert isinstance(direct, subprocess.CalledProcessError)
    assert type(fh) is subprocess.CalledProcessError
    assert (fh.returncode, fh.output, fh.stderr) == (7, b"IN", direct.stderr)
    assert fh.cmd == ["-m", "popenfix", "upper", "7"]
    ok_direct, ok_fh = both.run("upper", "0", input=b"", capture_output=True, check=True)
    same_result(ok_direct, ok_fh)


def test_call_check_call_check_output(both):
    kw = dict(env=both.env, cwd=FIXTURES, stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fkw = dict(kw, **both.fh_kw)
    assert subprocess.call(CASES_DIRECT + ["upper", "4"], **kw) == \
        forkhost.call(CASES_FH + ["upper", "4"], **fkw) == 4
    for mod, argv, k in ((subprocess, CASES_DIRECT, kw), (forkhost, CASES_FH, fkw)):
        with pytest.raises(subprocess.CalledProcessError) as err:
            mod.check_call(argv + ["upper", "4"], **k)
        assert err.value.returncode == 4
        assert mod.check_call(argv + ["upper"], **k) == 0
    k = dict(env=both.env, cwd=FIXTURES, stderr=subprocess.DEVNULL)
    assert subprocess.check_output(CASES_DIRECT + ["upper"], input=b"abc", **k) == \
        forkhost.check_output(CASES_FH + ["upper"], input=b"abc", **k, **both.fh_kw) == b"ABC"


@pytest.mark.heavy
def test_timeout_raises_timeout_expired_and_the_program_is_gone(both):
    """subprocess.run kills the child and waits for it; so does forkhost.run."""
    errs = both.run("pid_then_wait", capture_output=True, timeout=1.5)
    for err in errs:
        assert type(err) is subprocess.TimeoutExpired
        assert err.timeout == 1.5
        pid, ready = err.stdout.decode().splitlines()
        assert ready == "ready"
        assert ended(int(pid))
    assert errs[1].cmd == CASES_FH + ["pid_then_wait"]


@pytest.mark.parametrize("how", ["send_signal", "terminate", "kill"])
def test_signals_and_negative_returncode(both, how):
    got = []
    for fh in (False, True):
        with both.popen(fh, "pid_then_wait", stdout=subprocess.PIPE) as p:
            pid = int(p.stdout.readline())
            assert pid == p.pid and p.stdout.readline() == b"ready\n"
            assert p.poll() is None and p.returncode is None
            with pytest.raises(subprocess.TimeoutExpired):
                p.wait(timeout=0.2)
            assert p.returncode is None
            if how == "send_signal":
                p.send_signal(signal.SIGUSR1)
            else:
                getattr(p, how)()
            got.append(p.wait())
            assert ended(pid)
            p.send_signal(signal.SIGTERM)         # ended: nothing to signal
        assert p.stdout.closed
    want = {"send_signal": -signal.SIGUSR1, "terminate": -signal.SIGTERM,
            "kill": -signal.SIGKILL}[how]
    assert got == [want, want]


def test_death_by_own_signal(both):
    direct, fh = both.run("die_by", str(int(signal.SIGUSR2)), capture_output=True)
    assert direct.returncode == -signal.SIGUSR2
    same_result(direct, fh)


def test_poll_until_it_ends(both):
    for fh in (False, True):
        with both.popen(fh, "upper", "9", stdin=subprocess.PIPE) as p:
            p.stdin.close()
            assert wait_until(lambda: p.poll() is not None, what="the exit") is True
            assert p.returncode == 9 and p.wait(timeout=0) == 9


def test_cwd_and_env(both, tmp_path):
    env = dict(both.env, FH_POPEN_VAR="hello wörld")
    direct, fh = both.run("where", "FH_POPEN_VAR", "FH_UNSET", capture_output=True,
                          cwd=tmp_path, env=env)
    assert direct.stdout.decode().splitlines() == [str(tmp_path), "FH_POPEN_VAR hello wörld",
                                                   "FH_UNSET None"]
    same_result(direct, fh)
    bad = tmp_path / "missing"
    with pytest.raises(FileNotFoundError):
        subprocess.run(CASES_DIRECT + ["where"], cwd=bad)
    with pytest.raises(FileNotFoundError):
        forkhost.run(CASES_FH + ["where"], cwd=bad, **both.fh_kw)


def test_context_manager_closes_pipes_and_waits(both):
    got = []
    for fh in (False, True):
        with both.popen(fh, "upper", "2", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE) as p:
            p.stdin.write(b"abc")
            p.stdin.close()
            out = p.stdout.read()
        assert p.stdout.closed and p.stderr.closed and p.stdin.closed
        got.append((p.returncode, out))
    assert got[0] == got[1] == (2, b"ABC")


def test_communicate_with_timeout_then_again(both):
    """communicate(timeout) raises TimeoutExpired and may be called again."""
    got = []
    for fh in (False, True):
        with both.popen(fh, "pid_then_wait", stdout=subprocess.PIPE) as p:
            with pytest.raises(subprocess.TimeoutExpired):
                p.communicate(timeout=0.5)
            p.kill()
            out, err = p.communicate()
            got.append((p.returncode, out.split(b"\n", 1)[1], err))
    assert got[0] == got[1] == (-signal.SIGKILL, b"ready\n", None)


def test_refusals_and_bad_arguments(both):
    with pytest.raises(forkhost.RefusedError) as err:
        forkhost.run(["no_such_script.py"], cwd=FIXTURES, capture_output=True,
                     **both.fh_kw)
    assert err.value.exit_code == forkhost.EXIT_NOT_FOUND
    with pytest.raises(ValueError, match="pass_fds"):
        forkhost.Popen(CASES_FH + ["upper"], pass_fds=[7], **both.fh_kw)
    with pytest.raises(ValueError, match="empty"):
        forkhost.Popen([], **both.fh_kw)
    with pytest.raises(ValueError, match="forkhost.Popen makes pipes"):
        forkhost.launch("popenfix:main", ["upper"], stdout=subprocess.PIPE, **both.fh_kw)
    with pytest.raises(forkhost.NoPrimaryError):
        forkhost.run(CASES_FH + ["upper"], prefix="nobody-here",
                     runtime_dir=both.fh_kw["runtime_dir"], stdin=subprocess.PIPE)


def test_fds_land_at_3(both):
    """subprocess's pass_fds keep their numbers; forkhost's fds= land at 3,
    4, ...: the program writes to the number it is given."""
    got = []
    for fh in (False, True):
        r, w = os.pipe()
        try:
            kw = dict(fds=[w]) if fh else dict(pass_fds=[w])
            with both.popen(fh, "write_fd", "3" if fh else str(w), **kw) as p:
                pass
            os.close(w)
            got.append((p.returncode, os.read(r, 100)))
        finally:
            os.close(r)
    assert got[0] == got[1] == (0, b"to the fd\n")


def test_launch_stderr_to_stdout_and_wait_timeout(both, tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as f:
        with forkhost.launch("popenfix:main", ["interleave", "4"], stdout=f,
                             stderr=subprocess.STDOUT, env=both.env, cwd=FIXTURES,
                             **both.fh_kw) as sec:
            pass
    assert sec.returncode == 0
    assert out.read_bytes() == b"out 0\nerr 1\nout 2\nerr 3\n"
    with forkhost.launch("popenfix:main", ["pid_then_wait"], stdout=subprocess.DEVNULL,
                         env=both.env, cwd=FIXTURES, **both.fh_kw) as sec:
        with pytest.raises(subprocess.TimeoutExpired):
            sec.wait(0)
        sec.kill()
    assert sec.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["primary", "init"])
def test_defaults_inside_a_primary_program(runtime_dir, mode):
    """A program that started its own primary (forkhost.Primary, or
    forkhost.init()) launches there by default, whatever $FORKHOST_PREFIX
    and $FORKHOST_RUNTIME_DIR say; once stopped, the environment counts."""
    env = dict(os.environ, PYTHONPATH=str(FIXTURES))
    r = subprocess.run([sys.executable, "popen_inner.py", mode, runtime_dir], env=env,
                       cwd=FIXTURES, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    got = json.loads(r.stdout.decode().splitlines()[-1])
    assert got["run"] == [0, ["FORKHOST_PREFIX nobody"], ""]
    assert got["launch"] == -signal.SIGTERM
    assert got["info"] is True and got["executor"] is True
    if mode == "primary":
        assert "no forkhost primary for prefix 'nobody'" in got["after_stop"]
        assert os.path.join(runtime_dir, "other") in got["after_stop"]


@pytest.mark.heavy
def test_executor_matches_process_pool_executor(primary):
    """The same work through ProcessPoolExecutor (fork, forkserver) and
    forkhost.Executor, each in its own program (their helper processes,
    the resource tracker and the fork server, live as long as it)."""
    got = {}
    for kind in ("fork", "forkserver", "forkhost"):
        r = subprocess.run([sys.executable, "popen_executor.py", kind],
                           env=env_of(primary), cwd=FIXTURES, capture_output=True,
                           timeout=300)
        assert r.returncode == 0, f"{kind}: {r.stderr.decode()}"
        got[kind] = json.loads(r.stdout)
    assert got["forkhost"]["parent"] is True      # workers are the template's
    assert got["forkhost"] == got["forkserver"]
    fork = dict(got["forkhost"])
    del fork["tasks_per_child"]                    # refused with fork
    assert fork == got["fork"]
    assert got["forkhost"]["exception"] == ["ValueError", ["bad value 7", 7]]
    assert got["forkhost"]["tasks_per_child"] == 3


_POLL_WHILE_JOINED = r"""
import json, threading, time
import forkhost.futures, popenfix
ctx = forkhost.futures.Context()
p = ctx.Process(target=popenfix.nap, args=(3,))
p.start()
t = threading.Thread(target=p.join)
t.start()
time.sleep(0.5)                      # the join is in its blocking wait now
start = time.monotonic()
alive = p.is_alive()                 # poll(WNOHANG), as multiprocessing's _cleanup
took = time.monotonic() - start
t.join()
print(json.dumps([alive, took, p.exitcode]))
"""


@pytest.mark.heavy
def test_executor_poll_does_not_wait_for_a_join_in_another_thread(primary):
    """A worker's poll(WNOHANG) (is_alive(), multiprocessing's _cleanup()
    at every start()) answers at once while another thread joins it, as
    with waitpid(WNOHANG); it waited for the worker to end."""
    r = subprocess.run([sys.executable, "-c", _POLL_WHILE_JOINED], env=env_of(primary),
                       cwd=FIXTURES, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    alive, took, exitcode = json.loads(r.stdout)
    assert alive is True and took < 1.0, (alive, took)
    assert exitcode == 0


def test_positional_arguments_are_subprocess_popens(both):
    """Popen(args, bufsize, executable, stdin, stdout, stderr) as with
    subprocess: the third positional is executable (which forkhost
    refuses unless None), not stdin."""
    out = []
    for fh in (False, True):
        argv = [*(CASES_FH if fh else CASES_DIRECT), "upper"]
        cls = forkhost.Popen if fh else subprocess.Popen
        with cls(argv, -1, None, subprocess.PIPE, subprocess.PIPE,
                 **both._kw({}, fh)) as p:
            out.append((p.communicate(b"abc\n", timeout=60)[0], p.returncode))
    assert out[0] == (b"ABC\n", 0)
    assert out[1] == out[0]
    with pytest.raises(TypeError, match="executable"):
        forkhost.Popen(CASES_FH + ["upper"], executable="python3", **both.fh_kw)
