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
#include <pthread.h>
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
#include "ring_internal.h"

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

void fh__ring_register_process(void)
{
    int saved = errno;

    membarrier_register();
    errno = saved;
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
 * A timed call's stay on side ht of ring r (prod: consumers waiting for
 * elements; cons: producers waiting for room), from its first failed try
 * to its return: a slot and its bit, or past the slots a count in
 * r->slotless, held throughout, retries included, so that a destroy
 * (fh__ring_drain) frees the memory only once nobody is inside.  alive
 * and magic: the published magic of the object the call is on (the
 * ring's, or a mempool's for its ring of free objects); once it no longer
 * holds it the object is being destroyed, and the stay ends with -EIDRM.
 */
struct stay {
    struct fh_ring *r;
    struct fh_ring_headtail *ht;
    const _Atomic uint64_t *alive;
    uint64_t magic;
    struct fh__ring_rec *rec;   /* no slot: this thread's record, or NULL */
    int slot, poll;
};

static void stay_enter(struct stay *s, struct fh_ring *r,
                       struct fh_ring_headtail *ht,
                       const _Atomic uint64_t *alive, uint64_t magic)
{
    const int32_t tid = my_tid();

    *s = (struct stay){ r, ht, alive, magic, NULL, -1, 0 };
    for (unsigned i = 0; i < FH_RING_WAIT_SLOTS && s->slot < 0; i++) {
        int32_t free_ = 0;
        /* Acq_rel: acquire pairs with the release store of 0 by the last
         * owner (or reclaimer) of the slot; release publishes our tid to
         * reclaimers before our bit can be seen. */
        if (atomic_compare_exchange_strong_explicit(
                &ht->wait_tid[i], &free_, tid, memory_order_acq_rel,
                memory_order_relaxed))
            s->slot = (int)i;
    }
    if (s->slot >= 0)
        /* Seq_cst: step 2 of the protocol, the store before the fence. */
        atomic_fetch_or_explicit(&ht->waiters, 1u << s->slot,
                                 memory_order_seq_cst);
    else if ((s->rec = fh__ring_rec()) != NULL)
        /* Seq_cst: a destroy that reads the records after clearing the
         * magic sees us, or we see the cleared magic (the fence below). */
        atomic_store_explicit(&s->rec->wait_ring, (uint64_t)(uintptr_t)r,
                              memory_order_seq_cst);
    else
        /* Seq_cst: as above, for slotless. */
        atomic_fetch_add_explicit(&r->slotless, 1, memory_order_seq_cst);
    /* Step 3: the heavy half of the asymmetric fence, once for the whole
     * stay (our bit stays set until we leave).  Without it (kernel
     * refuses, or no slot was free) wakes cannot be trusted: poll. */
    s->poll = s->slot < 0 ||
              membarrier_register() < 0 ||
              syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0;
    /* Seq_cst fence: our slot (or count) is stored before our first load
     * of the magic, for the destroy's drain, which fences between its
     * clearing of the magic and its loads of the slots (fh__ring_drain):
     * one of the two sees the other, with or without the membarrier. */
    atomic_thread_fence(memory_order_seq_cst);
}

static void stay_leave(struct stay *s)
{
    if (s->slot >= 0) {
        /* Release: our accesses are done before the slot is free (a
         * destroy's drain acquires it). */
        atomic_fetch_and_explicit(&s->ht->waiters, ~(1u << s->slot),
                                  memory_order_release);
        /* Release pairs with the next claimer's acquire CAS, and with the
         * drain's acquire load. */
        atomic_store_explicit(&s->ht->wait_tid[s->slot], 0, memory_order_release);
    } else if (s->rec) {
        /* Release: as above, for the drain's acquire load of wait_ring. */
        atomic_store_explicit(&s->rec->wait_ring, 0, memory_order_release);
    } else {
        /* Release: as above, for the drain's acquire load of slotless. */
        atomic_fetch_sub_explicit(&s->r->slotless, 1, memory_order_release);
    }
}

/*
 * Sleep until have() >= need, or the deadline (NULL: none) passes: 0,
 * -ETIMEDOUT, -EINTR, or -EIDRM once the object's magic is cleared.  The
 * protocol of "Waiting" in ring.h, steps 4 and 5.
 */
static int stay_wait(struct stay *s, uint32_t need,
                     const struct timespec *deadline)
{
    struct fh_ring *r = s->r;
    struct fh_ring_headtail *ht = s->ht;

    for (;;) {
        struct timespec slice, *until = (struct timespec *)deadline;
        uint32_t t;
        int rc;

        /* First, so that a waiter woken by a destroy leaves with -EIDRM
         * rather than taking what is left in the object.  Relaxed: the
         * destroyer's store is ordered before its wakes by the futex
         * system call; a load that misses it is followed by a sleep that
         * the destroyer's next wake ends (ring.h, "Waiting"). */
        if (atomic_load_explicit(s->alive, memory_order_relaxed) != s->magic)
            return -EIDRM;
        /* Acquire: pairs with the release store of the tail (what we then
         * find there was written before it). */
        t = atomic_load_explicit(&ht->tail, memory_order_acquire);
        if (have(r, ht, t) >= need)
            return 0;
        if (deadline) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (!ts_before(&now, deadline))
                return -ETIMEDOUT;
        }
        /* Relaxed: only ever set, see wait_register_process. */
        if (s->poll || atomic_load_explicit(&r->poll_waits, memory_order_relaxed)) {
            slice = deadline_in(FH_RING_POLL_NS);
            if (!deadline || ts_before(&slice, deadline))
                until = &slice;
        }
        rc = futex_wait(&ht->tail, t, until);
        if (rc < 0 && rc != -ETIMEDOUT)
            return rc;          /* EINTR */
        /* A slice, the deadline or a wake: checked above. */
    }
}

static struct fh__ring_rec *rec_table(void);

/* A dead thread's record still names r (it was killed waiting without a
 * slot): clear it, as reclaim_side frees a dead waiter's slot, so that a
 * later thread with the same id cannot seem to wait on r.  The record is
 * held while that is done (tid -1, which claimers skip), then given back
 * as it was found. */
static void forget_dead_wait(struct fh__ring_rec *rec, int32_t tid,
                             const struct fh_ring *r)
{
    /* Acq_rel: as reclaim_side's CAS on a slot: one of us wins, nobody
     * claims the record meanwhile. */
    if (!atomic_compare_exchange_strong_explicit(&rec->tid, &tid, -1,
                                                 memory_order_acq_rel,
                                                 memory_order_relaxed))
        return;
    if (atomic_load_explicit(&rec->wait_ring, memory_order_relaxed) ==
        (uint64_t)(uintptr_t)r)
        /* Relaxed: ordered before the release store below. */
        atomic_store_explicit(&rec->wait_ring, 0, memory_order_relaxed);
    /* Release: the record, cleared, goes back to its dead owner's id
     * (a recoverer may still need what it covers: n). */
    atomic_store_explicit(&rec->tid, tid, memory_order_release);
}

/* Is anyone inside a stay on r?  Dead waiters' slots are freed first; a
 * dead thread's record that still names r holds nothing up. */
static int stay_occupied(struct fh_ring *r)
{
    struct fh__ring_rec *t = rec_table();

    reclaim_side(&r->prod);
    reclaim_side(&r->cons);
    for (unsigned i = 0; i < FH_RING_WAIT_SLOTS; i++)
        /* Acquire pairs with stay_leave's release store of 0: a slot seen
         * free was left by a waiter done with the ring. */
        if (atomic_load_explicit(&r->prod.wait_tid[i], memory_order_acquire) ||
            atomic_load_explicit(&r->cons.wait_tid[i], memory_order_acquire))
            return 1;
    for (unsigned i = 0; t && i < FH_RING_RECORDS; i++) {
        /* Acquire: as above, for stay_leave's release store of wait_ring
         * (a record just taken over may still show its dead owner's ring
         * until the claimer clears it: one more step). */
        int32_t tid = atomic_load_explicit(&t[i].tid, memory_order_acquire);
        if (tid <= 0 ||
            atomic_load_explicit(&t[i].wait_ring, memory_order_acquire) !=
                (uint64_t)(uintptr_t)r)
            continue;
        if (!fh__task_gone(tid))
            return 1;
        forget_dead_wait(&t[i], tid, r);
    }
    /* Acquire: as above, for stay_leave's release decrement. */
    return atomic_load_explicit(&r->slotless, memory_order_acquire) != 0;
}

int fh__ring_drain(struct fh_ring *r)
{
    struct timespec end = deadline_in(FH_RING_DRAIN_NS), now;
    const struct timespec step = { 0, FH_RING_DRAIN_STEP_NS };

    for (;;) {
        /* Seq_cst fence: the caller's clearing of the magic comes before
         * our loads of the slots, the records' wait_ring and slotless, as
         * stay_enter's claim of its slot (the CAS on wait_tid), or its
         * wait_ring or count, comes before its fence and its loads of the
         * magic: one of the two sees the other. */
        atomic_thread_fence(memory_order_seq_cst);
        if (!stay_occupied(r))
            return 0;
        fh__ring_wake(&r->prod);
        fh__ring_wake(&r->cons);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!ts_before(&now, &end)) {
            errno = ETIMEDOUT;
            return -1;
        }
        nanosleep(&step, NULL);
    }
}

int fh__ring_wait_loop(struct fh_ring *r, const _Atomic uint64_t *alive,
                       uint64_t magic, int for_room, unsigned need,
                       int64_t timeout_ns, int (*attempt)(void *ctx), void *ctx)
{
    struct timespec dl, *dlp = NULL;
    struct stay s;
    int rc = attempt(ctx);

    if (rc != 0)
        return rc;
    if (timeout_ns == 0)
        return -ETIMEDOUT;
    if (timeout_ns > 0) {
        dl = deadline_in(timeout_ns);
        dlp = &dl;
    }
    stay_enter(&s, r, for_room ? &r->cons : &r->prod, alive, magic);
    do
        rc = stay_wait(&s, need, dlp);
    while (rc == 0 && (rc = attempt(ctx)) == 0);
    stay_leave(&s);
    return rc;
}

static int wait_args(const struct fh_ring *r, unsigned n)
{
    return n > r->capacity || n > INT_MAX ? -EINVAL : 0;
}

/* fh_ring_wait_elements / fh_ring_wait_room: is what they wait for there? */
struct wait_ctx { struct fh_ring *r; unsigned n; int room; };

static int wait_attempt(void *c)
{
    const struct wait_ctx *w = c;

    return (w->room ? fh_ring_free_count(w->r) : fh_ring_count(w->r)) >= w->n;
}

static int wait_for(struct fh_ring *r, unsigned n, int64_t timeout_ns, int room)
{
    struct wait_ctx w = { r, n, room };
    int rc = wait_args(r, n);

    if (rc < 0)
        return rc;
    rc = fh__ring_wait_loop(r, &r->magic, FH_RING_MAGIC, room, n, timeout_ns,
                            wait_attempt, &w);
    return rc > 0 ? 0 : rc;
}

FH_API int fh_ring_wait_elements(struct fh_ring *r, unsigned n,
                                 int64_t timeout_ns)
{
    return wait_for(r, n, timeout_ns, 0);
}

FH_API int fh_ring_wait_room(struct fh_ring *r, unsigned n, int64_t timeout_ns)
{
    return wait_for(r, n, timeout_ns, 1);
}

/* The four timed calls: try, wait until it may work, try again. */
struct timed_ctx {
    struct fh_ring *r;
    void *objs;
    unsigned n, *left;
    int enqueue, burst;
};

static int timed_attempt(void *c)
{
    const struct timed_ctx *t = c;
    unsigned got;

    if (t->enqueue)
        got = t->burst ? fh_ring_enqueue_burst(t->r, t->objs, t->n, t->left)
                       : fh_ring_enqueue_bulk(t->r, t->objs, t->n, t->left);
    else
        got = t->burst ? fh_ring_dequeue_burst(t->r, t->objs, t->n, t->left)
                       : fh_ring_dequeue_bulk(t->r, t->objs, t->n, t->left);
    return (int)got;
}

static int timed(struct fh_ring *r, void *objs, unsigned n, unsigned *left,
                 int64_t timeout_ns, int enqueue, int burst)
{
    struct timed_ctx t = { r, objs, n, left, enqueue, burst };
    int rc = wait_args(r, burst ? 0 : n);

    if (rc < 0 || n > INT_MAX)
        return rc < 0 ? rc : -EINVAL;
    if (n == 0)
        return 0;
    return fh__ring_wait_loop(r, &r->magic, FH_RING_MAGIC, enqueue,
                              burst ? 1 : n, timeout_ns, timed_attempt, &t);
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

static int ring_init(struct fh_ring *r, const char *name, unsigned count,
                     unsigned elem_size, unsigned flags, struct fh_mempool *mp)
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
    r->pool = (uint64_t)(uintptr_t)mp;
    wait_register_process(r);
    /* Release pairs with the acquire load of magic in fh_ring_lookup
     * (fh__object_lookup): a process that sees the magic sees the whole
     * header. */
    atomic_store_explicit(&r->magic, FH_RING_MAGIC, memory_order_release);
    return 0;
}

FH_API int fh_ring_init(struct fh_ring *r, const char *name, unsigned count,
                        unsigned elem_size, unsigned flags)
{
    return ring_init(r, name, count, elem_size, flags, NULL);
}

static int mz_name(char *buf, const char *name)
{
    return fh__object_zone_name(buf, FH_RING_MZ_PREFIX, name, FH_RING_NAMESIZE);
}

static struct fh_ring *ring_create(const char *name, unsigned count,
                                   unsigned elem_size, unsigned flags,
                                   struct fh_mempool *mp)
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
    rc = ring_init(mz->addr, name, count, elem_size, flags, mp);
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    return mz->addr;
}

FH_API struct fh_ring *fh_ring_create(const char *name, unsigned count,
                                      unsigned elem_size, unsigned flags)
{
    return ring_create(name, count, elem_size, flags, NULL);
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

static int ring_drain(void *obj)
{
    return fh__ring_drain(obj);
}

FH_API int fh_ring_destroy(struct fh_ring *r)
{
    if (!r || !fh_arena_contains(r, sizeof *r)) {
        errno = EINVAL;
        return -1;
    }
    return fh__object_destroy(r, FH_RING_MZ_PREFIX, r->name, FH_RING_NAMESIZE,
                              offsetof(struct fh_ring, magic), FH_RING_MAGIC,
                              NULL, ring_drain);
}

/* ------------------------------------- a process that dies mid-call */

/* The reservation records (ring.h): one table per arena, laid out with
 * the memzone directory (hdr->ring_rec_offset). */
/* This thread's record (ring.h): the multi-side fast path reads it inline,
 * initial-exec, so a plain %fs-relative load rather than a __tls_get_addr
 * call (8 bytes of the static TLS that glibc keeps for libraries loaded
 * with dlopen). */
FH_API __thread struct fh__ring_rec *fh__ring_t_rec
    __attribute__((tls_model("initial-exec")));

/* Runs in the child of every fork(), in its one thread, the one that
 * forked: records are per thread, and that thread's record is the
 * parent's, so the child claims its own on its first multi-side call. */
static void rec_fork_child(void)
{
    fh__ring_t_rec = NULL;
}

static pthread_once_t g_rec_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_rec_key;

/* A thread that ends frees its record (it holds nothing between calls). */
static void rec_thread_exit(void *arg)
{
    struct fh__ring_rec *rec = arg;

    /* In a fork child the key still holds the parent's record, which is
     * not ours (fh__ring_t_rec was cleared, or holds our own claim). */
    if (rec && rec == fh__ring_t_rec)
        /* Release: our last use of the record is done before it is free. */
        atomic_store_explicit(&rec->tid, 0, memory_order_release);
    fh__ring_t_rec = NULL;
}

static void rec_setup(void)
{
    pthread_atfork(NULL, NULL, rec_fork_child);
    pthread_key_create(&g_rec_key, rec_thread_exit);
}

static struct fh__ring_rec *rec_table(void)
{
    struct fh_arena_hdr *hdr = fh_arena_hdr();

    if (!hdr || !hdr->ring_rec_offset)
        return NULL;
    return (struct fh__ring_rec *)((char *)hdr + hdr->ring_rec_offset);
}

FH_API struct fh__ring_rec *fh__ring_rec(void)
{
    struct fh__ring_rec *t, *mine = NULL;
    int32_t tid;
    int saved = errno;

    if (__builtin_expect(fh__ring_t_rec != NULL, 1))
        return fh__ring_t_rec;
    pthread_once(&g_rec_once, rec_setup);
    t = rec_table();
    tid = my_tid();
    for (unsigned i = 0; t && i < FH_RING_RECORDS && !mine; i++) {
        /* Acquire pairs with the release store of 0 by the last owner. */
        int32_t o = atomic_load_explicit(&t[i].tid, memory_order_acquire);
        /* A dead owner's record is taken over only when it holds nothing:
         * one that covers slots stays for the recoverer. */
        if (o != 0 && !(atomic_load_explicit(&t[i].n, memory_order_relaxed) == 0 &&
                        fh__task_gone(o)))
            continue;
        /* Acq_rel: one claimer wins; our later stores follow the claim. */
        if (atomic_compare_exchange_strong_explicit(
                &t[i].tid, &o, tid, memory_order_acq_rel, memory_order_relaxed))
            mine = &t[i];
    }
    if (mine) {
        /* Relaxed: a dead owner's wait_ring is void from our claim on
         * (a drain that reads it meanwhile waits one more step). */
        atomic_store_explicit(&mine->wait_ring, 0, memory_order_relaxed);
        fh__ring_t_rec = mine;
        pthread_setspecific(g_rec_key, mine);
    }
    errno = saved;
    return mine;
}

static unsigned side_of(const struct fh_ring *r, const struct fh_ring_headtail *ht)
{
    return ht == &r->cons;
}

static void add_lost(struct fh_ring *r, unsigned side, uint32_t n)
{
    /* Relaxed: a statistic. */
    atomic_fetch_add_explicit(&r->lost[side], n, memory_order_relaxed);
}

#define TRACK_STEP 256u

/* mempool.c's code for rings with a pool (ring_internal.h). */
static struct fh__ring_pool_ops g_pool_ops;

void fh__ring_set_pool_ops(const struct fh__ring_pool_ops *ops)
{
    g_pool_ops = *ops;
}

FH_API void fh__ring_track(struct fh_ring *r, const void *objs, unsigned n,
                           uint32_t head, int side)
{
    if (g_pool_ops.track)
        g_pool_ops.track(r, objs, n, head, side);
}

static void return_transit(struct fh_ring *r, const uint64_t *vals,
                           uint32_t from, uint32_t n, int side)
{
    if (g_pool_ops.return_transit)
        g_pool_ops.return_transit(r, vals, from, n, side);
}

static void read_slots(const struct fh_ring *r, uint32_t from, uint32_t n,
                       uint64_t *out)
{
    for (uint32_t i = 0; i < n; i++)
        memcpy(&out[i], r->slots + (size_t)((from + i) & r->mask) * 8, 8);
}

/* Add hole [start, end) to r's producers' table: 0, or -1 when it is full. */
static int hole_add(struct fh_ring *r, uint32_t start, uint32_t end)
{
    for (unsigned i = 0; i < FH_RING_HOLES; i++) {
        uint32_t zero = 0;
        /* Relaxed: a hint; the CAS below decides. */
        if (atomic_load_explicit(&r->prod.hole[i][1], memory_order_relaxed))
            continue;
        /* Relaxed: the entry is free (end 0) and the CAS on end below
         * publishes start with it. */
        atomic_store_explicit(&r->prod.hole[i][0], start, memory_order_relaxed);
        /* Release: start before end; consumers acquire end. */
        if (atomic_compare_exchange_strong_explicit(
                &r->prod.hole[i][1], &zero, end, memory_order_release,
                memory_order_relaxed)) {
            /* Release: the entry before the count; both before the tail
             * move that makes the hole reachable (its CAS is acq_rel). */
            atomic_fetch_add_explicit(&r->prod.holes, 1, memory_order_release);
            return 0;
        }
    }
    return -1;
}

static void hole_drop(struct fh_ring *r, uint32_t start, uint32_t end)
{
    for (unsigned i = 0; i < FH_RING_HOLES; i++) {
        /* Acquire pairs with hole_add's release CAS of end. */
        uint32_t e = atomic_load_explicit(&r->prod.hole[i][1], memory_order_acquire);
        if (e == end && e != 0 &&
            atomic_load_explicit(&r->prod.hole[i][0], memory_order_relaxed) == start) {
            /* Release: our reads of the entry are done before it is free;
             * then the count (release) so a consumer that sees 0 finds no
             * entry it needs. */
            atomic_store_explicit(&r->prod.hole[i][1], 0, memory_order_release);
            atomic_fetch_sub_explicit(&r->prod.holes, 1, memory_order_release);
            return;
        }
    }
}

/* Free the records of dead threads on side `side` of r whose claims lie
 * wholly behind tail: nothing there needs them any more. */
static void collect_dead(struct fh_ring *r, unsigned side, uint32_t tail)
{
    struct fh__ring_rec *t = rec_table();

    for (unsigned i = 0; t && i < FH_RING_RECORDS; i++) {
        /* Acquire: pairs with the claimer's CAS of tid. */
        int32_t tid = atomic_load_explicit(&t[i].tid, memory_order_acquire);
        if (tid <= 0 ||
            atomic_load_explicit(&t[i].ring, memory_order_relaxed) != (uintptr_t)r ||
            atomic_load_explicit(&t[i].side, memory_order_relaxed) != side)
            continue;
        /* Relaxed: the owner is checked dead below before we act. */
        uint32_t n = atomic_load_explicit(&t[i].n, memory_order_relaxed);
        uint32_t start = atomic_load_explicit(&t[i].start, memory_order_relaxed);
        uint32_t behind = tail - start;
        if (n == 0 || behind < n || behind >= FH_RING_SZ_MAX || !fh__task_gone(tid))
            continue;
        /* Relaxed: a dead thread's record; the CAS below frees it for
         * claimers (whose acquire CAS follows our release). */
        atomic_store_explicit(&t[i].n, 0, memory_order_relaxed);
        /* Release: n = 0 before the record can be claimed again. */
        atomic_compare_exchange_strong_explicit(&t[i].tid, &tid, 0,
                                                memory_order_release,
                                                memory_order_relaxed);
    }
}

/*
 * One recovery step on side ht of r: if the slots at the tail belong to a
 * thread that is gone, give them up.  limit: the caller's own start (the
 * step never moves the tail past it), or 0 for none.  Returns the slots
 * given up.
 */
static uint32_t recover_step(struct fh_ring *r, struct fh_ring_headtail *ht,
                             uint32_t limit, int have_limit)
{
    const unsigned side = side_of(r, ht);
    struct fh__ring_rec *t = rec_table();
    uint32_t tail, head, len = 0, cap;
    int dead_cover = 0;

    if (!t)
        return 0;
    /* Acquire: pairs with the owners' release CASes of head (their
     * records) and with the release stores of tail. */
    tail = atomic_load_explicit(&ht->tail, memory_order_acquire);
    head = atomic_load_explicit(&ht->head, memory_order_acquire);
    /* Acquire pairs with fh__ring_release_rec's release decrement. */
    if (tail == head ||
        atomic_load_explicit(&r->unrecorded, memory_order_acquire) != 0)
        return 0;
    cap = head - tail;
    if (have_limit && limit - tail < cap)
        cap = limit - tail;
    for (unsigned i = 0; i < FH_RING_RECORDS; i++) {
        /* Acquire: pairs with the claimer's CAS of tid; the fields below
         * were stored before that owner's head CAS, which we have seen. */
        int32_t tid = atomic_load_explicit(&t[i].tid, memory_order_acquire);
        uint32_t n, start;

        if (tid <= 0)
            continue;
        /* Acquire pairs with fh__ring_release_rec's release store. */
        n = atomic_load_explicit(&t[i].n, memory_order_acquire);
        if (n == 0 ||
            atomic_load_explicit(&t[i].ring, memory_order_relaxed) != (uintptr_t)r ||
            atomic_load_explicit(&t[i].side, memory_order_relaxed) != side)
            continue;
        start = atomic_load_explicit(&t[i].start, memory_order_relaxed);
        /* A later claim's start bounds what we may give up. */
        if (start != tail && start - tail < cap) {
            cap = start - tail;
            continue;
        }
        if (tail - start >= n)
            continue;                   /* does not cover the tail */
        if (!fh__task_gone(tid))
            return 0;                   /* a live owner: wait for it */
        if (!dead_cover || start + n - tail < len)
            len = start + n - tail;
        dead_cover = 1;
    }
    if (!dead_cover)
        return 0;
    if (len > cap)
        len = cap;
    /* A bound ring's objects are read back in steps of TRACK_STEP slots. */
    if (r->pool && len > TRACK_STEP)
        len = TRACK_STEP;
    if (len == 0)
        return 0;

    uint64_t vals[TRACK_STEP];
    const int tracked = r->pool != 0;
    if (tracked)
        read_slots(r, tail, len, vals);
    if (side == 0 && hole_add(r, tail, tail + len) < 0)
        return 0;                       /* table full: consumers first */
    uint32_t expect = tail;
    /* Acq_rel: one recoverer (or the publisher, had it lived) moves the
     * tail; release makes the hole entry visible to consumers that see
     * the new tail, acquire orders the slot reads above before reuse. */
    if (!atomic_compare_exchange_strong_explicit(&ht->tail, &expect, tail + len,
                                                 memory_order_acq_rel,
                                                 memory_order_relaxed)) {
        if (side == 0)
            hole_drop(r, tail, tail + len);
        return 0;
    }
    add_lost(r, side, len);
    if (tracked)
        return_transit(r, vals, tail, len, (int)side);
    /* A recovery is rare enough to wake unconditionally (no waiters-bit
     * check as in fh__ring_update_tail). */
    fh__ring_wake(ht);
    collect_dead(r, side, tail + len);
    return len;
}

FH_API void fh__ring_stuck(struct fh_ring *r, struct fh_ring_headtail *ht,
                           uint32_t old_val)
{
    int saved = errno;
    recover_step(r, ht, old_val, 1);
    errno = saved;
}

FH_API uint32_t fh__ring_single_restart(struct fh_ring *r,
                                        struct fh_ring_headtail *ht)
{
    const unsigned side = side_of(r, ht);
    /* Relaxed: this side's one process writes head and tail. */
    uint32_t tail = atomic_load_explicit(&ht->tail, memory_order_relaxed);
    uint32_t head = atomic_load_explicit(&ht->head, memory_order_relaxed);
    uint32_t len = head - tail;

    /* A bound ring: give the objects in those slots back first (their
     * slots are ours until the index moves below). */
    for (uint32_t done = 0; r->pool && done < len; ) {
        uint64_t vals[TRACK_STEP];
        uint32_t k = len - done < TRACK_STEP ? len - done : TRACK_STEP;
        read_slots(r, tail + done, k, vals);
        return_transit(r, vals, tail + done, k, (int)side);
        done += k;
    }
    add_lost(r, side, len);
    if (side == 0) {
        /* The dead producer's slots were never published: drop them.
         * Relaxed: we are the only writer and reader of prod.head. */
        atomic_store_explicit(&ht->head, tail, memory_order_relaxed);
    } else {
        /* The dead consumer's slots go back to producers.  Release, as in
         * fh__ring_update_tail. */
        atomic_store_explicit(&ht->tail, head, memory_order_release);
        fh__ring_wake(ht);         /* unconditionally, as above */
    }
    return side == 0 ? tail : head;
}

FH_API unsigned fh_ring_recover(struct fh_ring *r)
{
    unsigned total = 0;
    uint32_t got;
    int saved = errno;

    for (int side = 0; side < 2; side++) {
        struct fh_ring_headtail *ht = side ? &r->cons : &r->prod;
        /* Single sides are recovered by their next call: nobody records
         * what a single producer (consumer) claims. */
        if (ht->single)
            continue;
        while ((got = recover_step(r, ht, 0, 0)) != 0)
            total += got;
        /* Acquire: pairs with the release stores of the tail. */
        collect_dead(r, (unsigned)side,
                     atomic_load_explicit(&ht->tail, memory_order_acquire));
    }
    errno = saved;
    return total;
}

FH_API uint64_t fh_ring_lost(const struct fh_ring *r, int which)
{
    /* Relaxed: statistics. */
    uint64_t p = atomic_load_explicit(&r->lost[0], memory_order_relaxed);
    uint64_t c = atomic_load_explicit(&r->lost[1], memory_order_relaxed);
    return which == 0 ? p : which == 1 ? c : p + c;
}

/* A hole of r's producers that a consumer's range meets. */
struct hole { uint32_t s, e; };

/* The holes that start in [head, tail), in ring order: how many. */
static unsigned holes_in(struct fh_ring *r, uint32_t head, uint32_t tail,
                         struct hole *hs)
{
    unsigned nh = 0;

    for (unsigned i = 0; i < FH_RING_HOLES; i++) {
        /* Acquire pairs with hole_add's release CAS: start is its own. */
        uint32_t e = atomic_load_explicit(&r->prod.hole[i][1], memory_order_acquire);
        uint32_t s = atomic_load_explicit(&r->prod.hole[i][0], memory_order_relaxed);
        if (e == 0 || s - head >= tail - head)
            continue;
        unsigned j = nh++;
        while (j > 0 && hs[j - 1].s - head > s - head) {
            hs[j] = hs[j - 1];
            j--;
        }
        hs[j] = (struct hole){s, e};
    }
    return nh;
}

FH_API unsigned fh__ring_dequeue_holes(struct fh_ring *r, void *objs,
                                       unsigned n, int behavior,
                                       unsigned *available)
{
    struct fh__ring_rec *rec = fh__ring_rec();
    const size_t esize = r->elem_size;
    int saved = errno;

    if (rec) {
        /* Relaxed: published by the CAS (release) below, as inline. */
        atomic_store_explicit(&rec->ring, (uint64_t)(uintptr_t)r, memory_order_relaxed);
        atomic_store_explicit(&rec->side, 1, memory_order_relaxed);
    } else {
        /* Relaxed: as in fh__ring_move_head. */
        atomic_fetch_add_explicit(&r->unrecorded, 1, memory_order_relaxed);
    }
    for (;;) {
        struct hole hs[FH_RING_HOLES];
        /* Relaxed: a guess the CAS checks. */
        uint32_t head = atomic_load_explicit(&r->cons.head, memory_order_relaxed);
        /* A single consumer starts from its tail, as inline (relaxed: it
         * is that side's only writer). */
        if (r->cons.single &&
            atomic_load_explicit(&r->cons.tail, memory_order_relaxed) != head)
            head = fh__ring_single_restart(r, &r->cons);
        /* Order the head load before the tail load, as inline. */
        atomic_thread_fence(memory_order_acquire);
        /* Acquire pairs with the producers' (and recoverers') release of
         * prod.tail: the slots and hole entries before it are visible. */
        uint32_t tail = atomic_load_explicit(&r->prod.tail, memory_order_acquire);
        unsigned nh = holes_in(r, head, tail, hs), k = 0;
        uint32_t pos = head, items = 0, total = tail - head;

        for (unsigned i = 0; i < nh; i++)
            total -= hs[i].e - hs[i].s;
        while (pos != tail && items < n) {
            if (k < nh && pos == hs[k].s) {
                pos = hs[k++].e;
                continue;
            }
            uint32_t stop = k < nh ? hs[k].s : tail;
            uint32_t take = stop - pos < n - items ? stop - pos : n - items;
            items += take;
            pos += take;
        }
        if (behavior == FH__RING_FIXED && items < n) {
            /* Not enough: only skip the holes at the front, if any. */
            items = 0;
            pos = head;
            for (k = 0; k < nh && pos == hs[k].s; k++)
                pos = hs[k].e;
        }
        if (pos == head) {
            fh__ring_release_rec(r, rec);
            if (available)
                *available = total;
            errno = saved;
            return 0;
        }
        if (rec) {
            /* Relaxed: published by the CAS below. */
            atomic_store_explicit(&rec->start, head, memory_order_relaxed);
            atomic_store_explicit(&rec->n, pos - head, memory_order_relaxed);
        }
        /* Release on success, as inline: the record before the claim. */
        if (!atomic_compare_exchange_strong_explicit(
                &r->cons.head, &head, pos, memory_order_release,
                memory_order_relaxed))
            continue;
        /* Copy the real slots out, chunk by chunk between holes. */
        uint32_t at = head, got = 0;
        k = 0;
        while (at != pos) {
            if (k < nh && at == hs[k].s) {
                at = hs[k++].e;
                continue;
            }
            uint32_t stop = k < nh && hs[k].s - head < pos - head ? hs[k].s : pos;
            unsigned char *dst = (unsigned char *)objs + (size_t)got * esize;
            fh__ring_copy_out(r, at, dst, stop - at);
            if (r->pool && !(r->pool & 1))
                fh__ring_track(r, dst, stop - at, at, 1);
            got += stop - at;
            at = stop;
        }
        fh__ring_update_tail(r, &r->cons, head, pos, 1);
        for (unsigned i = 0; i < nh; i++)
            if (hs[i].e - head <= pos - head)
                hole_drop(r, hs[i].s, hs[i].e);
        fh__ring_release_rec(r, rec);
        if (available)
            *available = total - items;
        errno = saved;
        return items;
    }
}

struct fh_ring *fh__ring_create_pooled(const char *name, unsigned count,
                                       unsigned flags, struct fh_mempool *mp)
{
    return ring_create(name, count, 8, flags, mp);
}
