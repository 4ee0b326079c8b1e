/*
 * test_ring_kill.c - producers and consumers killed with SIGKILL at random
 * points of their calls, ROUNDS times or more per mode: no consumer ever receives a
 * stale or duplicated item, no live producer or consumer blocks for good,
 * and every item lost with a dead caller is counted (fh_ring_lost).
 * Every TRAP_EVERY-th round stops the victim inside its claim first (a
 * fault on its buffer), so that the window the test is about is hit
 * whatever the scheduler does.  See "A process that dies mid-call" in
 * forkhost/ring.h.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

/* Kills per mode (half of it for consumers), and how many of them must
 * land inside a claim: a mode that falls short goes on, up to MAX_ROUNDS,
 * until enough have (where a kill lands is up to the scheduler, and under
 * load more of them land outside). */
#define ROUNDS 40
#define MAX_ROUNDS (4 * ROUNDS)
#define MIN_INSIDE 2
/* Every TRAP_EVERY-th round the victim's aimed call is stopped inside its
 * claim for sure (see trap_next_call), so MIN_INSIDE never depends on
 * the scheduler alone; the other rounds kill wherever the victim is. */
#define TRAP_EVERY 5
#define MAXK 16                       /* elements per call, at most */
/* Big elements make a call's copy long enough for kills to land inside
 * claims often; each element is its item repeated, so a half-written one
 * shows. */
#define ESIZE 8192u
#define WORDS (ESIZE / 8)

static uint64_t buf[MAXK * WORDS] __attribute__((aligned(4096)));

static void put_item(uint64_t *b, unsigned i, uint64_t v)
{
    for (unsigned w = 0; w < WORDS; w++)
        b[(size_t)i * WORDS + w] = v;
}

static uint64_t get_item(const uint64_t *b, unsigned i)
{
    uint64_t v = b[(size_t)i * WORDS];
    for (unsigned w = 1; w < WORDS; w++)
        CHECK(b[(size_t)i * WORDS + w] == v, "a half-written element");
    return v;
}

/* Item: who (8 bits) << 56 | round (16 bits) << 40 | sequence (40 bits). */
enum { WHO_VICTIM = 1, WHO_STEADY = 2, WHO_PARENT = 3 };
#define ITEM(who, round, seq) \
    ((uint64_t)(who) << 56 | (uint64_t)(round) << 40 | (uint64_t)(seq))
#define WHO(v) ((unsigned)((v) >> 56))
#define ROUND(v) ((unsigned)(((v) >> 40) & 0xffff))
#define SEQ(v) ((v) & ((1ull << 40) - 1))

/* Shared with the children, in a memzone. */
struct shared {
    _Atomic uint32_t started;
    _Atomic uint64_t done;           /* victim: sequences [0, done) moved */
    _Atomic uint64_t attempt_end;    /* [done, attempt_end): the call now */
    _Atomic uint32_t pause, paused;  /* the steady producer's handshake */
    _Atomic uint32_t stop;
    _Atomic uint32_t trap;           /* parent: trap the victim's next call */
    _Atomic uint32_t trapped;        /* victim: stopped inside that call */
};

static struct shared *sh;
static uint64_t now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* The victim, stopped inside a call: says so and waits to be killed.  A
 * fault anywhere else is a real one: the default action, so that the
 * parent sees the victim die of it. */
static void on_trap(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    uintptr_t at = (uintptr_t)si->si_addr, page = (uintptr_t)buf;

    if (at < page || at >= page + 4096) {
        signal(sig, SIG_DFL);
        return;
    }
    atomic_store(&sh->trapped, 1);
    for (;;)
        pause();
}

/* When the parent asks (sh->trap), make the victim's next ring call fault
 * on its first element of buf, which the ring copies from (enqueue) or
 * into (dequeue) only after the call has claimed its slots: the call then
 * stops inside its claim, in on_trap, until the parent kills it. */
static void trap_next_call(void)
{
    struct sigaction sa;

    if (!atomic_load(&sh->trap))
        return;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "SIGSEGV handler");
    CHECK(mprotect(buf, 4096, PROT_NONE) == 0, "mprotect");
}

/* The armed call claimed nothing (a multi producer found the room taken):
 * the buffer is the victim's to write again, and the next call is armed
 * anew. */
static void trap_disarm(void)
{
    if (atomic_load(&sh->trap))
        CHECK(mprotect(buf, 4096, PROT_READ | PROT_WRITE) == 0, "mprotect");
}

/* A producer that enqueues who's items until killed (or told to stop). */
static void producer(struct fh_ring *r, unsigned who, unsigned round,
                     int steady)
{
    uint64_t *b = buf, seq = 0;
    unsigned seed = (unsigned)getpid();

    atomic_store(&sh->started, 1);
    while (!atomic_load(&sh->stop)) {
        unsigned k = 1 + (unsigned)rand_r(&seed) % MAXK;
        if (steady && atomic_load(&sh->pause)) {
            atomic_store(&sh->paused, 1);
            while (atomic_load(&sh->pause))
                usleep(50);
            atomic_store(&sh->paused, 0);
        }
        for (unsigned i = 0; i < k; i++)
            put_item(b, i, ITEM(who, round, seq + i));
        if (fh_ring_free_count(r) < k) {
            sched_yield();          /* no room: not a call to aim at */
            continue;
        }
        if (!steady) {
            trap_next_call();
            atomic_store(&sh->attempt_end, seq + k);
        }
        if (fh_ring_enqueue_bulk(r, b, k, NULL) != k) {
            if (!steady)
                trap_disarm();
            sched_yield();
            continue;
        }
        seq += k;
        if (!steady)
            atomic_store(&sh->done, seq);
    }
    _exit(0);
}

/* What the parent has received, per source. */
struct seen {
    uint64_t victim;       /* next victim sequence expected this round */
    uint64_t steady;       /* next steady sequence expected */
    unsigned round;
};

static unsigned drain(struct fh_ring *r, struct seen *s)
{
    uint64_t *b = buf;
    unsigned n, total = 0;

    while ((n = fh_ring_dequeue_burst(r, b, MAXK, NULL)) != 0) {
        for (unsigned i = 0; i < n; i++) {
            uint64_t v = get_item(b, i);
            if (WHO(v) == WHO_VICTIM) {
                CHECK(ROUND(v) == s->round && SEQ(v) == s->victim,
                      "stale or duplicated item: round %u seq %llu, expected "
                      "round %u seq %llu", ROUND(v), (unsigned long long)SEQ(v),
                      s->round, (unsigned long long)s->victim);
                s->victim++;
            } else {
                CHECK(WHO(v) == WHO_STEADY && SEQ(v) == s->steady,
                      "stale, foreign or duplicated item %#llx (steady next %llu)",
                      (unsigned long long)v, (unsigned long long)s->steady);
                s->steady++;
            }
        }
        total += n;
    }
    return total;
}

/* Producers killed mid-enqueue; multi: MP ring with a steady second
 * producer that must never block for good. */
static void producers_killed(int multi)
{
    const char *name = multi ? "k.mp" : "k.sp";
    struct fh_ring *r = fh_ring_create(name, 64, ESIZE,
                                       multi ? 0 : FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    struct seen s = {0, 0, 0};
    unsigned seed = 12345, mid_call = 0, by_waiter = 0;
    pid_t steady = -1;

    CHECK(r, "create %s", name);
    memset(sh, 0, sizeof *sh);
    if (multi) {
        steady = fork_child();
        if (steady == 0)
            producer(r, WHO_STEADY, 0, 1);
    }
    unsigned round;
    for (round = 1; round <= ROUNDS || (mid_call < MIN_INSIDE && round <= MAX_ROUNDS);
         round++) {
        uint64_t lost0 = fh_ring_lost(r, 0), until;
        pid_t v;

        s.round = round;
        s.victim = 0;
        atomic_store(&sh->started, 0);
        atomic_store(&sh->done, 0);
        atomic_store(&sh->attempt_end, 0);
        atomic_store(&sh->trap, 0);
        atomic_store(&sh->trapped, 0);
        v = fork_child();
        if (v == 0)
            producer(r, WHO_VICTIM, round, 0);
        while (!atomic_load(&sh->started))
            drain(r, &s);
        /* Consume for a random while, then kill wherever the victim is. */
        until = now_us() + (unsigned)rand_r(&seed) % 1500;
        while (now_us() < until)
            drain(r, &s);
        /* Aim at a call: kill once the victim has started one (it claims
         * then spends its time copying), or in a trap round once the call
         * has stopped inside its claim. */
        if (round % TRAP_EVERY == 0) {
            atomic_store(&sh->trap, 1);
            for (uint64_t give_up = now_us() + 10000000;
                 !atomic_load(&sh->trapped) && now_us() < give_up; )
                if (fh_ring_free_count(r) < MAXK)
                    drain(r, &s);
            CHECK(atomic_load(&sh->trapped), "round %u: the victim's call "
                  "never reached its trap", round);
        }
        for (uint64_t give_up = now_us() + 100000;
             atomic_load(&sh->attempt_end) == atomic_load(&sh->done) &&
             now_us() < give_up; )
            if (fh_ring_free_count(r) < MAXK)
                drain(r, &s);
        kill(v, SIGKILL);
        CHECK(reap(v) == 128 + SIGKILL, "victim killed");
        if (multi) {
            /* The steady producer must get past the dead one's slots by
             * itself (it may be waiting behind them now). */
            uint64_t deadline = now_us() + 30u * 1000000u;
            atomic_store(&sh->pause, 1);
            while (!atomic_load(&sh->paused)) {
                drain(r, &s);
                CHECK(now_us() < deadline, "round %u: the steady producer "
                      "is blocked behind the dead one", round);
            }
            if (fh_ring_lost(r, 0) != lost0)
                by_waiter++;
            fh_ring_recover(r);
        } else {
            /* The next single-producer call (of any size) finds head !=
             * tail and gives the dead call's slots up. */
            CHECK(fh_ring_sp_enqueue_bulk(r, buf, 0, NULL) == 0, "no-op call");
        }
        drain(r, &s);
        uint64_t lost = fh_ring_lost(r, 0) - lost0;
        uint64_t done = atomic_load(&sh->done), end = atomic_load(&sh->attempt_end);
        /* Killed before claiming (nothing lost), after publishing (the
         * call's items arrived), or in between (they are counted lost). */
        CHECK((s.victim == done && lost == 0) ||
              (s.victim == end && lost == 0) ||
              (s.victim == done && lost == end - done),
              "round %u: received %llu, lost %llu; the victim had moved %llu "
              "and was moving up to %llu", round, (unsigned long long)s.victim,
              (unsigned long long)lost, (unsigned long long)done,
              (unsigned long long)end);
        mid_call += lost != 0;
        CHECK(fh_ring_count(r) == 0 || multi, "empty");
        if (multi)
            atomic_store(&sh->pause, 0);
    }
    if (multi) {
        atomic_store(&sh->stop, 1);
        atomic_store(&sh->pause, 0);
        while (reap(steady) != 0)
            ;
        drain(r, &s);
    }
    /* The ring works as new. */
    put_item(buf, 0, 7);
    CHECK(fh_ring_enqueue_bulk(r, buf, 1, NULL) == 1, "enqueue");
    memset(buf, 0, ESIZE);
    CHECK(fh_ring_dequeue_bulk(r, buf, 1, NULL) == 1 && get_item(buf, 0) == 7,
          "still works");
    printf("test_ring_kill: %s: %u kills, %u inside a claim (slots counted "
           "lost)%s", name, round - 1, mid_call, multi ? "" : "\n");
    /* The kills must have hit the window this test is about. */
    CHECK(mid_call >= MIN_INSIDE, "%s: only %u of %u kills inside a claim", name,
          mid_call, round - 1);
    if (multi)
        printf(", %u of them passed by the waiting producer itself\n", by_waiter);
    CHECK(fh_ring_destroy(r) == 0, "destroy");
}

/* A consumer that dequeues k at a time until killed. */
static void consumer(struct fh_ring *r, unsigned k)
{
    uint64_t *b = buf;

    atomic_store(&sh->started, 1);
    for (;;) {
        uint64_t done = atomic_load(&sh->done);
        if (fh_ring_count(r) < k)
            continue;               /* nothing to take: not a call to aim at */
        trap_next_call();
        atomic_store(&sh->attempt_end, done + k);
        if (fh_ring_dequeue_bulk(r, b, k, NULL) != k)
            continue;
        for (unsigned i = 0; i < k; i++)
            if (SEQ(get_item(b, i)) != done + i)
                _exit(3);           /* stale or out of order */
        atomic_store(&sh->done, done + k);
    }
}

/* Consumers killed mid-dequeue: the slots they claimed go back to
 * producers and are counted lost; nothing else is lost or repeated. */
static void consumers_killed(int multi)
{
    const char *name = multi ? "k.mc" : "k.sc";
    struct fh_ring *r = fh_ring_create(name, 64, ESIZE,
                                       multi ? 0 : FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
    unsigned seed = 999, mid_call = 0;

    CHECK(r, "create %s", name);
    unsigned round;
    for (round = 1; round <= ROUNDS / 2 || (mid_call < MIN_INSIDE && round <= MAX_ROUNDS);
         round++) {
        const unsigned k = 1 + (unsigned)rand_r(&seed) % 8;
        uint64_t lost0 = fh_ring_lost(r, 1), until, seq = 0, *b = buf;
        pid_t c;

        memset(sh, 0, sizeof *sh);
        c = fork_child();
        if (c == 0)
            consumer(r, k);
        while (!atomic_load(&sh->started))
            usleep(50);
        until = now_us() + (unsigned)rand_r(&seed) % 1500;
        while (now_us() < until) {
            unsigned m = 1 + (unsigned)rand_r(&seed) % MAXK;
            for (unsigned i = 0; i < m; i++)
                put_item(b, i, ITEM(WHO_PARENT, round, seq + i));
            seq += fh_ring_enqueue_bulk(r, b, m, NULL);
        }
        /* Enough for the consumer's next call, then aim at that call (in
         * a trap round, stop it inside its claim first). */
        if (round % TRAP_EVERY == 0)
            atomic_store(&sh->trap, 1);
        for (unsigned i = 0; i < k; i++)
            put_item(b, i, ITEM(WHO_PARENT, round, seq + i));
        seq += fh_ring_enqueue_bulk(r, b, k, NULL);
        uint64_t d0 = atomic_load(&sh->done);
        for (uint64_t give_up = now_us() + 100000;
             atomic_load(&sh->attempt_end) != d0 + k && now_us() < give_up; )
            ;
        for (uint64_t give_up = now_us() + 10000000; round % TRAP_EVERY == 0 &&
             !atomic_load(&sh->trapped) && now_us() < give_up; )
            ;
        CHECK(round % TRAP_EVERY || atomic_load(&sh->trapped),
              "round %u: the consumer's call never reached its trap", round);
        kill(c, SIGKILL);
        CHECK(reap(c) == 128 + SIGKILL, "consumer killed");
        if (multi) {
            fh_ring_recover(r);
        } else {
            CHECK(fh_ring_sc_dequeue_bulk(r, buf, 0, NULL) == 0, "no-op call");
        }
        uint64_t lost = fh_ring_lost(r, 1) - lost0;
        uint64_t done = atomic_load(&sh->done), end = atomic_load(&sh->attempt_end);
        /* What is left starts right after what the consumer took. */
        uint64_t first = seq, v;
        if (fh_ring_dequeue_bulk(r, buf, 1, NULL) == 1)
            first = SEQ(get_item(buf, 0));
        CHECK((first == done && lost == 0) || (first == end && lost == 0) ||
              (first == end && lost == end - done),
              "round %u: next item %llu, lost %llu; the consumer had taken "
              "%llu and was taking up to %llu", round, (unsigned long long)first,
              (unsigned long long)lost, (unsigned long long)done,
              (unsigned long long)end);
        mid_call += lost != 0;
        uint64_t prev = first;
        while (fh_ring_dequeue_bulk(r, buf, 1, NULL) == 1) {
            v = get_item(buf, 0);
            CHECK(SEQ(v) == prev + 1 && ROUND(v) == round, "in order, once");
            prev = SEQ(v);
        }
    }
    printf("test_ring_kill: %s: %u kills, %u inside a claim\n", name,
           round - 1, mid_call);
    CHECK(mid_call >= MIN_INSIDE, "%s: only %u of %u kills inside a claim", name,
          mid_call, round - 1);
    CHECK(fh_ring_destroy(r) == 0, "destroy");
}

/* Reservation records still naming a claim: after recovery, none. */
static unsigned claims_recorded(void)
{
    struct fh_arena_hdr *hdr = fh_arena_hdr();
    struct fh__ring_rec *t = (struct fh__ring_rec *)((char *)hdr + hdr->ring_rec_offset);
    unsigned n = 0;

    for (unsigned i = 0; i < FH_RING_RECORDS; i++)
        n += atomic_load(&t[i].tid) != 0 && atomic_load(&t[i].n) != 0;
    return n;
}

int main(void)
{
    const struct fh_memzone *mz;
    int fds;

    CHECK(fh_arena_create(64u << 20, 0, "test") == 0, "arena");
    fds = count_fds();
    mz = fh_memzone_reserve("k.shared", sizeof *sh, 64, 0);
    CHECK(mz, "shared state");
    sh = mz->addr;
    producers_killed(0);
    producers_killed(1);
    consumers_killed(0);
    consumers_killed(1);
    /* The dead threads' records were freed as their claims were given up
     * (or they never claimed): the table does not fill with kills. */
    CHECK(claims_recorded() == 0, "%u records of dead claims left",
          claims_recorded());
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_ring_kill: ok\n");
    return 0;
}
