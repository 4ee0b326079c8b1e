/*
 * ipc_internal.h - what the IPC files of libforkhost share, and who uses
 * whom (no circle):
 *
 *   ipc_api.c      the public calls that act for either endpoint
 *     -> ipc.c         a secondary's endpoint
 *     -> ipc_primary.c the primary's endpoint: the receive loop every
 *                      primary runs, and a C primary's endpoint on it
 *   ipc.c, ipc_primary.c
 *     -> ipc_registry.c the actions registered by name, where the
 *                      primary's socket is
 *     -> ipc_wire.c    encoding, sending, receiving, the one parser
 *
 * Hidden symbols (the library builds with -fvisibility=hidden): not part
 * of the API.
 */
#ifndef FORKHOST_IPC_INTERNAL_H
#define FORKHOST_IPC_INTERNAL_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "forkhost/ipc.h"


/* -- helpers of the endpoints: static inline, so no symbols and no
 * prototypes; the short names are private to these files. -- */

/* *ts = CLOCK_MONOTONIC now + ms. */
static inline void now_plus(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ms from now to the CLOCK_MONOTONIC time *ts, 0 once it has passed. */
static inline long ms_until(const struct timespec *ts)
{
    struct timespec now;
    long ms;

    clock_gettime(CLOCK_MONOTONIC, &now);
    ms = (long)(ts->tv_sec - now.tv_sec) * 1000
         + (ts->tv_nsec - now.tv_nsec) / 1000000L;
    return ms < 0 ? 0 : ms;
}

/* The sooner of best (ms; -1: none yet) and the time left to *deadline. */
static inline long ms_sooner(long best, const struct timespec *deadline)
{
    long ms = ms_until(deadline);

    return best < 0 || ms < best ? ms : best;
}

static inline void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Is name in the namespace reserved for forkhost's own notices? */
static inline bool is_reserved(const char *name)
{
    return strncmp(name, FH_IPC_RESERVED_PREFIX,
                   sizeof FH_IPC_RESERVED_PREFIX - 1) == 0;
}

/* (Re)initialise *c to wait on CLOCK_MONOTONIC (deadlines are now_plus's). */
static inline void cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

/* What an action's peer argument points at, on the IPC thread's stack
 * while the action runs: ipc.c's secondary side uses it as it is;
 * ipc_primary.c's struct ppeer starts with one, so that fh_ipc_peer_id()
 * reads either. */
struct fh__ipc_peer {
    uint64_t id;                /* 0: a message or a notice, nothing to answer */
    bool     replied;
};

/* fh_ipc_reply()'s refusals: 0, or -1 with errno.  pr: its peer argument;
 * running: the peer of the action running on this thread, if it is the
 * IPC thread (else NULL). */
static inline int may_reply(const struct fh__ipc_peer *pr,
                                    const struct fh__ipc_peer *running)
{
    if (!pr || pr != running || !pr->id) {
        errno = EINVAL;         /* only during the action, for a request */
        return -1;
    }
    if (pr->replied) {
        errno = EALREADY;
        return -1;
    }
    return 0;
}

/* A reply's block (struct fh_ipc_reply): nmsgs answers, then npeers peer
 * entries, aligned, in one allocation starting at the answers, so that
 * free(reply->msgs) frees both.  Allocated when a request is made, for
 * every peer it may reach, so that nothing needs memory once answers come
 * in.  NULL with ENOMEM. */
static inline size_t reply_peers_offset(int nmsgs)
{
    size_t a = _Alignof(struct fh_ipc_peer_reply);

    return ((size_t)nmsgs * sizeof(struct fh_ipc_msg) + a - 1) / a * a;
}

static inline struct fh_ipc_msg *reply_block(int nmsgs, int npeers)
{
    return malloc(reply_peers_offset(nmsgs)
                  + (size_t)(npeers > 0 ? npeers : 1) * sizeof(struct fh_ipc_peer_reply));
}

static inline struct fh_ipc_peer_reply *reply_peers(struct fh_ipc_msg *block,
                                                    int nmsgs)
{
    return (struct fh_ipc_peer_reply *)(void *)((char *)block
                                                + reply_peers_offset(nmsgs));
}

/* Counters, each an independent tally read only by the stats calls: no
 * ordering with any other memory is needed, so every access is relaxed. */
struct fh__ipc_counters {
    atomic_uint_fast64_t sent, received, dropped, notices_ignored, no_action,
        malformed, action_errors, timeouts, peer_died, late_replies,
        send_failed;
};
#define COUNT_IN(c, field) \
    atomic_fetch_add_explicit(&(c)->field, 1, memory_order_relaxed)
#define COUNT_N_IN(c, field, n) \
    atomic_fetch_add_explicit(&(c)->field, (uint64_t)(n), memory_order_relaxed)

/* out = the tallies of c (relaxed loads: see struct fh__ipc_counters). */
static inline void counters_load(struct fh__ipc_counters *c, struct fh_ipc_stats *out)
{
#define LOAD(f) out->f = atomic_load_explicit(&c->f, memory_order_relaxed)
    LOAD(sent); LOAD(received); LOAD(dropped); LOAD(notices_ignored);
    LOAD(no_action); LOAD(malformed); LOAD(action_errors); LOAD(timeouts);
    LOAD(peer_died); LOAD(late_replies); LOAD(send_failed);
#undef LOAD
}

/* A caller's timeout in ms (NULL: the default). */
static inline long timeout_ms(const struct timespec *ts)
{
    if (!ts)
        return FH_IPC_DEFAULT_TIMEOUT_MS;
    return (long)ts->tv_sec * 1000 + ts->tv_nsec / 1000000L;
}

/* A process's name as a peer entry shows it: /proc/PID/comm without its
 * newline, "" when it cannot be read (out: FH_IPC_PEER_NAME_MAX bytes). */
static inline void peer_comm(pid_t pid, char *out)
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

/* -- ipc_wire.c: the wire --------------------------------------------------- */

/* 0, or -1 with errno (EINVAL, ENAMETOOLONG) for a name that cannot go on
 * the wire. */
int  fh__ipc_check_name(const char *name);
/* 0, or -1 with errno for what a sender must refuse before anything goes
 * out (docs/ipc.md "Checks"); user: the reserved namespace is refused. */
int  fh__ipc_check_flat(const char *name, int len_param, const int *fds,
                        int num_fds, bool user);
/* check_flat for a whole message (NULL: EINVAL). */
int  fh__ipc_check_msg(const struct fh_ipc_msg *m, bool user);
/* Is name one of the notices an action may be registered under? */
bool fh__ipc_is_notice(const char *name);
/* *h: the header of a record of these fields (name: NULL for none). */
void fh__ipc_encode_hdr(struct fh_ipc_hdr *h, uint16_t type, uint64_t id,
                        int32_t status, const char *name, uint32_t plen,
                        uint32_t nfds);
/* Send one record on fd, waiting up to wait_ms for room in a full buffer.
 * 0, or -1 with errno (EAGAIN: the buffer stayed full; EPIPE/ECONNRESET:
 * the peer is gone); nothing counted. */
int  fh__ipc_send_frame(int fd, uint16_t type, uint64_t id, int32_t status,
                        const char *name, const void *param, uint32_t plen,
                        const int *fds, int nfds, int wait_ms);
/* Has the peer of fd shut down its sending side (EOF, not an empty
 * record)?  See ipc_wire.c. */
bool fh__ipc_peer_shut(int fd);
/* recvmsg one record into buf (FH_IPC_RECORD_MAX bytes) and its fds
 * (FH_IPC_FDS_MAX), checked with fh_ipc_record_check() as received at
 * side: its length (> 0) when valid; 0 at EOF; -1 with errno (EAGAIN, a
 * socket error); -2 when malformed (*v says why, its fds are closed).
 * Nothing counted. */
ssize_t fh__ipc_recv(int fd, void *buf, int *fds, int *nfds, int side,
                     struct fh_ipc_verdict *v, int flags);

/* -- ipc_registry.c: what every endpoint of this process looks up ----------- */

/* Add, remove, find an action by name (fh_ipc_register's list): 0, or -1
 * with errno EEXIST / ENOENT / ENOMEM; find: NULL when there is none. */
int  fh__ipc_action_add(const char *name, fh_ipc_action_t fn);
int  fh__ipc_action_remove(const char *name);
fh_ipc_action_t fh__ipc_action(const char *name);

/* -- ipc.c: a secondary's endpoint (what ipc_api.c calls there) -------------- */

int  fh__ipc_secondary_start(void);
int  fh__ipc_secondary_request(const struct fh_ipc_msg *req, struct fh_ipc_reply *reply,
                               const struct timespec *ts);
int  fh__ipc_secondary_request_async(const struct fh_ipc_msg *req,
                                     const struct timespec *ts,
                                     fh_ipc_async_t callback, void *arg);
int  fh__ipc_secondary_reply(const struct fh_ipc_msg *msg, const void *peer);
bool fh__ipc_secondary_thread(void);
void fh__ipc_secondary_stats(struct fh_ipc_stats *out);

/* -- ipc_primary.c: a C primary's endpoint (what ipc_api.c calls there) ------ */

/* Is this process a C primary that prepared its endpoint
 * (fh_ipc_primary_prepare())?  Then the public calls of ipc.h act as the
 * primary's. */
bool fh__ipc_primary_here(void);
bool fh__ipc_primary_thread(void);
int  fh__ipc_primary_send(const struct fh_ipc_msg *msg, pid_t to);
int  fh__ipc_primary_request(const struct fh_ipc_msg *req, pid_t to,
                             struct fh_ipc_reply *reply, const struct timespec *ts);
int  fh__ipc_primary_request_async(const struct fh_ipc_msg *req, pid_t to,
                                   const struct timespec *ts,
                                   fh_ipc_async_t callback, void *arg);
int  fh__ipc_primary_reply(const struct fh_ipc_msg *msg, const void *peer);
void fh__ipc_primary_stats(struct fh_ipc_stats *out);

#endif /* FORKHOST_IPC_INTERNAL_H */
