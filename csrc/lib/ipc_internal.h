/*
 * ipc_internal.h - what csrc/lib/ipc.c (a secondary's side, the primary's
 * receive loop) shares with csrc/lib/ipc_primary.c (a C primary's
 * endpoint).  Hidden symbols (the library builds with -fvisibility=hidden):
 * not part of the API.
 */
#ifndef FORKHOST_IPC_INTERNAL_H
#define FORKHOST_IPC_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "forkhost/ipc.h"

/* A send from an ordinary thread waits this long for room in a full
 * buffer; an IPC thread never waits. */
#define FH_IPC_SEND_TIMEOUT_MS 1000
/* Requests whose caller passes no timeout. */
#define FH_IPC_DEFAULT_TIMEOUT_MS 5000

/* -- helpers of both files: static inline, so no symbols and no
 * prototypes; the short names are private to these two files. -- */

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

/* -- defined once in ipc.c ------------------------------------------------ */

/* A process's name as a peer entry shows it: /proc/PID/comm without its
 * newline, "" when it cannot be read (out: FH_IPC_PEER_NAME_MAX bytes). */
void fh__ipc_comm(pid_t pid, char *out);

/* 0, or -1 with errno for what a sender must refuse before anything goes
 * out (docs/ipc.md "Checks"); user: the reserved namespace is refused. */
int fh__ipc_check_flat(const char *name, int len_param, const int *fds,
                       int num_fds, bool user);
/* check_flat for a whole message (NULL: EINVAL). */
int fh__ipc_check_msg(const struct fh_ipc_msg *m, bool user);
/* One record on fd, nothing counted; wait_ms for room in a full buffer. */
int fh__ipc_send_frame(int fd, uint16_t type, uint64_t id, int32_t status,
                       const char *name, const void *param, uint32_t plen,
                       const int *fds, int nfds, int wait_ms);
/* Has the peer of fd shut down its sending side (EOF, not an empty
 * record)?  See peer_shut() in ipc.c. */
bool fh__ipc_peer_shut(int fd);
/* The action registered under name (fh_ipc_register), or NULL. */
fh_ipc_action_t fh__ipc_action(const char *name);
/* A caller's timeout in ms (NULL: the default). */
long fh__ipc_timeout_ms(const struct timespec *ts);

/* ipc_primary.c: is this process a C primary that prepared its endpoint
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
