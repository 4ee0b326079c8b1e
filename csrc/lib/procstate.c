/*
 * procstate.c - what this process is, in three facts that init.c, spawn.c,
 * entry.c and template.c all read (declared in init_internal.h).  A leaf:
 * it depends on nothing, so those files need not depend on each other for
 * them.
 */
#include "init_internal.h"

/* Set in every secondary by fh_child_setup (spawn.c), before its entry
 * runs; only ever written in a single-threaded child. */
int fh_init_in_secondary;
/* Set by fh_init in a primary it made, before the template fork. */
int fh_init_main_is_primary;
/* Set as the template starts (template.c). */
char fh_init_template_prefix[FH_PREFIX_MAX_LEN + 1];
