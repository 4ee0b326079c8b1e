"""Pool members take launches straight from template.sock
(csrc/lib/member.c, forked by csrc/lib/template.c): a slow client is served, the pool keeps its size, and
members copy the learned hot set ahead of time.  (The parser and the
classifier the members use are test_request.py's.)"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import psutil
import pytest

import forkhost
from forkhost import _readahead, _protocol as protocol
from forkhost._native import ffi, lib
import fhtest
from fhtest import FIXTURES, PrimaryProc, children_of, entry, wait_until


# -- end to end ----------------------------------------------------------------

def raw_launch(sock: socket.socket, entry: bytes, *args: bytes,
               env: list[bytes] = [b"A=1"], stdout: int | None = None,
               stderr: int | None = None, cwd_fd: int | None = None) -> None:
    cwd = os.open(FIXTURES, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    out = null if stdout is None else stdout
    err = null if stderr is None else stderr
    try:
        body = protocol.Launch(entry, [entry, *args], env, 0, 0o022,
                               0b111, 0).encode()
        protocol.send(sock, protocol.LAUNCH, body,
                      [cwd if cwd_fd is None else cwd_fd, null, out, err])
    finally:
        os.close(cwd)
        os.close(null)


def started_and_exited(sock: socket.socket) -> tuple[int, int]:
    msg = protocol.recv(sock)
    assert msg is not None and msg.type == protocol.STARTED, msg
    (pid,) = protocol.STARTED_BODY.unpack(msg.body)
    msg.close_fds()
    msg = protocol.recv(sock)
    assert msg is not None and msg.type == protocol.EXITED, msg
    code, sig = protocol.EXITED_BODY.unpack(msg.body)
    assert sig == 0
    return pid, code


def idle_members(primary) -> set[int]:
    """Once the pool is full: the template's children (its members)."""
    wait_until(lambda: forkhost.info(primary.prefix, primary.runtime_dir)["pool"] == 2,
               what="two idle members")
    return set(children_of(primary.template_pid))


@pytest.fixture
def primary(shared_primary):
    """Tests that only launch secondaries and look at the pool's size share
    one primary (conftest.py, own_primary); those that look at what the
    template learned (hot set, import dirs, modules read ahead) or at its
    page faults start their own."""
    return shared_primary


def connect(primary) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(30)
    sock.connect(primary.socket)
    return sock


def test_a_launch_runs_in_a_member_forked_before_it(primary):
    """The secondary is one of the template's pre-forked members: nothing
    was forked for it."""
    before = idle_members(primary)
    with connect(primary) as sock:
        raw_launch(sock, b"fhfix:exit_with", b"5")
        pid, code = started_and_exited(sock)
    assert code == 5
    assert pid in before


def test_a_cwd_that_is_not_a_directory_is_refused_before_the_fork(primary):
    """The client's "cwd" is a pipe: refused with one line and 125 before
    STARTED (fh_launch_decide, shared with the template), the member that
    accepted stays a member, and nothing lands on the client's stderr."""
    before = idle_members(primary)
    cwd_r, cwd_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        with connect(primary) as sock:
            raw_launch(sock, b"fhfix:exit_with", b"0", cwd_fd=cwd_r, stderr=err_w)
            os.close(err_w)
            err_w = -1
            msg = protocol.recv(sock)
            msg.close_fds()
            assert msg.type == protocol.ERROR, hex(msg.type)
            code, text = protocol.decode_error(msg.body)
        with open(err_r, "rb", closefd=False) as f:
            err = f.read()
    finally:
        for fd in (cwd_r, cwd_w, err_r, err_w):
            if fd >= 0:
                os.close(fd)
    assert (code, text) == (125, "the client's cwd fd is not a directory (a client "
                                 "sends its cwd as an O_PATH directory fd)")
    assert err == b""
    wait_until(lambda: idle_members(primary) == before, what="the same members idle")


def test_a_name_given_twice_in_the_environment_has_its_first_value(primary):
    """As getenv(3) and a fresh python read it, in C and in os.environ."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with connect(primary) as sock:
            raw_launch(sock, b"fhfix:report", env=[b"DUP=first", b"A=1", b"DUP=second"],
                       stdout=w)
            os.close(w)
            w = -1
            _, code = started_and_exited(sock)
        with open(r, "rb", closefd=False) as f:
            got = json.loads(f.read())
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert code == 0
    env = {bytes.fromhex(k): bytes.fromhex(v) for k, v in got["env"].items()}
    assert env == {b"DUP": b"first", b"A": b"1"}


def test_slow_client_is_served_and_does_not_keep_a_member(primary):
    """A request that comes well after connect(): the member that accepted
    waits for it a little (BUSY), then hands the connection to the template
    and is idle again (idle connections must not park the pool); the
    request is served when it comes, and the pool is back to its size, not
    over it."""
    before = idle_members(primary)
    with connect(primary) as sock:
        wait_until(lambda: idle_members(primary) == before,
                   what="the member that accepted idle again")
        # Meanwhile others are served.
        assert primary.run("fhfix:exit_with", 3, cwd=FIXTURES).returncode == 3
        raw_launch(sock, b"fhfix:exit_with", b"9")
        pid, code = started_and_exited(sock)
    assert code == 9
    wait_until(lambda: forkhost.info(primary.prefix, primary.runtime_dir)["pool"] == 2,
               what="the pool back to two")
    time.sleep(0.1)
    assert forkhost.info(primary.prefix, primary.runtime_dir)["pool"] == 2


def test_launches_back_to_back_are_taken_by_members(primary):
    """Under launches that leave the template no quiet moment, an emptied
    pool is refilled at once instead of leaving every launch to the
    template's own, slower path."""
    idle_members(primary)
    before = forkhost.info(primary.prefix, primary.runtime_dir)
    n = 40
    for _ in range(n):
        assert primary.run("fhfix:exit_with", 0, cwd=FIXTURES).returncode == 0
    after = forkhost.info(primary.prefix, primary.runtime_dir)
    assert after["launched"] - before["launched"] == n
    # All of them, on a quiet machine; the template may still take one
    # whose client came while a replacement was being forked.
    assert after["pool_launches"] - before["pool_launches"] >= n * 3 // 4


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[7])   # field 10: minflt


def test_the_template_takes_next_to_no_page_fault_per_launch(own_primary, native_so):
    """The template's loop writes what changes per launch in memory its
    forks do not share (MADV_DONTFORK), and runs no Python per launch: a
    fork costs it a copy-on-write fault on the few stack pages it shares
    with the child, not the hundreds a loop writing shared memory takes
    back after every fork (the Python loop it replaced: about 250)."""
    primary = own_primary     # the template's own faults, from a fresh start
    n = 40
    for _ in range(3):                 # first launches: the pool refills
        assert primary.run(native_so, cwd=FIXTURES).returncode == 0
    idle_members(primary)
    before = _minor_faults(primary.template_pid)
    for _ in range(n):
        assert primary.run(native_so, cwd=FIXTURES).returncode == 0
    idle_members(primary)              # every replacement forked
    faults = _minor_faults(primary.template_pid) - before
    # INFO (idle_members) runs Python's hook once: allow for it.
    assert faults <= 10 * n + 300, faults


@pytest.mark.heavy
def test_the_template_reaps_while_clients_keep_it_busy(primary, native_so):
    """Under launches that never let template.sock run dry, the template
    still reaps the secondaries that ended: it accepts a few connections
    per round of its loop, not until none is left (that starved every
    exit: thousands of zombies and pidfds, then a full table)."""
    import threading
    stop = time.monotonic() + 1.5
    failures = []

    def client():
        while time.monotonic() < stop:
            r = primary.run(native_so, "exit", "3", cwd=FIXTURES)
            if r.returncode != 3:
                failures.append(r)
                return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    most = 0
    while time.monotonic() < stop:
        most = max(most, len(children_of(primary.template_pid)))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not failures, failures[0]
    # 8 clients: at most 8 launches at a time, their members and the pool;
    # a zombie backlog would be hundreds.
    assert most <= 40, most


def test_members_learn_the_hot_set(own_primary):
    primary = own_primary     # the hot set must be learned from its own launches
    for _ in range(3):
        assert primary.run("fhfix:exit_with", 0, cwd=FIXTURES).returncode == 0
    wait_until(lambda: forkhost.info(primary.prefix, primary.runtime_dir)["hot_pages"] > 0,
               what="a learned hot set")
    assert forkhost.info(primary.prefix, primary.runtime_dir)["hot_pages"] <= 4096


def _import_dirs(primary) -> list[str]:
    return forkhost.info(primary.prefix, primary.runtime_dir)["import_dirs"]


def test_members_inherit_import_finders_for_client_dirs(own_primary, tmp_path):
    primary = own_primary     # what the template learned of import dirs
    d = tmp_path / "app"
    d.mkdir()
    (d / "fhapp_a.py").write_text("def main(argv):\n    print('a1')\n")
    r = primary.run("fhapp_a:main", cwd=d)
    assert (r.returncode, r.stdout) == (0, b"a1\n")
    wait_until(lambda: str(d) in _import_dirs(primary), what="the client's dir learned")
    # Members forked from now on hold a finder for d; what changes in d
    # after that is still seen: a new module, an edited one.
    wait_until(lambda: forkhost.info(primary.prefix, primary.runtime_dir)["pool"] == 2,
               what="the pool refilled")
    (d / "fhapp_b.py").write_text("def main(argv):\n    print('b')\n")
    (d / "fhapp_a.py").write_text("def main(argv):\n    print('a2, longer')\n")
    for entry, out in (("fhapp_b:main", b"b\n"), ("fhapp_a:main", b"a2, longer\n"),
                       ("-m fhapp_b", b"")):
        r = primary.run(*entry.split(), cwd=d)
        assert (r.returncode, r.stdout, r.stderr) == (0, out, b""), entry
    # The directory replaced by another of the same name: its modules.
    shutil.rmtree(d)
    d.mkdir()
    (d / "fhapp_c.py").write_text("def main(argv):\n    return 7\n")
    assert primary.run("fhapp_c:main", cwd=d).returncode == 7
    r = primary.run("fhapp_a:main", cwd=d)
    assert r.returncode == 127 and b"'fhapp_a' not found" in r.stderr
    assert _import_dirs(primary).count(str(d)) == 1


def test_import_finders_are_kept_for_the_most_recent_dirs(own_primary, tmp_path,
                                                         native_so):
    primary = own_primary     # the template's whole list of import dirs
    FINDER_DIRS = _readahead.PREFETCH_MAX
    dirs = []
    for i in range(FINDER_DIRS + 2):
        d = tmp_path / f"d{i}"
        d.mkdir()
        (d / "fhapp_n.py").write_text(f"def main(argv):\n    return {i}\n")
        assert primary.run("fhapp_n:main", cwd=d).returncode == i
        dirs.append(str(d))
        # Launches the template hears of in one batch are learned in any
        # order: one at a time, the order is theirs.
        wait_until(lambda: str(d) in _import_dirs(primary), what=f"{d} learned")
    # A native launch says nothing about imports; a launch from a dir
    # already known makes it the most recent.
    assert primary.run(native_so, cwd=tmp_path).returncode == 0
    # The template reads an entry ahead at most once in this interval
    # (template.h): after it, the launch is heard of again.
    time.sleep(lib.FH_TEMPLATE_READ_AHEAD_US / 1e6)
    assert primary.run("fhapp_n:main", cwd=dirs[-FINDER_DIRS]).returncode == 2
    dirs.append(dirs.pop(-FINDER_DIRS))
    wait_until(lambda: _import_dirs(primary)[-1] == dirs[-1], what="the dir moved last")
    assert _import_dirs(primary) == dirs[-FINDER_DIRS:]


# -- modules read ahead by the template ---------------------------------------

_SHOW_IMPORT = """\
import sys
print(__name__, __file__, __cached__, type(__loader__).__name__, __spec__.name,
      __spec__.origin == __file__, __spec__.cached == __cached__, __spec__.parent,
      __package__, __spec__.has_location, list(sys.modules)[-1], sys.argv)
def main(argv):
    print("{tag}", __name__ in sys.modules, sys.modules[__name__].__dict__ is globals())
"""


class Opens:
    """inotify IN_OPEN and IN_ACCESS on directories: how many opens and
    reads of their files (or of themselves) happened since the last
    count().  (inotify merges an event with the unread one before it when
    they are the same: an open then a read of a file are two, two opens
    in a row one.)"""

    def __init__(self, *dirs):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        for d in dirs:
            assert self.libc.inotify_add_watch(self.fd, os.fsencode(d), 0x21) >= 0

    def count(self) -> int:
        n = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return n
            off = 0
            while off < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, off)
                off += 16 + length
                n += 1

    def close(self):
        os.close(self.fd)


def _settled_module(d, name: str, text: str) -> None:
    """Write d/name.py (and its .pyc) and wait until the template would
    trust their timestamps (_readahead.PREFETCH_SETTLED_NS)."""
    import py_compile
    (d / f"{name}.py").write_text(text)
    py_compile.compile(str(d / f"{name}.py"), doraise=True)
    time.sleep(_readahead.PREFETCH_SETTLED_NS / 1e9 + 0.05)


def _prefetched(primary) -> list[str]:
    return forkhost.info(primary.prefix, primary.runtime_dir)["prefetched"]


def test_a_module_read_ahead_imports_as_a_fresh_import_would(own_primary, tmp_path):
    primary = own_primary     # what the template read ahead
    d = tmp_path / "app"
    d.mkdir()
    _settled_module(d, "fhpre", _SHOW_IMPORT.format(tag="v1"))
    _settled_module(d, "fhpre_other", "def main(argv):\n    pass\n")
    first = primary.run("fhpre:main", "x", cwd=d)
    first_m = primary.run("-m", "fhpre", "y", cwd=d)
    assert first.returncode == first_m.returncode == 0, first.stderr + first_m.stderr
    wait_until(lambda: f"fhpre ({d})" in _prefetched(primary), what="fhpre read ahead")
    opens = Opens(d, d / "__pycache__")
    try:
        # Until a member forked after the read-ahead takes a launch; each
        # launch's output is what the fresh import gave.
        for _ in range(20):
            opens.count()
            r = primary.run("fhpre:main", "x", cwd=d)
            assert (r.returncode, r.stdout, r.stderr) == (0, first.stdout, b"")
            if opens.count() == 0:
                break
        else:
            raise AssertionError("no launch used the module read ahead")
        r = primary.run("-m", "fhpre", "y", cwd=d)
        assert (r.returncode, r.stdout, r.stderr) == (0, first_m.stdout, b"")
        # The watch sees a fresh import (a module not read ahead).
        assert primary.run("fhpre_other:main", cwd=d).returncode == 0
        assert opens.count() > 0
    finally:
        opens.close()

    # What changes after the read-ahead is seen: an edit...
    (d / "fhpre.py").write_text(_SHOW_IMPORT.format(tag="v2, longer"))
    r = primary.run("fhpre:main", "x", cwd=d)
    assert r.returncode == 0 and r.stdout.endswith(b"v2, longer True True\n")
    # ... and a package of the same name, which a fresh import finds first.
    (d / "fhpre").mkdir()
    (d / "fhpre" / "__init__.py").write_text("def main(argv):\n    print('pkg')\n")
    r = primary.run("fhpre:main", cwd=d)
    assert (r.returncode, r.stdout) == (0, b"pkg\n")


def test_the_clients_pythondontwritebytecode_decides_the_pyc(runtime_dir, tmp_path):
    """As for `python`: the client's PYTHONDONTWRITEBYTECODE decides whether
    importing the entry writes its .pyc, not the primary's.  A module the
    template read ahead (compiled: the primary writes no bytecode) is not
    used by a launch whose import would write the .pyc."""
    def source_only(d, name):
        d.mkdir()
        (d / f"{name}.py").write_text("def main(argv):\n    return 0\n")
        time.sleep(_readahead.PREFETCH_SETTLED_NS / 1e9 + 0.05)
        return d / "__pycache__"

    def run(p, d, entry, dont_write: bool):
        env = {k: v for k, v in p.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        if dont_write:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        r = subprocess.run([fhtest.RUNNER, entry], env=env, cwd=d,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr

    d = tmp_path / "a"
    cache = source_only(d, "fhbc")
    p = PrimaryProc(runtime_dir, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    try:
        run(p, d, "fhbc:main", dont_write=True)
        wait_until(lambda: f"fhbc ({d})" in _prefetched(p), what="fhbc read ahead")
        for _ in range(2):       # now every idle member holds the copy
            run(p, d, "fhbc:main", dont_write=True)
        assert not cache.exists()
        run(p, d, "fhbc:main", dont_write=False)
        assert [f.name for f in cache.iterdir()] == [
            f"fhbc.{sys.implementation.cache_tag}.pyc"]
    finally:
        code, _, err = p.stop()
        assert code == 0, err

    d = tmp_path / "b"
    cache = source_only(d, "fhbc")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    p = PrimaryProc(runtime_dir, env=env)
    try:
        run(p, d, "fhbc:main", dont_write=True)
        assert not cache.exists()
        run(p, d, "fhbc:main", dont_write=False)
        assert cache.exists()
    finally:
        code, _, err = p.stop()
        assert code == 0, err


def test_a_module_is_read_ahead_in_the_primarys_own_directory(runtime_dir, tmp_path):
    # The primary's cwd is on its sys.path: its finder is the template's own.
    _settled_module(tmp_path, "fhpre_here", "def main(argv):\n    return 3\n")
    p = PrimaryProc(runtime_dir, "here", cwd=tmp_path)
    try:
        assert p.run("fhpre_here:main", cwd=tmp_path).returncode == 3
        wait_until(lambda: f"fhpre_here ({tmp_path})" in _prefetched(p),
                   what="read ahead")
        assert p.run("fhpre_here:main", cwd=tmp_path).returncode == 3
    finally:
        p.stop()


def test_a_module_read_ahead_fails_as_a_fresh_import_would(own_primary, tmp_path):
    primary = own_primary     # what the template read ahead
    d = tmp_path / "app"
    d.mkdir()
    _settled_module(d, "fhpre_bad", "import sys\nraise ValueError('at import')\n"
                    "def main(argv):\n    pass\n")
    first = primary.run("fhpre_bad:main", cwd=d)
    assert first.returncode == 126 and b"ValueError: at import" in first.stderr
    wait_until(lambda: f"fhpre_bad ({d})" in _prefetched(primary), what="read ahead")
    for _ in range(4):
        r = primary.run("fhpre_bad:main", cwd=d)
        assert (r.returncode, r.stdout, r.stderr) == (126, b"", first.stderr)


_SHOW_SCRIPT = """\
import sys
print(__name__, __file__, __spec__, sys.argv, sys.path[0] == sys.argv[0].rpartition("/")[0], "{tag}")
def f():
    raise ValueError("from the script")
if sys.argv[1:] == ["raise"]:
    f()
"""


def test_a_script_compiled_ahead_runs_as_when_compiled_at_launch(own_primary, tmp_path):
    primary = own_primary     # what the template compiled ahead
    d = tmp_path / "app"
    d.mkdir()
    (d / "fhscript.py").write_text(_SHOW_SCRIPT.format(tag="v1"))
    time.sleep(_readahead.PREFETCH_SETTLED_NS / 1e9 + 0.05)
    opens = Opens(d)
    first = primary.run("fhscript.py", "a", cwd=d)
    # The classification opens it (is it ELF?), and so does the compile.
    opened_first = opens.count()
    first_raise = primary.run("fhscript.py", "raise", cwd=d)
    assert first.returncode == 0 and first.stdout.endswith(b" v1\n"), first.stderr
    assert first_raise.returncode == 1
    assert f'File "{d}/fhscript.py", line 4, in f'.encode() in first_raise.stderr
    wait_until(lambda: f"fhscript.py ({d})" in _prefetched(primary), what="compiled ahead")
    try:
        for _ in range(20):
            opens.count()
            r = primary.run("fhscript.py", "a", cwd=d)
            assert (r.returncode, r.stdout, r.stderr) == (0, first.stdout, b"")
            if opens.count() < opened_first:
                break
        else:
            raise AssertionError("no launch used the script compiled ahead")
    finally:
        opens.close()
    r = primary.run("fhscript.py", "raise", cwd=d)
    assert (r.returncode, r.stdout, r.stderr) == (1, first_raise.stdout, first_raise.stderr)
    # Another path to the same file is another script (its __file__ and
    # tracebacks differ).
    r = primary.run("./fhscript.py", "raise", cwd=d)
    assert r.returncode == 1 and f'File "{d}/./fhscript.py", line 4'.encode() in r.stderr
    # An edit is seen; so is a file put in its place.
    (d / "fhscript.py").write_text(_SHOW_SCRIPT.format(tag="v2, longer"))
    assert primary.run("fhscript.py", cwd=d).stdout.endswith(b" v2, longer\n")
    (d / "new.py").write_text(_SHOW_SCRIPT.format(tag="v3"))
    os.rename(d / "new.py", d / "fhscript.py")
    assert primary.run("fhscript.py", cwd=d).stdout.endswith(b" v3\n")


def test_only_plain_modules_are_read_ahead(own_primary, tmp_path):
    primary = own_primary     # the template's whole read-ahead list
    d = tmp_path / "app"
    (d / "fhpkg").mkdir(parents=True)
    (d / "fhpkg" / "__init__.py").write_text("def main(argv):\n    pass\n")
    (d / "fhpkg" / "mod.py").write_text("def main(argv):\n    pass\n")
    _settled_module(d, "json", "def main(argv):\n    print('shadow')\n")
    for entry in ("fhpkg:main", "fhpkg.mod:main", "json:main", "sys:exit"):
        primary.run(entry, cwd=d)
    # A module of the primary (json) stays the primary's, as in a fresh
    # import from this directory it would not (sys.modules wins).
    assert primary.run("json:main", cwd=d).stdout != b"shadow\n"
    assert primary.run("fhpre_none:main", cwd=d).returncode == 127
    # A script too big to compile in the template's loop.
    (d / "big.py").write_text(("#" * 99 + "\n") * (_readahead.PREFETCH_MAX_BYTES // 100 + 1) +
                              "print('big')\n")
    time.sleep(_readahead.PREFETCH_SETTLED_NS / 1e9 + 0.05)
    for _ in range(2):
        assert primary.run("big.py", cwd=d).stdout == b"big\n"
    time.sleep(0.1)
    assert forkhost.info(primary.prefix, primary.runtime_dir)["prefetched"] == []


_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/nfs rw,relatime shared:2 - nfs4 srv:/export rw,vers=4.2
31 30 0:41 / /mnt/nfs/scratch rw shared:3 - tmpfs tmpfs rw
32 22 0:42 / /mnt/a\\040b rw shared:4 - fuse.sshfs me@host: rw
33 22 0:43 / /data rw shared:5 - nfs srv:/data rw
34 33 8:2 / /data rw shared:6 - xfs /dev/sdb1 rw
35 22 0:44 / /mnt/nfsish rw shared:7 - ext4 /dev/sdc1 rw
"""


def test_the_template_reads_ahead_nothing_on_network_or_fuse_filesystems():
    # The mount-table logic alone: no network filesystem is mounted here.
    mounts = _readahead.parse_mounts(_MOUNTINFO)
    remote = {path: _readahead.on_remote_fs(path, mounts) for path in (
        "/home/me/app", "/mnt/nfs", "/mnt/nfs/app/x.py", "/mnt/nfs/scratch/x.py",
        "/mnt/a b/x.py", "/mnt/a", "/data/x.py", "/mnt/nfsish/x.py")}
    assert remote == {
        "/home/me/app": False, "/mnt/nfs": True, "/mnt/nfs/app/x.py": True,
        "/mnt/nfs/scratch/x.py": False,        # tmpfs mounted inside the NFS mount
        "/mnt/a b/x.py": True, "/mnt/a": False,
        "/data/x.py": False,                   # xfs mounted over the NFS mount
        "/mnt/nfsish/x.py": False}
    # A script named from a local directory but lying on NFS is not read.
    assert not _readahead.prefetch_entry("/home/me", "/mnt/nfs/app/x.py", False, mounts)
    # This machine's own table parses (what is remote here is the
    # machine's business, not the test's).
    with open("/proc/self/mountinfo") as f:
        assert "/" in {point for point, _ in _readahead.parse_mounts(f.read())}


def test_the_template_runs_no_import_hook_a_preload_installed(runtime_dir, tmp_path):
    lib_dir, app = tmp_path / "lib", tmp_path / "app"
    lib_dir.mkdir()
    app.mkdir()
    marker = tmp_path / "ran-in-the-template"
    # Preloaded in the primary (the template is its child); it notes a
    # call for the client's directory made in the template.
    (lib_dir / "fhhook.py").write_text(
        "import os, sys\n"
        "PRIMARY = os.getpid()\n"
        "def hook(path):\n"
        f"    if os.getppid() == PRIMARY and path == {str(app)!r}:\n"
        f"        open({str(marker)!r}, 'a').close()\n"
        "    raise ImportError(path)\n"
        "sys.path_hooks.insert(0, hook)\n"
        "sys.path_importer_cache.clear()\n")
    _settled_module(app, "fhpre_hooked", "def main(argv):\n    return 5\n")
    env = dict(os.environ, PYTHONPATH=str(lib_dir))
    p = PrimaryProc(runtime_dir, "hooked", args=("--preload", "fhhook"), env=env)
    try:
        for _ in range(3):
            assert p.run("fhpre_hooked:main", cwd=app).returncode == 5
        info = forkhost.info(p.prefix, p.runtime_dir)
        assert (info["import_dirs"], info["prefetched"]) == ([], [])
    finally:
        code, _, err = p.stop()
    assert code == 0, err
    assert not marker.exists()


def test_a_fifo_named_as_a_script_is_not_waited_for(tmp_path):
    # What the template does when the script it would compile was replaced
    # by a FIFO that no one writes (in a child, so that a wait fails the
    # test instead of hanging it).
    os.mkfifo(tmp_path / "s.py")
    r = subprocess.run(
        [sys.executable, "-c", "import sys; from forkhost import _readahead; "
         "print(_readahead.prefetch_script(sys.argv[1], 's.py'))", str(tmp_path)],
        capture_output=True, timeout=20, cwd=tmp_path)   # not the source tree
    assert (r.returncode, r.stdout) == (0, b"False\n"), r.stderr


_NAMES_AHEAD = """
import sys
from forkhost import _readahead
d = sys.argv[1]
print(_readahead.prepare_finder(d),
      _readahead.prefetch_entry(d, "s.py:", False, []),
      _readahead.prefetch_entry(d, "m:f", False, []),
      _readahead.prefetch_entry(d, "-m", False, []),
      _readahead.prefetch_entry(d, "/bin/true", False, []))
print(_readahead.prefetched())
"""


def test_read_ahead_names_an_entry_as_a_launch_does(tmp_path):
    """The template's read-ahead asks the launch's own classifier (C's
    fh_entry_decide) what an entry names: 's.py:' is the script s.py (the
    path a secondary then loads), 'm:f' the module m, a name that is no
    file and no MODULE:FUNCTION nothing, an ELF file nothing to read."""
    (tmp_path / "s.py").write_text("print('s')\n")
    (tmp_path / "m.py").write_text("def f(argv):\n    return 0\n")
    time.sleep(_readahead.PREFETCH_SETTLED_NS / 1e9 + 0.05)
    r = subprocess.run([sys.executable, "-B", "-c", _NAMES_AHEAD, str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = str(tmp_path)
    assert r.stdout.splitlines() == [
        "True True True False False", str([f"m ({d})", f"s.py ({d})"])]


# -- the hot set, in C, between two forks of this process -------------------------

_PAGES = 64


def _child(fn) -> int:
    """Run fn() in a fork; return what it wrote (an int) on a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, struct.pack("=q", fn()))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = os.read(r, 8)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return struct.unpack("=q", data)[0]


class _HotBench:
    """A hot set, a listening socket and a report channel, for members made
    by hand in forks of the test process."""

    def __init__(self):
        self.hot = lib.fh_hotset_create()
        assert self.hot != ffi.NULL
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind("\0forkhost-test-hot-%d" % os.getpid())
        self.listener.listen()
        self.report_r, self.report_w = socket.socketpair(socket.AF_UNIX,
                                                         socket.SOCK_SEQPACKET)

    def member(self):
        """In a fork: become a member of the set (fh_member_init)."""
        m = ffi.new("struct fh_member *")
        m.listen_fd, m.ctl_fd, m.notice_fd = self.listener.fileno(), -1, -1
        m.hot = self.hot
        assert lib.fh_member_init(m) == 0
        return m

    def exit_as_secondary(self, fn) -> None:
        """fn() in a fork that is a member, then its exit as a member
        secondary's (fh_exit_report: learns if armed, _exits)."""
        pid = os.fork()
        if pid == 0:
            try:
                self.member()
                fn()
                lib.fh_exit_report(self.report_w.fileno(), 0)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

    def close(self) -> None:
        for s in (self.listener, self.report_r, self.report_w):
            s.close()


@pytest.fixture
def hot_bench():
    bench = _HotBench()
    yield bench
    bench.close()


def _written_buffer(page: int):
    buf = ffi.new("char[]", _PAGES * page)      # private, present, ours
    ffi.memmove(buf, b"\1" * (_PAGES * page), _PAGES * page)
    return buf


def _write_pages(buf, page: int) -> int:
    """Write one byte in each page of buf; the page faults it took."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(_PAGES):
        buf[i * page] = b"\2"
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_prefault_copies_what_a_secondary_learned(hot_bench):
    page = resource.getpagesize()
    buf = _written_buffer(page)
    hot = hot_bench.hot

    def learner():
        lib.fh_hotset_arm(hot, 1)
        _write_pages(buf, page)

    def cold():
        hot_bench.member()
        return _write_pages(buf, page)

    def warm():
        hot_bench.member()
        lib.fh_member_prefault()
        return _write_pages(buf, page)

    assert lib.fh_hotset_pages(hot) == 0
    assert _child(cold) >= _PAGES              # copy-on-write, page by page
    hot_bench.exit_as_secondary(learner)
    assert lib.fh_hotset_pages(hot) >= _PAGES
    assert _child(warm) < _PAGES // 4          # copied ahead of time
    # The set was learned from a Python launch (what a member secondary
    # is unless told otherwise); one native launch changes nothing, two in
    # a row have it learned again, from the next launch to exit.
    lib.fh_hotset_note(hot, 1)
    lib.fh_hotset_note(hot, 0)
    assert _hot_set(hot)[0] == 0
    lib.fh_hotset_note(hot, 0)
    assert _hot_set(hot)[0] == 1


def _hot_set(hot) -> tuple[int, list[tuple[int, int]]]:
    """The learnings still due and the ranges (start, pages) of a hot set,
    read as laid out in member.h (seq, learn, nranges, python, learned,
    reserved; then {start, pages, reserved} each); no writer runs
    meanwhile."""
    head = struct.Struct("=IIIIII")
    rng = struct.Struct("=QII")
    _, learn, n, _, _, _ = head.unpack(ffi.buffer(ffi.cast("char *", hot), head.size))
    raw = ffi.buffer(ffi.cast("char *", hot) + head.size, n * rng.size)
    return learn, [(start, pages) for start, pages, _ in rng.iter_unpack(raw)]


def _in_set(hot, address: int) -> bool:
    page = resource.getpagesize()
    return any(start <= address < start + pages * page
               for start, pages in _hot_set(hot)[1])


def test_a_learning_replaces_the_hot_set_and_only_a_plain_fork_learns(hot_bench):
    """A member that copied the set does not learn from its launch (its
    private pages are the set plus the launch's, and the set would only
    grow); while a learning is due members do not copy it, and the one
    that learns makes the set what its launch wrote."""
    page = resource.getpagesize()
    bufs = {k: _written_buffer(page) for k in "xy"}
    # A page wholly inside each buffer: its first and last pages may hold
    # malloc's other objects too, which any launch may write.
    addr = {k: int(ffi.cast("uintptr_t", b)) + page for k, b in bufs.items()}
    hot = hot_bench.hot

    def launch(which: str, prefault: bool, arm: bool):
        """A launch that writes one buffer, in a member that copied the
        set first or not."""
        def run():
            if prefault:
                lib.fh_member_prefault()
            if arm:
                lib.fh_hotset_arm(hot, 1)
            _write_pages(bufs[which], page)
        hot_bench.exit_as_secondary(run)

    def armed_prefault() -> int:
        hot_bench.member()
        return lib.fh_member_prefault()

    launch("x", prefault=False, arm=True)
    assert _in_set(hot, addr["x"]) and not _in_set(hot, addr["y"])
    assert _hot_set(hot)[0] == 0
    launch("y", prefault=True, arm=True)     # copied the set: learns nothing
    assert _hot_set(hot)[0] == 1
    assert _in_set(hot, addr["x"]) and not _in_set(hot, addr["y"])
    # Armed: a member copies nothing (unarmed, it would copy the set),
    # and this one learns.
    assert _child(armed_prefault) == 0
    launch("y", prefault=True, arm=False)
    assert _hot_set(hot)[0] == 0
    assert _in_set(hot, addr["y"]) and not _in_set(hot, addr["x"])


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _settled_fd_count(pid: int) -> int:
    """pid's fd count once it holds still: the INFO connection that
    idle_members() made may close only after its reply was read, and
    counting it would leave room for one fd more than meant."""
    counts: list[int] = []

    def still() -> bool:
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        return len(counts) >= 10 and len(set(counts[-10:])) == 1

    wait_until(still, what="the template's fd count to settle", interval=0.02)
    return counts[-1]


def test_a_template_that_cannot_fork_a_member_waits_and_recovers(runtime_dir):
    """Refilling the pool fails (here: the template is out of fds, so the
    member's socketpair cannot be made; EAGAIN from fork under
    RLIMIT_NPROC takes the same path).  The template says so once, retries
    now and then instead of in a busy loop, keeps serving, and refills the
    pool once it can."""
    p = PrimaryProc(runtime_dir)
    sleeper = None
    try:
        idle_members(p)
        tpl = p.template_pid
        nfds = _settled_fd_count(tpl)
        soft, hard = resource.prlimit(tpl, resource.RLIMIT_NOFILE)
        # Room for the fd the next launch hands over (its client's
        # connection, with the member's TAKEN) and one spare, not for the
        # two of a member's socketpair.
        resource.prlimit(tpl, resource.RLIMIT_NOFILE, (nfds + 2, hard))
        sleeper = p.popen("fhfix:sleeper", cwd=FIXTURES, stdout=subprocess.PIPE)
        assert sleeper.stdout.readline() == b"ready\n"
        cpu0 = _cpu_seconds(tpl)
        time.sleep(1.5)
        # A busy loop would have used most of a CPU; retries every 0.1 s
        # use next to none.  (CPU time, not wall time: load cannot inflate it.)
        assert _cpu_seconds(tpl) - cpu0 < 0.5
        # The sleeper's member and the idle one; no third.  (Not asked by
        # INFO, whose connection could be one fd too many here.)
        assert len(children_of(tpl)) == 2
        resource.prlimit(tpl, resource.RLIMIT_NOFILE, (soft, hard))
        wait_until(lambda: forkhost.info(p.prefix, p.runtime_dir)["pool"] == 2,
                   what="the pool refilled")
        assert p.run("fhfix:exit_with", 6, cwd=FIXTURES).returncode == 6
    finally:
        if sleeper is not None:
            sleeper.terminate()
            sleeper.wait(timeout=30)
            sleeper.stdout.close()
        code, _, err = p.stop()
    assert code == 0, err
    assert err.count("cannot fork a pool member") == 1, err
    assert "Too many open files" in err and "pool members fork again" in err, err


def test_stop_right_after_a_launch_treats_it_as_a_secondary(runtime_dir, native_so):
    """The template reads a member's TAKEN a few ms late (template.py:
    _notices_arrived).  A stop in between must still see that member as the
    secondary it became (SIGTERM, so its client learns it died by
    SIGTERM), not as an idle member to SIGKILL.  Stopping right after
    STARTED, six times, Python and native in turn."""
    for i in range(6):
        kind = "native" if i % 2 else "python"
        p = PrimaryProc(runtime_dir, prefix=f"st{i}")
        try:
            idle_members(p)
            with connect(p) as sock:
                raw_launch(sock, entry(kind, "sleeper", native_so).encode())
                msg = protocol.recv(sock)
                assert msg is not None and msg.type == protocol.STARTED, msg
                msg.close_fds()
                p.proc.send_signal(signal.SIGTERM)
                msg = protocol.recv(sock)
                assert msg is not None and msg.type == protocol.EXITED, msg
                code, sig = protocol.EXITED_BODY.unpack(msg.body)
                assert sig == signal.SIGTERM, (kind, code, sig)
        finally:
            rc, _, err = p.stop()
        assert rc == 0, err
