/*
 * flowhash.c - flow_table's hash function, in native code of its own.
 *
 * Built into libflowhash.so by run.py and loaded by the primary *before*
 * the template fork, so it sits at the same address in every secondary:
 * the table stores a pointer to flow_hash and every secondary, Python or
 * C, calls through it.  A classically attached process has its own copy
 * at another address, which is exactly what the table's module check
 * refuses to call.
 *
 * The hash: murmur3's 32-bit body and finaliser over the key's 4-byte
 * words (the key is a packed 5-tuple of 16 bytes).
 */
#include <stdint.h>
#include <string.h>

static uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

uint32_t flow_hash(const void *key, uint32_t key_len, uint32_t init_val)
{
    const unsigned char *p = key;
    uint32_t h = init_val ^ 0x9747b28cu, k;
    uint32_t i = 0;

    for (; i + 4 <= key_len; i += 4) {
        memcpy(&k, p + i, 4);
        k *= 0xcc9e2d51u;
        k = rotl32(k, 15) * 0x1b873593u;
        h = rotl32(h ^ k, 13) * 5 + 0xe6546b64u;
    }
    k = 0;
    for (uint32_t j = key_len; j > i; j--)
        k = (k << 8) | p[j - 1];
    if (k) {
        k *= 0xcc9e2d51u;
        h ^= rotl32(k, 15) * 0x1b873593u;
    }
    h ^= key_len;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    return h ^ (h >> 16);
}
