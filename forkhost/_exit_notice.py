"""The template's exit-notice channel: for each secondary it reaps, the
template (csrc/lib/template.c) sends the primary one datagram, a struct
fh_template_exit (forkhost/template.h: pid, wait status), which the
primary's IPC thread turns into ``forkhost.exit`` (forkhost/ipc/_primary.py).
Small on purpose: whoever only reads exits needs nothing else of IPC."""

from __future__ import annotations

import socket

from ._native import ffi

EXIT_SIZE = ffi.sizeof("struct fh_template_exit")


def channel() -> tuple[socket.socket, socket.socket]:
    """(the primary's end, the template's end): a datagram pair.  The
    template never blocks on the primary: its end is nonblocking and a full
    buffer drops the record."""
    mine, theirs = socket.socketpair(socket.AF_UNIX,
                                     socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    theirs.setblocking(False)
    return mine, theirs


def read_exits(sock: socket.socket):
    """The (pid, wait status) records waiting on the primary's end (which
    is nonblocking), until none is left."""
    rec = ffi.new("struct fh_template_exit *")
    while True:
        try:
            data = sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(data) != EXIT_SIZE:
            continue        # (a datagram socket has no EOF to read)
        ffi.buffer(rec)[:] = data
        yield rec.pid, rec.status
