/*
 * heap_dpdk.c - the peer of bench.c's heap section: the same loops
 * (heap_loop.h) over DPDK's rte_malloc/rte_free, on the main lcore of an
 * EAL started with the arguments run.py gives (huge pages when it reserved
 * them).  Built and run by run.py only when DPDK's development files are
 * installed.
 */
#include <stdint.h>
#include <stdio.h>

#include <rte_eal.h>
#include <rte_malloc.h>

#include "tsc.h"
#define HEAP_MALLOC(size) rte_malloc(NULL, (size), 0)
#define HEAP_FREE(p) rte_free(p)
#include "heap_loop.h"

int main(int argc, char **argv)
{
    if (rte_eal_init(argc, argv) < 0) {
        fprintf(stderr, "heap_dpdk: rte_eal_init failed\n");
        return 1;
    }
    printf("dpdk heap benchmark: cycles\n");
    heap_cases();
    rte_eal_cleanup();
    return 0;
}
