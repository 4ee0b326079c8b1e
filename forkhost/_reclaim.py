"""What a dead process held in the arena, given back.

``reclaim(pid)`` runs in the primary after a process of the prefix died:
the supervisor (forkhost/_supervise.py) calls it for each worker that
exits, after its dependents are stopped and before anything is started
again (the point where DPDK's master/slave sample resets a dead slave's
resources); ``after_exit`` calls it for any other secondary the template
reports dead by a signal or with a non-zero status.

What it does, object by object (docs/shm.md, "When a process dies"):
every ring's multi-producer and multi-consumer sides give up the slots
that dead callers left claimed (``Ring.recover``); every mempool gives
back dead threads' caches and, if tracked, the objects dead threads held
(``Mempool.reclaim``); every hash table whose writer died holding its lock
is repaired (``HashTable.recover``).  Ownership is recorded per thread, not
per process, so a report covers every dead process whose leftovers were
still there, usually just ``pid``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from ._errors import ForkhostError

RING_PREFIX, POOL_PREFIX, HASH_PREFIX = "RG_", "MP_", "HT_"
# How many reports config.json keeps for `forkhost ps`.
KEEP = 16


@dataclass
class ReclaimReport:
    """What was done for one dead process's resources."""

    pid: int
    tracked: bool = False        # the arena was there to look at
    reclaimed: dict[str, int] = field(default_factory=dict)   # kind -> count
    lost: dict[str, int] = field(default_factory=dict)        # kind -> count

    def anything(self) -> bool:
        return any(self.reclaimed.values()) or any(self.lost.values())

    def summary(self) -> str:
        if not self.tracked:
            return "resources: no arena in this process, nothing reclaimed"
        done = ", ".join(f"{n} {k}" for k, n in self.reclaimed.items() if n) or "nothing"
        gone = ", ".join(f"{n} {k}" for k, n in self.lost.items() if n)
        return f"resources: reclaimed {done}" + (f"; lost {gone}" if gone else "")

    def as_dict(self) -> dict:
        return {"pid": self.pid, "tracked": self.tracked,
                "reclaimed": dict(self.reclaimed), "lost": dict(self.lost)}


def reclaim(pid: int) -> ReclaimReport:
    """Return, complete or roll back what dead processes (``pid`` among
    them) left in the arena, and report it."""
    from . import shm
    rep = ReclaimReport(pid)
    try:
        zones = [z.name for z in shm.memzones()]
    except ForkhostError:
        return rep                  # no arena mapped here
    rep.tracked = True
    objects = cached = locks = slots = 0

    def each(prefix, cls):
        for z in zones:
            if z.startswith(prefix):
                try:
                    yield cls.lookup(z[len(prefix):])
                except ForkhostError:
                    continue        # destroyed meanwhile, or not usable here

    pools = list(each(POOL_PREFIX, shm.Mempool))
    before = [mp.recovered for mp in pools]
    # Rings first: their recovery gives objects back to the pools they carry.
    for r in each(RING_PREFIX, shm.Ring):
        slots += r.recover()
    for mp, b in zip(pools, before):
        back = mp.reclaim()         # dead threads' caches, dead holders' objects
        got = mp.recovered - b      # dead holders' and unfinished calls' objects
        objects += got
        cached += max(0, back - got)
    for h in each(HASH_PREFIX, shm.HashTable):
        locks += h.recover()
    rep.reclaimed.update({"mempool objects": objects, "cached objects": cached,
                          "hash writer locks": locks})
    rep.lost["ring slots"] = slots
    return rep


def after_exit(primary, pid: int, code: int, sig: int) -> ReclaimReport | None:
    """A secondary ``pid`` ended (code, or killed by signal ``sig``):
    reclaim what it left unless it ended cleanly or is a supervised worker
    (its supervisor reclaims at the right point of recovery).  When
    anything was reclaimed or lost: one log line, a ``forkhost.reclaim``
    notice to the members, and the report in config.json for `forkhost
    ps`."""
    if code == 0 and sig == 0:
        return None
    sup = primary.supervisor
    if sup is not None and sup.started_pid(pid):
        return None
    rep = reclaim(pid)
    if not rep.anything():
        return rep
    how = f"killed by signal {sig}" if sig else f"exit status {code}"
    print(f"forkhost: secondary {pid} ended ({how}); {rep.summary()}",
          file=sys.stderr, flush=True)
    publish(primary, rep)
    return rep


def publish(primary, rep: ReclaimReport) -> None:
    """The report as a notice and in config.json ("reclaims")."""
    from . import ipc, _runtime as runtime
    ep = ipc._endpoint
    if ep is not None and ipc.started():
        try:
            ep.send(ipc.RECLAIM_NOTICE, json.dumps(rep.as_dict()).encode(),
                    internal=True)
        except ForkhostError:
            pass
    kept = primary.config.setdefault("reclaims", [])
    kept.append(rep.as_dict())
    del kept[:-KEEP]
    try:
        runtime.write_config(primary.paths, primary.config)
    except (ForkhostError, OSError):
        pass                        # stopping: the directory may be going


def ps_rows(prefix: str, cfg: dict) -> list[dict]:
    """`forkhost ps --json`'s rows for the reports in config.json."""
    return [{"prefix": prefix, "role": "reclaim", "pid": r["pid"],
             "client_pid": None, "state": None, "uptime": None, "command": None,
             "ipc": None, "reclaimed": r["reclaimed"], "lost": r["lost"]}
            for r in cfg.get("reclaims") or []]


def ps_print(cfgs: list[tuple[str, dict]]) -> None:
    """`forkhost ps`'s section: what came back from dead processes."""
    for prefix, cfg in cfgs:
        reports = cfg.get("reclaims")
        if not reports:
            continue
        print(f"\nresources given back after dead processes of {prefix!r} "
              f"(latest {len(reports)})")
        for r in reports:
            rep = ReclaimReport(r["pid"], r["tracked"], r["reclaimed"], r["lost"])
            print(f"{r['pid']:>8} {rep.summary()}")
