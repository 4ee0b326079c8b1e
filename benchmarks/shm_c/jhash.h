/*
 * Bob Jenkins' lookup3 ("jhash", public domain), which DPDK's rte_jhash
 * implements and hash_perf_autotest gives rte_hash: the benchmarks pass it
 * to fh_hash_create as a user function.  One copy, for bench.c and
 * hash_ab.c.
 */
#ifndef FH_BENCH_JHASH_H
#define FH_BENCH_JHASH_H

#include <stdint.h>
#include <string.h>

#define JH_ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))
#define JH_MIX(a, b, c) do {                                               \
    a -= c; a ^= JH_ROT(c, 4);  c += b;                                    \
    b -= a; b ^= JH_ROT(a, 6);  a += c;                                    \
    c -= b; c ^= JH_ROT(b, 8);  b += a;                                    \
    a -= c; a ^= JH_ROT(c, 16); c += b;                                    \
    b -= a; b ^= JH_ROT(a, 19); a += c;                                    \
    c -= b; c ^= JH_ROT(b, 4);  b += a;                                    \
} while (0)
#define JH_FINAL(a, b, c) do {                                             \
    c ^= b; c -= JH_ROT(b, 14);                                            \
    a ^= c; a -= JH_ROT(c, 11);                                            \
    b ^= a; b -= JH_ROT(a, 25);                                            \
    c ^= b; c -= JH_ROT(b, 16);                                            \
    a ^= c; a -= JH_ROT(c, 4);                                             \
    b ^= a; b -= JH_ROT(a, 14);                                            \
    c ^= b; c -= JH_ROT(b, 24);                                            \
} while (0)

static uint32_t jhash(const void *key, uint32_t len, uint32_t initval)
{
    const unsigned char *p = key;
    uint32_t a, b, c, k[3];

    a = b = c = 0xdeadbeefu + len + initval;
    while (len > 12) {
        memcpy(k, p, 12);
        a += k[0]; b += k[1]; c += k[2];
        JH_MIX(a, b, c);
        p += 12;
        len -= 12;
    }
    if (len == 0)
        return c;
    /* The last 1..12 bytes, zero-padded; the whole-word cases without a
     * libc call, as rte_jhash reads them. */
    k[0] = k[1] = k[2] = 0;
    switch (len) {
    case 12: memcpy(k, p, 12); break;
    case 8: memcpy(k, p, 8); break;
    case 4: memcpy(k, p, 4); break;
    default:
        for (uint32_t i = 0; i < len; i++)
            k[i / 4] |= (uint32_t)p[i] << (8 * (i % 4));
    }
    a += k[0]; b += k[1]; c += k[2];
    JH_FINAL(a, b, c);
    return c;
}

#endif
