/*
 * ring.c - creation and lookup of rings, and the out-of-line copies of the
 * inline ring operations in forkhost/ring.h.
 *
 * The operations are inline for C callers; Python (cffi), ctypes and
 * programs that resolve symbols at run time need real functions.  Defining
 * FH_RING_BUILD turns every FH_RING_FN in the header into an exported
 * definition, so the two can never drift apart.
 */
#define FH_RING_BUILD 1

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* The header's FH_RING_FN definitions are their own prototypes. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#include "forkhost.h"
#include "forkhost/ring.h"
#pragma GCC diagnostic pop

_Static_assert(offsetof(struct fh_ring, size) == 72, "ring layout");
_Static_assert(offsetof(struct fh_ring, prod) == 128, "prod on its own lines");
_Static_assert(offsetof(struct fh_ring, cons) == 256, "cons on its own lines");
_Static_assert(offsetof(struct fh_ring, slots) == 384, "slots after cons");

FH_API ssize_t fh_ring_get_memsize(unsigned count, unsigned elem_size)
{
    if (count == 0 || count > FH_RING_SZ_MAX || (count & (count - 1)) ||
        elem_size == 0 || elem_size % 4 || elem_size > FH_RING_ELEM_MAX)
        return -EINVAL;
    return (ssize_t)(sizeof(struct fh_ring) + (size_t)count * elem_size);
}

FH_API int fh_ring_init(struct fh_ring *r, const char *name, unsigned count,
                        unsigned elem_size, unsigned flags)
{
    if (fh_ring_get_memsize(count, elem_size) < 0 || (flags & ~FH_RING_F_MASK) ||
        !name || !name[0] || strlen(name) >= FH_RING_NAMESIZE ||
        ((uintptr_t)r & 127))
        return -EINVAL;
    /* No other process can use the ring yet: lookups refuse it until the
     * magic below is published, so plain and relaxed writes suffice. */
    memset(r, 0, sizeof *r);
    strcpy(r->name, name);
    r->size = count;
    r->mask = count - 1;
    r->capacity = count;
    r->elem_size = elem_size;
    r->flags = flags;
    r->prod.single = !!(flags & FH_RING_F_SP_ENQ);
    r->cons.single = !!(flags & FH_RING_F_SC_DEQ);
    /* Release pairs with the acquire load of magic in fh_ring_lookup
     * (fh__object_lookup): a process that sees the magic sees the whole
     * header. */
    atomic_store_explicit(&r->magic, FH_RING_MAGIC, memory_order_release);
    return 0;
}

static int mz_name(char *buf, const char *name)
{
    return fh__object_zone_name(buf, FH_RING_MZ_PREFIX, name, FH_RING_NAMESIZE);
}

FH_API struct fh_ring *fh_ring_create(const char *name, unsigned count,
                                      unsigned elem_size, unsigned flags)
{
    char mzname[FH_MEMZONE_NAMESIZE];
    const struct fh_memzone *mz;
    ssize_t sz = fh_ring_get_memsize(count, elem_size);
    int rc;

    if (sz < 0 || (flags & ~FH_RING_F_MASK) || mz_name(mzname, name) < 0) {
        errno = EINVAL;
        return NULL;
    }
    mz = fh_memzone_reserve(mzname, (size_t)sz, 128, 0);
    if (!mz)
        return NULL;
    rc = fh_ring_init(mz->addr, name, count, elem_size, flags);
    if (rc < 0) {
        errno = -rc;
        return NULL;
    }
    return mz->addr;
}

FH_API struct fh_ring *fh_ring_lookup(const char *name)
{
    return fh__object_lookup(FH_RING_MZ_PREFIX, name, FH_RING_NAMESIZE,
                             offsetof(struct fh_ring, magic), FH_RING_MAGIC);
}

FH_API int fh_ring_destroy(struct fh_ring *r)
{
    if (!r || !fh_arena_contains(r, sizeof *r)) {
        errno = EINVAL;
        return -1;
    }
    return fh__object_destroy(r, FH_RING_MZ_PREFIX, r->name, FH_RING_NAMESIZE,
                              offsetof(struct fh_ring, magic), FH_RING_MAGIC,
                              NULL);
}
