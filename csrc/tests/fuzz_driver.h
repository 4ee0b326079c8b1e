/*
 * fuzz_driver.h - what the standalone drivers of the fuzzers share
 * (fuzz_request.c, fuzz_ipc.c): a xorshift generator, the inputs (seeds and
 * the current one, each starting with its two control bytes), and the
 * mutations.  Define MAX_INPUT and NSEEDS before including it.
 */
#ifndef FORKHOST_FUZZ_DRIVER_H
#define FORKHOST_FUZZ_DRIVER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

#endif
