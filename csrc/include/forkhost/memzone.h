/*
 * forkhost/memzone.h - named, aligned allocations in the arena, found by
 * name from any process of the prefix (DPDK's rte_memzone).
 */
#ifndef FORKHOST_MEMZONE_H
#define FORKHOST_MEMZONE_H

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
};

/* Reserve len bytes aligned to align (a power of two, 0 = cache line),
 * zero-filled.  NULL with errno: EEXIST name taken, ENOSPC arena or
 * directory full, EINVAL bad name/align, ENODEV no arena in this process. */
FH_API const struct fh_memzone *fh_memzone_reserve(const char *name,
                                                   size_t len, size_t align,
                                                   unsigned flags);
/* NULL with errno ENOENT when no memzone has that name. */
FH_API const struct fh_memzone *fh_memzone_lookup(const char *name);

/* Call fn for each memzone, in creation order; stops early when fn
 * returns non-zero and returns that value. */
FH_API int fh_memzone_walk(int (*fn)(const struct fh_memzone *, void *),
                           void *arg);
/* Bytes the allocator can still hand out, and memzones in use. */
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
 * _exit(99) at that step while holding the lock: 1 after the slot is
 * written but before the bump pointer moves, 2 after the bump pointer moved
 * but before the slot is published, 3 after publishing but before the count
 * moves; 0 disables.
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
