/*
 * member.c - a pool member takes a launch straight from template.sock
 * (forkhost/member.h has the protocol between member and template).
 *
 * The path a launch of a native entry takes here is the whole of forkhost's
 * launch latency on the server side: epoll_wait, accept4, SO_PEERCRED,
 * recvmsg, a parse, a stat and a 4-byte read of the entry, two sendmsg
 * (TAKEN to the template, STARTED to the client), then fh_run_native().  No
 * Python runs and the template is not waited for.  A Python entry takes the
 * same path and returns to the interpreter only to run.
 *
 * Everything a client sends is checked here exactly as the template's
 * Python parser checks it; anything that is not a valid LAUNCH is handed
 * to the template unread or as received, and the template answers it, so
 * the error texts have one source.
 */
#include "forkhost/member.h"
#include "forkhost/hotset.h"
#include "forkhost/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- records on the sockets ------------------------------------------ */

int fh__send_record(int fd, uint16_t type, const void *a, size_t alen,
                    const void *b, size_t blen, const int *fds, unsigned nfds,
                    int flags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * (FH_PROTO_MAX_FDS + 1))];
        struct cmsghdr align;
    } u;
    struct fh_msg_hdr h;
    struct iovec iov[3];
    struct msghdr msg;
    ssize_t r;

    if (nfds > FH_PROTO_MAX_FDS + 1)
        return -EINVAL;
    memset(&h, 0, sizeof h);
    h.magic = FH_PROTO_MAGIC;
    h.version = FH_PROTO_VERSION;
    h.type = type;
    h.len = (uint32_t)(sizeof h + alen + blen);
    h.nfds = nfds;
    iov[0].iov_base = &h;
    iov[0].iov_len = sizeof h;
    iov[1].iov_base = (void *)a;
    iov[1].iov_len = alen;
    iov[2].iov_base = (void *)b;
    iov[2].iov_len = blen;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    if (nfds > 0) {
        struct cmsghdr *c;

        memset(&u, 0, sizeof u);
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    do
        r = sendmsg(fd, &msg, MSG_NOSIGNAL | flags);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

/* A notice went to the template: wake it (see notice_fd in member.h) by
 * adding to its notices counter 1 for a notice it may read a little later
 * (TAKEN, BUSY), FH_NOTICE_URGENT for one it must act on now (HANDOFF: a
 * connection waits on it). */
static void notify(const struct fh_member *m, uint64_t what)
{
    if (m->notice_fd >= 0 && write(m->notice_fd, &what, sizeof what) < 0) {
        /* EAGAIN only near a counter of 2^64 - 2: the template is awake. */
    }
}

int fh__recv_record(int fd, void *buf, size_t len, int *fds, unsigned maxfds,
                    unsigned *nfds, int *mflags)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * (FH_PROTO_MAX_FDS + 1))];
        struct cmsghdr align;
    } u;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *c;
    ssize_t r;

    if (maxfds > FH_PROTO_MAX_FDS + 1)
        maxfds = FH_PROTO_MAX_FDS + 1;
    iov.iov_base = buf;
    iov.iov_len = len;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    /* Room for maxfds exactly: more is MSG_CTRUNC, and the kernel closes
     * what did not fit. */
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * maxfds);
    *nfds = 0;
    do
        r = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    *mflags = msg.msg_flags;
    for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        size_t k, count;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (k = 0; k < count && *nfds < maxfds; k++)
            memcpy(&fds[(*nfds)++], CMSG_DATA(c) + k * sizeof(int),
                   sizeof(int));
    }
    return (int)r;
}

/* One record from the client into m->buf and m->fds.  0 (m->n == 0 on
 * EOF), or -errno (-EAGAIN: nothing there yet). */
static int receive(struct fh_member *m)
{
    int r = fh__recv_record(m->conn, m->buf, FH_PROTO_MAX_MSG + 1, m->fds,
                            FH_PROTO_MAX_FDS, &m->nfds, &m->mflags);

    if (r < 0)
        return r;
    m->n = (size_t)r;
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The request was not there with the connection (a client connects, then
 * sends: we are often woken in between).  Wait FH_MEMBER_BUSY_AFTER_MS for
 * it; then say BUSY (this member is not idle: the template must not count
 * on it) and wait up to FH_MEMBER_PARK_MS in all: a connection that sends
 * nothing must not keep a member from the next client.  0 when something
 * can be read; -EAGAIN when the connection is the template's to wait on;
 * -ETIMEDOUT when the request timeout (shorter) has passed. */
static int wait_request(struct fh_member *m)
{
    int park = m->timeout_ms < FH_MEMBER_PARK_MS ? m->timeout_ms
                                                 : FH_MEMBER_PARK_MS;
    int64_t deadline = now_ms() + park;
    struct pollfd p;
    int r;

    p.fd = m->conn;
    p.events = POLLIN;
    p.revents = 0;
    if (poll(&p, 1, FH_MEMBER_BUSY_AFTER_MS) > 0)
        return 0;
    fh__send_record(m->ctl_fd, FH_CTL_BUSY, NULL, 0, NULL, 0, NULL, 0, 0);
    notify(m, 1);
    for (;;) {
        int64_t left = deadline - now_ms();

        if (left <= 0)
            return park < FH_MEMBER_PARK_MS ? -ETIMEDOUT : -EAGAIN;
        p.fd = m->conn;
        p.events = POLLIN;
        p.revents = 0;
        r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* ---- the member ------------------------------------------------------ */

FH_API int fh_member_init(struct fh_member *m)
{
    struct epoll_event ev;
    int e;

    m->conn = -1;
    m->nfds = 0;
    fh__hotset_member(m->hot);
    fh__attrs_snapshot();
    m->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (m->epoll_fd < 0)
        return -errno;
    memset(&ev, 0, sizeof ev);
    /* Exclusive: one waiting member is woken per connection, not all. */
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.fd = m->listen_fd;
    if (epoll_ctl(m->epoll_fd, EPOLL_CTL_ADD, m->listen_fd, &ev) < 0)
        goto fail;
    /* The template never writes to a member: its end readable is its
     * end shut (FH_MEMBER_RETIRED). */
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = m->ctl_fd;
    if (m->ctl_fd >= 0 &&
        epoll_ctl(m->epoll_fd, EPOLL_CTL_ADD, m->ctl_fd, &ev) < 0)
        goto fail;
    return 0;
fail:
    e = errno;
    close(m->epoll_fd);
    m->epoll_fd = -1;
    return -e;
}

FH_API int fh_member_retired(const struct fh_member *m)
{
    struct pollfd p;

    if (m->ctl_fd < 0)
        return 0;
    p.fd = m->ctl_fd;
    p.events = POLLIN | POLLRDHUP;
    p.revents = 0;
    return poll(&p, 1, 0) > 0 && p.revents != 0;
}

static void close_received(struct fh_member *m)
{
    unsigned i;

    for (i = 0; i < m->nfds; i++)
        close(m->fds[i]);
    m->nfds = 0;
}

/* Tell the template this member runs m->conn's launch. */
static int took(struct fh_member *m, const struct fh_launch_view *v,
                int python)
{
    /* The client's cwd (always the first fd it sends) goes along for a
     * Python entry: sys.path[0] is usually that directory.  The entry and
     * argv[0] lie back to back in the record ("entry\0argv0"). */
    int fds[2] = { m->conn, m->fds[0] };
    struct fh_taken_msg tk = { v->launch.flags, 0, now_us() };
    size_t len = strlen(v->entry) + 1 + strlen(v->strings);
    int64_t waited = tk.taken_us - m->accepted_us;
    int rc;

    /* The template's latency histogram (log.h); a clock read, no system
     * call (vDSO). */
    tk.latency_us = waited < 0 ? 0 : waited > UINT32_MAX ? UINT32_MAX
                                                       : (uint32_t)waited;
    rc = fh__send_record(m->ctl_fd, FH_CTL_TAKEN, &tk, sizeof tk,
                             v->entry, len, fds,
                             python && m->nfds > 0 ? 2 : 1, 0);

    notify(m, 1);
    return rc;
}

/* Send the client STARTED with this process's pid and a pidfd of it. */
static int started(struct fh_member *m)
{
    struct fh_started st;
    int pidfd, rc;

    pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0)
        return -errno;
    memset(&st, 0, sizeof st);
    st.pid = getpid();
    /* The header is built by fh__send_record; only the body goes here. */
    rc = fh__send_record(m->conn, FH_MSG_STARTED, &st.pid, sizeof st.pid,
                         NULL, 0, &pidfd, 1, 0);
    close(pidfd);
    return rc;
}

FH_API int fh_member_handoff(struct fh_member *m)
{
    int fds[FH_PROTO_MAX_FDS + 1];
    struct fh_handoff h;
    size_t data;
    int rc;

    memset(&h, 0, sizeof h);
    h.mflags = (uint32_t)m->mflags;
    h.received = (uint32_t)m->n;
    h.state = m->state;
    data = m->state == FH_HANDOFF_MESSAGE ? m->n : 0;
    if (data > FH_PROTO_MAX_MSG + 1)
        data = FH_PROTO_MAX_MSG + 1;
    fds[0] = m->conn;
    memcpy(fds + 1, m->fds, m->nfds * sizeof(int));
    rc = fh__send_record(m->ctl_fd, FH_CTL_HANDOFF, &h, sizeof h, m->buf,
                         data, fds, m->nfds + 1, 0);
    notify(m, FH_NOTICE_URGENT);
    close_received(m);
    close(m->conn);
    m->conn = -1;
    return rc;
}

/*
 * The launch is this member's: from here on it is the secondary.  Every
 * signal stays blocked (no handler of the member's may run; fh_child_setup
 * resets them all and unblocks), the template hears TAKEN and the client
 * STARTED, and r->spec is prepared.  Exits 125 if that fails.
 */
static void become_secondary(struct fh_member *m, struct fh_taken_launch *r, pid_t client)
{
    const struct fh_launch *l = &r->view.launch;
    struct fh_child_spec *spec = &r->spec;
    sigset_t all;
    int rc, python;

    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    /* TAKEN first: the template must know the connection before it could
     * ever report this process's death to the client. */
    python = r->target.kind != FH_ENTRY_NATIVE;
    fh__hotset_launch(python);
    took(m, &r->view, python);
    rc = started(m);
    /* A client that is gone (EPIPE) is the template's to notice. */
    if (rc < 0 && rc != -EPIPE)
        fh_exit_report(m->ctl_fd, 125);
    memset(spec, 0, sizeof *spec);
    if (fh_spec_strings(spec, r->view.strings, r->view.strings_len, l->argc,
                        l->envc) < 0)
        fh_exit_report(m->ctl_fd, 125);
    spec->fds = m->fds;
    spec->nfds = m->nfds;
    spec->stdio_mask = l->stdio_mask;
    spec->nextra = l->nextra;
    spec->umask = l->umask;
    spec->title_area = m->title_area;
    spec->title_len = m->title_len;
    spec->report_fd = m->ctl_fd;
    spec->client_fd = m->conn;
    spec->client_pid = client;
    spec->fd_target = r->view.fd_target;
    spec->inherit_fds = (l->flags & FH_LAUNCH_INHERIT_FDS) != 0;
    spec->sig_ignored = l->sig_ignored;
    spec->sig_blocked = l->sig_blocked;
    /* A member reset every disposition while it waited (fh_reset_signals):
     * what a fresh program has; a Python entry sets Python's own on top,
     * unless the member already did (python_ready), which a native entry
     * must not keep. */
    spec->signals_ready = m->python_ready ? r->target.kind != FH_ENTRY_NATIVE
                                          : m->signals_reset;
}

/* A connection accepted: see what it is. */
static int take(struct fh_member *m)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    int rc;

    m->n = 0;
    m->mflags = 0;
    m->nfds = 0;
    m->state = FH_HANDOFF_PEER;
    if (getsockopt(m->conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        (cred.uid != 0 && cred.uid != m->uid))
        return FH_MEMBER_HANDOFF;
    m->state = FH_HANDOFF_MESSAGE;
    rc = receive(m);
    if (rc == -EAGAIN || rc == -EWOULDBLOCK) {
        rc = wait_request(m);
        if (rc == -ETIMEDOUT) {
            m->state = FH_HANDOFF_EXPIRED;
            return FH_MEMBER_HANDOFF;
        }
        rc = rc < 0 ? rc : receive(m);
    }
    if (rc < 0) {
        m->state = FH_HANDOFF_PENDING;   /* the template reads the error */
        return FH_MEMBER_HANDOFF;
    }
    return fh__member_take_received(m, cred.pid);
}

int fh__member_take_received(struct fh_member *m, pid_t client_pid)
{
    struct fh_taken_launch *r = &m->run;
    struct fh_req_result why;

    if (fh_request_check(m->buf, m->n, m->mflags, m->nfds, &r->view,
                         &why) != FH_MSG_LAUNCH ||
        fh_launch_decide(&r->view, m->fds, m->nfds,
                         &r->target) == FH_ENTRY_ERROR ||
        (r->target.kind != FH_ENTRY_NATIVE && !m->python))
        return FH_MEMBER_HANDOFF;     /* the template answers it */
    become_secondary(m, r, client_pid);
    if (r->target.kind == FH_ENTRY_NATIVE)        /* never returns */
        fh_run_native(&r->spec, r->target.name, r->target.symbol);
    /* A Python entry: the process's setup is done here too, as
     * fh_run_native does it; Python is left only its own objects. */
    fh__child_setup_or_exit(&r->spec);
    return FH_MEMBER_PYTHON;
}

FH_API int fh_member_next(struct fh_member *m)
{
    struct epoll_event ev;
    int r;

    for (;;) {
        r = epoll_wait(m->epoll_fd, &ev, 1, -1);
        if (r < 0)
            return -errno;   /* -EINTR: the caller runs its handlers */
        if (ev.data.fd == m->ctl_fd)      /* never -1: listen_fd is not */
            return FH_MEMBER_RETIRED;
        m->conn = accept4(m->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (m->conn >= 0) {
            m->accepted_us = now_us();
            return take(m);
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED &&
            errno != EINTR)
            return -errno;
        /* Another member (or the template) took it first. */
    }
}
