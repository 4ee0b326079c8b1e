/*
 * memzone.c - named, aligned allocations in the arena (DPDK's rte_memzone).
 *
 * Every other shared object (rings, mempools, hash tables) lives in a
 * memzone, and the directory is how a secondary finds it by name.  The
 * allocator is a bump pointer that never gives bytes back: memzones live as
 * long as the arena, like DPDK's before rte_memzone_free existed, so the
 * bytes it hands out are still the memfd's zero pages and no process can
 * ever see another's stale data.
 *
 * Concurrency.  Creators (any process of the prefix, primary or secondary)
 * serialise on one process-shared robust mutex in the directory.  Readers
 * (lookup, walk, count, free_bytes) take no lock: slots are only appended,
 * never changed after they are published, and the published count is
 * stored with release after the slot is complete.
 *
 * A creator may die holding the mutex (killed, crashed, _exit in a test).
 * The kernel walks the dead thread's robust list and marks the mutex
 * FUTEX_OWNER_DIED, so the next locker gets EOWNERDEAD instead of hanging;
 * it then repairs the directory (repair_dir) and calls
 * pthread_mutex_consistent.  The repair is possible because a slot is
 * written in an order where every prefix of the steps leaves something
 * repairable: slot fields, then the bump pointer, then the slot's valid flag
 * (release), then the count (release).
 */
#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "forkhost.h"

#define MZ_DIR_MAGIC 0x5249445a4d484b46ull /* "FKHMZDIR" */
/* Default alignment (align == 0): one cache line, so that no two memzones
 * share a line and false sharing between objects cannot happen. */
#define MZ_DEFAULT_ALIGN 64u
/* Largest alignment accepted: a 1 GiB huge page. */
#define MZ_MAX_ALIGN (1ull << 30)

/*
 * One directory slot, 128 bytes:
 *   0 mz (struct fh_memzone, 96 bytes: name 0, addr 64, len 72, align 80,
 *         flags 88)   96 offset   104 name_hash   108 valid   112 pad
 * Written once, by the creator holding the lock, then read-only; valid is
 * stored last (release) and never cleared once set.
 */
struct mz_slot {
    struct fh_memzone mz;
    uint64_t offset;            /* from the arena base */
    uint32_t name_hash;         /* FNV-1a of the name: a cheap first test */
    _Atomic uint32_t valid;     /* 1 once every field above is written */
    uint8_t pad[16];
};
_Static_assert(sizeof(struct mz_slot) == 128, "mz_slot is 128 bytes");

/*
 * The directory, at hdr->mz_dir_offset:
 *   0 magic  8 max  16 data_start  24 data_end  32 next_free  40 count
 *   64 lock (pthread_mutex_t, 40 bytes)   128 slots[FH_MEMZONE_MAX]
 * magic, max, data_start and data_end are written by fh__memzone_format in
 * the primary before any other process exists.  next_free and count are
 * written only by the lock holder (or the repairer, who holds the lock).
 */
struct mz_dir {
    uint64_t magic;
    uint32_t max;
    uint32_t pad0;
    uint64_t data_start;
    uint64_t data_end;
    _Atomic uint64_t next_free;  /* first byte not handed out (offset) */
    _Atomic uint32_t count;      /* slots published, in creation order */
    alignas(64) pthread_mutex_t lock;
    alignas(128) struct mz_slot slots[FH_MEMZONE_MAX];
};

/* Process-local: the step at which fh_memzone_reserve() should _exit. */
static int g_crash_at;

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h;
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
    uint64_t data = (off + sizeof(struct mz_dir) + 4095) & ~(uint64_t)4095;
    struct mz_dir *dir = (struct mz_dir *)((char *)hdr + off);
    int rc;

    if (data >= hdr->size) {
        errno = ENOSPC;
        return -1;
    }
    memset(dir, 0, sizeof *dir);
    dir->max = FH_MEMZONE_MAX;
    dir->data_start = data;
    dir->data_end = hdr->size;
    atomic_store_explicit(&dir->next_free, data, memory_order_relaxed);

    rc = fh__shared_mutex_init(&dir->lock);
    if (rc) {
        errno = rc;
        return -1;
    }
    dir->magic = MZ_DIR_MAGIC;
    hdr->mz_dir_offset = off;
    hdr->data_offset = data;
    return 0;
}

/*
 * The previous lock holder died somewhere inside fh_memzone_reserve().  We
 * hold the lock now.  Whatever step it reached:
 *  - before its slot's valid flag: the slot is ignored (readers only scan
 *    below count, and the next creator overwrites it); the bump pointer may
 *    have moved past bytes nobody owns, which leaks them but never hands
 *    them out twice;
 *  - after valid, before count: the memzone is complete, so count it.
 */
static void repair_dir(struct mz_dir *dir)
{
    uint32_t n = atomic_load_explicit(&dir->count, memory_order_relaxed);
    uint64_t next = atomic_load_explicit(&dir->next_free, memory_order_relaxed);

    /* Acquire pairs with the release store of valid in reserve: a slot seen
     * valid has all its fields written. */
    while (n < dir->max &&
           atomic_load_explicit(&dir->slots[n].valid, memory_order_acquire)) {
        uint64_t end = dir->slots[n].offset + dir->slots[n].mz.len;
        if (end > next)
            next = end;
        n++;
    }
    /* Only writer of next_free and count: the lock holder, i.e. us. */
    atomic_store_explicit(&dir->next_free, next, memory_order_relaxed);
    /* Release pairs with the acquire load of count in lookup/walk. */
    atomic_store_explicit(&dir->count, n, memory_order_release);
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

/* Scan the published slots; callers with or without the lock. */
static const struct mz_slot *find(struct mz_dir *dir, const char *name)
{
    uint32_t h = name_hash(name);
    /* Acquire pairs with the release store of count in reserve/repair:
     * every slot below n is completely written. */
    uint32_t n = atomic_load_explicit(&dir->count, memory_order_acquire);

    for (uint32_t i = 0; i < n; i++) {
        const struct mz_slot *s = &dir->slots[i];
        if (s->name_hash == h && strcmp(s->mz.name, name) == 0)
            return s;
    }
    return NULL;
}

static int valid_name(const char *name)
{
    return name && name[0] && strnlen(name, FH_MEMZONE_NAMESIZE) < FH_MEMZONE_NAMESIZE;
}

FH_API const struct fh_memzone *fh_memzone_reserve(const char *name,
                                                   size_t len, size_t align,
                                                   unsigned flags)
{
    struct mz_dir *dir = get_dir();
    uintptr_t base = (uintptr_t)fh_arena_base();
    struct mz_slot *s;
    uint64_t start, end;
    uint32_t n;

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
    if (find(dir, name)) {
        pthread_mutex_unlock(&dir->lock);
        errno = EEXIST;
        return NULL;
    }
    /* Only writer of count and next_free: the lock holder (us). */
    n = atomic_load_explicit(&dir->count, memory_order_relaxed);
    start = atomic_load_explicit(&dir->next_free, memory_order_relaxed);
    /* Align the address, not the offset: an alignment larger than the
     * arena's own (a 1 GiB page in a 2 MiB-aligned arena) still holds. */
    start = ((base + start + align - 1) & ~(uint64_t)(align - 1)) - base;
    end = start + len;
    if (n >= dir->max || end < start || end > dir->data_end) {
        pthread_mutex_unlock(&dir->lock);
        errno = ENOSPC;
        return NULL;
    }

    /* The slot may hold a dead creator's half-written attempt; it was never
     * published (valid == 0), so nobody reads it: overwrite it all. */
    s = &dir->slots[n];
    atomic_store_explicit(&s->valid, 0, memory_order_relaxed);
    memset(&s->mz, 0, sizeof s->mz);
    strcpy(s->mz.name, name);
    s->mz.addr = (void *)(base + start);
    s->mz.len = len;
    s->mz.align = align;
    s->mz.flags = flags;
    s->offset = start;
    s->name_hash = name_hash(name);
    maybe_crash(1);
    atomic_store_explicit(&dir->next_free, end, memory_order_relaxed);
    maybe_crash(2);
    /* Release pairs with the acquire load of valid in repair_dir. */
    atomic_store_explicit(&s->valid, 1, memory_order_release);
    maybe_crash(3);
    /* Release pairs with the acquire load of count in find/walk: a reader
     * that sees n + 1 sees the whole slot. */
    atomic_store_explicit(&dir->count, n + 1, memory_order_release);
    pthread_mutex_unlock(&dir->lock);
    return &s->mz;
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
    s = find(dir, name);
    if (!s) {
        errno = ENOENT;
        return NULL;
    }
    return &s->mz;
}

int fh__object_zone_name(char *buf, const char *prefix, const char *name,
                         size_t name_size)
{
    if (!name || !name[0] || strlen(name) >= name_size)
        return -1;
    snprintf(buf, FH_MEMZONE_NAMESIZE, "%s%s", prefix, name);
    return 0;
}

void *fh__object_lookup(const char *prefix, const char *name,
                        size_t name_size, size_t magic_off, uint64_t magic)
{
    char mzname[FH_MEMZONE_NAMESIZE];
    const struct fh_memzone *mz;
    _Atomic uint64_t *published;

    if (fh__object_zone_name(mzname, prefix, name, name_size) < 0) {
        errno = ENOENT;
        return NULL;
    }
    mz = fh_memzone_lookup(mzname);
    if (!mz)
        return NULL;
    published = (_Atomic uint64_t *)((char *)mz->addr + magic_off);
    /* Acquire pairs with the creator's release store of the magic: a
     * process that sees it sees the object initialised.  A memzone without
     * it is an object still being created. */
    if (atomic_load_explicit(published, memory_order_acquire) != magic) {
        errno = ENOENT;
        return NULL;
    }
    return mz->addr;
}

FH_API int fh_memzone_walk(int (*fn)(const struct fh_memzone *, void *),
                           void *arg)
{
    struct mz_dir *dir = get_dir();
    uint32_t n;

    if (!dir)
        return -1;
    /* Acquire pairs with the release store of count (see find). */
    n = atomic_load_explicit(&dir->count, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
        int rc = fn(&dir->slots[i].mz, arg);
        if (rc)
            return rc;
    }
    return 0;
}

FH_API size_t fh_memzone_free_bytes(void)
{
    struct mz_dir *dir = get_dir();
    uint64_t next;

    if (!dir)
        return 0;
    /* Relaxed: a statistic; its only writer is the directory lock holder. */
    next = atomic_load_explicit(&dir->next_free, memory_order_relaxed);
    return next < dir->data_end ? (size_t)(dir->data_end - next) : 0;
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
