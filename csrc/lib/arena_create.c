/*
 * arena_create.c - a primary's new arena: the shared mapping (arena.c)
 * with its memzone directory laid out (memzone.c).  Here, not in either,
 * so that arena.c needs nothing of memzone.c, which is built on it.
 */
#include <errno.h>

#include "forkhost.h"

FH_API int fh_arena_create(size_t size, unsigned flags, const char *name)
{
    return fh_arena_create_growable(size, size, flags, name);
}

FH_API int fh_arena_create_growable(size_t size, size_t max, unsigned flags,
                                    const char *name)
{
    if (fh__arena_map(size, max, flags, name) < 0)
        return -1;
    if (fh__memzone_format(fh_arena_hdr()) < 0) {
        fh__arena_unmap();
        return -1;
    }
    return 0;
}
