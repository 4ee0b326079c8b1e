/*
 * ab_eal.h - DPDK's EAL as ring_ab.c and hash_ab.c start it (built with
 * -DWITH_DPDK): normal pages (--no-huge), no PCI, no shared config, so no
 * reservation and no other process's state; the runtime directory
 * /var/run/dpdk/fhab<pid> is removed by run.py afterwards.
 */
#ifndef FH_BENCH_AB_EAL_H
#define FH_BENCH_AB_EAL_H

#include <stdio.h>
#include <unistd.h>

#include <rte_eal.h>

/* 0, or -1 after saying so: mem_mb of memory, the lcores in cores. */
static int ab_eal_init(const char *prog, const char *mem_mb, const char *cores)
{
    char prefix[64];
    char *eal[] = {(char *)prog, "--no-huge", "-m", (char *)mem_mb, "--no-pci",
                   "-l", (char *)cores, "--no-shconf", prefix,
                   "--log-level=1", NULL};

    snprintf(prefix, sizeof prefix, "--file-prefix=fhab%d", (int)getpid());
    if (rte_eal_init(10, eal) < 0) {
        fprintf(stderr, "%s: rte_eal_init failed\n", prog);
        return -1;
    }
    return 0;
}

#endif /* FH_BENCH_AB_EAL_H */
