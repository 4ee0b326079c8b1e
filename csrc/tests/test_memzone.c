/*
 * test_memzone.c - memzone directory: create, lookup, EEXIST/ENOENT, free
 * bytes, creation from forked secondaries, and recovery when a process dies
 * holding the directory lock (at each step of a reserve).
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
    for (int step = 1; step <= 3; step++) {
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
        if (step < 3) {
            CHECK(fh_memzone_count() == before, "half-written slot ignored");
            CHECK(!fh_memzone_lookup(name), "not visible");
            CHECK(fh_memzone_reserve(name, 4096, 0, 0), "name reusable");
        } else {
            CHECK(fh_memzone_count() == before + 1, "published slot counted");
            CHECK(fh_memzone_lookup(name), "visible after repair");
            errno = 0;
            CHECK(!fh_memzone_reserve(name, 4096, 0, 0) && errno == EEXIST,
                  "EEXIST after repair");
        }
        CHECK(fh_memzone_free_bytes() < free_before, "never handed out twice");
    }
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
    CHECK(fh_arena_create(64u << 20, 0, "test") == 0, "arena");
    fds = count_fds();
    test_basic();
    test_walk();
    test_secondaries_create();
    test_dead_lock_holder();
    test_crash_steps();
    test_directory_full();
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_memzone: ok\n");
    return 0;
}
