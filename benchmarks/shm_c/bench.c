/*
 * bench.c - libforkhost's rings and hash tables in cycles per object, measured
 * the way DPDK's own ring_perf_autotest and hash_perf_autotest (22.11)
 * measure rte_ring and rte_hash, so that benchmarks/shm_c/run.py can put the
 * two side by side.  Run by hand, never by the tests; no thresholds.
 *
 *     bench [--no-huge] [--repeat N] [--shift S] [ring] [hash]
 *
 * ring and hash select the parts (both when neither is named); --repeat
 * runs the ring table N times (1..16) and reports each case's best run;
 * --shift sets the calls per ring case to 2^S (DPDK's 23 by default);
 * --no-huge keeps the arena off huge pages.
 *
 * Ring: DPDK's "two physical cores" test, but across two PROCESSES.  The
 * primary (this process) creates the arena, one ring of 4096 64-bit slots
 * and a control block, then forks a producer pinned to CPU 0 and a consumer
 * pinned to CPU 1.  For each case both pass a barrier, each times its own
 * loop with rdtsc, and the figure is producer cycles/object + consumer
 * cycles/object, which is what DPDK prints (param1.spsc + param2.spsc).
 * 2^23 calls of n objects per side, as in DPDK; bulk calls retry until they
 * move all n, burst calls move what they can until the total is through.
 *
 * Hash: hash_perf_autotest's shape for 16-byte keys.  A 2^19-entry table is
 * filled to 75% (393216 keys) by the primary, pinned to CPU 0, which times
 * the adds; a secondary forked after that (same CPU) times 5 passes of
 * lookups over the keys in shuffled order: one key per call, one key per
 * call with the hash precomputed, and bulk calls of 16 keys (DPDK's
 * BURST_SIZE).  Each lookup's position is checked, as DPDK does.  The
 * secondary finds the primary's table at the same address and hashes with
 * the built-in CRC32C, which every process resolves locally (a user's
 * function would be called through the stored pointer, after one module
 * check per process).  Differences from DPDK's test: keys are random rather
 * than counter values, the hash function is CRC32C (the table's default)
 * rather than rte_jhash, and keys are packed 16 bytes apart rather than 64.
 *
 * Output: a header line, then whitespace-separated figures that run.py
 * parses: "ring MODE KIND N PRODUCER CONSUMER SUM" (cycles per object) and
 * "hash NAME CYCLES" (cycles per operation).
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
#include "forkhost/memzone.h"
#include "forkhost/ring.h"

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t tsc(void) { return __rdtsc(); }
static inline void cpu_pause(void) { _mm_pause(); }
#define TSC_UNIT "cycles"
#else
/* No TSC: nanoseconds, labelled as such. */
static inline uint64_t tsc(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline void cpu_pause(void) { }
#define TSC_UNIT "ns"
#endif

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
    double hash[3];             /* lookup, with hash, bulk: the secondary */
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
static void ring_child(struct ctl *c, struct fh_ring *r, int role)
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
                        ? produce(r, mode, kind, sizes[s])
                        : consume(r, mode, kind, sizes[s]);
                }
    _exit(0);
}

static void bench_ring(struct ctl *c)
{
    static const char *mname[] = {"sp/sc", "mp/mc"}, *kname[] = {"bulk", "burst"};
    struct fh_ring *r;
    pid_t prod, cons;
    int st1, st2;

    /* Flags 0 (MP/MC) as in DPDK's test; the sp/sc calls ignore them. */
    r = fh_ring_create("bench.ring", RING_SLOTS, 8, 0);
    if (r == NULL)
        DIE("fh_ring_create");
    atomic_store(&c->arrived, 0);
    if ((prod = fork_child()) == 0)
        ring_child(c, r, 0);
    if ((cons = fork_child()) == 0)
        ring_child(c, r, 1);
    st1 = reap(prod);
    st2 = reap(cons);
    if (!WIFEXITED(st1) || WEXITSTATUS(st1) || !WIFEXITED(st2)
        || WEXITSTATUS(st2)) {
        fprintf(stderr, "bench: ring children failed (%#x, %#x)\n", st1, st2);
        exit(1);
    }
    if (!fh_ring_empty(r))
        fprintf(stderr, "bench: ring not empty at the end (%u left)\n",
                fh_ring_count(r));
    for (int k = 0; k < NCASES; k++) {
        int mode = k / 6, kind = (k / 3) % 2;
        unsigned best = 0;

        for (unsigned run = 1; run < ring_repeat; run++)
            if (c->res[run][k][0] + c->res[run][k][1]
                < c->res[best][k][0] + c->res[best][k][1])
                best = run;
        printf("ring %s %s %u %.2f %.2f %.2f\n", mname[mode], kname[kind],
               sizes[k % 3], c->res[best][k][0], c->res[best][k][1],
               c->res[best][k][0] + c->res[best][k][1]);
    }
}

/* ------------------------------------------------------------------ hash */

/* xorshift64*: random keys, the same every run. */
static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return rnd_state * 0x2545f4914f6cdd1dull;
}

static void shuffle(unsigned char *keys, uint32_t *sigs, int32_t *pos,
                    uint32_t n)
{
    unsigned char tk[HASH_KEY_LEN];

    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % i), ts;
        int32_t tp;

        memcpy(tk, keys + (size_t)i * HASH_KEY_LEN, HASH_KEY_LEN);
        memcpy(keys + (size_t)i * HASH_KEY_LEN, keys + (size_t)j * HASH_KEY_LEN,
               HASH_KEY_LEN);
        memcpy(keys + (size_t)j * HASH_KEY_LEN, tk, HASH_KEY_LEN);
        ts = sigs[i]; sigs[i] = sigs[j]; sigs[j] = ts;
        tp = pos[i]; pos[i] = pos[j]; pos[j] = tp;
    }
}

/* Fill h with every key; cycles per add.  pos gets each key's position. */
static double timed_adds(struct fh_hash *h, const unsigned char *keys,
                         int32_t *pos)
{
    uint64_t t0 = tsc(), t1;

    for (uint32_t i = 0; i < HASH_KEYS; i++) {
        int32_t p = fh_hash_add_key(h, keys + (size_t)i * HASH_KEY_LEN);
        if (p < 0) {
            errno = -p;
            DIE("fh_hash_add_key #%u: %s", i, fh_hash_error());
        }
        pos[i] = p;
    }
    t1 = tsc();
    return (double)(t1 - t0) / HASH_KEYS;
}

/* In the secondary: the three lookup figures, positions checked. */
static void hash_lookups(struct ctl *c, const struct fh_hash *h,
                         const unsigned char *keys, const uint32_t *sigs,
                         const int32_t *pos)
{
    const double nl = (double)HASH_PASSES * HASH_KEYS;
    int32_t got[HASH_BURST];
    uint64_t t0, t1;

    if (fh_hash_check(h) < 0) {
        fprintf(stderr, "bench: %s\n", fh_hash_error());
        _exit(1);
    }
    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j++)
            if (fh_hash_lookup(h, keys + (size_t)j * HASH_KEY_LEN) != pos[j]) {
                fprintf(stderr, "bench: key %u not at %d\n", j, pos[j]);
                _exit(1);
            }
    t1 = tsc();
    c->hash[0] = (double)(t1 - t0) / nl;

    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j++)
            if (fh_hash_lookup_with_hash(h, keys + (size_t)j * HASH_KEY_LEN,
                                         sigs[j]) != pos[j]) {
                fprintf(stderr, "bench: key %u not at %d (with hash)\n", j,
                        pos[j]);
                _exit(1);
            }
    t1 = tsc();
    c->hash[1] = (double)(t1 - t0) / nl;

    t0 = tsc();
    for (int pass = 0; pass < HASH_PASSES; pass++)
        for (uint32_t j = 0; j < HASH_KEYS; j += HASH_BURST) {
            fh_hash_lookup_bulk(h, keys + (size_t)j * HASH_KEY_LEN,
                                HASH_BURST, got);
            for (uint32_t k = 0; k < HASH_BURST; k++)
                if (got[k] != pos[j + k]) {
                    fprintf(stderr, "bench: key %u not at %d (bulk)\n",
                            j + k, pos[j + k]);
                    _exit(1);
                }
        }
    t1 = tsc();
    c->hash[2] = (double)(t1 - t0) / nl;
}

static void bench_hash(struct ctl *c)
{
    unsigned char *keys = malloc((size_t)HASH_KEYS * HASH_KEY_LEN);
    uint32_t *sigs = malloc(HASH_KEYS * sizeof *sigs);
    int32_t *pos = malloc(HASH_KEYS * sizeof *pos);
    struct fh_hash *h, *hl;
    double add, add_locked;
    pid_t pid;
    int st;

    if (keys == NULL || sigs == NULL || pos == NULL)
        DIE("malloc");
    pin(0);
    for (size_t i = 0; i < (size_t)HASH_KEYS * HASH_KEY_LEN; i += 8) {
        uint64_t v = rnd();
        memcpy(keys + i, &v, 8);
    }
    /* Single writer: DPDK's default (no RW_CONCURRENCY flag) has no
     * writer lock either. */
    h = fh_hash_create("bench.hash", HASH_ENTRIES, HASH_KEY_LEN, NULL, 0,
                       FH_HASH_F_SINGLE_WRITER);
    hl = fh_hash_create("bench.hash.locked", HASH_ENTRIES, HASH_KEY_LEN, NULL,
                        0, 0);
    if (h == NULL || hl == NULL)
        DIE("fh_hash_create: %s", fh_hash_error());
    add = timed_adds(h, keys, pos);
    add_locked = timed_adds(hl, keys, pos);
    if (fh_hash_count(h) != (int32_t)HASH_KEYS) {
        /* Random 128-bit keys: a duplicate would be news. */
        fprintf(stderr, "bench: %d keys in the table, %u added\n",
                fh_hash_count(h), HASH_KEYS);
        exit(1);
    }
    /* Positions of the table the secondary reads (h): the last adds went
     * to hl, and both hand out positions in the same order, but do not
     * rely on it. */
    for (uint32_t i = 0; i < HASH_KEYS; i++) {
        pos[i] = fh_hash_lookup(h, keys + (size_t)i * HASH_KEY_LEN);
        fh_hash_hash(h, keys + (size_t)i * HASH_KEY_LEN, &sigs[i]);
    }
    for (int s = 0; s < 10; s++)             /* DPDK's NUM_SHUFFLES */
        shuffle(keys, sigs, pos, HASH_KEYS);

    /* The secondary: gets the keys by fork, the table by its address in the
     * arena; measures and _exits. */
    if ((pid = fork_child()) == 0) {
        pin(0);
        hash_lookups(c, h, keys, sigs, pos);
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
    free(keys);
    free(sigs);
    free(pos);
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
    int do_ring = 0, do_hash = 0, huge = 1;
    struct fh_arena_hdr *hdr;
    struct ctl *c;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "ring") == 0)
            do_ring = 1;
        else if (strcmp(argv[i], "hash") == 0)
            do_hash = 1;
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
                    "[ring] [hash]\n", argv[0]);
            return 2;
        }
    }
    if (!do_ring && !do_hash)
        do_ring = do_hash = 1;
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
    if (do_hash)
        bench_hash(c);
    return 0;
}
