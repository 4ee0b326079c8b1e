"""A secondary's IPC endpoint (or an attached process's): libforkhost's
(csrc/lib/ipc.c), the same code a native secondary runs, under Python
actions.  C connects, says HELLO, runs the receive thread, frames, checks
and counts; Python registers one C action for all its names
(_fh_ipc_action) and gets async completions through _fh_ipc_async, both on
that thread."""

from __future__ import annotations

import atexit
import errno
import os
import threading
import traceback

from .._native import ffi, lib
from .._errors import IPCError, PrimaryGoneError
from . import _state
from ._messages import PEER_STATUS, Message, Peer, PeerReply, Reply, recursion_error
from ._wire import (CONNECT_TIMEOUT, DEFAULT_TIMEOUT, FDS_MAX, HDR_SIZE, MSG,
                    NO_ACTION, OK, PARAM_MAX, RECORD_MAX, REPLY, REPLY_VIEW, REQUEST,
                    STATS, c_fds, close_fds, fd_list, good_names, name_bytes,
                    param_bytes)

_unpack_reply_view = REPLY_VIEW.unpack_from


def join_error(err: int, path: str) -> IPCError:
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


class _SecondaryEndpoint:
    """A secondary's side: a sync request reads its own reply with the GIL
    released (the leading requester, docs/ipc.md)."""

    def __init__(self, path: str, attach: bool):
        self.owner = os.getpid()
        self.path = path
        self.running = False
        self.attached = attach
        self.asyncs: set = set()        # handles C holds for us
        self.extra = dict.fromkeys(STATS, 0)   # what Python counts itself
        rc = lib.fh_ipc_attach(os.fsencode(path)) if attach else lib.fh_ipc_start()
        if rc < 0:
            raise join_error(ffi.errno, path)
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

    def _primary(self, pid: int | None = None) -> int:
        """The primary's pid (pid: the one a request went to), read again
        after a rejoin; the last one while there is none."""
        if pid is None:
            pid = lib.fh_ipc_peer_pid()
        if pid and pid != self.primary_pid:
            self.primary_pid = pid
            self.primary_name = ffi.string(lib.fh_ipc_peer_name()).decode(
                errors="replace")
        return self.primary_pid

    def _no_primary(self, what: str) -> PrimaryGoneError:
        if lib.fh_ipc_rejoining():
            return PrimaryGoneError(
                f"{what}: no primary: the last one (pid {self.primary_pid}) went "
                f"away without forkhost.shutdown; this process rejoins the next "
                f"one that listens at {self.path}")
        return PrimaryGoneError(f"{what}: no primary: IPC with {self.path} has "
                                f"ended (the primary stopped)")

    def _check_to(self, to) -> None:
        if to is not None and to != self._primary():
            raise IPCError(f"a secondary talks to its primary (pid {self.primary_pid}) "
                           f"only, not to pid {to}")

    def send(self, name, param=b"", fds=(), to=None, *, internal=False) -> int:
        b = name_bytes(name, internal=internal)
        data = param_bytes(param)
        fd_nums = fd_list(fds)
        self._check_to(to)
        if lib.fh_ipc_send_raw(b, data, len(data), c_fds(fd_nums), len(fd_nums)) == 0:
            return 1
        err = ffi.errno
        if err == errno.ENOTCONN:
            raise self._no_primary(f"sending {name!r}")
        if err in (errno.EAGAIN, errno.EPIPE, errno.ECONNRESET):
            return 0            # its buffer stayed full: not reached
        raise IPCError(f"sending {name!r} failed: {os.strerror(err)}")

    def _bufs(self):
        try:
            return self.tls.bufs
        except AttributeError:
            record = ffi.new("char[]", RECORD_MAX)
            self.tls.bufs = (record, ffi.buffer(record), ffi.new("int[]", FDS_MAX),
                             ffi.new("int[3]"))
            return self.tls.bufs

    def request(self, name, param=b"", fds=(), timeout=DEFAULT_TIMEOUT, to=None,
                *, internal=False) -> Reply:
        b = good_names.get(name) if type(name) is str else None
        if b is None:
            b = name_bytes(name, internal=internal)
        if type(param) is not bytes or len(param) > PARAM_MAX:
            param = param_bytes(param)
        if fds:
            fds = fd_list(fds)
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
            pid = out[2]
            if pid != self.primary_pid:
                self._primary(pid)
            m = Message(rname[:rname.find(0)].decode(errors="replace"),
                        view[HDR_SIZE:n], ffi.unpack(reply_fds, nfds) if nfds else [],
                        pid, REPLY, status)
            return Reply(1, 1, [m], [PeerReply(pid, self.primary_name,
                                               PEER_STATUS[out[1]], m)])
        if n == 0:
            if not out[0]:
                if lib.fh_ipc_rejoining():
                    raise self._no_primary(f"request {name!r}")
                return Reply(0, 0, [], [])
            pid = self._primary(out[2])
            return Reply(1, 0, [], [PeerReply(pid, self.primary_name,
                                              PEER_STATUS[out[1]])])
        err = ffi.errno
        if err == errno.EDEADLK:
            raise recursion_error(name)
        if err == errno.ENOTCONN:
            raise self._no_primary(f"request {name!r}")
        raise IPCError(f"request {name!r} failed: {os.strerror(err)}")

    def request_async(self, name, param, fds, timeout, callback, to=None) -> None:
        b = name_bytes(name)
        data = param_bytes(param)
        fd_nums = fd_list(fds)
        if timeout is None or timeout < 0:
            raise IPCError("a request needs a timeout of 0 or more seconds")
        self._check_to(to)
        handle = ffi.new_handle((self, callback))
        self.asyncs.add(handle)
        if lib.fh_ipc_request_async_raw(b, data, len(data), c_fds(fd_nums),
                                        len(fd_nums), timeout, lib._fh_ipc_async,
                                        handle) == 0:
            return
        err = ffi.errno
        self.asyncs.discard(handle)
        if err == errno.ENOTCONN:
            raise self._no_primary(f"request {name!r}")
        raise IPCError(f"request {name!r} failed: {os.strerror(err)}")

    def _call_async(self, callback, req: Message, rep: Reply) -> None:
        try:
            callback(req, rep)
        except BaseException:
            self.extra["action_errors"] += 1
            traceback.print_exc()

    def _send_reply(self, peer: Peer, name_b: bytes, status: int, param: bytes,
                    fds) -> bool:
        if lib.fh_ipc_reply_raw(peer._id, status, name_b, param, len(param),
                                c_fds(fds), len(fds)) == 0:
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
        return {k: getattr(c, k) + self.extra[k] for k in STATS}

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
        try:
            self._leave(False)
        except IPCError:
            pass
        if _state.endpoint is self:
            _state.endpoint = None

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
    ep = _state.endpoint
    cb = _state.actions.get(name_b)
    if cb is None or not isinstance(ep, _SecondaryEndpoint):
        n = msg.num_fds
        close_fds(ffi.unpack(msg.fds, n) if n else [])
        if rid:     # unregistered just now: answer as the C side would
            lib.fh_ipc_reply_raw(rid, NO_ACTION, name_b, ffi.NULL, 0, ffi.NULL, 0)
        return 0
    _name_ipc_thread()
    m = _message(msg, REQUEST if rid else MSG)
    m.status = OK
    ok = _state.run_action(cb, m, Peer(ep, None, rid, m.name, m.pid))
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
                               PEER_STATUS[e.status],
                               msgs[e.msg - rep.msgs] if e.msg != ffi.NULL else None))
    return Reply(rep.nb_sent, rep.nb_received, msgs, peers)
