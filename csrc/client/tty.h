/*
 * tty.h - the client's terminal relay (tty.c), called from client.c.
 * Internal to the client: forkhost-run and libforkhost's fh_init.
 */
#ifndef FH_CLIENT_TTY_H
#define FH_CLIENT_TTY_H

#include <poll.h>
#include <stddef.h>
#include <sys/types.h>

/* All of buf to fd, through EINTR; gives up silently on another error
 * (nowhere left to complain).  client.c's, for tty.c's relay too. */
void fh__write_all(int fd, const void *buf, size_t len);

/* How many pollfds fh__tty_poll may add. */
#define FH_TTY_POLLFDS 2

/* Decide whether to relay: 1 relaying, 0 not, -1 when $FORKHOST_TTY is
 * neither 0 nor 1 (the caller says so and exits 125).  Call before the
 * client opens anything else but after it noted its open std fds. */
int fh__tty_prepare(unsigned stdio_mask);
/* What to send in place of std fd k (0..2): the pty's slave or k. */
int fh__tty_fd(int k);
/* The secondary started: the slave is its, the relay begins. */
void fh__tty_started(pid_t secondary);
/* The pollfds the relay waits on (up to FH_TTY_POLLFDS); the count. */
int fh__tty_poll(struct pollfd *p);
/* After poll(): move what is ready. */
void fh__tty_ready(const struct pollfd *p, int n);
/* A signal the client caught: 1 when the relay handled it (SIGWINCH,
 * SIGTSTP, SIGCONT go through the pty and the keeper) and it is not to be
 * forwarded as it is. */
int fh__tty_signal(int sig);
/* Stop the client as the secondary was stopped, terminal restored first. */
void fh__tty_stop(int sig);
/* Relaying (a stop or an exit has the terminal to restore). */
int fh__tty_active(void);
/* The secondary ended: the rest of its output, then the terminal's modes. */
void fh__tty_finish(void);
/* The terminal's modes as they were (any exit path; async-signal-safe). */
void fh__tty_restore(void);

#endif
