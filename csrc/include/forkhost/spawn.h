/*
 * forkhost/spawn.h - what the template does at each fork: turn a copy of
 * itself into the client's process (fds, cwd, env, signals, title), and for
 * native entries do the whole fork in C so the child never runs Python.
 */
#ifndef FORKHOST_SPAWN_H
#define FORKHOST_SPAWN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* The exit status of a secondary whose setup failed (forkhost itself
 * failed: the 125 of docs/cli.md). */
#define FH_EXIT_SETUP 125

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
    int          report_fd;   /* kept open for fh_exit_report; <= 0: none
                                 (the template's fd 0 is /dev/null, never a
                                 report fd, so a zeroed spec has none);
                                 fh_child_setup parks it at the lowest
                                 free fd >= 1023 (lower under a soft
                                 RLIMIT_NOFILE below 1025) and stores
                                 that here */
    int          client_fd;   /* the client's connection, or <= 0: the
                                 secondary sends EXITED on it itself
                                 (fh_exit_report); parked beside report_fd.
                                 Only with report_fd */
    int          signals_ready; /* non-zero: fh_reset_signals() already ran
                                   in this process (a pool member does it
                                   while idle); setup skips that step */
    pid_t        client_pid;  /* > 0: take this process's resource limits,
                                 nice value, scheduling policy, CPU affinity,
                                 I/O priority and oom_score_adj where they
                                 differ (spawn.c) */
    const uint32_t *fd_target;  /* where each extra fd lands, increasing
                                   from 3 up; NULL: 3, 4, ... */
    int          inherit_fds; /* the extras are the client's own fds
                                 (FH_LAUNCH_INHERIT_FDS): LISTEN_* pass as
                                 they are, LISTEN_PID=client_pid becomes
                                 this process's pid */
    uint64_t     sig_ignored; /* FH_LAUNCH_SIGBIT: left SIG_IGN */
    uint64_t     sig_blocked; /* the initial signal mask */
};

/*
 * In the child only: move the client's fds to 0/1/2 and their targets
 * (closing the std fds the client did not have), close every other fd,
 * fchdir to the client's cwd, put every signal disposition back to SIG_DFL
 * but the client's ignored ones, set the client's mask, take the client's resource limits, nice value, scheduling policy,
 * CPU affinity, I/O priority and oom_score_adj (client_pid; as far as the
 * kernel allows, spawn.c), set
 * the process title and comm from argv; keep report_fd (parked
 * at a high number, close-on-exec).  0, or -errno (the child
 * then reports and exits 125).  When error is non-NULL a short description
 * of the failing step is stored there.
 */
FH_API int fh_child_setup(struct fh_child_spec *spec, const char **error);

/* Internal: a pool member reads its own process attributes once, so that
 * fh_child_setup compares the client's with them without reading them on
 * the launch's path. */
void fh__attrs_snapshot(void);

/* Internal: fh_child_setup(spec), or on failure one line on the client's
 * stderr (where setup had moved it) and
 * _exit(FH_EXIT_SETUP), flushing and reporting nothing (the parent's
 * waitpid tells the status).  For fh_run_native and a pool member. */
void fh__child_setup_or_exit(struct fh_child_spec *spec);

/*
 * Fork a secondary for a native entry.  The child runs fh_child_setup(),
 * exports LISTEN_FDS/LISTEN_PID when extra fds were passed, loads the
 * entry with fh_entry_load(), calls it, flushes stdio and _exits with its
 * return value; it never returns into the caller.  The parent gets the pid
 * or -1 with errno.
 */
FH_API pid_t fh_spawn_native(struct fh_child_spec *spec,
                             const char *path, const char *symbol);

/*
 * Become the secondary for a native entry in this process (a pre-forked
 * pool member of the template): fh_child_setup(), then as the child of
 * fh_spawn_native().  Never returns.
 */
FH_API __attribute__((noreturn)) void fh_run_native(struct fh_child_spec *spec,
                                                   const char *path,
                                                   const char *symbol);

/*
 * The end of a secondary whose entry returned `code`: flush stdio, close
 * every fd but report_fd and the client's connection (so the client's pipes
 * see EOF now), block all signals, write struct fh_exit_report to
 * report_fd, send the client EXITED when setup was given its connection
 * (client_told says so), and _exit(code).  The client is answered without waiting for the kernel
 * to tear the address space down, and without a hop through the template.
 * report_fd <= 0: flush and _exit only.
 */
FH_API __attribute__((noreturn)) void fh_exit_report(int report_fd, int code);

/* What fh_exit_report writes to report_fd, in one write: the template
 * (template.c) reads it from the member's socketpair. */
struct fh_exit_report {
    int32_t code;            /* the exit status */
    int32_t client_told;     /* non-zero: EXITED goes to the client from
                                the secondary itself, not the template */
};

/*
 * Every signal disposition back to SIG_DFL (glibc's reserved 32/33 keep
 * glibc's handlers) and an empty mask: what a fresh program starts with.
 * fh_child_setup() does it unless spec->signals_ready; a pool member does
 * it ahead of time, while it waits.  0, or -errno.
 */
FH_API int fh_reset_signals(void);

/*
 * Point spec->argv and spec->envp into blob: argc + envc NUL-terminated
 * strings packed back to back, as a LAUNCH body carries them.  The arrays
 * are allocated here (blob must outlive them); fh_spec_release frees them.
 * 0, or -1 with errno (EINVAL: blob does not hold that many strings).
 */
FH_API int fh_spec_strings(struct fh_child_spec *spec, const char *blob,
                           size_t len, unsigned argc, unsigned envc);
FH_API void fh_spec_release(struct fh_child_spec *spec);

/*
 * In the secondary: make spec->envp the process's environment (`environ`),
 * with LISTEN_PID/LISTEN_FDS set when extra fds were passed and dropped
 * otherwise (systemd's socket-activation convention).  0, or -ENOMEM.
 */
FH_API int fh_install_environ(const struct fh_child_spec *spec);

/* Process title (what /proc/PID/cmdline shows, in the area the template
 * measured) and comm, from argv.  fh_child_setup points the kernel's
 * argument and environment areas at copies of argv and the environment
 * instead where it may (prctl PR_SET_MM_MAP), and uses this where not. */
FH_API void fh_set_title(char *area, size_t len, char *const *argv);

/* The cgroup parsers of "The client's cgroup" (spawn.c), exported for
 * their fuzzer (csrc/tests/fuzz_cgroup.c) only.  Both write at most
 * PATH_MAX bytes to out, NUL included.
 * fh__cgroup_path_of: in text (NUL-terminated), the contents of
 * /proc/PID/cgroup, the path of its first "0::PATH" line: 1, or 0 when
 * there is none (no cgroup v2) or it is empty or too long.
 * fh__cgroup2_mount_of: in line, one line of /proc/self/mountinfo
 * (NUL-terminated, no newline), the mount point of a cgroup2 file system
 * whose root is "/", unescaped (\040 is a space): 1, else 0 (also when
 * it would not fit). */
FH_API int fh__cgroup_path_of(const char *text, char *out);
FH_API int fh__cgroup2_mount_of(const char *line, char *out);

#endif /* FORKHOST_SPAWN_H */
