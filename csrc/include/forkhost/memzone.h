/*
 * forkhost/memzone.h - named, aligned allocations in the arena, found by
 * name from any process of the prefix (DPDK's rte_memzone).
 */
#ifndef FORKHOST_MEMZONE_H
#define FORKHOST_MEMZONE_H

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* A name, NUL included: like RTE_MEMZONE_NAMESIZE, long enough for
 * "<app>.<object>.<n>" names and small enough to scan a directory fast. */
#define FH_MEMZONE_NAMESIZE 64

struct fh_memzone {
    char     name[FH_MEMZONE_NAMESIZE];
    void    *addr;       /* valid in every process of the prefix */
    uint64_t len;
    uint64_t align;
    uint32_t flags;
    uint32_t gen;        /* generation of the directory slot: odd while
                            this memzone lives; see fh_memzone_free */
};

/*
 * Freeing (rte_memzone_free).  The pointers the calls below return point
 * into the directory, whose slots are reused after a free: a slot's `gen`
 * goes up by one when a memzone is published in it (odd: live) and again
 * when it is freed (even), so each memzone that ever lived in a slot has a
 * generation of its own (32 bits: a slot reused 2^31 times wraps).
 *
 * The contract for a process that still holds a freed memzone:
 *  - lookups of a freed name fail (ENOENT) from the moment fh_memzone_free
 *    returns, and the name can be reserved again at once;
 *  - a copy of the struct (fh_memzone_copy) is a checked handle: copying
 *    it again, or freeing through it, fails with EIDRM once its memzone is
 *    freed, even if the slot holds a newer memzone by then (the Python
 *    Memzone checks this before every use);
 *  - the bytes go back to the allocator and a later reserve hands them out
 *    again, zero-filled: raw pointers into a freed memzone (mz->addr, a
 *    ring, pool or table in it) must not be used after the free, as with
 *    rte_memzone_free.  Whoever frees must know that no one uses it.
 */

/* Free the memzone mz names (a pointer from reserve/lookup, or a copy from
 * fh_memzone_copy: then its generation must still be current).  0, or -1
 * with errno: EIDRM a copy of a memzone freed since, ENOENT no memzone of
 * that name, EINVAL NULL, ENODEV no arena. */
FH_API int fh_memzone_free(const struct fh_memzone *mz);

/* A consistent copy of the memzone mz points at (its directory slot), gen
 * included; 0, or -1 with errno EIDRM when mz is a copy whose generation
 * is gone, or ENOENT when the slot holds no memzone now. */
FH_API int fh_memzone_copy(const struct fh_memzone *mz, struct fh_memzone *out);

/* The generation the slot of mz holds now (an acquire load): odd while a
 * memzone lives in it.  mz must point into the directory. */
FH_API uint32_t fh_memzone_gen(const struct fh_memzone *mz);

/* Names are one namespace across types: a memzone "x" and the objects
 * that live in memzones "RG_x" (ring), "MP_x" (mempool), "HT_x" (hash
 * table) and "AR_x" (array).  Creating or looking up a name that exists as
 * another of those types fails with FH_EWRONGTYPE instead of EEXIST or
 * ENOENT. */
#define FH_EWRONGTYPE EPROTOTYPE
#define FH_WRONG_TYPE_TEXT "the name exists as another type"
#define FH_ARRAY_MZ_PREFIX "AR_"
/* What the name `name` (without prefix) exists as: "memzone", "ring",
 * "mempool", "hash table", "array", or NULL. */
FH_API const char *fh_memzone_name_kind(const char *name);

/* Reserve len bytes aligned to align (a power of two, 0 = cache line),
 * zero-filled, from the free space (first fit; freed memzones' bytes are
 * reused), growing the arena up to its maximum when needed.  NULL with
 * errno: EEXIST name taken, FH_EWRONGTYPE name taken by another type,
 * ENOSPC arena (at its maximum) or directory full, ENOMEM the arena cannot
 * grow (no free huge pages or memory to back it), EINVAL bad name/align,
 * ENODEV no arena in this process. */
FH_API const struct fh_memzone *fh_memzone_reserve(const char *name,
                                                   size_t len, size_t align,
                                                   unsigned flags);
/* NULL with errno ENOENT when no memzone has that name (FH_EWRONGTYPE when
 * the name exists as another type). */
FH_API const struct fh_memzone *fh_memzone_lookup(const char *name);

/* Call fn for each live memzone, in directory-slot order (creation order
 * until something is freed); stops early when fn returns non-zero and
 * returns that value. */
FH_API int fh_memzone_walk(int (*fn)(const struct fh_memzone *, void *),
                           void *arg);
/* Bytes the allocator can still hand out (up to the arena's maximum, in
 * however many pieces), and memzones in use. */
FH_API size_t fh_memzone_free_bytes(void);
FH_API unsigned fh_memzone_count(void);

/* Directory slots: like RTE_MAX_MEMZONE, enough for a few hundred named
 * objects (each ring, mempool and hash table takes one) while the whole
 * directory (128 bytes a slot) stays at 128 KiB, inside FH_ARENA_MIN_SIZE. */
#define FH_MEMZONE_MAX 1024

/* Internal: lay out the directory in a fresh arena (called by
 * fh_arena_create).  Sets hdr->mz_dir_offset and hdr->data_offset. */
struct fh_arena_hdr;
int fh__memzone_format(struct fh_arena_hdr *hdr);

/* Internal, for the named objects that live in memzones (rings, mempools,
 * hash tables).  The memzone name of object `name` of one kind: prefix +
 * name in buf (FH_MEMZONE_NAMESIZE bytes); -1 when name is NULL, empty or
 * not shorter than name_size. */
int fh__object_zone_name(char *buf, const char *prefix, const char *name,
                         size_t name_size);
/* That object, once its creator published it (the _Atomic uint64_t at
 * magic_off in it holds magic, stored with release); else NULL with errno
 * ENOENT (a missing memzone: fh_memzone_lookup's errno). */
void *fh__object_lookup(const char *prefix, const char *name,
                        size_t name_size, size_t magic_off, uint64_t magic);
/* Destroy object obj (its creator published it: the _Atomic uint64_t at
 * magic_off holds magic) living in memzone prefix+name: under the
 * directory lock, check that the memzone is there at obj, call veto(obj)
 * when not NULL (-1 with errno: keep the object) and clear the magic
 * (release: later lookups that still find the memzone refuse it).  Then,
 * when drain is not NULL, call drain(obj) outside the lock (it waits until
 * no thread is inside the object; -1 with errno: the magic is published
 * again and the object kept).  Then free the memzone.  0, or -1 with errno
 * ENOENT (no such object at obj), EINVAL, veto's or drain's. */
int fh__object_destroy(void *obj, const char *prefix, const char *name,
                       size_t name_size, size_t magic_off, uint64_t magic,
                       int (*veto)(void *obj), int (*drain)(void *obj));

/* Internal: initialize a mutex that lives in the arena: PROCESS_SHARED
 * (every process of the prefix uses it), ROBUST (a process that dies
 * holding it must not hang the others; the next locker gets EOWNERDEAD),
 * ERRORCHECK (relocking from the same thread fails with EDEADLK rather
 * than hanging).  0, or the pthread error number. */
int fh__shared_mutex_init(pthread_mutex_t *m);

/*
 * Test hooks, exported so the C and Python tests can kill a process while it
 * holds the directory lock; not for applications.
 *
 * fh__memzone_lock() takes the directory's robust mutex, repairing the
 * directory first when its previous owner died holding it (then it returns
 * 1, else 0; -1 with errno on failure).  fh__memzone_unlock() releases it.
 * fh__memzone_crash_at(step) makes this process's next fh_memzone_reserve()
 * or fh_memzone_free() _exit(99) at that step while holding the lock.
 * Reserve: 1 after the arena is grown (when needed) and the slot's fields
 * are written, 2 after the slot high-water mark moved, 3 after the reused
 * bytes are zeroed, 4 after publishing but before the count moves.  Free: 5 after the slot
 * is unpublished but before the count moves.  0 disables.
 */
/* Publish a word of an object in shared memory that other processes look
 * up (its magic, written after everything else: a release store), and read
 * it back (an acquire load: what was written before it is then seen).  For
 * objects laid out from a language without C11 atomics (Python's
 * forkhost.shm.Array). */
FH_API void fh_publish_u64(uint64_t *p, uint64_t v);
FH_API uint64_t fh_published_u64(const uint64_t *p);

FH_API int fh__memzone_lock(void);
FH_API void fh__memzone_unlock(void);
FH_API void fh__memzone_crash_at(int step);

#endif /* FORKHOST_MEMZONE_H */
