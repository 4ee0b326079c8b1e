/*
 * init_internal.h - the process's role (defined in procstate.c) and a
 * helper of template.c that init.c uses, shared inside libforkhost; not
 * part of the public API.
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

/* s as a JSON string, quotes included, the way Python's json writes a
 * path (UTF-8 as it is, an undecodable byte as its \udcXX surrogate) into
 * buf; its length, or -1 when it does not fit.  template.c's, for INFO. */
int fh__json_str(char *buf, size_t size, const char *s);

/* The template's prefix, set as the template starts (template.c), and so
 * known in every secondary. */
extern char fh_init_template_prefix[FH_PREFIX_MAX_LEN + 1];

#endif
