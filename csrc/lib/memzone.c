/*
 * memzone.c - named, aligned allocations in the arena (DPDK's rte_memzone).
 *
 * Every other shared object (rings, mempools, hash tables) lives in a
 * memzone, and the directory is how a secondary finds it by name.
 *
 * Allocation.  First fit over the gaps between the live memzones (the
 * directory slots themselves are the only record of what is taken, so
 * there is no free list to get out of step with them), growing the arena
 * (fh__arena_grow) when the fit ends past its current size.  Bytes that
 * were handed out before (below dirty_end) are zeroed when handed out
 * again; those above are still the memfd's zero pages and are not touched,
 * so a big reserve costs nothing until used.
 *
 * Concurrency.  Creators and freers (any process of the prefix, primary or
 * secondary) serialise on one process-shared robust mutex in the
 * directory.  Readers (lookup, walk, copy, count, free_bytes) take no lock:
 * each slot is a seqlock on its generation `gen` (in struct fh_memzone):
 * odd while a memzone lives in the slot, even while it is free or being
 * written.  A reader loads gen (acquire), reads the slot, fences (acquire)
 * and loads gen again: a slot that changed meanwhile is read again.  Every
 * memzone gets a new generation from a directory-wide counter, so a
 * generation names one memzone, not just one use of a slot.
 *
 * A creator may die holding the mutex (killed, crashed, _exit in a test).
 * The kernel walks the dead thread's robust list and marks the mutex
 * FUTEX_OWNER_DIED, so the next locker gets EOWNERDEAD instead of hanging;
 * it then repairs the directory (repair_dir) and calls
 * pthread_mutex_consistent.  Every prefix of the write orders is
 * repairable.  Reserve: the arena's size (grown when needed), the slot's
 * fields (gen still even) and the generation counter, then the slot
 * high-water mark, then the zeroing of reused bytes (and dirty_end), then
 * gen (release: the memzone is live), then the count.  Free: gen (even: gone), then the
 * count.  A slot whose gen is even is free whatever its other fields say,
 * and the free space is computed from the live slots, so the repair only
 * has to recount.
 */
#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkhost.h"

#define MZ_DIR_MAGIC 0x325249445a4d4846ull /* "FHMZDIR2" */
/* Default alignment (align == 0): one cache line, so that no two memzones
 * share a line and false sharing between objects cannot happen. */
#define MZ_DEFAULT_ALIGN 64u
/* Largest alignment accepted: a 1 GiB huge page. */
#define MZ_MAX_ALIGN (1ull << 30)

/*
 * One directory slot, 128 bytes:
 *   0 mz (struct fh_memzone, 96 bytes: name 0, addr 64, len 72, align 80,
 *         flags 88, gen 92)   96 offset   104 name_hash   108 pad
 * Written by the lock holder while gen is even, published by the store of
 * an odd gen (release), unpublished by the store of an even one.
 */
struct mz_slot {
    struct fh_memzone mz;
    uint64_t offset;            /* from the arena base */
    uint32_t name_hash;         /* FNV-1a of the name: a cheap first test */
    uint32_t pad0;
    uint8_t pad[16];
};
_Static_assert(sizeof(struct mz_slot) == 128, "mz_slot is 128 bytes");
_Static_assert(offsetof(struct fh_memzone, gen) == 92, "gen in the padding");

/*
 * The directory, at hdr->mz_dir_offset:
 *   0 magic  8 max  16 data_start  24 data_end  32 dirty_end  40 hwm
 *   44 count  48 next_gen   64 lock (pthread_mutex_t, 40 bytes)
 *   128 slots[FH_MEMZONE_MAX]
 * magic, max, data_start and data_end (the arena's max_size) are written by
 * fh__memzone_format in the primary before any other process exists; the
 * rest only by the lock holder (or the repairer, who holds the lock).
 */
struct mz_dir {
    uint64_t magic;
    uint32_t max;
    uint32_t pad0;
    uint64_t data_start;
    uint64_t data_end;
    _Atomic uint64_t dirty_end;  /* bytes from here on were never handed out */
    _Atomic uint32_t hwm;        /* slots ever written: readers scan below */
    _Atomic uint32_t count;      /* live memzones */
    _Atomic uint32_t next_gen;   /* odd: the next memzone's generation */
    alignas(64) pthread_mutex_t lock;
    alignas(128) struct mz_slot slots[FH_MEMZONE_MAX];
};

/* Process-local: the step at which reserve or free should _exit. */
static int g_crash_at;

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h;
}

static _Atomic uint32_t *gen_of(const struct mz_slot *s)
{
    return (_Atomic uint32_t *)&s->mz.gen;
}

static struct mz_dir *get_dir(void)
{
    struct fh_arena_hdr *hdr = fh_arena_hdr();
    struct mz_dir *dir;

    if (!hdr || hdr->magic != FH_ARENA_MAGIC || !hdr->mz_dir_offset) {
        errno = ENODEV;
        return NULL;
    }
    dir = (struct mz_dir *)((char *)hdr + hdr->mz_dir_offset);
    if (dir->magic != MZ_DIR_MAGIC) {
        errno = ENODEV;
        return NULL;
    }
    return dir;
}

int fh__shared_mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);

    if (rc)
        return rc;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (!rc)
        rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (!rc)
        rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    if (!rc)
        rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

int fh__memzone_format(struct fh_arena_hdr *hdr)
{
    uint64_t off = FH_ARENA_HDR_SIZE;
    /* The rings' reservation records (zero: all free) sit between the
     * directory and the data, at a fixed place like the directory. */
    uint64_t recs = (off + sizeof(struct mz_dir) + 63) & ~(uint64_t)63;
    uint64_t data = (recs + (uint64_t)FH_RING_RECORDS *
                     sizeof(struct fh__ring_rec) + 4095) & ~(uint64_t)4095;
    struct mz_dir *dir = (struct mz_dir *)((char *)hdr + off);
    int rc;

    if (data >= hdr->size) {
        errno = ENOSPC;
        return -1;
    }
    memset(dir, 0, sizeof *dir);
    dir->max = FH_MEMZONE_MAX;
    dir->data_start = data;
    dir->data_end = hdr->max_size;
    /* Relaxed: no other process exists yet. */
    atomic_store_explicit(&dir->dirty_end, data, memory_order_relaxed);
    atomic_store_explicit(&dir->next_gen, 1, memory_order_relaxed);

    rc = fh__shared_mutex_init(&dir->lock);
    if (rc) {
        errno = rc;
        return -1;
    }
    dir->magic = MZ_DIR_MAGIC;
    memset((char *)hdr + recs, 0,
           (size_t)FH_RING_RECORDS * sizeof(struct fh__ring_rec));
    hdr->mz_dir_offset = off;
    hdr->ring_rec_offset = recs;
    hdr->data_offset = data;
    return 0;
}

/*
 * The previous lock holder died somewhere inside a reserve or a free.  We
 * hold the lock now.  A slot it was writing is still even (ignored, its
 * bytes still free); one it published or unpublished is what its gen says.
 * Only the count can be stale: count again.
 */
static void repair_dir(struct mz_dir *dir)
{
    /* Relaxed: the lock holder (us) is the only writer of hwm and count,
     * and the dead owner's stores are complete (its process has gone). */
    uint32_t n = atomic_load_explicit(&dir->hwm, memory_order_relaxed), live = 0;

    for (uint32_t i = 0; i < n && i < dir->max; i++)
        /* Relaxed: as above, nobody else writes gen without the lock. */
        live += atomic_load_explicit(gen_of(&dir->slots[i]), memory_order_relaxed) & 1;
    /* Relaxed: count is a statistic, read relaxed. */
    atomic_store_explicit(&dir->count, live, memory_order_relaxed);
}

/* 0 locked, 1 locked after repairing a dead owner's mess, -1 with errno. */
static int dir_lock(struct mz_dir *dir)
{
    int rc = pthread_mutex_lock(&dir->lock);

    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) {
        repair_dir(dir);
        pthread_mutex_consistent(&dir->lock);
        return 1;
    }
    /* ENOTRECOVERABLE: someone unlocked after EOWNERDEAD without making it
     * consistent (not us); EDEADLK: this thread already holds it. */
    errno = rc;
    return -1;
}

FH_API int fh__memzone_lock(void)
{
    struct mz_dir *dir = get_dir();
    return dir ? dir_lock(dir) : -1;
}

FH_API void fh__memzone_unlock(void)
{
    struct mz_dir *dir = get_dir();
    if (dir)
        pthread_mutex_unlock(&dir->lock);
}

FH_API void fh__memzone_crash_at(int step) { g_crash_at = step; }

static void maybe_crash(int step)
{
    if (g_crash_at == step)
        _exit(99);
}

/*
 * The live slot called name, or NULL; *genp its generation.  Callers with
 * or without the lock.  The name and hash of a slot being rewritten may be
 * read torn: the second load of gen then differs and the slot is read
 * again (strncmp stops at the end of the field or at name's NUL).
 */
static struct mz_slot *find(struct mz_dir *dir, const char *name, uint32_t *genp)
{
    uint32_t h = name_hash(name);
    /* Acquire pairs with the release store of hwm in reserve: the slots
     * below it are in the directory's order of use. */
    uint32_t n = atomic_load_explicit(&dir->hwm, memory_order_acquire);

    for (uint32_t i = 0; i < n && i < dir->max; i++) {
        struct mz_slot *s = &dir->slots[i];
        for (;;) {
            /* Acquire pairs with the release store that published gen: an
             * odd gen seen means its fields are seen. */
            uint32_t g = atomic_load_explicit(gen_of(s), memory_order_acquire);
            int match;

            if (!(g & 1))
                break;
            match = s->name_hash == h &&
                    strncmp(s->mz.name, name, FH_MEMZONE_NAMESIZE) == 0;
            /* Acquire fence: the reads above happen before the load below,
             * which sees any change a writer made before them (seqlock). */
            atomic_thread_fence(memory_order_acquire);
            /* Relaxed: ordered by the fence above. */
            if (atomic_load_explicit(gen_of(s), memory_order_relaxed) != g)
                continue;
            if (!match)
                break;
            if (genp)
                *genp = g;
            return s;
        }
    }
    return NULL;
}

static int valid_name(const char *name)
{
    return name && name[0] && strnlen(name, FH_MEMZONE_NAMESIZE) < FH_MEMZONE_NAMESIZE;
}

/* The object types that share one namespace (memzone.h). */
static const struct {
    const char *prefix;
    const char *kind;
} g_kinds[] = {
    { "", "memzone" },
    { FH_RING_MZ_PREFIX, "ring" },
    { FH_MEMPOOL_MZ_PREFIX, "mempool" },
    { FH_HASH_MZ_PREFIX, "hash table" },
    { FH_ARRAY_MZ_PREFIX, "array" },
};
#define N_KINDS (sizeof g_kinds / sizeof g_kinds[0])

/* Which kind memzone name mzname is (an index into g_kinds); *bare: the
 * object's own name in it. */
static unsigned kind_of(const char *mzname, const char **bare)
{
    for (unsigned k = 1; k < N_KINDS; k++) {
        size_t pl = strlen(g_kinds[k].prefix);
        if (strncmp(mzname, g_kinds[k].prefix, pl) == 0 && mzname[pl]) {
            *bare = mzname + pl;
            return k;
        }
    }
    *bare = mzname;
    return 0;
}

/* The memzone names of object bare as each kind but skip (N_KINDS: all). */
struct kind_names {
    unsigned n;
    unsigned kind[N_KINDS];
    uint32_t hash[N_KINDS];
    char name[N_KINDS][FH_MEMZONE_NAMESIZE];
};

static void kind_names(const char *bare, unsigned skip, struct kind_names *o)
{
    size_t bl = strnlen(bare, FH_MEMZONE_NAMESIZE);

    o->n = 0;
    for (unsigned k = 0; k < N_KINDS; k++) {
        size_t pl = strlen(g_kinds[k].prefix);

        if (k == skip || pl + bl >= FH_MEMZONE_NAMESIZE)
            continue;
        memcpy(o->name[o->n], g_kinds[k].prefix, pl);
        memcpy(o->name[o->n] + pl, bare, bl + 1);
        o->kind[o->n] = k;
        o->hash[o->n] = name_hash(o->name[o->n]);
        o->n++;
    }
}

/* The kind of the first live slot named like one of o's names, or NULL:
 * one pass over the directory, the seqlock read of find. */
static const char *find_kind(struct mz_dir *dir, const struct kind_names *o)
{
    /* Acquire: as in find. */
    uint32_t n = atomic_load_explicit(&dir->hwm, memory_order_acquire);

    for (uint32_t i = 0; i < n && i < dir->max; i++) {
        struct mz_slot *s = &dir->slots[i];
        for (;;) {
            /* Acquire load, acquire fence, relaxed load: as in find. */
            uint32_t g = atomic_load_explicit(gen_of(s), memory_order_acquire);
            uint32_t h;
            int match = -1;

            if (!(g & 1))
                break;
            h = s->name_hash;
            for (unsigned j = 0; j < o->n && match < 0; j++)
                if (h == o->hash[j] &&
                    strncmp(s->mz.name, o->name[j], FH_MEMZONE_NAMESIZE) == 0)
                    match = (int)j;
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(gen_of(s), memory_order_relaxed) != g)
                continue;
            if (match >= 0)
                return g_kinds[o->kind[match]].kind;
            break;
        }
    }
    return NULL;
}

/* Non-zero when memzone name mzname's object name exists as another type. */
static int other_kind_exists(struct mz_dir *dir, const char *mzname)
{
    struct kind_names o;
    const char *bare;
    unsigned k = kind_of(mzname, &bare);

    kind_names(bare, k, &o);
    return find_kind(dir, &o) != NULL;
}

FH_API const char *fh_memzone_name_kind(const char *name)
{
    struct mz_dir *dir = get_dir();
    struct kind_names o;

    if (!dir || !valid_name(name))
        return NULL;
    kind_names(name, N_KINDS, &o);
    return find_kind(dir, &o);
}

/* The live slots' ranges, sorted: the lock holder's scratch (one thread of
 * this process at a time holds the lock). */
static struct range { uint64_t start, end; } g_ranges[FH_MEMZONE_MAX];

static int cmp_range(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort the first k ranges by start.  They come in slot order, which is
 * address order until slots are reused: insertion sort, unless that takes
 * many moves (a directory much reused), then qsort. */
static void sort_ranges(uint32_t k)
{
    uint64_t moves = 0;

    for (uint32_t i = 1; i < k; i++) {
        struct range x = g_ranges[i];
        uint32_t j = i;

        while (j > 0 && g_ranges[j - 1].start > x.start) {
            g_ranges[j] = g_ranges[j - 1];
            j--;
            if (++moves > 8u * k) {
                g_ranges[j] = x;
                qsort(g_ranges, k, sizeof g_ranges[0], cmp_range);
                return;
            }
        }
        g_ranges[j] = x;
    }
}

/* First fit for len bytes aligned to align (an address alignment) between
 * the live memzones; the offset in *startp.  -1 when nothing fits. */
static int find_space(struct mz_dir *dir, uintptr_t base, uint64_t len,
                      uint64_t align, uint64_t *startp)
{
    /* Relaxed: the lock holder (us) is the only writer of hwm and gen. */
    uint32_t n = atomic_load_explicit(&dir->hwm, memory_order_relaxed), k = 0;
    uint64_t cur = dir->data_start;

    for (uint32_t i = 0; i < n; i++) {
        const struct mz_slot *s = &dir->slots[i];
        /* Relaxed: as above. */
        if (atomic_load_explicit(gen_of(s), memory_order_relaxed) & 1) {
            g_ranges[k].start = s->offset;
            g_ranges[k].end = s->offset + s->mz.len;
            k++;
        }
    }
    sort_ranges(k);
    for (uint32_t i = 0; i <= k; i++) {
        uint64_t lim = i < k ? g_ranges[i].start : dir->data_end;
        /* Align the address, not the offset: an alignment larger than the
         * arena's own (a 1 GiB page in a 2 MiB-aligned arena) still holds. */
        uint64_t s = ((base + cur + align - 1) & ~(uint64_t)(align - 1)) - base;

        if (s >= cur && s <= lim && len <= lim - s) {
            *startp = s;
            return 0;
        }
        if (i < k && g_ranges[i].end > cur)
            cur = g_ranges[i].end;
    }
    return -1;
}

FH_API const struct fh_memzone *fh_memzone_reserve(const char *name,
                                                   size_t len, size_t align,
                                                   unsigned flags)
{
    struct mz_dir *dir = get_dir();
    uintptr_t base = (uintptr_t)fh_arena_base();
    struct mz_slot *s;
    uint64_t start, end, dirty;
    uint32_t n, i, gen;

    if (!dir)
        return NULL;
    if (align == 0)
        align = MZ_DEFAULT_ALIGN;
    if (!valid_name(name) || len == 0 || (align & (align - 1)) ||
        align > MZ_MAX_ALIGN) {
        errno = EINVAL;
        return NULL;
    }
    if (dir_lock(dir) < 0)
        return NULL;
    if (find(dir, name, NULL)) {
        pthread_mutex_unlock(&dir->lock);
        errno = EEXIST;
        return NULL;
    }
    if (other_kind_exists(dir, name)) {
        pthread_mutex_unlock(&dir->lock);
        errno = FH_EWRONGTYPE;
        return NULL;
    }
    /* Relaxed loads: the lock holder (us) is the only writer of hwm, gen,
     * next_gen and dirty_end. */
    n = atomic_load_explicit(&dir->hwm, memory_order_relaxed);
    for (i = 0; i < n; i++)
        /* Relaxed: as above. */
        if (!(atomic_load_explicit(gen_of(&dir->slots[i]), memory_order_relaxed) & 1))
            break;
    if (i >= dir->max || find_space(dir, base, len, align, &start) < 0) {
        pthread_mutex_unlock(&dir->lock);
        errno = ENOSPC;
        return NULL;
    }
    end = start + len;
    /* Grow first: a slot's address, even one being written, always lies in
     * the arena as it is (fh__object_lookup reads through stale ones). */
    if (fh__arena_grow(end) < 0) {
        int e = errno;
        pthread_mutex_unlock(&dir->lock);
        errno = e;
        return NULL;
    }

    /* The slot is free (even gen): readers skip it, or see gen change under
     * them if they loaded it before it was freed.  It may hold a freed
     * memzone or a dead creator's half-written attempt: overwrite it all
     * but gen.  The release fence orders the free that made gen even (and
     * everything before it) before these writes, for a reader that sees
     * them (the seqlock's writer side). */
    atomic_thread_fence(memory_order_release);
    s = &dir->slots[i];
    memset(s->mz.name, 0, sizeof s->mz.name);
    strcpy(s->mz.name, name);
    s->mz.addr = (void *)(base + start);
    s->mz.len = len;
    s->mz.align = align;
    s->mz.flags = flags;
    s->offset = start;
    s->name_hash = name_hash(name);
    /* Relaxed load and store: see above; the counter is only advanced,
     * never reused, so a holder that dies after this store only skips a
     * generation. */
    gen = atomic_load_explicit(&dir->next_gen, memory_order_relaxed);
    atomic_store_explicit(&dir->next_gen, gen + 2, memory_order_relaxed);
    maybe_crash(1);
    if (i >= n)
        /* Release pairs with the acquire load of hwm in find. */
        atomic_store_explicit(&dir->hwm, i + 1, memory_order_release);
    maybe_crash(2);
    /* Bytes handed out before hold a freed memzone's data; the rest are
     * the memfd's zero pages and stay untouched.  Relaxed load and store:
     * the lock holder (us) is dirty_end's only reader and writer. */
    dirty = atomic_load_explicit(&dir->dirty_end, memory_order_relaxed);
    if (start < dirty)
        memset((void *)(base + start), 0, (size_t)((end < dirty ? end : dirty) - start));
    if (end > dirty)
        atomic_store_explicit(&dir->dirty_end, end, memory_order_relaxed);
    maybe_crash(3);
    /* Release pairs with the acquire loads of gen in find/copy/walk: a
     * reader that sees the odd gen sees the slot and the zeroed bytes. */
    atomic_store_explicit(gen_of(s), gen, memory_order_release);
    maybe_crash(4);
    /* Relaxed load and store: count is a statistic, written only by the
     * lock holder. */
    atomic_store_explicit(&dir->count,
                          atomic_load_explicit(&dir->count, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    pthread_mutex_unlock(&dir->lock);
    return &s->mz;
}

/* Unpublish live slot s; the caller holds the lock. */
static void free_locked(struct mz_dir *dir, struct mz_slot *s)
{
    /* Relaxed load: the lock holder (us) is the only writer of gen.
     * Release store: lookups that see the even gen fail from now on; the
     * bytes are reused only by a later lock holder, which the mutex orders
     * after this. */
    uint32_t g = atomic_load_explicit(gen_of(s), memory_order_relaxed);
    atomic_store_explicit(gen_of(s), g + 1, memory_order_release);
    maybe_crash(5);
    /* Relaxed load and store: count is a statistic, written only by the
     * lock holder. */
    atomic_store_explicit(&dir->count,
                          atomic_load_explicit(&dir->count, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

/* The slot mz points at, when it points at one; else NULL (a copy). */
static struct mz_slot *slot_of(struct mz_dir *dir, const struct fh_memzone *mz)
{
    uintptr_t p = (uintptr_t)mz, lo = (uintptr_t)dir->slots;

    if (p < lo || p >= lo + sizeof dir->slots || (p - lo) % sizeof(struct mz_slot))
        return NULL;
    return &dir->slots[(p - lo) / sizeof(struct mz_slot)];
}

FH_API int fh_memzone_free(const struct fh_memzone *mz)
{
    struct mz_dir *dir = get_dir();
    char name[FH_MEMZONE_NAMESIZE];
    struct mz_slot *s, *own;
    uint32_t want, g;
    int rc = 0;

    if (!dir)
        return -1;
    if (!mz) {
        errno = EINVAL;
        return -1;
    }
    if (dir_lock(dir) < 0)
        return -1;
    /* Under the lock no slot changes: mz (a slot or a copy) reads stable. */
    own = slot_of(dir, mz);
    memcpy(name, mz->name, sizeof name);
    name[sizeof name - 1] = '\0';
    want = mz->gen;
    s = valid_name(name) ? find(dir, name, &g) : NULL;
    if (own) {
        if (!s || s != own) {
            errno = ENOENT;          /* the slot holds no memzone now */
            rc = -1;
        }
    } else if (!s || g != want) {
        errno = EIDRM;               /* the copy's memzone is gone */
        rc = -1;
    }
    if (rc == 0)
        free_locked(dir, s);
    pthread_mutex_unlock(&dir->lock);
    return rc;
}

FH_API int fh_memzone_copy(const struct fh_memzone *mz, struct fh_memzone *out)
{
    struct mz_dir *dir = get_dir();
    struct mz_slot *s;
    uint32_t want = 0, g;

    if (!dir)
        return -1;
    if (!mz || !out) {
        errno = EINVAL;
        return -1;
    }
    s = slot_of(dir, mz);
    if (!s) {
        char name[FH_MEMZONE_NAMESIZE];
        memcpy(name, mz->name, sizeof name);
        name[sizeof name - 1] = '\0';
        want = mz->gen;
        s = valid_name(name) ? find(dir, name, NULL) : NULL;
        if (!s) {
            errno = EIDRM;
            return -1;
        }
    }
    for (;;) {
        /* Acquire load, acquire fence, relaxed load: the seqlock read of
         * find (see there). */
        g = atomic_load_explicit(gen_of(s), memory_order_acquire);
        if (!(g & 1)) {
            errno = want ? EIDRM : ENOENT;
            return -1;
        }
        memcpy(out, &s->mz, sizeof *out);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(gen_of(s), memory_order_relaxed) == g)
            break;
    }
    out->gen = g;
    if (want && g != want) {
        errno = EIDRM;
        return -1;
    }
    return 0;
}

FH_API uint32_t fh_memzone_gen(const struct fh_memzone *mz)
{
    /* Acquire pairs with the release stores of gen in reserve and free. */
    return atomic_load_explicit((_Atomic uint32_t *)&mz->gen, memory_order_acquire);
}

FH_API const struct fh_memzone *fh_memzone_lookup(const char *name)
{
    struct mz_dir *dir = get_dir();
    const struct mz_slot *s;

    if (!dir)
        return NULL;
    if (!valid_name(name)) {
        errno = ENOENT;
        return NULL;
    }
    s = find(dir, name, NULL);
    if (!s) {
        errno = other_kind_exists(dir, name) ? FH_EWRONGTYPE : ENOENT;
        return NULL;
    }
    return &s->mz;
}

int fh__object_zone_name(char *buf, const char *prefix, const char *name,
                         size_t name_size)
{
    if (!name || !name[0] || strnlen(name, name_size) >= name_size)
        return -1;
    snprintf(buf, FH_MEMZONE_NAMESIZE, "%s%s", prefix, name);
    return 0;
}

void *fh__object_lookup(const char *prefix, const char *name,
                        size_t name_size, size_t magic_off, uint64_t magic)
{
    char mzname[FH_MEMZONE_NAMESIZE];
    struct mz_dir *dir;

    if (fh__object_zone_name(mzname, prefix, name, name_size) < 0) {
        errno = ENOENT;
        return NULL;
    }
    dir = get_dir();
    if (!dir)
        return NULL;
    /* The slot may be freed and reused while we read it: its address and
     * the magic there count only if its generation did not change (the
     * seqlock read of find), else look again.  A slot's address is always
     * inside the arena as it is (reserve grows the arena before writing
     * it), so reading the magic there is safe even when stale. */
    for (;;) {
        uint32_t g;
        struct mz_slot *s = find(dir, mzname, &g);
        void *addr;
        uint64_t m;

        if (!s) {
            errno = other_kind_exists(dir, mzname) ? FH_EWRONGTYPE : ENOENT;
            return NULL;
        }
        addr = s->mz.addr;
        if (!fh_arena_contains(addr, magic_off + sizeof m))
            m = 0;
        else
            /* Acquire pairs with the creator's release store of the magic:
             * a process that sees it sees the object initialised.  A
             * memzone without it is an object still being created (or
             * being destroyed). */
            m = atomic_load_explicit((_Atomic uint64_t *)((char *)addr + magic_off),
                                     memory_order_acquire);
        /* Acquire fence, relaxed load: the seqlock's check (see find). */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(gen_of(s), memory_order_relaxed) != g)
            continue;
        if (m != magic) {
            errno = ENOENT;
            return NULL;
        }
        return addr;
    }
}

int fh__object_destroy(void *obj, const char *prefix, const char *name,
                       size_t name_size, size_t magic_off, uint64_t magic,
                       int (*veto)(void *obj), int (*drain)(void *obj))
{
    char mzname[FH_MEMZONE_NAMESIZE];
    struct mz_dir *dir = get_dir();
    struct mz_slot *s;
    _Atomic uint64_t *published;
    uint32_t gen = 0;
    int rc = 0, err;

    if (!dir)
        return -1;
    if (!obj || !fh_arena_contains(obj, magic_off + sizeof(uint64_t)) ||
        fh__object_zone_name(mzname, prefix, name, name_size) < 0) {
        errno = EINVAL;
        return -1;
    }
    if (dir_lock(dir) < 0)
        return -1;
    s = find(dir, mzname, &gen);
    published = (_Atomic uint64_t *)((char *)obj + magic_off);
    /* Acquire pairs with the creator's release store of the magic. */
    if (!s || s->mz.addr != obj ||
        atomic_load_explicit(published, memory_order_acquire) != magic) {
        errno = ENOENT;
        rc = -1;
    } else if (veto && veto(obj) < 0) {
        rc = -1;
    } else {
        /* Release: a lookup that still finds the memzone (it loaded the
         * slot before the free below) reads a cleared magic and refuses
         * the object; so does a second destroy, and a waiter (drain). */
        atomic_store_explicit(published, 0, memory_order_release);
        if (!drain)
            free_locked(dir, s);
    }
    pthread_mutex_unlock(&dir->lock);
    if (rc < 0 || !drain)
        return rc;
    /* Outside the lock: the drain may take a while, and other names'
     * creates and frees need not wait for it.  The slot stays taken (the
     * name cannot be created again yet) and nobody else frees it: a
     * destroy now finds the magic cleared. */
    rc = drain(obj) < 0 ? -1 : 0;
    err = errno;
    if (dir_lock(dir) < 0)
        return -1;
    /* Relaxed: the lock orders every change of gen (free_locked); a slot
     * freed meanwhile (fh_memzone_free of the object's memzone) is left
     * alone. */
    if (s->mz.addr == obj &&
        atomic_load_explicit(gen_of(s), memory_order_relaxed) == gen) {
        if (rc == 0)
            free_locked(dir, s);
        else
            /* Release, as the creator's publication: the object lives on. */
            atomic_store_explicit(published, magic, memory_order_release);
    }
    pthread_mutex_unlock(&dir->lock);
    errno = err;
    return rc;
}

FH_API int fh_memzone_walk(int (*fn)(const struct fh_memzone *, void *),
                           void *arg)
{
    struct mz_dir *dir = get_dir();
    uint32_t n;

    if (!dir)
        return -1;
    /* Acquire pairs with the release store of hwm in reserve. */
    n = atomic_load_explicit(&dir->hwm, memory_order_acquire);
    for (uint32_t i = 0; i < n && i < dir->max; i++) {
        /* Acquire pairs with the release store that published gen. */
        if (!(atomic_load_explicit(gen_of(&dir->slots[i]), memory_order_acquire) & 1))
            continue;
        int rc = fn(&dir->slots[i].mz, arg);
        if (rc)
            return rc;
    }
    return 0;
}

FH_API size_t fh_memzone_free_bytes(void)
{
    struct mz_dir *dir = get_dir();
    uint64_t used = 0, total;
    uint32_t n;

    if (!dir)
        return 0;
    total = dir->data_end - dir->data_start;
    /* Relaxed, here and below: a statistic, exact when no one reserves or
     * frees meanwhile. */
    n = atomic_load_explicit(&dir->hwm, memory_order_relaxed);
    for (uint32_t i = 0; i < n && i < dir->max; i++)
        /* Relaxed: as above. */
        if (atomic_load_explicit(gen_of(&dir->slots[i]), memory_order_relaxed) & 1)
            used += dir->slots[i].mz.len;
    return used < total ? (size_t)(total - used) : 0;
}

FH_API unsigned fh_memzone_count(void)
{
    struct mz_dir *dir = get_dir();
    /* Relaxed: a statistic; its only writer is the directory lock holder. */
    return dir ? atomic_load_explicit(&dir->count, memory_order_relaxed) : 0;
}

FH_API void fh_publish_u64(uint64_t *p, uint64_t v)
{
    /* release: pairs with the acquire in fh_published_u64; the stores
     * before this one are seen by a reader that sees v. */
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
}

FH_API uint64_t fh_published_u64(const uint64_t *p)
{
    /* acquire: see above. */
    return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_acquire);
}
