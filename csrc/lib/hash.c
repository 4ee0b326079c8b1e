/*
 * hash.c - shared hash tables (see forkhost/hash.h for the contract).
 *
 * Why this layout.  DPDK's rte_hash is a cuckoo table: a key lives in one of
 * two buckets and inserts may move keys, which forces readers to watch a
 * table-wide change counter.  Here keys never move: a key goes in the first
 * bucket from its home with a free slot, and every bucket it passed counts
 * it in `overflow`.  Lookups read one bucket (and one key) almost always,
 * stop at the first bucket with overflow == 0, and deletes just clear the
 * slot and decrement the counts on the way.  Capacity is guaranteed: the
 * buckets have at least 25% more slots than the table has keys.
 *
 * Reader/writer protocol (per bucket, a seqlock):
 *   writer: seq = s+1 (odd, relaxed); fence(release); change slots;
 *           seq = s+2 (release)
 *   reader: s1 = seq (acquire); if odd retry; read slots, keys, data;
 *           fence(acquire); s2 = seq (relaxed); retry if s1 != s2
 * Key bytes and data live outside the bucket but are only rewritten after
 * their slot is cleared under the bucket's seqlock, so a reader holding a
 * stale key index fails its s1 == s2 check and retries.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "forkhost.h"
#include "forkhost/hash.h"
#include "hash_core.h"

#define HT_MAGIC 0x4853414854484b46ull /* "FKHTHASH" */
/* Fill limit: keys <= 80% of slots keeps overflow chains short (one bucket
 * in the overwhelming majority of lookups).  The bucket count is exactly
 * what that takes, not rounded up to a power of two: for 2^19 entries that
 * is 81920 buckets (5 MiB) instead of 131072 (8 MiB), which is fewer cache
 * and TLB misses per lookup once the table outgrows the caches. */
#define HT_FILL_NUM 4u
#define HT_FILL_DEN 5u
/* Reader spins on an odd seq before it checks whether the writer died. */
#define HT_SPINS_BEFORE_RECOVERY (1u << 20)
/* Validated (function, base, module) triples remembered per process. */
#define HT_OK_CACHE 32
#define HT_ERRLEN 512


static __thread char t_err[HT_ERRLEN];

/* Process-local record of checked functions.  Inherited across fork, and
 * rightly: the child has exactly the parent's mappings. */
static struct {
    _Atomic uint64_t fn, base, mod;
} g_ok[HT_OK_CACHE];
static _Atomic unsigned g_ok_n;
static pthread_mutex_t g_ok_lock = PTHREAD_MUTEX_INITIALIZER;

/* Process-local test hook: where a writer should _exit (see hash.h). */
static int g_crash_at;

static int g_has_sse42;
static uint32_t g_crc_table[256];

__attribute__((format(printf, 1, 2)))
static void set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_err, sizeof t_err, fmt, ap);
    va_end(ap);
}

FH_API const char *fh_hash_error(void) { return t_err; }

/* ---- CRC32C ------------------------------------------------------------ */

__attribute__((constructor)) static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
        g_crc_table[i] = c;
    }
#if defined(__x86_64__) || defined(__i386__)
    {
        unsigned a, b, c, d;
        if (__get_cpuid(1, &a, &b, &c, &d))
            g_has_sse42 = !!(c & bit_SSE4_2);
    }
#endif
}

FH_API uint32_t fh__hash_crc32c_sw(const void *key, uint32_t len, uint32_t crc)
{
    const unsigned char *p = key;
    while (len--)
        crc = g_crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

static inline uint32_t crc32c(const void *key, uint32_t len, uint32_t init)
{
#if defined(__x86_64__)
    if (g_has_sse42)
        return ht_crc32c_hw(key, len, init);
#endif
    return fh__hash_crc32c_sw(key, len, init);
}

FH_API uint32_t fh_hash_crc32c(const void *key, uint32_t len, uint32_t init)
{
    return crc32c(key, len, init);
}

/* ---- module identity of the hash function ------------------------------ */

static uint64_t fnv64(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

/* Copy at most outlen-1 bytes: paths longer than the record are cut the
 * same way at creation and at check time, so they still compare. */
static void copy_path(char *out, size_t outlen, const char *src)
{
    size_t n = strnlen(src, outlen - 1);
    memcpy(out, src, n);
    out[n] = '\0';
}

/* Canonical path of a loaded module: the main program's l_name is "", and
 * others may be relative to the cwd at dlopen time. */
static void module_path(const struct link_map *lm, char *out, size_t outlen)
{
    char buf[PATH_MAX];
    const char *name = (lm && lm->l_name && lm->l_name[0]) ? lm->l_name
                                                           : "/proc/self/exe";
    copy_path(out, outlen, realpath(name, buf) ? buf : name);
}

struct find_mod { const char *path; uint64_t base; int found; };

static int find_mod_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct find_mod *f = arg;
    char path[FH_HASH_MODULE_PATH_MAX], buf[PATH_MAX];
    const char *name = info->dlpi_name && info->dlpi_name[0] ? info->dlpi_name
                                                             : "/proc/self/exe";
    uint64_t lo = UINT64_MAX;

    if (strncmp(name, "linux-vdso", 10) == 0)
        return 0;
    copy_path(path, sizeof path, realpath(name, buf) ? buf : name);
    if (strcmp(path, f->path) != 0)
        return 0;
    /* dli_fbase is where the first PT_LOAD segment was mapped. */
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD &&
            info->dlpi_phdr[i].p_vaddr < lo)
            lo = info->dlpi_phdr[i].p_vaddr;
    if (lo == UINT64_MAX)
        lo = 0;
    f->base = (info->dlpi_addr + lo) & ~(uint64_t)(sysconf(_SC_PAGESIZE) - 1);
    f->found = 1;
    return 1;
}

static inline int ok_cached(const struct fh_hash *h)
{
    /* Acquire pairs with the release increment in remember_ok: entries
     * below n are complete. */
    unsigned n = atomic_load_explicit(&g_ok_n, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        /* Relaxed: written once, before n covered them. */
        if (atomic_load_explicit(&g_ok[i].fn, memory_order_relaxed) == h->fn_addr &&
            atomic_load_explicit(&g_ok[i].base, memory_order_relaxed) == h->fn_base &&
            atomic_load_explicit(&g_ok[i].mod, memory_order_relaxed) == h->fn_module_hash)
            return 1;
    return 0;
}

static void remember_ok(const struct fh_hash *h)
{
    pthread_mutex_lock(&g_ok_lock);
    unsigned n = atomic_load_explicit(&g_ok_n, memory_order_relaxed);
    if (!ok_cached(h) && n < HT_OK_CACHE) {
        atomic_store_explicit(&g_ok[n].fn, h->fn_addr, memory_order_relaxed);
        atomic_store_explicit(&g_ok[n].base, h->fn_base, memory_order_relaxed);
        atomic_store_explicit(&g_ok[n].mod, h->fn_module_hash, memory_order_relaxed);
        /* Release pairs with the acquire load in ok_cached. */
        atomic_store_explicit(&g_ok_n, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_ok_lock);
}

/* The slow check: is the recorded module mapped at the recorded base here,
 * and does the function address lie in it? */
static int check_module(const struct fh_hash *h)
{
    Dl_info di;
    struct link_map *lm = NULL;
    char here[FH_HASH_MODULE_PATH_MAX] = "", where[96], inside[FH_HASH_MODULE_PATH_MAX + 64] = "";
    const void *fn = (const void *)(uintptr_t)h->fn_addr;
    struct find_mod f = { h->fn_module, 0, 0 };

    if (dladdr1(fn, &di, (void **)&lm, RTLD_DL_LINKMAP) && lm) {
        module_path(lm, here, sizeof here);
        if (strcmp(here, h->fn_module) == 0 &&
            (uint64_t)(uintptr_t)di.dli_fbase == h->fn_base)
            return 0;
    }
    dl_iterate_phdr(find_mod_cb, &f);
    if (f.found)
        snprintf(where, sizeof where, "is loaded at 0x%lx in this process",
                 (unsigned long)f.base);
    else
        snprintf(where, sizeof where, "is not loaded in this process");
    if (here[0] && strcmp(here, h->fn_module) != 0)
        snprintf(inside, sizeof inside, "; here 0x%lx is inside %s",
                 (unsigned long)h->fn_addr, here);
    else if (!here[0])
        snprintf(inside, sizeof inside, "; here 0x%lx is in no module",
                 (unsigned long)h->fn_addr);
    set_error("hash table '%s': hash function 0x%lx is in %s, loaded at 0x%lx "
              "in the process that created the table, but %s %s%s; not calling "
              "it (load the module before the template fork, or hash the key "
              "yourself and use the *_with_hash calls)",
              h->name, (unsigned long)h->fn_addr, h->fn_module,
              (unsigned long)h->fn_base, h->fn_module, where, inside);
    return -EFAULT;
}

/* The user function's first check in this process: the module walk. */
__attribute__((noinline))
static int check_user_fn(const struct fh_hash *h)
{
    int rc = check_module(h);
    if (rc == 0)
        remember_ok(h);
    return rc;
}

/* What every call that hashes does first, inlined into the hot paths (the
 * exported fh_hash_check would cost a PLT call from inside the library):
 * the built-in function, or a user function this process has checked. */
static inline int fn_ready(const struct fh_hash *h)
{
    if (h->fn_kind == HT_FN_BUILTIN || ok_cached(h))
        return 0;
    return check_user_fn(h);
}

FH_API int fh_hash_check(const struct fh_hash *h)
{
    return fn_ready(h);
}

/* Hash key with the table's function; the caller has checked it. */
static inline uint32_t do_hash(const struct fh_hash *h, const void *key)
{
    if (h->fn_kind == HT_FN_BUILTIN)
        return crc32c(key, h->key_len, h->init_val);
    return ((fh_hash_fn)(uintptr_t)h->fn_addr)(key, h->key_len, h->init_val);
}

FH_API int fh_hash_hash(const struct fh_hash *h, const void *key, uint32_t *sig)
{
    int rc = fn_ready(h);
    if (rc == 0)
        *sig = do_hash(h, key);
    return rc;
}

/* ---- layout helpers ---------------------------------------------------- */

static inline uint32_t *free_stack(const struct fh_hash *h)
{
    return (uint32_t *)((char *)h + h->free_off);
}

/* The hash store: entries + 1 hashes, indexed like the entries, after the
 * free stack (its offset follows from free_off, see fh_hash_create). */
static uint64_t hashes_offset(uint64_t free_off, uint32_t entries)
{
    return (free_off + (uint64_t)entries * sizeof(uint32_t) + 63) & ~(uint64_t)63;
}

static inline _Atomic uint32_t *hash_store(const struct fh_hash *h)
{
    return (_Atomic uint32_t *)(void *)((char *)h + hashes_offset(h->free_off,
                                                                  h->entries));
}

static inline void cpu_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- writer lock and repair -------------------------------------------- */

/*
 * The writer died inside add/del/reset; we hold the lock.  What it can have
 * left: an odd seq (readers would spin), a key entry popped from the free
 * stack but never published or a cleared slot never pushed (leaks), count
 * off by one, overflow counts too high (never too low: adds count before
 * publishing, deletes clear before uncounting).  Rebuild all of it from the
 * slots, which are always consistent (a slot is published by one store).
 */
static void repair_state(struct fh_hash *h);

/* The writer died inside add/del/reset; we hold the lock: repair, count. */
static void repair(struct fh_hash *h)
{
    repair_state(h);
    /* Relaxed: written under the writer lock, read as a statistic. */
    atomic_fetch_add_explicit(&h->repairs, 1, memory_order_relaxed);
}

static void repair_state(struct fh_hash *h)
{
    struct ht_bucket *bk = ht_buckets(h);
    uint32_t nb = h->num_buckets, count = 0, top = 0;
    unsigned char *used = calloc(h->entries + 1u, 1);
    uint32_t *ofl = calloc(nb, sizeof *ofl);

    for (uint32_t b = 0; b < nb; b++) {
        /* Only writer of seq: the lock holder, us. */
        uint32_t s = atomic_load_explicit(&bk[b].seq, memory_order_relaxed);
        if (s & 1)
            /* Release pairs with readers' acquire load of seq. */
            atomic_store_explicit(&bk[b].seq, s + 1, memory_order_release);
    }
    if (!used || !ofl)
        goto out; /* the leaks stay; the table is usable */
    for (uint32_t b = 0; b < nb; b++)
        for (int i = 0; i < FH_HASH_BUCKET_ENTRIES; i++) {
            uint32_t idx = atomic_load_explicit(&bk[b].key_idx[i], memory_order_relaxed);
            if (!idx)
                continue;
            used[idx] = 1;
            count++;
            /* Relaxed: we are the writer (repairing). */
            for (uint32_t x = ht_home_bucket(h, atomic_load_explicit(
                     &hash_store(h)[idx], memory_order_relaxed));
                 x != b; x = ht_next_bucket(h, x))
                ofl[x]++;
        }
    for (uint32_t b = 0; b < nb; b++)
        /* Relaxed: a count we only lower towards the truth, and never below
         * it, so a concurrent reader still probes far enough. */
        atomic_store_explicit(&bk[b].overflow, ofl[b], memory_order_relaxed);
    for (uint32_t idx = h->entries; idx >= 1; idx--)
        if (!used[idx])
            free_stack(h)[top++] = idx;
    h->free_top = top;
    atomic_store_explicit(&h->count, count, memory_order_relaxed);
out:
    free(used);
    free(ofl);
}

static int wlock(struct fh_hash *h)
{
    int rc;

    if (h->flags & FH_HASH_F_SINGLE_WRITER)
        return 0;
    rc = pthread_mutex_lock(&h->wlock);
    if (rc == EOWNERDEAD) {
        repair(h);
        pthread_mutex_consistent(&h->wlock);
        return 0;
    }
    return -rc;
}

static void wunlock(struct fh_hash *h)
{
    if (!(h->flags & FH_HASH_F_SINGLE_WRITER))
        pthread_mutex_unlock(&h->wlock);
}

/* A reader has seen an odd seq for very long: if the writer is dead, the
 * robust mutex says so, and the reader repairs instead of spinning on. */
static void reader_recover(const struct fh_hash *ch)
{
    fh_hash_recover((struct fh_hash *)ch);
}

FH_API int fh_hash_recover(struct fh_hash *h)
{
    int rc;

    if (h->flags & FH_HASH_F_SINGLE_WRITER)
        return 0;
    rc = pthread_mutex_trylock(&h->wlock);
    if (rc == EOWNERDEAD) {
        repair(h);
        pthread_mutex_consistent(&h->wlock);
    }
    if (rc == 0 || rc == EOWNERDEAD)
        pthread_mutex_unlock(&h->wlock);
    return rc == EOWNERDEAD;
}

FH_API uint32_t fh_hash_repairs(const struct fh_hash *h)
{
    /* Relaxed: a statistic. */
    return atomic_load_explicit(&h->repairs, memory_order_relaxed);
}

static inline void reader_wait(const struct fh_hash *h, unsigned *spins)
{
    cpu_pause();
    if ((++*spins & 4095) == 0) {
        sched_yield();
        if (*spins % HT_SPINS_BEFORE_RECOVERY == 0)
            reader_recover(h);
    }
}

static inline void seq_begin(struct ht_bucket *b)
{
    /* Relaxed: the writer is seq's only writer. */
    uint32_t s = atomic_load_explicit(&b->seq, memory_order_relaxed);
    atomic_store_explicit(&b->seq, s + 1, memory_order_relaxed);
    /* Release fence: the odd seq is ordered before the slot stores that
     * follow; pairs with the reader's acquire fence before its second seq
     * load, so a reader that saw any of our slot stores sees seq moved. */
    atomic_thread_fence(memory_order_release);
}

static inline void seq_end(struct ht_bucket *b)
{
    uint32_t s = atomic_load_explicit(&b->seq, memory_order_relaxed);
    /* Release pairs with the reader's acquire load of seq (its s1): a
     * reader that starts after this sees the finished slot, key and data. */
    atomic_store_explicit(&b->seq, s + 1, memory_order_release);
}

/* ---- lookup ------------------------------------------------------------ */

/*
 * Search one bucket under its seqlock, retrying while a writer changes it.
 * Returns the key index (0: not in this bucket) and sets *ofl to the
 * bucket's overflow count.  The slow path (lookup_slow): the single-key
 * one (lookup_core) only comes here when it met a writer; bulk lookups
 * (ht_lookup_bulk, hash_core.h) also for a key stored past its home
 * bucket.
 */
static uint32_t search_bucket(const struct fh_hash *h,
                              const struct ht_bucket *b, uint16_t sig,
                              const void *key, uint64_t *data, uint32_t *ofl)
{
    unsigned spins = 0;

    for (;;) {
        /* Acquire pairs with seq_end's release store. */
        uint32_t s1 = atomic_load_explicit(&b->seq, memory_order_acquire);
        uint32_t found;
        uint64_t d = 0;

        if (s1 & 1) {
            reader_wait(h, &spins);
            continue;
        }
        found = ht_bucket_find(h, b, ht_sig_match(b, sig), key, h->key_len, &d);
        /* Relaxed: a hint that is never too low (see file comment). */
        *ofl = atomic_load_explicit(&b->overflow, memory_order_relaxed);
        /* Acquire fence: the reads above complete before seq is re-read;
         * pairs with seq_begin's release fence. */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&b->seq, memory_order_relaxed) == s1) {
            if (found && data)
                *data = d;
            return found;
        }
    }
}

__attribute__((noinline))
static int32_t lookup_slow(const struct fh_hash *h, const void *key,
                           uint32_t hash, uint64_t *data)
{
    const struct ht_bucket *bk = ht_buckets(h);
    uint32_t b = ht_home_bucket(h, hash), ofl;
    uint16_t sig = (uint16_t)(hash >> 16);

    for (uint32_t probe = 0; probe < h->num_buckets; probe++) {
        uint32_t idx = search_bucket(h, &bk[b], sig, key, data, &ofl);
        if (idx)
            return (int32_t)(idx - 1);
        if (ofl == 0)
            break;
        b = ht_next_bucket(h, b);
    }
    return -ENOENT;
}

/*
 * The lookup itself, inlined into each entry point.  One pass of the
 * seqlock protocol per bucket, straight-line for the common case (no
 * writer in the bucket, the key in its home bucket): a short instruction
 * stream lets the CPU run ahead into the caller's next lookup and overlap
 * its cache misses with this one's.  A writer seen (odd or moved seq)
 * sends the whole lookup to the retrying slow path.
 */
static inline __attribute__((always_inline))
int32_t lookup_core(const struct fh_hash *h, const void *key, uint32_t hash,
                    uint64_t *data)
{
    const struct ht_bucket *bk = ht_buckets(h);
    const uint16_t sig = (uint16_t)(hash >> 16);
    uint32_t b = ht_home_bucket(h, hash);

    for (uint32_t probe = 0; probe < h->num_buckets; probe++) {
        const struct ht_bucket *bp = &bk[b];
        /* Acquire pairs with seq_end's release store. */
        uint32_t s1 = atomic_load_explicit(&bp->seq, memory_order_acquire);
        uint64_t d = 0;
        uint32_t found = ht_bucket_find(h, bp, ht_sig_match(bp, sig), key,
                                     h->key_len, &d), ofl;
        /* Relaxed: a hint that is never too low (see file comment). */
        ofl = atomic_load_explicit(&bp->overflow, memory_order_relaxed);
        /* Acquire fence: the reads above complete before seq is re-read;
         * pairs with seq_begin's release fence. */
        atomic_thread_fence(memory_order_acquire);
        if (__builtin_expect((s1 & 1) ||
                             atomic_load_explicit(&bp->seq, memory_order_relaxed) != s1, 0))
            return lookup_slow(h, key, hash, data);
        if (found) {
            if (data)
                *data = d;
            return (int32_t)(found - 1);
        }
        if (ofl == 0)
            break;
        b = ht_next_bucket(h, b);
    }
    return -ENOENT;
}

/*
 * What every single-key call starts with: the argument checks, then the
 * hash: sig when the caller gives one (the *_with_hash calls), otherwise
 * the table's function over key (-EFAULT if this process may not call it).
 * 0 with *hash set, or -errno.  Inlined: the exported functions are
 * thin, and calling one exported function from another would go through
 * the PLT.
 */
static inline __attribute__((always_inline))
int key_hash(const struct fh_hash *h, const void *key, const uint32_t *sig,
             uint32_t *hash)
{
    int rc;

    if (!h || !key)
        return -EINVAL;
    if (sig) {
        *hash = *sig;
        return 0;
    }
    if ((rc = fn_ready(h)) < 0)
        return rc;
    *hash = do_hash(h, key);
    return 0;
}

FH_API int32_t fh_hash_lookup_with_hash_data(const struct fh_hash *h,
                                             const void *key, uint32_t sig,
                                             uint64_t *data)
{
    uint32_t hash;
    int rc = key_hash(h, key, &sig, &hash);
    return rc < 0 ? rc : lookup_core(h, key, hash, data);
}

FH_API int32_t fh_hash_lookup_with_hash(const struct fh_hash *h,
                                        const void *key, uint32_t sig)
{
    uint32_t hash;
    int rc = key_hash(h, key, &sig, &hash);
    return rc < 0 ? rc : lookup_core(h, key, hash, NULL);
}

FH_API int32_t fh_hash_lookup_data(const struct fh_hash *h, const void *key,
                                   uint64_t *data)
{
    uint32_t hash;
    int rc = key_hash(h, key, NULL, &hash);
    return rc < 0 ? rc : lookup_core(h, key, hash, data);
}

FH_API int32_t fh_hash_lookup(const struct fh_hash *h, const void *key)
{
    uint32_t hash;
    int rc = key_hash(h, key, NULL, &hash);
    return rc < 0 ? rc : lookup_core(h, key, hash, NULL);
}

/* The library's key sources for ht_lookup_bulk: packed keys, or the
 * caller's key pointers; hashes given (sigs) or from the table's
 * function (checked by the caller, fn_ready). */
struct bulk_src {
    const unsigned char *packed;
    const void *const *ptrs;
    const uint32_t *sigs;
    /* The hash function's arguments, read once: the hash loop calls
     * through a pointer, after which the compiler would read them from
     * the table again for every key. */
    uint32_t klen, init;
    int builtin;
    fh_hash_fn fn;
};

static inline const unsigned char *src_packed(void *c, uint32_t i)
{
    const struct bulk_src *s = c;
    return s->packed + (size_t)i * s->klen;
}

static inline const unsigned char *src_ptr(void *c, uint32_t i)
{
    return ((const struct bulk_src *)c)->ptrs[i];
}

static inline void src_fetch_ptr(void *c, uint32_t i)
{
    __builtin_prefetch(((const struct bulk_src *)c)->ptrs[i], 0, 3);
}

static inline uint32_t src_sig(void *c, uint32_t i, const unsigned char *k)
{
    return ((const struct bulk_src *)c)->sigs[i];
}

static inline uint32_t src_hash(void *c, uint32_t i, const unsigned char *k)
{
    const struct bulk_src *s = c;
    return s->builtin ? crc32c(k, s->klen, s->init) : s->fn(k, s->klen, s->init);
}

/* The bulk calls' argument checks, then the lookup: packed keys, or
 * (ptrs) an array of key pointers, none NULL.  Each combination of key
 * shape and sigs given or not gets its own copy of ht_lookup_bulk, in
 * which the per-key tests of ptrs and sigs fold away. */
static inline __attribute__((always_inline))
int bulk_checked(const struct fh_hash *h, const void *keys,
                 const void *const *ptrs, const uint32_t *sigs, uint32_t n,
                 int32_t *positions, uint64_t *data)
{
    struct bulk_src src;
    int rc;

    if (!h || (n && ((!keys && !ptrs) || !positions)))
        return -EINVAL;
    for (uint32_t i = 0; ptrs && i < n; i++)
        if (!ptrs[i])
            return -EINVAL;
    if (!sigs && (rc = fn_ready(h)) < 0)
        return rc;
    src = (struct bulk_src){ keys, ptrs, sigs, h->key_len, h->init_val,
                             h->fn_kind == HT_FN_BUILTIN,
                             (fh_hash_fn)(uintptr_t)h->fn_addr };
    if (ptrs)
        return sigs ? ht_lookup_bulk(h, &src, n, src_ptr, src_fetch_ptr, src_sig,
                                     lookup_slow, positions, data)
                    : ht_lookup_bulk(h, &src, n, src_ptr, src_fetch_ptr, src_hash,
                                     lookup_slow, positions, data);
    return sigs ? ht_lookup_bulk(h, &src, n, src_packed, NULL, src_sig,
                                 lookup_slow, positions, data)
                : ht_lookup_bulk(h, &src, n, src_packed, NULL, src_hash,
                                 lookup_slow, positions, data);
}

FH_API int fh_hash_lookup_bulk_with_hash(const struct fh_hash *h,
                                         const void *keys,
                                         const uint32_t *sigs, uint32_t n,
                                         int32_t *positions, uint64_t *data)
{
    return bulk_checked(h, keys, NULL, sigs, n, positions, data);
}

FH_API int fh_hash_lookup_bulk_ptrs(const struct fh_hash *h,
                                    const void *const *keys,
                                    const uint32_t *sigs, uint32_t n,
                                    int32_t *positions, uint64_t *data)
{
    return bulk_checked(h, NULL, keys, sigs, n, positions, data);
}

FH_API int fh_hash_lookup_bulk_data(const struct fh_hash *h, const void *keys,
                                    uint32_t n, int32_t *positions,
                                    uint64_t *data)
{
    return bulk_checked(h, keys, NULL, NULL, n, positions, data);
}

FH_API int fh_hash_lookup_bulk(const struct fh_hash *h, const void *keys,
                               uint32_t n, int32_t *positions)
{
    return bulk_checked(h, keys, NULL, NULL, n, positions, NULL);
}

/* ---- add / delete ------------------------------------------------------ */

/* Bit i set when slot i is empty.  Writer side only: the writer is the
 * only thread that stores key_idx, so its own plain (vector) reads of it
 * race with nothing. */
static inline uint32_t empty_slots(const struct ht_bucket *b)
{
#if defined(__SSE2__)
    const __m128i *p = (const __m128i *)(const void *)b->key_idx;
    __m128i z = _mm_setzero_si128();
    __m128i lo = _mm_cmpeq_epi32(_mm_loadu_si128(p), z);
    __m128i hi = _mm_cmpeq_epi32(_mm_loadu_si128(p + 1), z);
    return (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(lo)) |
           (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(hi)) << 4;
#else
    uint32_t bits = 0;
    for (int i = 0; i < FH_HASH_BUCKET_ENTRIES; i++)
        bits |= (uint32_t)(atomic_load_explicit(&b->key_idx[i],
                                                memory_order_relaxed) == 0) << i;
    return bits;
#endif
}

/* *p += d (1, or UINT32_MAX for -1) on a word whose only writer is the
 * table's writer (a bucket's overflow count, the key count), so a load and
 * a store do, not a locked read-modify-write: on x86 that waits for every
 * earlier store to reach the cache, and an add's stores go to lines still
 * being fetched (the bucket, the next entry).  Relaxed, as the
 * fetch-and-add it replaces: count is a statistic, and readers take
 * overflow as a hint that is never too low, since adds count before
 * publishing and deletes uncount after clearing (see repair_state). */
static inline void writer_add(_Atomic uint32_t *p, uint32_t d)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

/* Copy a key into its entry; the common lengths without a libc call. */
static inline void key_copy(void *dst, const void *src, uint32_t len)
{
    switch (len) {
    case 4: memcpy(dst, src, 4); break;
    case 8: memcpy(dst, src, 8); break;
    case 16: memcpy(dst, src, 16); break;
    default: memcpy(dst, src, len);
    }
}

/*
 * Writer side (no seqlock needed, we are the writer): find key's slot, and
 * on the way (free_b not NULL) the first bucket from home with a free slot
 * (*free_b, or UINT32_MAX when none was met before the chain ended).
 * Returns the key index, 0 when absent.
 */
static inline uint32_t find_slot(const struct fh_hash *h, const void *key,
                                 uint32_t hash, uint32_t *bucket, int *slot,
                                 uint32_t *free_b)
{
    struct ht_bucket *bk = ht_buckets(h);
    uint32_t b = ht_home_bucket(h, hash);
    uint16_t sig = (uint16_t)(hash >> 16);

    if (free_b)
        *free_b = UINT32_MAX;
    for (uint32_t probe = 0; probe < h->num_buckets; probe++) {
        uint32_t m = ht_sig_match(&bk[b], sig);
        while (m) {
            int i = __builtin_ctz(m);
            /* Relaxed: we are the only writer of key_idx. */
            uint32_t idx = atomic_load_explicit(&bk[b].key_idx[i], memory_order_relaxed);
            m &= m - 1;
            if (idx && ht_key_eq(ht_key_at(h, idx), key, h->key_len)) {
                *bucket = b;
                *slot = i;
                return idx;
            }
        }
        if (free_b && *free_b == UINT32_MAX && empty_slots(&bk[b]))
            *free_b = b;
        /* Relaxed: only the writer changes overflow. */
        if (atomic_load_explicit(&bk[b].overflow, memory_order_relaxed) == 0)
            break;
        b = ht_next_bucket(h, b);
    }
    return 0;
}

static int32_t add_locked(struct fh_hash *h, const void *key, uint32_t hash,
                          uint64_t data)
{
    struct ht_bucket *bk = ht_buckets(h);
    uint32_t b, home = ht_home_bucket(h, hash), idx, free_b;
    int slot;
    unsigned char *k;

    idx = find_slot(h, key, hash, &b, &slot, &free_b);
    if (idx) {
        /* Update in place, inside the seqlock of the key's bucket. */
        seq_begin(&bk[b]);
        atomic_store_explicit(ht_data_of(h, ht_key_at(h, idx)), data,
                              memory_order_relaxed);
        seq_end(&bk[b]);
        return (int32_t)(idx - 1);
    }
    if (h->free_top == 0)
        return -ENOSPC;
    /* The first bucket from home with a free slot: usually found by
     * find_slot; otherwise past the chain's end.  There always is one,
     * since keys never exceed 80% of the slots. */
    b = free_b;
    if (b == UINT32_MAX)
        for (b = home; !empty_slots(&bk[b]); b = ht_next_bucket(h, b))
            ;
    slot = __builtin_ctz(empty_slots(&bk[b]));
    idx = free_stack(h)[--h->free_top];
    /* The entry the next add will take: start fetching it for writing now,
     * so that add's key copy does not wait for the line (in a table filled
     * from empty, entries come off the stack in order: the next line). */
    if (h->free_top)
        __builtin_prefetch(ht_key_at(h, free_stack(h)[h->free_top - 1]), 1, 3);
    k = ht_key_at(h, idx);
    /* No slot refers to entry idx: plain writes, published below. */
    key_copy(k, key, h->key_len);
    /* Relaxed: published with the key below; readers of the stored hash
     * check what they find (fh_hash_get_key_with_position). */
    atomic_store_explicit(&hash_store(h)[idx], hash, memory_order_relaxed);
    atomic_store_explicit(ht_data_of(h, k), data, memory_order_relaxed);
    /* Count the key in every bucket it passes before it becomes visible,
     * so that overflow is never too low for a reader. */
    for (uint32_t x = home; x != b; x = ht_next_bucket(h, x))
        writer_add(&bk[x].overflow, 1);
    seq_begin(&bk[b]);
    __atomic_store_n(&bk[b].sig[slot], (uint16_t)(hash >> 16), __ATOMIC_RELAXED);
    /* The store that publishes the key (ordered by seq_end's release). */
    atomic_store_explicit(&bk[b].key_idx[slot], idx, memory_order_relaxed);
    if (g_crash_at == 1)
        _exit(99);
    seq_end(&bk[b]);
    writer_add(&h->count, 1);
    return (int32_t)(idx - 1);
}

static int32_t del_locked(struct fh_hash *h, const void *key, uint32_t hash)
{
    struct ht_bucket *bk = ht_buckets(h);
    uint32_t b, idx;
    int slot;

    idx = find_slot(h, key, hash, &b, &slot, NULL);
    if (!idx)
        return -ENOENT;
    seq_begin(&bk[b]);
    atomic_store_explicit(&bk[b].key_idx[slot], 0, memory_order_relaxed);
    seq_end(&bk[b]);
    if (g_crash_at == 2)
        _exit(99);
    /* Uncount only after the key is gone (never too low for a reader). */
    for (uint32_t x = ht_home_bucket(h, hash); x != b; x = ht_next_bucket(h, x))
        writer_add(&bk[x].overflow, UINT32_MAX);
    free_stack(h)[h->free_top++] = idx;
    writer_add(&h->count, UINT32_MAX);
    return (int32_t)(idx - 1);
}

static inline int32_t add_hashed(struct fh_hash *h, const void *key,
                                 uint32_t sig, uint64_t data)
{
    int32_t rc;
    if ((rc = wlock(h)) < 0)
        return rc;
    rc = add_locked(h, key, sig, data);
    wunlock(h);
    return rc;
}

static inline int32_t del_hashed(struct fh_hash *h, const void *key,
                                 uint32_t sig)
{
    int32_t rc;
    if ((rc = wlock(h)) < 0)
        return rc;
    rc = del_locked(h, key, sig);
    wunlock(h);
    return rc;
}

FH_API int32_t fh_hash_add_key_with_hash_data(struct fh_hash *h,
                                              const void *key, uint32_t sig,
                                              uint64_t data)
{
    uint32_t hash;
    int rc = key_hash(h, key, &sig, &hash);
    return rc < 0 ? rc : add_hashed(h, key, hash, data);
}

FH_API int32_t fh_hash_add_key_with_hash(struct fh_hash *h, const void *key,
                                         uint32_t sig)
{
    uint32_t hash;
    int rc = key_hash(h, key, &sig, &hash);
    return rc < 0 ? rc : add_hashed(h, key, hash, 0);
}

FH_API int32_t fh_hash_add_key_data(struct fh_hash *h, const void *key,
                                    uint64_t data)
{
    uint32_t hash;
    int rc = key_hash(h, key, NULL, &hash);
    return rc < 0 ? rc : add_hashed(h, key, hash, data);
}

FH_API int32_t fh_hash_add_key(struct fh_hash *h, const void *key)
{
    uint32_t hash;
    int rc = key_hash(h, key, NULL, &hash);
    return rc < 0 ? rc : add_hashed(h, key, hash, 0);
}

FH_API int32_t fh_hash_del_key_with_hash(struct fh_hash *h, const void *key,
                                         uint32_t sig)
{
    uint32_t hash;
    int rc = key_hash(h, key, &sig, &hash);
    return rc < 0 ? rc : del_hashed(h, key, hash);
}

FH_API int32_t fh_hash_del_key(struct fh_hash *h, const void *key)
{
    uint32_t hash;
    int rc = key_hash(h, key, NULL, &hash);
    return rc < 0 ? rc : del_hashed(h, key, hash);
}

static void fill_free_stack(struct fh_hash *h)
{
    uint32_t *st = free_stack(h);
    /* Pops hand out 1, 2, 3, ...: position order follows insertion order
     * in a fresh table. */
    for (uint32_t i = 0; i < h->entries; i++)
        st[i] = h->entries - i;
    h->free_top = h->entries;
}

FH_API int fh_hash_reset(struct fh_hash *h)
{
    struct ht_bucket *bk = ht_buckets(h);
    int rc;

    if ((rc = wlock(h)) < 0)
        return rc;
    for (uint32_t b = 0; b < h->num_buckets; b++) {
        seq_begin(&bk[b]);
        for (int i = 0; i < FH_HASH_BUCKET_ENTRIES; i++)
            atomic_store_explicit(&bk[b].key_idx[i], 0, memory_order_relaxed);
        seq_end(&bk[b]);
    }
    /* Zero the counts only once no key is left anywhere. */
    for (uint32_t b = 0; b < h->num_buckets; b++)
        atomic_store_explicit(&bk[b].overflow, 0, memory_order_relaxed);
    fill_free_stack(h);
    atomic_store_explicit(&h->count, 0, memory_order_relaxed);
    wunlock(h);
    return 0;
}

/* ---- iteration and queries -------------------------------------------- */

FH_API int32_t fh_hash_iterate(const struct fh_hash *h, const void **key,
                               uint64_t *data, uint32_t *next)
{
    const struct ht_bucket *bk = ht_buckets(h);
    const uint64_t total = (uint64_t)h->num_buckets * FH_HASH_BUCKET_ENTRIES;

    if (!next)
        return -EINVAL;
    for (uint64_t pos = *next; pos < total; pos++) {
        const struct ht_bucket *b = &bk[pos / FH_HASH_BUCKET_ENTRIES];
        int i = (int)(pos % FH_HASH_BUCKET_ENTRIES);
        unsigned spins = 0;
        uint32_t idx;
        uint64_t d;

        for (;;) {
            /* Acquire pairs with seq_end's release store. */
            uint32_t s1 = atomic_load_explicit(&b->seq, memory_order_acquire);
            if (s1 & 1) {
                reader_wait(h, &spins);
                continue;
            }
            idx = atomic_load_explicit(&b->key_idx[i], memory_order_relaxed);
            d = idx && idx <= h->entries
                ? atomic_load_explicit(ht_data_of(h, ht_key_at(h, idx)),
                                       memory_order_relaxed)
                : 0;
            /* Acquire fence: pairs with seq_begin's release fence. */
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&b->seq, memory_order_relaxed) == s1)
                break;
        }
        if (!idx || idx > h->entries)
            continue;
        *next = (uint32_t)(pos + 1);
        if (key)
            *key = ht_key_at(h, idx);
        if (data)
            *data = d;
        return (int32_t)(idx - 1);
    }
    *next = (uint32_t)total;
    return -ENOENT;
}

FH_API int fh_hash_get_key_with_position(const struct fh_hash *h,
                                         int32_t position, const void **key)
{
    if (!h || !key || position < 0 || (uint32_t)position >= h->entries)
        return -EINVAL;
    /* A free entry has no slot pointing at it; finding whether one does
     * would cost a scan, so ask the key itself: look it up. */
    const unsigned char *k = ht_key_at(h, (uint32_t)position + 1);
    /* Relaxed: the lookup below checks what the stored hash leads to. */
    if (lookup_core(h, k, atomic_load_explicit(&hash_store(h)[position + 1],
                                               memory_order_relaxed),
                    NULL) != position)
        return -ENOENT;
    *key = k;
    return 0;
}

FH_API int32_t fh_hash_count(const struct fh_hash *h)
{
    /* Relaxed: a statistic; its only writer is the table's writer. */
    return (int32_t)atomic_load_explicit(&h->count, memory_order_relaxed);
}

FH_API uint32_t fh_hash_max_entries(const struct fh_hash *h) { return h->entries; }
FH_API uint32_t fh_hash_key_len(const struct fh_hash *h) { return h->key_len; }
FH_API const char *fh_hash_name(const struct fh_hash *h) { return h->name; }
FH_API const char *fh_hash_fn_module(const struct fh_hash *h) { return h->fn_module; }
FH_API uint64_t fh_hash_fn_base(const struct fh_hash *h) { return h->fn_base; }

FH_API void fh__hash_crash_at(int step) { g_crash_at = step; }

FH_API void fh__hash_tamper(struct fh_hash *h, uint64_t fn_addr,
                            uint64_t fn_base, const char *module)
{
    if (fn_addr)
        h->fn_addr = fn_addr;
    if (fn_base)
        h->fn_base = fn_base;
    if (module) {
        copy_path(h->fn_module, sizeof h->fn_module, module);
        h->fn_module_hash = fnv64(h->fn_module);
    }
    h->fn_kind = HT_FN_USER;
}

/* ---- create / find ----------------------------------------------------- */

static int mz_name(char *buf, const char *name)
{
    return fh__object_zone_name(buf, FH_HASH_MZ_PREFIX, name, FH_HASH_NAMESIZE);
}

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

FH_API struct fh_hash *fh_hash_create(const char *name, uint32_t entries,
                                      uint32_t key_len, fh_hash_fn fn,
                                      uint32_t init_val, unsigned flags)
{
    char mzname[FH_MEMZONE_NAMESIZE];
    char module[FH_HASH_MODULE_PATH_MAX] = "";
    const struct fh_memzone *mz;
    struct fh_hash *h;
    uint64_t nb, stride, buckets_off, keys_off, free_off, total;
    uint64_t fbase = 0;
    unsigned kind = HT_FN_BUILTIN;
    int rc;

    t_err[0] = '\0';
    if (mz_name(mzname, name) < 0 || entries == 0 ||
        entries > FH_HASH_ENTRIES_MAX || key_len == 0 ||
        key_len > FH_HASH_KEY_LEN_MAX || (flags & ~FH_HASH_F_SINGLE_WRITER)) {
        set_error("fh_hash_create: bad name, entries, key_len or flags");
        errno = EINVAL;
        return NULL;
    }
    if (fn && fn != fh_hash_crc32c) {
        Dl_info di;
        struct link_map *lm = NULL;
        if (!dladdr1((const void *)(uintptr_t)fn, &di, (void **)&lm,
                     RTLD_DL_LINKMAP) || !lm) {
            set_error("fh_hash_create('%s'): hash function %p lies in no "
                      "loaded module", name, (void *)(uintptr_t)fn);
            errno = EINVAL;
            return NULL;
        }
        module_path(lm, module, sizeof module);
        fbase = (uint64_t)(uintptr_t)di.dli_fbase;
        kind = HT_FN_USER;
    }
    /* Slots >= entries * 5/4: the fewest buckets that hold them. */
    nb = ((uint64_t)entries * HT_FILL_DEN + FH_HASH_BUCKET_ENTRIES * HT_FILL_NUM - 1)
         / (FH_HASH_BUCKET_ENTRIES * HT_FILL_NUM);
    stride = align_up(key_len, 8) + sizeof(uint64_t);
    buckets_off = align_up(sizeof(struct fh_hash), 64);
    keys_off = align_up(buckets_off + nb * sizeof(struct ht_bucket), 64);
    free_off = align_up(keys_off + (entries + 1ull) * stride, 64);
    total = hashes_offset(free_off, entries) + (entries + 1ull) * sizeof(uint32_t);

    mz = fh_memzone_reserve(mzname, (size_t)total, 64, 0);
    if (!mz) {
        set_error("fh_hash_create('%s'): memzone: %s", name, strerror(errno));
        return NULL;
    }
    h = mz->addr;
    /* Nobody uses the table before the magic is published below. */
    snprintf(h->name, sizeof h->name, "%s", name);
    h->entries = entries;
    h->key_len = key_len;
    h->key_stride = (uint32_t)stride;
    h->num_buckets = (uint32_t)nb;
    h->init_val = init_val;
    h->flags = flags;
    h->fn_kind = kind;
    h->fn_addr = kind == HT_FN_USER ? (uint64_t)(uintptr_t)fn : 0;
    h->fn_base = fbase;
    copy_path(h->fn_module, sizeof h->fn_module, module);
    h->fn_module_hash = fnv64(h->fn_module);
    h->buckets_off = buckets_off;
    h->keys_off = keys_off;
    h->free_off = free_off;
    fill_free_stack(h);

    rc = fh__shared_mutex_init(&h->wlock);
    if (rc) {
        set_error("fh_hash_create('%s'): mutex: %s", name, strerror(rc));
        errno = rc;
        return NULL;
    }
    /* The creator can call its own function: remember that. */
    if (kind == HT_FN_USER)
        remember_ok(h);
    /* Release pairs with the acquire load of magic in fh_hash_find_existing
     * (fh__object_lookup): a process that sees the magic sees the
     * initialised table. */
    atomic_store_explicit(&h->magic, HT_MAGIC, memory_order_release);
    return h;
}

FH_API struct fh_hash *fh_hash_find_existing(const char *name)
{
    return fh__object_lookup(FH_HASH_MZ_PREFIX, name, FH_HASH_NAMESIZE,
                             offsetof(struct fh_hash, magic), HT_MAGIC);
}

FH_API int fh_hash_destroy(struct fh_hash *h)
{
    if (!h || !fh_arena_contains(h, sizeof *h)) {
        errno = EINVAL;
        return -1;
    }
    return fh__object_destroy(h, FH_HASH_MZ_PREFIX, h->name, FH_HASH_NAMESIZE,
                              offsetof(struct fh_hash, magic), HT_MAGIC, NULL,
                              NULL);
}
