"""forkhost.Popen and forkhost.run: the subprocess module's interface, with
a secondary in place of a child process.

``forkhost.Popen`` is a ``subprocess.Popen`` whose child is started by the
template (forkhost._client.launch) instead of fork+exec, so everything
subprocess does around the child is subprocess's own code: the stdin,
stdout and stderr arguments (PIPE, DEVNULL, STDOUT, fds, file objects),
text mode and encodings, communicate() (deadlock-free, with input and
timeout), the context manager.  What differs is below the line: the
secondary is not our child, so its exit status comes in the template's
EXITED report over the launch connection (not waitpid), and signals go
through its pidfd (never a recycled pid).

The first item of ``args`` is the entry, as forkhost-run takes it
(``pkg.mod:func``, ``script.py``, ``lib.so[:symbol]``, ...), or ``-m`` and
a module name; the rest are the program's arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from subprocess import (DEVNULL, PIPE, STDOUT, CalledProcessError,  # noqa: F401
                        CompletedProcess, SubprocessError, TimeoutExpired)

from ._wire import DEFAULT_CONNECT_TIMEOUT, ERROR_ENTRY_MAX
from ._client import launch
from ._errors import ForkhostError, RefusedError


def _entry(args) -> tuple[str | bytes, bool, list]:
    """(entry, module, arguments) from Popen's args."""
    if isinstance(args, (str, bytes, os.PathLike)):
        items = [args]
    else:
        items = list(args)
    if not items:
        raise ValueError("forkhost.Popen: args is empty; its first item is the entry "
                         "(or -m and a module name)")
    items = [os.fspath(a) for a in items]
    if items[0] in ("-m", b"-m"):
        if len(items) < 2:
            raise ValueError("forkhost.Popen: -m needs a module name after it")
        return items[1], True, items[2:]
    return items[0], False, items[1:]


class Popen(subprocess.Popen):
    """subprocess.Popen, the child being a secondary of a forkhost primary.

    ``args``: ``[entry, arg, ...]`` or ``["-m", module, arg, ...]``, or the
    entry alone as a string.  ``prefix``/``runtime_dir`` choose the primary
    (by default the one this program started, else $FORKHOST_PREFIX...).
    ``pass_fds`` keep their numbers as with subprocess, which forkhost can
    do for fds 3, 4, ... given in that order; ``fds`` lands any fds at 3, 4,
    ... in the order given (with LISTEN_FDS/LISTEN_PID set).  A launch the
    template refuses raises RefusedError (exit_code 125, 126 or 127, where
    subprocess raises OSError); an entry that fails before it runs (e.g. no
    such module for -m) behaves as a process that wrote python's message
    and exited with python's status (``pid`` is then None).
    """

    def __init__(self, args, bufsize=-1, executable=None, stdin=None, stdout=None,
                 stderr=None, *, cwd=None, env=None, universal_newlines=None, text=None,
                 encoding=None, errors=None, pass_fds=(), umask=-1, pipesize=-1,
                 prefix=None, runtime_dir=None, fds=(),
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT):
        # executable is a parameter only so that the positional ones are
        # subprocess.Popen's: (args, bufsize, executable, stdin, stdout, stderr).
        if executable is not None:
            raise TypeError("forkhost.Popen takes no executable: the entry is "
                            "args[0] (or -m and a module name)")
        self._fh_entry = _entry(args)
        pass_fds = tuple(pass_fds)
        if pass_fds and fds:
            raise ValueError("forkhost.Popen: give pass_fds or fds, not both")
        if pass_fds and sorted(pass_fds) != list(range(3, 3 + len(pass_fds))):
            raise ValueError(
                f"forkhost.Popen: pass_fds {sorted(pass_fds)} cannot keep their numbers "
                f"in a secondary, which gets extra fds at 3, 4, ...: pass fds=[...] to "
                f"have them there, in the order given")
        self._fh_fds = sorted(pass_fds) if pass_fds else list(fds)
        self._fh_target = (prefix, runtime_dir, connect_timeout)
        self._fh_umask = None if umask is None or umask < 0 else umask
        self._fh_sec = None
        self._fh_pidfd = -1                 # ours, for signals from any thread
        self._fh_sig_lock = threading.Lock()
        super().__init__(args, bufsize, stdin=stdin, stdout=stdout, stderr=stderr,
                         cwd=cwd, env=env, universal_newlines=universal_newlines,
                         text=text, encoding=encoding, errors=errors,
                         pipesize=pipesize)

    # subprocess.Popen.__init__ calls this with its handles made: -1 where
    # the child inherits ours, else the child's end of a pipe, /dev/null or
    # the caller's fd (and stderr's is stdout's for STDOUT).
    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds,
                       cwd, env, startupinfo, creationflags, shell,
                       p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                       *_rest):
        entry, module, argv = self._fh_entry
        prefix, runtime_dir, connect_timeout = self._fh_target
        try:
            try:
                sec = launch(entry, argv, module=module, prefix=prefix,
                             runtime_dir=runtime_dir, env=env, cwd=cwd,
                             stdin=None if p2cread == -1 else p2cread,
                             stdout=None if c2pwrite == -1 else c2pwrite,
                             stderr=None if errwrite == -1 else errwrite,
                             pass_fds=self._fh_fds, umask=self._fh_umask,
                             connect_timeout=connect_timeout)
            except RefusedError as err:
                if not 1 <= err.exit_code <= ERROR_ENTRY_MAX:
                    raise
                # The entry failed before it ran; its message is already on
                # the stderr given.  As python would have: it exited so.
                self._child_created = True
                self.returncode = err.exit_code
                return
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite,
                                 errread, errwrite)
        self._fh_sec = sec
        self._fh_pidfd = os.dup(sec.pidfd)
        self.pid = sec.pid
        self._child_created = True

    def _fh_done(self, returncode: int) -> None:
        """The secondary ended: its status, and the pidfd let go."""
        self.returncode = returncode
        with self._fh_sig_lock:
            if self._fh_pidfd >= 0:
                os.close(self._fh_pidfd)
                self._fh_pidfd = -1

    def _internal_poll(self, _deadstate=None, **_ignored):
        # Called by __del__: no module globals that may be gone by then.
        if self.returncode is None and self._fh_sec is not None:
            if not self._waitpid_lock.acquire(False):
                return None         # another thread is reading the report
            try:
                if self.returncode is None:
                    try:
                        rc = self._fh_sec.poll()
                    except (ForkhostError, OSError):
                        if _deadstate is None:
                            raise
                        rc = _deadstate
                    if rc is not None:
                        self._fh_done(rc)
            finally:
                self._waitpid_lock.release()
        return self.returncode

    def _wait(self, timeout):
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            with self._waitpid_lock:
                if self.returncode is None:
                    self._fh_done(self._fh_sec.wait())
            return self.returncode
        endtime = time.monotonic() + timeout
        if not self._waitpid_lock.acquire(timeout=max(0.0, timeout)):
            raise TimeoutExpired(self.args, timeout)
        try:
            if self.returncode is None:
                try:
                    rc = self._fh_sec.wait(max(0.0, endtime - time.monotonic()))
                except TimeoutExpired:
                    raise TimeoutExpired(self.args, timeout) from None
                self._fh_done(rc)
        finally:
            self._waitpid_lock.release()
        return self.returncode

    def send_signal(self, sig):
        """Send a signal to the secondary (through its pidfd); nothing once
        it has ended."""
        self.poll()
        with self._fh_sig_lock:
            if self.returncode is None and self._fh_pidfd >= 0:
                try:
                    signal.pidfd_send_signal(self._fh_pidfd, sig)
                except ProcessLookupError:
                    pass

    def __repr__(self):
        return f"<forkhost.Popen: returncode: {self.returncode} args: {self.args!r}>"


def run(*popenargs, input=None, capture_output=False, timeout=None, check=False,
        **kwargs) -> CompletedProcess:
    """subprocess.run with a secondary: the same arguments, the same
    CompletedProcess, CalledProcessError and TimeoutExpired (after which
    the secondary has been killed and waited for)."""
    if input is not None:
        if kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        kwargs["stdin"] = PIPE
    if capture_output:
        if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used "
                             "with capture_output.")
        kwargs["stdout"] = PIPE
        kwargs["stderr"] = PIPE
    with Popen(*popenargs, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except TimeoutExpired:
            process.kill()
            process.wait()
            raise
        except BaseException:
            process.kill()
            raise
        retcode = process.poll()
        if check and retcode:
            raise CalledProcessError(retcode, process.args, output=stdout, stderr=stderr)
    return CompletedProcess(process.args, retcode, stdout, stderr)


def call(*popenargs, timeout=None, **kwargs) -> int:
    """subprocess.call: run and return the returncode."""
    with Popen(*popenargs, **kwargs) as p:
        try:
            return p.wait(timeout=timeout)
        except BaseException:
            p.kill()
            raise


def check_call(*popenargs, **kwargs) -> int:
    """subprocess.check_call: 0, or CalledProcessError."""
    retcode = call(*popenargs, **kwargs)
    if retcode:
        raise CalledProcessError(retcode, popenargs[0] if popenargs else kwargs.get("args"))
    return 0


def check_output(*popenargs, timeout=None, **kwargs):
    """subprocess.check_output: the captured stdout, or CalledProcessError."""
    for kw in ("stdout", "check"):
        if kw in kwargs:
            raise ValueError(f"{kw} argument not allowed, it will be overridden.")
    if "input" in kwargs and kwargs["input"] is None:
        kwargs["input"] = "" if kwargs.get("universal_newlines") or kwargs.get(
            "text") or kwargs.get("encoding") or kwargs.get("errors") else b""
    return run(*popenargs, stdout=PIPE, timeout=timeout, check=True, **kwargs).stdout


__all__ = ["Popen", "run", "call", "check_call", "check_output", "PIPE", "STDOUT",
           "DEVNULL", "CompletedProcess", "CalledProcessError", "TimeoutExpired",
           "SubprocessError"]
