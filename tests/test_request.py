"""The one parser and the one classifier of requests (csrc/lib/request.c,
forkhost/request.h), from Python: fh_request_check() and
fh_request_message() on hypothesis-generated records, fh_entry_decide()
(_classify.classify()) on generated entries over real files.

The expected verdicts are computed here, by a plain model of the rules
(docs/protocol.md, docs/cli.md): what the Python parser and classifier
did before C became the only implementation, messages included, so a
change of behaviour shows up as a failing example."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import stat
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from forkhost import _classify, _protocol as protocol
from forkhost._native import ffi, lib
from request_model import expected

HDR, BODY = protocol.HDR, protocol.LAUNCH_BODY
MSG_TRUNC, MSG_CTRUNC = int(socket.MSG_TRUNC), int(socket.MSG_CTRUNC)


# -- records ------------------------------------------------------------------

def c_check(rec: bytes, n: int, mflags: int, nfds: int):
    """C's verdict: ("eof",), ("info",), ("adopt",), ("launch", entry, strings, fields)
    or ("error", message)."""
    buf = ffi.from_buffer(rec)
    view = ffi.new("struct fh_launch_view *")
    res = ffi.new("struct fh_req_result *")
    rc = lib.fh_request_check(buf, n, mflags, nfds, view, res)
    if rc < 0:
        out = ffi.new("char[]", protocol.MAX_ERROR + 1)
        k = lib.fh_request_message(res, out, len(out))
        text = ffi.buffer(out, k)[:]
        assert 0 < k <= protocol.MAX_ERROR and b"\n" not in text
        return ("error", text.decode("utf-8"))
    if rc == 0:
        return ("eof",)
    if rc == protocol.INFO:
        return ("info",)
    if rc == protocol.ADOPT:
        return ("adopt",)
    if rc == protocol.RELOAD:
        return ("reload",)
    assert rc == protocol.LAUNCH
    base = int(ffi.cast("uintptr_t", buf))
    l = view.launch
    assert int(ffi.cast("uintptr_t", view.entry)) == base + HDR.size + BODY.size + 4 * l.nextra
    assert int(ffi.cast("uintptr_t", view.strings)) + view.strings_len == base + n
    assert list(view.fd_target[0:l.nextra]) == list(
        struct.unpack_from(f"={l.nextra}I", rec, HDR.size + BODY.size))
    return ("launch", ffi.string(view.entry), ffi.buffer(view.strings, view.strings_len)[:],
            (l.flags, l.umask, l.stdio_mask, l.nextra, l.argc, l.envc))


_text = st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"x"))
_env_var = st.one_of(
    st.tuples(_text, _text).map(lambda kv: b"K" + kv[0] + b"=" + kv[1]),
    _text,                                     # often without '=': passed as exec does
    st.binary(min_size=38, max_size=60).map(lambda b: b.replace(b"\0", b"'")))
_u32 = st.one_of(st.integers(0, 8), st.just(2**32 - 1), st.integers(0, 2**32 - 1))


@st.composite
def launch_records(draw):
    """A LAUNCH record and how it arrived: (rec, n, mflags, nfds).  Mostly
    valid, with lies in its counts, a flipped byte, a cut, or a receive
    that went wrong."""
    entry = draw(st.one_of(st.just(b"mod:fn"), _text))
    argv = draw(st.lists(_text, min_size=0, max_size=4))
    env = draw(st.lists(_env_var, max_size=4))
    flags = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 0x10, 0x80000000]))
    mask = draw(st.sampled_from([0, 1, 5, 7, 8]))
    umask = draw(st.sampled_from([0o022, 0o777, 0o1000]))
    nextra = draw(st.sampled_from([0, 1, 32, 33, 2**32 - 1]))
    strings = b"".join(s + b"\0" for s in [entry, *argv, *env])
    if draw(st.integers(0, 4)) == 0:           # no final NUL, or a byte past it
        strings = strings[:-1] if draw(st.booleans()) else strings + b"x"
    argc = draw(st.one_of(st.just(len(argv)), _u32))
    envc = draw(st.one_of(st.just(len(env)), _u32))
    slen = draw(st.one_of(st.just(len(strings)), _u32))
    k = min(nextra, 34)                        # as many numbers as said, mostly
    if draw(st.integers(0, 7)) == 0:
        k = draw(st.integers(0, 34))
    first = draw(st.sampled_from([3, 3, 3, 0, 2, 63, 2**31 - k, 2**32 - 1]))
    targets = [(first + i) % 2**32 for i in range(k)]
    if k > 1 and draw(st.integers(0, 5)) == 0:  # out of order or repeated
        i = draw(st.integers(1, k - 1))
        targets[i] = targets[i - 1] - draw(st.integers(0, 1))
    sig = draw(st.sampled_from([0, 1, 2**64 - 1]))
    body = (BODY.pack(flags, umask, mask, nextra, argc, envc, slen, 0, sig, sig)
            + struct.pack(f"={k}I", *(t % 2**32 for t in targets)) + strings)
    wire_nfds = (1 + bin(mask & 7).count("1") + nextra) % 2**32
    nfds = draw(st.one_of(st.just(wire_nfds), st.integers(0, protocol.MAX_FDS)))
    hdr_nfds = draw(st.one_of(st.just(nfds), st.integers(0, 40)))
    mtype = draw(st.sampled_from([protocol.LAUNCH] * 4 + [protocol.INFO, protocol.RELOAD,
                                                          protocol.EXITED,
                                                          0, 0x1234]))
    magic = draw(st.sampled_from([protocol.MAGIC] * 8 + [0xDEADBEEF, 0]))
    version = draw(st.sampled_from([protocol.VERSION] * 8 + [1, 0xFFFF]))
    rec = bytearray(HDR.pack(magic, version, mtype, HDR.size + len(body), hdr_nfds, 0)
                    + body)
    if draw(st.booleans()):                    # flip one byte
        i = draw(st.integers(0, len(rec) - 1))
        rec[i] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):                    # cut it short
        rec = rec[:draw(st.integers(0, len(rec)))]
    n = len(rec)
    if draw(st.integers(0, 15)) == 0:          # recvmsg said more than it kept
        n = draw(st.sampled_from([protocol.MAX_MSG + 1, 10**6]))
        rec += bytes(max(0, min(n, protocol.MAX_MSG + 1) - len(rec)))
    mflags = draw(st.sampled_from([0] * 12 + [MSG_TRUNC, MSG_CTRUNC,
                                              MSG_TRUNC | MSG_CTRUNC]))
    return bytes(rec), n, mflags, nfds


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.heavy
@given(launch_records())
@example((b"", 0, 0, 0))
@example((b"", 0, 0, 1))
def test_request_check_gives_the_expected_verdict(case):
    """Every record gets the verdict and the message the rules give, and
    a LAUNCH's view is the record's fields and strings."""
    rec, n, mflags, nfds = case
    assert c_check(rec, n, mflags, nfds) == expected(rec, n, mflags, nfds), case


def record_of(req: protocol.Launch, nfds: int | None = None) -> tuple[bytes, int]:
    body = req.encode()
    nfds = req.nfds() if nfds is None else nfds
    return HDR.pack(protocol.MAGIC, protocol.VERSION, protocol.LAUNCH,
                    HDR.size + len(body), nfds, 0) + body, nfds


def test_what_the_client_encodes_is_what_c_reads():
    req = protocol.Launch(b"fhfix:exit_with", [b"fhfix:exit_with", b"3"],
                          [b"A=1", b"B=x=y"], protocol.LAUNCH_JOBCTL, 0o027, 0b101, 2)
    rec, nfds = record_of(req)
    assert nfds == 5
    assert c_check(rec, len(rec), 0, 5) == (
        "launch", req.entry, req.strings,
        (protocol.LAUNCH_JOBCTL, 0o027, 0b101, 2, 2, 2))
    assert c_check(rec, len(rec), 0, 4) == ("error", "header says 5 file descriptors, "
                                                     "4 arrived")
    rec, _ = record_of(req, 4)
    assert c_check(rec, len(rec), 0, 4) == ("error", "LAUNCH request announces 5 file "
                                                     "descriptors, 4 arrived")


def test_the_largest_request_is_valid_and_one_byte_more_is_not():
    base = len(protocol.Launch(b"m", [b"a"], [b"K="]).encode()) + HDR.size
    req = protocol.Launch(b"m", [b"a"], [b"K=" + b"v" * (protocol.MAX_MSG - base)])
    rec, nfds = record_of(req)
    assert len(rec) == protocol.MAX_MSG
    assert c_check(rec, len(rec), 0, nfds)[0] == "launch"
    with pytest.raises(protocol.ProtocolError, match="too long"):
        protocol.Launch(b"m", [b"a"], [b"K=" + b"v" * (protocol.MAX_MSG - base + 1)]).encode()


# -- entries ------------------------------------------------------------------

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
HINT = "; for a module use '-m MODULE' or 'MODULE:FUNCTION'"


def expected_target(entry: str, module: bool, cwd_fd: int):
    """docs/cli.md's entry forms, decided with os.stat and a 4-byte read:
    an _classify.Target, or (exit code, message).  re's '$' matches before a
    final newline, and so "mod\\n" is a module name (as it always was)."""
    def ftype(path):
        try:
            return stat.S_IFMT(os.stat(path, dir_fd=cwd_fd).st_mode)
        except (OSError, ValueError):
            return 0

    def is_elf(path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=cwd_fd)
        except OSError:
            return False
        try:
            return os.pread(fd, 4, 0) == b"\x7fELF"
        finally:
            os.close(fd)

    if module:
        if not _DOTTED.match(entry):
            return (127, f"invalid module name {entry!r}")
        return _classify.Target(_classify.MODULE, name=entry)
    kind = ftype(entry)
    if kind not in (0, stat.S_IFREG):
        return _classify.Target(_classify.SCRIPT, path=entry)
    path, symbol = entry, None
    if kind == 0:
        head, sep, tail = entry.rpartition(":")
        if sep and head and ftype(head) == stat.S_IFREG:
            path, symbol = head, tail or None
        elif sep and head and tail and _DOTTED.match(head) and _DOTTED.match(tail):
            return _classify.Target(_classify.FUNCTION, name=head, symbol=tail)
        else:
            try:
                where = os.readlink(f"/proc/self/fd/{cwd_fd}")
            except OSError:
                where = "the client's cwd"
            where = "" if entry.startswith("/") else f" (relative to {where})"
            looks_like_path = ("/" in entry or entry.endswith((".py", ".so"))
                               or re.search(r"\.so[.:]", entry))
            hint = "" if looks_like_path or sep else HINT
            return (127, f"entry {entry!r} not found: no such file{where}{hint}")
    if is_elf(path):
        return _classify.Target(_classify.NATIVE, path=path, symbol=symbol)
    if symbol is not None:
        return (126, f"entry {entry!r}: a ':symbol' applies to shared objects and "
                     f"executables, and {path!r} is not ELF")
    if re.fullmatch(r".+\.so(\.[0-9]+)*", path.rpartition("/")[2], re.DOTALL):
        return (126, f"entry {entry!r}: named as a shared object, and not ELF")
    return _classify.Target(_classify.SCRIPT, path=path)


def decided(entry: str, module: bool, cwd_fd: int):
    """_classify.classify(), with an error as (exit code, its text on the
    wire: one line of at most MAX_ERROR bytes, as encode_error sends it)."""
    try:
        return _classify.classify(entry, module, cwd_fd)
    except _classify.EntryError as err:
        return (err.exit_code, str(err))


def on_the_wire(want):
    if isinstance(want, tuple):
        code, text = want
        raw = " ".join(text.split("\n")).encode("utf-8", "replace")[:protocol.MAX_ERROR]
        return code, raw.decode("utf-8", "replace")
    return want


@pytest.fixture(scope="module")
def entry_dir(tmp_path_factory):
    """Files every form can name: Python source, an ELF file, a directory,
    a FIFO, names with ':' and quotes in them, symlinks, a file that is
    almost ELF."""
    d = tmp_path_factory.mktemp("entries")
    for name in ["s.py", "a:b", "x.so", "lib.so.1", "it's.py"]:
        (d / name).write_text("pass\n")
    (d / "short").write_bytes(b"\x7fEL")
    (d / "empty").write_bytes(b"")
    (d / "pkg").mkdir()
    (d / "pkg:x").mkdir()
    shutil.copy("/bin/true", d / "prog")
    shutil.copy("/bin/true", d / "elf.mod")   # also a dotted name
    (d / "link").symlink_to("prog")
    (d / "dangling").symlink_to("missing")
    os.mkfifo(d / "fifo")
    os.mkdir(os.fsencode(d) + b"/bad\xff")
    fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield d, fd
    os.close(fd)


_NAMES = ["s.py", "a", "a:b", "b", "pkg", "pkg:x", "prog", "link", "dangling", "missing",
          "mod", "elf.mod", "mod.sub", "fn", "f.g", "1x", "_", "x-y", "a..b", "a.", ".a", "é",
          "mod\n", "\n", "", "./s.py", "/bin/true", "/nonexistent", "x.so", "lib.so.1",
          "y.so.2", "short", "empty", "fifo", "it's.py", "it's", 'say "hi"', "t\tab\x01\\",
          "\udcff", "bad\udcff", "\x85\xa0\u2028\ufeff", "\U0001f600", "/dev/null", "/", "."]


def _assigned(entry: str) -> bool:
    """No unassigned code point: request.c takes those as printable, where
    repr() escapes them (by the Unicode tables of this Python)."""
    return not any(unicodedata.category(c) == "Cn" for c in entry)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(_NAMES),
                          st.text(max_size=4).filter(lambda s: "\0" not in s)),
                min_size=1, max_size=3), st.booleans())
@pytest.mark.heavy
def test_classify_decides_every_form_as_the_rules_say(entry_dir, parts, module):
    """Whatever the entry, classify() (fh_entry_decide) gives the form, or
    the exit code and the message, the rules give."""
    _, fd = entry_dir
    entry = ":".join(parts)
    if not _assigned(entry):
        return
    assert decided(entry, module, fd) == on_the_wire(expected_target(entry, module, fd)), \
        (entry, module)


def test_classify_in_a_directory_with_an_odd_name(entry_dir):
    """The cwd goes into a message as it is, on one line: an undecodable
    byte as '?', as the ERROR record carries it."""
    d, _ = entry_dir
    fd = os.open(os.fsencode(d) + b"/bad\xff", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        code, text = decided("missing", False, fd)
        assert code == 127
        assert text == f"entry 'missing' not found: no such file (relative to {d}/bad?){HINT}"
        assert on_the_wire(expected_target("missing", False, fd)) == (code, text)
    finally:
        os.close(fd)


@pytest.mark.parametrize("entry, module, kind", [
    ("mod:fn", False, _classify.FUNCTION), ("pkg.mod:obj.fn", False, _classify.FUNCTION),
    ("s.py", False, _classify.SCRIPT), ("a:b", False, _classify.SCRIPT),
    ("pkg.mod", True, _classify.MODULE), ("prog", False, _classify.NATIVE),
    ("prog:main", False, _classify.NATIVE), ("link:", False, _classify.NATIVE),
    ("pkg", False, _classify.SCRIPT), ("pkg:x", False, _classify.SCRIPT),
    ("fifo", False, _classify.SCRIPT),
])
def test_classify_decides_every_valid_form(entry_dir, entry, module, kind):
    """The forms a launch names in practice are decided, by the one
    classifier the template and the members share."""
    _, fd = entry_dir
    target = _classify.classify(entry, module, fd)
    assert target.kind == kind
    assert target == expected_target(entry, module, fd)


def test_the_longest_messages_are_cut_to_max_error(entry_dir):
    _, fd = entry_dir
    code, text = decided("x" * 3000, False, fd)
    assert code == 127 and len(text.encode()) == protocol.MAX_ERROR
    assert on_the_wire(expected_target("x" * 3000, False, fd)) == (code, text)
