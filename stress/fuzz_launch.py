"""The LAUNCH mutation fuzzer, twice:

(a) the C parser's own fuzz target (csrc/tests/fuzz_request.c), built with
    libforkhost under AddressSanitizer and UndefinedBehaviorSanitizer the
    way `build_native.py ctest` builds it, run for a count of inputs;

(b) a wire-level mutator against a live template: valid LAUNCH records
    built with forkhost._protocol, mutated (bits, bytes, insertions, cuts,
    32-bit fields set to edge values, lengths re-fixed, the fds sent off
    by some), each sent on its own connection to template.sock.  The
    launch rules' model (tests/request_model.py) says which mutants are
    still valid; those are not sent.  Every other one must get one ERROR
    record, exit code 125, with the model's message, then the end of the
    connection.  Every VALID_EVERY inputs one unmutated request is sent
    (entry stressfix:mark with a fresh token): INFO's `launched` must grow
    by exactly their number and the marks file must hold exactly their
    tokens, so no process ever ran a mutated request.  The template's fds
    (settled) and RSS are compared before and after, and sampled along.
"""

from __future__ import annotations

import array
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

from fhtest import raw_connect
from forkhost import _protocol as protocol
from request_model import MSG_CTRUNC, expected

from .common import (RSS_SLACK, Result, info, mib, runtime, sample, serves,
                     template_settled)

HDR, BODY = protocol.HDR, protocol.LAUNCH_BODY
VALID_EVERY = 500
WINDOW = 16                   # connections in flight at once
EDGES = [0, 1, 2, 3, 7, 8, 32, 33, 36, 37, 56, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
         protocol.MAX_MSG, protocol.MAX_MSG + 1]
EXAMPLES = 5                  # failures kept per kind


# -- (a) the C target ------------------------------------------------------------

def run_c_target(count: int, seed: int) -> tuple[str, dict]:
    import build_native as bn          # the checkout's: the one way C is built
    with tempfile.TemporaryDirectory(prefix="fhs-fuzz-") as d:
        t0 = time.monotonic()
        with open(os.devnull, "w") as quiet:
            old = sys.stdout
            sys.stdout = quiet         # build_native prints each command
            try:
                bn.build_test_library(d, bn.SANITIZE)
                exe = bn.build_fuzzer(d, bn.SANITIZE, libfuzzer=False)
            finally:
                sys.stdout = old
        built = time.monotonic() - t0
        env = dict(os.environ, FORKHOST_FUZZ_SEED=str(seed),
                   ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        r = subprocess.run([str(exe), str(count)], env=env, cwd=d, capture_output=True,
                           text=True, timeout=None)
    assert r.returncode == 0, f"fuzz_request exited {r.returncode}: {r.stdout[-800:]}" \
                              f"{r.stderr[-1500:]}"
    line = [x for x in r.stdout.splitlines() if " inputs in " in x]
    assert line and line[0].startswith(f"fuzz_request: {count} inputs"), r.stdout
    secs = float(line[0].split(" inputs in ")[1].split()[0])
    return line[0].split(";")[0], {"inputs": count, "seconds": secs, "build": built}


# -- (b) the wire-level mutator ------------------------------------------------------

class Mutator:
    def __init__(self, seed: int, mark_env: bytes, dir_fd: int, null_fd: int):
        self.rng = random.Random(seed)
        self.mark_env = mark_env
        self.dir_fd, self.null_fd = dir_fd, null_fd

    def seed_record(self, token: bytes) -> tuple[bytearray, int]:
        rng = self.rng
        mask = rng.choice([0, 1, 5, 7])
        nextra = rng.choice([0, 0, 1, 3])
        flags = rng.choice([0, 0, protocol.LAUNCH_JOBCTL])
        req = protocol.Launch(b"stressfix:mark", [b"stressfix:mark", token],
                              [self.mark_env, b"A=1", b"PATH=/usr/bin:/bin"],
                              flags, 0o022, mask, nextra)
        body = req.encode()
        rec = HDR.pack(protocol.MAGIC, protocol.VERSION, protocol.LAUNCH,
                       HDR.size + len(body), req.nfds(), 0) + body
        return bytearray(rec), req.nfds()

    def mutate(self, rec: bytearray, nfds: int) -> tuple[bytearray, int]:
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(9)
            if op == 0 and rec:                               # flip a bit
                rec[rng.randrange(len(rec))] ^= 1 << rng.randrange(8)
            elif op == 1 and rec:                             # a byte
                rec[rng.randrange(len(rec))] = rng.choice([0, rng.randrange(256)])
            elif op == 2:                                     # insert bytes
                i = rng.randrange(len(rec) + 1)
                rec[i:i] = bytes(rng.choice(b"\0=:./a\xff\n")
                                 for _ in range(rng.randint(1, 8)))
            elif op == 3 and rec:                             # delete bytes
                i = rng.randrange(len(rec))
                del rec[i:i + rng.randint(1, 8)]
            elif op == 4:                                     # cut (never to nothing)
                rec[:] = rec[:rng.randint(1, max(1, len(rec)))]
            elif op == 5 and len(rec) >= 4:                   # a 32-bit field
                i = 4 * rng.randrange(min(14, len(rec) // 4))
                rec[i:i + 4] = rng.choice(EDGES).to_bytes(4, sys.byteorder)
            elif op == 6:                                     # the fds sent
                nfds = rng.choice([0, nfds - 1, nfds + 1, rng.randint(0, 40)])
                nfds = max(0, nfds)
            elif op == 7:                                     # big
                rec += bytes([rng.choice(b"a\0")]) * rng.choice(
                    [100, 4096, protocol.MAX_MSG - len(rec) + rng.randint(-2, 2)])
            else:                                             # a 16-bit header field
                if len(rec) >= 8:
                    i = rng.choice([4, 6])
                    rec[i:i + 2] = rng.choice([0, 1, 2, 0x81, 0xFFFF]).to_bytes(
                        2, sys.byteorder)
        if len(rec) >= 12 and rng.randrange(2):               # re-fix the length
            rec[8:12] = len(rec).to_bytes(4, sys.byteorder)
        if len(rec) >= 56 and rng.randrange(2):               # and strings_len
            rec[48:52] = (len(rec) - 56).to_bytes(4, sys.byteorder)
        return rec, nfds

    def fds(self, n: int) -> list[int]:
        return ([self.dir_fd] + [self.null_fd] * (n - 1))[:n] if n else []


def _send(path: str, rec: bytes, fds: list[int]) -> socket.socket:
    s = raw_connect(path)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds \
            else []
        try:
            s.sendmsg([rec], anc)
        except (BrokenPipeError, ConnectionResetError):
            pass                       # refused already: its ERROR is waiting
        return s
    except BaseException:
        s.close()
        raise


def _answer(s: socket.socket) -> tuple[str, object]:
    """("error", (code, text)) then EOF, or ("started", pid) and the
    secondary's exit status, or ("closed", None)."""
    with s:
        try:
            msg = protocol.recv(s)
        except ConnectionResetError:
            return "closed", None
        if msg is None:
            return "closed", None
        msg.close_fds()
        if msg.type == protocol.ERROR:
            code, text = protocol.decode_error(msg.body)
            try:
                rest = protocol.recv(s)
            except ConnectionResetError:
                rest = None
            if rest is not None:
                rest.close_fds()
                return "more", (code, text)
            return "error", (code, text)
        if msg.type == protocol.STARTED:
            while True:
                m = protocol.recv(s)
                if m is None:
                    return "started", None
                m.close_fds()
                if m.type == protocol.EXITED:
                    return "started", protocol.decode_struct(protocol.EXITED_BODY,
                                                             m.body, "EXITED")
        return f"type 0x{msg.type:02x}", None


def run_wire(p, count: int, seed: int, res: Result, tmp: str) -> None:
    marks = os.path.join(tmp, "marks")
    open(marks, "w").close()
    dir_fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    mut = Mutator(seed, b"STRESS_MARK=" + marks.encode(), dir_fd, null_fd)
    stats = {"sent": 0, "skipped_valid": 0, "errors": 0, "valid": 0}
    wrong: dict[str, list] = {}
    tokens: list[str] = []
    samples = []

    def note(kind, what):
        wrong.setdefault(kind, [])
        if len(wrong[kind]) < EXAMPLES:
            wrong[kind].append(what)

    def one_batch(n: int, i0: int) -> None:
        pending = []
        for i in range(i0, i0 + n):
            if i % VALID_EVERY == VALID_EVERY - 1:
                token = f"v{seed}-{i}"
                rec, nfds = mut.seed_record(token.encode())
                pending.append((_send(p.socket, bytes(rec), mut.fds(nfds)),
                                ("valid", token), rec))
                continue
            rec, nfds = mut.mutate(*mut.seed_record(f"m{i}".encode()))
            mflags = MSG_CTRUNC if nfds > protocol.MAX_FDS else 0
            verdict = expected(bytes(rec), len(rec), mflags, min(nfds, protocol.MAX_FDS))
            if verdict[0] != "error":
                stats["skipped_valid"] += 1
                continue
            pending.append((_send(p.socket, bytes(rec), mut.fds(nfds)), verdict, rec))
        for s, verdict, rec in pending:
            kind, got = _answer(s)
            if verdict[0] == "valid":
                stats["valid"] += 1
                tokens.append(verdict[1])
                if kind != "started" or got != (0, 0):
                    note("a valid request not served", (kind, got))
                continue
            stats["sent"] += 1
            if kind == "error" and got == (125, verdict[1]):
                stats["errors"] += 1
            else:
                note("a malformed request not answered as the model says",
                     (bytes(rec[:80]).hex(), len(rec), verdict[1], kind, got))

    try:
        warm = min(2000, max(200, count // 20))
        for i in range(0, warm, WINDOW):
            one_batch(min(WINDOW, warm - i), -warm + i)
        before_fds = template_settled(p)
        before = info(p)
        stats.update(sent=0, skipped_valid=0, errors=0, valid=0)   # the warm-up's
        _, rss0 = sample(p.template_pid)
        t0 = time.monotonic()
        step = max(WINDOW, count // 20)
        done = 0
        while done < count:
            n = min(WINDOW, count - done)
            one_batch(n, done)
            done += n
            if done % step < n:
                samples.append(sample(p.template_pid))
        elapsed = time.monotonic() - t0
        after_fds = template_settled(p)
        after = info(p)
        _, rss1 = sample(p.template_pid)
    finally:
        os.close(dir_fd)
        os.close(null_fd)

    with open(marks) as f:
        ran = [line.strip() for line in f if line.strip()]
    launched = after["launched"] - before["launched"]
    n_valid = stats["valid"]
    fd_range = (min(s[0] for s in samples), max(s[0] for s in samples)) if samples \
        else (after_fds, after_fds)
    rss_max = max((s[1] for s in samples), default=rss1)
    res.counts.update(wire_inputs=count)
    res.figures.update({
        "wire: inputs": f"{count:,} ({stats['sent']:,} malformed sent, "
                        f"{stats['skipped_valid']:,} mutants still valid and not sent, "
                        f"{stats['valid']:,} valid controls; after a warm-up of {warm:,})",
        "wire: ERROR 125 with the model's message": f"{stats['errors']:,}",
        "wire: template fds (settled) before/after, range while fuzzing":
            f"{before_fds} / {after_fds}, {fd_range[0]}-{fd_range[1]}",
        "wire: template RSS before/after, max": f"{mib(rss0)} / {mib(rss1)}, {mib(rss_max)}",
        "wire: duration": f"{elapsed:.1f} s ({count / elapsed:,.0f} inputs/s)",
    })
    res.check("wire: every malformed request gets one ERROR 125 (the model's message), "
              "then EOF", "all of them",
              lambda: _none(wrong.get("a malformed request not answered as the model says"),
                            f"{stats['errors']:,} of {stats['sent']:,}"))
    res.check("wire: no secondary from a malformed request",
              "INFO launched grows by the valid controls only; the marks are theirs",
              lambda: _launched(launched, n_valid, ran, tokens, wrong))
    res.check("wire: template fds flat", "settled count equal before and after",
              lambda: _eq(before_fds, after_fds, "fds"))
    res.check("wire: template RSS flat", f"grows by at most {mib(RSS_SLACK)}",
              lambda: _rss(rss0, rss1))
    res.check("wire: the template keeps serving", "a launch and an IPC request after",
              lambda: serves(p))


def _none(bad, ok):
    assert not bad, f"{len(bad)}+ cases, e.g. {bad}"
    return ok


def _launched(launched, n_valid, ran, valid_tokens, wrong):
    assert not wrong.get("a valid request not served"), wrong["a valid request not served"]
    assert launched == n_valid, f"launched grew by {launched}, {n_valid} valid sent"
    assert sorted(ran) == sorted(valid_tokens), \
        f"ran {len(ran)} marks, {len(valid_tokens)} valid; strangers: " \
        f"{sorted(set(ran) - set(valid_tokens))[:5]}"
    return (f"launched +{launched} = {n_valid} valid controls; {len(ran)} marks "
            f"(the warm-up's included), all theirs")


def _eq(a, b, what):
    assert a == b, f"{what}: {a} -> {b}"
    return f"{a} -> {b}"


def _rss(a, b):
    assert b - a <= RSS_SLACK, f"grew by {(b - a) / 1024:.0f} KiB"
    return f"{mib(a)} -> {mib(b)}"


def run(count: int = 20_000, c_count: int = 20_000, seed: int = 1) -> Result:
    res = Result("LAUNCH fuzzer", counts={"c_inputs": c_count, "wire_inputs": count,
                                          "seed": seed})
    t0 = time.monotonic()
    c_figs = {}

    def c_part():
        text, figs = run_c_target(c_count, seed)
        c_figs.update(figs)
        return text

    if c_count:     # 0: the caller fuzzes the C target itself (the test suite does)
        res.check(f"C target: fuzz_request {c_count:,} (ASan + UBSan)",
                  "exit 0: every invariant held", c_part)
    if c_figs:
        res.figures["C target: duration"] = (
            f"{c_figs['seconds']:.1f} s for {c_figs['inputs']:,} inputs (build "
            f"{c_figs['build']:.0f} s)")
    with runtime(res) as rt:
        p = rt.primary()
        with tempfile.TemporaryDirectory(prefix="fhs-marks-") as tmp:
            res.check("wire: the run itself", "completes",
                      lambda: run_wire(p, count, seed, res, tmp) or "completed")
    res.duration = time.monotonic() - t0
    return res
