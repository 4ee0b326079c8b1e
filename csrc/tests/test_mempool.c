/*
 * test_mempool.c - mempools: creation, exhaustion and return (with and
 * without caches), in-use/avail semantics, per-thread caches across fork
 * (no object handed out twice), reclaiming a dead process's cache, thread
 * and process exit, and a cross-process get/put stress.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

/* One mark per object, in shared memory: who holds it now (0: nobody). */
static _Atomic int32_t *marks_for(const char *name, unsigned n)
{
    const struct fh_memzone *mz = fh_memzone_reserve(name, n * sizeof(int32_t), 0, 0);
    CHECK(mz, "marks %s", name);
    return mz->addr;
}

static void test_create(void)
{
    struct fh_mempool *mp;
    char name[FH_MEMPOOL_NAMESIZE + 1];

    errno = 0;
    CHECK(!fh_mempool_create("p.bad", 0, 64, 0, 0) && errno == EINVAL, "n 0");
    errno = 0;
    CHECK(!fh_mempool_create("p.bad", 10, 0, 0, 0) && errno == EINVAL, "size 0");
    errno = 0;
    CHECK(!fh_mempool_create("p.bad", 10, 8, FH_MEMPOOL_CACHE_MAX + 1, 0) &&
          errno == EINVAL, "cache too big");
    errno = 0;
    CHECK(!fh_mempool_create("p.bad", 10, 8, 0, 0x10) && errno == EINVAL, "flags");
    memset(name, 'p', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    errno = 0;
    CHECK(!fh_mempool_create(name, 10, 8, 0, 0) && errno == EINVAL, "long name");

    mp = fh_mempool_create("p.one", 100, 40, 8, 0);
    CHECK(mp, "create");
    errno = 0;
    CHECK(!fh_mempool_create("p.one", 10, 8, 0, 0) && errno == EEXIST, "EEXIST");
    CHECK(fh_mempool_lookup("p.one") == mp, "lookup");
    CHECK(fh_memzone_lookup("MP_p.one"), "memzone name");
    errno = 0;
    CHECK(!fh_mempool_lookup("p.none") && errno == ENOENT, "ENOENT");
    CHECK(fh_mempool_count(mp) == 100 && fh_mempool_obj_size(mp) == 40 &&
          fh_mempool_elt_size(mp) == 64 && fh_mempool_cache_size(mp) == 8 &&
          strcmp(fh_mempool_name(mp), "p.one") == 0, "queries");
    CHECK(fh_mempool_avail_count(mp) == 100 && fh_mempool_in_use_count(mp) == 0 &&
          fh_mempool_full(mp) && !fh_mempool_empty(mp), "full at start");
    for (unsigned i = 0; i < 100; i++) {
        void *o = fh_mempool_obj_at(mp, i);
        CHECK(o && ((uintptr_t)o & 63) == 0 && fh_mempool_obj_index(mp, o) == i,
              "obj_at/index %u", i);
    }
    CHECK(!fh_mempool_obj_at(mp, 100), "obj_at out of range");
    CHECK(fh_mempool_obj_index(mp, (char *)fh_mempool_obj_at(mp, 3) + 1) == -1,
          "index of an interior pointer");
    CHECK(fh_mempool_obj_index(mp, mp) == -1, "index of the header");

    struct fh_mempool *small = fh_mempool_create("p.small", 10, 12, 0,
                                                 FH_MEMPOOL_F_NO_CACHE_ALIGN);
    CHECK(small && fh_mempool_elt_size(small) == 16, "no cache align");
}

static void exhaust(const char *name, unsigned n, unsigned cache)
{
    struct fh_mempool *mp = fh_mempool_create(name, n, 24, cache, 0);
    void **objs = calloc(n + 1, sizeof *objs);
    char *seen = calloc(n, 1);
    void *extra;

    CHECK(mp && objs && seen, "create %s", name);
    for (unsigned i = 0; i < n; i++) {
        CHECK(fh_mempool_get(mp, &objs[i]) == 0, "%s: get %u of %u", name, i, n);
        long idx = fh_mempool_obj_index(mp, objs[i]);
        CHECK(idx >= 0 && !seen[idx], "%s: object %ld handed out twice", name, idx);
        seen[idx] = 1;
        memset(objs[i], 0x5a, 24);
        CHECK(fh_mempool_in_use_count(mp) == i + 1, "%s: in use %u, want %u",
              name, fh_mempool_in_use_count(mp), i + 1);
    }
    CHECK(fh_mempool_get(mp, &extra) == -ENOENT, "%s: exhausted", name);
    CHECK(fh_mempool_get_bulk(mp, &extra, 1) == -ENOENT, "%s: bulk exhausted", name);
    CHECK(fh_mempool_empty(mp) && fh_mempool_avail_count(mp) == 0 &&
          fh_mempool_in_use_count(mp) == n, "%s: counts when exhausted", name);

    CHECK(fh_mempool_put(mp, objs[0]) == 0, "put one");
    CHECK(fh_mempool_get(mp, &extra) == 0 && extra == objs[0], "get it back");
    CHECK(fh_mempool_put_bulk(mp, objs, n) == 0, "%s: put all", name);
    CHECK(fh_mempool_full(mp) && fh_mempool_in_use_count(mp) == 0,
          "%s: all back: avail %u", name, fh_mempool_avail_count(mp));

    /* all-or-nothing */
    CHECK(fh_mempool_get_bulk(mp, objs, n + 1) == -ENOENT, "%s: n+1", name);
    CHECK(fh_mempool_avail_count(mp) == n, "%s: nothing taken", name);
    CHECK(fh_mempool_get_bulk(mp, objs, n) == 0, "%s: bulk n", name);
    CHECK(fh_mempool_in_use_count(mp) == n, "%s: bulk took all", name);
    memset(seen, 0, n);
    for (unsigned i = 0; i < n; i++) {
        long idx = fh_mempool_obj_index(mp, objs[i]);
        CHECK(idx >= 0 && !seen[idx], "%s: bulk duplicate %ld", name, idx);
        seen[idx] = 1;
    }
    void *bad[2] = { objs[0], (char *)mp + 8 };
    CHECK(fh_mempool_put_bulk(mp, bad, 2) == -EINVAL, "%s: foreign pointer", name);
    CHECK(fh_mempool_in_use_count(mp) == n, "%s: nothing put back", name);
    /* Inside the pool but not an object's start: refused too. */
    void *inside[2] = { objs[0], (char *)objs[1] + 1 };
    CHECK(fh_mempool_put_bulk(mp, inside, 2) == -EINVAL, "%s: misaligned pointer",
          name);
    CHECK(fh_mempool_put(mp, (char *)objs[0] + 1) == -EINVAL, "%s: misaligned put",
          name);
    CHECK(fh_mempool_in_use_count(mp) == n, "%s: still nothing put back", name);
    CHECK(fh_mempool_put_bulk(mp, objs, n) == 0, "%s: put all again", name);
    CHECK(fh_mempool_full(mp), "%s: full again", name);
    free(objs);
    free(seen);
}

/* Cached objects count as available, not in use. */
static void test_cache_counts(void)
{
    struct fh_mempool *mp = fh_mempool_create("p.counts", 200, 8, 32, 0);
    void *o[40];
    CHECK(mp, "create");
    CHECK(fh_mempool_get(mp, &o[0]) == 0, "get");
    CHECK(fh_mempool_in_use_count(mp) == 1 && fh_mempool_avail_count(mp) == 199,
          "a refilled cache is still available");
    CHECK(fh_mempool_get_bulk(mp, o + 1, 20) == 0, "get 20");
    CHECK(fh_mempool_in_use_count(mp) == 21, "21 in use");
    CHECK(fh_mempool_put_bulk(mp, o, 21) == 0, "put 21");
    CHECK(fh_mempool_in_use_count(mp) == 0, "none in use");
    /* Overflow the cache: 3 puts of 30 past the flush threshold (64). */
    for (int k = 0; k < 3; k++)
        CHECK(fh_mempool_get_bulk(mp, o, 30) == 0 &&
              fh_mempool_put_bulk(mp, o, 30) == 0, "round %d", k);
    CHECK(fh_mempool_full(mp), "full after flushes");
    CHECK(fh_mempool_cache_flush(mp) == 0 && fh_mempool_full(mp), "flush");
}

/*
 * The parent's cache holds objects that are free but the parent's.  A forked
 * child must not hand them out again: it claims its own slot.
 */
static void test_cache_across_fork(void)
{
    enum { N = 256, CACHE = 32 };
    struct fh_mempool *mp = fh_mempool_create("p.fork", N, 16, CACHE, 0);
    _Atomic int32_t *marks = marks_for("p.fork.marks", N);
    void *first, *o;
    unsigned parent_got = 1, child_got;
    pid_t pid;

    CHECK(mp, "create");
    CHECK(fh_mempool_get(mp, &first) == 0, "parent get");
    atomic_store(&marks[fh_mempool_obj_index(mp, first)], 1);
    /* The parent's cache now holds CACHE free objects. */

    pid = fork_child();
    if (pid == 0) {
        unsigned got = 0;
        while (fh_mempool_get(mp, &o) == 0) {
            int32_t expect = 0;
            if (!atomic_compare_exchange_strong(&marks[fh_mempool_obj_index(mp, o)],
                                                &expect, 2))
                _exit(2); /* handed out twice */
            got++;
        }
        /* Everything but what the parent holds and caches. */
        _exit(got == N - 1 - CACHE ? 0 : 3);
    }
    CHECK(reap(pid) == 0, "child took only what was free");
    while (fh_mempool_get(mp, &o) == 0) {
        int32_t expect = 0;
        CHECK(atomic_compare_exchange_strong(&marks[fh_mempool_obj_index(mp, o)],
                                             &expect, 1),
              "parent got an object the child holds");
        parent_got++;
    }
    CHECK(parent_got == 1 + CACHE, "parent got its cache: %u", parent_got);
    child_got = 0;
    for (unsigned i = 0; i < N; i++)
        child_got += atomic_load(&marks[i]) == 2;
    CHECK(child_got == N - 1 - CACHE, "child count");
    CHECK(fh_mempool_in_use_count(mp) == N, "all in use");
}

/* A child dies (_exit, no flush) with objects in its cache. */
static void test_reclaim_dead(void)
{
    enum { N = 128, CACHE = 16 };
    struct fh_mempool *mp = fh_mempool_create("p.dead", N, 16, CACHE, 0);
    void *objs[N];
    pid_t pid;

    CHECK(mp, "create");
    pid = fork_child();
    if (pid == 0) {
        void *o[4];
        if (fh_mempool_get_bulk(mp, o, 4) || fh_mempool_put_bulk(mp, o, 4))
            _exit(2);
        _exit(0); /* its cache keeps CACHE + 4 objects */
    }
    CHECK(reap(pid) == 0, "child");
    CHECK(fh_mempool_full(mp), "dead cache counts as available");
    CHECK(fh_mempool_reclaim(mp) == CACHE + 4, "reclaimed the dead cache");
    CHECK(fh_mempool_reclaim(mp) == 0, "nothing left to reclaim");
    CHECK(fh_mempool_get_bulk(mp, objs, N) == 0, "whole pool in one bulk");
    CHECK(fh_mempool_put_bulk(mp, objs, N) == 0, "back");

    /* Reclaim happens by itself when a get finds the pool short. */
    pid = fork_child();
    if (pid == 0) {
        void *o;
        if (fh_mempool_get(mp, &o) || fh_mempool_put(mp, o))
            _exit(2);
        _exit(0);
    }
    CHECK(reap(pid) == 0, "child 2");
    CHECK(fh_mempool_cache_flush(mp) == 0, "parent flush");
    CHECK(fh_mempool_get_bulk(mp, objs, N) == 0, "implicit reclaim (ring path)");
    CHECK(fh_mempool_put_bulk(mp, objs, N) == 0, "back again");
    pid = fork_child();
    if (pid == 0) {
        void *o;
        if (fh_mempool_get(mp, &o) || fh_mempool_put(mp, o))
            _exit(2);
        _exit(0);
    }
    CHECK(reap(pid) == 0, "child 3");
    for (unsigned i = 0; i < N; i++)
        CHECK(fh_mempool_get(mp, &objs[i]) == 0, "implicit reclaim (cache path) %u", i);
    CHECK(fh_mempool_put_bulk(mp, objs, N) == 0, "back a third time");

    /* A normal exit() returns the cache (library destructor). */
    pid = fork_child();
    if (pid == 0) {
        void *o;
        if (fh_mempool_get(mp, &o) || fh_mempool_put(mp, o))
            _exit(2);
        exit(0);
    }
    CHECK(reap(pid) == 0, "child 4");
    CHECK(fh_mempool_reclaim(mp) == 0, "exit() already gave the cache back");
    CHECK(fh_mempool_full(mp), "full");
}

static void *thread_body(void *arg)
{
    struct fh_mempool *mp = arg;
    void *o[8];
    for (int i = 0; i < 100; i++)
        if (fh_mempool_get_bulk(mp, o, 8) || fh_mempool_put_bulk(mp, o, 8))
            return (void *)1;
    return NULL;
}

/* Thread exit returns the thread's cache; threads get separate slots. */
static void test_threads(void)
{
    struct fh_mempool *mp = fh_mempool_create("p.threads", 512, 16, 32, 0);
    pthread_t t[3];
    void *rv;

    CHECK(mp, "create");
    for (int i = 0; i < 3; i++)
        CHECK(pthread_create(&t[i], NULL, thread_body, mp) == 0, "thread");
    for (int i = 0; i < 3; i++) {
        CHECK(pthread_join(t[i], &rv) == 0 && rv == NULL, "thread %d", i);
    }
    CHECK(fh_mempool_reclaim(mp) == 0, "thread exit gave caches back");
    CHECK(fh_mempool_full(mp), "full");
}

/* More pools in one thread than it keeps caches for. */
static void test_many_pools(void)
{
    struct fh_mempool *mps[12];
    void *o;
    for (int i = 0; i < 12; i++) {
        char name[32];
        snprintf(name, sizeof name, "p.many.%d", i);
        mps[i] = fh_mempool_create(name, 64, 8, 8, 0);
        CHECK(mps[i], "create %s", name);
    }
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 12; i++) {
            CHECK(fh_mempool_get(mps[i], &o) == 0, "get %d", i);
            CHECK(fh_mempool_in_use_count(mps[i]) == 1, "in use %d", i);
            CHECK(fh_mempool_put(mps[i], o) == 0, "put %d", i);
        }
    for (int i = 0; i < 12; i++)
        CHECK(fh_mempool_full(mps[i]), "full %d", i);
}

/* Several processes get and put concurrently; marks catch double grants. */
static void test_stress(void)
{
    enum { N = 1024, KIDS = 3, ITERS = 10000 };
    struct fh_mempool *mp = fh_mempool_create("p.stress", N, 32, 16, 0);
    _Atomic int32_t *marks = marks_for("p.stress.marks", N);
    pid_t pids[KIDS];

    CHECK(mp, "create");
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork_child();
        if (pids[k] == 0) {
            void *o[48];
            unsigned seed = (unsigned)k * 7919u + 1;
            for (int it = 0; it < ITERS; it++) {
                unsigned n = 1 + (seed = seed * 1103515245u + 12345u) % 48;
                if (fh_mempool_get_bulk(mp, o, n))
                    continue; /* others hold too many right now */
                for (unsigned i = 0; i < n; i++) {
                    int32_t expect = 0;
                    long idx = fh_mempool_obj_index(mp, o[i]);
                    if (idx < 0 ||
                        !atomic_compare_exchange_strong(&marks[idx], &expect, k + 1))
                        _exit(2);
                    memset(o[i], k + 1, 32);
                }
                for (unsigned i = 0; i < n; i++) {
                    const unsigned char *b = o[i];
                    for (int j = 0; j < 32; j++)
                        if (b[j] != k + 1)
                            _exit(3);
                    atomic_store(&marks[fh_mempool_obj_index(mp, o[i])], 0);
                }
                if (fh_mempool_put_bulk(mp, o, n))
                    _exit(4);
            }
            fh_mempool_cache_flush(mp);
            _exit(0);
        }
    }
    alarm(60);
    for (int k = 0; k < KIDS; k++)
        CHECK(reap(pids[k]) == 0, "stress child %d", k);
    alarm(0);
    CHECK(fh_mempool_reclaim(mp) == 0 && fh_mempool_full(mp),
          "all back: avail %u", fh_mempool_avail_count(mp));
}

/* Getters that wait: timeouts, and a getter in another process woken by
 * puts that would otherwise have stayed in the putter's cache. */
static void test_get_timed(void)
{
    struct fh_mempool *mp = fh_mempool_create("p.wait", 8, 64, 4, 0);
    void *o[8], *x = NULL;
    pid_t pid;

    CHECK(mp, "create");
    CHECK(fh_mempool_get_bulk_timed(mp, o, 9, -1) == -EINVAL, "n > count");
    CHECK(fh_mempool_get_bulk_timed(mp, o, 8, 0) == 0, "all 8");
    CHECK(fh_mempool_get_timed(mp, &x, 0) == -ETIMEDOUT, "none now");
    CHECK(fh_mempool_get_timed(mp, &x, 10000000) == -ETIMEDOUT, "none in 10 ms");
    CHECK(fh_mempool_waiting(mp) == 0, "nobody waiting");
    pid = fork_child();
    if (pid == 0) {
        void *got[2];
        if (fh_mempool_get_bulk_timed(mp, got, 2, -1) != 0)
            _exit(1);
        _exit(fh_mempool_put_bulk(mp, got, 2) == 0 &&
              fh_mempool_cache_flush(mp) == 0 ? 0 : 2);
    }
    /* This thread's cache has room: without a waiter both puts would stay
     * in it. */
    CHECK(fh_mempool_put(mp, o[0]) == 0, "put one before the wait");
    while (fh_mempool_waiting(mp) != 1)
        usleep(200);
    CHECK(fh_mempool_put(mp, o[1]) == 0 && fh_mempool_put(mp, o[2]) == 0,
          "put two");
    CHECK(reap(pid) == 0, "getter woken by the puts");
    CHECK(fh_mempool_put_bulk(mp, o + 3, 5) == 0, "rest back");
    fh_mempool_cache_flush(mp);
    CHECK(fh_mempool_full(mp) && fh_mempool_waiting(mp) == 0,
          "all back: avail %u", fh_mempool_avail_count(mp));
}

/* Destroying a pool that a getter waits on: the getter is woken with
 * -EIDRM, and the name is free once destroy returns. */
static void test_destroy_wakes_getter(void)
{
    struct fh_mempool *mp = fh_mempool_create("p.destroy", 4, 64, 2, 0);
    void *o[4];
    pid_t pid;

    CHECK(mp, "create");
    CHECK(fh_mempool_get_bulk(mp, o, 4) == 0, "all 4");
    pid = fork_child();
    if (pid == 0) {
        void *x;
        _exit(fh_mempool_get_timed(mp, &x, -1) == -EIDRM ? 0 : 1);
    }
    while (fh_mempool_waiting(mp) != 1)
        usleep(200);
    CHECK(fh_mempool_destroy(mp) == 0, "destroy with a getter waiting");
    CHECK(reap(pid) == 0, "getter woken with -EIDRM");
    errno = 0;
    CHECK(fh_mempool_lookup("p.destroy") == NULL && errno == ENOENT, "gone");
    mp = fh_mempool_create("p.destroy", 4, 64, 2, 0);
    CHECK(mp && fh_mempool_destroy(mp) == 0, "the name again");
}

/* Shared with the children of the ownership tests. */
struct own_state {
    _Atomic uint32_t ready;
    _Atomic uint64_t calls;
};

/* A tracked pool: objects a killed process held, or left inside an
 * unfinished call on a ring bound to the pool, all come back. */
static void test_tracked_held(void)
{
    struct fh_mempool *mp = fh_mempool_create("p.own", 64, 100, 8,
                                              FH_MEMPOOL_F_TRACK);
    struct fh_ring *r = fh_ring_create_for("p.own.r", 16, 0, mp);
    const struct fh_memzone *mz = fh_memzone_reserve("p.own.st",
                                                     sizeof(struct own_state), 64, 0);
    struct own_state *st;
    void *objs[10];
    pid_t pid;

    CHECK(mp && r && mz, "create");
    st = mz->addr;
    struct fh_mempool *plain = fh_mempool_create("p.untracked", 4, 8, 0, 0);
    CHECK(plain && fh_ring_create_for("p.own.bad", 16, 0, plain) == NULL &&
          errno == EINVAL, "a ring binds only to a tracked pool");
    CHECK(fh_mempool_destroy(plain) == 0, "destroy");
    pid = fork_child();
    if (pid == 0) {
        if (fh_mempool_get_bulk(mp, objs, 10) != 0 ||
            fh_ring_enqueue_bulk(r, objs, 5, NULL) != 5)
            _exit(1);
        atomic_store(&st->ready, 1);
        for (;;)
            pause();
    }
    while (!atomic_load(&st->ready))
        usleep(200);
    CHECK(fh_mempool_held_count(mp, pid) == 5, "5 held by the child");
    CHECK(fh_mempool_held_count(mp, 0) == 5, "5 held in all");
    kill(pid, SIGKILL);
    CHECK(reap(pid) == 128 + SIGKILL, "killed");
    unsigned back = fh_mempool_reclaim(mp);
    CHECK(back >= 5, "the held 5 and the child's cache came back: %u", back);
    CHECK(fh_mempool_recovered(mp) == 5, "5 recovered from the dead holder");
    CHECK(fh_mempool_held_count(mp, 0) == 0, "none held");
    /* The 5 in the ring are in transit, not the dead child's: they stay. */
    CHECK(fh_ring_count(r) == 5, "ring keeps its items");
    CHECK(fh_ring_dequeue_bulk(r, objs, 5, NULL) == 5, "dequeue");
    CHECK(fh_mempool_held_count(mp, getpid()) == 5, "now ours");
    CHECK(fh_mempool_put_bulk(mp, objs, 5) == 0, "put");
    fh_mempool_cache_flush(mp);
    CHECK(fh_mempool_avail_count(mp) == 64, "every object back: %u",
          fh_mempool_avail_count(mp));
    CHECK(fh_ring_destroy(r) == 0 && fh_mempool_destroy(mp) == 0, "destroy");
    fh_memzone_free(mz);
}

/* Kills anywhere in ring calls that move a tracked pool's objects: after
 * recovery and reclaim, the pool has every object again. */
static void test_tracked_kills(unsigned flags, const char *name)
{
    struct fh_mempool *mp = fh_mempool_create(name, 256, 64, 0,
                                              FH_MEMPOOL_F_TRACK);
    char rname[32];
    const struct fh_memzone *mz;
    struct own_state *st;
    unsigned seed = 4242, rounds = 60;

    snprintf(rname, sizeof rname, "%s.r", name);
    struct fh_ring *r = fh_ring_create_for(rname, 64, flags, mp);
    snprintf(rname, sizeof rname, "%s.st", name);
    mz = fh_memzone_reserve(rname, sizeof *st, 64, 0);
    CHECK(mp && r && mz, "create %s", name);
    st = mz->addr;
    for (unsigned round = 0; round < rounds; round++) {
        uint64_t before = fh_mempool_recovered(mp), c0;
        pid_t pid;

        atomic_store(&st->ready, 0);
        pid = fork_child();
        if (pid == 0) {
            void *held[48], *tmp[16];
            unsigned s2 = (unsigned)getpid();
            if (fh_mempool_get_bulk(mp, held, 48) != 0)
                _exit(1);
            atomic_store(&st->ready, 1);
            for (;;) {
                unsigned k = 1 + (unsigned)rand_r(&s2) % 16;
                if (fh_ring_enqueue_bulk(r, held, k, NULL) != k ||
                    fh_ring_dequeue_bulk(r, tmp, k, NULL) != k)
                    _exit(2);
                memcpy(held, tmp, k * sizeof *tmp);
                atomic_fetch_add(&st->calls, 1);
            }
        }
        while (!atomic_load(&st->ready))
            usleep(50);
        c0 = atomic_load(&st->calls) + (unsigned)rand_r(&seed) % 200;
        while (atomic_load(&st->calls) < c0)
            sched_yield();      /* the child may be waiting for this CPU */
        kill(pid, SIGKILL);
        CHECK(reap(pid) == 128 + SIGKILL, "killed");
        if (flags) {
            void *none[1];
            fh_ring_sp_enqueue_bulk(r, none, 0, NULL);
            fh_ring_sc_dequeue_bulk(r, none, 0, NULL);
        } else {
            fh_ring_recover(r);
        }
        void *objs[64];
        unsigned n = fh_ring_dequeue_burst(r, objs, 64, NULL);
        CHECK(fh_mempool_put_bulk(mp, objs, n) == 0, "put drained");
        fh_mempool_reclaim(mp);
        CHECK(fh_mempool_avail_count(mp) == 256,
              "%s round %u: %u of 256 objects back (%llu recovered)", name,
              round, fh_mempool_avail_count(mp),
              (unsigned long long)(fh_mempool_recovered(mp) - before));
        CHECK(fh_mempool_recovered(mp) - before + n == 48,
              "%s round %u: the child's 48 objects: %llu recovered + %u drained",
              name, round, (unsigned long long)(fh_mempool_recovered(mp) - before), n);
    }
    printf("test_mempool: %s: %u kills, %llu ring slots lost, every object back\n",
           name, rounds, (unsigned long long)fh_ring_lost(r, 2));
    CHECK(fh_ring_destroy(r) == 0 && fh_mempool_destroy(mp) == 0, "destroy");
    fh_memzone_free(mz);
}

int main(void)
{
    int fds;

    CHECK(fh_arena_create(64u << 20, 0, "test") == 0, "arena");
    fds = count_fds();
    test_create();
    exhaust("p.ex.nocache", 100, 0);
    exhaust("p.ex.cache", 100, 16);
    exhaust("p.ex.bigcache", 300, 512);
    test_cache_counts();
    test_cache_across_fork();
    test_reclaim_dead();
    test_threads();
    test_many_pools();
    test_stress();
    test_get_timed();
    test_destroy_wakes_getter();
    test_tracked_held();
    test_tracked_kills(0, "p.own.mp");
    test_tracked_kills(FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ, "p.own.sp");
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_mempool: ok\n");
    return 0;
}
