/*
 * memzone_bench.c - forkhost's side of the memzone benchmark
 * (memzone_loop.h), in one process with an arena of its own (normal pages,
 * as the peer runs DPDK with --no-huge).  Built and run by memzone_run.py.
 */
#include <stdint.h>
#include <stdio.h>

#include "forkhost.h"

#include "tsc.h"
#define MZ_RESERVE(name, len) fh_memzone_reserve((name), (len), 0, 0)
#define MZ_FREE(mz) fh_memzone_free(mz)
#define MZ_LOOKUP(name) fh_memzone_lookup(name)
#include "memzone_loop.h"

int main(void)
{
    if (fh_arena_create(256u << 20, 0, "memzone-bench") < 0) {
        perror("fh_arena_create");
        return 1;
    }
    printf("forkhost memzone benchmark: cycles\n");
    mz_cases();
    return 0;
}
