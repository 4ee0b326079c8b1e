"""The primary's IPC endpoint: the listener on ``<runtime>/<prefix>/ipc.sock``,
one connection per member, the template's exit records, pending requests.

Its IPC thread runs libforkhost's receive loop (fh_ipc_loop_run in
csrc/lib/ipc_primary.c, with the GIL released): epoll, recvmsg and the one
parser's checks for every member are C, and so is reading a connection's
first record (fh_ipc_loop_first: a HELLO, or a REFUSE saying what was
wrong).  Python is called (_fh_ipc_upcall) with a valid record, a member's
EOF, an event on one of the other fds (the listener, the exit channel,
connections that have not said HELLO), or a tick (deferred work,
deadlines).  Records go out through fh_ipc_send_fd."""

from __future__ import annotations

import _thread
import collections
import functools
import os
import resource
import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable

from .. import _exit_notice, _protocol as protocol
from .._native import ffi, lib
from .._errors import ForkhostError, IPCError
from . import _state
from ._messages import Member, Message, Peer, PeerReply, PeerStatus, Reply, recursion_error
from ._wire import (BYE, DEFAULT_TIMEOUT, EXIT_BODY, EXIT_NOTICE, EXIT_STATUS_KNOWN,
                    HDR, HDR_SIZE, HELLO_REJOIN, HELLO_TIMEOUT, MAX_MEMBERS, MSG,
                    NAME_MAX, NO_ACTION, NOTICES_B, PARAM_MAX, PEER_NAME_MAX,
                    PRIMARY_BODY, PRIMARY_NOTICE, RECORD_MAX,
                    REPLY, REQUEST, SEND_TIMEOUT, SHUTDOWN_BODY, SHUTDOWN_NOTICE,
                    STATS, WELCOME, WELCOME_BODY, c_fds, close_fds, fd_list,
                    name_bytes, param_bytes)

_unpack_hdr = HDR.unpack_from
_get_ident = threading.get_ident
_ANSWERED, _PEER_NO_ACTION = PeerStatus.ANSWERED, PeerStatus.NO_ACTION
_TIMED_OUT, _DIED = PeerStatus.TIMED_OUT, PeerStatus.DIED
_EPOLL_GONE = int(select.EPOLLHUP | select.EPOLLERR)
_FIRST_HELLO, _FIRST_GONE = lib.FH_IPC_FIRST_HELLO, lib.FH_IPC_FIRST_GONE
_FIRST_REFUSED = lib.FH_IPC_FIRST_REFUSED
_PRIMARY_NOTICE_B = PRIMARY_NOTICE.encode()


def _comm(pid: int) -> str:
    """A peer's name: /proc/PID/comm (as fh__ipc_comm() in ipc.c reads it),
    "" when it cannot be read."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read(PEER_NAME_MAX - 1).rstrip(b"\n").decode(
                errors="replace")
    except OSError:
        return ""



class _Conn:
    """One member connection of the primary.  Closing is deferred while a
    sender uses it, so a recycled fd number can never receive another
    connection's records."""

    __slots__ = ("sock", "fd", "pid", "ppid", "name", "joined", "left", "deadline",
                 "users", "closing")

    def __init__(self, sock: socket.socket, pid: int = 0):
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.ppid = 0
        self.name = ""          # its comm, read when it says HELLO
        self.joined = False
        self.left = False       # said BYE
        self.deadline = 0.0
        self.users = 0
        self.closing = False


class _Pending:
    __slots__ = ("id", "name", "param", "waiting", "replies", "targets", "outcome",
                 "nb_sent", "deadline", "event", "callback", "done", "issuing")

    def __init__(self, rid, name, param, deadline, callback):
        self.id = rid
        self.name = name
        self.param = param
        self.waiting: set[_Conn] = set()
        self.replies: list[Message] = []
        # The members it reached, in order, and what became of each that
        # is not waited for any more (a missing one timed out).
        self.targets: list[_Conn] = []
        self.outcome: dict[_Conn, tuple[PeerStatus, Message | None]] = {}
        self.nb_sent = 0
        self.deadline = deadline
        # sync: a lock born acquired, released once when the request is
        # complete (cheaper than an Event on every request)
        self.event = None if callback else _thread.allocate_lock()
        if self.event is not None:
            self.event.acquire()
        self.callback = callback
        self.done = False
        # Still sending: answers and deaths may come in before the last
        # send returns, but the request is complete only after it.
        self.issuing = True


class _PrimaryEndpoint:
    """The primary's side (the module's docstring says how it works)."""

    def __init__(self, primary, exit_sock: socket.socket | None):
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)   # membership changes
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1
        self.counts = dict.fromkeys(STATS, 0)
        loop = lib.fh_ipc_loop_new()
        if loop == ffi.NULL:
            raise IPCError(f"cannot create the IPC loop: {os.strerror(ffi.errno)}")
        self.loop = ffi.gc(loop, lib.fh_ipc_loop_free)
        # Where the loop receives: a record handed up is read in place.
        self.rxbuf = ffi.buffer(lib.fh_ipc_loop_buffer(loop), RECORD_MAX)
        self.rxfds = lib.fh_ipc_loop_fds(loop)
        self.stopping = False
        self.running = False
        self.thread: threading.Thread | None = None
        self.thread_ident = 0
        # Work for the IPC thread handed over by other threads: async
        # callbacks completed elsewhere.
        self.deferred: collections.deque = collections.deque()
        self.primary = primary
        self.pid = os.getpid()
        self.uid = os.getuid()
        self.path = str(primary.paths.ipc_socket)
        self.conns: dict[int, _Conn] = {}       # every accepted connection
        self.joined: dict[int, _Conn] = {}      # members, in join order
        self.hello_due: dict[int, _Conn] = {}   # accepted, no HELLO yet
        self.exit_sock = exit_sock
        self.reaped: set[int] | None = None     # during shutdown(): exits seen
        try:
            self.listener = self._bind()
        except BaseException:
            lib.fh_ipc_loop_close(self.loop)
            raise
        self.listen_fd = self.listener.fileno()
        self._watch(self.listen_fd, lib.FH_IPC_WATCH_EVENTS)
        self.exit_fd = -1
        if exit_sock is not None:
            exit_sock.setblocking(False)
            self.exit_fd = exit_sock.fileno()
            self._watch(self.exit_fd, lib.FH_IPC_WATCH_EVENTS)
        self.hello = ffi.new("struct fh_ipc_hello *")    # (_read_first's)
        self.handle = ffi.new_handle(self)
        self.running = True
        self.thread = threading.Thread(target=self._run, name="forkhost-ipc",
                                       daemon=True)
        self.thread.start()

    # -- thread ---------------------------------------------------------

    def _run(self) -> None:
        global _looping
        self.thread_ident = threading.get_ident()
        _looping = self
        try:
            if lib.fh_ipc_loop_run(self.loop, lib._fh_ipc_upcall, self.handle) < 0:
                print(f"forkhost ipc: the receive loop failed: "
                      f"{os.strerror(ffi.errno)}", file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            self.running = False
            if _looping is self:
                _looping = None
            self._teardown()

    def _watch(self, fd: int, how: int) -> None:
        if lib.fh_ipc_loop_watch(self.loop, fd, how) < 0:
            raise OSError(ffi.errno, os.strerror(ffi.errno))

    def _unwatch(self, fd: int) -> None:
        lib.fh_ipc_loop_unwatch(self.loop, fd)

    def _tick(self) -> int:
        """The loop's turn for Python's own work: handed-over callbacks,
        expired deadlines.  The next timeout in ms, -1 for none."""
        while self.deferred:
            self._guarded(self.deferred.popleft())
        self._expire()
        t = self._timeout()
        return -1 if t < 0 else int(t * 1000) + 1

    def _guarded(self, fn, *args) -> None:
        """A bug of ours met by one record is that record's problem, never
        the end of the IPC thread (actions have their own guard)."""
        try:
            fn(*args)
        except Exception:
            print("forkhost ipc: internal error (the IPC thread goes on):",
                  file=sys.stderr)
            traceback.print_exc()

    def _defer(self, fn) -> None:
        """Run fn on the IPC thread (actions and async callbacks run there
        and nowhere else)."""
        self.deferred.append(fn)
        self._wakeup()

    def _complete_async(self, p: _Pending) -> None:
        if self.on_ipc_thread() or not self.running:
            self._call_async(p)      # (not running: nobody else will)
        else:
            self._defer(functools.partial(self._call_async, p))

    def _wakeup(self) -> None:
        lib.fh_ipc_loop_wake(self.loop)

    def on_ipc_thread(self) -> bool:
        return threading.get_ident() == self.thread_ident

    def close(self) -> None:
        """Stop the thread; it closes everything on its way out."""
        self.stopping = True
        lib.fh_ipc_loop_stop(self.loop)
        if self.thread is not None and not self.on_ipc_thread():
            self.thread.join(10.0)
            if self.thread.is_alive():
                print("forkhost ipc: the IPC thread is still busy in an "
                      "action; its sockets stay open", file=sys.stderr)

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def stats(self) -> dict[str, int]:
        c = ffi.new("struct fh_ipc_stats *")
        lib.fh_ipc_loop_stats(self.loop, c)
        with self.lock:
            return {k: v + getattr(c, k) for k, v in self.counts.items()}

    # -- sending --------------------------------------------------------

    def _send_rec(self, conn: _Conn, mtype: int, rid: int, status: int,
                  name_b: bytes, param: bytes, fds=()) -> bool:
        """One record to one peer, framed by libforkhost; False (counted)
        when it cannot take it.  Only the IPC thread closes connections, so
        it needs no use count, and it never waits for room."""
        if self.on_ipc_thread():
            if conn.closing:
                self._count("send_failed")
                return False
            return lib.fh_ipc_send_fd(self.loop, conn.fd, mtype, rid, status, name_b,
                                      param, len(param), c_fds(fds), len(fds),
                                      0) == 0
        with self.lock:
            if conn.closing:
                return False
            conn.users += 1
        try:
            return lib.fh_ipc_send_fd(self.loop, conn.fd, mtype, rid, status, name_b,
                                      param, len(param), c_fds(fds), len(fds),
                                      int(SEND_TIMEOUT * 1000)) == 0
        finally:
            with self.lock:
                conn.users -= 1
                if conn.closing and conn.users == 0:
                    conn.sock.close()

    def _send_reply(self, peer: Peer, name_b: bytes, status: int, param: bytes,
                    fds) -> bool:
        conn = peer._conn
        if not fds and not conn.closing and _get_ident() == self.thread_ident:
            # The common case, an action answering on the IPC thread.
            return lib.fh_ipc_send_reply(self.loop, conn.fd, peer._id, status,
                                         name_b, param, len(param)) == 0
        return self._send_rec(conn, REPLY, peer._id, status, name_b, param, fds)

    def send(self, name, param=b"", fds=(), to=None, *, internal=False) -> int:
        b = name_bytes(name, internal=internal)
        data = param_bytes(param)
        fd_nums = fd_list(fds)
        return sum(self._send_rec(c, MSG, 0, 0, b, data, fd_nums)
                   for c in self._targets(to))

    def _issue(self, name, param, fds, timeout, to, callback, internal) -> _Pending:
        b = name_bytes(name, internal=internal)
        data = param_bytes(param)
        fd_nums = fd_list(fds)
        if timeout is None or timeout < 0:
            raise IPCError("a request needs a timeout of 0 or more seconds")
        targets = self._targets(to)
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            p = _Pending(rid, b.decode(errors="replace"), data,
                         time.monotonic() + timeout, callback)
            # Waited for before sending: a reply can come back before the
            # send returns.
            p.waiting.update(targets)
            self.pending[rid] = p
        failed = [c for c in targets
                  if not self._send_rec(c, REQUEST, rid, 0, b, data, fd_nums)]
        with self.lock:
            p.nb_sent = len(targets) - len(failed)
            p.waiting.difference_update(failed)
            if failed:          # not reached: not in the reply
                for c in failed:
                    p.outcome.pop(c, None)
                p.targets = [c for c in targets if c not in failed]
            else:
                p.targets = targets
            p.issuing = False
            finished = not p.waiting and not p.done
            if finished:
                self._finish_locked(p)
        if finished and callback is not None:
            self._complete_async(p)
        return p

    def request(self, name, param=b"", fds=(), timeout=DEFAULT_TIMEOUT, to=None,
                *, internal=False) -> Reply:
        if self.on_ipc_thread():
            raise recursion_error(name)
        p = self._issue(name, param, fds, timeout, to, None, internal)
        p.event.acquire(True, max(0.0, p.deadline - time.monotonic()))
        with self.lock:
            if not p.done:
                self.counts["timeouts"] += len(p.waiting)
                self._finish_locked(p)
            return self._reply_locked(p)

    @staticmethod
    def _reply_locked(p: _Pending) -> Reply:
        """p's Reply, p complete: a member with no outcome timed out."""
        out = p.outcome
        timed_out = (_TIMED_OUT, None)
        peers = [PeerReply(c.pid, c.name, *out.get(c, timed_out)) for c in p.targets]
        return Reply(p.nb_sent, len(p.replies), list(p.replies), peers)

    def request_async(self, name, param, fds, timeout, callback, to=None) -> None:
        self._issue(name, param, fds, timeout, to, callback, False)
        self._wakeup()        # a new deadline for the loop

    def _finish_locked(self, p: _Pending) -> None:
        if p.done:
            return
        p.done = True
        self.pending.pop(p.id, None)
        if p.event is not None:
            p.event.release()

    def _call_async(self, p: _Pending) -> None:
        req = Message(p.name, p.param, [], os.getpid(), REQUEST)
        with self.lock:
            rep = self._reply_locked(p)
        try:
            p.callback(req, rep)
        except BaseException:
            self._count("action_errors")
            traceback.print_exc()

    def _timeout(self) -> float:
        deadlines = [c.deadline for c in self.hello_due.values()]
        if self.pending:          # (a dict's truth value needs no lock)
            with self.lock:
                deadlines += [p.deadline for p in self.pending.values() if p.callback]
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    def _expire(self) -> None:
        if self.pending:
            now = time.monotonic()
            due = []
            with self.lock:
                for p in list(self.pending.values()):
                    if p.callback and p.deadline <= now and not p.issuing:
                        self.counts["timeouts"] += len(p.waiting)
                        self._finish_locked(p)
                        due.append(p)
            for p in due:
                self._call_async(p)
        if self.hello_due:
            now = time.monotonic()
            for c in [c for c in self.hello_due.values() if c.deadline <= now]:
                self._drop(c)

    # -- receiving --------------------------------------------------------

    def _up_record(self, fd: int, n: int) -> int:
        """A record of n bytes from member fd, checked by libforkhost, in
        its receive buffer.  1 tells the loop to stop reading fd (dropped
        or closing)."""
        data = self.rxbuf
        _, _, mtype, _, nfds, rid, _, status, name = _unpack_hdr(data)
        fds = ffi.unpack(self.rxfds, nfds) if nfds else []
        conn = self.conns.get(fd)
        if conn is None:
            close_fds(fds)
            return 1
        name = name[:name.find(0)]
        if mtype == REQUEST or mtype == MSG:
            cb = _state.actions.get(name)
            if cb is None:
                self._dispatch(conn, mtype, rid, name, data[HDR_SIZE:n], fds)
            else:
                # _dispatch, inlined: the hot path of every request.
                text = name.decode(errors="replace")
                peer = Peer(self, conn, rid, text, conn.pid)
                try:
                    cb(Message(text, data[HDR_SIZE:n], fds, conn.pid, mtype), peer)
                except BaseException as exc:
                    _state.action_failed(text, exc, peer)
                    self._count("action_errors")
            return 1 if conn.closing else 0
        if mtype == REPLY:
            self._reply_in(conn, rid, status, name, data[HDR_SIZE:n], fds)
        elif mtype == BYE:
            close_fds(fds)
            conn.left = True
            self._drop(conn)
            return 1
        else:                           # a second HELLO
            close_fds(fds)
            self._count("malformed")
        return 1 if conn.closing else 0

    def _read_first(self, conn: _Conn) -> bool:
        """A connection that has not said HELLO: libforkhost reads its first
        record with the one parser (fh_ipc_loop_first), and refuses anything
        but a valid HELLO at once, in the words of docs/ipc.md
        ("Membership").  False when it is gone."""
        hello = self.hello
        r = lib.fh_ipc_loop_first(self.loop, conn.fd, hello)
        if r == _FIRST_HELLO:
            self._join(conn, hello.ppid, hello.flags)
        elif r == _FIRST_REFUSED:           # unwatched and closed in C
            del self.conns[conn.fd]
            self.hello_due.pop(conn.fd, None)
            conn.sock.detach()
        return r != _FIRST_GONE

    def _join(self, conn: _Conn, ppid: int, flags: int) -> None:
        """conn said HELLO: a member now, WELCOMEd; one that rejoins (its
        last primary went away without forkhost.shutdown) is told it has a
        primary again (forkhost.primary)."""
        conn.name = _comm(conn.pid)     # (its requests' PeerReply)
        self.hello_due.pop(conn.fd, None)
        self._watch(conn.fd, lib.FH_IPC_WATCH_RECORDS)
        with self.lock:
            conn.ppid = ppid
            conn.joined = True
            self.joined[conn.fd] = conn
            self.cond.notify_all()
        tpl = self.primary.template_pid     # the serving generation's
        body = WELCOME_BODY.pack(self.pid, tpl, NAME_MAX, PARAM_MAX)
        self._send_rec(conn, WELCOME, 0, 0, b"", body)
        if flags & HELLO_REJOIN:
            self._send_rec(conn, MSG, 0, 0, _PRIMARY_NOTICE_B,
                           PRIMARY_BODY.pack(self.pid, tpl))

    def _dispatch(self, conn, mtype, rid, name_b, param, fds) -> None:
        cb = _state.actions.get(name_b)
        name = name_b.decode(errors="replace")
        peer = Peer(self, conn, rid, name, conn.pid)
        if cb is None:
            close_fds(fds)
            if mtype == REQUEST:
                self._count("no_action")
                peer._answer(name_b, NO_ACTION, b"", [])
            else:
                self._count("notices_ignored" if name_b in NOTICES_B else "dropped")
            return
        if not _state.run_action(cb, Message(name, param, fds, conn.pid, mtype), peer):
            self._count("action_errors")

    def _reply_in(self, conn, rid, status, name_b, param, fds) -> None:
        msg = Message(name_b.decode(errors="replace"), param, fds, conn.pid, REPLY,
                      status)
        late = complete = False
        with self.lock:
            p = self.pending.get(rid)
            if p is None or p.done or conn not in p.waiting:
                self.counts["late_replies"] += 1
                late = True
            else:
                p.waiting.discard(conn)
                p.replies.append(msg)
                p.outcome[conn] = (_PEER_NO_ACTION if status == NO_ACTION
                                   else _ANSWERED, msg)
                if not p.waiting and not p.issuing:
                    self._finish_locked(p)
                    complete = True
        if late:
            msg.close()         # nobody will ever see it
        elif complete and p.callback is not None:
            self._complete_async(p)

    def _lost(self, conn: _Conn) -> None:
        """conn reached EOF: every request waiting for it stops waiting."""
        due = []
        with self.lock:
            conn.closing = True
            if conn.users == 0:
                conn.sock.close()
            for p in list(self.pending.values()):
                if conn in p.waiting:
                    p.waiting.discard(conn)
                    p.outcome[conn] = (_DIED, None)
                    self.counts["peer_died"] += 1
                    if not p.waiting and not p.issuing:
                        self._finish_locked(p)
                        if p.callback:
                            due.append(p)
            self.cond.notify_all()
        for p in due:
            self._call_async(p)

    def _fail_all_pending(self) -> list[_Pending]:
        due = []
        with self.lock:
            for p in list(self.pending.values()):
                self.counts["peer_died"] += len(p.waiting)
                for c in p.waiting:
                    p.outcome[c] = (_DIED, None)
                p.waiting.clear()
                if p.issuing:
                    continue        # its issuer completes it
                self._finish_locked(p)
                if p.callback:
                    due.append(p)
        return due

    def _bind(self) -> socket.socket:
        fd = getattr(self.primary, "sockets", {}).get("ipc")
        if fd is not None:
            # Socket activation: systemd's listener (a copy: IPC may stop
            # and start again), its file left alone at the end (ino None).
            sock = socket.socket(fileno=os.dup(fd))
            sock.setblocking(False)
            self.ino = None
            return sock
        try:
            os.unlink(self.path)      # a dead primary's: we hold the prefix lock
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            old = os.umask(0o177)     # created 0600
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            sock.listen(socket.SOMAXCONN)
        except OSError as err:
            sock.close()
            raise IPCError(f"cannot listen on {self.path}: {err.strerror}") from err
        self.ino = os.stat(self.path).st_ino
        return sock

    # -- membership -------------------------------------------------------

    def _live_members(self) -> list[Member]:
        """The joined members, each marked whether a template of this
        primary, of any generation, is its parent (a reload's old one
        reports its secondaries' exits too).  Under self.lock."""
        gens = self.primary.template_generations()
        return [Member(c.pid, c.ppid, c.ppid in gens)
                for c in self.joined.values() if not c.closing]

    def members(self) -> list[Member]:
        with self.lock:
            return self._live_members()

    def wait_members(self, pred: Callable[[list[Member]], bool],
                     timeout: float) -> bool:
        """Wait until pred(members()) holds (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if pred(self._live_members()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)

    def _targets(self, to):
        with self.lock:
            return [c for c in self.joined.values()
                    if not c.closing and (to is None or c.pid == to)]

    # -- events -----------------------------------------------------------

    def _event(self, fd, ev):
        if fd == self.listen_fd:
            self._accept()
        elif fd == self.exit_fd:
            self._template_exits()
        else:
            conn = self.conns.get(fd)
            if conn is None:
                return
            if not self._read_first(conn):
                self._drop(conn)
            elif (ev & _EPOLL_GONE and not ev & select.EPOLLIN
                  and not conn.joined and fd in self.conns):
                self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                print(f"forkhost ipc: accept: {err}", file=sys.stderr)
                return
            pid, uid, _ = protocol.peer_cred(sock)
            conn = _Conn(sock, pid)
            why = None
            if uid not in (0, self.uid):
                why = (f"uid {uid} may not use the IPC of prefix "
                       f"{self.primary.prefix!r} (only uid {self.uid} and root)")
            elif len(self.conns) >= MAX_MEMBERS:
                why = f"too many IPC members (MAX_MEMBERS {MAX_MEMBERS})"
            if why:
                self._refuse(conn, why)
                continue
            sock.setblocking(False)
            conn.deadline = time.monotonic() + HELLO_TIMEOUT
            try:
                self._watch(conn.fd, lib.FH_IPC_WATCH_EVENTS)
            except OSError as err:
                print(f"forkhost ipc: epoll: {err}", file=sys.stderr)
                sock.close()
                continue
            self.conns[conn.fd] = conn
            self.hello_due[conn.fd] = conn

    def _refuse(self, conn: _Conn, why: str) -> None:
        """REFUSE (fh_ipc_refuse_fd: drained so that the peer reads it, then
        closed); conn was never watched."""
        lib.fh_ipc_refuse_fd(conn.sock.detach(), why.encode(errors="replace"))

    def _drop(self, conn: _Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.hello_due.pop(conn.fd, None)
        with self.lock:
            was_member = self.joined.pop(conn.fd, None) is not None
        self._unwatch(conn.fd)
        self._lost(conn)
        # A template child's exit is reported with its status by the
        # template; anyone else's only we can report, without a status.
        if (was_member and not conn.left
                and conn.ppid not in self.primary.template_generations()):
            self._exit_notice(conn.pid, 0, 0, 0)

    # -- notices ----------------------------------------------------------

    def _template_exits(self) -> None:
        for pid, status in _exit_notice.read_exits(self.exit_sock):
            if self.reaped is not None:
                with self.lock:
                    self.reaped.add(pid)        # shutdown() waits for these
                    self.cond.notify_all()
            try:
                code = os.waitstatus_to_exitcode(status)
            except ValueError:
                continue
            self._exit_notice(pid, code if code >= 0 else 0,
                              -code if code < 0 else 0, EXIT_STATUS_KNOWN)
            if self.primary is not None:
                # What the dead secondary left in the arena (the primary's
                # business: forkhost/_reclaim.py).
                self.primary.secondary_ended(pid, code if code >= 0 else 0,
                                             -code if code < 0 else 0)

    def _exit_notice(self, pid: int, code: int, sig: int, flags: int) -> None:
        body = EXIT_BODY.pack(pid, code, sig, flags)
        name_b = EXIT_NOTICE.encode()
        for c in self._targets(None):
            if c.pid != pid:
                self._send_rec(c, MSG, 0, 0, name_b, body)
        cb = _state.actions.get(name_b)
        if cb is not None:
            if not _state.run_action(cb, Message(EXIT_NOTICE, body, [], self.pid, MSG),
                               Peer(self, None, 0, EXIT_NOTICE, self.pid)):
                self._count("action_errors")

    def shutdown(self, grace: float) -> None:
        """Primary.stop(): ask the members whether they will wind down
        (forkhost.shutdown), and give those that answer until the end of
        the grace period to leave; then stop.  Members without an action
        answer NO_ACTION at once and are not waited for."""
        try:
            members = self.members()
            if self.running and not self.on_ipc_thread() and members:
                deadline = time.monotonic() + grace
                with self.lock:
                    self.reaped = set()
                body = SHUTDOWN_BODY.pack(self.pid, int(grace * 1000))
                with self.request(SHUTDOWN_NOTICE, body, timeout=grace,
                                  internal=True) as r:
                    leaving = {m.pid for m in r.msgs if m.ok}
                # A secondary closes its connection a little before it
                # exits (fh_exit_report closes every fd first): wait for the
                # template to report its exit too, or the template's
                # SIGTERM, which follows, could still catch it.  Of an
                # attached process the closed connection is all we know.
                children = {m.pid for m in members if m.secondary and m.pid in leaving}
                if leaving:
                    self.wait_members(
                        lambda ms: (not any(m.pid in leaving for m in ms)
                                    and children <= self.reaped),
                        max(0.0, deadline - time.monotonic()))
        finally:
            self.close()

    def _teardown(self):
        with self.lock:
            conns = list(self.conns.values())
            self.conns.clear()
            self.joined.clear()
            self.hello_due.clear()
            self.cond.notify_all()
        for c in conns:
            self._unwatch(c.fd)
            with self.lock:
                c.closing = True
                if c.users == 0:
                    c.sock.close()
        for p in self._fail_all_pending():
            self._call_async(p)
        while self.deferred:
            self._guarded(self.deferred.popleft())
        try:
            if self.ino is not None and os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._unwatch(self.listen_fd)
        self.listener.close()
        if self.exit_sock is not None:
            self._unwatch(self.exit_fd)
            # Kept for a later Primary.ipc() (ipc.stop() then start again);
            # shutdown_primary() closes it for good.
            with _state.lock:
                if _state.exit_pair is None and self.owner == os.getpid():
                    _state.exit_pair = (self.exit_sock, None)
                else:
                    self.exit_sock.close()
        lib.fh_ipc_loop_close(self.loop)

    def _forget_in_child(self):
        """After fork, in the child: this endpoint's thread does not exist
        there; close the child's copies of its fds without a word."""
        for c in self.conns.values():
            c.sock.close()
        self.listener.close()
        if self.exit_sock is not None:
            self.exit_sock.close()
        lib.fh_ipc_loop_forget(self.loop)


_UP_RECORD = lib.FH_IPC_UP_RECORD
_UP_GONE = lib.FH_IPC_UP_GONE
_UP_EVENT = lib.FH_IPC_UP_EVENT
_UP_TICK = lib.FH_IPC_UP_TICK


# The endpoint whose loop runs (one per process): cheaper to find than
# through the loop's handle on every record.
_looping: "_PrimaryEndpoint | None" = None


@ffi.def_extern()
def _fh_ipc_upcall(arg, kind, fd, events, n):
    """The primary's receive loop calls Python (cffi takes the GIL)."""
    ep = _looping
    if ep is None or ep.handle != arg:
        ep = ffi.from_handle(arg)
    try:
        if kind == _UP_RECORD:
            return ep._up_record(fd, n)
        if kind == _UP_TICK:
            return ep._tick()
        if kind == _UP_EVENT:
            ep._event(fd, events)
        elif kind == _UP_GONE:
            conn = ep.conns.get(fd)
            if conn is not None:
                ep._drop(conn)
    except Exception:
        print("forkhost ipc: internal error (the IPC thread goes on):",
              file=sys.stderr)
        traceback.print_exc()
        if kind == _UP_TICK:
            return 100
    return 0


# -- the primary's side of the template fork -------------------------------

def prepare(primary) -> int:
    """In Primary.start(), before the template fork: record where IPC will
    be (every secondary inherits it through libforkhost) and create the
    channel the template reports exits on.  Returns the template's end."""
    path = str(primary.paths.ipc_socket)
    if lib.fh_ipc_set_primary(os.fsencode(path), primary.pid) < 0:
        raise ForkhostError(f"IPC socket path too long ({len(path)} bytes; "
                            f"sun_path holds 107): {path}")
    _state.primary, _state.exit_pair = primary, _exit_notice.channel()
    return _state.exit_pair[1].fileno()


def after_template_fork() -> None:
    """In the primary, after the fork: the template's end is the template's."""
    if _state.exit_pair is not None:
        _state.exit_pair[1].close()


def start_primary(primary) -> _PrimaryEndpoint:
    """Primary.ipc(): bind ipc.sock and start the IPC thread, once the
    template exists (it must be forked while we are single-threaded)."""
    if primary is None or primary.pid != os.getpid():
        raise IPCError("this process is not a primary")
    if not primary.template_pid or primary.template_pidfd < 0:
        raise IPCError("IPC starts after the template is forked (Primary.start()): "
                       "the template must be forked from a single-threaded "
                       "primary and the IPC thread would be a second thread")
    with _state.lock:
        ep = _state.endpoint
        if ep is not None and ep.owner == os.getpid():
            return ep
        _raise_nofile(primary.max_secondaries)
        pair = _state.exit_pair
        exit_sock = pair[0] if pair is not None else None
        _state.exit_pair = None
        ep = _PrimaryEndpoint(primary, exit_sock)
        _state.endpoint = ep
    return ep


def _raise_nofile(max_secondaries: int) -> None:
    """Each member costs the primary an fd: raise the soft RLIMIT_NOFILE
    towards the hard one so --max-secondaries of them fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_secondaries + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            except (ValueError, OSError):
                pass


def shutdown_primary(grace: float) -> None:
    """Primary.stop(): the shutdown notice, then stop IPC."""
    with _state.lock:
        ep, _state.endpoint = _state.endpoint, None
    if isinstance(ep, _PrimaryEndpoint) and ep.owner == os.getpid():
        ep.shutdown(grace)        # its teardown hands the exit channel back
    with _state.lock:
        pair, _state.exit_pair = _state.exit_pair, None
    if pair is not None:
        for s in pair:
            if s is not None and s.fileno() >= 0:
                s.close()
