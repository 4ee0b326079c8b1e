"""The arena's pages: huge pages when enough of the reserved pool is free
(not taken by other mappings), normal pages otherwise, and the ready line
says which and why.  These tests size the huge page pool
(/proc/sys/vm/nr_hugepages) and give it back: they skip, with the reason,
where that cannot be done (not root, no huge pages)."""

from __future__ import annotations

import mmap
import os
import re
import subprocess
import sys

import pytest

from fhtest import (FIXTURES, HERE, NR_HUGEPAGES, PrimaryProc, free_huge_pages,
                    meminfo, more_huge_pages)

# The pool and its free count are the machine's: no other test may run meanwhile.
pytestmark = pytest.mark.exclusive

EXTRA = 40            # pages this test adds to the pool; a 64 MiB arena needs 32


def _read_nr() -> int:
    with open(NR_HUGEPAGES) as f:
        return int(f.read())


def _hugepage_size() -> int:
    return meminfo("Hugepagesize") * 1024


@pytest.fixture
def huge_pool():
    """EXTRA more huge pages in the pool for the test, removed after (skips
    where that cannot be: not root, no huge pages)."""
    with more_huge_pages(EXTRA) as size:
        yield size


@pytest.fixture
def huge_pages_taken(huge_pool):
    """Every free huge page reserved by a mapping of this process, as
    another program (DPDK, a database) would hold them."""
    n = free_huge_pages()
    fd = os.memfd_create("fhtest-hold", os.MFD_CLOEXEC | os.MFD_HUGETLB)
    try:
        os.ftruncate(fd, n * huge_pool)
        hold = mmap.mmap(fd, n * huge_pool)   # MAP_SHARED: reserves them all
    finally:
        os.close(fd)
    assert free_huge_pages() == 0
    yield n
    hold.close()


def _arena_kernel_page_size(pid: int, base: int) -> int:
    """KernelPageSize of pid's mapping at base, from /proc/PID/smaps."""
    with open(f"/proc/{pid}/smaps") as f:
        inside = False
        for line in f:
            m = re.match(r"([0-9a-f]+)-[0-9a-f]+ ", line)
            if m:
                inside = int(m.group(1), 16) == base
            elif inside and line.startswith("KernelPageSize:"):
                return int(line.split()[1]) * 1024
    pytest.fail(f"no mapping at 0x{base:x} in /proc/{pid}/smaps")


def _launch_reads_arena(p: PrimaryProc) -> None:
    r = p.run("fhfix:arena", cwd=FIXTURES)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout, 16) == p.config["arena"]["base"]


def test_arena_on_huge_pages_when_enough_are_free(runtime_dir, huge_pool):
    p = PrimaryProc(runtime_dir, args=["--arena-size", "64M"])
    try:
        assert p.ready.rstrip().endswith(f", {huge_pool >> 20} MiB huge pages"), p.ready
        assert _arena_kernel_page_size(p.pid, p.config["arena"]["base"]) == huge_pool
        _launch_reads_arena(p)
    finally:
        code, _, err = p.stop()
    assert code == 0, err


def _shortfall() -> str:
    size = _hugepage_size()
    return (f"{(64 << 20) // size} free {size >> 20} MiB huge pages needed, "
            f"0 of {_read_nr()} free")


def test_arena_falls_back_when_the_huge_pages_are_taken(runtime_dir, huge_pages_taken):
    """Reserved pages exist but another mapping holds them: auto mode uses
    normal pages and says why, instead of failing."""
    p = PrimaryProc(runtime_dir, args=["--arena-size", "64M"])
    try:
        assert p.ready.rstrip().endswith(f", 4 KiB pages ({_shortfall()})"), p.ready
        assert _arena_kernel_page_size(p.pid, p.config["arena"]["base"]) == 4096
        _launch_reads_arena(p)
    finally:
        code, _, err = p.stop()
    assert code == 0, err


def test_huge_pages_always_refuses_clearly_without_them(runtime_dir, huge_pages_taken):
    env = dict(os.environ, FORKHOST_RUNTIME_DIR=runtime_dir)
    r = subprocess.run([sys.executable, "-m", "forkhost", "primary", "--prefix", "hp",
                        "--arena-size", "64M", "--huge-pages", "always"],
                       capture_output=True, text=True, env=env, cwd=str(HERE), timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    assert (f"cannot create a 64 MiB arena: --huge-pages always: {_shortfall()}"
            in r.stderr), r.stderr
    assert not os.path.exists(os.path.join(runtime_dir, "hp"))


def _doctor_huge_line() -> str:
    r = subprocess.run([sys.executable, "-m", "forkhost", "doctor"], capture_output=True,
                       text=True, cwd=str(HERE), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return next(l for l in r.stdout.splitlines() if "huge pages" in l)


def test_doctor_counts_free_huge_pages_as_the_arena_does(huge_pool):
    line = _doctor_huge_line()
    assert line.startswith("OK") and f"{free_huge_pages()} free huge pages" in line, line


def test_doctor_says_when_the_huge_pages_are_all_held(huge_pages_taken):
    line = _doctor_huge_line()
    assert line.startswith("INFO") and "none free (other mappings hold them)" in line, line
