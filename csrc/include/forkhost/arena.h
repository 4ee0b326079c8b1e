/*
 * forkhost/arena.h - the shared arena every process of a prefix sees.
 *
 * The primary creates one memfd, maps it MAP_SHARED and records where.  The
 * template and every secondary inherit that mapping through fork, so the
 * arena (and the library itself) sit at the same address in all of them and
 * raw pointers into it, function pointers included, stay valid.
 *
 * The arena starts with struct fh_arena_hdr (written once by the primary,
 * read-only afterwards but for `size`) followed by the memzone directory
 * and the data area.
 *
 * Growth.  The primary maps the arena's whole maximum (max_size) at start,
 * MAP_NORESERVE, and gives the memfd only `size` bytes; when a memzone needs
 * more, the directory lock holder extends the memfd (fallocate for huge
 * pages, which fails cleanly with ENOSPC when the pool is short, ftruncate
 * otherwise: pages still come on first touch) and then stores the new size
 * in the header (release).  Every process already maps the whole range, so
 * none has anything to do to see the new bytes.
 */
#ifndef FORKHOST_ARENA_H
#define FORKHOST_ARENA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

#define FH_ARENA_MAGIC   0x414e455241484b46ull /* "FKHARENA" */
#define FH_ARENA_VERSION 2
/* Bytes at the arena's start reserved for struct fh_arena_hdr. */
#define FH_ARENA_HDR_SIZE 4096u
/* The smallest arena that leaves room for the memzone directory. */
#define FH_ARENA_MIN_SIZE (4u * 1024u * 1024u)
/* Said after an arena size below FH_ARENA_MIN_SIZE was refused (EINVAL). */
#define FH_ARENA_TOO_SMALL " (the minimum is 4 MiB)"
/* Said when a maximum below the starting size was asked for (EINVAL). */
#define FH_ARENA_MAX_TOO_SMALL " (--arena-max must be at least --arena-size)"
/* The arena grows by at least this much at a time (rounded up to its page
 * size), so that a run of small memzones does not extend the memfd each. */
#define FH_ARENA_GROW_MIN (2u * 1024u * 1024u)

/* fh_arena_create() flags */
#define FH_ARENA_HUGE_AUTO 0x1u /* huge pages if enough are free, else normal */
#define FH_ARENA_HUGE_ONLY 0x2u /* huge pages or fail with ENOMEM */

/*
 * Byte layout (offsets from the arena base), all written by the primary in
 * fh_arena_create() before the template fork and never changed after, but
 * for size (grown by the memzone directory's lock holder, read and written
 * atomically: fh_arena_size()) and primary_pid (rewritten atomically by a
 * primary that adopts the arena: fh_arena_adopt()):
 *   0  magic     8  version   12 page_size   16 size   24 base
 *   32 primary_pid  36 flags  40 mz_dir_offset  48 data_offset  56 max_size
 *   64 ring_rec_offset
 */
struct fh_arena_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t page_size;     /* bytes per page backing the arena */
    uint64_t size;          /* usable now, header included; only grows */
    uint64_t base;          /* address the primary mapped it at */
    int32_t  primary_pid;
    uint32_t flags;         /* FH_ARENA_F_* */
    uint64_t mz_dir_offset; /* memzone directory (see memzone.h) */
    uint64_t data_offset;   /* first byte the memzone allocator hands out */
    uint64_t max_size;      /* the range mapped at base in every process */
    uint64_t ring_rec_offset; /* rings' reservation records (ring.h) */
};

#define FH_ARENA_F_HUGE 0x1u /* backed by huge pages */

/* Primary only: create the memfd, size it, map it, format the header and
 * the memzone directory.  0, or -1 with errno (EEXIST: already created).
 * An arena of a fixed size: fh_arena_create_growable(size, size, ...). */
FH_API int fh_arena_create(size_t size, unsigned flags, const char *name);
/* The same, starting at size bytes and growing on demand up to max (both
 * rounded up to the page size; max 0: the larger of size and
 * FH_ARENA_DEFAULT_MAX).  EINVAL when size is below FH_ARENA_MIN_SIZE or
 * max below size; ENOMEM when FH_ARENA_HUGE_ONLY cannot be met. */
FH_API int fh_arena_create_growable(size_t size, size_t max, unsigned flags,
                                    const char *name);
/* The address range reserved when --arena-max is not given: cheap (address
 * space only, no memory), and large enough that few prefixes reach it. */
#define FH_ARENA_DEFAULT_MAX (16ull << 30)

/* Classic attach for processes that did not descend from the template:
 * map fd's whole range (size: the arena's max_size, config.json's "max")
 * at exactly addr with MAP_FIXED_NOREPLACE.  0, or -1 with errno (EEXIST:
 * the range is taken; err then names the mapping found in /proc/self/maps;
 * EINVAL: fd is not a forkhost arena of that size/base). */
FH_API int fh_arena_attach(int fd, uintptr_t addr, size_t size,
                           char *err, size_t errlen);

/* Adoption (a new primary taking over the arena of a dead one, through
 * its orphaned template: docs/reliability.md): fh_arena_attach, then the
 * memfd moved to fd number want_fd when that number is free (the number
 * secondaries of the old primary look for under /proc/PID/fd to grow the
 * arena; -1: left where it is), then this process written into the
 * header as the arena's primary.  Errors as fh_arena_attach's. */
FH_API int fh_arena_adopt(int fd, uintptr_t addr, size_t size, int want_fd,
                          char *err, size_t errlen);
/* Non-zero when [addr, addr+size) overlaps a mapping of this process; err
 * then names the first (its /proc/self/maps line), as fh_arena_attach
 * says it.  A check before anything is asked of an orphaned template. */
FH_API int fh_arena_range_taken(uintptr_t addr, size_t size, char *err,
                                size_t errlen);

/* This process's arena, or NULL / 0 / -1 when it has none.  size: the
 * bytes usable now (grows); max: the range mapped, which size never
 * passes. */
FH_API void *fh_arena_base(void);
FH_API size_t fh_arena_size(void);
FH_API size_t fh_arena_max(void);
FH_API int fh_arena_fd(void);
FH_API struct fh_arena_hdr *fh_arena_hdr(void);

/* Non-zero when [p, p+len) lies inside this process's arena (its usable
 * part, fh_arena_size()). */
FH_API int fh_arena_contains(const void *p, size_t len);

/* Internal, for the memzone directory's lock holder: make the arena at
 * least end bytes long.  0, or -1 with errno ENOSPC (past the maximum) or
 * ENOMEM (the huge-page pool or memory cannot back it, or the memfd cannot
 * be reached: the primary is gone). */
int fh__arena_grow(uint64_t end);

/* Internal, for fh_arena_create_growable (arena_create.c, which then lays
 * out the memzone directory): map a new arena and write its header, with
 * fh_arena_create_growable's arguments and errors; and undo that when the
 * directory cannot be laid out (errno kept). */
int fh__arena_map(size_t size, size_t max, unsigned flags, const char *name);
void fh__arena_unmap(void);

#endif /* FORKHOST_ARENA_H */
