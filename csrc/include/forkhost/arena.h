/*
 * forkhost/arena.h - the shared arena every process of a prefix sees.
 *
 * The primary creates one memfd, maps it MAP_SHARED and records where.  The
 * template and every secondary inherit that mapping through fork, so the
 * arena (and the library itself) sit at the same address in all of them and
 * raw pointers into it, function pointers included, stay valid.
 *
 * The arena starts with struct fh_arena_hdr (written once by the primary,
 * read-only afterwards) followed by the memzone directory and the data area.
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
#define FH_ARENA_VERSION 1
/* Bytes at the arena's start reserved for struct fh_arena_hdr. */
#define FH_ARENA_HDR_SIZE 4096u
/* The smallest arena that leaves room for the memzone directory. */
#define FH_ARENA_MIN_SIZE (4u * 1024u * 1024u)
/* Said after an arena size below FH_ARENA_MIN_SIZE was refused (EINVAL). */
#define FH_ARENA_TOO_SMALL " (the minimum is 4 MiB)"

/* fh_arena_create() flags */
#define FH_ARENA_HUGE_AUTO 0x1u /* huge pages if enough are free, else normal */
#define FH_ARENA_HUGE_ONLY 0x2u /* huge pages or fail with ENOMEM */

/*
 * Byte layout (offsets from the arena base), all written by the primary in
 * fh_arena_create() before the template fork and never changed after:
 *   0  magic     8  version   12 page_size   16 size   24 base
 *   32 primary_pid  36 flags  40 mz_dir_offset  48 data_offset
 */
struct fh_arena_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t page_size;     /* bytes per page backing the arena */
    uint64_t size;          /* whole arena, header included */
    uint64_t base;          /* address the primary mapped it at */
    int32_t  primary_pid;
    uint32_t flags;         /* FH_ARENA_F_* */
    uint64_t mz_dir_offset; /* memzone directory (see memzone.h) */
    uint64_t data_offset;   /* first byte the memzone allocator hands out */
};

#define FH_ARENA_F_HUGE 0x1u /* backed by huge pages */

/* Primary only: create the memfd, size it, map it, format the header and
 * the memzone directory.  0, or -1 with errno (EEXIST: already created). */
FH_API int fh_arena_create(size_t size, unsigned flags, const char *name);

/* Classic attach for processes that did not descend from the template:
 * map fd at exactly addr with MAP_FIXED_NOREPLACE.  0, or -1 with errno
 * (EEXIST: the range is taken; err then names the mapping found in
 * /proc/self/maps; EINVAL: fd is not a forkhost arena of that size/base). */
FH_API int fh_arena_attach(int fd, uintptr_t addr, size_t size,
                           char *err, size_t errlen);

/* This process's arena, or NULL / 0 / -1 when it has none. */
FH_API void *fh_arena_base(void);
FH_API size_t fh_arena_size(void);
FH_API int fh_arena_fd(void);
FH_API struct fh_arena_hdr *fh_arena_hdr(void);

/* Non-zero when [p, p+len) lies inside this process's arena. */
FH_API int fh_arena_contains(const void *p, size_t len);

#endif /* FORKHOST_ARENA_H */
