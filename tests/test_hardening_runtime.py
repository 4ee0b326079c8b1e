"""The runtime directory under hostile neighbours, and refusals that come
early and in one line (issue 22, items 1-4 and 8): a log symlink planted in
another user's directory, a shared sticky directory given as the runtime
directory, a full file system, a socket path over the limit, an empty
prefix.  docs/architecture.md, "The runtime directory", has the rules."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from fhtest import FIXTURES, RUNNER, PrimaryProc, need_root

PY = sys.executable
# The text forkhost/rundir.h has, as both programs print it.
SOCKET_LIMIT = 107


def clean_env(**extra) -> dict:
    """Our environment without the variables that choose a runtime
    directory or prefix, so that only the options given count."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORKHOST_RUNTIME_DIR", "FORKHOST_PREFIX", "RUNTIME_DIRECTORY",
                        "XDG_RUNTIME_DIR")}
    env.update(extra)
    return env


def forkhost(*argv, env=None, **kw) -> subprocess.CompletedProcess:
    # Not from the checkout's root, whose forkhost/ would shadow the installed one.
    kw.setdefault("cwd", FIXTURES)
    return subprocess.run([PY, "-m", "forkhost", *map(str, argv)],
                          env=clean_env() if env is None else env,
                          capture_output=True, text=True, timeout=60, **kw)


def runner(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([RUNNER, *map(str, argv)],
                          env=clean_env() if env is None else env,
                          capture_output=True, text=True, timeout=60, cwd=FIXTURES)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr
    return r.stderr


def tree(top: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), top)
                  for d, dirs, files in os.walk(top) for n in dirs + files)


# -- 1. a planted symlink log -----------------------------------------------

def test_planted_log_symlink_in_another_users_directory(runtime_dir):
    """Another user's 0777 directory holding PREFIX.log -> a root-only file:
    --detach refuses the directory in one line and writes nothing there."""
    need_root("the directory must belong to another uid (chown)")
    target = os.path.join(runtime_dir, "root-only")
    with open(target, "w") as f:
        f.write("precious\n")
    os.chmod(target, 0o600)
    hostile = os.path.join(runtime_dir, "hostile")
    os.mkdir(hostile)
    os.chmod(hostile, 0o777)
    os.symlink(target, os.path.join(hostile, "P.log"))
    os.chown(hostile, 1001, 1001)
    r = forkhost("primary", "--runtime-dir", hostile, "--prefix", "P", "--detach")
    with open(target) as f:
        assert f.read() == "precious\n"
    assert r.returncode == 1, r
    assert one_line(r) == (f"forkhost primary: refusing the runtime directory {hostile}: "
                           f"it belongs to uid 1001, not to us (uid 0)\n")
    assert sorted(os.listdir(hostile)) == ["P.log"]
    assert stat.S_IMODE(os.lstat(hostile).st_mode) == 0o777


def test_log_symlink_in_our_own_directory_is_not_followed(runtime_dir):
    """Even in a directory of ours the log is opened with O_NOFOLLOW."""
    target = os.path.join(runtime_dir, "elsewhere")
    with open(target, "w") as f:
        f.write("precious\n")
    rd = os.path.join(runtime_dir, "rt")
    os.mkdir(rd, 0o700)
    os.symlink(target, os.path.join(rd, "P.log"))
    r = forkhost("primary", "--runtime-dir", rd, "--prefix", "P", "--detach")
    assert r.returncode == 1, r
    assert one_line(r) == (f"forkhost primary: refusing the log {rd}/P.log: "
                           f"it is a symbolic link\n")
    with open(target) as f:
        assert f.read() == "precious\n"
    assert sorted(os.listdir(rd)) == ["P.log"]


def test_group_writable_directory_on_the_way_is_refused(runtime_dir):
    """A directory on the way that others may write in, without the sticky
    bit, is refused before anything is created under it."""
    open_dir = os.path.join(runtime_dir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    rd = os.path.join(open_dir, "rt")
    r = forkhost("primary", "--runtime-dir", rd, "--prefix", "P")
    assert r.returncode == 1, r
    assert one_line(r) == (f"forkhost primary: refusing the runtime directory under "
                           f"{open_dir}: its mode 0777 lets other users write in it "
                           f"without the sticky bit\n")
    assert os.listdir(open_dir) == []


# -- 2. a shared sticky directory --------------------------------------------

def test_sticky_runtime_dir_is_used_through_a_private_subdirectory(runtime_dir):
    shared = os.path.join(runtime_dir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    private = os.path.join(shared, f"forkhost-{os.getuid()}")
    p = PrimaryProc(shared, "t", env=clean_env())
    try:
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
        assert f"socket {private}/t/template.sock," in p.ready
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
        # Every client finds it by the same rule, from the option.
        r = runner("--runtime-dir", shared, "--prefix", "t", "fhfix:exit_with", "3")
        assert r.returncode == 3, r
        r = forkhost("run", "--runtime-dir", shared, "--prefix", "t",
                     "fhfix:exit_with", "4", cwd=FIXTURES)
        assert r.returncode == 4, r
        r = forkhost("ps", "--runtime-dir", shared, "--prefix", "t", "--json")
        assert r.returncode == 0, r
        assert str(p.pid) in r.stdout
        r = forkhost("stop", "--runtime-dir", shared, "--prefix", "t")
        assert r.returncode == 0, r
    finally:
        code, out, err = p.stop()
    assert code == 0, err
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert tree(shared) == [f"forkhost-{os.getuid()}"]


# -- 3. a full file system ---------------------------------------------------

@pytest.fixture
def small_tmpfs(runtime_dir):
    need_root("mounting a small tmpfs")
    mnt = os.path.join(runtime_dir, "mnt")
    os.mkdir(mnt, 0o700)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                        mnt], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def fill(mnt: str, leave: int = 0) -> None:
    """Fill the file system at mnt, then free leave bytes again."""
    path = os.path.join(mnt, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        block = b"x" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError as err:
                assert err.errno == errno.ENOSPC
                break
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)


@pytest.mark.parametrize("detach", [False, True])
def test_full_file_system_is_named_on_stderr(small_tmpfs, detach):
    fill(small_tmpfs)
    rd = os.path.join(small_tmpfs, "rt")
    r = forkhost("primary", "--runtime-dir", rd, "--prefix", "P",
                 *(["--detach"] if detach else []))
    assert r.returncode == 1, r
    assert one_line(r) == (f"forkhost primary: cannot write {rd}/P/lock: the file "
                           f"system is full (No space left on device)\n")
    assert not [n for n in tree(small_tmpfs) if ".config." in n or n.startswith("rt/P/")]


def test_config_write_on_a_full_file_system_leaves_no_temporary_file(small_tmpfs):
    """Room for the lock's page but not for the config record's."""
    fill(small_tmpfs, leave=4096)
    rd = os.path.join(small_tmpfs, "rt")
    r = forkhost("primary", "--runtime-dir", rd, "--prefix", "P")
    assert r.returncode == 1, r
    assert one_line(r) == (f"forkhost primary: cannot write {rd}/P/config.json: the "
                           f"file system is full (No space left on device)\n")
    assert tree(rd) == []


def test_stale_config_temporary_file_is_removed_by_the_next_primary(runtime_dir):
    dead = subprocess.Popen(["true"])
    dead.wait()
    d = os.path.join(runtime_dir, "t")
    os.mkdir(d, 0o700)
    stale = os.path.join(d, f".config.{dead.pid}.tmp")
    with open(stale, "w") as f:
        f.write("{")
    p = PrimaryProc(runtime_dir, "t")
    try:
        assert not os.path.exists(stale)
        assert sorted(os.listdir(d)) == ["config.json", "ipc.sock", "lock",
                                         "template.sock"]
    finally:
        code, out, err = p.stop()
    assert code == 0, err


def test_sigterm_on_the_ready_line_stops_cleanly(runtime_dir):
    """The signals are caught before the ready line is printed: a SIGTERM
    sent on seeing it is a clean stop (status 0, runtime files removed),
    not death by the default action."""
    for _ in range(5):
        p = PrimaryProc(runtime_dir, "t")
        code, out, err = p.stop()
        assert code == 0, err
        assert os.listdir(runtime_dir) == []


def test_signals_repeated_while_stopping_still_stop_cleanly(runtime_dir):
    """SIGTERM (or Ctrl-C) again while the primary stops, up to its very
    last instruction: the stop under way finishes cleanly (status 0,
    runtime files removed); the primary does not die by the repeated
    signal's default action."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) * 2:
        p = PrimaryProc(runtime_dir, "t")
        p.proc.send_signal(sig)
        while p.proc.poll() is None:        # until it has exited
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(sig)
            time.sleep(0.0005)
        code, out, err = p.stop()
        assert code == 0, (sig, code, err)
        assert "stopped" in out, out
        assert os.listdir(runtime_dir) == []


# -- 4. a socket path over the limit -----------------------------------------

@pytest.mark.parametrize("detach", [False, True])
def test_socket_path_over_the_limit_is_refused_before_anything_is_made(runtime_dir,
                                                                        detach):
    rd = os.path.join(runtime_dir, "d" * 90)
    path = f"{rd}/t/template.sock"
    assert len(path) > SOCKET_LIMIT
    text = (f"socket path is too long for a Unix socket ({len(path)} bytes; the "
            f"limit is {SOCKET_LIMIT}): {path}\n")
    r = forkhost("primary", "--runtime-dir", rd, "--prefix", "t",
                 *(["--detach"] if detach else []))
    assert r.returncode == 1, r
    assert one_line(r) == "forkhost primary: " + text
    assert os.listdir(runtime_dir) == []
    # forkhost-run says the same.
    r = runner("--runtime-dir", rd, "--prefix", "t", "fhfix:exit_with", "0")
    assert r.returncode == 125, r
    assert one_line(r) == "forkhost-run: " + text


# -- 8. the empty prefix -----------------------------------------------------

def test_empty_prefix_is_refused_with_the_same_text_everywhere(runtime_dir):
    env = clean_env(FORKHOST_RUNTIME_DIR=runtime_dir)
    text = ("invalid prefix '' (from --prefix): use 1 to 64 of A-Z a-z 0-9 . _ -, "
            "not '.' or '..'\n")
    r = forkhost("primary", "--prefix", "", env=env)
    assert (r.returncode, one_line(r)) == (1, "forkhost primary: " + text)
    r = runner("--prefix", "", "x", env=env)
    assert (r.returncode, one_line(r)) == (125, "forkhost-run: " + text)
    r = forkhost("run", "--prefix", "", "x", env=env)
    assert (r.returncode, one_line(r)) == (125, "forkhost run: " + text)
    r = forkhost("ps", "--prefix", "", env=env)
    assert (r.returncode, one_line(r)) == (1, "forkhost ps: " + text)
    assert os.listdir(runtime_dir) == []


def test_empty_prefix_variable_counts_as_unset(runtime_dir):
    """FORKHOST_PREFIX='' is the default prefix for both programs (as the
    other FORKHOST_* variables: empty is unset)."""
    env = clean_env(FORKHOST_RUNTIME_DIR=runtime_dir, FORKHOST_PREFIX="")
    sock = os.path.join(runtime_dir, "forkhost", "template.sock")
    r = runner("x", env=env)
    assert (r.returncode, one_line(r)) == (
        125, f"forkhost-run: no forkhost primary for prefix 'forkhost' (looked for "
             f"{sock})\n")
    r = forkhost("stop", env=env)
    assert (r.returncode, one_line(r)) == (
        1, f"forkhost stop: no forkhost primary for prefix 'forkhost' (looked for "
           f"{os.path.join(runtime_dir, 'forkhost', 'config.json')})\n")
