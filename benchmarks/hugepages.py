"""2 MiB huge pages for the DPDK side of a benchmark: reserve them and mount
hugetlbfs for the run, and undo exactly what was done, in reverse, after
it, including the page files and runtime directory DPDK leaves behind.
Root only (the caller checks)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

HUGE_DIR = "/sys/kernel/mm/hugepages/hugepages-2048kB"
HUGE_NR = f"{HUGE_DIR}/nr_hugepages"
HUGE_FREE = f"{HUGE_DIR}/free_hugepages"
HUGE_RESV = f"{HUGE_DIR}/resv_hugepages"
HUGE_SURPLUS = f"{HUGE_DIR}/surplus_hugepages"
HUGE_MNT = "/dev/hugepages"
DPDK_RUN_DIR = "/var/run/dpdk"   # as root; <prefix>/ holds its sockets


def read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def write_nr(pages: int) -> None:
    with open(HUGE_NR, "w") as f:
        f.write(str(pages))


def mounted_hugetlbfs(path: str) -> bool:
    with open("/proc/mounts") as f:
        return any(ln.split()[1:3] == [path, "hugetlbfs"] for ln in f)


class HugePages:
    """``with HugePages(pages, dpdk_prefix):`` at least ``pages`` reserved
    and hugetlbfs mounted at HUGE_MNT; on exit the page files of DPDK's
    --file-prefix, its runtime directory, the mount and the reservation
    are undone (those we made)."""

    def __init__(self, pages: int, dpdk_prefix: str) -> None:
        self.pages = pages
        self.prefix = dpdk_prefix
        self.old_nr: int | None = None
        self.old_surplus = 0
        self.mounted = False
        self.made_dir = False
        # DPDK creates its runtime dir's parent too.
        self.had_run_dir = os.path.isdir(DPDK_RUN_DIR)

    def __enter__(self) -> "HugePages":
        try:
            self.old_surplus = read_int(HUGE_SURPLUS)
            self.old_nr = read_int(HUGE_NR)
            if self.old_nr < self.pages:
                write_nr(self.pages)
            got = read_int(HUGE_NR)
            if got < self.pages:
                print(f"note: the kernel gave {got} of {self.pages} huge pages",
                      flush=True)
            if not mounted_hugetlbfs(HUGE_MNT):
                if not os.path.isdir(HUGE_MNT):
                    os.makedirs(HUGE_MNT)
                    self.made_dir = True
                subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M",
                                "nodev", HUGE_MNT], check=True)
                self.mounted = True
        except BaseException:
            self.__exit__()
            raise
        return self

    def give_back_unused(self) -> None:
        """Keep only the pages in use (or reserved) now, never fewer than
        there were before: no other process (a forkhost primary with
        --huge-pages auto, say) finds free huge pages because of us."""
        if self.old_nr is not None:
            write_nr(max(self.old_nr, read_int(HUGE_NR) - read_int(HUGE_FREE)
                         + read_int(HUGE_RESV)))

    def __exit__(self, *exc) -> None:
        # DPDK leaves its page files (<prefix>map_N) behind; while they
        # exist the pages cannot go back to the kernel.
        for p in glob.glob(f"{HUGE_MNT}/{self.prefix}map_*"):
            os.unlink(p)
        shutil.rmtree(f"{DPDK_RUN_DIR}/{self.prefix}", ignore_errors=True)
        if not self.had_run_dir:
            try:
                os.rmdir(DPDK_RUN_DIR)
            except OSError:
                pass
        if self.mounted:
            subprocess.run(["umount", HUGE_MNT], check=False)
            self.mounted = False
        if self.made_dir:
            try:
                os.rmdir(HUGE_MNT)
            except OSError:
                pass
            self.made_dir = False
        if self.old_nr is not None:
            write_nr(self.old_nr)
            left = read_int(HUGE_SURPLUS) - self.old_surplus
            if left > 0:
                # Any process that created a huge-page mapping meanwhile (a
                # forkhost primary with --huge-pages auto, its default)
                # keeps its pages; the kernel frees them as surplus when it
                # exits.
                print(f"note: {left} huge pages are still in use by other "
                      f"processes; they go back to the kernel when those exit", flush=True)
            self.old_nr = None
