/*
 * forkhost/init.h - one program, either role: fh_init() is forkhost's
 * counterpart of DPDK's rte_eal_init().
 *
 * A program calls fh_init(argc, argv) first thing in main.  By its
 * --proc-type it then is
 *
 *  - the primary of its prefix: fh_init takes the prefix's lock, creates
 *    the arena and template.sock, forks the template (this process must be
 *    single-threaded then), starts IPC (ipc.h: fh_ipc_* act as the
 *    primary's), writes the prefix's config record and returns;
 *    the program goes on as the primary and may start threads;
 *
 *  - a secondary, started from a shell: fh_init hands this very executable
 *    to the running template with this process's argv, environment, cwd,
 *    umask, stdio, limits and signals (exactly as forkhost-run does; it is
 *    the same client code), waits, and exits as the forked secondary does:
 *    its status, its signal, or 125 / 126 / 127 (docs/cli.md).  It never
 *    returns;
 *
 *  - the secondary the template forked for that launch: main runs again
 *    from its start with every mapping of the primary in place, in the
 *    primary's own copy of the program when the primary is this program
 *    (every function at one address in every process; globals as they
 *    were when the primary called fh_init), and here fh_init returns.
 *    Whatever main does before fh_init runs twice, once in each process.
 *
 * Options, before the program's own (DPDK's spelling where DPDK has one;
 * each also as "--opt value"):
 *
 *   --proc-type=primary|secondary|auto   default auto: primary when no live
 *                                        primary holds the prefix, decided
 *                                        atomically, else secondary
 *   --file-prefix=P                      the prefix (FORKHOST_PREFIX, else
 *                                        "forkhost")
 *   --runtime-dir=D                      (FORKHOST_RUNTIME_DIR, ...)
 *   --arena-size=SIZE                    primary: the arena's starting size,
 *                                        64M, 1G, ... (FH_DEFAULT_ARENA_SIZE)
 *   --arena-max=SIZE                     primary: the size it can grow to
 *                                        (FH_ARENA_DEFAULT_MAX, arena.h)
 *   --huge-pages=auto|never|always       primary (FH_DEFAULT_HUGE_PAGES)
 *   --pool=N                             primary: idle members (FH_DEFAULT_POOL)
 *   --                                   ends forkhost's options
 *
 * and the environment forkhost-run reads: FORKHOST_PREFIX,
 * FORKHOST_RUNTIME_DIR, FORKHOST_CONNECT_TIMEOUT (and the primary's
 * FORKHOST_THP).
 *
 * Everything before a "--" (which is consumed too) must be forkhost's
 * options, as with DPDK's EAL options; without a "--", parsing stops at
 * the first argument that does not start with "--".  An unknown "--name"
 * is an error either way.  fh_init returns how many arguments it consumed, after
 * writing argv[0] into the last consumed slot, so that the program goes on
 * with `argc -= ret; argv += ret;` and still has its name in argv[0], as
 * with rte_eal_init.
 *
 * Failures print one line, "PROGRAM: what went wrong", and exit:
 *   125  a bad option, a prefix held by another primary (--proc-type=
 *        primary), no primary to hand over to (--proc-type=secondary), or
 *        the primary could not start;
 *   126  this program cannot be loaded in a secondary (not a PIE, main not
 *        exported, thread-local variables in an executable): the line names
 *        the build flags that fix it.
 */
#ifndef FORKHOST_INIT_H
#define FORKHOST_INIT_H

#include <stddef.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* A primary's defaults, the Python primary's too (forkhost/primary.py
 * takes them from here). */
#define FH_DEFAULT_ARENA_SIZE      (64u << 20)
#define FH_DEFAULT_HUGE_PAGES      "auto"
#define FH_DEFAULT_POOL            2u
#define FH_DEFAULT_MAX_SECONDARIES 1024u
#define FH_DEFAULT_GRACE_MS        5000u
/* The most idle pool members a primary keeps (--pool), and what a larger
 * or malformed value is told (printf format: the value). */
#define FH_POOL_MAX                1024u
/* --on-primary-death (fh_init and forkhost primary): survive (the
 * default: the template and its secondaries outlive a primary that dies,
 * and the next primary on the prefix adopts them) or stop (the template
 * ends its secondaries when the primary dies).  template.h's
 * FH_ON_PRIMARY_DEATH_* are the two. */
#define FH_ON_PRIMARY_DEATH_INVALID "invalid --on-primary-death '%s': use survive or stop"
#define FH_POOL_INVALID            "invalid --pool '%s': use a number from 0 to 1024"

enum fh_proc_type {
    FH_PROC_AUTO = -1,          /* as an option only */
    FH_PROC_PRIMARY = 0,
    FH_PROC_SECONDARY = 1,
    FH_PROC_NONE = 2,           /* fh_init has not run (and this process is
                                   not a secondary) */
};

/* The options as fh_init parsed them (forkhost.init() in Python parses
 * with the same code). */
struct fh_init_options {
    int          proc_type;       /* enum fh_proc_type; FH_PROC_AUTO */
    const char  *prefix;          /* --file-prefix, or NULL */
    const char  *runtime_dir;     /* --runtime-dir, or NULL */
    size_t       arena_size;
    unsigned     arena_flags;     /* FH_ARENA_HUGE_*, arena.h */
    const char  *huge_pages;      /* "auto", "never" or "always" */
    unsigned     pool;
    int          consumed;        /* arguments taken, "--" included */
    size_t       arena_max;       /* --arena-max, or 0: the default */
    int          on_primary_death;/* --on-primary-death: template.h's
                                     FH_ON_PRIMARY_DEATH_* (0: survive) */
};

/* Parse forkhost's options from argv[1] on into o (defaults for the
 * rest); a bad option prints one line, "PROGRAM: what", and exits 125. */
FH_API void fh_init_parse(int argc, char **argv, struct fh_init_options *o);

/* See above.  Called once per process; a second call fails (125). */
FH_API int fh_init(int argc, char **argv);

/* This process's role: FH_PROC_SECONDARY in every secondary (whatever
 * started it), FH_PROC_PRIMARY after fh_init made it the primary. */
FH_API enum fh_proc_type fh_proc_type(void);

/* The prefix fh_init settled on, or NULL before it. */
FH_API const char *fh_file_prefix(void);

/* The counterpart of rte_eal_cleanup().  In the primary: end the template
 * (its secondaries get SIGTERM, then SIGKILL after the grace), remove the
 * prefix's runtime files and release the prefix; 0, or -1 with errno.  In
 * a secondary: nothing to undo (0).  fh_init registers it with atexit(),
 * so a primary that returns from main or calls exit() ends this way too;
 * one killed by a signal takes its template and secondaries with it, and
 * leaves its files to the next primary of the prefix. */
FH_API int fh_cleanup(void);

/* "64M", "1.5G", "4096", "8GiB": bytes, binary units (the Python
 * primary's --arena-size too).  0, or -1 when text is none of those. */
FH_API int fh_parse_size(const char *text, size_t *out);
/* printf format: the text that was not a size. */
#define FH_SIZE_INVALID "invalid size '%s': use bytes or a K/M/G suffix"

#endif /* FORKHOST_INIT_H */
