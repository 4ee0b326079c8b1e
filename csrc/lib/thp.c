/*
 * thp.c - collapse the primary's large private anonymous regions into
 * transparent huge pages before the template fork (forkhost/thp.h).
 *
 * What a preload leaves behind (a model, a big table) is private anonymous
 * memory, and fork() copies its page tables into the template, every pool
 * member and every secondary forked on demand, then tears them down at
 * each exit: per 4 KiB page.  Backed by 2 MiB pages, the same memory costs
 * fork one PMD entry per 2 MiB.  MADV_COLLAPSE (Linux 6.1) does the
 * collapse synchronously in the calling process, whatever khugepaged's
 * limits (madvise(2)); MADV_HUGEPAGE first marks the mapping so that later
 * faults in it get huge pages too and khugepaged may finish what the
 * collapse could not.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"

#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

struct region {
    uintptr_t start, end;
    uint64_t  rss;          /* resident bytes (smaps) */
};

/* A mapping whose resident bytes are less than 1/SCAN_RATIO of its size is
 * not scanned chunk by chunk: mincore() costs a byte per page, and a huge
 * reservation touched here and there (a sanitizer's shadow, a JVM or Go
 * heap) would take seconds for nothing.  Its chunks count as sparse. */
#define SCAN_RATIO 64u

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The whole of a /proc file, NUL-terminated, in a malloc'd buffer. */
static char *read_all(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t cap = 64 * 1024, len = 0;
    char *buf;

    if (fd < 0)
        return NULL;
    buf = malloc(cap);
    while (buf) {
        ssize_t n;
        if (cap - len < 4096) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            buf = NULL;
            errno = e;
            break;
        }
        if (n == 0) {
            buf[len] = '\0';
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    return buf;
}

/* The PMD (transparent huge page) size; 2 MiB when sysfs does not say. */
static size_t pmd_size(void)
{
    char *s = read_all("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    unsigned long long v = 0;

    if (s) {
        v = strtoull(s, NULL, 10);
        free(s);
    }
    return v >= 4096 && !(v & (v - 1)) ? (size_t)v : (size_t)2 << 20;
}

/*
 * The private, writable, anonymous mappings with at least min_bytes
 * resident (smaps' Rss: what fork would copy PTEs for), with their
 * resident bytes.  The whole list is read before anything is changed
 * (madvise splits and merges mappings).  *out is malloc'd; the count, or
 * -1 with errno.
 */
static long find_regions(size_t min_bytes, struct region **out)
{
    char *smaps = read_all("/proc/self/smaps"), *line, *save = NULL;
    struct region *v = NULL;
    long n = 0, cap = 0;
    int current = 0;        /* the last header line was a candidate */

    *out = NULL;
    if (!smaps)
        return -1;
    for (line = strtok_r(smaps, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        unsigned long start, end, inode, kb;
        char perms[8];
        int path_at = 0;
        const char *path;

        if (current && sscanf(line, "Rss: %lu kB", &kb) == 1) {
            current = 0;
            if ((uint64_t)kb * 1024 >= min_bytes)
                v[n++].rss = (uint64_t)kb * 1024;
            continue;
        }
        if (sscanf(line, "%lx-%lx %7s %*x %*x:%*x %lu %n", &start, &end, perms,
                   &inode, &path_at) < 4 || !path_at || strlen(perms) != 4)
            continue;                       /* a field line */
        current = 0;
        path = line + path_at;
        while (*path == ' ')
            path++;
        if (strcmp(perms, "rw-p") != 0 || inode != 0 ||
            (*path && strcmp(path, "[heap]") != 0) || end - start < min_bytes)
            continue;
        if (n == cap) {
            long ncap = cap ? cap * 2 : 16;
            struct region *bigger = realloc(v, (size_t)ncap * sizeof *v);
            if (!bigger) {
                free(v);
                free(smaps);
                errno = ENOMEM;
                return -1;
            }
            v = bigger;
            cap = ncap;
        }
        v[n].start = start;         /* kept once its Rss line qualifies it */
        v[n].end = end;
        current = 1;
    }
    free(smaps);
    *out = v;
    return n;
}

FH_API long fh_thp_collapse(size_t min_bytes, struct fh_thp_report *r)
{
    struct fh_thp_report local;
    struct region *regions = NULL;
    uint64_t t0 = now_ns();
    size_t page = (size_t)sysconf(_SC_PAGESIZE), chunk = pmd_size();
    size_t pages = chunk / page;
    size_t need = (pages * FH_THP_MIN_RESIDENT_PER_512 + 511) / 512;
    unsigned char *vec = NULL;
    long n;

    if (!r)
        r = &local;
    memset(r, 0, sizeof *r);
    r->chunk_bytes = chunk;
    if (min_bytes < chunk)
        min_bytes = chunk;

    /* madvise() checks the advice before the range, and a zero-length
     * range is then a no-op: EINVAL here means no MADV_COLLAPSE at all
     * (Linux < 6.1, or a kernel without THP). */
    if (madvise((void *)(uintptr_t)page, 0, MADV_COLLAPSE) != 0) {
        r->unsupported = errno ? errno : EINVAL;
        r->elapsed_ns = now_ns() - t0;
        errno = EINVAL;
        return -1;
    }
    vec = malloc(pages);
    n = vec ? find_regions(min_bytes, &regions) : -1;
    if (n < 0) {
        int e = vec ? errno : ENOMEM;
        free(vec);
        r->elapsed_ns = now_ns() - t0;
        errno = e;
        return -1;
    }

    for (long i = 0; i < n; i++) {
        uintptr_t lo = (regions[i].start + chunk - 1) & ~(uintptr_t)(chunk - 1);
        uintptr_t hi = regions[i].end & ~(uintptr_t)(chunk - 1);

        r->regions++;
        r->region_bytes += regions[i].end - regions[i].start;
        if (hi <= lo)
            continue;
        if (regions[i].rss < (regions[i].end - regions[i].start) / SCAN_RATIO) {
            r->sparse_bytes += hi - lo;
            r->aligned_bytes += hi - lo;
            continue;
        }
        if (madvise((void *)regions[i].start, regions[i].end - regions[i].start,
                    MADV_HUGEPAGE) != 0 && !r->madvise_errno)
            r->madvise_errno = errno;
        for (uintptr_t a = lo; a < hi; a += chunk) {
            size_t resident = 0;
            int rc, tries = 0;

            r->aligned_bytes += chunk;
            if (mincore((void *)a, chunk, vec) == 0) {
                for (size_t k = 0; k < pages; k++)
                    resident += vec[k] & 1;
            } else {
                resident = pages;        /* cannot tell: try it */
            }
            if (resident < need) {
                r->sparse_bytes += chunk;
                continue;
            }
            do
                rc = madvise((void *)a, chunk, MADV_COLLAPSE);
            while (rc != 0 && (errno == EAGAIN || errno == EINTR) && ++tries < 3);
            if (rc == 0) {
                r->collapsed_bytes += chunk;
                continue;
            }
            r->failed_bytes += chunk;
            if (!r->first_errno)
                r->first_errno = errno;
            if (errno == ENOMEM)
                r->fail_enomem++;
            else if (errno == EAGAIN)
                r->fail_eagain++;
            else
                r->fail_other++;
        }
    }
    free(regions);
    free(vec);
    r->elapsed_ns = now_ns() - t0;
    return (long)r->collapsed_bytes;
}

FH_API int fh_thp_wanted(const char *value, size_t *min_bytes)
{
    static const char *const on[] = { "", "1", "on", "yes", "true" };
    static const char *const off[] = { "0", "off", "no", "never", "false" };
    char v[64];
    size_t k, n;

    *min_bytes = FH_THP_MIN_BYTES;
    if (value == NULL)
        return 1;
    /* Compared stripped, as Python's str.strip() does. */
    while (*value == ' ' || *value == '\t' || *value == '\n')
        value++;
    n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\n'))
        n--;
    if (n >= sizeof v)
        n = sizeof v - 1;
    memcpy(v, value, n);
    v[n] = '\0';
    for (k = 0; k < sizeof on / sizeof on[0]; k++)
        if (strcasecmp(v, on[k]) == 0)
            return 1;
    for (k = 0; k < sizeof off / sizeof off[0]; k++)
        if (strcasecmp(v, off[k]) == 0)
            return 0;
    if (fh_parse_size(v, &n) < 0)
        return -1;
    *min_bytes = n;
    return 1;
}
