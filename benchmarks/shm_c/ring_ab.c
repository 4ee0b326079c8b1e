/*
 * ring_ab.c - forkhost's ring and DPDK's rte_ring in the same loops, in
 * the same process, batch by batch, so that a virtual machine whose two
 * CPUs the host moves about still gives a steady ratio.  Built by run.py
 * (--ring-ab) against libforkhost and, with -DWITH_DPDK, against DPDK
 * too (pkg-config libdpdk).  Run by hand, never by the tests; no
 * thresholds.
 *
 *     ring_ab [K]      (K: run case K alone, 0..7 in the output's order,
 *                       for profiling one case)
 *
 * The shape is DPDK's "two physical cores" test of ring_perf_autotest: a
 * producer thread pinned to CPU 0 enqueues n objects per call while a
 * consumer thread pinned to CPU 1 dequeues n per call, on a ring of 4096
 * pointer-sized slots; bulk calls retry until they move all n, burst calls
 * move what they can until the batch is through.  Each mode gets a ring
 * created in that mode on each side (SP/SC flags, or 0 for MP/MC) and the
 * calls named for the mode.  Both rings live on normal pages.
 *
 * Why interleaved: the cost of a cache line moving between the two CPUs
 * changes by about 3x, for seconds at a time, when the host moves a
 * virtual CPU (measured: the same binary gives 14 or 45 cycles per object
 * from one run to the next).  Two programs run one after the other can
 * land in different phases; here every batch of BATCH calls on our ring is
 * followed by the same batch on DPDK's (DPDK's first in odd repetitions),
 * the two threads meeting at a barrier before each, so both sides see the
 * same phases.  Each case is
 * repeated ROUNDS times; a batch's figure is its fastest repetition of
 * (producer cycles + consumer cycles) / objects, which is what DPDK's test
 * prints, and a case's figure the mean over its batches.
 *
 * Output, one line per case and side: "SIDE MODE KIND N CYCLES" (SIDE fh
 * or dpdk; cycles per object, enqueue + dequeue).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkhost/arena.h"
#include "forkhost/ring.h"
#ifdef WITH_DPDK
#include <rte_ring.h>
#include "ab_eal.h"
#define NSIDE 2
#else
#define NSIDE 1
#endif

#include "tsc.h"

#define SLOTS 4096u           /* DPDK's RING_SIZE in test_ring_perf.c */
#define BATCH 4096u           /* calls per timed batch */
#define NBATCH 16u            /* batches per repetition */
#define ROUNDS 15             /* repetitions of each case */

enum { FH, DPDK };
enum { SPSC, MPMC };
enum { BULK, BURST };
static const unsigned sizes[] = {8, 32};
#define NSIZE 2
#define NCASE (2 * 2 * NSIZE)

static struct fh_ring *fh_rings[2];
#ifdef WITH_DPDK
static struct rte_ring *dpdk_rings[2];
#endif
/* Written by the producer (thread 0) and the consumer (thread 1), each
 * only its own half, read by main after joining both. */
static uint64_t cycles[NSIDE][NCASE][ROUNDS][NBATCH][2];
static _Atomic uint32_t arrived;
static int only = -1;         /* argv[1]: the one case to run, or -1 */

/* Both threads call this before each batch; round counts from 1. */
static void barrier(uint32_t round)
{
    /* Acq_rel / acquire: the two threads leave together; nothing else
     * depends on it. */
    atomic_fetch_add_explicit(&arrived, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&arrived, memory_order_acquire) < 2 * round)
        cpu_pause();
}

/* The loops, once per ring type: R is the ring pointer, ENQ/DEQ the bulk
 * and burst calls of the mode. */
#define BATCH_LOOP(thread, kind, n, objs, BULK_ENQ, BULK_DEQ, BURST_ENQ, BURST_DEQ) \
    do {                                                                    \
        if ((kind) == BULK) {                                               \
            for (unsigned i_ = 0; i_ < BATCH; i_++) {                      \
                if ((thread) == 0) {                                        \
                    while (BULK_ENQ == 0)                                   \
                        cpu_pause();                                        \
                } else {                                                    \
                    while (BULK_DEQ == 0)                                   \
                        cpu_pause();                                        \
                }                                                           \
            }                                                               \
        } else {                                                            \
            uint64_t done_ = 0, total_ = (uint64_t)BATCH * (n);             \
            while (done_ < total_) {                                        \
                unsigned want = total_ - done_ < (n) ? (unsigned)(total_ - done_) \
                                                     : (n);                 \
                unsigned got_ = (thread) == 0 ? BURST_ENQ : BURST_DEQ;      \
                if (got_ == 0)                                              \
                    cpu_pause();                                            \
                done_ += got_;                                              \
            }                                                               \
        }                                                                   \
    } while (0)

/* Both modes' loops over one library's calls: P is the prefix the two
 * libraries share the rest of the names under (fh_ring_..., rte_ring_...),
 * r the mode's ring. */
#define MODE_LOOPS(P, r)                                                    \
    do {                                                                    \
        if (mode == SPSC)                                                   \
            BATCH_LOOP(thread, kind, n, objs,                               \
                       P##_ring_sp_enqueue_bulk(r, objs, n, NULL),          \
                       P##_ring_sc_dequeue_bulk(r, objs, n, NULL),          \
                       P##_ring_sp_enqueue_burst(r, objs, want, NULL),      \
                       P##_ring_sc_dequeue_burst(r, objs, want, NULL));     \
        else                                                                \
            BATCH_LOOP(thread, kind, n, objs,                               \
                       P##_ring_mp_enqueue_bulk(r, objs, n, NULL),          \
                       P##_ring_mc_dequeue_bulk(r, objs, n, NULL),          \
                       P##_ring_mp_enqueue_burst(r, objs, want, NULL),      \
                       P##_ring_mc_dequeue_burst(r, objs, want, NULL));     \
    } while (0)

/* One batch on one side's ring; its cycles. */
static uint64_t batch(int side, int thread, int mode, int kind, unsigned n,
                      void **objs)
{
    uint64_t t0 = tsc();

    if (side == FH)
        MODE_LOOPS(fh, fh_rings[mode]);
#ifdef WITH_DPDK
    else
        MODE_LOOPS(rte, dpdk_rings[mode]);
#endif
    return tsc() - t0;
}

static void *thread_main(void *arg)
{
    int thread = (int)(intptr_t)arg;
    void *objs[32];
    uint32_t round = 0;
    cpu_set_t cpus;

    CPU_ZERO(&cpus);
    CPU_SET(thread, &cpus);
    if (pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus) != 0) {
        fprintf(stderr, "ring_ab: cannot pin to CPU %d\n", thread);
        exit(1);
    }
    for (int c = 0; c < NCASE; c++) {
        int mode = c / (2 * NSIZE), kind = (c / NSIZE) % 2;
        unsigned n = sizes[c % NSIZE];
        if (only >= 0 && c != only)
            continue;
        for (int rep = 0; rep < ROUNDS; rep++)
            for (unsigned b = 0; b < NBATCH; b++)
                for (int k = 0; k < NSIDE; k++) {
                    /* Which goes first alternates between repetitions. */
                    int side = rep % 2 ? NSIDE - 1 - k : k;
                    for (unsigned i = 0; i < 32; i++)
                        objs[i] = (void *)(uintptr_t)(i + 1);
                    barrier(++round);
                    cycles[side][c][rep][b][thread] =
                        batch(side, thread, mode, kind, n, objs);
                    /* The producer wrote i + 1 into slot i of every call:
                     * a torn or misplaced copy would show here (bulk calls
                     * move whole calls). */
                    if (thread == 1 && kind == BULK && objs[0] != (void *)1) {
                        fprintf(stderr, "ring_ab: consumer got %p, expected 0x1\n",
                                objs[0]);
                        exit(1);
                    }
                }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    static const char *mname[] = {"sp/sc", "mp/mc"}, *kname[] = {"bulk", "burst"};
    static const char *sname[] = {"fh", "dpdk"};
    pthread_t th[2];

    if (argc > 1)
        only = atoi(argv[1]);
    if (fh_arena_create(64u << 20, 0, "fh-ring-ab") < 0) {
        perror("ring_ab: fh_arena_create");
        return 1;
    }
    fh_rings[SPSC] = fh_ring_create("ab.spsc", SLOTS, 8,
                                    FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    fh_rings[MPMC] = fh_ring_create("ab.mpmc", SLOTS, 8, 0);
    if (!fh_rings[SPSC] || !fh_rings[MPMC]) {
        perror("ring_ab: fh_ring_create");
        return 1;
    }
#ifdef WITH_DPDK
    {
        if (ab_eal_init("ring_ab", "64", "0-1") < 0)
            return 1;
        dpdk_rings[SPSC] = rte_ring_create("ab.spsc", SLOTS, 0,
                                           RING_F_SP_ENQ | RING_F_SC_DEQ);
        dpdk_rings[MPMC] = rte_ring_create("ab.mpmc", SLOTS, 0, 0);
        if (!dpdk_rings[SPSC] || !dpdk_rings[MPMC]) {
            fprintf(stderr, "ring_ab: rte_ring_create failed\n");
            return 1;
        }
    }
#endif
    for (int t = 0; t < 2; t++)
        if (pthread_create(&th[t], NULL, thread_main, (void *)(intptr_t)t) != 0) {
            fprintf(stderr, "ring_ab: pthread_create failed\n");
            return 1;
        }
    for (int t = 0; t < 2; t++)
        pthread_join(th[t], NULL);

    for (int c = 0; c < NCASE; c++) {
        unsigned n = sizes[c % NSIZE];
        if (only >= 0 && c != only)
            continue;
        for (int side = 0; side < NSIDE; side++) {
            double sum = 0;
            for (unsigned b = 0; b < NBATCH; b++) {
                uint64_t best = UINT64_MAX;
                for (int rep = 0; rep < ROUNDS; rep++) {
                    uint64_t v = cycles[side][c][rep][b][0] +
                                 cycles[side][c][rep][b][1];
                    if (v < best)
                        best = v;
                }
                sum += (double)best / ((double)BATCH * n);
            }
            printf("%s %s %s %u %.2f\n", sname[side], mname[c / (2 * NSIZE)],
                   kname[(c / NSIZE) % 2], n, sum / NBATCH);
        }
    }
    return 0;
}
