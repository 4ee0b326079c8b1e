/*
 * heap.c - the shared heap (DPDK's rte_malloc) in the arena; the layout,
 * the locking and the repair after a dead lock holder are described in
 * forkhost/heap.h and docs/shm.md ("The shared heap").
 *
 * Every call takes the heap's robust mutex; everything below the control
 * block's magic is read and written only by the lock holder (or by the
 * repairer, who holds the lock).  The only atomics that matter for ordering
 * are the commit stores a repair reads after a death: block sizes and
 * states, the journal's kind and the segment count.  They are release
 * stores so that neither the compiler nor the CPU moves the writes before
 * them (the journal, a new header) after them: a process can be killed
 * between any two instructions, and the repairer (who acquires the mutex
 * after the kernel released the dead owner's) must find each step whole.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"
#include "forkhost/heap.h"
#include "task.h"

#define HEAP_MAGIC 0x5041454850484b46ull /* "FKHPHEAP" */
#define HEAP_VERSION 1
#define BLK_MAGIC 0x4b4c4248u            /* "HBLK" */
/* Block states. */
#define ST_FREE 1u
#define ST_USED 2u
#define ST_END  3u                       /* a segment's end marker */
/* The smallest free block a split leaves: a header and one line of data
 * (a smaller rest stays in the allocated block). */
#define MIN_SPLIT (2 * FH_HEAP_HDR_SIZE)

/* Journal kinds. */
#define J_NONE    0u
#define J_ALLOC   1u
#define J_FREE    2u
#define J_RESIZE  3u
#define J_RECYCLE 4u

/*
 * A block header, 64 bytes, at the start of every block:
 *   0 magic  4 state  8 size  16 prev_size  24 next  32 prev  40 pid
 *   44 seg  48 req  56 pad
 * size and state are the commit stores (see the file comment); the rest is
 * plain, written and read by the lock holder.  next/prev: the free list,
 * offsets from the arena base, 0 for none (offset 0 is the arena header,
 * never a block).  pid: the allocating process; req: the bytes it asked.
 */
struct blk {
    uint32_t magic;
    _Atomic uint32_t state;
    _Atomic uint64_t size;
    uint64_t prev_size;
    uint64_t next;
    uint64_t prev;
    int32_t pid;
    uint32_t seg;
    uint64_t req;
    uint64_t pad;
};
_Static_assert(sizeof(struct blk) == FH_HEAP_HDR_SIZE, "a header is one line");

/* The counters of one process; slot 0 is pid 0's (see heap.h). */
struct pslot {
    int32_t pid;            /* 0: unused (slot 0: always pid 0) */
    uint32_t pad;
    uint64_t c[4];          /* alloc_count, alloc_bytes, free_count, free_bytes */
};
enum { AC, AB, FC, FB };

/* What the call in progress will have done once it commits: the counters
 * it stores (absolute values, so the repair can store them again). */
struct journal {
    _Atomic uint32_t kind;  /* J_*; set (release) just before the commit */
    uint32_t slot;
    uint64_t blk;           /* offset of the block the commit changes */
    uint64_t new_size;      /* J_RESIZE: the block's size once committed */
    uint64_t c[4];          /* slot's counters once committed */
    uint64_t c0[4];         /* J_RECYCLE: slot 0's counters */
    int32_t pid;            /* J_RECYCLE: the slot's new owner */
    uint32_t pad;
};

struct seg {
    uint64_t off;           /* from the arena base */
    _Atomic uint64_t len;   /* the memzone's, a multiple of 64; 0: a free
                             * slot (its segment given back) */
    uint32_t seq;           /* n of its name HEAP_<n> */
    uint32_t flags;         /* SEG_OWN: one big block's segment */
};
#define SEG_OWN 1u

/*
 * The control block, memzone FH_HEAP_MZ_NAME:
 *   0 magic (published last, release)   8 init_owner   12 version
 *   64 lock   128 journal   then bins, segments, process slots.
 */
struct heap_ctl {
    _Atomic uint64_t magic;
    _Atomic int32_t init_owner;  /* pid formatting it; 0 before anyone */
    uint32_t version;
    alignas(64) pthread_mutex_t lock;
    alignas(64) struct journal j;
    uint64_t bin_map;            /* bit i: bins[i] not empty */
    uint64_t bins[FH_HEAP_BINS];
    _Atomic uint32_t nseg;       /* registered segments (commit store) */
    uint32_t name_seq;           /* n of the next segment name to try */
    struct seg segs[FH_HEAP_MAX_SEGMENTS];
    struct pslot procs[FH_HEAP_PROC_SLOTS];
};

/* Process-local.  g_ctl and g_base stay valid across fork (the arena is at
 * the same address in the child); g_pid and g_slot are reset in the child.
 * g_ctl is published (release) after g_base is set, and read with
 * acquire; threads that find the heap at once store the same values.
 * g_pid is read and set by any thread (relaxed: every thread of the
 * process computes the same value); g_slot only under the heap lock. */
static _Atomic(struct heap_ctl *) g_ctl;
static char *g_base;
static _Atomic int g_pid;
static int g_slot = -1;
static int g_crash_at;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    /* Relaxed: the child has one thread now. */
    atomic_store_explicit(&g_pid, 0, memory_order_relaxed);
    g_slot = -1;
}

static void register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static int my_pid(void)
{
    /* Relaxed: a cache of getpid(); racing threads store the same value. */
    int pid = atomic_load_explicit(&g_pid, memory_order_relaxed);
    if (!pid) {
        pid = (int)getpid();
        /* Relaxed: as above. */
        atomic_store_explicit(&g_pid, pid, memory_order_relaxed);
    }
    return pid;
}

FH_API void fh__heap_crash_at(int step) { g_crash_at = step; }

static void maybe_crash(int step)
{
    if (g_crash_at == step)
        _exit(99);
}

/* ---- small helpers ------------------------------------------------------ */

static inline struct blk *B(uint64_t off) { return (struct blk *)(g_base + off); }
static inline uint64_t off_of(const struct blk *b) { return (uint64_t)((const char *)b - g_base); }

/* Relaxed loads: under the heap lock every writer is the lock holder, whose
 * earlier stores the mutex (or the repair after its death) made visible. */
static inline uint64_t bsize(const struct blk *b)
{
    return atomic_load_explicit(&((struct blk *)b)->size, memory_order_relaxed);
}
static inline uint32_t bstate(const struct blk *b)
{
    return atomic_load_explicit(&((struct blk *)b)->state, memory_order_relaxed);
}
/* Release: the commit order a repair relies on (file comment). */
static inline void set_size(struct blk *b, uint64_t v)
{
    atomic_store_explicit(&b->size, v, memory_order_release);
}
static inline void set_state(struct blk *b, uint32_t v)
{
    atomic_store_explicit(&b->state, v, memory_order_release);
}
static inline struct blk *next_blk(const struct blk *b)
{
    return (struct blk *)((char *)b + bsize(b));
}
/* A slot's segment length, 0 when the slot is free.  Relaxed: read under
 * the lock, as nsegs. */
static inline uint64_t seg_len(const struct seg *s)
{
    return atomic_load_explicit(&((struct seg *)s)->len, memory_order_relaxed);
}

static inline unsigned nsegs(const struct heap_ctl *h)
{
    /* Relaxed: read under the lock (its only writer holds it too). */
    return atomic_load_explicit(&((struct heap_ctl *)h)->nseg, memory_order_relaxed);
}
static inline uint32_t jkind(const struct heap_ctl *h)
{
    /* Relaxed: read under the lock, as nsegs. */
    return atomic_load_explicit(&((struct heap_ctl *)h)->j.kind, memory_order_relaxed);
}
/* Release: the journal's fields (and the new headers before them) are
 * written before it, and it before the commit store after it. */
static inline void set_jkind(struct heap_ctl *h, uint32_t k)
{
    atomic_store_explicit(&h->j.kind, k, memory_order_release);
}

static unsigned bin_of(uint64_t size)
{
    uint64_t units = size / FH_HEAP_HDR_SIZE;
    unsigned i = 63u - (unsigned)__builtin_clzll(units);
    return i < FH_HEAP_BINS ? i : FH_HEAP_BINS - 1;
}

static void write_hdr(struct blk *b, uint32_t state, uint64_t size,
                      uint64_t prev_size, uint32_t seg)
{
    b->magic = BLK_MAGIC;
    b->prev_size = prev_size;
    b->next = b->prev = 0;
    b->pid = 0;
    b->seg = seg;
    b->req = 0;
    b->pad = 0;
    /* Relaxed: a header nothing reaches yet; the store that makes it
     * reachable (a size or the segment count) is a release. */
    atomic_store_explicit(&b->size, size, memory_order_relaxed);
    atomic_store_explicit(&b->state, state, memory_order_relaxed);
}

static void list_push(struct heap_ctl *h, struct blk *b)
{
    unsigned i = bin_of(bsize(b));
    uint64_t o = off_of(b);

    b->prev = 0;
    b->next = h->bins[i];
    if (b->next)
        B(b->next)->prev = o;
    h->bins[i] = o;
    h->bin_map |= 1ull << i;
}

/* Before b's size changes: the bin is found from it. */
static void list_del(struct heap_ctl *h, struct blk *b)
{
    unsigned i = bin_of(bsize(b));

    if (b->prev)
        B(b->prev)->next = b->next;
    else
        h->bins[i] = b->next;
    if (b->next)
        B(b->next)->prev = b->prev;
    b->next = b->prev = 0;
    if (!h->bins[i])
        h->bin_map &= ~(1ull << i);
}

/* ---- the journal and the statistics ------------------------------------- */

/* Store the journal's counters (again, after a death: idempotent). */
static void apply_journal(struct heap_ctl *h, int crash_step)
{
    struct journal *j = &h->j;

    if (jkind(h) == J_RECYCLE) {
        struct pslot *z = &h->procs[0], *s = &h->procs[j->slot];
        z->c[AC] = j->c0[AC];
        z->c[AB] = j->c0[AB];
        maybe_crash(crash_step);
        z->c[FC] = j->c0[FC];
        z->c[FB] = j->c0[FB];
        memset(s->c, 0, sizeof s->c);
        s->pid = j->pid;
        return;
    }
    struct pslot *s = &h->procs[j->slot];
    s->c[AC] = j->c[AC];
    s->c[AB] = j->c[AB];
    maybe_crash(crash_step);
    s->c[FC] = j->c[FC];
    s->c[FB] = j->c[FB];
}

/* This process's slot (under the lock); slot 0 when the table is full of
 * live processes. */
static unsigned my_slot(struct heap_ctl *h)
{
    int pid = my_pid();
    int saved = errno;
    unsigned free_slot = 0;

    /* Slot 0, once chosen, stays this process's: no scan on every call. */
    if (g_slot == 0 || (g_slot > 0 && h->procs[g_slot].pid == pid))
        return (unsigned)g_slot;
    for (unsigned i = 1; i < FH_HEAP_PROC_SLOTS; i++) {
        if (h->procs[i].pid == pid)
            return (unsigned)(g_slot = (int)i);
        if (!free_slot && h->procs[i].pid == 0)
            free_slot = i;
    }
    if (free_slot) {
        h->procs[free_slot].pid = pid;
        return (unsigned)(g_slot = (int)free_slot);
    }
    /* Full: fold an ended process's counters into slot 0 and take its slot
     * (a journaled step: the repair redoes it). */
    for (unsigned i = 1; i < FH_HEAP_PROC_SLOTS; i++) {
        if (!fh__task_gone(h->procs[i].pid))
            continue;
        h->j.slot = i;
        h->j.pid = pid;
        for (int k = 0; k < 4; k++)
            h->j.c0[k] = h->procs[0].c[k] + h->procs[i].c[k];
        set_jkind(h, J_RECYCLE);
        apply_journal(h, FH_HEAP_CRASH_RECYCLE);
        set_jkind(h, J_NONE);
        errno = saved;
        return (unsigned)(g_slot = (int)i);
    }
    errno = saved;
    g_slot = 0;
    return 0;
}

/* Fill the journal for a call on block b that moves slot's counters. */
static void journal(struct heap_ctl *h, unsigned slot, const struct blk *b,
                    uint64_t allocs, uint64_t abytes, uint64_t frees,
                    uint64_t fbytes)
{
    struct pslot *s = &h->procs[slot];

    h->j.slot = slot;
    h->j.blk = off_of(b);
    h->j.c[AC] = s->c[AC] + allocs;
    h->j.c[AB] = s->c[AB] + abytes;
    h->j.c[FC] = s->c[FC] + frees;
    h->j.c[FB] = s->c[FB] + fbytes;
}

/* ---- repair --------------------------------------------------------------- */

/*
 * The lock holder died (we hold the lock now).  Finish or drop its call's
 * statistics, then walk every segment: fix prev_size, merge free runs (a
 * free that died between its commit and its merges), rebuild the lists.
 */
static void repair(struct heap_ctl *h)
{
    uint32_t kind = jkind(h);
    unsigned n = nsegs(h);

    if (kind != J_NONE) {
        struct blk *b = B(h->j.blk);
        int done = kind == J_RECYCLE ||
                   (kind == J_ALLOC && bstate(b) == ST_USED) ||
                   (kind == J_FREE && bstate(b) == ST_FREE) ||
                   (kind == J_RESIZE && bsize(b) == h->j.new_size);
        if (done)
            apply_journal(h, -1);
        set_jkind(h, J_NONE);
    }
    memset(h->bins, 0, sizeof h->bins);
    h->bin_map = 0;
    for (unsigned s = 0; s < n; s++) {
        char *start = g_base + h->segs[s].off;
        char *end = start + seg_len(&h->segs[s]) - FH_HEAP_HDR_SIZE;
        struct blk *run = NULL;
        uint64_t last = 0;

        if (h->segs[s].seq >= h->name_seq)
            h->name_seq = h->segs[s].seq + 1;
        if (!seg_len(&h->segs[s]))
            continue;               /* given back */
        for (struct blk *b = (struct blk *)start;;) {
            uint32_t st = bstate(b);
            uint64_t sz = bsize(b);
            struct blk *nx = (struct blk *)((char *)b + sz);

            if (b->magic != BLK_MAGIC || (st != ST_END && ((char *)b >= end ||
                    sz < FH_HEAP_HDR_SIZE || sz % FH_HEAP_HDR_SIZE ||
                    (char *)nx > end))) {
                fprintf(stderr, "forkhost heap: segment %u unreadable at offset "
                        "%lu; left as it is\n", s,
                        (unsigned long)((char *)b - start));
                break;
            }
            if (st == ST_FREE) {
                if (run) {
                    set_size(run, bsize(run) + sz);
                } else {
                    run = b;
                    b->prev_size = last;
                }
            } else {
                if (run) {
                    list_push(h, run);
                    last = bsize(run);
                    run = NULL;
                }
                b->prev_size = last;
                last = sz;
                if (st == ST_END)
                    break;
            }
            b = nx;
        }
    }
}

/* ---- the control block ---------------------------------------------------- */

static int format(struct heap_ctl *h)
{
    size_t skip = offsetof(struct heap_ctl, version);
    int rc;

    memset((char *)h + skip, 0, sizeof *h - skip);
    maybe_crash(FH_HEAP_CRASH_INIT);
    h->version = HEAP_VERSION;
    rc = fh__shared_mutex_init(&h->lock);
    if (rc) {
        errno = rc;
        return -1;
    }
    /* Release pairs with the acquire load of magic in get_ctl: a process
     * that sees it sees the control block formatted. */
    atomic_store_explicit(&h->magic, HEAP_MAGIC, memory_order_release);
    return 0;
}

static struct heap_ctl *find_ctl(int create);

/* The heap's control block, made (create) or found; NULL with errno.  The
 * first finding in a process is serialised by g_init_lock, so g_base is
 * written once, before g_ctl is published. */
static struct heap_ctl *get_ctl(int create)
{
    static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
    /* Acquire pairs with the release store in find_ctl: g_base is set. */
    struct heap_ctl *h = atomic_load_explicit(&g_ctl, memory_order_acquire);

    if (h)
        return h;
    pthread_mutex_lock(&g_init_lock);
    h = find_ctl(create);
    pthread_mutex_unlock(&g_init_lock);
    return h;
}

static struct heap_ctl *find_ctl(int create)
{
    const struct fh_memzone *mz;
    /* Relaxed: under g_init_lock, which orders it with the store below. */
    struct heap_ctl *h = atomic_load_explicit(&g_ctl, memory_order_relaxed);

    if (h)
        return h;
    if (!fh_arena_base()) {
        errno = ENODEV;
        return NULL;
    }
    mz = fh_memzone_lookup(FH_HEAP_MZ_NAME);
    if (!mz && create) {
        mz = fh_memzone_reserve(FH_HEAP_MZ_NAME, sizeof *h, 64, 0);
        if (!mz && errno == EEXIST)
            mz = fh_memzone_lookup(FH_HEAP_MZ_NAME);
    }
    if (!mz)
        return NULL;
    if (mz->len < sizeof *h) {
        errno = EUCLEAN;
        return NULL;
    }
    h = mz->addr;
    for (;;) {
        /* Acquire pairs with the release store in format(). */
        if (atomic_load_explicit(&h->magic, memory_order_acquire) == HEAP_MAGIC)
            break;
        if (!create) {
            errno = ENOENT;
            return NULL;
        }
        /* Relaxed: the CAS below decides; a stale value only costs a turn. */
        int owner = atomic_load_explicit(&h->init_owner, memory_order_relaxed);
        if (owner == 0 || fh__task_gone(owner)) {
            /* Acquire on success: a dead formatter's writes are seen
             * before ours overwrite them (relaxed on failure: retried). */
            if (atomic_compare_exchange_strong_explicit(&h->init_owner, &owner,
                    my_pid(), memory_order_acquire, memory_order_relaxed)) {
                if (format(h) < 0)
                    return NULL;
                break;
            }
            continue;
        }
        struct timespec ts = { 0, 100000 };
        nanosleep(&ts, NULL);
    }
    g_base = fh_arena_base();
    pthread_once(&g_once, register_atfork);
    /* Release: g_base (and the atfork handler) before g_ctl. */
    atomic_store_explicit(&g_ctl, h, memory_order_release);
    return h;
}

/* 0 locked, 1 locked after a repair, -1 with errno. */
static int heap_lock(struct heap_ctl *h)
{
    int rc = pthread_mutex_lock(&h->lock);

    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) {
        repair(h);
        pthread_mutex_consistent(&h->lock);
        return 1;
    }
    errno = rc;
    return -1;
}

static void heap_unlock(struct heap_ctl *h) { pthread_mutex_unlock(&h->lock); }

FH_API int fh__heap_lock(void)
{
    struct heap_ctl *h = get_ctl(1);
    return h ? heap_lock(h) : -1;
}

FH_API void fh__heap_unlock(void)
{
    struct heap_ctl *h = get_ctl(0);
    if (h)
        heap_unlock(h);
}

/* ---- segments ------------------------------------------------------------- */

/* Register a new segment with a free block of at least need bytes (under
 * the lock), in the first free slot; 0, or -1 with errno ENOBUFS (every
 * slot holds a segment), or the arena's: ENOSPC (no room at its maximum,
 * or the memzone directory is full), ENOMEM (it cannot grow). */
static int add_segment(struct heap_ctl *h, uint64_t need)
{
    unsigned n = nsegs(h), idx = n;
    uint64_t len = FH_HEAP_SEGMENT_SIZE;
    const struct fh_memzone *mz;
    char name[FH_MEMZONE_NAMESIZE];
    int own = need > FH_HEAP_SEGMENT_SIZE / 4;

    if (own)
        len = (need + FH_HEAP_HDR_SIZE + 4095) & ~(uint64_t)4095;
    for (unsigned i = 0; i < n; i++)
        if (!seg_len(&h->segs[i])) {
            idx = i;
            break;
        }
    if (idx >= FH_HEAP_MAX_SEGMENTS) {
        errno = ENOBUFS;
        return -1;
    }
    for (;;) {
        snprintf(name, sizeof name, FH_HEAP_SEG_PREFIX "%u", h->name_seq);
        mz = fh_memzone_reserve(name, len, FH_HEAP_HDR_SIZE, 0);
        if (mz)
            break;
        if (errno != EEXIST)
            return -1;
        /* A segment a dead process reserved and never registered (every
         * registered one has a lower number: repair sees to it): ours if it
         * is big enough, else skipped (its bytes stay unused). */
        mz = fh_memzone_lookup(name);
        if (mz && (mz->len & ~(uint64_t)(FH_HEAP_HDR_SIZE - 1)) >= len)
            break;
        h->name_seq++;
    }
    maybe_crash(FH_HEAP_CRASH_SEGMENT);
    len = mz->len & ~(uint64_t)(FH_HEAP_HDR_SIZE - 1);
    struct blk *first = mz->addr;
    struct blk *end = (struct blk *)((char *)mz->addr + len - FH_HEAP_HDR_SIZE);
    write_hdr(first, ST_FREE, len - FH_HEAP_HDR_SIZE, 0, idx);
    write_hdr(end, ST_END, FH_HEAP_HDR_SIZE, len - FH_HEAP_HDR_SIZE, idx);
    h->segs[idx].off = off_of(first);
    h->segs[idx].seq = h->name_seq;
    h->segs[idx].flags = own ? SEG_OWN : 0;
    /* Release: the segment's headers and the rest of its entry before the
     * length that makes a repair walk a reused slot, and before the count
     * that makes it walk a new one. */
    atomic_store_explicit(&h->segs[idx].len, len, memory_order_release);
    if (idx == n)
        atomic_store_explicit(&h->nseg, n + 1, memory_order_release);
    h->name_seq++;
    list_push(h, first);
    return 0;
}

/* ---- allocation ----------------------------------------------------------- */

static struct blk *find_fit(struct heap_ctl *h, uint64_t need)
{
    unsigned i = bin_of(need);
    uint64_t more;

    for (uint64_t o = h->bins[i]; o; o = B(o)->next)
        if (bsize(B(o)) >= need)
            return B(o);
    more = i + 1 < 64 ? h->bin_map & ~((2ull << i) - 1) : 0;
    return more ? B(h->bins[__builtin_ctzll(more)]) : NULL;
}

/* Split b (not on a list) at size, the rest a free block on its list, when
 * the rest is worth a block.  Every step keeps the segment walkable: the
 * new header, then the next block's prev_size, then b's size. */
static void split(struct heap_ctl *h, struct blk *b, uint64_t size)
{
    uint64_t cur = bsize(b);
    struct blk *r, *nx;

    if (cur - size < MIN_SPLIT)
        return;
    r = (struct blk *)((char *)b + size);
    nx = next_blk(b);
    write_hdr(r, ST_FREE, cur - size, size, b->seg);
    nx->prev_size = cur - size;
    set_size(b, size);
    list_push(h, r);
}

static uint64_t block_need(size_t size)
{
    uint64_t sz = size ? size : 1;
    return FH_HEAP_HDR_SIZE + ((sz + FH_HEAP_HDR_SIZE - 1) & ~(uint64_t)(FH_HEAP_HDR_SIZE - 1));
}

static void *heap_alloc(size_t size, size_t align)
{
    struct heap_ctl *h;
    struct blk *b;
    uint64_t need, search;
    unsigned slot;

    if (align & (align - 1) || align > FH_HEAP_MAX_ALIGN) {
        errno = EINVAL;
        return NULL;
    }
    if (align < FH_HEAP_HDR_SIZE)
        align = FH_HEAP_HDR_SIZE;
    if (size > FH_HEAP_MAX_REQUEST) {
        errno = ENOSPC;
        return NULL;
    }
    h = get_ctl(1);
    if (!h)
        return NULL;
    need = block_need(size);
    search = need + (align > FH_HEAP_HDR_SIZE ? align : 0);
    if (heap_lock(h) < 0)
        return NULL;
    slot = my_slot(h);
    b = find_fit(h, search);
    if (!b) {
        if (add_segment(h, search) < 0) {
            heap_unlock(h);
            return NULL;
        }
        b = find_fit(h, search);
    }
    list_del(h, b);
    if (align > FH_HEAP_HDR_SIZE) {
        uintptr_t data = (uintptr_t)b + FH_HEAP_HDR_SIZE;
        uint64_t pad = ((data + align - 1) & ~(uintptr_t)(align - 1)) - data;
        if (pad) {
            /* The pad before the aligned block stays free: b's previous
             * block is in use (no two free blocks touch). */
            struct blk *a = (struct blk *)((char *)b + pad);
            uint64_t cur = bsize(b);
            write_hdr(a, ST_FREE, cur - pad, pad, b->seg);
            next_blk(b)->prev_size = cur - pad;
            set_size(b, pad);
            list_push(h, b);
            b = a;
        }
    }
    split(h, b, need);
    maybe_crash(FH_HEAP_CRASH_SPLIT);
    b->pid = my_pid();
    b->req = size;
    journal(h, slot, b, 1, bsize(b) - FH_HEAP_HDR_SIZE, 0, 0);
    set_jkind(h, J_ALLOC);
    set_state(b, ST_USED);                              /* commit */
    maybe_crash(FH_HEAP_CRASH_ALLOC);
    apply_journal(h, FH_HEAP_CRASH_ALLOC_STAT);
    set_jkind(h, J_NONE);
    heap_unlock(h);
    return (char *)b + FH_HEAP_HDR_SIZE;
}

FH_API void *fh_malloc(size_t size) { return heap_alloc(size, 0); }

FH_API void *fh_malloc_aligned(size_t size, size_t align)
{
    return heap_alloc(size, align);
}

FH_API void *fh_calloc(size_t n, size_t size)
{
    size_t total;
    void *p;

    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOSPC;
        return NULL;
    }
    p = heap_alloc(total, 0);
    if (p)
        memset(p, 0, total);
    return p;
}

/* p's header when p is a block in use of this heap (under the lock). */
static struct blk *used_block(struct heap_ctl *h, const void *p)
{
    struct blk *b = (struct blk *)((char *)p - FH_HEAP_HDR_SIZE);
    const struct seg *s;
    uint64_t o, sz;

    if (((uintptr_t)p & (FH_HEAP_HDR_SIZE - 1)) ||
        !fh_arena_contains(b, FH_HEAP_HDR_SIZE) || b->magic != BLK_MAGIC ||
        bstate(b) != ST_USED || b->seg >= nsegs(h))
        return NULL;
    s = &h->segs[b->seg];
    o = off_of(b);
    sz = bsize(b);
    if (!seg_len(s) || o < s->off || o >= s->off + seg_len(s) - FH_HEAP_HDR_SIZE ||
        sz > s->off + seg_len(s) - FH_HEAP_HDR_SIZE - o)
        return NULL;
    return b;
}

/* Merge free block b with free neighbours and put the result on its list;
 * the merged block. */
static struct blk *merge_and_list(struct heap_ctl *h, struct blk *b)
{
    struct blk *nx = next_blk(b);

    if (bstate(nx) == ST_FREE) {
        uint64_t sz = bsize(b) + bsize(nx);
        list_del(h, nx);
        next_blk(nx)->prev_size = sz;
        set_size(b, sz);
    }
    maybe_crash(FH_HEAP_CRASH_MERGE);
    if (b->prev_size) {
        struct blk *pv = (struct blk *)((char *)b - b->prev_size);
        if (bstate(pv) == ST_FREE) {
            uint64_t sz = bsize(pv) + bsize(b);
            list_del(h, pv);
            next_blk(b)->prev_size = sz;
            set_size(pv, sz);
            b = pv;
        }
    }
    list_push(h, b);
    return b;
}

/*
 * Free block b (merged, listed) fills its segment: give the segment back to
 * the arena when it is a big block's own, so that a program whose big
 * blocks come and go in new sizes (a buffer grown by realloc) does not
 * fill the segment table.  The slot is freed before the memzone: a repair
 * never walks freed memory, and a process that dies in between leaves
 * only the memzone, which nobody uses again (its bytes stay taken).
 * Shared segments stay for later small requests.
 */
static void release_if_empty(struct heap_ctl *h, struct blk *b)
{
    struct seg *s = &h->segs[b->seg];
    const struct fh_memzone *mz;
    char name[FH_MEMZONE_NAMESIZE];

    if (!(s->flags & SEG_OWN) || b->prev_size || bstate(next_blk(b)) != ST_END)
        return;
    list_del(h, b);
    maybe_crash(FH_HEAP_CRASH_RELEASE);
    /* Release: the unlisting before the slot is seen free. */
    atomic_store_explicit(&s->len, 0, memory_order_release);
    snprintf(name, sizeof name, FH_HEAP_SEG_PREFIX "%u", s->seq);
    mz = fh_memzone_lookup(name);
    if (mz && mz->addr == (void *)b)
        fh_memzone_free(mz);
}

FH_API int fh_free(void *p)
{
    struct heap_ctl *h;
    struct blk *b;
    unsigned slot;

    if (!p)
        return 0;
    h = get_ctl(0);
    if (!h) {
        if (errno == ENOENT)
            errno = EINVAL;       /* no heap: p cannot be one of its blocks */
        return -1;
    }
    if (heap_lock(h) < 0)
        return -1;
    b = used_block(h, p);
    if (!b) {
        heap_unlock(h);
        errno = EINVAL;
        return -1;
    }
    slot = my_slot(h);
    journal(h, slot, b, 0, 0, 1, bsize(b) - FH_HEAP_HDR_SIZE);
    set_jkind(h, J_FREE);
    maybe_crash(FH_HEAP_CRASH_FREE);
    set_state(b, ST_FREE);                              /* commit */
    apply_journal(h, FH_HEAP_CRASH_FREE_STAT);
    b = merge_and_list(h, b);
    set_jkind(h, J_NONE);
    release_if_empty(h, b);
    heap_unlock(h);
    return 0;
}

FH_API size_t fh_malloc_usable_size(const void *p)
{
    struct heap_ctl *h = p ? get_ctl(0) : NULL;
    struct blk *b;
    size_t n = 0;

    if (!h || heap_lock(h) < 0) {
        errno = EINVAL;
        return 0;
    }
    b = used_block(h, p);
    if (b)
        n = bsize(b) - FH_HEAP_HDR_SIZE;
    else
        errno = EINVAL;
    heap_unlock(h);
    return n;
}

/* Resize b in place to size new (under the lock), the block after it being
 * free rest (not listed yet) when rest is not NULL.  One journaled commit:
 * b's size. */
static void resize_commit(struct heap_ctl *h, struct blk *b, uint64_t new_size,
                          struct blk *rest)
{
    unsigned slot = my_slot(h);
    uint64_t old = bsize(b);

    journal(h, slot, b, 1, new_size - FH_HEAP_HDR_SIZE, 1, old - FH_HEAP_HDR_SIZE);
    h->j.new_size = new_size;
    set_jkind(h, J_RESIZE);
    maybe_crash(FH_HEAP_CRASH_RESIZE);
    set_size(b, new_size);                              /* commit */
    apply_journal(h, -1);
    if (rest)
        list_push(h, rest);
    set_jkind(h, J_NONE);
}

FH_API void *fh_realloc(void *p, size_t size)
{
    struct heap_ctl *h;
    struct blk *b, *nx;
    uint64_t need, cur, old_usable;
    void *q;

    if (!p)
        return fh_malloc(size);
    if (size == 0) {
        fh_free(p);
        return NULL;
    }
    if (size > FH_HEAP_MAX_REQUEST) {
        errno = ENOSPC;
        return NULL;
    }
    h = get_ctl(0);
    if (!h) {
        if (errno == ENOENT)
            errno = EINVAL;
        return NULL;
    }
    if (heap_lock(h) < 0)
        return NULL;
    b = used_block(h, p);
    if (!b) {
        heap_unlock(h);
        errno = EINVAL;
        return NULL;
    }
    need = block_need(size);
    cur = bsize(b);
    nx = next_blk(b);
    if (need <= cur && cur - need < MIN_SPLIT) {
        heap_unlock(h);                     /* nothing worth giving back */
        return p;
    }
    if (need < cur || (bstate(nx) == ST_FREE && cur + bsize(nx) >= need)) {
        /* In place: the rest after need (b's own tail and a free next
         * block) becomes one free block, when it is worth one. */
        uint64_t total = cur;
        struct blk *after = nx, *rest = NULL;
        if (bstate(nx) == ST_FREE) {
            total += bsize(nx);
            after = next_blk(nx);
        }
        if (total - need >= MIN_SPLIT)
            rest = (struct blk *)((char *)b + need);
        else
            need = total;           /* growing: take all of the next block */
        if (after != nx)
            list_del(h, nx);
        if (rest)
            write_hdr(rest, ST_FREE, total - need, need, b->seg);
        after->prev_size = rest ? total - need : need;
        b->req = size;
        resize_commit(h, b, need, rest);
        heap_unlock(h);
        return p;
    }
    old_usable = cur - FH_HEAP_HDR_SIZE;
    heap_unlock(h);
    q = fh_malloc(size);
    if (!q)
        return NULL;
    memcpy(q, p, old_usable < size ? old_usable : size);
    fh_free(p);
    return q;
}

/* ---- statistics and validation ------------------------------------------ */

FH_API int fh_heap_get_stats(struct fh_heap_stats *st)
{
    struct heap_ctl *h = get_ctl(0);

    memset(st, 0, sizeof *st);
    if (!h)
        return errno == ENOENT ? 0 : -1;
    if (heap_lock(h) < 0)
        return -1;
    for (unsigned s = 0; s < nsegs(h); s++) {
        struct blk *b = B(h->segs[s].off);
        if (!seg_len(&h->segs[s]))
            continue;               /* given back */
        st->segments++;
        st->total_bytes += seg_len(&h->segs[s]);
        for (; bstate(b) != ST_END; b = next_blk(b)) {
            uint64_t data = bsize(b) - FH_HEAP_HDR_SIZE;
            if (bstate(b) == ST_FREE) {
                st->free_bytes += data;
                st->free_count++;
                if (data > st->greatest_free)
                    st->greatest_free = data;
            } else {
                st->alloc_bytes += data;
                st->alloc_count++;
            }
        }
    }
    for (unsigned i = 0; i < FH_HEAP_PROC_SLOTS; i++) {
        const struct pslot *p = &h->procs[i];
        st->total_allocs += p->c[AC];
        st->total_frees += p->c[FC];
        st->procs += i ? p->pid != 0 : (p->c[AC] | p->c[FC]) != 0;
    }
    heap_unlock(h);
    return 0;
}

FH_API int fh_heap_get_proc_stats(struct fh_heap_proc_stats *out, unsigned max)
{
    struct heap_ctl *h = get_ctl(0);
    unsigned n = 0;

    if (!h)
        return errno == ENOENT ? 0 : -1;
    if (heap_lock(h) < 0)
        return -1;
    for (unsigned i = 0; i < FH_HEAP_PROC_SLOTS; i++) {
        const struct pslot *p = &h->procs[i];
        if (i ? p->pid == 0 : (p->c[AC] | p->c[FC]) == 0)
            continue;
        if (n < max) {
            out[n].pid = p->pid;
            out[n].pad = 0;
            out[n].alloc_count = p->c[AC];
            out[n].alloc_bytes = p->c[AB];
            out[n].free_count = p->c[FC];
            out[n].free_bytes = p->c[FB];
        }
        n++;
    }
    heap_unlock(h);
    return (int)n;
}

#define BAD(...) do {                                                      \
        fprintf(stderr, "forkhost heap: " __VA_ARGS__);                    \
        fputc('\n', stderr);                                               \
        goto bad;                                                          \
    } while (0)

FH_API int fh_heap_validate(void)
{
    struct heap_ctl *h = get_ctl(0);
    uint64_t used = 0, used_bytes = 0, nfree = 0, listed = 0;
    uint64_t sums[4] = { 0, 0, 0, 0 };

    if (!h)
        return errno == ENOENT ? 0 : -1;
    if (heap_lock(h) < 0)
        return -1;
    if (jkind(h) != J_NONE)
        BAD("journal of kind %u left open", jkind(h));
    for (unsigned s = 0; s < nsegs(h); s++) {
        char *start = g_base + h->segs[s].off;
        char *end = start + seg_len(&h->segs[s]) - FH_HEAP_HDR_SIZE;
        uint64_t last = 0;
        uint32_t last_st = ST_USED;
        struct blk *b = (struct blk *)start;

        if (!seg_len(&h->segs[s]))
            continue;               /* given back */

        for (;; b = next_blk(b)) {
            uint32_t st = bstate(b);
            uint64_t sz = bsize(b);
            if (b->magic != BLK_MAGIC || b->seg != s)
                BAD("segment %u: bad header at offset %lu", s,
                    (unsigned long)((char *)b - start));
            if (b->prev_size != last)
                BAD("segment %u: prev_size %lu, expected %lu at offset %lu", s,
                    (unsigned long)b->prev_size, (unsigned long)last,
                    (unsigned long)((char *)b - start));
            if (st == ST_END) {
                if ((char *)b != end)
                    BAD("segment %u: end marker at the wrong place", s);
                break;
            }
            if ((st != ST_FREE && st != ST_USED) || sz < FH_HEAP_HDR_SIZE ||
                sz % FH_HEAP_HDR_SIZE || (char *)b + sz > end)
                BAD("segment %u: bad block (state %u size %lu) at offset %lu",
                    s, st, (unsigned long)sz, (unsigned long)((char *)b - start));
            if (st == ST_FREE && last_st == ST_FREE)
                BAD("segment %u: two free blocks touch at offset %lu", s,
                    (unsigned long)((char *)b - start));
            if (st == ST_FREE)
                nfree++;
            else {
                used++;
                used_bytes += sz - FH_HEAP_HDR_SIZE;
            }
            last = sz;
            last_st = st;
        }
    }
    for (unsigned i = 0; i < FH_HEAP_BINS; i++) {
        uint64_t prev = 0;
        if (!h->bins[i] != !(h->bin_map & (1ull << i)))
            BAD("bin %u: bitmap does not match the list", i);
        for (uint64_t o = h->bins[i]; o; prev = o, o = B(o)->next) {
            struct blk *b = B(o);
            if (++listed > nfree)
                BAD("more blocks listed than free (a loop?)");
            if (b->magic != BLK_MAGIC || bstate(b) != ST_FREE ||
                bin_of(bsize(b)) != i || b->prev != prev)
                BAD("bin %u: bad list entry at arena offset %lu", i,
                    (unsigned long)o);
        }
    }
    if (listed != nfree)
        BAD("%lu free blocks, %lu listed", (unsigned long)nfree,
            (unsigned long)listed);
    for (unsigned i = 0; i < FH_HEAP_PROC_SLOTS; i++)
        for (int k = 0; k < 4; k++)
            sums[k] += h->procs[i].c[k];
    if (sums[AC] - sums[FC] != used || sums[AB] - sums[FB] != used_bytes)
        BAD("statistics: %lu - %lu allocations for %lu blocks in use, "
            "%lu - %lu bytes for %lu", (unsigned long)sums[AC],
            (unsigned long)sums[FC], (unsigned long)used,
            (unsigned long)sums[AB], (unsigned long)sums[FB],
            (unsigned long)used_bytes);
    heap_unlock(h);
    return 0;
bad:
    heap_unlock(h);
    errno = EUCLEAN;
    return -1;
}
