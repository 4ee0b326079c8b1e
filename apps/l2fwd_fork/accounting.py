"""The sample's one contact with mempool and ring ownership tracking
(issue 16 part 3: docs/shm.md and docs/supervision.md describe it).

Every call of that API is here, so that the rest of the sample only asks
this module for the pool, the rings and the figures:

* the pool is created with ``track=True``: each object is attributed to
  the thread that took it from the pool, or dequeued it from a ring bound
  to the pool;
* the rings are bound to the pool (``pool=``), so a dequeue moves the
  attribution to the dequeuer;
* ``Mempool.recovered`` counts the objects given back to the pool because
  their holder died (or they were inside a dead process's unfinished
  enqueue or dequeue): the supervisor's ``forkhost._reclaim.reclaim(pid)``
  does that when a worker dies;
* ``Ring.lost`` counts the elements of a dead process's unfinished
  enqueues and dequeues on that ring.

The only process that takes objects from the pool is the generator, which
the sample never crashes, and the sink puts every object it receives back;
so every packet sent and never delivered is an object some dead process
held: ``lost = recovered``, reported by the system, never inferred as
sent - delivered.
"""

from __future__ import annotations

from forkhost.shm import Mempool, Ring


def create_pool(name: str, n: int, obj_size: int) -> Mempool:
    """The packet pool, with ownership tracked; no per-thread cache, so
    every free object is in the pool's own ring."""
    return Mempool.create(name, n, obj_size, cache_size=0, track=True)


def create_ring(name: str, count: int, flags: int, pool: Mempool) -> Ring:
    """A ring of ``pool``'s object addresses (dequeuing attributes them)."""
    return Ring.create(name, count, flags=flags, pool=pool)


def lost(pool: Mempool) -> int:
    """Packets the system reports lost: objects recovered from dead holders."""
    return pool.recovered


def ring_lost(ring: Ring) -> int:
    """Elements of dead processes' unfinished enqueues/dequeues on ``ring``."""
    return ring.lost
