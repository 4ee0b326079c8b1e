/*
 * forkhost/member.h - a pre-forked pool member of the template takes a
 * launch straight from template.sock.
 *
 * Idle members wait on the template's listening socket themselves
 * (EPOLLEXCLUSIVE: one is woken per connection), so a launch costs no hop
 * through the template.  A member accepts, checks the peer, receives and
 * validates the LAUNCH in C, and for a native entry becomes the secondary
 * without running a line of Python.  It tells the template what it did on
 * its private socketpair, off the client's path:
 *
 *   TAKEN    it runs a launch; carries a copy of the client's connection
 *            (the template watches it and reports a death by signal) and,
 *            for a Python entry, the client's cwd (the template prepares
 *            its import finder there for the members it forks next);
 *   BUSY     the request has not arrived yet and the member waits for it,
 *            FH_MEMBER_PARK_MS at most (the template stops counting it as
 *            idle);
 *   HANDOFF  anything else: the connection, what was received and its fds
 *            go to the template, which answers as it always has (errors,
 *            INFO, a request that never came); the member waits again.
 *
 * Records on the socketpair use the protocol's header (proto.h) with the
 * internal types below; they never appear on template.sock.
 */
#ifndef FORKHOST_MEMBER_H
#define FORKHOST_MEMBER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "forkhost/hotset.h"
#include "forkhost/proto.h"
#include "forkhost/request.h"
#include "forkhost/spawn.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

enum fh_ctl_type {
    FH_CTL_TAKEN   = 0x11,  /* body: struct fh_taken_msg, the entry, a NUL,
                               argv[0];
                               fds: the client's connection, then for a
                               Python entry the client's cwd */
    FH_CTL_BUSY    = 0x12,  /* no body, no fds */
    FH_CTL_HANDOFF = 0x13,  /* body: struct fh_handoff + the bytes received;
                               fds: the connection, then those received */
};

/* What a member adds to the template's notices eventfd after a notice: 1 for
 * TAKEN and BUSY, which the template may read a little later (while the
 * launch runs), FH_NOTICE_URGENT for HANDOFF, where a connection waits on it.
 * The template tells them apart by the counter's value. */
#define FH_NOTICE_URGENT (1ull << 32)
/* A member that accepted a connection waits this long for the request
 * before it says BUSY (clients send it right after connect()). */
#define FH_MEMBER_BUSY_AFTER_MS 2
/* ... and at most this long in all: then it hands the connection to the
 * template as PENDING (the template waits for the request, within the
 * peer's share of waiting connections) and is idle again, so idle
 * connections cannot park every member. */
#define FH_MEMBER_PARK_MS 50

struct fh_taken_msg {        /* TAKEN's body: this, then "entry\0argv0" */
    uint32_t flags;          /* the LAUNCH's flags (FH_LAUNCH_*) */
    uint32_t latency_us;     /* from accept to this TAKEN (log.h) */
    int64_t  taken_us;       /* CLOCK_MONOTONIC then, in microseconds */
};

struct fh_handoff {          /* 16 bytes, after the header */
    uint32_t mflags;         /* recvmsg's msg_flags (MSG_TRUNC, MSG_CTRUNC) */
    uint32_t received;       /* bytes recvmsg returned (data may be fewer:
                                at most FH_PROTO_MAX_MSG + 1 are kept) */
    uint32_t state;          /* enum fh_handoff_state */
    uint32_t reserved;
};

enum fh_handoff_state {
    FH_HANDOFF_MESSAGE = 0,  /* a record (or EOF: received 0) arrived */
    FH_HANDOFF_PENDING = 1,  /* nothing to read yet (within
                                FH_MEMBER_PARK_MS) */
    FH_HANDOFF_EXPIRED = 2,  /* nothing arrived within the request timeout */
    FH_HANDOFF_PEER    = 3,  /* the peer's uid is not served; not read */
};

/* What fh_member_next() returns (or a negative errno). */
enum fh_member_result {
    FH_MEMBER_HANDOFF = 1,   /* call fh_member_handoff() */
    FH_MEMBER_PYTHON  = 2,   /* a valid LAUNCH of a Python entry, taken:
                                TAKEN and STARTED are sent, this process is
                                the secondary, set up by fh_child_setup();
                                m->run says what to run */
    FH_MEMBER_RETIRED = 3,   /* the template shut its end of the socketpair
                                (a reload's old generation retires, or the
                                template ended) while this member waited:
                                it holds nothing and exits */
};

/* A launch a member took: what it names and the child's setup, decided and
 * prepared in C.  A Python entry's (FH_MEMBER_PYTHON) is everything the
 * interpreter needs. */
struct fh_taken_launch {
    struct fh_entry_target target;   /* what it runs (never ERROR) */
    struct fh_launch_view view;
    struct fh_child_spec spec;   /* for fh_child_setup(); argv and envp
                                    point into the member's buffer */
};

struct fh_member {
    /* in */
    int       listen_fd;     /* template.sock (non-blocking, shared) */
    int       ctl_fd;        /* this member's end of its socketpair */
    int       notice_fd;       /* eventfd the template polls: written after
                                each notice (the socketpair itself is not
                                polled: a socket send wakes its reader
                                "synchronously", onto this CPU, where the
                                template would preempt the launch) */
    unsigned  uid;           /* served: this uid and root */
    int       timeout_ms;    /* for a request that is not there at once */
    char     *title_area;    /* as in struct fh_child_spec */
    size_t    title_len;
    char     *buf;           /* FH_PROTO_MAX_MSG + 1 bytes */
    struct fh_hotset *hot;   /* the template's, or NULL (hotset.h) */
    int       python;        /* Python entries can run here (the template
                                has a Python hook); else they are the
                                template's to refuse */
    int       signals_reset; /* fh_reset_signals() ran in this process */
    int       python_ready;  /* Python's dispositions are set (the
                                member_ready hook ran): right for a Python
                                entry; a native one resets them */
    /* set by fh_member_init */
    int       epoll_fd;
    /* out: the connection being handled */
    int       conn;
    int64_t   accepted_us;   /* CLOCK_MONOTONIC when it was accepted */
    size_t    n;             /* bytes received */
    int       mflags;
    unsigned  state;         /* enum fh_handoff_state */
    int       fds[FH_PROTO_MAX_FDS];
    unsigned  nfds;
    struct fh_taken_launch run;  /* FH_MEMBER_PYTHON */
};

/* The member's epoll set (close-on-exec).  0, or -errno. */
FH_API int fh_member_init(struct fh_member *m);

/*
 * Wait for a client and take it.  On a valid LAUNCH whose entry
 * fh_entry_decide() finds runnable, the member sends TAKEN and STARTED and is the
 * secondary from then on: a native entry never returns (fh_run_native), a
 * Python one returns FH_MEMBER_PYTHON with m->run filled and the process
 * set up (fh_child_setup(&m->run.spec): fds, cwd, umask, title, signals;
 * a failed setup says why on stderr and exits 125).  Anything else is
 * FH_MEMBER_HANDOFF
 * with m->conn and what was received in m; -EINTR when a signal interrupted
 * the wait (nothing taken); another -errno when accept failed.
 */
FH_API int fh_member_next(struct fh_member *m);

/*
 * In a child the template forked for a launch it received itself (no member
 * was idle): m->conn, m->buf, m->n, m->fds and m->nfds hold what it
 * received, already checked and classified as runnable.  Takes it as a
 * member would (TAKEN, STARTED, setup): returns FH_MEMBER_PYTHON with m->run
 * filled for a Python entry, never returns for a native one, and hands the
 * connection back (FH_MEMBER_HANDOFF) if it is no longer runnable.
 */
int fh__member_take_received(struct fh_member *m, pid_t client_pid);

/* Internal, shared by member.c and template.c: one record with its fds
 * (header built here; flags: more sendmsg flags), 0 or -errno; and one
 * record received without waiting (close-on-exec fds, at most maxfds: more
 * is MSG_CTRUNC in *mflags), its length or -errno. */
int fh__send_record(int fd, uint16_t type, const void *a, size_t alen,
                    const void *b, size_t blen, const int *fds, unsigned nfds,
                    int flags);
int fh__recv_record(int fd, void *buf, size_t len, int *fds, unsigned maxfds,
                    unsigned *nfds, int *mflags);

/* Hand m->conn and what was received to the template; closes ours. 0 or
 * -errno (the connection is closed either way). */
FH_API int fh_member_handoff(struct fh_member *m);

/* 1 when the template has shut its end of the socketpair (the member must
 * not accept again), else 0; never waits.  fh_member_next() sees it too,
 * when it wakes for it. */
FH_API int fh_member_retired(const struct fh_member *m);

#endif /* FORKHOST_MEMBER_H */
