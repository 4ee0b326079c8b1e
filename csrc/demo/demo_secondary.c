/*
 * demo_secondary.c - the native secondary of `forkhost demo`.
 *
 * A separate shared object, loaded with dlopen in a secondary.  It links
 * libforkhost (already loaded there, so the same copy and the same arena),
 * looks the demo zone up by name and calls the function pointer the
 * primary stored in it.
 */
#include <stdio.h>
#include <unistd.h>

#include "forkhost.h"
#include "forkhost/demo.h"

int main(int argc, char **argv, char **envp)
{
    const struct fh_memzone *mz = fh_memzone_lookup(FH_DEMO_ZONE);
    struct fh_demo_zone *zone;
    uint64_t calls;

    (void)envp;
    if (!mz) {
        fprintf(stderr, "%s: no memzone %s in this process's arena\n",
                argc > 0 ? argv[0] : "demo", FH_DEMO_ZONE);
        return 1;
    }
    zone = mz->addr;
    calls = zone->fn(zone, (int64_t)getpid());
    printf("C secondary (pid %d): arena at %p, zone '%s' at %p says \"%s\"; "
           "called fn at %p -> call #%llu\n", (int)getpid(), fh_arena_base(),
           mz->name, (void *)zone, zone->greeting, (void *)zone->fn,
           (unsigned long long)calls);
    return 0;
}
