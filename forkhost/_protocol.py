"""The launch protocol: framing, fd passing and limits (Python side).

csrc/include/forkhost/proto.h defines it (docs/protocol.md is the prose);
the constants and layouts here come from it (forkhost/_wire.py, generated
at build time).  One SOCK_SEQPACKET record per message: a 24-byte header,
a type-specific body, and hdr.nfds descriptors as SCM_RIGHTS on the same
record.  Parsing never trusts a count it did not check against what
actually arrived.  A client's request is checked in C only
(fh_request_check, request.h); Python builds requests (Launch.encode)
and reads replies.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import threading

# The constants and layouts, from proto.h: _wire is generated from the
# header when the package is built (build_native.py), so the two cannot
# drift, and importing it loads no native code (`forkhost run` needs none).
from . import _wire
from ._wire import (  # noqa: F401  (the protocol's names, for its users)
    ERROR, EXITED, INFO, INFO_REPLY, LAUNCH, LAUNCH_FLAGS, LAUNCH_INHERIT_FDS,
    FD_TARGET_MAX, LAUNCH_JOBCTL, LAUNCH_MODULE, LAUNCH_NOTICE, MAGIC, MAX_ERROR,
    MAX_EXTRA_FDS, MAX_FDS, MAX_MSG, MAX_RELOAD_TEXT,
    NOTICE, RELOAD, RELOAD_FAILED, RELOADED, STARTED, STOPPED, VERSION, ADOPT, ADOPTED)
from ._errors import ProtocolError

HDR = struct.Struct(_wire.HDR_FORMAT)                    # magic version type len nfds reserved
LAUNCH_BODY = struct.Struct(_wire.LAUNCH_BODY_FORMAT)    # flags umask stdio_mask nextra argc envc strings_len reserved
                                                         # sig_ignored sig_blocked
STARTED_BODY = struct.Struct(_wire.STARTED_BODY_FORMAT)  # pid
EXITED_BODY = struct.Struct(_wire.EXITED_BODY_FORMAT)    # code signal
STOPPED_BODY = struct.Struct(_wire.STOPPED_BODY_FORMAT)  # signal reserved
ERROR_BODY = struct.Struct(_wire.ERROR_BODY_FORMAT)      # exit_code text_len
NOTICE_BODY = struct.Struct(_wire.NOTICE_BODY_FORMAT)    # text_len reserved
RELOADED_BODY = struct.Struct(_wire.RELOADED_BODY_FORMAT)  # pid
RELOAD_FAILED_BODY = struct.Struct(_wire.RELOAD_FAILED_BODY_FORMAT)  # text_len reserved
ADOPTED_BODY = struct.Struct(_wire.ADOPTED_BODY_FORMAT)  # template_pid old_primary_pid
                                                         # arena_base arena_max running reserved
assert HDR.size == _wire.HDR_SIZE and HDR.size + LAUNCH_BODY.size == _wire.LAUNCH_SIZE

_FD_SIZE = array.array("i").itemsize


def header(mtype: int, length: int, nfds: int = 0) -> bytes:
    return HDR.pack(MAGIC, VERSION, mtype, length, nfds, 0)


def send(sock: socket.socket, mtype: int, body: bytes = b"", fds=()) -> None:
    """Send one record; raises OSError like sendmsg."""
    data = header(mtype, HDR.size + len(body), len(fds)) + body
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def fds_received(ancdata) -> list[int]:
    """The fds of SCM_RIGHTS ancillary data from recvmsg (a partial int at
    the end of a truncated control message is dropped, not misread)."""
    fds: list[int] = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(cdata[: len(cdata) - len(cdata) % _FD_SIZE])
            fds.extend(a)
    return fds


_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a connected Unix socket's peer (SO_PEERCRED)."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                         _UCRED.size))


class LaunchMessage:
    """A message of the launch protocol as received: its type, body and fds
    (not an IPC message: forkhost.ipc.Message)."""
    __slots__ = ("type", "body", "fds")

    def __init__(self, type: int, body: bytes, fds: list[int] | None = None):
        self.type, self.body, self.fds = type, body, [] if fds is None else fds

    def __repr__(self) -> str:
        return f"LaunchMessage(type={self.type!r}, body={self.body!r}, fds={self.fds!r})"

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


# One receive buffer per thread, reused: a fresh 192 KiB bytes object per
# message would be an mmap/munmap pair (glibc's threshold is 128 KiB) and
# page faults on every launch.  Per thread, because a client program may
# launch from several threads at once.
_local = threading.local()
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)

def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(MAX_MSG + 1)
    return buf


def recv(sock: socket.socket, flags: int = 0) -> LaunchMessage | None:
    """Receive one record (a client reads the template's replies with it).
    None on orderly EOF.

    Raises ProtocolError for a truncated, oversized or malformed record or a
    wrong version; any fds that came with a bad record are closed first.
    """
    _buf = memoryview(_buffer())[:MAX_MSG + 1]
    n, anc, mflags, _ = sock.recvmsg_into([_buf], _CMSG_SPACE,
                                          flags | socket.MSG_CMSG_CLOEXEC)
    return parse(_buf, n, fds_received(anc), mflags)


def parse(buf, n: int, fds: list[int], mflags: int) -> LaunchMessage | None:
    """Check one record as recvmsg left it: ``n`` bytes (at most
    max + 1 of them in ``buf``), its fds and msg_flags.  Only the framing:
    requests are checked by the template, in C (fh_request_check)."""
    max_msg, max_fds = MAX_MSG, MAX_FDS
    msg = LaunchMessage(0, b"", fds)
    try:
        if n == 0 and not fds:
            return None
        if mflags & socket.MSG_CTRUNC:
            raise ProtocolError(f"too many file descriptors (the limit is {max_fds})")
        if mflags & socket.MSG_TRUNC or n > max_msg:
            raise ProtocolError(f"message too large (the limit is {max_msg} bytes)")
        if n < HDR.size:
            raise ProtocolError(f"truncated message ({n} bytes, header is {HDR.size})")
        magic, version, mtype, length, nfds, _ = HDR.unpack_from(buf)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic 0x{magic:08x}: not a forkhost client")
        if version != VERSION:
            raise ProtocolError(
                f"protocol version mismatch: the client speaks {version}, "
                f"the template speaks {VERSION}")
        if length != n:
            raise ProtocolError(
                f"truncated message: header says {length} bytes, {n} arrived")
        if nfds != len(fds):
            raise ProtocolError(
                f"header says {nfds} file descriptors, {len(fds)} arrived")
        msg.type, msg.body = mtype, bytes(buf[HDR.size:n])
        return msg
    except ProtocolError:
        msg.close_fds()
        raise


# -- LAUNCH ---------------------------------------------------------------

class Launch:
    """A LAUNCH request (no I/O): what a client asks for.  encode() builds
    its body; only C reads one (fh_request_check).  sig_ignored and
    sig_blocked: the signals (bit sig - 1) the secondary starts with
    ignored, and blocked; fd_target: where each extra fd lands (None:
    3, 4, ..., in --fd's order)."""

    def __init__(self, entry: bytes, argv: list[bytes], env: list[bytes],
                 flags: int = 0, umask: int = 0o022, stdio_mask: int = 0b111,
                 nextra: int = 0, sig_ignored: int = 0, sig_blocked: int = 0,
                 fd_target: tuple[int, ...] | None = None):
        self.entry, self.argv, self.env = entry, argv, env
        self.flags, self.umask, self.stdio_mask, self.nextra = flags, umask, stdio_mask, nextra
        self.sig_ignored, self.sig_blocked, self.fd_target = sig_ignored, sig_blocked, fd_target

    def __repr__(self) -> str:
        return f"Launch({self.entry!r}, argv={self.argv!r}, flags={self.flags:#x})"

    @property
    def strings(self) -> bytes:
        """argv and env as the wire packs them (NUL-terminated, back to
        back), for C to index without copying."""
        if self._strings is None:
            self._strings = b"".join(s + b"\0" for s in [*self.argv, *self.env])
        return self._strings

    _strings = None

    @property
    def module(self) -> bool:
        return bool(self.flags & LAUNCH_MODULE)

    def nfds(self) -> int:
        return 1 + bin(self.stdio_mask & 7).count("1") + self.nextra

    def targets(self) -> tuple[int, ...]:
        if self.fd_target is None:
            return tuple(range(3, 3 + self.nextra))
        return tuple(self.fd_target)

    def encode(self) -> bytes:
        strings = b"".join(s + b"\0" for s in [self.entry, *self.argv, *self.env])
        targets = self.targets()
        body = (LAUNCH_BODY.pack(self.flags, self.umask, self.stdio_mask,
                                 self.nextra, len(self.argv), len(self.env),
                                 len(strings), 0, self.sig_ignored,
                                 self.sig_blocked)
                + struct.pack(f"={len(targets)}I", *targets) + strings)
        if HDR.size + len(body) > MAX_MSG:
            raise ProtocolError(
                f"argument list and environment too long ({HDR.size + len(body)} "
                f"bytes; the limit is {MAX_MSG})")
        return body


def encode_started(pid: int) -> bytes:
    return STARTED_BODY.pack(pid)


def encode_exited(code: int, sig: int) -> bytes:
    return EXITED_BODY.pack(code, sig)


def encode_error(exit_code: int, text: str) -> bytes:
    raw = " ".join(text.split("\n")).encode("utf-8", "replace")[:MAX_ERROR]
    return ERROR_BODY.pack(exit_code, len(raw)) + raw


def decode_error(body: bytes) -> tuple[int, str]:
    if len(body) < ERROR_BODY.size:
        raise ProtocolError("truncated ERROR message")
    code, n = ERROR_BODY.unpack_from(body)
    text = body[ERROR_BODY.size:ERROR_BODY.size + n]
    return code, text.decode("utf-8", "replace")


def decode_reloaded(body: bytes) -> int:
    """RELOADED: the new generation's template's pid."""
    (pid,) = decode_struct(RELOADED_BODY, body, "RELOADED")
    if pid <= 0:
        raise ProtocolError(f"malformed RELOADED message (pid {pid})")
    return pid


def _text_body(body: bytes, layout, limit: int, name: str) -> bytes:
    """The text of a {uint32 text_len, uint32 reserved, text} body,
    checked against its length and limit."""
    if len(body) < layout.size:
        raise ProtocolError(f"truncated {name} message")
    n, _ = layout.unpack_from(body)
    if n > limit or len(body) != layout.size + n:
        raise ProtocolError(f"malformed {name} message ({len(body)} bytes, "
                            f"text_len {n})")
    return body[layout.size:]


def decode_reload_failed(body: bytes) -> str:
    """RELOAD_FAILED: the new generation's words (lines: a traceback)."""
    text = _text_body(body, RELOAD_FAILED_BODY, MAX_RELOAD_TEXT, "RELOAD_FAILED")
    return text.decode("utf-8", "replace")


def decode_notice(body: bytes) -> str:
    """NOTICE: the template's words on why it ends the secondary, as one
    line (forkhost-run's keep_notice() makes the same one)."""
    text = _text_body(body, NOTICE_BODY, MAX_ERROR, "NOTICE")
    return text.translate(bytes.maketrans(b"\0\n\r", b"   ")).decode("utf-8", "replace")


def decode_struct(st: struct.Struct, body: bytes, what: str) -> tuple:
    if len(body) != st.size:
        raise ProtocolError(f"malformed {what} message ({len(body)} bytes)")
    return st.unpack(body)
