"""The IPC wire format as Python sees it: constants and record layouts
taken from csrc/include/forkhost/ipc.h through the cffi cdef (no number is
written here), the checks a sender makes before anything goes out, and the
encoding of a record.  Records are parsed by C only (fh_ipc_record_check(),
csrc/lib/ipc_wire.c), on both ends; docs/ipc.md describes the format."""

from __future__ import annotations

import os
import struct

from .._native import ffi, lib
from .._errors import IPCError

MAGIC = lib.FH_IPC_MAGIC
VERSION = lib.FH_IPC_VERSION
MSG, REQUEST, REPLY = lib.FH_IPC_MSG, lib.FH_IPC_REQUEST, lib.FH_IPC_REPLY
HELLO, WELCOME = lib.FH_IPC_HELLO, lib.FH_IPC_WELCOME
REFUSE, BYE = lib.FH_IPC_REFUSE, lib.FH_IPC_BYE
# REPLY status
OK, NO_ACTION, ACTION_FAILED = lib.FH_IPC_OK, lib.FH_IPC_NO_ACTION, lib.FH_IPC_ACTION_FAILED

# The limits, with ipc.h's reasons: a name is an identifier (DPDK's
# RTE_MP_MAX_NAME_LEN, NUL included); a param holds a path or a short JSON
# object; the fds keep the control buffer fixed and small.
NAME_MAX = lib.FH_IPC_NAME_MAX
PARAM_MAX = lib.FH_IPC_PARAM_MAX
FDS_MAX = lib.FH_IPC_FDS_MAX
RECORD_MAX = lib.FH_IPC_RECORD_MAX
EXIT_STATUS_KNOWN = lib.FH_IPC_EXIT_STATUS_KNOWN
HELLO_REJOIN = lib.FH_IPC_HELLO_REJOIN      # a HELLO's flags: rejoining
PEER_NAME_MAX = lib.FH_IPC_PEER_NAME_MAX

# Timeouts, in seconds (ipc.h says why each is what it is).
DEFAULT_TIMEOUT = lib.FH_IPC_DEFAULT_TIMEOUT_MS / 1000
SEND_TIMEOUT = lib.FH_IPC_SEND_TIMEOUT_MS / 1000
CONNECT_TIMEOUT = lib.FH_IPC_CONNECT_TIMEOUT_MS / 1000
# An accepted connection that says nothing is closed after this.
HELLO_TIMEOUT = lib.FH_IPC_HELLO_TIMEOUT_MS / 1000
# Each member is an fd and a little memory in the primary.
MAX_MEMBERS = lib.FH_IPC_MAX_MEMBERS

# struct codes of the C types the IPC structs are made of
_CODES = {"int8_t": "b", "uint8_t": "B", "int16_t": "h", "uint16_t": "H",
          "int32_t": "i", "uint32_t": "I", "int64_t": "q", "uint64_t": "Q",
          "int": "i", "unsigned int": "I", "char": "c"}


def layout(cname: str) -> struct.Struct:
    """A struct.Struct with the layout of C's ``cname`` as the compiler laid
    it out (field order, sizes, padding), read from the cdef."""
    ctype = ffi.typeof(cname)
    fmt, at = "=", 0
    for _, f in ctype.fields:
        if f.offset > at:
            fmt += f"{f.offset - at}x"
        t = f.type
        if t.kind == "array":
            fmt += f"{t.length}s" if t.item.cname == "char" else \
                _CODES[t.item.cname] * t.length
        else:
            fmt += _CODES[t.cname]
        at = f.offset + ffi.sizeof(t)
    if ffi.sizeof(ctype) > at:
        fmt += f"{ffi.sizeof(ctype) - at}x"
    s = struct.Struct(fmt)
    assert s.size == ffi.sizeof(ctype), cname
    return s


# What ipc.stats() counts: struct fh_ipc_stats's fields.
STATS = tuple(name for name, _ in ffi.typeof("struct fh_ipc_stats").fields)

# magic version type len nfds id param_len status name
HDR = layout("struct fh_ipc_hdr")
HELLO_BODY = layout("struct fh_ipc_hello")           # pid ppid flags reserved
WELCOME_BODY = layout("struct fh_ipc_welcome")       # primary_pid template_pid name_max param_max
EXIT_BODY = layout("struct fh_ipc_exit_notice")      # pid code signal flags
SHUTDOWN_BODY = layout("struct fh_ipc_shutdown_notice")   # primary_pid grace_ms
PRIMARY_BODY = layout("struct fh_ipc_primary_notice")     # primary_pid template_pid
HDR_SIZE = HDR.size
# nfds, status and name of a header: what a requester reads of a reply
_f = dict(ffi.typeof("struct fh_ipc_hdr").fields)
REPLY_VIEW = struct.Struct(
    f"={_f['nfds'].offset}xI{_f['status'].offset - _f['nfds'].offset - 4}xi"
    f"{NAME_MAX}s")
assert (REPLY_VIEW.size == HDR.size
        and _f["name"].offset == HDR.size - NAME_MAX), "the name ends the header"
del _f


def _notice_names() -> tuple[str, ...]:
    """The notices an action may be registered under (ipc.h)."""
    names = []
    while (n := lib.fh_ipc_notice_name(len(names))) != ffi.NULL:
        names.append(ffi.string(n).decode())
    return tuple(names)


NOTICES = _notice_names()
(EXIT_NOTICE, SHUTDOWN_NOTICE, STOP_NOTICE, WORKER_NOTICE, RECLAIM_NOTICE,
 PRIMARY_NOTICE) = NOTICES
NOTICES_B = frozenset(n.encode() for n in NOTICES)
RESERVED_PREFIX = ffi.string(lib.FH_IPC_RESERVED_PREFIX).decode()
RESERVED_B = RESERVED_PREFIX.encode()


def encode(mtype: int, name_b: bytes, param: bytes, nfds: int = 0,
           rid: int = 0, status: int = 0) -> bytes:
    """One record as bytes (what tests and raw peers send)."""
    return HDR.pack(MAGIC, VERSION, mtype, HDR.size + len(param), nfds, rid,
                    len(param), status, name_b) + param


def type_name(mtype: int) -> str:
    n = lib.fh_ipc_type_name(mtype)
    return ffi.string(n).decode() if n != ffi.NULL else f"0x{mtype:02x}"


# -- what a sender checks ------------------------------------------------------

# Names that passed the checks, so a hot loop pays for them once.  Bounded:
# names are identifiers, few and reused.
good_names: dict = {}


def name_bytes(name, *, internal: bool = False) -> bytes:
    try:
        b = good_names.get(name)
    except TypeError:           # unhashable: check_name says what is wrong
        b = None
    if b is not None:
        return b
    b = check_name(name, internal)
    # Only names anyone may send: a reserved one passes for internal use
    # (replies, notices) and must still be refused to everyone else.
    if (len(good_names) < 1024 and isinstance(name, (str, bytes))
            and not b.startswith(RESERVED_B)):
        good_names[name] = b
    return b


def check_name(name, internal: bool) -> bytes:
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
    if not internal and b.startswith(RESERVED_B):
        raise IPCError(f"IPC names starting with {RESERVED_PREFIX!r} are reserved "
                       f"for forkhost's own notices; {b.decode(errors='replace')!r} "
                       f"cannot be sent")
    return b


def param_bytes(param) -> bytes:
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


def fd_list(fds) -> list[int]:
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


def c_fds(fds):
    return ffi.new("int[]", fds) if fds else ffi.NULL


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- the one parser (C's) ------------------------------------------------------

FROM_PRIMARY = lib.FH_IPC_FROM_PRIMARY
FROM_SECONDARY = lib.FH_IPC_FROM_SECONDARY
FIRST_RECORD = lib.FH_IPC_FIRST_RECORD


def record_verdict(data: bytes, nfds: int = 0, mflags: int = 0,
                   side: int = FROM_SECONDARY) -> tuple[int, str | None]:
    """What fh_ipc_record_check() says of a record received at ``side``:
    (its type, None) when valid, (-1, the words it is refused with)."""
    v = ffi.new("struct fh_ipc_verdict *")
    t = lib.fh_ipc_record_check(data, len(data), mflags, nfds, side, v)
    if t >= 0:
        return t, None
    out = ffi.new("char[]", lib.FH_IPC_MESSAGE_MAX + 1)
    n = lib.fh_ipc_record_message(v, out, lib.FH_IPC_MESSAGE_MAX + 1)
    return -1, ffi.string(out, n).decode(errors="replace")
