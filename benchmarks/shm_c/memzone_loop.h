/*
 * memzone_loop.h - the memzone benchmark's loops, compiled into
 * memzone_bench.c (fh_memzone_*) and memzone_dpdk.c (rte_memzone_*) so that
 * both sides run the same code.  Define MZ_RESERVE(name, len) (a pointer or
 * NULL), MZ_FREE(mz), MZ_LOOKUP(name) and tsc() before including it.
 *
 *   pair    reserve a 4 KiB memzone and free it, again and again, with
 *           MZ_OTHERS other memzones live: the cost of a reserve/free pair
 *           (the bytes come back to the same place, zeroed again);
 *   lookup  look up the last of the MZ_OTHERS names (a directory scan);
 *   miss    look up a name that does not exist.
 * Each figure is cycles per pair or lookup, the best of MZ_REPEAT runs.
 * Output lines: "memzone CASE CYCLES".
 */
#ifndef MEMZONE_LOOP_H
#define MEMZONE_LOOP_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MZ_OTHERS 100u
#define MZ_PAIRS 20000u
#define MZ_LOOKUPS 200000u
#define MZ_REPEAT 5

static void mz_die(const char *what)
{
    fprintf(stderr, "memzone benchmark: %s failed\n", what);
    exit(1);
}

static void mz_cases(void)
{
    char name[32];
    double best;

    for (unsigned i = 0; i < MZ_OTHERS; i++) {
        snprintf(name, sizeof name, "bench.other.%u", i);
        if (!MZ_RESERVE(name, 4096))
            mz_die("reserve");
    }
    best = 1e30;
    for (int r = 0; r < MZ_REPEAT; r++) {
        uint64_t t0 = tsc();
        for (unsigned i = 0; i < MZ_PAIRS; i++) {
            const void *mz = MZ_RESERVE("bench.pair", 4096);
            if (!mz)
                mz_die("reserve");
            MZ_FREE(mz);
        }
        double c = (double)(tsc() - t0) / MZ_PAIRS;
        best = c < best ? c : best;
    }
    printf("memzone pair %.1f\n", best);
    snprintf(name, sizeof name, "bench.other.%u", MZ_OTHERS - 1);
    best = 1e30;
    for (int r = 0; r < MZ_REPEAT; r++) {
        uint64_t t0 = tsc();
        for (unsigned i = 0; i < MZ_LOOKUPS; i++)
            if (!MZ_LOOKUP(name))
                mz_die("lookup");
        double c = (double)(tsc() - t0) / MZ_LOOKUPS;
        best = c < best ? c : best;
    }
    printf("memzone lookup %.1f\n", best);
    best = 1e30;
    for (int r = 0; r < MZ_REPEAT; r++) {
        uint64_t t0 = tsc();
        for (unsigned i = 0; i < MZ_LOOKUPS; i++)
            if (MZ_LOOKUP("bench.none"))
                mz_die("lookup of a missing name");
        double c = (double)(tsc() - t0) / MZ_LOOKUPS;
        best = c < best ? c : best;
    }
    printf("memzone miss %.1f\n", best);
}

#endif /* MEMZONE_LOOP_H */
