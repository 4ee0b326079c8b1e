/*
 * tsc.h - the benchmarks' clock and spin hint, one copy for every program
 * in this directory: tsc() reads the TSC (cycles, TSC_UNIT "cycles"), or
 * where there is none CLOCK_MONOTONIC (nanoseconds, labelled so);
 * cpu_pause() is the spin-wait hint.
 */
#ifndef FH_BENCH_TSC_H
#define FH_BENCH_TSC_H

#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t tsc(void) { return __rdtsc(); }
static inline void cpu_pause(void) { _mm_pause(); }
#define TSC_UNIT "cycles"
#else
#include <time.h>
static inline uint64_t tsc(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline void cpu_pause(void) { }
#define TSC_UNIT "ns"
#endif

#endif /* FH_BENCH_TSC_H */
