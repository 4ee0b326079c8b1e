/*
 * forkhost/hotset.h - copy-on-write ahead of time for the template's pool
 * members (member.h): the hot set, in memory the template shares with
 * every process it forks.
 *
 * A launch in a fresh fork writes to pages it shares with the template,
 * and each first write is a copy-on-write fault
 * (microseconds each on a virtual machine, hundreds per Python launch).
 * The template keeps a hot set in shared memory: the pages a recent
 * secondary had made private by its exit (learned by the first launches,
 * and again now and then).  An idle member copies those pages ahead of
 * time (MADV_POPULATE_WRITE), so the next launch finds them its own, and
 * maps the code and constants it ran (MADV_POPULATE_READ): fork copies no
 * page-table entry of a read-only file mapping, so every child would fault
 * those in again, a few dozen faults per launch.
 */
#ifndef FORKHOST_HOTSET_H
#define FORKHOST_HOTSET_H

#include <stdint.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

#define FH_HOTSET_RANGES 2048u
#define FH_HOTSET_READ   1u

struct fh_hotset {
    _Atomic uint32_t seq;        /* odd while a secondary writes the set */
    _Atomic uint32_t learn;      /* launches still to learn from */
    _Atomic uint32_t nranges;
    _Atomic uint32_t python;     /* the last 32 launches, one bit each (the
                                    newest lowest): a Python entry's */
    _Atomic uint32_t learned;    /* the kind of launch the set was learned
                                    from: 0 none yet, 1 native, 2 Python */
    uint32_t reserved;
    struct {
        _Atomic uint64_t start;
        _Atomic uint32_t pages;
        _Atomic uint32_t flags;  /* FH_HOTSET_READ: pages of a read-only
                                    file mapping the launch had mapped
                                    (its code and constants): a fork
                                    copies none of those page-table
                                    entries, so each launch faults them
                                    in again; else written pages */
    } r[FH_HOTSET_RANGES];
};

/* In the template: a zeroed hot set in MAP_SHARED memory, or NULL. */
FH_API struct fh_hotset *fh_hotset_create(void);
/* Let the next `launches` member secondaries learn the set at their exit. */
FH_API void fh_hotset_arm(struct fh_hotset *h, unsigned launches);
/* The template, at each launch: was it a Python entry's?  When the last
 * two launches were of the other kind than the set was learned from, the
 * set is learned again (a Python launch writes some 500 pages, a native
 * one a few dozen: a set of the wrong kind copies too few or too many). */
FH_API void fh_hotset_note(struct fh_hotset *h, int python);
/* Written pages in the current set (a consistent read); 0 while a
 * secondary records the set anew (never waited for). */
FH_API unsigned fh_hotset_pages(struct fh_hotset *h);
/* In an idle member: copy the hot set's pages now.  Pages copied.  Not
 * while a launch is to be learned from (the set armed): a member that
 * copied the set never learns, so that each learning replaces the set
 * with what one launch made private instead of adding to it.  Nor while a
 * secondary records the set anew: that is not waited for (0). */
FH_API long fh_member_prefault(void);

/* Internal.  In a pool member (fh_member_init): the template's set, or
 * NULL. */
void fh__hotset_member(struct fh_hotset *h);
/* Internal.  In a member that took a launch: does it run Python?  The set
 * learned from it is of that kind. */
void fh__hotset_launch(int python);
/* Internal.  At a member secondary's exit (fh_exit_report): learn, if
 * armed and the member did not copy the set. */
void fh__hotset_learn(void);

#endif /* FORKHOST_HOTSET_H */
