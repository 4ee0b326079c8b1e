"""Who is connected to a unix socket path, asked of the kernel (sock_diag,
as ``ss -xp`` does): the processes holding the other end of each
connection accepted on that path.  ``forkhost ps`` finds a prefix's IPC
members this way, without asking the primary (which may be busy, or the
one being diagnosed)."""

from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_ROOT, NLM_F_MATCH = 0x1, 0x100, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER = 0x1, 0x4
UNIX_DIAG_NAME, UNIX_DIAG_PEER = 0, 2
TCP_ESTABLISHED = 1

_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIIIII")     # family protocol pad states ino show cookie[2]
_MSG = struct.Struct("=BBBBIII")      # family type state pad ino cookie[2]
_RTA = struct.Struct("=HH")


class Unavailable(OSError):
    """The kernel does not answer sock_diag for unix sockets."""


def _dump() -> list[tuple[int, int, str, int]]:
    """(inode, state, name, peer inode) of every unix socket of this
    network namespace."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                          NETLINK_SOCK_DIAG)
    except OSError as err:
        raise Unavailable(err.errno, f"sock_diag: {err.strerror}") from None
    out = []
    with s:
        s.settimeout(5.0)
        body = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                         UDIAG_SHOW_NAME | UDIAG_SHOW_PEER, 0xFFFFFFFF, 0xFFFFFFFF)
        s.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                           NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH, 1, 0) + body)
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _, _, _ = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size or off + length > len(data):
                    return out
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, off + _NLMSG.size)
                    code = -code or errno.EPROTO
                    raise Unavailable(code, f"sock_diag: {os.strerror(code)}")
                if mtype == SOCK_DIAG_BY_FAMILY:
                    out.append(_one(data[off + _NLMSG.size: off + length]))
                off += (length + 3) & ~3
            if not data:
                return out


def _one(msg: bytes) -> tuple[int, int, str, int]:
    _, _, state, _, ino, _, _ = _MSG.unpack_from(msg, 0)
    name, peer = "", 0
    off = _MSG.size
    while off + _RTA.size <= len(msg):
        rlen, rtype = _RTA.unpack_from(msg, off)
        if rlen < _RTA.size:
            break
        payload = msg[off + _RTA.size: off + rlen]
        if rtype == UNIX_DIAG_NAME:
            name = payload.split(b"\0", 1)[0].decode(errors="surrogateescape") \
                if payload[:1] != b"\0" else "@" + payload[1:].decode(errors="replace")
        elif rtype == UNIX_DIAG_PEER and len(payload) >= 4:
            (peer,) = struct.unpack_from("=I", payload)
        off += (rlen + 3) & ~3
    return ino, state, name, peer


def _holders(inodes: set[int]) -> dict[int, list[int]]:
    """Which processes (that we may look at) hold each socket inode."""
    want = {f"socket:[{i}]": i for i in inodes}
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                ino = want.get(os.readlink(f"/proc/{entry.name}/fd/{fd}"))
            except OSError:
                continue
            if ino is not None and int(entry.name) not in found.setdefault(ino, []):
                found[ino].append(int(entry.name))
    return found


def connected_pids(path: str, exclude: set[int] = frozenset()) -> list[int]:
    """The processes at the other end of connections accepted on the
    listening socket bound at path (excluding those in exclude: the
    listener's own process); Unavailable when the kernel cannot say."""
    peers = {peer for ino, state, name, peer in _dump()
             if name == path and state == TCP_ESTABLISHED and peer}
    pids: list[int] = []
    for holders in _holders(peers).values():
        pids.extend(p for p in holders if p not in exclude and p not in pids)
    return sorted(pids)
