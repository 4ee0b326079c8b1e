"""Classic attach: a process that did not descend from the template maps
the arena at the primary's address (MAP_FIXED_NOREPLACE), or fails naming
the mapping in the way.  The attaching processes are plain ``python``
subprocesses (tests/fixtures/shm_attach_probe.py), never secondaries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fhtest import FIXTURES
from shmtest import py, shm_primary

PROBE = str(FIXTURES / "shm_attach_probe.py")


@pytest.fixture
def primary(runtime_dir, shm_native):
    p = shm_primary(runtime_dir, shm_native)
    yield p
    code, _, err = p.stop()
    assert code == 0, err


def probe(primary, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, PROBE, args[0], primary.prefix,
                           primary.runtime_dir, *map(str, args[1:])],
                          capture_output=True, timeout=60, cwd=FIXTURES)


def attach_ok(primary, shm_native) -> dict:
    """Run the probe; a fresh process whose own ASLR layout happens to
    overlap the arena (rare) is retried."""
    for _ in range(5):
        r = probe(primary, "ok", shm_native.hashfn)
        if r.returncode != 2:
            break
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_attach_maps_the_arena_at_the_primary_address(primary, shm_native):
    py(primary, "mz_write", "t.zone", 1000, 7)
    py(primary, "mz_write", "t.reply", 256, 1)
    py(primary, "hash_create", "t.hash", 1024, 16)
    py(primary, "hash_add", "t.hash", 0, 100)
    py(primary, "hash_create", "t.fn", 1024, 16, shm_native.hashfn, "fix_hash")
    py(primary, "hash_add", "t.fn", 0, 100)

    got = attach_ok(primary, shm_native)
    arena = primary.config["arena"]
    # arena(): the bytes usable now; the attachment maps the whole range the
    # arena can grow into
    assert got["arena"] == [arena["base"], arena["size"]]
    assert [got["base"], got["size"]] == [arena["base"], arena["max"]]
    assert {"t.zone", "t.reply", "HT_t.hash", "HT_t.fn"} <= set(got["zones"])
    assert got["zone_ok"] and got["builtin_found"]
    # libforkhost.so itself sits elsewhere here (ASLR): data pointers into
    # the arena work, function pointers from the prefix's processes do not
    assert got["lib_primary"] == primary.config["library"]["base"]
    hashfn = os.path.realpath(shm_native.hashfn)
    assert "is not loaded in this process" in got["fn_unloaded"]
    assert hashfn in got["fn_unloaded"]
    if got["fn_loaded"][0] != "worked":      # the same address only by chance
        msg = got["fn_loaded"]
        assert hashfn in msg and "in this process" in msg and "is loaded at 0x" in msg
    assert got["with_hash"] == (1 * 0x9E3779B97F4A7C15 + 1) % 2**64
    # what the attached process wrote, a secondary sees
    py(primary, "mz_check", "t.reply", 256, 9)
    py(primary, "hash_check", "t.hash", 0, 100, 1)
    r = py(primary, "hash_check", "t.hash", 10**6, 1, 1, expect=1)   # data 42, not data_of
    assert b"AssertionError" in r.stderr


def test_attach_fails_naming_the_mapping_in_the_way(primary):
    r = probe(primary, "taken")
    assert r.returncode == 2, r.stderr.decode()
    got = json.loads(r.stdout)
    page = got["page"]
    assert got["errno"] == 17 and got["arena"] is None    # nothing half-mapped
    assert f"is taken by: {page:x}-{page + 4096:x} r--p" in got["error"], got["error"]
    base = primary.config["arena"]["base"]
    assert f"0x{base:x}-" in got["error"]


def test_cli_attach_lists_memzones(primary):
    py(primary, "mz_write", "t.listed", 4096, 3)
    env = dict(os.environ)
    for _ in range(5):
        r = subprocess.run(["forkhost", "attach", "--prefix", primary.prefix,
                            "--runtime-dir", primary.runtime_dir],
                           capture_output=True, text=True, timeout=60, env=env)
        if "is taken by" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    base = primary.config["arena"]["base"]
    assert f"at 0x{base:x} mapped here" in r.stdout
    assert "libforkhost.so: at 0x" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if "t.listed" in ln)
    assert line.split()[-2:] == ["4096", "64"]


def test_cli_attach_reports_the_conflict(primary):
    r = probe(primary, "cli-taken")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.startswith("forkhost attach: cannot attach to prefix 't'"), err
    assert "is taken by: " in err and err.count("\n") == 1


def test_cli_attach_without_a_primary(runtime_dir):
    r = subprocess.run(["forkhost", "attach", "--prefix", "nobody",
                        "--runtime-dir", runtime_dir],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "no forkhost primary" in r.stderr and "nobody" in r.stderr
