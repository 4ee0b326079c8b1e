/*
 * ipc.c - a native secondary's side of forkhost IPC (DPDK's rte_mp).
 *
 * The primary (Python, forkhost/ipc.py) listens on <runtime>/<prefix>/ipc.sock;
 * a secondary joins on its first IPC call: connect, HELLO, wait for WELCOME,
 * start one receive thread.  The wire format is in forkhost/ipc.h and
 * docs/ipc.md.  Everything here is one connection to one peer, so a request
 * waits for at most one reply.
 *
 * Threads: the receive thread runs actions and async callbacks; any thread
 * may send, request or reply.  g.lock guards the action list, the pending
 * requests and the connection's life; it is never held while an action or
 * callback runs, so those may send, reply and request asynchronously.  A
 * sync request on the receive thread fails with EDEADLK: that thread is the
 * one that would have to receive the reply.
 *
 * The connection fd is closed only by fh_ipc_stop() (after the thread is
 * joined) or in a forked child, never while another thread may be sending
 * on it: when the primary goes away the thread only marks the state
 * CLOSED, so a recycled fd number can never receive our records.
 *
 * A sync request *leads* when it can: waking the caller from the receive
 * thread costs more than the round trip itself, so a requester that takes
 * g.rx (whoever holds it reads the connection) takes the fd out of the
 * thread's epoll set, reads until its own reply is in, puts the fd back
 * (epoll reports at once what it left unread) and hands every other
 * record to the thread (g.deferred), which runs all actions and async
 * callbacks as always.  If g.rx is taken, it waits on g.cond.
 */
#include "forkhost/ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct fh_ipc_hdr) == FH_IPC_HDR_SIZE, "header layout");
_Static_assert(sizeof(struct fh_ipc_hello) == 16, "HELLO layout");
_Static_assert(sizeof(struct fh_ipc_welcome) == 16, "WELCOME layout");
_Static_assert(sizeof(struct fh_ipc_exit_notice) == 16, "exit notice layout");

/* connect + HELLO + WELCOME must not hang on a wedged primary. */
#define FH_IPC_CONNECT_TIMEOUT_MS 5000
/* A send from an ordinary thread waits this long for room in a full
 * buffer; the receive thread never waits. */
#define FH_IPC_SEND_TIMEOUT_MS 1000
/* Requests whose caller passes no timeout. */
#define FH_IPC_DEFAULT_TIMEOUT_MS 5000
/* Records read per wake-up before the thread looks at its deadlines. */
#define FH_IPC_BATCH 64
#define FH_CMSG_SPACE CMSG_SPACE(FH_IPC_FDS_MAX * sizeof(int))

enum { ST_IDLE, ST_RUNNING, ST_CLOSED };

struct action {
    struct action  *next;
    fh_ipc_action_t fn;
    char            name[FH_IPC_NAME_MAX];
};

struct pending {
    struct pending    *next;
    uint64_t           id;
    bool               done;    /* answered, primary gone, or given up */
    bool               heap;    /* async: malloc'd, freed after its callback */
    bool               issuing; /* async: its caller is still sending it */
    int                nb_sent;
    struct fh_ipc_msg *reply;   /* malloc'd when the answer arrived */
    struct timespec    deadline;/* CLOCK_MONOTONIC */
    fh_ipc_async_t     cb;
    void              *arg;
    struct fh_ipc_msg  req;     /* async only: handed back to cb */
};

/* A record a leading requester read for the receive thread. */
struct deferred {
    struct deferred  *next;
    struct fh_ipc_hdr h;
    int               fds[FH_IPC_FDS_MAX];
    int               nfds;
    unsigned char     param[];    /* h.param_len bytes */
};

/* What an action's peer argument points at, on the receive thread's stack. */
struct peer {
    uint64_t id;                /* 0: a message, nothing to answer */
    bool     replied;
};

/* Inherited from the primary through fork: written once by
 * fh_ipc_set_primary() before the template fork, only read afterwards. */
static char  g_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static pid_t g_primary_pid;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t  cond;       /* CLOCK_MONOTONIC; sync requests wait here */
    int             fd;         /* the connection to the primary, or -1 */
    int             wake;       /* eventfd: stop, new deadline, handed-over work */
    int             epfd;       /* the thread's: fd (unless a leader has it), wake */
    bool            have_thread;
    bool            stopping;
    pthread_t       thread;
    struct action  *actions;
    struct pending *pending;
    pthread_mutex_t rx;         /* held by whoever reads g.fd */
    struct deferred *deferred, **deferred_tail;  /* for the thread, in order */
    struct pending  *due;       /* async requests completed off the thread */
} g = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1, -1, -1,
        false, false, 0, NULL, NULL, PTHREAD_MUTEX_INITIALIZER,
        NULL, &g.deferred, NULL };

/* ST_*.  Written under g.lock; read without it on the fast path of every
 * call (release/acquire below), so a caller that sees ST_RUNNING also sees
 * g.fd and the thread that the starter set before publishing it. */
static atomic_int g_state = ST_IDLE;
/* Request ids only need to be unique in this process: relaxed. */
static atomic_uint_fast64_t g_next_id = 1;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Thread_local bool t_on_ipc_thread;
static _Thread_local const struct peer *t_peer; /* the running action's */

/* Counters, each an independent tally read only by fh_ipc_stats(): no
 * ordering with any other memory is needed, so every access is relaxed. */
static struct {
    atomic_uint_fast64_t sent, received, dropped, notices_ignored, no_action,
        malformed, action_errors, timeouts, peer_died, late_replies,
        send_failed;
} st;
#define COUNT(field) atomic_fetch_add_explicit(&st.field, 1, memory_order_relaxed)

/* -- helpers ---------------------------------------------------------- */

static void now_plus(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static long ms_until(const struct timespec *ts)
{
    struct timespec now;
    long ms;

    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (long)(ts->tv_sec - now.tv_sec) * 1000
         + (ts->tv_nsec - now.tv_nsec) / 1000000L;
    return ms < 0 ? 0 : ms;
}

static long timeout_ms(const struct timespec *ts)
{
    if (!ts)
        return FH_IPC_DEFAULT_TIMEOUT_MS;
    return (long)ts->tv_sec * 1000 + ts->tv_nsec / 1000000L;
}

static void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static bool is_reserved(const char *name)
{
    return strncmp(name, FH_IPC_RESERVED_PREFIX,
                   sizeof FH_IPC_RESERVED_PREFIX - 1) == 0;
}

/* 0, or -1 with errno for a name that cannot go on the wire. */
static int check_name(const char *name)
{
    size_t n;

    if (!name) {
        errno = EINVAL;
        return -1;
    }
    n = strnlen(name, FH_IPC_NAME_MAX);
    if (n == 0) {
        errno = EINVAL;
        return -1;
    }
    if (n >= FH_IPC_NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* What a sender must refuse before anything goes out. */
static int check_msg(const struct fh_ipc_msg *m, bool user)
{
    if (!m) {
        errno = EINVAL;
        return -1;
    }
    if (check_name(m->name) < 0)
        return -1;
    if (user && is_reserved(m->name)) {
        errno = EINVAL;
        return -1;
    }
    if (m->len_param < 0 || m->num_fds < 0) {
        errno = EINVAL;
        return -1;
    }
    if (m->len_param > FH_IPC_PARAM_MAX || m->num_fds > FH_IPC_FDS_MAX) {
        errno = EMSGSIZE;
        return -1;
    }
    for (int i = 0; i < m->num_fds; i++) {
        if (fcntl(m->fds[i], F_GETFD) < 0) {
            errno = EBADF;
            return -1;
        }
    }
    return 0;
}

/* -- the wire --------------------------------------------------------- */

/* Send one record.  0, or -1 with errno (EAGAIN: the buffer stayed full;
 * EPIPE/ECONNRESET: the primary is gone). */
static int send_record(int fd, uint16_t type, uint64_t id, int32_t status,
                       const char *name, const void *param, uint32_t plen,
                       const int *fds, int nfds)
{
    union {
        struct fh_ipc_hdr h;
        unsigned char     bytes[FH_IPC_RECORD_MAX];
    } buf;
    union {
        struct cmsghdr hdr;
        unsigned char  bytes[FH_CMSG_SPACE];
    } ctl;
    struct iovec iov;
    struct msghdr mh;
    ssize_t n;

    memset(&buf.h, 0, sizeof buf.h);
    buf.h.magic = FH_IPC_MAGIC;
    buf.h.version = FH_IPC_VERSION;
    buf.h.type = type;
    buf.h.len = FH_IPC_HDR_SIZE + plen;
    buf.h.nfds = (uint32_t)nfds;
    buf.h.id = id;
    buf.h.param_len = plen;
    buf.h.status = status;
    if (name)
        strncpy(buf.h.name, name, FH_IPC_NAME_MAX - 1);
    if (plen)
        memcpy(buf.bytes + FH_IPC_HDR_SIZE, param, plen);

    iov.iov_base = buf.bytes;
    iov.iov_len = FH_IPC_HDR_SIZE + plen;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds > 0) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.bytes;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN && !t_on_ipc_thread) {
        struct pollfd p = { .fd = fd, .events = POLLOUT };

        if (poll(&p, 1, FH_IPC_SEND_TIMEOUT_MS) == 1)
            n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        else
            errno = EAGAIN;
    }
    if (n < 0) {
        COUNT(send_failed);
        return -1;
    }
    COUNT(sent);
    return 0;
}

/* Send to the primary: ENOTCONN unless joined and it is still there. */
static int send_to_primary(uint16_t type, uint64_t id, int32_t status,
                           const struct fh_ipc_msg *m)
{
    /* acquire: see g_state. */
    if (atomic_load_explicit(&g_state, memory_order_acquire) != ST_RUNNING) {
        errno = ENOTCONN;
        return -1;
    }
    if (send_record(g.fd, type, id, status, m->name, m->param,
                    (uint32_t)m->len_param, m->fds, m->num_fds) == 0)
        return 0;
    if (errno == EPIPE || errno == ECONNRESET)
        errno = ENOTCONN;       /* it closed before we noticed */
    return -1;
}

/*
 * Receive one record into hdr/param/fds.  1: got one; 0: EOF; -1 with
 * errno: EAGAIN (nothing there), EBADMSG (malformed: counted, fds closed),
 * or a socket error.
 */
static int recv_record(int fd, struct fh_ipc_hdr *hdr, unsigned char *param,
                       int *fds, int *nfds, int flags)
{
    union {
        struct fh_ipc_hdr h;
        unsigned char     bytes[FH_IPC_RECORD_MAX];
    } buf;
    union {
        struct cmsghdr hdr;
        unsigned char  bytes[FH_CMSG_SPACE];
    } ctl;
    struct iovec iov = { buf.bytes, sizeof buf.bytes };
    struct msghdr mh;
    struct cmsghdr *c;
    ssize_t n;
    int got = 0;

    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.bytes;
    mh.msg_controllen = sizeof ctl.bytes;
    n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | flags);
    if (n < 0)
        return -1;
    for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

            for (int i = 0; i < k && got < FH_IPC_FDS_MAX; i++)
                memcpy(&fds[got++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    *nfds = got;
    if (n == 0 && got == 0)
        return 0;
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || (size_t)n < FH_IPC_HDR_SIZE)
        goto malformed;
    memcpy(hdr, buf.bytes, sizeof *hdr);
    if (hdr->magic != FH_IPC_MAGIC || hdr->version != FH_IPC_VERSION
        || hdr->len != (uint32_t)n || hdr->param_len != hdr->len - FH_IPC_HDR_SIZE
        || hdr->param_len > FH_IPC_PARAM_MAX || hdr->nfds != (uint32_t)got
        || hdr->name[FH_IPC_NAME_MAX - 1] != '\0')
        goto malformed;
    switch (hdr->type) {
    case FH_IPC_MSG:
    case FH_IPC_REQUEST:
    case FH_IPC_REPLY:
        if (hdr->name[0] == '\0' || (hdr->type != FH_IPC_MSG) != (hdr->id != 0))
            goto malformed;
        break;
    case FH_IPC_WELCOME:
    case FH_IPC_REFUSE:
        if (hdr->name[0] != '\0')
            goto malformed;
        break;
    default:                    /* HELLO and BYE go the other way */
        goto malformed;
    }
    memcpy(param, buf.bytes + FH_IPC_HDR_SIZE, hdr->param_len);
    return 1;

malformed:
    COUNT(malformed);
    close_fds(fds, got);
    *nfds = 0;
    errno = EBADMSG;
    return -1;
}

static void fill_msg(struct fh_ipc_msg *m, const struct fh_ipc_hdr *h,
                     const unsigned char *param, const int *fds, int nfds)
{
    memcpy(m->name, h->name, FH_IPC_NAME_MAX);
    m->len_param = (int)h->param_len;
    memcpy(m->param, param, h->param_len);
    m->num_fds = nfds;
    memcpy(m->fds, fds, nfds * sizeof(int));
    m->pid = g_primary_pid;
    m->status = h->status;
}

/* -- pending requests --------------------------------------------------- */

static void unlink_pending_locked(struct pending *p)
{
    for (struct pending **pp = &g.pending; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            return;
        }
    }
}

/* May a request be linked now?  Once the thread is leaving (stop, or the
 * primary closed) its last sweep of g.pending may already have run, and a
 * request linked after it would never complete.  The thread sets both
 * under g.lock before that sweep, so checking them under g.lock is exact. */
static bool accepting_locked(void)
{
    /* relaxed: g_state's writers hold g.lock, as we do. */
    return !g.stopping
           && atomic_load_explicit(&g_state, memory_order_relaxed) == ST_RUNNING;
}

static void wake_thread_locked(void)
{
    uint64_t one = 1;

    /* EAGAIN only when the counter is about to overflow: it is awake. */
    if (g.wake >= 0 && write(g.wake, &one, sizeof one) < 0 && errno != EAGAIN)
        COUNT(send_failed);
}

static void run_async(struct pending *p)
{
    struct fh_ipc_reply r = { p->nb_sent, p->reply ? 1 : 0, p->reply };

    p->cb(&p->req, &r, p->arg);
    free(p->reply);             /* the fds are the callback's */
    free(p);
}

/* Mark every pending request done (the primary is gone or we stop): sync
 * waiters wake up, async callbacks run here, on the receive thread. */
static void fail_all_pending(void)
{
    struct pending *due = NULL;

    pthread_mutex_lock(&g.lock);
    while (g.pending) {
        struct pending *p = g.pending;

        g.pending = p->next;
        if (!p->done && p->nb_sent && !p->reply)
            COUNT(peer_died);
        p->done = true;
        if (p->heap && !p->issuing) {   /* an issuing one: its caller */
            p->next = due;              /* sees done and calls back */
            due = p;
        }
    }
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.lock);
    while (due) {
        struct pending *p = due;

        due = p->next;
        run_async(p);
    }
}

/* Async requests past their deadline: their callbacks, with what came. */
static void expire_async(void)
{
    struct pending *due = NULL;

    pthread_mutex_lock(&g.lock);
    for (struct pending **pp = &g.pending; *pp;) {
        struct pending *p = *pp;

        if (p->heap && !p->issuing && (p->reply || ms_until(&p->deadline) == 0)) {
            *pp = p->next;
            if (p->nb_sent && !p->reply)
                COUNT(timeouts);
            p->done = true;
            p->next = due;
            due = p;
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&g.lock);
    while (due) {
        struct pending *p = due;

        due = p->next;
        run_async(p);
    }
}

static int next_timeout_ms(void)
{
    long best = -1;

    pthread_mutex_lock(&g.lock);
    for (struct pending *p = g.pending; p; p = p->next) {
        if (p->heap) {
            long ms = ms_until(&p->deadline);

            if (best < 0 || ms < best)
                best = ms;
        }
    }
    pthread_mutex_unlock(&g.lock);
    return best > 60000 ? 60000 : (int)best;
}

/* -- the receive thread ------------------------------------------------- */

static void handle_reply(const struct fh_ipc_hdr *h, const unsigned char *param,
                         const int *fds, int nfds)
{
    struct pending *p, *due = NULL;
    struct fh_ipc_msg *m = malloc(sizeof *m);

    if (!m) {
        close_fds(fds, nfds);
        return;
    }
    fill_msg(m, h, param, fds, nfds);
    pthread_mutex_lock(&g.lock);
    for (p = g.pending; p; p = p->next)
        if (p->id == h->id)
            break;
    if (!p || p->done || p->reply) {
        COUNT(late_replies);
        pthread_mutex_unlock(&g.lock);
        close_fds(m->fds, m->num_fds);
        free(m);
        return;
    }
    p->reply = m;
    if (p->heap && p->issuing) {
        /* Its caller has not finished sending: it hands it back to us
         * (deadline now) when it has, and expire_async() calls back. */
    } else if (p->heap) {
        p->done = true;
        unlink_pending_locked(p);
        due = p;
    } else {
        p->done = true;
        pthread_cond_broadcast(&g.cond);
    }
    if (due && !t_on_ipc_thread) {   /* a leader read it: callbacks run */
        due->next = g.due;           /* on the receive thread only */
        g.due = due;
        due = NULL;
        wake_thread_locked();
    }
    pthread_mutex_unlock(&g.lock);
    if (due)
        run_async(due);
}

static void handle_incoming(const struct fh_ipc_hdr *h, const unsigned char *param,
                            const int *fds, int nfds)
{
    fh_ipc_action_t fn = NULL;
    struct fh_ipc_msg *m;
    struct peer peer = { h->type == FH_IPC_REQUEST ? h->id : 0, false };
    int rc;

    pthread_mutex_lock(&g.lock);
    for (struct action *a = g.actions; a; a = a->next) {
        if (strcmp(a->name, h->name) == 0) {
            fn = a->fn;
            break;
        }
    }
    pthread_mutex_unlock(&g.lock);

    if (!fn) {
        close_fds(fds, nfds);
        if (h->type == FH_IPC_REQUEST) {
            COUNT(no_action);
            send_record(g.fd, FH_IPC_REPLY, h->id, FH_IPC_NO_ACTION, h->name,
                        NULL, 0, NULL, 0);
        } else if (is_reserved(h->name)) {
            COUNT(notices_ignored);
        } else {
            COUNT(dropped);
        }
        return;
    }
    /* 4 KiB of param: off the stack, which belongs to the actions. */
    m = malloc(sizeof *m);
    if (!m) {
        close_fds(fds, nfds);
        return;
    }
    fill_msg(m, h, param, fds, nfds);
    t_peer = &peer;
    rc = fn(m, &peer);
    t_peer = NULL;
    if (rc < 0) {
        COUNT(action_errors);
        if (peer.id && !peer.replied)
            send_record(g.fd, FH_IPC_REPLY, peer.id, FH_IPC_ACTION_FAILED,
                        h->name, NULL, 0, NULL, 0);
    }
    free(m);
}

/* On the receive thread: the records and async completions leaders
 * handed over, in the order they arrived. */
static void run_deferred(void)
{
    struct deferred *d;
    struct pending *due;

    pthread_mutex_lock(&g.lock);
    d = g.deferred;
    g.deferred = NULL;
    g.deferred_tail = &g.deferred;
    due = g.due;
    g.due = NULL;
    pthread_mutex_unlock(&g.lock);
    while (d) {
        struct deferred *next = d->next;

        handle_incoming(&d->h, d->param, d->fds, d->nfds);
        free(d);
        d = next;
    }
    while (due) {
        struct pending *next = due->next;

        run_async(due);
        due = next;
    }
}

/* A leader read a message or request: the receive thread runs its action. */
static void defer_record(const struct fh_ipc_hdr *h, const unsigned char *param,
                         const int *fds, int nfds)
{
    struct deferred *d = malloc(sizeof *d + h->param_len);

    if (!d) {
        close_fds(fds, nfds);
        return;
    }
    d->next = NULL;
    d->h = *h;
    memcpy(d->fds, fds, nfds * sizeof(int));
    d->nfds = nfds;
    memcpy(d->param, param, h->param_len);
    pthread_mutex_lock(&g.lock);
    *g.deferred_tail = d;
    g.deferred_tail = &d->next;
    wake_thread_locked();
    pthread_mutex_unlock(&g.lock);
}

/* Give the connection to the thread's epoll set, or take it away (a
 * leader).  Removed rather than masked: epoll reports a hang-up even for an
 * empty mask.  Adding it back reports at once whatever is unread. */
static void arm(bool on)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };

    ev.data.fd = g.fd;
    /* Cannot fail: both stay open until fh_ipc_stop(), which waits for
     * g.rx, and the fd is in the set exactly when nobody leads. */
    (void)epoll_ctl(g.epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, g.fd, &ev);
}

/* With g.rx held and the fd out of the thread's epoll set: read until p is
 * answered, the primary is gone, or the deadline passed. */
static void lead(struct pending *p)
{
    struct fh_ipc_hdr h;
    unsigned char param[FH_IPC_PARAM_MAX];
    int fds[FH_IPC_FDS_MAX], nfds;

    for (;;) {
        struct pollfd pf = { g.fd, POLLIN, 0 };
        bool done;
        long ms;
        int rc;

        pthread_mutex_lock(&g.lock);
        done = p->done;
        pthread_mutex_unlock(&g.lock);
        if (done || (ms = ms_until(&p->deadline)) == 0)
            return;
        rc = poll(&pf, 1, (int)(ms > 60000 ? 60000 : ms));
        if (rc <= 0)
            continue;           /* EINTR, or time to look at the deadline */
        rc = recv_record(g.fd, &h, param, fds, &nfds, MSG_DONTWAIT);
        if (rc < 0 && (errno == EBADMSG || errno == EAGAIN || errno == EINTR))
            continue;
        if (rc <= 0) {
            /* The primary is gone: no answer will come.  The thread sees
             * the EOF too once it has the fd back. */
            pthread_mutex_lock(&g.lock);
            if (!p->done) {
                COUNT(peer_died);
                p->done = true;
            }
            /* release: as in ipc_thread(); from now on calls fail with
             * ENOTCONN at once. */
            atomic_store_explicit(&g_state, ST_CLOSED, memory_order_release);
            pthread_mutex_unlock(&g.lock);
            return;
        }
        COUNT(received);
        if (h.type == FH_IPC_REPLY) {
            handle_reply(&h, param, fds, nfds);
        } else if (h.type == FH_IPC_MSG || h.type == FH_IPC_REQUEST) {
            defer_record(&h, param, fds, nfds);
        } else {
            COUNT(malformed);
            close_fds(fds, nfds);
        }
    }
}

static void *ipc_thread(void *unused)
{
    struct fh_ipc_hdr h;
    unsigned char *param = malloc(FH_IPC_PARAM_MAX);
    int fds[FH_IPC_FDS_MAX], nfds;
    bool gone = false;

    (void)unused;
    t_on_ipc_thread = true;
    while (param && !gone) {
        struct epoll_event evs[2];
        bool stop, readable = false;
        int n = epoll_wait(g.epfd, evs, 2, next_timeout_ms());

        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == g.wake) {
                uint64_t v;

                if (read(g.wake, &v, sizeof v) < 0 && errno != EAGAIN)
                    gone = true;
            } else {
                readable = true;
            }
        }
        pthread_mutex_lock(&g.lock);
        stop = g.stopping;
        pthread_mutex_unlock(&g.lock);
        if (stop)
            break;
        run_deferred();
        /* A leader took g.rx after epoll_wait() returned: it reads; the fd
         * comes back to our set when it is done. */
        if (readable && pthread_mutex_trylock(&g.rx) == 0) {
            for (int i = 0; i < FH_IPC_BATCH; i++) {
                int rc = recv_record(g.fd, &h, param, fds, &nfds, MSG_DONTWAIT);

                if (rc == 0) {
                    gone = true;
                    break;
                }
                if (rc < 0) {
                    if (errno == EBADMSG)
                        continue;
                    if (errno != EAGAIN && errno != EINTR)
                        gone = true;
                    break;
                }
                COUNT(received);
                if (h.type == FH_IPC_REPLY)
                    handle_reply(&h, param, fds, nfds);
                else if (h.type == FH_IPC_MSG || h.type == FH_IPC_REQUEST)
                    handle_incoming(&h, param, fds, nfds);
                else {
                    COUNT(malformed);   /* WELCOME/REFUSE after joining */
                    close_fds(fds, nfds);
                }
            }
            pthread_mutex_unlock(&g.rx);
        }
        expire_async();
    }
    free(param);
    run_deferred();             /* what a leader handed over before we left */
    if (gone) {
        /* The primary closed: nothing will be answered any more.  The fd
         * stays open until fh_ipc_stop() (see the top of this file). */
        pthread_mutex_lock(&g.lock);
        /* release: pairs with the acquire in callers that then fail with
         * ENOTCONN instead of sending. */
        atomic_store_explicit(&g_state, ST_CLOSED, memory_order_release);
        pthread_mutex_unlock(&g.lock);
    }
    fail_all_pending();
    return NULL;
}

/* -- joining ------------------------------------------------------------ */

static void atfork_child(void)
{
    /* Only the forking thread exists in the child: no receive thread, no
     * waiter.  The parent's connection must end with the parent, so the
     * child closes its copy; its actions and requests were the parent's. */
    struct action *a = g.actions;
    struct pending *p = g.pending;

    pthread_mutex_init(&g.lock, NULL);
    pthread_mutex_init(&g.rx, NULL);
    for (struct deferred *d = g.deferred; d;) {   /* the parent's */
        struct deferred *next = d->next;

        close_fds(d->fds, d->nfds);
        free(d);
        d = next;
    }
    g.deferred = NULL;
    g.deferred_tail = &g.deferred;
    for (struct pending *q = g.due; q;) {         /* unlinked from g.pending */
        struct pending *next = q->next;

        free(q->reply);
        free(q);
        q = next;
    }
    g.due = NULL;
    {
        pthread_condattr_t ca;

        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&g.cond, &ca);
        pthread_condattr_destroy(&ca);
    }
    if (g.fd >= 0)
        close(g.fd);
    if (g.wake >= 0)
        close(g.wake);
    if (g.epfd >= 0)
        close(g.epfd);
    g.fd = g.wake = g.epfd = -1;
    g.have_thread = g.stopping = false;
    while (a) {
        struct action *next = a->next;

        free(a);
        a = next;
    }
    g.actions = NULL;
    while (p) {                 /* sync ones live on stacks of threads */
        struct pending *next = p->next;   /* that do not exist here */

        if (p->heap) {
            free(p->reply);
            free(p);
        }
        p = next;
    }
    g.pending = NULL;
    /* relaxed: the child is single-threaded here. */
    atomic_store_explicit(&g_state, ST_IDLE, memory_order_relaxed);
}

static void init_once(void)
{
    pthread_condattr_t ca;

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_destroy(&g.cond);
    pthread_cond_init(&g.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_atfork(NULL, NULL, atfork_child);
}

/* Wait for the primary's answer to HELLO.  0, or -1 with errno. */
static int await_welcome(int fd)
{
    struct fh_ipc_hdr h;
    unsigned char *param = malloc(FH_IPC_PARAM_MAX + 1);
    int fds[FH_IPC_FDS_MAX], nfds, rc = -1;
    struct timespec deadline;

    if (!param)
        return -1;
    now_plus(&deadline, FH_IPC_CONNECT_TIMEOUT_MS);
    for (;;) {
        struct pollfd p = { fd, POLLIN, 0 };
        int n = poll(&p, 1, (int)ms_until(&deadline));

        if (n == 0) {
            errno = ETIMEDOUT;
            goto out;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto out;
        }
        n = recv_record(fd, &h, param, fds, &nfds, MSG_DONTWAIT);
        if (n == 0) {
            errno = ECONNRESET;
            goto out;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            goto out;
        }
        close_fds(fds, nfds);
        break;
    }
    if (h.type == FH_IPC_REFUSE) {
        param[h.param_len] = '\0';
        fprintf(stderr, "forkhost ipc: the primary refused: %s\n", (char *)param);
        errno = ECONNREFUSED;
        goto out;
    }
    if (h.type != FH_IPC_WELCOME || h.param_len != sizeof(struct fh_ipc_welcome)) {
        errno = EPROTO;
        goto out;
    }
    rc = 0;
out:
    free(param);
    return rc;
}

/* Connect, HELLO, WELCOME, start the thread.  Called with g.lock held. */
static int start_locked(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct fh_ipc_hello hello = { getpid(), getppid(), 0, 0 };
    struct timeval tv = { FH_IPC_CONNECT_TIMEOUT_MS / 1000, 0 };
    int fd, wake = -1, epfd = -1, e;

    if (atomic_load_explicit(&g_state, memory_order_relaxed) != ST_IDLE)
        return 0;               /* relaxed: we hold g.lock, its only writer */
    if (!g_path[0] || getpid() == g_primary_pid) {
        errno = ENOTCONN;       /* not a secondary; the primary is Python */
        return -1;
    }
    memcpy(sa.sun_path, g_path, sizeof sa.sun_path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* connect() to a full backlog blocks for SO_SNDTIMEO at most. */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno == ENOENT || errno == ECONNREFUSED)
            errno = ENOTCONN;   /* the primary has not started IPC */
        goto fail;
    }
    /* EPIPE: refused at once; the REFUSE waiting for us says why. */
    if (send_record(fd, FH_IPC_HELLO, 0, 0, NULL, &hello, sizeof hello, NULL, 0) < 0
        && errno != EPIPE && errno != ECONNRESET)
        goto fail;
    if (await_welcome(fd) < 0)
        goto fail;
    wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (wake < 0 || epfd < 0)
        goto fail;
    g.fd = fd;
    g.wake = wake;
    g.epfd = epfd;
    {
        struct epoll_event ev = { .events = EPOLLIN };

        ev.data.fd = wake;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, wake, &ev) < 0)
            goto fail_unset;
        arm(true);
    }
    g.stopping = false;
    e = pthread_create(&g.thread, NULL, ipc_thread, NULL);
    if (e) {
        errno = e;
        goto fail_unset;
    }
    g.have_thread = true;
    /* release: publishes g.fd and the thread to the lock-free readers. */
    atomic_store_explicit(&g_state, ST_RUNNING, memory_order_release);
    return 0;

fail_unset:
    g.fd = g.wake = g.epfd = -1;
fail:
    e = errno;
    if (wake >= 0)
        close(wake);
    if (epfd >= 0)
        close(epfd);
    close(fd);
    errno = e;
    return -1;
}

static int ensure_started(void)
{
    int st_now, rc;

    /* acquire: pairs with the release in start_locked(). */
    st_now = atomic_load_explicit(&g_state, memory_order_acquire);
    if (st_now == ST_RUNNING)
        return 0;
    if (st_now == ST_CLOSED) {
        errno = ENOTCONN;
        return -1;
    }
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g.lock);
    rc = start_locked();
    pthread_mutex_unlock(&g.lock);
    return rc;
}

/* -- the API -------------------------------------------------------------- */

FH_API int fh_ipc_set_primary(const char *path, pid_t primary_pid)
{
    if (!path || strlen(path) >= sizeof g_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(g_path, path);
    g_primary_pid = primary_pid;
    return 0;
}

FH_API const char *fh_ipc_socket_path(void) { return g_path; }
FH_API pid_t fh_ipc_primary_pid(void) { return g_primary_pid; }

FH_API int fh_ipc_start(void)
{
    return ensure_started();
}

FH_API int fh_ipc_register(const char *name, fh_ipc_action_t action)
{
    struct action *a;
    bool join;

    if (check_name(name) < 0)
        return -1;
    if (!action || (is_reserved(name) && strcmp(name, FH_IPC_EXIT_NOTICE) != 0
                    && strcmp(name, FH_IPC_SHUTDOWN_NOTICE) != 0)) {
        errno = EINVAL;
        return -1;
    }
    a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    strcpy(a->name, name);
    a->fn = action;
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g.lock);
    for (struct action *b = g.actions; b; b = b->next) {
        if (strcmp(b->name, name) == 0) {
            pthread_mutex_unlock(&g.lock);
            free(a);
            errno = EEXIST;
            return -1;
        }
    }
    /* Registered before joining: nothing the primary sends once we are a
     * member can miss it. */
    a->next = g.actions;
    g.actions = a;
    pthread_mutex_unlock(&g.lock);
    join = g_path[0] && getpid() != g_primary_pid;
    if (join && ensure_started() < 0) {
        int e = errno;

        fh_ipc_unregister(name);
        errno = e;
        return -1;
    }
    return 0;
}

FH_API int fh_ipc_unregister(const char *name)
{
    if (check_name(name) < 0)
        return -1;
    pthread_mutex_lock(&g.lock);
    for (struct action **pp = &g.actions; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->name, name) == 0) {
            struct action *a = *pp;

            *pp = a->next;
            pthread_mutex_unlock(&g.lock);
            free(a);
            return 0;
        }
    }
    pthread_mutex_unlock(&g.lock);
    errno = ENOENT;
    return -1;
}

FH_API int fh_ipc_send(const struct fh_ipc_msg *msg)
{
    if (check_msg(msg, true) < 0 || ensure_started() < 0)
        return -1;
    return send_to_primary(FH_IPC_MSG, 0, 0, msg);
}

FH_API int fh_ipc_request(const struct fh_ipc_msg *req, struct fh_ipc_reply *reply,
                          const struct timespec *ts)
{
    struct pending p;
    long ms = timeout_ms(ts);

    if (!reply) {
        errno = EINVAL;
        return -1;
    }
    reply->nb_sent = reply->nb_received = 0;
    reply->msgs = NULL;
    if (t_on_ipc_thread) {
        errno = EDEADLK;        /* we are the thread that would receive it */
        return -1;
    }
    if (ms < 0 || check_msg(req, true) < 0 || ensure_started() < 0)
        return -1;
    memset(&p, 0, sizeof p);    /* req unused: sync requests return */
    p.id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    now_plus(&p.deadline, ms);

    bool lead_it = pthread_mutex_trylock(&g.rx) == 0;

    pthread_mutex_lock(&g.lock);
    if (!accepting_locked()) {
        pthread_mutex_unlock(&g.lock);
        if (lead_it)
            pthread_mutex_unlock(&g.rx);
        return 0;               /* nb_sent 0: the primary is gone */
    }
    p.next = g.pending;         /* linked before sending: the reply can */
    g.pending = &p;             /* arrive before sendmsg returns */
    pthread_mutex_unlock(&g.lock);
    if (lead_it)
        arm(false);

    int sent = send_to_primary(FH_IPC_REQUEST, p.id, 0, req) == 0;

    pthread_mutex_lock(&g.lock);
    p.nb_sent = sent;
    if (!sent)
        p.done = true;
    if (lead_it) {
        pthread_mutex_unlock(&g.lock);
        lead(&p);
        arm(true);              /* the thread's again */
        pthread_mutex_unlock(&g.rx);
        pthread_mutex_lock(&g.lock);
    }
    while (!p.done) {
        if (pthread_cond_timedwait(&g.cond, &g.lock, &p.deadline) == ETIMEDOUT)
            break;
    }
    if (!p.done)
        COUNT(timeouts);
    p.done = true;
    unlink_pending_locked(&p);
    pthread_mutex_unlock(&g.lock);

    reply->nb_sent = p.nb_sent;
    reply->nb_received = p.reply ? 1 : 0;
    reply->msgs = p.reply;
    return 0;
}

FH_API int fh_ipc_request_async(const struct fh_ipc_msg *req,
                                const struct timespec *ts,
                                fh_ipc_async_t callback, void *arg)
{
    struct pending *p;
    long ms = timeout_ms(ts);
    uint64_t one = 1;

    if (!callback || ms < 0) {
        errno = EINVAL;
        return -1;
    }
    if (check_msg(req, true) < 0 || ensure_started() < 0)
        return -1;
    p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->heap = true;
    p->issuing = true;
    p->cb = callback;
    p->arg = arg;
    p->req = *req;
    p->req.num_fds = 0;         /* ours stay the caller's */
    p->id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    now_plus(&p->deadline, ms);

    pthread_mutex_lock(&g.lock);
    if (!accepting_locked()) {
        pthread_mutex_unlock(&g.lock);
        free(p);
        errno = ENOTCONN;
        return -1;
    }
    p->next = g.pending;
    g.pending = p;
    pthread_mutex_unlock(&g.lock);

    int sent = send_to_primary(FH_IPC_REQUEST, p->id, 0, req) == 0;

    pthread_mutex_lock(&g.lock);
    p->issuing = false;
    p->nb_sent = sent;
    if (p->done) {
        /* The thread gave up on it while we were sending (stop, or the
         * primary closed) and will not call back: we do, and free it. */
        pthread_mutex_unlock(&g.lock);
        run_async(p);
        return 0;
    }
    if (!sent || p->reply)      /* nothing to wait for, or answered */
        now_plus(&p->deadline, 0);      /* already: called back at the */
    pthread_mutex_unlock(&g.lock);      /* thread's next turn */
    /* A new deadline for the thread's poll(). */
    if (write(g.wake, &one, sizeof one) < 0 && errno != EAGAIN)
        return -1;
    return 0;
}

FH_API int fh_ipc_reply(const struct fh_ipc_msg *msg, const void *peer)
{
    struct peer *pr = (struct peer *)peer;

    if (!pr || pr != t_peer || !t_on_ipc_thread || !pr->id) {
        errno = EINVAL;         /* only during the action, for a request */
        return -1;
    }
    if (pr->replied) {
        errno = EALREADY;
        return -1;
    }
    if (check_msg(msg, false) < 0)
        return -1;
    pr->replied = true;
    return send_to_primary(FH_IPC_REPLY, pr->id, FH_IPC_OK, msg);
}

FH_API int fh_ipc_stop(void)
{
    uint64_t one = 1;
    pthread_t thread;
    bool join;

    if (t_on_ipc_thread) {
        errno = EDEADLK;        /* the thread cannot join itself */
        return -1;
    }
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g.lock);
    if (atomic_load_explicit(&g_state, memory_order_relaxed) == ST_RUNNING)
        send_record(g.fd, FH_IPC_BYE, 0, 0, NULL, NULL, 0, NULL, 0);
    g.stopping = true;
    join = g.have_thread;
    thread = g.thread;
    g.have_thread = false;
    if (g.wake >= 0 && write(g.wake, &one, sizeof one) < 0) {
        /* cannot happen with a fresh eventfd; the join below still ends
         * once the primary closes the connection */
    }
    pthread_mutex_unlock(&g.lock);
    if (join)
        pthread_join(thread, NULL);

    pthread_mutex_lock(&g.rx);  /* a leader still reading finishes first */
    /* What such a leader handed over after the thread left: records are
     * dropped (no thread runs actions now), callbacks still run, here. */
    pthread_mutex_lock(&g.lock);
    struct deferred *d = g.deferred;
    struct pending *due = g.due;

    g.deferred = NULL;
    g.deferred_tail = &g.deferred;
    g.due = NULL;
    pthread_mutex_unlock(&g.lock);
    while (d) {
        struct deferred *next = d->next;

        COUNT(dropped);
        close_fds(d->fds, d->nfds);
        free(d);
        d = next;
    }
    while (due) {
        struct pending *next = due->next;

        run_async(due);
        due = next;
    }
    pthread_mutex_lock(&g.lock);
    if (g.fd >= 0)
        close(g.fd);
    if (g.wake >= 0)
        close(g.wake);
    if (g.epfd >= 0)
        close(g.epfd);
    g.fd = g.wake = g.epfd = -1;
    g.stopping = false;
    /* relaxed: every reader of the state takes g.lock or sees ST_IDLE,
     * which makes it start again under g.lock. */
    atomic_store_explicit(&g_state, ST_IDLE, memory_order_relaxed);
    pthread_mutex_unlock(&g.lock);
    pthread_mutex_unlock(&g.rx);
    return 0;
}

FH_API void fh_ipc_stats(struct fh_ipc_stats *out)
{
#define LOAD(f) out->f = atomic_load_explicit(&st.f, memory_order_relaxed)
    LOAD(sent); LOAD(received); LOAD(dropped); LOAD(notices_ignored);
    LOAD(no_action); LOAD(malformed); LOAD(action_errors); LOAD(timeouts);
    LOAD(peer_died); LOAD(late_replies); LOAD(send_failed);
#undef LOAD
}
