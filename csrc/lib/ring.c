/*
 * ring.c - creation and lookup of rings, and the out-of-line copies of the
 * inline ring operations in forkhost/ring.h.
 *
 * The operations are inline for C callers; Python (cffi), ctypes and
 * programs that resolve symbols at run time need real functions.  Defining
 * FH_RING_BUILD turns every FH_RING_FN in the header into an exported
 * definition, so the two can never drift apart.
 */
#define FH_RING_BUILD 1

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The header's FH_RING_FN definitions are their own prototypes. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include "forkhost.h"
#include "forkhost/ring.h"
#pragma GCC diagnostic pop
#include "task.h"

_Static_assert(offsetof(struct fh_ring, size) == 72, "ring layout");
_Static_assert(offsetof(struct fh_ring, prod) == 128, "prod on its own lines");
_Static_assert(offsetof(struct fh_ring, cons) == 256, "cons on its own lines");
_Static_assert(offsetof(struct fh_ring, slots) == 384, "slots after cons");
_Static_assert(offsetof(struct fh_ring, prod.wait_tid) == 192,
               "waiter slots on the line after prod's");
_Static_assert(offsetof(struct fh_ring, cons.wait_tid) == 320,
               "waiter slots on the line after cons's");
_Static_assert(FH_RING_WAIT_SLOTS <= 32, "one bit per slot in waiters");

/* ------------------------------------------------------------ waiting */

/* This process's registration for MEMBARRIER_CMD_GLOBAL_EXPEDITED: 0 not
 * tried, 1 registered, -1 refused.  Registration is kept across fork and
 * dropped by exec, as is this variable. */
static _Atomic int g_membarrier;

/* Register once per process; 0, or -1 when the kernel refuses. */
static int membarrier_register(void)
{
    /* Relaxed: a cache of a per-process kernel state; two threads racing
     * both register, which the kernel allows. */
    int st = atomic_load_explicit(&g_membarrier, memory_order_relaxed);

    if (st == 0) {
        st = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED,
                     0, 0) == 0 ? 1 : -1;
        /* Relaxed: see above. */
        atomic_store_explicit(&g_membarrier, st, memory_order_relaxed);
    }
    return st > 0 ? 0 : -1;
}

/* Every way a process gets a ring calls this: a process that cannot take
 * part in the asymmetric fence makes the ring's waiters poll. */
static void wait_register_process(struct fh_ring *r)
{
    if (membarrier_register() < 0)
        /* Relaxed: waiters read it on every slice; it only goes 0 -> 1. */
        atomic_store_explicit(&r->poll_waits, 1, memory_order_relaxed);
}

FH_API void fh__ring_register(struct fh_ring *r)
{
    wait_register_process(r);
}

static int32_t my_tid(void)
{
    return (int32_t)syscall(SYS_gettid);
}

static int futex_wait(_Atomic uint32_t *word, uint32_t val,
                      const struct timespec *abs)
{
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time; shared
     * (not _PRIVATE): the word is in the arena, mapped by many processes. */
    if (syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, val, abs,
                NULL, FUTEX_BITSET_MATCH_ANY) == 0)
        return 0;
    return errno == EAGAIN ? 0 : -errno;
}

/* Free the slots of dead waiters on one side; how many. */
static unsigned reclaim_side(struct fh_ring_headtail *ht)
{
    unsigned n = 0;

    for (unsigned i = 0; i < FH_RING_WAIT_SLOTS; i++) {
        /* Acquire pairs with the waiter's CAS (acq_rel) that wrote its
         * tid: we act on a slot that was really claimed. */
        int32_t tid = atomic_load_explicit(&ht->wait_tid[i],
                                           memory_order_acquire);
        if (tid <= 0 || !fh__task_gone(tid))
            continue;
        /* Acq_rel: one reclaimer wins the slot (-1 marks it busy), and
         * nobody else can claim it until the release store of 0 below. */
        if (!atomic_compare_exchange_strong_explicit(
                &ht->wait_tid[i], &tid, -1, memory_order_acq_rel,
                memory_order_relaxed))
            continue;
        /* Release: ordered before the slot is offered again (below).  The
         * dead waiter may have died before setting its bit: clearing a
         * clear bit is harmless. */
        atomic_fetch_and_explicit(&ht->waiters, ~(1u << i),
                                  memory_order_release);
        /* Release pairs with the acquire of the next claimer's CAS: it
         * sets its bit after our clear in waiters' modification order. */
        atomic_store_explicit(&ht->wait_tid[i], 0, memory_order_release);
        n++;
    }
    return n;
}

FH_API void fh__ring_wake(struct fh_ring_headtail *ht)
{
    long woken = syscall(SYS_futex, (uint32_t *)&ht->tail, FUTEX_WAKE,
                         INT_MAX, NULL, NULL, 0);

    /* Nobody asleep although bits are set: the waiters are between steps
     * (alive, then nothing to do) or dead (their slots are freed here). */
    if (woken == 0)
        reclaim_side(ht);
}

FH_API unsigned fh_ring_reclaim_waiters(struct fh_ring *r)
{
    return reclaim_side(&r->prod) + reclaim_side(&r->cons);
}

static unsigned popcount_waiters(const struct fh_ring_headtail *ht)
{
    /* Relaxed: a snapshot. */
    return (unsigned)__builtin_popcount(
        atomic_load_explicit(&ht->waiters, memory_order_relaxed));
}

FH_API unsigned fh_ring_waiting_consumers(const struct fh_ring *r)
{
    return popcount_waiters(&r->prod);
}

FH_API unsigned fh_ring_waiting_producers(const struct fh_ring *r)
{
    return popcount_waiters(&r->cons);
}

/* Absolute CLOCK_MONOTONIC deadline timeout_ns from now (> 0). */
static struct timespec deadline_in(int64_t timeout_ns)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ns / 1000000000;
    ts.tv_nsec += timeout_ns % 1000000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static int ts_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec ||
           (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* What a waiter on ht would find: elements for consumers waiting on prod,
 * free slots for producers waiting on cons.  Relaxed loads: a hint that
 * decides whether to sleep; the call that follows takes the slots with the
 * ring's own ordering. */
static uint32_t have(const struct fh_ring *r, const struct fh_ring_headtail *ht,
                     uint32_t tail)
{
    if (ht == &r->prod)
        return tail - atomic_load_explicit(&r->cons.head, memory_order_relaxed);
    return r->capacity + tail -
           atomic_load_explicit(&r->prod.head, memory_order_relaxed);
}

/*
 * Sleep until have() >= need on side ht, or the deadline (NULL: none)
 * passes: 0, -ETIMEDOUT or -EINTR.  The protocol of "Waiting" in ring.h.
 */
static int ring_wait(struct fh_ring *r, struct fh_ring_headtail *ht,
                     uint32_t need, const struct timespec *deadline)
{
    const int32_t tid = my_tid();
    int slot = -1, poll, rc = 0;

    for (unsigned i = 0; i < FH_RING_WAIT_SLOTS && slot < 0; i++) {
        int32_t free_ = 0;
        /* Acq_rel: acquire pairs with the release store of 0 by the last
         * owner (or reclaimer) of the slot; release publishes our tid to
         * reclaimers before our bit can be seen. */
        if (atomic_compare_exchange_strong_explicit(
                &ht->wait_tid[i], &free_, tid, memory_order_acq_rel,
                memory_order_relaxed))
            slot = (int)i;
    }
    if (slot >= 0)
        /* Seq_cst: step 2 of the protocol, the store before the fence. */
        atomic_fetch_or_explicit(&ht->waiters, 1u << slot,
                                 memory_order_seq_cst);
    /* Step 3: the heavy half of the asymmetric fence.  Without it (kernel
     * refuses, or no slot was free) wakes cannot be trusted: poll. */
    poll = slot < 0 ||
           membarrier_register() < 0 ||
           syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0;
    for (;;) {
        struct timespec slice, *until = (struct timespec *)deadline;
        /* Acquire: pairs with the release store of the tail (what we then
         * find there was written before it). */
        uint32_t t = atomic_load_explicit(&ht->tail, memory_order_acquire);

        if (have(r, ht, t) >= need)
            break;
        if (deadline) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (!ts_before(&now, deadline)) {
                rc = -ETIMEDOUT;
                break;
            }
        }
        /* Relaxed: only ever set, see wait_register_process. */
        if (poll || atomic_load_explicit(&r->poll_waits, memory_order_relaxed)) {
            slice = deadline_in(FH_RING_POLL_NS);
            if (!deadline || ts_before(&slice, deadline))
                until = &slice;
        }
        rc = futex_wait(&ht->tail, t, until);
        if (rc == -ETIMEDOUT) {
            rc = 0;         /* a slice, or the deadline: checked above */
            continue;
        }
        if (rc < 0)
            break;          /* EINTR */
    }
    if (slot >= 0) {
        /* Release: our accesses are done before the slot is free. */
        atomic_fetch_and_explicit(&ht->waiters, ~(1u << slot),
                                  memory_order_release);
        /* Release pairs with the next claimer's acquire CAS. */
        atomic_store_explicit(&ht->wait_tid[slot], 0, memory_order_release);
    }
    return rc;
}

static int wait_args(const struct fh_ring *r, unsigned n, int64_t timeout_ns,
                     struct timespec *dl, struct timespec **dlp)
{
    if (n > r->capacity || n > INT_MAX)
        return -EINVAL;
    *dlp = NULL;
    if (timeout_ns > 0) {
        *dl = deadline_in(timeout_ns);
        *dlp = dl;
    }
    return 0;
}

FH_API int fh_ring_wait_elements(struct fh_ring *r, unsigned n,
                                 int64_t timeout_ns)
{
    struct timespec dl, *dlp;
    int rc = wait_args(r, n, timeout_ns, &dl, &dlp);

    if (rc < 0)
        return rc;
    if (fh_ring_count(r) >= n)
        return 0;
    if (timeout_ns == 0)
        return -ETIMEDOUT;
    return ring_wait(r, &r->prod, n, dlp);
}

FH_API int fh_ring_wait_room(struct fh_ring *r, unsigned n, int64_t timeout_ns)
{
    struct timespec dl, *dlp;
    int rc = wait_args(r, n, timeout_ns, &dl, &dlp);

    if (rc < 0)
        return rc;
    if (fh_ring_free_count(r) >= n)
        return 0;
    if (timeout_ns == 0)
        return -ETIMEDOUT;
    return ring_wait(r, &r->cons, n, dlp);
}

/* The four timed calls: try, sleep until it may work, try again. */
static int timed(struct fh_ring *r, void *objs, unsigned n, unsigned *left,
                 int64_t timeout_ns, int enqueue, int burst)
{
    struct timespec dl, *dlp;
    int rc = wait_args(r, burst ? 0 : n, timeout_ns, &dl, &dlp);

    if (rc < 0 || n > INT_MAX)
        return rc < 0 ? rc : -EINVAL;
    if (n == 0)
        return 0;
    for (;;) {
        unsigned got;

        if (enqueue)
            got = burst ? fh_ring_enqueue_burst(r, objs, n, left)
                        : fh_ring_enqueue_bulk(r, objs, n, left);
        else
            got = burst ? fh_ring_dequeue_burst(r, objs, n, left)
                        : fh_ring_dequeue_bulk(r, objs, n, left);
        if (got)
            return (int)got;
        if (timeout_ns == 0)
            return -ETIMEDOUT;
        rc = ring_wait(r, enqueue ? &r->cons : &r->prod, burst ? 1 : n, dlp);
        if (rc < 0)
            return rc;
    }
}

FH_API int fh_ring_enqueue_bulk_timed(struct fh_ring *r, const void *objs,
                                      unsigned n, unsigned *free_space,
                                      int64_t timeout_ns)
{ return timed(r, (void *)objs, n, free_space, timeout_ns, 1, 0); }

FH_API int fh_ring_enqueue_burst_timed(struct fh_ring *r, const void *objs,
                                       unsigned n, unsigned *free_space,
                                       int64_t timeout_ns)
{ return timed(r, (void *)objs, n, free_space, timeout_ns, 1, 1); }

FH_API int fh_ring_dequeue_bulk_timed(struct fh_ring *r, void *objs,
                                      unsigned n, unsigned *available,
                                      int64_t timeout_ns)
{ return timed(r, objs, n, available, timeout_ns, 0, 0); }

FH_API int fh_ring_dequeue_burst_timed(struct fh_ring *r, void *objs,
                                       unsigned n, unsigned *available,
                                       int64_t timeout_ns)
{ return timed(r, objs, n, available, timeout_ns, 0, 1); }

/* ------------------------------------------------- creation and lookup */

FH_API ssize_t fh_ring_get_memsize(unsigned count, unsigned elem_size)
{
    if (count == 0 || count > FH_RING_SZ_MAX || (count & (count - 1)) ||
        elem_size == 0 || elem_size % 4 || elem_size > FH_RING_ELEM_MAX)
        return -EINVAL;
    return (ssize_t)(sizeof(struct fh_ring) + (size_t)count * elem_size);
}

FH_API int fh_ring_init(struct fh_ring *r, const char *name, unsigned count,
                        unsigned elem_size, unsigned flags)
{
    if (fh_ring_get_memsize(count, elem_size) < 0 || (flags & ~FH_RING_F_MASK) ||
        !name || !name[0] || strlen(name) >= FH_RING_NAMESIZE ||
        ((uintptr_t)r & 127))
        return -EINVAL;
    /* No other process can use the ring yet: lookups refuse it until the
     * magic below is published, so plain and relaxed writes suffice. */
    memset(r, 0, sizeof *r);
    strcpy(r->name, name);
    r->size = count;
    r->mask = count - 1;
    r->capacity = count;
    r->elem_size = elem_size;
    r->flags = flags;
    r->prod.single = !!(flags & FH_RING_F_SP_ENQ);
    r->cons.single = !!(flags & FH_RING_F_SC_DEQ);
    wait_register_process(r);
    /* Release pairs with the acquire load of magic in fh_ring_lookup
     * (fh__object_lookup): a process that sees the magic sees the whole
     * header. */
    atomic_store_explicit(&r->magic, FH_RING_MAGIC, memory_order_release);
    return 0;
}

static int mz_name(char *buf, const char *name)
{
    return fh__object_zone_name(buf, FH_RING_MZ_PREFIX, name, FH_RING_NAMESIZE);
}

FH_API struct fh_ring *fh_ring_create(const char *name, unsigned count,
                                      unsigned elem_size, unsigned flags)
{
    char mzname[FH_MEMZONE_NAMESIZE];
    const struct fh_memzone *mz;
    ssize_t sz = fh_ring_get_memsize(count, elem_size);
    int rc;

    if (sz < 0 || (flags & ~FH_RING_F_MASK) || mz_name(mzname, name) < 0) {
        errno = EINVAL;
        return NULL;
    }
    mz = fh_memzone_reserve(mzname, (size_t)sz, 128, 0);
    if (!mz)
        return NULL;
    rc = fh_ring_init(mz->addr, name, count, elem_size, flags);
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    return mz->addr;
}

FH_API struct fh_ring *fh_ring_lookup(const char *name)
{
    struct fh_ring *r = fh__object_lookup(FH_RING_MZ_PREFIX, name,
                                          FH_RING_NAMESIZE,
                                          offsetof(struct fh_ring, magic),
                                          FH_RING_MAGIC);
    if (r)
        wait_register_process(r);
    return r;
}

FH_API int fh_ring_destroy(struct fh_ring *r)
{
    if (!r || !fh_arena_contains(r, sizeof *r)) {
        errno = EINVAL;
        return -1;
    }
    return fh__object_destroy(r, FH_RING_MZ_PREFIX, r->name, FH_RING_NAMESIZE,
                              offsetof(struct fh_ring, magic), FH_RING_MAGIC,
                              NULL);
}
