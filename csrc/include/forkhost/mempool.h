/*
 * forkhost/mempool.h - pools of fixed-size objects in the arena (DPDK's
 * rte_mempool), shared by every process of the prefix.
 *
 * A pool is one memzone ("MP_<name>") holding its header, the per-thread
 * caches, an MP/MC ring of free objects (fh_ring, embedded) and the objects.
 * Objects are allocated once, zero-filled, and never move; get/put hand out
 * and take back their addresses, valid in every process of the prefix.
 *
 * Caches.  Like DPDK's per-lcore caches, each thread that uses a pool gets
 * a cache of up to 2 * cache_size free objects so most get/put calls touch
 * no shared cache line.  The caches live in shared memory, in
 * FH_MEMPOOL_CACHE_SLOTS slots of the pool, each owned by one thread (its
 * kernel tid); a thread finds its slot through a thread-local table.
 *  - Across fork: the child inherits the parent thread's table, but the
 *    slot it names belongs to the parent.  A pthread_atfork handler bumps a
 *    fork generation; a table from an older generation is dropped without
 *    touching the slots, and the child claims a slot of its own.  No object
 *    is ever handed out twice.
 *  - Thread exit returns the thread's cached objects to the ring and frees
 *    its slots; so does a normal exit() of the process.
 *  - A process killed with objects in its cache: fh_mempool_reclaim()
 *    (also run automatically when a get finds the pool empty, or no slot is
 *    free) gives dead owners' slots back (kill(tid, 0) == ESRCH; all
 *    processes of a prefix share one PID namespace).
 *  - More threads than slots: the extra threads work without a cache.
 *
 * Ownership (pools created with FH_MEMPOOL_F_TRACK).  Each object has an
 * owner word: free, held by a thread (the one whose get returned it, or
 * that dequeued it from a ring bound to the pool with fh_ring_create_for),
 * or in transit in such a ring at a given slot.  When a process dies,
 * fh_mempool_reclaim() returns the objects its threads held; the rings
 * bound to the pool return the objects of an enqueue or dequeue it left
 * unfinished (see "A process that dies mid-call" in forkhost/ring.h).
 * fh_mempool_recovered() counts both.  The contract: objects of a tracked
 * pool travel between processes only through rings bound to it; one passed
 * any other way (a plain ring, a hash table's value) stays attributed to
 * the thread that last took it, and comes back when that thread dies even
 * if another still uses it.  A kill inside get or put itself can leave the
 * objects of that one call unattributed (counted neither as held nor as
 * free: fh_mempool_in_use_count() minus the held ones shows them).
 *
 * Counting.  Objects sitting in any thread's cache, in any process, count as
 * AVAILABLE, not in use (DPDK's semantics): fh_mempool_avail_count() = free
 * objects in the ring + objects in every cache, and fh_mempool_in_use_count()
 * = count - avail, i.e. objects handed out by get and not yet put back.
 * Exact when the pool is quiescent; a snapshot while others get and put.
 *
 * Waiting.  fh_mempool_get_timed / fh_mempool_get_bulk_timed sleep until
 * objects come back to the pool's ring (the ring's futex protocol, see
 * "Waiting" in forkhost/ring.h), across processes.  While a getter waits, a
 * put sends its objects (and the putting thread's cached ones) to the ring
 * instead of the thread's cache, so the waiter sees them; the check is one
 * load of a word on a cache line that is only written while someone waits.
 * Objects that sit in another live thread's cache (put before the waiter
 * came) stay there until that thread flushes them, gets them, or puts more
 * while the waiter waits.  Puts never wait: a pool cannot be over-full.
 */
#ifndef FORKHOST_MEMPOOL_H
#define FORKHOST_MEMPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "forkhost/memzone.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

#define FH_MEMPOOL_MZ_PREFIX "MP_"
#define FH_MEMPOOL_NAMESIZE (FH_MEMZONE_NAMESIZE - 3)

/* Per-thread cache size limit, DPDK's RTE_MEMPOOL_CACHE_MAX_SIZE. */
#define FH_MEMPOOL_CACHE_MAX 512
/* Threads (summed over all processes) that can hold a cache of one pool at
 * once; enough for a few dozen workers, and at most 64 * 8 KiB of slots per
 * pool with the largest cache.  Threads beyond it use the ring directly. */
#define FH_MEMPOOL_CACHE_SLOTS 64
/* Largest pool: the free-object ring must hold every object, and a ring
 * holds at most FH_RING_SZ_MAX. */
#define FH_MEMPOOL_COUNT_MAX (1u << 31)

/* Creation flags. */
#define FH_MEMPOOL_F_NO_CACHE_ALIGN 0x1u /* pad objects to 8 bytes, not 64 */
/* Attribute each object to the thread that holds it (see "Ownership"). */
#define FH_MEMPOOL_F_TRACK 0x2u

struct fh_mempool;

/* Create pool "name" of n objects of obj_size bytes, with per-thread caches
 * of cache_size objects (0: no caches).  Objects are 64-byte aligned and
 * padded (8 with FH_MEMPOOL_F_NO_CACHE_ALIGN).  NULL with errno: EINVAL,
 * EEXIST, ENOSPC, ENODEV. */
FH_API struct fh_mempool *fh_mempool_create(const char *name, unsigned n,
                                            unsigned obj_size,
                                            unsigned cache_size,
                                            unsigned flags);
/* NULL with errno ENOENT: no such pool, or its creator has not finished. */
FH_API struct fh_mempool *fh_mempool_lookup(const char *name);

/* One object, or n objects all-or-nothing: 0, or -ENOENT (not enough free
 * objects; nothing taken). */
FH_API int fh_mempool_get(struct fh_mempool *mp, void **obj);
FH_API int fh_mempool_get_bulk(struct fh_mempool *mp, void **objs, unsigned n);
/* The same, waiting for objects to be put back: timeout_ns < 0 waits as
 * long as it takes, 0 not at all, > 0 at most that many nanoseconds.  0, or
 * -ETIMEDOUT (not enough objects within the timeout; nothing taken), -EINTR
 * (a signal handler ran; call again), -EINVAL (n > the pool's count, which
 * could never be satisfied), -EIDRM (the pool was destroyed while the call
 * waited; nothing taken).  Before sleeping the calling thread's cache is
 * flushed to the ring, so what it waits for is all in one place. */
FH_API int fh_mempool_get_timed(struct fh_mempool *mp, void **obj,
                                int64_t timeout_ns);
FH_API int fh_mempool_get_bulk_timed(struct fh_mempool *mp, void **objs,
                                     unsigned n, int64_t timeout_ns);
/* Threads registered as waiting in a *_timed get (a snapshot). */
FH_API unsigned fh_mempool_waiting(const struct fh_mempool *mp);
/* Give objects back: 0, or -EINVAL when one of them does not lie in this
 * pool's object area (then none is taken back).  Putting an object twice is
 * not detected, as in DPDK. */
FH_API int fh_mempool_put(struct fh_mempool *mp, void *obj);
FH_API int fh_mempool_put_bulk(struct fh_mempool *mp, void *const *objs,
                               unsigned n);

/* Free objects (ring + all caches) and objects handed out (see above). */
FH_API unsigned fh_mempool_avail_count(const struct fh_mempool *mp);
FH_API unsigned fh_mempool_in_use_count(const struct fh_mempool *mp);
FH_API int fh_mempool_full(const struct fh_mempool *mp);   /* none in use */
FH_API int fh_mempool_empty(const struct fh_mempool *mp);  /* none avail */

/* Return this thread's cached objects to the ring and free its cache slot
 * (the next get/put claims one again).  0. */
FH_API int fh_mempool_cache_flush(struct fh_mempool *mp);
/* Give back the caches of threads that no longer exist and, in a tracked
 * pool, the objects they held; the number of objects returned. */
FH_API unsigned fh_mempool_reclaim(struct fh_mempool *mp);
/* Objects a tracked pool got back from dead holders and from the unfinished
 * calls of dead processes on rings bound to it, since creation. */
FH_API uint64_t fh_mempool_recovered(const struct fh_mempool *mp);
/* Objects of a tracked pool held by thread tid (0: by any thread). */
FH_API unsigned fh_mempool_held_count(const struct fh_mempool *mp, int32_t tid);

/* Object index <-> address, for handles that must fit in 32 bits or cross
 * into Python: index in [0, count), or -1 when obj is not an object of mp;
 * NULL for an index out of range. */
FH_API long fh_mempool_obj_index(const struct fh_mempool *mp, const void *obj);
FH_API void *fh_mempool_obj_at(const struct fh_mempool *mp, unsigned idx);

FH_API unsigned fh_mempool_count(const struct fh_mempool *mp);
FH_API unsigned fh_mempool_obj_size(const struct fh_mempool *mp);
FH_API unsigned fh_mempool_elt_size(const struct fh_mempool *mp); /* stride */
FH_API unsigned fh_mempool_cache_size(const struct fh_mempool *mp);
FH_API unsigned fh_mempool_flags(const struct fh_mempool *mp); /* at creation */
FH_API const char *fh_mempool_name(const struct fh_mempool *mp);

/* Destroy pool mp: its name can be created again at once, lookups fail
 * from now on, and its memory goes back to the arena.  The calling thread's
 * cache is given back first and dead threads' caches are reclaimed; while
 * a live thread (of any process) still holds a cache of mp it fails with
 * EBUSY, changing nothing (that thread calls fh_mempool_cache_flush, or
 * exits).  Threads waiting in a timed get are woken and return -EIDRM,
 * and the memory is freed only once they have left (ring.h, "Waiting").
 * Objects still in use are lost with the pool.  Nobody may use mp
 * afterwards (memzone.h).  0, or -1 with errno EBUSY, ENOENT (not a pool
 * that exists), EINVAL, ETIMEDOUT (a waiter still inside after
 * FH_RING_DRAIN_NS: nothing destroyed). */
FH_API int fh_mempool_destroy(struct fh_mempool *mp);

#endif /* FORKHOST_MEMPOOL_H */
