"""The rules a LAUNCH record is checked by (docs/protocol.md), as a plain
model: the verdict and the message fh_request_check() must give.

What the Python parser did before C became the only implementation,
messages included.  tests/test_request.py holds C to it on generated
records; the reliability suite's LAUNCH fuzzer (stress/fuzz_launch.py)
uses it to tell which mutated records are malformed and what the
template must answer them.
"""

from __future__ import annotations

import socket
import struct

from forkhost import _protocol as protocol

HDR, BODY = protocol.HDR, protocol.LAUNCH_BODY
MSG_TRUNC, MSG_CTRUNC = int(socket.MSG_TRUNC), int(socket.MSG_CTRUNC)


def expected(rec: bytes, n: int, mflags: int, nfds: int):
    """The rules, in their order (docs/protocol.md), with their messages."""
    if n == 0 and nfds == 0:
        return ("eof",)
    if mflags & MSG_CTRUNC:
        return ("error", f"too many file descriptors (the limit is {protocol.MAX_FDS})")
    if mflags & MSG_TRUNC or n > protocol.MAX_MSG:
        return ("error", f"message too large (the limit is {protocol.MAX_MSG} bytes)")
    if n < HDR.size:
        return ("error", f"truncated message ({n} bytes, header is {HDR.size})")
    magic, version, mtype, length, hdr_nfds, _ = HDR.unpack_from(rec)
    if magic != protocol.MAGIC:
        return ("error", f"bad magic 0x{magic:08x}: not a forkhost client")
    if version != protocol.VERSION:
        return ("error", f"protocol version mismatch: the client speaks {version}, "
                         f"the template speaks {protocol.VERSION}")
    if length != n:
        return ("error", f"truncated message: header says {length} bytes, {n} arrived")
    if hdr_nfds != nfds:
        return ("error", f"header says {hdr_nfds} file descriptors, {nfds} arrived")
    if mtype == protocol.INFO:
        return ("info",)
    if mtype == protocol.ADOPT:
        return ("adopt",)
    if mtype == protocol.RELOAD:
        return ("reload",)
    if mtype != protocol.LAUNCH:
        return ("error", f"unexpected message type 0x{mtype:02x}")
    body = rec[HDR.size:n]
    if len(body) < BODY.size:
        return ("error", "truncated LAUNCH request")
    flags, umask, mask, nextra, argc, envc, slen, _, _, _ = BODY.unpack_from(body)
    if nextra > protocol.MAX_EXTRA_FDS:
        return ("error", f"too many extra fds ({nextra}; the limit is "
                         f"{protocol.MAX_EXTRA_FDS})")
    if len(body) < BODY.size + 4 * nextra:
        return ("error", "truncated LAUNCH request")
    targets = struct.unpack_from(f"={nextra}I", body, BODY.size)
    strings = body[BODY.size + 4 * nextra:]
    if slen != len(strings):
        return ("error", f"truncated LAUNCH request: {slen} bytes of strings "
                         f"announced, {len(strings)} present")
    if flags & ~protocol.LAUNCH_FLAGS or mask & ~7 or umask & ~0o777:
        return ("error", "LAUNCH request has unknown flags or bits set")
    if argc < 1:
        return ("error", "LAUNCH request has an empty argv")
    parts = strings.split(b"\0")
    if len(parts) != 1 + argc + envc + 1 or parts[-1] != b"":
        return ("error", f"malformed LAUNCH request: expected {1 + argc + envc} "
                         f"NUL-terminated strings, found {len(parts) - 1}")
    entry = parts[0]
    if not entry:
        return ("error", "LAUNCH request has an empty entry")
    for i, t in enumerate(targets):
        if t < (3 if i == 0 else targets[i - 1] + 1) or t > protocol.FD_TARGET_MAX:
            return ("error", f"LAUNCH request puts extra fd {i} at {t}: "
                             f"the numbers must increase from 3 up")
    want = 1 + bin(mask).count("1") + nextra
    if want != nfds:
        return ("error", f"LAUNCH request announces {want} file descriptors, "
                         f"{nfds} arrived")
    return ("launch", entry, strings[len(entry) + 1:],
            (flags, umask, mask, nextra, argc, envc))
