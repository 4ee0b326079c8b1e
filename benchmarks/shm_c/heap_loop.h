/*
 * heap_loop.h - the shared-heap benchmark's loops, compiled into bench.c
 * (fh_malloc/fh_free) and into heap_dpdk.c (rte_malloc/rte_free) so that
 * both sides run the same code.  Define HEAP_MALLOC(size), HEAP_FREE(p)
 * and tsc() before including it.
 *
 *   pair   one malloc and its free, again and again: the cost of a call
 *          pair on a warm heap (the block comes back to the same place);
 *   batch  HEAP_BATCH mallocs, then their frees in a shuffled order (the
 *          same order on both sides), so frees merge with neighbours on
 *          either side and mallocs split bigger free blocks.
 * Each figure is cycles per malloc + free, the best of HEAP_REPEAT runs.
 * Output lines: "heap pair SIZE CYCLES" and "heap batch SIZE CYCLES".
 */
#ifndef HEAP_LOOP_H
#define HEAP_LOOP_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define HEAP_PAIRS (1u << 18)
#define HEAP_BATCH 1024u
#define HEAP_BATCH_ROUNDS 64u
#define HEAP_REPEAT 5

static const size_t heap_pair_sizes[] = {64, 1024, 16384, 262144};
static const size_t heap_batch_sizes[] = {64, 1024, 16384};

static void *heap_must(void *p, size_t size)
{
    if (!p) {
        fprintf(stderr, "heap benchmark: malloc of %zu bytes failed\n", size);
        exit(1);
    }
    return p;
}

static double heap_pair(size_t size)
{
    double best = 1e30;

    HEAP_FREE(heap_must(HEAP_MALLOC(size), size));          /* warm */
    for (int r = 0; r < HEAP_REPEAT; r++) {
        uint64_t t0 = tsc();
        for (unsigned i = 0; i < HEAP_PAIRS; i++) {
            void *p = HEAP_MALLOC(size);
            if (!p)
                heap_must(p, size);
            HEAP_FREE(p);
        }
        double c = (double)(tsc() - t0) / HEAP_PAIRS;
        best = c < best ? c : best;
    }
    return best;
}

static double heap_batch(size_t size)
{
    static void *ptrs[HEAP_BATCH];
    static unsigned order[HEAP_BATCH];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    double best = 1e30;

    for (unsigned i = 0; i < HEAP_BATCH; i++)
        order[i] = i;
    for (unsigned i = HEAP_BATCH - 1; i > 0; i--) {         /* Fisher-Yates */
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
        unsigned j = (unsigned)((x * 0x2545f4914f6cdd1dull) >> 32) % (i + 1);
        unsigned t = order[i]; order[i] = order[j]; order[j] = t;
    }
    for (int r = 0; r < HEAP_REPEAT; r++) {
        uint64_t t0 = tsc();
        for (unsigned k = 0; k < HEAP_BATCH_ROUNDS; k++) {
            for (unsigned i = 0; i < HEAP_BATCH; i++)
                ptrs[i] = heap_must(HEAP_MALLOC(size), size);
            for (unsigned i = 0; i < HEAP_BATCH; i++)
                HEAP_FREE(ptrs[order[i]]);
        }
        double c = (double)(tsc() - t0) / (HEAP_BATCH * HEAP_BATCH_ROUNDS);
        best = c < best ? c : best;
    }
    return best;
}

static void heap_cases(void)
{
    for (size_t i = 0; i < sizeof heap_pair_sizes / sizeof *heap_pair_sizes; i++)
        printf("heap pair %zu %.1f\n", heap_pair_sizes[i], heap_pair(heap_pair_sizes[i]));
    for (size_t i = 0; i < sizeof heap_batch_sizes / sizeof *heap_batch_sizes; i++)
        printf("heap batch %zu %.1f\n", heap_batch_sizes[i], heap_batch(heap_batch_sizes[i]));
    fflush(stdout);
}

#endif /* HEAP_LOOP_H */
