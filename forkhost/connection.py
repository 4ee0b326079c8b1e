"""One client of the template: receive, validate, fork, reply.

A connection lives from accept() to the secondary's exit: PENDING until its
LAUNCH arrives, RUNNING while its secondary runs.  Everything a client sends
is checked before anything is forked; a bad request gets an ERROR record and
its connection closed, and never takes the template down.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from . import entries, protocol, secondary
from ._native import ffi, lib
from .errors import EXIT_FORKHOST, ProtocolError
from .protocol import Launch

_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid

PENDING, RUNNING = "pending", "running"


class Connection:
    def __init__(self, template, sock: socket.socket, now: float):
        self.template = template
        self.sock = sock
        self.state = PENDING
        self.deadline = now + template.request_timeout   # for PENDING
        self.kill_at: float | None = None     # SIGKILL due (client gone)
        self.pid = 0
        self.pidfd = -1
        self.client_pid = 0
        self.client_uid = -1
        self.argv0 = ""
        self.started = 0.0

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- checks ---------------------------------------------------------

    def check_peer(self) -> str | None:
        """SO_PEERCRED: the primary's uid and root are served."""
        pid, uid, _gid = _UCRED.unpack(self.sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        self.client_pid, self.client_uid = pid, uid
        if uid not in (0, self.template.uid):
            return (f"permission denied: uid {uid} may not use the template of "
                    f"prefix {self.template.prefix!r} (only uid "
                    f"{self.template.uid} and root)")
        return None

    # -- replies --------------------------------------------------------

    def send(self, mtype: int, body: bytes = b"", fds=()) -> bool:
        try:
            protocol.send(self.sock, mtype, body, fds)
            return True
        except OSError:
            return False

    def refuse(self, text: str, exit_code: int = EXIT_FORKHOST) -> None:
        self.template.refused += 1
        self.send(protocol.ERROR, protocol.encode_error(exit_code, text))

    # -- the request ----------------------------------------------------

    def handle_request(self) -> bool:
        """Read and act on the request.  False when nothing arrived yet
        (EAGAIN); True when the request was handled, and then either the
        connection is RUNNING or it has been answered and must be closed."""
        try:
            msg = protocol.recv(self.sock, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except ProtocolError as err:
            self.refuse(str(err))
            return True
        except OSError:
            return True
        if msg is None:
            return True
        try:
            if msg.type == protocol.INFO:
                self.send(protocol.INFO_REPLY, self.template.info_json())
            elif msg.type != protocol.LAUNCH:
                self.refuse(f"unexpected message type 0x{msg.type:02x}")
            else:
                self.launch(msg)
        finally:
            msg.close_fds()   # the secondary has its copies; ours go
        return True

    def launch(self, msg: protocol.Message) -> None:
        t = self.template
        try:
            req = Launch.decode(msg.body, len(msg.fds))
        except ProtocolError as err:
            self.refuse(str(err))
            return
        if t.stopping:
            self.refuse(f"the primary of prefix {t.prefix!r} is stopping")
            return
        if len(t.running) >= t.max_secondaries:
            self.refuse(f"too many secondaries: the template of prefix "
                        f"{t.prefix!r} runs its limit of {t.max_secondaries} "
                        f"(--max-secondaries)")
            return
        cwd_fd = msg.fds[0]
        entry = os.fsdecode(req.entry)
        try:
            target = entries.classify(entry, req.module, cwd_fd,
                                      _fd_path(cwd_fd))
        except entries.EntryError as err:
            self.refuse(str(err), err.exit_code)
            return
        try:
            pid = self.spawn(req, target, msg.fds)
        except OSError as err:
            self.refuse(f"cannot fork the secondary: {err.strerror}")
            return
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.argv0 = os.fsdecode(req.argv[0])
        self.started = time.monotonic()
        self.state = RUNNING
        t.started_secondary(self)
        if not self.send(protocol.STARTED, protocol.encode_started(pid),
                         [self.pidfd]):
            self.client_gone()

    def spawn(self, req: Launch, target: entries.Target, fds: list[int]) -> int:
        """Fork the secondary; returns its pid in the template."""
        keep = []                       # cffi buffers must outlive the call

        def cstrings(items):
            bufs = [ffi.new("char[]", s) for s in items]
            keep.extend(bufs)
            arr = ffi.new("char *[]", bufs + [ffi.NULL])
            keep.append(arr)
            return arr

        c_fds = ffi.new("int[]", fds)
        spec = ffi.new("struct fh_child_spec *")
        spec.fds, spec.nfds = c_fds, len(fds)
        spec.stdio_mask, spec.nextra = req.stdio_mask, req.nextra
        spec.argv, spec.envp = cstrings(req.argv), cstrings(req.env)
        spec.umask = req.umask
        area, length = self.template.title_area
        spec.title_area, spec.title_len = ffi.cast("char *", area), length

        if target.kind == entries.NATIVE:
            path = ffi.new("char[]", os.fsencode(target.path))
            sym = ffi.new("char[]", target.symbol.encode()) if target.symbol else ffi.NULL
            pid = lib.fh_spawn_native(spec, path, sym)
            if pid < 0:
                raise OSError(ffi.errno, os.strerror(ffi.errno))
            return pid

        pid = os.fork()
        if pid == 0:
            # The child: the template's sockets must not be closed (or
            # flushed) by Python objects later; fh_child_setup closes the fds
            # themselves.  Whatever happens, it ends in os._exit.
            code = EXIT_FORKHOST
            try:
                self.template.forget_in_child()
                code = secondary.run(req, target, spec)
            finally:
                os._exit(code)
        return pid

    # -- after the launch -----------------------------------------------

    def client_gone(self) -> None:
        """The client closed its end while its secondary runs: SIGTERM now,
        SIGKILL after the grace period."""
        if self.state != RUNNING or self.kill_at is not None:
            return
        self.template.signal_secondary(self, 15)
        self.kill_at = time.monotonic() + self.template.grace

    def report_exit(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        sig = -code if code < 0 else 0
        self.send(protocol.EXITED, protocol.encode_exited(0 if sig else code, sig))


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "the client's cwd"
