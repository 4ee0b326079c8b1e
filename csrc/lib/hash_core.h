/*
 * hash_core.h - a hash table's layout and its lookups' inline core, for
 * the two places that read tables: libforkhost (hash.c, which owns the
 * tables and says why this layout, see its head comment) and the Python
 * extension's bulk calls (forkhost/_native/hashfast.c).  Internal: it is
 * not installed with the public headers, and both are built from this
 * tree in the same install, so they always agree on the layout.
 */
#ifndef FORKHOST_HASH_CORE_H
#define FORKHOST_HASH_CORE_H

#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "forkhost/hash.h"

#define HT_FN_BUILTIN 0u   /* fh_hash_crc32c, resolved in each process */
#define HT_FN_USER    1u   /* a pointer checked against its module */

/*
 * A bucket, one cache line:
 *   0 seq   4 overflow   8 sig[8]   24 key_idx[8]   56 pad
 * All fields are written only by the table's writer (the lock holder);
 * readers read them without a lock, validated by seq.
 */
struct ht_bucket {
    _Atomic uint32_t seq;        /* odd while the writer changes this bucket */
    _Atomic uint32_t overflow;   /* keys homed at or before here, stored after */
    uint16_t sig[FH_HASH_BUCKET_ENTRIES]; /* hash >> 16; plain so one SSE
                                   load compares all eight; written with
                                   __atomic_store_n */
    _Atomic uint32_t key_idx[FH_HASH_BUCKET_ENTRIES]; /* 0: empty slot */
    uint64_t pad;
};
_Static_assert(sizeof(struct ht_bucket) == 64, "a bucket is a cache line");

/*
 * A key entry, key_stride bytes: key (key_len, padded to 8), then data
 * (8): 24 bytes for 16-byte keys, as DPDK's.  The key's hash, which only
 * writers need (a repair, and fh_hash_get_key_with_position), is kept
 * apart, in the hash store after the free stack, so that lookups touch
 * fewer bytes.  Index 0 is never used, so key_idx 0 means empty.  An
 * entry and its stored hash are written by the writer only while no
 * bucket slot refers to the entry (data: also while referenced, inside
 * the bucket's seqlock).
 */

/*
 * The table header, at the start of memzone "HT_<name>":
 *   0 magic (published last)  8 name[61]  72 entries  76 key_len
 *   80 key_stride  84 num_buckets  88 reserved  92 init_val  96 flags
 *   100 fn_kind  104 fn_addr  112 fn_base  120 fn_module_hash
 *   128 buckets_off  136 keys_off  144 free_off  152 fn_module[256]
 *   448 wlock  512 count  516 free_top  520 repairs
 * Everything up to fn_module is written once by the creator.  wlock, count,
 * free_top, repairs and the free stack belong to the writer.
 */
struct fh_hash {
    _Atomic uint64_t magic;
    char     name[FH_HASH_NAMESIZE];
    uint32_t entries;
    uint32_t key_len;
    uint32_t key_stride;
    uint32_t num_buckets;     /* any count >= 1; see ht_home_bucket() */
    uint32_t reserved;
    uint32_t init_val;
    uint32_t flags;
    uint32_t fn_kind;
    uint64_t fn_addr;         /* the function, valid where the module matches */
    uint64_t fn_base;         /* dli_fbase of its module in the creator */
    uint64_t fn_module_hash;  /* FNV-1a of fn_module: part of the check key */
    uint64_t buckets_off;     /* offsets from the table's base */
    uint64_t keys_off;
    uint64_t free_off;
    char     fn_module[FH_HASH_MODULE_PATH_MAX];
    alignas(64) pthread_mutex_t wlock;
    alignas(64) _Atomic uint32_t count;  /* keys; only writer: the writer */
    uint32_t free_top;                   /* free stack depth; writer only */
    _Atomic uint32_t repairs;            /* dead writers repaired after */
};
_Static_assert(offsetof(struct fh_hash, fn_module) == 152, "hash layout");

static inline struct ht_bucket *ht_buckets(const struct fh_hash *h)
{
    return (struct ht_bucket *)((char *)h + h->buckets_off);
}

static inline unsigned char *ht_key_at(const struct fh_hash *h, uint32_t idx)
{
    return (unsigned char *)h + h->keys_off + (uint64_t)idx * h->key_stride;
}

/* Entry k's data: its last 8 bytes. */
static inline _Atomic uint64_t *ht_data_of(const struct fh_hash *h,
                                        const unsigned char *k)
{
    return (_Atomic uint64_t *)(void *)(k + h->key_stride - sizeof(uint64_t));
}

/*
 * A hash's home bucket: the hash scrambled by an odd multiplier (so a weak
 * user function whose high bits barely vary still spreads), then mapped
 * onto [0, num_buckets) by a multiply-shift (Lemire's "fastrange"), which
 * needs no power-of-two count.  The signature is hash >> 16, and keys
 * sharing a bucket share the high bits of the product, not of the hash, so
 * their signatures stay as varied as chance makes them.
 */
static inline uint32_t ht_home_bucket(const struct fh_hash *h, uint32_t hash)
{
    return (uint32_t)(((uint64_t)(hash * 0x9e3779b1u) * h->num_buckets) >> 32);
}

static inline uint32_t ht_next_bucket(const struct fh_hash *h, uint32_t b)
{
    return b + 1 == h->num_buckets ? 0 : b + 1;
}

static inline int ht_key_eq(const void *a, const void *b, uint32_t len)
{
    uint64_t a0, a1, b0, b1;
    uint32_t x, y;

    switch (len) {
    case 4:
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        return x == y;
    case 8:
        memcpy(&a0, a, 8);
        memcpy(&b0, b, 8);
        return a0 == b0;
    case 16:
        memcpy(&a0, a, 8);
        memcpy(&a1, (const char *)a + 8, 8);
        memcpy(&b0, b, 8);
        memcpy(&b1, (const char *)b + 8, 8);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    default:
        return memcmp(a, b, len) == 0;
    }
}

/* Bit i set when slot i's signature is sig (empty slots included). */
static inline uint32_t ht_sig_match(const struct ht_bucket *b, uint16_t sig)
{
#if defined(__SSE2__)
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)b->sig);
    __m128i m = _mm_cmpeq_epi16(v, _mm_set1_epi16((short)sig));
    return (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(m, _mm_setzero_si128()));
#else
    uint32_t bits = 0;
    for (int i = 0; i < FH_HASH_BUCKET_ENTRIES; i++)
        bits |= (uint32_t)(__atomic_load_n(&b->sig[i], __ATOMIC_RELAXED) == sig) << i;
    return bits;
#endif
}

/*
 * The key among bucket b's candidate slots m (its signature matches): its
 * key_idx, with *d its data; 0 when no candidate holds it.  Unvalidated:
 * the caller checks b's seq afterwards.
 */
static inline __attribute__((always_inline))
uint32_t ht_bucket_find(const struct fh_hash *h, const struct ht_bucket *b,
                     uint32_t m, const void *key, uint32_t klen, uint64_t *d)
{
    while (m) {
        /* Relaxed: validated by the caller's seq check. */
        uint32_t idx = atomic_load_explicit(&b->key_idx[__builtin_ctz(m)],
                                            memory_order_relaxed);
        m &= m - 1;
        if (idx && idx <= h->entries) {
            const unsigned char *k = ht_key_at(h, idx);
            if (ht_key_eq(k, key, klen)) {
                /* Relaxed: validated by the caller's seq check. */
                *d = atomic_load_explicit(ht_data_of(h, k), memory_order_relaxed);
                return idx;
            }
        }
    }
    return 0;
}

#if defined(__x86_64__)
/* Same convention as DPDK's rte_hash_crc: init_val is the starting CRC, no
 * final inversion; 8 bytes per instruction, then 4, then single bytes. */
__attribute__((target("sse4.2")))
static inline uint32_t ht_crc32c_hw(const void *key, uint32_t len, uint32_t crc)
{
    const unsigned char *p = key;
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    if (len >= 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        crc = _mm_crc32_u32(crc, v);
        p += 4;
        len -= 4;
    }
    while (len--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#endif

/*
 * Bulk lookups: hash everything and prefetch the home buckets, then match
 * signatures and prefetch the first candidate key of each (and, for a key
 * with no candidate in a home bucket that others overflowed from, the
 * next bucket and its candidate: about 2% of keys at 75% fill, whose two
 * misses would otherwise come one after the other, after everything
 * else), then compare each key and check its bucket's seq.  Anything
 * unusual (a writer in the bucket, a miss in a bucket that has
 * overflowed) goes to the one-key path, slow().
 *
 * The keys come from the caller's key source, ctx:
 *   key(ctx, i)    key i's bytes, or NULL to refuse it: the call stops and
 *                  returns HT_BULK_REFUSED (what it wrote is then garbage)
 *   fetch(ctx, i)  starts fetching what key(ctx, i) will read, called
 *                  HT_KEY_PREFETCH keys ahead (NULL: nothing to fetch)
 *   hash(ctx, i, key)      key i's hash
 *   slow(h, key, hash, d)  the one-key lookup, its position or -ENOENT
 * key() runs exactly once per key, in order, before anything reads the
 * key, so it can be the check that makes reading it safe (the Python
 * extension's: a bytes object of key_len).  Always inlined, and called
 * with functions known at the call site, so each caller gets its own copy
 * with these calls inlined and the ones it does not need folded away.
 */
/* Keys fetched ahead of hashing them: a whole burst of 16 (DPDK's
 * PREFETCH_OFFSET is 4, which leaves each key a few hashes' time to
 * arrive from memory; measured a few percent faster with hash_ab.c). */
#define HT_KEY_PREFETCH 16
#define HT_BULK_REFUSED (-1)

static inline __attribute__((always_inline))
int ht_lookup_bulk(const struct fh_hash *h, void *ctx, uint32_t n,
                   const unsigned char *(*key)(void *ctx, uint32_t i),
                   void (*fetch)(void *ctx, uint32_t i),
                   uint32_t (*hash)(void *ctx, uint32_t i, const unsigned char *k),
                   int32_t (*slow)(const struct fh_hash *h, const void *k,
                                   uint32_t hash, uint64_t *d),
                   int32_t *pos, uint64_t *data)
{
    const struct ht_bucket *bk = ht_buckets(h);
    const uint32_t klen = h->key_len, entries = h->entries;
    const unsigned char *keys[FH_HASH_LOOKUP_BULK_MAX];
    uint32_t hashes[FH_HASH_LOOKUP_BULK_MAX], seqs[FH_HASH_LOOKUP_BULK_MAX];
    uint32_t homes[FH_HASH_LOOKUP_BULK_MAX], cand[FH_HASH_LOOKUP_BULK_MAX];
    uint8_t spilled[FH_HASH_LOOKUP_BULK_MAX];   /* keys past their home */
    int hits = 0;

    for (uint32_t base = 0; base < n; base += FH_HASH_LOOKUP_BULK_MAX) {
        uint32_t cnt = n - base < FH_HASH_LOOKUP_BULK_MAX ? n - base
                                                          : FH_HASH_LOOKUP_BULK_MAX;
        uint32_t nspilled = 0;

        if (fetch)
            for (uint32_t i = 0; i < cnt && i < HT_KEY_PREFETCH; i++)
                fetch(ctx, base + i);
        for (uint32_t i = 0; i < cnt; i++) {
            if (fetch && i + HT_KEY_PREFETCH < cnt)
                fetch(ctx, base + i + HT_KEY_PREFETCH);
            if (!(keys[i] = key(ctx, base + i)))
                return HT_BULK_REFUSED;
            hashes[i] = hash(ctx, base + i, keys[i]);
            homes[i] = ht_home_bucket(h, hashes[i]);
            __builtin_prefetch(&bk[homes[i]], 0, 3);
        }
        for (uint32_t i = 0; i < cnt; i++) {
            const struct ht_bucket *b = &bk[homes[i]];
            uint32_t m;
            /* Acquire pairs with seq_end's release store (hash.c). */
            seqs[i] = atomic_load_explicit(&b->seq, memory_order_acquire);
            m = ht_sig_match(b, (uint16_t)(hashes[i] >> 16));
            cand[i] = m;
            if (m) {
                /* Relaxed: only a prefetch address; ht_bucket_find reads
                 * key_idx again, validated by the seq check. */
                uint32_t idx = atomic_load_explicit(&b->key_idx[__builtin_ctz(m)],
                                                    memory_order_relaxed);
                if (idx && idx <= entries) {
                    /* Both ends: a 24-byte entry crosses a line in two
                     * slots of eight, and a found key's data is read. */
                    const unsigned char *k = ht_key_at(h, idx);
                    __builtin_prefetch(k, 0, 3);
                    __builtin_prefetch(k + h->key_stride - 1, 0, 3);
                }
            } else if (atomic_load_explicit(&b->overflow, memory_order_relaxed)) {
                /* No signature here, and keys homed here went on to the
                 * next bucket: the key is there (or later, or nowhere).
                 * Start fetching it now, beside the others' misses, as
                 * DPDK fetches every key's second bucket; slow() then
                 * finds it in cache.  Relaxed: a hint. */
                __builtin_prefetch(&bk[ht_next_bucket(h, homes[i])], 0, 3);
                spilled[nspilled++] = (uint8_t)i;
            }
        }
        /* The spilled keys' candidates in their next bucket, fetched too.
         * Only prefetches: slow() reads everything again under the
         * buckets' seqlocks. */
        for (uint32_t s = 0; s < nspilled; s++) {
            const struct ht_bucket *b = &bk[ht_next_bucket(h, homes[spilled[s]])];
            uint32_t m = ht_sig_match(b, (uint16_t)(hashes[spilled[s]] >> 16));
            if (m) {
                /* Relaxed: a hint (see above). */
                uint32_t idx = atomic_load_explicit(&b->key_idx[__builtin_ctz(m)],
                                                    memory_order_relaxed);
                if (idx && idx <= entries)
                    __builtin_prefetch(ht_key_at(h, idx), 0, 3);
            }
        }
        for (uint32_t i = 0; i < cnt; i++) {
            const struct ht_bucket *b = &bk[homes[i]];
            uint64_t d = 0;
            uint32_t f = ht_bucket_find(h, b, cand[i], keys[i], klen, &d), ofl;
            int32_t p;

            /* Relaxed: a hint that is never too low (see hash.c's head
             * comment). */
            ofl = atomic_load_explicit(&b->overflow, memory_order_relaxed);
            /* Acquire fence: this key's reads above complete before its
             * bucket's seq is re-read; pairs with seq_begin's release
             * fence (hash.c).  One per key, so that each key is done (and
             * the CPU can run on into the caller's next burst) as soon as
             * its own entry has arrived. */
            atomic_thread_fence(memory_order_acquire);
            if (__builtin_expect(!(seqs[i] & 1) &&
                                 atomic_load_explicit(&b->seq, memory_order_relaxed) == seqs[i] &&
                                 (f || ofl == 0), 1)) {
                p = f ? (int32_t)(f - 1) : -ENOENT;
            } else {
                d = 0;
                p = slow(h, keys[i], hashes[i], &d);
            }
            pos[base + i] = p;
            if (data)
                data[base + i] = p >= 0 ? d : 0;
            hits += p >= 0;
        }
    }
    return hits;
}

#endif
