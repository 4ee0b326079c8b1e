/*
 * demo.c - the function `forkhost demo` stores in the arena (see demo.h).
 */
#include <errno.h>
#include <string.h>

#include "forkhost.h"
#include "forkhost/demo.h"

/* Called through the pointer in the zone, from any process of the prefix. */
static uint64_t demo_visit(struct fh_demo_zone *zone, int64_t caller)
{
    /* Relaxed is enough for last_caller: it is a best-effort "who was
     * here"; the counter's fetch_add is the only ordering that matters and
     * it needs no ordering with other memory either, only atomicity. */
    __atomic_store_n(&zone->last_caller, caller, __ATOMIC_RELAXED);
    return __atomic_add_fetch(&zone->calls, 1, __ATOMIC_RELAXED);
}

FH_API struct fh_demo_zone *fh_demo_setup(const char *greeting)
{
    const struct fh_memzone *mz =
        fh_memzone_reserve(FH_DEMO_ZONE, sizeof(struct fh_demo_zone), 0, 0);
    struct fh_demo_zone *zone;

    if (!mz)
        return NULL;
    zone = mz->addr;
    strncpy(zone->greeting, greeting, sizeof zone->greeting - 1);
    zone->fn = demo_visit;
    return zone;
}
