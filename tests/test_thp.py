"""Transparent huge pages for the primary's big private memory before the
template fork (forkhost/_thp.py, csrc/lib/thp.c): what the primary records
in config.json, that the memory is huge afterwards and its data intact, and
FORKHOST_THP=0.  How much it saves a fork: benchmarks/big_preload.py."""

from __future__ import annotations

import os

import pytest

from fhtest import FIXTURES, PrimaryProc


def start(runtime_dir, **env) -> PrimaryProc:
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), **env)
    return PrimaryProc(runtime_dir, args=("--preload", "thp_preload"), env=env)


def anon_huge_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


def thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unknown"


def test_primary_collapses_its_big_preload(runtime_dir):
    p = start(runtime_dir)
    try:
        thp = p.config["thp"]
        assert thp["enabled"] and thp["min_bytes"] == 64 << 20
        if "unsupported" in thp:
            pytest.skip(thp["unsupported"])
        assert thp["regions"] >= 1 and thp["region_bytes"] >= 80 << 20
        assert (thp["collapsed_bytes"] + thp["failed_bytes"] + thp["sparse_bytes"]
                == thp["aligned_bytes"])
        if thp["failed_bytes"]:
            pytest.skip(f"the kernel collapsed {thp['collapsed_bytes']} bytes, refused "
                        f"{thp['failed_bytes']} ({thp.get('first_error')})")
        assert thp["collapsed_bytes"] >= 76 << 20
        assert anon_huge_bytes(p.pid) >= 76 << 20
        r = p.run("thp_preload:check", cwd=FIXTURES)
        assert r.returncode == 0, r.stderr.decode()
    finally:
        code, _, err = p.stop()
    assert code == 0, err


def test_forkhost_thp_0_leaves_memory_alone(runtime_dir):
    p = start(runtime_dir, FORKHOST_THP="0")
    try:
        assert p.config["thp"] == {"enabled": False, "why": "FORKHOST_THP=0"}
        if thp_mode() != "always":       # else the faults were huge already
            assert anon_huge_bytes(p.pid) < 64 << 20
        r = p.run("thp_preload:check", cwd=FIXTURES)
        assert r.returncode == 0, r.stderr.decode()
    finally:
        code, _, err = p.stop()
    assert code == 0, err
