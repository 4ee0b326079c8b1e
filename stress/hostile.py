"""Hostile neighbours: what another user, a shared directory, the file
system or a greedy peer can do to a primary, and the behaviour issue 22
asks for in each case (docs/reliability.md has the table).

- another uid's runtime directory (0777) with `PREFIX.log` planted as a
  symlink to a root-only file: `forkhost primary --detach` is refused with
  one line and the file is unchanged (needs root, to make the other uid's
  directory; skipped otherwise);
- a shared sticky (1777) runtime directory: the primary serves from it and
  its mode is 1777 while the primary runs and after it stops;
- a socket path over 107 bytes: refused with one line naming the limit;
- a full disk (a small tmpfs, filled, then with one page given back so the
  lock's pid fits and the config does not): refused with one line naming
  the cause, in the foreground and with --detach, and no `.config.*.tmp`
  left (needs mount; skipped otherwise);
- a peer holding idle connections (more than the template lets wait):
  another process's launch is served while they wait;
- an IPC member that sends a zero-length record keeps its membership;
- an IPC connection whose first record is malformed gets REFUSE.

These describe the hardening of issue 22; on a forkhost without it they
fail (each cell names the defect).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

from fhtest import LineReader, forkhost_procs, raw_connect, reap

from . import ROOT
from .common import FIXTURES, Result, Skip, runner, runtime, serves, stop
from .fuzz_ipc import Member

PY = sys.executable
OTHER_UID = 1001       # the neighbour; needs no passwd entry


def _max_pending() -> int:
    """FH_TEMPLATE_MAX_PENDING, from the one place it is defined."""
    text = (ROOT / "csrc" / "include" / "forkhost" / "template.h").read_text()
    return int(re.search(r"#define FH_TEMPLATE_MAX_PENDING\s+(\d+)u", text).group(1))


def forkhost_cmd(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "forkhost", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=FIXTURES, env=env)


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), \
        f"not one line on stderr: {err[-600:]!r}"
    return err.strip()


def _cleanup(d: str) -> None:
    for p in forkhost_procs(d):
        try:
            p.kill()
        except Exception:                       # noqa: BLE001 (gone already)
            pass


# -- the cells ---------------------------------------------------------------------

def planted_symlink_log() -> str:
    if os.geteuid() != 0:
        raise Skip("needs root to make a directory owned by another uid")
    d = tempfile.mkdtemp(prefix="fhs-other-", dir="/tmp")
    secret_dir = tempfile.mkdtemp(prefix="fhs-secret-", dir="/tmp")
    try:
        target = os.path.join(secret_dir, "root-only")
        with open(target, "w") as f:
            f.write("root's file\n")
        os.chmod(target, 0o600)
        os.chown(d, OTHER_UID, OTHER_UID)
        os.chmod(d, 0o777)
        os.symlink(target, os.path.join(d, "p.log"))
        r = forkhost_cmd("primary", "--runtime-dir", d, "--prefix", "p", "--detach")
        with open(target) as f:
            after = f.read()
        added = after[len("root's file\n"):].strip().splitlines()
        assert after == "root's file\n", \
            (f"the planted symlink's target was written: {len(added)} lines appended, "
             f"the last {added[-1] if added else ''!r}")
        assert r.returncode == 1, f"exit {r.returncode}: {r.stdout}{r.stderr}"
        line = _one_line(r.stderr)
        return f"exit 1: {line}; the target unchanged"
    finally:
        _cleanup(d)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(secret_dir, ignore_errors=True)


def shared_sticky_dir() -> str:
    res = Result("inner")
    d = tempfile.mkdtemp(prefix="fhs-1777-", dir="/tmp")
    try:
        os.chmod(d, 0o1777)
        with runtime(res, dir=d) as rt:
            p = rt.primary()
            during = stat.S_IMODE(os.stat(d).st_mode)
            serves(p)
            code, _, err = stop(p)
        after = stat.S_IMODE(os.stat(d).st_mode)
        assert code == 0, f"primary exit {code}: {err}"
        assert during == after == 0o1777, \
            f"mode {during:o} while the primary ran, {after:o} after (was 1777)"
        assert not res.failures, res.failures[0].observed
        return "served; mode 1777 while it ran and after"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def long_socket_path() -> str:
    base = tempfile.mkdtemp(prefix="fhs-long-", dir="/tmp")
    try:
        d = os.path.join(base, "d" * (110 - len(base)))
        assert len(os.path.join(d, "p", "template.sock")) > 107
        r = forkhost_cmd("primary", "--runtime-dir", d, "--prefix", "p")
        assert r.returncode == 1, f"exit {r.returncode}: {r.stdout}{r.stderr}"
        line = _one_line(r.stderr)
        assert "107" in line, f"the line does not name the 107-byte limit: {line}"
        return f"exit 1: {line}"
    finally:
        _cleanup(base)
        shutil.rmtree(base, ignore_errors=True)


def _fill(mnt: str, leave: int) -> None:
    """Fill the file system at mnt (anew), then give `leave` bytes back."""
    path = os.path.join(mnt, "filler")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        os.close(fd)


def full_disk() -> str:
    mnt = tempfile.mkdtemp(prefix="fhs-disk-", dir="/tmp")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                            mnt], capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
        try:
            out, bad = [], []
            # Full, and full but for one page (the lock's pid fits, the
            # config does not): in the foreground and with --detach.
            for leave, args in ((0, ()), (0, ("--detach",)), (4096, ()),
                                (4096, ("--detach",))):
                _fill(mnt, leave)
                rt = tempfile.mkdtemp(prefix="rt-", dir=mnt)
                r = forkhost_cmd("primary", "--runtime-dir", rt, "--prefix", "p", *args)
                _cleanup(rt)
                what = f"{'full' if not leave else 'one page free'}{' ' if args else ''}" \
                       f"{' '.join(args)}"
                left = [f for _, _, fs in os.walk(rt) for f in fs if f.startswith(".config.")]
                lines = r.stderr.splitlines()
                if r.returncode != 1 or len(lines) != 1 or not r.stderr.endswith("\n"):
                    bad.append(f"{what}: exit {r.returncode}, {len(lines)} lines on stderr, "
                               f"the last: {lines[-1] if lines else ''!r}")
                elif not re.search(r"no space left|disk is full|disk full|ENOSPC", lines[0], re.I):
                    bad.append(f"{what}: the line does not name the full disk: {lines[0]}")
                else:
                    out.append(lines[0])
                if left:
                    bad.append(f"{what}: left behind: {left}")
            assert not bad, "; ".join(bad)
            return "exit 1: " + " | ".join(sorted(set(out))) + "; no .config.*.tmp"
        finally:
            _cleanup(mnt)
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    finally:
        shutil.rmtree(mnt, ignore_errors=True)


def idle_connections() -> str:
    res = Result("inner")
    # More than the template lets wait (its pool members hold a few too).
    n = _max_pending() + 16
    with runtime(res) as rt:
        p = rt.primary()
        peer = subprocess.Popen([PY, str(FIXTURES / "idle_peer.py"), p.socket, str(n)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                cwd=FIXTURES)
        try:
            out = LineReader(peer.stdout)
            assert out.readline(60) == b"held\n"
            victim = subprocess.run([runner(), "stressfix:hold", "7"], env=p.env,
                                    cwd=FIXTURES, stdin=subprocess.DEVNULL,
                                    capture_output=True, timeout=120)
            peer.stdin.write(b"report\n")
            peer.stdin.flush()
            state = json.loads(out.readline(60))
        finally:
            reap(peer)
        timed_out = {t: k for t, k in state["errors"].items() if "no request within" in t}
        assert victim.returncode == 7, \
            (f"another process's launch while one peer holds {n} idle connections: "
             f"exit {victim.returncode}, {victim.stderr.decode().strip()!r}")
        assert not timed_out, \
            f"served only after the idle connections timed out: {timed_out}"
        serves(p)
    assert not res.failures, res.failures[0].observed
    return (f"served (exit 7) while the peer held {state['open']} of {n} open; "
            f"refused to it: {state['errors'] or 'none'}")


def ipc_zero_length() -> str:
    res = Result("inner")
    with runtime(res) as rt:
        p = rt.primary()
        m = Member(p.config["ipc_socket"])
        try:
            m.probe()
            m.send(b"")
            m.probe()
        finally:
            m.close()
        serves(p)
    assert not res.failures, res.failures[0].observed
    return "still a member: its next request answered"


def ipc_malformed_first() -> str:
    from forkhost import ipc
    res = Result("inner")
    with runtime(res) as rt:
        p = rt.primary()
        with raw_connect(p.config["ipc_socket"]) as s:
            s.send(b"\xde\xad\xbe\xef" + bytes(92))           # bad magic, 96 bytes
            t0 = time.monotonic()
            data = s.recv(ipc.RECORD_MAX)
            waited = time.monotonic() - t0
        assert data, f"no REFUSE: the connection was closed after {waited:.1f} s"
        mtype = int.from_bytes(data[6:8], sys.byteorder)
        assert mtype == ipc.REFUSE, f"type 0x{mtype:02x}"
        reason = data[ipc.HDR.size:].decode()
        serves(p)
    assert not res.failures, res.failures[0].observed
    return f"REFUSE: {reason}"


CELLS = [
    ("another uid's runtime dir with a planted symlink log",
     "--detach refused with one line (exit 1); the symlink's target unchanged",
     planted_symlink_log, "defect 1"),
    ("a shared 1777 runtime dir",
     "the primary serves; the directory stays 1777 while it runs and after",
     shared_sticky_dir, "defect 2"),
    ("a socket path over 107 bytes",
     "refused with one line naming the 107-byte limit (exit 1)",
     long_socket_path, "defect 4"),
    ("a full disk (small tmpfs)",
     "refused with one line naming the full disk (exit 1), foreground and --detach, "
     "full and with one page free; no .config.*.tmp left",
     full_disk, "defect 3"),
    ("a peer holding idle connections",
     "another process's launch is served while they wait",
     idle_connections, "defect 9"),
    ("an IPC member's zero-length record",
     "it stays a member (docs/ipc.md: a bad record never costs a peer its "
     "membership)",
     ipc_zero_length, "defect 6"),
    ("a malformed first IPC record",
     "answered with REFUSE at once",
     ipc_malformed_first, "defect 6"),
]


def run() -> Result:
    res = Result("hostile neighbours", counts={"cells": len(CELLS)})
    t0 = time.monotonic()
    for name, expected, fn, defect in CELLS:
        res.check(name, expected, fn,
                  expected_fail=f"the fix of issue 22's {defect}")
    res.duration = time.monotonic() - t0
    return res
