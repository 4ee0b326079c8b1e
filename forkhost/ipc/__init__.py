"""IPC between the primary and its secondaries: named actions, messages,
requests, replies, broadcasts and fds (DPDK's rte_mp, and a little more).

Why it exists: shared memory carries bulk data, but processes also need to
tell each other things (a secondary asks the primary for a resource, the
primary tells everyone it is stopping, an fd changes hands).  docs/ipc.md
is the design; csrc/include/forkhost/ipc.h the wire format, which the
modules of this package take from there:

- ``_wire``: constants, layouts, the checks a sender makes (records are
  parsed by C only, csrc/lib/ipc_wire.c);
- ``_messages``: what the API hands out (Message, Reply, Peer, ...);
- ``_state``: this process's endpoint, actions and primary;
- ``_member``: a secondary's endpoint (libforkhost's, csrc/lib/ipc.c);
- ``_primary``: the primary's endpoint (on libforkhost's receive loop,
  csrc/lib/ipc_primary.c);
- ``forkhost._exit_notice``: the template's exit records.

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

import errno
import os
from collections.abc import Callable

from .. import _runtime as runtime
from .._native import ffi, lib
from .._errors import IPCError, PrimaryGoneError
from . import _state, _wire
from ._member import _SecondaryEndpoint, join_error
from ._messages import (Member, Message, Peer, PeerReply, PeerStatus, Reply,
                        parse_exit_notice, parse_primary_notice)
from ._primary import (_PrimaryEndpoint, after_template_fork, prepare,
                       shutdown_primary, start_primary)
# (Re-exported: the wire's names, as this module always offered them.)
from ._wire import (ACTION_FAILED, BYE, CONNECT_TIMEOUT, DEFAULT_TIMEOUT,
                    EXIT_BODY, EXIT_NOTICE, EXIT_STATUS_KNOWN, FDS_MAX, HDR,
                    HELLO, HELLO_BODY, HELLO_REJOIN, HELLO_TIMEOUT, MAGIC,
                    MAX_MEMBERS, MSG, NAME_MAX, NO_ACTION, NOTICES, NOTICES_B, OK,
                    PARAM_MAX, PRIMARY_BODY, PRIMARY_NOTICE, RECLAIM_NOTICE,
                    RECORD_MAX, REFUSE, REPLY, REQUEST, RESERVED_PREFIX,
                    SEND_TIMEOUT, SHUTDOWN_BODY, SHUTDOWN_NOTICE, STATS,
                    STOP_NOTICE, VERSION, WELCOME, WELCOME_BODY, WORKER_NOTICE)
from ._wire import encode as _encode

TEMPLATE_EXIT = _wire.layout("struct fh_template_exit")   # pid, wait status


def __getattr__(name: str):
    """``ipc._endpoint``: this process's endpoint, as it is now (it lives in
    _state, which a fork and start/stop replace)."""
    if name == "_endpoint":
        return _state.endpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str, callback: Callable) -> None:
    """Run ``callback(msg, peer)`` on the IPC thread for every message or
    request named ``name``.  In a secondary this joins the primary's IPC;
    in the primary it may be called before ``Primary.ipc()``."""
    b = _wire.name_bytes(name, internal=True)
    if b.startswith(RESERVED_PREFIX.encode()) and b not in NOTICES_B:
        raise IPCError(f"{name!r}: only {', '.join(map(repr, NOTICES))} may be "
                       f"registered in the reserved {RESERVED_PREFIX!r} namespace")
    if not callable(callback):
        raise IPCError("the callback of an IPC action must be callable")
    with _state.lock:
        if b in _state.actions:
            raise IPCError(f"an action is already registered for {name!r}")
        _state.actions[b] = callback
    # Mirrored in libforkhost, whose receive thread runs a secondary's
    # actions (in the primary the C list is simply unused).  In a secondary
    # this joins, after the action is in place: nothing the primary sends
    # once we are a member can miss it.
    if lib.fh_ipc_register(b, lib._fh_ipc_action) < 0:
        err = ffi.errno
        if err != errno.EEXIST:
            with _state.lock:
                _state.actions.pop(b, None)
            raise join_error(err, ffi.string(lib.fh_ipc_socket_path()).decode())
    if _role() == "secondary":
        _get()


def unregister(name: str) -> None:
    b = _wire.name_bytes(name, internal=True)
    with _state.lock:
        if _state.actions.pop(b, None) is None:
            raise IPCError(f"no action is registered for {name!r}")
    lib.fh_ipc_unregister(b)


def send(name: str, param=b"", fds=(), to: int | None = None) -> int:
    """A message: secondary -> primary; primary -> every member, or to the
    member with pid ``to``.  Returns how many peers it reached."""
    ep = _state.endpoint
    if ep is None or ep.owner != _state.pid:
        ep = _get()
    return ep.send(name, param, fds, to)


def request(name: str, param=b"", fds=(), timeout: float = DEFAULT_TIMEOUT,
            to: int | None = None) -> Reply:
    """Send a request and wait for every reached peer's answer, its death,
    or the timeout.  Refused (IPCError) on the IPC thread: the thread that
    would have to receive the reply is the one waiting."""
    ep = _state.endpoint
    if ep is None or ep.owner != _state.pid:
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
    b = _wire.good_names.get(name) if type(name) is str else None
    if b is None:
        b = _wire.name_bytes(name, internal=True)
    if type(param) is not bytes or len(param) > PARAM_MAX:
        param = _wire.param_bytes(param)
    if fds:
        return peer._answer(b, OK, param, _wire.fd_list(fds))
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
    ep = _state.endpoint
    if ep is None or ep.owner != os.getpid():
        return dict.fromkeys(STATS, 0)
    return ep.stats()


def start(prefix: str | None = None, runtime_dir=None):
    """Start this process's IPC now: in a secondary, join; in the primary,
    the same as ``Primary.ipc()``; in any other process of the same user,
    attach to the primary of ``prefix``."""
    if _role() == "primary":
        return start_primary(_state.primary)
    if prefix is not None or runtime_dir is not None:
        path = str(runtime.paths(prefix, runtime_dir).ipc_socket)
        return _get(path)
    return _get()


def stop() -> None:
    """Leave (secondary: BYE, close) or stop (primary, as Primary.stop()
    does, without waiting for anyone)."""
    with _state.lock:
        ep, _state.endpoint = _state.endpoint, None
    if ep is not None and ep.owner == os.getpid():
        ep.close()


def started() -> bool:
    ep = _state.endpoint
    return ep is not None and ep.owner == os.getpid() and ep.running


def rejoining() -> bool:
    """True while this member has no primary and waits for one: its
    primary went away without ``forkhost.shutdown``.  Its IPC thread joins
    the next primary that listens at the same socket, with the actions it
    has, and that primary sends it ``forkhost.primary``; meanwhile calls
    that need the primary raise ``PrimaryGoneError`` (docs/ipc.md, "When the
    primary goes away")."""
    ep = _state.endpoint
    return (isinstance(ep, _SecondaryEndpoint) and ep.owner == os.getpid()
            and bool(lib.fh_ipc_rejoining()))


def _role() -> str:
    primary = _state.primary
    if primary is not None and primary.pid == os.getpid():
        return "primary"
    if ffi.string(lib.fh_ipc_socket_path()) and lib.fh_ipc_primary_pid() != os.getpid():
        return "secondary"
    return "other"


def _get(path: str | None = None):
    ep = _state.endpoint
    if ep is not None and ep.owner == os.getpid():
        return ep
    with _state.lock:
        ep = _state.endpoint
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
        _state.endpoint = ep
        return ep


__all__ = [
    "register", "unregister", "send", "request", "request_async", "reply",
    "members", "stats", "start", "stop", "started", "rejoining", "parse_exit_notice",
    "parse_primary_notice", "Message", "Reply", "PeerReply", "PeerStatus", "Peer",
    "Member", "IPCError", "PrimaryGoneError",
    "NAME_MAX", "PARAM_MAX", "FDS_MAX", "DEFAULT_TIMEOUT",
    "OK", "NO_ACTION", "ACTION_FAILED", "EXIT_NOTICE", "SHUTDOWN_NOTICE",
    "RECLAIM_NOTICE", "PRIMARY_NOTICE",
]
