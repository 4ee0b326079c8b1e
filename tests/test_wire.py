"""Python and the C headers agree on the wire: every constant and layout
forkhost._protocol (from the generated forkhost/_wire.py) and forkhost.ipc
(through the cffi cdef) use is the headers' own, and _classify.classify() gives
the forms and errors docs/cli.md describes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import struct
import subprocess
import sys

import pytest

from forkhost import _classify, ipc, _protocol as protocol
from forkhost._native import ffi, lib
from fhtest import ROOT

# -- the launch protocol (proto.h) ------------------------------------------

CONSTANTS = {
    "MAGIC": "FH_PROTO_MAGIC", "VERSION": "FH_PROTO_VERSION",
    "MAX_MSG": "FH_PROTO_MAX_MSG", "MAX_EXTRA_FDS": "FH_PROTO_MAX_EXTRA_FDS",
    "MAX_FDS": "FH_PROTO_MAX_FDS", "MAX_ERROR": "FH_PROTO_MAX_ERROR",
    "LAUNCH": "FH_MSG_LAUNCH", "INFO": "FH_MSG_INFO", "STARTED": "FH_MSG_STARTED",
    "EXITED": "FH_MSG_EXITED", "ERROR": "FH_MSG_ERROR",
    "INFO_REPLY": "FH_MSG_INFO_REPLY", "STOPPED": "FH_MSG_STOPPED",
    "NOTICE": "FH_MSG_NOTICE",
    "LAUNCH_MODULE": "FH_LAUNCH_MODULE", "LAUNCH_JOBCTL": "FH_LAUNCH_JOBCTL",
    "LAUNCH_NOTICE": "FH_LAUNCH_NOTICE",
    "LAUNCH_FLAGS": "FH_LAUNCH_FLAGS",
}


@pytest.mark.parametrize("py, c", sorted(CONSTANTS.items()))
def test_protocol_constants_are_the_headers(py, c):
    assert getattr(protocol, py) == getattr(lib, c)


def fields(st: struct.Struct, base: int = 0) -> list[tuple[int, int, bool]]:
    """(offset, size, signed) of each field of a "=..." struct format,
    offsets from base ("12x" is padding, "64s" one field)."""
    out, at = [], base
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", st.format.lstrip("=<>!@")):
        n = int(count or 1)
        size = struct.calcsize(f"={count}{code}")
        if code == "s":
            out.append((at, size, False))
        elif code != "x":
            one = size // n
            out.extend((at + i * one, one, code.islower()) for i in range(n))
        at += size
    return out


def c_fields(cstruct: str, skip: tuple[str, ...] = ()) -> list[tuple[int, int, bool]]:
    return [(f.offset, ffi.sizeof(f.type), not f.type.cname.startswith("uint"))
            for name, f in ffi.typeof(cstruct).fields if name not in skip]


# Python's struct, the C struct it is, and the C fields before it (the
# header, for a body).
LAYOUTS = [
    ("HDR", "struct fh_msg_hdr", ()),
    ("LAUNCH_BODY", "struct fh_launch", ("hdr",)),
    ("STARTED_BODY", "struct fh_started", ("hdr",)),
    ("EXITED_BODY", "struct fh_exited", ("hdr",)),
    ("STOPPED_BODY", "struct fh_stopped", ("hdr",)),
    ("ERROR_BODY", "struct fh_error", ("hdr",)),
    ("NOTICE_BODY", "struct fh_notice", ("hdr",)),
]


@pytest.mark.parametrize("py, c, skip", LAYOUTS)
def test_protocol_layouts_are_the_headers(py, c, skip):
    """Size, and each field's offset, size and signedness."""
    st = getattr(protocol, py)
    base = ffi.sizeof("struct fh_msg_hdr") if skip else 0
    assert base + st.size == ffi.sizeof(c)
    assert fields(st, base) == c_fields(c, skip)


def test_a_launch_python_builds_is_what_c_reads():
    req = protocol.Launch(b"m:f", [b"m:f", b"\xff"], [b"A=1"], protocol.LAUNCH_MODULE,
                          0o027, 0b011, 1)
    body = req.encode()
    rec = protocol.header(protocol.LAUNCH, protocol.HDR.size + len(body), req.nfds()) + body
    view = ffi.new("struct fh_launch_view *")
    res = ffi.new("struct fh_req_result *")
    assert lib.fh_request_check(rec, len(rec), 0, req.nfds(), view, res) == lib.FH_MSG_LAUNCH
    l = view.launch
    assert (l.hdr.magic, l.hdr.version, l.hdr.type, l.hdr.len, l.hdr.nfds) == (
        protocol.MAGIC, protocol.VERSION, protocol.LAUNCH, len(rec), 4)
    assert (l.flags, l.umask, l.stdio_mask, l.nextra, l.argc, l.envc) == (
        protocol.LAUNCH_MODULE, 0o027, 0b011, 1, 2, 1)
    assert ffi.string(view.entry) == b"m:f"
    assert ffi.buffer(view.strings, view.strings_len)[:] == req.strings


def test_protocol_imports_no_native_code():
    """The generated module carries the values: `forkhost run` (which
    imports forkhost._protocol) loads no native library."""
    r = subprocess.run([sys.executable, "-c",
                        "import sys, forkhost._protocol\n"
                        "print(sorted(m for m in sys.modules if m.startswith('forkhost')))"],
                       capture_output=True, text=True, cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['forkhost',", "'forkhost._errors',", "'forkhost._protocol',",
                                "'forkhost._wire']"]


# -- the IPC wire (ipc.h, template.h): forkhost/ipc/_wire.py takes these from the cdef

PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include "forkhost/ipc.h"
#include "forkhost/template.h"
#define V(x) printf("%s=%lld\n", #x, (long long)(x))
int main(void)
{
    V(FH_IPC_MAGIC); V(FH_IPC_VERSION); V(FH_IPC_MSG); V(FH_IPC_REQUEST);
    V(FH_IPC_REPLY); V(FH_IPC_HELLO); V(FH_IPC_WELCOME); V(FH_IPC_REFUSE);
    V(FH_IPC_BYE); V(FH_IPC_OK); V(FH_IPC_NO_ACTION); V(FH_IPC_ACTION_FAILED);
    V(FH_IPC_NAME_MAX); V(FH_IPC_PARAM_MAX); V(FH_IPC_FDS_MAX);
    V(FH_IPC_HDR_SIZE); V(FH_IPC_RECORD_MAX); V(FH_IPC_EXIT_STATUS_KNOWN);
    V(FH_IPC_PEER_ANSWERED); V(FH_IPC_PEER_NO_ACTION); V(FH_IPC_PEER_TIMED_OUT);
    V(FH_IPC_PEER_DIED); V(FH_IPC_PEER_NAME_MAX);
    V(sizeof(struct fh_ipc_peer_reply)); V(sizeof(struct fh_ipc_reply));
    V(offsetof(struct fh_ipc_peer_reply, name));
    V(offsetof(struct fh_ipc_peer_reply, msg)); V(offsetof(struct fh_ipc_reply, peers));
    V(sizeof(struct fh_ipc_hdr)); V(sizeof(struct fh_ipc_hello));
    V(sizeof(struct fh_ipc_welcome)); V(sizeof(struct fh_ipc_exit_notice));
    V(sizeof(struct fh_ipc_shutdown_notice)); V(sizeof(struct fh_ipc_primary_notice));
    V(FH_IPC_HELLO_REJOIN);
    V(sizeof(struct fh_template_exit));
    V(offsetof(struct fh_ipc_hdr, nfds)); V(offsetof(struct fh_ipc_hdr, status));
    V(offsetof(struct fh_ipc_hdr, name));
    printf("prefix=%s\nexit=%s\nshutdown=%s\nstop=%s\nworker=%s\nreclaim=%s\n"
           "primary=%s\n",
           FH_IPC_RESERVED_PREFIX, FH_IPC_EXIT_NOTICE, FH_IPC_SHUTDOWN_NOTICE,
           FH_IPC_STOP_NOTICE, FH_IPC_WORKER_NOTICE, FH_IPC_RECLAIM_NOTICE,
           FH_IPC_PRIMARY_NOTICE);
    return 0;
}
"""


@pytest.fixture(scope="module")
def ipc_h(tmp_path_factory):
    """What ipc.h and template.h say, printed by a program built here."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]})")
    d = tmp_path_factory.mktemp("wire")
    (d / "probe.c").write_text(PROBE)
    subprocess.run(cc + ["-std=gnu11", "-D_GNU_SOURCE", "-I", str(ROOT / "csrc" / "include"),
                         "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True,
                         text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_ipc_constants_are_the_headers(ipc_h):
    h = {k: int(v) for k, v in ipc_h.items() if v.lstrip("-").isdigit()}
    assert (ipc.MAGIC, ipc.VERSION) == (h["FH_IPC_MAGIC"], h["FH_IPC_VERSION"])
    assert (ipc.MSG, ipc.REQUEST, ipc.REPLY, ipc.HELLO, ipc.WELCOME, ipc.REFUSE, ipc.BYE) == (
        h["FH_IPC_MSG"], h["FH_IPC_REQUEST"], h["FH_IPC_REPLY"], h["FH_IPC_HELLO"],
        h["FH_IPC_WELCOME"], h["FH_IPC_REFUSE"], h["FH_IPC_BYE"])
    assert (ipc.OK, ipc.NO_ACTION, ipc.ACTION_FAILED) == (
        h["FH_IPC_OK"], h["FH_IPC_NO_ACTION"], h["FH_IPC_ACTION_FAILED"])
    assert (ipc.NAME_MAX, ipc.PARAM_MAX, ipc.FDS_MAX) == (
        h["FH_IPC_NAME_MAX"], h["FH_IPC_PARAM_MAX"], h["FH_IPC_FDS_MAX"])
    assert ipc.EXIT_STATUS_KNOWN == h["FH_IPC_EXIT_STATUS_KNOWN"]
    assert ipc.RECORD_MAX == h["FH_IPC_RECORD_MAX"]
    # what became of a request at each peer (Reply.peers)
    assert {s.name: int(s) for s in ipc.PeerStatus} == {
        "ANSWERED": h["FH_IPC_PEER_ANSWERED"], "NO_ACTION": h["FH_IPC_PEER_NO_ACTION"],
        "TIMED_OUT": h["FH_IPC_PEER_TIMED_OUT"], "DIED": h["FH_IPC_PEER_DIED"]}
    assert lib.FH_IPC_PEER_NAME_MAX == h["FH_IPC_PEER_NAME_MAX"]
    assert (ipc.RESERVED_PREFIX, ipc.EXIT_NOTICE, ipc.SHUTDOWN_NOTICE) == (
        ipc_h["prefix"], ipc_h["exit"], ipc_h["shutdown"])
    assert ipc.NOTICES == (ipc_h["exit"], ipc_h["shutdown"], ipc_h["stop"],
                           ipc_h["worker"], ipc_h["reclaim"], ipc_h["primary"])
    assert ipc.PRIMARY_NOTICE == ipc_h["primary"]
    assert ipc.HELLO_REJOIN == h["FH_IPC_HELLO_REJOIN"]


def test_ipc_layouts_are_the_headers(ipc_h):
    h = {k: int(v) for k, v in ipc_h.items() if v.lstrip("-").isdigit()}
    assert ipc.HDR.size == h["FH_IPC_HDR_SIZE"] == h["sizeof(struct fh_ipc_hdr)"]
    assert ipc.HDR.size == ffi.sizeof("struct fh_ipc_hdr")
    # the cdef's view of a reply (forkhost/ipc/ reads async replies in it)
    assert ffi.sizeof("struct fh_ipc_peer_reply") == h["sizeof(struct fh_ipc_peer_reply)"]
    assert ffi.sizeof("struct fh_ipc_reply") == h["sizeof(struct fh_ipc_reply)"]
    assert ffi.offsetof("struct fh_ipc_peer_reply", "name") == \
        h["offsetof(struct fh_ipc_peer_reply, name)"]
    assert ffi.offsetof("struct fh_ipc_peer_reply", "msg") == \
        h["offsetof(struct fh_ipc_peer_reply, msg)"]
    assert ffi.offsetof("struct fh_ipc_reply", "peers") == \
        h["offsetof(struct fh_ipc_reply, peers)"]
    assert ipc.HELLO_BODY.size == h["sizeof(struct fh_ipc_hello)"]
    assert ipc.WELCOME_BODY.size == h["sizeof(struct fh_ipc_welcome)"]
    assert ipc.EXIT_BODY.size == h["sizeof(struct fh_ipc_exit_notice)"]
    assert ipc.SHUTDOWN_BODY.size == h["sizeof(struct fh_ipc_shutdown_notice)"]
    assert ipc.PRIMARY_BODY.size == h["sizeof(struct fh_ipc_primary_notice)"]
    assert ipc.TEMPLATE_EXIT.size == h["sizeof(struct fh_template_exit)"]
    # the reply view reads nfds, status and name where the header has them
    view = struct.Struct("=12xI12xi64s")
    assert [o for o, _, _ in fields(view)] == [
        h["offsetof(struct fh_ipc_hdr, nfds)"], h["offsetof(struct fh_ipc_hdr, status)"],
        h["offsetof(struct fh_ipc_hdr, name)"]]


# -- _classify.classify(), a table ---------------------------------------------

@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify")
    (d / "s.py").write_text("pass\n")
    (d / "a:b").write_text("pass\n")
    (d / "pkg").mkdir()
    shutil.copy("/bin/true", d / "prog")
    os.mkfifo(d / "fifo")
    fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield str(d), fd
    os.close(fd)


T = _classify.Target
HINT = "; for a module use '-m MODULE' or 'MODULE:FUNCTION'"
CLASSIFY = [
    # entry, -m, what it names (a Target, or (exit code, message; DIR is the cwd))
    ("pkg.mod", True, T(_classify.MODULE, name="pkg.mod")),
    ("mod\n", True, T(_classify.MODULE, name="mod\n")),
    ("1x", True, (127, "invalid module name '1x'")),
    ("it's", True, (127, "invalid module name \"it's\"")),
    ("\udcff", True, (127, "invalid module name '\\udcff'")),
    ("prog", False, T(_classify.NATIVE, path="prog")),
    ("prog:main", False, T(_classify.NATIVE, path="prog", symbol="main")),
    ("prog:", False, T(_classify.NATIVE, path="prog")),
    ("/bin/true", False, T(_classify.NATIVE, path="/bin/true")),
    ("s.py", False, T(_classify.SCRIPT, path="s.py")),
    ("s.py:", False, T(_classify.SCRIPT, path="s.py")),
    ("a:b", False, T(_classify.SCRIPT, path="a:b")),
    ("pkg", False, T(_classify.SCRIPT, path="pkg")),
    ("fifo", False, T(_classify.SCRIPT, path="fifo")),
    ("/dev/null", False, T(_classify.SCRIPT, path="/dev/null")),
    ("mod:fn", False, T(_classify.FUNCTION, name="mod", symbol="fn")),
    ("pkg:fn", False, T(_classify.FUNCTION, name="pkg", symbol="fn")),
    ("pkg.mod:obj.fn", False, T(_classify.FUNCTION, name="pkg.mod", symbol="obj.fn")),
    ("s.py:main", False, (126, "entry 's.py:main': a ':symbol' applies to shared objects "
                               "and executables, and 's.py' is not ELF")),
    ("a:b:c", False, (126, "entry 'a:b:c': a ':symbol' applies to shared objects "
                           "and executables, and 'a:b' is not ELF")),
    ("missing", False, (127, f"entry 'missing' not found: no such file (relative to DIR){HINT}")),
    ("missing.py", False, (127, "entry 'missing.py' not found: no such file (relative to DIR)")),
    ("lib.so.1", False, (127, "entry 'lib.so.1' not found: no such file (relative to DIR)")),
    ("sub/x", False, (127, "entry 'sub/x' not found: no such file (relative to DIR)")),
    ("m:", False, (127, "entry 'm:' not found: no such file (relative to DIR)")),
    ("1m:fn", False, (127, "entry '1m:fn' not found: no such file (relative to DIR)")),
    ("/nonexistent", False, (127, "entry '/nonexistent' not found: no such file")),
    ("say \"it's\"", False, (127, "entry 'say \"it\\'s\"' not found: no such file "
                                  f"(relative to DIR){HINT}")),
    ("t\tab\x01\x7f", False, (127, "entry 't\\tab\\x01\\x7f' not found: no such file "
                                   f"(relative to DIR){HINT}")),
    ("caf\u00e9\udcff", False, (127, "entry 'caf\u00e9\\udcff' not found: no such file "
                                     f"(relative to DIR){HINT}")),
]


@pytest.mark.parametrize("entry, module, want", CLASSIFY)
def test_classify(cwd, entry, module, want):
    d, fd = cwd
    if isinstance(want, T):
        assert _classify.classify(entry, module, fd) == want
        return
    with pytest.raises(_classify.EntryError) as err:
        _classify.classify(entry, module, fd)
    assert (err.value.exit_code, str(err.value)) == (want[0], want[1].replace("DIR", d))


def test_classify_without_a_cwd_fd():
    """None: this process's cwd, which it does not name."""
    with pytest.raises(_classify.EntryError) as err:
        _classify.classify("fh-no-such-entry", False, None)
    assert str(err.value) == ("entry 'fh-no-such-entry' not found: no such file "
                              f"(relative to the client's cwd){HINT}")
    with pytest.raises(ValueError):
        _classify.classify("a\0b", False, None)
