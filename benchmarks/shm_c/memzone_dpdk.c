/*
 * memzone_dpdk.c - DPDK's side of the memzone benchmark (memzone_loop.h):
 * rte_memzone_reserve/free/lookup on the main lcore of an EAL started with
 * the arguments memzone_run.py gives.  Built against libdpdk.
 */
#include <stdint.h>
#include <stdio.h>

#include <rte_eal.h>
#include <rte_memzone.h>

#include "tsc.h"
#define MZ_RESERVE(name, len) rte_memzone_reserve((name), (len), SOCKET_ID_ANY, 0)
#define MZ_FREE(mz) rte_memzone_free(mz)
#define MZ_LOOKUP(name) rte_memzone_lookup(name)
#include "memzone_loop.h"

int main(int argc, char **argv)
{
    if (rte_eal_init(argc, argv) < 0) {
        fprintf(stderr, "memzone_dpdk: rte_eal_init failed\n");
        return 1;
    }
    printf("dpdk memzone benchmark: cycles\n");
    mz_cases();
    rte_eal_cleanup();
    return 0;
}
