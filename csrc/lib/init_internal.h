/*
 * init_internal.h - what fh_init (init.c) shares with the rest of
 * libforkhost, not part of the public API.
 */
#ifndef FORKHOST_INIT_INTERNAL_H
#define FORKHOST_INIT_INTERNAL_H

#include <stddef.h>
#include <sys/types.h>

#include "forkhost/rundir.h"

/* Non-zero in a secondary: set by fh_child_setup (spawn.c). */
extern int fh_init_in_secondary;

/* Set by a primary that fh_init made (before the template fork): a launch
 * of this same executable runs the program the template already maps
 * (entry.c) instead of loading a second copy. */
extern int fh_init_main_is_primary;

/* The template's prefix, set as the template starts (template.c), and so
 * known in every secondary. */
extern char fh_init_template_prefix[FH_PREFIX_MAX_LEN + 1];

#endif
