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
    r = ipc.request("config", b"", timeout=2)  # -> Reply(nb_sent, nb_received, msgs, peers)
"""

from __future__ import annotations

import _thread
import atexit
import collections
import enum
import errno
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

MAGIC = lib.FH_IPC_MAGIC
VERSION = lib.FH_IPC_VERSION
MSG, REQUEST, REPLY = lib.FH_IPC_MSG, lib.FH_IPC_REQUEST, lib.FH_IPC_REPLY
HELLO, WELCOME = lib.FH_IPC_HELLO, lib.FH_IPC_WELCOME
REFUSE, BYE = lib.FH_IPC_REFUSE, lib.FH_IPC_BYE
_TYPE_NAMES = {MSG: "MSG", REQUEST: "REQUEST", REPLY: "REPLY", HELLO: "HELLO",
               WELCOME: "WELCOME", REFUSE: "REFUSE", BYE: "BYE"}
_TYPES = set(_TYPE_NAMES)
# REPLY status
OK, NO_ACTION, ACTION_FAILED = lib.FH_IPC_OK, lib.FH_IPC_NO_ACTION, lib.FH_IPC_ACTION_FAILED

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
_HDR_SIZE = HDR.size
_unpack_hdr = HDR.unpack_from
# nfds, status and name of a header: what a requester reads of a reply
_unpack_reply_view = struct.Struct("=12xI12xi64s").unpack_from

RESERVED_PREFIX = "forkhost."
EXIT_STATUS_KNOWN = lib.FH_IPC_EXIT_STATUS_KNOWN


def _notice_names() -> tuple[str, ...]:
    """The notices an action may be registered under (ipc.h)."""
    names = []
    while (n := lib.fh_ipc_notice_name(len(names))) != ffi.NULL:
        names.append(ffi.string(n).decode())
    return tuple(names)


NOTICES = _notice_names()
EXIT_NOTICE, SHUTDOWN_NOTICE, STOP_NOTICE, WORKER_NOTICE, RECLAIM_NOTICE = NOTICES
_NOTICES = {n.encode() for n in NOTICES}
_RESERVED_B = RESERVED_PREFIX.encode()

# An accepted connection that says nothing is closed after this, so idle
# connections cannot hold the primary's fds (forkhost/ipc.h, which a C
# primary's endpoint uses too).
HELLO_TIMEOUT = lib.FH_IPC_HELLO_TIMEOUT_MS / 1000
# Each member is an fd and a little memory in the primary.
MAX_MEMBERS = lib.FH_IPC_MAX_MEMBERS
# How long a send from an ordinary thread waits for room in a full peer's
# buffer; the IPC thread never waits (it would stall every other peer).
SEND_TIMEOUT = 1.0
DEFAULT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# Records read from one connection per wake-up: one busy peer cannot
# starve the others.
_BATCH = 64

_CMSG_SPACE = socket.CMSG_SPACE(FDS_MAX * 4)   # (int fds)
# Plain ints: the socket module's flags are IntFlag members, and enum
# arithmetic costs microseconds on every record.
_SEND_FLAGS = int(socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_EPOLL_GONE = int(select.EPOLLHUP | select.EPOLLERR)
_POLL_SHUT = int(select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL)
_STATS = ("sent", "received", "dropped", "notices_ignored", "no_action",
          "malformed", "action_errors", "timeouts", "peer_died", "late_replies",
          "send_failed")


# -- what the API hands out -----------------------------------------------

@dataclass(eq=False, slots=True)
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


class PeerStatus(enum.IntEnum):
    """What became of a request at one peer it reached (forkhost/ipc.h's
    enum fh_ipc_peer_status)."""

    ANSWERED = lib.FH_IPC_PEER_ANSWERED      # its answer: OK or ACTION_FAILED
    NO_ACTION = lib.FH_IPC_PEER_NO_ACTION    # it has no action of that name
    TIMED_OUT = lib.FH_IPC_PEER_TIMED_OUT    # no answer by the deadline
    DIED = lib.FH_IPC_PEER_DIED              # its connection closed first


_PEER_STATUS = {int(s): s for s in PeerStatus}
_ANSWERED, _PEER_NO_ACTION = PeerStatus.ANSWERED, PeerStatus.NO_ACTION
_TIMED_OUT, _DIED = PeerStatus.TIMED_OUT, PeerStatus.DIED


@dataclass(eq=False, slots=True)
class PeerReply:
    """One peer a request reached: its pid, its name (``/proc/PID/comm``
    when it joined), what became of the request there, and its answer
    (``ANSWERED`` and ``NO_ACTION``; the same Message as in ``msgs``)."""

    pid: int
    name: str
    status: PeerStatus
    msg: Message | None = None


@dataclass(eq=False, slots=True)
class Reply:
    """What a request got (DPDK's rte_mp_reply): nb_sent peers reached,
    nb_received answered (NO_ACTION and ACTION_FAILED answers included),
    their answers in arrival order, and one PeerReply per peer reached, in
    the order the request went to them."""

    nb_sent: int
    nb_received: int
    msgs: list[Message]
    peers: list[PeerReply] = field(default_factory=list)

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

    __slots__ = ("pid", "name", "_endpoint", "_conn", "_id", "_token")

    def __init__(self, endpoint, conn, rid: int, name: str, pid: int):
        self.pid, self.name = pid, name
        self._endpoint, self._conn, self._id = endpoint, conn, rid
        # The right to answer, taken once: list.pop() is atomic, so two
        # threads replying at once cannot both get it (and it costs less
        # than a lock per request).
        self._token = [True] if rid else []

    @property
    def is_request(self) -> bool:
        return self._id != 0

    @property
    def replied(self) -> bool:
        return self._id != 0 and not self._token

    def _answer(self, name_b: bytes, status: int, param: bytes, fds) -> bool:
        try:
            self._token.pop()
        except IndexError:
            if not self._id:
                raise IPCError(f"{self.name!r} from pid {self.pid} is a message, "
                               f"not a request: there is nothing to reply to") from None
            raise IPCError(f"the request {self.name!r} from pid {self.pid} "
                           f"was already answered") from None
        return self._endpoint._send_reply(self, name_b, status, param, fds)

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
    # Only names anyone may send: a reserved one passes for internal use
    # (replies, notices) and must still be refused to everyone else.
    if (len(_good_names) < 1024 and isinstance(name, (str, bytes))
            and not b.startswith(_RESERVED_B)):
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


def _comm(pid: int) -> str:
    """A peer's name: /proc/PID/comm (as fh__ipc_comm() in ipc.c reads it),
    "" when it cannot be read."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read(lib.FH_IPC_PEER_NAME_MAX - 1).rstrip(b"\n").decode(
                errors="replace")
    except OSError:
        return ""


def _peer_shut(sock: socket.socket) -> bool:
    """Has the peer shut down its sending side?  A SEQPACKET recvmsg gives
    0 bytes both for an empty record and at EOF; only the second comes with
    the receive side shut down, which poll reports as POLLRDHUP and which
    never reverts (the reasoning in full: peer_shut() in csrc/lib/ipc.c)."""
    p = select.poll()
    p.register(sock, _POLL_SHUT)
    return any(ev & _POLL_SHUT for _, ev in p.poll(0))


def _recv_record(sock: socket.socket):
    """One record -> (header tuple, param, fds); None on EOF; raises
    BlockingIOError when nothing is there, _Malformed (fds closed)."""
    data, anc, mflags, _ = sock.recvmsg(RECORD_MAX, _CMSG_SPACE, _RECV_FLAGS)
    fds = protocol.fds_received(anc)
    if not data and not fds:
        if _peer_shut(sock):
            return None
        raise _Malformed("an empty record")
    try:
        if mflags & _MSG_CTRUNC:
            raise _Malformed(f"more than {FDS_MAX} fds")
        if mflags & _MSG_TRUNC:
            raise _Malformed(f"a record over {RECORD_MAX} bytes")
        if len(data) < HDR.size:
            raise _Malformed(f"a truncated record ({len(data)} bytes)")
        h = HDR.unpack_from(data)
        magic, version, mtype, length, nfds, rid, plen, status, name = h
        if magic != MAGIC:
            raise _Malformed(f"bad magic 0x{magic:08x}, not an IPC record")
        if version != VERSION:
            raise _Malformed(f"IPC version {version}, not {VERSION}")
        if length != len(data) or plen != length - HDR.size or plen > PARAM_MAX:
            raise _Malformed(f"its header says {length} bytes with a param of {plen}, "
                            f"{len(data)} arrived")
        if nfds != len(fds) or nfds > FDS_MAX:
            raise _Malformed(f"{nfds} fds announced, {len(fds)} arrived")
        if mtype not in _TYPES:
            raise _Malformed(f"unknown type 0x{mtype:02x}")
        if name[-1] != 0:
            raise _Malformed("an unterminated name")
        name = name.rstrip(b"\0")
        if (mtype in (MSG, REQUEST, REPLY)) != bool(name) or b"\0" in name:
            raise _Malformed("a name its type does not allow")
        if (mtype in (REQUEST, REPLY)) != bool(rid):
            raise _Malformed("a request id its type does not allow")
        return (mtype, rid, status, name), data[HDR.size:], fds
    except _Malformed:
        _close_fds(fds)
        raise


# -- connections (the primary's) -----------------------------------------------

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


# -- actions (per process, kept across start/stop) ---------------------------

_get_ident = threading.get_ident
_lock = threading.RLock()
_actions: dict[bytes, Callable] = {}
# This process's pid, kept by the fork hook: os.getpid() is a system call,
# too dear for every request.
_pid = os.getpid()
_endpoint: "_PrimaryEndpoint | _SecondaryEndpoint | None" = None
_primary = None                 # this process's Primary, once prepare()d
_exit_pair: tuple[socket.socket, socket.socket] | None = None


def register(name: str, callback: Callable) -> None:
    """Run ``callback(msg, peer)`` on the IPC thread for every message or
    request named ``name``.  In a secondary this joins the primary's IPC;
    in the primary it may be called before ``Primary.ipc()``."""
    b = _name_bytes(name, internal=True)
    if b.startswith(RESERVED_PREFIX.encode()) and b not in _NOTICES:
        raise IPCError(f"{name!r}: only {', '.join(map(repr, NOTICES))} may be "
                       f"registered in the reserved {RESERVED_PREFIX!r} namespace")
    if not callable(callback):
        raise IPCError("the callback of an IPC action must be callable")
    with _lock:
        if b in _actions:
            raise IPCError(f"an action is already registered for {name!r}")
        _actions[b] = callback
    # Mirrored in libforkhost, whose receive thread runs a secondary's
    # actions (in the primary the C list is simply unused).  In a secondary
    # this joins, after the action is in place: nothing the primary sends
    # once we are a member can miss it.
    if lib.fh_ipc_register(b, lib._fh_ipc_action) < 0:
        err = ffi.errno
        if err != errno.EEXIST:
            with _lock:
                _actions.pop(b, None)
            raise _join_error(err, ffi.string(lib.fh_ipc_socket_path()).decode())
    if _role() == "secondary":
        _get()


def unregister(name: str) -> None:
    b = _name_bytes(name, internal=True)
    with _lock:
        if _actions.pop(b, None) is None:
            raise IPCError(f"no action is registered for {name!r}")
    lib.fh_ipc_unregister(b)


def send(name: str, param=b"", fds=(), to: int | None = None) -> int:
    """A message: secondary -> primary; primary -> every member, or to the
    member with pid ``to``.  Returns how many peers it reached."""
    ep = _endpoint
    if ep is None or ep.owner != _pid:
        ep = _get()
    return ep.send(name, param, fds, to)


def request(name: str, param=b"", fds=(), timeout: float = DEFAULT_TIMEOUT,
            to: int | None = None) -> Reply:
    """Send a request and wait for every reached peer's answer, its death,
    or the timeout.  Refused (IPCError) on the IPC thread: the thread that
    would have to receive the reply is the one waiting."""
    ep = _endpoint
    if ep is None or ep.owner != _pid:
        ep = _get()
    return ep.request(name, param, fds, timeout, to)


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
    if type(peer) is not Peer:
        raise IPCError("reply() needs the peer an action was called with")
    b = _good_names.get(name) if type(name) is str else None
    if b is None:
        b = _name_bytes(name, internal=True)
    if type(param) is not bytes or len(param) > PARAM_MAX:
        param = _param_bytes(param)
    if fds:
        return peer._answer(b, OK, param, _fd_list(fds))
    try:
        peer._token.pop()           # (Peer._answer, inlined: the hot path)
    except IndexError:
        return peer._answer(b, OK, param, ())     # says what is wrong
    return peer._endpoint._send_reply(peer, b, OK, param, ())


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


def start(prefix: str | None = None, runtime_dir=None):
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


def _get(path: str | None = None):
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
        attach = path is not None
        if path is None:
            if role != "secondary":
                raise IPCError("this process is not a forkhost secondary; "
                               "forkhost.ipc.start(prefix=...) attaches to a "
                               "primary from elsewhere")
            path = ffi.string(lib.fh_ipc_socket_path()).decode()
        ep = _SecondaryEndpoint(path, attach)
        _endpoint = ep
        return ep


def _join_error(err: int, path: str) -> IPCError:
    if err == errno.ENOTCONN:
        return IPCError(f"no IPC at {path}: the primary has not started it "
                        f"(Primary.ipc()) or is gone")
    if err == errno.ECONNREFUSED:
        why = ffi.string(lib.fh_ipc_refusal()).decode(errors="replace")
        return IPCError(f"the primary refused: {why}")
    if err == errno.ETIMEDOUT:
        return IPCError(f"the primary did not answer HELLO within {CONNECT_TIMEOUT:g}s")
    if err == errno.EPROTO:
        return IPCError("the primary answered HELLO with something else than WELCOME")
    if err == errno.EISCONN:
        return IPCError(f"cannot join {path}: this process takes part in another "
                        f"primary's IPC (ipc.stop() first)")
    return IPCError(f"joining IPC at {path} failed: {os.strerror(err)}")


def _run_action(cb, msg: Message, peer: Peer) -> bool:
    """cb(msg, peer); False when it raised (see _action_failed)."""
    try:
        cb(msg, peer)
        return True
    except BaseException as exc:
        _action_failed(msg.name, exc, peer)
        return False


def _action_failed(name: str, exc: BaseException, peer: Peer) -> None:
    """An action raised: say so, and answer a request it left unanswered
    with ACTION_FAILED and the exception's text."""
    print(f"forkhost ipc: the action {name!r} raised:", file=sys.stderr)
    traceback.print_exception(exc)
    if peer.is_request and not peer.replied:
        text = f"{type(exc).__name__}: {exc}".encode(errors="replace")
        try:
            peer._answer(name.encode(errors="replace"), ACTION_FAILED,
                         text[:PARAM_MAX], [])
        except IPCError:
            pass


def _c_fds(fds):
    return ffi.new("int[]", fds) if fds else ffi.NULL


# -- a secondary: libforkhost's side of the wire, under Python actions -----------

class _SecondaryEndpoint:
    """A secondary's (or an attached process's) side, which is libforkhost's
    (csrc/lib/ipc.c), the same code a native secondary runs: it connects,
    says HELLO, runs the receive thread (a pthread), frames, checks and
    counts; a sync request reads its own reply with the GIL released (the
    leading requester, docs/ipc.md).  Python registers one C action for all
    its names (_fh_ipc_action) and gets async completions through
    _fh_ipc_async; both run on that thread."""

    def __init__(self, path: str, attach: bool):
        self.owner = os.getpid()
        self.path = path
        self.running = False
        self.attached = attach
        self.asyncs: set = set()        # handles C holds for us
        self.extra = dict.fromkeys(_STATS, 0)   # what Python counts itself
        rc = lib.fh_ipc_attach(os.fsencode(path)) if attach else lib.fh_ipc_start()
        if rc < 0:
            raise _join_error(ffi.errno, path)
        self.primary_pid = lib.fh_ipc_peer_pid()
        self.primary_name = ffi.string(lib.fh_ipc_peer_name()).decode(errors="replace")
        self.running = True
        if attach:
            # A process that attached ends like any other: its interpreter
            # must not be torn down under the receive thread, which calls
            # into Python.  Leaving without BYE: it exits, it does not leave.
            atexit.register(self._at_exit)
        self.tls = threading.local()

    def on_ipc_thread(self) -> bool:
        return bool(lib.fh_ipc_on_ipc_thread())

    def _check_to(self, to) -> None:
        if to is not None and to != self.primary_pid:
            raise IPCError(f"a secondary talks to its primary (pid {self.primary_pid}) "
                           f"only, not to pid {to}")

    def send(self, name, param=b"", fds=(), to=None, *, internal=False) -> int:
        b = _name_bytes(name, internal=internal)
        data = _param_bytes(param)
        fd_list = _fd_list(fds)
        self._check_to(to)
        if lib.fh_ipc_send_raw(b, data, len(data), _c_fds(fd_list), len(fd_list)) == 0:
            return 1
        err = ffi.errno
        if err in (errno.ENOTCONN, errno.EAGAIN, errno.EPIPE, errno.ECONNRESET):
            return 0            # gone, or its buffer stayed full: not reached
        raise IPCError(f"sending {name!r} failed: {os.strerror(err)}")

    def _bufs(self):
        try:
            return self.tls.bufs
        except AttributeError:
            record = ffi.new("char[]", RECORD_MAX)
            self.tls.bufs = (record, ffi.buffer(record), ffi.new("int[]", FDS_MAX),
                             ffi.new("int[2]"))
            return self.tls.bufs

    def request(self, name, param=b"", fds=(), timeout=DEFAULT_TIMEOUT, to=None,
                *, internal=False) -> Reply:
        b = _good_names.get(name) if type(name) is str else None
        if b is None:
            b = _name_bytes(name, internal=internal)
        if type(param) is not bytes or len(param) > PARAM_MAX:
            param = _param_bytes(param)
        if fds:
            fds = _fd_list(fds)
            c_fds = ffi.new("int[]", fds)
        else:
            c_fds = ffi.NULL
        if timeout is None or timeout < 0:
            raise IPCError("a request needs a timeout of 0 or more seconds")
        if to is not None:
            self._check_to(to)
        record, view, reply_fds, out = self._bufs()
        n = lib.fh_ipc_request_raw(b, param, len(param), c_fds, len(fds), timeout,
                                   record, reply_fds, out)
        if n > 0:       # (answered: it reached the primary, nb_sent is 1)
            nfds, status, rname = _unpack_reply_view(view)
            m = Message(rname[:rname.find(0)].decode(errors="replace"),
                        view[_HDR_SIZE:n], ffi.unpack(reply_fds, nfds) if nfds else [],
                        self.primary_pid, REPLY, status)
            return Reply(1, 1, [m], [PeerReply(self.primary_pid, self.primary_name,
                                               _PEER_STATUS[out[1]], m)])
        if n == 0:
            if not out[0]:
                return Reply(0, 0, [], [])
            return Reply(1, 0, [], [PeerReply(self.primary_pid, self.primary_name,
                                              _PEER_STATUS[out[1]])])
        err = ffi.errno
        if err == errno.EDEADLK:
            raise _recursion_error(name)
        if err == errno.ENOTCONN:
            return Reply(0, 0, [], [])      # the primary is gone
        raise IPCError(f"request {name!r} failed: {os.strerror(err)}")

    def request_async(self, name, param, fds, timeout, callback, to=None) -> None:
        b = _name_bytes(name)
        data = _param_bytes(param)
        fd_list = _fd_list(fds)
        if timeout is None or timeout < 0:
            raise IPCError("a request needs a timeout of 0 or more seconds")
        self._check_to(to)
        handle = ffi.new_handle((self, callback))
        self.asyncs.add(handle)
        if lib.fh_ipc_request_async_raw(b, data, len(data), _c_fds(fd_list),
                                        len(fd_list), timeout, lib._fh_ipc_async,
                                        handle) == 0:
            return
        err = ffi.errno
        self.asyncs.discard(handle)
        if err != errno.ENOTCONN:
            raise IPCError(f"request {name!r} failed: {os.strerror(err)}")
        # The primary is gone: complete at once, as with nobody to ask.
        self._call_async(callback, Message(b.decode(errors="replace"), data, [],
                                           os.getpid(), REQUEST), Reply(0, 0, [], []))

    def _call_async(self, callback, req: Message, rep: Reply) -> None:
        try:
            callback(req, rep)
        except BaseException:
            self.extra["action_errors"] += 1
            traceback.print_exc()

    def _send_reply(self, peer: Peer, name_b: bytes, status: int, param: bytes,
                    fds) -> bool:
        if lib.fh_ipc_reply_raw(peer._id, status, name_b, param, len(param),
                                _c_fds(fds), len(fds)) == 0:
            return True
        err = ffi.errno
        if err in (errno.ENOTCONN, errno.EAGAIN, errno.EPIPE, errno.ECONNRESET):
            return False
        if err == errno.EALREADY:
            raise IPCError(f"the request {peer.name!r} from pid {peer.pid} "
                           f"was already answered")
        raise IPCError(f"replying to {peer.name!r} failed: {os.strerror(err)}")

    def stats(self) -> dict[str, int]:
        c = ffi.new("struct fh_ipc_stats *")
        lib.fh_ipc_stats(c)
        return {k: getattr(c, k) + self.extra[k] for k in _STATS}

    def close(self) -> None:
        """Leave: BYE, stop and join the receive thread, close."""
        self._leave(True)

    def _leave(self, bye: bool) -> None:
        if not self.running or self.owner != os.getpid():
            return
        if lib.fh_ipc_leave(1 if bye else 0) < 0:
            raise IPCError("IPC cannot be stopped from inside an action or an "
                           "async callback: the IPC thread would wait for itself")
        self.running = False
        if self.attached:
            atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        global _endpoint
        try:
            self._leave(False)
        except IPCError:
            pass
        if _endpoint is self:
            _endpoint = None

    def _forget_in_child(self) -> None:
        """libforkhost's fork handler closed the child's copy; the handles
        of the parent's async requests mean nothing here."""
        self.asyncs = set()


def _message(m, mtype: int) -> Message:
    """A received struct fh_ipc_msg as a Message (its fds become the
    Message's)."""
    n = m.num_fds
    return Message(ffi.string(m.name).decode(errors="replace"),
                   ffi.buffer(m.param, m.len_param)[:],
                   ffi.unpack(m.fds, n) if n else [], m.pid, mtype, m.status)


def _name_ipc_thread() -> None:
    """libforkhost's receive thread appears in Python as a dummy thread:
    give it the IPC thread's name, as the primary's has."""
    t = threading.current_thread()
    if not t.name.startswith("forkhost-ipc"):
        t.name = f"forkhost-ipc[{os.getpid()}]"


@ffi.def_extern()
def _fh_ipc_action(msg, peer):
    """Every Python action of a secondary, called by libforkhost's receive
    thread (with the GIL taken by cffi)."""
    name_b = ffi.string(msg.name)
    rid = lib.fh_ipc_peer_id(peer)
    ep = _endpoint
    cb = _actions.get(name_b)
    if cb is None or not isinstance(ep, _SecondaryEndpoint):
        n = msg.num_fds
        _close_fds(ffi.unpack(msg.fds, n) if n else [])
        if rid:     # unregistered just now: answer as the C side would
            lib.fh_ipc_reply_raw(rid, NO_ACTION, name_b, ffi.NULL, 0, ffi.NULL, 0)
        return 0
    _name_ipc_thread()
    m = _message(msg, REQUEST if rid else MSG)
    m.status = OK
    ok = _run_action(cb, m, Peer(ep, None, rid, m.name, m.pid))
    return 0 if ok else -1          # -1: libforkhost counts action_errors


@ffi.def_extern()
def _fh_ipc_async(req, rep, arg):
    """A secondary's async request is complete (libforkhost's receive
    thread, or the thread that stopped IPC)."""
    handle = ffi.cast("void *", arg)
    ep, callback = ffi.from_handle(handle)
    ep.asyncs.discard(handle)
    if lib.fh_ipc_on_ipc_thread():
        _name_ipc_thread()
    request_msg = Message(ffi.string(req.name).decode(errors="replace"),
                          ffi.buffer(req.param, req.len_param)[:], [], os.getpid(),
                          REQUEST)
    ep._call_async(callback, request_msg, _reply_of(rep))


def _reply_of(rep) -> Reply:
    """A struct fh_ipc_reply as a Reply (the answers' fds become its)."""
    msgs = [_message(rep.msgs + i, REPLY) for i in range(rep.nb_received)]
    peers = []
    for i in range(rep.nb_sent):
        e = rep.peers[i]
        peers.append(PeerReply(e.pid, ffi.string(e.name).decode(errors="replace"),
                               _PEER_STATUS[e.status],
                               msgs[e.msg - rep.msgs] if e.msg != ffi.NULL else None))
    return Reply(rep.nb_sent, rep.nb_received, msgs, peers)


# -- the primary ----------------------------------------------------------------

class _PrimaryEndpoint:
    """The primary's side: the listener, one connection per member, the
    template's exit records, pending requests.

    Its IPC thread runs libforkhost's receive loop (fh_ipc_loop_run, with
    the GIL released): epoll, recvmsg and the record checks for every
    member are C; Python is called (_fh_ipc_upcall) with a valid record,
    a member's EOF, an event on one of the other fds (the listener, the
    exit channel, connections that have not said HELLO), or a tick
    (deferred work, deadlines).  Records go out through fh_ipc_send_fd."""

    def __init__(self, primary, exit_sock: socket.socket | None):
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)   # membership changes
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1
        self.counts = dict.fromkeys(_STATS, 0)
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
        self.template_pid = primary.template_pid
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
                                      param, len(param), _c_fds(fds), len(fds),
                                      0) == 0
        with self.lock:
            if conn.closing:
                return False
            conn.users += 1
        try:
            return lib.fh_ipc_send_fd(self.loop, conn.fd, mtype, rid, status, name_b,
                                      param, len(param), _c_fds(fds), len(fds),
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
        b = _name_bytes(name, internal=internal)
        data = _param_bytes(param)
        fd_list = _fd_list(fds)
        return sum(self._send_rec(c, MSG, 0, 0, b, data, fd_list)
                   for c in self._targets(to))

    def _issue(self, name, param, fds, timeout, to, callback, internal) -> _Pending:
        b = _name_bytes(name, internal=internal)
        data = _param_bytes(param)
        fd_list = _fd_list(fds)
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
                  if not self._send_rec(c, REQUEST, rid, 0, b, data, fd_list)]
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
            raise _recursion_error(name)
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
            _close_fds(fds)
            return 1
        name = name[:name.find(0)]
        if mtype == REQUEST or mtype == MSG:
            cb = _actions.get(name)
            if cb is None:
                self._dispatch(conn, mtype, rid, name, data[_HDR_SIZE:n], fds)
            else:
                # _dispatch, inlined: the hot path of every request.
                text = name.decode(errors="replace")
                peer = Peer(self, conn, rid, text, conn.pid)
                try:
                    cb(Message(text, data[_HDR_SIZE:n], fds, conn.pid, mtype), peer)
                except BaseException as exc:
                    _action_failed(text, exc, peer)
                    self._count("action_errors")
            return 1 if conn.closing else 0
        if mtype == REPLY:
            self._reply_in(conn, rid, status, name, data[_HDR_SIZE:n], fds)
        else:
            self._control(conn, mtype, data[_HDR_SIZE:n], fds)
            if conn.left:
                self._drop(conn)
                return 1
        return 1 if conn.closing else 0

    def _read(self, conn: _Conn) -> bool:
        """A connection that has not said HELLO yet: its first record must
        be a valid HELLO, and anything else is answered at once with REFUSE
        saying what was wrong (docs/ipc.md, "Membership").  False at EOF."""
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
                self._refuse_first(conn, f"IPC version mismatch: the secondary speaks "
                                         f"{version}, the primary speaks {VERSION}")
                return True
        try:
            got = _recv_record(conn.sock)
        except BlockingIOError:
            return True
        except _Malformed as bad:
            self._count("malformed")
            self._refuse_first(conn, f"the first IPC record must be HELLO; this one "
                                     f"is malformed: {bad}")
            return True
        except OSError:
            return False
        if got is None:
            return False
        self._count("received")
        (mtype, rid, status, name), param, fds = got
        _close_fds(fds)
        if mtype != HELLO:
            self._count("malformed")
            self._refuse_first(conn, f"the first IPC record must be HELLO, not "
                                     f"{_TYPE_NAMES[mtype]}")
        elif len(param) != HELLO_BODY.size:
            self._count("malformed")
            self._refuse_first(conn, f"malformed HELLO: its param is {len(param)} "
                                     f"bytes, not {HELLO_BODY.size}")
        else:
            self._control(conn, mtype, param, [])
        return True       # a member: the loop reads it from now on

    def _refuse_first(self, conn: _Conn, why: str) -> None:
        """A connection that has not joined: REFUSE it (one line saying
        why), and forget it."""
        self._unwatch(conn.fd)
        del self.conns[conn.fd]
        self.hello_due.pop(conn.fd, None)
        self._refuse(conn, why)

    def _control(self, conn, mtype, param, fds):
        _close_fds(fds)
        if mtype == HELLO and not conn.joined and len(param) == HELLO_BODY.size:
            _, ppid, _, _ = HELLO_BODY.unpack(param)
            conn.name = _comm(conn.pid)     # (its requests' PeerReply)
            self.hello_due.pop(conn.fd, None)
            self._watch(conn.fd, lib.FH_IPC_WATCH_RECORDS)
            with self.lock:
                conn.ppid = ppid
                conn.joined = True
                self.joined[conn.fd] = conn
                self.cond.notify_all()
            body = WELCOME_BODY.pack(self.pid, self.template_pid, NAME_MAX, PARAM_MAX)
            self._send_rec(conn, WELCOME, 0, 0, b"", body)
        elif mtype == BYE and conn.joined:
            conn.left = True
        else:
            self._count("malformed")

    def _dispatch(self, conn, mtype, rid, name_b, param, fds) -> None:
        cb = _actions.get(name_b)
        name = name_b.decode(errors="replace")
        peer = Peer(self, conn, rid, name, conn.pid)
        if cb is None:
            _close_fds(fds)
            if mtype == REQUEST:
                self._count("no_action")
                peer._answer(name_b, NO_ACTION, b"", [])
            else:
                self._count("notices_ignored" if name_b in _NOTICES else "dropped")
            return
        if not _run_action(cb, Message(name, param, fds, conn.pid, mtype), peer):
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
        elif fd == self.exit_fd:
            self._template_exits()
        else:
            conn = self.conns.get(fd)
            if conn is None:
                return
            if not self._read(conn) or conn.left:
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
        if was_member and not conn.left and conn.ppid != self.template_pid:
            self._exit_notice(conn.pid, 0, 0, 0)

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
                from . import _reclaim
                _reclaim.after_exit(self.primary, pid, code if code >= 0 else 0,
                                    -code if code < 0 else 0)

    def _exit_notice(self, pid: int, code: int, sig: int, flags: int) -> None:
        body = EXIT_BODY.pack(pid, code, sig, flags)
        name_b = EXIT_NOTICE.encode()
        for c in self._targets(None):
            if c.pid != pid:
                self._send_rec(c, MSG, 0, 0, name_b, body)
        cb = _actions.get(name_b)
        if cb is not None:
            if not _run_action(cb, Message(EXIT_NOTICE, body, [], self.pid, MSG),
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
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._unwatch(self.listen_fd)
        self.listener.close()
        if self.exit_sock is not None:
            self._unwatch(self.exit_fd)
            # Kept for a later Primary.ipc() (ipc.stop() then start again);
            # shutdown_primary() closes it for good.
            global _exit_pair
            with _lock:
                if _exit_pair is None and self.owner == os.getpid():
                    _exit_pair = (self.exit_sock, None)
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
    membership ends with the parent), its actions and its primary.
    libforkhost's own fork handler does the same for the C side."""
    global _lock, _actions, _endpoint, _primary, _exit_pair, _pid
    ep, pair = _endpoint, _exit_pair
    _pid = os.getpid()
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
    "Message", "Reply", "PeerReply", "PeerStatus", "Peer", "Member", "IPCError",
    "NAME_MAX", "PARAM_MAX", "FDS_MAX", "DEFAULT_TIMEOUT",
    "OK", "NO_ACTION", "ACTION_FAILED", "EXIT_NOTICE", "SHUTDOWN_NOTICE",
    "RECLAIM_NOTICE",
]
