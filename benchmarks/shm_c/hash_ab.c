/*
 * hash_ab.c - forkhost's hash table and DPDK's rte_hash in the same loops,
 * in the same process, batch by batch, so that a shared machine still
 * gives a steady ratio.  Built by run.py (--hash-ab) against libforkhost
 * and, with -DWITH_DPDK, against DPDK too (pkg-config libdpdk).  Run by
 * hand, never by the tests; no thresholds.
 *
 *     hash_ab [L]      (L: both tables with their writer lock)
 *
 * The tables: 2^19 entries, 16-byte keys, 393216 keys (75%), jhash through
 * the table's pointer, on normal pages on both sides (DPDK: --no-huge), as
 * in hash_perf_autotest.  With DPDK, both tables call DPDK's rte_jhash,
 * so the tables are compared and not two implementations of jhash;
 * without it, ours calls jhash.h's.  The keys: key i is the counter i, 64 bytes
 * apart; adds go in counter order, lookups through a shuffled copy of the
 * array, read front to back, with the precomputed hash of each.
 *
 * The method: the work is cut into batches of 4096 operations, each timed
 * with rdtsc.  Each case (reset, adds, single lookups, lookups with the
 * hash, bulk lookups of 16 by key pointer, and on our side bulk lookups
 * of 16 packed keys) runs on our table and then on DPDK's (DPDK's first
 * in odd repetitions), a tenth of a second or so each, so that both see
 * the same state of the machine: the memory bandwidth and cache the
 * host's other guests leave to this one change over seconds, and two
 * programs run one after the other measured 0.9x or 1.2x of each other
 * from one run to the next.  (Interleaving batch by batch instead, as
 * ring_ab.c does, would have each table's batches run in a cache the
 * other table had just filled: 42 MiB of tables against 32 MiB of L3.)
 * The whole sequence is repeated ROUNDS times.  A batch's figure is its fastest
 * repetition, an operation's figure the mean over the batches of those
 * minima.  Adds are timed in the same batches, from an empty table each
 * repetition (the batch at a given fill level against itself).  Pinned to
 * CPU 0.
 *
 * Output, one line per side: "SIDE add=C lookup=C with_hash=C bulk=C
 * [bulk_packed=C]" (SIDE fh or dpdk; add_locked instead of add with L),
 * cycles per operation.
 */
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkhost/arena.h"
#include "forkhost/hash.h"
#ifdef WITH_DPDK
#include <rte_hash.h>
#include <rte_jhash.h>
#include "ab_eal.h"
#define NSIDE 2
/* Both tables call the same function: the tables are compared, not two
 * implementations of jhash. */
#define HASH_FN rte_jhash
#else
#include "jhash.h"
#define NSIDE 1
#define HASH_FN jhash
#endif

#include "tsc.h"

#define ENTRIES (1u << 19)
#define NKEYS (ENTRIES / 4 * 3)
#define KEY_LEN 16u
#define STRIDE 64u
#define BATCH 4096u
#define NBATCH (NKEYS / BATCH)
#define ROUNDS 9
#define BURST 16u

enum { FH, DPDK };
enum { ADD, LOOKUP, WITH_HASH, BULK, BULK_PACKED, NCASE };

static struct fh_hash *fh_table;
#ifdef WITH_DPDK
static struct rte_hash *dpdk_table;
#endif
static unsigned char *keys, *look, *packed;
static uint32_t *sigs[NSIDE];
static double best[NSIDE][NCASE][NBATCH];

static void fail(int side, const char *what, uint32_t i)
{
    fprintf(stderr, "hash_ab: %s %s failed at key %u\n",
            side == FH ? "forkhost" : "DPDK", what, i);
    exit(1);
}

/* Batch b of case c on one side's table; keeps its time if the fastest. */
static void batch(int side, int c, uint32_t b)
{
    const void *ptrs[BURST];
    int32_t pos[BURST];
    uint32_t lo = b * BATCH, hi = (b + 1) * BATCH;
    uint64_t t0 = tsc();

    /* The four cases both tables have, over one side's calls. */
#define CASES(h, ADD_FN, LOOKUP_FN, SIG_FN, BULK_FN, sig)                   \
    case ADD:                                                               \
        for (uint32_t i = lo; i < hi; i++)                                  \
            if (ADD_FN(h, keys + (size_t)i * STRIDE) < 0)                   \
                fail(side, "add", i);                                       \
        break;                                                              \
    case LOOKUP:                                                            \
        for (uint32_t i = lo; i < hi; i++)                                  \
            if (LOOKUP_FN(h, look + (size_t)i * STRIDE) < 0)                \
                fail(side, "lookup", i);                                    \
        break;                                                              \
    case WITH_HASH:                                                         \
        for (uint32_t i = lo; i < hi; i++)                                  \
            if (SIG_FN(h, look + (size_t)i * STRIDE, (sig)[i]) < 0)         \
                fail(side, "lookup with hash", i);                          \
        break;                                                              \
    case BULK:                                                              \
        for (uint32_t i = lo; i < hi; i += BURST) {                         \
            for (uint32_t k = 0; k < BURST; k++)                            \
                ptrs[k] = look + (size_t)(i + k) * STRIDE;                  \
            BULK_FN(h, ptrs, BURST, pos);                                   \
            for (uint32_t k = 0; k < BURST; k++)                            \
                if (pos[k] < 0)                                             \
                    fail(side, "bulk lookup", i + k);                       \
        }                                                                   \
        break;
#define FH_BULK(h, p, n, pos) fh_hash_lookup_bulk_ptrs(h, p, NULL, n, pos, NULL)

    if (side == FH) {
        switch (c) {
        CASES(fh_table, fh_hash_add_key, fh_hash_lookup, fh_hash_lookup_with_hash,
              FH_BULK, sigs[FH])
        case BULK_PACKED:
            for (uint32_t i = lo; i < hi; i += BURST) {
                fh_hash_lookup_bulk(fh_table, packed + (size_t)i * KEY_LEN, BURST, pos);
                for (uint32_t k = 0; k < BURST; k++)
                    if (pos[k] < 0)
                        fail(side, "packed bulk lookup", i + k);
            }
            break;
        }
    }
#ifdef WITH_DPDK
    else {
        switch (c) {
        CASES(dpdk_table, rte_hash_add_key, rte_hash_lookup,
              rte_hash_lookup_with_hash, rte_hash_lookup_bulk, sigs[DPDK])
        }
    }
#endif
    double v = (double)(tsc() - t0) / BATCH;
    if (v < best[side][c][b])
        best[side][c][b] = v;
}

int main(int argc, char **argv)
{
    static const char *name[NCASE] = {"add", "lookup", "with_hash", "bulk",
                                      "bulk_packed"};
    static const char *sname[] = {"fh", "dpdk"};
    int locked = argc > 1 && strcmp(argv[1], "L") == 0;
    uint64_t st = 0x9e3779b97f4a7c15ull;
    cpu_set_t cpus;

    keys = calloc(NKEYS, STRIDE);
    look = calloc(NKEYS, STRIDE);
    packed = malloc((size_t)NKEYS * KEY_LEN);
    for (int s = 0; s < NSIDE; s++)
        sigs[s] = malloc(NKEYS * sizeof *sigs[s]);
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus) < 0 || !keys || !look
        || !packed || !sigs[NSIDE - 1]) {
        fprintf(stderr, "hash_ab: no CPU 0 or no memory\n");
        return 1;
    }
    if (fh_arena_create(256u << 20, 0, "fh-hash-ab") < 0) {
        perror("hash_ab: fh_arena_create");
        return 1;
    }
    fh_table = fh_hash_create("hash_ab", ENTRIES, KEY_LEN, HASH_FN, 0,
                              locked ? 0 : FH_HASH_F_SINGLE_WRITER);
    if (fh_table == NULL) {
        fprintf(stderr, "hash_ab: cannot create our table: %s\n", fh_hash_error());
        return 1;
    }
#ifdef WITH_DPDK
    {
        struct rte_hash_parameters p = {
            .name = "hash_ab", .entries = ENTRIES, .key_len = KEY_LEN,
            .hash_func = rte_jhash, .hash_func_init_val = 0, .socket_id = 0,
            .extra_flag = locked ? RTE_HASH_EXTRA_FLAGS_RW_CONCURRENCY : 0};
        if (ab_eal_init("hash_ab", "768", "0") < 0)
            return 1;
        dpdk_table = rte_hash_create(&p);
        if (dpdk_table == NULL) {
            fprintf(stderr, "hash_ab: cannot create DPDK's table\n");
            return 1;
        }
    }
#endif
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
        if (fh_hash_hash(fh_table, look + (size_t)i * STRIDE, &sigs[FH][i]) < 0)
            fail(FH, "hash", i);
#ifdef WITH_DPDK
        sigs[DPDK][i] = rte_hash_hash(dpdk_table, look + (size_t)i * STRIDE);
#endif
    }
    for (int s = 0; s < NSIDE; s++)
        for (int c = 0; c < NCASE; c++)
            for (uint32_t b = 0; b < NBATCH; b++)
                best[s][c][b] = 1e300;

    for (int r = 0; r < ROUNDS; r++) {
        fh_hash_reset(fh_table);
#ifdef WITH_DPDK
        rte_hash_reset(dpdk_table);
#endif
        for (int c = 0; c < NCASE; c++)
            for (int k = 0; k < NSIDE; k++) {
                /* Which goes first alternates between repetitions. */
                int side = r % 2 ? NSIDE - 1 - k : k;
                if (side == DPDK && c == BULK_PACKED)     /* no such call */
                    continue;
                for (uint32_t b = 0; b < NBATCH; b++)
                    batch(side, c, b);
            }
    }

    for (int s = 0; s < NSIDE; s++) {
        printf("%s", sname[s]);
        for (int c = 0; c < NCASE; c++) {
            double sum = 0;
            if (best[s][c][0] > 1e299)
                continue;
            for (uint32_t b = 0; b < NBATCH; b++)
                sum += best[s][c][b];
            printf(" %s%s=%.1f", name[c], c == ADD && locked ? "_locked" : "",
                   sum / NBATCH);
        }
        printf("\n");
    }
    return 0;
}
