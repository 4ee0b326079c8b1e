"""``forkhost doctor``: what this machine offers forkhost, and how a
prefix's primary and template are doing.  Each line is OK, INFO, WARN or
FAIL; the exit status is 1 when anything FAILed."""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess

from . import client, runtime
from .errors import ForkhostError


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def doctor(prefix: str | None = None, runtime_dir=None) -> int:
    failed = False

    def say(level: str, text: str) -> None:
        nonlocal failed
        failed |= level == "FAIL"
        print(f"{level:<5} {text}")

    try:
        from ._native import LIBRARY, ffi, lib
        say("OK", f"native library {LIBRARY} (version "
                  f"{ffi.string(lib.fh_version()).decode()})")
    except ImportError as err:
        say("FAIL", f"native library does not load: {err}")
        return 1

    say("INFO", f"kernel {platform.release()}, {platform.libc_ver()[0]} "
                f"{platform.libc_ver()[1]}")
    for name, ok in (("pidfd_open", hasattr(os, "pidfd_open")),
                     ("memfd_create", hasattr(os, "memfd_create"))):
        say("OK" if ok else "FAIL", f"{name} available" if ok else f"{name} missing")

    aslr = _read("/proc/sys/kernel/randomize_va_space")
    say("INFO", f"ASLR is {'on' if aslr in ('1', '2') else 'off'} "
                f"(randomize_va_space={aslr or '?'}): forked secondaries share the "
                f"primary's layout either way; classic attach depends on it")

    from .primary import human_size, huge_page_pool
    pool = huge_page_pool()
    hp_size = human_size(pool["size"]) if pool["size"] else "?"
    if pool["available"]:
        say("OK", f"{pool['available']} free huge pages of {hp_size} (of {pool['total']} "
                  f"reserved): arenas that fit in them use them")
    elif pool["total"]:
        say("INFO", f"{pool['total']} huge pages of {hp_size} reserved, none free "
                    f"(other mappings hold them): arenas use normal pages")
    else:
        say("INFO", f"no huge pages reserved ({hp_size} pages): arenas use normal "
                    f"pages; reserve some with /proc/sys/vm/nr_hugepages")

    runner = shutil.which("forkhost-run")
    if runner:
        out = subprocess.run([runner, "--version"], capture_output=True, text=True)
        say("OK" if out.returncode == 0 else "FAIL",
            f"{runner}: {out.stdout.strip() or out.stderr.strip()}")
    else:
        say("FAIL", "forkhost-run is not on PATH")

    try:
        p = runtime.paths(prefix, runtime_dir)
    except ForkhostError as err:
        say("FAIL", str(err))
        return 1
    try:
        st = os.stat(p.root)
        mode = stat.S_IMODE(st.st_mode)
        say("OK" if mode == 0o700 else "WARN",
            f"runtime directory {p.root} (mode {mode:04o}, uid {st.st_uid})")
    except FileNotFoundError:
        say("INFO", f"runtime directory {p.root} does not exist yet")

    cfg = runtime.read_config(p)
    if cfg is None or not runtime.pid_alive(cfg.get("pid", 0)):
        say("INFO", f"no primary running for prefix {p.prefix!r}")
        return 1 if failed else 0
    say("OK", f"primary {cfg['pid']} for prefix {p.prefix!r}, arena "
              f"{cfg['arena']['size']} bytes at 0x{cfg['arena']['base']:x} "
              f"({cfg['arena']['page_size']}-byte pages)")
    thp = cfg.get("thp")
    if thp:
        say(*_thp_line(thp))
    try:
        info = client.info(p.prefix, p.root)
    except ForkhostError as err:
        say("FAIL", f"the template does not answer: {err}")
        return 1
    say("OK" if info["threads"] == 1 else "FAIL",
        f"template {info['template_pid']}: {info['threads']} thread(s), "
        f"{len(info['secondaries'])} secondaries running, {info['launched']} "
        f"launched ({info['pool_launches']} by pool members), "
        f"{info['refused']} refused")
    sock_mode = stat.S_IMODE(os.stat(p.socket).st_mode)
    say("OK" if sock_mode == 0o600 else "WARN", f"socket {p.socket} mode {sock_mode:04o}")
    return 1 if failed else 0


def _thp_line(thp: dict) -> tuple[str, str]:
    """What the primary's huge-page collapse before the template fork did
    (config.json "thp", forkhost/thp.py)."""
    what = "transparent huge pages for the primary's private memory"
    if not thp.get("enabled"):
        return "INFO", f"{what}: off ({thp.get('why', '')})"
    if "unsupported" in thp or "error" in thp:
        return "INFO", f"{what}: {thp.get('unsupported') or thp.get('error')}"
    if not thp.get("regions"):
        return "INFO", (f"{what}: none needed (no mapping with "
                        f"{thp['min_bytes'] >> 20} MiB resident)")
    line = (f"{what}: {thp['collapsed_bytes'] >> 20} MiB of "
            f"{thp['region_bytes'] >> 20} MiB collapsed before the template fork")
    if thp.get("failed_bytes"):
        return "WARN", (line + f"; {thp['failed_bytes'] >> 20} MiB refused "
                        f"({thp.get('first_error')}): every fork copies their page "
                        f"tables")
    return "OK", line
