"""The launch path end to end: forkhost-run -> template -> secondary.

Each test runs a real `forkhost primary` and real forkhost-run processes;
the secondaries report what they saw, and the tests compare it with what a
normal child process would have had.
"""

from __future__ import annotations

import json
import os
import pty
import resource
import py_compile
import select
import signal
import subprocess
import sys
import tempfile
import zipapp
import zipfile

import pytest

from fhtest import FIXTURES, RUNNER, PrimaryProc, forkhost_flags


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


@pytest.fixture(scope="session")
def native(tmp_path_factory):
    """The C fixture built as a shared object, a PIE and a non-PIE executable."""
    d = tmp_path_factory.mktemp("native")
    flags = forkhost_flags()
    src = str(FIXTURES / "native_entry.c")
    out = {"so": d / "entry.so", "pie": d / "entry_pie", "nopie": d / "entry_nopie",
           "stripped": d / "entry_stripped"}
    subprocess.run(["cc", "-shared", "-fPIC", "-o", out["so"], src, *flags], check=True)
    subprocess.run(["cc", "-fPIE", "-pie", "-rdynamic", "-o", out["pie"], src, *flags],
                   check=True)
    subprocess.run(["cc", "-no-pie", "-o", out["nopie"], src, *flags], check=True)
    subprocess.run(["cc", "-fPIE", "-pie", "-s", "-o", out["stripped"], src, *flags],
                   check=True)
    return {k: str(v) for k, v in out.items()}


def report(primary, *args, **kw):
    r = primary.run("fhfix:report", *args, cwd=kw.pop("cwd", FIXTURES), **kw)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_argv_env_cwd_umask_round_trip(primary, tmp_path):
    args = [b"plain", b"", b"with space", b"\xff\xfe not utf-8", b"-m", b"--prefix"]
    env = dict(primary.env)
    env_b = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    env_b[b"FH_ODD"] = b"\xc3\x28 bytes"
    env_b[b"PYTHONPATH"] = str(FIXTURES).encode()
    old = os.umask(0o027)
    try:
        r = subprocess.run([RUNNER.encode(), b"fhfix:report", *args], env=env_b,
                           cwd=tmp_path, capture_output=True, timeout=60)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr.decode()
    got = json.loads(r.stdout)
    assert [bytes.fromhex(a) for a in got["argv"]] == [b"fhfix:report", *args]
    env_got = {bytes.fromhex(k): bytes.fromhex(v) for k, v in got["env"].items()}
    assert env_got == env_b
    assert got["cwd"] == str(tmp_path)
    assert got["umask"] == 0o027
    assert got["pid"] != primary.template_pid


def test_secondary_has_only_its_fds_and_default_signals(primary):
    got = report(primary)
    # 0, 1, 2 and the descriptor os.listdir itself opened, at 3 as in any
    # fresh process; and forkhost's exit-report channel plus, in a pool
    # member, the client's connection, parked at >= 1023 and close-on-exec
    # (docs/architecture.md).
    low = [fd for fd in got["fds"] if fd < 1023]
    high = [fd for fd in got["fds"] if fd >= 1023]
    assert low == [0, 1, 2, 3]
    assert len(high) in (1, 2) and all(got["cloexec"][str(fd)] for fd in high)
    assert got["signals"]["SigBlk"] == 0
    # What a fresh `python` has: SIGPIPE and SIGXFSZ ignored, nothing else.
    assert got["signals"]["SigIgn"] == (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    assert "default_int_handler" in got["sigint_handler"]
    fresh = subprocess.run(
        [sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
         "import fhfix; print(json.dumps(fhfix._py_handlers()))", str(FIXTURES)],
        capture_output=True, check=True, timeout=60)
    assert got["py_handlers"] == json.loads(fresh.stdout)
    assert got["threads"] == 1
    assert got["pgid"] == got["pid"]


def test_title_and_comm_show_the_program(primary):
    got = report(primary, "alpha", "beta")
    assert got["comm"] == "fhfix:report"[:15]
    assert bytes.fromhex(got["cmdline"]).replace(b"\0", b" ").strip().startswith(
        b"fhfix:report alpha beta")


def test_arena_is_at_the_primarys_address(primary):
    r = primary.run("fhfix:arena", cwd=FIXTURES)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout, 16) == primary.config["arena"]["base"]


def test_stdio_through_pipes(primary):
    r = primary.run("fhfix:cat", cwd=FIXTURES, input=b"x" * 200000)
    assert r.returncode == 0
    assert r.stdout == b"x" * 200000


def test_stdio_through_files(primary, tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as o, open(err, "wb") as e:
        r = primary.run("fhfix:echo", "hello", "files", cwd=FIXTURES, stdout=o, stderr=e,
                        capture_output=False)
    assert r.returncode == 0
    assert out.read_bytes() == b"hello files\n"
    assert err.read_bytes() == b"to stderr\n"


@pytest.mark.parametrize("setting", [
    {}, {"PYTHONUNBUFFERED": "1"}, {"PYTHONUNBUFFERED": ""},
    {"PYTHONIOENCODING": "latin-1:replace"}, {"PYTHONIOENCODING": ":replace"},
])
@pytest.mark.parametrize("where", ["pipes", "files"])
def test_stdio_objects_are_the_ones_python_makes(primary, tmp_path, setting, where):
    """sys.stdin/stdout/stderr of a secondary are what `python` itself
    would have made over the same fds and environment: names, modes,
    buffering, encodings, and no newline translation on stdin."""
    env = {k: v for k, v in primary.env.items()
           if k not in ("PYTHONUNBUFFERED", "PYTHONIOENCODING")}
    env.update(setting)
    data = b"one\r\ntwo\rthree\n\xe9"

    def state(argv):
        if where == "pipes":
            r = subprocess.run(argv, input=data, capture_output=True, env=env,
                               cwd=FIXTURES, timeout=60)
            out = r.stdout
        else:
            src, dst = tmp_path / "in", tmp_path / "out"
            src.write_bytes(data)
            with open(src, "rb") as i, open(dst, "wb") as o:
                r = subprocess.run(argv, stdin=i, stdout=o, stderr=subprocess.PIPE,
                                   env=env, cwd=FIXTURES, timeout=60)
            out = dst.read_bytes()
        assert r.returncode == 0, r.stderr.decode()
        return json.loads(out)

    python = state([sys.executable, "-c", "import fhfix, sys; fhfix.stdio_state(sys.argv)"])
    secondary = state([RUNNER, "fhfix:stdio_state"])
    assert secondary == python
    assert python["streams"][0]["name"] == "<stdin>"


def test_unknown_stdio_encoding_fails_as_python_does(primary):
    r = primary.run("fhfix:echo", "x", cwd=FIXTURES,
                    extra_env={"PYTHONIOENCODING": "no-such-codec"})
    assert r.returncode == 1
    assert r.stdout == b""
    assert b"LookupError: unknown encoding: no-such-codec" in r.stderr


def test_stdio_closed_stdin_stays_closed(primary):
    r = primary.run("fhfix:report", cwd=FIXTURES, stdin=None,
                    pass_fds=(), close_fds=True,
                    preexec_fn=lambda: os.close(0))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["std_open"] == [False, True, True]


def test_stdio_through_a_pty(primary):
    master, slave = pty.openpty()
    try:
        proc = primary.popen("fhfix:report", cwd=FIXTURES, stdin=slave, stdout=slave,
                             stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        data = b""
        while True:
            r, _, _ = select.select([master], [], [], 30)
            assert r, "no output from the secondary on the pty"
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break   # EIO: every writer closed the pty
            if not chunk:
                break
            data += chunk
            if data.rstrip().endswith(b"}"):
                break
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
        got = json.loads(data.replace(b"\r\n", b"\n"))
        assert got["isatty"] == [True, True, False]
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_extra_fds_land_at_3_and_up(primary):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        r = primary.run("--fd", w1, "--fd", w2, "fhfix:write_fds", cwd=FIXTURES,
                        pass_fds=(w1, w2))
        os.close(w1)
        os.close(w2)
        w1 = w2 = -1
        assert r.returncode == 2, r.stderr
        assert os.read(r1, 100) == b"fd 3\n"
        assert os.read(r2, 100) == b"fd 4\n"
    finally:
        for fd in (r1, r2, w1, w2):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("code", [0, 1, 255])
def test_exit_codes_python(primary, code):
    assert primary.run("fhfix:exit_with", code, cwd=FIXTURES).returncode == code
    assert primary.run("script.py", code, cwd=FIXTURES).returncode == code


@pytest.mark.parametrize("code", [0, 1, 255])
def test_exit_codes_native(primary, native, code):
    assert primary.run(native["so"], "exit", code).returncode == code
    assert primary.run(native["pie"], "exit", code).returncode == code


def test_sys_exit_and_exceptions(primary):
    r = primary.run("fhfix:sys_exit", "9", cwd=FIXTURES)
    assert r.returncode == 9
    r = primary.run("fhfix:sys_exit", "a message", cwd=FIXTURES)
    assert r.returncode == 1 and r.stderr == b"a message\n"
    r = primary.run("fhfix:raise_error", cwd=FIXTURES)
    assert r.returncode == 1
    assert b"Traceback" in r.stderr and b"ValueError: boom from the entry" in r.stderr
    assert b"forkhost/" not in r.stderr      # forkhost's own frames are hidden


def test_keyboard_interrupt_dies_by_sigint(primary):
    r = primary.run("fhfix:keyboard_interrupt", cwd=FIXTURES)
    assert r.returncode == -signal.SIGINT
    assert b"KeyboardInterrupt" in r.stderr


def test_entry_forms(primary, native, tmp_path):
    r = primary.run("script.py", "a", cwd=FIXTURES)
    got = json.loads(r.stdout)
    assert got["name"] == "__main__" and got["path0"] == str(FIXTURES)
    assert [bytes.fromhex(a) for a in got["argv"]] == [b"script.py", b"a"]
    r = primary.run("-m", "pkgfix.mod", "x", "seven", cwd=FIXTURES)
    assert r.returncode == 7 and r.stdout == b"pkgfix.mod ['x', 'seven'] __main__\n"
    r = primary.run("-m", "pkgfix", "y", cwd=FIXTURES)
    assert r.returncode == 0 and r.stdout == b"pkgfix main ['y'] __main__\n"
    r = primary.run(native["so"], "one", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert b"argv[0]=" + native["so"].encode() in r.stdout
    assert f"cwd={tmp_path}".encode() in r.stdout
    assert f"arena=0x{primary.config['arena']['base']:x}".encode() in r.stdout
    r = primary.run(native["so"] + ":other")
    assert r.returncode == 42 and r.stdout == b"other\n"
    r = primary.run(native["pie"], "two")
    assert r.returncode == 0, r.stderr
    assert b"argv[1]=two" in r.stdout
    # a relative path to a shared object, from the client's cwd
    r = primary.run("./entry.so:other", cwd=os.path.dirname(native["so"]))
    assert r.returncode == 42, r.stderr


def test_module_from_client_pythonpath(primary, tmp_path):
    (tmp_path / "only_here.py").write_text("def main(argv):\n    print('from pp')\n")
    r = primary.run("only_here:main", extra_env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from pp\n"


# What a script sees of how it was started, then a traceback from another
# cwd: its file names (and whether their source lines can still be read)
# are the code's own, which python makes absolute.
_PROBE = """\
import json, os, sys
print(json.dumps({
    "name": __name__, "file": __file__, "argv": sys.argv, "path0": sys.path[0],
    "loader": type(__loader__).__name__, "spec": __spec__ and __spec__.name,
    "package": __package__, "cached": __cached__,
    "builtins": type(__builtins__).__name__}), flush=True)
os.chdir("/")
raise ValueError("from the probe")
"""


@pytest.fixture
def script_forms(tmp_path):
    """A script in every form ``python PATH`` runs, as (cwd, PATH) pairs."""
    app, lib = tmp_path / "app", tmp_path / "lib"
    app.mkdir()
    lib.mkdir()
    (lib / "real.py").write_text(_PROBE)
    (app / "probe.py").write_text(_PROBE)
    (app / "linked.py").symlink_to(lib / "real.py")       # sys.path[0]: lib
    (app / "libdir").symlink_to(lib)
    (app / "dirapp").mkdir()
    (app / "dirapp" / "__main__.py").write_text(_PROBE)
    (app / "empty").mkdir()
    with zipfile.ZipFile(app / "app.zip", "w") as z:
        z.writestr("__main__.py", _PROBE)
    zipapp.create_archive(app / "dirapp", app / "app.pyz", interpreter="/usr/bin/env python3")
    py_compile.compile(str(app / "probe.py"), cfile=str(app / "probe.pyc"), doraise=True)
    (app / "bad.pyc").write_bytes(b"\0" * 32)
    # Source with a zip file's end record in it: zipimport refuses it.
    (app / "zipish.py").write_bytes(_PROBE.encode() + b"# PK\x05\x06 in a comment\n")
    return app


SCRIPT_FORMS = ["probe.py", "./probe.py", "../app/probe.py", "{app}/probe.py",
                "linked.py", "libdir/real.py", "dirapp", "./dirapp", "app.zip",
                "app.pyz", "probe.pyc", "zipish.py"]


@pytest.mark.parametrize("form", SCRIPT_FORMS)
def test_scripts_run_as_python_runs_them(primary, script_forms, form):
    """Every form of script ``python PATH`` runs: the same __file__,
    __loader__, __spec__, sys.argv, sys.path[0] (a symlink's target
    directory, the directory or zip file itself), and the same traceback,
    source lines included after a chdir."""
    path = form.format(app=script_forms)
    direct = subprocess.run([sys.executable, path, "x"], cwd=script_forms,
                            env=primary.env, capture_output=True, timeout=60)
    assert direct.returncode == 1 and b"from the probe" in direct.stderr, direct.stderr
    # python runs a directory or zip file through runpy, whose frames its
    # traceback shows, and so does the secondary.
    for _ in range(2):                 # the second may be compiled ahead
        r = primary.run(path, "x", cwd=script_forms)
        assert (r.returncode, r.stdout, r.stderr) == (1, direct.stdout, direct.stderr)


def test_script_read_from_stdin(primary, tmp_path):
    code = b"import sys; print('from stdin', sys.argv, __file__)\n"
    r = primary.run("/dev/stdin", "y", input=code, cwd=tmp_path)
    direct = subprocess.run([sys.executable, "/dev/stdin", "y"], input=code, cwd=tmp_path,
                            env=primary.env, capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, direct.stdout), r.stderr


@pytest.mark.parametrize("path,code,needle", [
    ("empty", 127, b"can't find '__main__' module in 'empty'"),
    ("bad.pyc", 126, b"bad magic number"),
])
def test_script_forms_that_cannot_run(primary, script_forms, path, code, needle):
    """Where python says it cannot run the path (exit 1), forkhost-run uses
    its contract's codes: 127 nothing to run there, 126 cannot load it."""
    r = primary.run(path, cwd=script_forms)
    assert r.returncode == code and needle in r.stderr.strip().splitlines()[-1], r.stderr


def _client_attrs():
    """What a user sets in the shell before starting a program: ulimit -n
    333 (hard 4096) and -c unlimited, nice 4, taskset -c 0, chrt --batch."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (333, 4096))
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    os.setpriority(os.PRIO_PROCESS, 0, 4)
    os.sched_setaffinity(0, {0})
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


_LAUNCH_ATTRS = """\
import sys, forkhost
sec = forkhost.launch(sys.argv[1])
sys.exit(sec.wait())
"""


@pytest.mark.parametrize("pool", ["2", "0"])     # a member, or forked on demand
def test_secondary_takes_the_clients_limits_nice_policy_affinity(runtime_dir, native,
                                                                 pool):
    """As a program started from the client's shell would: the client's
    resource limits, nice value, scheduling policy, CPU affinity, I/O
    priority (ionice -c 2 -n 5) and OOM score adjustment (choom -n 300),
    for every client and entry kind (the primary has none of them)."""
    want = b"nofile=333,4096 core=-1,-1 nice=4 cpus=1 policy=%d io=%d oom=300\n" % (
        os.SCHED_BATCH, 2 << 13 | 5)
    p = PrimaryProc(runtime_dir, args=["--pool", pool])
    try:
        clients = {"forkhost-run": [RUNNER],
                   "forkhost run": [sys.executable, "-m", "forkhost", "run"],
                   "launch()": [sys.executable, "-c", _LAUNCH_ATTRS]}
        for client, argv in clients.items():
            for entry in ("fhfix:attrs", native["so"] + ":attrs"):
                r = subprocess.run(["choom", "-n", "300", "--", "ionice", "-c", "2",
                                    "-n", "5", *argv, entry],
                                   env=p.env, cwd=FIXTURES,
                                   preexec_fn=_client_attrs, capture_output=True,
                                   timeout=60)
                assert (r.returncode, r.stdout) == (0, want), (client, entry, r.stderr)
        r = subprocess.run([RUNNER, "fhfix:attrs"], env=p.env, cwd=FIXTURES,
                           capture_output=True, timeout=60)
        assert r.returncode == 0 and r.stdout != want
    finally:
        code, _out, err = p.stop()
    assert code == 0, err


def test_an_address_space_limit_below_the_secondarys_size_is_not_taken(primary):
    """ulimit -v below what the secondary has mapped before its program
    runs (the primary's address space, the arena) would fail its every
    allocation: it keeps the template's.  One above that is taken."""
    tib = 1 << 40
    for limit, want in ((32 << 20, b"-1,-1\n"), (tib, b"%d,%d\n" % (tib, tib))):
        r = subprocess.run(["prlimit", f"--as={limit}:{limit}", RUNNER, "fhfix:limit", "AS"],
                           env=primary.env, cwd=FIXTURES, capture_output=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, want), r.stderr


NOT_FOUND = [
    (["missing_script.py"], b"not found"),
    (["no_such_module_xyz:main"], b"no_such_module_xyz"),
    (["fhfix:no_such_function"], b"no_such_function"),
    (["-m", "no_such_module_xyz"], b"no_such_module_xyz"),
    (["/nonexistent/lib.so"], b"/nonexistent/lib.so"),
    (["plainword"], b"plainword"),
]


@pytest.mark.parametrize("argv,needle", NOT_FOUND)
def test_entry_not_found_127(primary, argv, needle):
    r = primary.run(*argv, cwd=FIXTURES)
    assert r.returncode == 127, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) >= 1 and needle in lines[-1], r.stderr


@pytest.mark.parametrize("form", ["pie", "so", "stripped-pie"])
def test_native_entry_runs_its_exit_handlers(primary, tmp_path, form):
    """After main returns, the entry's atexit handlers and destructors run,
    as exit() runs them for a normal process (the PIE exec'd shows the
    order); none of the primary's (the secondary still leaves by _exit)."""
    src = str(FIXTURES / "atexit_entry.c")
    pie = tmp_path / "atexit_pie"
    subprocess.run(["cc", "-fPIE", "-pie", "-o", pie, src], check=True)
    direct = subprocess.run([pie, "3"], capture_output=True, timeout=60)
    assert direct.returncode == 3
    assert direct.stdout == b"main\natexit second\natexit first\ndestructor\n"
    if form == "pie":
        target = pie
    elif form == "so":
        target = tmp_path / "atexit.so"
        subprocess.run(["cc", "-fPIC", "-shared", "-o", target, src], check=True)
    else:
        target = tmp_path / "atexit_stripped"
        subprocess.run(["cc", "-fPIE", "-pie", "-rdynamic", "-s", "-o", target, src],
                       check=True)
    r = primary.run(str(target), "3")
    assert r.returncode == 3, r.stderr
    # A stripped PIE's handle is found without its symbol table too.
    assert r.stdout == direct.stdout


def test_native_symbol_not_found_127(primary, native):
    r = primary.run(native["so"] + ":no_such_symbol")
    assert r.returncode == 127 and b"no_such_symbol" in r.stderr
    # A stripped PIE's main is found from its _start (tests/test_stock_exec.py);
    # any other symbol it does not export is nowhere.
    r = primary.run(native["stripped"] + ":fh_fixture_nothing")
    assert r.returncode == 127 and b"-rdynamic" in r.stderr


CANNOT_RUN = [
    (["broken_import:main"], b"broken_import"),
    (["fhfix:not_callable"], b"not callable"),
    (["-m", "broken_import"], None),   # found and compiled; raising is exit 1
]
# A syntax error is python's (SyntaxError, exit 1): tests/test_exact_python.py.


@pytest.mark.parametrize("argv,needle", CANNOT_RUN)
def test_entry_cannot_run_126(primary, argv, needle):
    r = primary.run(*argv, cwd=FIXTURES)
    if needle is None:
        assert r.returncode == 1 and b"RuntimeError" in r.stderr
        return
    assert r.returncode == 126, r.stderr
    assert needle in r.stderr.strip().splitlines()[-1], r.stderr


def test_native_cannot_load_126(primary, native, tmp_path):
    r = primary.run(native["nopie"])
    assert r.returncode == 126 and b"PIE" in r.stderr
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"\x7fELF" + b"\0" * 60)
    r = primary.run(str(bogus))
    assert r.returncode == 126, r.stderr


def test_native_crash_dies_by_sigsegv(primary, native):
    r = primary.run(native["so"] + ":crash")
    assert r.returncode == -signal.SIGSEGV


def test_no_primary_125(runtime_dir):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="nobody-here")
    r = subprocess.run([RUNNER, "fhfix:report"], env=env, capture_output=True, timeout=30)
    assert r.returncode == 125
    sock = os.path.join(runtime_dir, "nobody-here", "template.sock")
    assert r.stderr.decode() == (f"forkhost-run: no forkhost primary for prefix "
                                 f"'nobody-here' (looked for {sock})\n")


def test_python_cli_run_matches_contract(primary):
    env = primary.env
    base = [os.environ.get("PYTHON", "python3"), "-m", "forkhost", "run"]
    r = subprocess.run(base + ["fhfix:exit_with", "5"], env=env, cwd=FIXTURES,
                       capture_output=True, timeout=60)
    assert r.returncode == 5, r.stderr
    r = subprocess.run(base + ["fhfix:die_by", "SIGTERM"], env=env, cwd=FIXTURES,
                       capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGTERM
    r = subprocess.run(base + ["nope.py"], env=env, cwd=FIXTURES, capture_output=True,
                       timeout=60)
    assert r.returncode == 127 and b"nope.py" in r.stderr


def test_launch_api(primary):
    import forkhost
    with tempfile.TemporaryFile() as out:
        sec = forkhost.launch("fhfix:echo", ["api"], prefix=primary.prefix,
                              runtime_dir=primary.runtime_dir, cwd=FIXTURES,
                              stdout=out, stderr=forkhost.DEVNULL)
        with sec:
            assert sec.pid > 0
            assert sec.wait(30) == 0
        out.seek(0)
        assert out.read() == b"api\n"
    sec = forkhost.launch("fhfix:sleeper", prefix=primary.prefix,
                          runtime_dir=primary.runtime_dir, cwd=FIXTURES,
                          stdout=forkhost.DEVNULL)
    with sec:
        sec.send_signal(signal.SIGUSR1)
        assert sec.wait(30) == -signal.SIGUSR1
    with pytest.raises(forkhost.RefusedError) as info:
        forkhost.launch("missing.py", prefix=primary.prefix,
                        runtime_dir=primary.runtime_dir, cwd=FIXTURES)
    assert info.value.exit_code == 127


def test_fork_on_demand_path(runtime_dir, native):
    """--pool 0: every launch forks on demand (in C for native entries) and
    the template, not the secondary, sends EXITED."""
    from fhtest import PrimaryProc
    p = PrimaryProc(runtime_dir, prefix="nopool", args=("--pool", "0"))
    try:
        assert json.loads(p.run("fhfix:report", cwd=FIXTURES).stdout)["std_open"] == \
            [True, True, True]
        for code in (0, 3, 255):
            assert p.run("fhfix:exit_with", code, cwd=FIXTURES).returncode == code
            assert p.run(native["so"], "exit", code).returncode == code
        assert p.run(native["so"] + ":crash").returncode == -signal.SIGSEGV
        assert p.run("fhfix:die_by", "SIGTERM", cwd=FIXTURES).returncode == -signal.SIGTERM
        assert p.run("missing.py", cwd=FIXTURES).returncode == 127
        info = forkhost_info(p)
        assert info["pool"] == 0 and info["pool_size"] == 0
    finally:
        code, _, err = p.stop()
    assert code == 0, err


def test_pool_members_are_ready_and_replaced(own_primary):
    primary = own_primary           # it counts the template's pool
    import time
    deadline = time.monotonic() + 10
    while forkhost_info(primary)["pool"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert forkhost_info(primary)["pool"] == 2
    for _ in range(5):
        assert primary.run("fhfix:exit_with", 0, cwd=FIXTURES).returncode == 0
    deadline = time.monotonic() + 10
    while forkhost_info(primary)["pool"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert forkhost_info(primary)["pool"] == 2


def forkhost_info(p):
    import forkhost
    return forkhost.info(p.prefix, p.runtime_dir)
