"""forkhost.Executor: concurrent.futures.ProcessPoolExecutor whose worker
processes are secondaries.

It is ProcessPoolExecutor itself, given a multiprocessing context whose
processes the template starts: a worker is launched like any entry
(``forkhost.futures:_spawn_main``) and set up by multiprocessing's own
spawn code (the preparation data and the pickled process object come over
a pipe, as with the "spawn" and "forkserver" start methods), so
submit/map/shutdown, initializer, max_tasks_per_child, BrokenProcessPool
and the pickling rules are exactly ProcessPoolExecutor's.  Workers live as
long as the executor, each running many tasks.

The worker's exit status comes in the template's EXITED report; its
sentinel (what multiprocessing waits on) is its pidfd, readable once it
has exited; signals go through that pidfd.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import context as _mp_context
from multiprocessing import process as _mp_process
from multiprocessing import util as _mp_util

from ._client import launch
from ._errors import ForkhostError

START_METHOD = "forkhost"


class _DupFd:
    """An fd handed to the worker: its number there (3, 4, ...)."""

    def __init__(self, fd: int):
        self.fd = fd

    def detach(self) -> int:
        return self.fd


def _close(sec, fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    sec.close()


class _Popen:
    """multiprocessing's process handle (what popen_spawn_posix.Popen is
    for "spawn"), for a worker run as a secondary."""

    method = START_METHOD
    DupFd = _DupFd

    def __init__(self, process_obj, prefix, runtime_dir):
        _mp_util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._launch(process_obj, prefix, runtime_dir)

    def duplicate_for_child(self, fd: int) -> int:
        self._fds.append(fd)
        return 2 + len(self._fds)        # passed fds land at 3, 4, ...

    def _launch(self, process_obj, prefix, runtime_dir) -> None:
        from multiprocessing import resource_tracker, spawn
        tracker = self.duplicate_for_child(resource_tracker.getfd())
        prep_data = spawn.get_preparation_data(process_obj._name)
        fp = io.BytesIO()
        _mp_context.set_spawning_popen(self)
        try:
            _mp_context.reduction.dump(prep_data, fp)
            _mp_context.reduction.dump(process_obj, fp)
        finally:
            _mp_context.set_spawning_popen(None)
        child_r, parent_w = os.pipe2(os.O_CLOEXEC)
        try:
            data = self.duplicate_for_child(child_r)
            sec = launch(f"{__name__}:_spawn_main",
                         ["--multiprocessing-fork", str(data), str(tracker)],
                         prefix=prefix, runtime_dir=runtime_dir, pass_fds=self._fds)
        except BaseException:
            os.close(parent_w)
            raise
        finally:
            os.close(child_r)
        self._sec = sec
        self.pid = sec.pid
        # The pidfd, ours until close(): readable once the worker exited,
        # as the pipe popen_fork uses is once the child's end closed.
        self.sentinel = os.dup(sec.pidfd)
        self.finalizer = _mp_util.Finalize(self, _close, (sec, [self.sentinel, parent_w]))
        with open(parent_w, "wb", closefd=False) as f:
            f.write(fp.getbuffer())

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            # WNOHANG does not wait for another thread's blocking wait
            # (a join): the worker runs on as far as it can tell.
            if not self._lock.acquire(not flag & os.WNOHANG):
                return None
            try:
                if self.returncode is None:
                    try:
                        self.returncode = (self._sec.poll() if flag & os.WNOHANG
                                           else self._sec.wait())
                    except ForkhostError:
                        # The template is gone; the worker was killed.
                        self.returncode = -signal.SIGKILL
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if timeout is not None:
                from multiprocessing.connection import wait
                if not wait([self.sentinel], timeout):
                    return None
            return self.poll(os.WNOHANG if timeout == 0.0 else 0)
        return self.returncode

    def _send_signal(self, sig) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.sentinel, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._send_signal(signal.SIGKILL)

    def close(self) -> None:
        if self.finalizer is not None:
            self.finalizer()


class Process(_mp_process.BaseProcess):
    """A multiprocessing.Process run as a secondary."""

    # None: a worker keeps the default start method the spawn code gave it
    # (the parent's), for any processes it starts itself.
    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        prefix, runtime_dir = getattr(process_obj, "_forkhost_target", (None, None))
        return _Popen(process_obj, prefix, runtime_dir)


class Context(_mp_context.BaseContext):
    """A multiprocessing context whose processes are secondaries of the
    primary for ``prefix`` (default: as forkhost.launch)."""

    _name = START_METHOD

    def __init__(self, prefix: str | None = None, runtime_dir=None):
        self._target = (prefix, None if runtime_dir is None else os.fspath(runtime_dir))

    def Process(self, *args, **kwargs) -> Process:
        p = Process(*args, **kwargs)
        p._forkhost_target = self._target
        return p

    def get_context(self, method=None):
        if method is None or method == START_METHOD:
            return self
        return super().get_context(method)


class Executor(ProcessPoolExecutor):
    """concurrent.futures.ProcessPoolExecutor with secondaries as workers:
    ``forkhost.Executor(max_workers)`` where the code had
    ``ProcessPoolExecutor(max_workers)``.  ``prefix``/``runtime_dir`` choose
    the primary (by default the one this program started, else
    $FORKHOST_PREFIX...); the other arguments are ProcessPoolExecutor's."""

    def __init__(self, max_workers=None, *, prefix=None, runtime_dir=None,
                 initializer=None, initargs=(), max_tasks_per_child=None):
        super().__init__(max_workers, mp_context=Context(prefix, runtime_dir),
                         initializer=initializer, initargs=initargs,
                         max_tasks_per_child=max_tasks_per_child)


def _spawn_main(argv) -> None:
    """The worker secondary's entry: multiprocessing's spawn_main, reading
    what to run from the pipe at fd argv[2]."""
    for name in ("LISTEN_FDS", "LISTEN_PID"):     # set for the passed fds
        os.environ.pop(name, None)
    sys.argv = list(argv)
    from multiprocessing import spawn
    spawn.spawn_main(int(argv[2]), tracker_fd=int(argv[3]))


__all__ = ["Executor", "Context", "Process", "START_METHOD"]
