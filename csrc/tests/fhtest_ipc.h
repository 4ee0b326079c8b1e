/*
 * fhtest_ipc.h - what the IPC tests (test_ipc.c: a fake primary;
 * test_ipc_primary.c: fake members) share: one record of the wire format
 * (forkhost/ipc.h, docs/ipc.md) written and read with raw SEQPACKET
 * calls, so that the library is checked against the format itself rather
 * than against its own encoder, and an action that fails.
 *
 * Nothing here stops the program: each test checks the results its own
 * way (a CHECK, or a fake's _exit code).
 */
#ifndef FORKHOST_FHTEST_IPC_H
#define FORKHOST_FHTEST_IPC_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "forkhost.h"

/* A record as received: its header, param and fds. */
struct fht_rec {
    struct fh_ipc_hdr h;
    unsigned char     param[FH_IPC_PARAM_MAX];
    int               fds[FH_IPC_FDS_MAX];
    int               nfds;
};

/* Send one record (header, plen bytes of param, nfds fds) on fd, as one
 * sendmsg: what sendmsg returned. */
static inline ssize_t fht_send_rec(int fd, uint16_t type, uint64_t id, int32_t status,
                                   const char *name, const void *param, uint32_t plen,
                                   const int *fds, int nfds)
{
    unsigned char buf[FH_IPC_RECORD_MAX];
    union {
        struct cmsghdr c;
        unsigned char  b[CMSG_SPACE(FH_IPC_FDS_MAX * sizeof(int))];
    } ctl;
    struct fh_ipc_hdr h = {
        .magic = FH_IPC_MAGIC, .version = FH_IPC_VERSION, .type = type,
        .len = FH_IPC_HDR_SIZE + plen, .nfds = (uint32_t)nfds, .id = id,
        .param_len = plen, .status = status,
    };
    struct iovec iov = { buf, FH_IPC_HDR_SIZE + plen };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

    if (name)
        snprintf(h.name, sizeof h.name, "%s", name);
    memcpy(buf, &h, sizeof h);
    if (plen)
        memcpy(buf + FH_IPC_HDR_SIZE, param, plen);
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.b;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        ctl.c.cmsg_level = SOL_SOCKET;
        ctl.c.cmsg_type = SCM_RIGHTS;
        ctl.c.cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(&ctl.c), fds, nfds * sizeof(int));
    }
    return sendmsg(fd, &mh, MSG_NOSIGNAL);
}

/* Read the next record on fd (the caller waits for it): what recvmsg
 * returned.  When that is a whole header or more, r holds the header, the
 * rest of the bytes as param and the fds that came. */
static inline ssize_t fht_recv_rec(int fd, struct fht_rec *r)
{
    unsigned char buf[FH_IPC_RECORD_MAX];
    union {
        struct cmsghdr c;
        unsigned char  b[CMSG_SPACE(FH_IPC_FDS_MAX * sizeof(int))];
    } ctl;
    struct iovec iov = { buf, sizeof buf };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = ctl.b, .msg_controllen = sizeof ctl.b };
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);

    r->nfds = 0;
    if (n < (ssize_t)FH_IPC_HDR_SIZE)
        return n;
    memcpy(&r->h, buf, sizeof r->h);
    memcpy(r->param, buf + FH_IPC_HDR_SIZE, (size_t)n - FH_IPC_HDR_SIZE);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_type == SCM_RIGHTS) {
            r->nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(r->fds, CMSG_DATA(c), r->nfds * sizeof(int));
        }
    return n;
}

/* An action that fails: its request is answered ACTION_FAILED. */
static inline int fht_action_fails(const struct fh_ipc_msg *m, const void *peer)
{
    (void)m;
    (void)peer;
    return -1;
}

#endif /* FORKHOST_FHTEST_IPC_H */
