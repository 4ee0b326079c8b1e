"""An arena that grows (docs/shm.md, The arena): --arena-size is where it
starts, --arena-max the range every process maps from the start; memzones
past the current size grow it, from any secondary, while other secondaries
read and write what it held; NoSpaceError only at the maximum.

The checks run in secondaries (tests/fixtures/shm_free_fix.py); the test
process never maps the arena.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fhtest import (FIXTURES, LineReader, PrimaryProc, free_huge_pages, more_huge_pages,
                    reap)
from shmtest import arena_primary, fix_output

FIX = "shm_free_fix"
MIB = 1 << 20


@pytest.fixture
def primary(runtime_dir):
    yield from arena_primary(runtime_dir, "8M", "72M")


def sec(primary, name, *args, expect=0):
    return fix_output(primary, f"{FIX}:{name}", *args, expect=expect)


def test_config_and_ready_line_show_start_and_maximum(primary):
    arena = primary.config["arena"]
    assert arena["max"] == 72 * MIB and arena["size"] <= 8 * MIB + arena["page_size"]
    assert "(grows to 72 MiB)" in primary.ready
    size, top = map(int, sec(primary, "arena_sizes").split())
    assert size == arena["size"] and top == 72 * MIB


def test_arena_grows_while_secondaries_use_old_objects(primary):
    size0, top = map(int, sec(primary, "grow_setup").split())
    users = [primary.popen(f"{FIX}:grow_user", i, cwd=FIXTURES, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for u in users:     # each is in its loop before the arena grows
            assert LineReader(u.stdout).readline() == b"using\n"
        n, start, grown, top2 = map(int, sec(primary, "grow_fill", 4).split())
        assert start == size0 and size0 < grown <= top == top2
        # past what the maximum leaves, nothing more fit
        assert n * 4 * MIB <= top and (n + 2) * 4 * MIB > top - size0
        assert sec(primary, "grow_check", n) == "ok\n"     # sets the stop flag
        for u in users:
            out, err = u.communicate(timeout=120)
            assert u.returncode == 0, err
            assert int(out.split()[-1]) > 0
    finally:
        reap(*users)
    # a secondary started now sees the grown size; freed bytes are reused
    size, _ = map(int, sec(primary, "arena_sizes").split())
    assert size == grown
    assert sec(primary, "grow_free_reuse") == "ok\n"


def test_arena_max_below_size_is_refused(runtime_dir):
    r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--prefix", "bad",
                        "--runtime-dir", runtime_dir, "--arena-size", "64M",
                        "--arena-max", "32M"], capture_output=True, text=True,
                       cwd=FIXTURES, timeout=60)
    assert r.returncode != 0
    assert "--arena-max must be at least --arena-size" in r.stderr, r.stderr


def test_bad_arena_max_is_refused(runtime_dir):
    r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--prefix", "bad",
                        "--runtime-dir", runtime_dir, "--arena-max", "lots"],
                       capture_output=True, text=True, cwd=FIXTURES, timeout=60)
    assert r.returncode != 0
    assert "invalid size 'lots'" in r.stderr, r.stderr


def test_default_maximum(runtime_dir):
    p = PrimaryProc(runtime_dir, args=("--arena-size", "8M"))
    try:
        from forkhost import _wire
        assert p.config["arena"]["max"] == _wire.DEFAULT_ARENA_MAX
        out = p.run("shm_free_fix:arena_sizes", cwd=FIXTURES, capture_output=True)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.split()[1]) == _wire.DEFAULT_ARENA_MAX
    finally:
        code, _, err = p.stop()
    assert code == 0, err
    json.dumps(p.config)


# -- huge pages ----------------------------------------------------------------

@pytest.fixture
def huge_pool():
    """16 more huge pages in the pool for the test, removed after (skips
    where that cannot be: not root, no huge pages)."""
    with more_huge_pages(16) as size:
        yield size


@pytest.mark.exclusive          # it holds the machine's free huge pages
def test_huge_page_arena_grows_and_a_short_pool_is_enomem(runtime_dir, huge_pool):
    """--huge-pages always: the arena grows in huge pages (fallocate) while
    the pool lasts; when it runs short the reserve fails with ENOMEM, not
    NoSpaceError and not a SIGBUS at the first touch; once pages are free
    again the arena grows again."""
    import errno
    import mmap
    import os
    assert huge_pool == 2 * MIB, "the test counts 2 MiB pages"
    p = PrimaryProc(runtime_dir, args=("--arena-size", "4M", "--arena-max", "64G",
                                       "--huge-pages", "always"))
    hold = None
    grower = None
    try:
        assert p.config["arena"]["huge_pages"] and p.config["arena"]["page_size"] == huge_pool
        # hold every free page but 8 (16 MiB), as another program would
        spare = 8
        n = free_huge_pages() - spare
        fd = os.memfd_create("fhtest-hold", os.MFD_CLOEXEC | os.MFD_HUGETLB)
        try:
            os.ftruncate(fd, n * huge_pool)
            hold = mmap.mmap(fd, n * huge_pool)      # MAP_SHARED: reserves them
        finally:
            os.close(fd)
        grower = p.popen(f"{FIX}:grow_until_short", cwd=FIXTURES, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err_no, kind, count, size = grower.stdout.readline().split()
        assert (int(err_no), kind) == (errno.ENOMEM, "ShmError")
        assert int(count) >= 1 and int(size) <= 64 * MIB
        hold.close()
        hold = None
        grower.stdin.write("more\n")
        grower.stdin.flush()
        out, err = grower.communicate(timeout=60)
        assert grower.returncode == 0, err
        assert out == "more ok\n"
    finally:
        if hold is not None:
            hold.close()
        reap(grower)
        code, _, err = p.stop()
    assert code == 0, err
