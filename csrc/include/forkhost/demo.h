/*
 * forkhost/demo.h - what `forkhost demo` shows: a function pointer stored
 * in shared memory by the primary and called by secondaries, Python and C.
 *
 * With classic DPDK-style secondaries this is the rte_hash bug: the pointer
 * is only valid where the library is mapped at the primary's address.
 * Secondaries forked from the template have the same mapping, so it works.
 */
#ifndef FORKHOST_DEMO_H
#define FORKHOST_DEMO_H

#include <stdint.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

#define FH_DEMO_ZONE "forkhost.demo"

struct fh_demo_zone;
typedef uint64_t (*fh_demo_fn)(struct fh_demo_zone *zone, int64_t caller);

/*
 * Memzone FH_DEMO_ZONE.  Layout: 0 fn (written once by the primary),
 * 8 calls (bumped atomically by every caller of fn), 16 last_caller,
 * 24 greeting (written once by the primary).
 */
struct fh_demo_zone {
    fh_demo_fn fn;
    uint64_t   calls;        /* accessed with __atomic builtins, see demo.c */
    int64_t    last_caller;
    char       greeting[64];
};

/* Primary: reserve the zone, store greeting and a pointer to a function
 * of this library.  The zone, or NULL with errno. */
FH_API struct fh_demo_zone *fh_demo_setup(const char *greeting);

#endif /* FORKHOST_DEMO_H */
