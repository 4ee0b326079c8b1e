"""The IPC record fuzzer: mutated records from a member of a live primary's
IPC (ipc.sock; the format is forkhost/ipc.py's, docs/ipc.md).

Two raw members join with HELLO: the fuzzer and a bystander.  The fuzzer
sends valid records (MSG, REQUEST, REPLY; names, params, ids and fds as a
secondary would) mutated: bits, bytes, insertions, cuts (never to zero
bytes: a zero-length record is its own case, hostile.py), 32-bit fields set
to edge values, lengths re-fixed, fds sent off by some, records past
RECORD_MAX.  Mutants whose type field says BYE are not sent: a valid BYE
ends a membership on purpose.  After every BATCH records the fuzzer sends
a REQUEST to `stress.echo` and must get its answer (so the primary read
and survived the batch, and the fuzzer is still a member: docs/ipc.md, a
bad record never costs a peer its membership); the bystander is asked the
same way every few batches and at the end.  The primary's fds (settled)
and RSS are compared before and after.
"""

from __future__ import annotations

import array
import os
import random
import socket
import sys
import time

from fhtest import raw_connect
from forkhost import ipc

from .common import (RSS_SLACK, Result, mib, primary_settled, runtime, sample, serves)

HDR = ipc.HDR
BATCH = 64
PROBE_ID = 1 << 62
EDGES = [0, 1, 2, 8, 9, 63, 64, 95, 96, 97, 4095, 4096, 4097, 4192, 4193, 0xFFFF,
         0x7FFFFFFF, 0xFFFFFFFF]
NAMES = [b"fuzz.a", b"fuzz.longer-name-" + b"x" * 40, b"f"]


def _record(mtype: int, name: bytes, param: bytes, rid: int = 0, status: int = 0,
            nfds: int = 0) -> bytearray:
    return bytearray(HDR.pack(ipc.MAGIC, ipc.VERSION, mtype, HDR.size + len(param), nfds,
                              rid, len(param), status, name) + param)


class Member:
    """A raw IPC member: HELLO, WELCOME, then records."""

    def __init__(self, path: str):
        self.sock = raw_connect(path)
        self.probes = 0
        try:
            self.sock.send(bytes(_record(ipc.HELLO, b"", ipc.HELLO_BODY.pack(
                os.getpid(), os.getppid(), 0, 0))))
            data = self.sock.recv(ipc.RECORD_MAX)
            assert data[6:8] == ipc.WELCOME.to_bytes(2, sys.byteorder), data[:8]
        except BaseException:
            self.sock.close()
            raise

    def send(self, rec: bytes, fds=()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds \
            else []
        self.sock.sendmsg([rec], anc)

    def probe(self) -> int:
        """A request the primary answers (stress.echo); returns how many
        other records came first (answers to valid mutants)."""
        self.probes += 1
        rid, token = PROBE_ID + self.probes, b"probe-%d" % self.probes
        self.send(bytes(_record(ipc.REQUEST, b"stress.echo", token, rid)))
        other = 0
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(ipc.RECORD_MAX, socket.CMSG_SPACE(64),
                                                    socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError:
                data, anc = b"", []
            for fd in _fds(anc):
                os.close(fd)
            assert data, "the primary closed the connection: membership lost"
            _, _, mtype, _, _, got_id, plen, status, _ = HDR.unpack_from(data)
            if mtype == ipc.REPLY and got_id == rid:
                assert status == ipc.OK and data[HDR.size:HDR.size + plen] == token, \
                    (status, data[HDR.size:])
                return other
            other += 1

    def close(self) -> None:
        self.sock.close()


def _fds(anc) -> list[int]:
    out = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[:len(data) - len(data) % a.itemsize])
            out.extend(a)
    return out


class Mutator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def seed_record(self) -> tuple[bytearray, int]:
        rng = self.rng
        mtype = rng.choice([ipc.MSG, ipc.REQUEST, ipc.REPLY])
        nfds = rng.choice([0, 0, 0, 1, 3, ipc.FDS_MAX])
        param = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 16, 200]))) \
            if rng.randrange(8) else b"p" * ipc.PARAM_MAX
        rid = 0 if mtype == ipc.MSG else rng.randint(1, 1000)
        return _record(mtype, rng.choice(NAMES), param, rid, 0, nfds), nfds

    def mutate(self, rec: bytearray, nfds: int) -> tuple[bytearray, int]:
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(8)
            if op == 0:
                rec[rng.randrange(len(rec))] ^= 1 << rng.randrange(8)
            elif op == 1:
                rec[rng.randrange(len(rec))] = rng.choice([0, rng.randrange(256)])
            elif op == 2:
                i = rng.randrange(len(rec) + 1)
                rec[i:i] = bytes(rng.choice(b"\0a.") for _ in range(rng.randint(1, 8)))
            elif op == 3 and len(rec) > 8:
                i = rng.randrange(len(rec))
                del rec[i:i + rng.randint(1, 8)]
            elif op == 4:
                rec[:] = rec[:rng.randint(1, len(rec))]
            elif op == 5 and len(rec) >= 32:
                i = 4 * rng.randrange(8)
                rec[i:i + 4] = rng.choice(EDGES).to_bytes(4, sys.byteorder)
            elif op == 6:
                nfds = max(0, rng.choice([nfds - 1, nfds + 1, rng.randint(0, 12)]))
            else:
                rec += b"\0" * rng.choice([1, 100, ipc.RECORD_MAX - len(rec) + 1])
        if len(rec) >= 12 and rng.randrange(2):
            rec[8:12] = len(rec).to_bytes(4, sys.byteorder)
        if len(rec) >= 28 and rng.randrange(2):
            rec[24:28] = max(0, len(rec) - HDR.size).to_bytes(4, sys.byteorder)
        return rec, nfds


def is_bye(rec: bytes) -> bool:
    return len(rec) >= 8 and int.from_bytes(rec[6:8], sys.byteorder) == ipc.BYE


def run(count: int = 20_000, seed: int = 1) -> Result:
    res = Result("IPC record fuzzer", counts={"inputs": count, "seed": seed})
    t0 = time.monotonic()
    with runtime(res) as rt:
        p = rt.primary()
        res.check("the run itself", "completes",
                  lambda: _fuzz(p, count, seed, res) or "completed")
        res.check("the primary keeps serving", "a launch and an IPC request after",
                  lambda: serves(p))
    res.duration = time.monotonic() - t0
    return res


def _fuzz(p, count: int, seed: int, res: Result) -> None:
    path = p.config["ipc_socket"]
    mut = Mutator(seed)
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    fuzzer = bystander = None
    stats = {"sent": 0, "skipped_bye": 0, "answers": 0, "probes": 0}
    samples = []
    lost = []
    try:
        fuzzer, bystander = Member(path), Member(path)

        def batch(n):
            for _ in range(n):
                rec, nfds = mut.mutate(*mut.seed_record())
                if is_bye(rec):
                    stats["skipped_bye"] += 1
                    continue
                fuzzer.send(bytes(rec), [null_fd] * nfds)
                stats["sent"] += 1
            try:
                stats["answers"] += fuzzer.probe()
                stats["probes"] += 1
            except AssertionError as exc:
                lost.append(f"the fuzzer, after {stats['sent']} records: {exc}")
                raise

        warm = min(2000, max(BATCH * 4, count // 20))
        for _ in range(0, warm, BATCH):
            batch(BATCH)
        bystander.probe()
        fds0 = primary_settled(p)
        _, rss0 = sample(p.pid)
        stats.update(sent=0, skipped_bye=0, answers=0, probes=0)
        t1 = time.monotonic()
        done, k = 0, 0
        step = max(BATCH, count // 20)
        while done < count:
            n = min(BATCH, count - done)
            batch(n)
            done += n
            k += 1
            if k % 16 == 0:
                bystander.probe()
            if done % step < n:
                samples.append(sample(p.pid))
        elapsed = time.monotonic() - t1
        bystander.probe()
        fuzzer.probe()
        fds1 = primary_settled(p)          # both members still connected
        _, rss1 = sample(p.pid)
    finally:
        for m in (fuzzer, bystander):
            if m is not None:
                m.close()
        os.close(null_fd)
    fd_lo = min((s[0] for s in samples), default=fds1)
    fd_hi = max((s[0] for s in samples), default=fds1)
    res.figures.update({
        "inputs": f"{count:,} ({stats['sent']:,} sent, {stats['skipped_bye']:,} BYE "
                  f"mutants not sent; after a warm-up of {warm:,})",
        "answers to mutants that were still valid requests": f"{stats['answers']:,}",
        "probes answered (fuzzer / bystander)": f"{fuzzer.probes} / {bystander.probes}",
        "primary fds (settled) before/after, range while fuzzing":
            f"{fds0} / {fds1}, {fd_lo}-{fd_hi}",
        "primary RSS before/after": f"{mib(rss0)} / {mib(rss1)}",
        "duration": f"{elapsed:.1f} s ({count / elapsed:,.0f} records/s)",
    })
    res.check("every member keeps its membership",
              "the fuzzer's and the bystander's probes all answered",
              lambda: _ok(not lost, lost, f"{fuzzer.probes + bystander.probes} probes"))
    res.check("primary fds flat", "settled count equal before and after",
              lambda: _ok(fds0 == fds1, f"{fds0} -> {fds1}", f"{fds0} -> {fds1}"))
    res.check("primary RSS flat", f"grows by at most {mib(RSS_SLACK)}",
              lambda: _ok(rss1 - rss0 <= RSS_SLACK, f"{mib(rss0)} -> {mib(rss1)}",
                          f"{mib(rss0)} -> {mib(rss1)}"))


def _ok(cond, bad, good):
    assert cond, bad
    return good
