/*
 * forkhost/template.h - the template: the clean-slate copy of the primary
 * that forks secondaries, all of its loop in C.
 *
 * One epoll loop, single-threaded, over template.sock (while no pool
 * member is idle), client connections, pool members' notices, the pidfds
 * of members and secondaries, and a signalfd.  Pool members take launches
 * themselves (member.h); the template forks them, hears what they took,
 * reports exits and stops, answers errors and INFO, and ends its
 * secondaries when it stops.  Nothing it does per launch runs Python, and
 * what it writes per launch lives in memory its forks do not inherit
 * (MADV_DONTFORK), so a fork costs it no copy-on-write faults there.
 *
 * The same loop serves a Python primary (called through cffi; Python
 * entries are handed to Python through hooks.run_python in the child) and
 * a C program that is its own primary (no hooks: Python entries are
 * refused with 126).
 */
#ifndef FORKHOST_TEMPLATE_H
#define FORKHOST_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "forkhost/log.h"
#include "forkhost/member.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* What the template sends the primary's IPC for each secondary it reaps
 * (one datagram on exit_notice_fd, dropped if it cannot go at once). */
struct fh_template_exit {
    int32_t pid;
    int32_t status;          /* the wait status, as waitpid gives it */
};

/* The loop's timings (milliseconds) and limits; docs/architecture.md
 * says why each is what it is. */
#define FH_TEMPLATE_REQUEST_TIMEOUT_MS 10000u /* connect() to the request */
/* The environment variable that replaces FH_TEMPLATE_REQUEST_TIMEOUT_MS
 * (milliseconds, 1 or more) when the config leaves request_timeout_ms 0:
 * tests set it to see the timeout without waiting for the default; any
 * other value makes the template fail to start, saying so. */
#define FH_TEMPLATE_REQUEST_TIMEOUT_ENV "FORKHOST_REQUEST_TIMEOUT_MS"
#define FH_TEMPLATE_REPLENISH_QUIET_US 2000   /* quiet loop before a refill */
#define FH_TEMPLATE_BACK_TO_BACK_US   10000   /* launches closer: refill now */
#define FH_TEMPLATE_REPLENISH_RETRY_US 100000 /* after a failed member fork */
#define FH_TEMPLATE_NOTICE_DELAY_US      3000   /* TAKEN/BUSY read this late */
#define FH_TEMPLATE_LEARN_FIRST        2u     /* hot set: first launches */
#define FH_TEMPLATE_RELEARN            64u    /* ... and one in every 64 */
#define FH_TEMPLATE_MAX_PENDING        256u   /* connections without request */
#define FH_TEMPLATE_FREEZE_MS          1000   /* stop: members given to stop */
#define FH_TEMPLATE_MAX_PENDING_PEER    16u   /* ... of one process (pid) */
#define FH_TEMPLATE_MAX_PENDING_UID    (FH_TEMPLATE_MAX_PENDING - \
                                        FH_TEMPLATE_MAX_PENDING_PEER)
                                              /* ... of one uid: the other
                                                 uid served (root, or the
                                                 primary's) keeps a share */
#define FH_TEMPLATE_ACCEPT_BATCH       8u     /* accepted per loop round */
#define FH_TEMPLATE_ORPHAN_EXITS     1024u    /* exits kept for an adopter
                                                 while orphaned; later ones
                                                 are dropped (counted) */
#define FH_TEMPLATE_ORPHAN_EXITS_WAIT_MS 10000 /* ... and how long after the
                                                 adoption they are offered
                                                 while the new primary's
                                                 channel is full */
#define FH_TEMPLATE_READ_AHEAD_US      1000000 /* a Python entry is read
                                                  ahead again after this */

/* What the template does when its primary dies (the primary's pidfd
 * fires without a stop first): SURVIVE goes on serving launches, keeps
 * its secondaries, the arena and the runtime files, and waits for a new
 * primary on the prefix to adopt it (FH_MSG_ADOPT, proto.h); STOP ends
 * every secondary as a stop does, each client that asked being told why
 * (FH_MSG_NOTICE). */
#define FH_ON_PRIMARY_DEATH_SURVIVE 0
#define FH_ON_PRIMARY_DEATH_STOP    1

/* Python's part, all optional (NULL in a C primary). */
struct fh_template_hooks {
    /* In a child that took a launch of a Python entry, set up
     * (fh_child_setup done, TAKEN and STARTED sent): run it and exit.
     * Never returns. */
    void (*run_python)(struct fh_taken_launch *run);
    /* In an idle pool member, once, while one of the last 32 launches ran
     * Python and no client waits: the launch-independent part of a Python
     * launch (CPython's after-fork work, Python's signal dispositions),
     * done ahead so that it is not on a launch's path. */
    void (*member_ready)(void);
    /* In the template, after a launch of a Python entry (at most once a
     * FH_TEMPLATE_READ_AHEAD_US per directory and entry): read it ahead
     * for the members forked next.  cwd_fd is the client's cwd. */
    void (*read_ahead)(int cwd_fd, const char *entry, int module_flag);
    /* INFO: more JSON members ("\"k\": v, ..." without braces) into buf;
     * returns the length written (0: none). */
    size_t (*info_extra)(char *buf, size_t size);
};

struct fh_template_config {
    int          listen_fd;      /* template.sock, listening */
    const char  *prefix;
    const char  *socket_path;    /* unlinked at the end while still ours */
    uint64_t     socket_ino;
    pid_t        primary_pid;
    unsigned     max_secondaries;
    unsigned     grace_ms;       /* SIGTERM, then SIGKILL after this */
    unsigned     pool_size;      /* idle members kept ready */
    unsigned     request_timeout_ms;  /* 0: FH_TEMPLATE_REQUEST_TIMEOUT_ENV,
                                         else FH_TEMPLATE_REQUEST_TIMEOUT_MS */
    int          exit_notice_fd; /* struct fh_template_exit per exit, or -1 */
    int          ready_fd;       /* "ok" or an error text, then closed; -1 */
    const int   *keep_fds;       /* more fds the template keeps (the arena;
                                    not exit_notice_fd, which it keeps
                                    itself and replaces on an adoption) */
    unsigned     nkeep;
    char        *title_area;     /* memory /proc/PID/cmdline shows, or NULL */
    size_t       title_len;
    struct fh_template_hooks hooks;
    int          log_level;      /* enum fh_log_level (log.h): lines for
                                    launches, exits and refusals on fd 2
                                    up to it; 0: FH_LOG_DEFAULT */
    int          on_primary_death; /* FH_ON_PRIMARY_DEATH_*: what the
                                    primary's death does (0: survive) */
    const char  *log_root;       /* the runtime directory whose
                                    <prefix>.log fd 2 is reopened on
                                    SIGUSR1 (a --detach primary's), or
                                    NULL: SIGUSR1 is ignored */
    unsigned     generation;     /* 1 for the primary's first template, one
                                    more at each reload (INFO says it) */
};

/*
 * Reload (FH_MSG_RELOAD, proto.h; docs/reliability.md): a template asked
 * by its primary forks the next generation from its loop, at the top of
 * it (no request half-handled).  In that child fh_template_main() returns
 * FH_TEMPLATE_REBORN, having touched nothing of the old loop's tables:
 * the caller makes the new generation (a Python primary imports its
 * preloads afresh), then calls fh_template_main() again with ready_fd =
 * fh_template_reborn()'s fd (where "ok" or the failure's text goes: the
 * old template reads it) and the generation it gives.  The same
 * listening socket, the primary, the exit channel and keep_fds carry
 * over.  The old template, once "ok" came, retires: its idle members
 * leave, it stops accepting (template.sock is the new one's: it is left
 * in place), serves its running secondaries and their clients as before,
 * and exits when the last one has ended.  The launch counters are shared
 * by every generation (one MAP_SHARED mapping, inherited by the reload
 * fork only).
 */
#define FH_TEMPLATE_REBORN 256
/* In the child fh_template_main() returned FH_TEMPLATE_REBORN in: the fd
 * its readiness goes to, and *generation the new generation's number.
 * -1 elsewhere. */
FH_API int fh_template_reborn(unsigned *generation);

/*
 * Become the template, in a child just forked from a single-threaded
 * primary: a session of its own, the primary watched through a pidfd, every fd
 * but the config's and 0-2 closed, stdin and stdout on /dev/null, the pool
 * forked, "ok" on ready_fd; then serve until SIGTERM/SIGINT/SIGHUP (or the
 * primary's death, with FH_ON_PRIMARY_DEATH_STOP), end the secondaries (SIGTERM, SIGKILL after grace_ms)
 * and remove the socket.  Returns the template's exit status (0; 1 when it
 * could not start, said on ready_fd), or FH_TEMPLATE_REBORN in the child
 * a reload forked (above).  No other child returns from it.
 */
FH_API int fh_template_main(const struct fh_template_config *c);

/*
 * For a C primary: check that this process is single-threaded, fork, and
 * run fh_template_main() in the child (which _exits with its status).
 * The primary's pid of the template, or -1 with errno (EBUSY: more than
 * one thread).  Waits for the template's "ok" when c->ready_fd is -1
 * (a pipe is made for it); -1 with errno EIO if it failed to start.  A
 * reload makes a new generation of the same C loop (nothing to import).
 */
FH_API pid_t fh_template_fork(const struct fh_template_config *c);

#endif /* FORKHOST_TEMPLATE_H */
