"""Shared fixtures: real primaries on private runtime directories, and the
leak guard every test runs under.

Every test must leave the test process as it found it: the same open fds,
no child processes (zombies included) and no stray forkhost processes of
its runtime directory.  The guard fails the test otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

import forkhost

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fhtest import (ROOT, RUNNER, PrimaryProc, build_native_so,  # noqa: E402
                    forkhost_procs, secondary_pids, wait_until)


def _default_signals() -> None:
    """Start from what a login shell gives a foreground job, whatever the
    runner inherited (nohup, a background job's ignored SIGINT and SIGQUIT,
    `trap '' ...`, a blocked mask): the processes the tests start inherit
    these, and forkhost passes ignored dispositions and the mask on, as exec
    does, so a test expecting a signal's default action needs the default
    (and an ignored SIGCHLD would have the kernel reap children itself).
    pytest_configure runs this before pytest-xdist starts its workers, which
    inherit it, and again in each worker."""
    # Not SIGPIPE and SIGXFSZ: Python ignores them itself, and subprocess
    # puts them back to the default in every child (restore_signals).
    keep = {signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, signal.SIGXFSZ}
    for sig in signal.valid_signals() - keep:
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def pytest_configure(config):
    _default_signals()
    config.addinivalue_line(
        "markers", "exclusive: runs while no other test does (pytest-xdist's other "
        "workers wait): it changes or counts what the whole machine shares, "
        "as the huge page pool")
    src = ROOT / "forkhost"
    if Path(forkhost.__file__).resolve().parent == src.resolve() and \
            not (src / "_native" / "libforkhost.so").exists():
        pytest.exit("the tests need an installed forkhost: run `pip install '.[test]'`",
                    returncode=4)
    if RUNNER is None:
        pytest.exit("forkhost-run is not on PATH: run `pip install '.[test]'`",
                    returncode=4)


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
def runtime_dir():
    """A short private runtime dir (unix socket paths are limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="fh-", dir="/tmp")
    yield d
    strays = forkhost_procs(d)
    for p in strays:
        p.kill()
    shutil.rmtree(d, ignore_errors=True)
    assert not strays, f"stray forkhost processes left: {[p.pid for p in strays]}"


@contextlib.contextmanager
def _run_lock(tmp_path_factory, exclusive: bool):
    """Under pytest-xdist, the lock that keeps an exclusive test alone:
    shared by the rest, on a file of this run.  A gate taken around each
    request keeps a waiting exclusive test from being overtaken by the
    other workers' next tests.  Without xdist, nothing."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent      # the workers' common one
    with open(shared / "exclusive.gate", "a") as gate, \
            open(shared / "exclusive.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _exclusive(request, tmp_path_factory):
    """A test marked exclusive runs while no other test does (nor a shared
    primary starts or stops)."""
    with _run_lock(tmp_path_factory, request.node.get_closest_marker("exclusive")):
        yield


# Primaries shared by the tests of a module (shared_primary): the leak
# guard leaves them and what they start to the fixture, which checks after
# every test that no secondary of theirs is left.
_SHARED_PRIMARIES: set[int] = set()


def _not_shared(kids: list[psutil.Process]) -> list[psutil.Process]:
    def shared(k):
        try:
            return k.pid in _SHARED_PRIMARIES or \
                any(a.pid in _SHARED_PRIMARIES for a in k.parents())
        except psutil.Error:
            return False
    return [k for k in kids if not shared(k)]


@pytest.fixture(autouse=True)
def leak_guard():
    before = _fds()
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 5
    while _not_shared(me.children(recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.02)
    kids = _not_shared(me.children(recursive=True))
    for k in kids:
        try:
            k.kill()
            k.wait(5)
        except psutil.Error:
            pass
    after = _fds()
    assert not kids, f"child processes left behind: {[(k.pid, k.name()) for k in kids]}"
    assert after == before, f"fds leaked: {sorted(after - before)} (closed: {sorted(before - after)})"


def _stop_primary(p: PrimaryProc) -> None:
    code, out, err = p.stop()
    assert code == 0, f"primary exited {code}: {err}"
    assert not psutil.pid_exists(p.template_pid) or \
        psutil.Process(p.template_pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture
def primary(runtime_dir):
    """A primary of the test's own, stopped after it."""
    p = PrimaryProc(runtime_dir)
    yield p
    _stop_primary(p)


# A module whose tests only launch secondaries against a default primary
# and leave nothing behind shares one: it defines `primary` as
# shared_primary, and a test of it that needs its own (it stops, kills or
# reconfigures the primary, or counts what its template holds) asks for
# own_primary.
@pytest.fixture
def own_primary(runtime_dir):
    p = PrimaryProc(runtime_dir)
    yield p
    _stop_primary(p)


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    d = tempfile.mkdtemp(prefix="fh-", dir="/tmp")
    try:
        with _run_lock(tmp_path_factory, False):
            p = PrimaryProc(d)
        _SHARED_PRIMARIES.add(p.proc.pid)
        try:
            yield p
        finally:
            _SHARED_PRIMARIES.discard(p.proc.pid)
            with _run_lock(tmp_path_factory, False):
                _stop_primary(p)
    finally:
        strays = forkhost_procs(d)
        for proc in strays:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)
    assert not strays, f"stray forkhost processes left: {[proc.pid for proc in strays]}"


@pytest.fixture
def shared_primary(_module_primary):
    """The module's primary (see own_primary).  After each test, every
    secondary the test launched must have ended."""
    p = _module_primary
    assert p.proc.poll() is None, f"the shared primary died: {p.proc.returncode}"
    yield p
    left = []

    def none_left():
        left[:] = secondary_pids(p.prefix, p.runtime_dir)
        return not left
    try:
        wait_until(none_left, timeout=5, what="the test's secondaries to end")
    except AssertionError:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"secondaries left running: {left}") from None


@pytest.fixture(scope="session")
def native_so(tmp_path_factory):
    """tests/fixtures/native_entry.c built as a shared object: the native
    twins of fhfix's entries (signals, die_by, sleeper, ignore_term)."""
    return build_native_so(tmp_path_factory.mktemp("native_so"))
