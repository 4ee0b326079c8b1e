/*
 * ipc.c - a secondary's IPC endpoint (DPDK's rte_mp secondary side):
 * native secondaries call it through forkhost/ipc.h (ipc_api.c picks it
 * when this process is not a C primary), Python secondaries through the
 * *_raw calls (forkhost/ipc/_member.py).  The wire is ipc_wire.c's, the
 * actions ipc_registry.c's.
 *
 * The primary listens on <runtime>/<prefix>/ipc.sock;
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
 * Rejoining: when the connection ends without forkhost.shutdown (the
 * primary died, or stopped its IPC without a word), the thread fails what
 * is pending, leaves the state CLOSED (calls fail with ENOTCONN at once)
 * and waits for a primary to listen at the same path again: inotify on
 * the socket's directory, and retries with a backoff after a change or
 * while the directory cannot be watched (rejoin()).  It joins with
 * FH_IPC_HELLO_REJOIN and puts the new connection on the old one's fd
 * number (dup3), so the number is never free for another file while a
 * sender may still hold it.  The actions stay registered: they are this
 * process's, the primary never knew them.
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
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A leading requester's blocking read lasts at most this long before it
 * looks at its deadline again (SO_RCVTIMEO); closer to the deadline it
 * polls for exactly the time left. */
#define FH_IPC_LEAD_SLICE_MS 50
/* How soon the thread takes back a connection a leader left masked. */
#define FH_IPC_REARM_MS 1
/* Records read per wake-up before the thread looks at its deadlines. */
#define FH_IPC_BATCH 64
/* Rejoining (rejoin()): after the socket's directory changed, or while it
 * cannot be watched, attempts come after 10 ms, then twice as long each
 * time up to 1 s; a change stops the attempts FH_IPC_CONNECT_TIMEOUT_MS
 * after it (a socket file nobody listens on, the dead primary's, gets no
 * more attempts until the next change). */
#define FH_IPC_REJOIN_FIRST_MS 10
#define FH_IPC_REJOIN_MAX_MS   1000

enum { ST_IDLE, ST_RUNNING, ST_CLOSED };

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

static struct {
    pthread_mutex_t lock;
    pthread_cond_t  cond;       /* CLOCK_MONOTONIC; sync requests wait here */
    int             fd;         /* the connection to the primary, or -1 */
    int             wake;       /* eventfd: stop, new deadline, handed-over work */
    int             epfd;       /* the thread's: fd (unless a leader has it), wake */
    int             ino;        /* inotify, while the thread waits to rejoin */
    bool            have_thread;
    bool            stopping;
    pthread_t       thread;
    struct pending *pending;
    pthread_mutex_t rx;         /* held by whoever reads g.fd */
    struct deferred *deferred, **deferred_tail;  /* for the thread, in order */
    struct pending  *due;       /* async requests completed off the thread */
} g = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1, -1, -1, -1,
        false, false, 0, NULL, PTHREAD_MUTEX_INITIALIZER,
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

static struct fh__ipc_counters st;      /* this process's secondary side */
#define COUNT(field) COUNT_IN(&st, field)

/* The primary this process joined, from its WELCOME (for an attached
 * process it is not fh_ipc_primary_pid()); why it refused, if it did; the path
 * fh_ipc_attach() joins instead of fh_ipc_socket_path().  Written under g.lock by the
 * joining thread before the receive thread exists. */
static atomic_int g_peer_pid;   /* relaxed: written under g.lock, a hint */
/* Written and read under g.lock (rewritten when the IPC thread rejoins a
 * new primary); fh_ipc_peer_name() hands out a copy. */
static char  g_peer_name[FH_IPC_PEER_NAME_MAX];
/* Waiting for a primary to rejoin (fh_ipc_rejoining()).  relaxed: a report,
 * the state (g_state) orders everything else. */
static atomic_bool g_rejoining;
/* The primary said forkhost.shutdown: its EOF is final, no rejoining.  Only
 * the receive thread reads and writes it (start_locked() before it exists). */
static bool g_shutdown_seen;
static char  g_refusal[256];
static char  g_attach[sizeof(((struct sockaddr_un *)0)->sun_path)];

/* -- helpers ---------------------------------------------------------- */

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

/* -- sending and receiving ----------------------------------------------- */

/* A secondary's send: counted; the receive thread never waits. */
static int send_record(int fd, uint16_t type, uint64_t id, int32_t status,
                       const char *name, const void *param, uint32_t plen,
                       const int *fds, int nfds)
{
    if (fh__ipc_send_frame(fd, type, id, status, name, param, plen, fds, nfds,
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

/*
 * Receive one record from the primary into hdr/param/fds, checked by the
 * one parser (ipc_wire.c).  1: got one; 0: EOF; -1 with errno: EAGAIN
 * (nothing there), EBADMSG (malformed: counted, fds closed), or a socket
 * error.
 */
static int recv_record(int fd, struct fh_ipc_hdr *hdr, unsigned char *param,
                       int *fds, int *nfds, int flags)
{
    union {
        struct fh_ipc_hdr h;
        unsigned char     bytes[FH_IPC_RECORD_MAX];
    } buf;
    struct fh_ipc_verdict v;
    ssize_t n = fh__ipc_recv(fd, buf.bytes, fds, nfds, FH_IPC_FROM_PRIMARY, &v, flags);

    if (n == -1)
        return -1;
    if (n == 0)
        return 0;
    if (n == -2) {
        COUNT(malformed);
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
    m->pid = atomic_load_explicit(&g_peer_pid, memory_order_relaxed);
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

/* Run the callbacks of the async requests on list due (taken off the
 * pending list under the lock; called without it). */
static void run_due(struct pending *due)
{
    while (due) {
        struct pending *p = due;

        due = p->next;
        run_async(p);
    }
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
    run_due(due);
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
    run_due(due);
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
    fh_ipc_action_t fn;
    struct fh_ipc_msg *m;
    struct fh__ipc_peer peer = { h->type == FH_IPC_REQUEST ? h->id : 0, false };
    int rc;

    if (h->type == FH_IPC_REQUEST && strcmp(h->name, FH_IPC_SHUTDOWN_NOTICE) == 0)
        g_shutdown_seen = true;         /* the EOF that follows is final */
    fn = fh__ipc_action(h->name);

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

/* How serve() ended. */
enum { END_STOP, END_GONE, END_BROKEN };

/* The receive loop on the connection, until fh_ipc_stop() (END_STOP), the
 * primary's EOF or a socket error (END_GONE), or a failure of our own
 * (END_BROKEN). */
static int serve(unsigned char *param)
{
    struct fh_ipc_hdr h;
    int fds[FH_IPC_FDS_MAX], nfds;
    bool gone = false;

    while (!gone) {
        struct epoll_event evs[2];
        bool stop, readable = false, hangup = false;
        int n = epoll_wait(g.epfd, evs, 2, next_timeout_ms());

        if (n < 0 && errno != EINTR)
            return END_BROKEN;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == g.wake) {
                uint64_t v;

                if (read(g.wake, &v, sizeof v) < 0 && errno != EAGAIN)
                    return END_BROKEN;
            } else {
                readable = true;
                hangup = evs[i].events & (EPOLLHUP | EPOLLERR);
            }
        }
        pthread_mutex_lock(&g.lock);
        stop = g.stopping;
        pthread_mutex_unlock(&g.lock);
        if (stop)
            return END_STOP;
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
    return END_GONE;
}

static int join_path(char *out, size_t size);
static int connect_hello(const char *path, uint32_t flags, struct fh_ipc_welcome *w);

/* Read what inotify has (nonblocking): true when an event names base (the
 * socket appeared, or the queue overflowed and it may have); *lost when
 * the watch ended (the directory was removed or moved). */
static bool dir_changed(int ino, const char *base, bool *lost)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool hit = false;
    ssize_t n;

    while ((n = read(ino, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;

            if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF))
                *lost = true;
            if ((ev->mask & IN_Q_OVERFLOW)
                || (ev->len && strcmp(ev->name, base) == 0))
                hit = true;
            p += sizeof *ev + ev->len;
        }
    }
    return hit;
}

/* Give up the inotify fd (on the thread). */
static void unwatch_dir(void)
{
    pthread_mutex_lock(&g.lock);
    if (g.ino >= 0) {
        (void)epoll_ctl(g.epfd, EPOLL_CTL_DEL, g.ino, NULL);
        close(g.ino);
        g.ino = -1;
    }
    pthread_mutex_unlock(&g.lock);
}

/* The primary's connection ended without forkhost.shutdown: wait for a
 * primary to listen at the same path, and join it with
 * FH_IPC_HELLO_REJOIN.  On the thread, with the state CLOSED (every call
 * that needs the primary fails with ENOTCONN meanwhile).  No polling: the
 * thread sleeps until the socket's directory changes (inotify), then
 * attempts with a backoff for a while (bind comes before listen; see
 * FH_IPC_REJOIN_*), and attempts with the backoff throughout while the
 * directory cannot be watched or a listener there does not answer (socket
 * activation without a primary yet).  true once joined; false when
 * fh_ipc_stop() wants the thread to leave. */
static bool rejoin(void)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)], dir[sizeof path];
    const char *base = path, *slash;
    struct fh_ipc_welcome w;
    struct timespec until;      /* attempts stop then, until a change */
    long backoff = FH_IPC_REJOIN_FIRST_MS;
    int wd = -1, fd = -1, rc;
    bool attempt = true, stop;

    pthread_mutex_lock(&g.lock);
    rc = join_path(path, sizeof path);
    pthread_mutex_unlock(&g.lock);
    if (rc < 0)
        return false;
    slash = strrchr(path, '/');
    if (slash) {
        size_t len = slash == path ? 1 : (size_t)(slash - path);

        memcpy(dir, path, len);
        dir[len] = '\0';
        base = slash + 1;
    } else {
        strcpy(dir, ".");
    }
    pthread_mutex_lock(&g.lock);
    g.ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (g.ino >= 0) {
        struct epoll_event ev = { .events = EPOLLIN };

        ev.data.fd = g.ino;
        if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, g.ino, &ev) < 0) {
            close(g.ino);
            g.ino = -1;
        }
    }
    pthread_mutex_unlock(&g.lock);
    /* The dead connection's hang-up would wake us for ever. */
    (void)epoll_ctl(g.epfd, EPOLL_CTL_DEL, g.fd, NULL);
    now_plus(&until, FH_IPC_CONNECT_TIMEOUT_MS);
    for (;;) {
        struct epoll_event evs[2];
        int n;

        pthread_mutex_lock(&g.lock);
        stop = g.stopping;
        pthread_mutex_unlock(&g.lock);
        if (stop)
            break;
        if (g.ino >= 0 && wd < 0)
            wd = inotify_add_watch(g.ino, dir, IN_CREATE | IN_MOVED_TO | IN_ATTRIB
                                   | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
        if (attempt) {
            fd = connect_hello(path, FH_IPC_HELLO_REJOIN, &w);
            if (fd >= 0)
                break;
            if (errno == ECONNREFUSED)          /* refused: until a change */
                now_plus(&until, 0);
            else if (errno == ETIMEDOUT)        /* a listener that says */
                now_plus(&until, FH_IPC_CONNECT_TIMEOUT_MS);   /* nothing yet */
        }
        long timeout = -1;

        if (wd < 0 || ms_until(&until) > 0) {
            timeout = backoff;
            backoff = backoff * 2 > FH_IPC_REJOIN_MAX_MS ? FH_IPC_REJOIN_MAX_MS
                                                         : backoff * 2;
        }
        n = epoll_wait(g.epfd, evs, 2, (int)timeout);
        attempt = n == 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == g.wake) {
                uint64_t v;

                if (read(g.wake, &v, sizeof v) < 0 && errno != EAGAIN)
                    stop = true;
            } else if (evs[i].data.fd == g.ino) {
                bool lost = false;

                if (dir_changed(g.ino, base, &lost)) {
                    attempt = true;
                    backoff = FH_IPC_REJOIN_FIRST_MS;
                    now_plus(&until, FH_IPC_CONNECT_TIMEOUT_MS);
                }
                if (lost) {         /* watch it again, attempt meanwhile */
                    wd = -1;
                    attempt = true;
                }
            }
        }
        if (stop)
            break;
        run_deferred();             /* callbacks a leader completed */
    }
    unwatch_dir();
    if (fd < 0)
        return false;

    /* Joined: the new connection takes the old one's fd number (see the
     * top of this file), with g.rx held so that no leader reads meanwhile
     * (none can start: the state is CLOSED). */
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
    bool ok;

    pthread_mutex_lock(&g.rx);
    pthread_mutex_lock(&g.lock);
    ok = !g.stopping && dup3(fd, g.fd, O_CLOEXEC) >= 0;
    ev.data.fd = g.fd;
    ok = ok && epoll_ctl(g.epfd, EPOLL_CTL_ADD, g.fd, &ev) == 0;
    if (ok) {
        /* relaxed: only the holder of g.rx writes them, and we hold it. */
        atomic_store_explicit(&g_masked, false, memory_order_relaxed);
        atomic_store_explicit(&g_want_rx, false, memory_order_relaxed);
        atomic_store_explicit(&g_peer_pid, w.primary_pid, memory_order_relaxed);
        peer_comm(w.primary_pid, g_peer_name);
        g_shutdown_seen = false;
        atomic_store_explicit(&g_rejoining, false, memory_order_relaxed);
        /* release: as in start_locked(), for the lock-free readers. */
        atomic_store_explicit(&g_state, ST_RUNNING, memory_order_release);
    }
    pthread_mutex_unlock(&g.lock);
    pthread_mutex_unlock(&g.rx);
    close(fd);                  /* (a copy, when it took g.fd's number) */
    return ok;
}

static void *ipc_thread(void *unused)
{
    unsigned char *param = malloc(FH_IPC_PARAM_MAX);

    (void)unused;
    t_on_ipc_thread = true;
    while (param) {
        int end = serve(param);

        /* What a leader handed over before the EOF: a forkhost.shutdown
         * among it makes the EOF final. */
        run_deferred();
        if (end == END_STOP)
            break;
        /* The primary closed: nothing will be answered any more.  The fd
         * stays open until fh_ipc_stop() (see the top of this file). */
        bool again = end == END_GONE && !g_shutdown_seen;

        pthread_mutex_lock(&g.lock);
        /* relaxed: a report (fh_ipc_rejoining()), set before the pending
         * requests fail, so that their callers can read it. */
        atomic_store_explicit(&g_rejoining, again && !g.stopping, memory_order_relaxed);
        if (again) {            /* not joined while it waits */
            atomic_store_explicit(&g_peer_pid, 0, memory_order_relaxed);
            g_peer_name[0] = '\0';
        }
        /* release: pairs with the acquire in callers that then fail with
         * ENOTCONN instead of sending. */
        atomic_store_explicit(&g_state, ST_CLOSED, memory_order_release);
        pthread_mutex_unlock(&g.lock);
        fail_all_pending();
        if (!again || !rejoin())
            break;
    }
    free(param);
    run_deferred();             /* what a leader handed over before we left */
    fail_all_pending();
    /* relaxed: a report, as above. */
    atomic_store_explicit(&g_rejoining, false, memory_order_relaxed);
    return NULL;
}

/* -- joining ------------------------------------------------------------ */

static void atfork_child(void)
{
    /* Only the forking thread exists in the child: no receive thread, no
     * waiter.  The parent's connection must end with the parent, so the
     * child closes its copy; its requests were the parent's (and its
     * actions, which ipc_registry.c forgets). */
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
    if (g.ino >= 0)
        close(g.ino);
    g.fd = g.wake = g.epfd = g.ino = -1;
    g.have_thread = g.stopping = false;
    g_shutdown_seen = false;
    /* relaxed: the child is single-threaded here. */
    atomic_store_explicit(&g_rejoining, false, memory_order_relaxed);
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
    atomic_store_explicit(&g_peer_pid, 0, memory_order_relaxed);
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
        /* On the IPC thread (rejoin()), fh_ipc_stop() wakes it: it must
         * not wait for a WELCOME that may never come. */
        struct pollfd p[2] = { { fd, POLLIN, 0 },
                               { t_on_ipc_thread ? g.wake : -1, POLLIN, 0 } };
        int n = poll(p, 2, (int)ms_until(&deadline));

        if (n == 0) {
            errno = ETIMEDOUT;
            goto out;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto out;
        }
        if (p[1].revents & POLLIN) {
            uint64_t v;
            bool stop;

            pthread_mutex_lock(&g.lock);
            stop = g.stopping;
            pthread_mutex_unlock(&g.lock);
            if (stop) {
                errno = ECANCELED;
                goto out;
            }
            if (read(g.wake, &v, sizeof v) < 0 && errno != EAGAIN)
                goto out;
            if (!(p[0].revents & POLLIN))
                continue;
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

/* The path this process joins: fh_ipc_attach()'s, or the one the primary
 * stored before forking the template.  -1 with ENOTCONN when there is none
 * (not a secondary; the primary is Python). */
static int join_path(char *out, size_t size)
{
    if (g_attach[0]) {
        snprintf(out, size, "%s", g_attach);
    } else if (!fh_ipc_socket_path()[0] || getpid() == fh_ipc_primary_pid()) {
        errno = ENOTCONN;
        return -1;
    } else {
        snprintf(out, size, "%s", fh_ipc_socket_path());
    }
    return 0;
}

/* Connect to path, say HELLO with flags, wait for WELCOME (*w).  The
 * connection, ready for the thread, or -1 with errno (ENOTCONN: nobody
 * listens there; ECONNREFUSED: refused, g_refusal says why; ETIMEDOUT). */
static int connect_hello(const char *path, uint32_t flags, struct fh_ipc_welcome *w)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct fh_ipc_hello hello = { getpid(), getppid(), flags, 0 };
    struct timeval tv = { FH_IPC_CONNECT_TIMEOUT_MS / 1000, 0 };
    /* Only a leader's blocking read uses it: everyone else reads with
     * MSG_DONTWAIT. */
    struct timeval slice = { 0, FH_IPC_LEAD_SLICE_MS * 1000 };
    int fd, e;

    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
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
    if (await_welcome(fd, w) < 0)
        goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice) < 0)
        goto fail;
    return fd;
fail:
    e = errno;
    close(fd);
    errno = e;
    return -1;
}

/* Connect, HELLO, WELCOME, start the thread.  Called with g.lock held. */
static int start_locked(void)
{
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct fh_ipc_welcome w;
    int fd, wake = -1, epfd = -1, e;

    if (atomic_load_explicit(&g_state, memory_order_relaxed) != ST_IDLE)
        return 0;               /* relaxed: we hold g.lock, its only writer */
    if (join_path(path, sizeof path) < 0)
        return -1;
    fd = connect_hello(path, 0, &w);
    if (fd < 0)
        return -1;
    atomic_store_explicit(&g_peer_pid, w.primary_pid, memory_order_relaxed);
    peer_comm(w.primary_pid, g_peer_name);
    g_shutdown_seen = false;    /* (no thread yet: ours to write) */
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
    atomic_store_explicit(&g_peer_pid, 0, memory_order_relaxed);
    g_peer_name[0] = '\0';
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

FH_API pid_t fh_ipc_peer_pid(void)
{
    return atomic_load_explicit(&g_peer_pid, memory_order_relaxed);
}

FH_API int fh_ipc_rejoining(void)
{
    return atomic_load_explicit(&g_rejoining, memory_order_relaxed);
}
FH_API const char *fh_ipc_peer_name(void)
{
    /* This thread's copy, taken under the lock its writers hold: a rejoin
     * cannot change the text under the caller. */
    static __thread char copy[FH_IPC_PEER_NAME_MAX];

    pthread_mutex_lock(&g.lock);
    memcpy(copy, g_peer_name, sizeof copy);
    pthread_mutex_unlock(&g.lock);
    return copy;
}
FH_API const char *fh_ipc_refusal(void) { return g_refusal; }

int fh__ipc_secondary_start(void)
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
        rc = strcmp(path, g_attach[0] ? g_attach : fh_ipc_socket_path()) == 0 ? 0 : -1;
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

FH_API int fh_ipc_send_raw(const char *name, const void *param, int len_param,
                           const int *fds, int num_fds)
{
    if (fh__ipc_check_flat(name, len_param, fds, num_fds, true) < 0
        || ensure_started() < 0)
        return -1;
    return send_to_primary(FH_IPC_MSG, 0, 0, name, param, len_param, fds, num_fds);
}

/* A sync request, checked.  The reply's msgs and peers are one malloc'd
 * block (or NULL); a *_raw one (raw) gets its answer in raw and what
 * became of it and the primary's pid in raw_out[0] and raw_out[1]. */
static int request_sync(const char *name, const void *param, int len_param,
                        const int *fds, int num_fds, long ms,
                        struct fh_ipc_reply *reply, void *raw, int *raw_fds,
                        int *raw_len, int *raw_out)
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
    if (fh__ipc_check_flat(name, len_param, fds, num_fds, true) < 0
        || ensure_started() < 0)
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
    p.peer_pid = atomic_load_explicit(&g_peer_pid, memory_order_relaxed);
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
        raw_out[0] = p.outcome;
        raw_out[1] = p.peer_pid;
        return 0;
    }
    fill_reply(&p, reply);
    if (!p.nb_sent)
        free(p.block);
    return 0;
}

int fh__ipc_secondary_request(const struct fh_ipc_msg *req, struct fh_ipc_reply *reply,
                              const struct timespec *ts)
{
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
    out[2] = 0;
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
    if (fh__ipc_check_flat(name, len_param, fds, num_fds, true) < 0
        || ensure_started() < 0)
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
    p->peer_pid = atomic_load_explicit(&g_peer_pid, memory_order_relaxed);
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

int fh__ipc_secondary_request_async(const struct fh_ipc_msg *req,
                                    const struct timespec *ts,
                                    fh_ipc_async_t callback, void *arg)
{
    if (fh__ipc_check_msg(req, true) < 0)
        return -1;
    return request_async(req->name, req->param, req->len_param, req->fds,
                         req->num_fds, timeout_ms(ts), callback, arg);
}

bool fh__ipc_secondary_thread(void)
{
    return t_on_ipc_thread;
}

FH_API int fh_ipc_reply_raw(uint64_t id, int status, const char *name,
                            const void *param, int len_param,
                            const int *fds, int num_fds)
{
    if (!id || status < FH_IPC_OK || status > FH_IPC_ACTION_FAILED) {
        errno = EINVAL;
        return -1;
    }
    if (fh__ipc_check_flat(name, len_param, fds, num_fds, false) < 0)
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

int fh__ipc_secondary_reply(const struct fh_ipc_msg *msg, const void *peer)
{
    const struct fh__ipc_peer *pr = peer;

    if (may_reply(pr, t_on_ipc_thread ? t_peer : NULL) < 0)
        return -1;
    if (fh__ipc_check_msg(msg, false) < 0)
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
    atomic_store_explicit(&g_peer_pid, 0, memory_order_relaxed);
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

void fh__ipc_secondary_stats(struct fh_ipc_stats *out)
{
    counters_load(&st, out);
}
