/*
 * ipc_internal.h - what csrc/lib/ipc.c (a secondary's side, the primary's
 * receive loop) shares with csrc/lib/ipc_primary.c (a C primary's
 * endpoint).  Hidden symbols (the library builds with -fvisibility=hidden):
 * not part of the API.
 */
#ifndef FORKHOST_IPC_INTERNAL_H
#define FORKHOST_IPC_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "forkhost/ipc.h"

/* A send from an ordinary thread waits this long for room in a full
 * buffer; an IPC thread never waits. */
#define FH_IPC_SEND_TIMEOUT_MS 1000
/* Requests whose caller passes no timeout. */
#define FH_IPC_DEFAULT_TIMEOUT_MS 5000

/* 0, or -1 with errno for what a sender must refuse before anything goes
 * out (docs/ipc.md "Checks"); user: the reserved namespace is refused. */
int fh__ipc_check_flat(const char *name, int len_param, const int *fds,
                       int num_fds, bool user);
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
