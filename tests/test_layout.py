"""The layout tools against real processes: ``forkhost verify`` (a
secondary holds the template's mappings), ``forkhost maps`` (two layouts
side by side), ``forkhost ptr`` (what an address is, where it is valid and
callable), and IPC members in ``forkhost ps``."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys

import pytest

from fhtest import (FIXTURES, RUNNER, LineReader, build_native_so, leaves_nothing,
                    module_primary, reap)
from shmtest import build_shm_native

PY = sys.executable


def fh(env, *args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("cwd", FIXTURES)
    return subprocess.run([PY, "-m", "forkhost", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    out = tmp_path_factory.mktemp("layout_native")
    shm = build_shm_native(out)
    so = build_native_so(out)
    pie = out / "pie_sleeper"
    src = out / "pie_sleeper.c"
    src.write_text('#include <stdio.h>\n#include <unistd.h>\n'
                   'int main(void) { puts("ready"); fflush(stdout); '
                   'for (;;) pause(); }\n')
    subprocess.run(["cc", "-fPIE", "-pie", "-rdynamic", "-o", str(pie), str(src)],
                   check=True)
    return {"hashfn": shm.hashfn, "so": so, "pie": str(pie), "dir": out}


@pytest.fixture(scope="module")
def _module_prim(tmp_path_factory, native):
    backing = tmp_path_factory.mktemp("layout_backing") / "backing"
    backing.write_bytes(b"\0" * 4 * mmap.PAGESIZE)
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), FH_TEST_HASHFN=native["hashfn"],
               FH_TEST_LAYOUT_FILE=str(backing))
    with module_primary(tmp_path_factory, ("--preload", "layout_preload"), env) as p:
        yield p


@pytest.fixture
def prim(_module_prim):
    """The primary with layout_preload, shared by the module: the tests
    only launch secondaries (which change their own mappings at most) and
    look at them, and end them (see started)."""
    with leaves_nothing(_module_prim) as p:
        yield p


class Secondary:
    """A secondary started with forkhost-run that prints a first line
    (ready, or JSON) and then sleeps until the test ends it."""

    def __init__(self, prim, *argv, cwd=FIXTURES):
        self.proc = subprocess.Popen([RUNNER, *map(str, argv)], env=prim.env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.first = LineReader(self.proc.stdout).readline().decode()
        info = fh(prim.env, "ps", "--json")
        rows = json.loads(info.stdout)
        self.pid = next(r["pid"] for r in rows
                        if r["role"] == "secondary" and r["client_pid"] == self.proc.pid)

    def close(self):
        reap(self.proc)


@pytest.fixture
def started():
    running = []
    yield running
    for s in running:
        s.close()


def launch(prim, started, *argv, **kw) -> Secondary:
    s = Secondary(prim, *argv, **kw)
    started.append(s)
    return s


# -- verify ---------------------------------------------------------------

@pytest.mark.heavy
def test_verify_holds_for_every_entry_form(prim, native, started, tmp_path):
    script = tmp_path / "sleep_script.py"
    script.write_text("import fhfix, sys\nfhfix.sleeper(sys.argv)\n")
    forms = [("fhfix:sleeper",), (script,), ("-m", "layoutfix_main"),
             (f"{native['so']}:sleeper",), (native["pie"],)]
    pids = []
    for form in forms:
        s = launch(prim, started, *form)
        assert s.first == "ready\n", form
        pids.append(s.pid)
        r = fh(prim.env, "verify", s.pid)
        assert r.returncode == 0, (form, r.stdout, r.stderr)
        assert r.stdout.startswith(f"OK   {s.pid} "), r.stdout
        assert "at the same addresses with the same backing" in r.stdout
    r = fh(prim.env, "verify", "--all", "--json")
    assert r.returncode == 0, r.stdout
    out = json.loads(r.stdout)
    assert sorted(v["pid"] for v in out) == sorted(pids)
    assert all(v["holds"] and v["secondary"] and v["checked"] > 50 for v in out)


@pytest.mark.parametrize("how", ["unmap", "remap"])
def test_verify_names_what_a_secondary_changed(prim, started, tmp_path, how):
    backing = prim.env["FH_TEST_LAYOUT_FILE"]
    other = tmp_path / "other"
    other.write_bytes(b"\1" * mmap.PAGESIZE)
    args = [other] if how == "remap" else []
    healthy = launch(prim, started, "layoutfix:where")
    s = launch(prim, started, f"layoutfix:{how}", *args)
    assert s.first == "ready\n"
    addr = json.loads(healthy.first)["mapped"]
    page = f"{addr + mmap.PAGESIZE:x}-{addr + 2 * mmap.PAGESIZE:x}"
    r = fh(prim.env, "verify", s.pid, healthy.pid)
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"FAIL {s.pid} ") and "1 of the template's" in lines[0]
    word = "missing " if how == "unmap" else "remapped"
    assert lines[1].strip().startswith(f"{word} {page}: the template maps "), lines
    assert backing in lines[1]
    if how == "remap":
        assert str(other) in lines[1]
    assert any(ln.startswith(f"OK   {healthy.pid} ") for ln in lines), lines
    # --all: the same verdicts, and the failing one makes the status 1.
    r = fh(prim.env, "verify", "--all", "--json")
    verdicts = {v["pid"]: v for v in json.loads(r.stdout)}
    assert r.returncode == 1 and not verdicts[s.pid]["holds"]
    assert verdicts[healthy.pid]["holds"]


def test_verify_refuses_bad_input(prim):
    r = fh(prim.env, "verify")
    assert r.returncode == 2 and "name secondaries by pid, or --all" in r.stderr
    r = fh(prim.env, "verify", "x1")
    assert r.returncode == 2 and r.stderr == "forkhost verify: not a process id: 'x1'\n"
    env = dict(prim.env, FORKHOST_PREFIX="nobody")
    r = fh(env, "verify", "--all")
    assert r.returncode == 2 and "no forkhost primary for prefix 'nobody'" in r.stderr


def loads_elsewhere(library: str) -> subprocess.Popen:
    """A process unrelated to the prefix that loads library (at an address
    of its own) and waits for its stdin to close."""
    return subprocess.Popen([PY, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1]); "
                             "print('ready', flush=True); sys.stdin.read()", library],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


# -- maps -----------------------------------------------------------------

def test_maps_secondary_and_template_are_identical(prim, started):
    s = launch(prim, started, "fhfix:sleeper")
    r = fh(prim.env, "maps", prim.template_pid, s.pid)
    assert r.returncode == 0, r.stdout
    assert "[arena t]" in r.stdout and "moved" not in r.stdout
    out = json.loads(fh(prim.env, "maps", prim.template_pid, s.pid, "--json").stdout)
    status = {g["module"]: g["status"] for g in out["groups"]}
    assert status["[arena t]"] == "shared"
    assert status[prim.env["FH_TEST_HASHFN"]] == "shared"
    assert set(status.values()) <= {"shared", "private"}, status


def test_maps_of_two_unrelated_processes(prim, native):
    other = loads_elsewhere(native["hashfn"])
    try:
        assert LineReader(other.stdout).readline() == b"ready\n"
        out = json.loads(fh(prim.env, "maps", prim.template_pid, other.pid,
                            "--json").stdout)
        status = {g["module"]: g["status"] for g in out["groups"]}
        assert status["[arena t]"] == "only in A"
        assert status[native["hashfn"]] in ("moved", "shared")
        aslr = open("/proc/sys/kernel/randomize_va_space").read().strip()
        if aslr != "0":
            assert status[native["hashfn"]] == "moved"
        r = fh(prim.env, "maps", prim.template_pid, other.pid)
        assert r.returncode == 1
        assert "only in A" in r.stdout
    finally:
        other.stdin.close()
        reap(other)


def test_maps_refuses_a_missing_process(prim):
    r = fh(prim.env, "maps", os.getpid(), str(2 ** 22 + 7))
    assert r.returncode == 2 and r.stderr == f"forkhost maps: no process {2 ** 22 + 7}\n"


# -- ptr ------------------------------------------------------------------

def test_ptr_classifies_and_checks_each_process(prim, native, started):
    s = launch(prim, started, "layoutfix:where")
    addrs = json.loads(s.first)
    # A function of a preloaded module: the same code everywhere.
    r = fh(prim.env, "ptr", hex(addrs["function"]))
    assert r.returncode == 0, r.stdout
    assert f"{native['hashfn']} + 0x" in r.stdout and "(fix_hash)" in r.stdout
    assert r.stdout.count("callable: the same code") == 2       # template, secondary
    # An object in the arena: its memzone.
    r = fh(prim.env, "ptr", hex(addrs["zone"] + 16))
    assert "[arena t] + 0x" in r.stdout and "memzone 'layout-zone' + 0x10" in r.stdout
    assert r.returncode == 0 and "valid: the same bytes" in r.stdout
    # The secondary's heap: valid address, private contents.
    r = fh(prim.env, "ptr", hex(addrs["heap"]), "--pid", s.pid)
    assert f"{s.pid} " in r.stdout and "[heap] + 0x" in r.stdout
    # A stack address.
    stack = next(ln for ln in open(f"/proc/{s.pid}/maps") if ln.endswith("[stack]\n"))
    top = int(stack.split("-")[1].split()[0], 16) - 64
    r = fh(prim.env, "ptr", hex(top), "--pid", s.pid, "--pid", prim.template_pid)
    assert "[stack] + 0x" in r.stdout
    assert "valid address, private memory" in r.stdout


def test_ptr_says_not_callable_where_the_module_sits_elsewhere(prim, native, started):
    s = launch(prim, started, "layoutfix:where")
    fn = json.loads(s.first)["function"]
    other = loads_elsewhere(native["hashfn"])
    try:
        assert LineReader(other.stdout).readline() == b"ready\n"
        r = fh(prim.env, "ptr", hex(fn), "--pid", s.pid, "--pid", other.pid)
        lines = r.stdout.splitlines()
        verdict = next(ln for ln in lines if ln.startswith(f"  in {other.pid} "))
        mine = next(ln for ln in lines if ln.startswith(f"  {other.pid} "))
        if "(fix_hash)" in mine:
            pytest.fail(f"the other process has the module at the same address: {lines}")
        assert verdict.endswith("not callable"), lines
        assert f"it maps {native['hashfn']} elsewhere" in verdict
        assert r.returncode == 1
    finally:
        other.stdin.close()
        reap(other)


def test_ptr_refuses_a_malformed_address(prim):
    r = fh(prim.env, "ptr", "0xzz")
    assert r.returncode == 2
    assert r.stderr == "forkhost ptr: not an address: '0xzz' (use 0x... or decimal)\n"


# -- ps: IPC members --------------------------------------------------------

def test_ps_lists_an_ipc_member_that_is_not_a_secondary(prim):
    code = ("import sys; from forkhost import ipc; ipc.start(prefix=\"t\"); "
            "print('ready', flush=True); sys.stdin.read(); ipc.stop()")
    member = subprocess.Popen([PY, "-c", code], env=prim.env, cwd=FIXTURES,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert LineReader(member.stdout).readline() == b"ready\n"
        rows = json.loads(fh(prim.env, "ps", "--json").stdout)
        mine = [r for r in rows if r["pid"] == member.pid]
        assert [(r["role"], r["ipc"]) for r in mine] == [("member", True)], rows
        assert all(set(r) == set(rows[0]) for r in rows)      # every column
        text = fh(prim.env, "ps").stdout
        line = next(ln for ln in text.splitlines() if f" {member.pid} " in ln)
        assert line.split()[1] == "member" and " yes " in line
    finally:
        member.stdin.close()
        reap(member)
