"""The template: the clean-slate copy of the primary that forks secondaries.

It is forked from the primary while the primary is single-threaded and it
stays single-threaded: one epoll loop over the listening socket, client
connections and the pidfds of running secondaries.  Child exits are noticed
through pidfds, signals through ``signal.set_wakeup_fd``; Python-level
handlers do nothing, the loop reads the signal numbers from the pipe (a
SIGCHLD there means: look for stopped secondaries).

It never runs user code itself.  It ends when the primary asks (SIGTERM)
or dies (PR_SET_PDEATHSIG delivers SIGTERM; a getppid() check covers the
race where the primary died before the prctl), and then ends its
secondaries (SIGTERM, SIGKILL after the grace period), reports their status
to their clients and removes its socket.
"""

from __future__ import annotations

import gc
import json
import math
import os
import select
import signal
import socket
import sys
import time
import traceback

from . import entries, pool, protocol
from ._native import ffi, lib
from .connection import PENDING, RUNNING, Connection
from .errors import ProtocolError
from .ipc import notify_exit

# A client has this long between connect() and its request.
REQUEST_TIMEOUT = 10.0
# The pool is refilled only after the loop has been quiet this long: a fork
# blocks the loop and takes a CPU, and right after a launch both are wanted
# by the secondary just started, its client and its exit.  Except when no
# member is idle and launches come back to back (the last two started less
# than BACK_TO_BACK apart): then the loop is never quiet, and an empty pool
# would leave every launch to the template's slower path (3.4 ms a launch
# instead of 1.4-2.2 ms, measured with 1-2 ms between launches on two CPUs;
# docs/architecture.md), so it is refilled at once.
REPLENISH_QUIET = 0.002
BACK_TO_BACK = 0.010
# After a failed fork (EAGAIN, ENOMEM) the pool waits this long to retry.
REPLENISH_RETRY = 0.1
# Members' TOOK and BUSY notices are read this long after they arrive,
# unless they may have taken the last idle member (Template._news_arrived).
NEWS_DELAY = 0.003
# The first LEARN_FIRST launches by pool members record the pages they made
# private, and one in every RELEARN after them (member.h: the hot set).
LEARN_FIRST = 2
RELEARN = 64
# How long the template trusts its copy of the mount table.
MOUNTS_TTL = 1.0
# Connections accepted but not yet sent a request; more are refused at once,
# so a flood of idle connections cannot exhaust the template's fds.
MAX_PENDING = 256

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def title_area() -> tuple[int, int]:
    """The memory /proc/PID/cmdline shows: (address, length).

    After setproctitle() moved the environment away, the whole argv+environ
    block is free for a title, as setproctitle(3) itself assumes; if some
    environ string still lives in it, only the argv part is ours.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state); arg_start..env_end are fields 48..51.
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    import ctypes
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    i = 0
    while environ[i]:
        if env_start <= environ[i] < env_end:
            return arg_start, arg_end - arg_start
        i += 1
    return arg_start, env_end - arg_start


class Template:
    def __init__(self, listener: socket.socket, *, prefix: str, socket_path: str,
                 socket_ino: int, primary_pid: int, max_secondaries: int,
                 grace: float, pool_size: int = 0,
                 request_timeout: float = REQUEST_TIMEOUT,
                 exit_notice_fd: int = -1):
        self.listener = listener
        self.listener_fd = listener.fileno()   # pool members accept on it
        self.listening = False                 # registered in our epoll
        self.prefix = prefix
        self.socket_path = socket_path
        self.socket_ino = socket_ino
        self.primary_pid = primary_pid
        self.max_secondaries = max_secondaries
        self.grace = grace
        self.pool_size = pool_size
        self.request_timeout = request_timeout
        self.exit_notice_fd = exit_notice_fd   # IPC: exits -> the primary
        self.pid = os.getpid()
        self.uid = os.getuid()
        self.conns: dict[int, Connection] = {}     # socket fd -> connection
        self.running: dict[int, Connection] = {}   # pidfd -> connection
        self.reports: dict[int, Connection] = {}   # report socket fd -> connection
        # Pool members that have not taken a launch (idle or busy), by
        # pidfd; they write `news` after each notice on their socketpair.
        self.members: dict[int, pool.Member] = {}
        self.news = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # What launches copy-on-write, learned by a few and copied ahead of
        # time by idle members (member.h); relearned every RELEARN launches.
        self.hot = lib.fh_hotset_create()
        if self.hot != ffi.NULL:
            lib.fh_hotset_arm(self.hot, LEARN_FIRST)
        self.stopping = False
        self.draining = False      # running_count() is reading members' notices
        self.stop_deadline: float | None = None
        self.launched = 0
        self.pool_launches = 0     # of them, taken by pool members
        self.last_activity = 0.0   # monotonic time of the last launch or exit
        self.last_launch = 0.0     # ... of the last launch
        self.launch_gap = math.inf  # between the last two launches
        self.fork_failed = 0.0     # monotonic time of the last failed member fork
        self.news_due: float | None = None   # members' notices to read then
        self.news_pending = 0      # the news counter since they were read
        self.refused = 0
        self.mounts: list[tuple[str, str]] = []
        self.mounts_until = 0.0
        self.title_area = (0, 0)
        self.ep = select.epoll()
        self.wake_r = self.wake_w = -1

    # -- setup ----------------------------------------------------------

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, lambda *_: None)   # wake the loop, nothing else
        # The template must see its children's exits through waitpid:
        # SIGCHLD must not be SIG_IGN (which would auto-reap them).  Exits
        # come through pidfds; SIGCHLD wakes the loop for stops, which
        # nothing else reports (_children_stopped).
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.ep.register(self.wake_r, select.EPOLLIN)

    def forget_in_child(self) -> None:
        """In a freshly forked child: detach every socket object so that no
        later garbage collection closes an fd number the entry reuses."""
        for conn in self.conns.values():
            conn.sock.detach()
        for conn in self.running.values():
            if conn.report is not None and conn.report.fileno() >= 0:
                conn.report.detach()
        for member in self.members.values():
            member.sock.detach()
        self.listener.detach()

    # -- the pool -------------------------------------------------------

    def idle_count(self) -> int:
        return sum(1 for m in self.members.values() if m.state == pool.IDLE)

    def _update_listening(self) -> None:
        """Accept on template.sock ourselves only while no member is idle:
        otherwise the idle members take every connection."""
        want = (not self.stopping and self.listener.fileno() >= 0
                and self.idle_count() == 0)
        if want and not self.listening:
            self.ep.register(self.listener_fd, select.EPOLLIN)
        elif not want and self.listening:
            try:
                self.ep.unregister(self.listener_fd)
            except (OSError, ValueError):
                pass
        self.listening = want

    def _add_member(self) -> None:
        try:
            member = pool.fork_member(self)
        except OSError as err:
            # Said once per run of failures, not at every retry.
            if not self.fork_failed:
                print(f"forkhost template: cannot fork a pool member: {err} "
                      f"(retrying every {REPLENISH_RETRY:g} s)", file=sys.stderr)
            self.fork_failed = time.monotonic()
            return
        if self.fork_failed:
            print("forkhost template: pool members fork again", file=sys.stderr)
            self.fork_failed = 0.0
        self.members[member.pidfd] = member
        self.ep.register(member.pidfd, select.EPOLLIN)
        self._update_listening()

    def _pool_short(self) -> bool:
        """Fewer idle members than --pool, and room under
        --max-secondaries for one more (a member is a secondary in waiting)."""
        # Busy members count: one waiting for a slow client's request
        # becomes idle again if the request never comes.
        if self.stopping or len(self.members) >= self.pool_size:
            return False
        # A connection we accepted and still wait on may launch too.
        running = (sum(1 for c in self.running.values() if not c.reported)
                   + sum(1 for c in self.conns.values() if c.state == PENDING))
        return running + len(self.members) < self.max_secondaries

    def _replenish_at(self) -> float | None:
        """When the next member may be forked (monotonic), or None: the
        pool is full.  After REPLENISH_QUIET of quiet, or at once when no
        member is idle and launches come back to back; REPLENISH_RETRY
        after a fork failed (EAGAIN under RLIMIT_NPROC, ENOMEM), so that a
        failing fork is not retried in a busy loop."""
        if not self._pool_short():
            return None
        quiet = REPLENISH_QUIET
        if self.launch_gap < BACK_TO_BACK and self.idle_count() == 0:
            quiet = 0.0
        return max(self.last_activity + quiet,
                   self.fork_failed + REPLENISH_RETRY)

    def _replenish(self) -> None:
        """Fork one member when _replenish_at says so and nothing waits: a
        fork blocks the loop, so it must not delay a launch or an exit
        report."""
        at = self._replenish_at()
        if at is None or time.monotonic() < at:
            return
        if self.ep.poll(0, 1):
            return
        self._add_member()

    def _news_arrived(self) -> None:
        """Members wrote notices.  A TOOK or a BUSY comes while a launch is
        under way, and on two CPUs the template's Python work would then
        compete with that launch and its client, so they are read
        NEWS_DELAY later (running_count() reads notices first when it
        counts).  At once: a HANDOFF (member.h: FH_NEWS_URGENT; its
        connection waits on us), or notices that may have taken the last
        idle member (then we must listen ourselves)."""
        try:
            value = os.eventfd_read(self.news)
        except BlockingIOError:
            return
        self.news_pending += value
        if (self.news_pending >= lib.FH_NEWS_URGENT
                or self.idle_count() <= self.news_pending):
            self._read_news()
        elif self.news_due is None:
            self.news_due = time.monotonic() + NEWS_DELAY

    def _read_news(self) -> None:
        """Members wrote notices: read them all."""
        self.news_due = None
        self.news_pending = 0
        try:
            os.eventfd_read(self.news)
        except BlockingIOError:
            pass
        for member in list(self.members.values()):
            while member.pidfd in self.members and self._member_msg(member):
                pass

    def _member_msg(self, member: pool.Member) -> bool:
        """One notice from a member that had not taken a launch; False
        when there was none."""
        msg = pool.read_ctl(member)
        if not msg:
            return False     # nothing, or EOF: it is exiting, its pidfd says when
        self.last_activity = time.monotonic()
        if msg.type == pool.TOOK and len(msg.fds) in (1, 2) and len(msg.body) >= 4:
            if self.hot != ffi.NULL and (self.launched + 1) % RELEARN == 0:
                lib.fh_hotset_arm(self.hot, 1)
            cwd_fd = msg.fds.pop() if len(msg.fds) == 2 else -1
            # Its pidfd stays registered and now means this launch; its
            # socket carries the exit report, read when the pidfd fires.
            del self.members[member.pidfd]
            conn = Connection.took(self, member, msg)
            self.conns[conn.fileno()] = conn
            self.ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            self.started_secondary(conn, member=True)
            if cwd_fd >= 0:            # a Python entry
                try:
                    self.learn_launch(cwd_fd, conn.entry, conn.module)
                finally:
                    os.close(cwd_fd)
        elif msg.type == pool.BUSY:
            member.state = pool.BUSY_STATE
        elif msg.type == pool.HANDOFF and msg.fds:
            member.state = pool.IDLE
            self._handoff(msg)
        else:
            msg.close_fds()
            print(f"forkhost template: unexpected record 0x{msg.type:02x} from "
                  f"pool member {member.pid}", file=sys.stderr)
        self._update_listening()
        return True

    def learn_launch(self, cwd_fd: int, entry: str, module_flag: bool) -> None:
        """A launch of Python entry ``entry`` runs in the directory cwd_fd:
        keep the directory's import finder, and the entry's module or
        script read ahead, ready for the members forked from now on.  Only
        ever an optimization: whatever goes wrong here, serving goes on."""
        try:
            self._learn_launch(cwd_fd, entry, module_flag)
        except Exception as exc:       # a bug of ours; say it, do not stop
            print(f"forkhost template: reading ahead for {entry!r}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)

    def _learn_launch(self, cwd_fd: int, entry: str, module_flag: bool) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{cwd_fd}")
        except OSError:
            return
        mounts = self._mounts()
        # Not on a network filesystem: a server could keep the template
        # waiting.
        if not entries.on_remote_fs(path, mounts) and entries.prepare_finder(path):
            entries.prefetch_entry(path, entry, module_flag, mounts)

    def _mounts(self) -> list[tuple[str, str]]:
        """The mount table (entries.parse_mounts), read again when a second
        old.  Reading it never waits on a filesystem."""
        now = time.monotonic()
        if now >= self.mounts_until:
            try:
                with open("/proc/self/mountinfo") as f:
                    self.mounts = entries.parse_mounts(f.read())
            except OSError:
                self.mounts = []
            self.mounts_until = now + MOUNTS_TTL
        return self.mounts

    def _member_exited(self, member: pool.Member) -> None:
        """A member's pidfd fired: read what it said before it died (it may
        have taken a launch, and even finished it), then reap it."""
        while member.pidfd in self.members and self._member_msg(member):
            pass
        if member.pidfd in self.running:
            self._reap(self.running[member.pidfd])
        elif member.pidfd in self.members:
            del self.members[member.pidfd]
            self.ep.unregister(member.pidfd)
            os.waitpid(member.pid, 0)
            os.close(member.pidfd)
            member.sock.close()
            self._update_listening()

    def _handoff(self, msg) -> None:
        """A connection a member handed over, with what it received."""
        mflags, received, state, _ = pool.HANDOFF_HDR.unpack_from(msg.body)
        data = memoryview(msg.body)[pool.HANDOFF_HDR.size:]
        conn_fd, fds = msg.fds[0], msg.fds[1:]
        try:
            sock = socket.socket(fileno=conn_fd)
        except OSError:
            os.close(conn_fd)
            for fd in fds:
                os.close(fd)
            return
        conn = Connection(self, sock, time.monotonic())
        try:
            why = conn.check_peer()
        except OSError as err:
            why = f"cannot identify the client: {err.strerror}"
        if why is None and state == pool.HANDOFF_EXPIRED:
            why = f"no request within {self.request_timeout:g}s"
        if why is None and state == pool.HANDOFF_PENDING and \
                len(self.conns) - len(self.running) >= MAX_PENDING:
            why = "the template is busy: too many connections waiting"
        if why is not None:
            for fd in fds:
                os.close(fd)
            conn.refuse(why)
            sock.close()
            return
        if state == pool.HANDOFF_PENDING:
            self.conns[sock.fileno()] = conn
            self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            return
        try:
            parsed = protocol.parse(data, received, fds, mflags)
        except ProtocolError as err:
            conn.refuse(str(err))
            sock.close()
            return
        try:
            conn.handle_message(parsed)
        except Exception as exc:
            traceback.print_exc()
            if conn.state != RUNNING:
                conn.refuse(f"internal error in the template: {exc!r}")
        self._settle(conn, registered=False)

    # -- the loop -------------------------------------------------------

    def serve(self) -> int:
        self.listener.setblocking(False)
        self.ep.register(self.news, select.EPOLLIN)
        self._update_listening()
        while True:
            if self.stopping and not self.running and not self.members:
                break
            timeout = self._timeout()
            try:
                events = self.ep.poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self.wake_r:
                    self._read_signals()
                elif fd == self.listener_fd and self.listening:
                    self._accept()
                elif fd in self.running:
                    self._reap(self.running[fd])
                elif fd in self.reports:
                    self._report(self.reports[fd])
                elif fd == self.news:
                    self._news_arrived()
                elif fd in self.members:
                    self._member_exited(self.members[fd])
                elif fd in self.conns:
                    self._readable(self.conns[fd])
            if self.news_due is not None and time.monotonic() >= self.news_due:
                self._read_news()
            self._expire()
            self._replenish()
        self._close_listener()
        return 0

    def _timeout(self) -> float:
        deadlines = [c.deadline for c in self.conns.values() if c.state == PENDING]
        deadlines += [c.kill_at for c in self.running.values() if c.kill_at]
        if self.stop_deadline:
            deadlines.append(self.stop_deadline)
        if self.news_due is not None:
            deadlines.append(self.news_due)
        replenish_at = self._replenish_at()
        if replenish_at is not None:
            deadlines.append(replenish_at)
        if os.getppid() != self.primary_pid and not self.stopping:
            self.stop()   # the primary died before PR_SET_PDEATHSIG was armed
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    def _read_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        if signal.SIGCHLD in data:
            self._children_stopped()
        if any(s in data for s in _STOP_SIGNALS) and not self.stopping:
            self.stop()

    def _children_stopped(self) -> None:
        """Tell the clients whose secondaries a signal stopped (a shell's
        job stops with its program; docs/protocol.md, STOPPED).  Only stops
        are asked for: exits stay for the pidfds to report and reap."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WSTOPPED | os.WNOHANG)
            except ChildProcessError:
                return
            if info is None:
                return
            conn = self._running_pid(info.si_pid)
            if conn is None:
                self._read_news()      # a member's TOOK not read yet?
                conn = self._running_pid(info.si_pid)
            if conn is not None:       # else an idle member: nobody to tell
                conn.report_stop(info.si_status)

    def _running_pid(self, pid: int) -> Connection | None:
        for conn in self.running.values():
            if conn.pid == pid:
                return conn
        return None

    def _accept(self) -> None:
        now = self.last_activity = time.monotonic()
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                # EMFILE and friends: say so and keep serving the rest.
                print(f"forkhost template: accept: {err}", file=sys.stderr)
                return
            conn = Connection(self, sock, now)
            why = conn.check_peer()
            if why is None and len(self.conns) - len(self.running) >= MAX_PENDING:
                why = "the template is busy: too many connections waiting"
            if why is not None:
                conn.refuse(why)
                sock.close()
                continue
            # The request usually arrives with the connection: try it now
            # and save a round through epoll.
            if self._handle(conn):
                self._settle(conn, registered=False)
            else:
                self.conns[sock.fileno()] = conn
                self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def _readable(self, conn: Connection) -> None:
        if conn.state == PENDING:
            if self._handle(conn):
                self._settle(conn, registered=True)
            return
        # RUNNING: the client sends nothing more; data is ignored, EOF or
        # an error means the client is gone.
        try:
            data = conn.sock.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.ep.unregister(conn.fileno())
            # A pool member's secondary tells its client itself: a client
            # that closed after its EXITED is not gone early.  Its report
            # (not polled) says whether that happened.
            if conn.report is not None and conn.report.fileno() in self.reports:
                self._report(conn)
            conn.client_gone()

    def _handle(self, conn: Connection) -> bool:
        """conn.handle_request(), except that a bug of ours met by one
        request is that request's error, never the template's end."""
        try:
            return conn.handle_request()
        except Exception as exc:
            traceback.print_exc()
            if conn.state != RUNNING:
                conn.refuse(f"internal error in the template: {exc!r}")
            return True

    def _settle(self, conn: Connection, registered: bool) -> None:
        """After a request: keep a RUNNING connection, close the rest."""
        fd = conn.fileno()
        if conn.state == RUNNING:
            if not registered:
                self.conns[fd] = conn
                self.ep.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
            return
        if registered:
            self.ep.unregister(fd)
            del self.conns[fd]
        conn.sock.close()

    def running_count(self) -> int:
        """Secondaries whose exit has not been reported.  A secondary
        reports to the template before its client hears of its exit, but
        the report may still be queued when the client's successor asks:
        queued reports are read before counting, so a client that has its
        status never finds its next launch refused for capacity.  Members'
        notices are read first for the same reason: a member that took the
        previous launch still counts as a member until its TOOK is read,
        and its report is read only after that."""
        if not self.draining:
            self.draining = True      # a HANDOFF read here may launch again
            try:
                for member in list(self.members.values()):
                    while member.pidfd in self.members and self._member_msg(member):
                        pass
            finally:
                self.draining = False
        for conn in list(self.reports.values()):
            self._report(conn)
        return sum(1 for c in self.running.values() if not c.reported)

    def started_secondary(self, conn: Connection, member: bool = False) -> None:
        """conn's secondary runs.  One we forked: its pidfd and its report
        go into our epoll (we send EXITED when it reports).  A pool
        member's: its pidfd is there since it was forked, and its report
        is read when the pidfd fires or capacity is counted; it sends
        EXITED itself, and the wake-up of a polled report would preempt it
        on its CPU before it does."""
        self.launched += 1
        self.pool_launches += member
        now = time.monotonic()
        self.launch_gap = now - self.last_launch
        self.last_launch = self.last_activity = now
        self.running[conn.pidfd] = conn
        self.reports[conn.report.fileno()] = conn
        if not member:
            self.ep.register(conn.pidfd, select.EPOLLIN)
            self.ep.register(conn.report.fileno(), select.EPOLLIN)
            conn.report_polled = True

    def _report(self, conn: Connection) -> None:
        self.last_activity = time.monotonic()
        if not conn.read_report():
            return
        fd = conn.report.fileno()
        del self.reports[fd]
        if conn.report_polled:
            self.ep.unregister(fd)
        conn.report.close()
        if conn.reported:
            self._close_client(conn)   # the client has its status

    def _close_client(self, conn: Connection) -> None:
        fd = conn.fileno()
        if fd < 0:
            return
        if self.conns.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (FileNotFoundError, OSError):
                pass   # already unregistered when the client went away
        conn.sock.close()

    def _reap(self, conn: Connection) -> None:
        try:
            pid, status = os.waitpid(conn.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = conn.pid, 0
        if pid == 0:
            return
        if conn.report.fileno() >= 0:
            self._report(conn)     # written before it exited, if at all
        conn.report_exit(status)
        # IPC: the primary broadcasts every exit (forkhost.exit, docs/ipc.md).
        notify_exit(self.exit_notice_fd, conn.pid, status)
        self.ep.unregister(conn.pidfd)
        del self.running[conn.pidfd]
        os.close(conn.pidfd)
        if conn.report.fileno() >= 0:
            del self.reports[conn.report.fileno()]
            if conn.report_polled:
                self.ep.unregister(conn.report.fileno())
            conn.report.close()
        self._close_client(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for fd, conn in list(self.conns.items()):
            if conn.state == PENDING and conn.deadline <= now:
                conn.refuse(f"no request within {self.request_timeout:g}s")
                self.ep.unregister(fd)
                del self.conns[fd]
                conn.sock.close()
        for conn in self.running.values():
            if conn.kill_at is not None and conn.kill_at <= now:
                self.signal_secondary(conn, signal.SIGKILL)
                conn.kill_at = None
        if self.stop_deadline is not None and self.stop_deadline <= now:
            for conn in self.running.values():
                self.signal_secondary(conn, signal.SIGKILL)
            self.stop_deadline = None

    def signal_secondary(self, conn: Connection, sig: int) -> None:
        try:
            signal.pidfd_send_signal(conn.pidfd, sig)
        except ProcessLookupError:
            pass

    # -- stopping -------------------------------------------------------

    def stop(self) -> None:
        """Stop accepting, end the secondaries (SIGTERM, SIGKILL after the
        grace period); serve() returns once all are reaped and reported."""
        # A member that took a launch is a secondary (SIGTERM, grace), not
        # an idle member (SIGKILL): read what members said first.
        self.running_count()
        self.stopping = True
        self._close_listener()
        for conn in self.running.values():
            self.signal_secondary(conn, signal.SIGTERM)
        for member in self.members.values():
            signal.pidfd_send_signal(member.pidfd, signal.SIGKILL)
        self.stop_deadline = time.monotonic() + self.grace
        for fd, conn in list(self.conns.items()):
            if conn.state == PENDING:
                conn.refuse(f"the primary of prefix {self.prefix!r} is stopping")
                self.ep.unregister(fd)
                del self.conns[fd]
                conn.sock.close()

    def _close_listener(self) -> None:
        if self.listener.fileno() < 0:
            return
        if self.listening:
            self.ep.unregister(self.listener_fd)
            self.listening = False
        self.listener.close()
        # Remove the socket only if it is still ours: a new primary may
        # already have bound a fresh one at the same path.
        try:
            if os.stat(self.socket_path).st_ino == self.socket_ino:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    # -- introspection --------------------------------------------------

    def info_json(self) -> bytes:
        # Members' notices first (their reading may be deferred: see
        # _news_arrived), so that a member that took a launch is not
        # counted idle.
        self.running_count()
        now = time.monotonic()
        info = {
            "prefix": self.prefix,
            "template_pid": os.getpid(),
            "primary_pid": self.primary_pid,
            "max_secondaries": self.max_secondaries,
            "launched": self.launched,
            "pool_launches": self.pool_launches,
            "pool": self.idle_count(),
            "pool_size": self.pool_size,
            "members": [{"pid": m.pid, "state": m.state}
                        for m in self.members.values()],
            "refused": self.refused,
            "hot_pages": lib.fh_hotset_pages(self.hot) if self.hot != ffi.NULL else 0,
            "import_dirs": entries.import_dirs(),
            "prefetched": entries.prefetched(),
            "stopping": self.stopping,
            "threads": len(os.listdir("/proc/self/task")),
            "secondaries": [
                {"pid": c.pid, "client_pid": c.client_pid, "argv0": c.argv0,
                 "uptime": round(now - c.started, 3),
                 "client_connected": c.kill_at is None}
                for c in self.running.values()],
        }
        return json.dumps(info).encode()


def template_main(listener: socket.socket, ready_w: int, *, keep_fds: list[int],
                  **kwargs) -> int:
    """Entry point of the template, called in the child of the primary's
    fork.  Reports readiness on ready_w (b"ok", or an error text)."""
    try:
        os.setsid()   # no controlling terminal: terminal signals are the
        # clients' business, and secondaries may read a client's tty freely
        lib.fh_set_pdeathsig(signal.SIGTERM)
        from setproctitle import setproctitle
        setproctitle(f"forkhost template [{kwargs['prefix']}]")
        t = Template(listener, **kwargs)
        t.title_area = title_area()
        t.install_signals()
        if os.getppid() != t.primary_pid:
            raise RuntimeError("the primary died while the template started")
        # Everything else the primary had open stays there.
        keep = {0, 1, 2, listener.fileno(), ready_w, t.wake_r, t.wake_w, t.ep.fileno(),
                t.news, *keep_fds}
        _close_other_fds(keep)
        _null_stdin_stdout()
        gc.freeze()   # what the primary built stays shared with secondaries
        for _ in range(t.pool_size):
            t._add_member()
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:
            raise RuntimeError(f"the template has {threads} threads")
    except BaseException as exc:
        os.write(ready_w, f"template failed to start: {exc}".encode())
        os.close(ready_w)
        return 1
    os.write(ready_w, b"ok")
    os.close(ready_w)
    return t.serve()


def _close_other_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _null_stdin_stdout() -> None:
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
