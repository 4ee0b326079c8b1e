/*
 * mempool.c - fixed-size object pools in the arena (see forkhost/mempool.h
 * for the cache and counting semantics).
 *
 * Free objects are 64-bit offsets from the pool's base, kept in an MP/MC
 * fh_ring embedded in the pool's memzone and in per-thread caches in shared
 * memory.  Offsets rather than addresses keep the pool position-independent
 * at no cost (one add per object); the API still speaks addresses.
 */
#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"
#include "forkhost/mempool.h"
#include "forkhost/ring.h"
#include "task.h"
#include "ring_internal.h"

#define MP_MAGIC 0x4c4f4f504d484b46ull /* "FKHMPOOL" */
/* Pools one thread holds a cache of at once; using a ninth flushes and
 * frees the slot of the one claimed longest ago. */
#define MP_TLS_POOLS 8
/* Slot owner values besides a tid. */
#define MP_OWNER_FREE 0
#define MP_OWNER_RECLAIMING (-1)
/* Objects converted per step when a put bypasses the cache. */
#define MP_CHUNK 64

_Static_assert(sizeof(void *) == 8, "objects travel as 64-bit offsets");

/*
 * A cache slot, 64-byte header then 2 * cache_size offsets:
 *   0 owner   4 len   64 objs[]
 * owner: the tid of the thread that owns the slot, 0 when free; set by a
 * claimer's CAS, cleared by the owner (release) or by a reclaimer after the
 * owner died.  len and objs: written only by the owner thread (or the
 * reclaimer, who owns the slot while owner == MP_OWNER_RECLAIMING); other
 * processes read len (relaxed) for the avail count.
 */
struct mp_cache {
    _Atomic int32_t owner;
    _Atomic uint32_t len;
    uint32_t pad[14];
    uint64_t objs[];
};
_Static_assert(sizeof(struct mp_cache) == 64, "cache header is one line");

/*
 * The pool header, at the start of memzone "MP_<name>" (128-aligned):
 *   0 magic (published last, release)   8 name[61]   72 count  76 obj_size
 *   80 elt_size  84 cache_size  88 flags  92 cache_stride  96 caches_off
 *   104 ring_off  112 objs_off  120 objs_end  128 owners_off
 *   136 recovered (the only field written after creation)
 * then the cache slots, the ring, the objects, and for a tracked pool
 * (FH_MEMPOOL_F_TRACK) one 64-bit owner word per object.  All but
 * recovered written once by the creator before the magic.
 *
 * Owner words (tracked pools): 0 the object is free (in the ring or a
 * cache); a thread id (high half 0) the thread that holds it, from a get
 * or a dequeue from a ring bound to the pool; OWNER_TRANSIT | ring tag <<
 * 32 | slot index: in transit in that ring, enqueued at that slot.  The
 * holder writes its own stamp; recoverers change a stamp only with a CAS
 * from the value that proves what they found.
 */
struct fh_mempool {
    _Atomic uint64_t magic;
    char     name[FH_MEMPOOL_NAMESIZE];
    uint32_t count;
    uint32_t obj_size;
    uint32_t elt_size;
    uint32_t cache_size;
    uint32_t flags;
    uint32_t cache_stride;   /* bytes per slot; 0 when caches are off */
    uint64_t caches_off;     /* offsets from the pool's base */
    uint64_t ring_off;
    uint64_t objs_off;
    uint64_t objs_end;
    uint64_t owners_off;     /* 0: not tracked */
    _Atomic uint64_t recovered;
    char pad[48];
};
_Static_assert(offsetof(struct fh_mempool, count) == 72, "pool layout");
_Static_assert(offsetof(struct fh_mempool, owners_off) == 128, "pool layout");
_Static_assert(sizeof(struct fh_mempool) == 192, "pool header size");

#define OWNER_TRANSIT (1ull << 63)

/*
 * Process-local, per thread: which slot this thread owns in which pool.
 * gen is the fork generation the table belongs to; a table inherited across
 * fork names the parent thread's slots and is dropped, never used.
 */
struct tls_ent {
    struct fh_mempool *mp;
    struct mp_cache *c;      /* NULL: no slot was free, or caches are off */
};
static __thread struct {
    unsigned gen;
    pid_t tid;
    unsigned n;
    unsigned evict;
    struct tls_ent e[MP_TLS_POOLS];
} t_tab;

/* Bumped by the atfork child handler, while the child is single-threaded;
 * starts at 1 so that a zeroed t_tab is never current. */
static _Atomic unsigned g_fork_gen = 1;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_key;

static inline struct fh_ring *mp_ring(const struct fh_mempool *mp)
{
    return (struct fh_ring *)((char *)mp + mp->ring_off);
}

static inline struct mp_cache *mp_slot(const struct fh_mempool *mp, unsigned i)
{
    return (struct mp_cache *)((char *)mp + mp->caches_off +
                               (size_t)i * mp->cache_stride);
}

static inline void *off2ptr(const struct fh_mempool *mp, uint64_t off)
{
    return (char *)mp + off;
}

/* Move a cache's objects to the ring; the caller owns the slot. */
static unsigned cache_flush(struct fh_mempool *mp, struct mp_cache *c)
{
    /* Relaxed: the caller owns the slot, so it is len's only writer. */
    unsigned n = atomic_load_explicit(&c->len, memory_order_relaxed);
    if (n) {
        /* Cannot fail: the ring holds every object of the pool. */
        fh_ring_mp_enqueue_bulk(mp_ring(mp), c->objs, n, NULL);
        atomic_store_explicit(&c->len, 0, memory_order_relaxed);
    }
    return n;
}

static void cache_release(struct fh_mempool *mp, struct mp_cache *c)
{
    cache_flush(mp, c);
    /* Release pairs with the acquire CAS of the next claimer: it sees
     * len == 0 and our last writes to objs. */
    atomic_store_explicit(&c->owner, MP_OWNER_FREE, memory_order_release);
}

/* Free this thread's slots, if the table is this process's. */
static void release_all(void)
{
    if (t_tab.gen != atomic_load_explicit(&g_fork_gen, memory_order_relaxed))
        return;
    for (unsigned i = 0; i < t_tab.n; i++)
        if (t_tab.e[i].c)
            cache_release(t_tab.e[i].mp, t_tab.e[i].c);
    t_tab.n = 0;
}

static void on_thread_exit(void *arg) { (void)arg; release_all(); }

/* A normal exit() gives the exiting thread's caches back; a process that is
 * killed or leaves through _exit() is cleaned up by fh_mempool_reclaim(). */
__attribute__((destructor)) static void on_process_exit(void) { release_all(); }

/* Runs in the child of every fork(), which then has one thread. */
static void on_fork_child(void)
{
    /* Relaxed: the child is single-threaded here. */
    atomic_fetch_add_explicit(&g_fork_gen, 1, memory_order_relaxed);
}

static void setup_once(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
    pthread_key_create(&g_key, on_thread_exit);
}

static pid_t my_tid(void)
{
    unsigned gen;

    pthread_once(&g_once, setup_once);
    /* Relaxed: written only by on_fork_child, before any thread of this
     * process existed to read it. */
    gen = atomic_load_explicit(&g_fork_gen, memory_order_relaxed);
    if (t_tab.gen != gen) {
        /* First use in this thread, or the first since a fork: anything in
         * the table is the parent's, so forget it without touching it. */
        memset(&t_tab, 0, sizeof t_tab);
        t_tab.gen = gen;
        t_tab.tid = (pid_t)syscall(SYS_gettid);
        /* Any non-NULL value makes on_thread_exit run for this thread. */
        pthread_setspecific(g_key, &t_tab);
    }
    return t_tab.tid;
}

/* The caches of dead threads go back to the ring; how many objects. */
static unsigned reclaim_caches(struct fh_mempool *mp)
{
    unsigned total = 0;
    int saved = errno;

    for (unsigned i = 0; mp->cache_stride && i < FH_MEMPOOL_CACHE_SLOTS; i++) {
        struct mp_cache *c = mp_slot(mp, i);
        /* Relaxed: a hint; the CAS below decides. */
        int32_t o = atomic_load_explicit(&c->owner, memory_order_relaxed);

        if (!fh__task_gone(o))
            continue;
        /* The CAS makes one reclaimer win the slot; acquire orders its
         * reads of len and objs after the win.  The dead owner's last
         * writes are in memory: its process has gone through exit. */
        if (atomic_compare_exchange_strong_explicit(
                &c->owner, &o, MP_OWNER_RECLAIMING,
                memory_order_acquire, memory_order_relaxed)) {
            total += cache_flush(mp, c);
            cache_release(mp, c);
        }
    }
    errno = saved;
    return total;
}

static struct mp_cache *claim_slot(struct fh_mempool *mp, pid_t tid)
{
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < FH_MEMPOOL_CACHE_SLOTS; i++) {
            struct mp_cache *c = mp_slot(mp, i);
            int32_t expect = MP_OWNER_FREE;
            /* Acquire pairs with the release store of MP_OWNER_FREE in
             * cache_release: the slot is empty and its last owner is done. */
            if (atomic_load_explicit(&c->owner, memory_order_relaxed) == MP_OWNER_FREE &&
                atomic_compare_exchange_strong_explicit(
                    &c->owner, &expect, tid,
                    memory_order_acquire, memory_order_relaxed))
                return c;
        }
        if (pass == 0)
            reclaim_caches(mp);
    }
    return NULL;
}

/* This thread's cache of mp, claiming a slot on first use; NULL: none. */
static struct mp_cache *my_cache(struct fh_mempool *mp)
{
    pid_t tid = my_tid();
    struct tls_ent *e;

    for (unsigned i = 0; i < t_tab.n; i++)
        if (t_tab.e[i].mp == mp)
            return t_tab.e[i].c;
    if (t_tab.n < MP_TLS_POOLS) {
        e = &t_tab.e[t_tab.n++];
    } else {
        e = &t_tab.e[t_tab.evict];
        t_tab.evict = (t_tab.evict + 1) % MP_TLS_POOLS;
        if (e->c)
            cache_release(e->mp, e->c);
    }
    e->mp = mp;
    e->c = mp->cache_stride ? claim_slot(mp, tid) : NULL;
    return e->c;
}

/* Ring path: n objects straight from the ring, converted in place. */
static int ring_get(struct fh_mempool *mp, void **objs, unsigned n)
{
    if (fh_ring_mc_dequeue_bulk(mp_ring(mp), objs, n, NULL) != n)
        return -ENOENT;
    for (unsigned i = 0; i < n; i++) {
        uint64_t off;
        memcpy(&off, &objs[i], sizeof off);
        objs[i] = off2ptr(mp, off);
    }
    return 0;
}

static int get_bulk(struct fh_mempool *mp, void **objs, unsigned n);

static inline _Atomic uint64_t *owner_word(const struct fh_mempool *mp,
                                           uint64_t idx)
{
    return (_Atomic uint64_t *)((char *)mp + mp->owners_off) + idx;
}

/* Stamp n objects of a tracked pool with v. */
static void stamp(struct fh_mempool *mp, void *const *objs, unsigned n,
                  uint64_t v)
{
    for (unsigned i = 0; i < n; i++) {
        long idx = fh_mempool_obj_index(mp, objs[i]);
        if (idx >= 0)
            /* Relaxed: the stamp's writer is the object's holder; a
             * recoverer reads it only once the holder is gone. */
            atomic_store_explicit(owner_word(mp, (uint64_t)idx), v,
                                  memory_order_relaxed);
    }
}

FH_API int fh_mempool_get_bulk(struct fh_mempool *mp, void **objs, unsigned n)
{
    int rc = get_bulk(mp, objs, n);

    if (rc == 0 && mp->owners_off)
        stamp(mp, objs, n, (uint64_t)(uint32_t)my_tid());
    return rc;
}

static int get_bulk(struct fh_mempool *mp, void **objs, unsigned n)
{
    struct mp_cache *c;
    unsigned len;

    if (n == 0)
        return 0;
    c = my_cache(mp);
    if (!c || n > mp->cache_size) {
        if (ring_get(mp, objs, n) == 0)
            return 0;
        /* Not enough in the ring: maybe in our own cache, or in the cache
         * of a thread that died. */
        if (c)
            cache_flush(mp, c);
        reclaim_caches(mp);
        return ring_get(mp, objs, n);
    }
    /* Relaxed: this thread owns the slot, len's only writer. */
    len = atomic_load_explicit(&c->len, memory_order_relaxed);
    if (len < n) {
        /* Refill to cache_size above what this call takes, taking whatever
         * the ring has (burst), so a pool can be emptied to the last
         * object through the cache. */
        len += fh_ring_mc_dequeue_burst(mp_ring(mp), c->objs + len,
                                        mp->cache_size + n - len, NULL);
        if (len < n && reclaim_caches(mp))
            len += fh_ring_mc_dequeue_burst(mp_ring(mp), c->objs + len,
                                            mp->cache_size + n - len, NULL);
        if (len < n) {
            /* Keep what we took: it is still counted as available. */
            atomic_store_explicit(&c->len, len, memory_order_relaxed);
            return -ENOENT;
        }
    }
    for (unsigned i = 0; i < n; i++)
        objs[i] = off2ptr(mp, c->objs[len - 1 - i]);
    atomic_store_explicit(&c->len, len - n, memory_order_relaxed);
    return 0;
}

FH_API int fh_mempool_get(struct fh_mempool *mp, void **obj)
{
    return fh_mempool_get_bulk(mp, obj, 1);
}

/* A timed get's attempt (fh__ring_wait_loop): 1 when it got the objects;
 * else 0, and when it is going to wait this thread's cached objects go
 * back first, so that the wait is for the ring alone. */
struct get_ctx { struct fh_mempool *mp; void **objs; unsigned n; int waits; };

static int get_attempt(void *c)
{
    const struct get_ctx *g = c;

    if (fh_mempool_get_bulk(g->mp, g->objs, g->n) == 0)
        return 1;
    if (g->waits)
        fh_mempool_cache_flush(g->mp);
    return 0;
}

FH_API int fh_mempool_get_bulk_timed(struct fh_mempool *mp, void **objs,
                                     unsigned n, int64_t timeout_ns)
{
    struct get_ctx g = { mp, objs, n, timeout_ns != 0 };
    int rc;

    if (n > mp->count)
        return -EINVAL;
    /* Waiting ends with -EIDRM when the pool's magic is cleared: its
     * destroy then waits for us to leave (mp_drain). */
    rc = fh__ring_wait_loop(mp_ring(mp), &mp->magic, MP_MAGIC, 0, n,
                            timeout_ns, get_attempt, &g);
    return rc > 0 ? 0 : rc;
}

FH_API unsigned fh_mempool_waiting(const struct fh_mempool *mp)
{
    return fh_ring_waiting_consumers(mp_ring(mp));
}

FH_API int fh_mempool_get_timed(struct fh_mempool *mp, void **obj,
                                int64_t timeout_ns)
{
    return fh_mempool_get_bulk_timed(mp, obj, 1, timeout_ns);
}

FH_API int fh_mempool_put_bulk(struct fh_mempool *mp, void *const *objs,
                               unsigned n)
{
    struct mp_cache *c;
    unsigned len;

    /* Every pointer must be an object's start: an address inside one
     * (obj + 1) would later be handed out as an object and overlap two. */
    for (unsigned i = 0; i < n; i++)
        if (fh_mempool_obj_index(mp, objs[i]) < 0)
            return -EINVAL;
    if (n == 0)
        return 0;
    if (mp->owners_off)
        stamp(mp, objs, n, 0);
    c = my_cache(mp);
    /* Relaxed: a hint (see "Waiting" in mempool.h); the ring's own wake-up
     * protocol covers the objects once they are in the ring. */
    if (c && atomic_load_explicit(&mp_ring(mp)->prod.waiters,
                                  memory_order_relaxed)) {
        /* Someone waits for objects: give them ours, cached ones too. */
        cache_flush(mp, c);
        c = NULL;
    }
    if (!c || n > mp->cache_size) {
        uint64_t tmp[MP_CHUNK];
        for (unsigned done = 0; done < n;) {
            unsigned k = n - done < MP_CHUNK ? n - done : MP_CHUNK;
            for (unsigned i = 0; i < k; i++)
                tmp[i] = (uint64_t)((uintptr_t)objs[done + i] - (uintptr_t)mp);
            /* Only fails when more objects come back than the pool has:
             * a double put. */
            if (fh_ring_mp_enqueue_bulk(mp_ring(mp), tmp, k, NULL) != k)
                return -ENOSPC;
            done += k;
        }
        return 0;
    }
    /* Relaxed: this thread owns the slot, len's only writer. */
    len = atomic_load_explicit(&c->len, memory_order_relaxed);
    if (len + n > 2 * mp->cache_size) {
        /* Over the flush threshold: keep cache_size, return the rest. */
        if (fh_ring_mp_enqueue_bulk(mp_ring(mp), c->objs + mp->cache_size,
                                    len - mp->cache_size, NULL) !=
            len - mp->cache_size)
            return -ENOSPC;
        len = mp->cache_size;
    }
    for (unsigned i = 0; i < n; i++)
        c->objs[len + i] = (uint64_t)((uintptr_t)objs[i] - (uintptr_t)mp);
    atomic_store_explicit(&c->len, len + n, memory_order_relaxed);
    return 0;
}

FH_API int fh_mempool_put(struct fh_mempool *mp, void *obj)
{
    return fh_mempool_put_bulk(mp, &obj, 1);
}

FH_API int fh_mempool_cache_flush(struct fh_mempool *mp)
{
    my_tid();
    for (unsigned i = 0; i < t_tab.n; i++) {
        if (t_tab.e[i].mp != mp)
            continue;
        if (t_tab.e[i].c)
            cache_release(mp, t_tab.e[i].c);
        t_tab.e[i] = t_tab.e[--t_tab.n];
        if (t_tab.evict >= t_tab.n)
            t_tab.evict = 0;
        break;
    }
    return 0;
}

FH_API unsigned fh_mempool_avail_count(const struct fh_mempool *mp)
{
    uint64_t n = fh_ring_count(mp_ring(mp));

    for (unsigned i = 0; mp->cache_stride && i < FH_MEMPOOL_CACHE_SLOTS; i++)
        /* Relaxed: a statistic; each len's only writer is its slot's
         * owner. */
        n += atomic_load_explicit(&mp_slot(mp, i)->len, memory_order_relaxed);
    return n > mp->count ? mp->count : (unsigned)n;
}

FH_API unsigned fh_mempool_in_use_count(const struct fh_mempool *mp)
{
    return mp->count - fh_mempool_avail_count(mp);
}

FH_API int fh_mempool_full(const struct fh_mempool *mp)
{
    return fh_mempool_avail_count(mp) == mp->count;
}

FH_API int fh_mempool_empty(const struct fh_mempool *mp)
{
    return fh_mempool_avail_count(mp) == 0;
}

FH_API long fh_mempool_obj_index(const struct fh_mempool *mp, const void *obj)
{
    uint64_t off = (uint64_t)((uintptr_t)obj - (uintptr_t)mp);

    if (off < mp->objs_off || off >= mp->objs_end ||
        (off - mp->objs_off) % mp->elt_size)
        return -1;
    return (long)((off - mp->objs_off) / mp->elt_size);
}

FH_API void *fh_mempool_obj_at(const struct fh_mempool *mp, unsigned idx)
{
    if (idx >= mp->count)
        return NULL;
    return off2ptr(mp, mp->objs_off + (uint64_t)idx * mp->elt_size);
}

FH_API unsigned fh_mempool_count(const struct fh_mempool *mp) { return mp->count; }
FH_API unsigned fh_mempool_obj_size(const struct fh_mempool *mp) { return mp->obj_size; }
FH_API unsigned fh_mempool_elt_size(const struct fh_mempool *mp) { return mp->elt_size; }
FH_API unsigned fh_mempool_cache_size(const struct fh_mempool *mp) { return mp->cache_size; }
FH_API unsigned fh_mempool_flags(const struct fh_mempool *mp) { return mp->flags; }
FH_API const char *fh_mempool_name(const struct fh_mempool *mp) { return mp->name; }

static int mz_name(char *buf, const char *name)
{
    return fh__object_zone_name(buf, FH_MEMPOOL_MZ_PREFIX, name, FH_MEMPOOL_NAMESIZE);
}

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* ---- ownership (tracked pools) ---------------------------------------- */

/* The tag of ring r in transit stamps: its address in 128-byte units,
 * unique among the rings of one arena. */
static uint64_t ring_tag(const struct fh_ring *r)
{
    return ((uint64_t)(uintptr_t)r >> 7) & 0x7fffffffu;
}

static uint64_t transit(const struct fh_ring *r, uint32_t pos)
{
    return OWNER_TRANSIT | ring_tag(r) << 32 | pos;
}

FH_API struct fh_ring *fh_ring_create_for(const char *name, unsigned count,
                                          unsigned flags,
                                          struct fh_mempool *mp)
{
    if (!mp || !mp->owners_off) {
        errno = EINVAL;
        return NULL;
    }
    return fh__ring_create_pooled(name, count, flags, mp);
}

static void mp_track(struct fh_ring *r, const void *objs, unsigned n,
                     uint32_t head, int side)
{
    struct fh_mempool *mp = (struct fh_mempool *)(uintptr_t)r->pool;
    const uint64_t me = (uint64_t)(uint32_t)my_tid();

    for (unsigned i = 0; i < n; i++) {
        void *obj;
        memcpy(&obj, (const char *)objs + (size_t)i * 8, 8);
        long idx = fh_mempool_obj_index(mp, obj);
        if (idx < 0)
            continue;       /* not one of the pool's objects: not ours */
        /* Relaxed: written by the object's holder (us: we enqueue it, or
         * just took it from the ring); published with the ring's tail. */
        atomic_store_explicit(owner_word(mp, (uint64_t)idx),
                              side == 0 ? transit(r, head + i) : me,
                              memory_order_relaxed);
    }
}

/* Give objects back to the pool: their stamps are already ours. */
static void give_back(struct fh_mempool *mp, void **objs, unsigned k)
{
    if (k == 0)
        return;
    fh_mempool_put_bulk(mp, objs, k);
    /* Relaxed: a statistic. */
    atomic_fetch_add_explicit(&mp->recovered, k, memory_order_relaxed);
}

static void mp_return_transit(struct fh_ring *r, const uint64_t *vals,
                              uint32_t from, uint32_t n, int side)
{
    struct fh_mempool *mp = (struct fh_mempool *)(uintptr_t)(r->pool & ~(uint64_t)1);

    if (r->pool & 1) {
        /* The pool's own ring of free objects: a getter died inside its
         * dequeue, and those objects (offsets, published free) belong to
         * nobody; they go back.  A putter that died inside its enqueue
         * (side 0) left slots that cannot be told from stale ones. */
        if (side == 1 && n &&
            fh_ring_mp_enqueue_bulk(r, vals, n, NULL) == n)
            /* Relaxed: a statistic. */
            atomic_fetch_add_explicit(&mp->recovered, n, memory_order_relaxed);
        return;
    }
    const uint64_t me = (uint64_t)(uint32_t)my_tid();
    void *objs[MP_CHUNK];
    unsigned k = 0;

    for (uint32_t i = 0; i < n; i++) {
        void *obj = (void *)(uintptr_t)vals[i];
        long idx = fh_mempool_obj_index(mp, obj);
        if (idx < 0)
            continue;
        uint64_t expect = transit(r, from + i);
        /* Acq_rel: only a stamp that says "in this ring, at this slot"
         * proves the slot holds this object now (not a stale value from
         * an earlier lap); the CAS makes it ours, once. */
        if (!atomic_compare_exchange_strong_explicit(
                owner_word(mp, (uint64_t)idx), &expect, me,
                memory_order_acq_rel, memory_order_relaxed))
            continue;
        objs[k++] = obj;
        if (k == MP_CHUNK) {
            give_back(mp, objs, k);
            k = 0;
        }
    }
    give_back(mp, objs, k);
}

/* The ring code reaches the two above through these (ring_internal.h). */
__attribute__((constructor)) static void register_pool_ops(void)
{
    static const struct fh__ring_pool_ops ops = {mp_track, mp_return_transit};
    fh__ring_set_pool_ops(&ops);
}

/* Objects held by threads that are gone go back to the pool. */
static unsigned sweep_dead(struct fh_mempool *mp)
{
    const uint64_t me = (uint64_t)(uint32_t)my_tid();
    int32_t gone[64], alive[64];
    unsigned ngone = 0, nalive = 0, total = 0, k = 0;
    void *objs[MP_CHUNK];

    for (uint64_t i = 0; mp->owners_off && i < mp->count; i++) {
        /* Relaxed: a hint; the CAS below decides. */
        uint64_t v = atomic_load_explicit(owner_word(mp, i), memory_order_relaxed);
        int32_t tid = (int32_t)(uint32_t)v;
        int dead = -1;

        if (v == 0 || (v >> 32) != 0 || tid <= 0 || (uint64_t)tid == me)
            continue;
        for (unsigned j = 0; j < ngone && dead < 0; j++)
            if (gone[j] == tid)
                dead = 1;
        for (unsigned j = 0; j < nalive && dead < 0; j++)
            if (alive[j] == tid)
                dead = 0;
        if (dead < 0) {
            dead = fh__task_gone(tid);
            if (dead && ngone < 64)
                gone[ngone++] = tid;
            else if (!dead && nalive < 64)
                alive[nalive++] = tid;
        }
        if (!dead)
            continue;
        /* Acq_rel: one reclaimer takes the object; its holder's writes
         * are done (it is gone). */
        if (!atomic_compare_exchange_strong_explicit(
                owner_word(mp, i), &v, me, memory_order_acq_rel,
                memory_order_relaxed))
            continue;
        objs[k++] = off2ptr(mp, mp->objs_off + i * mp->elt_size);
        total++;
        if (k == MP_CHUNK) {
            give_back(mp, objs, k);
            k = 0;
        }
    }
    give_back(mp, objs, k);
    return total;
}

FH_API unsigned fh_mempool_reclaim(struct fh_mempool *mp)
{
    int saved = errno;
    fh_ring_recover(mp_ring(mp));
    unsigned n = reclaim_caches(mp) + sweep_dead(mp);
    errno = saved;
    return n;
}

FH_API uint64_t fh_mempool_recovered(const struct fh_mempool *mp)
{
    /* Relaxed: a statistic. */
    return atomic_load_explicit(&((struct fh_mempool *)mp)->recovered,
                                memory_order_relaxed);
}

FH_API unsigned fh_mempool_held_count(const struct fh_mempool *mp, int32_t tid)
{
    unsigned n = 0;

    for (uint64_t i = 0; mp->owners_off && i < mp->count; i++) {
        /* Relaxed: a snapshot. */
        uint64_t v = atomic_load_explicit(owner_word(mp, i), memory_order_relaxed);
        if (v != 0 && (v >> 32) == 0 && (tid == 0 || (int32_t)v == tid))
            n++;
    }
    return n;
}

FH_API struct fh_mempool *fh_mempool_create(const char *name, unsigned n,
                                            unsigned obj_size,
                                            unsigned cache_size,
                                            unsigned flags)
{
    char mzname[FH_MEMZONE_NAMESIZE];
    const struct fh_memzone *mz;
    struct fh_mempool *mp;
    uint64_t elt, stride, caches_off, ring_off, objs_off, owners_off, total;
    unsigned ring_sz = 1;
    ssize_t ring_bytes;
    uint64_t tmp[MP_CHUNK];

    if (mz_name(mzname, name) < 0 || n == 0 || n > FH_MEMPOOL_COUNT_MAX ||
        obj_size == 0 || cache_size > FH_MEMPOOL_CACHE_MAX ||
        (flags & ~(FH_MEMPOOL_F_NO_CACHE_ALIGN | FH_MEMPOOL_F_TRACK))) {
        errno = EINVAL;
        return NULL;
    }
    elt = align_up(obj_size, (flags & FH_MEMPOOL_F_NO_CACHE_ALIGN) ? 8 : 64);
    if (elt > UINT32_MAX) {
        errno = EINVAL;
        return NULL;
    }
    while (ring_sz < n)
        ring_sz <<= 1;
    ring_bytes = fh_ring_get_memsize(ring_sz, 8);
    stride = cache_size ? align_up(sizeof(struct mp_cache) +
                                   2ull * cache_size * sizeof(uint64_t), 64) : 0;
    caches_off = sizeof(struct fh_mempool);
    ring_off = align_up(caches_off + stride * FH_MEMPOOL_CACHE_SLOTS, 128);
    objs_off = align_up(ring_off + (uint64_t)ring_bytes, 64);
    total = objs_off + (uint64_t)n * elt;
    owners_off = 0;
    if (flags & FH_MEMPOOL_F_TRACK) {
        owners_off = align_up(total, 64);
        total = owners_off + (uint64_t)n * sizeof(uint64_t);
    }

    mz = fh_memzone_reserve(mzname, (size_t)total, 128, 0);
    if (!mz)
        return NULL;
    mp = mz->addr;
    /* Nobody can use the pool before the magic is published below; the
     * memzone is zero-filled, so the slots start free and empty. */
    snprintf(mp->name, sizeof mp->name, "%s", name);
    mp->count = n;
    mp->obj_size = obj_size;
    mp->elt_size = (uint32_t)elt;
    mp->cache_size = cache_size;
    mp->flags = flags;
    mp->cache_stride = (uint32_t)stride;
    mp->caches_off = caches_off;
    mp->ring_off = ring_off;
    mp->objs_off = objs_off;
    mp->objs_end = objs_off + (uint64_t)n * elt;
    mp->owners_off = owners_off;
    if (fh_ring_init(mp_ring(mp), name, ring_sz, 8, 0) < 0) {
        errno = EINVAL;
        return NULL;
    }
    /* Its own ring: a getter killed inside a dequeue gives its objects
     * back (mp_return_transit).  Before the magic, as above. */
    mp_ring(mp)->pool = (uint64_t)(uintptr_t)mp | 1;
    for (unsigned done = 0; done < n;) {
        unsigned k = n - done < MP_CHUNK ? n - done : MP_CHUNK;
        for (unsigned i = 0; i < k; i++)
            tmp[i] = objs_off + (uint64_t)(done + i) * elt;
        fh_ring_mp_enqueue_bulk(mp_ring(mp), tmp, k, NULL);
        done += k;
    }
    /* Release pairs with the acquire load of magic in fh_mempool_lookup
     * (fh__object_lookup): a process that sees the magic sees the header
     * and the filled ring. */
    atomic_store_explicit(&mp->magic, MP_MAGIC, memory_order_release);
    return mp;
}

FH_API struct fh_mempool *fh_mempool_lookup(const char *name)
{
    struct fh_mempool *mp = fh__object_lookup(FH_MEMPOOL_MZ_PREFIX, name,
                                              FH_MEMPOOL_NAMESIZE,
                                              offsetof(struct fh_mempool, magic),
                                              MP_MAGIC);
    if (mp)
        fh__ring_register(mp_ring(mp));
    return mp;
}

/* Reopen cache slots [0, n) that close_caches closed. */
static void reopen_caches(struct fh_mempool *mp, unsigned n)
{
    while (n-- > 0)
        /* Release, as cache_release's: the slot is free and empty. */
        atomic_store_explicit(&mp_slot(mp, n)->owner, MP_OWNER_FREE,
                              memory_order_release);
}

/*
 * Destroy's veto, called under the memzone directory lock once the pool is
 * known to exist: close every free cache slot (CAS free -> reclaiming, so
 * nobody claims one from now on), or, when a thread still owns a slot,
 * reopen those closed and refuse.  The slots are in memory that is freed
 * just after: nothing reopens them on success (the drain does, when it
 * gives up).
 */

static int close_caches(void *obj)
{
    struct fh_mempool *mp = obj;
    unsigned i;

    for (i = 0; mp->cache_stride && i < FH_MEMPOOL_CACHE_SLOTS; i++) {
        int32_t expect = MP_OWNER_FREE;
        /* Relaxed: the slot is closed, not used; on failure nothing is
         * read from it. */
        if (!atomic_compare_exchange_strong_explicit(
                &mp_slot(mp, i)->owner, &expect, MP_OWNER_RECLAIMING,
                memory_order_relaxed, memory_order_relaxed))
            break;
    }
    if (!mp->cache_stride || i == FH_MEMPOOL_CACHE_SLOTS)
        return 0;
    reopen_caches(mp, i);
    errno = EBUSY;
    return -1;
}

/* Destroy's drain, once the magic is cleared: the threads waiting in a
 * timed get leave (with -EIDRM) before the memory is freed. */
static int mp_drain(void *obj)
{
    struct fh_mempool *mp = obj;

    if (fh__ring_drain(mp_ring(mp)) == 0)
        return 0;
    /* The pool lives on: reopen the cache slots close_caches closed (all
     * of them, or it would have refused). */
    if (mp->cache_stride)
        reopen_caches(mp, FH_MEMPOOL_CACHE_SLOTS);
    errno = ETIMEDOUT;
    return -1;
}

FH_API int fh_mempool_destroy(struct fh_mempool *mp)
{
    if (!mp || !fh_arena_contains(mp, sizeof *mp)) {
        errno = EINVAL;
        return -1;
    }
    /* Only a pool that exists is touched: the lookup refuses anything
     * else (a pool destroyed already, memory reused since). */
    if (fh_mempool_lookup(mp->name) != mp) {
        errno = ENOENT;
        return -1;
    }
    fh_mempool_cache_flush(mp);
    fh_mempool_reclaim(mp);
    return fh__object_destroy(mp, FH_MEMPOOL_MZ_PREFIX, mp->name,
                              FH_MEMPOOL_NAMESIZE,
                              offsetof(struct fh_mempool, magic), MP_MAGIC,
                              close_caches, mp_drain);
}
