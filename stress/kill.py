"""The kill matrix: SIGKILL of each kind of process in each situation, and
what must follow (docs/reliability.md lists every cell).

Victims: a client (forkhost-run), a secondary, an idle pool member, the
template, the primary.  Situations:

- idle: a primary with its template and a full pool, nothing running;
- burst: BURST clients launched at once, killed while the first half of
  their secondaries run and the rest are still being launched (each
  secondary holds until the suite closes its stdin, so what runs when is
  decided by the suite, not by timing);
- long: one secondary that runs until released;
- ipc: one secondary whose IPC request the primary holds (stressfix's
  `stress.hold` action), killed while the request is in flight.

Pairs that do not exist are not cells: with nothing running there is no
client and no secondary to kill (client × idle, secondary × idle).  That
leaves 18.  The primary survives the first ten (its fds and its template's
must be as before, the pool full again, no zombie under either, and the
prefix serves a launch and an IPC request after); the template's death
stops its primary (exit 1, one line) and the primary's death ends its
template (PR_SET_PDEATHSIG): then every process of the prefix must end, and
a new primary on the same prefix must start and serve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from fhtest import LineReader, ended, wait_until
from .common import (FIXTURES, Result, info, kill, my_children, primary_settled,
                     runtime, serves, stop, template_settled)

DEFECT7 = "the fix of issue 22's defect 7 (a line for the clients when the primary dies)"

VICTIMS = ("client", "secondary", "pool member", "template", "primary")
SITUATIONS = ("idle", "burst", "long", "ipc")

EXPECTED = {
    ("client", "burst"): "killed clients die by SIGKILL and their secondaries end "
                         "(SIGTERM from the template); the other clients exit 0",
    ("client", "long"): "the client dies by SIGKILL, its secondary ends (SIGTERM)",
    ("client", "ipc"): "the client dies by SIGKILL, its secondary ends mid-request, "
                       "the primary's late answer goes nowhere",
    ("secondary", "burst"): "the killed secondaries' clients die by SIGKILL, the "
                            "other clients exit 0",
    ("secondary", "long"): "the client dies by SIGKILL like its secondary",
    ("secondary", "ipc"): "the client dies by SIGKILL; the primary drops the member "
                          "and its pending request",
    ("pool member", "idle"): "the template forks a new member; nothing else changes",
    ("pool member", "burst"): "every client exits 0, or (the member killed had "
                              "taken its launch) dies by SIGKILL or exits 125 with "
                              "one line; the pool refills",
    ("pool member", "long"): "the running secondary is untouched and exits 0",
    ("pool member", "ipc"): "the request in flight is answered, the client exits 0",
    ("template", "idle"): "the primary exits 1 saying the template was killed by "
                          "signal 9; the pool goes too",
    ("template", "burst"): "the primary exits 1; a client whose secondary a pool "
                           "member took gets its status when it ends (0, it holds "
                           "the connection), any other exits 125 with one line "
                           "(lost the template: it kills its secondary)",
    ("template", "long"): "as burst, for one client",
    ("template", "ipc"): "as burst, for one client whose secondary's IPC request "
                         "fails with the primary",
    ("primary", "idle"): "with --on-primary-death stop: the template, its pool and "
                         "the socket go (the primary's pidfd)",
    ("primary", "burst"): "every client ends (its secondary ended by the template's "
                          "SIGTERM, or 125 if not started) with one line on stderr",
    ("primary", "long"): "the secondary ends by SIGTERM; its client dies by it, "
                         "saying why in one line",
    ("primary", "ipc"): "the secondary ends: by SIGTERM (its client dies by it, "
                        "saying why in one line), or with 1 when its request fails "
                        "first (the client exits 1)",
}
AFTER_SURVIVED = ("; after: the prefix serves, template and primary fds as before, "
                  "full pool, no zombie")
AFTER_RESTART = ("; after: every process of the prefix ended, a new primary on the "
                 "prefix starts and serves")

CELLS = [(v, s) for v in VICTIMS for s in SITUATIONS if (v, s) in EXPECTED]
assert len(CELLS) == 18


class Scene:
    """What runs when the victim is killed."""

    def __init__(self, p, situation: str, burst: int, tmp: str):
        self.p, self.situation = p, situation
        self.clients: list[subprocess.Popen] = []
        self.secondaries: dict[int, int] = {}          # client pid -> secondary pid
        self.release_w: int | None = None
        self.marker = os.path.join(tmp, f"hold-{time.monotonic_ns()}")
        self.burst = burst
        self.started = False

    def _client(self, *argv, stdin=None) -> subprocess.Popen:
        c = self.p.popen(*argv, cwd=FIXTURES, stdin=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        self.clients.append(c)
        return c

    def running(self) -> dict[int, int]:
        secs = {s["client_pid"]: s["pid"] for s in info(self.p)["secondaries"]}
        self.secondaries.update(secs)
        return secs

    def start(self) -> None:
        if self.situation == "idle":
            return
        if self.situation == "ipc":
            c = self._client("stressfix:ipc_hold", self.marker)
            assert LineReader(c.stdout).readline() == b"asking\n"
            wait_until(lambda: os.path.exists(self.marker),
                       what="the IPC request to reach the primary")
            self.running()
            return
        r, self.release_w = os.pipe2(os.O_CLOEXEC)
        try:
            if self.situation == "long":
                c = self._client("stressfix:hold", stdin=r)
                assert LineReader(c.stdout).readline() == b"ready\n"
                self.running()
                return
            # burst: half now, the rest launched while the victim dies
            for _ in range(self.burst // 2):
                self._client("stressfix:hold", stdin=r)
            wait_until(lambda: len(self.running()) >= self.burst // 2,
                       what="the first half of the burst to run")
            for _ in range(self.burst - self.burst // 2):
                self._client("stressfix:hold", stdin=r)
        finally:
            os.close(r)

    def release(self) -> None:
        if self.release_w is not None:
            os.close(self.release_w)
            self.release_w = None
        if self.situation == "ipc" and not os.path.exists(self.marker + ".release"):
            with open(self.marker + ".release", "w"):
                pass

    def finish(self) -> list[tuple[int, bytes]]:
        """Release whatever holds, wait for every client: (status, stderr)."""
        self.release()
        out = []
        for c in self.clients:
            _, err = c.communicate(timeout=120)
            out.append((c.returncode, err))
            c.stdout.close()
            c.stderr.close()
        return out

    def abandon(self) -> None:
        self.release()
        for c in self.clients:
            if c.poll() is None:
                c.kill()
            c.communicate()
            for s in (c.stdout, c.stderr):
                if s:
                    s.close()


def one_line(err: bytes) -> bool:
    return err.count(b"\n") == 1 and err.startswith(b"forkhost-run: ")


# -- the cells where the primary survives ---------------------------------------

def survive_cell(p, victim: str, situation: str, burst: int, tmp: str) -> str:
    tfds = template_settled(p)
    pfds = primary_settled(p)
    scene = Scene(p, situation, burst, tmp)
    try:
        scene.start()
        killed_clients, killed_secs = set(), set()
        if victim == "client":
            running = scene.running()
            targets = list(running)[: max(1, len(running) // 2)]
            for cpid in targets:
                kill(cpid)
                killed_clients.add(cpid)
        elif victim == "secondary":
            running = scene.running()
            for cpid in list(running)[: max(1, len(running) // 2)]:
                kill(running[cpid])
                killed_secs.add(cpid)
        else:   # pool member: every one listed, idle or (in a burst) taking a launch
            members = wait_until(lambda: [m["pid"] for m in info(p)["members"]],
                                 what="a pool member to kill")
            for m in members:
                kill(m)
        if situation == "burst":
            # everyone not killed runs (or was the member killed) before release
            def settled_burst():
                running = scene.running()
                alive = [c for c in scene.clients if c.poll() is None]
                return all(c.pid in running or c.pid in killed_clients
                           for c in alive)
            wait_until(settled_burst, what="every client of the burst to run or end")
        results = scene.finish()
    except BaseException:
        scene.abandon()
        raise
    for c, (code, err) in zip(scene.clients, results):
        if c.pid in killed_clients or c.pid in killed_secs:
            assert code == -signal.SIGKILL, f"client {c.pid}: {code} {err!r}"
        elif victim == "pool member" and situation == "burst":
            # a member killed as it took this launch: the secondary-to-be
            assert code in (0, -signal.SIGKILL) or code == 125 and one_line(err), \
                f"client {c.pid}: {code} {err!r}"
        else:
            assert code == 0, f"client {c.pid}: {code} {err!r}"
    for cpid, spid in scene.secondaries.items():
        wait_until(lambda: ended(spid), what=f"secondary {spid} to end")
    assert not my_children(), f"children left: {my_children()}"
    serves(p)
    t2, p2 = template_settled(p), primary_settled(p)
    assert (t2, p2) == (tfds, pfds), \
        f"fds: template {tfds} -> {t2}, primary {pfds} -> {p2}"
    codes = sorted(code for code, _ in results)
    return (f"client statuses {codes}; template fds {tfds} -> {t2}, primary fds "
            f"{pfds} -> {p2}; serves" if results else
            f"template fds {tfds} -> {t2}, primary fds {pfds} -> {p2}; serves")


# -- the cells where the template or the primary dies --------------------------

def death_cell(rt, victim: str, situation: str, burst: int, tmp: str) -> str:
    # The primary's cells are those of --on-primary-death stop: the default,
    # survive, keeps everything running (tests/test_adopt.py).
    p = rt.primary(prefix=f"k{len(rt.primaries)}",
                   args=("--on-primary-death", "stop") if victim == "primary" else ())
    template_settled(p)
    members = [m["pid"] for m in info(p)["members"]]
    scene = Scene(p, situation, burst, tmp)
    try:
        scene.start()
        kill(p.template_pid if victim == "template" else p.pid)
        # Nothing is released before the death has had its effects: the
        # template ended (its primary's death), the primary exited (its
        # template's death; on its own, no signal from us).
        if victim == "primary":
            wait_until(lambda: ended(p.template_pid), what="the template to end")
        p.proc.wait(60)
        results = scene.finish()
    except BaseException:
        scene.abandon()
        raise
    code, _, err = stop(p)
    notes = []
    if victim == "template":
        assert code == 1, f"primary exit {code}: {err}"
        assert "the template exited unexpectedly (killed by signal 9)" in err, err
        for c, (st, e) in zip(scene.clients, results):
            # A secondary a pool member took holds its client's connection
            # (it sends EXITED itself), so that client is not told: it gets
            # the status when the secondary ends (0, once released).  One
            # the template forked itself leaves its client with EOF.
            own = {0, 1} if situation == "ipc" else {0}   # 1: the request failed
            assert st in own and not e or st == 125 and one_line(e), \
                f"client {c.pid}: {st} {e!r}"
            if st == 125 and c.pid in scene.secondaries:
                assert b"lost the template" in e, e
    else:
        assert code == -signal.SIGKILL, f"primary exit {code}"
        wait_until(lambda: ended(p.template_pid), what="the template to end")
        wait_until(lambda: not os.path.exists(p.socket), what="the socket to go")
        for c, (st, e) in zip(scene.clients, results):
            started = c.pid in scene.secondaries
            allowed = ({-signal.SIGTERM, 1} if situation == "ipc" else {-signal.SIGTERM}) \
                if started else {125, -signal.SIGTERM}
            assert st in allowed, \
                (f"client {c.pid} ({'running' if started else 'launching'} when the "
                 f"primary was killed): status {st}, stderr {e!r}")
            if st == -signal.SIGTERM or st == 125:
                assert one_line(e), (f"client {c.pid} exited {st} with "
                                     f"{len(e.splitlines())} lines on stderr: {e!r}")
    notes.append("statuses " + str(sorted(st for st, _ in results)) if results else
                 "no client")
    for pid in [p.template_pid, *members, *scene.secondaries.values()]:
        wait_until(lambda: ended(pid), what=f"pid {pid} of the old prefix to end")
    assert not my_children(), f"children left: {my_children()}"
    new = rt.primary(prefix=p.prefix)
    serves(new)
    ncode, _, nerr = stop(new)
    assert ncode == 0, f"the new primary exited {ncode}: {nerr}"
    notes.append(f"primary exit {code}; a new primary served and stopped with 0")
    return "; ".join(notes)


def run(burst: int = 8, rounds: int = 1, cells=None) -> Result:
    """Every cell (or those of `cells`, (victim, situation) pairs) `rounds`
    times, each round with fresh primaries."""
    cells = CELLS if cells is None else list(cells)
    res = Result("kill matrix", counts={"cells": len(cells), "burst": burst,
                                        "rounds": rounds})
    t0 = time.monotonic()
    fds0 = set(os.listdir("/proc/self/fd"))
    for rnd in range(rounds):
        tag = f" (round {rnd + 1})" if rounds > 1 else ""
        with runtime(res) as rt:
            shared = None
            for victim, situation in cells:
                expected = EXPECTED[victim, situation]
                name = f"{victim} × {situation}{tag}"
                if victim in ("template", "primary"):
                    res.check(name, expected + AFTER_RESTART,
                              lambda v=victim, s=situation: death_cell(rt, v, s, burst,
                                                                       rt.dir),
                              expected_fail=DEFECT7 if victim == "primary" and
                              situation != "idle" else "")
                    continue
                if shared is None:
                    shared = rt.primary()
                res.check(name, expected + AFTER_SURVIVED,
                          lambda v=victim, s=situation, p=shared: survive_cell(
                              p, v, s, burst, rt.dir))
            if shared is not None:
                code, _, err = stop(shared)
                res.check(f"the shared primary stops cleanly{tag}", "exit 0",
                          lambda: _zero(code, err))
    res.check("the suite's own process", "no child, no fd left",
              lambda: _clean(fds0))
    res.duration = time.monotonic() - t0
    return res


def _zero(code, err):
    assert code == 0, f"exit {code}: {err}"
    return "exit 0"


def _clean(fds0):
    kids = my_children()
    assert not kids, f"children left: {kids}"
    fds = set(os.listdir("/proc/self/fd"))
    assert fds == fds0, f"fds: {sorted(fds ^ fds0)}"
    return "none left"
