/*
 * template.c - the template's loop (forkhost/template.h).
 *
 * A connection lives from accept() to its secondary's exit: PENDING until
 * its request arrives, RUNNING while the secondary runs.  Launches are
 * taken by pool members (member.c), straight from template.sock; the
 * template listens itself only while no member is idle, and then answers
 * errors and INFO itself and forks a member for a valid launch on the spot
 * (that child takes the received request as a pool member would, so every
 * launch is a member's TAKEN here).  A member tells the template what it did
 * on its socketpair (TAKEN, BUSY, HANDOFF; member.h); after a TAKEN the same
 * socket carries the secondary's exit report, read when its pidfd fires or
 * when secondaries are counted.
 *
 * State that changes per launch (connections, members, the buffer for
 * members' records) is in mappings marked MADV_DONTFORK: a fork shares
 * none of it, so the template takes no copy-on-write fault there after a
 * fork.  Only the on-demand path's receive buffer and the stack are shared.
 */
#include "forkhost/template.h"
#include "init_internal.h"
#include "spawn_internal.h"
#include "forkhost/arena.h"
#include "forkhost/log.h"
#include "forkhost/member.h"
#include "forkhost/memzone.h"
#include "forkhost/request.h"
#include "forkhost/rundir.h"
#include "forkhost/spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

enum tag { T_SIGNAL = 1, T_LISTEN, T_NOTICES, T_CONN, T_PIDFD, T_MEMBER,
           T_PRIMARY, T_RELOAD };
#define EV(tag, idx) (((uint64_t)(tag) << 32) | (uint32_t)(idx))

enum { C_FREE = 0, C_PENDING, C_RUNNING };

struct conn {
    int      state;
    int      fd;             /* the client's connection, -1 once closed */
    int      registered;     /* fd in the epoll set */
    int64_t  deadline;       /* PENDING: the request is due (µs) */
    int64_t  kill_at;        /* RUNNING: SIGKILL due (client gone), or 0 */
    int64_t  accepted;       /* when it was accepted (or handed over) */
    int64_t  started;
    pid_t    pid;
    int      pidfd;
    int      report_fd;      /* the member's socketpair, -1 once read */
    int      reported;       /* the client has its status */
    int      job_control;    /* FH_LAUNCH_JOBCTL: tell it of stops */
    int      notice;         /* FH_LAUNCH_NOTICE: tell it why we end it */
    pid_t    client_pid;
    int64_t  client_uid;
    char     argv0[256];
};

struct member {
    int      used;
    int      busy;           /* BUSY said, or forked for a launch */
    int      on_demand;      /* forked for a launch the template received */
    pid_t    pid;
    int      pidfd;
    int      ctl_fd;         /* the template's end of the socketpair */
};

struct read_ahead {
    dev_t    dev;
    ino_t    ino;
    int      module;
    int64_t  at;
    char     entry[256];
};
#define READ_AHEAD_SLOTS 32

/* Room for a HANDOFF: header, struct fh_handoff, FH_PROTO_MAX_MSG + 1. */
#define CTL_MAX (FH_PROTO_MAX_MSG + 3 * 4096)

struct tpl {
    const struct fh_template_config *c;
    pid_t    pid;
    uid_t    uid;
    int      ep, sfd, notices, listen_fd, listening;
    int      primary_fd;     /* the primary's pidfd: readable once it died;
                                -1 while orphaned (no primary) */
    pid_t    primary_pid;    /* the primary's (a new one after adoption) */
    int      exit_fd;        /* exit notices (struct fh_template_exit) to the
                                primary; -1 while orphaned: dropped */
    int64_t  orphaned;       /* when the primary died (µs), 0 while it lives */
    /* MADV_DONTFORK: exits while orphaned, for the adopter */
    struct fh_template_exit *orphan_exits;
    unsigned orphan_nexits, orphan_sent;
    unsigned long orphan_dropped;   /* past FH_TEMPLATE_ORPHAN_EXITS */
    int64_t  orphan_retry_at, orphan_give_up_at;   /* µs; 0: none */
    unsigned timeout_ms;
    sigset_t mask;           /* the loop's: stop signals and SIGCHLD */
    /* MADV_DONTFORK: never touched by a child */
    struct conn   *conns;
    struct member *members;
    unsigned cap, conns_hi, members_hi;
    char    *ctl_buf;
    struct read_ahead *ra;
    /* shared with children: what an on-demand child takes */
    char    *rx;
    struct fh_hotset *hot;
    int      stopping, draining;
    struct deferred *deferred, **deferred_tail;   /* FIFO */
    int64_t  stop_deadline, last_activity, last_launch, launch_gap;
    int64_t  fork_failed, notices_due;
    uint64_t notices_pending;
    int      log_level;      /* lines up to it (log.h) */
    struct fh_template_stats *stats;   /* MAP_SHARED, MADV_DONTFORK but
                                          for a reload's fork */
    /* reload (template.h) */
    unsigned generation;
    int      reload_conn;    /* the primary's RELOAD connection, or -1 */
    int      reload_due;     /* fork the next generation at the loop's top */
    int      reload_fd;      /* its readiness pipe (read end), or -1 */
    pid_t    reload_pid;     /* the next generation's template, or 0 */
    char    *reload_text;    /* what it said so far (malloc'd) */
    size_t   reload_len;
    int      retired;        /* the next generation serves; we end with our
                                last secondary */
    int      reborn;         /* in the reload's child: leave the loop */
};

/* A HANDOFF read while secondaries were being counted, kept for the loop:
 * acting on it there would launch in the middle of another request, whose
 * receive buffer the launch reuses. */
struct deferred {
    struct deferred *next;
    size_t   len;
    unsigned nfds;
    int      fds[FH_PROTO_MAX_FDS + 1];
    char     body[];
};

/* A launch the template received itself, for the child it forks. */
struct received {
    int       conn;
    size_t    n;
    int       mflags;
    const int *fds;
    unsigned  nfds;
    pid_t     client_pid;
    int64_t   accepted_us;
};

static struct fh_member g_member;          /* the member, in a child */
/* In the child a reload forked (fh_template_reborn): its readiness fd,
 * generation and the counters it shares with the old generation. */
static int g_reborn_fd = -1;
static unsigned g_reborn_generation;
static struct fh_template_stats *g_reborn_stats;
/* ... and its primary (a new one since the template was adopted: the
 * config names the first) with its exit-notice channel; 0: the config's. */
static pid_t g_reborn_primary_pid;
static int g_reborn_exit_fd = -1;
static char g_member_buf[FH_PROTO_MAX_MSG + 1];

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[1200];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (write(2, line, (size_t)n) < 0) {
        /* nowhere else to say it */
    }
}

/* One log line (log.h) of this level, if the level is logged: nothing is
 * formatted, and no system call made, for a line filtered out. */
static int logged(const struct tpl *t, int level)
{
    return level <= t->log_level;
}

static void log_event(const struct tpl *t, int level, const char *event,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void log_event(const struct tpl *t, int level, const char *event,
                      const char *fmt, ...)
{
    char fields[2048];
    va_list ap;

    if (!logged(t, level))
        return;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
    fh_log_write(2, level, t->c->prefix, event, fields);
}

/* s as a log line's string value; "\"\"" when it does not fit. */
static const char *quoted(char *buf, size_t size, const char *s)
{
    if (fh_log_quote(buf, size, s) < 0)
        snprintf(buf, size, "\"\"");
    return buf;
}

/* Memory no child of the fork inherits (pool members and secondaries
 * start without the template's tables); shared: the counters, which
 * begin_reload lets the next generation inherit (MADV_DOFORK), so that it
 * counts on where the old one counted. */
static void *dontfork_alloc(size_t size, int shared)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   (shared ? MAP_SHARED : MAP_PRIVATE | MAP_NORESERVE) | MAP_ANONYMOUS,
                   -1, 0);

    if (p == MAP_FAILED)
        return NULL;
    madvise(p, size, MADV_DONTFORK);
    return p;
}

static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* ---- records ---------------------------------------------------------- */

/* Never blocking: a client that does not read loses its message, the
 * template does not wait for it. */
static int send_record(int fd, uint16_t type, const void *body, size_t len)
{
    if (fd < 0)
        return -EBADF;
    return fh__send_record(fd, type, body, len, NULL, 0, NULL, 0, MSG_DONTWAIT);
}

static void send_error(int fd, int code, const char *text)
{
    struct {
        int32_t exit_code;
        uint32_t text_len;
        char text[FH_PROTO_MAX_ERROR];
    } e;
    size_t n = strlen(text), i;

    if (n > FH_PROTO_MAX_ERROR)
        n = FH_PROTO_MAX_ERROR;
    e.exit_code = code;
    e.text_len = (uint32_t)n;
    /* One line, unless it is what the entry itself would have written
     * (proto.h, FH_ERROR_ENTRY_MAX). */
    for (i = 0; i < n; i++)
        e.text[i] = text[i] == '\n' && code > FH_ERROR_ENTRY_MAX ? ' '
                                                                : text[i];
    send_record(fd, FH_MSG_ERROR, &e, 8 + n);
}

/* Every refusal: counted, logged (with the client's pid, asked of the
 * socket only then) and answered. */
static void refused(struct tpl *t, int fd, int code, const char *text)
{
    /* relaxed: a counter (log.h) */
    atomic_fetch_add_explicit(&t->stats->refusals, 1, memory_order_relaxed);
    if (logged(t, FH_LOG_INFO)) {
        char q[2 * FH_PROTO_MAX_ERROR + 16];
        struct ucred cred;
        socklen_t len = sizeof cred;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
            cred.pid = 0;
        log_event(t, FH_LOG_INFO, "refusal", "client_pid=%d code=%d reason=%s",
                  (int)cred.pid, code, quoted(q, sizeof q, text));
    }
    send_error(fd, code, text);
}

static void refuse(struct tpl *t, int fd, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse(struct tpl *t, int fd, int code, const char *fmt, ...)
{
    char text[FH_PROTO_MAX_ERROR + 1];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    refused(t, fd, code, text);
}

static void send_exited(int fd, int code, int sig)
{
    int32_t body[2] = { code, sig };

    send_record(fd, FH_MSG_EXITED, body, sizeof body);
}

static void close_fds(const int *fds, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* ---- tables ------------------------------------------------------------ */

static struct conn *conn_new(struct tpl *t, int fd)
{
    unsigned i;

    for (i = 0; i < t->cap; i++) {
        struct conn *c = &t->conns[i];

        if (c->state != C_FREE)
            continue;
        memset(c, 0, sizeof *c);
        c->state = C_PENDING;
        c->fd = fd;
        c->pidfd = -1;
        c->report_fd = -1;
        c->client_uid = -1;
        c->accepted = now_us();
        c->deadline = c->accepted + (int64_t)t->timeout_ms * 1000;
        if (i + 1 > t->conns_hi)
            t->conns_hi = i + 1;
        return c;
    }
    return NULL;
}

static unsigned conn_index(const struct tpl *t, const struct conn *c)
{
    return (unsigned)(c - t->conns);
}

static void conn_free(struct conn *c)
{
    c->state = C_FREE;
}

static void conn_register(struct tpl *t, struct conn *c)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = EV(T_CONN, conn_index(t, c));
    if (epoll_ctl(t->ep, EPOLL_CTL_ADD, c->fd, &ev) == 0)
        c->registered = 1;
}

static void conn_unregister(struct tpl *t, struct conn *c)
{
    if (c->registered && c->fd >= 0)
        epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->registered = 0;
}

/* Close the client's end (it has its status, or is refused). */
static void close_client(struct tpl *t, struct conn *c)
{
    if (c->fd < 0)
        return;
    conn_unregister(t, c);
    close(c->fd);
    c->fd = -1;
}

/* A connection waiting for its request that would be past its peer's
 * share (docs/protocol.md, Limits): why, in text; else NULL.  c, if not
 * NULL, is the connection asked about, already in the table. */
static const char *over_share(const struct tpl *t, const struct conn *c,
                              pid_t pid, int64_t uid, char *text,
                              size_t size)
{
    unsigned i, all = 0, of_pid = 0, of_uid = 0;

    for (i = 0; i < t->conns_hi; i++) {
        const struct conn *o = &t->conns[i];

        if (o->state != C_PENDING || o == c)
            continue;
        all++;
        of_pid += o->client_pid == pid;
        of_uid += o->client_uid == uid;
    }
    if (all >= FH_TEMPLATE_MAX_PENDING)
        snprintf(text, size, "the template is busy: too many connections "
                 "waiting");
    else if (of_pid >= FH_TEMPLATE_MAX_PENDING_PEER)
        snprintf(text, size, "the template is busy: process %d has %u "
                 "connections waiting for their request (the limit is %u "
                 "per process)", (int)pid, of_pid,
                 FH_TEMPLATE_MAX_PENDING_PEER);
    else if (of_uid >= FH_TEMPLATE_MAX_PENDING_UID)
        snprintf(text, size, "the template is busy: uid %lld has %u "
                 "connections waiting for their request (the limit is %u "
                 "per uid)", (long long)uid, of_uid,
                 FH_TEMPLATE_MAX_PENDING_UID);
    else
        return NULL;
    return text;
}

static struct conn *running_pid(struct tpl *t, pid_t pid)
{
    unsigned i;

    for (i = 0; i < t->conns_hi; i++)
        if (t->conns[i].state == C_RUNNING && t->conns[i].pid == pid)
            return &t->conns[i];
    return NULL;
}

static unsigned count_members(const struct tpl *t, int idle_only)
{
    unsigned i, n = 0;

    for (i = 0; i < t->members_hi; i++)
        n += t->members[i].used && (!idle_only || !t->members[i].busy);
    return n;
}

/* A connection in state (C_PENDING, C_RUNNING) exists. */
static int any_conn(const struct tpl *t, int state)
{
    unsigned i;

    for (i = 0; i < t->conns_hi; i++)
        if (t->conns[i].state == state)
            return 1;
    return 0;
}

/* ---- listening --------------------------------------------------------- */

/* Accept on template.sock ourselves only while no member is idle:
 * otherwise the idle members take every connection. */
static void update_listening(struct tpl *t)
{
    int want = !t->stopping && !t->retired && t->listen_fd >= 0 &&
               count_members(t, 1) == 0;
    struct epoll_event ev;

    if (want && !t->listening) {
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.u64 = EV(T_LISTEN, 0);
        epoll_ctl(t->ep, EPOLL_CTL_ADD, t->listen_fd, &ev);
    } else if (!want && t->listening) {
        epoll_ctl(t->ep, EPOLL_CTL_DEL, t->listen_fd, NULL);
    }
    t->listening = want;
}

static void close_listener(struct tpl *t)
{
    const struct fh_template_config *c = t->c;
    struct stat st;

    if (t->listen_fd < 0)
        return;
    if (t->listening)
        epoll_ctl(t->ep, EPOLL_CTL_DEL, t->listen_fd, NULL);
    t->listening = 0;
    close(t->listen_fd);
    t->listen_fd = -1;
    /* Only if it is still ours: a new primary may have bound a fresh one. */
    if (c->socket_path != NULL && stat(c->socket_path, &st) == 0 &&
        (uint64_t)st.st_ino == c->socket_ino)
        unlink(c->socket_path);
}

/* ---- members: the child's side ------------------------------------------ */

static int client_waiting(int listen_fd)
{
    struct pollfd p;

    p.fd = listen_fd;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, 0) > 0;
}

/* Close every fd from 3 up but those in keep (sorted, unique). */
static void close_all_but(const int *keep, unsigned n)
{
    unsigned lo = 3, i;

    for (i = 0; i < n; i++) {
        if (keep[i] < (int)lo)
            continue;
        if ((unsigned)keep[i] > lo)
            syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
        lo = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, lo, ~0u, 0);
}

static void sort_ints(int *a, unsigned n)
{
    unsigned i, j;

    for (i = 1; i < n; i++)
        for (j = i; j > 0 && a[j - 1] > a[j]; j--) {
            int x = a[j];

            a[j] = a[j - 1];
            a[j - 1] = x;
        }
}

/* A template's fds, all others closed: the config's listening socket and
 * keep_fds, the exit channel exit_fd, and own[0..1] (-1: none). */
static void close_inherited(const struct fh_template_config *c, int exit_fd,
                            int own0, int own1)
{
    int keep[4 + 64];
    unsigned nkeep = 0, i;

    keep[nkeep++] = c->listen_fd;
    if (exit_fd >= 0)
        keep[nkeep++] = exit_fd;
    if (own0 >= 0)
        keep[nkeep++] = own0;
    if (own1 >= 0)
        keep[nkeep++] = own1;
    for (i = 0; i < c->nkeep && nkeep < sizeof keep / sizeof keep[0]; i++)
        if (c->keep_fds[i] >= 0)
            keep[nkeep++] = c->keep_fds[i];
    sort_ints(keep, nkeep);
    close_all_but(keep, nkeep);
}

static __attribute__((noreturn)) void run_taken(struct tpl *t,
                                                struct fh_member *m)
{
    /* A Python entry, set up: Python runs it and exits. */
    if (t->c->hooks.run_python != NULL)
        t->c->hooks.run_python(&m->run);
    fh_exit_report(m->ctl_fd, FH_EXIT_SETUP);
}

/* The child of a member fork: serve launches from template.sock until
 * one is taken.  With r: first take the launch the template received. */
static __attribute__((noreturn)) void member_child(struct tpl *t, int ctl,
                                                   const struct received *r)
{
    struct fh_member *m = &g_member;
    char title[300];
    char *argv[2] = { title, NULL };
    int keep[3];
    int rc;

    memset(m, 0, sizeof *m);
    m->listen_fd = t->listen_fd;
    m->ctl_fd = ctl;
    m->notice_fd = t->notices;
    m->uid = t->uid;
    m->timeout_ms = (int)t->timeout_ms;
    m->title_area = t->c->title_area;
    m->title_len = t->c->title_len;
    m->hot = t->hot;
    m->python = t->c->hooks.run_python != NULL;
    m->conn = -1;
    if (r != NULL) {
        /* Every signal is blocked (the fork site did it); the setup of
         * the secondary resets them all. */
        m->buf = t->rx;
        m->conn = r->conn;
        m->n = r->n;
        m->mflags = r->mflags;
        memcpy(m->fds, r->fds, r->nfds * sizeof(int));
        m->nfds = r->nfds;
        m->state = FH_HANDOFF_MESSAGE;
        m->accepted_us = r->accepted_us;
        rc = fh__member_take_received(m, r->client_pid);
        if (rc == FH_MEMBER_PYTHON)
            run_taken(t, m);
        /* No longer runnable (the file changed meanwhile): the template
         * answers it, and this child serves as a pool member (unless the
         * template has retired: a reload's new generation serves). */
        fh_member_handoff(m);
        if (t->retired)
            _exit(0);
    }
    /* Dispositions and mask as a fresh program has them, while waiting. */
    if (fh_reset_signals() < 0)
        _exit(FH_EXIT_SETUP);
    m->signals_reset = 1;
    prctl(PR_SET_PDEATHSIG, (unsigned long)SIGKILL, 0UL, 0UL, 0UL);
    if (getppid() != t->pid)
        _exit(0);                       /* the template died meanwhile */
    keep[0] = ctl;
    keep[1] = m->listen_fd;
    keep[2] = m->notice_fd;
    sort_ints(keep, 3);
    close_all_but(keep, 3);
    snprintf(title, sizeof title, "forkhost pool [%s]", t->c->prefix);
    fh_set_title(m->title_area, m->title_len, argv);
    m->buf = g_member_buf;
    if (fh_member_init(m) < 0)
        _exit(FH_EXIT_SETUP);
    /* Copy-on-write ahead of time, and Python's launch-independent part
     * while Python entries are launched, unless a client already waits:
     * then it would only put that work on the launch's path. */
    if (!client_waiting(m->listen_fd)) {
        fh_member_prefault();
        /* relaxed: a hint the template writes (fh_hotset_note). */
        if (t->c->hooks.member_ready != NULL && t->hot != NULL &&
            atomic_load_explicit(&t->hot->python, memory_order_relaxed) != 0 &&
            !client_waiting(m->listen_fd)) {
            t->c->hooks.member_ready();
            m->python_ready = 1;
        }
    }
    for (;;) {
        rc = fh_member_next(m);        /* a native launch never returns */
        if (rc == FH_MEMBER_PYTHON)
            run_taken(t, m);
        else if (rc == FH_MEMBER_HANDOFF) {
            fh_member_handoff(m);
            if (fh_member_retired(m))    /* before it accepts again */
                _exit(0);
        } else if (rc == FH_MEMBER_RETIRED)
            _exit(0);
        else if (rc != -EINTR) {
            /* accept failed (EMFILE and friends): say so, let it pass. */
            say("forkhost pool member: accept: %s", strerror(-rc));
            usleep(10000);
        }
    }
}

/* ---- members: the template's side -------------------------------------- */

/* Fork a member (r: to take that received launch first).  0, or -errno. */
static int add_member(struct tpl *t, const struct received *r)
{
    struct member *mb = NULL;
    struct epoll_event ev;
    sigset_t all, old;
    int sp[2], pidfd, e;
    unsigned i;
    pid_t pid;

    for (i = 0; i < t->cap; i++)
        if (!t->members[i].used) {
            mb = &t->members[i];
            break;
        }
    if (mb == NULL)
        return -EAGAIN;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0)
        return -errno;
    /* Every signal stays blocked across the fork: a client may signal the
     * child the moment it has the pid, and until the child has reset its
     * dispositions nothing of the template's may run there. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid == 0) {
        close(sp[0]);
        member_child(t, sp[1], r);          /* never returns */
    }
    e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(sp[1]);
    if (pid < 0) {
        close(sp[0]);
        return -e;
    }
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);   /* close-on-exec */
    if (pidfd < 0) {
        e = errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(sp[0]);
        return -e;
    }
    memset(mb, 0, sizeof *mb);
    mb->used = 1;
    mb->busy = r != NULL;
    mb->on_demand = r != NULL;
    mb->pid = pid;
    mb->pidfd = pidfd;
    mb->ctl_fd = sp[0];
    i = (unsigned)(mb - t->members);
    if (i + 1 > t->members_hi)
        t->members_hi = i + 1;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = EV(T_MEMBER, i);
    epoll_ctl(t->ep, EPOLL_CTL_ADD, pidfd, &ev);
    update_listening(t);
    return 0;
}

static void add_pool_member(struct tpl *t)
{
    int rc = add_member(t, NULL);

    if (rc < 0) {
        /* Said once per run of failures, not at every retry. */
        if (t->fork_failed == 0)
            say("forkhost template: cannot fork a pool member: %s "
                "(retrying every %g s)", strerror(-rc),
                FH_TEMPLATE_REPLENISH_RETRY_US / 1e6);
        t->fork_failed = now_us();
        return;
    }
    if (t->fork_failed != 0)
        say("forkhost template: pool members fork again");
    t->fork_failed = 0;
}

static void started_secondary(struct tpl *t, int pool, uint32_t latency_us)
{
    int64_t now = now_us();

    fh_stats_launch(t->stats, latency_us);
    /* relaxed: a counter (log.h) */
    atomic_fetch_add_explicit(&t->stats->pool_launches, (uint64_t)pool,
                              memory_order_relaxed);
    t->launch_gap = now - t->last_launch;
    t->last_launch = t->last_activity = now;
}

static void check_peer(struct conn *c)
{
    struct ucred cred;
    socklen_t len = sizeof cred;

    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        c->client_pid = cred.pid;
        c->client_uid = cred.uid;
    }
}

/* Read ahead for a Python entry (hooks.read_ahead), at most once in
 * FH_TEMPLATE_READ_AHEAD_US per directory and entry. */
static void read_ahead(struct tpl *t, int cwd_fd, const char *entry,
                       int module)
{
    struct read_ahead *slot = NULL, *oldest = &t->ra[0];
    int64_t now = now_us();
    struct stat st;
    unsigned i;

    if (t->c->hooks.read_ahead == NULL || fstat(cwd_fd, &st) < 0 ||
        strlen(entry) >= sizeof slot->entry)
        return;
    for (i = 0; i < READ_AHEAD_SLOTS; i++) {
        struct read_ahead *s = &t->ra[i];

        if (s->at != 0 && s->dev == st.st_dev && s->ino == st.st_ino &&
            s->module == module && strcmp(s->entry, entry) == 0) {
            slot = s;
            break;
        }
        if (s->at < oldest->at)
            oldest = s;
    }
    if (slot != NULL && now - slot->at < FH_TEMPLATE_READ_AHEAD_US)
        return;
    if (slot == NULL) {
        slot = oldest;
        slot->dev = st.st_dev;
        slot->ino = st.st_ino;
        slot->module = module;
        strcpy(slot->entry, entry);
    }
    slot->at = now;
    t->c->hooks.read_ahead(cwd_fd, entry, module);
}

static void handle_received(struct tpl *t, struct conn *c, const char *buf,
                            size_t n, int mflags, int *fds, unsigned nfds);
static void settle(struct tpl *t, struct conn *c);

static void took(struct tpl *t, struct member *mb, const char *body,
                 size_t len, int *fds, unsigned nfds)
{
    struct epoll_event ev;
    struct conn *c;
    struct fh_taken_msg tk;
    const char *entry, *argv0, *end = body + len;
    int cwd_fd = nfds == 2 ? fds[1] : -1;

    if (t->hot != NULL) {
        if ((t->stats->launches + 1) % FH_TEMPLATE_RELEARN == 0)
            fh_hotset_arm(t->hot, 1);
        fh_hotset_note(t->hot, nfds == 2);
    }
    memcpy(&tk, body, sizeof tk);
    entry = body + sizeof tk;
    argv0 = memchr(entry, '\0', (size_t)(end - entry));
    argv0 = argv0 != NULL ? argv0 + 1 : end;
    c = conn_new(t, fds[0]);
    if (c == NULL) {                  /* cannot happen below capacity */
        say("forkhost template: no room for the launch of pool member %d",
            (int)mb->pid);
        close_fds(fds, nfds);
        kill(mb->pid, SIGKILL);
        return;
    }
    check_peer(c);                    /* for ps; the member checked it */
    c->state = C_RUNNING;
    c->pid = mb->pid;
    c->pidfd = mb->pidfd;
    c->report_fd = mb->ctl_fd;
    c->job_control = (tk.flags & FH_LAUNCH_JOBCTL) != 0;
    c->notice = (tk.flags & FH_LAUNCH_NOTICE) != 0;
    c->started = tk.taken_us != 0 ? tk.taken_us : now_us();
    snprintf(c->argv0, sizeof c->argv0, "%.*s",
             (int)strnlen(argv0, (size_t)(end - argv0)), argv0);
    if (logged(t, FH_LOG_DEBUG) && memchr(entry, '\0', (size_t)(end - entry))) {
        char e[600], qe[1300], qa[600];

        snprintf(e, sizeof e, "%s%s", tk.flags & FH_LAUNCH_MODULE ? "-m " : "",
                 entry);
        log_event(t, FH_LOG_DEBUG, "launch", "pid=%d client_pid=%d entry=%s "
                  "argv0=%s latency=%.6f", (int)c->pid, (int)c->client_pid,
                  quoted(qe, sizeof qe, e), quoted(qa, sizeof qa, c->argv0),
                  tk.latency_us / 1e6);
    }
    /* Its pidfd stays registered and now means this launch. */
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = EV(T_PIDFD, conn_index(t, c));
    epoll_ctl(t->ep, EPOLL_CTL_MOD, c->pidfd, &ev);
    mb->used = 0;
    conn_register(t, c);
    started_secondary(t, !mb->on_demand, tk.latency_us);
    if (cwd_fd >= 0) {                /* a Python entry */
        if (memchr(entry, '\0', (size_t)(end - entry)) != NULL)
            read_ahead(t, cwd_fd, entry, (tk.flags & FH_LAUNCH_MODULE) != 0);
        close(cwd_fd);
    }
}

/* A connection a member handed over, with what it received. */
static void handoff(struct tpl *t, const char *body, size_t len, int *fds,
                    unsigned nfds)
{
    struct fh_handoff h;
    const char *data = body + sizeof h;
    size_t have = len - sizeof h;
    struct conn *c;
    const char *why = NULL;
    char text[FH_PROTO_MAX_ERROR + 1];

    memcpy(&h, body, sizeof h);
    c = conn_new(t, fds[0]);
    if (c == NULL) {
        refuse(t, fds[0], 125,
               "the template is busy: too many connections waiting");
        close_fds(fds, nfds);
        return;
    }
    check_peer(c);
    if (c->client_uid < 0) {
        snprintf(text, sizeof text, "cannot identify the client: %s",
                 strerror(errno));
        why = text;
    } else if (c->client_uid != 0 && c->client_uid != (int64_t)t->uid) {
        refuse(t, c->fd, 125, "permission denied: uid %lld may not use the "
               "template of prefix '%s' (only uid %u and root)",
               (long long)c->client_uid, t->c->prefix, (unsigned)t->uid);
        goto drop;
    } else if (h.state == FH_HANDOFF_EXPIRED) {
        snprintf(text, sizeof text, "no request within %gs",
                 t->timeout_ms / 1000.0);
        why = text;
    } else if (h.state == FH_HANDOFF_PENDING) {
        why = over_share(t, c, c->client_pid, c->client_uid, text,
                         sizeof text);
    }
    if (why != NULL) {
        refuse(t, c->fd, 125, "%s", why);
        goto drop;
    }
    if (h.state == FH_HANDOFF_PENDING) {
        close_fds(fds + 1, nfds - 1);
        conn_register(t, c);
        return;
    }
    /* A launch forked from here reads the request from t->rx. */
    if (have > FH_PROTO_MAX_MSG + 1)
        have = FH_PROTO_MAX_MSG + 1;
    memcpy(t->rx, data, have);
    handle_received(t, c, t->rx, h.received, (int)h.mflags, fds + 1,
                    nfds - 1);
    settle(t, c);
    return;
drop:
    close_fds(fds + 1, nfds - 1);
    close(c->fd);
    conn_free(c);
}

static void defer_handoff(struct tpl *t, const char *body, size_t len,
                          const int *fds, unsigned nfds)
{
    struct deferred *d = malloc(sizeof *d + len);

    if (d == NULL) {                  /* the client gets EOF */
        say("forkhost template: no memory to keep a handed-over connection");
        close_fds(fds, nfds);
        return;
    }
    d->next = NULL;
    d->len = len;
    d->nfds = nfds;
    memcpy(d->fds, fds, nfds * sizeof(int));
    memcpy(d->body, body, len);
    *t->deferred_tail = d;
    t->deferred_tail = &d->next;
}

/* The HANDOFFs deferred while counting, in order. */
static void run_deferred(struct tpl *t)
{
    while (t->deferred != NULL) {
        struct deferred *d = t->deferred;

        t->deferred = d->next;
        if (t->deferred == NULL)
            t->deferred_tail = &t->deferred;
        handoff(t, d->body, d->len, d->fds, d->nfds);
        free(d);
    }
}

/* One notice from a member that has not taken a launch; 0 when there was
 * none (nothing, or EOF: it is exiting, its pidfd says when). */
static int member_msg(struct tpl *t, struct member *mb)
{
    int fds[FH_PROTO_MAX_FDS + 1];
    unsigned nfds;
    struct fh_msg_hdr h;
    int n, mflags;

    n = fh__recv_record(mb->ctl_fd, t->ctl_buf, CTL_MAX + 1, fds,
                        FH_PROTO_MAX_FDS + 1, &nfds, &mflags);
    if (n <= 0)
        return 0;
    t->last_activity = now_us();
    memset(&h, 0, sizeof h);
    if ((size_t)n >= sizeof h)
        memcpy(&h, t->ctl_buf, sizeof h);
    if ((size_t)n < sizeof h || h.magic != FH_PROTO_MAGIC ||
        h.len != (size_t)n || h.nfds != nfds ||
        (mflags & (MSG_TRUNC | MSG_CTRUNC))) {
        h.type = 0;
    }
    if (h.type == FH_CTL_TAKEN && (nfds == 1 || nfds == 2) &&
        (size_t)n >= sizeof h + sizeof(struct fh_taken_msg)) {
        took(t, mb, t->ctl_buf + sizeof h, (size_t)n - sizeof h, fds, nfds);
    } else if (h.type == FH_CTL_BUSY) {
        mb->busy = 1;
        close_fds(fds, nfds);
    } else if (h.type == FH_CTL_HANDOFF && nfds >= 1 &&
               (size_t)n >= sizeof h + sizeof(struct fh_handoff)) {
        mb->busy = 0;
        if (t->draining)
            defer_handoff(t, t->ctl_buf + sizeof h, (size_t)n - sizeof h,
                          fds, nfds);
        else
            handoff(t, t->ctl_buf + sizeof h, (size_t)n - sizeof h, fds,
                    nfds);
    } else {
        close_fds(fds, nfds);
        say("forkhost template: unexpected record 0x%02x from pool member %d",
            h.type, (int)mb->pid);
    }
    update_listening(t);
    return 1;
}

static void drain_member(struct tpl *t, unsigned i)
{
    while (t->members[i].used && member_msg(t, &t->members[i]))
        ;
}

/* Members wrote notices: read them all. */
static void read_notices(struct tpl *t)
{
    uint64_t v;
    unsigned i;

    t->notices_due = 0;
    t->notices_pending = 0;
    if (read(t->notices, &v, sizeof v) < 0) {
        /* EAGAIN: nothing new since */
    }
    for (i = 0; i < t->members_hi; i++)
        drain_member(t, i);
}

/* A TAKEN or a BUSY comes while a launch is under way: read it
 * FH_TEMPLATE_NOTICE_DELAY_US later.  At once: a HANDOFF (a connection
 * waits), or notices that may have taken the last idle member. */
static void notices_arrived(struct tpl *t)
{
    uint64_t v;

    if (read(t->notices, &v, sizeof v) != (ssize_t)sizeof v)
        return;
    t->notices_pending += v;
    if (t->notices_pending >= FH_NOTICE_URGENT ||
        count_members(t, 1) <= t->notices_pending)
        read_notices(t);
    else if (t->notices_due == 0)
        t->notices_due = now_us() + FH_TEMPLATE_NOTICE_DELAY_US;
}

/* ---- secondaries -------------------------------------------------------- */

/* The secondary's own report, written just before its _exit.  1 when the
 * report channel is finished. */
static int read_report(struct conn *c)
{
    struct fh_exit_report rep[2];     /* room to tell a longer one */
    ssize_t n = recv(c->report_fd, rep, sizeof rep, MSG_DONTWAIT);

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n == (ssize_t)sizeof rep[0] && !c->reported) {
        c->reported = 1;
        if (!rep[0].client_told)
            send_exited(c->fd, rep[0].code & 0xFF, 0);
    }
    return 1;
}

static void report(struct tpl *t, struct conn *c)
{
    t->last_activity = now_us();
    if (c->report_fd < 0 || !read_report(c))
        return;
    close(c->report_fd);
    c->report_fd = -1;
    if (c->reported)
        close_client(t, c);     /* the client has its status */
}

/* One exit notice to the primary: 0, or -1 with errno (EAGAIN: its
 * channel is full). */
static int send_exit(int fd, const struct fh_template_exit *e)
{
    if (send(fd, e, sizeof *e, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)sizeof *e)
        return 0;
    if (errno == ENOTSOCK && write(fd, e, sizeof *e) == (ssize_t)sizeof *e)
        return 0;
    return -1;
}

/* The exits kept while orphaned, to the primary that adopted us, in order,
 * as far as its channel takes them now; the rest at orphan_retry_at
 * (serve()), until FH_TEMPLATE_ORPHAN_EXITS_WAIT_MS after the adoption.
 * An adopter that sent no channel has nowhere to hear them: dropped (kept
 * on, later exits would pile up behind them for nobody). */
static void flush_orphan_exits(struct tpl *t)
{
    if (t->exit_fd < 0 && t->orphaned)
        return;                            /* still orphaned: kept */
    while (t->exit_fd >= 0 && t->orphan_sent < t->orphan_nexits) {
        if (send_exit(t->exit_fd, &t->orphan_exits[t->orphan_sent]) < 0) {
            int64_t now = now_us();

            if ((errno == EAGAIN || errno == EWOULDBLOCK) &&
                now < t->orphan_give_up_at) {
                t->orphan_retry_at = now + 20 * 1000;
                return;
            }
            break;                         /* not read: dropped */
        }
        t->orphan_sent++;
    }
    t->orphan_nexits = t->orphan_sent = 0;
    t->orphan_retry_at = 0;
}

static void notify_exit(struct tpl *t, pid_t pid, int status)
{
    struct fh_template_exit e = { (int32_t)pid, (int32_t)status };
    int fd = t->exit_fd;

    /* Orphaned, or the gap's exits not all sent yet: kept, in order. */
    if ((fd < 0 && t->orphaned) || t->orphan_nexits > 0) {
        if (t->orphan_nexits < FH_TEMPLATE_ORPHAN_EXITS)
            t->orphan_exits[t->orphan_nexits++] = e;
        else
            t->orphan_dropped++;
        flush_orphan_exits(t);
        return;
    }
    if (fd < 0)
        return;
    if (send_exit(fd, &e) < 0) {
        /* dropped: the primary is not reading */
    }
}

static void reap(struct tpl *t, struct conn *c)
{
    int status = 0;
    pid_t r = waitpid(c->pid, &status, WNOHANG);

    if (r == 0)
        return;
    if (r < 0)
        status = 0;
    if (c->report_fd >= 0)
        report(t, c);                  /* written before it exited, if at all */
    if (!c->reported) {
        c->reported = 1;
        if (WIFSIGNALED(status))
            send_exited(c->fd, 0, WTERMSIG(status));
        else
            send_exited(c->fd, WEXITSTATUS(status), 0);
    }
    /* IPC: the primary broadcasts every exit (docs/ipc.md). */
    notify_exit(t, c->pid, status);
    fh_stats_exit(t->stats, status);
    if (logged(t, FH_LOG_DEBUG)) {
        double ran = (now_us() - c->started) / 1e6;
        char sig[32];

        if (WIFSIGNALED(status))
            log_event(t, FH_LOG_DEBUG, "exit", "pid=%d client_pid=%d "
                      "signal=%s duration=%.6f", (int)c->pid,
                      (int)c->client_pid,
                      fh_log_signal_name(WTERMSIG(status), sig, sizeof sig),
                      ran);
        else
            log_event(t, FH_LOG_DEBUG, "exit", "pid=%d client_pid=%d "
                      "status=%d duration=%.6f", (int)c->pid,
                      (int)c->client_pid, WEXITSTATUS(status), ran);
    }
    epoll_ctl(t->ep, EPOLL_CTL_DEL, c->pidfd, NULL);
    close(c->pidfd);
    if (c->report_fd >= 0)
        close(c->report_fd);
    close_client(t, c);
    conn_free(c);
    t->last_activity = now_us();
}

/* A member's pidfd fired: read what it said before it died (it may have
 * taken a launch, and even finished it), then reap it. */
static void member_exited(struct tpl *t, unsigned i)
{
    struct member *mb = &t->members[i];
    unsigned j;

    drain_member(t, i);
    if (!mb->used) {                  /* it took a launch: a secondary now */
        for (j = 0; j < t->conns_hi; j++)
            if (t->conns[j].state == C_RUNNING &&
                t->conns[j].pidfd == mb->pidfd) {
                reap(t, &t->conns[j]);
                break;
            }
        return;
    }
    /* A stale event (the slot was given to a new member in this round):
     * that one has not exited. */
    if (waitpid(mb->pid, NULL, WNOHANG) == 0)
        return;
    mb->used = 0;
    epoll_ctl(t->ep, EPOLL_CTL_DEL, mb->pidfd, NULL);
    close(mb->pidfd);
    close(mb->ctl_fd);
    update_listening(t);
}

/* Secondaries whose exit has not been reported.  Members' notices and
 * queued reports are read first: a client that has its status never finds
 * its next launch refused for capacity. */
static unsigned running_count(struct tpl *t)
{
    unsigned i, n = 0;

    if (!t->draining) {
        t->draining = 1;           /* HANDOFFs read here wait (deferred) */
        for (i = 0; i < t->members_hi; i++)
            drain_member(t, i);
        t->draining = 0;
    }
    for (i = 0; i < t->conns_hi; i++) {
        struct conn *c = &t->conns[i];

        if (c->state != C_RUNNING)
            continue;
        if (c->report_fd >= 0)
            report(t, c);
        n += !c->reported;
    }
    return n;
}

static void signal_secondary(struct conn *c, int sig)
{
    syscall(SYS_pidfd_send_signal, c->pidfd, sig, NULL, 0);
}

/* The client closed its end while its secondary runs: SIGTERM now, SIGKILL
 * after the grace period. */
static void client_gone(struct tpl *t, struct conn *c)
{
    if (c->state != C_RUNNING || c->kill_at != 0 || c->reported)
        return;
    signal_secondary(c, SIGTERM);
    c->kill_at = now_us() + (int64_t)t->c->grace_ms * 1000;
}

/* Tell the clients whose secondaries a signal stopped (a shell's job stops
 * with its program).  Exits stay for the pidfds. */
static void children_stopped(struct tpl *t)
{
    /* The new generation is our child until we end: reaped here if it
     * ends first (the primary watches it through a pidfd). */
    if (t->retired && t->reload_pid > 0 &&
        waitpid(t->reload_pid, NULL, WNOHANG) == t->reload_pid)
        t->reload_pid = 0;
    for (;;) {
        siginfo_t si;
        struct conn *c;

        memset(&si, 0, sizeof si);
        if (waitid(P_ALL, 0, &si, WSTOPPED | WNOHANG) < 0 || si.si_pid == 0)
            return;
        c = running_pid(t, si.si_pid);
        if (c == NULL) {
            read_notices(t);              /* a member's TAKEN not read yet? */
            c = running_pid(t, si.si_pid);
        }
        if (c != NULL && c->job_control && !c->reported) {
            int32_t body[2] = { si.si_status, 0 };

            send_record(c->fd, FH_MSG_STOPPED, body, sizeof body);
        }
    }
}

/* ---- requests ------------------------------------------------------------ */

static size_t info_json(struct tpl *t, char *out, size_t size);
static void adopt(struct tpl *t, struct conn *c, int *fds, unsigned nfds);
static int add_fd(int ep, int fd, unsigned tag);
static void reload_request(struct tpl *t, struct conn *c);

/* A valid LAUNCH the template received itself (no member was idle).  The
 * record lies in t->rx, where the child forked for it reads it. */
static void launch(struct tpl *t, struct conn *c, size_t n, int mflags,
                   const struct fh_launch_view *v, int *fds, unsigned nfds)
{
    struct fh_entry_target target;
    struct received r;
    int rc;

    if (t->stopping) {
        refuse(t, c->fd, 125, "the primary of prefix '%s' is stopping",
               t->c->prefix);
        return;
    }
    /* Members count: each may take a launch without asking. */
    if (running_count(t) + count_members(t, 0) >= t->c->max_secondaries) {
        refuse(t, c->fd, 125, "too many secondaries: the template of prefix "
               "'%s' runs its limit of %u (--max-secondaries)", t->c->prefix,
               t->c->max_secondaries);
        return;
    }
    /* The one check a pool member makes too (request.h): the cwd fd, the
     * entry, a Python entry's stdio. */
    if (fh_launch_decide(v, fds, nfds, &target) == FH_ENTRY_ERROR) {
        refused(t, c->fd, target.exit_code, target.message);
        return;
    }
    if (target.kind != FH_ENTRY_NATIVE && t->c->hooks.run_python == NULL) {
        refuse(t, c->fd, 126, "entry '%s' is a Python entry, and this primary "
               "runs no Python (a C primary serves native entries)", v->entry);
        return;
    }
    r.conn = c->fd;
    r.n = n;
    r.mflags = mflags;
    r.fds = fds;
    r.nfds = nfds;
    r.client_pid = c->client_pid;
    r.accepted_us = c->accepted;
    rc = add_member(t, &r);
    if (rc < 0)
        refuse(t, c->fd, 125, "cannot fork the secondary: %s", strerror(-rc));
}

/* Act on a received (or handed-over) record; the connection is answered
 * (or given to a child) when this returns.  Closes fds. */
static void handle_received(struct tpl *t, struct conn *c, const char *buf,
                            size_t n, int mflags, int *fds, unsigned nfds)
{
    struct fh_launch_view v;
    struct fh_req_result why;
    char text[FH_PROTO_MAX_ERROR + 1];
    int type = fh_request_check(buf, n, mflags, nfds, &v, &why);

    if (type < 0) {
        fh_request_message(&why, text, sizeof text);
        refuse(t, c->fd, 125, "%s", text);
    } else if (type == FH_MSG_INFO) {
        size_t cap = 1u << 20, len;
        char *json = malloc(cap);

        if (json != NULL) {
            len = info_json(t, json, cap);
            send_record(c->fd, FH_MSG_INFO_REPLY, json, len);
            free(json);
        }
    } else if (type == FH_MSG_LAUNCH) {
        launch(t, c, n, mflags, &v, fds, nfds);
    } else if (type == FH_MSG_RELOAD) {
        reload_request(t, c);
    } else if (type == FH_MSG_ADOPT) {
        adopt(t, c, fds, nfds);
    }
    close_fds(fds, nfds);
}

/* Read and act on a PENDING connection's request.  0 when nothing arrived
 * yet; 1 when it was handled (the connection is to be closed). */
static int handle(struct tpl *t, struct conn *c)
{
    int fds[FH_PROTO_MAX_FDS];
    unsigned nfds;
    int n, mflags;

    n = fh__recv_record(c->fd, t->rx, FH_PROTO_MAX_MSG + 1, fds,
                        FH_PROTO_MAX_FDS, &nfds, &mflags);
    if (n < 0)
        return n == -EAGAIN || n == -EWOULDBLOCK ? 0 : 1;
    handle_received(t, c, t->rx, (size_t)n, mflags, fds, nfds);
    return 1;
}

/* After a request: a PENDING connection that was handled is closed (its
 * secondary, if any, holds its own copy). */
static void settle(struct tpl *t, struct conn *c)
{
    close_client(t, c);
    conn_free(c);
}

/* Accept what waits on template.sock, FH_TEMPLATE_ACCEPT_BATCH at most:
 * under sustained load a new connection is always there, and accepting
 * until EAGAIN would never let the loop reap a secondary. */
static void accept_some(struct tpl *t)
{
    char text[FH_PROTO_MAX_ERROR + 1];
    const char *why;
    unsigned k;

    t->last_activity = now_us();
    for (k = 0; k < FH_TEMPLATE_ACCEPT_BATCH; k++) {
        int fd = accept4(t->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        struct conn *c;

        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED)
                /* EMFILE and friends: say so and keep serving the rest. */
                say("forkhost template: accept: %s", strerror(errno));
            return;
        }
        c = conn_new(t, fd);
        if (c == NULL) {
            refuse(t, fd, 125,
                   "the template is busy: too many connections waiting");
            close(fd);
            continue;
        }
        check_peer(c);
        if (c->client_uid != 0 && c->client_uid != (int64_t)t->uid) {
            refuse(t, fd, 125, "permission denied: uid %lld may not use the "
                   "template of prefix '%s' (only uid %u and root)",
                   (long long)c->client_uid, t->c->prefix, (unsigned)t->uid);
            settle(t, c);
            continue;
        }
        /* The request usually arrives with the connection; one that waits
         * for it must be within its peer's share, or it is refused: one
         * process's idle connections never fill the table for the rest. */
        if (handle(t, c)) {
            settle(t, c);
        } else if ((why = over_share(t, c, c->client_pid, c->client_uid,
                                     text, sizeof text)) != NULL) {
            refuse(t, c->fd, 125, "%s", why);
            settle(t, c);
        } else {
            conn_register(t, c);
        }
    }
}

static void readable(struct tpl *t, struct conn *c)
{
    char junk[64];
    ssize_t n;

    if (c->state == C_PENDING) {
        if (handle(t, c))
            settle(t, c);
        return;
    }
    /* RUNNING: the client sends nothing more; EOF or an error means it is
     * gone. */
    n = recv(c->fd, junk, sizeof junk, MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                            errno == EINTR)))
        return;
    conn_unregister(t, c);
    /* A member's secondary tells its client itself: a client that closed
     * after its EXITED is not gone early; the report says. */
    if (c->report_fd >= 0)
        report(t, c);
    client_gone(t, c);
}

/* ---- reload (template.h) --------------------------------------------------- */

static size_t page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);

    return (n + pg - 1) / pg * pg;
}

/* A RELOAD on connection c (whose peer check_peer() read): from the
 * primary only, one at a time, and not once retired or stopping.  The
 * fork waits for the loop's top (serve()): the connection is kept. */
static void reload_request(struct tpl *t, struct conn *c)
{
    if (t->orphaned)
        refuse(t, c->fd, 125, "the primary of prefix '%s' is gone: a new "
               "one adopts the template first (forkhost primary)",
               t->c->prefix);
    else if (c->client_pid != t->primary_pid)
        refuse(t, c->fd, 125, "only the primary of prefix '%s' (pid %d) may "
               "reload its template; ask it with forkhost reload",
               t->c->prefix, (int)t->primary_pid);
    else if (t->stopping || t->retired)
        refuse(t, c->fd, 125, "the template of prefix '%s' is %s",
               t->c->prefix, t->stopping ? "stopping" : "retiring: a newer "
               "generation serves");
    else if (t->reload_conn >= 0)
        refuse(t, c->fd, 125, "a reload of prefix '%s' is already under way",
               t->c->prefix);
    else if ((t->reload_conn = fcntl(c->fd, F_DUPFD_CLOEXEC, 3)) < 0)
        refuse(t, c->fd, 125, "cannot keep the reload's connection: %s",
               strerror(errno));
    else
        t->reload_due = 1;
}

/* The reload ended without a new generation: say why to the primary; this
 * generation serves on. */
static void reload_failed(struct tpl *t, const char *text, size_t len)
{
    struct fh_reload_failed f;

    if (len > FH_PROTO_MAX_RELOAD_TEXT)
        len = FH_PROTO_MAX_RELOAD_TEXT;
    memset(&f, 0, sizeof f);
    f.text_len = (uint32_t)len;
    fh__send_record(t->reload_conn, FH_MSG_RELOAD_FAILED,
                    (const char *)&f + sizeof f.hdr, sizeof f - sizeof f.hdr,
                    text, len, NULL, 0, MSG_DONTWAIT);
    close(t->reload_conn);
    t->reload_conn = -1;
}

/* At the loop's top, a RELOAD accepted: fork the next generation.  1 in
 * that child (the loop returns FH_TEMPLATE_REBORN at once: the tables
 * are MADV_DONTFORK, not mapped there), 0 here. */
static int begin_reload(struct tpl *t)
{
    size_t stats_len = page_round(sizeof *t->stats);
    struct epoll_event ev;
    char text[300];
    sigset_t all, old;
    int p[2], e, n;
    pid_t pid;

    t->reload_due = 0;
    /* A fork from a single-threaded process only (the template starts no
     * thread, but a hook's Python might have). */
    if ((n = thread_count()) != 1) {
        n = snprintf(text, sizeof text, "cannot start a new generation: the "
                     "template has %d threads", n);
        reload_failed(t, text, (size_t)n);
        return 0;
    }
    if (pipe2(p, O_CLOEXEC) < 0) {
        n = snprintf(text, sizeof text, "cannot start a new generation: "
                     "pipe: %s", strerror(errno));
        reload_failed(t, text, (size_t)n);
        return 0;
    }
    /* The counters go on in the new generation; the loop's tables do not. */
    madvise(t->stats, stats_len, MADV_DOFORK);
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid = fork();
    if (pid == 0) {
        /* Nothing of the old loop's: its clients' connections, members'
         * sockets, epoll and signalfd (fh_template_main makes its own). */
        close_inherited(t->c, t->exit_fd, p[1], -1);
        g_reborn_fd = p[1];
        g_reborn_generation = t->generation + 1;
        g_reborn_stats = t->stats;
        g_reborn_primary_pid = t->primary_pid;
        g_reborn_exit_fd = t->exit_fd;
        madvise(t->stats, stats_len, MADV_DONTFORK);
        munmap(t->rx, FH_PROTO_MAX_MSG + 1);
        if (t->hot != NULL)       /* the old members' (the new one makes its own) */
            munmap(t->hot, sizeof *t->hot);
        t->reborn = 1;
        sigprocmask(SIG_SETMASK, &old, NULL);
        return 1;
    }
    e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    madvise(t->stats, stats_len, MADV_DONTFORK);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        n = snprintf(text, sizeof text, "cannot start a new generation: "
                     "fork: %s", strerror(e));
        reload_failed(t, text, (size_t)n);
        return 0;
    }
    t->reload_pid = pid;
    t->reload_fd = p[0];
    t->reload_len = 0;
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = EV(T_RELOAD, 0);
    epoll_ctl(t->ep, EPOLL_CTL_ADD, p[0], &ev);
    return 0;
}

/* The new generation is ready: this one retires.  Idle members leave
 * (their socketpair's end shut: FH_MEMBER_RETIRED), busy ones finish what
 * they took; template.sock is the new one's, left in place.  The primary
 * hears RELOADED once no member of ours may accept again (serve()). */
static void retire(struct tpl *t)
{
    char title[300];
    char *argv[2] = { title, NULL };
    unsigned i;

    t->retired = 1;
    for (i = 0; i < t->members_hi; i++)
        if (t->members[i].used)
            shutdown(t->members[i].ctl_fd, SHUT_WR);
    if (t->listening)
        epoll_ctl(t->ep, EPOLL_CTL_DEL, t->listen_fd, NULL);
    t->listening = 0;
    close(t->listen_fd);
    t->listen_fd = -1;
    snprintf(title, sizeof title, "forkhost template [%s] retiring",
             t->c->prefix);
    fh_set_title(t->c->title_area, t->c->title_len, argv);
}

/* Every member has left or taken its launch: tell the primary. */
static void reloaded(struct tpl *t)
{
    struct fh_reloaded r;      /* its body: what follows the header */

    memset(&r, 0, sizeof r);
    r.pid = t->reload_pid;
    fh__send_record(t->reload_conn, FH_MSG_RELOADED, &r.pid, sizeof r - sizeof r.hdr,
                    NULL, 0, NULL, 0, MSG_DONTWAIT);
    close(t->reload_conn);
    t->reload_conn = -1;
}

/* The new generation's answer pipe, done with. */
static void reload_pipe_close(struct tpl *t)
{
    epoll_ctl(t->ep, EPOLL_CTL_DEL, t->reload_fd, NULL);
    close(t->reload_fd);
    t->reload_fd = -1;
}

/* The new generation, not to serve: killed and reaped. */
static void reload_child_kill(struct tpl *t)
{
    kill(t->reload_pid, SIGKILL);
    waitpid(t->reload_pid, NULL, 0);
    t->reload_pid = 0;
}

/* The new generation's readiness pipe: "ok" (it serves), or its failure's
 * words and EOF. */
static void reload_heard(struct tpl *t)
{
    char buf[4096];
    ssize_t n;

    for (;;) {
        n = read(t->reload_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0)
            break;
        if (t->reload_text == NULL)
            t->reload_text = malloc(FH_PROTO_MAX_RELOAD_TEXT);
        if (t->reload_text != NULL && t->reload_len < FH_PROTO_MAX_RELOAD_TEXT) {
            size_t k = (size_t)n;

            if (k > FH_PROTO_MAX_RELOAD_TEXT - t->reload_len)
                k = FH_PROTO_MAX_RELOAD_TEXT - t->reload_len;
            memcpy(t->reload_text + t->reload_len, buf, k);
            t->reload_len += k;
        }
        /* "ok" is the whole answer (its members may hold the pipe a
         * little longer); a failure never starts so. */
        if (t->reload_len >= 2 && memcmp(t->reload_text, "ok", 2) == 0)
            break;
    }
    reload_pipe_close(t);
    if (t->reload_len >= 2 && memcmp(t->reload_text, "ok", 2) == 0) {
        atomic_fetch_add_explicit(&t->stats->reloads, 1,
                                  memory_order_relaxed);   /* a counter */
        retire(t);
    } else {
        static const char silent[] = "the new generation's template exited "
                                     "without saying why";

        /* It said its last word: gone, or going (nothing of it serves). */
        reload_child_kill(t);
        if (t->reload_len == 0)
            reload_failed(t, silent, sizeof silent - 1);
        else
            reload_failed(t, t->reload_text, t->reload_len);
    }
    free(t->reload_text);
    t->reload_text = NULL;
    t->reload_len = 0;
}

/* A stop while a new generation is starting: it does not start. */
static void reload_abandon(struct tpl *t)
{
    static const char why[] = "the template stopped while the new "
                              "generation started";

    if (t->reload_fd >= 0) {
        reload_pipe_close(t);
        reload_child_kill(t);
        free(t->reload_text);
        t->reload_text = NULL;
    }
    if (t->reload_conn >= 0 && !t->retired)
        reload_failed(t, why, sizeof why - 1);
    t->reload_due = 0;
}

/* ---- stopping ------------------------------------------------------------ */

/* The primary died: tell a client that asked (FH_LAUNCH_NOTICE) why its
 * secondary ends, before the secondary can hear of it (a pool secondary
 * may send its own EXITED, which must come after this). */
static void primary_died_notice(struct tpl *t, struct conn *c)
{
    struct {
        uint32_t text_len;
        uint32_t reserved;
        char text[FH_PROTO_MAX_ERROR + 1];
    } n;
    int len;

    if (!c->notice || c->reported)
        return;
    len = snprintf(n.text, sizeof n.text, "the primary of prefix '%s' died; "
                   "its template ended secondary %d with SIGTERM (SIGKILL if "
                   "still running after the %gs grace)", t->c->prefix,
                   (int)c->pid, t->c->grace_ms / 1000.0);
    if (len < 0)
        return;
    if (len > (int)FH_PROTO_MAX_ERROR)
        len = (int)FH_PROTO_MAX_ERROR;
    n.text_len = (uint32_t)len;
    n.reserved = 0;
    send_record(c->fd, FH_MSG_NOTICE, &n, 8 + (size_t)len);
}

/*
 * Stop every member where it is (SIGSTOP) and wait until each has (at most
 * FH_TEMPLATE_FREEZE_MS in all).  A member may accept a launch at any
 * moment; frozen, none can take one between our reading what they said
 * (TAKEN) and our SIGKILL of those still idle, which would otherwise kill a
 * secondary whose client already has STARTED.  The stop reports are
 * consumed here, so that children_stopped() never tells a client its
 * secondary was stopped by a job-control signal.
 */
static void freeze_members(struct tpl *t)
{
    int64_t deadline = now_us() + (int64_t)FH_TEMPLATE_FREEZE_MS * 1000;
    unsigned i;

    for (i = 0; i < t->members_hi; i++)
        if (t->members[i].used)
            syscall(SYS_pidfd_send_signal, t->members[i].pidfd, SIGSTOP, NULL, 0);
    for (i = 0; i < t->members_hi; i++) {
        const struct member *mb = &t->members[i];

        while (mb->used) {
            struct timespec pause = { 0, 200 * 1000 };
            siginfo_t si;

            memset(&si, 0, sizeof si);
            if (waitid((idtype_t)P_PIDFD, (id_t)mb->pidfd, &si,
                       WSTOPPED | WNOHANG) < 0 || si.si_pid != 0)
                break;                          /* stopped, or gone */
            memset(&si, 0, sizeof si);
            if (waitid((idtype_t)P_PIDFD, (id_t)mb->pidfd, &si,
                       WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid != 0 ||
                now_us() >= deadline)
                break;                          /* exited: its pidfd reaps it */
            nanosleep(&pause, NULL);
        }
    }
}

/* primary_died: not the primary's SIGTERM but its death (read_signals(),
 * timeout_ms()). */
static void stop(struct tpl *t, int primary_died)
{
    unsigned i;

    /* A member that took a launch is a secondary (SIGTERM, grace), not an
     * idle member (SIGKILL): freeze them, then read what they said. */
    freeze_members(t);
    running_count(t);
    reload_abandon(t);
    t->stopping = 1;
    close_listener(t);
    for (i = 0; i < t->conns_hi; i++) {
        struct conn *c = &t->conns[i];

        if (c->state == C_RUNNING) {
            if (primary_died)
                primary_died_notice(t, c);
            signal_secondary(c, SIGTERM);
        } else if (c->state == C_PENDING) {
            refuse(t, c->fd, 125, "the primary of prefix '%s' is stopping",
                   t->c->prefix);
            settle(t, c);
        }
    }
    for (i = 0; i < t->members_hi; i++)
        if (t->members[i].used)
            syscall(SYS_pidfd_send_signal, t->members[i].pidfd, SIGKILL,
                    NULL, 0);
    /* The frozen members that took a launch go on, to their SIGTERM. */
    for (i = 0; i < t->conns_hi; i++)
        if (t->conns[i].state == C_RUNNING)
            signal_secondary(&t->conns[i], SIGCONT);
    t->stop_deadline = now_us() + (int64_t)t->c->grace_ms * 1000;
}

static void expire(struct tpl *t)
{
    int64_t now = now_us();
    unsigned i;

    for (i = 0; i < t->conns_hi; i++) {
        struct conn *c = &t->conns[i];

        if (c->state == C_PENDING && c->deadline <= now) {
            refuse(t, c->fd, 125, "no request within %gs",
                   t->timeout_ms / 1000.0);
            settle(t, c);
        } else if (c->state == C_RUNNING && c->kill_at != 0 &&
                   c->kill_at <= now) {
            signal_secondary(c, SIGKILL);
            c->kill_at = 0;
        }
    }
    if (t->stop_deadline != 0 && t->stop_deadline <= now) {
        for (i = 0; i < t->conns_hi; i++)
            if (t->conns[i].state == C_RUNNING)
                signal_secondary(&t->conns[i], SIGKILL);
        t->stop_deadline = 0;
    }
}

/* ---- the pool's refill ---------------------------------------------------- */

/* Fewer members than the pool's size, and room under --max-secondaries for
 * one more (a member is a secondary in waiting). */
static int pool_short(struct tpl *t)
{
    unsigned i, running = 0, members = count_members(t, 0);

    if (t->stopping || t->retired || members >= t->c->pool_size)
        return 0;
    for (i = 0; i < t->conns_hi; i++) {
        const struct conn *c = &t->conns[i];

        running += (c->state == C_RUNNING && !c->reported) ||
                   c->state == C_PENDING;
    }
    return running + members < t->c->max_secondaries;
}

/* When the next member may be forked, or -1: the pool is full.  After a
 * quiet loop, at once when no member is idle and launches come back to
 * back; a failed fork is retried after FH_TEMPLATE_REPLENISH_RETRY_US. */
static int64_t replenish_at(struct tpl *t)
{
    int64_t quiet = FH_TEMPLATE_REPLENISH_QUIET_US, a, b;

    if (!pool_short(t))
        return -1;
    if (t->launch_gap < FH_TEMPLATE_BACK_TO_BACK_US && count_members(t, 1) == 0)
        quiet = 0;
    a = t->last_activity + quiet;
    b = t->fork_failed + FH_TEMPLATE_REPLENISH_RETRY_US;
    return a > b ? a : b;
}

static void replenish(struct tpl *t)
{
    struct epoll_event ev;
    int64_t at = replenish_at(t);

    if (at < 0 || now_us() < at)
        return;
    /* A fork blocks the loop: not while something waits. */
    if (epoll_wait(t->ep, &ev, 1, 0) > 0)
        return;
    add_pool_member(t);
}

static int timeout_ms(struct tpl *t)
{
    int64_t next = INT64_MAX, now, at;
    unsigned i;

    for (i = 0; i < t->conns_hi; i++) {
        const struct conn *c = &t->conns[i];

        if (c->state == C_PENDING && c->deadline < next)
            next = c->deadline;
        if (c->state == C_RUNNING && c->kill_at != 0 && c->kill_at < next)
            next = c->kill_at;
    }
    if (t->stop_deadline != 0 && t->stop_deadline < next)
        next = t->stop_deadline;
    if (t->notices_due != 0 && t->notices_due < next)
        next = t->notices_due;
    at = replenish_at(t);
    if (at >= 0 && at < next)
        next = at;
    if (t->orphan_retry_at != 0 && t->orphan_retry_at < next)
        next = t->orphan_retry_at;
    if (next == INT64_MAX)
        return -1;
    now = now_us();
    if (next <= now)
        return 0;
    next = (next - now + 999) / 1000;
    return next > INT_MAX ? INT_MAX : (int)next;
}

/* ---- INFO ------------------------------------------------------------------ */

struct out {
    char *p;
    size_t len, size;
};

static void put(struct out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (o->len >= o->size)
        return;
    va_start(ap, fmt);
    n = vsnprintf(o->p + o->len, o->size - o->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
    if (o->len > o->size)
        o->len = o->size;
}

/* A JSON string: UTF-8 passes, an undecodable byte is os.fsdecode()'s
 * surrogate (\udcXX), as Python's json wrote it. */
static void put_str(struct out *o, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    put(o, "\"");
    while (*p != '\0') {
        unsigned char ch = *p;
        size_t k, len = ch < 0x80 ? 1 : (ch >> 5) == 6 ? 2 : (ch >> 4) == 14 ? 3
                      : (ch >> 3) == 30 ? 4 : 0;

        if (ch == '"' || ch == '\\') {
            put(o, "\\%c", ch);
            p++;
            continue;
        }
        if (ch < 0x20 || ch == 0x7f) {
            put(o, "\\u%04x", ch);
            p++;
            continue;
        }
        for (k = 1; k < len; k++)
            if ((p[k] & 0xC0) != 0x80)
                len = 0;
        if (len == 0) {
            put(o, "\\udc%02x", ch);
            p++;
            continue;
        }
        put(o, "%.*s", (int)len, (const char *)p);
        p += len;
    }
    put(o, "\"");
}

int fh__json_str(char *buf, size_t size, const char *s)
{
    struct out o = { buf, 0, size };

    put_str(&o, s);
    if (size == 0 || o.len >= size)
        return -1;
    buf[o.len] = '\0';
    return (int)o.len;
}

/* The counters (log.h), the arena's use: "exits", "latency", "arena"
 * members and a ", " after them. */
static void put_stats(struct out *o, const struct fh_template_stats *s)
{
    char sig[32];
    unsigned i;
    int first = 1;

    put(o, "\"exits\": {\"status\": {");
    for (i = 0; i < 256; i++)
        if (s->exit_status[i] != 0) {
            put(o, "%s\"%u\": %llu", first ? "" : ", ", i,
                (unsigned long long)s->exit_status[i]);
            first = 0;
        }
    put(o, "}, \"signal\": {");
    first = 1;
    for (i = 0; i < FH_STATS_SIGNALS; i++)
        if (s->exit_signal[i] != 0) {
            put(o, "%s\"%s\": %llu", first ? "" : ", ",
                fh_log_signal_name((int)i, sig, sizeof sig),
                (unsigned long long)s->exit_signal[i]);
            first = 0;
        }
    put(o, "}}, \"latency\": {\"bounds_us\": [");
    for (i = 0; i + 1 < FH_STATS_LATENCY_BUCKETS; i++)
        put(o, "%s%llu", i ? ", " : "",
            (unsigned long long)fh_stats_latency_bound(i));
    put(o, "], \"buckets\": [");
    for (i = 0; i < FH_STATS_LATENCY_BUCKETS; i++)
        put(o, "%s%llu", i ? ", " : "", (unsigned long long)s->latency[i]);
    put(o, "], \"sum_us\": %llu}, ", (unsigned long long)s->latency_sum_us);
    if (fh_arena_base() != NULL)
        put(o, "\"arena\": {\"size\": %zu, \"max\": %zu, \"free\": %zu}, ",
            fh_arena_size(), fh_arena_max(), fh_memzone_free_bytes());
}

static size_t info_json(struct tpl *t, char *buf, size_t size)
{
    struct out o = { buf, 0, size };
    int64_t now;
    unsigned i;
    int first = 1;

    /* Members' notices first (their reading may be deferred), so that a
     * member that took a launch is not counted idle. */
    running_count(t);
    now = now_us();
    put(&o, "{\"prefix\": ");
    put_str(&o, t->c->prefix);
    put(&o, ", \"template_pid\": %d, \"primary_pid\": %d, "
        "\"generation\": %u, \"reloads\": %llu, "
        "\"max_secondaries\": %u, \"launched\": %llu, \"pool_launches\": %llu, "
        "\"pool\": %u, \"pool_size\": %u, \"members\": [",
        (int)t->pid, (int)t->primary_pid, t->generation,
        (unsigned long long)t->stats->reloads, t->c->max_secondaries,
        (unsigned long long)t->stats->launches,
        (unsigned long long)t->stats->pool_launches,
        count_members(t, 1), t->c->pool_size);
    for (i = 0; i < t->members_hi; i++) {
        const struct member *mb = &t->members[i];

        if (!mb->used)
            continue;
        put(&o, "%s{\"pid\": %d, \"state\": \"%s\"}", first ? "" : ", ",
            (int)mb->pid, mb->busy ? "busy" : "idle");
        first = 0;
    }
    put(&o, "], \"refused\": %llu, \"hot_pages\": %u, \"stopping\": %s, "
        "\"threads\": %d, \"orphaned\": %s, ",
        (unsigned long long)t->stats->refusals,
        t->hot != NULL ? fh_hotset_pages(t->hot) : 0u,
        t->stopping ? "true" : "false", thread_count(),
        t->orphaned ? "true" : "false");
    if (t->c->hooks.info_extra != NULL && o.len < o.size) {
        size_t n = t->c->hooks.info_extra(o.p + o.len, o.size - o.len);

        if (n > 0 && n < o.size - o.len) {
            o.len += n;
            put(&o, ", ");
        }
    }
    put_stats(&o, t->stats);
    put(&o, "\"secondaries\": [");
    first = 1;
    for (i = 0; i < t->conns_hi; i++) {
        const struct conn *c = &t->conns[i];

        if (c->state != C_RUNNING)
            continue;
        put(&o, "%s{\"pid\": %d, \"client_pid\": %d, \"argv0\": ",
            first ? "" : ", ", (int)c->pid, (int)c->client_pid);
        put_str(&o, c->argv0);
        put(&o, ", \"uptime\": %.3f, \"client_connected\": %s}",
            (now - c->started) / 1e6, c->kill_at == 0 ? "true" : "false");
        first = 0;
    }
    put(&o, "]}");
    return o.len;
}

/* ---- the loop ----------------------------------------------------------- */

/* SIGUSR1 (the primary passes on its own, after logrotate moved the log):
 * fd 2 on <runtime>/<prefix>.log again, opened as the primary opened it. */
static void reopen_log(struct tpl *t)
{
    struct fh_prefix_paths p;
    char err[FH_RUNDIR_ERR_MAX];
    int fd;

    if (t->c->log_root == NULL)
        return;
    memset(&p, 0, sizeof p);
    snprintf(p.root, sizeof p.root, "%s", t->c->log_root);
    snprintf(p.prefix, sizeof p.prefix, "%s", t->c->prefix);
    fd = fh_prefix_log_open(&p, err, sizeof err);
    if (fd < 0) {
        say("forkhost template: cannot reopen the log: %s", err);
        return;
    }
    if (fd != 2) {
        dup2(fd, 2);
        close(fd);
    }
    log_event(t, FH_LOG_INFO, "reopen", "pid=%d", (int)t->pid);
}

static void read_signals(struct tpl *t)
{
    struct signalfd_siginfo si[16];
    ssize_t n = read(t->sfd, si, sizeof si);
    int chld = 0, stop_now = 0;
    ssize_t i;

    for (i = 0; n > 0 && i < n / (ssize_t)sizeof si[0]; i++) {
        if (si[i].ssi_signo == SIGCHLD)
            chld = 1;
        else if (si[i].ssi_signo == SIGUSR1)
            reopen_log(t);
        else
            stop_now = 1;       /* SIGTERM, SIGINT, SIGHUP: an orderly stop */
    }
    if (chld)
        children_stopped(t);
    if (stop_now && !t->stopping)
        stop(t, 0);
}

/* The primary's pidfd fired: it ended without stopping us first (an
 * orderly stop sends SIGTERM and waits for our end).  A pidfd, not
 * PR_SET_PDEATHSIG: it names the process, not the thread that forked us,
 * and works for a primary that is not our parent (an adopter).  With
 * FH_ON_PRIMARY_DEATH_STOP we stop; by default we go on, orphaned: launches
 * served, secondaries untouched, exit notices kept for the adopter (up to
 * FH_TEMPLATE_ORPHAN_EXITS), until a new primary adopts us (adopt()) or a
 * stop signal comes. */
static void primary_died(struct tpl *t)
{
    if (t->primary_fd >= 0) {
        epoll_ctl(t->ep, EPOLL_CTL_DEL, t->primary_fd, NULL);
        close(t->primary_fd);
        t->primary_fd = -1;
    }
    if (t->stopping)
        return;
    if (t->c->on_primary_death == FH_ON_PRIMARY_DEATH_STOP) {
        stop(t, 1);
        return;
    }
    if (t->exit_fd >= 0) {
        close(t->exit_fd);
        t->exit_fd = -1;
    }
    t->orphaned = now_us();
    log_event(t, FH_LOG_WARNING, "orphan", "pid=%d primary_pid=%d running=%u",
              (int)t->pid, (int)t->primary_pid, running_count(t));
}

/* The primary's pidfd is readable now: it has died (and the loop has not
 * heard yet). */
static int primary_gone(const struct tpl *t)
{
    struct pollfd p = { t->primary_fd, POLLIN, 0 };

    return t->primary_fd >= 0 && poll(&p, 1, 0) == 1;
}

static void adopted_reply(struct tpl *t, int fd, pid_t old)
{
    struct fh_adopted a;       /* its body: what follows the header */
    int afd = fh_arena_fd();

    memset(&a, 0, sizeof a);
    a.template_pid = (int32_t)t->pid;
    a.old_primary_pid = (int32_t)old;
    a.arena_base = (uint64_t)(uintptr_t)fh_arena_base();
    a.arena_max = (uint64_t)fh_arena_max();
    a.running = running_count(t);
    fh__send_record(fd, FH_MSG_ADOPTED, &a.template_pid, sizeof a - sizeof a.hdr,
                    NULL, 0, &afd, 1, MSG_DONTWAIT);
}

/*
 * ADOPT (proto.h): a new primary of our prefix takes us over.  Only while
 * orphaned (our primary has died; a live one is never replaced), only from
 * our own uid (root included: the same rule as a launch), and only from a
 * process we can watch (its pidfd becomes the primary's).  Its fd, if it
 * sent one, is its exit-notice channel.  The answer carries the arena's
 * memfd.  Takes fds[0] (set to -1) when adopted.
 */
static void adopt(struct tpl *t, struct conn *c, int *fds, unsigned nfds)
{
    pid_t old = t->primary_pid;
    int pidfd;

    if (primary_gone(t))
        primary_died(t);         /* the loop would hear it next round */
    if (t->stopping) {
        refuse(t, c->fd, 125, "the template of prefix '%s' is stopping: "
               "nothing to adopt", t->c->prefix);
        return;
    }
    if (!t->orphaned) {
        refuse(t, c->fd, 125, "the template of prefix '%s' has a live "
               "primary (pid %d): only an orphaned template is adopted",
               t->c->prefix, (int)t->primary_pid);
        return;
    }
    if (c->client_uid != (int64_t)t->uid) {
        refuse(t, c->fd, 125, "the template of prefix '%s' is adopted by "
               "its own uid (%u) only, not by uid %lld", t->c->prefix,
               (unsigned)t->uid, (long long)c->client_uid);
        return;
    }
    if (nfds > 1) {
        refuse(t, c->fd, 125, "an ADOPT request carries at most 1 file "
               "descriptor (the exit-notice channel), not %u", nfds);
        return;
    }
    if (fh_arena_base() == NULL || fh_arena_fd() < 0) {
        refuse(t, c->fd, 125, "the template of prefix '%s' has no arena to "
               "hand over", t->c->prefix);
        return;
    }
    pidfd = (int)syscall(SYS_pidfd_open, c->client_pid, 0);
    if (pidfd < 0) {
        refuse(t, c->fd, 125, "cannot watch the adopting process %d: %s",
               (int)c->client_pid, strerror(errno));
        return;
    }
    if (add_fd(t->ep, pidfd, T_PRIMARY) < 0) {
        refuse(t, c->fd, 125, "cannot watch the adopting process %d: %s",
               (int)c->client_pid, strerror(errno));
        close(pidfd);
        return;
    }
    t->primary_fd = pidfd;
    t->primary_pid = c->client_pid;
    if (nfds == 1) {
        t->exit_fd = fds[0];
        fds[0] = -1;
    }
    log_event(t, FH_LOG_INFO, "adopted", "pid=%d primary_pid=%d "
              "old_primary_pid=%d orphaned_for=%.6f exits=%u exits_dropped=%lu",
              (int)t->pid, (int)t->primary_pid, (int)old,
              (now_us() - t->orphaned) / 1e6, t->orphan_nexits,
              t->orphan_dropped);
    t->orphaned = 0;
    adopted_reply(t, c->fd, old);
    /* The exits of the gap, after ADOPTED: the adopter reads them once its
     * IPC runs; what its channel does not take yet is offered again. */
    t->orphan_dropped = 0;
    t->orphan_give_up_at = now_us() +
                           (int64_t)FH_TEMPLATE_ORPHAN_EXITS_WAIT_MS * 1000;
    flush_orphan_exits(t);
}

static void dispatch(struct tpl *t, uint64_t data)
{
    unsigned tag = (unsigned)(data >> 32), i = (unsigned)data;

    switch (tag) {
    case T_SIGNAL:
        read_signals(t);
        break;
    case T_LISTEN:
        if (t->listening)
            accept_some(t);
        break;
    case T_NOTICES:
        notices_arrived(t);
        break;
    case T_PRIMARY:
        primary_died(t);
        break;
    case T_RELOAD:
        if (t->reload_fd >= 0)
            reload_heard(t);
        break;
    case T_CONN:
        if (i < t->conns_hi && t->conns[i].state != C_FREE &&
            t->conns[i].fd >= 0)
            readable(t, &t->conns[i]);
        break;
    case T_PIDFD:
        if (i < t->conns_hi && t->conns[i].state == C_RUNNING)
            reap(t, &t->conns[i]);
        break;
    case T_MEMBER:
        if (i < t->members_hi && t->members[i].used)
            member_exited(t, i);
        break;
    }
}

static int serve(struct tpl *t)
{
    struct epoll_event ev[64];
    int n, k;

    for (;;) {
        if (t->reload_due && begin_reload(t))
            return FH_TEMPLATE_REBORN;       /* the new generation's child */
        if (t->retired && t->reload_conn >= 0 && count_members(t, 0) == 0)
            reloaded(t);
        if ((t->stopping || (t->retired && !any_conn(t, C_PENDING))) &&
            !any_conn(t, C_RUNNING) && count_members(t, 0) == 0)
            break;
        n = epoll_wait(t->ep, ev, 64, timeout_ms(t));
        if (n < 0 && errno != EINTR)
            break;
        for (k = 0; k < n; k++) {
            dispatch(t, ev[k].data.u64);
            run_deferred(t);
        }
        if (t->notices_due != 0 && now_us() >= t->notices_due)
            read_notices(t);
        if (t->orphan_retry_at != 0 && now_us() >= t->orphan_retry_at)
            flush_orphan_exits(t);
        expire(t);
        replenish(t);
    }
    run_deferred(t);                  /* refused: the template is stopping */
    close_listener(t);
    return 0;
}

/* The request timeout when the config leaves it 0: from the environment
 * (FH_TEMPLATE_REQUEST_TIMEOUT_ENV) or FH_TEMPLATE_REQUEST_TIMEOUT_MS;
 * -1 when the variable holds anything but a number from 1 up. */
static int request_timeout_from_env(unsigned *ms)
{
    const char *s = getenv(FH_TEMPLATE_REQUEST_TIMEOUT_ENV);
    unsigned long v;
    char *end;

    *ms = FH_TEMPLATE_REQUEST_TIMEOUT_MS;
    if (s == NULL)
        return 0;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno != 0 || v == 0 || v > UINT_MAX)
        return -1;
    *ms = (unsigned)v;
    return 0;
}

static int fail(const struct fh_template_config *c, const char *what, int e)
{
    char text[300];
    int n = snprintf(text, sizeof text, "template failed to start: %s%s%s",
                     what, e ? ": " : "", e ? strerror(e) : "");

    if (c->ready_fd >= 0) {
        if (write(c->ready_fd, text, (size_t)n) < 0) {
            /* the primary is gone */
        }
        close(c->ready_fd);
    }
    return 1;
}

static int add_fd(int ep, int fd, unsigned tag)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = EV(tag, 0);
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

FH_API int fh_template_main(const struct fh_template_config *c)
{
    struct tpl t;
    int null, threads, flags;
    unsigned i;
    size_t cap;

    memset(&t, 0, sizeof t);
    t.c = c;
    t.pid = getpid();
    /* Every secondary knows its prefix (fh_file_prefix). */
    snprintf(fh_init_template_prefix, sizeof fh_init_template_prefix, "%s",
             c->prefix != NULL ? c->prefix : "");
    fh__spawn_read_image();     /* every fork inherits it */
    fh__cgroup_snapshot();      /* and this */
    t.uid = getuid();
    t.listen_fd = c->listen_fd;
    t.timeout_ms = c->request_timeout_ms;
    if (t.timeout_ms == 0 && request_timeout_from_env(&t.timeout_ms) < 0)
        return fail(c, FH_TEMPLATE_REQUEST_TIMEOUT_ENV " is not a number of "
                    "milliseconds from 1 up", 0);
    t.launch_gap = INT64_MAX / 2;
    t.generation = c->generation != 0 ? c->generation : 1;
    t.reload_conn = -1;
    t.reload_fd = -1;
    t.log_level = c->log_level != 0 ? c->log_level : FH_LOG_DEFAULT;
    t.deferred_tail = &t.deferred;
    /* No controlling terminal: terminal signals are the clients' business,
     * and secondaries may read a client's tty freely. */
    setsid();
    /* The primary's death is heard on its pidfd (primary_died()). */
    /* A generation a reload forked after an adoption: the adopter's. */
    t.primary_pid = g_reborn_primary_pid > 0 ? g_reborn_primary_pid
                                             : c->primary_pid;
    t.exit_fd = g_reborn_primary_pid > 0 ? g_reborn_exit_fd : c->exit_notice_fd;
    g_reborn_primary_pid = 0;
    g_reborn_exit_fd = -1;
    t.primary_fd = (int)syscall(SYS_pidfd_open, t.primary_pid, 0);
    if (t.primary_fd < 0)
        return fail(c, "the primary died while the template started",
                    errno == ESRCH ? 0 : errno);
    /* Everything else the primary had open stays there. */
    close_inherited(c, t.exit_fd, t.primary_fd, c->ready_fd);
    null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    /* The loop's signals come through a signalfd; SIGCHLD must not be
     * SIG_IGN (children would be reaped behind our back). */
    signal(SIGCHLD, SIG_DFL);
    /* A closed stderr is EPIPE for say(), not the template's end (a
     * Python primary ignores SIGPIPE already; a C one may not).  Every
     * child resets its dispositions. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&t.mask);
    sigaddset(&t.mask, SIGTERM);
    sigaddset(&t.mask, SIGINT);
    sigaddset(&t.mask, SIGHUP);
    sigaddset(&t.mask, SIGCHLD);
    sigaddset(&t.mask, SIGUSR1);       /* reopen the log (reopen_log) */
    sigprocmask(SIG_SETMASK, &t.mask, NULL);
    t.sfd = signalfd(-1, &t.mask, SFD_CLOEXEC | SFD_NONBLOCK);
    t.ep = epoll_create1(EPOLL_CLOEXEC);
    t.notices = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (t.sfd < 0 || t.ep < 0 || t.notices < 0)
        return fail(c, "signalfd/epoll/eventfd", errno);
    flags = fcntl(t.listen_fd, F_GETFL);
    fcntl(t.listen_fd, F_SETFL, flags | O_NONBLOCK);
    /* What launches copy-on-write, learned by a few and copied ahead of
     * time by idle members (member.h). */
    t.hot = fh_hotset_create();
    if (t.hot != NULL)
        fh_hotset_arm(t.hot, FH_TEMPLATE_LEARN_FIRST);
    t.cap = c->max_secondaries + FH_TEMPLATE_MAX_PENDING + c->pool_size + 64;
    if (t.cap < 4096)
        t.cap = 4096;
    cap = (size_t)t.cap;
    t.conns = dontfork_alloc(cap * sizeof *t.conns, 0);
    t.members = dontfork_alloc(cap * sizeof *t.members, 0);
    t.ctl_buf = dontfork_alloc(CTL_MAX + 1, 0);
    t.ra = dontfork_alloc(READ_AHEAD_SLOTS * sizeof *t.ra, 0);
    /* A new generation counts on where the old one counted. */
    t.stats = g_reborn_stats != NULL ? g_reborn_stats
              : dontfork_alloc(sizeof *t.stats, 1);
    g_reborn_stats = NULL;
    g_reborn_fd = -1;
    t.orphan_exits = dontfork_alloc(FH_TEMPLATE_ORPHAN_EXITS *
                                    sizeof *t.orphan_exits, 0);
    t.rx = mmap(NULL, FH_PROTO_MAX_MSG + 1, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t.conns == NULL || t.members == NULL || t.ctl_buf == NULL ||
        t.ra == NULL || t.stats == NULL || t.orphan_exits == NULL ||
        t.rx == MAP_FAILED)
        return fail(c, "memory for the loop", ENOMEM);
    if (add_fd(t.ep, t.sfd, T_SIGNAL) < 0 || add_fd(t.ep, t.notices, T_NOTICES) < 0 ||
        add_fd(t.ep, t.primary_fd, T_PRIMARY) < 0)
        return fail(c, "epoll", errno);
    threads = thread_count();
    if (threads != 1) {
        char what[64];

        snprintf(what, sizeof what, "the template has %d threads", threads);
        return fail(c, what, 0);
    }
    for (i = 0; i < c->pool_size; i++)
        add_pool_member(&t);
    update_listening(&t);
    if (c->ready_fd >= 0) {
        if (write(c->ready_fd, "ok", 2) < 0) {
            /* the primary is gone: its pidfd tells the loop */
        }
        close(c->ready_fd);
    }
    return serve(&t);
}

FH_API int fh_template_reborn(unsigned *generation)
{
    if (generation != NULL)
        *generation = g_reborn_generation;
    return g_reborn_fd;
}

FH_API pid_t fh_template_fork(const struct fh_template_config *c)
{
    struct fh_template_config copy = *c;
    int pipefd[2] = { -1, -1 };
    char answer[300];
    ssize_t n;
    pid_t pid;

    if (thread_count() != 1) {
        errno = EBUSY;
        return -1;
    }
    if (c->ready_fd < 0) {
        if (pipe2(pipefd, O_CLOEXEC) < 0)
            return -1;
        copy.ready_fd = pipefd[1];
    }
    fflush(NULL);           /* nothing buffered is written twice */
    copy.primary_pid = getpid();
    pid = fork();
    if (pid == 0) {
        int rc;

        if (pipefd[0] >= 0)
            close(pipefd[0]);
        /* A reload: the same loop again, as the next generation. */
        while ((rc = fh_template_main(&copy)) == FH_TEMPLATE_REBORN)
            copy.ready_fd = fh_template_reborn(&copy.generation);
        _exit(rc);
    }
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (pid < 0 || pipefd[0] < 0) {
        int e = errno;

        if (pipefd[0] >= 0)
            close(pipefd[0]);
        errno = e;
        return pid;
    }
    do
        n = read(pipefd[0], answer, sizeof answer);
    while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == 2 && memcmp(answer, "ok", 2) == 0)
        return pid;
    waitpid(pid, NULL, 0);
    errno = EIO;
    return -1;
}
