/*
 * forkhost/thp.h - transparent huge pages for the primary's large private
 * anonymous regions, before it forks the template.
 *
 * fork() copies the page tables of every private mapping: one PTE per
 * 4 KiB page, ~262k per GiB a preload touched, and every exit tears them
 * down again.  A region backed by transparent huge pages costs one PMD
 * entry per 2 MiB instead.  fh_thp_collapse() asks the kernel for that
 * (MADV_HUGEPAGE, then MADV_COLLAPSE, Linux >= 6.1) on the mappings that
 * qualify, and reports what it got.
 */
#ifndef FORKHOST_THP_H
#define FORKHOST_THP_H

#include <stddef.h>
#include <stdint.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* The default min_bytes: a mapping with less resident is left alone. */
#define FH_THP_MIN_BYTES (64u << 20)

/* A huge-page-sized chunk is collapsed only when at least this many of
 * every 512 of its pages are resident (scaled for other PMD sizes): a
 * sparsely touched chunk costs fork few PTEs, and collapsing it would
 * fill its holes with memory.  Chunks below it count as sparse_bytes. */
#define FH_THP_MIN_RESIDENT_PER_512 256u

struct fh_thp_report {
    uint64_t regions;         /* mappings that qualified */
    uint64_t region_bytes;    /* their total size */
    uint64_t chunk_bytes;     /* huge page size used (PMD size) */
    uint64_t aligned_bytes;   /* their huge-page-aligned parts */
    uint64_t collapsed_bytes; /* of those: huge now (MADV_COLLAPSE said 0) */
    uint64_t failed_bytes;    /* MADV_COLLAPSE refused */
    uint64_t sparse_bytes;    /* skipped: too few pages resident (in the
                                 chunk, or in the whole mapping: < 1/64) */
    uint64_t elapsed_ns;      /* time the whole call took */
    uint32_t fail_enomem;     /* failed chunks: no huge page to be had */
    uint32_t fail_eagain;     /* ... transient (page locked, on LRU move) */
    uint32_t fail_other;      /* ... anything else (EINVAL, EBUSY: memcg) */
    int32_t  first_errno;     /* errno of the first failure, 0 if none */
    int32_t  unsupported;     /* MADV_COLLAPSE unknown here (Linux < 6.1 or
                                 no THP): errno, nothing was collapsed */
    int32_t  madvise_errno;   /* MADV_HUGEPAGE's errno, if it failed */
};

/*
 * For each private, writable, anonymous mapping (no path, or [heap]) with
 * at least min_bytes resident (Rss in /proc/self/smaps):
 * madvise(MADV_HUGEPAGE) on the whole mapping, then MADV_COLLAPSE on each
 * huge-page-aligned chunk of it that is resident enough (see above).  The
 * mappings are read first, then changed.
 * r (may be NULL) gets the figures.  Returns the bytes collapsed (>= 0),
 * or -1 with errno when /proc/self/maps cannot be read or MADV_COLLAPSE
 * is not supported (errno EINVAL, r->unsupported set).  Meant for a
 * single-threaded process; it takes as long as copying the resident
 * memory of those chunks (the kernel copies 4 KiB pages into huge ones).
 */
FH_API long fh_thp_collapse(size_t min_bytes, struct fh_thp_report *r);

/*
 * What FORKHOST_THP's value asks of a primary (a C primary's fh_init and
 * forkhost/_thp.py read it with this): NULL, "", 1, on, yes, true for
 * FH_THP_MIN_BYTES; 0, off, no, never, false (any case) to leave memory
 * alone; else a size ("16M", fh_parse_size) for another threshold.
 * 1 with *min_bytes set; 0: off; -1: none of these (a bad value).
 */
FH_API int fh_thp_wanted(const char *value, size_t *min_bytes);
/* printf format: the value fh_thp_wanted refused. */
#define FH_THP_INVALID "invalid FORKHOST_THP '%s': use 0 or off, 1 or on, or a " \
                       "size such as 16M"

#endif /* FORKHOST_THP_H */
