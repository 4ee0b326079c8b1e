/*
 * ring_internal.h - how ring.c reaches the code of the mempool a ring
 * carries objects of, without depending on mempool.c (which depends on
 * ring.c for its free-object ring).  mempool.c registers its functions as
 * libforkhost loads; they are process-local function pointers, never in
 * shared memory.  Not part of the public API.
 */
#ifndef FORKHOST_RING_INTERNAL_H
#define FORKHOST_RING_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

struct fh_ring;
struct fh_mempool;

struct fh__ring_pool_ops {
    /* fh__ring_track's work (forkhost/ring.h). */
    void (*track)(struct fh_ring *r, const void *objs, unsigned n,
                  uint32_t head, int side);
    /* Slots [from, from+n) of side `side` of a ring with a pool, whose
     * values are vals, were given up after a dead caller: give back the
     * objects it left there. */
    void (*return_transit)(struct fh_ring *r, const uint64_t *vals,
                           uint32_t from, uint32_t n, int side);
};

/* Set the pool operations (mempool.c, once, as the library loads). */
void fh__ring_set_pool_ops(const struct fh__ring_pool_ops *ops);

/* fh_ring_create with r->pool set before the ring is published (the
 * mempool's address, for fh_ring_create_for). */
struct fh_ring *fh__ring_create_pooled(const char *name, unsigned count,
                                       unsigned flags, struct fh_mempool *mp);

/* Register this process for the waiters' barrier ("Waiting" in ring.h), as
 * every way of getting a ring does: called when the process maps the arena,
 * so that one holding a ring by a pointer it found some other way (a ring
 * laid out with fh_ring_init in a memzone) takes part too.  errno is kept. */
void fh__ring_register_process(void);

/* The waiting loop of every timed call (ring.c's and the mempool's get):
 * attempt(ctx) (> 0 or < 0: return it; 0: not yet), and while it is not
 * yet, wait until `need` elements (for_room: free slots) are there, up to
 * timeout_ns (< 0: no limit, 0: no wait: -ETIMEDOUT).  The waiting thread
 * holds a waiter slot on r from its first failed attempt to its return,
 * and ends with -EIDRM once *alive no longer holds magic (the object is
 * being destroyed: fh__ring_drain).  -ETIMEDOUT, -EINTR as the timed calls. */
int fh__ring_wait_loop(struct fh_ring *r, const _Atomic uint64_t *alive,
                       uint64_t magic, int for_room, unsigned need,
                       int64_t timeout_ns, int (*attempt)(void *ctx), void *ctx);

/* A destroy's drain, once the object's magic is cleared: wake the threads
 * waiting on r until none is left (dead ones' slots reclaimed), 0; or -1
 * with errno ETIMEDOUT after FH_RING_DRAIN_NS (ring.h, "Waiting"). */
int fh__ring_drain(struct fh_ring *r);

#endif
