"""Shared fixtures: real primaries on private runtime directories, and the
leak guard every test runs under.

Every test must leave the test process as it found it: the same open fds,
no child processes (zombies included) and no stray forkhost processes of
its runtime directory.  The guard fails the test otherwise.
"""

from __future__ import annotations

import contextlib
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
import fhtest  # noqa: E402
from fhtest import (ROOT, RUNNER, SHARED_PRIMARIES, PrimaryProc,  # noqa: E402
                    build_native_so, children_of, forkhost_procs, leaves_nothing,
                    module_primary, run_lock, stop_primary)


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
    _default_glibc_signals()
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


# rt_sigaction's number, where struct sigaction is {handler, flags,
# restorer, mask} as below.
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}


def _default_glibc_signals() -> None:
    """Signals 32 and 33, which glibc keeps for itself: neither Python nor
    glibc's sigaction() will set them, but a runner can pass them on
    ignored (Python 3.13's subprocess does, through posix_spawn, to
    pytest-xdist's workers), and exec keeps them so.  An ignored one goes
    back to the default through the system call itself; one with a handler
    (glibc's own, once the process has cancelled a thread) is left alone."""
    import ctypes

    nr = _SYS_RT_SIGACTION.get(os.uname().machine)
    if nr is None:
        return

    class KernelSigaction(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_void_p), ("flags", ctypes.c_ulong),
                    ("restorer", ctypes.c_void_p), ("mask", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    for sig in (32, 33):
        old = KernelSigaction()
        if libc.syscall(nr, sig, None, ctypes.byref(old), 8) != 0:
            continue
        if old.handler == signal.SIG_IGN.value:
            libc.syscall(nr, sig, ctypes.byref(KernelSigaction()), None, 8)


@pytest.hookimpl(optionalhook=True)      # without pytest-xdist (-p no:xdist), unused
def pytest_xdist_auto_num_workers(config):
    """`pytest -n auto`: two workers per CPU.  Most tests spend much of
    their time waiting (for a child, a signal, a timeout the test is
    about), so one worker per CPU leaves the CPUs half idle."""
    return 2 * len(os.sched_getaffinity(0))


@pytest.hookimpl(optionalhook=True)      # without pytest-xdist (-p no:xdist), unused
def pytest_xdist_make_scheduler(config, log):
    """`-n`'s default distribution (load) becomes work stealing: a few
    tests take many seconds, and a worker left with them gives the rest
    away instead of running them after the others are done."""
    if config.getoption("dist", None) == "load":
        from xdist.scheduler import WorkStealingScheduling
        return WorkStealingScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    """The order the workers get the tests in (every worker orders the same
    collection the same way, as pytest-xdist requires): the exclusive tests
    first (the others wait until they are all done, fhtest.run_lock), then
    one lane per worker, as work stealing hands out its first chunks (equal
    counts, in order), each starting with its share of the heavy tests.  A
    heavy test left for the end would run alone while the other workers
    idle; the light ones keep their file order, so that a module's tests
    stay with one worker and its shared primary.  The first lane starts
    with its share of the tests of the sanitized C library, whose build
    they wait for; the other lanes run the other heavy tests first."""
    exclusive = [i for i in items if i.get_closest_marker("exclusive")]
    rest = [i for i in items if not i.get_closest_marker("exclusive")]
    heavy = [i for i in rest if i.get_closest_marker("heavy")]
    light = [i for i in rest if not i.get_closest_marker("heavy")]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get(DIST_MODE) in ("load", "worksteal"):   # see run_lock
        fhtest.EXCLUSIVE_TESTS = len(exclusive)
    builds = [i for i in heavy if "sanitized_lib" in i.fixturenames]
    others = [i for i in heavy if "sanitized_lib" not in i.fixturenames]
    lanes, left = [], len(items)
    for lane in range(workers):         # worksteal's split of the pending tests
        size = left // (workers - lane)
        left -= size
        if workers == 1:
            share = others
        else:                           # lane 0 builds the library first
            share = others[lane - 1::workers - 1] if lane else []
        lanes.append((size, share + builds[lane::workers]))
    ordered = list(exclusive)
    for lane, (size, lane_heavy) in enumerate(lanes):
        room = size - len(lane_heavy) - (len(exclusive) if lane == 0 else 0)
        take = light[:max(room, 0)]
        del light[:len(take)]
        ordered += lane_heavy + take
    items[:] = ordered + light


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    if item.get_closest_marker("exclusive"):      # run, skipped or failed
        fhtest.exclusive_done(item.config._tmp_path_factory)   # tmp_path_factory's object


# The controller's --dist, for the workers (where pytest-xdist sets it to "no").
DIST_MODE = "FHTEST_DIST"


def _no_service_manager() -> None:
    """A runner that is itself a systemd service (a CI job) passes its
    NOTIFY_SOCKET and the rest on: every primary the tests start would
    talk to that manager and reload on SIGHUP instead of stopping.  The
    tests that want them set their own."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                 "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)


def pytest_configure(config):
    _default_signals()
    _no_service_manager()
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[DIST_MODE] = str(config.getoption("dist", None))
    config.addinivalue_line(
        "markers", "exclusive: runs while no other test does (pytest-xdist's other "
        "workers wait): it changes or counts what the whole machine shares, "
        "as the huge page pool")
    config.addinivalue_line(
        "markers", "heavy: takes seconds (of CPU or of waiting): started early, and "
        "spread over pytest-xdist's workers")
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


@pytest.fixture(autouse=True)
def _exclusive(request, tmp_path_factory):
    """A test marked exclusive runs while no other test does (nor a shared
    primary starts or stops)."""
    with run_lock(tmp_path_factory, request.node.get_closest_marker("exclusive")):
        yield


def _not_shared() -> list[int]:
    """This process's descendants but the shared primaries (SHARED_PRIMARIES)
    and theirs."""
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children_of(todo.pop()):
            if pid not in SHARED_PRIMARIES:
                found.append(pid)
                todo.append(pid)
    return found


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "gone"


@pytest.fixture(autouse=True)
def leak_guard():
    before = _fds()
    yield
    deadline = time.monotonic() + 5
    while _not_shared() and time.monotonic() < deadline:
        time.sleep(0.02)
    kids = [(pid, _name(pid)) for pid in _not_shared()]
    for pid, _ in kids:
        with contextlib.suppress(psutil.Error):
            k = psutil.Process(pid)
            k.kill()
            k.wait(5)
    after = _fds()
    assert not kids, f"child processes left behind: {kids}"
    assert after == before, f"fds leaked: {sorted(after - before)} (closed: {sorted(before - after)})"


@pytest.fixture
def primary(runtime_dir):
    """A primary of the test's own, stopped after it."""
    p = PrimaryProc(runtime_dir)
    yield p
    stop_primary(p)


# A module whose tests only launch secondaries against a default primary
# and leave nothing behind shares one: it defines `primary` as
# shared_primary, and a test of it that needs its own (it stops, kills or
# reconfigures the primary, or counts what its template holds) asks for
# own_primary.
@pytest.fixture
def own_primary(runtime_dir):
    p = PrimaryProc(runtime_dir)
    yield p
    stop_primary(p)


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    with module_primary(tmp_path_factory) as p:
        yield p


@pytest.fixture
def shared_primary(_module_primary):
    """The module's primary (see own_primary).  After each test, every
    secondary the test launched must have ended."""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.fixture(scope="session")
def shm_native(tmp_path_factory):
    """shmtest.build_shm_native's programs (the shared-memory fixtures' C
    side), built once per worker for every module that uses them."""
    from shmtest import build_shm_native
    return build_shm_native(tmp_path_factory.mktemp("shm_native"))


@pytest.fixture(scope="session")
def native_so(tmp_path_factory):
    """tests/fixtures/native_entry.c built as a shared object: the native
    twins of fhfix's entries (signals, die_by, sleeper, ignore_term)."""
    return build_native_so(tmp_path_factory.mktemp("native_so"))
