/*
 * forkhost/ring.h - lock-free fixed-size rings in the arena (DPDK's
 * rte_ring), of 64-bit values (pointers, handles, offsets) or of any
 * fixed-size element whose size is a multiple of 4 bytes.
 *
 * A ring is created in a memzone by name and found by name from any process
 * of the prefix.  The single/multi producer and consumer mode is chosen at
 * creation; the mode is also in the name of every call that assumes it
 * (fh_ring_mp_enqueue_bulk, fh_ring_sc_dequeue_burst, ...), and the calls
 * without a mode (fh_ring_enqueue_bulk, ...) dispatch on the creation flags.
 *
 * bulk: all n elements or none; burst: as many as fit (or are there), maybe
 * none.  Both return how many were moved, and report through *free_space /
 * *available what is left after the call (pass NULL to skip).  objs points
 * at n elements of fh_ring_elem_size() bytes each, packed: for a ring of
 * 64-bit values, a uint64_t[] or void *[] (or a Python buffer of them).
 *
 * The hot paths are static inline here, as in DPDK; libforkhost also exports
 * every one of them out of line (ring.c compiles this header with
 * FH_RING_BUILD), so cffi, ctypes and dlsym callers find real symbols.
 *
 * Algorithm (DPDK's, with C11 atomics): each side has a head (slots claimed)
 * and a tail (slots finished).  A producer claims [head, head+n) by moving
 * prod.head (a CAS when multi-producer), copies its elements in, waits for
 * earlier producers to finish (prod.tail == its old head), then publishes by
 * storing prod.tail with release.  Consumers mirror this on cons.  Indices
 * are free-running 32-bit counters masked on use, so all `size` slots are
 * usable (no sentinel slot) and wrap-around is plain unsigned arithmetic.
 *
 * Beyond rte_ring: each side keeps the last tail of the other side it read
 * (prod.other_tail: the consumers' tail as producers last saw it;
 * cons.other_tail the reverse) and reads the other side's cache line again
 * only when that figure shows too little room (too few elements) for the
 * call, or when the caller asks for *free_space (*available), which is then
 * exact.  On a two-core ring that is one cross-core cache-line transfer
 * less per call for whichever side is ahead.  The figure is safe to act on
 * because it only lags: every value stored in it was read (acquire) from
 * the other side's tail, and tails only grow, so the room (elements) it
 * shows are there.  A figure that shows more than the capacity (a caller
 * holding an old head, whose CAS of the head then fails) is not trusted
 * and sends the call to the real tail.  On a multi side several callers
 * update the figure, each with a CAS from the figure it started from to
 * the tail it read, so a caller stalled in between (stopped, descheduled)
 * cannot put back an old figure once others have moved it: the figure
 * moves only forward, exposed to the 32-bit wrap-around (ABA) only as the
 * head's CAS already is.
 *
 * A process that dies mid-call (beyond rte_ring, where a producer or
 * consumer killed between claiming and publishing blocks every later one
 * of its side for good).  What forkhost does instead:
 *   - single side (created SP or SC): a call starts from its side's tail,
 *     not its head.  Finding head != tail, it knows the previous call died
 *     between the two: a producer's unpublished slots are dropped (never
 *     handed to consumers, whatever they hold), a consumer's claimed
 *     slots are released to producers.  Either way the slots are counted
 *     as lost (fh_ring_lost).
 *   - multi side: before each CAS of the head, a thread writes what it is
 *     claiming (ring, side, start, n) into its own reservation record, a
 *     cache line of the arena's table of FH_RING_RECORDS that only it
 *     writes.  A thread that has waited long for the tail to reach its
 *     slots (fh__ring_stuck), or fh_ring_recover, looks up the record that
 *     covers the tail: if its thread lives (running or stopped), it waits
 *     as before; if the thread is gone, the slots up to the end of that
 *     record are declared lost and the tail is moved past them with a CAS,
 *     so later callers go on and nobody receives what the dead one had
 *     half written.  A thread stopped with SIGSTOP still blocks its side,
 *     as in DPDK.  A thread that cannot get a record (table full) marks
 *     the ring (unrecorded), and while it is inside a call no recovery is
 *     attempted on that ring.
 * Slots given up by producers become a hole that consumers skip (up to
 * FH_RING_HOLES pending at once; fh_ring_count includes them until a
 * consumer passes them).  Lost slots of a ring bound to a mempool give
 * their objects back (see fh_ring_create_for).  Nothing here costs a call that does not find a
 * dead predecessor more than a load of its side's head (single) or a few
 * stores to its own record (multi).
 *
 * Waiting (the *_timed calls, fh_ring_wait_*; beyond rte_ring).  A consumer
 * that finds too few elements can sleep until producers publish more, and a
 * producer that finds too little room until consumers free some, from any
 * process, with futex(2) on the tail word it waits for (prod.tail for
 * elements, cons.tail for room; FUTEX_WAIT on shared memory, so across
 * processes).  The protocol, which makes a lost wake-up impossible:
 *
 *   waiter (slow path)                     waker (every enqueue/dequeue)
 *   1. claim a slot: wait_tid[i] = tid     1. store tail (release)
 *   2. set bit i of waiters (seq_cst)      2. compiler barrier only
 *   3. membarrier(GLOBAL_EXPEDITED)        3. load waiters (relaxed)
 *   4. t = tail; enough there? -> done     4. nonzero -> FUTEX_WAKE(tail, all)
 *   5. FUTEX_WAIT(tail, t), then 4 again
 *   6. clear bit i, free the slot
 *
 * This is Dekker's store-then-load on both sides with an asymmetric fence:
 * the membarrier of step 3 runs a full barrier on every CPU running a
 * registered process, so a waker either stored its tail before that point
 * (the waiter's step 4 sees it and does not sleep) or loads waiters after
 * it (and sees bit i, so it wakes).  A tail stored after step 4 makes the
 * kernel's compare in FUTEX_WAIT fail (EAGAIN), or wakes the sleeper.  So
 * the fast path pays one load of a word on the cache line it has just
 * written, and a system call only while someone waits.  Every process that
 * maps the arena (creates, attaches or adopts it) or gets a ring through
 * fh_ring_create, fh_ring_lookup, fh_ring_init or a mempool's
 * create/lookup (or is forked from one that did) is registered for the
 * barrier (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED); where the kernel
 * refuses that, the process sets the ring's poll_waits (on each ring it
 * gets in those ways) and waiters on that ring re-check every
 * FH_RING_POLL_NS instead of trusting the wake.
 *
 * A waiter killed while registered leaves its slot and bit behind: a waker
 * whose FUTEX_WAKE woke nobody while bits are set (and
 * fh_ring_reclaim_waiters) frees the slots of threads that no longer exist
 * (kill(tid, 0) == ESRCH; all processes of a prefix share a PID namespace),
 * so wakers go back to the syscall-free path.  More than FH_RING_WAIT_SLOTS
 * threads waiting on one side at once: the extra ones take no slot and
 * re-check every FH_RING_POLL_NS (they are still woken at once while any
 * registered waiter is); each names the ring in its thread's reservation
 * record (wait_ring), or, in a thread that has none, counts itself in the
 * ring's slotless.  Waiting for elements on a ring where consumers
 * race (MC), or for room where producers race (MP), wakes every waiter; the
 * losers sleep again.
 *
 * A timed call holds its slot and bit (or, past the slots, its wait_ring
 * or its count in slotless) from its first failed try to its return,
 * retries included, so that a destroy can tell when nobody is inside.
 * Destroying a ring (and a mempool, for its ring of free objects) with
 * threads waiting on it:
 *
 *   destroyer                              waiter (each pass of step 4)
 *   1. clear the object's magic (release)  a. magic cleared? -> -EIDRM
 *   2. FUTEX_WAKE both tails, reclaim      b. t = tail; enough? -> done
 *      dead waiters' slots                 c. FUTEX_WAIT(tail, t)
 *   3. no slot taken, no live thread's
 *      wait_ring names the ring, slotless
 *      0?  no: sleep FH_RING_DRAIN_STEP_NS, 2
 *   4. free the memory
 *
 * A waiter that read the magic just before step 1 and then sleeps misses
 * that wake, and is woken by the next one a step later.  A waiter still
 * inside after FH_RING_DRAIN_NS (a stopped process; or a killed one that
 * counted itself in slotless, which nothing can take back) makes the
 * destroy give up: the magic is published again, nothing is freed, and
 * destroy fails with ETIMEDOUT; the waiters that left by then have
 * returned -EIDRM.  A waiter killed with a slot or a wait_ring holds
 * nothing up: the drain frees the slot, and clears the record, of a
 * thread that is gone (unless its id was given to a live thread before
 * the drain looked: then, as for a stopped waiter, the destroy gives up).
 */
#ifndef FORKHOST_RING_H
#define FORKHOST_RING_H

#include <errno.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "forkhost/memzone.h"

/* FH__RING_BENCH_NO_WAKEUP, defined before including this header, compiles
 * the waiter check out of the inline enqueue/dequeue: only for
 * benchmarks/shm_c, to show that check costs nothing when nobody waits.
 * Code built so must never share a ring with a waiter. */

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* Memzone names are "RG_<ring name>", as in DPDK, so a ring name has three
 * bytes less than a memzone name. */
#define FH_RING_MZ_PREFIX "RG_"
#define FH_RING_NAMESIZE (FH_MEMZONE_NAMESIZE - 3)

/* Creation flags.  Multi-producer and multi-consumer are the defaults. */
#define FH_RING_F_SP_ENQ 0x1u /* one producer at a time: no CAS on enqueue */
#define FH_RING_F_SC_DEQ 0x2u /* one consumer at a time: no CAS on dequeue */
#define FH_RING_F_MASK   0x3u

/* Largest slot count: free-running 32-bit indices tell a full ring from an
 * empty one only while size <= 2^31. */
#define FH_RING_SZ_MAX (1u << 31)
/* Largest element: 64 KiB keeps a burst's copy within reason and the
 * size * elem_size product far from overflow. */
#define FH_RING_ELEM_MAX 65536u

#define FH_RING_MAGIC 0x474e4952484b46ull /* "FKHRING" */

/* Waiter slots per side (see "Waiting" above): one cache line of thread
 * ids. */
#define FH_RING_WAIT_SLOTS 16
/* Pending holes left by dead producers, per ring (one cache line with the
 * producers' indices). */
#define FH_RING_HOLES 4

/* One side's indices.  head, tail and other_tail are written only by this
 * side's processes (producers for prod, consumers for cons); the other side
 * reads tail only.  waiters and wait_tid are written by the OTHER side's
 * processes while they block until this side's tail moves (consumers
 * waiting for elements register on prod, producers waiting for room on
 * cons), and read by this side after every tail store. */
struct fh_ring_headtail {
    _Atomic uint32_t head;   /* slots claimed by this side */
    _Atomic uint32_t tail;   /* slots this side has finished with; also the
                              * futex word waiters sleep on */
    uint32_t single;         /* 1: SP (or SC); read-only after creation */
    /* Rings created SP (SC) only: the other side's tail as this side last
     * read it.  It only lags the real one, so the room (or the elements) it
     * shows are there; a call reads the other side's cache line only when
     * this lagging figure is not enough for it. */
    _Atomic uint32_t other_tail;
    /* Bit i set: wait_tid[i] holds a thread blocked until tail moves.  On
     * the tail's cache line, so the check after a tail store is a load of
     * a line the storer already holds. */
    _Atomic uint32_t waiters;
    /* prod only: slots given up after a dead producer that consumers must
     * skip (see "A process that dies mid-call").  holes counts the used
     * entries of hole[] ({start, end}, end 0: unused); written by
     * recoverers and by the consumer that skips one, rarely. */
    _Atomic uint32_t holes;
    _Atomic uint32_t hole[FH_RING_HOLES][2];
    /* Thread id of each registered waiter, 0 when free, -1 while a
     * reclaimer clears a dead one's slot. */
    alignas(64) _Atomic int32_t wait_tid[FH_RING_WAIT_SLOTS];
};

/*
 * Byte layout (the ring's own memzone, 128-aligned):
 *   0    magic (published last, release)   8 name[61]
 *   72   size  76 mask  80 capacity  84 elem_size  88 flags
 *        all written once by the creator, read-only afterwards
 *   92   poll_waits (see "Waiting")
 *   96   lost[2] (producers', consumers')  112 pool  120 unrecorded
 *   124  slotless (see "Waiting")
 *   128  prod {head, tail, single, other_tail, waiters}   by producers
 *   192  prod.wait_tid[16]   by consumers waiting for elements
 *   256  cons {head, tail, single, other_tail, waiters}   by consumers
 *   320  cons.wait_tid[16]   by producers waiting for room
 *   384  size * elem_size bytes of slots
 * prod and cons are 128 bytes apart rather than 64: Intel's adjacent-line
 * prefetcher pulls cache lines in pairs, and a pair shared by the two sides
 * would bounce between their cores anyway.
 */
struct fh_ring {
    _Atomic uint64_t magic;
    char     name[FH_RING_NAMESIZE];
    uint32_t size;       /* slots, a power of two */
    uint32_t mask;       /* size - 1 */
    uint32_t capacity;   /* usable slots: size */
    uint32_t elem_size;  /* bytes per slot, a multiple of 4 */
    uint32_t flags;      /* FH_RING_F_* given at creation */
    /* Nonzero once a process of the prefix could not register for the
     * waiters' memory barrier: waiters then sleep in short slices (see
     * "Waiting"). */
    _Atomic uint32_t poll_waits;
    /* Slots given up after a dead process's unfinished enqueue (lost[0])
     * or dequeue (lost[1]); see "A process that dies mid-call". */
    _Atomic uint64_t lost[2];
    /* The mempool whose objects this ring carries (fh_ring_create_for),
     * or that mempool's address + 1 for its own ring of free objects
     * (mempool.c), or 0; written once by the creator. */
    uint64_t pool;
    /* Calls in progress by threads without a reservation record. */
    _Atomic uint32_t unrecorded;
    /* Timed calls waiting without a slot (more than FH_RING_WAIT_SLOTS on
     * a side): a destroy waits for them to leave as for the slots. */
    _Atomic uint32_t slotless;
    alignas(128) struct fh_ring_headtail prod;
    alignas(128) struct fh_ring_headtail cons;
    alignas(128) unsigned char slots[];
};

/* Creation and lookup (ring.c). */

/* Bytes a ring of count elements of elem_size needs (header included), or
 * -EINVAL (count not a power of two in 1..FH_RING_SZ_MAX, elem_size not a
 * multiple of 4 in 4..FH_RING_ELEM_MAX). */
FH_API ssize_t fh_ring_get_memsize(unsigned count, unsigned elem_size);
/* Lay out a ring in memory the caller owns (fh_ring_get_memsize bytes,
 * 128-aligned, in the arena if other processes must use it): how a mempool
 * embeds its free-object ring.  0 or a negative errno. */
FH_API int fh_ring_init(struct fh_ring *r, const char *name, unsigned count,
                        unsigned elem_size, unsigned flags);
/* Reserve memzone "RG_<name>" and lay a ring out in it.  NULL with errno:
 * EINVAL (name, count, elem_size, flags), EEXIST, ENOSPC, ENODEV. */
FH_API struct fh_ring *fh_ring_create(const char *name, unsigned count,
                                      unsigned elem_size, unsigned flags);
/* A ring of 64-bit object addresses of tracked mempool mp (created with
 * FH_MEMPOOL_F_TRACK): enqueue marks each object in transit at its slot,
 * dequeue attributes it to the dequeuing thread, and a dead process's
 * unfinished call gives its objects back to mp (see mempool.h,
 * "Ownership").  NULL with errno as fh_ring_create, or EINVAL (mp not a
 * tracked pool). */
struct fh_mempool;
FH_API struct fh_ring *fh_ring_create_for(const char *name, unsigned count,
                                          unsigned flags,
                                          struct fh_mempool *mp);
/* NULL with errno ENOENT: no such ring, or its creator has not finished. */
FH_API struct fh_ring *fh_ring_lookup(const char *name);

/* Waiting (see "Waiting" above; ring.c).  timeout_ns < 0 waits as long as
 * it takes, 0 does not wait, > 0 waits at most that long (CLOCK_MONOTONIC).
 * The calls use the mode the ring was created with, like
 * fh_ring_enqueue_bulk.  They return the number of elements moved (> 0; 0
 * only for n == 0) or a negative errno:
 *   -ETIMEDOUT  not enough room / elements within the timeout (nothing
 *               moved; with timeout_ns == 0: not enough right now)
 *   -EINTR      a signal handler ran while it slept; nothing moved, call
 *               again with what is left of the timeout
 *   -EINVAL     n > capacity (a bulk call that could never succeed), or
 *               n > INT_MAX
 *   -EIDRM      the ring was destroyed while the call waited (see
 *               "Waiting"); nothing moved
 * bulk waits until all n fit (are there); burst until at least one does. */
FH_API int fh_ring_enqueue_bulk_timed(struct fh_ring *r, const void *objs,
                                      unsigned n, unsigned *free_space,
                                      int64_t timeout_ns);
FH_API int fh_ring_enqueue_burst_timed(struct fh_ring *r, const void *objs,
                                       unsigned n, unsigned *free_space,
                                       int64_t timeout_ns);
FH_API int fh_ring_dequeue_bulk_timed(struct fh_ring *r, void *objs,
                                      unsigned n, unsigned *available,
                                      int64_t timeout_ns);
FH_API int fh_ring_dequeue_burst_timed(struct fh_ring *r, void *objs,
                                       unsigned n, unsigned *available,
                                       int64_t timeout_ns);
/* Sleep until at least n elements (fh_ring_wait_elements) or n free slots
 * (fh_ring_wait_room) are there, without taking them: 0, or -ETIMEDOUT,
 * -EINTR, -EINVAL (n > capacity), -EIDRM (destroyed meanwhile).  With several consumers (producers) what
 * was there may be gone by the time the caller acts: the *_timed calls
 * loop on this. */
FH_API int fh_ring_wait_elements(struct fh_ring *r, unsigned n,
                                 int64_t timeout_ns);
FH_API int fh_ring_wait_room(struct fh_ring *r, unsigned n,
                             int64_t timeout_ns);
/* Threads registered as waiting for elements (consumers) and for room
 * (producers), in a waiter slot: asleep, or inside a timed call between
 * two tries; a snapshot, for tests and monitoring. */
FH_API unsigned fh_ring_waiting_consumers(const struct fh_ring *r);
FH_API unsigned fh_ring_waiting_producers(const struct fh_ring *r);
/* Free the waiter slots of threads that no longer exist; how many.  Wakers
 * do this by themselves when a wake-up finds nobody asleep. */
FH_API unsigned fh_ring_reclaim_waiters(struct fh_ring *r);
/* A waiter that cannot trust a wake-up (see "Waiting") re-checks this
 * often, in nanoseconds. */
#define FH_RING_POLL_NS 1000000
/* How long a destroy waits for the threads waiting on the ring to leave,
 * and how often it wakes them meanwhile (see "Waiting"), in nanoseconds. */
#define FH_RING_DRAIN_NS 2000000000
#define FH_RING_DRAIN_STEP_NS 100000
/* The waker's slow path (ring.c): wake the threads asleep on ht->tail.
 * Cold: the compiler lays the inline fast path out for the case where
 * nobody waits and keeps the call off it. */
FH_API __attribute__((cold)) void fh__ring_wake(struct fh_ring_headtail *ht);
/* Register this process for the waiters' barrier as fh_ring_lookup does,
 * for code that embeds a ring (mempool.c's lookup). */
FH_API void fh__ring_register(struct fh_ring *r);

/* A thread's reservation record (see "A process that dies mid-call"): one
 * cache line of the arena's table (laid out after the memzone directory),
 * written only by its thread, read by recoverers. */
struct fh__ring_rec {
    _Atomic int32_t tid;     /* owning thread; 0: free */
    _Atomic uint32_t n;      /* slots claimed (or being claimed); 0: none */
    _Atomic uint32_t start;  /* the first of them, a free-running index */
    _Atomic uint32_t side;   /* 0 producers, 1 consumers */
    _Atomic uint64_t ring;   /* the ring's address */
    /* The ring this thread waits on without a waiter slot (see "Waiting"),
     * or 0; written only by its thread. */
    _Atomic uint64_t wait_ring;
    char pad[32];
};
#define FH_RING_RECORDS 1024
/* This thread's record; NULL when none can be had (no arena, table full).
 * Claimed on first use, again after fork (ring.c). */
FH_API __attribute__((cold)) struct fh__ring_rec *fh__ring_rec(void);
/* This thread's record once claimed, else NULL (cleared in the child of
 * a fork): read inline by every multi-side call, initial-exec so that the
 * read is one %fs-relative load wherever this header is compiled. */
FH_API extern __thread struct fh__ring_rec *fh__ring_t_rec
    __attribute__((tls_model("initial-exec")));
/* A multi-side caller has waited long for the tail to reach old_val: look
 * for a dead owner of the slots at the tail (ring.c). */
FH_API __attribute__((cold)) void fh__ring_stuck(struct fh_ring *r,
                                                 struct fh_ring_headtail *ht,
                                                 uint32_t old_val);
/* A single-side call found head != tail: the previous call died between
 * claiming and publishing.  Give its slots up; returns where this call
 * starts (ring.c). */
FH_API __attribute__((cold)) uint32_t
fh__ring_single_restart(struct fh_ring *r, struct fh_ring_headtail *ht);

/* What fh__ring_move_head reports in *avail when a consumer finds holes
 * left by dead producers: the dequeue is then done by fh__ring_dequeue_holes
 * (ring.c), which claims across holes and copies only real elements. */
#define FH__RING_HOLES_PENDING UINT32_MAX
FH_API __attribute__((cold)) unsigned
fh__ring_dequeue_holes(struct fh_ring *r, void *objs, unsigned n, int behavior,
                       unsigned *available);

/* Recover both sides of r from dead callers (see "A process that dies
 * mid-call"): returns the slots given up by this call.  Also frees the
 * reservation records of dead threads that hold nothing any more. */
FH_API unsigned fh_ring_recover(struct fh_ring *r);
/* Rings bound to a mempool (fh_ring_create_for): attribute the n objects
 * just copied at head to their new holder, side 0 (enqueue: in transit in
 * this ring, at their slot) or 1 (dequeue: this thread).  ring.c passes it
 * to mempool.c's code (ring_internal.h). */
FH_API void fh__ring_track(struct fh_ring *r, const void *objs, unsigned n,
                           uint32_t head, int side);
/* Slots given up so far: after unfinished enqueues (which == 0), dequeues
 * (which == 1), or both (which == 2). */
FH_API uint64_t fh_ring_lost(const struct fh_ring *r, int which);

/* Everything below is inline unless FH_RING_BUILD is defined (ring.c). */
#ifdef FH_RING_BUILD
#define FH_RING_FN FH_API
#else
#define FH_RING_FN static inline
#endif

enum { FH__RING_FIXED = 0, FH__RING_VARIABLE = 1 };

/* The fast path's pieces are inlined whatever the compiler's size limits
 * (as DPDK's __rte_always_inline does): each call site then folds its
 * constant mode and behaviour away.  Left to itself, GCC keeps the claim
 * out of line once the multi side's reservation record is in it. */
#define FH__RING_INLINE static inline __attribute__((always_inline))

static __attribute__((noinline, cold)) void fh__ring_yield(void)
{
    sched_yield();
}

/* Spin politely; a spinner that has waited long yields its CPU, because the
 * process it waits for may be descheduled on an oversubscribed machine. */
static inline void fh__ring_pause(unsigned *spins)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
    if (__builtin_expect(++*spins >= 1024, 0)) {
        *spins = 0;
        fh__ring_yield();
    }
}

/* The call that used rec is over (published, or claimed nothing). */
FH__RING_INLINE void fh__ring_release_rec(struct fh_ring *r,
                                        struct fh__ring_rec *rec)
{
    if (__builtin_expect(rec != NULL, 1))
        /* Release: our slot accesses are done before a recoverer can see
         * the record free (it no longer covers anything). */
        atomic_store_explicit(&rec->n, 0, memory_order_release);
    else
        /* Release: as above, for a ring recoverers skipped for us. */
        atomic_fetch_sub_explicit(&r->unrecorded, 1, memory_order_release);
}

/*
 * Claim up to n slots for one side: `self` is that side's head/tail (prod
 * for producers, cons for consumers), `other` the other side's.  What the
 * side may take is base + other->tail - self->head: the free slots for a
 * producer (base = capacity), the filled ones for a consumer (base = 0).
 * Sets *old_head, *new_head and *avail (what was there to take); returns
 * how many were claimed (0 or n for FH__RING_FIXED).  `single`: this call
 * is the side's only one at a time (sp/sc); `exact`: the caller wants
 * *avail exact (it asked for free_space/available).
 */
FH__RING_INLINE uint32_t fh__ring_move_head(struct fh_ring *r,
                                          struct fh_ring_headtail *self,
                                          struct fh_ring_headtail *other,
                                          uint32_t base, int single,
                                          uint32_t n, int behavior, int exact,
                                          uint32_t *old_head,
                                          uint32_t *new_head,
                                          uint32_t *avail,
                                          struct fh__ring_rec **recp)
{
    const uint32_t max = n;
    const uint32_t cached = self->single;   /* ring created SP (SC) */
    struct fh__ring_rec *rec;
    int success;

    if (single && cached) {
        /* Relaxed: this side's one process is the only writer of its head
         * and tail.  A call starts from the tail: head != tail means the
         * previous call died between claiming and publishing. */
        *old_head = atomic_load_explicit(&self->tail, memory_order_relaxed);
        if (__builtin_expect(
                atomic_load_explicit(&self->head, memory_order_relaxed) !=
                *old_head, 0))
            *old_head = fh__ring_single_restart(r, self);
        /* Acquire: the figure, as in the loop below (written by this
         * side's one process, or by a multi-side call on this ring). */
        uint32_t tail = atomic_load_explicit(&self->other_tail,
                                             memory_order_acquire);
        *avail = base + tail - *old_head;
        /* Read the real tail when the cached one shows too little, is
         * impossible, or the caller wants the exact figure. */
        if (exact || *avail < n || *avail > r->capacity) {
            /* Order the head load before the tail load (below). */
            atomic_thread_fence(memory_order_acquire);
            /* Acquire pairs with the other side's release store of its
             * tail in fh__ring_update_tail, as in the loop below. */
            tail = atomic_load_explicit(&other->tail, memory_order_acquire);
            /* Relaxed: as in the loop below. */
            if (other == &r->prod && __builtin_expect(
                    atomic_load_explicit(&other->holes, memory_order_relaxed)
                    != 0, 0)) {
                *avail = FH__RING_HOLES_PENDING;
                return 0;
            }
            /* Release: as in the loop below. */
            atomic_store_explicit(&self->other_tail, tail, memory_order_release);
            *avail = base + tail - *old_head;
        }
        if (n > *avail)
            n = behavior == FH__RING_FIXED ? 0 : *avail;
        if (n == 0)
            return 0;
        *new_head = *old_head + n;
        /* Relaxed: the single process of this side is the only writer and
         * reader of self->head. */
        atomic_store_explicit(&self->head, *new_head, memory_order_relaxed);
        return n;
    }
    rec = fh__ring_t_rec;
    if (__builtin_expect(rec == NULL, 0))
        rec = fh__ring_rec();
    *recp = rec;
    if (__builtin_expect(rec != NULL, 1)) {
        /* Relaxed: our own record; the CAS below (release) publishes these
         * stores to any recoverer that sees the head it moved. */
        atomic_store_explicit(&rec->ring, (uint64_t)(uintptr_t)r,
                              memory_order_relaxed);
        atomic_store_explicit(&rec->side, self == &r->cons,
                              memory_order_relaxed);
    } else {
        /* Relaxed counter: recoverers skip the ring while it is nonzero;
         * the CAS below orders it before our claim as for rec. */
        atomic_fetch_add_explicit(&r->unrecorded, 1, memory_order_relaxed);
    }
    /* Relaxed: only a starting guess; the CAS below checks it (single: we
     * are the only writer of self->head). */
    *old_head = atomic_load_explicit(&self->head, memory_order_relaxed);
    do {
        uint32_t tail;

        n = max;
        /* Order the head load before the other side's tail load, as
         * DPDK's C11 ring does ("ensure the head is read before tail"): a
         * weakly ordered CPU could otherwise pair a tail with an older
         * head. */
        atomic_thread_fence(memory_order_acquire);
        /* First the other side's tail as this side last read it (see
         * "Beyond rte_ring"): it lags the real one, so the room (the
         * elements) it shows are there.  Acquire pairs with the release
         * store below by whichever caller of this side wrote it, which
         * had acquired the value from other->tail: the other side's slot
         * accesses up to it are ordered before ours through that caller. */
        const uint32_t fig = atomic_load_explicit(&self->other_tail,
                                                  memory_order_acquire);
        tail = fig;
        *avail = base + tail - *old_head;
        if (exact || *avail < n || *avail > r->capacity) {
            /* Acquire pairs with the other side's release store of its
             * tail in fh__ring_update_tail: a producer sees the consumers'
             * reads of the slots it is about to overwrite complete, a
             * consumer sees the producers' writes of the slots it reads. */
            tail = atomic_load_explicit(&other->tail, memory_order_acquire);
            /* Relaxed: a hole is recorded before the tail that passes it
             * is stored (release), so the acquire above makes it visible.
             * Only consumers look (producers have no holes to skip), and
             * the test of the side comes first so that producers do not
             * load the word at all: an atomic load is not left out even
             * when unused.  The figure is stored only when no hole is
             * pending, so a figure never covers one. */
            if (other == &r->prod && __builtin_expect(
                    atomic_load_explicit(&other->holes, memory_order_relaxed)
                    != 0, 0)) {
                fh__ring_release_rec(r, rec);
                *avail = FH__RING_HOLES_PENDING;
                return 0;
            }
            /* A CAS from the figure this call read rather than a store:
             * a caller stalled between its read of the tail and here (a
             * stopped process) cannot put back a figure that others have
             * moved past since (see "Beyond rte_ring").  Release on
             * success: pairs with the acquire load above by this side's
             * later callers.  Relaxed on failure: another caller stored a
             * figure of its own, which serves as well. */
            if (tail != fig) {
                uint32_t expect = fig;
                atomic_compare_exchange_strong_explicit(
                    &self->other_tail, &expect, tail,
                    memory_order_release, memory_order_relaxed);
            }
            *avail = base + tail - *old_head;
        }
        /* Unsigned wrap-around makes this right across index overflow; it
         * is only ever too large when old_head is stale, and then the CAS
         * fails. */
        *avail = base + tail - *old_head;
        if (n > *avail)
            n = behavior == FH__RING_FIXED ? 0 : *avail;
        if (n == 0) {
            fh__ring_release_rec(r, rec);
            return 0;
        }
        *new_head = *old_head + n;
        if (rec) {
            /* Relaxed: published by the CAS (release) below. */
            atomic_store_explicit(&rec->start, *old_head, memory_order_relaxed);
            atomic_store_explicit(&rec->n, n, memory_order_relaxed);
        }
        if (single) {
            /* Relaxed: the single process of this side is the only writer
             * and reader of self->head. */
            atomic_store_explicit(&self->head, *new_head, memory_order_relaxed);
            success = 1;
        } else {
            /* Release on success: our reservation record (above) is
             * visible to a recoverer that acquires this head or a later
             * one (a release sequence: later CASes continue it).  Slots
             * themselves are published through self->tail (release) in
             * fh__ring_update_tail.  Relaxed on failure: we retry. */
            success = atomic_compare_exchange_weak_explicit(
                &self->head, old_head, *new_head,
                memory_order_release, memory_order_relaxed);
        }
    } while (!success);
    return n;
}

/* Yields of a waiting multi-side caller between looks for a dead owner
 * of the slots it waits for (fh__ring_stuck). */
#define FH__RING_STUCK_YIELDS 16u

/* Publish [old_val, new_val) of one side. */
FH__RING_INLINE void fh__ring_update_tail(struct fh_ring *r,
                                        struct fh_ring_headtail *ht,
                                        uint32_t old_val, uint32_t new_val,
                                        int multi)
{
    if (multi) {
        unsigned spins = 0, yields = 0;
        /* Those that claimed slots before us publish first.  Acquire pairs
         * with their release store below (or a recoverer's CAS): their
         * slot accesses then happen-before our release, so the other side,
         * acquiring our tail, is ordered after theirs too (a plain store of
         * ours would otherwise end their release sequence). */
        while (atomic_load_explicit(&ht->tail, memory_order_acquire) != old_val) {
            fh__ring_pause(&spins);
            if (__builtin_expect(spins == 0, 0) &&
                ++yields % FH__RING_STUCK_YIELDS == 0)
                fh__ring_stuck(r, ht, old_val);
        }
    }
    /* Release pairs with the other side's acquire load of this tail in
     * fh__ring_move_head: our slot writes (enqueue) or slot
     * reads (dequeue) are complete before it can see the new tail. */
    atomic_store_explicit(&ht->tail, new_val, memory_order_release);
#ifndef FH__RING_BENCH_NO_WAKEUP
    /* Compiler barrier only: the light half of the asymmetric fence of
     * "Waiting" (the waiter's membarrier is the heavy half, and makes this
     * a full barrier whenever it matters), so the load below stays after
     * the tail store in program order. */
    atomic_signal_fence(memory_order_seq_cst);
    /* Relaxed: a waiter's bit is made visible by its membarrier, see
     * "Waiting"; the wake itself orders through the futex word. */
    if (__builtin_expect(
            atomic_load_explicit(&ht->waiters, memory_order_relaxed) != 0, 0))
        fh__ring_wake(ht);
#endif
}

/* The copies other than 64-bit elements without wrap-around, out of the
 * inline path: cold and not inlined, so the compiler does not save
 * registers for their memcpy calls on every call of the fast path. */
static __attribute__((noinline, cold)) void
fh__ring_copy_in_slow(struct fh_ring *r, uint32_t idx, const void *objs,
                      uint32_t n)
{
    const uint32_t esize = r->elem_size;
    unsigned char *dst = r->slots;
    const unsigned char *src = (const unsigned char *)objs;

    if (idx + n <= r->size) {
        memcpy(dst + (size_t)idx * esize, src, (size_t)n * esize);
    } else {
        const uint32_t first = r->size - idx;
        memcpy(dst + (size_t)idx * esize, src, (size_t)first * esize);
        memcpy(dst, src + (size_t)first * esize, (size_t)(n - first) * esize);
    }
}

static __attribute__((noinline, cold)) void
fh__ring_copy_out_slow(const struct fh_ring *r, uint32_t idx, void *objs,
                       uint32_t n)
{
    const uint32_t esize = r->elem_size;
    const unsigned char *src = r->slots;
    unsigned char *dst = (unsigned char *)objs;

    if (idx + n <= r->size) {
        memcpy(dst, src + (size_t)idx * esize, (size_t)n * esize);
    } else {
        const uint32_t first = r->size - idx;
        memcpy(dst, src + (size_t)idx * esize, (size_t)first * esize);
        memcpy(dst + (size_t)first * esize, src, (size_t)(n - first) * esize);
    }
}

/* Copy n 64-bit elements, four at a time while they last, one 8-byte move
 * each: 16-byte vector moves measured slower on two cores (benchmarks/
 * shm_c/ring_ab.c); DPDK's inline copy compiles to 8-byte moves too
 * (checked in ring_ab's build).  memcpy keeps a caller's unaligned
 * buffer correct and compiles to plain moves. */
FH__RING_INLINE void fh__ring_copy64(unsigned char *dst,
                                     const unsigned char *src, uint32_t n)
{
    uint32_t i = 0;

    for (; i + 4 <= n; i += 4) {
        memcpy(dst + (size_t)i * 8, src + (size_t)i * 8, 8);
        memcpy(dst + (size_t)i * 8 + 8, src + (size_t)i * 8 + 8, 8);
        memcpy(dst + (size_t)i * 8 + 16, src + (size_t)i * 8 + 16, 8);
        memcpy(dst + (size_t)i * 8 + 24, src + (size_t)i * 8 + 24, 8);
    }
    for (; i < n; i++)
        memcpy(dst + (size_t)i * 8, src + (size_t)i * 8, 8);
}

FH__RING_INLINE void fh__ring_copy_in(struct fh_ring *r, uint32_t head,
                                    const void *objs, uint32_t n)
{
    const uint32_t idx = head & r->mask;
    unsigned char *dst = r->slots;
    const unsigned char *src = (const unsigned char *)objs;

    if (__builtin_expect(r->elem_size == 8 && idx + n <= r->size, 1)) {
        /* The common case, inlined (fh__ring_copy64). */
        fh__ring_copy64(dst + (size_t)idx * 8, src, n);
    } else {
        fh__ring_copy_in_slow(r, idx, objs, n);
    }
}

FH__RING_INLINE void fh__ring_copy_out(const struct fh_ring *r, uint32_t head,
                                     void *objs, uint32_t n)
{
    const uint32_t idx = head & r->mask;
    const unsigned char *src = r->slots;
    unsigned char *dst = (unsigned char *)objs;

    if (__builtin_expect(r->elem_size == 8 && idx + n <= r->size, 1)) {
        fh__ring_copy64(dst, src + (size_t)idx * 8, n);
    } else {
        fh__ring_copy_out_slow(r, idx, objs, n);
    }
}

FH__RING_INLINE unsigned fh__ring_do_enqueue(struct fh_ring *r, const void *objs,
                                           unsigned n, int behavior, int is_sp,
                                           unsigned *free_space)
{
    uint32_t head, next, free_entries;
    struct fh__ring_rec *rec = NULL;

    n = fh__ring_move_head(r, &r->prod, &r->cons, r->capacity, is_sp, n,
                           behavior, free_space != NULL, &head, &next,
                           &free_entries, &rec);
    if (n) {
        fh__ring_copy_in(r, head, objs, n);
        if (__builtin_expect(r->pool != 0 && (r->pool & 1) == 0, 0))
            fh__ring_track(r, objs, n, head, 0);
        fh__ring_update_tail(r, &r->prod, head, next, !is_sp);
        /* The single path of fh__ring_move_head uses no record. */
        if (!(is_sp && r->prod.single))
            fh__ring_release_rec(r, rec);
    }
    if (free_space)
        *free_space = free_entries - n;
    return n;
}

FH__RING_INLINE unsigned fh__ring_do_dequeue(struct fh_ring *r, void *objs,
                                           unsigned n, int behavior, int is_sc,
                                           unsigned *available)
{
    uint32_t head, next, entries;
    struct fh__ring_rec *rec = NULL;

    const unsigned want = n;

    n = fh__ring_move_head(r, &r->cons, &r->prod, 0, is_sc, n, behavior,
                           available != NULL, &head, &next, &entries, &rec);
    if (__builtin_expect(n == 0 && entries == FH__RING_HOLES_PENDING, 0))
        return fh__ring_dequeue_holes(r, objs, want, behavior, available);
    if (n) {
        fh__ring_copy_out(r, head, objs, n);
        if (__builtin_expect(r->pool != 0 && (r->pool & 1) == 0, 0))
            fh__ring_track(r, objs, n, head, 1);
        fh__ring_update_tail(r, &r->cons, head, next, !is_sc);
        if (!(is_sc && r->cons.single))
            fh__ring_release_rec(r, rec);
    }
    if (available)
        *available = entries - n;
    return n;
}

/* Enqueue n elements: all (bulk) or as many as fit (burst).  Returns the
 * number enqueued; *free_space (if not NULL) gets the free slots left. */
FH_RING_FN unsigned fh_ring_mp_enqueue_bulk(struct fh_ring *r, const void *objs,
                                            unsigned n, unsigned *free_space)
{ return fh__ring_do_enqueue(r, objs, n, FH__RING_FIXED, 0, free_space); }

FH_RING_FN unsigned fh_ring_sp_enqueue_bulk(struct fh_ring *r, const void *objs,
                                            unsigned n, unsigned *free_space)
{ return fh__ring_do_enqueue(r, objs, n, FH__RING_FIXED, 1, free_space); }

FH_RING_FN unsigned fh_ring_enqueue_bulk(struct fh_ring *r, const void *objs,
                                         unsigned n, unsigned *free_space)
{ return fh__ring_do_enqueue(r, objs, n, FH__RING_FIXED, (int)r->prod.single,
                             free_space); }

FH_RING_FN unsigned fh_ring_mp_enqueue_burst(struct fh_ring *r, const void *objs,
                                             unsigned n, unsigned *free_space)
{ return fh__ring_do_enqueue(r, objs, n, FH__RING_VARIABLE, 0, free_space); }

FH_RING_FN unsigned fh_ring_sp_enqueue_burst(struct fh_ring *r, const void *objs,
                                             unsigned n, unsigned *free_space)
{ return fh__ring_do_enqueue(r, objs, n, FH__RING_VARIABLE, 1, free_space); }

FH_RING_FN unsigned fh_ring_enqueue_burst(struct fh_ring *r, const void *objs,
                                          unsigned n, unsigned *free_space)
{ return fh__ring_do_enqueue(r, objs, n, FH__RING_VARIABLE,
                             (int)r->prod.single, free_space); }

/* Dequeue up to n elements into objs: all (bulk) or as many as there are
 * (burst).  Returns the number dequeued; *available (if not NULL) gets the
 * elements left. */
FH_RING_FN unsigned fh_ring_mc_dequeue_bulk(struct fh_ring *r, void *objs,
                                            unsigned n, unsigned *available)
{ return fh__ring_do_dequeue(r, objs, n, FH__RING_FIXED, 0, available); }

FH_RING_FN unsigned fh_ring_sc_dequeue_bulk(struct fh_ring *r, void *objs,
                                            unsigned n, unsigned *available)
{ return fh__ring_do_dequeue(r, objs, n, FH__RING_FIXED, 1, available); }

FH_RING_FN unsigned fh_ring_dequeue_bulk(struct fh_ring *r, void *objs,
                                         unsigned n, unsigned *available)
{ return fh__ring_do_dequeue(r, objs, n, FH__RING_FIXED, (int)r->cons.single,
                             available); }

FH_RING_FN unsigned fh_ring_mc_dequeue_burst(struct fh_ring *r, void *objs,
                                             unsigned n, unsigned *available)
{ return fh__ring_do_dequeue(r, objs, n, FH__RING_VARIABLE, 0, available); }

FH_RING_FN unsigned fh_ring_sc_dequeue_burst(struct fh_ring *r, void *objs,
                                             unsigned n, unsigned *available)
{ return fh__ring_do_dequeue(r, objs, n, FH__RING_VARIABLE, 1, available); }

FH_RING_FN unsigned fh_ring_dequeue_burst(struct fh_ring *r, void *objs,
                                          unsigned n, unsigned *available)
{ return fh__ring_do_dequeue(r, objs, n, FH__RING_VARIABLE,
                             (int)r->cons.single, available); }

/* One element: 0, or -ENOBUFS (full) / -ENOENT (empty). */
FH_RING_FN int fh_ring_mp_enqueue(struct fh_ring *r, const void *obj)
{ return fh_ring_mp_enqueue_bulk(r, obj, 1, NULL) ? 0 : -ENOBUFS; }

FH_RING_FN int fh_ring_sp_enqueue(struct fh_ring *r, const void *obj)
{ return fh_ring_sp_enqueue_bulk(r, obj, 1, NULL) ? 0 : -ENOBUFS; }

FH_RING_FN int fh_ring_enqueue(struct fh_ring *r, const void *obj)
{ return fh_ring_enqueue_bulk(r, obj, 1, NULL) ? 0 : -ENOBUFS; }

FH_RING_FN int fh_ring_mc_dequeue(struct fh_ring *r, void *obj)
{ return fh_ring_mc_dequeue_bulk(r, obj, 1, NULL) ? 0 : -ENOENT; }

FH_RING_FN int fh_ring_sc_dequeue(struct fh_ring *r, void *obj)
{ return fh_ring_sc_dequeue_bulk(r, obj, 1, NULL) ? 0 : -ENOENT; }

FH_RING_FN int fh_ring_dequeue(struct fh_ring *r, void *obj)
{ return fh_ring_dequeue_bulk(r, obj, 1, NULL) ? 0 : -ENOENT; }

/* A 64-bit value by value, for callers (Python) that would otherwise box
 * it; the ring's elements must be 8 bytes (-EINVAL otherwise). */
FH_RING_FN int fh_ring_enqueue_u64(struct fh_ring *r, uint64_t v)
{
    if (r->elem_size != 8)
        return -EINVAL;
    return fh_ring_enqueue_bulk(r, &v, 1, NULL) ? 0 : -ENOBUFS;
}

FH_RING_FN int fh_ring_dequeue_u64(struct fh_ring *r, uint64_t *v)
{
    if (r->elem_size != 8)
        return -EINVAL;
    return fh_ring_dequeue_bulk(r, v, 1, NULL) ? 0 : -ENOENT;
}

/* Queries.  Under concurrent use they are snapshots, as in DPDK. */
FH_RING_FN unsigned fh_ring_count(const struct fh_ring *r)
{
    /* Relaxed: a statistic.  prod.tail's writers are the producers,
     * cons.tail's the consumers; reading cons.tail first keeps the
     * difference from going negative, and the clamp covers the rest. */
    uint32_t cons_tail = atomic_load_explicit(&r->cons.tail, memory_order_relaxed);
    uint32_t prod_tail = atomic_load_explicit(&r->prod.tail, memory_order_relaxed);
    uint32_t count = prod_tail - cons_tail;
    return count > r->capacity ? r->capacity : count;
}

FH_RING_FN unsigned fh_ring_free_count(const struct fh_ring *r)
{ return r->capacity - fh_ring_count(r); }

FH_RING_FN int fh_ring_full(const struct fh_ring *r)
{ return fh_ring_free_count(r) == 0; }

FH_RING_FN int fh_ring_empty(const struct fh_ring *r)
{ return fh_ring_count(r) == 0; }

FH_RING_FN unsigned fh_ring_capacity(const struct fh_ring *r)
{ return r->capacity; }

FH_RING_FN unsigned fh_ring_elem_size(const struct fh_ring *r)
{ return r->elem_size; }

FH_RING_FN unsigned fh_ring_flags(const struct fh_ring *r)
{ return r->flags; }

FH_RING_FN const char *fh_ring_name(const struct fh_ring *r)
{ return r->name; }

/* Destroy ring r (rte_ring_free): its name can be created again at once,
 * lookups fail from now on, and its memory goes back to the arena.  Nobody
 * may use r afterwards (memzone.h: what a process still holding it gets).
 * Threads waiting on r in a timed call or a wait are woken and return
 * -EIDRM, and the memory is freed only once they have left ("Waiting").
 * 0, or -1 with errno ENOENT (not a ring that exists), EINVAL, ETIMEDOUT
 * (a waiter still inside after FH_RING_DRAIN_NS: nothing destroyed). */
FH_API int fh_ring_destroy(struct fh_ring *r);

#endif /* FORKHOST_RING_H */
