"""Pre-forked pool members: unspecialized children of the template that
take launches straight from template.sock (Android's zygote keeps a pool of
"USAPs" for the same reason).

Forking the template costs time proportional to its mappings and pages,
and CPython's after-fork work in the child adds more; on small virtual
machines that is a millisecond or two.  A member pays both before any
client asks.  Idle members wait on the template's listening socket
themselves (one is woken per connection), so a launch does not pass
through the template at all: the member accepts, checks, receives and
classifies the request in C (csrc/lib/member.c), tells the template and
the client, and a native entry runs without a line of Python.  A Python
entry comes back here with all that done, and runs.

The template hears of it on the member's socketpair, off the client's path
(TOOK, BUSY or HANDOFF; see member.h), and forks replacements when its
loop is idle.  While it has idle members, the template does not accept on
the socket itself; when it has none, it accepts and forks on demand.

A member holds nothing of the template's but the listening socket and its
end of the socketpair; it dies with the template (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import sys
import time

from . import protocol, secondary
from ._native import ffi, lib
from .errors import ProtocolError

TOOK, BUSY, HANDOFF = lib.FH_CTL_TOOK, lib.FH_CTL_BUSY, lib.FH_CTL_HANDOFF
HANDOFF_HDR = struct.Struct("=IIII")   # struct fh_handoff
(HANDOFF_MESSAGE, HANDOFF_PENDING, HANDOFF_EXPIRED,
 HANDOFF_PEER) = (lib.FH_HANDOFF_MESSAGE, lib.FH_HANDOFF_PENDING,
                  lib.FH_HANDOFF_EXPIRED, lib.FH_HANDOFF_PEER)

IDLE, BUSY_STATE = "idle", "busy"


class Member:
    """The template's handle on one member that has not taken a launch."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket):
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock      # the template's end; becomes the report channel
        self.state = IDLE


class _MemberMemory:
    """The cffi objects every member needs, made once in the template:
    members inherit them at the same addresses, copy-on-write.  Made in
    each fresh member instead, they cost it about 0.3 ms of cold code and
    copied pages, and 192 KiB zeroed."""

    def __init__(self, prefix: str):
        self.title = ffi.new("char[]", f"forkhost pool [{prefix}]".encode())
        self.argv = ffi.new("char *[]", [self.title, ffi.NULL])
        self.m = ffi.new("struct fh_member *")
        self.buf = ffi.new("char[]", protocol.MAX_MSG + 1)


_memory: _MemberMemory | None = None


def fork_member(template) -> Member:
    """Fork one member; returns the template's handle on it."""
    global _memory
    if _memory is None:
        _memory = _MemberMemory(template.prefix)
    mine, theirs = socket.socketpair(socket.AF_UNIX,
                                     socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    # fork_child keeps signals blocked until prepare_signals() has dropped
    # the template's handlers (_serve restores the mask).

    def member(mask):
        # Keeps `theirs`, the listening socket and 0, 1, 2 (the template's
        # /dev/null and stderr).
        mine.close()
        return _serve(template, theirs, mask)

    try:
        pid = secondary.fork_child(template, member)
    except BaseException:
        mine.close()
        theirs.close()
        raise
    theirs.close()
    return Member(pid, os.pidfd_open(pid), mine)


def _serve(template, sock: socket.socket, mask) -> int:
    # What does not depend on the launch is done now, while waiting: the
    # template's signal handlers go (an idle member killed by a stray
    # signal is simply replaced), dispositions are a fresh program's.
    secondary.prepare_signals()
    secondary.set_signal_mask(mask)     # they act as defaults now
    lib.fh_set_pdeathsig(signal.SIGKILL)
    if os.getppid() != template.pid:
        return 0                        # the template died while we forked
    ctl = sock.detach()
    listen_fd = template.listener_fd
    for lo, hi in _ranges_without(sorted({ctl, listen_fd, template.news}), 3):
        os.closerange(lo, hi)
    area, length = template.title_area
    lib.fh_set_title(ffi.cast("char *", area), length, _memory.argv)
    m = _memory.m
    m.listen_fd, m.ctl_fd, m.news_fd = listen_fd, ctl, template.news
    m.uid = template.uid
    m.timeout_ms = int(template.request_timeout * 1000)
    m.title_area, m.title_len = ffi.cast("char *", area), length
    m.buf = _memory.buf
    m.hot = template.hot
    rc = lib.fh_member_init(m)
    if rc < 0:
        raise OSError(-rc, f"pool member: {os.strerror(-rc)}")
    # Both only move work off a launch's path: with a client already
    # waiting they would put it on that path instead.  The rehearsal is
    # for a template whose hot set is not learned yet: copying the set
    # covers what it would copy (without it, single launches measured the
    # same, and each member used 0.6 ms less CPU).
    if not _client_waiting(listen_fd) and not _hot_set_learned(template):
        secondary.rehearse()
    if not _client_waiting(listen_fd):
        lib.fh_member_prefault()  # what recent launches made private (member.h)
    while True:
        rc = lib.fh_member_next(m)     # a native launch never comes back
        if rc == lib.FH_MEMBER_PYTHON:
            # This process is the secondary now (TOOK and STARTED are
            # sent, fh_child_setup is done).
            req, target = secondary.taken_launch(m.run)
            secondary.finish(req, target, ffi.addressof(m.run, "spec"), set_up=True)
        elif rc == lib.FH_MEMBER_HANDOFF:
            lib.fh_member_handoff(m)
        elif rc != -errno.EINTR:
            # accept failed (EMFILE and friends): say so, let it pass.
            print(f"forkhost pool member: accept: {os.strerror(-rc)}",
                  file=sys.stderr)
            time.sleep(0.01)


def _client_waiting(listen_fd: int) -> bool:
    """A connection waits on the template's socket (for us or a sibling)."""
    p = select.poll()
    p.register(listen_fd, select.POLLIN)
    return bool(p.poll(0))


def _hot_set_learned(template) -> bool:
    return template.hot != ffi.NULL and lib.fh_hotset_pages(template.hot) > 0


def _ranges_without(keep: list[int], start: int):
    """[lo, hi) ranges from start to the fd limit that skip the fds in keep."""
    lo = start
    for fd in keep:
        if fd >= lo:
            yield lo, fd
            lo = fd + 1
    yield lo, 1 << 20


def read_ctl(member: Member) -> protocol.Message | None | bool:
    """One record from a member that has not taken a launch: a Message,
    None at EOF, False when nothing is there."""
    try:
        return protocol.recv(member.sock, socket.MSG_DONTWAIT, internal=True)
    except BlockingIOError:
        return False
    except (ProtocolError, OSError):
        return None
