"""`forkhost doctor ENTRY`: whether an entry can be loaded in a secondary,
why not, and the fix.

Each case runs the doctor through the CLI against a real primary, checks
the cause and the fix it names and its exit status, and then launches the
same entry with forkhost-run: the verdict must be what really happens (the
126 or 127 the doctor predicted, or a run).  The C fixtures
(tests/fixtures/doctor_*.c) are compiled here.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import py_compile
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fhtest import FIXTURES, RUNNER, LineReader, forkhost_flags, reap

CC = os.environ.get("CC", "cc")


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


def cc(*args) -> None:
    subprocess.run([CC, *map(str, args)], check=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Every native fixture, built once: the tests that change files copy
    them first."""
    d = tmp_path_factory.mktemp("doctor")
    prog, tls = FIXTURES / "doctor_prog.c", FIXTURES / "doctor_tls.c"
    cc("-no-pie", "-fno-pie", "-o", d / "prog-nopie", prog)
    cc("-fPIE", "-pie", "-o", d / "prog-copyreloc", prog)
    cc("-fPIC", "-pie", "-rdynamic", "-o", d / "prog-rdynamic", prog)
    cc("-fPIC", "-pie", "-o", d / "prog-plain", prog)
    cc("-shared", "-fPIC", "-ftls-model=initial-exec", "-o", d / "tls-ie.so", tls)
    cc("-shared", "-fPIC", "-ftls-model=global-dynamic", "-o", d / "tls-gd.so", tls)
    cc("-fPIE", "-pie", "-o", d / "tls-pie", tls)
    (d / "dep").mkdir()
    cc("-shared", "-fPIC", "-Wl,-soname,libdoctordep.so", "-o",
       d / "dep" / "libdoctordep.so", FIXTURES / "doctor_dep.c")
    cc("-shared", "-fPIC", "-o", d / "lib-rpath.so", FIXTURES / "doctor_lib.c",
       "-L", d / "dep", "-ldoctordep", f"-Wl,-rpath,{d / 'dep'}")
    cc("-shared", "-fPIC", "-o", d / "lib-norpath.so", FIXTURES / "doctor_lib.c",
       "-L", d / "dep", "-ldoctordep")
    cc("-shared", "-fPIC", "-o", d / "unlinked.so", FIXTURES / "doctor_unlinked.c")
    cc("-shared", "-fPIC", "-o", d / "ctor.so", FIXTURES / "doctor_ctor.c")
    return d


def doctor(primary, cwd, *args, env=None) -> subprocess.CompletedProcess:
    """`python -m forkhost doctor ARGS` as a user in cwd would run it."""
    return subprocess.run([sys.executable, "-m", "forkhost", "doctor", *map(str, args)],
                          env=dict(primary.env if env is None else env), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def predicted(out: str) -> int | None:
    """The status the doctor says forkhost-run would exit with."""
    m = re.search(r"would exit (\d+)", out)
    return int(m.group(1)) if m else None


def assert_cannot_load(primary, cwd, entry, cause_text, fix_text, status,
                       message_text=None, extra_env=None, module=False,
                       where="in a secondary of prefix 't'"):
    """The doctor names the cause and the fix and predicts `status`, and a
    launch really fails with it."""
    args = ["-m", entry] if module else [entry]
    env = dict(primary.env, **(extra_env or {}))
    d = doctor(primary, cwd, *args, env=env)
    assert d.returncode == 1, d.stdout + d.stderr
    fail = [line for line in d.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fail) == 1, d.stdout
    assert cause_text in fail[0], d.stdout
    if message_text is not None:
        assert message_text in fail[0], d.stdout
    assert "fix: " in d.stdout and fix_text in d.stdout, d.stdout
    assert where in d.stdout, d.stdout
    assert predicted(d.stdout) == status, d.stdout
    run = primary.run(*args, cwd=cwd, extra_env=extra_env or {})
    assert run.returncode == status, (run.returncode, run.stderr)
    return d, run


def assert_loads(primary, cwd, entry, what, ran, module=False):
    """The doctor says it loads, and a launch really runs it."""
    args = ["-m", entry] if module else [entry]
    d = doctor(primary, cwd, *args)
    assert d.returncode == 0, d.stdout + d.stderr
    ok = [line for line in d.stdout.splitlines() if line.startswith("OK ")]
    assert len(ok) == 1 and what in ok[0], d.stdout
    assert "FAIL" not in d.stdout and predicted(d.stdout) is None, d.stdout
    run = primary.run(*args, cwd=cwd)
    assert run.returncode == 0, run.stderr
    assert ran in run.stdout.decode(), run.stdout
    return d


# -- native entries ----------------------------------------------------------

def test_non_pie_executable(primary, built):
    assert_cannot_load(primary, built, "./prog-nopie",
                       "not a position-independent executable", "-fPIE -pie", 126,
                       "non-PIE executable")


def test_fpie_program_using_getopt_has_copy_relocations(primary, built):
    if platform.machine() != "x86_64":
        # Copy relocations are bound to the program's copies on x86_64 only.
        d, run = assert_cannot_load(primary, built, "./prog-copyreloc",
                                    "copy relocations",
                                    "-fPIC -pie instead of -fPIE -pie", 126, "optarg")
        assert b"copy relocations" in run.stderr
        return
    d = assert_loads(primary, built, "./prog-copyreloc", "copy relocations",
                     "doctor prog ran: name=nobody")
    assert "pointed at its own copies of 1 variable (copy" in d.stdout, d.stdout


def test_stripped_pie_with_main_exported_loads(primary, built, tmp_path):
    if shutil.which("strip") is None:
        pytest.skip("strip is not installed")
    prog = tmp_path / "prog"
    shutil.copy(built / "prog-rdynamic", prog)
    subprocess.run(["strip", str(prog)], check=True)
    d = assert_loads(primary, tmp_path, "./prog", "stripped PIE executable",
                     "doctor prog ran: name=nobody")
    assert "'main' is exported (in .dynsym)" in d.stdout, d.stdout


def test_stripped_pie_without_exported_main(primary, built, tmp_path):
    if shutil.which("strip") is None:
        pytest.skip("strip is not installed")
    prog = tmp_path / "prog"
    shutil.copy(built / "prog-plain", prog)
    # Before it is stripped it loads, and the doctor says what strip does.
    d = assert_loads(primary, tmp_path, "./prog", "not exported",
                     "doctor prog ran: name=nobody")
    x86_64 = platform.machine() == "x86_64"
    if x86_64:
        assert "once stripped, main is found from _start" in d.stdout, d.stdout
    else:
        assert "would not once stripped" in d.stdout and "-rdynamic" in d.stdout
    subprocess.run(["strip", str(prog)], check=True)
    if x86_64:
        # main is what glibc's _start passes to __libc_start_main.
        assert_loads(primary, tmp_path, "./prog", "found from its _start",
                     "doctor prog ran: name=nobody")
    else:
        assert_cannot_load(primary, tmp_path, "./prog", "stripped PIE whose symbol is "
                           "not exported", "-rdynamic", 127, "no symbol 'main'")
    # Another symbol than main cannot be read from _start.
    assert_cannot_load(primary, tmp_path, "./prog:helper", "stripped PIE whose symbol "
                       "is not exported", "-rdynamic", 127, "no symbol 'helper'")


def test_hidden_symbol_is_not_exported(primary, built):
    assert_cannot_load(primary, built, "./lib-rpath.so:hidden_entry",
                       "not exported", 'visibility("default")',
                       127, "no symbol 'hidden_entry'")


def test_large_initial_exec_tls_needs_static_tls(primary, built):
    assert_cannot_load(primary, built, "./tls-ie.so:tls_entry", "no static TLS left",
                       "-ftls-model=global-dynamic", 126, "static TLS block")
    # The fix the doctor names works: the same source, global-dynamic.
    assert_loads(primary, built, "./tls-gd.so:tls_entry", "shared object",
                 "doctor tls ran: xy")


def test_pie_with_thread_local_data(primary, built):
    assert_cannot_load(primary, built, "./tls-pie", "thread-local variables",
                       "-fPIC -shared", 126, "PT_TLS")


def test_healthy_shared_object_with_symbol(primary, built):
    d = assert_loads(primary, built, "./lib-rpath.so:lib_entry", "shared object",
                     "doctor lib ran: 42")
    assert "'lib_entry' is exported" in d.stdout


def test_missing_library(primary, built, tmp_path):
    # Linked against it with a RUNPATH, then the library is gone.
    shutil.copytree(built / "dep", tmp_path / "dep")
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(tmp_path / "lib.so"),
                    str(FIXTURES / "doctor_lib.c"), "-L", str(tmp_path / "dep"),
                    "-ldoctordep", f"-Wl,-rpath,{tmp_path / 'dep'}"], check=True)
    assert_loads(primary, tmp_path, "./lib.so:lib_entry", "shared object",
                 "doctor lib ran: 42")
    (tmp_path / "dep" / "libdoctordep.so").unlink()
    d, run = assert_cannot_load(primary, tmp_path, "./lib.so:lib_entry",
                                "a library it needs is not found", "-Wl,-rpath,DIR",
                                126, "libdoctordep.so: cannot open shared object file")
    assert f"the RUNPATH of ./lib.so ({tmp_path / 'dep'})" in d.stdout, d.stdout
    assert "/etc/ld.so.cache" in d.stdout
    assert b"libdoctordep.so" in run.stderr


def test_a_library_on_the_clients_library_path_loads(primary, built):
    # Only the client's LD_LIBRARY_PATH has it: the launch finds it there,
    # as the program run directly would, and the doctor says it loads.
    dep = str(built / "dep")
    env = dict(primary.env, LD_LIBRARY_PATH=dep)
    d = doctor(primary, built, "./lib-norpath.so:lib_entry", env=env)
    assert d.returncode == 0 and "FAIL" not in d.stdout, d.stdout + d.stderr
    run = primary.run("./lib-norpath.so:lib_entry", cwd=built,
                      extra_env={"LD_LIBRARY_PATH": dep})
    assert run.returncode == 0, run.stderr
    assert "doctor lib ran: 42" in run.stdout.decode()


def test_entry_using_libforkhost_unlinked(primary, built):
    # libforkhost is loaded in every secondary, but not where an entry's
    # references can bind to it: the check must not make it so either.
    assert_cannot_load(primary, built, "./unlinked.so", "defined by no library",
                       "$(forkhost config --libs)", 126, "undefined symbol: fh_version")


def test_constructors_run_main_does_not(primary, built):
    d = assert_loads(primary, built, "./ctor.so", "shared object",
                     "doctor ctor ran\ndoctor ctor main ran")
    assert "output while loading: doctor ctor ran" in d.stdout, d.stdout
    assert "main ran" not in d.stdout


def test_entry_that_dies_while_loading(primary, built):
    # Its constructor reads the client's environment, as at a launch.
    env = dict(primary.env, DOCTOR_CTOR_DIE="1")
    d = doctor(primary, built, "./ctor.so", env=env)
    assert d.returncode == 1, d.stdout + d.stderr
    assert "loading it killed the process with SIGTERM" in d.stdout, d.stdout
    assert "forkhost-run ./ctor.so would die by SIGTERM too" in d.stdout
    run = primary.run("./ctor.so", cwd=built, extra_env={"DOCTOR_CTOR_DIE": "1"})
    assert run.returncode == -signal.SIGTERM, (run.returncode, run.stderr)


def test_missing_file(primary, built):
    assert_cannot_load(primary, built, "./no-such-prog", "not found",
                       "check the path", 127, "no such file",
                       where="as the template classifies a launch's entry")


# -- Python entries ----------------------------------------------------------

def test_script_with_a_syntax_error(primary, tmp_path):
    (tmp_path / "bad.py").write_text("def main(argv):\n    return (1 +\n")
    # python's status for it, and the launch's (test_exact_python.py).
    assert_cannot_load(primary, tmp_path, "bad.py", "a syntax error",
                       "fix the source", 1, "line 2")


def test_healthy_script(primary, tmp_path):
    (tmp_path / "good.py").write_text(
        "import sys\nprint('doctor script ran', sys.argv[1:])\n")
    d = assert_loads(primary, tmp_path, "good.py", "Python script and compiles",
                     "doctor script ran []")
    # Checked, not run.
    assert "doctor script ran" not in d.stdout


def test_pyc_of_another_python(primary, tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("print('doctor pyc ran')\n")
    pyc = tmp_path / "old.pyc"
    py_compile.compile(str(src), cfile=str(pyc), doraise=True)
    # The first magic number of the next minor release (3.n starts at
    # 2900 + 50n from 3.11 on).
    minor = sys.version_info.minor + 1
    data = bytearray(pyc.read_bytes())
    data[:2] = (2900 + 50 * minor).to_bytes(2, "little")
    pyc.write_bytes(bytes(data))
    d, _ = assert_cannot_load(primary, tmp_path, "old.pyc", "a .pyc file of another "
                              "Python", "py_compile", 126, "bad magic number")
    assert f"for Python 3.{minor} (magic number {2900 + 50 * minor})" in d.stdout
    this = int.from_bytes(importlib.util.MAGIC_NUMBER[:2], "little")
    assert f"Python {platform.python_version()}, magic number {this}" in d.stdout
    # The same file with this Python's magic number loads and runs.
    data[:4] = importlib.util.MAGIC_NUMBER
    pyc.write_bytes(bytes(data))
    assert_loads(primary, tmp_path, "old.pyc", ".pyc file of this Python",
                 "doctor pyc ran")


def test_module_function_is_found_without_running_the_module(primary, tmp_path):
    (tmp_path / "dmod.py").write_text(
        "print('doctor module imported')\n"
        "def main(argv):\n    print('doctor function ran')\n")
    d = assert_loads(primary, tmp_path, "dmod:main", "binds 'main'",
                     "doctor function ran")
    assert "doctor module imported" not in d.stdout
    assert_cannot_load(primary, tmp_path, "dmod:nosuch", "not in the module",
                       "define it", 127, "has no attribute 'nosuch'")
    assert_loads(primary, tmp_path, "dmod", "compiles", "doctor module imported",
                 module=True)
    (tmp_path / "dpkg").mkdir()
    (tmp_path / "dpkg" / "__init__.py").write_text("")
    assert_cannot_load(primary, tmp_path, "dpkg", "a package without __main__.py",
                       "-m PACKAGE.MODULE", 126, module=True)


# -- without a primary, and under a C primary ---------------------------------

def test_without_a_primary_the_check_runs_in_a_forked_child(runtime_dir, built):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="none")
    d = subprocess.run([sys.executable, "-m", "forkhost", "doctor", "./tls-pie"],
                       env=env, cwd=built, capture_output=True, text=True, timeout=120)
    assert d.returncode == 1, d.stdout + d.stderr
    assert "no forkhost primary for prefix 'none'" in d.stdout
    assert "NOT under a primary's conditions" in d.stdout
    assert "thread-local variables" in d.stdout and "-fPIC -shared" in d.stdout
    assert "would exit 126 under a primary with this process's conditions" in d.stdout
    ok = subprocess.run([sys.executable, "-m", "forkhost", "doctor",
                         "./lib-rpath.so:lib_entry"], env=env, cwd=built,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "OK    ./lib-rpath.so:lib_entry: loads" in ok.stdout, \
        ok.stdout + ok.stderr
    # The check does not run the entry: nothing it prints when run appears.
    assert "doctor lib ran" not in ok.stdout


@pytest.fixture(scope="module")
def c_primary_exe(tmp_path_factory) -> str:
    flags = forkhost_flags()
    out = tmp_path_factory.mktemp("cprimary") / "c_primary"
    subprocess.run([CC, "-std=gnu11", "-o", str(out), str(FIXTURES / "c_primary.c"),
                    *flags], check=True)
    return str(out)


def test_under_a_c_primary(c_primary_exe, runtime_dir, built, tmp_path):
    # A primary that runs no Python: native entries are checked by
    # libforkhost's fh_entry_check launched as a native entry; a Python
    # entry gets the primary's own refusal.
    p = subprocess.Popen([c_primary_exe, runtime_dir, "cp"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        line = LineReader(p.stdout).readline().decode()
        assert line.startswith("ready "), line
        env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="cp")

        def both(entry, cwd):
            d = subprocess.run([sys.executable, "-m", "forkhost", "doctor", entry],
                               env=env, cwd=cwd, capture_output=True, text=True,
                               timeout=120)
            r = subprocess.run([RUNNER, entry], env=env, cwd=cwd, capture_output=True,
                               timeout=60)
            assert "in a secondary of prefix 'cp'" in d.stdout or "refused" in d.stdout
            return d, r

        d, r = both("./tls-pie", built)
        assert d.returncode == 1 and "thread-local variables" in d.stdout, d.stdout
        assert predicted(d.stdout) == r.returncode == 126, (d.stdout, r.stderr)
        d, r = both("./lib-rpath.so:lib_entry", built)
        assert d.returncode == 0 and "OK " in d.stdout, d.stdout + d.stderr
        assert r.returncode == 0 and b"doctor lib ran: 42" in r.stdout
        (tmp_path / "good.py").write_text("print('hi')\n")
        d, r = both("good.py", tmp_path)
        assert d.returncode == 1 and "runs no Python" in d.stdout, d.stdout
        assert predicted(d.stdout) == r.returncode == 126, (d.stdout, r.stderr)
        p.terminate()
        assert p.wait(30) == 0
    finally:
        reap(p)
