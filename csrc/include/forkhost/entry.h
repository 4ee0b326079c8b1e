/*
 * forkhost/entry.h - load a native entry (a shared object or a PIE
 * executable) in a secondary and find the function to run.
 *
 * Entry forms: "path/lib.so[:symbol]" and "path/to/pie-executable[:symbol]",
 * symbol defaulting to "main", called as int symbol(argc, argv, envp).
 * glibc >= 2.30 refuses to dlopen an object whose DT_FLAGS_1 has DF_1_PIE
 * ("cannot dlopen() a PIE object"); fh_entry_load() handles that case itself.
 */
#ifndef FORKHOST_ENTRY_H
#define FORKHOST_ENTRY_H

#include <stddef.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

typedef int (*fh_main_fn)(int argc, char **argv, char **envp);

/* What a path names, judged from its first bytes (no dlopen). */
enum fh_elf_kind {
    FH_ELF_NOT_ELF = 0,   /* readable, not ELF (a Python script, say) */
    FH_ELF_SHARED  = 1,   /* ET_DYN without DF_1_PIE: a shared object */
    FH_ELF_PIE     = 2,   /* ET_DYN with DF_1_PIE (or PT_INTERP): a PIE */
    FH_ELF_OTHER   = 3,   /* ET_EXEC (non-PIE), ET_REL, wrong class/machine */
};

/* -1 with errno when the file cannot be opened or read. */
FH_API int fh_elf_kind(const char *path);

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
