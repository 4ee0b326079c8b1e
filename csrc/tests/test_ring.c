/*
 * test_ring.c - rings: creation and lookup, bulk vs burst at full and empty,
 * wrap-around with several element sizes, SP/SC between two processes, and
 * an MP/MC stress with forked producers and consumers in which every item
 * must arrive exactly once.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

static void test_create_lookup(void)
{
    struct fh_ring *r;
    char name[FH_RING_NAMESIZE + 1];

    errno = 0;
    CHECK(!fh_ring_create("bad", 100, 8, 0) && errno == EINVAL, "not pow2");
    errno = 0;
    CHECK(!fh_ring_create("bad", 0, 8, 0) && errno == EINVAL, "count 0");
    errno = 0;
    CHECK(!fh_ring_create("bad", 64, 6, 0) && errno == EINVAL, "elem 6");
    errno = 0;
    CHECK(!fh_ring_create("bad", 64, 8, 0x80) && errno == EINVAL, "flags");
    memset(name, 'r', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    errno = 0;
    CHECK(!fh_ring_create(name, 64, 8, 0) && errno == EINVAL, "long name");
    name[FH_RING_NAMESIZE - 1] = '\0';
    CHECK(fh_ring_create(name, 64, 8, 0), "longest name");

    r = fh_ring_create("r.one", 64, 8, FH_RING_F_SP_ENQ);
    CHECK(r, "create");
    errno = 0;
    CHECK(!fh_ring_create("r.one", 64, 8, 0) && errno == EEXIST, "EEXIST");
    CHECK(fh_ring_lookup("r.one") == r, "lookup");
    errno = 0;
    CHECK(!fh_ring_lookup("r.none") && errno == ENOENT, "ENOENT");
    CHECK(fh_memzone_lookup("RG_r.one"), "memzone name");
    CHECK(fh_ring_capacity(r) == 64 && fh_ring_elem_size(r) == 8 &&
          fh_ring_flags(r) == FH_RING_F_SP_ENQ &&
          strcmp(fh_ring_name(r), "r.one") == 0, "queries");
    CHECK(fh_ring_empty(r) && !fh_ring_full(r) && fh_ring_count(r) == 0 &&
          fh_ring_free_count(r) == 64, "empty at start");
    CHECK(((uintptr_t)r & 127) == 0, "aligned");
    CHECK(fh_ring_get_memsize(64, 8) == 384 + 512, "memsize");
    CHECK(fh_ring_get_memsize(63, 8) == -EINVAL, "memsize EINVAL");

    /* A secondary finds the same ring. */
    pid_t pid = fork_child();
    if (pid == 0) {
        struct fh_ring *c = fh_ring_lookup("r.one");
        uint64_t v = 77;
        _exit(c == r && fh_ring_enqueue_u64(c, v) == 0 ? 0 : 1);
    }
    CHECK(reap(pid) == 0, "child lookup");
    uint64_t got = 0;
    CHECK(fh_ring_dequeue_u64(r, &got) == 0 && got == 77, "value from child");
}

/* Every exported symbol exists for cffi/ctypes/dlsym users. */
static void test_exported(void)
{
    static const char *syms[] = {
        "fh_ring_mp_enqueue_bulk", "fh_ring_sp_enqueue_bulk",
        "fh_ring_enqueue_bulk", "fh_ring_mp_enqueue_burst",
        "fh_ring_sp_enqueue_burst", "fh_ring_enqueue_burst",
        "fh_ring_mc_dequeue_bulk", "fh_ring_sc_dequeue_bulk",
        "fh_ring_dequeue_bulk", "fh_ring_mc_dequeue_burst",
        "fh_ring_sc_dequeue_burst", "fh_ring_dequeue_burst",
        "fh_ring_mp_enqueue", "fh_ring_sp_enqueue", "fh_ring_enqueue",
        "fh_ring_mc_dequeue", "fh_ring_sc_dequeue", "fh_ring_dequeue",
        "fh_ring_enqueue_u64", "fh_ring_dequeue_u64", "fh_ring_count",
        "fh_ring_free_count", "fh_ring_full", "fh_ring_empty",
        "fh_ring_capacity", "fh_ring_elem_size", "fh_ring_flags",
        "fh_ring_name", "fh_ring_create", "fh_ring_lookup", "fh_ring_init",
        "fh_ring_get_memsize",
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        CHECK(dlsym(RTLD_DEFAULT, syms[i]), "exported: %s", syms[i]);

    /* The out-of-line copies work like the inline ones. */
    unsigned (*enq)(struct fh_ring *, const void *, unsigned, unsigned *) =
        (unsigned (*)(struct fh_ring *, const void *, unsigned, unsigned *))
        dlsym(RTLD_DEFAULT, "fh_ring_enqueue_burst");
    struct fh_ring *r = fh_ring_create("r.sym", 8, 8, 0);
    uint64_t v[10] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, out[10];
    unsigned fs = 99;
    CHECK(enq(r, v, 10, &fs) == 8 && fs == 0, "exported burst");
    CHECK(fh_ring_dequeue_burst(r, out, 10, NULL) == 8 && out[7] == 8, "out");
}

static void test_bulk_burst(unsigned flags)
{
    char name[32];
    struct fh_ring *r;
    uint64_t in[40], out[40];
    unsigned fs, av;

    snprintf(name, sizeof name, "r.bb.%u", flags);
    r = fh_ring_create(name, 16, 8, flags);
    CHECK(r, "create %s", name);
    for (int i = 0; i < 40; i++)
        in[i] = 1000 + (uint64_t)i;

    /* empty */
    av = 99;
    CHECK(fh_ring_dequeue_bulk(r, out, 1, &av) == 0 && av == 0, "bulk on empty");
    CHECK(fh_ring_dequeue_burst(r, out, 5, &av) == 0 && av == 0, "burst on empty");
    CHECK(fh_ring_dequeue(r, out) == -ENOENT, "single on empty");

    CHECK(fh_ring_enqueue_bulk(r, in, 10, &fs) == 10 && fs == 6, "bulk 10");
    fs = 99;
    CHECK(fh_ring_enqueue_bulk(r, in + 10, 10, &fs) == 0 && fs == 6,
          "bulk 10 into 6 free: all or nothing");
    CHECK(fh_ring_count(r) == 10, "nothing added");
    CHECK(fh_ring_enqueue_burst(r, in + 10, 10, &fs) == 6 && fs == 0,
          "burst 10 into 6 free");
    CHECK(fh_ring_full(r) && fh_ring_count(r) == 16 && fh_ring_free_count(r) == 0,
          "full");
    /* full */
    CHECK(fh_ring_enqueue_bulk(r, in, 1, &fs) == 0 && fs == 0, "bulk on full");
    CHECK(fh_ring_enqueue_burst(r, in, 3, &fs) == 0 && fs == 0, "burst on full");
    CHECK(fh_ring_enqueue(r, in) == -ENOBUFS, "single on full");
    CHECK(fh_ring_enqueue_u64(r, 5) == -ENOBUFS, "u64 on full");

    CHECK(fh_ring_dequeue_bulk(r, out, 20, &av) == 0 && av == 16,
          "bulk 20 of 16: all or nothing");
    CHECK(fh_ring_dequeue_bulk(r, out, 4, &av) == 4 && av == 12, "bulk 4");
    CHECK(fh_ring_dequeue_burst(r, out + 4, 20, &av) == 12 && av == 0, "burst 20");
    for (int i = 0; i < 16; i++)
        CHECK(out[i] == 1000 + (uint64_t)i, "FIFO at %d: %lu", i,
              (unsigned long)out[i]);
    CHECK(fh_ring_empty(r), "empty again");

    /* Mode-named calls on a ring whose mode allows them. */
    if (flags & FH_RING_F_SP_ENQ)
        CHECK(fh_ring_sp_enqueue_bulk(r, in, 3, NULL) == 3, "sp");
    else
        CHECK(fh_ring_mp_enqueue_bulk(r, in, 3, NULL) == 3, "mp");
    if (flags & FH_RING_F_SC_DEQ)
        CHECK(fh_ring_sc_dequeue_burst(r, out, 8, NULL) == 3, "sc");
    else
        CHECK(fh_ring_mc_dequeue_burst(r, out, 8, NULL) == 3, "mc");
}

/* Element sizes other than 8, across many wrap-arounds. */
static void test_elem_sizes(void)
{
    static const unsigned sizes[] = { 4, 8, 12, 16, 40 };
    unsigned char in[64 * 40], out[64 * 40];

    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        unsigned es = sizes[s];
        char name[32];
        struct fh_ring *r;
        uint32_t next_in = 0, next_out = 0;

        snprintf(name, sizeof name, "r.es.%u", es);
        r = fh_ring_create(name, 32, es, FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
        CHECK(r, "create es %u", es);
        srand(es);
        for (int iter = 0; iter < 2000; iter++) {
            unsigned n = (unsigned)rand() % 40, got;
            for (unsigned i = 0; i < n; i++)
                for (unsigned b = 0; b < es; b++)
                    in[i * es + b] = (unsigned char)((next_in + i) * 7 + b);
            got = (iter & 1) ? fh_ring_enqueue_burst(r, in, n, NULL)
                             : fh_ring_enqueue_bulk(r, in, n, NULL);
            next_in += got;
            n = (unsigned)rand() % 40;
            got = (iter & 2) ? fh_ring_dequeue_burst(r, out, n, NULL)
                             : fh_ring_dequeue_bulk(r, out, n, NULL);
            for (unsigned i = 0; i < got; i++)
                for (unsigned b = 0; b < es; b++)
                    CHECK(out[i * es + b] ==
                          (unsigned char)((next_out + i) * 7 + b),
                          "es %u item %u byte %u", es, next_out + i, b);
            next_out += got;
            CHECK(fh_ring_count(r) == next_in - next_out, "count es %u", es);
        }
        CHECK(next_out > 1000, "es %u moved %u", es, next_out);
    }
    struct fh_ring *r4 = fh_ring_lookup("r.es.4");
    uint64_t v;
    CHECK(fh_ring_enqueue_u64(r4, 1) == -EINVAL &&
          fh_ring_dequeue_u64(r4, &v) == -EINVAL, "u64 on a 4-byte ring");
}

/* One producer process, one consumer process, strict FIFO. */
static void test_spsc_processes(void)
{
    enum { N = 2000000 };
    struct fh_ring *r = fh_ring_create("r.spsc", 1024, 8,
                                       FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    pid_t pid;
    uint64_t expect = 0, buf[64];

    CHECK(r, "create");
    pid = fork_child();
    if (pid == 0) {
        uint64_t next = 0, b[64];
        unsigned burst = 1;
        while (next < N) {
            unsigned n = burst;
            if (n > N - next)
                n = (unsigned)(N - next);
            for (unsigned i = 0; i < n; i++)
                b[i] = next + i;
            next += fh_ring_sp_enqueue_burst(r, b, n, NULL);
            burst = burst % 61 + 1;
        }
        _exit(0);
    }
    alarm(60);
    while (expect < N) {
        unsigned n = fh_ring_sc_dequeue_burst(r, buf, 64, NULL);
        for (unsigned i = 0; i < n; i++)
            CHECK(buf[i] == expect + i, "got %lu want %lu",
                  (unsigned long)buf[i], (unsigned long)(expect + i));
        expect += n;
        if (!n)
            sched_yield();
    }
    alarm(0);
    CHECK(reap(pid) == 0, "producer");
    CHECK(fh_ring_empty(r), "drained");
}

/* Shared state of the MP/MC stress, in its own memzone. */
struct stress {
    _Atomic uint64_t consumed;
    _Atomic uint8_t seen[];      /* one counter per item */
};

static void stress(const char *name, unsigned elem_size, int producers,
                   int consumers, uint32_t per_producer)
{
    const uint64_t total = (uint64_t)producers * per_producer;
    struct fh_ring *r = fh_ring_create(name, 256, elem_size, 0);
    char mzname[64];
    const struct fh_memzone *mz;
    struct stress *st;
    pid_t pids[8];
    int np = 0;

    CHECK(r, "create %s", name);
    snprintf(mzname, sizeof mzname, "%s.state", name);
    mz = fh_memzone_reserve(mzname, sizeof *st + total, 0, 0);
    CHECK(mz, "state");
    st = mz->addr;

    for (int p = 0; p < producers; p++) {
        pid_t pid = fork_child();
        if (pid == 0) {
            /* Item = producer << 32 | seq, padded to elem_size. */
            unsigned char b[32 * 16];
            uint32_t seq = 0;
            unsigned burst = 1 + (unsigned)p;
            while (seq < per_producer) {
                unsigned n = burst, done;
                if (n > per_producer - seq)
                    n = per_producer - seq;
                for (unsigned i = 0; i < n; i++) {
                    uint64_t item = (uint64_t)p << 32 | (seq + i);
                    memset(b + i * elem_size, 0xab, elem_size);
                    memcpy(b + i * elem_size, &item, 8);
                }
                done = (seq & 1) ? fh_ring_mp_enqueue_bulk(r, b, n, NULL)
                                 : fh_ring_enqueue_burst(r, b, n, NULL);
                seq += done;
                if (!done)
                    sched_yield();
                burst = burst % 32 + 1;
            }
            _exit(0);
        }
        pids[np++] = pid;
    }
    for (int c = 0; c < consumers; c++) {
        pid_t pid = fork_child();
        if (pid == 0) {
            unsigned char b[32 * 16];
            uint32_t last[8];
            unsigned burst = 3 + (unsigned)c;
            memset(last, 0xff, sizeof last);
            while (atomic_load(&st->consumed) < total) {
                unsigned n = (burst & 1) ? fh_ring_mc_dequeue_burst(r, b, burst, NULL)
                                         : fh_ring_dequeue_bulk(r, b, burst, NULL);
                for (unsigned i = 0; i < n; i++) {
                    uint64_t item;
                    memcpy(&item, b + i * elem_size, 8);
                    uint32_t p = (uint32_t)(item >> 32), seq = (uint32_t)item;
                    if (p >= (uint32_t)producers || seq >= per_producer)
                        _exit(3);
                    for (unsigned k = 8; k < elem_size; k++)
                        if (b[i * elem_size + k] != 0xab)
                            _exit(4);
                    /* Each producer's items reach one consumer in order. */
                    if (last[p] != UINT32_MAX && seq <= last[p])
                        _exit(5);
                    last[p] = seq;
                    atomic_fetch_add(&st->seen[(uint64_t)p * per_producer + seq], 1);
                }
                atomic_fetch_add(&st->consumed, n);
                if (!n)
                    sched_yield();
                burst = burst % 32 + 1;
            }
            _exit(0);
        }
        pids[np++] = pid;
    }
    alarm(120);
    for (int i = 0; i < np; i++)
        CHECK(reap(pids[i]) == 0, "%s: process %d failed", name, i);
    alarm(0);
    CHECK(atomic_load(&st->consumed) == total, "%s: consumed %lu of %lu", name,
          (unsigned long)atomic_load(&st->consumed), (unsigned long)total);
    for (uint64_t i = 0; i < total; i++)
        CHECK(atomic_load(&st->seen[i]) == 1, "%s: item %lu seen %u times",
              name, (unsigned long)i, (unsigned)atomic_load(&st->seen[i]));
    CHECK(fh_ring_empty(r), "%s: drained", name);
}

/*
 * Rings created SP/SC keep the other side's tail cached (other_tail).
 * Mixed sp/mp and sc/mc calls across the 32-bit index wrap stay FIFO and
 * report the right room; a cached figure that is impossible (more room or
 * more elements than the ring has) is not trusted.
 */
static void set_indices(struct fh_ring *r, uint32_t v)
{
    atomic_store(&r->prod.head, v);
    atomic_store(&r->prod.tail, v);
    atomic_store(&r->prod.other_tail, v);
    atomic_store(&r->cons.head, v);
    atomic_store(&r->cons.tail, v);
    atomic_store(&r->cons.other_tail, v);
}

static void test_cached_tails(void)
{
    struct fh_ring *r = fh_ring_create("r.cache", 16, 8,
                                       FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    uint64_t in[16], out[16], next_in = 0, next_out = 0;
    unsigned fs, av;

    CHECK(r, "create");
    set_indices(r, 0xfffffff0u);
    for (int round = 0; round < 200; round++) {
        unsigned want = (unsigned)(round * 7 % 16) + 1, got;
        for (unsigned i = 0; i < want; i++)
            in[i] = next_in + i;
        got = round % 3 == 0 ? fh_ring_mp_enqueue_burst(r, in, want, &fs)
                             : fh_ring_sp_enqueue_burst(r, in, want, &fs);
        CHECK(fs == 16 - fh_ring_count(r), "round %d: free %u, count %u", round,
              fs, fh_ring_count(r));
        next_in += got;
        want = (unsigned)(round * 5 % 16) + 1;
        got = round % 4 == 0 ? fh_ring_mc_dequeue_burst(r, out, want, &av)
                             : fh_ring_sc_dequeue_burst(r, out, want, &av);
        CHECK(av == fh_ring_count(r), "round %d: available %u", round, av);
        for (unsigned i = 0; i < got; i++)
            CHECK(out[i] == next_out + i, "round %d: got %lu want %lu", round,
                  (unsigned long)out[i], (unsigned long)(next_out + i));
        next_out += got;
    }
    CHECK(atomic_load(&r->prod.tail) < 0x1000u, "indices wrapped");

    /* 10 in the ring; a cached consumer tail claiming 100 more slots free
     * than exist is ignored: bulk 8 fails (6 free), burst gives 6.  (NULL
     * free_space/available: asking for them reads the real tail anyway.) */
    while (fh_ring_sc_dequeue_burst(r, out, 16, NULL))
        ;
    CHECK(fh_ring_sp_enqueue_bulk(r, in, 10, NULL) == 10, "fill 10");
    atomic_store(&r->prod.other_tail, atomic_load(&r->cons.tail) + 100u);
    CHECK(fh_ring_sp_enqueue_bulk(r, in, 8, NULL) == 0 && fh_ring_count(r) == 10,
          "bulk 8 with 6 free (bogus cache)");
    atomic_store(&r->prod.other_tail, atomic_load(&r->cons.tail) - 100u);
    CHECK(fh_ring_sp_enqueue_burst(r, in, 8, NULL) == 6 && fh_ring_full(r),
          "burst 8 with 6 free (bogus cache)");
    /* A cached producer tail claiming more elements than the ring holds. */
    atomic_store(&r->cons.other_tail, atomic_load(&r->cons.head) + 1000u);
    CHECK(fh_ring_sc_dequeue_bulk(r, out, 17, NULL) == 0, "bulk 17 of 16 (bogus cache)");
    CHECK(fh_ring_sc_dequeue_bulk(r, out, 16, &av) == 16 && av == 0, "drain 16");
    atomic_store(&r->cons.other_tail, atomic_load(&r->cons.head) + 1000u);
    CHECK(fh_ring_sc_dequeue_burst(r, out, 4, NULL) == 0 && fh_ring_empty(r),
          "empty despite bogus cache");
    /* A stale (lagging) cached tail is a safe underestimate: the call reads
     * the real one when the stale figure is not enough. */
    CHECK(fh_ring_sp_enqueue_bulk(r, in, 16, NULL) == 16, "fill 16 after drain");
    CHECK(fh_ring_sc_dequeue_bulk(r, out, 16, NULL) == 16, "drain 16 again");
}

/* ---------------------------------------------------------------- waiting */

/* Spin (sleeping) until cond holds: no time limit, the test's own timeout
 * bounds it. */
/* Poll until cond holds; a failure, not a hang, after 60 s. */
#define UNTIL(cond) do {                                                   \
        for (long u_ = 0; !(cond); u_++) {                                 \
            CHECK(u_ < 300000, "waited 60 s for %s", #cond);               \
            usleep(200);                                                   \
        }                                                                  \
    } while (0)

static void test_wait_timeouts(void)
{
    struct fh_ring *r = fh_ring_create("w.timeout", 8, 8, 0);
    uint64_t v[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};

    CHECK(r, "create");
    CHECK(fh_ring_dequeue_bulk_timed(r, v, 1, NULL, 0) == -ETIMEDOUT, "no wait");
    CHECK(fh_ring_dequeue_burst_timed(r, v, 4, NULL, 20000000) == -ETIMEDOUT,
          "20 ms");
    CHECK(fh_ring_dequeue_bulk_timed(r, v, 9, NULL, -1) == -EINVAL, "n > cap");
    CHECK(fh_ring_enqueue_bulk_timed(r, v, 9, NULL, -1) == -EINVAL, "n > cap");
    CHECK(fh_ring_wait_elements(r, 9, -1) == -EINVAL, "wait n > cap");
    CHECK(fh_ring_dequeue_bulk_timed(r, v, 0, NULL, -1) == 0, "n == 0");
    CHECK(fh_ring_enqueue_bulk_timed(r, v, 8, NULL, 0) == 8, "fill");
    CHECK(fh_ring_enqueue_burst_timed(r, v, 1, NULL, 10000000) == -ETIMEDOUT,
          "full");
    CHECK(fh_ring_wait_room(r, 1, 0) == -ETIMEDOUT, "no room");
    CHECK(fh_ring_wait_elements(r, 8, 0) == 0, "elements there");
    CHECK(fh_ring_dequeue_burst_timed(r, v, 9, NULL, -1) == 8, "burst takes 8");
    CHECK(fh_ring_waiting_consumers(r) == 0 && fh_ring_waiting_producers(r) == 0,
          "nobody registered after timeouts");
}

/* One consumer process sleeps in a blocking dequeue before every enqueue,
 * and must be woken by each of them, items in order. */
static void test_wait_every_enqueue(unsigned flags)
{
    struct fh_ring *r = fh_ring_create(flags ? "w.every.s" : "w.every", 64, 8,
                                       flags);
    const unsigned rounds = 300;
    pid_t pid;

    CHECK(r, "create");
    pid = fork_child();
    if (pid == 0) {
        for (uint64_t i = 0; i < rounds; i++) {
            uint64_t v = 0;
            if (fh_ring_dequeue_bulk_timed(r, &v, 1, NULL, -1) != 1 || v != i)
                _exit(1);
        }
        _exit(0);
    }
    for (uint64_t i = 0; i < rounds; i++) {
        /* The consumer took the last item and is registered (asleep, or
         * about to be) before the enqueue, so every one of them takes the
         * wake path.  (Just woken, it is still registered until it
         * returns: the empty ring tells the two apart.) */
        UNTIL(fh_ring_waiting_consumers(r) == 1 && fh_ring_empty(r));
        CHECK(fh_ring_enqueue_bulk(r, &i, 1, NULL) == 1, "enqueue");
    }
    CHECK(reap(pid) == 0, "consumer woken by every enqueue");
    CHECK(fh_ring_empty(r) && fh_ring_waiting_consumers(r) == 0, "clean");
}

/* More waiters than slots: the registered ones and the overflow (polling)
 * ones all get an item. */
static void test_many_waiters(void)
{
    enum { N = FH_RING_WAIT_SLOTS + 4 };
    struct fh_ring *r = fh_ring_create("w.many", 64, 8, 0);
    const struct fh_memzone *mz = fh_memzone_reserve("w.many.out",
                                                     N * sizeof(uint64_t), 0, 0);
    uint64_t *out;
    pid_t pid[N];
    uint64_t seen = 0;

    CHECK(r && mz, "create");
    out = mz->addr;
    for (int i = 0; i < N; i++) {
        pid[i] = fork_child();
        if (pid[i] == 0) {
            uint64_t v = 0;
            if (fh_ring_dequeue_burst_timed(r, &v, 1, NULL, -1) != 1)
                _exit(1);
            out[i] = v;
            _exit(0);
        }
    }
    UNTIL(fh_ring_waiting_consumers(r) == FH_RING_WAIT_SLOTS);
    for (uint64_t i = 1; i <= N; i++)
        CHECK(fh_ring_enqueue_bulk(r, &i, 1, NULL) == 1, "enqueue");
    for (int i = 0; i < N; i++) {
        CHECK(reap(pid[i]) == 0, "waiter %d", i);
        CHECK(out[i] >= 1 && out[i] <= N && !(seen & (1ull << out[i])),
              "item %llu once", (unsigned long long)out[i]);
        seen |= 1ull << out[i];
    }
    CHECK(fh_ring_empty(r) && fh_ring_waiting_consumers(r) == 0, "clean");
}

/* A waiter killed while asleep: its slot is reclaimed by the next waker,
 * which then stops paying for wake-ups, and later waiters work. */
static void test_waiter_killed(void)
{
    struct fh_ring *r = fh_ring_create("w.killed", 16, 8, FH_RING_F_SC_DEQ);
    uint64_t v = 5;
    pid_t pid;

    CHECK(r, "create");
    pid = fork_child();
    if (pid == 0) {
        fh_ring_dequeue_bulk_timed(r, &v, 1, NULL, -1);
        _exit(1);
    }
    UNTIL(fh_ring_waiting_consumers(r) == 1);
    kill(pid, SIGKILL);
    /* Not reaped yet: a zombie still answers kill(pid, 0), and holds no
     * more than a reaped task. */
    siginfo_t si;
    CHECK(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0, "zombie");
    CHECK(fh_ring_waiting_consumers(r) == 1, "its slot is still taken");
    /* This enqueue's wake finds nobody asleep and frees the dead slot. */
    CHECK(fh_ring_enqueue_bulk(r, &v, 1, NULL) == 1, "enqueue");
    CHECK(fh_ring_waiting_consumers(r) == 0, "reclaimed by the waker");
    CHECK(reap(pid) == 128 + SIGKILL, "killed");
    CHECK(fh_ring_dequeue_bulk(r, &v, 1, NULL) == 1 && v == 5, "item there");
    CHECK(fh_ring_reclaim_waiters(r) == 0, "nothing more to reclaim");

    pid = fork_child();
    if (pid == 0)
        _exit(fh_ring_dequeue_bulk_timed(r, &v, 1, NULL, -1) == 1 && v == 6
              ? 0 : 1);
    UNTIL(fh_ring_waiting_consumers(r) == 1);
    v = 6;
    CHECK(fh_ring_enqueue_bulk(r, &v, 1, NULL) == 1, "enqueue");
    CHECK(reap(pid) == 0, "a later waiter is woken");
}

/* A producer blocked on a full ring until consumers make room. */
static void test_enqueue_waits_when_full(void)
{
    struct fh_ring *r = fh_ring_create("w.full", 8, 8, FH_RING_F_SP_ENQ);
    uint64_t v[8] = {0, 1, 2, 3, 4, 5, 6, 7}, out[8];
    pid_t pid;

    CHECK(r, "create");
    CHECK(fh_ring_enqueue_bulk(r, v, 8, NULL) == 8, "fill");
    pid = fork_child();
    if (pid == 0) {
        uint64_t more[4] = {8, 9, 10, 11};
        _exit(fh_ring_enqueue_bulk_timed(r, more, 4, NULL, -1) == 4 ? 0 : 1);
    }
    UNTIL(fh_ring_waiting_producers(r) == 1);
    CHECK(fh_ring_dequeue_bulk(r, out, 3, NULL) == 3, "room for 3 only");
    CHECK(fh_ring_dequeue_bulk(r, out, 1, NULL) == 1, "room for 4");
    CHECK(reap(pid) == 0, "producer woken when its 4 fit");
    CHECK(fh_ring_dequeue_bulk(r, out, 8, NULL) == 8 && out[0] == 4 &&
          out[4] == 8 && out[7] == 11, "order kept");
    CHECK(fh_ring_waiting_producers(r) == 0, "clean");
}

/* Is pid blocked in futex(2), as a waiter asleep is? */
static int in_futex(pid_t pid)
{
    char path[64], buf[32] = "", want[16];
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    f = fopen(path, "r");
    CHECK(f, "%s", path);
    if (!fgets(buf, sizeof buf, f))
        buf[0] = 0;
    fclose(f);
    snprintf(want, sizeof want, "%d ", (int)SYS_futex);
    return strncmp(buf, want, strlen(want)) == 0;
}

/* A child that waits on r until it ends: for elements (how 0: a timed
 * dequeue, 1: wait_elements) or for room (2: a timed enqueue); it exits 0
 * when the wait ended with -EIDRM, 1 otherwise. */
static pid_t destroy_waiter(struct fh_ring *r, int how)
{
    pid_t pid = fork_child();

    if (pid == 0) {
        uint64_t v = 0;
        int rc = how == 0 ? fh_ring_dequeue_burst_timed(r, &v, 1, NULL, -1)
               : how == 1 ? fh_ring_wait_elements(r, 2, -1)
                          : fh_ring_enqueue_bulk_timed(r, &v, 1, NULL, -1);
        _exit(rc == -EIDRM ? 0 : 1);
    }
    return pid;
}

/* Destroying a ring that threads wait on: each is woken and returns
 * -EIDRM, the slotless ones too, a dead waiter's slot is reclaimed on the
 * way, and the name is free once destroy returns. */
static void test_destroy_wakes_waiters(void)
{
    enum { N = FH_RING_WAIT_SLOTS + 2 };
    struct fh_ring *r = fh_ring_create("w.destroy", 16, 8, 0);
    uint64_t v[16] = {0};
    pid_t pid[N], dead, prod;

    CHECK(r, "create");
    dead = destroy_waiter(r, 0);
    UNTIL(fh_ring_waiting_consumers(r) == 1);
    kill(dead, SIGKILL);
    CHECK(reap(dead) == 128 + SIGKILL, "killed while waiting");
    for (int i = 0; i < N; i++)
        pid[i] = destroy_waiter(r, i % 2);
    /* The dead one's slot is still taken, so three wait without one. */
    UNTIL(fh_ring_waiting_consumers(r) == FH_RING_WAIT_SLOTS);
    for (int i = 0; i < N; i++)
        UNTIL(in_futex(pid[i]));
    CHECK(fh_ring_destroy(r) == 0, "destroy with %d waiters", N);
    for (int i = 0; i < N; i++)
        CHECK(reap(pid[i]) == 0, "waiter %d woken with -EIDRM", i);
    errno = 0;
    CHECK(fh_ring_lookup("w.destroy") == NULL && errno == ENOENT, "gone");

    r = fh_ring_create("w.destroy", 16, 8, 0);
    CHECK(r, "the name again");
    CHECK(fh_ring_enqueue_bulk(r, v, 16, NULL) == 16, "fill");
    prod = destroy_waiter(r, 2);
    UNTIL(fh_ring_waiting_producers(r) == 1);
    CHECK(fh_ring_destroy(r) == 0, "destroy with a producer waiting");
    CHECK(reap(prod) == 0, "producer woken with -EIDRM");
}

/* A ring whose 16 waiter slots consumers (destroy_waiter) hold, asleep;
 * their pids in pid. */
static struct fh_ring *slots_taken(const char *name, pid_t pid[FH_RING_WAIT_SLOTS])
{
    struct fh_ring *r = fh_ring_create(name, 16, 8, 0);

    CHECK(r, "create %s", name);
    for (int i = 0; i < FH_RING_WAIT_SLOTS; i++)
        pid[i] = destroy_waiter(r, 0);
    UNTIL(fh_ring_waiting_consumers(r) == FH_RING_WAIT_SLOTS);
    return r;
}

/* A waiter killed while waiting without a slot (all 16 taken) holds no
 * destroy up: its thread's record names the ring, and its thread is gone. */
static void test_destroy_after_slotless_waiter_killed(void)
{
    pid_t pid[FH_RING_WAIT_SLOTS], extra;
    struct fh_ring *r = slots_taken("w.slotless", pid);

    extra = destroy_waiter(r, 0);
    UNTIL(in_futex(extra));
    CHECK(fh_ring_waiting_consumers(r) == FH_RING_WAIT_SLOTS, "no slot for it");
    kill(extra, SIGKILL);
    CHECK(reap(extra) == 128 + SIGKILL, "killed");
    CHECK(fh_ring_destroy(r) == 0, "destroy (errno %d)", errno);
    for (int i = 0; i < FH_RING_WAIT_SLOTS; i++)
        CHECK(reap(pid[i]) == 0, "waiter %d woken with -EIDRM", i);
}

/* A waiter without a slot that cannot leave (stopped) holds a destroy up
 * as one with a slot does: its thread's record names the ring. */
static void test_destroy_waits_for_a_slotless_waiter(void)
{
    pid_t pid[FH_RING_WAIT_SLOTS], extra;
    struct fh_ring *r = slots_taken("w.slotless.stop", pid);

    extra = fork_child();
    if (extra == 0) {
        uint64_t v = 0;
        _exit(fh_ring_dequeue_bulk_timed(r, &v, 1, NULL, -1) == 1 && v == 3
              ? 0 : 1);
    }
    UNTIL(in_futex(extra));
    CHECK(kill(extra, SIGSTOP) == 0, "stop");
    /* The 16 with slots leave with -EIDRM; the stopped one stays. */
    errno = 0;
    CHECK(fh_ring_destroy(r) == -1 && errno == ETIMEDOUT, "gave up");
    for (int i = 0; i < FH_RING_WAIT_SLOTS; i++)
        CHECK(reap(pid[i]) == 0, "waiter %d woken with -EIDRM", i);
    CHECK(fh_ring_lookup("w.slotless.stop") == r, "published again");
    CHECK(kill(extra, SIGCONT) == 0, "continue");
    uint64_t v = 3;
    CHECK(fh_ring_enqueue_bulk(r, &v, 1, NULL) == 1, "enqueue");
    CHECK(reap(extra) == 0, "the slotless waiter got it");
    CHECK(fh_ring_destroy(r) == 0, "destroy");
}

/* A waiter that cannot leave (stopped): destroy gives up after
 * FH_RING_DRAIN_NS, the ring lives on, and the waiter, continued, waits
 * on and gets its item. */
static void test_destroy_gives_up(void)
{
    struct fh_ring *r = fh_ring_create("w.stopped", 16, 8, 0);
    uint64_t v = 42;
    pid_t pid;

    CHECK(r, "create");
    pid = fork_child();
    if (pid == 0)
        _exit(fh_ring_dequeue_bulk_timed(r, &v, 1, NULL, -1) == 1 && v == 7
              ? 0 : 1);
    UNTIL(fh_ring_waiting_consumers(r) == 1);
    CHECK(kill(pid, SIGSTOP) == 0, "stop");
    errno = 0;
    CHECK(fh_ring_destroy(r) == -1 && errno == ETIMEDOUT, "gave up");
    CHECK(fh_ring_lookup("w.stopped") == r, "published again");
    CHECK(kill(pid, SIGCONT) == 0, "continue");
    v = 7;
    CHECK(fh_ring_enqueue_bulk(r, &v, 1, NULL) == 1, "enqueue");
    CHECK(reap(pid) == 0, "the waiter got it");
    CHECK(fh_ring_destroy(r) == 0, "destroy");
}

int main(void)
{
    int fds;

    CHECK(fh_arena_create(64u << 20, 0, "test") == 0, "arena");
    fds = count_fds();
    test_create_lookup();
    test_exported();
    test_bulk_burst(0);
    test_bulk_burst(FH_RING_F_SP_ENQ);
    test_bulk_burst(FH_RING_F_SC_DEQ);
    test_bulk_burst(FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    test_elem_sizes();
    test_cached_tails();
    test_spsc_processes();
    test_wait_timeouts();
    test_wait_every_enqueue(0);
    test_wait_every_enqueue(FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    test_many_waiters();
    test_waiter_killed();
    test_enqueue_waits_when_full();
    test_destroy_wakes_waiters();
    test_destroy_after_slotless_waiter_killed();
    test_destroy_waits_for_a_slotless_waiter();
    test_destroy_gives_up();
    stress("r.mpmc", 8, 3, 2, 400000);
    stress("r.mpmc16", 16, 2, 2, 200000);
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_ring: ok\n");
    return 0;
}
