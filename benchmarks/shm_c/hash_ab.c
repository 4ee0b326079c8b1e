/*
 * hash_ab.c - forkhost's hash table and DPDK's rte_hash in the same loops,
 * measured so that a shared, loaded machine still gives steady figures.
 * Built twice by run.py (--hash-ab): once against libforkhost, once with
 * -DSIDE_DPDK against DPDK (pkg-config libdpdk); run.py runs the two
 * alternately.  Run by hand, never by the tests; no thresholds.
 *
 *     hash_ab_fh [L]      hash_ab_dpdk [L]      (L: the writer-locked table)
 *
 * The table: 2^19 entries, 16-byte keys, 393216 keys (75%), jhash through
 * the table's pointer, on normal pages on both sides (DPDK: --no-huge), as
 * in hash_perf_autotest.  The keys: key i is the counter i, 64 bytes
 * apart; adds go in counter order, lookups through a shuffled copy of the
 * array, read front to back, with the precomputed hash of each.
 *
 * The method: the work is cut into batches of 4096 operations, each timed
 * with rdtsc, and the whole sequence (reset, adds, single lookups, lookups
 * with the hash, bulk lookups of 16 by key pointer, and on our side bulk
 * lookups of 16 packed keys) is repeated ROUNDS times.  A batch's figure
 * is its fastest repetition, and an operation's figure the mean over the
 * batches of those minima: a batch that another process's time slice or
 * cache traffic disturbed in one repetition is nearly always clean in
 * another, so the figure moves by a few percent between runs where one
 * long timed loop moves by 2x.  Adds are timed in the same batches, from
 * an empty table each repetition (the batch at a given fill level against
 * itself).  Both sides pinned to CPU 0.
 *
 * Output, one line: "SIDE add=C lookup=C with_hash=C bulk=C [bulk_packed=C]"
 * (add_locked instead of add with L), cycles per operation.
 */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t tsc(void) { return __rdtsc(); }
#else
#include <time.h>
static inline uint64_t tsc(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
#endif

#define ENTRIES (1u << 19)
#define NKEYS (ENTRIES / 4 * 3)
#define KEY_LEN 16u
#define STRIDE 64u
#define BATCH 4096u
#define NBATCH (NKEYS / BATCH)
#define ROUNDS 9
#define BURST 16u

enum { ADD, LOOKUP, WITH_HASH, BULK, BULK_PACKED, NCASE };

#ifdef SIDE_DPDK
#include <rte_eal.h>
#include <rte_hash.h>
#include <rte_jhash.h>
typedef struct rte_hash table;
#define SIDE "dpdk"
#define T_ADD(h, k) rte_hash_add_key(h, k)
#define T_LOOKUP(h, k) rte_hash_lookup(h, k)
#define T_LOOKUP_SIG(h, k, s) rte_hash_lookup_with_hash(h, k, s)
#define T_BULK(h, p, n, pos) rte_hash_lookup_bulk(h, p, n, pos)
#define T_RESET(h) rte_hash_reset(h)
#define T_HASH(h, k) rte_hash_hash(h, k)
#else
#include "forkhost/arena.h"
#include "forkhost/hash.h"
typedef struct fh_hash table;
#define SIDE "fh"
#define T_ADD(h, k) fh_hash_add_key(h, k)
#define T_LOOKUP(h, k) fh_hash_lookup(h, k)
#define T_LOOKUP_SIG(h, k, s) fh_hash_lookup_with_hash(h, k, s)
#define T_BULK(h, p, n, pos) fh_hash_lookup_bulk_ptrs(h, p, NULL, n, pos, NULL)
#define T_RESET(h) fh_hash_reset(h)
static uint32_t t_hash(table *h, const void *k)
{
    uint32_t s = 0;
    fh_hash_hash(h, k, &s);
    return s;
}
#define T_HASH(h, k) t_hash(h, k)

#include "jhash.h"
#endif

static double best[NCASE][NBATCH];

static void keep(int c, uint32_t b, uint64_t t0)
{
    double v = (double)(tsc() - t0) / BATCH;
    if (v < best[c][b])
        best[c][b] = v;
}

static void fail(const char *what, uint32_t i)
{
    fprintf(stderr, "hash_ab: %s failed at key %u\n", what, i);
    exit(1);
}

int main(int argc, char **argv)
{
    int locked = argc > 1 && strcmp(argv[1], "L") == 0;
    unsigned char *keys = calloc(NKEYS, STRIDE), *look = calloc(NKEYS, STRIDE);
    unsigned char *packed = malloc((size_t)NKEYS * KEY_LEN);
    uint32_t *sigs = malloc(NKEYS * sizeof *sigs);
    uint64_t st = 0x9e3779b97f4a7c15ull;
    const void *ptrs[BURST];
    int32_t pos[BURST];
    cpu_set_t cpus;
    table *h;

    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus) < 0 || !keys || !look
        || !packed || !sigs) {
        fprintf(stderr, "hash_ab: no CPU 0 or no memory\n");
        return 1;
    }
#ifdef SIDE_DPDK
    {
        /* Normal pages, no shared config; the runtime directory
         * (/var/run/dpdk/fhab<pid>) is removed by run.py. */
        char prefix[64];
        char *eal[] = {"hash_ab", "--no-huge", "-m", "768", "--no-pci",
                       "-l", "0", "--no-shconf", prefix, "--log-level=1",
                       NULL};
        snprintf(prefix, sizeof prefix, "--file-prefix=fhab%d", (int)getpid());
        struct rte_hash_parameters p = {
            .name = "hash_ab", .entries = ENTRIES, .key_len = KEY_LEN,
            .hash_func = rte_jhash, .hash_func_init_val = 0, .socket_id = 0,
            .extra_flag = locked ? RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY : 0};
        if (rte_eal_init(10, eal) < 0) {
            fprintf(stderr, "hash_ab: rte_eal_init failed\n");
            return 1;
        }
        h = rte_hash_create(&p);
    }
#else
    if (fh_arena_create(256u << 20, 0, "fh-hash-ab") < 0) {
        perror("hash_ab: fh_arena_create");
        return 1;
    }
    h = fh_hash_create("hash_ab", ENTRIES, KEY_LEN, jhash, 0,
                       locked ? 0 : FH_HASH_F_SINGLE_WRITER);
#endif
    if (h == NULL) {
        fprintf(stderr, "hash_ab: cannot create the table\n");
        return 1;
    }
    for (uint32_t i = 0; i < NKEYS; i++)
        memcpy(keys + (size_t)i * STRIDE, &i, sizeof i);
    memcpy(look, keys, (size_t)NKEYS * STRIDE);
    for (uint32_t i = NKEYS - 1; i > 0; i--) {     /* xorshift64 shuffle */
        unsigned char t[KEY_LEN];
        uint32_t j;
        st ^= st << 13; st ^= st >> 7; st ^= st << 17;
        j = (uint32_t)(st % (i + 1));
        memcpy(t, look + (size_t)i * STRIDE, KEY_LEN);
        memcpy(look + (size_t)i * STRIDE, look + (size_t)j * STRIDE, KEY_LEN);
        memcpy(look + (size_t)j * STRIDE, t, KEY_LEN);
    }
    for (uint32_t i = 0; i < NKEYS; i++) {
        memcpy(packed + (size_t)i * KEY_LEN, look + (size_t)i * STRIDE, KEY_LEN);
        sigs[i] = T_HASH(h, look + (size_t)i * STRIDE);
    }
    for (int c = 0; c < NCASE; c++)
        for (uint32_t b = 0; b < NBATCH; b++)
            best[c][b] = 1e300;

    for (int r = 0; r < ROUNDS; r++) {
        T_RESET(h);
        for (uint32_t b = 0; b < NBATCH; b++) {
            uint64_t t0 = tsc();
            for (uint32_t i = b * BATCH; i < (b + 1) * BATCH; i++)
                if (T_ADD(h, keys + (size_t)i * STRIDE) < 0)
                    fail("add", i);
            keep(ADD, b, t0);
        }
        for (uint32_t b = 0; b < NBATCH; b++) {
            uint64_t t0 = tsc();
            for (uint32_t i = b * BATCH; i < (b + 1) * BATCH; i++)
                if (T_LOOKUP(h, look + (size_t)i * STRIDE) < 0)
                    fail("lookup", i);
            keep(LOOKUP, b, t0);
        }
        for (uint32_t b = 0; b < NBATCH; b++) {
            uint64_t t0 = tsc();
            for (uint32_t i = b * BATCH; i < (b + 1) * BATCH; i++)
                if (T_LOOKUP_SIG(h, look + (size_t)i * STRIDE, sigs[i]) < 0)
                    fail("lookup with hash", i);
            keep(WITH_HASH, b, t0);
        }
        for (uint32_t b = 0; b < NBATCH; b++) {
            uint64_t t0 = tsc();
            for (uint32_t i = b * BATCH; i < (b + 1) * BATCH; i += BURST) {
                for (uint32_t k = 0; k < BURST; k++)
                    ptrs[k] = look + (size_t)(i + k) * STRIDE;
                T_BULK(h, ptrs, BURST, pos);
                for (uint32_t k = 0; k < BURST; k++)
                    if (pos[k] < 0)
                        fail("bulk lookup", i + k);
            }
            keep(BULK, b, t0);
        }
#ifndef SIDE_DPDK
        for (uint32_t b = 0; b < NBATCH; b++) {
            uint64_t t0 = tsc();
            for (uint32_t i = b * BATCH; i < (b + 1) * BATCH; i += BURST) {
                fh_hash_lookup_bulk(h, packed + (size_t)i * KEY_LEN, BURST, pos);
                for (uint32_t k = 0; k < BURST; k++)
                    if (pos[k] < 0)
                        fail("packed bulk lookup", i + k);
            }
            keep(BULK_PACKED, b, t0);
        }
#endif
    }

    {
        static const char *name[NCASE] = {"add", "lookup", "with_hash", "bulk",
                                          "bulk_packed"};
        printf("%s", SIDE);
        for (int c = 0; c < NCASE; c++) {
            double sum = 0;
            if (best[c][0] > 1e299)
                continue;
            for (uint32_t b = 0; b < NBATCH; b++)
                sum += best[c][b];
            printf(" %s%s=%.1f", name[c], c == ADD && locked ? "_locked" : "",
                   sum / NBATCH);
        }
        printf("\n");
    }
    return 0;
}
