"""The Python client: ``forkhost.launch()`` and ``forkhost run``.

Speaks the same protocol as forkhost-run (C): one connection per launch,
LAUNCH with the cwd, stdio and extra fds, STARTED with the secondary's pid
and a pidfd, EXITED with its status.  Signals are delivered through the
pidfd, so a recycled pid can never be hit.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from . import _protocol as protocol, _runtime as runtime
from ._wire import DEFAULT_CONNECT_TIMEOUT, ERROR_ENTRY_MAX
from ._errors import ForkhostError, NoPrimaryError, ProtocolError, RefusedError

# subprocess's values (not imported here: `forkhost run` starts faster without).
PIPE = -1             # forkhost.Popen only
STDOUT = -2
DEVNULL = -3

def _closed_early(prefix, runtime_dir):
    """The connection closed before any reply: the template died as we
    connected (its pool members hold the listening socket until the kernel
    has torn them down), or a live one dropped us.  Probe as forkhost-run
    does: reset at once means a dying socket (probe again), refused means
    no primary, a probe that stays open is a live template."""
    for _ in range(20):
        try:
            probe = connect(prefix, runtime_dir, 1.0)
        except NoPrimaryError:
            raise
        except ForkhostError:
            break
        with probe:
            ready = runtime.readable(probe, 0.05)
        if not ready:
            break
    raise ForkhostError("the template closed the connection")


def default_target(prefix: str | None = None, runtime_dir=None):
    """The prefix and runtime directory a client goes to when not given:
    in a program that started a forkhost.Primary (itself, or through
    forkhost.init()) and has not stopped it, that primary's (its runtime
    directory only with its prefix); elsewhere None, which runtime.paths
    resolves ($FORKHOST_PREFIX, else "forkhost"; $FORKHOST_RUNTIME_DIR...)."""
    prim = sys.modules.get(f"{__package__}.primary")   # never imported here
    p = prim.running() if prim is not None else None
    if p is not None:
        if prefix is None:
            prefix = p.prefix
        if runtime_dir is None and prefix == p.prefix:
            runtime_dir = p.paths.root
    return prefix, runtime_dir


def connect(prefix: str | None = None, runtime_dir=None,
            timeout: float = DEFAULT_CONNECT_TIMEOUT) -> socket.socket:
    """Connect to a prefix's template; NoPrimaryError when none serves it."""
    p = runtime.paths(*default_target(prefix, runtime_dir))
    path = str(p.socket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NoPrimaryError(
            f"no forkhost primary for prefix {p.prefix!r} (looked for {path})") from None
    except TimeoutError:
        sock.close()
        raise ForkhostError(f"timed out after {timeout:g}s connecting to {path}") from None
    except OSError as err:
        sock.close()
        raise ForkhostError(f"cannot connect to {path}: {err.strerror}") from err
    return sock


def _recv_launch_answer(sock: socket.socket,
                        timeout: float | None) -> protocol.LaunchMessage | None:
    """The answer to our LAUNCH, as _recv; when the timeout runs out while
    a socket-activated primary is still starting (our LAUNCH unread, no
    template running: fh_client_primary_starting, as forkhost-run asks),
    it goes on waiting (docs/systemd.md)."""
    seen, wait = None, timeout
    while True:
        try:
            return _recv(sock, wait)
        except TimeoutError:
            from ._native import ffi, lib
            seen = seen if seen is not None else ffi.new("int *")
            starting = lib.fh_client_primary_starting(
                sock.fileno(), os.fsencode(sock.getpeername() or ""), seen)
            if not starting:
                raise
            wait = max(timeout, DEFAULT_CONNECT_TIMEOUT) if starting == 2 else timeout


def _recv(sock: socket.socket, timeout: float | None) -> protocol.LaunchMessage | None:
    sock.settimeout(timeout)
    try:
        return protocol.recv(sock)
    except TimeoutError:
        raise
    except ConnectionResetError:
        pass
    # The template closed with our request unread (it refused the
    # connection on accept): the kernel reports that before the records it
    # queued for us, so the ERROR saying why may still be there.
    try:
        return protocol.recv(sock)
    except ConnectionResetError:
        return None


def info(prefix: str | None = None, runtime_dir=None,
         timeout: float = DEFAULT_CONNECT_TIMEOUT) -> dict:
    """The template's own account of itself and its running secondaries."""
    import json
    with connect(prefix, runtime_dir, timeout) as sock:
        protocol.send(sock, protocol.INFO)
        msg = _recv(sock, timeout)
        if msg is None or msg.type != protocol.INFO_REPLY:
            raise ProtocolError("the template did not answer INFO")
        return json.loads(msg.body)


def _stdio_fd(spec, default_fd: int, opened: list[int]) -> int | None:
    if spec == PIPE or spec == STDOUT:
        name = ("stdin", "stdout", "stderr")[default_fd]
        what = "PIPE" if spec == PIPE else "STDOUT"
        raise ValueError(f"launch() takes no {name}={what}: forkhost.Popen makes "
                         f"pipes (and stderr=STDOUT), as subprocess.Popen does")
    if spec is None:
        try:
            os.fstat(default_fd)
            return default_fd
        except OSError:
            return None      # closed in the caller: closed in the secondary
    if spec == DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        opened.append(fd)
        return fd
    if isinstance(spec, int):
        return spec
    return spec.fileno()


def current_umask() -> int:
    """This process's umask, read without setting it: os.umask() would
    change it for a moment under every other thread (a Popen or an
    Executor's worker launched from one while another creates files)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)          # before Linux 4.7, or no /proc
    os.umask(umask)
    return umask


def _env_list(env) -> list[bytes]:
    items = os.environb.items() if env is None else env.items()
    return [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in items]


class Secondary:
    """A running secondary, as its client sees it.  Like subprocess.Popen:
    ``returncode`` is N for exit status N and -S for death by signal S."""

    def __init__(self, sock: socket.socket, pid: int, pidfd: int, argv: list[bytes]):
        self._sock = sock
        self.pid = pid
        self.pidfd = pidfd
        self.args = argv
        self.returncode: int | None = None
        self._lost: str | None = None     # why, once the template went away

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def fileno(self) -> int:
        """Readable when the EXITED report has arrived (for select/poll)."""
        return self._sock.fileno()

    def _ready(self, timeout: float | None) -> bool:
        """The report can be read now, or within timeout seconds."""
        if self._lost is not None:
            raise ForkhostError(self._lost)
        return runtime.readable(self._sock, timeout)

    def poll(self) -> int | None:
        if self.returncode is None and self._ready(0):
            self._read_report(None)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the secondary to end; subprocess.TimeoutExpired if it
        has not within timeout seconds (it goes on running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if deadline is not None:
                if not self._ready(max(0.0, deadline - time.monotonic())):
                    from subprocess import TimeoutExpired
                    raise TimeoutExpired(self.args, timeout)
            elif self._lost is not None:
                raise ForkhostError(self._lost)
            self._read_report(None)
        return self.returncode

    def _read_report(self, timeout: float | None) -> None:
        """One message from the template: EXITED (STOPPED and NOTICE come
        only to a client that asked for them: the C client, client.c)."""
        msg = _recv(self._sock, timeout)
        if msg is None:
            # The template is gone: nobody will report this secondary's
            # status; end it rather than leave it running unowned.
            self.kill()
            self.close()
            # Said again by a later poll() or wait(): the connection is gone.
            self._lost = (f"lost the template while secondary {self.pid} was "
                          f"running; killed it")
            raise ForkhostError(self._lost)
        msg.close_fds()
        if msg.type != protocol.EXITED:
            raise ProtocolError(f"unexpected message type 0x{msg.type:02x}")
        code, sig = protocol.decode_struct(protocol.EXITED_BODY, msg.body, "EXITED")
        self.returncode = -sig if sig else code
        self.close()

    def close(self) -> None:
        """Drop the connection (the template then ends a running secondary)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self._sock.close()

    def __enter__(self) -> "Secondary":
        return self

    def __exit__(self, *exc) -> None:
        if self.returncode is None and self.pidfd >= 0:
            self.wait()
        self.close()

    def __repr__(self) -> str:
        return f"<forkhost.Secondary pid={self.pid} returncode={self.returncode}>"


def launch(entry: str, args=(), *, module: bool = False, prefix: str | None = None,
           runtime_dir=None, env=None, cwd=None, stdin=None, stdout=None,
           stderr=None, pass_fds=(), umask: int | None = None,
           connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Secondary:
    """Start a secondary running ``entry`` with ``args``; returns its handle.

    stdin/stdout/stderr: None (this process's fd 0/1/2), DEVNULL, an fd or a
    file object.  pass_fds land at 3, 4, ... with LISTEN_FDS/LISTEN_PID set.
    Raises NoPrimaryError, RefusedError (exit_code 125/126/127; at most
    124: the entry's own failure, found before it ran, whose text is
    already written to the stderr given, as python would have) or
    ForkhostError.
    """
    argv = [os.fsencode(entry)] + [os.fsencode(a) for a in args]
    if umask is None:
        umask = current_umask()
    opened: list[int] = []
    try:
        cwd_fd = os.open(cwd if cwd is not None else ".",
                         os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(cwd_fd)
        fds, mask, err_fd = [cwd_fd], 0, None
        for i, spec in enumerate((stdin, stdout, stderr)):
            if i == 2 and spec == STDOUT:
                spec = 1 if stdout is None else stdout   # where stdout goes
            fd = _stdio_fd(spec, i, opened)
            if fd is not None:
                fds.append(fd)
                mask |= 1 << i
                if i == 2 and fd not in opened:
                    err_fd = fd
        extra = [f if isinstance(f, int) else f.fileno() for f in pass_fds]
        if len(extra) > protocol.MAX_EXTRA_FDS:
            raise ForkhostError(f"too many pass_fds ({len(extra)}; the limit is "
                                f"{protocol.MAX_EXTRA_FDS})")
        req = protocol.Launch(os.fsencode(entry), argv, _env_list(env),
                              protocol.LAUNCH_MODULE if module else 0,
                              umask, mask, len(extra))
        body = req.encode()
        sock = connect(prefix, runtime_dir, connect_timeout)
        try:
            try:
                protocol.send(sock, protocol.LAUNCH, body, fds + extra)
            except (BrokenPipeError, ConnectionResetError):
                pass   # refused on accept: the ERROR saying why is queued
            msg = _recv_launch_answer(sock, connect_timeout)
        except BaseException:
            sock.close()
            raise
    finally:
        for fd in opened:
            os.close(fd)
    if msg is None:
        sock.close()
        _closed_early(prefix, runtime_dir)
    if msg.type == protocol.ERROR:
        msg.close_fds()
        sock.close()
        code, text = protocol.decode_error(msg.body)
        if 1 <= code <= ERROR_ENTRY_MAX:
            # The entry's own failure, found before the fork: what it
            # would have written on the stderr it was given, as it is.
            if err_fd is not None:
                try:
                    os.write(err_fd, msg.body[protocol.ERROR_BODY.size:])
                except OSError:
                    pass
            raise RefusedError(text.rstrip("\n"), code)
        raise RefusedError(text, code)
    if msg.type != protocol.STARTED or len(msg.fds) != 1:
        msg.close_fds()
        sock.close()
        raise ProtocolError(f"unexpected reply 0x{msg.type:02x} to LAUNCH")
    try:
        (pid,) = protocol.decode_struct(protocol.STARTED_BODY, msg.body, "STARTED")
        if pid <= 0:
            raise ProtocolError(f"the template sent STARTED with pid {pid}")
    except BaseException:
        msg.close_fds()
        sock.close()
        raise
    return Secondary(sock, pid, msg.fds[0], argv)


__all__ = ["launch", "info", "connect", "default_target", "Secondary", "DEVNULL"]
