/*
 * forkhost/spawn.h - what the template does at each fork: turn a copy of
 * itself into the client's process (fds, cwd, env, signals, title), and for
 * native entries do the whole fork in C so the child never runs Python.
 */
#ifndef FORKHOST_SPAWN_H
#define FORKHOST_SPAWN_H

#include <stddef.h>
#include <sys/types.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/*
 * A launch as the template received it.  fds are in protocol order: the
 * client's cwd (O_PATH directory), the stdio fds whose bit is set in
 * stdio_mask, then nextra extra fds.  argv and envp are NULL-terminated.
 */
struct fh_child_spec {
    const int   *fds;
    unsigned     nfds;
    unsigned     stdio_mask;
    unsigned     nextra;
    char *const *argv;
    char *const *envp;
    char        *title_area;  /* memory /proc/PID/cmdline shows, or NULL */
    size_t       title_len;
    unsigned     umask;       /* applied with umask(2) */
};

/*
 * In the child only: move the client's fds to 0/1/2 and 3.. (closing the
 * std fds the client did not have), close every other fd, fchdir to the
 * client's cwd, put every signal disposition back to SIG_DFL and clear the
 * mask, set the process title and comm from argv.  0, or -errno (the child
 * then reports and exits 125).  When error is non-NULL a short description
 * of the failing step is stored there.
 */
FH_API int fh_child_setup(const struct fh_child_spec *spec, const char **error);

/*
 * Fork a secondary for a native entry.  The child runs fh_child_setup(),
 * exports LISTEN_FDS/LISTEN_PID when extra fds were passed, loads the
 * entry with fh_entry_load(), calls it, flushes stdio and _exits with its
 * return value; it never returns into the caller.  The parent gets the pid
 * or -1 with errno.
 */
FH_API pid_t fh_spawn_native(const struct fh_child_spec *spec,
                             const char *path, const char *symbol);

#endif /* FORKHOST_SPAWN_H */
