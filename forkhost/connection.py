"""One client of the template: receive, validate, fork, reply.

A connection lives from accept() to the secondary's exit: PENDING until its
LAUNCH arrives, RUNNING while its secondary runs.  Everything a client sends
is checked before anything is forked; a bad request gets an ERROR record and
its connection closed, and never takes the template down.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

from . import entries, protocol, secondary
from ._native import ffi, lib
from .errors import EXIT_FORKHOST, ProtocolError
from .protocol import Launch


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
        self.report: socket.socket | None = None   # the secondary's exit report
        self.reported = False                      # EXITED already sent
        self.report_polled = False                 # report socket in the epoll
        self.client_pid = 0
        self.client_uid = -1
        self.argv0 = ""
        self.entry = ""            # as the client gave it
        self.module = False        # -m ENTRY (LAUNCH_MODULE)
        self.started = 0.0
        self.job_control = False   # LAUNCH_JOBCTL: tell the client of stops

    @classmethod
    def took(cls, template, member, msg: protocol.Message) -> "Connection":
        """A pool member took this client's launch (TOOK: the LAUNCH flags,
        the entry and argv[0], and a copy of the connection)."""
        now = time.monotonic()
        conn = cls(template, socket.socket(fileno=msg.fds[0]), now)
        try:
            conn.check_peer()          # for ps; the member checked the uid
        except OSError:
            pass
        conn.pid, conn.pidfd, conn.report = member.pid, member.pidfd, member.sock
        conn.state = RUNNING
        (flags,) = struct.unpack_from("=I", msg.body)
        entry, _, argv0 = msg.body[4:].partition(b"\0")
        conn.job_control = bool(flags & protocol.LAUNCH_JOBCTL)
        conn.module = bool(flags & protocol.LAUNCH_MODULE)
        conn.entry = os.fsdecode(entry)
        conn.argv0 = os.fsdecode(argv0)
        conn.started = now
        return conn

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- checks ---------------------------------------------------------

    def check_peer(self) -> str | None:
        """SO_PEERCRED: the primary's uid and root are served."""
        pid, uid, _gid = protocol.peer_cred(self.sock)
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
        return self.handle_message(msg)

    def handle_message(self, msg: protocol.Message | None) -> bool:
        """Act on a received (or handed-over) request; True as above."""
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
        # Members count: each may take a launch without asking.
        if t.running_count() + len(t.members) >= t.max_secondaries:
            self.refuse(f"too many secondaries: the template of prefix "
                        f"{t.prefix!r} runs its limit of {t.max_secondaries} "
                        f"(--max-secondaries)")
            return
        cwd_fd = msg.fds[0]
        entry = os.fsdecode(req.entry)
        try:
            target = entries.classify(entry, req.module, cwd_fd)
        except entries.EntryError as err:
            self.refuse(str(err), err.exit_code)
            return
        self.argv0 = os.fsdecode(req.argv[0])
        self.entry, self.module = entry, req.module
        self.job_control = bool(req.flags & protocol.LAUNCH_JOBCTL)
        self.started = time.monotonic()
        # Fork now (no member was idle when this client connected).  The
        # secondary reports to the template only, which sends EXITED, after
        # STARTED, itself.
        mine, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            pid = self.fork_secondary(req, target, msg.fds, theirs)
        except OSError as err:
            mine.close()
            self.refuse(f"cannot fork the secondary: {err.strerror}")
            return
        finally:
            theirs.close()
        self.pid, self.pidfd, self.report = pid, os.pidfd_open(pid), mine
        self.state = RUNNING
        t.started_secondary(self)
        if not self.send(protocol.STARTED, protocol.encode_started(self.pid),
                         [self.pidfd]):
            self.client_gone()
        if target.kind != entries.NATIVE:
            t.learn_launch(cwd_fd, self.entry, self.module)

    def fork_secondary(self, req: Launch, target: entries.Target, fds: list[int],
                       report: socket.socket) -> int:
        """No idle member: fork the secondary now; returns its pid."""
        area = self.template.title_area
        if target.kind == entries.NATIVE:
            # The whole fork in C: the child never runs Python.
            spec, keep = secondary.build_spec(req, fds, area, report.fileno(),
                                              client_pid=self.client_pid)
            path, sym = secondary.native_args(target)
            pid = lib.fh_spawn_native(spec, path, sym)
            lib.fh_spec_release(spec)
            del keep
            if pid < 0:
                raise OSError(ffi.errno, os.strerror(ffi.errno))
            return pid
        # The child's setup clears the blocked mask once its dispositions
        # are the defaults (fh_child_setup).
        return secondary.fork_child(
            self.template,
            lambda mask: secondary.become(req, target, fds, area, report.detach(),
                                          client_pid=self.client_pid))

    # -- after the launch -----------------------------------------------

    def client_gone(self) -> None:
        """The client closed its end while its secondary runs: SIGTERM now,
        SIGKILL after the grace period."""
        if self.state != RUNNING or self.kill_at is not None or self.reported:
            return
        self.template.signal_secondary(self, signal.SIGTERM)
        self.kill_at = time.monotonic() + self.template.grace

    def report_stop(self, sig: int) -> None:
        """From waitid: a signal stopped the secondary.  A client that is a
        shell's job (LAUNCH_JOBCTL) stops itself in turn."""
        if self.job_control and not self.reported:
            self.send(protocol.STOPPED, protocol.STOPPED_BODY.pack(sig, 0))

    def report_exit(self, status: int) -> None:
        """From waitpid: the secondary ended without reporting (a signal,
        or it called exit/_exit itself)."""
        if self.reported:
            return
        code = os.waitstatus_to_exitcode(status)
        sig = -code if code < 0 else 0
        self.reported = True
        self.send(protocol.EXITED, protocol.encode_exited(0 if sig else code, sig))

    def read_report(self) -> bool:
        """The secondary's own report, sent just before its _exit: answer
        the client now instead of after the kernel's teardown of its
        address space.  True when the report channel is finished."""
        try:
            data = self.report.recv(16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if len(data) == 8 and not self.reported:
            code, client_told = struct.unpack("=ii", data)
            self.reported = True
            if not client_told:
                self.send(protocol.EXITED, protocol.encode_exited(code & 0xFF, 0))
        return True

