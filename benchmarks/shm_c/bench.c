/*
 * bench.c - libforkhost's rings and hash tables in cycles per object, measured
 * the way DPDK's own ring_perf_autotest and hash_perf_autotest (22.11)
 * measure rte_ring and rte_hash, so that benchmarks/shm_c/run.py can put the
 * two side by side.  Run by hand, never by the tests; no thresholds.
 *
 *     bench [--no-huge] [--repeat N] [--shift S] [ring] [ring1] [hash] [wake]
 *           [heap]
 *
 * ring1: enqueue then dequeue in one process on one core (bench_ring1):
 * the calls' own cost, with and without the waiter check.
 * wake: the median wake-up latency of a consumer process asleep in
 * fh_ring_dequeue_bulk_timed after another process's enqueue (see
 * bench_wake).  Built with -DFH__RING_BENCH_NO_WAKEUP (run.py builds both),
 * the ring figures are those of the same code without the waiter check.
 *
 * ring, hash and heap select the parts (all when none is named); --repeat
 * runs the ring table N times (1..16) and reports each case's best run;
 * --shift sets the calls per ring case to 2^S (DPDK's 23 by default);
 * --no-huge keeps the arena off huge pages.
 *
 * Ring: DPDK's "two physical cores" test, but across two PROCESSES.  The
 * primary (this process) creates the arena, two rings of 4096 64-bit slots
 * (one created SP/SC for the sp/sc cases, one with flags 0 for mp/mc; see
 * bench_ring) and a control block, then forks a producer pinned to CPU 0
 * and a consumer pinned to CPU 1.  For each case both pass a barrier, each
 * times its own loop with rdtsc, and the figure is producer cycles/object +
 * consumer cycles/object, which is what DPDK prints (param1.spsc +
 * param2.spsc).  2^23 calls of n objects per side, as in DPDK; bulk calls
 * retry until they move all n, burst calls move what they can until the
 * total is through.
 *
 * Hash: hash_perf_autotest's shape for 16-byte keys, "with pushes" (keys
 * in any bucket), no data.  Its input exactly: KEYS_TO_ADD * ADD_PERCENT
 * = 393216 keys, key i the little-endian counter i, in an array with
 * DPDK's 64-byte stride, with the precomputed hash and position of each.
 * Its hash function: jhash (lookup3, which rte_jhash implements), given to
 * the table as a user function so that every hashing call goes through the
 * stored pointer, as rte_hash's does.  Its sequence: every key added once
 * and the table emptied (get_input_keys; here fh_hash_reset, there a
 * re-create, so that the timed adds find the memory mapped in both), the
 * timed adds (fh_hash_add_key, positions recorded) in the primary pinned
 * to CPU 0, ten shuffles of keys, hashes and positions, then in a
 * secondary forked after that (same CPU) 5 passes of each lookup: one key
 * per call, one key per call with the hash precomputed, bulk calls of 16
 * keys (BURST_SIZE) through fh_hash_lookup_bulk_ptrs, which takes key
 * pointers as rte_hash_lookup_bulk does, each result checked against the
 * recorded position.  The secondary finds the tables at the same
 * address and calls jhash through the pointer after one module check.
 * Beyond DPDK's test: adds into a table with the writer lock (set against
 * DPDK's "with locks" table), single lookups in a table using our
 * built-in CRC32C (no DPDK counterpart in the run), and bulk lookups of 16
 * through the packed-keys call (fh_hash_lookup_bulk, the one Python uses):
 * once over the keys packed beforehand, in the same shuffled order, as a
 * caller that holds packed keys has them, and once with the 16 keys
 * gathered from the 64-byte-stride array into a buffer inside the timing
 * (the caller's copy, timed).
 *
 * Heap: fh_malloc/fh_free in the loops of heap_loop.h (see there), which
 * heap_dpdk.c runs over rte_malloc/rte_free.
 *
 * Output: a header line, then whitespace-separated figures that run.py
 * parses: "ring MODE KIND N PRODUCER CONSUMER SUM MEDIAN WORST" (cycles per
 * object; the last two over --repeat runs), "ring1 MODE N CYCLES",
 * "wake MEDIAN P10 P90" (cycles), "hash NAME CYCLES" (cycles per
 * operation) and "heap KIND SIZE CYCLES" (cycles per malloc + free).
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "forkhost/arena.h"
#include "forkhost/hash.h"
#include "forkhost/heap.h"
#include "forkhost/memzone.h"
#include "forkhost/ring.h"

#include "tsc.h"

/* DPDK's RING_SIZE and iteration count in test_ring_perf.c. */
#define RING_SLOTS 4096u
#define RING_ITER_SHIFT 23
/* hash_perf_autotest's MAX_ENTRIES, ADD_PERCENT, NUM_LOOKUPS and
 * BURST_SIZE. */
#define HASH_ENTRIES (1u << 19)
#define HASH_KEYS (HASH_ENTRIES / 4 * 3)
#define HASH_KEY_LEN 16u
#define HASH_PASSES 5
#define HASH_BURST 16u
/* The arena: the ring and two tables of 2^19 keys fit with room to spare. */
#define ARENA_SIZE (256u << 20)

#define DIE(...) do {                                                       \
    fprintf(stderr, "bench: " __VA_ARGS__);                                 \
    fprintf(stderr, " (%s)\n", strerror(errno));                           \
    exit(1);                                                                \
} while (0)

enum { SPSC, MPMC };
enum { BULK, BURST };
static const unsigned sizes[] = {1, 8, 32};
#define NCASES (2 * 2 * 3)

/*
 * Shared by the primary and its two ring children, in a memzone.
 * arrived: both children add 1 at each barrier (written by both, atomic);
 * res[run][case][0] is written by the producer only, res[run][case][1] by
 * the consumer only, each before its next barrier; the primary reads them after
 * reaping both.
 */
/* Runs of the whole ring table (--repeat); the best run of each case is
 * reported, as run.py does with DPDK's figures. */
#define REPEAT_MAX 16

struct ctl {
    _Atomic uint32_t arrived;
    double res[REPEAT_MAX][NCASES][2];
    double hash[6];             /* lookup, with hash, bulk, crc32c, bulk
                                   packed, bulk packed in the loop */
};

static void pin(int cpu)
{
    cpu_set_t set;

    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        DIE("cannot pin to CPU %d", cpu);
}

/* Both ring children call this once per case; round counts from 1. */
static void barrier(struct ctl *c, uint32_t round)
{
    atomic_fetch_add_explicit(&c->arrived, 1, memory_order_acq_rel);
    while (atomic_load_explicit(&c->arrived, memory_order_acquire) < 2 * round)
        cpu_pause();
}

/* fork() for a benchmark child: it dies with the primary, so an
 * interrupted run never leaves a spinning process behind. */
static pid_t fork_child(void)
{
    pid_t parent = getpid(), pid;

    fflush(NULL);
    pid = fork();
    if (pid < 0)
        DIE("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(111);
    }
    return pid;
}

static int reap(pid_t pid)
{
    int st = -1;

    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

/* ------------------------------------------------------------------ ring */

/* Calls per side and case: 2^ring_shift (--shift). */
static unsigned ring_shift = RING_ITER_SHIFT;
static unsigned ring_repeat = 1;

static double produce(struct fh_ring *r, int mode, int kind, unsigned n)
{
    const uint64_t calls = 1ull << ring_shift, total = calls * n;
    uint64_t objs[32], t0, t1;

    for (unsigned i = 0; i < n; i++)
        objs[i] = i + 1;
    t0 = tsc();
    if (kind == BULK) {
        if (mode == SPSC) {
            for (uint64_t i = 0; i < calls; i++)
                while (fh_ring_sp_enqueue_bulk(r, objs, n, NULL) == 0)
                    cpu_pause();
        } else {
            for (uint64_t i = 0; i < calls; i++)
                while (fh_ring_mp_enqueue_bulk(r, objs, n, NULL) == 0)
                    cpu_pause();
        }
    } else {
        uint64_t done = 0;
        while (done < total) {
            unsigned want = total - done < n ? (unsigned)(total - done) : n;
            unsigned got = mode == SPSC
                ? fh_ring_sp_enqueue_burst(r, objs, want, NULL)
                : fh_ring_mp_enqueue_burst(r, objs, want, NULL);
            if (got == 0)
                cpu_pause();
            done += got;
        }
    }
    t1 = tsc();
    return (double)(t1 - t0) / (double)total;
}

static double consume(struct fh_ring *r, int mode, int kind, unsigned n)
{
    const uint64_t calls = 1ull << ring_shift, total = calls * n;
    uint64_t objs[32], t0, t1;

    t0 = tsc();
    if (kind == BULK) {
        if (mode == SPSC) {
            for (uint64_t i = 0; i < calls; i++)
                while (fh_ring_sc_dequeue_bulk(r, objs, n, NULL) == 0)
                    cpu_pause();
        } else {
            for (uint64_t i = 0; i < calls; i++)
                while (fh_ring_mc_dequeue_bulk(r, objs, n, NULL) == 0)
                    cpu_pause();
        }
    } else {
        uint64_t done = 0;
        while (done < total) {
            unsigned want = total - done < n ? (unsigned)(total - done) : n;
            unsigned got = mode == SPSC
                ? fh_ring_sc_dequeue_burst(r, objs, want, NULL)
                : fh_ring_mc_dequeue_burst(r, objs, want, NULL);
            if (got == 0)
                cpu_pause();
            done += got;
        }
    }
    t1 = tsc();
    /* The producer wrote i + 1 into slot i of every call: a torn or
     * misplaced copy would show here. */
    if (objs[0] != 1)
        fprintf(stderr, "bench: consumer got %llu, expected 1\n",
                (unsigned long long)objs[0]);
    return (double)(t1 - t0) / (double)total;
}

/* One ring child: role 0 produces on CPU 0, role 1 consumes on CPU 1.  It
 * runs every case in the same order as the other child and _exits. */
static void ring_child(struct ctl *c, struct fh_ring *rings[2], int role)
{
    uint32_t round = 0;

    pin(role);
    for (unsigned run = 0; run < ring_repeat; run++)
        for (int mode = SPSC; mode <= MPMC; mode++)
            for (int kind = BULK; kind <= BURST; kind++)
                for (unsigned s = 0; s < 3; s++) {
                    int k = (mode * 2 + kind) * 3 + (int)s;
                    barrier(c, ++round);
                    c->res[run][k][role] = role == 0
                        ? produce(rings[mode], mode, kind, sizes[s])
                        : consume(rings[mode], mode, kind, sizes[s]);
                }
    _exit(0);
}

static void bench_ring(struct ctl *c)
{
    static const char *mname[] = {"sp/sc", "mp/mc"}, *kname[] = {"bulk", "burst"};
    struct fh_ring *rings[2];
    pid_t prod, cons;
    int st1, st2;

    /* DPDK's test makes one ring with flags 0 and calls the sp/sc and
     * mp/mc functions on it; an rte_ring created SP/SC runs exactly the
     * sp/sc code too.  Ours keeps a cached copy of the other side's tail
     * on rings created SP (SC), so the sp/sc cases get a ring created
     * SP/SC, as a forkhost user would make it, and mp/mc a ring with
     * flags 0, as in DPDK's test. */
    rings[SPSC] = fh_ring_create("bench.ring.spsc", RING_SLOTS, 8,
                                 FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    rings[MPMC] = fh_ring_create("bench.ring", RING_SLOTS, 8, 0);
    if (rings[SPSC] == NULL || rings[MPMC] == NULL)
        DIE("fh_ring_create");
    atomic_store(&c->arrived, 0);
    if ((prod = fork_child()) == 0)
        ring_child(c, rings, 0);
    if ((cons = fork_child()) == 0)
        ring_child(c, rings, 1);
    st1 = reap(prod);
    st2 = reap(cons);
    if (!WIFEXITED(st1) || WEXITSTATUS(st1) || !WIFEXITED(st2)
        || WEXITSTATUS(st2)) {
        fprintf(stderr, "bench: ring children failed (%#x, %#x)\n", st1, st2);
        exit(1);
    }
    for (int m = SPSC; m <= MPMC; m++)
        if (!fh_ring_empty(rings[m]))
            fprintf(stderr, "bench: ring not empty at the end (%u left)\n",
                    fh_ring_count(rings[m]));
    for (int k = 0; k < NCASES; k++) {
        int mode = k / 6, kind = (k / 3) % 2;
        unsigned best = 0;

        for (unsigned run = 1; run < ring_repeat; run++)
            if (c->res[run][k][0] + c->res[run][k][1]
                < c->res[best][k][0] + c->res[best][k][1])
                best = run;
        double sums[REPEAT_MAX], t;
        for (unsigned run = 0; run < ring_repeat; run++)
            sums[run] = c->res[run][k][0] + c->res[run][k][1];
        for (unsigned i = 1; i < ring_repeat; i++)       /* insertion sort */
            for (unsigned j = i; j > 0 && sums[j - 1] > sums[j]; j--)
                t = sums[j], sums[j] = sums[j - 1], sums[j - 1] = t;
        /* The best run's two sides and sum, then the median and the worst
         * sum over the --repeat runs: the spread. */
        printf("ring %s %s %u %.2f %.2f %.2f %.2f %.2f\n", mname[mode],
               kname[kind], sizes[k % 3], c->res[best][k][0],
               c->res[best][k][1], c->res[best][k][0] + c->res[best][k][1],
               sums[ring_repeat / 2], sums[ring_repeat - 1]);
    }
}

/* One process, one core: enqueue n then dequeue n on the same ring, so
 * no cache line moves between cores and what is left is the instruction
 * cost of the calls.  Built with and without FH__RING_BENCH_NO_WAKEUP
 * (run.py), the difference is what the waiter check costs when nobody
 * waits, free of the two-core figures' noise.  Best of 15 runs of 2^16
 * call pairs, cycles per object (enqueue + dequeue). */
static void bench_ring1(void)
{
    static const char *mname[] = {"sp/sc", "mp/mc"};
    struct fh_ring *rings[2];
    uint64_t objs[32], out[32];

    rings[SPSC] = fh_ring_create("bench.ring1.spsc", RING_SLOTS, 8,
                                 FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    rings[MPMC] = fh_ring_create("bench.ring1", RING_SLOTS, 8, 0);
    if (rings[SPSC] == NULL || rings[MPMC] == NULL)
        DIE("ring1: fh_ring_create");
    pin(0);
    for (unsigned i = 0; i < 32; i++)
        objs[i] = i + 1;
    for (int mode = SPSC; mode <= MPMC; mode++)
        for (unsigned s = 1; s < 3; s++) {
            const unsigned n = sizes[s];
            struct fh_ring *r = rings[mode];
            double best = 1e30;

            for (int run = 0; run < 15; run++) {
                uint64_t t0 = tsc();
                for (unsigned i = 0; i < (1u << 16); i++) {
                    if (mode == SPSC) {
                        fh_ring_sp_enqueue_bulk(r, objs, n, NULL);
                        fh_ring_sc_dequeue_bulk(r, out, n, NULL);
                    } else {
                        fh_ring_mp_enqueue_bulk(r, objs, n, NULL);
                        fh_ring_mc_dequeue_bulk(r, out, n, NULL);
                    }
                }
                double v = (double)(tsc() - t0) / ((double)(1u << 16) * n);
                if (v < best)
                    best = v;
            }
            if (out[n - 1] != n)
                fprintf(stderr, "bench: ring1 got %llu\n",
                        (unsigned long long)out[n - 1]);
            printf("ring1 %s %u %.2f\n", mname[mode], n, best);
        }
}

/* ----------------------------------------------------------- wake-up */

#define WAKE_ROUNDS 2000

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A consumer process on CPU 1 sleeps in a blocking dequeue; the producer
 * on CPU 0 waits until it is registered and the ring is empty, then
 * enqueues the TSC; the consumer's figure is TSC at its return minus
 * that.  Prints the median and the 10th/90th percentiles in cycles. */
static void bench_wake(struct ctl *c)
{
    struct fh_ring *r = fh_ring_create("bench.wake", 64, 8, FH_RING_F_SP_ENQ
                                       | FH_RING_F_SC_DEQ);
    const struct fh_memzone *mz = fh_memzone_reserve(
        "bench.wake.lat", WAKE_ROUNDS * sizeof(uint64_t), 0, 0);
    uint64_t *lat;
    pid_t cons;

    (void)c;
    if (r == NULL || mz == NULL)
        DIE("wake: create");
    lat = mz->addr;
    if ((cons = fork_child()) == 0) {
        pin(1);
        for (unsigned i = 0; i < WAKE_ROUNDS; i++) {
            uint64_t v;
            if (fh_ring_dequeue_bulk_timed(r, &v, 1, NULL, -1) != 1)
                _exit(1);
            lat[i] = tsc() - v;
        }
        _exit(0);
    }
    pin(0);
    for (unsigned i = 0; i < WAKE_ROUNDS; i++) {
        uint64_t now;
        while (fh_ring_waiting_consumers(r) != 1 || !fh_ring_empty(r))
            cpu_pause();
        /* Let it fall asleep in the kernel (it is registered already). */
        for (uint64_t t0 = tsc(); tsc() - t0 < 200000;)
            cpu_pause();
        now = tsc();
        fh_ring_sp_enqueue_bulk(r, &now, 1, NULL);
    }
    if (reap(cons) != 0)
        DIE("wake: consumer failed");
    qsort(lat, WAKE_ROUNDS, sizeof *lat, cmp_u64);
    printf("wake %llu %llu %llu\n",
           (unsigned long long)lat[WAKE_ROUNDS / 2],
           (unsigned long long)lat[WAKE_ROUNDS / 10],
           (unsigned long long)lat[WAKE_ROUNDS * 9 / 10]);
}

/* ------------------------------------------------------------------ hash */

/*
 * The hash function hash_perf_autotest gives rte_hash: Bob Jenkins' lookup3
 * ("jhash", public domain), which rte_jhash implements.  It is passed to
 * fh_hash_create as a user function, so our tables call it through the
 * stored pointer, as rte_hash calls rte_jhash through its own.
 */
#include "jhash.h"

/* hash_perf_autotest's input: keys[KEYS_TO_ADD][MAX_KEYSIZE], 64 bytes
 * apart, with the precomputed hash and expected position of each. */
#define HASH_KEY_STRIDE 64u

static unsigned char *key_at(unsigned char *keys, uint32_t i)
{
    return keys + (size_t)i * HASH_KEY_STRIDE;
}

/* DPDK's shuffle_input_keys (rte_rand() there, xorshift64* here), carrying
 * both tables' positions along. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return rnd_state * 0x2545f4914f6cdd1dull;
}

static void shuffle(unsigned char *keys, uint32_t *sigs, int32_t *pos,
                    int32_t *pos_c, uint32_t n)
{
    unsigned char tk[HASH_KEY_LEN];

    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % i), ts;
        int32_t tp;

        memcpy(tk, key_at(keys, i), HASH_KEY_LEN);
        memcpy(key_at(keys, i), key_at(keys, j), HASH_KEY_LEN);
        memcpy(key_at(keys, j), tk, HASH_KEY_LEN);
        ts = sigs[i]; sigs[i] = sigs[j]; sigs[j] = ts;
        tp = pos[i]; pos[i] = pos[j]; pos[j] = tp;
        tp = pos_c[i]; pos_c[i] = pos_c[j]; pos_c[j] = tp;
    }
}

/* Fill h with every key; cycles per add.  pos gets each key's position. */
static double timed_adds(struct fh_hash *h, unsigned char *keys, int32_t *pos)
{
    uint64_t t0 = tsc(), t1;

    for (uint32_t i = 0; i < HASH_KEYS; i++) {
        int32_t p = fh_hash_add_key(h, key_at(keys, i));
        if (p < 0) {
            errno = -p;
            DIE("fh_hash_add_key #%u: %s", i, fh_hash_error());
        }
        pos[i] = p;
    }
    t1 = tsc();
    return (double)(t1 - t0) / HASH_KEYS;
}

/* DPDK's get_input_keys: every key added once (with its precomputed hash),
 * then the table emptied, so the timed adds find its memory mapped, as
 * DPDK's find the memory of the table it freed and re-created. */
static void warm_table(struct fh_hash *h, unsigned char *keys,
                       const uint32_t *sigs)
{
    for (uint32_t i = 0; i < HASH_KEYS; i++)
        if (fh_hash_add_key_with_hash(h, key_at(keys, i), sigs[i]) < 0)
            DIE("warm-up add #%u: %s", i, fh_hash_error());
    if (fh_hash_reset(h) < 0)
        DIE("fh_hash_reset");
}

#define CHECK_POS(got, want, what, j) do {                                 \
    if ((got) != (want)) {                                                 \
        fprintf(stderr, "bench: key %u at %d, expected %d (%s)\n",          \
                (unsigned)(j), (int)(got), (int)(want), what);              \
        _exit(1);                                                          \
    }                                                                      \
} while (0)

/* In the secondary: the lookup figures, positions checked as DPDK does. */
static void hash_lookups(struct ctl *c, const struct fh_hash *h,
                         const struct fh_hash *hc, unsigned char *keys,
                         const uint32_t *sigs, const int32_t *pos,
                         const int32_t *pos_c)
{
    const double nl = (double)HASH_PASSES * HASH_KEYS;
    unsigned char burst[HASH_BURST * HASH_KEY_LEN];
    const void *burst_ptrs[HASH_BURST];
    unsigned char *packed = malloc((size_t)HASH_KEYS * HASH_KEY_LEN);
    int32_t got[HASH_BURST];
    uint64_t t0, t1;

    if (fh_hash_check(h) < 0) {
        fprintf(stderr, "bench: %s\n", fh_hash_error());
        _exit(1);
    }
    /* The packed keys' copy, made before any timing. */
    if (packed == NULL) {
        fprintf(stderr, "bench: no memory for the packed keys\n");
        _exit(1);
    }
    for (uint32_t j = 0; j < HASH_KEYS; j++)
        memcpy(packed + (size_t)j * HASH_KEY_LEN, key_at(keys, j), HASH_KEY_LEN);
    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j++) {
            int32_t p = fh_hash_lookup(h, key_at(keys, j));
            CHECK_POS(p, pos[j], "lookup", j);
        }
    t1 = tsc();
    c->hash[0] = (double)(t1 - t0) / nl;

    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j++) {
            int32_t p = fh_hash_lookup_with_hash(h, key_at(keys, j), sigs[j]);
            CHECK_POS(p, pos[j], "with hash", j);
        }
    t1 = tsc();
    c->hash[1] = (double)(t1 - t0) / nl;

    /* As DPDK's loop: gather BURST_SIZE key pointers, one bulk call. */
    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j += HASH_BURST) {
            for (uint32_t k = 0; k < HASH_BURST; k++)
                burst_ptrs[k] = key_at(keys, j + k);
            fh_hash_lookup_bulk_ptrs(h, burst_ptrs, NULL, HASH_BURST, got,
                                     NULL);
            for (uint32_t k = 0; k < HASH_BURST; k++)
                CHECK_POS(got[k], pos[j + k], "bulk", j + k);
        }
    t1 = tsc();
    c->hash[2] = (double)(t1 - t0) / nl;

    /* Not in DPDK's test: the packed-keys bulk call (the one Python uses),
     * over keys the caller holds packed, 16 bytes apart, in the same order
     * (packed before the timing), ... */
    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j += HASH_BURST) {
            fh_hash_lookup_bulk(h, packed + (size_t)j * HASH_KEY_LEN,
                                HASH_BURST, got);
            for (uint32_t k = 0; k < HASH_BURST; k++)
                CHECK_POS(got[k], pos[j + k], "bulk packed", j + k);
        }
    t1 = tsc();
    c->hash[4] = (double)(t1 - t0) / nl;

    /* ... and with the keys gathered into a buffer inside the timing: a
     * copy from 16 scattered lines, which the pointer call does not need
     * (it prefetches those lines itself, overlapped with hashing). */
    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j += HASH_BURST) {
            for (uint32_t k = 0; k < HASH_BURST; k++)
                memcpy(burst + k * HASH_KEY_LEN, key_at(keys, j + k),
                       HASH_KEY_LEN);
            fh_hash_lookup_bulk(h, burst, HASH_BURST, got);
            for (uint32_t k = 0; k < HASH_BURST; k++)
                CHECK_POS(got[k], pos[j + k], "bulk gathered", j + k);
        }
    t1 = tsc();
    c->hash[5] = (double)(t1 - t0) / nl;

    /* Not in DPDK's test: the same lookups through the built-in CRC32C. */
    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j++) {
            int32_t p = fh_hash_lookup(hc, key_at(keys, j));
            CHECK_POS(p, pos_c[j], "crc32c lookup", j);
        }
    t1 = tsc();
    c->hash[3] = (double)(t1 - t0) / nl;
}

static void bench_hash(struct ctl *c)
{
    unsigned char *keys = calloc(HASH_KEYS, HASH_KEY_STRIDE);
    uint32_t *sigs = malloc(HASH_KEYS * sizeof *sigs);
    int32_t *pos = malloc(HASH_KEYS * sizeof *pos);
    int32_t *pos_c = malloc(HASH_KEYS * sizeof *pos_c);
    struct fh_hash *h, *hl, *hc;
    double add, add_locked;
    pid_t pid;
    int st;

    if (keys == NULL || sigs == NULL || pos == NULL || pos_c == NULL)
        DIE("malloc");
    pin(0);
    /* get_input_keys' keys "with pushes" (every one kept): key i is the
     * counter i, little-endian over the key's bytes. */
    for (uint32_t i = 0; i < HASH_KEYS; i++)
        for (uint32_t b = 0, v = i; b < 4; b++, v >>= 8)
            key_at(keys, i)[b] = (unsigned char)v;
    /* Single writer: DPDK's default (no RW_CONCURRENCY flag) has no
     * writer lock either.  hl is the writer-locked table, set against
     * DPDK's "with locks" one; hc has the built-in CRC32C. */
    h = fh_hash_create("bench.hash", HASH_ENTRIES, HASH_KEY_LEN, jhash, 0,
                       FH_HASH_F_SINGLE_WRITER);
    hl = fh_hash_create("bench.hash.locked", HASH_ENTRIES, HASH_KEY_LEN,
                        jhash, 0, 0);
    hc = fh_hash_create("bench.hash.crc", HASH_ENTRIES, HASH_KEY_LEN, NULL,
                        0, FH_HASH_F_SINGLE_WRITER);
    if (h == NULL || hl == NULL || hc == NULL)
        DIE("fh_hash_create: %s", fh_hash_error());
    for (uint32_t i = 0; i < HASH_KEYS; i++)
        fh_hash_hash(h, key_at(keys, i), &sigs[i]);
    /* Each table as DPDK does each of its own: fill, empty, timed adds. */
    warm_table(h, keys, sigs);
    add = timed_adds(h, keys, pos);
    warm_table(hl, keys, sigs);
    add_locked = timed_adds(hl, keys, pos_c);
    for (uint32_t i = 0; i < HASH_KEYS; i++)
        if ((pos_c[i] = fh_hash_add_key(hc, key_at(keys, i))) < 0)
            DIE("fh_hash_add_key (crc32c)");
    if (fh_hash_count(h) != (int32_t)HASH_KEYS
        || fh_hash_count(hc) != (int32_t)HASH_KEYS) {
        fprintf(stderr, "bench: %d keys in the table, %u added\n",
                fh_hash_count(h), HASH_KEYS);
        exit(1);
    }
    for (int s = 0; s < 10; s++)             /* DPDK's NUM_SHUFFLES */
        shuffle(keys, sigs, pos, pos_c, HASH_KEYS);

    /* The secondary: gets the keys by fork, the tables by their address in
     * the arena; measures and _exits. */
    if ((pid = fork_child()) == 0) {
        pin(0);
        hash_lookups(c, h, hc, keys, sigs, pos, pos_c);
        _exit(0);
    }
    st = reap(pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench: hash secondary failed (%#x)\n", st);
        exit(1);
    }
    printf("hash add %.1f\n", add);
    printf("hash add_locked %.1f\n", add_locked);
    printf("hash lookup %.1f\n", c->hash[0]);
    printf("hash lookup_with_hash %.1f\n", c->hash[1]);
    printf("hash lookup_bulk %.1f\n", c->hash[2]);
    printf("hash lookup_crc32c %.1f\n", c->hash[3]);
    printf("hash lookup_bulk_packed %.1f\n", c->hash[4]);
    printf("hash lookup_bulk_gather %.1f\n", c->hash[5]);
    free(keys);
    free(sigs);
    free(pos);
    free(pos_c);
}

/* ------------------------------------------------------------------ heap */

/* The shared heap: fh_malloc/fh_free pairs and batches (heap_loop.h, the
 * same loops heap_dpdk.c runs over rte_malloc/rte_free), in this process
 * pinned to CPU 0.  The heap lives in the arena created above. */
#define HEAP_MALLOC(size) fh_malloc(size)
#define HEAP_FREE(p) fh_free(p)
#include "heap_loop.h"

static void bench_heap(void)
{
    pin(0);
    heap_cases();
}

/* TSC ticks per second, for the header line (lookups/s from cycles). */
static double tsc_hz(void)
{
    struct timespec a, b, d = {0, 100 * 1000 * 1000};
    uint64_t t0, t1;

    clock_gettime(CLOCK_MONOTONIC, &a);
    t0 = tsc();
    nanosleep(&d, NULL);
    t1 = tsc();
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(t1 - t0) / ((double)(b.tv_sec - a.tv_sec)
                                + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
}

int main(int argc, char **argv)
{
    const struct fh_memzone *mz;
    int do_ring = 0, do_hash = 0, do_heap = 0, do_wake = 0, do_ring1 = 0;
    int huge = 1;
    struct fh_arena_hdr *hdr;
    struct ctl *c;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "ring") == 0)
            do_ring = 1;
        else if (strcmp(argv[i], "hash") == 0)
            do_hash = 1;
        else if (strcmp(argv[i], "heap") == 0)
            do_heap = 1;
        else if (strcmp(argv[i], "wake") == 0)
            do_wake = 1;
        else if (strcmp(argv[i], "ring1") == 0)
            do_ring1 = 1;
        else if (strcmp(argv[i], "--no-huge") == 0)
            huge = 0;
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc
                 && atoi(argv[i + 1]) >= 1 && atoi(argv[i + 1]) <= REPEAT_MAX)
            ring_repeat = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--shift") == 0 && i + 1 < argc
                 && atoi(argv[i + 1]) >= 10 && atoi(argv[i + 1]) <= 26)
            ring_shift = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--no-huge] [--repeat N] [--shift S] "
                    "[ring] [ring1] [hash] [wake] [heap]\n", argv[0]);
            return 2;
        }
    }
    if (!do_ring && !do_hash && !do_heap && !do_wake && !do_ring1)
        do_ring = do_hash = do_heap = 1;
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        fprintf(stderr, "bench: needs CPUs 0 and 1\n");
        return 1;
    }
    /* Huge pages when there are enough free, as the primary's default
     * (--huge-pages auto); DPDK runs on huge pages too. */
    if (fh_arena_create(ARENA_SIZE, huge ? FH_ARENA_HUGE_AUTO : 0,
                        "fh-bench") < 0)
        DIE("fh_arena_create");
    hdr = fh_arena_hdr();
    mz = fh_memzone_reserve("bench.ctl", sizeof *c, 0, 0);
    if (mz == NULL)
        DIE("fh_memzone_reserve");
    c = mz->addr;
    printf("forkhost C benchmark: %s, tsc %.3f GHz, arena on %s pages\n",
           TSC_UNIT, tsc_hz() / 1e9,
           hdr->flags & FH_ARENA_F_HUGE ? "huge" : "normal");
    fflush(stdout);
    if (do_ring)
        bench_ring(c);
    fflush(stdout);
    if (do_ring1)
        bench_ring1();
    fflush(stdout);
    if (do_wake)
        bench_wake(c);
    fflush(stdout);
    if (do_hash)
        bench_hash(c);
    fflush(stdout);
    if (do_heap)
        bench_heap();
    return 0;
}
