/*
 * forkhost/entry.h - what an entry names, decided before the fork
 * (fh_entry_decide: the one classifier, for pool members, the template and
 * Python alike); and a native entry (a shared object or a PIE executable)
 * loaded in a secondary, with the function to run.
 *
 * Entry forms: "path/lib.so[:symbol]" and "path/to/pie-executable[:symbol]",
 * symbol defaulting to "main", called as int symbol(argc, argv, envp).
 * glibc >= 2.30 refuses to dlopen an object whose DT_FLAGS_1 has DF_1_PIE
 * ("cannot dlopen() a PIE object"); fh_entry_load() handles that case itself.
 */
#ifndef FORKHOST_ENTRY_H
#define FORKHOST_ENTRY_H

#include <stddef.h>

#include "forkhost/proto.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* What a launch exits with when its entry cannot run (docs/cli.md). */
#define FH_EXIT_CANNOT_RUN 126   /* found, but it cannot be loaded or run */
#define FH_EXIT_NOT_FOUND  127   /* no such file, module or symbol */

/* The entry forms (docs/cli.md). */
enum fh_entry_kind {
    FH_ENTRY_ERROR    = 0,   /* not runnable: exit_code and message say why */
    FH_ENTRY_NATIVE   = 1,   /* a shared object or PIE: path[:symbol] */
    FH_ENTRY_FUNCTION = 2,   /* module:function */
    FH_ENTRY_SCRIPT   = 3,   /* what python PATH runs: source, .pyc, a
                                directory or zip file with __main__.py, a
                                FIFO or device it reads */
    FH_ENTRY_MODULE   = 4,   /* -m module */
};

#define FH_ENTRY_HEAD_MAX 4096   /* PATH_MAX */

struct fh_entry_target {
    unsigned    kind;        /* enum fh_entry_kind */
    const char *name;        /* NATIVE, SCRIPT: the file, as sent (relative
                                to the client's cwd); FUNCTION, MODULE: the
                                module.  Points into the entry or head */
    const char *symbol;      /* FUNCTION: the attribute path; NATIVE: the
                                symbol, NULL for main; else NULL */
    int         exit_code;   /* ERROR: FH_EXIT_NOT_FOUND or
                                FH_EXIT_CANNOT_RUN */
    char        head[FH_ENTRY_HEAD_MAX];   /* the part before the last ':' */
    char        message[FH_PROTO_MAX_ERROR + 1];  /* ERROR: one line */
};

/*
 * What entry names for a client whose cwd is cwd_fd (an O_PATH directory):
 * one stat and, for a regular file, a 4-byte read.  Fills *t and returns
 * t->kind.  The entry must stay alive while t's name and symbol are used.
 */
FH_API int fh_entry_decide(const char *entry, int module_flag, int cwd_fd,
                           struct fh_entry_target *t);

/* Internal, for fh_launch_decide (request.c) too: t refused with exit
 * code, its message already written; returns FH_ENTRY_ERROR. */
int fh__entry_refused(struct fh_entry_target *t, int code);

typedef int (*fh_main_fn)(int argc, char **argv, char **envp);

/*
 * Load path and return its symbol.  On failure returns NULL, sets
 * *exit_code to 127 (file or symbol not found) or 126 (found but cannot be
 * loaded: not ELF for this machine, non-PIE executable, dlopen error) and
 * writes one line, without a trailing newline, into err.
 */
FH_API fh_main_fn fh_entry_load(const char *path, const char *symbol,
                                char *err, size_t errlen, int *exit_code);

/*
 * What fh_init() tells a program about itself before it hands itself over:
 * whether path, an executable, could be loaded by fh_entry_load() as far
 * as its file shows (a PIE, dynamically linked, no thread-local variables,
 * no stale copy relocations, main findable), without loading it.  0, or
 * 126 with one line, naming the build flags that fix it, in err.
 */
FH_API int fh_entry_precheck(const char *path, char *err, size_t errlen);

/*
 * After the entry fh_entry_load() returned has returned: run what exit()
 * would run for that object and no other (the primary's libraries must not
 * run their exit handlers once per secondary): the handlers its code
 * registered with atexit() and its C++ static destructors, then its ELF
 * destructors.  Once; a no-op when nothing was loaded.
 */
FH_API void fh_entry_finish(void);

/*
 * An entry that checks whether another can be loaded here, without running
 * it: launch it as "PATH/libforkhost.so:fh_entry_check" with argv[1] the
 * entry to check (as forkhost-run takes it: path[:symbol], relative to the
 * cwd).  It classifies and loads that entry with the code a launch uses
 * (fh_entry_decide(), then fh_entry_load()'s), in this process's conditions:
 * its loaded libraries, its static TLS left, its loader's search path, the
 * environment and cwd.  The entry's ELF constructors run, as at a launch;
 * its symbol is not called.  Prints one line on stdout,
 *
 *     entry-check: CAUSE: MESSAGE
 *
 * CAUSE "ok", or why not (not-found, unreadable, not-elf, wrong-elf,
 * not-pie, static-pie, pie-tls, copy-relocation, static-tls,
 * missing-library, undefined-symbol, load-error, not-exported, stripped,
 * python-entry), MESSAGE what a launch would print, or what was loaded.
 * Returns what a launch of the entry would exit with when it cannot run it
 * (126, 127), 0 when it loads, 2 on a usage error.
 */
FH_API int fh_entry_check(int argc, char **argv, char **envp);

#endif /* FORKHOST_ENTRY_H */
