/*
 * ipc.c - forkhost IPC (DPDK's rte_mp) in C: a secondary's side (native
 * secondaries call it through forkhost/ipc.h, Python secondaries through
 * the *_raw calls), and the primary's receive loop (fh_ipc_loop_*, at the
 * end), which forkhost/ipc.py runs on its IPC thread.
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
 * g.rx (whoever holds it reads the connection) masks the fd in the
 * thread's epoll set, reads until its own reply is in, and hands every
 * other record to the thread (g.deferred), which runs all actions and
 * async callbacks as always.  It leaves the fd masked for the next
 * request; the thread takes it back when requests stop (see arm()).  If
 * g.rx is taken, it waits on g.cond.
 */
#include "forkhost/ipc.h"
#include "ipc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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
/* A leading requester's blocking read lasts at most this long before it
 * looks at its deadline again (SO_RCVTIMEO); closer to the deadline it
 * polls for exactly the time left. */
#define FH_IPC_LEAD_SLICE_MS 50
/* How soon the thread takes back a connection a leader left masked. */
#define FH_IPC_REARM_MS 1
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
    int                outcome; /* enum fh_ipc_peer_status, once sent */
    pid_t              peer_pid;/* the primary asked, and its name, taken */
    char               peer_name[FH_IPC_PEER_NAME_MAX];  /* when linked */
    struct fh_ipc_msg *block;   /* not *_raw: the reply's (reply_block(1, 1)) */
    struct fh_ipc_msg *reply;   /* block once the answer arrived */
    unsigned char     *raw;     /* sync, *_raw: the answer goes here as it */
    int               *raw_fds; /* came (header, param) and reply is */
    int                raw_len; /* &g_raw_answered */
    struct timespec    deadline;/* CLOCK_MONOTONIC */
    fh_ipc_async_t     cb;
    void              *arg;
    struct fh_ipc_msg  req;     /* async only: handed back to cb */
};

/* pending.reply of a *_raw request once answered: its answer is in raw. */
static struct fh_ipc_msg g_raw_answered;

/* A record a leading requester read for the receive thread. */
struct deferred {
    struct deferred  *next;
    struct fh_ipc_hdr h;
    int               fds[FH_IPC_FDS_MAX];
    int               nfds;
    unsigned char     param[];    /* h.param_len bytes */
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
/* See arm(): the connection is masked in the thread's epoll; the thread
 * waits for the leader that has g.rx to wake it; when the last leader was
 * done (CLOCK_MONOTONIC ns). */
static atomic_bool g_masked, g_want_rx;
static atomic_uint_fast64_t g_lead_end;
static _Thread_local bool t_on_ipc_thread;
static _Thread_local struct fh__ipc_peer *t_peer;   /* the running action's */

/* Counters, each an independent tally read only by fh_ipc_stats() (or
 * fh_ipc_loop_stats()): no ordering with any other memory is needed, so
 * every access is relaxed. */
struct counters {
    atomic_uint_fast64_t sent, received, dropped, notices_ignored, no_action,
        malformed, action_errors, timeouts, peer_died, late_replies,
        send_failed;
};
static struct counters st;      /* this process's secondary side */
#define COUNT_IN(c, field) \
    atomic_fetch_add_explicit(&(c)->field, 1, memory_order_relaxed)
#define COUNT(field) COUNT_IN(&st, field)

/* The primary this process joined, from its WELCOME (for an attached
 * process it is not g_primary_pid); why it refused, if it did; the path
 * fh_ipc_attach() joins instead of g_path.  Written under g.lock by the
 * joining thread before the receive thread exists. */
static pid_t g_peer_pid;
static char  g_peer_name[FH_IPC_PEER_NAME_MAX];
static char  g_refusal[256];
static char  g_attach[sizeof(((struct sockaddr_un *)0)->sun_path)];

/* -- helpers ---------------------------------------------------------- */

static long timeout_ms(const struct timespec *ts)
{
    if (!ts)
        return FH_IPC_DEFAULT_TIMEOUT_MS;
    return (long)ts->tv_sec * 1000 + ts->tv_nsec / 1000000L;
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
static int check_flat(const char *name, int len_param, const int *fds, int num_fds,
                      bool user)
{
    if (check_name(name) < 0)
        return -1;
    if (user && is_reserved(name)) {
        errno = EINVAL;
        return -1;
    }
    if (len_param < 0 || num_fds < 0 || (num_fds > 0 && !fds)) {
        errno = EINVAL;
        return -1;
    }
    if (len_param > FH_IPC_PARAM_MAX || num_fds > FH_IPC_FDS_MAX) {
        errno = EMSGSIZE;
        return -1;
    }
    for (int i = 0; i < num_fds; i++) {
        if (fcntl(fds[i], F_GETFD) < 0) {
            errno = EBADF;
            return -1;
        }
    }
    return 0;
}

static int check_msg(const struct fh_ipc_msg *m, bool user)
{
    if (!m) {
        errno = EINVAL;
        return -1;
    }
    return check_flat(m->name, m->len_param, m->fds, m->num_fds, user);
}

/* Seconds (the Python binding's) to ms; -1 with EINVAL when negative. */
static long seconds_to_ms(double timeout)
{
    if (!(timeout >= 0)) {      /* (NaN too) */
        errno = EINVAL;
        return -1;
    }
    if (timeout > 86400.0 * 365)
        timeout = 86400.0 * 365;
    long ms = (long)(timeout * 1000.0);

    return ms == 0 && timeout > 0 ? 1 : ms;
}

/* -- the wire --------------------------------------------------------- */

/* Send one record on fd, waiting up to wait_ms for room in a full buffer.
 * 0, or -1 with errno (EAGAIN: the buffer stayed full; EPIPE/ECONNRESET:
 * the peer is gone).  With fds, the header and the param go as two iovecs
 * of one sendmsg (SEQPACKET keeps them one record). */
static int send_frame(int fd, uint16_t type, uint64_t id, int32_t status,
                      const char *name, const void *param, uint32_t plen,
                      const int *fds, int nfds, int wait_ms)
{
    struct fh_ipc_hdr h;
    union {
        struct cmsghdr hdr;
        unsigned char  bytes[FH_CMSG_SPACE];
    } ctl;
    struct iovec iov[2];
    struct msghdr mh;
    ssize_t n;

    memset(&h, 0, sizeof h);
    h.magic = FH_IPC_MAGIC;
    h.version = FH_IPC_VERSION;
    h.type = type;
    h.len = FH_IPC_HDR_SIZE + plen;
    h.nfds = (uint32_t)nfds;
    h.id = id;
    h.param_len = plen;
    h.status = status;
    if (name)
        strncpy(h.name, name, FH_IPC_NAME_MAX - 1);

    if (nfds == 0) {
        /* send() of one buffer: the kernel imports no msghdr or iovec,
         * which costs more than copying a (small) param here. */
        union {
            struct fh_ipc_hdr h;
            unsigned char     bytes[FH_IPC_RECORD_MAX];
        } buf;

        buf.h = h;
        if (plen)
            memcpy(buf.bytes + FH_IPC_HDR_SIZE, param, plen);
        n = send(fd, buf.bytes, FH_IPC_HDR_SIZE + plen, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN && wait_ms > 0) {
            struct pollfd p = { .fd = fd, .events = POLLOUT };

            if (poll(&p, 1, wait_ms) == 1)
                n = send(fd, buf.bytes, FH_IPC_HDR_SIZE + plen,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
            else
                errno = EAGAIN;
        }
        return n < 0 ? -1 : 0;
    }
    iov[0].iov_base = &h;
    iov[0].iov_len = FH_IPC_HDR_SIZE;
    iov[1].iov_base = (void *)param;
    iov[1].iov_len = plen;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = iov;
    mh.msg_iovlen = plen ? 2 : 1;
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
    if (n < 0 && errno == EAGAIN && wait_ms > 0) {
        struct pollfd p = { .fd = fd, .events = POLLOUT };

        if (poll(&p, 1, wait_ms) == 1)
            n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        else
            errno = EAGAIN;
    }
    return n < 0 ? -1 : 0;
}

/* A secondary's send: counted; the receive thread never waits. */
static int send_record(int fd, uint16_t type, uint64_t id, int32_t status,
                       const char *name, const void *param, uint32_t plen,
                       const int *fds, int nfds)
{
    if (send_frame(fd, type, id, status, name, param, plen, fds, nfds,
                   t_on_ipc_thread ? 0 : FH_IPC_SEND_TIMEOUT_MS) < 0) {
        COUNT(send_failed);
        return -1;
    }
    COUNT(sent);
    return 0;
}

/* Send to the primary: ENOTCONN unless joined and it is still there. */
static int send_to_primary(uint16_t type, uint64_t id, int32_t status,
                           const char *name, const void *param, int plen,
                           const int *fds, int nfds)
{
    /* acquire: see g_state. */
    if (atomic_load_explicit(&g_state, memory_order_acquire) != ST_RUNNING) {
        errno = ENOTCONN;
        return -1;
    }
    if (send_record(g.fd, type, id, status, name, param, (uint32_t)plen,
                    fds, nfds) == 0)
        return 0;
    if (errno == EPIPE || errno == ECONNRESET)
        errno = ENOTCONN;       /* it closed before we noticed */
    return -1;
}

/* Which end a record was received at decides which types are valid. */
enum side { FROM_PRIMARY, FROM_SECONDARY };

/*
 * Has the peer shut down its sending side (closed, died, or shutdown())?
 *
 * On a SOCK_SEQPACKET socket recvmsg() returns 0 both for a zero-length
 * record and at EOF, and nothing else it reports tells them apart:
 * MSG_PEEK returns the same 0, FIONREAD (SIOCINQ) sums the bytes queued,
 * which an empty record adds nothing to, and msg_flags carry no MSG_EOR
 * for AF_UNIX.  What does: the kernel returns EOF only once the receive
 * side is shut down (RCV_SHUTDOWN, set when the peer closes its end or
 * calls shutdown(SHUT_WR)), a state that never reverts and that poll()
 * reports as POLLRDHUP (POLLHUP once both directions are shut).  So a 0
 * read while poll() shows neither is a record, certainly.  A 0 read once
 * they are set may have been an empty last record or EOF; either way the
 * peer can never send again, so it is EOF (and that record, if it was one,
 * is not counted).
 */
static bool peer_shut(int fd)
{
    struct pollfd p = { fd, POLLRDHUP, 0 };
    int r;

    while ((r = poll(&p, 1, 0)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        return true;            /* cannot tell: a 0 read stays EOF */
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/*
 * recvmsg one record into buf (FH_IPC_RECORD_MAX bytes) and its fds.
 * n bytes, 0 on EOF, -1 with errno, -2 for a record that is malformed
 * however its bytes are checked (fds without data, or no bytes at all: see
 * peer_shut()); *trunc: MSG_TRUNC or MSG_CTRUNC.
 */
static ssize_t recv_raw(int fd, void *buf, int *fds, int *nfds, bool *trunc,
                        int flags)
{
    union {
        struct cmsghdr hdr;
        unsigned char  bytes[FH_CMSG_SPACE];
    } ctl;
    struct iovec iov = { buf, FH_IPC_RECORD_MAX };
    struct msghdr mh;
    struct cmsghdr *c;
    ssize_t n;
    int got = 0;

    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.bytes;
    mh.msg_controllen = sizeof ctl.bytes;
    *nfds = 0;
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
    *trunc = (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    if (n == 0 && (got > 0 || !peer_shut(fd)))
        n = -2;                 /* an empty record: malformed, not EOF */
    return n;
}

/* docs/ipc.md "Checks": is the n-byte record in buf, with nfds fds, valid
 * at this side? */
static bool record_ok(const struct fh_ipc_hdr *h, ssize_t n, int nfds, bool trunc,
                      enum side side)
{
    if (trunc || n < (ssize_t)FH_IPC_HDR_SIZE)
        return false;
    if (h->magic != FH_IPC_MAGIC || h->version != FH_IPC_VERSION
        || h->len != (uint32_t)n || h->param_len != h->len - FH_IPC_HDR_SIZE
        || h->param_len > FH_IPC_PARAM_MAX || h->nfds != (uint32_t)nfds
        || h->name[FH_IPC_NAME_MAX - 1] != '\0')
        return false;
    switch (h->type) {
    case FH_IPC_MSG:
    case FH_IPC_REQUEST:
    case FH_IPC_REPLY:
        return h->name[0] != '\0' && (h->type != FH_IPC_MSG) == (h->id != 0);
    case FH_IPC_WELCOME:
    case FH_IPC_REFUSE:
        return side == FROM_PRIMARY && h->name[0] == '\0';
    case FH_IPC_HELLO:
    case FH_IPC_BYE:
        return side == FROM_SECONDARY && h->name[0] == '\0' && h->id == 0;
    default:
        return false;
    }
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
    bool trunc = false;
    ssize_t n = recv_raw(fd, buf.bytes, fds, nfds, &trunc, flags);

    if (n == -1)
        return -1;
    if (n == 0)
        return 0;
    if (!record_ok(&buf.h, n, *nfds, trunc, FROM_PRIMARY)) {
        COUNT(malformed);
        close_fds(fds, *nfds);
        *nfds = 0;
        errno = EBADMSG;
        return -1;
    }
    memcpy(hdr, &buf.h, sizeof *hdr);
    memcpy(param, buf.bytes + FH_IPC_HDR_SIZE, hdr->param_len);
    return 1;
}

static void fill_msg(struct fh_ipc_msg *m, const struct fh_ipc_hdr *h,
                     const unsigned char *param, const int *fds, int nfds)
{
    memcpy(m->name, h->name, FH_IPC_NAME_MAX);
    m->len_param = (int)h->param_len;
    memcpy(m->param, param, h->param_len);
    m->num_fds = nfds;
    memcpy(m->fds, fds, nfds * sizeof(int));
    m->pid = g_peer_pid;
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

/* The reply of p (not *_raw) as the API hands it out: its block, with the
 * one peer entry when the request reached the primary. */
static void fill_reply(struct pending *p, struct fh_ipc_reply *r)
{
    r->nb_sent = p->nb_sent;
    r->nb_received = p->reply ? 1 : 0;
    r->msgs = p->nb_sent ? p->block : NULL;
    r->peers = p->nb_sent ? reply_peers(p->block, 1) : NULL;
    if (p->nb_sent) {
        struct fh_ipc_peer_reply *e = r->peers;

        e->pid = p->peer_pid;
        e->status = p->outcome;
        memcpy(e->name, p->peer_name, sizeof e->name);
        e->msg = p->reply;
    }
}

static void run_async(struct pending *p)
{
    struct fh_ipc_reply r;

    fill_reply(p, &r);
    p->cb(&p->req, &r, p->arg);
    free(p->block);             /* the fds are the callback's */
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
        if (!p->done && p->nb_sent && !p->reply) {
            COUNT(peer_died);
            p->outcome = FH_IPC_PEER_DIED;
        }
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
    for (struct pending *p = g.pending; p; p = p->next)
        if (p->heap)
            best = ms_sooner(best, &p->deadline);
    pthread_mutex_unlock(&g.lock);
    /* acquire: pairs with arm(); want: only this thread raises it. */
    if (atomic_load_explicit(&g_masked, memory_order_acquire)
        && !atomic_load_explicit(&g_want_rx, memory_order_relaxed)
        && (best < 0 || best > FH_IPC_REARM_MS))
        best = FH_IPC_REARM_MS;
    return best > 60000 ? 60000 : (int)best;
}

/* -- the receive thread ------------------------------------------------- */

static void handle_reply(const struct fh_ipc_hdr *h, const unsigned char *param,
                         const int *fds, int nfds)
{
    struct pending *p, *due = NULL;

    pthread_mutex_lock(&g.lock);
    for (p = g.pending; p; p = p->next)
        if (p->id == h->id)
            break;
    if (!p || p->done || p->reply) {
        COUNT(late_replies);
        pthread_mutex_unlock(&g.lock);
        close_fds(fds, nfds);
        return;
    }
    p->outcome = h->status == FH_IPC_NO_ACTION ? FH_IPC_PEER_NO_ACTION
                                               : FH_IPC_PEER_ANSWERED;
    if (p->raw) {
        /* A *_raw request (Python's): copied straight into its buffers. */
        memcpy(p->raw, h, FH_IPC_HDR_SIZE);
        memcpy(p->raw + FH_IPC_HDR_SIZE, param, h->param_len);
        memcpy(p->raw_fds, fds, nfds * sizeof(int));
        p->raw_len = (int)(FH_IPC_HDR_SIZE + h->param_len);
        p->reply = &g_raw_answered;
        p->done = true;
        pthread_cond_broadcast(&g.cond);
        pthread_mutex_unlock(&g.lock);
        return;
    }
    /* Into the block made with the request: nothing to allocate now. */
    fill_msg(p->block, h, param, fds, nfds);
    p->reply = p->block;
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
    struct fh__ipc_peer peer = { h->type == FH_IPC_REQUEST ? h->id : 0, false };
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

/* Give the connection's input to the thread's epoll, or take it away (a
 * leader), with g.rx held.  Masked with EPOLL_CTL_MOD, not removed and
 * added again: a modify neither frees nor allocates.  An empty mask still
 * reports a hang-up; the thread then waits for the leader, which reads the
 * same EOF (ipc_thread()).  Arming again reports at once whatever is
 * unread.
 *
 * A leader leaves the connection masked when it is done: requests made
 * back to back then make neither call, two of the four system calls of
 * every round trip.  The thread takes the connection back once no request
 * has been made for FH_IPC_REARM_MS (take_back()): a leader that masks it
 * wakes the thread, which then looks every FH_IPC_REARM_MS, or, while a
 * leader reads, sleeps until that leader is done (g_want_rx,
 * leader_done()).  The price: a record the primary sends right after a
 * request, when nobody reads, waits up to about 2 * FH_IPC_REARM_MS. */
static void arm(bool on)
{
    struct epoll_event ev = { .events = on ? EPOLLIN | EPOLLRDHUP : 0 };

    /* relaxed: only the holder of g.rx writes it. */
    if (atomic_load_explicit(&g_masked, memory_order_relaxed) == !on)
        return;
    ev.data.fd = g.fd;
    /* Cannot fail: both stay open until fh_ipc_stop(), which waits for
     * g.rx. */
    (void)epoll_ctl(g.epfd, EPOLL_CTL_MOD, g.fd, &ev);
    /* release: the thread reads it (acquire, after its wake-up) to choose
     * its poll timeout. */
    atomic_store_explicit(&g_masked, !on, memory_order_release);
    if (!on) {
        /* The thread may be asleep without a timeout: it must start
         * looking (once per burst of requests, not per request). */
        pthread_mutex_lock(&g.lock);
        wake_thread_locked();
        pthread_mutex_unlock(&g.lock);
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* On the thread: g.rx for reading, if nobody leads.  When a leader has it
 * and the connection is masked, the thread asks to be woken once the
 * leader is done.  The flag and g.rx are a Dekker pair (we store the flag
 * then try the lock; the leader unlocks then reads the flag): seq_cst
 * fences keep either side from missing the other. */
static bool take_rx(void)
{
    if (pthread_mutex_trylock(&g.rx) == 0)
        return true;
    /* relaxed: only a holder of g.rx changes it, and we retry under it. */
    if (!atomic_load_explicit(&g_masked, memory_order_relaxed))
        return false;           /* the leader reads; we hear of the rest */
    atomic_store_explicit(&g_want_rx, true, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (pthread_mutex_trylock(&g.rx) != 0)
        return false;           /* leader_done() will wake us */
    atomic_store_explicit(&g_want_rx, false, memory_order_relaxed);
    return true;
}

/* With g.rx held, on the thread: take a masked connection back once no
 * request has been made for FH_IPC_REARM_MS (see arm()). */
static void take_back(void)
{
    /* relaxed: written by leaders with g.rx held, which we hold. */
    uint64_t end = atomic_load_explicit(&g_lead_end, memory_order_relaxed);

    if (now_ns() - end >= FH_IPC_REARM_MS * 1000000ull)
        arm(true);
}

/* A leader is done: note when, give g.rx back, wake the thread if it
 * asked (take_rx()). */
static void leader_done(void)
{
    atomic_store_explicit(&g_lead_end, now_ns(), memory_order_relaxed);
    pthread_mutex_unlock(&g.rx);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_exchange_explicit(&g_want_rx, false, memory_order_relaxed)) {
        pthread_mutex_lock(&g.lock);    /* g.wake stays open under it */
        wake_thread_locked();
        pthread_mutex_unlock(&g.lock);
    }
}

/* With g.rx held and the fd masked in the thread's epoll set: read until p
 * is answered, the primary is gone, or the deadline passed. */
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
        if (ms >= FH_IPC_LEAD_SLICE_MS) {
            /* A blocking recvmsg, which SO_RCVTIMEO (start_locked) ends
             * after one slice at most: one syscall where poll + recvmsg
             * would be two, on every round trip. */
            rc = recv_record(g.fd, &h, param, fds, &nfds, 0);
        } else {
            rc = poll(&pf, 1, (int)ms);
            if (rc <= 0)
                continue;       /* EINTR, or time to look at the deadline */
            rc = recv_record(g.fd, &h, param, fds, &nfds, MSG_DONTWAIT);
        }
        if (rc < 0 && (errno == EBADMSG || errno == EAGAIN || errno == EINTR))
            continue;
        if (rc <= 0) {
            /* The primary is gone: no answer will come.  The thread sees
             * the EOF too once it has the fd back. */
            pthread_mutex_lock(&g.lock);
            if (!p->done) {
                COUNT(peer_died);
                p->outcome = FH_IPC_PEER_DIED;
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
        bool stop, readable = false, hangup = false;
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
                hangup = evs[i].events & (EPOLLHUP | EPOLLERR);
            }
        }
        pthread_mutex_lock(&g.lock);
        stop = g.stopping;
        pthread_mutex_unlock(&g.lock);
        if (stop)
            break;
        run_deferred();
        /* A leader took g.rx after epoll_wait() returned: it reads.  A
         * connection a leader left masked is taken back here (arm()). */
        bool reading = false;

        /* relaxed: a hint; take_rx() and take_back() decide under g.rx. */
        if (readable || atomic_load_explicit(&g_masked, memory_order_relaxed)) {
            reading = take_rx();
            if (!reading && readable && hangup) {
                /* A hang-up while a leader reads (a masked fd still
                 * reports it): the leader reads the same EOF and returns
                 * soon; wait for it rather than spin on the event. */
                pthread_mutex_lock(&g.rx);
                reading = true;
            }
        }
        if (reading) {
            take_back();
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

        free(q->block);
        free(q);
        q = next;
    }
    g.due = NULL;
    cond_init_monotonic(&g.cond);
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
            free(p->block);
            free(p);
        }
        p = next;
    }
    g.pending = NULL;
    g_attach[0] = '\0';        /* an attached parent's: not ours */
    g_peer_pid = 0;
    g_peer_name[0] = '\0';
    /* relaxed: the child is single-threaded here. */
    atomic_store_explicit(&g_masked, false, memory_order_relaxed);
    atomic_store_explicit(&g_want_rx, false, memory_order_relaxed);
    /* relaxed: the child is single-threaded here. */
    atomic_store_explicit(&g_state, ST_IDLE, memory_order_relaxed);
}

static void init_once(void)
{
    pthread_cond_destroy(&g.cond);
    cond_init_monotonic(&g.cond);
    pthread_atfork(NULL, NULL, atfork_child);
}

/* Wait for the primary's answer to HELLO.  0 (*w filled), or -1 with
 * errno (ECONNREFUSED: g_refusal says why). */
static int await_welcome(int fd, struct fh_ipc_welcome *w)
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
        snprintf(g_refusal, sizeof g_refusal, "%s", (char *)param);
        errno = ECONNREFUSED;
        goto out;
    }
    if (h.type != FH_IPC_WELCOME || h.param_len != sizeof(struct fh_ipc_welcome)) {
        errno = EPROTO;
        goto out;
    }
    memcpy(w, param, sizeof *w);
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
    struct fh_ipc_welcome w;
    int fd, wake = -1, epfd = -1, e;

    if (atomic_load_explicit(&g_state, memory_order_relaxed) != ST_IDLE)
        return 0;               /* relaxed: we hold g.lock, its only writer */
    if (g_attach[0]) {
        memcpy(sa.sun_path, g_attach, sizeof sa.sun_path);
    } else if (!g_path[0] || getpid() == g_primary_pid) {
        errno = ENOTCONN;       /* not a secondary; the primary is Python */
        return -1;
    } else {
        memcpy(sa.sun_path, g_path, sizeof sa.sun_path);
    }
    g_refusal[0] = '\0';
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
    if (await_welcome(fd, &w) < 0)
        goto fail;
    g_peer_pid = w.primary_pid;
    fh__ipc_comm(g_peer_pid, g_peer_name);
    {
        /* Only a leader's blocking read uses it: everyone else reads with
         * MSG_DONTWAIT. */
        struct timeval slice = { 0, FH_IPC_LEAD_SLICE_MS * 1000 };

        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice) < 0)
            goto fail;
    }
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
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.fd = fd;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            goto fail_unset;
    }
    g.stopping = false;
    {
        /* The thread is the library's: it blocks every signal, so that a
         * process-directed one (SIGTERM, SIGINT) goes to the program's own
         * threads, which decide.  Otherwise a secondary that blocked
         * signals to exit with a known status (fh_exit_report) could still
         * be killed through this thread.  It inherits the mask. */
        sigset_t all, old;

        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        e = pthread_create(&g.thread, NULL, ipc_thread, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
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

/* -- shared with ipc_primary.c (ipc_internal.h) ----------------------------- */

void fh__ipc_comm(pid_t pid, char *out)
{
    char path[32];
    ssize_t n = 0;
    int fd;

    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, out, FH_IPC_PEER_NAME_MAX - 1);
        close(fd);
    }
    if (n < 0)
        n = 0;
    if (n > 0 && out[n - 1] == '\n')
        n--;
    out[n] = '\0';
}

int fh__ipc_check_flat(const char *name, int len_param, const int *fds,
                       int num_fds, bool user)
{
    return check_flat(name, len_param, fds, num_fds, user);
}

int fh__ipc_send_frame(int fd, uint16_t type, uint64_t id, int32_t status,
                       const char *name, const void *param, uint32_t plen,
                       const int *fds, int nfds, int wait_ms)
{
    return send_frame(fd, type, id, status, name, param, plen, fds, nfds, wait_ms);
}

int fh__ipc_check_msg(const struct fh_ipc_msg *m, bool user)
{
    return check_msg(m, user);
}

bool fh__ipc_peer_shut(int fd)
{
    return peer_shut(fd);
}

long fh__ipc_timeout_ms(const struct timespec *ts)
{
    return timeout_ms(ts);
}

fh_ipc_action_t fh__ipc_action(const char *name)
{
    fh_ipc_action_t fn = NULL;

    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g.lock);
    for (struct action *a = g.actions; a; a = a->next) {
        if (strcmp(a->name, name) == 0) {
            fn = a->fn;
            break;
        }
    }
    pthread_mutex_unlock(&g.lock);
    return fn;
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
FH_API pid_t fh_ipc_peer_pid(void) { return g_peer_pid; }
FH_API const char *fh_ipc_peer_name(void) { return g_peer_name; }
FH_API const char *fh_ipc_refusal(void) { return g_refusal; }

FH_API int fh_ipc_start(void)
{
    return ensure_started();
}

FH_API int fh_ipc_attach(const char *path)
{
    int rc;

    if (!path || strlen(path) >= sizeof g_attach) {
        errno = ENAMETOOLONG;
        return -1;
    }
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g.lock);
    /* relaxed: we hold g.lock, the state's only writer. */
    if (atomic_load_explicit(&g_state, memory_order_relaxed) != ST_IDLE) {
        rc = strcmp(path, g_attach[0] ? g_attach : g_path) == 0 ? 0 : -1;
        pthread_mutex_unlock(&g.lock);
        if (rc < 0)
            errno = EISCONN;
        return rc;
    }
    strcpy(g_attach, path);
    rc = start_locked();
    if (rc < 0)
        g_attach[0] = '\0';
    pthread_mutex_unlock(&g.lock);
    return rc;
}

static const char *const notices[] = {
    FH_IPC_EXIT_NOTICE, FH_IPC_SHUTDOWN_NOTICE, FH_IPC_STOP_NOTICE,
    FH_IPC_WORKER_NOTICE, FH_IPC_RECLAIM_NOTICE,
};

FH_API const char *fh_ipc_notice_name(unsigned i)
{
    return i < sizeof notices / sizeof notices[0] ? notices[i] : NULL;
}

static bool is_notice(const char *name)
{
    for (size_t i = 0; i < sizeof notices / sizeof notices[0]; i++)
        if (strcmp(name, notices[i]) == 0)
            return true;
    return false;
}

FH_API int fh_ipc_register(const char *name, fh_ipc_action_t action)
{
    struct action *a;
    bool join;

    if (check_name(name) < 0)
        return -1;
    if (!action || (is_reserved(name) && !is_notice(name))) {
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
    pthread_once(&g_once, init_once);
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

FH_API int fh_ipc_send_raw(const char *name, const void *param, int len_param,
                           const int *fds, int num_fds)
{
    if (check_flat(name, len_param, fds, num_fds, true) < 0 || ensure_started() < 0)
        return -1;
    return send_to_primary(FH_IPC_MSG, 0, 0, name, param, len_param, fds, num_fds);
}

FH_API int fh_ipc_send(const struct fh_ipc_msg *msg)
{
    if (fh__ipc_primary_here())         /* a C primary: to every member */
        return fh__ipc_primary_send(msg, 0) < 0 ? -1 : 0;
    if (check_msg(msg, true) < 0)
        return -1;
    return fh_ipc_send_raw(msg->name, msg->param, msg->len_param, msg->fds,
                           msg->num_fds);
}

/* A sync request, checked.  The reply's msgs and peers are one malloc'd
 * block (or NULL); a *_raw one (raw) gets its answer in raw and what
 * became of it in *raw_outcome. */
static int request_sync(const char *name, const void *param, int len_param,
                        const int *fds, int num_fds, long ms,
                        struct fh_ipc_reply *reply, void *raw, int *raw_fds,
                        int *raw_len, int *raw_outcome)
{
    struct pending p;

    reply->nb_sent = reply->nb_received = 0;
    reply->msgs = NULL;
    reply->peers = NULL;
    if (t_on_ipc_thread) {
        errno = EDEADLK;        /* we are the thread that would receive it */
        return -1;
    }
    if (ms < 0) {
        errno = EINVAL;
        return -1;
    }
    if (check_flat(name, len_param, fds, num_fds, true) < 0 || ensure_started() < 0)
        return -1;
    memset(&p, 0, sizeof p);    /* req unused: sync requests return */
    p.raw = raw;
    p.raw_fds = raw_fds;
    p.outcome = FH_IPC_PEER_TIMED_OUT;  /* unless something else happens */
    if (!raw && !(p.block = reply_block(1, 1)))
        return -1;
    p.id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    now_plus(&p.deadline, ms);

    bool lead_it = pthread_mutex_trylock(&g.rx) == 0;

    pthread_mutex_lock(&g.lock);
    if (!accepting_locked()) {
        pthread_mutex_unlock(&g.lock);
        if (lead_it)
            pthread_mutex_unlock(&g.rx);
        free(p.block);
        return 0;               /* nb_sent 0: the primary is gone */
    }
    p.peer_pid = g_peer_pid;    /* (a stop resets them) */
    memcpy(p.peer_name, g_peer_name, sizeof p.peer_name);
    p.next = g.pending;         /* linked before sending: the reply can */
    g.pending = &p;             /* arrive before sendmsg returns */
    pthread_mutex_unlock(&g.lock);
    if (lead_it)
        arm(false);

    int sent = send_to_primary(FH_IPC_REQUEST, p.id, 0, name, param, len_param,
                               fds, num_fds) == 0;

    pthread_mutex_lock(&g.lock);
    p.nb_sent = sent;
    if (!sent)
        p.done = true;
    if (lead_it) {
        pthread_mutex_unlock(&g.lock);
        lead(&p);               /* left masked: see arm() */
        leader_done();
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

    if (raw) {
        reply->nb_sent = p.nb_sent;
        reply->nb_received = p.reply ? 1 : 0;
        *raw_len = p.reply ? p.raw_len : 0;
        *raw_outcome = p.outcome;
        return 0;
    }
    fill_reply(&p, reply);
    if (!p.nb_sent)
        free(p.block);
    return 0;
}

FH_API int fh_ipc_request(const struct fh_ipc_msg *req, struct fh_ipc_reply *reply,
                          const struct timespec *ts)
{
    if (!reply || !req) {
        errno = EINVAL;
        return -1;
    }
    if (fh__ipc_primary_here())
        return fh__ipc_primary_request(req, 0, reply, ts);
    return request_sync(req->name, req->param, req->len_param, req->fds,
                        req->num_fds, timeout_ms(ts), reply, NULL, NULL, NULL, NULL);
}

FH_API int fh_ipc_request_raw(const char *name, const void *param, int len_param,
                              const int *fds, int num_fds, double timeout,
                              void *record, int *reply_fds, int *out)
{
    struct fh_ipc_reply r;
    long ms = seconds_to_ms(timeout);
    int len = 0;

    if (!record || !reply_fds || !out) {
        errno = EINVAL;
        return -1;
    }
    out[0] = 0;
    out[1] = FH_IPC_PEER_TIMED_OUT;
    if (request_sync(name, param, len_param, fds, num_fds, ms, &r, record, reply_fds,
                     &len, &out[1]) < 0)
        return -1;
    out[0] = r.nb_sent;
    return len;
}

static int request_async(const char *name, const void *param, int len_param,
                         const int *fds, int num_fds, long ms,
                         fh_ipc_async_t callback, void *arg)
{
    struct pending *p;
    uint64_t one = 1;

    if (!callback || ms < 0) {
        errno = EINVAL;
        return -1;
    }
    if (check_flat(name, len_param, fds, num_fds, true) < 0 || ensure_started() < 0)
        return -1;
    p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->block = reply_block(1, 1);
    if (!p->block) {
        free(p);
        return -1;
    }
    p->outcome = FH_IPC_PEER_TIMED_OUT;
    p->heap = true;
    p->issuing = true;
    p->cb = callback;
    p->arg = arg;
    strcpy(p->req.name, name);
    p->req.len_param = len_param;
    if (len_param)
        memcpy(p->req.param, param, len_param);
    p->req.pid = getpid();      /* (ours stay the caller's: num_fds 0) */
    p->id = atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed);
    now_plus(&p->deadline, ms);

    pthread_mutex_lock(&g.lock);
    if (!accepting_locked()) {
        pthread_mutex_unlock(&g.lock);
        free(p->block);
        free(p);
        errno = ENOTCONN;
        return -1;
    }
    p->peer_pid = g_peer_pid;
    memcpy(p->peer_name, g_peer_name, sizeof p->peer_name);
    p->next = g.pending;
    g.pending = p;
    pthread_mutex_unlock(&g.lock);

    int sent = send_to_primary(FH_IPC_REQUEST, p->id, 0, name, param, len_param,
                               fds, num_fds) == 0;

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

FH_API int fh_ipc_request_async_raw(const char *name, const void *param,
                                    int len_param, const int *fds, int num_fds,
                                    double timeout, fh_ipc_async_t callback,
                                    void *arg)
{
    return request_async(name, param, len_param, fds, num_fds,
                         seconds_to_ms(timeout), callback, arg);
}

FH_API int fh_ipc_request_async(const struct fh_ipc_msg *req,
                                const struct timespec *ts,
                                fh_ipc_async_t callback, void *arg)
{
    if (fh__ipc_primary_here())
        return fh__ipc_primary_request_async(req, 0, ts, callback, arg);
    if (check_msg(req, true) < 0)
        return -1;
    return request_async(req->name, req->param, req->len_param, req->fds,
                         req->num_fds, timeout_ms(ts), callback, arg);
}

FH_API int fh_ipc_on_ipc_thread(void)
{
    return t_on_ipc_thread || fh__ipc_primary_thread();
}

/* A C primary's peer starts with the same struct (ipc_primary.c). */
FH_API uint64_t fh_ipc_peer_id(const void *peer)
{
    return peer ? ((const struct fh__ipc_peer *)peer)->id : 0;
}

FH_API int fh_ipc_reply_raw(uint64_t id, int status, const char *name,
                            const void *param, int len_param,
                            const int *fds, int num_fds)
{
    if (!id || status < FH_IPC_OK || status > FH_IPC_ACTION_FAILED) {
        errno = EINVAL;
        return -1;
    }
    if (check_flat(name, len_param, fds, num_fds, false) < 0)
        return -1;
    /* From inside the action that got it: the action has answered, so no
     * ACTION_FAILED follows if it then fails. */
    if (t_on_ipc_thread && t_peer && t_peer->id == id) {
        if (t_peer->replied) {
            errno = EALREADY;
            return -1;
        }
        t_peer->replied = true;
    }
    return send_to_primary(FH_IPC_REPLY, id, status, name, param, len_param,
                           fds, num_fds);
}

FH_API int fh_ipc_reply(const struct fh_ipc_msg *msg, const void *peer)
{
    const struct fh__ipc_peer *pr = peer;

    if (fh__ipc_primary_here())
        return fh__ipc_primary_reply(msg, peer);
    if (may_reply(pr, t_on_ipc_thread ? t_peer : NULL) < 0)
        return -1;
    if (check_msg(msg, false) < 0)
        return -1;
    return fh_ipc_reply_raw(pr->id, FH_IPC_OK, msg->name, msg->param,
                            msg->len_param, msg->fds, msg->num_fds);
}

FH_API int fh_ipc_leave(int bye)
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
    if (bye && atomic_load_explicit(&g_state, memory_order_relaxed) == ST_RUNNING)
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
    /* relaxed: the thread is joined and we hold g.rx. */
    atomic_store_explicit(&g_masked, false, memory_order_relaxed);
    atomic_store_explicit(&g_want_rx, false, memory_order_relaxed);
    g_attach[0] = '\0';
    g_peer_pid = 0;
    g_peer_name[0] = '\0';
    /* relaxed: every reader of the state takes g.lock or sees ST_IDLE,
     * which makes it start again under g.lock. */
    atomic_store_explicit(&g_state, ST_IDLE, memory_order_relaxed);
    pthread_mutex_unlock(&g.lock);
    pthread_mutex_unlock(&g.rx);
    return 0;
}

FH_API int fh_ipc_stop(void)
{
    return fh_ipc_leave(1);
}

FH_API void fh_ipc_stats(struct fh_ipc_stats *out)
{
    if (fh__ipc_primary_here()) {
        fh__ipc_primary_stats(out);
        return;
    }
#define LOAD(f) out->f = atomic_load_explicit(&st.f, memory_order_relaxed)
    LOAD(sent); LOAD(received); LOAD(dropped); LOAD(notices_ignored);
    LOAD(no_action); LOAD(malformed); LOAD(action_errors); LOAD(timeouts);
    LOAD(peer_died); LOAD(late_replies); LOAD(send_failed);
#undef LOAD
}

/* -- the primary's receive loop ------------------------------------------- */

/*
 * forkhost/ipc.py's IPC thread calls fh_ipc_loop_run() (with the GIL
 * released) and gets upcalls (taking the GIL) only for what Python must
 * decide.  The hot path of a request from a member is: epoll_wait,
 * recvmsg, the checks, one upcall that runs the action, whose reply is
 * framed and sent by fh_ipc_send_fd(), back to epoll_wait.
 *
 * An epoll event carries the fd and the generation it was watched under,
 * so an event for a connection that an earlier upcall of the same batch
 * dropped (its fd number perhaps already reused by a new connection) is
 * recognised as stale and skipped.
 */

enum { W_NONE = 0 };

/* Replies an upcall made, sent when it returns (fh_ipc_send_reply()). */
#define FH_IPC_REPLY_QUEUE 4

struct queued_reply {
    int      fd;
    uint32_t len;
    union {
        struct fh_ipc_hdr h;
        unsigned char     bytes[FH_IPC_RECORD_MAX];
    } rec;
};

struct fh_ipc_loop {
    int             epfd;
    int             wake;       /* eventfd */
    pthread_mutex_t lock;       /* wake vs close: any thread may wake */
    bool            forgotten;  /* in a forked child: lock unusable */
    atomic_bool     stopping;
    /* Per fd, how it is watched and its generation: touched by the thread
     * that runs the loop (or one thread while none runs) only. */
    uint8_t        *how;
    uint32_t       *gen;
    size_t          nfd;
    struct counters st;
    union {
        struct fh_ipc_hdr h;
        unsigned char     bytes[FH_IPC_RECORD_MAX];
    } buf;                      /* the record of a RECORD upcall */
    int             fds[FH_IPC_FDS_MAX];        /* and its fds */
    /* Touched by the thread that runs the loop only. */
    int                 nq;
    struct queued_reply q[FH_IPC_REPLY_QUEUE];
};

/* The loop whose upcall this thread is in, if any. */
static _Thread_local struct fh_ipc_loop *t_upcall_loop;

/* On the loop's thread: send the replies its upcall queued, in order. */
static void flush_replies(struct fh_ipc_loop *l)
{
    for (int i = 0; i < l->nq; i++) {
        struct queued_reply *r = &l->q[i];

        if (send(r->fd, r->rec.bytes, r->len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
            COUNT_IN(&l->st, send_failed);
        else
            COUNT_IN(&l->st, sent);
    }
    l->nq = 0;
}

static long upcall(struct fh_ipc_loop *l, fh_ipc_upcall_t up, void *arg, int kind,
                   int fd, uint32_t events, int len)
{
    long r;

    t_upcall_loop = l;
    r = up(arg, kind, fd, events, len);
    t_upcall_loop = NULL;
    flush_replies(l);
    return r;
}

FH_API struct fh_ipc_loop *fh_ipc_loop_new(void)
{
    struct fh_ipc_loop *l = calloc(1, sizeof *l);
    struct epoll_event ev = { .events = EPOLLIN };

    if (!l)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ev.data.u64 = UINT64_MAX;   /* no fd has this generation */
    if (l->epfd < 0 || l->wake < 0
        || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wake, &ev) < 0) {
        int e = errno;

        if (l->epfd >= 0)
            close(l->epfd);
        if (l->wake >= 0)
            close(l->wake);
        free(l);
        errno = e;
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    return l;
}

FH_API int fh_ipc_loop_watch(struct fh_ipc_loop *l, int fd, int how)
{
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };

    if (fd < 0 || (how != FH_IPC_WATCH_EVENTS && how != FH_IPC_WATCH_RECORDS)) {
        errno = EINVAL;
        return -1;
    }
    if ((size_t)fd >= l->nfd) {
        size_t n = (size_t)fd + 64;
        uint8_t *how2 = realloc(l->how, n);
        uint32_t *gen2;

        if (!how2)
            return -1;
        l->how = how2;
        gen2 = realloc(l->gen, n * sizeof *gen2);
        if (!gen2)
            return -1;
        l->gen = gen2;
        memset(l->how + l->nfd, 0, n - l->nfd);
        memset(l->gen + l->nfd, 0, (n - l->nfd) * sizeof *gen2);
        l->nfd = n;
    }
    if (l->how[fd] == W_NONE) {
        l->gen[fd]++;
        ev.data.u64 = (uint64_t)l->gen[fd] << 32 | (uint32_t)fd;
        if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            return -1;
    }
    l->how[fd] = (uint8_t)how;  /* (same events either way) */
    return 0;
}

FH_API int fh_ipc_loop_unwatch(struct fh_ipc_loop *l, int fd)
{
    if (t_upcall_loop == l)
        flush_replies(l);       /* what was answered goes out before fd goes */
    if (fd < 0 || (size_t)fd >= l->nfd || l->how[fd] == W_NONE) {
        errno = ENOENT;
        return -1;
    }
    l->how[fd] = W_NONE;
    return epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* Read what a member sent, up to FH_IPC_BATCH records (one busy member
 * cannot starve the others: epoll is level-triggered and comes back).
 * After a REQUEST it goes back to epoll: its sender is waiting for the
 * answer and rarely has more to say, so another recvmsg would mostly find
 * nothing, a syscall on every round trip.  true when Python was told the
 * connection is gone. */
static bool read_records(struct fh_ipc_loop *l, int fd, uint32_t events,
                         fh_ipc_upcall_t up, void *arg)
{
    int *fds = l->fds, nfds;

    for (int i = 0; i < FH_IPC_BATCH; i++) {
        bool trunc = false;
        ssize_t n = recv_raw(fd, l->buf.bytes, fds, &nfds, &trunc, MSG_DONTWAIT);

        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            if (i == 0 && (events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN))
                goto gone;      /* hung up with nothing left to read */
            return false;
        }
        if (n == -1 || n == 0)
            goto gone;          /* EOF, ECONNRESET and the like */
        if (!record_ok(&l->buf.h, n, nfds, trunc, FROM_SECONDARY)) {
            COUNT_IN(&l->st, malformed);
            close_fds(fds, nfds);
            continue;           /* one bad record never costs membership */
        }
        COUNT_IN(&l->st, received);
        uint16_t type = l->buf.h.type;

        if (upcall(l, up, arg, FH_IPC_UP_RECORD, fd, events, (int)n) != 0)
            return false;       /* Python dropped it, or it is closing */
        if (type == FH_IPC_REQUEST)
            return false;
    }
    return false;

gone:
    upcall(l, up, arg, FH_IPC_UP_GONE, fd, events, 0);
    return true;
}

FH_API int fh_ipc_loop_run(struct fh_ipc_loop *l, fh_ipc_upcall_t up, void *arg)
{
    struct epoll_event evs[32];
    struct timespec deadline;
    long timeout = upcall(l, up, arg, FH_IPC_UP_TICK, -1, 0, 0);

    if (timeout >= 0)
        now_plus(&deadline, timeout);
    /* acquire: pairs with the release in fh_ipc_loop_stop(). */
    while (!atomic_load_explicit(&l->stopping, memory_order_acquire)) {
        long ms = timeout < 0 ? -1 : ms_until(&deadline);
        int n = epoll_wait(l->epfd, evs, 32, ms > 60000 ? 60000 : (int)ms);
        bool tick = n == 0;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (int i = 0; i < n; i++) {
            uint64_t key = evs[i].data.u64, v;
            int fd = (int)(uint32_t)key;

            if (key == UINT64_MAX) {
                if (read(l->wake, &v, sizeof v) < 0 && errno != EAGAIN)
                    return -1;
                tick = true;
                continue;
            }
            if ((size_t)fd >= l->nfd || l->gen[fd] != (uint32_t)(key >> 32)
                || l->how[fd] == W_NONE)
                continue;       /* dropped by an earlier upcall: stale */
            if (l->how[fd] == FH_IPC_WATCH_EVENTS) {
                upcall(l, up, arg, FH_IPC_UP_EVENT, fd, evs[i].events, 0);
                tick = true;    /* accepting or dropping moves deadlines */
            } else if (read_records(l, fd, evs[i].events, up, arg)) {
                tick = true;
            }
            if (atomic_load_explicit(&l->stopping, memory_order_acquire))
                return 0;
        }
        if (!tick && timeout >= 0 && ms_until(&deadline) == 0)
            tick = true;
        if (tick && !atomic_load_explicit(&l->stopping, memory_order_acquire)) {
            timeout = upcall(l, up, arg, FH_IPC_UP_TICK, -1, 0, 0);
            if (timeout >= 0)
                now_plus(&deadline, timeout);
        }
    }
    return 0;
}

FH_API void fh_ipc_loop_wake(struct fh_ipc_loop *l)
{
    uint64_t one = 1;

    pthread_mutex_lock(&l->lock);
    /* EAGAIN only when the counter is about to overflow: it is awake. */
    if (l->wake >= 0 && write(l->wake, &one, sizeof one) < 0 && errno != EAGAIN)
        COUNT_IN(&l->st, send_failed);
    pthread_mutex_unlock(&l->lock);
}

FH_API void fh_ipc_loop_stop(struct fh_ipc_loop *l)
{
    /* release: whoever sees the flag sees what the stopper did before. */
    atomic_store_explicit(&l->stopping, true, memory_order_release);
    fh_ipc_loop_wake(l);
}

FH_API void fh_ipc_loop_close(struct fh_ipc_loop *l)
{
    pthread_mutex_lock(&l->lock);
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->wake >= 0)
        close(l->wake);
    l->epfd = l->wake = -1;
    pthread_mutex_unlock(&l->lock);
}

FH_API void fh_ipc_loop_forget(struct fh_ipc_loop *l)
{
    /* The child is single-threaded; the lock may be held by a parent's
     * thread that does not exist here, so it is never touched again. */
    l->forgotten = true;
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->wake >= 0)
        close(l->wake);
    l->epfd = l->wake = -1;
}

FH_API void fh_ipc_loop_free(struct fh_ipc_loop *l)
{
    if (!l)
        return;
    if (!l->forgotten) {
        fh_ipc_loop_close(l);
        pthread_mutex_destroy(&l->lock);
    }
    free(l->how);
    free(l->gen);
    free(l);
}

FH_API void *fh_ipc_loop_buffer(struct fh_ipc_loop *l)
{
    return l->buf.bytes;
}

FH_API int *fh_ipc_loop_fds(struct fh_ipc_loop *l)
{
    return l->fds;
}

FH_API void fh_ipc_loop_stats(struct fh_ipc_loop *l, struct fh_ipc_stats *out)
{
#define LOAD(f) out->f = atomic_load_explicit(&l->st.f, memory_order_relaxed)
    LOAD(sent); LOAD(received); LOAD(dropped); LOAD(notices_ignored);
    LOAD(no_action); LOAD(malformed); LOAD(action_errors); LOAD(timeouts);
    LOAD(peer_died); LOAD(late_replies); LOAD(send_failed);
#undef LOAD
}

FH_API int fh_ipc_send_fd(struct fh_ipc_loop *l, int fd, int type, uint64_t id,
                          int status, const char *name, const void *param,
                          int len_param, const int *fds, int num_fds, int wait_ms)
{
    if (len_param < 0 || len_param > FH_IPC_PARAM_MAX || num_fds < 0
        || num_fds > FH_IPC_FDS_MAX || (name && strnlen(name, FH_IPC_NAME_MAX)
                                         >= FH_IPC_NAME_MAX)) {
        errno = EMSGSIZE;       /* the caller checked; this is the last guard */
        return -1;
    }
    if (t_upcall_loop == l)
        flush_replies(l);       /* records leave in the order they were made */
    if (send_frame(fd, (uint16_t)type, id, status, name, param,
                   (uint32_t)len_param, fds, num_fds, wait_ms) < 0) {
        COUNT_IN(&l->st, send_failed);
        return -1;
    }
    COUNT_IN(&l->st, sent);
    return 0;
}

FH_API int fh_ipc_send_reply(struct fh_ipc_loop *l, int fd, uint64_t id, int status,
                             const char *name, const void *param, int len_param)
{
    struct queued_reply *r;

    if (t_upcall_loop != l)
        return fh_ipc_send_fd(l, fd, FH_IPC_REPLY, id, status, name, param,
                              len_param, NULL, 0, 0);
    if (len_param < 0 || len_param > FH_IPC_PARAM_MAX || !name
        || strnlen(name, FH_IPC_NAME_MAX) >= FH_IPC_NAME_MAX) {
        errno = EMSGSIZE;
        return -1;
    }
    if (l->nq == FH_IPC_REPLY_QUEUE)
        flush_replies(l);
    r = &l->q[l->nq++];
    memset(&r->rec.h, 0, sizeof r->rec.h);
    r->rec.h.magic = FH_IPC_MAGIC;
    r->rec.h.version = FH_IPC_VERSION;
    r->rec.h.type = FH_IPC_REPLY;
    r->rec.h.len = FH_IPC_HDR_SIZE + (uint32_t)len_param;
    r->rec.h.id = id;
    r->rec.h.param_len = (uint32_t)len_param;
    r->rec.h.status = status;
    strncpy(r->rec.h.name, name, FH_IPC_NAME_MAX - 1);
    if (len_param)
        memcpy(r->rec.bytes + FH_IPC_HDR_SIZE, param, len_param);
    r->fd = fd;
    r->len = r->rec.h.len;
    return 0;
}
