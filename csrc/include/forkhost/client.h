/*
 * forkhost/client.h - the client's side of a launch, one implementation
 * for forkhost-run and for fh_init()'s secondary started from a shell
 * (forkhost/init.h), and through cffi for forkhost.init() in Python.
 *
 * csrc/client/client.c is compiled into forkhost-run (on x86_64 Linux
 * without libc, over csrc/client/rt/rt.c) and into libforkhost.  It
 * connects to <runtime>/<prefix>/template.sock, sends one LAUNCH with the
 * entry, argv, this process's environment, umask, cwd, stdio, inheritable
 * fds (or those of extra_fds), ignored signals and signal mask (proto.h),
 * forwards every catchable signal to the secondary while it runs, and exits
 * as the secondary did (docs/cli.md, exit status).
 */
#ifndef FORKHOST_CLIENT_H
#define FORKHOST_CLIENT_H

#include <stdint.h>

#include "forkhost/proto.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* docs/cli.md, exit status: forkhost itself failed. */
#define FH_EXIT_FORKHOST 125

/* Without an option or the environment, wait this long for the template:
 * long enough for a loaded machine, short enough that a wedged template
 * shows up as an error instead of a hang. */
#define FH_CLIENT_CONNECT_TIMEOUT_S 5.0

/* With a terminal relayed (docs/cli.md, "Terminals"), the client wakes its
 * secondary's keeper (csrc/lib/spawn.c, take_terminal) with this signal,
 * the last real-time one, when the shell continues the client: the keeper
 * looks at the client's place on its terminal again, then continues the
 * secondary's process group.  Queued, so a wake-up is never merged away. */
#define FH_TTY_KEEPER_SIGNAL 64

struct fh_client {
    const char  *prog;            /* diagnostics are "prog: text" */
    const char  *prefix;          /* NULL: $FORKHOST_PREFIX, else "forkhost" */
    const char  *prefix_from;     /* where prefix came from, for messages */
    const char  *runtime_dir;     /* NULL: the environment's choice */
    const char  *entry;           /* ENTRY, or MODULE with FH_LAUNCH_MODULE */
    uint32_t     flags;           /* FH_LAUNCH_* */
    const char  *argv0;           /* the secondary's argv[0]; NULL: entry */
    char *const *args;            /* argv[1..] of the secondary */
    int          nargs;
    int          extra_fds[FH_PROTO_MAX_EXTRA_FDS];  /* at 3, 4, ...; none:
                                     every inheritable fd at its number */
    unsigned     nextra;
    int          timeout_given;   /* fh_client_set_timeout ran; else the
                                     environment's, else the default */
    double       timeout_s;       /* as given, for messages */
    int          timeout_ms;      /* -1: wait forever */
    /* A primary is starting (its lock is held): a missing or refusing
     * socket is waited for, up to the timeout, instead of "no primary". */
    int          wait_for_socket;
};

/* Zeroed, with prog.  Without fh_client_set_timeout, fh_client_run takes
 * $FORKHOST_CONNECT_TIMEOUT, else FH_CLIENT_CONNECT_TIMEOUT_S (a bad value
 * in the environment exits 125). */
FH_API void fh_client_init(struct fh_client *c, const char *prog);

/* "inf" or seconds >= 0 into c's timeout; 0, or -1 if s is neither. */
FH_API int fh_client_set_timeout(struct fh_client *c, const char *s);

/* Whether a client whose wait for the template's answer on sock (connected
 * to the template socket at sock_path) ran out should go on waiting: its
 * LAUNCH still lies unread (SIOCOUTQ) and no template runs for the prefix
 * (config.json beside the socket names no live template_pid), so the
 * connection is queued on a socket-activated primary that is still
 * starting (docs/systemd.md): 1.  2: a template runs now, or has read the
 * request, that did not at an earlier call (*seen_starting, 0 before the
 * first call), and gets once more the larger of the timeout and
 * FH_CLIENT_CONNECT_TIMEOUT_S to read and answer it.  0: the timeout
 * holds.  fh_client_run and
 * forkhost.launch both ask it. */
FH_API int fh_client_primary_starting(int sock, const char *sock_path,
                                      int *seen_starting);

/* Launch and exit as the secondary does.  Never returns. */
FH_API __attribute__((noreturn)) void fh_client_run(struct fh_client *c);

/* One line "prog: text" on stderr and exit 125. */
FH_API __attribute__((noreturn, format(printf, 2, 3)))
void fh_client_die(const struct fh_client *c, const char *fmt, ...);

#endif /* FORKHOST_CLIENT_H */
