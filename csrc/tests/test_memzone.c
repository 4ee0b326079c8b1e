/*
 * test_memzone.c - memzone directory: create, lookup, EEXIST/ENOENT, free
 * bytes, creation from forked secondaries, and recovery when a process dies
 * holding the directory lock (at each step of a reserve and of a free);
 * freeing and reuse (names, bytes, generations, stale copies), destroy of
 * rings, mempools and hash tables, names that exist as another type, and
 * an arena that grows while other processes use what it held.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

static void test_basic(void)
{
    size_t free0 = fh_memzone_free_bytes();
    unsigned count0 = fh_memzone_count();
    const struct fh_memzone *a, *b, *big;
    char longname[FH_MEMZONE_NAMESIZE + 1];

    CHECK(free0 > 60u << 20, "free bytes %zu", free0);
    a = fh_memzone_reserve("t.a", 1000, 0, 0);
    CHECK(a, "reserve t.a");
    CHECK(((uintptr_t)a->addr & 63) == 0, "default alignment is 64: %p", a->addr);
    CHECK(fh_arena_contains(a->addr, a->len), "inside the arena");
    CHECK(a->len == 1000 && strcmp(a->name, "t.a") == 0, "fields");
    for (int i = 0; i < 1000; i++)
        CHECK(((unsigned char *)a->addr)[i] == 0, "zero-filled at %d", i);
    CHECK(fh_memzone_free_bytes() <= free0 - 1000, "free bytes went down");
    CHECK(fh_memzone_count() == count0 + 1, "count");

    errno = 0;
    CHECK(!fh_memzone_reserve("t.a", 10, 0, 0) && errno == EEXIST, "EEXIST");
    CHECK(fh_memzone_lookup("t.a") == a, "lookup finds it");
    errno = 0;
    CHECK(!fh_memzone_lookup("t.missing") && errno == ENOENT, "ENOENT");

    b = fh_memzone_reserve("t.b", 10, 1u << 21, 7);
    CHECK(b && ((uintptr_t)b->addr & ((1u << 21) - 1)) == 0, "2 MiB aligned");
    CHECK(b->align == 1u << 21 && b->flags == 7, "align/flags kept");

    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    errno = 0;
    CHECK(!fh_memzone_reserve(longname, 10, 0, 0) && errno == EINVAL, "long name");
    errno = 0;
    CHECK(!fh_memzone_reserve("", 10, 0, 0) && errno == EINVAL, "empty name");
    errno = 0;
    CHECK(!fh_memzone_reserve("t.c", 10, 48, 0) && errno == EINVAL, "align 48");
    errno = 0;
    CHECK(!fh_memzone_reserve("t.c", 0, 0, 0) && errno == EINVAL, "len 0");
    errno = 0;
    CHECK(!fh_memzone_reserve("t.c", fh_memzone_free_bytes() + 1, 0, 0) &&
          errno == ENOSPC, "too big");
    big = fh_memzone_reserve("t.big", 1u << 20, 4096, 0);
    CHECK(big, "1 MiB after a failed reserve");
    CHECK(!fh_memzone_lookup("t.c"), "failed reserves leave nothing");
}

struct walk_state { int n; const char *last; };

static int walk_cb(const struct fh_memzone *mz, void *arg)
{
    struct walk_state *w = arg;
    w->n++;
    w->last = mz->name;
    return strcmp(mz->name, "t.b") == 0 ? 42 : 0;
}

static void test_walk(void)
{
    struct walk_state w = { 0, NULL };
    CHECK(fh_memzone_walk(walk_cb, &w) == 42, "walk stops early");
    CHECK(w.n == 2 && strcmp(w.last, "t.b") == 0, "creation order: %d", w.n);
}

/* Secondaries create too, and race on one name: exactly one wins. */
static void test_secondaries_create(void)
{
    enum { KIDS = 3, PER = 50 };
    pid_t pids[KIDS];
    int won = 0;

    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork_child();
        if (pids[k] == 0) {
            char name[32];
            int rc = 0;
            for (int i = 0; i < PER; i++) {
                snprintf(name, sizeof name, "kid%d.%d", k, i);
                const struct fh_memzone *mz = fh_memzone_reserve(name, 100 + i, 0, 0);
                if (!mz) _exit(2);
                memset(mz->addr, k + 1, mz->len);
            }
            if (fh_memzone_reserve("shared.once", 64, 0, 0))
                rc = 10;
            else if (errno != EEXIST)
                rc = 3;
            _exit(rc);
        }
    }
    for (int k = 0; k < KIDS; k++) {
        int rc = reap(pids[k]);
        CHECK(rc == 0 || rc == 10, "child %d exit %d", k, rc);
        won += rc == 10;
    }
    CHECK(won == 1, "exactly one creator of shared.once, got %d", won);
    for (int k = 0; k < KIDS; k++)
        for (int i = 0; i < PER; i++) {
            char name[32];
            snprintf(name, sizeof name, "kid%d.%d", k, i);
            const struct fh_memzone *mz = fh_memzone_lookup(name);
            CHECK(mz && mz->len == (uint64_t)(100 + i), "lookup %s", name);
            for (uint64_t j = 0; j < mz->len; j++)
                CHECK(((unsigned char *)mz->addr)[j] == k + 1,
                      "%s overlaps another memzone at byte %lu", name,
                      (unsigned long)j);
        }
}

/* A child takes the lock and dies; the parent must not hang. */
static void test_dead_lock_holder(void)
{
    pid_t pid = fork_child();
    if (pid == 0) {
        if (fh__memzone_lock() != 0)
            _exit(2);
        _exit(0); /* dies holding the lock */
    }
    CHECK(reap(pid) == 0, "child locked");
    alarm(10);
    CHECK(fh_memzone_reserve("after.death", 64, 0, 0), "reserve after death");
    alarm(0);
    /* The lock is consistent and free again. */
    CHECK(fh__memzone_lock() == 0, "plain lock afterwards");
    fh__memzone_unlock();
}

/* Die at each step inside reserve; the next locker repairs. */
static void test_crash_steps(void)
{
    for (int step = 1; step <= 4; step++) {
        char name[32];
        unsigned before = fh_memzone_count();
        size_t free_before = fh_memzone_free_bytes();
        pid_t pid;

        snprintf(name, sizeof name, "crash.%d", step);
        pid = fork_child();
        if (pid == 0) {
            fh__memzone_crash_at(step);
            fh_memzone_reserve(name, 4096, 0, 0);
            _exit(0); /* not reached */
        }
        CHECK(reap(pid) == 99, "child crashed at step %d", step);
        CHECK(fh_memzone_count() == before, "count unchanged before repair");
        alarm(10);
        CHECK(fh__memzone_lock() == 1, "lock reports a repair (step %d)", step);
        fh__memzone_unlock();
        alarm(0);
        if (step < 4) {
            CHECK(fh_memzone_count() == before, "half-written slot ignored");
            CHECK(!fh_memzone_lookup(name), "not visible");
            CHECK(fh_memzone_free_bytes() == free_before, "its bytes are free");
            CHECK(fh_memzone_reserve(name, 4096, 0, 0), "name reusable");
        } else {
            CHECK(fh_memzone_count() == before + 1, "published slot counted");
            CHECK(fh_memzone_lookup(name), "visible after repair");
            errno = 0;
            CHECK(!fh_memzone_reserve(name, 4096, 0, 0) && errno == EEXIST,
                  "EEXIST after repair");
        }
        CHECK(fh_memzone_free_bytes() == free_before - 4096, "handed out once");
    }
    /* Die in a free, after the slot is unpublished, before the count. */
    {
        unsigned before = fh_memzone_count();
        size_t free_before = fh_memzone_free_bytes();
        pid_t pid = fork_child();

        if (pid == 0) {
            fh__memzone_crash_at(5);
            fh_memzone_free(fh_memzone_lookup("crash.4"));
            _exit(0); /* not reached */
        }
        CHECK(reap(pid) == 99, "child crashed in free");
        CHECK(!fh_memzone_lookup("crash.4"), "gone before the repair");
        alarm(10);
        CHECK(fh__memzone_lock() == 1, "lock reports a repair (free)");
        fh__memzone_unlock();
        alarm(0);
        CHECK(fh_memzone_count() == before - 1, "count repaired");
        CHECK(fh_memzone_free_bytes() == free_before + 4096, "bytes free again");
    }
}

/* Free, reuse of names and bytes, generations, stale copies. */
static void test_free(void)
{
    const struct fh_memzone *a, *b;
    struct fh_memzone copy, again;
    size_t free0 = fh_memzone_free_bytes();
    unsigned count0 = fh_memzone_count();
    void *addr;

    a = fh_memzone_reserve("f.a", 8192, 0, 0);
    CHECK(a, "reserve f.a");
    CHECK(a->gen & 1, "a live memzone's gen is odd: %u", a->gen);
    CHECK(fh_memzone_copy(a, &copy) == 0 && copy.gen == a->gen &&
          copy.addr == a->addr && strcmp(copy.name, "f.a") == 0, "copy");
    memset(a->addr, 0xab, a->len);
    addr = a->addr;
    CHECK(fh_memzone_free(a) == 0, "free");
    CHECK(fh_memzone_count() == count0, "count back");
    CHECK(fh_memzone_free_bytes() == free0, "free bytes back");
    errno = 0;
    CHECK(!fh_memzone_lookup("f.a") && errno == ENOENT, "lookup after free");
    errno = 0;
    CHECK(fh_memzone_free(a) < 0 && errno == ENOENT, "double free (slot)");
    errno = 0;
    CHECK(fh_memzone_copy(&copy, &again) < 0 && errno == EIDRM, "stale copy");
    errno = 0;
    CHECK(fh_memzone_copy(a, &again) < 0 && errno == ENOENT, "free slot");
    CHECK(!(fh_memzone_gen(a) & 1), "free slot's gen is even");

    /* The name and the bytes come back, zeroed; the stale copy stays
     * stale even though the slot and the address are the same. */
    b = fh_memzone_reserve("f.a", 8192, 0, 0);
    CHECK(b && b == a && b->addr == addr, "same slot, same bytes (first fit)");
    CHECK(b->gen != copy.gen, "new generation");
    for (int i = 0; i < 8192; i++)
        CHECK(((unsigned char *)b->addr)[i] == 0, "reused bytes zeroed at %d", i);
    errno = 0;
    CHECK(fh_memzone_copy(&copy, &again) < 0 && errno == EIDRM, "still stale");
    errno = 0;
    CHECK(fh_memzone_free(&copy) < 0 && errno == EIDRM, "free through a stale copy");
    CHECK(fh_memzone_lookup("f.a") == b, "the new one is untouched");
    CHECK(fh_memzone_copy(b, &copy) == 0, "fresh copy");
    CHECK(fh_memzone_free(&copy) == 0, "free through a current copy");
    errno = 0;
    CHECK(fh_memzone_free(NULL) < 0 && errno == EINVAL, "NULL");

    /* A hole between two memzones is filled first fit; a bigger one goes
     * elsewhere. */
    {
        const struct fh_memzone *x = fh_memzone_reserve("f.x", 65536, 4096, 0);
        const struct fh_memzone *y = fh_memzone_reserve("f.y", 4096, 4096, 0);
        const struct fh_memzone *z, *w;
        void *xa;
        CHECK(x && y, "x, y");
        xa = x->addr;
        CHECK(fh_memzone_free(x) == 0, "free x");
        z = fh_memzone_reserve("f.z", 100000, 4096, 0);
        CHECK(z && z->addr != xa, "too big for the hole");
        w = fh_memzone_reserve("f.w", 60000, 4096, 0);
        CHECK(w && w->addr == xa, "fits the hole");
        CHECK(fh_memzone_free(y) == 0 && fh_memzone_free(z) == 0 &&
              fh_memzone_free(w) == 0, "free y z w");
    }
}

/* Free and reserve in a loop while other processes look names up and
 * check what they find: a lookup finds a live memzone with the right name
 * and contents, or nothing, never another's slot half-written. */
static void test_free_concurrent(void)
{
    enum { READERS = 2, ROUNDS = 3000 };
    pid_t pids[READERS];
    volatile uint64_t *stop;
    const struct fh_memzone *flag = fh_memzone_reserve("cc.stop", 64, 0, 0);

    CHECK(flag, "flag");
    stop = flag->addr;
    for (int k = 0; k < READERS; k++) {
        pids[k] = fork_child();
        if (pids[k] == 0) {
            unsigned long seen = 0;
            while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
                for (int i = 0; i < 4; i++) {
                    char name[32];
                    struct fh_memzone c;
                    const struct fh_memzone *mz;
                    snprintf(name, sizeof name, "cc.%d", i);
                    mz = fh_memzone_lookup(name);
                    if (!mz) {
                        if (errno != ENOENT)
                            _exit(2);
                        continue;
                    }
                    if (fh_memzone_copy(mz, &c) < 0)
                        continue;          /* freed since: fine */
                    if (strcmp(c.name, name) != 0 && c.len != (uint64_t)(4096 * (i + 1)))
                        continue;          /* reused since for another: fine */
                    if (strcmp(c.name, name) == 0 && c.len != (uint64_t)(4096 * (i + 1)))
                        _exit(3);          /* torn */
                    seen++;
                }
            }
            _exit(seen ? 0 : 4);
        }
    }
    for (int r = 0; r < ROUNDS; r++) {
        char name[32];
        int i = r % 4;
        const struct fh_memzone *mz;
        snprintf(name, sizeof name, "cc.%d", i);
        mz = fh_memzone_lookup(name);
        if (mz)
            CHECK(fh_memzone_free(mz) == 0, "free %s", name);
        CHECK(fh_memzone_reserve(name, 4096 * (i + 1), 0, 0), "reserve %s", name);
    }
    __atomic_store_n(stop, 1, __ATOMIC_RELEASE);
    for (int k = 0; k < READERS; k++)
        CHECK(reap(pids[k]) == 0, "reader %d", k);
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "cc.%d", i);
        CHECK(fh_memzone_free(fh_memzone_lookup(name)) == 0, "clean %s", name);
    }
    CHECK(fh_memzone_free(flag) == 0, "free flag");
}

/* Random reserves and frees against a model: what is live is what the
 * model says, no two live memzones overlap, each keeps its contents.
 * Slots and bytes get reused in every order (both ways of sorting the
 * live ranges run). */
struct live { uint64_t start, end; };

static int cmp_live(const void *a, const void *b)
{
    const struct live *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static int collect(const struct fh_memzone *mz, void *arg)
{
    struct { struct live *v; unsigned n; } *c = arg;
    c->v[c->n].start = (uintptr_t)mz->addr;
    c->v[c->n].end = (uintptr_t)mz->addr + mz->len;
    c->n++;
    return 0;
}

static void test_random_model(void)
{
    enum { NAMES = 600, OPS = 6000 };
    static const struct fh_memzone *model[NAMES];
    static struct live v[FH_MEMZONE_MAX];
    struct { struct live *v; unsigned n; } c = { v, 0 };
    unsigned count0 = fh_memzone_count(), live = 0;
    uint64_t x = 88172645463325252ull;

    for (unsigned op = 0; op < OPS; op++) {
        char name[32];
        unsigned i;
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;     /* xorshift64 */
        i = (unsigned)(x % NAMES);
        snprintf(name, sizeof name, "rm.%u", i);
        if (model[i]) {
            CHECK(((unsigned char *)model[i]->addr)[0] == (unsigned char)(i + 1) &&
                  ((unsigned char *)model[i]->addr)[model[i]->len - 1] ==
                  (unsigned char)(i + 1), "contents of %s kept", name);
            CHECK(fh_memzone_free(model[i]) == 0, "free %s", name);
            model[i] = NULL;
            live--;
        } else {
            size_t len = 1 + (size_t)((x >> 20) % 65536);
            size_t align = (size_t)64 << ((x >> 40) % 7);
            const struct fh_memzone *mz = fh_memzone_reserve(name, len, align, 0);
            CHECK(mz && ((uintptr_t)mz->addr & (align - 1)) == 0, "reserve %s", name);
            CHECK(((unsigned char *)mz->addr)[0] == 0 &&
                  ((unsigned char *)mz->addr)[len - 1] == 0, "zeroed");
            memset(mz->addr, (int)(i + 1), len);
            model[i] = mz;
            live++;
        }
        CHECK(fh_memzone_count() == count0 + live, "count %u", fh_memzone_count());
    }
    CHECK(fh_memzone_walk(collect, &c) == 0, "walk");
    qsort(v, c.n, sizeof v[0], cmp_live);
    for (unsigned k = 1; k < c.n; k++)
        CHECK(v[k - 1].end <= v[k].start, "overlap at %u", k);
    for (unsigned i = 0; i < NAMES; i++)
        if (model[i])
            CHECK(fh_memzone_free(model[i]) == 0, "clean %u", i);
    CHECK(fh_memzone_count() == count0, "all freed");
}

/* Rings, mempools and tables are destroyed; their names come back; a name
 * is one namespace across types. */
static void test_objects(void)
{
    struct fh_ring *r = fh_ring_create("o.x", 64, 8, 0);
    struct fh_mempool *mp;
    struct fh_hash *h;
    unsigned count0 = fh_memzone_count();
    void *obj;

    CHECK(r, "ring");
    errno = 0;
    CHECK(!fh_mempool_create("o.x", 16, 64, 4, 0) && errno == FH_EWRONGTYPE,
          "a pool named like a ring");
    errno = 0;
    CHECK(!fh_mempool_lookup("o.x") && errno == FH_EWRONGTYPE, "pool lookup");
    errno = 0;
    CHECK(!fh_memzone_reserve("o.x", 64, 0, 0) && errno == FH_EWRONGTYPE, "memzone");
    errno = 0;
    CHECK(!fh_memzone_lookup("o.x") && errno == FH_EWRONGTYPE, "memzone lookup");
    errno = 0;
    CHECK(!fh_ring_create("o.x", 64, 8, 0) && errno == EEXIST, "same type: EEXIST");
    CHECK(strcmp(fh_memzone_name_kind("o.x"), "ring") == 0, "kind");
    CHECK(fh_memzone_name_kind("o.none") == NULL, "no kind");
    errno = 0;
    CHECK(!fh_ring_lookup("o.none") && errno == ENOENT, "missing: ENOENT");

    CHECK(fh_ring_destroy(r) == 0, "ring destroy");
    errno = 0;
    CHECK(!fh_ring_lookup("o.x") && errno == ENOENT, "ring gone");
    errno = 0;
    CHECK(fh_ring_destroy(r) < 0 && errno == ENOENT, "destroyed twice");
    errno = 0;
    CHECK(fh_ring_destroy(NULL) < 0 && errno == EINVAL, "NULL ring");
    CHECK(fh_memzone_count() == count0 - 1, "memzone freed");

    mp = fh_mempool_create("o.x", 16, 64, 4, 0);
    CHECK(mp, "the name is a pool now");
    CHECK(fh_mempool_get(mp, &obj) == 0, "get");
    /* Another live thread's cache blocks the destroy. */
    {
        int pfd[2], cfd[2];
        char c;
        pid_t pid;
        CHECK(pipe(pfd) == 0 && pipe(cfd) == 0, "pipes");
        pid = fork_child();
        if (pid == 0) {
            void *o;
            if (fh_mempool_get(mp, &o) != 0 || fh_mempool_put(mp, o) != 0)
                _exit(2);
            (void)!write(pfd[1], "x", 1);
            (void)!read(cfd[0], &c, 1);
            _exit(0);   /* _exit: its cache stays claimed, as if killed */
        }
        CHECK(read(pfd[0], &c, 1) == 1, "child used the pool");
        errno = 0;
        CHECK(fh_mempool_destroy(mp) < 0 && errno == EBUSY, "busy");
        CHECK(fh_mempool_lookup("o.x") == mp, "still there");
        CHECK(fh_mempool_put(mp, obj) == 0 && fh_mempool_get(mp, &obj) == 0,
              "usable after a refused destroy");
        CHECK(write(cfd[1], "x", 1) == 1, "release child");
        CHECK(reap(pid) == 0, "child");
        close(pfd[0]); close(pfd[1]); close(cfd[0]); close(cfd[1]);
    }
    CHECK(fh_mempool_destroy(mp) == 0, "destroy after the owner died");
    errno = 0;
    CHECK(!fh_mempool_lookup("o.x") && errno == ENOENT, "pool gone");

    h = fh_hash_create("o.x", 64, 8, NULL, 0, 0);
    CHECK(h, "the name is a table now");
    errno = 0;
    CHECK(!fh_ring_lookup("o.x") && errno == FH_EWRONGTYPE, "ring lookup of a table");
    CHECK(fh_hash_destroy(h) == 0, "hash destroy");
    errno = 0;
    CHECK(!fh_hash_find_existing("o.x") && errno == ENOENT, "table gone");
    CHECK(fh_memzone_count() == count0 - 1, "all freed");
}

/* In a child with an arena of its own: start small, grow while other
 * processes use what the arena held, stop at the maximum. */
static void test_grow(void)
{
    pid_t pid = fork_child();

    if (pid == 0) {
        enum { KIDS = 2 };
        const struct fh_memzone *first, *flag;
        struct fh_ring *r;
        pid_t kids[KIDS];
        size_t size0;
        int n = 0;

        CHECK(fh_arena_create_growable(4u << 20, 32u << 20, 0, "grow") == 0, "arena");
        size0 = fh_arena_size();
        CHECK(size0 == 4u << 20 && fh_arena_max() == 32u << 20, "sizes %zu %zu",
              size0, fh_arena_max());
        CHECK(fh_memzone_free_bytes() > 30u << 20, "free counts the maximum");
        first = fh_memzone_reserve("g.first", 1u << 20, 0, 0);
        r = fh_ring_create("g.ring", 1024, 8, 0);
        flag = fh_memzone_reserve("g.flag", 64, 0, 0);
        CHECK(first && r && flag, "objects in the first part");
        memset(first->addr, 0x5a, first->len);
        /* A creator that dies after growing the arena for its memzone
         * (step 3) leaves the arena grown and the bytes free. */
        {
            pid_t c = fork_child();
            const struct fh_memzone *again;
            if (c == 0) {
                fh__memzone_crash_at(3);
                fh_memzone_reserve("g.crash", 8u << 20, 0, 0);
                _exit(0); /* not reached */
            }
            CHECK(reap(c) == 99, "crashed after growing");
            CHECK(fh_arena_size() >= size0 + (6u << 20), "grown: %zu", fh_arena_size());
            CHECK(fh__memzone_lock() == 1, "repair");
            fh__memzone_unlock();
            CHECK(!fh_memzone_lookup("g.crash"), "not published");
            size0 = fh_arena_size();
            again = fh_memzone_reserve("g.crash", 8u << 20, 0, 0);
            CHECK(again && fh_arena_size() == size0, "reserved without growing again");
            CHECK(fh_memzone_free(again) == 0, "free g.crash");
            size0 = fh_arena_size();
        }
        for (int k = 0; k < KIDS; k++) {
            kids[k] = fork_child();
            if (kids[k] == 0) {
                /* Read and write the old objects while the arena grows;
                 * child 1 also grows it itself. */
                struct fh_ring *rr = fh_ring_lookup("g.ring");
                uint64_t v = 0, got;
                const struct fh_memzone *mine = NULL;
                if (!rr)
                    _exit(2);
                while (!__atomic_load_n((uint64_t *)flag->addr, __ATOMIC_ACQUIRE)) {
                    if (((unsigned char *)first->addr)[v % first->len] != 0x5a)
                        _exit(3);
                    if (fh_ring_enqueue_u64(rr, v) == 0 && fh_ring_dequeue_u64(rr, &got) != 0)
                        _exit(4);
                    v++;
                    if (k == 1 && !mine && v == 1000) {
                        mine = fh_memzone_reserve("g.kid", 12u << 20, 0, 0);
                        if (!mine)
                            _exit(5);
                        memset(mine->addr, 1, mine->len);
                    }
                }
                _exit(0);
            }
        }
        while (!fh_memzone_lookup("g.kid"))
            usleep(1000);
        CHECK(fh_arena_size() > size0, "a secondary grew it: %zu", fh_arena_size());
        for (;; n++) {
            char name[32];
            const struct fh_memzone *mz;
            snprintf(name, sizeof name, "g.%d", n);
            mz = fh_memzone_reserve(name, 1u << 20, 0, 0);
            if (!mz)
                break;
            CHECK(fh_arena_contains(mz->addr, mz->len), "inside the grown arena");
            memset(mz->addr, 7, mz->len);
        }
        CHECK(errno == ENOSPC, "ENOSPC at the maximum, after %d", n);
        CHECK(n >= 15, "grew to the maximum: %d MiB more", n);
        CHECK(fh_arena_size() <= fh_arena_max(), "never past the maximum");
        __atomic_store_n((uint64_t *)flag->addr, 1, __ATOMIC_RELEASE);
        for (int k = 0; k < KIDS; k++)
            CHECK(reap(kids[k]) == 0, "user of the old objects %d", k);
        /* Freed bytes below the top are reused without growing. */
        CHECK(fh_memzone_free(fh_memzone_lookup("g.3")) == 0, "free g.3");
        CHECK(fh_memzone_reserve("g.again", 1u << 20, 0, 0), "reuse a freed MiB");
        _exit(0);
    }
    CHECK(reap(pid) == 0, "grow test");
    errno = 0;
}

static void test_bad_arena(void)
{
    pid_t pid = fork_child();

    if (pid == 0) {
        errno = 0;
        CHECK(fh_arena_create_growable(8u << 20, 4u << 20, 0, "bad") < 0 &&
              errno == EINVAL, "max below size");
        errno = 0;
        CHECK(fh_arena_create_growable(1u << 20, 0, 0, "bad") < 0 &&
              errno == EINVAL, "below the minimum");
        CHECK(fh_arena_create_growable(4u << 20, 0, 0, "ok") == 0, "default max");
        CHECK(fh_arena_max() == FH_ARENA_DEFAULT_MAX, "default max %zu", fh_arena_max());
        _exit(0);
    }
    CHECK(reap(pid) == 0, "bad arena test");
}

static void test_directory_full(void)
{
    unsigned n = fh_memzone_count();
    char name[32];
    for (unsigned i = n; i < FH_MEMZONE_MAX; i++) {
        snprintf(name, sizeof name, "fill.%u", i);
        CHECK(fh_memzone_reserve(name, 8, 0, 0), "fill %u", i);
    }
    errno = 0;
    CHECK(!fh_memzone_reserve("one.too.many", 8, 0, 0) && errno == ENOSPC,
          "directory full");
    CHECK(fh_memzone_lookup("fill.1000"), "lookup in a full directory");
}

int main(void)
{
    int fds;

    errno = 0;
    CHECK(!fh_memzone_lookup("x") && errno == ENODEV, "no arena yet");
    errno = 0;
    CHECK(fh_memzone_free(NULL) < 0 && errno == ENODEV, "free without an arena");
    test_grow();
    test_bad_arena();
    CHECK(fh_arena_create(64u << 20, 0, "test") == 0, "arena");
    fds = count_fds();
    test_basic();
    test_walk();
    test_secondaries_create();
    test_dead_lock_holder();
    test_crash_steps();
    test_free();
    test_free_concurrent();
    test_random_model();
    test_objects();
    test_directory_full();
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_memzone: ok\n");
    return 0;
}
