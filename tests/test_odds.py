"""forkhost.odds: how often a classic attach would collide under ASLR.

Real processes only: test programs built with gcc (tests/fixtures/odds_*.c)
are started under ptrace, stopped at their entry point, measured, killed
and reaped; the leak guard (conftest.py) checks that no child, zombie or
fd is left behind.  N stays small so the file runs in a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading

import psutil
import pytest

from fhtest import FIXTURES

from forkhost import odds as O

N = 6
FAR = "0x100000000+64M"     # 4 GiB up: below every PIE, library and stack

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or os.uname().machine != "x86_64",
    reason="needs gcc on x86_64")


def _gcc(*args):
    subprocess.run(["gcc", "-O1", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def progs(tmp_path_factory):
    d = tmp_path_factory.mktemp("odds")
    src, lib = FIXTURES / "odds_prog.c", FIXTURES / "odds_lib.c"
    _gcc("-o", d / "pie", src)
    _gcc("-no-pie", "-Wl,-Ttext-segment=0x10000000", "-o", d / "fixed", src)
    _gcc("-shared", "-fPIC", "-o", d / "libodds_lib.so", lib)
    _gcc("-DODDS_WITH_LIB", "-o", d / "withlib", src, f"-L{d}", "-lodds_lib",
         f"-Wl,-rpath,{d}")
    # the same program, linked to a library that is gone by the time it runs
    gone = d / "gone"
    gone.mkdir()
    _gcc("-shared", "-fPIC", "-o", gone / "libodds_lib.so", lib)
    _gcc("-DODDS_WITH_LIB", "-o", d / "nolib", src, f"-L{gone}", "-lodds_lib",
         f"-Wl,-rpath,{gone}")
    shutil.rmtree(gone)
    return d


def _no_children():
    assert psutil.Process().children(recursive=True) == []


def _consistent(rep: O.Report):
    """Every counted collision has a mapping of that run inside the range,
    and every run with such a mapping is counted."""
    for r in rep.ranges:
        for lay in rep.layouts:
            hit = [m for m in lay.maps if m.start < r.range.end and r.range.start < m.end]
            assert (lay.index in r.collisions) == bool(hit)
            if hit:
                assert r.collisions[lay.index] == hit
        assert r.collided == len(r.collisions)
        assert sum(k for _, k in r.by_name()) >= r.collided


# -- ranges --------------------------------------------------------------------

@pytest.mark.parametrize("text,start,end", [
    ("0x10000000-0x10001000", 0x10000000, 0x10001000),
    ("0x10000000+0x1000", 0x10000000, 0x10001000),
    ("4096+4096", 4096, 8192),
    ("0x100000000+64M", 1 << 32, (1 << 32) + (64 << 20)),
    (" 0X7F0000000000 + 2G ", 0x7F0000000000, 0x7F0000000000 + (2 << 30)),
    ("0x1000-0x2_000", 0x1000, 0x2000),
])
def test_parse_range(text, start, end):
    r = O.parse_range(text)
    assert (r.start, r.end, r.size) == (start, end, end - start)
    assert r.label == f"0x{start:x}-0x{end:x}"


@pytest.mark.parametrize("text,why", [
    ("0x1000", "use START-END or START+SIZE"),
    ("", "use START-END or START+SIZE"),
    ("0x1000-", "use START-END or START+SIZE"),
    ("+4K", "use START-END or START+SIZE"),
    ("zz+4K", "start 'zz' is not a number"),
    ("0x1000+lots", "size 'lots' is not a number"),
    ("0x2000-0x1000", "it is empty"),
    ("0x1000+0", "it is empty"),
    ("0xffffffffffffffff+2", "beyond the 64-bit address space"),
])
def test_parse_range_errors(text, why):
    with pytest.raises(O.OddsError, match=re.escape(why)):
        O.parse_range(text)


# -- collisions ------------------------------------------------------------------

def test_fixed_address_program_collides_every_time(progs, capsys):
    """A non-PIE program linked at 0x10000000 is always there."""
    rep = O.odds([str(progs / "fixed")], N, [O.parse_range("0x10000000+0x1000"),
                                             O.parse_range(FAR)])
    hit, far = rep.ranges
    assert (hit.collided, hit.runs, far.collided) == (N, N, 0)
    assert hit.by_name() == [("fixed (the program)", N)]
    assert all(m.kind == "program" and m.path == str(progs / "fixed")
               for ms in hit.collisions.values() for m in ms)
    # fork by default, unless this process has other threads (pytest-xdist's
    # workers do): then the helper, as test_helper_when_this_process_has_threads
    # checks
    single = len(os.listdir("/proc/self/task")) == 1
    assert rep.exit_status == 1 and rep.spawn == ("fork" if single else "helper")
    _consistent(rep)
    _no_children()
    # every run was a process of its own, and every one is gone
    assert len({lay.pid for lay in rep.layouts}) == N
    assert not any(psutil.pid_exists(lay.pid) for lay in rep.layouts)

    assert O.main_odds([str(progs / "fixed")], N, ["0x10000000+0x1000"], None,
                       None, False) == 1
    out = capsys.readouterr().out
    assert f"collided in {N}/{N} runs (100.0%" in out
    assert f"in the way: fixed (the program) in {N}/{N} runs" in out


def test_far_range_never_collides(progs, capsys):
    rep = O.odds([str(progs / "pie")], N, [O.parse_range(FAR)])
    assert rep.ranges[0].collided == 0 and rep.exit_status == 0
    assert rep.aslr == O.aslr_setting()
    _consistent(rep)
    # the free ranges: page aligned, big enough, largest first, within the
    # user address space, and no run ever had a mapping there
    lo, hi = rep.user_space
    assert rep.free and rep.free_min_size == 64 << 20
    sizes = [b - a for a, b in rep.free]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 64 << 20
    for a, b in rep.free:
        assert a % O.PAGE == 0 and b % O.PAGE == 0 and lo <= a < b <= hi
        for lay in rep.layouts:
            assert not any(m.start < b and a < m.end for m in lay.maps)
    far = O.parse_range(FAR)
    assert any(a <= far.start and far.end <= b for a, b in rep.free)

    # a range taken from the free ranges of these runs: 0/N again
    a, _ = rep.free[0]
    assert O.main_odds([str(progs / "pie")], N, [f"0x{a:x}+64M"], None, None,
                       False) == 0
    out = capsys.readouterr().out
    assert f"collided in 0/{N} runs (0.0%" in out and "in the way" not in out
    assert f"never mapped in any of the {N} runs" in out


def test_prefix_arena_is_the_default_range(primary, runtime_dir, capsys):
    arena = primary.config["arena"]
    base, end = arena["base"], arena["base"] + arena["max"]   # the range it grows into
    assert O.arena_range(primary.prefix, runtime_dir) == (base, end)

    code = O.main_odds(["/bin/true"], N, [], primary.prefix, runtime_dir, True)
    rep = json.loads(capsys.readouterr().out)
    (r,) = rep["ranges"]
    assert r["label"] == f"arena of prefix {primary.prefix!r} 0x{base:x}-0x{end:x}"
    assert (r["start"], r["end"], r["runs"]) == (base, end, N)
    assert 0 <= r["collided"] <= N and code == (1 if r["collided"] else 0)
    assert rep["exit_status"] == code and rep["runs"] == N
    assert len(r["collisions"]) == r["collided"]
    for c in r["collisions"]:
        assert c["mappings"] and all(m["start"] < end and base < m["end"]
                                     for m in c["mappings"])
    assert rep["aslr"]["randomize_va_space"] == O.aslr_setting()

    # the same, in process, with the mapping lists checked against each run
    rep = O.odds(["/bin/true"], N, [O.arena_range(primary.prefix, runtime_dir)])
    _consistent(rep)
    assert 0 <= rep.ranges[0].collided <= N

    assert O.main_odds(["/bin/true"], 2, None, primary.prefix, runtime_dir, False) in (0, 1)
    out = capsys.readouterr().out
    from forkhost.primary import human_size
    assert (f"arena of prefix {primary.prefix!r} 0x{base:x}-0x{end:x} "
            f"({human_size(end - base)}): collided in ") in out
    assert "/2 runs" in out


# -- stopped before main -------------------------------------------------------------

def test_program_is_stopped_before_main(progs, tmp_path):
    prog = progs / "withlib"
    main_file, ctor_file = tmp_path / "main-ran", tmp_path / "ctor-ran"
    env = dict(os.environ, ODDS_CTOR_FILE=str(ctor_file))
    # run normally, the program writes both files ...
    subprocess.run([prog, main_file], env=env, check=True, timeout=30)
    assert main_file.exists() and ctor_file.exists()
    main_file.unlink()
    ctor_file.unlink()
    # ... under odds, neither: its libraries are mapped, its own code never ran
    rep = O.odds([str(prog), str(main_file)], N, [O.parse_range(FAR)], env=env)
    assert not main_file.exists() and not ctor_file.exists()
    for lay in rep.layouts:
        names = {m.name for m in lay.maps}
        assert {"withlib (the program)", "libodds_lib.so", "libc.so.6",
                "ld-linux-x86-64.so.2 (the dynamic loader)", "[stack]"} <= names
        # the entry point is in the program's executable mapping
        assert any(m.kind == "program" and "x" in m.perms and m.start <= lay.entry < m.end
                   for m in lay.maps)
    _no_children()


def test_helper_when_this_process_has_threads(progs, tmp_path):
    """With another thread running, the child is a posix_spawn'ed helper,
    not a fork of this process; same result."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        main_file = tmp_path / "main-ran"
        rep = O.odds([str(progs / "fixed"), str(main_file)], 3,
                     [O.parse_range("0x10000000+0x1000")])
    finally:
        stop.set()
        t.join()
    assert rep.spawn == "helper" and rep.ranges[0].collided == 3
    assert not main_file.exists()
    rep = O.odds([str(progs / "fixed")], 2, [(0x10000000, 0x10001000)], spawn="helper")
    assert rep.spawn == "helper" and rep.ranges[0].collided == 2
    _no_children()


def test_aslr_off_is_reported():
    """Under setarch -R every run has the same layout, and the report says so."""
    if shutil.which("setarch") is None:
        pytest.skip("no setarch")
    code = ("from forkhost.odds import main_odds; import sys; "
            f"sys.exit(main_odds(['/bin/true'], 4, [{FAR!r}], None, None, False))")
    r = subprocess.run(["setarch", "-R", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60, cwd="/")
    if "personality" in r.stderr or "setarch" in r.stderr:
        pytest.skip(f"setarch -R refused here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert "1 distinct layout in 4 runs" in r.stdout
    assert "warning: this process runs with ASLR disabled" in r.stdout


def test_script_is_measured_through_its_interpreter(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\ntouch \"$1\"\n")
    script.chmod(0o755)
    rep = O.odds([str(script), str(tmp_path / "ran")], 2, [O.parse_range(FAR)])
    assert any("is not an ELF executable" in w for w in rep.warnings)
    assert not (tmp_path / "ran").exists()


# -- bad input and programs that never get there -------------------------------------------

def _one_error_line(capsys, code, *needles):
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("forkhost attach --odds: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("text,why", [
    ("0x1000", "invalid range '0x1000': use START-END or START+SIZE"),
    ("0x10000000+many", "size 'many' is not a number"),
    ("0x2000-0x1000", "it is empty"),
])
def test_malformed_range_exits_2(capsys, text, why):
    _one_error_line(capsys, O.main_odds(["/bin/true"], 3, [FAR, text], None, None, False),
                    why)


def test_bad_programs_exit_2(capsys, tmp_path, runtime_dir):
    missing = tmp_path / "missing"
    _one_error_line(capsys, O.main_odds([str(missing)], 3, [FAR], None, None, False),
                    f"cannot start {str(missing)!r}: no such file")
    _one_error_line(capsys, O.main_odds(["no-such-odds-cmd"], 3, [FAR], None, None, False),
                    "not found in PATH")
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    _one_error_line(capsys, O.main_odds([str(plain)], 3, [FAR], None, None, False),
                    "not executable")
    _one_error_line(capsys, O.main_odds([str(tmp_path)], 3, [FAR], None, None, False),
                    "is a directory")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF" + b"\0" * 60)
    garbage.chmod(0o755)
    _one_error_line(capsys, O.main_odds([str(garbage)], 3, [FAR], None, None, False),
                    "cannot start", "Exec format error")
    _one_error_line(capsys, O.main_odds(["/bin/true"], 0, [FAR], None, None, False),
                    "invalid number of runs 0")
    _one_error_line(capsys, O.main_odds([], 3, [FAR], None, None, False),
                    "no program given")
    # no --range and no primary on the prefix
    _one_error_line(capsys, O.main_odds(["/bin/true"], 3, [], "t", runtime_dir, False),
                    "no range: prefix 't' has no primary", "give --range")
    _one_error_line(capsys, O.main_odds(["/bin/true"], 3, [], "a/b", runtime_dir, False),
                    "invalid prefix")
    _no_children()


def test_program_that_ends_before_its_entry_point(progs, capsys):
    # the dynamic loader cannot find a DT_NEEDED library: exit 127
    line = _one_error_line(capsys, O.main_odds([str(progs / "nolib")], 3, [FAR], None,
                                               None, False),
                           "exited with status 127 before reaching its entry point",
                           "libodds_lib.so")
    assert "error while loading shared libraries" in line
    # a library constructor dies by a signal (passed on through ptrace)
    with pytest.raises(O.OddsError, match="was killed by SIGABRT before reaching its "
                                          "entry point"):
        O.odds([str(progs / "withlib")], 3, [], env=dict(os.environ, ODDS_LIB_ABORT="1"))
    _no_children()


def test_program_that_hangs_before_its_entry_point_is_killed(progs):
    with pytest.raises(O.OddsError, match="did not reach its entry point within 0.5s"):
        O.odds([str(progs / "withlib")], 2, [], env=dict(os.environ, ODDS_LIB_HANG="1"),
               timeout=0.5)
    _no_children()
