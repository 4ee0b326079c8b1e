"""A Python secondary is the program a direct ``python`` run would be.

Each case runs a small program (tests/fixtures/exact/) directly with
``python`` and through forkhost-run, with the same environment and cwd, and
compares status, stdout and stderr byte for byte; only what must differ
between two processes (a thread's address in faulthandler's dump) is
normalised.  Where forkhost differs on purpose, the test says so and
docs/cli.md has the line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fhtest import FIXTURES, RUNNER, PrimaryProc, leaves_nothing, module_primary

EXACT = FIXTURES / "exact"

# faulthandler names the thread by its pthread_t, an address.
_THREAD = re.compile(rb"(Current thread|Thread) 0x[0-9a-f]+")


def _normal(out: bytes) -> bytes:
    return _THREAD.sub(rb"\1 0x...", out)


def _env(primary, extra=None, drop=()):
    env = dict(primary.env, **(extra or {}))
    for name in drop:
        env.pop(name, None)
    return env


def both(primary, *argv, cwd=EXACT, extra_env=None, drop_env=(), input=b"",
         shell_prefix=()):
    """(status, stdout, stderr) of ``python ARGV`` and ``forkhost-run ARGV``,
    each under ``shell_prefix`` (a command that execs its arguments)."""
    env = _env(primary, extra_env, drop_env)
    out = []
    for head in ([sys.executable], [RUNNER]):
        r = subprocess.run([*shell_prefix, *head, *map(str, argv)], cwd=cwd, env=env,
                           input=input, capture_output=True, timeout=60)
        out.append((r.returncode, _normal(r.stdout), _normal(r.stderr)))
    return out


def assert_same(primary, *argv, **kw):
    direct, through = both(primary, *argv, **kw)
    assert through == direct
    return direct


def _preload_primary(runtime_dir):
    env = dict(os.environ, PYTHONPATH=str(EXACT))
    p = PrimaryProc(runtime_dir, prefix="exact", args=["--preload", "preload"], env=env)
    p.env.pop("PYTHONPATH")          # the programs' environment: the runner's
    return p


def _exit_work_done_by_the_primary(out, err):
    # The primary's own exit work is done, by the primary.
    assert "the primary's buffered record" in out and "the primary's finalizer" in out, out


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    """A primary whose preload leaves work for its own exit (a buffered
    logging record, a finalizer, an atexit handler), as a real program's
    imports do; none of it is a secondary's.  Every test only runs programs
    against it and leaves nothing behind: the module shares it, and checks
    its exit work when it stops after the module's last test."""
    with module_primary(tmp_path_factory, make=_preload_primary,
                        check_stop=_exit_work_done_by_the_primary) as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.mark.parametrize("form", [["stack.py"], ["-m", "stack"]])
def test_stack_is_the_programs_own(primary, form):
    """No forkhost frame under __main__: inspect.stack(), print_stack(),
    faulthandler, warnings' stacklevel, the recursion limit's depth and the
    traceback are python's; with -m, runpy's frames are there, as in
    python's."""
    status, out, err = assert_same(primary, *form)
    assert status == 1 and b"ValueError: from the program" in err
    assert b"frames 1 threads 1" in out or b"frames 3 threads 1" in out
    if form[0] == "-m":
        assert b'File "<frozen runpy>"' in err


def test_module_traceback_shows_runpy(primary):
    status, _, err = assert_same(primary, "-m", "raises")
    assert status == 1 and err.count(b'File "<frozen runpy>"') == 2, err


@pytest.mark.parametrize("form", [["main_module.py", "a", "b"],
                                  ["-m", "main_module", "c"],
                                  ["./main_module.py"]])
def test_main_module_and_orig_argv(primary, form):
    """__main__'s names in python's order, __annotations__ among them, and
    sys.orig_argv: the interpreter, then what follows it on a python
    command line."""
    status, out, _ = assert_same(primary, *form)
    assert status == 0 and b"'__annotations__'" in out and b"True" in out


def test_syntax_error_is_pythons(primary, tmp_path):
    """A script or module that does not compile: python's SyntaxError
    (for -m, with runpy's and the import system's frames), exit 1."""
    status, out, err = assert_same(primary, "syntax_error.py", cwd=FIXTURES)
    assert status == 1 and err.endswith(b"SyntaxError: invalid syntax\n"), err
    assert not err.startswith(b"Traceback")
    status, out, err = assert_same(primary, "-m", "syntax_error", cwd=FIXTURES)
    assert status == 1 and err.startswith(b"Traceback") and b"<frozen runpy>" in err
    (tmp_path / "nul.py").write_bytes(b"x = 1\nprint(x)\0 + 1\n")
    status, _, err = assert_same(primary, "nul.py", cwd=tmp_path)
    assert status == 1 and b"null bytes" in err, err


@pytest.mark.parametrize("tz", ["FHT-7:30", "EST5EDT,M3.2.0,M11.1.0", "UTC0", None])
def test_clients_tz(primary, tz):
    """time.localtime, the time module's zone names and offsets and
    datetime.fromtimestamp follow the client's TZ (or its absence)."""
    if tz is None:
        status, out, _ = assert_same(primary, "clock.py", drop_env=["TZ"])
    else:
        status, out, _ = assert_same(primary, "clock.py", extra_env={"TZ": tz})
    assert status == 0
    if tz == "FHT-7:30":
        assert b"('FHT', 'FHT') -27000" in out, out


def test_environ_in_the_clients_order(primary):
    env = {"ZZ_FIRST": "1", "AA_SECOND": "2", "MM_THIRD": "=3="}
    status, out, _ = assert_same(primary, "environ.py", extra_env=env)
    assert status == 0
    names = [bytes.fromhex(line.split()[0].decode()) for line in out.splitlines()]
    assert names[-3:] == [b"ZZ_FIRST", b"AA_SECOND", b"MM_THIRD"]


@pytest.mark.parametrize("setting", ["utf-8", "latin-1", "utf-8:replace",
                                     ":backslashreplace", None])
def test_stdio_encoding_and_errors(primary, setting):
    """PYTHONIOENCODING=ENC means ENC:strict, as in python; an error handler
    alone keeps the encoding."""
    if setting is None:
        direct = assert_same(primary, "stdio.py", drop_env=["PYTHONIOENCODING"])
    else:
        direct = assert_same(primary, "stdio.py", extra_env={"PYTHONIOENCODING": setting})
    if setting in ("utf-8", "latin-1"):
        assert direct[0] == 1 and b"UnicodeEncodeError" in direct[2]


def test_exit_work_of_the_programs_modules(primary):
    """logging.shutdown flushes the program's MemoryHandler, its finalizer
    and its atexit handler run: logging was imported by the primary, so the
    program's import registered nothing; none of the primary's exit work
    (its buffered record, finalizer, atexit handler) is done."""
    status, out, err = assert_same(primary, "at_exit.py")
    assert status == 0 and out == (b"main done\nthe program's atexit handler\n"
                                   b"finalized at exit\n"
                                   b"buffered until logging.shutdown\n"), (out, err)
    status, out, err = assert_same(primary, "no_logging.py")
    assert (status, out, err) == (0, b"True main done\n", b"")


def test_module_from_a_deleted_cwd(primary, tmp_path):
    """python -m from a directory that is gone puts no cwd on sys.path and
    runs the module."""
    gone = ["sh", "-c", 'mkdir gone && cd gone && rmdir ../gone && exec "$@"', "sh"]
    status, out, _ = assert_same(primary, "-m", "json.tool", cwd=tmp_path,
                                 shell_prefix=gone, input=b'{"a": [1]}')
    assert status == 0 and b'"a"' in out
    status, out, _ = assert_same(primary, "-m", "path0", cwd=tmp_path, shell_prefix=gone,
                                 extra_env={"PYTHONPATH": str(EXACT)})
    assert (status, out) == (0, str(EXACT).encode() + b"\n")


def test_a_library_name_that_is_not_elf_cannot_run(primary, tmp_path):
    """PATH.so names a native entry: a file so named that is not ELF cannot
    be run (126), as exec(2) cannot run it (ENOEXEC); it is not taken for
    Python source."""
    lib = tmp_path / "lib.so"
    lib.write_text("print('ran as Python')\n")
    lib.chmod(0o755)
    direct = subprocess.run([sys.executable, "-c", "import os, sys; os.execv(sys.argv[1], "
                             "sys.argv[1:])", str(lib)], capture_output=True, timeout=60)
    assert direct.returncode == 1 and b"Exec format error" in direct.stderr
    for form in ("lib.so", "./lib.so.1"):
        if form != "lib.so":
            (tmp_path / "lib.so.1").write_text("print('ran as Python')\n")
        r = primary.run(form, cwd=tmp_path)
        assert r.returncode == 126 and b"not ELF" in r.stderr, r.stderr
        assert b"ran as Python" not in r.stdout
    (tmp_path / "x.so.py").write_text("print('ran as Python')\n")
    r = primary.run("x.so.py", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"ran as Python\n"), r.stderr


def test_missing_script_keeps_the_not_found_status(primary, tmp_path):
    """Where python exits 2 for a script it cannot open, forkhost-run keeps
    127, its status for every entry that names nothing (docs/cli.md)."""
    (direct, _, derr), (through, _, ferr) = both(primary, "missing.py", cwd=tmp_path)
    assert direct == 2 and b"can't open file" in derr
    assert through == 127 and b"missing.py" in ferr


@pytest.mark.parametrize("script", ["exit_unprintable.py", "exit_unprintable_error.py"])
def test_exit_with_a_code_that_cannot_be_printed(primary, script):
    """str() of SystemExit's code raising (SystemExit itself, or an
    ordinary exception) is python's status 1, not the status of what str()
    raised, the same stderr (from 3.12 the exception's traceback after the
    newline), and the exit work runs once."""
    status, out, err = assert_same(primary, script)
    assert status == 1 and out == b"exit handler\n", (status, out, err)
    assert err.startswith(b"\n"), err
