/*
 * ipc_primary.c - the primary's IPC endpoint in C.  First the receive loop
 * every primary runs on its IPC thread (fh_ipc_loop_*: epoll, reading and
 * checking members' records, first records, sending), which a Python
 * primary drives from forkhost/ipc/_primary.py; then a C primary's
 * endpoint built on it: what forkhost/ipc/_primary.py does for a Python
 * primary, with no Python in the process.  Same wire (forkhost/ipc.h, docs/ipc.md), same behaviour: the
 * listener on <runtime>/<prefix>/ipc.sock, HELLO/WELCOME and the refusals
 * of a first record that is not a valid HELLO, the members, actions run
 * for their messages and requests, requests from the primary to every
 * member or one with replies counted, the template's exit records turned
 * into forkhost.exit, and forkhost.shutdown with its grace.
 *
 * One IPC thread runs the receive loop (fh_ipc_loop_*, below), which
 * reads and checks the members' records; its upcall (up() below)
 * does the rest, on that thread: actions, replies to our requests,
 * accepting, first records, exit records, deadlines.  Any thread may send
 * and request.
 *
 * P.lock guards the connection list, the pending requests, the reaped
 * pids and every conn's closing/users.  A conn is closed and freed only
 * once it is closing (dropped by the IPC thread, or torn down) and no
 * other thread is sending on it (users), so a recycled fd number never
 * gets our records.  Only the IPC thread drops conns and touches P.byfd,
 * so it uses a conn without the lock.  It never holds P.lock while an
 * action or callback runs.
 */
#include "forkhost/ipc.h"
#include "forkhost/template.h"
#include "ipc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Records drained from a refused connection before it is closed. */
#define REFUSE_DRAIN 64
/* Records read from one member per wake-up: one busy member cannot starve
 * the others. */
#define FH_IPC_BATCH 64


/* -- the receive loop ------------------------------------------------------ */

/*
 * forkhost/ipc/_primary.py's IPC thread calls fh_ipc_loop_run() (with the GIL
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
    struct fh__ipc_counters st;
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
        struct fh_ipc_verdict v;
        ssize_t n = fh__ipc_recv(fd, l->buf.bytes, fds, &nfds, FH_IPC_FROM_SECONDARY,
                                 &v, MSG_DONTWAIT);

        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            if (i == 0 && (events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN))
                goto gone;      /* hung up with nothing left to read */
            return false;
        }
        if (n == -1 || n == 0)
            goto gone;          /* EOF, ECONNRESET and the like */
        if (n == -2) {
            COUNT_IN(&l->st, malformed);
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
    counters_load(&l->st, out);
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
    if (fh__ipc_send_frame(fd, (uint16_t)type, id, status, name, param,
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
    fh__ipc_encode_hdr(&r->rec.h, FH_IPC_REPLY, id, status, name,
                       (uint32_t)len_param, 0);
    if (len_param)
        memcpy(r->rec.bytes + FH_IPC_HDR_SIZE, param, len_param);
    r->fd = fd;
    r->len = r->rec.h.len;
    return 0;
}

/* Close the fds that came with the record mh received. */
static void close_received(struct msghdr *mh)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

            for (int i = 0; i < k; i++) {
                int f;

                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
                close(f);
            }
        }
    }
}

/* REFUSE, then close so that the peer reads it: closing a unix socket with
 * unread records makes the peer's recv fail with ECONNRESET before it sees
 * ours, so drain what it sent and shut reading down first (its HELLO, if
 * still to come, fails with EPIPE). */
FH_API void fh_ipc_refuse_fd(int fd, const char *why)
{
    unsigned char buf[FH_IPC_RECORD_MAX];
    union {
        struct cmsghdr hdr;
        unsigned char  bytes[CMSG_SPACE(FH_IPC_FDS_MAX * sizeof(int))];
    } ctl;
    size_t len = strlen(why);

    fh__ipc_send_frame(fd, FH_IPC_REFUSE, 0, 0, NULL, why,
                       (uint32_t)(len > FH_IPC_PARAM_MAX ? FH_IPC_PARAM_MAX : len),
                       NULL, 0, 0);
    for (int i = 0; i < REFUSE_DRAIN; i++) {
        struct iovec iov = { buf, sizeof buf };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = ctl.bytes,
                             .msg_controllen = sizeof ctl.bytes };
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

        if (n < 0)
            break;
        close_received(&mh);
        if (n == 0 && fh__ipc_peer_shut(fd))
            break;
    }
    shutdown(fd, SHUT_RDWR);
    close(fd);
}

FH_API int fh_ipc_loop_first(struct fh_ipc_loop *l, int fd, struct fh_ipc_hello *hello)
{
    union {
        struct fh_ipc_hdr h;
        unsigned char     bytes[FH_IPC_RECORD_MAX];
    } buf;
    int fds[FH_IPC_FDS_MAX], nfds;
    struct fh_ipc_verdict v;
    char why[FH_IPC_MESSAGE_MAX + 1];
    ssize_t n = fh__ipc_recv(fd, buf.bytes, fds, &nfds, FH_IPC_FIRST_RECORD, &v,
                             MSG_DONTWAIT);

    if (n == -1)
        return errno == EAGAIN || errno == EINTR ? FH_IPC_FIRST_WAIT : FH_IPC_FIRST_GONE;
    if (n == 0)
        return FH_IPC_FIRST_GONE;
    close_fds(fds, nfds);       /* a HELLO has none; nothing else is kept */
    if (n > 0) {
        COUNT_IN(&l->st, received);
        memcpy(hello, buf.bytes + FH_IPC_HDR_SIZE, sizeof *hello);
        return FH_IPC_FIRST_HELLO;
    }
    if (v.type)
        COUNT_IN(&l->st, received);   /* well-formed, but not a HELLO */
    COUNT_IN(&l->st, malformed);
    fh_ipc_record_message(&v, why, sizeof why);
    fh_ipc_loop_unwatch(l, fd);
    fh_ipc_refuse_fd(fd, why);
    return FH_IPC_FIRST_REFUSED;
}


/* -- a C primary's endpoint ----------------------------------------------- */

struct conn {
    struct conn    *next;       /* P.conns, in accept order */
    int             fd;
    pid_t           pid;        /* SO_PEERCRED at accept */
    pid_t           ppid;       /* from its HELLO */
    char            name[FH_IPC_PEER_NAME_MAX];  /* its comm at HELLO */
    bool            joined;     /* said HELLO: a member */
    bool            closing;    /* dropped: closed once users is 0 */
    int             users;      /* threads sending on it outside P.lock */
    struct timespec hello_deadline;
};

/* fh_ipc_peer_reply.status of a peer that may still answer. */
#define PEER_WAITING (-1)

/* A request of ours.  Its reply's block (reply_block()) is made with it,
 * with room for an answer and an entry from every member it goes to, so
 * that answers never need memory. */
struct preq {
    struct preq       *next;
    uint64_t           id;
    bool               done, issuing;
    int                nb_sent;
    struct conn      **conns;   /* the members it went to (P.lock) ... */
    struct fh_ipc_peer_reply *peers;   /* ... and what became of each */
    int                npeers, nwaiting;   /* ... PEER_WAITING ones */
    struct fh_ipc_msg *msgs;    /* the block: answers in arrival order */
    int                nmsgs;
    struct timespec    deadline;/* CLOCK_MONOTONIC */
    fh_ipc_async_t     cb;      /* NULL: sync */
    void              *arg;
    struct fh_ipc_msg  req;     /* async: handed back to cb */
};

/* What an action's peer argument points at (on the IPC thread's stack):
 * the shared part first (fh_ipc_peer_id() reads its id). */
struct ppeer {
    struct fh__ipc_peer r;
    struct conn        *conn;
};

#define COUNT(f) COUNT_IN(&P.st, f)
#define COUNT_N(f, n) COUNT_N_IN(&P.st, f, n)

static struct {
    pthread_mutex_t     lock;
    pthread_cond_t      cond;   /* CLOCK_MONOTONIC: requests done, members */
    char                path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char                prefix[sizeof(((struct sockaddr_un *)0)->sun_path)];
    ino_t               ino;
    int                 listen_fd, exit_fd, exit_theirs;
    pid_t               pid, template_pid;
    struct fh_ipc_loop *loop;
    pthread_t           thread;
    bool                have_thread;
    bool                running;        /* requests accepted (P.lock) */
    int                 senders;        /* threads between targets_locked()
                                           and untarget(): P.loop in use */
    struct conn        *conns;          /* every accepted one (P.lock) */
    int                 nconns;
    struct conn       **byfd;           /* IPC thread only */
    size_t              nbyfd;
    struct preq        *pending;        /* P.lock */
    struct preq        *due;            /* async completed elsewhere */
    uint64_t            next_id;
    bool                tracking;       /* during stop: reaped pids */
    pid_t              *reaped;
    int                 nreaped, capreaped;
    struct fh_ipc_msg  *rx;             /* what an action gets */
    struct fh__ipc_counters st;         /* (sent: the loop's) */
} P = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
        .listen_fd = -1, .exit_fd = -1, .exit_theirs = -1 };

/* Set by fh_ipc_primary_prepare() (single-threaded, before any thread
 * reads it), cleared in a forked child and by stop: release/acquire so a
 * thread that sees it also sees P as prepare left it. */
static atomic_bool p_here;
static pthread_once_t p_once = PTHREAD_ONCE_INIT;
static _Thread_local bool t_ipc_thread;
static _Thread_local struct ppeer *t_ppeer;     /* the running action's */

/* -- helpers ---------------------------------------------------------- */

/* With P.lock: take c off P.conns. */
static void unlink_locked(struct conn *c)
{
    for (struct conn **pp = &P.conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            P.nconns--;
            break;
        }
    }
}

/* With P.lock: free a dropped conn once nobody sends on it. */
static void release_locked(struct conn *c)
{
    if (c->closing && c->users == 0) {
        close(c->fd);
        free(c);
    }
}

/* With P.lock: p's entry for c if it still waits for c, else NULL. */
static struct fh_ipc_peer_reply *waiting_for_locked(struct preq *p, struct conn *c)
{
    for (int i = 0; i < p->npeers; i++)
        if (p->conns[i] == c && p->peers[i].status == PEER_WAITING)
            return &p->peers[i];
    return NULL;
}

/* With P.lock: c's entry in p says status now; false when p did not wait
 * for c. */
static bool settle_locked(struct preq *p, struct conn *c, int status)
{
    struct fh_ipc_peer_reply *e = waiting_for_locked(p, c);

    if (!e)
        return false;
    e->status = status;
    p->nwaiting--;
    return true;
}

/* With P.lock: every member p still waits for gets status; how many. */
static int settle_all_locked(struct preq *p, int status)
{
    int n = p->nwaiting;

    for (int i = 0; i < p->npeers; i++)
        if (p->peers[i].status == PEER_WAITING)
            p->peers[i].status = status;
    p->nwaiting = 0;
    return n;
}

/* With P.lock: p is complete; a sync requester wakes up. */
static void finish_locked(struct preq *p)
{
    if (p->done)
        return;
    p->done = true;
    for (struct preq **pp = &P.pending; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    p->next = NULL;
    pthread_cond_broadcast(&P.cond);
}

/* Wait for sync request p to complete, or its deadline: then the members
 * still waited for count as timeouts and p is complete. */
static void await_done(struct preq *p)
{
    pthread_mutex_lock(&P.lock);
    while (!p->done) {
        if (pthread_cond_timedwait(&P.cond, &P.lock, &p->deadline) == ETIMEDOUT)
            break;
    }
    if (!p->done) {
        COUNT_N(timeouts, settle_all_locked(p, FH_IPC_PEER_TIMED_OUT));
        finish_locked(p);
    }
    pthread_mutex_unlock(&P.lock);
}

static void free_preq(struct preq *p)
{
    free(p->conns);
    free(p->msgs);
    free(p);
}

/* A complete request's reply as the API hands it out. */
static void fill_reply(const struct preq *p, struct fh_ipc_reply *r)
{
    r->nb_sent = p->nb_sent;
    r->nb_received = p->nmsgs;
    r->msgs = p->nb_sent ? p->msgs : NULL;
    r->peers = p->nb_sent ? p->peers : NULL;
}

/* An async request is complete: its callback, then it is gone (the fds of
 * the answers are the callback's). */
static void run_async(struct preq *p)
{
    struct fh_ipc_reply r;

    fill_reply(p, &r);
    p->cb(&p->req, &r, p->arg);
    free_preq(p);
}

static void run_list(struct preq *p)
{
    while (p) {
        struct preq *next = p->next;

        run_async(p);
        p = next;
    }
}

/* The loop looks at its deadlines again (from any thread). */
static void wake_loop(void)
{
    pthread_mutex_lock(&P.lock);
    if (P.have_thread)          /* (P.loop is freed only under P.lock) */
        fh_ipc_loop_wake(P.loop);
    pthread_mutex_unlock(&P.lock);
}

/* Callbacks run on the IPC thread only: from another thread, hand it over
 * (the thread runs P.due at its next tick; stop runs what is left). */
static void complete_async(struct preq *p)
{
    if (!t_ipc_thread) {
        pthread_mutex_lock(&P.lock);
        if (P.have_thread) {
            p->next = P.due;
            P.due = p;
            fh_ipc_loop_wake(P.loop);
            pthread_mutex_unlock(&P.lock);
            return;
        }
        pthread_mutex_unlock(&P.lock);
    }
    run_async(p);
}

/* With P.lock: the members to send to (to: one pid, 0: all; not except),
 * each held (users) until untarget(). */
static int targets_locked(pid_t to, pid_t except, struct conn ***out)
{
    struct conn **t;
    int n = 0;

    for (struct conn *c = P.conns; c; c = c->next)
        n++;
    t = malloc((size_t)(n ? n : 1) * sizeof *t);
    if (!t)
        return -1;
    n = 0;
    for (struct conn *c = P.conns; c; c = c->next) {
        if (c->joined && !c->closing && (to == 0 || c->pid == to) && c->pid != except) {
            c->users++;
            t[n++] = c;
        }
    }
    P.senders++;
    *out = t;
    return n;
}

static void untarget(struct conn **t, int n)
{
    pthread_mutex_lock(&P.lock);
    for (int i = 0; i < n; i++) {
        t[i]->users--;
        release_locked(t[i]);
    }
    if (--P.senders == 0)
        pthread_cond_broadcast(&P.cond);    /* stop may wait for it */
    pthread_mutex_unlock(&P.lock);
    free(t);
}

/* One record to a held member; the IPC thread never waits for room. */
static bool send_conn(struct conn *c, int type, uint64_t id, const char *name,
                      const void *param, int len, const int *fds, int nfds)
{
    return fh_ipc_send_fd(P.loop, c->fd, type, id, 0, name, param, len, fds, nfds,
                          t_ipc_thread ? 0 : FH_IPC_SEND_TIMEOUT_MS) == 0;
}

/* -- the primary's own sends and requests ----------------------------- */

static int send_to(const char *name, const void *param, int len, const int *fds,
                   int nfds, pid_t to, pid_t except, int type)
{
    struct conn **t;
    int n, reached = 0;

    pthread_mutex_lock(&P.lock);
    if (!P.running) {
        pthread_mutex_unlock(&P.lock);
        errno = ENOTCONN;
        return -1;
    }
    n = targets_locked(to, except, &t);
    pthread_mutex_unlock(&P.lock);
    if (n < 0)
        return -1;
    for (int i = 0; i < n; i++)
        reached += send_conn(t[i], type, 0, name, param, len, fds, nfds);
    untarget(t, n);
    return reached;
}

/* Send a request to the members (to: one), linked before sending: an
 * answer can come back before the send returns.  A sync one (cb NULL) is
 * returned in *out, for its caller to wait on and free; an async one is
 * the IPC thread's.  0, or -1 with errno. */
static int issue(const char *name, const void *param, int len, const int *fds,
                 int nfds, long ms, pid_t to, fh_ipc_async_t cb, void *arg,
                 struct preq **out)
{
    struct preq *p = calloc(1, sizeof *p);
    struct conn **t;
    bool finished = false, *ok;
    int n, sent = 0;

    if (!p)
        return -1;
    p->cb = cb;
    p->arg = arg;
    p->issuing = true;
    if (cb) {
        strcpy(p->req.name, name);
        p->req.len_param = len;
        if (len)
            memcpy(p->req.param, param, (size_t)len);
        p->req.pid = P.pid;
    }
    now_plus(&p->deadline, ms);
    pthread_mutex_lock(&P.lock);
    if (!P.running) {
        pthread_mutex_unlock(&P.lock);
        free(p);
        errno = ENOTCONN;
        return -1;
    }
    n = targets_locked(to, 0, &t);
    p->conns = n >= 0 ? malloc((size_t)(n ? n : 1) * sizeof *p->conns) : NULL;
    p->msgs = n >= 0 ? reply_block(n, n) : NULL;
    ok = n >= 0 ? calloc((size_t)(n ? n : 1), sizeof *ok) : NULL;
    if (!p->conns || !p->msgs || !ok) {
        pthread_mutex_unlock(&P.lock);
        if (n >= 0)
            untarget(t, n);
        free(ok);
        free_preq(p);
        errno = ENOMEM;
        return -1;
    }
    memcpy(p->conns, t, (size_t)n * sizeof *t);
    p->peers = reply_peers(p->msgs, n);
    for (int i = 0; i < n; i++) {
        p->peers[i].pid = t[i]->pid;
        p->peers[i].status = PEER_WAITING;
        memcpy(p->peers[i].name, t[i]->name, sizeof p->peers[i].name);
        p->peers[i].msg = NULL;
    }
    p->npeers = p->nwaiting = n;
    p->id = P.next_id++;
    p->next = P.pending;
    P.pending = p;
    pthread_mutex_unlock(&P.lock);

    for (int i = 0; i < n; i++) {
        ok[i] = send_conn(t[i], FH_IPC_REQUEST, p->id, name, param, len, fds, nfds);
        sent += ok[i];
    }
    pthread_mutex_lock(&P.lock);
    /* The members it did not reach are not in the reply: nb_sent entries,
     * in the order it went to them. */
    p->npeers = 0;
    for (int i = 0; i < n; i++) {
        if (!ok[i]) {
            if (p->peers[i].status == PEER_WAITING)
                p->nwaiting--;
            continue;
        }
        p->conns[p->npeers] = p->conns[i];
        p->peers[p->npeers++] = p->peers[i];
    }
    p->nb_sent = sent;
    p->issuing = false;
    if (p->nwaiting == 0 && !p->done) {
        finish_locked(p);
        finished = true;
    }
    pthread_mutex_unlock(&P.lock);
    free(ok);
    untarget(t, n);
    if (cb) {
        if (finished)
            complete_async(p);  /* (then p is gone) */
        else
            wake_loop();        /* a new deadline for the loop */
    } else {
        *out = p;
    }
    return 0;
}

static bool check_to(const struct fh_ipc_msg *m, pid_t to)
{
    if (!m || to < 0) {
        errno = EINVAL;
        return false;
    }
    return fh__ipc_check_flat(m->name, m->len_param, m->fds, m->num_fds, true) == 0;
}

int fh__ipc_primary_send(const struct fh_ipc_msg *m, pid_t to)
{
    if (!check_to(m, to))
        return -1;
    return send_to(m->name, m->param, m->len_param, m->fds, m->num_fds, to, 0,
                   FH_IPC_MSG);
}

int fh__ipc_primary_request(const struct fh_ipc_msg *req, pid_t to,
                            struct fh_ipc_reply *reply, const struct timespec *ts)
{
    long ms = timeout_ms(ts);
    struct preq *p;

    reply->nb_sent = reply->nb_received = 0;
    reply->msgs = NULL;
    reply->peers = NULL;
    if (t_ipc_thread) {
        errno = EDEADLK;        /* the thread that would receive the answers */
        return -1;
    }
    if (!check_to(req, to))
        return -1;
    if (ms < 0) {
        errno = EINVAL;
        return -1;
    }
    if (issue(req->name, req->param, req->len_param, req->fds, req->num_fds, ms,
              to, NULL, NULL, &p) < 0)
        return -1;
    await_done(p);
    fill_reply(p, reply);
    if (!p->nb_sent)
        free(p->msgs);
    free(p->conns);
    free(p);
    return 0;
}

int fh__ipc_primary_request_async(const struct fh_ipc_msg *req, pid_t to,
                                  const struct timespec *ts,
                                  fh_ipc_async_t callback, void *arg)
{
    long ms = timeout_ms(ts);

    if (!callback || ms < 0) {
        errno = EINVAL;
        return -1;
    }
    if (!check_to(req, to))
        return -1;
    return issue(req->name, req->param, req->len_param, req->fds, req->num_fds, ms,
                 to, callback, arg, NULL);
}

int fh__ipc_primary_reply(const struct fh_ipc_msg *m, const void *peer)
{
    struct ppeer *pr = (struct ppeer *)peer;
    const struct fh__ipc_peer *running = t_ipc_thread && t_ppeer ? &t_ppeer->r : NULL;

    if (may_reply(peer, running) < 0 || fh__ipc_check_msg(m, false) < 0)
        return -1;
    pr->r.replied = true;
    if (m->num_fds == 0)        /* leaves when the upcall returns */
        return fh_ipc_send_reply(P.loop, pr->conn->fd, pr->r.id, FH_IPC_OK, m->name,
                                 m->param, m->len_param);
    return fh_ipc_send_fd(P.loop, pr->conn->fd, FH_IPC_REPLY, pr->r.id, FH_IPC_OK,
                          m->name, m->param, m->len_param, m->fds, m->num_fds, 0);
}

void fh__ipc_primary_stats(struct fh_ipc_stats *out)
{
    struct fh_ipc_stats l;

    memset(&l, 0, sizeof l);
    pthread_mutex_lock(&P.lock);
    if (P.loop)
        fh_ipc_loop_stats(P.loop, &l);
    pthread_mutex_unlock(&P.lock);
    /* relaxed: see struct fh__ipc_counters. */
#define LOAD(f) out->f = l.f + atomic_load_explicit(&P.st.f, memory_order_relaxed)
    LOAD(sent); LOAD(received); LOAD(dropped); LOAD(notices_ignored); LOAD(no_action);
    LOAD(malformed); LOAD(action_errors); LOAD(timeouts); LOAD(peer_died);
    LOAD(late_replies); LOAD(send_failed);
#undef LOAD
}

bool fh__ipc_primary_here(void)
{
    /* acquire: see p_here. */
    return atomic_load_explicit(&p_here, memory_order_acquire);
}

bool fh__ipc_primary_thread(void)
{
    return t_ipc_thread;
}

/* -- the IPC thread: actions, notices, members --------------------------- */

/* Run the action for name with a message (on the IPC thread).  false when
 * there is none. */
static bool run_action(const char *name, const void *param, int len,
                       const int *fds, int nfds, pid_t from, struct ppeer *pr)
{
    fh_ipc_action_t fn = fh__ipc_action(name);
    int rc;

    if (!fn)
        return false;
    memset(P.rx->name, 0, sizeof P.rx->name);
    strcpy(P.rx->name, name);
    P.rx->len_param = len;
    if (len)
        memcpy(P.rx->param, param, (size_t)len);
    P.rx->num_fds = nfds;
    if (nfds)
        memcpy(P.rx->fds, fds, (size_t)nfds * sizeof(int));
    P.rx->pid = from;
    P.rx->status = FH_IPC_OK;
    t_ppeer = pr;
    rc = fn(P.rx, pr);
    t_ppeer = NULL;
    if (rc < 0) {
        COUNT(action_errors);
        if (pr->r.id && !pr->r.replied)
            fh_ipc_send_reply(P.loop, pr->conn->fd, pr->r.id, FH_IPC_ACTION_FAILED,
                              name, NULL, 0);
    }
    return true;
}

/* forkhost.exit to every member but pid, and to our own action. */
static void exit_notice(pid_t pid, int code, int sig, uint32_t flags)
{
    struct fh_ipc_exit_notice e = { (int32_t)pid, code, sig, flags };
    struct ppeer pr = { { 0, false }, NULL };

    send_to(FH_IPC_EXIT_NOTICE, &e, sizeof e, NULL, 0, 0, pid, FH_IPC_MSG);
    run_action(FH_IPC_EXIT_NOTICE, &e, sizeof e, NULL, 0, P.pid, &pr);
}

static struct conn *conn_of(int fd)
{
    return fd >= 0 && (size_t)fd < P.nbyfd ? P.byfd[fd] : NULL;
}

/* c is gone (EOF, BYE, no HELLO in time): it leaves every request waiting
 * for it, and a member that is not the template's child and did not say
 * BYE is reported in forkhost.exit (a secondary's exit the template
 * reports, with its status). */
static void drop(struct conn *c, bool bye)
{
    struct preq *due = NULL;
    pid_t pid = c->pid, ppid = c->ppid;
    bool member = c->joined;

    fh_ipc_loop_unwatch(P.loop, c->fd);        /* (sends what is queued) */
    P.byfd[c->fd] = NULL;
    pthread_mutex_lock(&P.lock);
    unlink_locked(c);
    c->closing = true;
    for (struct preq *p = P.pending, *next; p; p = next) {
        next = p->next;
        if (settle_locked(p, c, FH_IPC_PEER_DIED)) {
            COUNT(peer_died);
            if (p->nwaiting == 0 && !p->issuing) {
                finish_locked(p);
                if (p->cb) {
                    p->next = due;
                    due = p;
                }
            }
        }
    }
    pthread_cond_broadcast(&P.cond);           /* membership changed */
    release_locked(c);
    pthread_mutex_unlock(&P.lock);
    run_list(due);
    if (member && !bye && ppid != P.template_pid)
        exit_notice(pid, 0, 0, 0);
}

/* A REPLY from a member: to the request it answers, or counted late. */
static void reply_in(struct conn *c, const struct fh_ipc_hdr *h,
                     const unsigned char *param, const int *fds, int nfds)
{
    struct preq *p;
    struct fh_ipc_peer_reply *e = NULL;
    bool complete = false;

    pthread_mutex_lock(&P.lock);
    for (p = P.pending; p; p = p->next)
        if (p->id == h->id)
            break;
    if (p && !p->done)
        e = waiting_for_locked(p, c);
    if (!e) {
        COUNT(late_replies);
        pthread_mutex_unlock(&P.lock);
        close_fds(fds, nfds);
        return;
    }
    /* One answer per member it went to: the block has room. */
    struct fh_ipc_msg *m = &p->msgs[p->nmsgs++];

    e->status = h->status == FH_IPC_NO_ACTION ? FH_IPC_PEER_NO_ACTION
                                              : FH_IPC_PEER_ANSWERED;
    e->msg = m;
    p->nwaiting--;

    memcpy(m->name, h->name, FH_IPC_NAME_MAX);
    m->len_param = (int)h->param_len;
    memcpy(m->param, param, h->param_len);
    m->num_fds = nfds;
    if (nfds)
        memcpy(m->fds, fds, (size_t)nfds * sizeof(int));
    m->pid = c->pid;
    m->status = h->status;
    if (p->nwaiting == 0 && !p->issuing) {
        finish_locked(p);
        complete = p->cb != NULL;
    }
    pthread_mutex_unlock(&P.lock);
    if (complete)
        run_async(p);
}

/* FH_IPC_UP_RECORD: a checked record from member fd in the loop's buffer.
 * 1 tells the loop to stop reading fd. */
static long up_record(int fd)
{
    const struct fh_ipc_hdr *h = fh_ipc_loop_buffer(P.loop);
    const unsigned char *param = (const unsigned char *)h + FH_IPC_HDR_SIZE;
    const int *fds = fh_ipc_loop_fds(P.loop);
    int nfds = (int)h->nfds;
    struct conn *c = conn_of(fd);

    if (!c) {
        close_fds(fds, nfds);
        return 1;
    }
    switch (h->type) {
    case FH_IPC_MSG:
    case FH_IPC_REQUEST: {
        struct ppeer pr = { { h->type == FH_IPC_REQUEST ? h->id : 0, false }, c };

        if (run_action(h->name, param, (int)h->param_len, fds, nfds, c->pid, &pr))
            break;
        close_fds(fds, nfds);
        if (pr.r.id) {
            COUNT(no_action);
            fh_ipc_send_reply(P.loop, fd, pr.r.id, FH_IPC_NO_ACTION, h->name, NULL, 0);
        } else if (is_reserved(h->name)) {
            COUNT(notices_ignored);
        } else {
            COUNT(dropped);
        }
        break;
    }
    case FH_IPC_REPLY:
        reply_in(c, h, param, fds, nfds);
        break;
    case FH_IPC_BYE:
        drop(c, true);          /* it left; it did not exit */
        return 1;
    default:                    /* a second HELLO */
        COUNT(malformed);
        close_fds(fds, nfds);
        break;
    }
    return 0;
}

/* A connection that has not said HELLO: its first record must be a valid
 * HELLO (docs/ipc.md, "Membership"); anything else is refused at once with
 * what was wrong (fh_ipc_loop_first()).  false when it is gone. */
static bool read_first(struct conn *c, uint32_t events)
{
    struct fh_ipc_hello hello;
    struct fh_ipc_welcome w;

    switch (fh_ipc_loop_first(P.loop, c->fd, &hello)) {
    case FH_IPC_FIRST_WAIT:
        return !(events & (EPOLLHUP | EPOLLERR)) || (events & EPOLLIN);
    case FH_IPC_FIRST_GONE:
        return false;
    case FH_IPC_FIRST_REFUSED:  /* unwatched and closed: forget it */
        P.byfd[c->fd] = NULL;
        pthread_mutex_lock(&P.lock);
        unlink_locked(c);
        pthread_mutex_unlock(&P.lock);
        free(c);
        return true;
    default:
        break;
    }
    if (fh_ipc_loop_watch(P.loop, c->fd, FH_IPC_WATCH_RECORDS) < 0)
        return false;
    peer_comm(c->pid, c->name);         /* (its requests' peer entries) */
    pthread_mutex_lock(&P.lock);
    c->ppid = hello.ppid;
    c->joined = true;
    pthread_cond_broadcast(&P.cond);
    pthread_mutex_unlock(&P.lock);
    w.primary_pid = P.pid;
    w.template_pid = P.template_pid;
    w.name_max = FH_IPC_NAME_MAX;
    w.param_max = FH_IPC_PARAM_MAX;
    fh_ipc_send_fd(P.loop, c->fd, FH_IPC_WELCOME, 0, 0, NULL, &w, sizeof w, NULL, 0, 0);
    if (hello.flags & FH_IPC_HELLO_REJOIN) {
        /* Its last primary went away without a word: it has one again. */
        struct fh_ipc_primary_notice pn = { P.pid, P.template_pid };

        fh_ipc_send_fd(P.loop, c->fd, FH_IPC_MSG, 0, 0, FH_IPC_PRIMARY_NOTICE, &pn,
                       sizeof pn, NULL, 0, 0);
    }
    return true;
}

static void accept_all(void)
{
    for (;;) {
        struct ucred cr;
        socklen_t len = sizeof cr;
        char why[256] = "";
        struct conn *c;
        int fd = accept4(P.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

        if (fd < 0) {
            if (errno == ECONNABORTED || errno == EINTR)
                continue;
            if (errno != EAGAIN)
                fprintf(stderr, "forkhost ipc: accept: %s\n", strerror(errno));
            return;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
            close(fd);
            continue;
        }
        if (cr.uid != 0 && cr.uid != getuid())
            snprintf(why, sizeof why, "uid %u may not use the IPC of prefix '%s' "
                     "(only uid %u and root)", (unsigned)cr.uid, P.prefix,
                     (unsigned)getuid());
        else if (P.nconns >= FH_IPC_MAX_MEMBERS)
            snprintf(why, sizeof why, "too many IPC members (MAX_MEMBERS %d)",
                     FH_IPC_MAX_MEMBERS);
        if (why[0]) {
            fh_ipc_refuse_fd(fd, why);
            continue;
        }
        if ((size_t)fd >= P.nbyfd) {
            size_t n = (size_t)fd + 64;
            struct conn **b = realloc(P.byfd, n * sizeof *b);

            if (!b) {
                close(fd);
                continue;
            }
            memset(b + P.nbyfd, 0, (n - P.nbyfd) * sizeof *b);
            P.byfd = b;
            P.nbyfd = n;
        }
        c = calloc(1, sizeof *c);
        if (!c || fh_ipc_loop_watch(P.loop, fd, FH_IPC_WATCH_EVENTS) < 0) {
            fprintf(stderr, "forkhost ipc: cannot take a connection: %s\n",
                    strerror(errno));
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->pid = cr.pid;
        now_plus(&c->hello_deadline, FH_IPC_HELLO_TIMEOUT_MS);
        P.byfd[fd] = c;
        pthread_mutex_lock(&P.lock);
        struct conn **tail = &P.conns;

        while (*tail)
            tail = &(*tail)->next;
        *tail = c;
        P.nconns++;
        pthread_mutex_unlock(&P.lock);
    }
}

/* The template's exit records: one struct fh_template_exit per reaped
 * secondary, turned into forkhost.exit with its status. */
static void template_exits(void)
{
    for (;;) {
        struct fh_template_exit e;
        char buf[64];
        ssize_t n = recv(P.exit_fd, buf, sizeof buf, MSG_DONTWAIT);

        if (n < 0)
            return;
        if (n != (ssize_t)sizeof e)
            continue;           /* (a datagram socket has no EOF to read) */
        memcpy(&e, buf, sizeof e);
        pthread_mutex_lock(&P.lock);
        if (P.tracking) {       /* stop waits for these */
            if (P.nreaped == P.capreaped) {
                int cap = P.capreaped ? 2 * P.capreaped : 16;
                pid_t *r = realloc(P.reaped, (size_t)cap * sizeof *r);

                if (r) {
                    P.reaped = r;
                    P.capreaped = cap;
                }
            }
            if (P.nreaped < P.capreaped)
                P.reaped[P.nreaped++] = e.pid;
            pthread_cond_broadcast(&P.cond);
        }
        pthread_mutex_unlock(&P.lock);
        if (WIFEXITED(e.status))
            exit_notice(e.pid, WEXITSTATUS(e.status), 0, FH_IPC_EXIT_STATUS_KNOWN);
        else if (WIFSIGNALED(e.status))
            exit_notice(e.pid, 0, WTERMSIG(e.status), FH_IPC_EXIT_STATUS_KNOWN);
    }
}

/* FH_IPC_UP_TICK: callbacks handed over, expired async requests and HELLO
 * deadlines; the next timeout in ms, -1 for none. */
static long tick(void)
{
    struct preq *due, *expired = NULL;
    long best = -1;

    pthread_mutex_lock(&P.lock);
    due = P.due;
    P.due = NULL;
    for (struct preq *p = P.pending, *next; p; p = next) {
        next = p->next;
        if (p->cb && !p->issuing && ms_until(&p->deadline) == 0) {
            COUNT_N(timeouts, settle_all_locked(p, FH_IPC_PEER_TIMED_OUT));
            finish_locked(p);
            p->next = expired;
            expired = p;
        }
    }
    pthread_mutex_unlock(&P.lock);
    run_list(due);
    run_list(expired);
    for (size_t fd = 0; fd < P.nbyfd; fd++) {
        struct conn *c = P.byfd[fd];

        if (c && !c->joined && ms_until(&c->hello_deadline) == 0)
            drop(c, false);     /* said nothing: closed without a word */
    }
    pthread_mutex_lock(&P.lock);
    for (struct conn *c = P.conns; c; c = c->next) {
        if (!c->joined)
            best = ms_sooner(best, &c->hello_deadline);
    }
    for (struct preq *p = P.pending; p; p = p->next) {
        if (p->cb)
            best = ms_sooner(best, &p->deadline);
    }
    pthread_mutex_unlock(&P.lock);
    return best < 0 ? -1 : best + 1;
}

static long up(void *arg, int kind, int fd, uint32_t events, int len)
{
    struct conn *c;

    (void)arg;
    (void)len;
    switch (kind) {
    case FH_IPC_UP_RECORD:
        return up_record(fd);
    case FH_IPC_UP_GONE:
        if ((c = conn_of(fd)))
            drop(c, false);
        return 0;
    case FH_IPC_UP_EVENT:
        if (fd == P.listen_fd) {
            accept_all();
        } else if (fd == P.exit_fd) {
            template_exits();
        } else if ((c = conn_of(fd)) && !read_first(c, events)) {
            drop(c, false);
        }
        return 0;
    case FH_IPC_UP_TICK:
        return tick();
    default:
        return 0;
    }
}

static void *ipc_thread(void *unused)
{
    (void)unused;
    t_ipc_thread = true;
    if (fh_ipc_loop_run(P.loop, up, NULL) < 0)
        fprintf(stderr, "forkhost ipc: the receive loop failed: %s\n",
                strerror(errno));
    return NULL;
}

/* -- start and stop ------------------------------------------------------ */

/* fork() while other threads run (a program's own, after fh_init): P.lock
 * is held across it, so that the child sees P.conns and P.pending whole,
 * not halfway through another thread's change. */
static _Thread_local bool t_fork_locked;   /* (stop may clear p_here meanwhile) */

static void atfork_prepare(void)
{
    if (atomic_load_explicit(&p_here, memory_order_acquire)) {
        pthread_mutex_lock(&P.lock);
        t_fork_locked = true;
    }
}

static void atfork_parent(void)
{
    if (t_fork_locked) {
        t_fork_locked = false;
        pthread_mutex_unlock(&P.lock);
    }
}

/* A forked child has no IPC thread: it forgets the endpoint, closing its
 * copies of the connections (the parent's membership ends with the
 * parent) and of the listener.  Only close() and plain stores: nothing is
 * freed (the IPC thread may have been inside realloc of P.byfd or of the
 * loop's tables when the parent forked; the few blocks stay with the
 * child).  The exit channel is left alone: the template keeps its end by
 * number and closes the rest itself. */
static void atfork_child(void)
{
    t_fork_locked = false;      /* P.lock is made anew below */
    if (!atomic_load_explicit(&p_here, memory_order_relaxed))
        return;                 /* relaxed: the child is single-threaded */
    atomic_store_explicit(&p_here, false, memory_order_relaxed);
    for (struct conn *c = P.conns; c; c = c->next)
        close(c->fd);
    if (P.listen_fd >= 0)
        close(P.listen_fd);
    if (P.loop)
        fh_ipc_loop_forget(P.loop);
    memset(&P, 0, sizeof P);
    P.listen_fd = P.exit_fd = P.exit_theirs = -1;
    pthread_mutex_init(&P.lock, NULL);
    cond_init_monotonic(&P.cond);
}

static void init_once(void)
{
    pthread_cond_destroy(&P.cond);
    cond_init_monotonic(&P.cond);
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

FH_API int fh_ipc_primary_prepare(const char *socket_path)
{
    int sv[2];
    const char *slash, *prev;

    pthread_once(&p_once, init_once);
    if (atomic_load_explicit(&p_here, memory_order_relaxed)) {
        errno = EALREADY;       /* relaxed: only this thread sets it */
        return -1;
    }
    if (!socket_path || strlen(socket_path) >= sizeof P.path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (fh_ipc_set_primary(socket_path, getpid()) < 0)
        return -1;
    /* The template must never block on us: both ends nonblocking (a full
     * buffer drops the record). */
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        return -1;
    strcpy(P.path, socket_path);
    /* The prefix, for REFUSE's words: the directory ipc.sock is in. */
    slash = strrchr(P.path, '/');
    prev = slash;
    while (prev && prev > P.path && prev[-1] != '/')
        prev--;
    if (slash && prev)
        snprintf(P.prefix, sizeof P.prefix, "%.*s", (int)(slash - prev), prev);
    P.pid = getpid();
    P.exit_fd = sv[0];
    P.exit_theirs = sv[1];
    /* release: see p_here. */
    atomic_store_explicit(&p_here, true, memory_order_release);
    return sv[1];
}

static int bind_listener(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    mode_t old;
    int fd, rc;

    strcpy(sa.sun_path, P.path);
    unlink(P.path);             /* a dead primary's: we hold the prefix */
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    old = umask(0177);          /* created 0600 */
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || chmod(P.path, 0600) < 0 || listen(fd, SOMAXCONN) < 0
        || stat(P.path, &st) < 0) {
        int e = errno;

        close(fd);
        errno = e;
        return -1;
    }
    P.ino = st.st_ino;
    return fd;
}

/* Each member costs an fd: raise the soft RLIMIT_NOFILE towards the hard
 * one so that FH_IPC_MAX_MEMBERS of them fit (as forkhost/ipc/_primary.py does for
 * --max-secondaries). */
static void raise_nofile(void)
{
    struct rlimit rl;
    rlim_t want = FH_IPC_MAX_MEMBERS + 256;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY
        || rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

FH_API int fh_ipc_primary_start(pid_t template_pid)
{
    sigset_t all, old;
    int e;

    if (!fh__ipc_primary_here() || template_pid <= 0) {
        errno = EINVAL;
        return -1;
    }
    if (P.have_thread)
        return 0;
    if (P.exit_theirs >= 0) {   /* the template's now */
        close(P.exit_theirs);
        P.exit_theirs = -1;
    }
    P.template_pid = template_pid;
    raise_nofile();
    P.rx = P.rx ? P.rx : malloc(sizeof *P.rx);
    P.loop = fh_ipc_loop_new();
    if (!P.rx || !P.loop)
        goto fail;
    P.listen_fd = bind_listener();
    if (P.listen_fd < 0
        || fh_ipc_loop_watch(P.loop, P.listen_fd, FH_IPC_WATCH_EVENTS) < 0
        || (P.exit_fd >= 0
            && fh_ipc_loop_watch(P.loop, P.exit_fd, FH_IPC_WATCH_EVENTS) < 0))
        goto fail;
    P.next_id = 1;
    pthread_mutex_lock(&P.lock);
    P.running = true;
    P.have_thread = true;
    pthread_mutex_unlock(&P.lock);
    /* The library's thread blocks every signal: a process-directed one
     * goes to the program's own threads.  It inherits the mask. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    e = pthread_create(&P.thread, NULL, ipc_thread, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        pthread_mutex_lock(&P.lock);
        P.running = P.have_thread = false;
        pthread_mutex_unlock(&P.lock);
        errno = e;
        goto fail;
    }
    return 0;

fail:
    e = errno;
    if (P.listen_fd >= 0) {
        close(P.listen_fd);
        unlink(P.path);
        P.listen_fd = -1;
    }
    if (P.loop) {
        fh_ipc_loop_free(P.loop);
        P.loop = NULL;
    }
    errno = e;
    return -1;
}

/* With P.lock: is any member whose pid is in pids still connected? */
static bool any_connected_locked(const pid_t *pids, int n)
{
    for (struct conn *c = P.conns; c; c = c->next)
        for (int i = 0; i < n; i++)
            if (c->joined && !c->closing && c->pid == pids[i])
                return true;
    return false;
}

static bool all_reaped_locked(const pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        bool seen = false;

        for (int j = 0; j < P.nreaped && !seen; j++)
            seen = P.reaped[j] == pids[i];
        if (!seen)
            return false;
    }
    return true;
}

/* forkhost.shutdown to the members; wait, up to grace_ms from the notice,
 * for those that answered to leave and, for secondaries, to be reaped. */
static void shutdown_notice(unsigned grace_ms)
{
    struct fh_ipc_shutdown_notice body = { (int32_t)P.pid, grace_ms };
    struct fh_ipc_member *ms;
    struct timespec deadline;
    struct preq *p;
    pid_t *leaving, *children;
    int n = fh_ipc_members(NULL, 0), nl = 0, nc = 0;

    if (n <= 0)
        return;
    ms = calloc((size_t)n, sizeof *ms);
    if (!ms)
        return;
    nl = fh_ipc_members(ms, n);
    if (nl < n)
        n = nl < 0 ? 0 : nl;
    nl = 0;
    now_plus(&deadline, grace_ms);
    pthread_mutex_lock(&P.lock);
    P.tracking = true;
    P.nreaped = 0;
    pthread_mutex_unlock(&P.lock);
    if (issue(FH_IPC_SHUTDOWN_NOTICE, &body, sizeof body, NULL, 0, grace_ms, 0,
              NULL, NULL, &p) < 0) {
        free(ms);
        return;
    }
    await_done(p);
    leaving = calloc((size_t)(p->nmsgs ? p->nmsgs : 1), sizeof *leaving);
    children = calloc((size_t)(p->nmsgs ? p->nmsgs : 1), sizeof *children);
    for (int i = 0; i < p->nmsgs; i++) {
        close_fds(p->msgs[i].fds, p->msgs[i].num_fds);
        if (p->msgs[i].status != FH_IPC_OK || !leaving || !children)
            continue;
        leaving[nl++] = p->msgs[i].pid;
        for (int j = 0; j < n; j++)
            if (ms[j].pid == p->msgs[i].pid && ms[j].secondary)
                children[nc++] = ms[j].pid;
    }
    free_preq(p);
    free(ms);
    /* A secondary closes its connection a little before it exits: wait for
     * the template's record of its exit too, or the template's SIGTERM,
     * which follows, could still catch it. */
    pthread_mutex_lock(&P.lock);
    while (nl && (any_connected_locked(leaving, nl) || !all_reaped_locked(children, nc)))
        if (pthread_cond_timedwait(&P.cond, &P.lock, &deadline) == ETIMEDOUT)
            break;
    P.tracking = false;
    pthread_mutex_unlock(&P.lock);
    free(leaving);
    free(children);
}

FH_API int fh_ipc_primary_stop(unsigned grace_ms)
{
    struct preq *due = NULL;
    struct conn *conns;

    if (!fh__ipc_primary_here()) {
        errno = EINVAL;
        return -1;
    }
    if (t_ipc_thread) {
        errno = EDEADLK;        /* the thread cannot join itself */
        return -1;
    }
    if (P.have_thread) {
        shutdown_notice(grace_ms);
        fh_ipc_loop_stop(P.loop);
        pthread_join(P.thread, NULL);
    }
    pthread_mutex_lock(&P.lock);
    P.running = false;
    P.have_thread = false;
    /* Senders still at work use P.loop (its counters): they end within a
     * send timeout per member, and no new one starts (running). */
    while (P.senders > 0)
        pthread_cond_wait(&P.cond, &P.lock);
    conns = P.conns;
    P.conns = NULL;
    P.nconns = 0;
    for (struct conn *c = conns, *next; c; c = next) {
        next = c->next;
        c->closing = true;
        release_locked(c);      /* (or by its last sender) */
    }
    while (P.pending) {
        struct preq *p = P.pending;

        COUNT_N(peer_died, settle_all_locked(p, FH_IPC_PEER_DIED));
        if (p->issuing) {       /* its issuer completes it */
            P.pending = p->next;
            p->next = NULL;
            continue;
        }
        finish_locked(p);
        if (p->cb) {
            p->next = due;
            due = p;
        }
    }
    {
        struct preq *d = P.due;

        while (d) {
            struct preq *next = d->next;

            d->next = due;
            due = d;
            d = next;
        }
        P.due = NULL;
    }
    pthread_cond_broadcast(&P.cond);
    pthread_mutex_unlock(&P.lock);
    run_list(due);
    if (P.listen_fd >= 0) {
        struct stat st;

        if (stat(P.path, &st) == 0 && st.st_ino == P.ino)
            unlink(P.path);
        close(P.listen_fd);
        P.listen_fd = -1;
    }
    if (P.exit_fd >= 0)
        close(P.exit_fd);
    if (P.exit_theirs >= 0)
        close(P.exit_theirs);
    P.exit_fd = P.exit_theirs = -1;
    pthread_mutex_lock(&P.lock);
    if (P.loop)
        fh_ipc_loop_free(P.loop);
    P.loop = NULL;
    pthread_mutex_unlock(&P.lock);
    free(P.byfd);
    P.byfd = NULL;
    P.nbyfd = 0;
    free(P.reaped);
    P.reaped = NULL;
    P.nreaped = P.capreaped = 0;
    free(P.rx);
    P.rx = NULL;
    /* release: from now on the calls of ipc.h are a non-member's again
     * (ENOTCONN). */
    atomic_store_explicit(&p_here, false, memory_order_release);
    return 0;
}

FH_API int fh_ipc_members(struct fh_ipc_member *out, int max)
{
    int n = 0;

    if (!fh__ipc_primary_here()) {
        errno = ENOTCONN;
        return -1;
    }
    pthread_mutex_lock(&P.lock);
    if (!P.running) {
        pthread_mutex_unlock(&P.lock);
        errno = ENOTCONN;
        return -1;
    }
    for (struct conn *c = P.conns; c; c = c->next) {
        if (!c->joined || c->closing)
            continue;
        if (out && n < max) {
            out[n].pid = c->pid;
            out[n].ppid = c->ppid;
            out[n].secondary = c->ppid == P.template_pid;
        }
        n++;
    }
    pthread_mutex_unlock(&P.lock);
    return n;
}
