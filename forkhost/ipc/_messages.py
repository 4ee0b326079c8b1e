"""What the IPC API hands out: messages, replies, what became of a request
at each peer, members, and the peer an action answers through."""

from __future__ import annotations

import enum
import os

from .._native import lib
from .._errors import IPCError
from .._record import Record
from ._wire import (ACTION_FAILED, EXIT_BODY, EXIT_STATUS_KNOWN, MSG, NO_ACTION, OK,
                    PRIMARY_BODY)


class Message:
    """A received message, request or reply, from ``pid``.  ``fds`` belong
    to whoever got the message: close them (``close()``) or keep them.
    ``status`` (replies): OK, NO_ACTION or ACTION_FAILED."""

    __slots__ = ("name", "param", "fds", "pid", "type", "status")

    def __init__(self, name: str, param: bytes = b"", fds: list[int] | None = None,
                 pid: int = 0, type: int = MSG, status: int = OK):
        self.name, self.param, self.fds = name, param, [] if fds is None else fds
        self.pid, self.type, self.status = pid, type, status

    def __repr__(self) -> str:
        return (f"Message(name={self.name!r}, param={self.param!r}, fds={self.fds!r}, "
                f"pid={self.pid!r}, type={self.type!r}, status={self.status!r})")

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


PEER_STATUS = {int(s): s for s in PeerStatus}


class PeerReply:
    """One peer a request reached: its pid, its name (``/proc/PID/comm``
    when it joined), what became of the request there (a PeerStatus), and
    its answer (``ANSWERED`` and ``NO_ACTION``; the same Message as in
    ``msgs``; else None)."""

    __slots__ = ("pid", "name", "status", "msg")

    def __init__(self, pid: int, name: str, status: PeerStatus, msg: Message | None = None):
        self.pid, self.name, self.status, self.msg = pid, name, status, msg

    def __repr__(self) -> str:
        return (f"PeerReply(pid={self.pid!r}, name={self.name!r}, status={self.status!r}, "
                f"msg={self.msg!r})")


class Reply:
    """What a request got (DPDK's rte_mp_reply): nb_sent peers reached,
    nb_received answered (NO_ACTION and ACTION_FAILED answers included),
    their answers in arrival order (msgs), and one PeerReply per peer
    reached, in the order the request went to them (peers)."""

    __slots__ = ("nb_sent", "nb_received", "msgs", "peers")

    def __init__(self, nb_sent: int, nb_received: int, msgs: list[Message],
                 peers: list[PeerReply] | None = None):
        self.nb_sent, self.nb_received, self.msgs = nb_sent, nb_received, msgs
        self.peers = [] if peers is None else peers

    def __repr__(self) -> str:
        return (f"Reply(nb_sent={self.nb_sent!r}, nb_received={self.nb_received!r}, "
                f"msgs={self.msgs!r}, peers={self.peers!r})")

    def close(self) -> None:
        for m in self.msgs:
            m.close()

    def __enter__(self) -> "Reply":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Member(Record):
    """A process that joined the primary's IPC: pid, ppid and secondary
    (its parent is the template; otherwise it attached from outside)."""
    _fields = ("pid", "ppid", "secondary")


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


def parse_exit_notice(msg: Message) -> tuple[int, int | None]:
    """A ``forkhost.exit`` notice -> (pid, returncode): N when it exited
    with N, -S when signal S killed it, None when nobody knows."""
    pid, code, sig, flags = EXIT_BODY.unpack(msg.param)
    if not flags & EXIT_STATUS_KNOWN:
        return pid, None
    return pid, (-sig if sig else code)


def parse_primary_notice(msg: Message) -> tuple[int, int]:
    """A ``forkhost.primary`` notice -> (primary_pid, template_pid): the
    primary this member has rejoined, and its template."""
    return PRIMARY_BODY.unpack(msg.param)


def recursion_error(name) -> IPCError:
    return IPCError(
        f"a synchronous request ({name!r}) from inside an IPC action or "
        f"callback would deadlock: the IPC thread is the one that must "
        f"receive the reply.  Use request_async(), or make the request "
        f"from another thread")
