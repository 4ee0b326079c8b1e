/*
 * spawn_internal.h - what spawn.c shares with the template (template.c),
 * not part of the public API.
 */
#ifndef FORKHOST_SPAWN_INTERNAL_H
#define FORKHOST_SPAWN_INTERNAL_H

/* Read once, in the template, what every secondary tells the kernel about
 * its image (the code, data, stack and heap starts /proc/self/stat shows:
 * fixed since the primary's exec), so a launch does not read it again. */
void fh__spawn_read_image(void);

/* Find, once, in the template, the cgroup2 mount and the template's own
 * cgroup, which every secondary compares its client's with (spawn.c,
 * "The client's cgroup"), so a launch does not look for them again. */
void fh__cgroup_snapshot(void);

#endif
