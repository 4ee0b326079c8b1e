/*
 * test_thp.c - fh_thp_collapse: a touched anonymous region becomes huge
 * pages (where the kernel has MADV_COLLAPSE and a huge page to give), a
 * sparsely touched one is left alone, a small one is not a region.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

#define MIB (1u << 20)

/* AnonHugePages of the mapping that starts at addr, in bytes; -1 if none. */
static long long anon_huge(void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    char line[512];
    int in = 0;
    long long kb = -1;

    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s ", &start, &end, perms) == 3 && strlen(perms) == 4)
            in = start == (uintptr_t)addr;
        else if (in && sscanf(line, "AnonHugePages: %lld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* len bytes of private anonymous memory with an inaccessible page on each
 * side, so that the kernel merges it with no neighbour into one mapping. */
static char *map_anon(size_t len)
{
    char *p = mmap(NULL, len + 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap %zu: %s", len, strerror(errno));
    CHECK(mprotect(p + 4096, len, PROT_READ | PROT_WRITE) == 0, "mprotect");
    return p + 4096;
}

int main(void)
{
    size_t dense_len = 24 * MIB, sparse_len = 24 * MIB, page = 4096;
    char *dense = map_anon(dense_len), *sparse = map_anon(sparse_len);
    char *small = map_anon(4 * MIB);
    struct fh_thp_report r;
    long got;

    for (size_t i = 0; i < dense_len; i += page)
        dense[i] = (char)(i >> 12);
    for (size_t i = 0; i < sparse_len; i += 8 * page)    /* 64 of 512 */
        sparse[i] = 1;
    memset(small, 1, 4 * MIB);

    got = fh_thp_collapse(16 * MIB, &r);
    if (got < 0 && r.unsupported) {
        printf("test_thp: MADV_COLLAPSE not supported here (%s): skipped\n",
               strerror(r.unsupported));
        return 0;
    }
    CHECK(got >= 0, "fh_thp_collapse: %s", strerror(errno));
    CHECK(r.chunk_bytes >= page && !(r.chunk_bytes & (r.chunk_bytes - 1)),
          "chunk %llu", (unsigned long long)r.chunk_bytes);
    /* dense qualifies (24 MiB resident); sparse has 3 MiB resident and
     * small 4 MiB, so neither is a region at 16 MiB. */
    EXPECT(r.regions >= 1, "regions %llu", (unsigned long long)r.regions);
    EXPECT(r.collapsed_bytes + r.failed_bytes + r.sparse_bytes == r.aligned_bytes,
           "every aligned chunk is accounted for");
    EXPECT((uint64_t)got == r.collapsed_bytes, "return value");
    if (r.chunk_bytes == 2 * MIB) {
        long long huge = anon_huge(dense);
        if (r.failed_bytes == 0) {
            EXPECT(r.collapsed_bytes >= 22 * MIB, "collapsed %llu",
                   (unsigned long long)r.collapsed_bytes);
            EXPECT(huge >= 22LL * MIB, "dense AnonHugePages %lld", huge);
        } else {
            printf("test_thp: %llu bytes not collapsed (%s): no figure checked\n",
                   (unsigned long long)r.failed_bytes, strerror(r.first_errno));
        }
        EXPECT(anon_huge(sparse) == 0, "sparse untouched: %lld", anon_huge(sparse));
    }
    for (size_t i = 0; i < dense_len; i += page)
        EXPECT(dense[i] == (char)(i >> 12), "data kept at %zu", i);

    /* A lower threshold makes sparse a region, whose chunks are sparse. */
    got = fh_thp_collapse(256 * 1024, &r);
    CHECK(got >= 0, "second call: %s", strerror(errno));
    EXPECT(r.sparse_bytes >= 20 * MIB, "sparse chunks skipped: %llu",
           (unsigned long long)r.sparse_bytes);
    EXPECT(r.collapsed_bytes + r.failed_bytes + r.sparse_bytes == r.aligned_bytes,
           "every aligned chunk is accounted for (second call)");
    /* Not its AnonHugePages now: the region is marked MADV_HUGEPAGE (at 1/8
     * resident it is not below 1/SCAN_RATIO), so khugepaged may collapse
     * its sparse chunks at any moment after (max_ptes_none allows it by
     * default), which is the kernel's doing, not fh_thp_collapse's. */
    EXPECT(fh_thp_collapse(0, NULL) >= 0, "NULL report");
    if (fht_failures)
        return 1;
    printf("test_thp: ok (%llu bytes collapsed in %.1f ms)\n",
           (unsigned long long)r.collapsed_bytes, r.elapsed_ns / 1e6);
    return 0;
}
