/*
 * fuzz_driver.h - what the standalone drivers of the fuzzers share
 * (fuzz_request.c, fuzz_ipc.c, fuzz_cgroup.c): a xorshift generator, the
 * inputs (seeds and the current one, each starting with its two control
 * bytes), the mutations, and the run itself (fuzz_main).  Define
 * MAX_INPUT and NSEEDS before including it.  How they report a broken
 * invariant, in either build, is fuzz_fail.h.
 */
#ifndef FORKHOST_FUZZ_DRIVER_H
#define FORKHOST_FUZZ_DRIVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t g_rng;

static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

struct input {
    size_t  len;
    uint8_t data[MAX_INPUT];
};

static struct input seeds[NSEEDS], cur;

/* What a fuzzer's mutations draw from. */
struct mutations {
    const uint32_t *edges;   /* values a 32-bit field is set to */
    size_t nedges;
    size_t max_words;        /* 32-bit fields after the control bytes */
    const char *insert;      /* bytes an insertion draws from */
    size_t ninsert;
};

/* One random change of cur: flip, set, insert, delete or cut, a field set
 * to an edge value, the control bytes, or a splice with a seed. */
static void mutate_with(const struct mutations *m)
{
    size_t i, k;
    uint32_t e;

    switch (rnd() % 8) {
    case 0:                                      /* flip bits */
        if (cur.len)
            cur.data[rnd() % cur.len] ^= (uint8_t)(1u << (rnd() % 8));
        break;
    case 1:                                      /* a byte */
        if (cur.len)
            cur.data[rnd() % cur.len] = (uint8_t)(rnd() % 4 == 0 ? 0 : rnd());
        break;
    case 2:                                      /* insert bytes */
        k = 1 + rnd() % 8;
        if (cur.len + k <= MAX_INPUT) {
            i = rnd() % (cur.len + 1);
            memmove(cur.data + i + k, cur.data + i, cur.len - i);
            cur.len += k;
            while (k--)
                cur.data[i + k] = (uint8_t)m->insert[rnd() % m->ninsert];
        }
        break;
    case 3:                                      /* delete bytes */
        if (cur.len > 2) {
            i = 2 + rnd() % (cur.len - 2);
            k = 1 + rnd() % 8;
            if (k > cur.len - i)
                k = cur.len - i;
            memmove(cur.data + i, cur.data + i + k, cur.len - i - k);
            cur.len -= k;
        }
        break;
    case 4:                                      /* cut */
        cur.len = rnd() % (cur.len + 1);
        break;
    case 5:                                      /* a 32-bit field */
        if (cur.len >= 2 + 4) {
            size_t words = (cur.len - 2) / 4 < m->max_words ? (cur.len - 2) / 4
                                                            : m->max_words;

            e = m->edges[rnd() % m->nedges];
            i = 2 + 4 * (rnd() % words);
            memcpy(cur.data + i, &e, 4);
        }
        break;
    case 6:                                      /* the control bytes */
        cur.data[rnd() % 2] = (uint8_t)rnd();
        break;
    default:                                     /* splice with a seed */
        {
            const struct input *s = &seeds[rnd() % NSEEDS];

            i = rnd() % (cur.len + 1);
            k = rnd() % (s->len + 1);
            if (i + (s->len - k) <= MAX_INPUT) {
                memcpy(cur.data + i, s->data + k, s->len - k);
                cur.len = i + (s->len - k);
            }
        }
        break;
    }
}

/* Now and then, when cur reaches past byte `end` of its record, the 32-bit
 * length field at `off` made to agree with it again: what follows byte
 * `from` (0 when the record is shorter).  Mutations would otherwise almost
 * never get past a parser's length checks. */
static inline void fix_len_field(size_t off, size_t end, size_t from)
{
    uint32_t len;

    if (cur.len >= 2 + end && rnd() % 2) {
        len = cur.len - 2 >= from ? (uint32_t)(cur.len - 2 - from) : 0;
        memcpy(cur.data + 2 + off, &len, 4);
    }
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Below this many inputs a count run does not require every verdict. */
#define FULL_COVERAGE_RUNS 100000ULL

/* What fuzz_main needs of a fuzzer. */
struct fuzz_target {
    const char *name;
    int (*one)(const uint8_t *data, size_t size);   /* LLVMFuzzerTestOneInput */
    void (*make_seeds)(void);
    void (*check_seed)(int i);          /* fails the run if the parser refuses it */
    const struct input *(*pick)(void);  /* the next input to mutate */
    void (*mutate)(void);               /* one change of cur */
    void (*fix)(void);                  /* cur's header made to agree, now and then */
    const unsigned long long *seen;     /* inputs per verdict code, 1..nverdicts */
    int nverdicts, nrefusals;           /* codes 1..nrefusals are refusals */
    const char *then;                   /* what the codes after them are */
};

/* `NAME [RUNS]`: the seeds as they are, then mutated inputs for
 * FORKHOST_FUZZ_SECONDS (default 20) or RUNS inputs, from
 * FORKHOST_FUZZ_SEED or a new seed; prints the count per verdict and fails
 * (1) if a long enough run missed one.  2 on a bad command line. */
static int fuzz_main(int argc, char **argv, const struct fuzz_target *t)
{
    const char *s = getenv("FORKHOST_FUZZ_SECONDS");
    const char *seed = getenv("FORKHOST_FUZZ_SEED");
    double budget = s ? atof(s) : 20.0, start = now();
    unsigned long long runs = 0, want = 0;
    int i, steps, coverage;

    if (argc > 2 || (argc == 2 && (want = strtoull(argv[1], NULL, 10)) == 0)) {
        fprintf(stderr, "usage: %s [RUNS]  (RUNS > 0; without it, "
                "FORKHOST_FUZZ_SECONDS seconds)\n", t->name);
        return 2;
    }
    coverage = want ? want >= FULL_COVERAGE_RUNS : budget >= 5;
    g_rng = seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL);
    if (g_rng == 0)
        g_rng = 1;
    if (want)
        printf("%s: seed %llu, %llu inputs\n", t->name, (unsigned long long)g_rng, want);
    else
        printf("%s: seed %llu, %.0f s\n", t->name, (unsigned long long)g_rng, budget);
    fflush(stdout);
    t->make_seeds();
    for (i = 0; i < NSEEDS; i++) {               /* the seeds as they are */
        t->check_seed(i);
        t->one(seeds[i].data, seeds[i].len);
        runs++;
    }
    while (want ? runs < want : now() - start < budget) {
        const struct input *from = t->pick();

        cur.len = from->len;
        memcpy(cur.data, from->data, from->len);
        for (steps = 1 + (int)(rnd() % 4); steps > 0; steps--)
            t->mutate();
        t->fix();
        t->one(cur.data, cur.len);
        runs++;
    }
    printf("%s: %llu inputs in %.1f s; verdicts by code (refusals 1..%d, then %s):",
           t->name, runs, now() - start, t->nrefusals, t->then);
    for (i = 1; i <= t->nverdicts; i++)
        printf(" %llu", t->seen[i]);
    printf("\n");
    for (i = 1; i <= t->nverdicts; i++)
        if (t->seen[i] == 0 && coverage) {
            printf("%s: verdict %d never reached\n", t->name, i);
            return 1;
        }
    return 0;
}

#endif
