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

/* -- interim: the runtime directory and the prefix lock in C -------- */
#define FH_RUNDIR_ERR_MAX 512
#define FH_PREFIX_BUSY (-2)
#define FH_PREFIX_IN_USE "prefix '%s' is in use by the primary with pid %d (%s/%s)"

struct fh_prefix_paths {
    char root[4096];
    char prefix[FH_PREFIX_MAX_LEN + 1];
};

int fh_prefix_resolve(struct fh_prefix_paths *p, const char *prefix,
                      const char *origin, const char *runtime_dir, char *err,
                      size_t errlen);
int fh_prefix_lock(const struct fh_prefix_paths *p, pid_t *holder, pid_t *stale,
                   char *err, size_t errlen);
void fh_prefix_release(const struct fh_prefix_paths *p, int lock_fd);
int fh_prefix_write_config(const struct fh_prefix_paths *p, const char *text,
                           char *err, size_t errlen);

#endif
