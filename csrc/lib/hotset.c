/*
 * hotset.c - copy-on-write ahead of time: the hot set a member secondary
 * learns at its exit and an idle pool member copies before its launch
 * (forkhost/hotset.h says why).
 */
#include "forkhost/hotset.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define PM_PRESENT   (1ull << 63)
#define PM_EXCLUSIVE (1ull << 56)
#define HOT_MAX_PAGES 4096u       /* 16 MiB of private copies per member */
/* A mapping larger than this is not looked at: its pagemap costs 8 bytes
 * a page to read whether or not the page is there, and such a range is a
 * reservation mostly empty (AddressSanitizer's shadow is terabytes): read
 * whole, it kept a secondary recording for minutes. */
#define HOT_MAX_MAPPING (4ull << 30)
/* A reader finding a recording under way (the odd seq) tries again this
 * many times, then does without the set: the recorder is another process
 * that may be slow, or killed holding the lock, so it is never waited for. */
#define HOT_READ_TRIES 4

/* Set in members (fh__hotset_member); a secondary that was a member
 * learns into it at exit (fh__hotset_learn). */
static struct fh_hotset *g_hot;
/* This member copied the hot set (fh_member_prefault): its private pages
 * are the set plus its launch's, so it must not learn from them. */
static int g_prefaulted;
/* This member's launch runs Python (fh__hotset_launch says; a process
 * that exits as a member secondary without it counts as one): the set
 * learned from it is of that kind (fh_hotset_note). */
static int g_python_launch = 1;

void fh__hotset_member(struct fh_hotset *h)
{
    g_hot = h;
}

void fh__hotset_launch(int python)
{
    g_python_launch = python != 0;
}

FH_API struct fh_hotset *fh_hotset_create(void)
{
    void *p = mmap(NULL, sizeof(struct fh_hotset), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    return p == MAP_FAILED ? NULL : p;
}

FH_API void fh_hotset_arm(struct fh_hotset *h, unsigned launches)
{
    /* relaxed: a ticket count, ordered with nothing else. */
    atomic_store_explicit(&h->learn, launches, memory_order_relaxed);
}

FH_API void fh_hotset_note(struct fh_hotset *h, int python)
{
    /* relaxed throughout: hints; the template is the only writer of
     * python, a learner the only writer of learned (under seq), and the
     * learn ticket is taken with its own CAS. */
    uint32_t v = atomic_load_explicit(&h->python, memory_order_relaxed);
    uint32_t learned = atomic_load_explicit(&h->learned, memory_order_relaxed);
    uint32_t kind = python ? 2u : 1u;

    v = (v << 1) | (python != 0);
    atomic_store_explicit(&h->python, v, memory_order_relaxed);
    if (learned != 0 && learned != kind && (v & 3u) == (python ? 3u : 0u) &&
        atomic_load_explicit(&h->learn, memory_order_relaxed) == 0)
        fh_hotset_arm(h, 1);
}

FH_API unsigned fh_hotset_pages(struct fh_hotset *h)
{
    uint32_t seq, pages = 0, i, n;
    int tries = HOT_READ_TRIES;

    do {
        if (tries-- == 0)
            return 0;             /* a recording is under way: no set yet */
        /* acquire: pairs with the writer's release of the even seq below,
         * so the ranges read after it are the ones published with it. */
        seq = atomic_load_explicit(&h->seq, memory_order_acquire);
        n = atomic_load_explicit(&h->nranges, memory_order_relaxed);
        pages = 0;
        for (i = 0; i < n && i < FH_HOTSET_RANGES; i++)
            if (!(atomic_load_explicit(&h->r[i].flags, memory_order_relaxed) &
                  FH_HOTSET_READ))
                pages += atomic_load_explicit(&h->r[i].pages,
                                              memory_order_relaxed);
        /* acquire fence: the loads above happen before the re-check. */
        atomic_thread_fence(memory_order_acquire);
    } while ((seq & 1) ||
             seq != atomic_load_explicit(&h->seq, memory_order_relaxed));
    return pages;
}

/* Record this process's private, present pages of private writable
 * mappings: what a launch made it copy.  At most one writer at a time (the
 * odd seq is the lock); a concurrent one gives up. */
/* Runs of pages [a, a + cnt pages) whose pagemap entries pass `want`,
 * appended to the set; *budget pages at most. */
static void record_runs(struct fh_hotset *h, uint32_t *n, int pm,
                        unsigned long lo, unsigned long hi, uint64_t want,
                        uint32_t flags, uint32_t *budget)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned long a;

    for (a = lo; a < hi && *n < FH_HOTSET_RANGES && *budget > 0;) {
        uint64_t ent[512];
        size_t k, cnt = (hi - a) / (unsigned long)page;
        uint32_t run = 0;
        ssize_t r;

        if (cnt > 512)
            cnt = 512;
        r = pread(pm, ent, cnt * sizeof ent[0],
                  (off_t)(a / (unsigned long)page * sizeof ent[0]));
        if (r <= 0)
            break;
        cnt = (size_t)r / sizeof ent[0];
        for (k = 0; k <= cnt; k++) {
            if (k < cnt && (ent[k] & want) == want && run < *budget) {
                run++;
                continue;
            }
            if (run > 0 && *n < FH_HOTSET_RANGES) {
                /* relaxed: published by the release store of seq. */
                atomic_store_explicit(&h->r[*n].start,
                    a + (k - run) * (unsigned long)page, memory_order_relaxed);
                atomic_store_explicit(&h->r[*n].pages, run,
                                      memory_order_relaxed);
                atomic_store_explicit(&h->r[*n].flags, flags,
                                      memory_order_relaxed);
                (*n)++;
                *budget -= run;
            }
            run = 0;
        }
        a += cnt * (unsigned long)page;
    }
}

/* Record this process's private, present pages of private writable
 * mappings (what a launch made it copy), and its present pages of
 * read-only private file mappings (the code and constants it ran).  At
 * most one writer at a time (the odd seq is the lock); a concurrent one
 * gives up. */
static void learn(struct fh_hotset *h)
{
    char line[512];
    FILE *maps;
    int pm;
    uint32_t seq, n = 0, written = HOT_MAX_PAGES, read = HOT_MAX_PAGES;

    seq = atomic_load_explicit(&h->seq, memory_order_relaxed);
    /* acquire on success: our writes to the ranges stay after the lock;
     * relaxed on failure: we only give up. */
    if ((seq & 1) || !atomic_compare_exchange_strong_explicit(
            &h->seq, &seq, seq + 1, memory_order_acquire,
            memory_order_relaxed))
        return;
    maps = fopen("/proc/self/maps", "re");
    pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    while (maps != NULL && pm >= 0 && fgets(line, sizeof line, maps) != NULL &&
           n < FH_HOTSET_RANGES) {
        unsigned long lo, hi, off, inode;
        unsigned maj, mnr;
        char perms[5];

        if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu", &lo, &hi, perms, &off,
                   &maj, &mnr, &inode) != 7 || perms[3] != 'p' ||
            hi - lo > HOT_MAX_MAPPING)
            continue;
        if (perms[1] == 'w')
            record_runs(h, &n, pm, lo, hi, PM_PRESENT | PM_EXCLUSIVE, 0,
                        &written);
        else if (perms[0] == 'r' && inode != 0)
            record_runs(h, &n, pm, lo, hi, PM_PRESENT, FH_HOTSET_READ, &read);
    }
    if (maps != NULL)
        fclose(maps);
    if (pm >= 0)
        close(pm);
    atomic_store_explicit(&h->nranges, n, memory_order_relaxed);
    atomic_store_explicit(&h->learned, g_python_launch ? 2u : 1u,
                          memory_order_relaxed);
    /* release: readers that see the even seq see every range above. */
    atomic_store_explicit(&h->seq, seq + 2, memory_order_release);
}

void fh__hotset_learn(void)
{
    unsigned left;

    if (g_hot == NULL || g_prefaulted)
        return;
    left = atomic_load_explicit(&g_hot->learn, memory_order_relaxed);
    /* relaxed: the ticket orders nothing; learn() locks with seq. */
    while (left > 0 && !atomic_compare_exchange_weak_explicit(
               &g_hot->learn, &left, left - 1, memory_order_relaxed,
               memory_order_relaxed))
        ;
    if (left > 0)
        learn(g_hot);
}

FH_API long fh_member_prefault(void)
{
    struct { uint64_t start; uint32_t pages, flags; } copy[FH_HOTSET_RANGES];
    uint32_t seq, n, i;
    long page = sysconf(_SC_PAGESIZE), total = 0;
    int tries = HOT_READ_TRIES;

    if (g_hot == NULL)
        return 0;
    /* A launch is to be learned from: stay a plain fork, so that if this
     * member's is the one, the set becomes what a launch made private,
     * and not the copied set plus that (which could only ever grow).
     * relaxed: a hint; fh__hotset_learn takes the ticket. */
    if (atomic_load_explicit(&g_hot->learn, memory_order_relaxed) > 0)
        return 0;
    do {
        if (tries-- == 0)
            return 0;             /* a recording is under way: copy nothing */
        /* acquire: as in fh_hotset_pages. */
        seq = atomic_load_explicit(&g_hot->seq, memory_order_acquire);
        n = atomic_load_explicit(&g_hot->nranges, memory_order_relaxed);
        if (n > FH_HOTSET_RANGES)
            n = FH_HOTSET_RANGES;
        for (i = 0; i < n; i++) {
            copy[i].start = atomic_load_explicit(&g_hot->r[i].start,
                                                 memory_order_relaxed);
            copy[i].pages = atomic_load_explicit(&g_hot->r[i].pages,
                                                 memory_order_relaxed);
            copy[i].flags = atomic_load_explicit(&g_hot->r[i].flags,
                                                 memory_order_relaxed);
        }
        atomic_thread_fence(memory_order_acquire);
    } while ((seq & 1) ||
             seq != atomic_load_explicit(&g_hot->seq, memory_order_relaxed));
    /* The ranges were learned in a process forked from the same template:
     * an address is in the same mapping here, or unmapped (the call fails
     * for that range, harmlessly).  Populating never changes contents. */
    g_prefaulted = n > 0;
    for (i = 0; i < n; i++) {
        int read = (copy[i].flags & FH_HOTSET_READ) != 0;

        if (madvise((void *)(uintptr_t)copy[i].start,
                    (size_t)copy[i].pages * (size_t)page,
                    read ? MADV_POPULATE_READ : MADV_POPULATE_WRITE) == 0 &&
            !read)
            total += copy[i].pages;
    }
    return total;
}
