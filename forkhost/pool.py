"""Pre-forked pool members: unspecialized children of the template that
wait for a launch (Android's zygote keeps a pool of "USAPs" for the same
reason).

Forking the template costs time proportional to its mappings and pages,
and CPython's after-fork work in the child adds more; on small virtual
machines that is a millisecond or two.  A member pays both before any
client asks, so a launch only hands it the request: one sendmsg.  The
template forks replacements when its loop is idle.

A member holds nothing of the template's but its end of a socketpair; it
dies with the template (PR_SET_PDEATHSIG, and EOF on the socketpair).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct

from . import entries, protocol, secondary
from ._native import ffi, lib
from .errors import EXIT_FORKHOST

# Template -> member, on the member's private socketpair only (never on
# template.sock): a Target, then the client's LAUNCH body, with its fds.
ASSIGN = 0x10
_ASSIGN_HDR = struct.Struct("=I")   # length of the encoded target

_KINDS = (entries.NATIVE, entries.SCRIPT, entries.MODULE, entries.FUNCTION)


def encode_assign(target: entries.Target, launch_body: bytes) -> bytes:
    t = b"\0".join([str(_KINDS.index(target.kind)).encode(), os.fsencode(target.path),
                    target.name.encode(), (target.symbol or "").encode(),
                    b"1" if target.symbol is not None else b"0"])
    return _ASSIGN_HDR.pack(len(t)) + t + launch_body


def decode_assign(body: bytes) -> tuple[entries.Target, bytes]:
    (n,) = _ASSIGN_HDR.unpack_from(body)
    kind, path, name, symbol, has_symbol = body[4:4 + n].split(b"\0")
    target = entries.Target(_KINDS[int(kind)], os.fsdecode(path), name.decode(),
                            symbol.decode() if has_symbol == b"1" else None)
    return target, body[4 + n:]


class Member:
    """The template's handle on one pool member."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket):
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock      # the template's end; becomes the report channel

    def alive(self) -> bool:
        r, _, _ = select.select([self.pidfd], [], [], 0)
        return not r

    def assign(self, target: entries.Target, launch_body: bytes, fds,
               client_fd: int) -> bool:
        """Hand over the launch and, last of the fds, the client's
        connection, on which the secondary sends EXITED itself."""
        try:
            protocol.send(self.sock, ASSIGN, encode_assign(target, launch_body),
                          [*fds, client_fd])
            return True
        except OSError:
            return False      # it died since the caller checked


def fork_member(template) -> Member:
    """Fork one member; returns the template's handle on it."""
    mine, theirs = socket.socketpair(socket.AF_UNIX,
                                     socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    # A member may be handed a launch (and a client its pid) before it ran
    # a line: fork_child keeps signals blocked until prepare_signals() has
    # dropped the template's handlers (_wait_and_become restores the mask).

    def member(mask):
        # Keeps `theirs` and 0, 1, 2 (the template's /dev/null and stderr).
        mine.close()
        return _wait_and_become(template, theirs, mask)

    try:
        pid = secondary.fork_child(template, member)
    except BaseException:
        mine.close()
        theirs.close()
        raise
    theirs.close()
    return Member(pid, os.pidfd_open(pid), mine)


def _wait_and_become(template, sock: socket.socket, mask) -> int:
    # What does not depend on the launch is done now, while waiting: the
    # template's signal handlers go (an idle member killed by a stray
    # signal is simply replaced), dispositions are a fresh program's.
    secondary.prepare_signals()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # they act as defaults now
    lib.fh_set_pdeathsig(signal.SIGKILL)
    if os.getppid() != template.pid:
        return 0                        # the template died while we forked
    fd = sock.fileno()
    os.closerange(3, fd)
    os.closerange(fd + 1, 1 << 20)
    area, length = template.title_area
    title = [f"forkhost pool [{template.prefix}]".encode()]
    keep = [ffi.new("char[]", s) for s in title]
    lib.fh_set_title(ffi.cast("char *", area), length, keep + [ffi.NULL])
    secondary.rehearse()
    msg = protocol.recv(sock, internal=True)   # blocks until a launch (or EOF)
    if msg is None or msg.type != ASSIGN:
        return 0
    target, body = decode_assign(msg.body)
    fds, client_fd = msg.fds[:-1], msg.fds[-1]
    req = protocol.Launch.decode(body, len(fds))
    secondary.become(req, target, fds, template.title_area, sock.detach(), client_fd)
    return EXIT_FORKHOST   # not reached: become() always exits
