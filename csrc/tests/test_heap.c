/*
 * test_heap.c - the shared heap (fh_malloc family): random malloc, calloc,
 * realloc and free against a model (contents kept, no overlap, statistics
 * conserved, fh_heap_validate after every step), alignment, realloc in
 * place and by moving, double and foreign frees refused, allocations from
 * several forked processes at once, and a process killed at each step of
 * a call while it holds the heap lock.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void check_valid(const char *when)
{
    CHECK(fh_heap_validate() == 0, "heap invalid %s", when);
}

/* Sums over every process slot (the conservation the heap promises). */
static void proc_sums(uint64_t s[4])
{
    struct fh_heap_proc_stats ps[FH_HEAP_PROC_SLOTS];
    int n = fh_heap_get_proc_stats(ps, FH_HEAP_PROC_SLOTS);

    CHECK(n >= 0 && n <= FH_HEAP_PROC_SLOTS, "proc stats %d", n);
    memset(s, 0, 4 * sizeof *s);
    for (int i = 0; i < n; i++) {
        s[0] += ps[i].alloc_count;
        s[1] += ps[i].alloc_bytes;
        s[2] += ps[i].free_count;
        s[3] += ps[i].free_bytes;
    }
}

static struct fh_heap_proc_stats *find_pid(struct fh_heap_proc_stats *ps, int n,
                                           int pid)
{
    for (int i = 0; i < n; i++)
        if (ps[i].pid == pid)
            return &ps[i];
    return NULL;
}

/* A process dies at step of its next call: the one the heap was created
 * with; the next caller takes the initialisation over. */
static void test_init_crash(void)
{
    pid_t pid = fork_child();
    if (pid == 0) {
        fh__heap_crash_at(FH_HEAP_CRASH_INIT);
        fh_malloc(10);
        _exit(0);
    }
    CHECK(reap(pid) == 99, "child died formatting the heap");
    alarm(10);
    void *p = fh_malloc(10);
    alarm(0);
    CHECK(p, "malloc after the formatter died");
    CHECK(fh_free(p) == 0, "free");
    check_valid("after init takeover");
}

static void test_basic(void)
{
    struct fh_heap_stats st0, st;
    unsigned char *p, *q;
    int local;

    CHECK(fh_heap_get_stats(&st0) == 0, "stats");
    p = fh_malloc(100);
    CHECK(p && ((uintptr_t)p & 63) == 0, "64-byte aligned: %p", (void *)p);
    CHECK(fh_arena_contains(p, 100), "in the arena");
    CHECK(fh_malloc_usable_size(p) >= 100 && fh_malloc_usable_size(p) % 64 == 0,
          "usable %zu", fh_malloc_usable_size(p));
    memset(p, 0xab, 100);
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    CHECK(st.alloc_count == st0.alloc_count + 1, "alloc count");
    CHECK(st.total_allocs == st0.total_allocs + 1, "total allocs");
    CHECK(st.alloc_bytes == st0.alloc_bytes + fh_malloc_usable_size(p), "bytes");
    CHECK(st.segments >= 1 && st.total_bytes >= FH_HEAP_SEGMENT_SIZE, "segment");

    q = fh_calloc(10, 1000);
    CHECK(q, "calloc");
    for (int i = 0; i < 10000; i++)
        CHECK(q[i] == 0, "calloc zeroed at %d", i);
    memset(q, 0xcd, 10000);
    CHECK(fh_free(q) == 0, "free q");
    q = fh_calloc(10, 1000);       /* the same bytes again, zeroed again */
    for (int i = 0; i < 10000; i++)
        CHECK(q[i] == 0, "calloc re-zeroed at %d", i);
    CHECK(fh_free(q) == 0, "free q");
    errno = 0;
    CHECK(!fh_calloc(SIZE_MAX / 2, 3) && errno == ENOSPC, "calloc overflow");
    errno = 0;
    CHECK(!fh_malloc(SIZE_MAX - 10) && errno == ENOSPC, "huge malloc");

    /* Double free and foreign pointers: EINVAL, nothing changed. */
    CHECK(fh_free(p) == 0, "free p");
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    errno = 0;
    CHECK(fh_free(p) == -1 && errno == EINVAL, "double free refused");
    errno = 0;
    CHECK(fh_malloc_usable_size(p) == 0 && errno == EINVAL, "usable of freed");
    errno = 0;
    CHECK(!fh_realloc(p, 10) && errno == EINVAL, "realloc of freed");
    errno = 0;
    CHECK(fh_free(&local) == -1 && errno == EINVAL, "stack pointer refused");
    q = fh_malloc(1000);
    errno = 0;
    CHECK(fh_free(q + 64) == -1 && errno == EINVAL, "inside a block refused");
    errno = 0;
    CHECK(fh_free(q + 1) == -1 && errno == EINVAL, "unaligned refused");
    errno = 0;
    CHECK(fh_free((char *)fh_arena_base() + 8192) == -1 && errno == EINVAL,
          "arena pointer that is no block refused");
    CHECK(fh_free(NULL) == 0, "free NULL");
    CHECK(fh_free(q) == 0, "free q");
    {
        struct fh_heap_stats st2;
        CHECK(fh_heap_get_stats(&st2) == 0, "stats");
        CHECK(st2.total_frees == st.total_frees + 1 &&
              st2.total_allocs == st.total_allocs + 1, "refusals counted nothing");
    }
    check_valid("after basic");
}

static void test_alignment(void)
{
    void *ps[64];
    int n = 0;

    for (size_t a = 1; a <= (1u << 20); a <<= 1)
        for (int k = 0; k < 2; k++) {
            size_t size = 1 + rnd() % 5000;
            void *p = fh_malloc_aligned(size, a);
            CHECK(p, "aligned %zu", a);
            CHECK(((uintptr_t)p & (a - 1)) == 0 && ((uintptr_t)p & 63) == 0,
                  "%p aligned to %zu", p, a);
            memset(p, 0x5a, size);
            ps[n++] = p;
            check_valid("after an aligned malloc");
        }
    errno = 0;
    CHECK(!fh_malloc_aligned(10, 48) && errno == EINVAL, "align 48");
    errno = 0;
    CHECK(!fh_malloc_aligned(10, (size_t)FH_HEAP_MAX_ALIGN << 1) && errno == EINVAL,
          "align too big");
    while (n)
        CHECK(fh_free(ps[--n]) == 0, "free aligned");
    check_valid("after aligned frees");
}

static void test_realloc(void)
{
    unsigned char *p = fh_realloc(NULL, 300), *q, *r, *blocker;

    CHECK(p, "realloc NULL");
    for (int i = 0; i < 300; i++)
        p[i] = (unsigned char)i;
    /* Shrink in place. */
    q = fh_realloc(p, 64);
    CHECK(q == p && fh_malloc_usable_size(q) == 64, "shrunk in place");
    check_valid("after shrink");
    /* Grow in place into the free rest. */
    q = fh_realloc(p, 1000);
    CHECK(q == p, "grown in place");
    for (int i = 0; i < 64; i++)
        CHECK(q[i] == (unsigned char)i, "kept %d", i);
    check_valid("after grow");
    /* Grow by moving: the next block is in use. */
    blocker = fh_malloc(10);
    CHECK(blocker == q + fh_malloc_usable_size(q) + 64, "neighbour %p %p",
          (void *)blocker, (void *)q);
    memset(q, 0x77, 1000);
    r = fh_realloc(q, 100000);
    CHECK(r && r != q, "moved");
    for (int i = 0; i < 1000; i++)
        CHECK(r[i] == 0x77, "copied %d", i);
    errno = 0;
    CHECK(fh_free(q) == -1 && errno == EINVAL, "old block freed by realloc");
    CHECK(fh_realloc(r, 0) == NULL, "realloc to 0 frees");
    errno = 0;
    CHECK(fh_free(r) == -1 && errno == EINVAL, "freed by realloc 0");
    CHECK(fh_free(blocker) == 0, "free blocker");
    check_valid("after realloc");
}

/* Random calls against a model: every live block keeps its fill byte (no
 * overlap, realloc keeps contents), the statistics match the model. */
struct live { unsigned char *p; size_t size; unsigned char fill; };

static void check_live(struct live *l)
{
    for (size_t i = 0; i < l->size; i++)
        CHECK(l->p[i] == l->fill, "block %p byte %zu: %d, expected %d",
              (void *)l->p, i, l->p[i], l->fill);
}

static void random_ops(int rounds, int validate_every, unsigned char fill_base)
{
    enum { MAXLIVE = 300 };
    static struct live live[MAXLIVE];
    int n = 0;

    for (int r = 0; r < rounds; r++) {
        unsigned op = rnd() % 10;
        if (n && (op < 4 || n == MAXLIVE)) {
            int i = (int)(rnd() % (unsigned)n);
            check_live(&live[i]);
            CHECK(fh_free(live[i].p) == 0, "free");
            live[i] = live[--n];
        } else if (n && op < 6) {
            int i = (int)(rnd() % (unsigned)n);
            size_t size = 1 + rnd() % (rnd() % 4 ? 2000 : 300000);
            unsigned char *q;
            check_live(&live[i]);
            q = fh_realloc(live[i].p, size);
            CHECK(q, "realloc %zu", size);
            if (size > live[i].size)
                memset(q + live[i].size, live[i].fill, size - live[i].size);
            live[i].p = q;
            live[i].size = size;
            check_live(&live[i]);
        } else {
            size_t size = 1 + rnd() % (rnd() % 16 ? 3000 : 1500000);
            size_t align = op == 9 || rnd() % 4 ? 0 : (size_t)1 << (rnd() % 14);
            unsigned char *p = op == 9 ? fh_calloc(1, size)
                                       : fh_malloc_aligned(size, align);
            CHECK(p, "malloc %zu", size);
            CHECK(fh_malloc_usable_size(p) >= size, "usable");
            if (align)
                CHECK(((uintptr_t)p & (align - 1)) == 0, "aligned");
            live[n].p = p;
            live[n].size = size;
            live[n].fill = (unsigned char)(fill_base + r % 97 + 1);
            memset(p, live[n].fill, size);
            n++;
        }
        if (validate_every && r % validate_every == 0)
            check_valid("in random ops");
    }
    for (int i = 0; i < n; i++)
        check_live(&live[i]);
    while (n) {
        CHECK(fh_free(live[n - 1].p) == 0, "free at end");
        n--;
    }
}

static void test_model(void)
{
    struct fh_heap_stats st0, st;
    uint64_t s[4];

    CHECK(fh_heap_get_stats(&st0) == 0, "stats");
    random_ops(4000, 1, 0);
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    CHECK(st.alloc_count == st0.alloc_count && st.alloc_bytes == st0.alloc_bytes,
          "everything given back: %lu blocks in use",
          (unsigned long)st.alloc_count);
    proc_sums(s);
    CHECK(s[0] - s[2] == st.alloc_count && s[1] - s[3] == st.alloc_bytes,
          "process statistics sum to the heap's");
    CHECK(st.total_allocs == s[0] && st.total_frees == s[2], "totals");
    CHECK(st.free_bytes + st.alloc_bytes + 64 * (st.free_count + st.alloc_count +
          st.segments) == st.total_bytes, "bytes add up");
}

/* Several processes at once, each with its own model; each one's
 * statistics are its own. */
static void test_processes(void)
{
    enum { KIDS = 4 };
    pid_t pids[KIDS];
    struct fh_heap_proc_stats ps[FH_HEAP_PROC_SLOTS];
    const struct fh_memzone *mz = fh_memzone_reserve("kids.left", KIDS * 8, 0, 0);
    uint64_t *left;
    int n;

    CHECK(mz, "memzone");
    left = mz->addr;
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork_child();
        if (pids[k] == 0) {
            void *a, *b;
            rng += (uint64_t)k * 7919;
            random_ops(1500, 0, (unsigned char)(k * 100));
            /* Leave two blocks allocated, for the statistics. */
            a = fh_malloc(100);
            b = fh_malloc(200);
            if (!a || !b)
                _exit(2);
            left[k] = fh_malloc_usable_size(a) + fh_malloc_usable_size(b);
            _exit(0);
        }
    }
    for (int k = 0; k < KIDS; k++)
        CHECK(reap(pids[k]) == 0, "child %d", k);
    check_valid("after concurrent processes");
    n = fh_heap_get_proc_stats(ps, FH_HEAP_PROC_SLOTS);
    for (int k = 0; k < KIDS; k++) {
        struct fh_heap_proc_stats *p = find_pid(ps, n, pids[k]);
        CHECK(p, "stats of child %d", (int)pids[k]);
        CHECK(p->alloc_count - p->free_count == 2, "child %d: %lu - %lu",
              (int)pids[k], (unsigned long)p->alloc_count,
              (unsigned long)p->free_count);
        CHECK(p->alloc_bytes - p->free_bytes == left[k] && left[k] >= 128 + 256,
              "child bytes");
    }
}

/* A big request gets a segment of its own, given back to the arena when
 * the block is freed; big blocks that come and go in ever new sizes (a
 * buffer grown by realloc) never fill the segment table. */
static void test_big(void)
{
    struct fh_heap_stats st0, st;
    unsigned mz0 = fh_memzone_count();
    char *p, *q;

    CHECK(fh_heap_get_stats(&st0) == 0, "stats");
    p = fh_malloc(FH_HEAP_SEGMENT_SIZE);
    CHECK(p, "big");
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    CHECK(st.segments == st0.segments + 1 && fh_memzone_count() == mz0 + 1,
          "own segment");
    CHECK(fh_free(p) == 0, "free big");
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    CHECK(st.segments == st0.segments && st.total_bytes == st0.total_bytes &&
          fh_memzone_count() == mz0, "own segment given back");
    errno = 0;
    CHECK(fh_free(p) == -1 && errno == EINVAL, "its block is gone");
    for (unsigned i = 1; i <= FH_HEAP_MAX_SEGMENTS + 44; i++) {
        p = fh_malloc(FH_HEAP_SEGMENT_SIZE / 4 + 4096 * i);
        CHECK(p, "big block %u of a new size", i);
        CHECK(fh_free(p) == 0, "free %u", i);
    }
    p = fh_malloc(FH_HEAP_SEGMENT_SIZE / 4 + 1);
    CHECK(p, "a buffer to grow");
    memset(p, 0x5a, FH_HEAP_SEGMENT_SIZE / 4 + 1);
    for (size_t n = FH_HEAP_SEGMENT_SIZE / 4 + 1; n < FH_HEAP_SEGMENT_SIZE; n += 65536) {
        q = fh_realloc(p, n + 65536);
        CHECK(q && q[0] == 0x5a && q[n - 1] == 0x5a, "grown to %zu", n + 65536);
        memset(q + n, 0x5a, 65536);
        p = q;
    }
    CHECK(fh_free(p) == 0, "free the grown buffer");
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    CHECK(st.segments == st0.segments && fh_memzone_count() == mz0,
          "every own segment given back: %lu of %lu", (unsigned long)st.segments,
          (unsigned long)st0.segments);
    errno = 0;
    CHECK(!fh_malloc(fh_arena_size()) && errno == ENOSPC, "bigger than the arena");
    check_valid("after big");
}

/* Kill a process at each step of a call, holding the lock; the next caller
 * repairs and the heap is whole (fh_heap_validate) and usable. */
/* More than any free block holds: a request that needs a new segment. */
static size_t g_big;

static void crash_child(int step)
{
    unsigned char *a, *b, *c, *d;

    a = fh_malloc(100);
    b = fh_malloc(100);
    c = fh_malloc(100);
    d = fh_malloc(1000);
    if (!a || !b || !c || !d)
        _exit(2);
    fh_free(a);
    fh_free(c);
    fh__heap_crash_at(step);
    switch (step) {
    case FH_HEAP_CRASH_SPLIT:
    case FH_HEAP_CRASH_ALLOC:
    case FH_HEAP_CRASH_ALLOC_STAT:
        fh_malloc_aligned(300, 4096);
        break;
    case FH_HEAP_CRASH_FREE:
    case FH_HEAP_CRASH_FREE_STAT:
    case FH_HEAP_CRASH_MERGE:
        fh_free(b);
        break;
    case FH_HEAP_CRASH_SEGMENT:
        fh_malloc(g_big);
        break;
    case FH_HEAP_CRASH_RESIZE:
        fh_realloc(d, 40);      /* shrink: d's tail given back */
        break;
    case FH_HEAP_CRASH_RELEASE: {
        void *big = fh_malloc(g_big);
        if (!big)
            _exit(3);
        fh__heap_crash_at(step);
        fh_free(big);           /* its own segment, emptied */
        break;
    }
    }
    _exit(0);
}

static void test_crash_steps(void)
{
    static const int steps[] = {
        FH_HEAP_CRASH_SPLIT, FH_HEAP_CRASH_ALLOC, FH_HEAP_CRASH_ALLOC_STAT,
        FH_HEAP_CRASH_FREE, FH_HEAP_CRASH_FREE_STAT, FH_HEAP_CRASH_MERGE,
        FH_HEAP_CRASH_SEGMENT, FH_HEAP_CRASH_RESIZE, FH_HEAP_CRASH_RELEASE,
    };

    for (unsigned k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        int step = steps[k];
        struct fh_heap_stats st0, st;
        unsigned mz0 = fh_memzone_count();
        pid_t pid;

        CHECK(fh_heap_get_stats(&st0) == 0, "stats");
        g_big = st0.greatest_free + FH_HEAP_SEGMENT_SIZE;
        pid = fork_child();
        if (pid == 0)
            crash_child(step);
        CHECK(reap(pid) == 99, "child died at step %d", step);
        alarm(10);
        CHECK(fh__heap_lock() == 1, "lock reports a repair (step %d)", step);
        fh__heap_unlock();
        alarm(0);
        CHECK(fh_heap_validate() == 0, "whole after step %d", step);
        CHECK(fh_heap_get_stats(&st) == 0, "stats");
        if (step == FH_HEAP_CRASH_SEGMENT) {
            void *p;
            CHECK(st.segments == st0.segments, "unregistered segment");
            p = fh_malloc(g_big);
            CHECK(p, "big after the crash");
            CHECK(fh_memzone_count() == mz0 + 1, "the dead one's memzone adopted");
            CHECK(fh_free(p) == 0, "free");
        }
        if (step == FH_HEAP_CRASH_RELEASE) {
            /* Unlisted, not given back: the repair lists it again, and the
             * next free of a block there gives it back. */
            void *p;
            CHECK(st.segments == st0.segments + 1, "the emptied segment kept");
            p = fh_malloc(g_big);
            CHECK(p, "big after the crash");
            CHECK(fh_free(p) == 0, "free");
            CHECK(fh_heap_get_stats(&st) == 0 && st.segments == st0.segments,
                  "given back this time");
        }
        random_ops(200, 10, 0);
        check_valid("usable after the crash");
    }
    /* A process that dies holding the lock outside any call. */
    pid_t pid = fork_child();
    if (pid == 0) {
        if (fh__heap_lock() != 0)
            _exit(2);
        _exit(0);
    }
    CHECK(reap(pid) == 0, "child locked");
    alarm(10);
    void *p = fh_malloc(10);
    alarm(0);
    CHECK(p && fh_free(p) == 0, "malloc after the holder died");
    check_valid("after a dead holder");
}

/* More processes than slots: ended ones are folded into pid 0's slot,
 * also when the folder dies half way. */
static void test_recycle(void)
{
    struct fh_heap_stats st;
    uint64_t s[4];

    for (int i = 0; i < FH_HEAP_PROC_SLOTS + 10; i++) {
        pid_t pid = fork_child();
        if (pid == 0) {
            if (i == FH_HEAP_PROC_SLOTS + 5)
                fh__heap_crash_at(FH_HEAP_CRASH_RECYCLE);
            void *p = fh_malloc(64);
            if (!p || !fh_malloc(64) || fh_free(p))
                _exit(2);
            _exit(0);
        }
        int rc = reap(pid);
        CHECK(rc == 0 || (rc == 99 && i == FH_HEAP_PROC_SLOTS + 5),
              "child %d exit %d", i, rc);
    }
    check_valid("after recycling slots");
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    CHECK(st.procs <= FH_HEAP_PROC_SLOTS, "procs %u", st.procs);
    proc_sums(s);
    CHECK(s[0] - s[2] == st.alloc_count, "conserved");
    {
        struct fh_heap_proc_stats ps[FH_HEAP_PROC_SLOTS];
        int n = fh_heap_get_proc_stats(ps, FH_HEAP_PROC_SLOTS);
        struct fh_heap_proc_stats *z = find_pid(ps, n, 0);
        CHECK(z && z->alloc_count >= 10, "ended processes in pid 0's slot");
    }
}

/* More live processes than slots: the ones that find none count in pid
 * 0's slot, and the sums still match. */
static void test_full_table(void)
{
    enum { KIDS = FH_HEAP_PROC_SLOTS + 3 };
    static pid_t pids[KIDS];
    static struct fh_heap_proc_stats ps[FH_HEAP_PROC_SLOTS];
    int ready[2], go[2], own = 0, n;
    char c;
    uint64_t s[4];
    struct fh_heap_stats st;

    CHECK(pipe(ready) == 0 && pipe(go) == 0, "pipes");
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork_child();
        if (pids[k] == 0) {
            void *p = fh_malloc(64), *q = fh_malloc(64);
            close(ready[0]);
            close(go[1]);
            if (!p || !q || fh_free(p))
                _exit(2);
            if (write(ready[1], "x", 1) != 1)
                _exit(3);
            (void)!read(go[0], &c, 1);           /* until the parent closes */
            _exit(fh_free(q) ? 4 : 0);
        }
    }
    close(ready[1]);
    close(go[0]);
    for (int k = 0; k < KIDS; k++)
        CHECK(read(ready[0], &c, 1) == 1, "child %d ready", k);
    check_valid("with the table full");
    n = fh_heap_get_proc_stats(ps, FH_HEAP_PROC_SLOTS);
    CHECK(n == FH_HEAP_PROC_SLOTS, "every slot in use: %d", n);
    for (int k = 0; k < KIDS; k++)
        own += find_pid(ps, n, pids[k]) != NULL;
    CHECK(own <= FH_HEAP_PROC_SLOTS - 2 && own >= 3, "children with a slot: %d", own);
    close(go[1]);
    close(ready[0]);
    for (int k = 0; k < KIDS; k++)
        CHECK(reap(pids[k]) == 0, "child %d", k);
    check_valid("after the full table");
    CHECK(fh_heap_get_stats(&st) == 0, "stats");
    proc_sums(s);
    CHECK(s[0] - s[2] == st.alloc_count && s[1] - s[3] == st.alloc_bytes, "conserved");
}

int main(void)
{
    int fds;
    struct fh_heap_stats st;

    errno = 0;
    CHECK(!fh_malloc(10) && errno == ENODEV, "no arena yet");
    errno = 0;
    CHECK(fh_heap_get_stats(&st) == -1 && errno == ENODEV, "no arena: stats");
    CHECK(fh_arena_create(256u << 20, 0, "test") == 0, "arena");
    CHECK(fh_heap_get_stats(&st) == 0 && st.segments == 0, "no heap yet");
    CHECK(fh_heap_validate() == 0, "no heap yet: valid");
    errno = 0;
    CHECK(fh_free((void *)&st) == -1 && errno == EINVAL, "free before any heap");
    fds = count_fds();
    test_init_crash();
    test_basic();
    test_alignment();
    test_realloc();
    test_model();
    test_big();
    test_processes();
    test_crash_steps();
    test_recycle();
    test_full_table();
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_heap: ok\n");
    return 0;
}
