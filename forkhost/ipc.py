"""IPC between the primary and its secondaries: named actions, messages,
requests, replies, broadcasts and fds (DPDK's rte_mp, and a little more).

Why it exists: shared memory carries bulk data, but processes also need to
tell each other things (a secondary asks the primary for a resource, the
primary tells everyone it is stopping, an fd changes hands).  docs/ipc.md
is the design; csrc/include/forkhost/ipc.h the same wire format in C.

One endpoint per process, served by its own daemon thread that runs every
action and async callback:

- the primary binds ``<runtime>/<prefix>/ipc.sock`` and starts its thread
  only after the template exists (``Primary.ipc()``), because the template
  must be forked from a single-threaded process;
- a secondary connects on its first IPC call (``register``, ``send``,
  ``request``, ``start``), says HELLO and waits for WELCOME; it finds the
  socket through what the primary stored in libforkhost before the fork.

Each secondary has one SOCK_SEQPACKET connection to the primary: records
keep their boundaries and carry their fds, and the kernel closes a dead
process's end, so membership and peer death need no polling.

    from forkhost import ipc

    def on_stats(msg, peer):
        ipc.reply(peer, "stats", json.dumps(counts).encode())

    ipc.register("stats", on_stats)          # in a secondary: joins
    r = ipc.request("config", b"", timeout=2)  # -> Reply(nb_sent, nb_received, msgs)
"""

from __future__ import annotations

import _thread
import array
import collections
import functools
import os
import resource
import select
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from . import protocol, runtime
from ._native import ffi, lib
from .errors import ForkhostError, IPCError

# -- the wire format (docs/ipc.md; csrc/include/forkhost/ipc.h) -----------

MAGIC = 0x4B484950
VERSION = 1
MSG, REQUEST, REPLY = 0x01, 0x02, 0x03
HELLO, WELCOME, REFUSE, BYE = 0x10, 0x11, 0x12, 0x13
_TYPES = {MSG, REQUEST, REPLY, HELLO, WELCOME, REFUSE, BYE}
OK, NO_ACTION, ACTION_FAILED = 0, 1, 2      # REPLY status

# DPDK's RTE_MP_MAX_NAME_LEN, NUL included: a name is an identifier.
NAME_MAX = 64
# DPDK allows 256 bytes, too little for a path (PATH_MAX is 4096) or a short
# JSON object; a 4 KiB record still fits a fixed C buffer, and ~40 fit a
# default socket send buffer before a sender feels backpressure.
PARAM_MAX = 4096
# DPDK's RTE_MP_MAX_FD_NUM: keeps the control buffer fixed and small.
FDS_MAX = 8

HDR = struct.Struct("=IHHIIQIi64s")  # magic version type len nfds id param_len status name
RECORD_MAX = HDR.size + PARAM_MAX
HELLO_BODY = struct.Struct("=iiII")     # pid ppid flags reserved
WELCOME_BODY = struct.Struct("=iiII")   # primary_pid template_pid name_max param_max
EXIT_BODY = struct.Struct("=iiiI")      # pid code signal flags
SHUTDOWN_BODY = struct.Struct("=iI")    # primary_pid grace_ms
# template -> primary, one datagram per reaped secondary: pid, wait status
TEMPLATE_EXIT = struct.Struct("=ii")
assert HDR.size == 96 and EXIT_BODY.size == 16

RESERVED_PREFIX = "forkhost."
EXIT_NOTICE = "forkhost.exit"
SHUTDOWN_NOTICE = "forkhost.shutdown"
EXIT_STATUS_KNOWN = 0x1
_NOTICES = {EXIT_NOTICE.encode(), SHUTDOWN_NOTICE.encode()}

# An accepted connection that says nothing is closed after this, so idle
# connections cannot hold the primary's fds.
HELLO_TIMEOUT = 5.0
# Each member is an fd and a little memory in the primary.
MAX_MEMBERS = 4096
# How long a send from an ordinary thread waits for room in a full peer's
# buffer; the IPC thread never waits (it would stall every other peer).
SEND_TIMEOUT = 1.0
DEFAULT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# Records read from one connection per wake-up: one busy peer cannot
# starve the others.
_BATCH = 64

_FD_SIZE = array.array("i").itemsize
_CMSG_SPACE = socket.CMSG_SPACE(FDS_MAX * _FD_SIZE)
# Plain ints: the socket module's flags are IntFlag members, and enum
# arithmetic costs microseconds on every record.
_SEND_FLAGS = int(socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_EPOLL_IN = int(select.EPOLLIN | select.EPOLLRDHUP)
_EPOLL_GONE = int(select.EPOLLHUP | select.EPOLLERR)
_STATS = ("sent", "received", "dropped", "notices_ignored", "no_action",
          "malformed", "action_errors", "timeouts", "peer_died", "late_replies",
          "send_failed")


# -- what the API hands out -----------------------------------------------

@dataclass(eq=False)
class Message:
    """A received message, request or reply.  ``fds`` belong to whoever got
    the message: close them (``close()``) or keep them."""

    name: str
    param: bytes = b""
    fds: list[int] = field(default_factory=list)
    pid: int = 0               # the sender
    type: int = MSG
    status: int = OK           # replies: OK, NO_ACTION or ACTION_FAILED

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def error(self) -> str | None:
        if self.status == NO_ACTION:
            return f"pid {self.pid} has no action {self.name!r}"
        if self.status == ACTION_FAILED:
            text = self.param.decode(errors="replace")
            return f"the action {self.name!r} failed in pid {self.pid}" + \
                (f": {text}" if text else "")
        return None

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Message":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(eq=False)
class Reply:
    """What a request got (DPDK's rte_mp_reply): nb_sent peers reached,
    nb_received answered (error answers included), their answers."""

    nb_sent: int
    nb_received: int
    msgs: list[Message]

    def close(self) -> None:
        for m in self.msgs:
            m.close()

    def __enter__(self) -> "Reply":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Member:
    """A process that joined the primary's IPC.  ``secondary``: its parent
    is the template (otherwise it attached from outside)."""

    pid: int
    ppid: int
    secondary: bool


class Peer:
    """The other end of a received message; ``reply(peer, ...)`` answers a
    request through it, once, from any thread."""

    __slots__ = ("pid", "name", "_endpoint", "_conn", "_id", "_replied", "_lock")

    def __init__(self, endpoint, conn, rid: int, name: str, pid: int):
        self.pid, self.name = pid, name
        self._endpoint, self._conn, self._id = endpoint, conn, rid
        self._replied = False
        self._lock = _thread.allocate_lock() if rid else None   # requests only

    @property
    def is_request(self) -> bool:
        return self._id != 0

    @property
    def replied(self) -> bool:
        return self._replied

    def _answer(self, name_b: bytes, status: int, param: bytes, fds) -> bool:
        if not self._id:
            raise IPCError(f"{self.name!r} from pid {self.pid} is a message, "
                           f"not a request: there is nothing to reply to")
        with self._lock:
            if self._replied:
                raise IPCError(f"the request {self.name!r} from pid {self.pid} "
                               f"was already answered")
            self._replied = True
        data = _encode(REPLY, name_b, param, len(fds), self._id, status)
        return self._endpoint._send_to(self._conn, data, fds)

    def __repr__(self) -> str:
        kind = "request" if self._id else "message"
        return f"<Peer pid={self.pid} {kind} {self.name!r}>"


# -- encoding and checks ----------------------------------------------------

def _encode(mtype: int, name_b: bytes, param: bytes, nfds: int = 0,
            rid: int = 0, status: int = 0) -> bytes:
    return HDR.pack(MAGIC, VERSION, mtype, HDR.size + len(param), nfds, rid,
                    len(param), status, name_b) + param


# Names that passed the checks, so a hot loop pays for them once.  Bounded:
# names are identifiers, few and reused.
_good_names: dict = {}


def _name_bytes(name, *, internal: bool = False) -> bytes:
    try:
        b = _good_names.get(name)
    except TypeError:           # unhashable: _check_name says what is wrong
        b = None
    if b is not None:
        return b
    b = _check_name(name, internal)
    if not internal and len(_good_names) < 1024 and isinstance(name, (str, bytes)):
        _good_names[name] = b
    return b


def _check_name(name, internal: bool) -> bytes:
    if isinstance(name, str):
        b = name.encode()
    elif isinstance(name, (bytes, bytearray)):
        b = bytes(name)
    else:
        raise IPCError(f"an IPC name is a str, not {type(name).__name__}")
    if not b:
        raise IPCError("an IPC name cannot be empty")
    if len(b) >= NAME_MAX:
        raise IPCError(f"IPC name {b[:20]!r}... is {len(b)} bytes; the limit is "
                       f"{NAME_MAX - 1} (NAME_MAX {NAME_MAX} with the NUL)")
    if b"\0" in b:
        raise IPCError(f"IPC name {b!r} contains a NUL byte")
    if not internal and b.startswith(RESERVED_PREFIX.encode()):
        raise IPCError(f"IPC names starting with {RESERVED_PREFIX!r} are reserved "
                       f"for forkhost's own notices; {b.decode(errors='replace')!r} "
                       f"cannot be sent")
    return b


def _param_bytes(param) -> bytes:
    if type(param) is bytes and len(param) <= PARAM_MAX:
        return param
    if isinstance(param, str):
        raise IPCError("an IPC param is bytes: encode the str first")
    try:
        b = bytes(param)
    except TypeError:
        raise IPCError(f"an IPC param is bytes, not {type(param).__name__}") from None
    if len(b) > PARAM_MAX:
        raise IPCError(f"IPC param of {len(b)} bytes is over the limit of "
                       f"{PARAM_MAX} (PARAM_MAX); put bulk data in the arena "
                       f"(a memzone or ring) or in a passed memfd")
    return b


def _fd_list(fds) -> list[int]:
    if not fds:
        return []
    out = [int(fd) for fd in fds]
    if len(out) > FDS_MAX:
        raise IPCError(f"{len(out)} fds is over the limit of {FDS_MAX} per "
                       f"message (FDS_MAX)")
    for fd in out:
        try:
            os.fstat(fd)
        except OSError:
            raise IPCError(f"fd {fd} is not an open file descriptor") from None
    return out


def parse_exit_notice(msg: Message) -> tuple[int, int | None]:
    """A ``forkhost.exit`` notice -> (pid, returncode): N when it exited
    with N, -S when signal S killed it, None when nobody knows."""
    pid, code, sig, flags = EXIT_BODY.unpack(msg.param)
    if not flags & EXIT_STATUS_KNOWN:
        return pid, None
    return pid, (-sig if sig else code)


class _Malformed(Exception):
    pass


def _recursion_error(name) -> IPCError:
    return IPCError(
        f"a synchronous request ({name!r}) from inside an IPC action or "
        f"callback would deadlock: the IPC thread is the one that must "
        f"receive the reply.  Use request_async(), or make the request "
        f"from another thread")


def _close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _recv_record(sock: socket.socket):
    """One record -> (header tuple, param, fds); None on EOF; raises
    BlockingIOError when nothing is there, _Malformed (fds closed)."""
    data, anc, mflags, _ = sock.recvmsg(RECORD_MAX, _CMSG_SPACE, _RECV_FLAGS)
    fds = protocol.fds_received(anc)
    if not data and not fds:
        return None
    try:
        if mflags & _MSG_CTRUNC:
            raise _Malformed(f"more than {FDS_MAX} fds")
        if mflags & _MSG_TRUNC:
            raise _Malformed(f"record over {RECORD_MAX} bytes")
        if len(data) < HDR.size:
            raise _Malformed(f"truncated record ({len(data)} bytes)")
        h = HDR.unpack_from(data)
        magic, version, mtype, length, nfds, rid, plen, status, name = h
        if magic != MAGIC:
            raise _Malformed(f"bad magic 0x{magic:08x}")
        if version != VERSION:
            raise _Malformed(f"version {version}")
        if length != len(data) or plen != length - HDR.size or plen > PARAM_MAX:
            raise _Malformed(f"length {length}/{plen}, {len(data)} arrived")
        if nfds != len(fds) or nfds > FDS_MAX:
            raise _Malformed(f"{nfds} fds announced, {len(fds)} arrived")
        if mtype not in _TYPES:
            raise _Malformed(f"type 0x{mtype:02x}")
        if name[-1] != 0:
            raise _Malformed("unterminated name")
        name = name.rstrip(b"\0")
        if (mtype in (MSG, REQUEST, REPLY)) != bool(name) or b"\0" in name:
            raise _Malformed("bad name")
        if (mtype in (REQUEST, REPLY)) != bool(rid):
            raise _Malformed("bad request id")
        return (mtype, rid, status, name), data[HDR.size:], fds
    except _Malformed:
        _close_fds(fds)
        raise


# -- connections --------------------------------------------------------------

class _Conn:
    """One connection: in the primary, one per member; in a secondary, the
    one to the primary.  Closing is deferred while a sender uses it, so a
    recycled fd number can never receive another connection's records."""

    __slots__ = ("sock", "fd", "pid", "ppid", "joined", "left", "deadline",
                 "users", "closing")

    def __init__(self, sock: socket.socket, pid: int = 0):
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.ppid = 0
        self.joined = False
        self.left = False       # said BYE
        self.deadline = 0.0
        self.users = 0
        self.closing = False


class _Pending:
    __slots__ = ("id", "name", "param", "waiting", "replies", "nb_sent",
                 "deadline", "event", "callback", "done", "issuing")

    def __init__(self, rid, name, param, deadline, callback, waiter=True):
        self.id = rid
        self.name = name
        self.param = param
        self.waiting: set[_Conn] = set()
        self.replies: list[Message] = []
        self.nb_sent = 0
        self.deadline = deadline
        # sync: a lock born acquired, released once when the request is
        # complete (cheaper than an Event on every request)
        self.event = None if callback or not waiter else _thread.allocate_lock()
        if self.event is not None:
            self.event.acquire()
        self.callback = callback
        self.done = False
        # Still sending: answers and deaths may come in before the last
        # send returns, but the request is complete only after it.
        self.issuing = True


# -- actions (per process, kept across start/stop) ---------------------------

_lock = threading.RLock()
_actions: dict[bytes, Callable] = {}
_endpoint: "_Endpoint | None" = None
_primary = None                 # this process's Primary, once prepare()d
_exit_pair: tuple[socket.socket, socket.socket] | None = None


def register(name: str, callback: Callable) -> None:
    """Run ``callback(msg, peer)`` on the IPC thread for every message or
    request named ``name``.  In a secondary this joins the primary's IPC;
    in the primary it may be called before ``Primary.ipc()``."""
    b = _name_bytes(name, internal=True)
    if b.startswith(RESERVED_PREFIX.encode()) and b not in _NOTICES:
        raise IPCError(f"{name!r}: only {EXIT_NOTICE!r} and {SHUTDOWN_NOTICE!r} "
                       f"may be registered in the reserved {RESERVED_PREFIX!r} namespace")
    if not callable(callback):
        raise IPCError("the callback of an IPC action must be callable")
    with _lock:
        if b in _actions:
            raise IPCError(f"an action is already registered for {name!r}")
        _actions[b] = callback
    if _role() == "secondary":
        try:
            _get()
        except BaseException:
            with _lock:
                _actions.pop(b, None)
            raise


def unregister(name: str) -> None:
    b = _name_bytes(name, internal=True)
    with _lock:
        if _actions.pop(b, None) is None:
            raise IPCError(f"no action is registered for {name!r}")


def send(name: str, param=b"", fds=(), to: int | None = None) -> int:
    """A message: secondary -> primary; primary -> every member, or to the
    member with pid ``to``.  Returns how many peers it reached."""
    return _get().send(name, param, fds, to)


def request(name: str, param=b"", fds=(), timeout: float = DEFAULT_TIMEOUT,
            to: int | None = None) -> Reply:
    """Send a request and wait for every reached peer's answer, its death,
    or the timeout.  Refused (IPCError) on the IPC thread: the thread that
    would have to receive the reply is the one waiting."""
    return _get().request(name, param, fds, timeout, to)


def request_async(name: str, param=b"", fds=(), timeout: float = DEFAULT_TIMEOUT,
                  callback: Callable | None = None, to: int | None = None) -> None:
    """Send a request; ``callback(request, reply)`` runs on the IPC thread
    once every answer is in, or at the timeout."""
    if not callable(callback):
        raise IPCError("request_async needs a callback(request, reply)")
    _get().request_async(name, param, fds, timeout, callback, to)


def reply(peer: Peer, name: str, param=b"", fds=()) -> bool:
    """Answer the request ``peer`` came with.  False when the requester is
    gone; IPCError when it was already answered."""
    if not isinstance(peer, Peer):
        raise IPCError("reply() needs the peer an action was called with")
    b = _name_bytes(name, internal=True)
    return peer._answer(b, OK, _param_bytes(param), _fd_list(fds))


def members() -> list[Member]:
    """The primary's live members (IPC must be started)."""
    ep = _get()
    if not isinstance(ep, _PrimaryEndpoint):
        raise IPCError("members() is the primary's: a secondary only knows the primary")
    return ep.members()


def stats() -> dict[str, int]:
    ep = _endpoint
    if ep is None or ep.owner != os.getpid():
        return dict.fromkeys(_STATS, 0)
    return ep.stats()


def start(prefix: str | None = None, runtime_dir=None) -> "_Endpoint":
    """Start this process's IPC now: in a secondary, join; in the primary,
    the same as ``Primary.ipc()``; in any other process of the same user,
    attach to the primary of ``prefix``."""
    if _role() == "primary":
        return start_primary(_primary)
    if prefix is not None or runtime_dir is not None:
        path = str(runtime.paths(prefix, runtime_dir).ipc_socket)
        return _get(path)
    return _get()


def stop() -> None:
    """Leave (secondary: BYE, close) or stop (primary, as Primary.stop()
    does, without waiting for anyone)."""
    global _endpoint
    with _lock:
        ep, _endpoint = _endpoint, None
    if ep is not None and ep.owner == os.getpid():
        ep.close()


def started() -> bool:
    ep = _endpoint
    return ep is not None and ep.owner == os.getpid() and ep.running


def _role() -> str:
    if _primary is not None and _primary.pid == os.getpid():
        return "primary"
    if ffi.string(lib.fh_ipc_socket_path()) and lib.fh_ipc_primary_pid() != os.getpid():
        return "secondary"
    return "other"


def _get(path: str | None = None) -> "_Endpoint":
    global _endpoint
    ep = _endpoint
    if ep is not None and ep.owner == os.getpid():
        return ep
    with _lock:
        ep = _endpoint
        if ep is not None and ep.owner == os.getpid():
            return ep
        role = _role()
        if role == "primary":
            raise IPCError("IPC is not started in this primary: call "
                           "Primary.ipc() (after Primary.start())")
        if path is None:
            if role != "secondary":
                raise IPCError("this process is not a forkhost secondary; "
                               "forkhost.ipc.start(prefix=...) attaches to a "
                               "primary from elsewhere")
            path = ffi.string(lib.fh_ipc_socket_path()).decode()
        ep = _SecondaryEndpoint(path)
        _endpoint = ep
        return ep


# -- the endpoint ---------------------------------------------------------------

class _Endpoint:
    """What both roles share: the thread, the epoll loop, pending requests,
    dispatch to actions, the deferred close of connections."""

    def __init__(self):
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)   # membership changes
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1
        self.counts = dict.fromkeys(_STATS, 0)
        self.ep = select.epoll()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ep.register(self.wake, select.EPOLLIN)
        self.stopping = False
        self.running = False
        self.thread: threading.Thread | None = None
        self.thread_ident = 0
        # Work for the IPC thread handed over by other threads: records a
        # leading requester read that are not its reply, async callbacks.
        self.deferred: collections.deque = collections.deque()

    # -- thread ---------------------------------------------------------

    def _start_thread(self, name: str) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.thread_ident = threading.get_ident()
        try:
            while not self.stopping:
                try:
                    events = self.ep.poll(self._timeout())
                except InterruptedError:
                    continue
                for fd, ev in events:
                    if fd == self.wake:
                        try:
                            os.eventfd_read(self.wake)
                        except BlockingIOError:
                            pass
                    else:
                        self._guarded(self._event, fd, ev)
                while self.deferred:
                    self._guarded(self.deferred.popleft())
                self._expire()
        except BaseException:
            traceback.print_exc()
        finally:
            self.running = False
            self._teardown()

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
        try:
            os.eventfd_write(self.wake, 1)
        except OSError:
            pass

    def on_ipc_thread(self) -> bool:
        return threading.get_ident() == self.thread_ident

    def close(self) -> None:
        """Stop the thread; it closes everything on its way out."""
        self.stopping = True
        self._wakeup()
        if self.thread is not None and not self.on_ipc_thread():
            self.thread.join(10.0)
            if self.thread.is_alive():
                print("forkhost ipc: the IPC thread is still busy in an "
                      "action; its sockets stay open", file=sys.stderr)

    def _teardown(self) -> None:
        raise NotImplementedError

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def stats(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    # -- sending --------------------------------------------------------

    def _send_to(self, conn: _Conn, data: bytes, fds=()) -> bool:
        """One record to one peer; False (counted) when it cannot take it."""
        if self.on_ipc_thread():
            return self._send_here(conn, data, fds)
        with self.lock:
            if conn.closing:
                return False
            conn.users += 1
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] \
                if fds else []
            ok = True
            try:
                conn.sock.sendmsg([data], anc, _SEND_FLAGS)
            except BlockingIOError:
                # Full: wait a little for room (the IPC thread never gets
                # here, see _send_here).
                ok = False
                p = select.poll()
                p.register(conn.fd, select.POLLOUT)
                if p.poll(SEND_TIMEOUT * 1000):
                    try:
                        conn.sock.sendmsg([data], anc, _SEND_FLAGS)
                        ok = True
                    except OSError:
                        pass
            except OSError:
                ok = False      # EPIPE, ECONNRESET: it is closing or gone
        finally:
            with self.lock:
                conn.users -= 1
                self.counts["sent" if ok else "send_failed"] += 1
                if conn.closing and conn.users == 0:
                    conn.sock.close()
        return ok

    def _send_here(self, conn: _Conn, data: bytes, fds) -> bool:
        """_send_to on the IPC thread: it is the only thread that closes
        connections, so it needs no use count, and it never waits."""
        ok = False
        if not conn.closing:
            try:
                conn.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            array.array("i", fds))] if fds else [],
                                  _SEND_FLAGS)
                ok = True
            except OSError:
                pass        # full (we never wait here), or closing or gone
        with self.lock:
            self.counts["sent" if ok else "send_failed"] += 1
        return ok

    def _targets(self, to: int | None) -> list[_Conn]:
        raise NotImplementedError

    def send(self, name, param=b"", fds=(), to=None, *, internal=False) -> int:
        b = _name_bytes(name, internal=internal)
        data_param = _param_bytes(param)
        fd_list = _fd_list(fds)
        data = _encode(MSG, b, data_param, len(fd_list))
        return sum(self._send_to(c, data, fd_list) for c in self._targets(to))

    def _issue(self, name, param, fds, timeout, to, callback, internal,
               waiter=True) -> _Pending:
        b = _name_bytes(name, internal=internal)
        data_param = _param_bytes(param)
        fd_list = _fd_list(fds)
        if timeout is None or timeout < 0:
            raise IPCError("a request needs a timeout of 0 or more seconds")
        targets = self._targets(to)
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            p = _Pending(rid, b.decode(errors="replace"), data_param,
                         time.monotonic() + timeout, callback, waiter)
            # Waited for before sending: a reply can come back before the
            # send returns.
            p.waiting.update(targets)
            self.pending[rid] = p
        data = _encode(REQUEST, b, data_param, len(fd_list), rid)
        failed = [c for c in targets if not self._send_to(c, data, fd_list)]
        with self.lock:
            p.nb_sent = len(targets) - len(failed)
            p.waiting.difference_update(failed)
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
            raise _recursion_error(name)
        p = self._issue(name, param, fds, timeout, to, None, internal)
        p.event.acquire(True, max(0.0, p.deadline - time.monotonic()))
        return self._collect(p)

    def _collect(self, p: _Pending) -> Reply:
        with self.lock:
            if not p.done:
                self.counts["timeouts"] += len(p.waiting)
                self._finish_locked(p)
            replies = list(p.replies)
        return Reply(p.nb_sent, len(replies), replies)

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
        rep = Reply(p.nb_sent, len(p.replies), list(p.replies))
        try:
            p.callback(req, rep)
        except BaseException:
            self._count("action_errors")
            traceback.print_exc()

    def _timeout(self) -> float:
        deadlines = self._other_deadlines()
        if self.pending:          # (a dict's truth value needs no lock)
            with self.lock:
                deadlines += [p.deadline for p in self.pending.values() if p.callback]
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    def _other_deadlines(self) -> list[float]:
        return []

    def _expire(self) -> None:
        if not self.pending:
            return
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

    # -- receiving --------------------------------------------------------

    def _read(self, conn: _Conn) -> bool:
        """Read what conn has, up to _BATCH records (so one busy peer cannot
        starve the others; epoll is level-triggered and comes back for the
        rest); False when conn reached EOF."""
        for _ in range(_BATCH):
            try:
                got = _recv_record(conn.sock)
            except BlockingIOError:
                return True
            except _Malformed:
                self._count("malformed")
                continue
            except OSError:
                return False
            if got is None:
                return False
            self._count("received")
            hdr, param, fds = got
            self._record(conn, hdr, param, fds)
            if conn.closing or conn.left:
                return True
        return True

    def _record(self, conn: _Conn, hdr, param: bytes, fds: list[int]) -> None:
        mtype, rid, status, name = hdr
        if mtype in (MSG, REQUEST):
            self._dispatch(conn, mtype, rid, name, param, fds)
        elif mtype == REPLY:
            self._reply_in(conn, rid, status, name, param, fds)
        else:
            self._control(conn, mtype, param, fds)

    def _control(self, conn, mtype, param, fds) -> None:
        _close_fds(fds)
        self._count("malformed")

    def _dispatch(self, conn, mtype, rid, name_b, param, fds) -> None:
        cb = _actions.get(name_b)
        name = name_b.decode(errors="replace")
        peer = Peer(self, conn, rid if mtype == REQUEST else 0, name, conn.pid)
        if cb is None:
            _close_fds(fds)
            if mtype == REQUEST:
                self._count("no_action")
                peer._answer(name_b, NO_ACTION, b"", [])
            else:
                self._count("notices_ignored" if name_b in _NOTICES else "dropped")
            return
        self._call_action(cb, Message(name, param, fds, conn.pid, mtype), peer)

    def _call_action(self, cb, msg: Message, peer: Peer) -> None:
        try:
            cb(msg, peer)
        except BaseException as exc:
            self._count("action_errors")
            print(f"forkhost ipc: the action {msg.name!r} raised:", file=sys.stderr)
            traceback.print_exc()
            if peer.is_request and not peer.replied:
                text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
                try:
                    peer._answer(msg.name.encode(errors="replace"), ACTION_FAILED,
                                 text[:PARAM_MAX], [])
                except IPCError:
                    pass

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
                    self.counts["peer_died"] += 1
                    if not p.waiting and not p.issuing:
                        self._finish_locked(p)
                        if p.callback:
                            due.append(p)
            self.cond.notify_all()
        for p in due:
            self._call_async(p)

    def _close_conn_now(self, conn: _Conn) -> None:
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        self._lost(conn)

    def _fail_all_pending(self) -> list[_Pending]:
        due = []
        with self.lock:
            for p in list(self.pending.values()):
                self.counts["peer_died"] += len(p.waiting)
                p.waiting.clear()
                if p.issuing:
                    continue        # its issuer completes it
                self._finish_locked(p)
                if p.callback:
                    due.append(p)
        return due

    def _event(self, fd: int, ev: int) -> None:
        raise NotImplementedError

    def _forget_in_child(self) -> None:
        """After fork, in the child: this endpoint's thread does not exist
        there; close the child's copies of its fds without a word."""
        raise NotImplementedError


class _SecondaryEndpoint(_Endpoint):
    """A secondary's (or an attached process's) side: one connection.

    A sync request normally waits while the IPC thread receives its reply
    and wakes it, a thread handoff that costs more than the round trip
    itself.  So the requesting thread *leads* when it can: it takes the
    receive lock, takes the connection out of the IPC thread's epoll,
    reads until its reply is in, and gives the connection back.  Records
    it reads that are not replies are handed to the IPC thread, which runs
    every action and callback as always.  When another thread is already
    receiving, the request waits the ordinary way.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.primary_pid = 0
        self.template_pid = 0
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._join(sock)
        except BaseException:
            sock.close()
            self.ep.close()
            os.close(self.wake)
            raise
        self.conn = _Conn(sock, self.primary_pid)
        self.conn.joined = True
        sock.setblocking(False)
        self.rx_lock = threading.Lock()    # whoever reads the connection
        self.poller = select.poll()        # the leader's (under rx_lock)
        self.poller.register(self.conn.fd, select.POLLIN)
        self.ep.register(self.conn.fd, _EPOLL_IN)
        self._start_thread(f"forkhost-ipc[{os.getpid()}]")

    def _join(self, sock: socket.socket) -> None:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise IPCError(f"no IPC at {self.path}: the primary has not started "
                           f"it (Primary.ipc()) or is gone") from None
        except OSError as err:
            raise IPCError(f"cannot connect to {self.path}: {err.strerror or err}") from err
        hello = HELLO_BODY.pack(os.getpid(), os.getppid(), 0, 0)
        try:
            sock.sendmsg([_encode(HELLO, b"", hello)], [], socket.MSG_NOSIGNAL)
        except (BrokenPipeError, ConnectionResetError):
            pass          # refused at once: its REFUSE says why
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                got = _recv_record(_Blocking(sock))
            except _Malformed as err:
                raise IPCError(f"the primary answered HELLO with a bad record: {err}") from None
            except TimeoutError:
                raise IPCError(f"the primary did not answer HELLO within "
                               f"{CONNECT_TIMEOUT:g}s") from None
            except OSError as err:
                raise IPCError(f"joining IPC failed: {err}") from err
            if got is None:
                raise IPCError("the primary closed the IPC connection during HELLO")
            (mtype, _, _, _), param, fds = got
            _close_fds(fds)
            if mtype == REFUSE:
                raise IPCError(f"the primary refused: {param.decode(errors='replace')}")
            if mtype == WELCOME and len(param) == WELCOME_BODY.size:
                self.primary_pid, self.template_pid, _, _ = WELCOME_BODY.unpack(param)
                return
            raise IPCError(f"unexpected record 0x{mtype:02x} instead of WELCOME")

    def _targets(self, to):
        if to is not None and to != self.primary_pid:
            raise IPCError(f"a secondary talks to its primary (pid {self.primary_pid}) "
                           f"only, not to pid {to}")
        return [] if self.conn.closing else [self.conn]   # (written under
        # self.lock; reading one attribute needs no lock)

    def _event(self, fd, ev):
        if fd != self.conn.fd:
            return
        if not self.rx_lock.acquire(False):
            return        # a leading requester reads; it gives the socket back
        try:
            alive = self._read(self.conn)
        finally:
            self.rx_lock.release()
        if not alive or (ev & _EPOLL_GONE and not ev & select.EPOLLIN):
            # The primary is gone (or stopped IPC): nothing will answer.
            self._close_conn_now(self.conn)
            for p in self._fail_all_pending():
                self._call_async(p)

    # -- the leading requester --------------------------------------------

    def request(self, name, param=b"", fds=(), timeout=DEFAULT_TIMEOUT, to=None,
                *, internal=False) -> Reply:
        if self.on_ipc_thread():
            raise _recursion_error(name)
        if self.rx_lock.acquire(False):
            try:
                p = self._lead_request(name, param, fds, timeout, to, internal)
            finally:
                self.rx_lock.release()
            if p is not None:
                return self._collect(p)
        # Someone else receives (or we are stopping): wait to be woken.
        return super().request(name, param, fds, timeout, to, internal=internal)

    def _lead_request(self, name, param, fds, timeout, to, internal):
        """With rx_lock held: send, then receive until the reply is in.
        None when the connection cannot be led (closing, stopped)."""
        conn = self.conn
        with self.lock:
            if conn.closing or not self.running:
                return None
            conn.users += 1              # not closed under our feet
        try:
            self._arm(False)
            p = self._issue(name, param, fds, timeout, to, None, internal,
                            waiter=False)   # we read the reply ourselves
            self._lead(p)
            return p
        finally:
            self._arm(True)
            with self.lock:
                conn.users -= 1
                if conn.closing and conn.users == 0:
                    conn.sock.close()

    def _arm(self, on: bool) -> None:
        """Give the connection to the IPC thread's epoll, or take it away.
        Removed rather than masked: epoll reports a hang-up even for an
        empty mask, and the IPC thread would spin on it."""
        try:
            if on:
                self.ep.register(self.conn.fd, _EPOLL_IN)
            else:
                self.ep.unregister(self.conn.fd)
        except (OSError, ValueError):
            pass          # stopping: the epoll or the socket is closed

    def _lead(self, p: _Pending) -> None:
        conn = self.conn
        while not p.done:
            left = p.deadline - time.monotonic()
            if left <= 0:
                return
            if not self.poller.poll(left * 1000 + 1):
                continue
            for _ in range(_BATCH):
                try:
                    got = _recv_record(conn.sock)
                except BlockingIOError:
                    break
                except _Malformed:
                    self._count("malformed")
                    continue
                except OSError:
                    got = None
                if got is None:
                    # EOF: the primary is gone.  We stop waiting now; the IPC
                    # thread closes up once it has the socket back.
                    with self.lock:
                        if conn in p.waiting:
                            p.waiting.discard(conn)
                            self.counts["peer_died"] += 1
                            if not p.waiting and not p.issuing:
                                self._finish_locked(p)
                    return
                self._count("received")
                hdr, param, fds = got
                if hdr[0] == REPLY:
                    self._reply_in(conn, hdr[1], hdr[2], hdr[3], param, fds)
                else:
                    self._defer(functools.partial(self._record, conn, hdr, param, fds))
                if p.done:
                    return        # the rest is the IPC thread's

    def close(self) -> None:
        if self.running:
            with self.lock:
                closing = self.conn.closing
            if not closing and not self.stopping:
                self._send_to(self.conn, _encode(BYE, b"", b""))
        super().close()

    def _teardown(self):
        with self.lock:
            if not self.conn.closing:
                self.conn.closing = True
                if self.conn.users == 0:
                    self.conn.sock.close()
        for p in self._fail_all_pending():
            self._call_async(p)
        self.ep.close()
        os.close(self.wake)

    def _forget_in_child(self):
        self.conn.sock.close()
        self.ep.close()
        os.close(self.wake)


class _Blocking:
    """recvmsg without MSG_DONTWAIT, for the handshake on the caller's thread."""

    def __init__(self, sock):
        self.sock = sock

    def recvmsg(self, n, anc, flags):
        return self.sock.recvmsg(n, anc, flags & ~socket.MSG_DONTWAIT)


class _PrimaryEndpoint(_Endpoint):
    """The primary's side: the listener, one connection per member, and
    the template's exit records."""

    def __init__(self, primary, exit_sock: socket.socket | None):
        super().__init__()
        self.primary = primary
        self.pid = os.getpid()
        self.template_pid = primary.template_pid
        self.uid = os.getuid()
        self.path = str(primary.paths.ipc_socket)
        self.conns: dict[int, _Conn] = {}       # every accepted connection
        self.joined: dict[int, _Conn] = {}      # members, in join order
        self.hello_due: dict[int, _Conn] = {}   # accepted, no HELLO yet
        self.exit_sock = exit_sock
        self.listener = self._bind()
        self.listen_fd = self.listener.fileno()
        self.ep.register(self.listen_fd, select.EPOLLIN)
        if exit_sock is not None:
            exit_sock.setblocking(False)
            self.ep.register(exit_sock.fileno(), select.EPOLLIN)
        self._start_thread("forkhost-ipc")

    def _bind(self) -> socket.socket:
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

    def members(self) -> list[Member]:
        with self.lock:
            return [Member(c.pid, c.ppid, c.ppid == self.template_pid)
                    for c in self.joined.values() if not c.closing]

    def wait_members(self, pred: Callable[[list[Member]], bool],
                     timeout: float) -> bool:
        """Wait until pred(members()) holds (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                live = [Member(c.pid, c.ppid, c.ppid == self.template_pid)
                        for c in self.joined.values() if not c.closing]
                if pred(live):
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
        elif self.exit_sock is not None and fd == self.exit_sock.fileno():
            self._template_exits()
        else:
            conn = self.conns.get(fd)
            if conn is None:
                return
            if not self._read(conn) or conn.left:
                self._drop(conn)
            elif ev & (select.EPOLLHUP | select.EPOLLERR) and not ev & select.EPOLLIN:
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
            self.conns[conn.fd] = conn
            self.hello_due[conn.fd] = conn
            self.ep.register(conn.fd, select.EPOLLIN | select.EPOLLRDHUP)

    def _refuse(self, conn: _Conn, why: str) -> None:
        """REFUSE, then close so that the peer reads it: closing a unix
        socket with unread records makes the peer's recv fail with
        ECONNRESET before it sees ours, so drain what it sent and shut
        reading down (its HELLO, if still to come, fails with EPIPE)."""
        try:
            conn.sock.sendmsg([_encode(REFUSE, b"", why.encode()[:PARAM_MAX])], [],
                              _SEND_FLAGS)
        except OSError:
            pass
        for _ in range(_BATCH):
            try:
                if _recv_record(conn.sock) is None:
                    break
            except _Malformed:
                pass
            except OSError:
                break
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.sock.close()

    def _control(self, conn, mtype, param, fds):
        _close_fds(fds)
        if mtype == HELLO and not conn.joined and len(param) == HELLO_BODY.size:
            _, ppid, _, _ = HELLO_BODY.unpack(param)
            self.hello_due.pop(conn.fd, None)
            with self.lock:
                conn.ppid = ppid
                conn.joined = True
                self.joined[conn.fd] = conn
                self.cond.notify_all()
            body = WELCOME_BODY.pack(self.pid, self.template_pid, NAME_MAX, PARAM_MAX)
            self._send_to(conn, _encode(WELCOME, b"", body))
        elif mtype == BYE and conn.joined:
            conn.left = True
        else:
            self._count("malformed")

    def _record(self, conn, hdr, param, fds):
        if not conn.joined and hdr[0] != HELLO:
            _close_fds(fds)       # nothing but HELLO before HELLO
            self._count("malformed")
            return
        super()._record(conn, hdr, param, fds)

    def _read(self, conn):
        if not conn.joined:
            # A HELLO of another version: answer it in words before the
            # generic check would only count it.
            try:
                peek = conn.sock.recv(HDR.size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if len(peek) >= 8:
                magic, version, mtype = struct.unpack_from("=IHH", peek)
                if magic == MAGIC and version != VERSION and mtype == HELLO:
                    self._count("malformed")
                    self.ep.unregister(conn.fd)
                    del self.conns[conn.fd]
                    self.hello_due.pop(conn.fd, None)
                    self._refuse(conn, f"IPC version mismatch: the secondary speaks "
                                       f"{version}, the primary speaks {VERSION}")
                    return True
        return super()._read(conn)

    def _drop(self, conn: _Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.hello_due.pop(conn.fd, None)
        with self.lock:
            was_member = self.joined.pop(conn.fd, None) is not None
        self._close_conn_now(conn)
        # A template child's exit is reported with its status by the
        # template; anyone else's only we can report, without a status.
        if was_member and not conn.left and conn.ppid != self.template_pid:
            self._exit_notice(conn.pid, 0, 0, 0)

    def _other_deadlines(self):
        return [c.deadline for c in self.hello_due.values()]

    def _expire(self):
        super()._expire()
        if self.hello_due:
            now = time.monotonic()
            for c in [c for c in self.hello_due.values() if c.deadline <= now]:
                self._drop(c)

    # -- notices ----------------------------------------------------------

    def _template_exits(self) -> None:
        while True:
            try:
                data = self.exit_sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) != TEMPLATE_EXIT.size:
                continue        # (a datagram socket has no EOF to read)
            pid, status = TEMPLATE_EXIT.unpack(data)
            try:
                code = os.waitstatus_to_exitcode(status)
            except ValueError:
                continue
            self._exit_notice(pid, code if code >= 0 else 0,
                              -code if code < 0 else 0, EXIT_STATUS_KNOWN)

    def _exit_notice(self, pid: int, code: int, sig: int, flags: int) -> None:
        body = EXIT_BODY.pack(pid, code, sig, flags)
        data = _encode(MSG, EXIT_NOTICE.encode(), body)
        for c in self._targets(None):
            if c.pid != pid:
                self._send_to(c, data)
        cb = _actions.get(EXIT_NOTICE.encode())
        if cb is not None:
            self._call_action(cb, Message(EXIT_NOTICE, body, [], self.pid, MSG),
                              Peer(self, None, 0, EXIT_NOTICE, self.pid))

    def shutdown(self, grace: float) -> None:
        """Primary.stop(): ask the members whether they will wind down
        (forkhost.shutdown), and give those that answer until the end of
        the grace period to leave; then stop.  Members without an action
        answer NO_ACTION at once and are not waited for."""
        try:
            if self.running and not self.on_ipc_thread() and self.members():
                deadline = time.monotonic() + grace
                body = SHUTDOWN_BODY.pack(self.pid, int(grace * 1000))
                with self.request(SHUTDOWN_NOTICE, body, timeout=grace,
                                  internal=True) as r:
                    leaving = {m.pid for m in r.msgs if m.ok}
                if leaving:
                    self.wait_members(
                        lambda ms: not any(m.pid in leaving for m in ms),
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
            with self.lock:
                c.closing = True
                if c.users == 0:
                    c.sock.close()
        for p in self._fail_all_pending():
            self._call_async(p)
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.listener.close()
        if self.exit_sock is not None:
            # Kept for a later Primary.ipc() (ipc.stop() then start again);
            # shutdown_primary() closes it for good.
            global _exit_pair
            with _lock:
                if _exit_pair is None and self.owner == os.getpid():
                    _exit_pair = (self.exit_sock, None)
                else:
                    self.exit_sock.close()
        self.ep.close()
        os.close(self.wake)

    def _forget_in_child(self):
        for c in self.conns.values():
            c.sock.close()
        self.listener.close()
        if self.exit_sock is not None:
            self.exit_sock.close()
        self.ep.close()
        os.close(self.wake)


# -- the primary's side of the template fork -------------------------------

def prepare(primary) -> int:
    """In Primary.start(), before the template fork: record where IPC will
    be (every secondary inherits it through libforkhost) and create the
    channel the template reports exits on.  Returns the template's end."""
    global _primary, _exit_pair
    path = str(primary.paths.ipc_socket)
    if lib.fh_ipc_set_primary(os.fsencode(path), primary.pid) < 0:
        raise ForkhostError(f"IPC socket path too long ({len(path)} bytes; "
                            f"sun_path holds 107): {path}")
    mine, theirs = socket.socketpair(socket.AF_UNIX,
                                     socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    # The template must never block on us: a full buffer drops the record.
    theirs.setblocking(False)
    _primary, _exit_pair = primary, (mine, theirs)
    return theirs.fileno()


def after_template_fork() -> None:
    """In the primary, after the fork: the template's end is the template's."""
    if _exit_pair is not None:
        _exit_pair[1].close()


def notify_exit(fd: int, pid: int, status: int) -> None:
    """In the template, for each reaped secondary: one nonblocking datagram
    to the primary, dropped if it cannot be sent at once."""
    if fd < 0:
        return
    try:
        os.write(fd, TEMPLATE_EXIT.pack(pid, status))
    except OSError:
        pass


def start_primary(primary) -> _PrimaryEndpoint:
    """Primary.ipc(): bind ipc.sock and start the IPC thread, once the
    template exists (it must be forked while we are single-threaded)."""
    global _endpoint, _exit_pair
    if primary is None or primary.pid != os.getpid():
        raise IPCError("this process is not a primary")
    if not primary.template_pid or primary.template_pidfd < 0:
        raise IPCError("IPC starts after the template is forked (Primary.start()): "
                       "the template must be forked from a single-threaded "
                       "primary and the IPC thread would be a second thread")
    with _lock:
        ep = _endpoint
        if ep is not None and ep.owner == os.getpid():
            return ep
        _raise_nofile(primary.max_secondaries)
        exit_sock = _exit_pair[0] if _exit_pair is not None else None
        _exit_pair = None
        ep = _PrimaryEndpoint(primary, exit_sock)
        _endpoint = ep
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
    global _endpoint, _exit_pair
    with _lock:
        ep, _endpoint = _endpoint, None
    if isinstance(ep, _PrimaryEndpoint) and ep.owner == os.getpid():
        ep.shutdown(grace)        # its teardown hands the exit channel back
    with _lock:
        pair, _exit_pair = _exit_pair, None
    if pair is not None:
        for s in pair:
            if s is not None and s.fileno() >= 0:
                s.close()


def _after_fork_in_child() -> None:
    """A forked child has none of our threads: forget the parent's
    endpoint (closing the child's copies of its fds, so that the parent's
    membership ends with the parent), its actions and its primary."""
    global _lock, _actions, _endpoint, _primary, _exit_pair
    ep, pair = _endpoint, _exit_pair
    _lock = threading.RLock()
    _actions = {}
    _endpoint = _primary = _exit_pair = None
    if ep is not None:
        try:
            ep._forget_in_child()
        except OSError:
            pass
    if pair is not None:
        # The template keeps its end by number (and closes the rest by
        # number): the objects must not close anything when collected.
        for s in pair:
            if s is not None:
                s.detach()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "register", "unregister", "send", "request", "request_async", "reply",
    "members", "stats", "start", "stop", "started", "parse_exit_notice",
    "Message", "Reply", "Peer", "Member", "IPCError",
    "NAME_MAX", "PARAM_MAX", "FDS_MAX", "DEFAULT_TIMEOUT",
    "OK", "NO_ACTION", "ACTION_FAILED", "EXIT_NOTICE", "SHUTDOWN_NOTICE",
]
