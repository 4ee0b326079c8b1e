"""Stock executables as entries: a distribution's programs (PIEs built from
-fPIE code, so with copy relocations of optarg, stdout, environ..., and
stripped) run through forkhost-run exactly as they run directly.

Each case runs the program directly and through forkhost-run with the same
argv, environment, cwd and stdin, and compares stdout, stderr and the exit
status byte for byte.  A system program is skipped, with the reason, only
when it is absent or not a dynamically linked PIE on this machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import sys

import pytest

from fhtest import FIXTURES, RUNNER

CC = os.environ.get("CC", "cc")
PT_INTERP = 3
ET_DYN = 3

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64",
    reason="main from _start and copy relocations are handled on x86_64 only")


@pytest.fixture
def primary(shared_primary):
    """These tests launch secondaries and leave nothing behind: one primary
    for the module (conftest.py, own_primary)."""
    return shared_primary


def pie_or_skip(path: str) -> str:
    """path, when it is a dynamically linked PIE; else the test is skipped
    with the reason."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        pytest.skip(f"{path} is not installed on this machine")
    with open(real, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            pytest.skip(f"{path} is not a 64-bit little-endian ELF file here")
        e_type, = struct.unpack_from("<H", head, 16)
        e_phoff, = struct.unpack_from("<Q", head, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
    interp = any(struct.unpack_from("<I", ph, i * e_phentsize)[0] == PT_INTERP
                 for i in range(e_phnum))
    if e_type != ET_DYN or not interp:
        pytest.skip(f"{path} is not a dynamically linked PIE on this machine")
    return path


def both(primary, argv, *, stdin=b"", cwd=None, env=None):
    """Run argv directly and through forkhost-run alike; assert the same
    stdout, stderr and status, and return the direct run."""
    env = dict(primary.env if env is None else env)
    kw = dict(input=stdin, cwd=cwd, env=env, capture_output=True, timeout=60)
    direct = subprocess.run(list(map(str, argv)), **kw)
    via = subprocess.run([RUNNER, *map(str, argv)], **kw)
    assert (via.returncode, via.stdout, via.stderr) == \
        (direct.returncode, direct.stdout, direct.stderr), (argv, via.stderr)
    return direct


def test_true_and_false(primary):
    assert both(primary, [pie_or_skip("/usr/bin/true")]).returncode == 0
    assert both(primary, [pie_or_skip("/usr/bin/false")]).returncode == 1


def test_env_prints_the_same_environment(primary):
    env = dict(primary.env, STOCK_A="1", STOCK_B="two words", STOCK_C="")
    out = both(primary, [pie_or_skip("/usr/bin/env")], env=env).stdout
    assert b"STOCK_B=two words\n" in out
    # With arguments env sets variables and execs another program.
    both(primary, ["/usr/bin/env", "STOCK_D=4", "/usr/bin/env"], env=env)


def test_sort_reads_stdin(primary):
    data = b"pear\napple\n10\n9\nBanana\napple\n"
    sort = pie_or_skip("/usr/bin/sort")
    assert both(primary, [sort], stdin=data).stdout
    both(primary, [sort, "-r", "-n"], stdin=data)
    both(primary, [sort, "-u", "-k", "1,1"], stdin=data)
    # getopt's error for a bad option, and its status.
    assert both(primary, [sort, "--no-such-option"]).returncode == 2


def test_ls_of_a_fixed_directory(primary, tmp_path):
    ls = pie_or_skip("/usr/bin/ls")
    (tmp_path / "b.txt").write_bytes(b"12345")
    (tmp_path / "a dir").mkdir()
    (tmp_path / ".hidden").write_bytes(b"")
    os.utime(tmp_path / "b.txt", (1_000_000_000, 1_000_000_000))
    os.utime(tmp_path / "a dir", (1_000_000_000, 1_000_000_000))
    assert both(primary, [ls, tmp_path]).stdout == b"a dir\nb.txt\n"
    both(primary, [ls, "-la", "--time-style=+%s", "."], cwd=tmp_path)
    both(primary, [ls, "-1", "-A", "-r"], cwd=tmp_path)
    assert both(primary, [ls, tmp_path / "missing"]).returncode == 2


def test_cat_and_head(primary, tmp_path):
    cat, head = pie_or_skip("/usr/bin/cat"), pie_or_skip("/usr/bin/head")
    f = tmp_path / "f"
    f.write_bytes(b"one\ntwo\nthree\n")
    assert both(primary, [cat], stdin=b"through stdin\n").stdout == b"through stdin\n"
    both(primary, [cat, "-n", f, "-"], stdin=b"four\n")
    assert both(primary, [head, "-n", "2"], stdin=f.read_bytes()).stdout == \
        b"one\ntwo\n"
    assert both(primary, [head, "-c", "5", f]).stdout == b"one\nt"


def test_sh_runs_a_command(primary):
    sh = pie_or_skip("/bin/sh")
    out = both(primary, [sh, "-c", "echo $0 $1", "a", "b"]).stdout
    assert out == b"a b\n"
    both(primary, [sh, "-c", "echo out; echo err >&2; exit 7"])


@pytest.fixture(scope="module")
def getopt_progs(tmp_path_factory):
    """stock_getopt.c built with the documented recipe, -fPIE -pie, and the
    same stripped."""
    d = tmp_path_factory.mktemp("stock")
    src = FIXTURES / "stock_getopt.c"
    subprocess.run([CC, "-fPIE", "-pie", "-o", d / "prog", src], check=True)
    subprocess.run([CC, "-fPIE", "-pie", "-s", "-o", d / "prog-stripped", src],
                   check=True)
    return d


@pytest.mark.parametrize("name", ["prog", "prog-stripped"])
def test_a_getopt_program_built_fpie(primary, getopt_progs, name):
    prog = str(getopt_progs / name)
    env = dict(primary.env, STOCK_IN="from the client")
    out = both(primary, [prog, "-v", "-n", "xyz", "-v", "rest", "of it"], env=env).stdout
    assert out == (b"name=xyz verbose=2 optind=5\narg=rest\narg=of it\n"
                   b"env STOCK_IN=from the client\nenv STOCK_SET=yes\n"
                   b"getenv STOCK_IN=from the client\n")
    # getopt's own message, on libc's stderr, names the program.
    r = both(primary, [prog, "-x"], env=env)
    assert r.returncode == 2 and b"invalid option -- 'x'" in r.stderr


@pytest.mark.parametrize("name", ["prog", "prog-stripped"])
def test_the_doctor_says_how_it_loads(primary, getopt_progs, name):
    d = subprocess.run([sys.executable, "-m", "forkhost", "doctor", f"./{name}"],
                       env=primary.env, cwd=getopt_progs, capture_output=True,
                       text=True, timeout=120)
    assert d.returncode == 0, d.stdout + d.stderr
    assert "pointed at its own copies of" in d.stdout, d.stdout
    if name == "prog-stripped":
        assert "found from its _start" in d.stdout, d.stdout


def test_the_doctor_on_a_system_program(primary):
    ls = pie_or_skip("/usr/bin/ls")
    d = subprocess.run([sys.executable, "-m", "forkhost", "doctor", ls],
                       env=primary.env, cwd=FIXTURES, capture_output=True, text=True,
                       timeout=120)
    assert d.returncode == 0 and "OK " in d.stdout, d.stdout + d.stderr


def test_a_stripped_program_exits_in_exit_order(primary, tmp_path):
    """atexit handlers, then destructors, as exit() runs them, although the
    symbol table that names the handle they are filed under is gone."""
    prog = tmp_path / "atexit_stripped"
    subprocess.run([CC, "-fPIE", "-pie", "-s", "-o", prog,
                    FIXTURES / "atexit_entry.c"], check=True)
    r = both(primary, [prog, "5"])
    assert (r.returncode, r.stdout) == \
        (5, b"main\natexit second\natexit first\ndestructor\n")


def test_a_start_that_is_not_glibcs_is_refused_with_the_reason(primary, tmp_path):
    """A stripped PIE whose _start is its own: main cannot be read from it,
    and the launch says so (127) instead of guessing."""
    src = tmp_path / "own_start.c"
    src.write_text("#include <stdlib.h>\n"
                   "int main(void) { return 0; }\n"
                   "void _start(void) { exit(main()); }\n")
    prog = tmp_path / "own_start"
    subprocess.run([CC, "-fPIE", "-pie", "-nostartfiles", "-s", "-o", prog, src],
                   check=True)
    assert subprocess.run([prog], timeout=60).returncode == 0
    r = subprocess.run([RUNNER, prog], env=primary.env, capture_output=True,
                       timeout=60)
    assert r.returncode == 127, r.stderr
    assert r.stderr.count(b"\n") == 1 and b"_start is not glibc's" in r.stderr, r.stderr


def test_a_cxx_program_built_fpie(primary, tmp_path):
    """std::cin, std::cout and std::cerr are copy-relocated too; libstdc++
    comes in with the program."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler (c++, g++ or $CXX) on this machine")
    src = tmp_path / "cx.cc"
    src.write_text('#include <iostream>\n#include <string>\n#include <unistd.h>\n'
                   'int main(int argc, char **argv) {\n'
                   '    int c; std::string a = "-", line;\n'
                   '    while ((c = getopt(argc, argv, "a:")) != -1)\n'
                   '        if (c == \'a\') a = optarg;\n'
                   '    std::getline(std::cin, line);\n'
                   '    std::cout << "a=" << a << " line=" << line << std::endl;\n'
                   '    std::cerr << "on cerr" << std::endl;\n'
                   '    return 3;\n}\n')
    for flags in (["-fPIE", "-pie"], ["-fPIE", "-pie", "-s"]):
        prog = tmp_path / "cx"
        subprocess.run([cxx, *flags, "-o", prog, src], check=True)
        r = both(primary, [prog, "-a", "Q"], stdin=b"hi\n")
        assert (r.returncode, r.stdout, r.stderr) == (3, b"a=Q line=hi\n", b"on cerr\n")
