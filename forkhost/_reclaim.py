"""What a dead process held in the arena, given back: the supervisor's hook.

The supervisor (forkhost/_supervise.py) calls ``reclaim(pid)`` once for
every worker that exits, after its dependents are stopped and before
anything is started again: the point where DPDK's master/slave sample
resets a dead slave's resources.

Nothing is attributed to a process yet (mempool objects in use, ring
reservations in progress and hash-table writer locks are not recorded per
owner), so this returns a report that says so: nothing reclaimed, nothing
known to be lost, ``tracked`` False.  Issue 16 part 3 replaces the body;
the supervisor and its callers read only the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ReclaimReport:
    """What was done for one dead process's resources."""

    pid: int
    tracked: bool = False        # ownership is recorded at all
    reclaimed: dict[str, int] = field(default_factory=dict)   # kind -> count
    lost: dict[str, int] = field(default_factory=dict)        # kind -> count

    def summary(self) -> str:
        if not self.tracked:
            return "resources: not tracked, nothing reclaimed"
        done = ", ".join(f"{n} {k}" for k, n in self.reclaimed.items() if n) or "nothing"
        gone = ", ".join(f"{n} {k}" for k, n in self.lost.items() if n)
        return f"resources: reclaimed {done}" + (f"; lost {gone}" if gone else "")

    def as_dict(self) -> dict:
        return {"pid": self.pid, "tracked": self.tracked,
                "reclaimed": dict(self.reclaimed), "lost": dict(self.lost)}


def reclaim(pid: int) -> ReclaimReport:
    """Return, complete or roll back what ``pid`` held, and report it.
    Today: ownership is not tracked, so nothing is reclaimed."""
    return ReclaimReport(pid)
