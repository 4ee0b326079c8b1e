/*
 * ipc_wire.c - the IPC wire format in C (forkhost/ipc.h, docs/ipc.md):
 * encoding a record, sending and receiving one on a SOCK_SEQPACKET
 * connection, the one parser every endpoint checks what it receives with
 * (fh_ipc_record_check(), which forkhost/ipc uses too, so a record gets
 * the same verdict from C and Python), the words a refused record is
 * refused with, what a sender must refuse before anything goes out, and
 * the reserved names.  No state: the endpoints (ipc.c, a secondary's;
 * ipc_primary.c, the primary's) build on it.
 */
#include "forkhost/ipc.h"
#include "ipc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

_Static_assert(sizeof(struct fh_ipc_hdr) == FH_IPC_HDR_SIZE, "header layout");
_Static_assert(sizeof(struct fh_ipc_hello) == 16, "HELLO layout");
_Static_assert(sizeof(struct fh_ipc_welcome) == 16, "WELCOME layout");
_Static_assert(sizeof(struct fh_ipc_exit_notice) == 16, "exit notice layout");
_Static_assert(sizeof(struct fh_ipc_primary_notice) == 8, "primary notice layout");

#define FH_CMSG_SPACE CMSG_SPACE(FH_IPC_FDS_MAX * sizeof(int))

/* -- names ------------------------------------------------------------- */

static const char *const notices[] = {
    FH_IPC_EXIT_NOTICE, FH_IPC_SHUTDOWN_NOTICE, FH_IPC_STOP_NOTICE,
    FH_IPC_WORKER_NOTICE, FH_IPC_RECLAIM_NOTICE, FH_IPC_PRIMARY_NOTICE,
};

FH_API const char *fh_ipc_notice_name(unsigned i)
{
    return i < sizeof notices / sizeof notices[0] ? notices[i] : NULL;
}

bool fh__ipc_is_notice(const char *name)
{
    for (size_t i = 0; i < sizeof notices / sizeof notices[0]; i++)
        if (strcmp(name, notices[i]) == 0)
            return true;
    return false;
}

FH_API const char *fh_ipc_type_name(unsigned type)
{
    switch (type) {
    case FH_IPC_MSG:     return "MSG";
    case FH_IPC_REQUEST: return "REQUEST";
    case FH_IPC_REPLY:   return "REPLY";
    case FH_IPC_HELLO:   return "HELLO";
    case FH_IPC_WELCOME: return "WELCOME";
    case FH_IPC_REFUSE:  return "REFUSE";
    case FH_IPC_BYE:     return "BYE";
    default:             return NULL;
    }
}

/* -- what a sender refuses ---------------------------------------------- */

int fh__ipc_check_name(const char *name)
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

int fh__ipc_check_flat(const char *name, int len_param, const int *fds,
                       int num_fds, bool user)
{
    if (fh__ipc_check_name(name) < 0)
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

int fh__ipc_check_msg(const struct fh_ipc_msg *m, bool user)
{
    if (!m) {
        errno = EINVAL;
        return -1;
    }
    return fh__ipc_check_flat(m->name, m->len_param, m->fds, m->num_fds, user);
}

/* -- encoding and sending ------------------------------------------------ */

void fh__ipc_encode_hdr(struct fh_ipc_hdr *h, uint16_t type, uint64_t id,
                        int32_t status, const char *name, uint32_t plen,
                        uint32_t nfds)
{
    memset(h, 0, sizeof *h);
    h->magic = FH_IPC_MAGIC;
    h->version = FH_IPC_VERSION;
    h->type = type;
    h->len = FH_IPC_HDR_SIZE + plen;
    h->nfds = nfds;
    h->id = id;
    h->param_len = plen;
    h->status = status;
    if (name)
        strncpy(h->name, name, FH_IPC_NAME_MAX - 1);
}

int fh__ipc_send_frame(int fd, uint16_t type, uint64_t id, int32_t status,
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

    fh__ipc_encode_hdr(&h, type, id, status, name, plen, (uint32_t)nfds);
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

/* -- receiving ----------------------------------------------------------- */

static int check_record(const void *buf, size_t n, int mflags, unsigned nfds,
                        int side, struct fh_ipc_verdict *v);

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
bool fh__ipc_peer_shut(int fd)
{
    struct pollfd p = { fd, POLLRDHUP, 0 };
    int r;

    while ((r = poll(&p, 1, 0)) < 0 && errno == EINTR)
        ;
    if (r < 0)
        return true;            /* cannot tell: a 0 read stays EOF */
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

ssize_t fh__ipc_recv(int fd, void *buf, int *fds, int *nfds, int side,
                     struct fh_ipc_verdict *v, int flags)
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

            for (int i = 0; i < k; i++) {
                int f;

                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
                if (got < FH_IPC_FDS_MAX)
                    fds[got++] = f;
                else
                    close(f);   /* (a control buffer this size holds no more) */
            }
        }
    }
    *nfds = got;
    if (n == 0 && got == 0 && fh__ipc_peer_shut(fd))
        return 0;
    if (check_record(buf, (size_t)n, mh.msg_flags, (unsigned)got, side, v) < 0) {
        close_fds(fds, got);
        *nfds = 0;
        return -2;
    }
    return n;
}

/* -- the parser ---------------------------------------------------------- */

static bool named_type(unsigned t)
{
    return t == FH_IPC_MSG || t == FH_IPC_REQUEST || t == FH_IPC_REPLY;
}

static int refuse(struct fh_ipc_verdict *v, unsigned error, uint64_t a,
                  uint64_t b, uint64_t c)
{
    v->error = error;
    v->a = a;
    v->b = b;
    v->c = c;
    return -1;
}

/* fh_ipc_record_check(), called directly by fh__ipc_recv() (the exported
 * name goes through the PLT). */
static int check_record(const void *buf, size_t n, int mflags, unsigned nfds,
                        int side, struct fh_ipc_verdict *v)
{
    struct fh_ipc_hdr h;
    size_t namelen;

    memset(v, 0, sizeof *v);
    v->side = (unsigned)side;
    if (side == FH_IPC_FIRST_RECORD && n >= 8) {
        memcpy(&h, buf, 8);     /* a HELLO of another version: in words */
        if (h.magic == FH_IPC_MAGIC && h.version != FH_IPC_VERSION
            && h.type == FH_IPC_HELLO)
            return refuse(v, FH_IPC_REC_HELLO_VERSION, h.version, FH_IPC_VERSION, 0);
    }
    if (n == 0)
        return refuse(v, FH_IPC_REC_EMPTY, 0, 0, 0);
    if (mflags & MSG_CTRUNC)
        return refuse(v, FH_IPC_REC_TOO_MANY_FDS, FH_IPC_FDS_MAX, 0, 0);
    if (mflags & MSG_TRUNC)
        return refuse(v, FH_IPC_REC_TOO_LARGE, FH_IPC_RECORD_MAX, 0, 0);
    if (n < FH_IPC_HDR_SIZE)
        return refuse(v, FH_IPC_REC_SHORT, n, 0, 0);
    memcpy(&h, buf, sizeof h);
    if (h.magic != FH_IPC_MAGIC)
        return refuse(v, FH_IPC_REC_MAGIC, h.magic, 0, 0);
    if (h.version != FH_IPC_VERSION)
        return refuse(v, FH_IPC_REC_VERSION, h.version, FH_IPC_VERSION, 0);
    if (h.len != n || h.param_len != h.len - FH_IPC_HDR_SIZE
        || h.param_len > FH_IPC_PARAM_MAX)
        return refuse(v, FH_IPC_REC_LENGTH, h.len, h.param_len, n);
    if (h.nfds != nfds || h.nfds > FH_IPC_FDS_MAX)
        return refuse(v, FH_IPC_REC_NFDS, h.nfds, nfds, 0);
    if (!fh_ipc_type_name(h.type))
        return refuse(v, FH_IPC_REC_TYPE, h.type, 0, 0);
    if (h.name[FH_IPC_NAME_MAX - 1] != '\0')
        return refuse(v, FH_IPC_REC_NAME_UNTERMINATED, 0, 0, 0);
    namelen = FH_IPC_NAME_MAX;
    while (namelen > 0 && h.name[namelen - 1] == '\0')
        namelen--;
    if (named_type(h.type) != (namelen > 0) || memchr(h.name, '\0', namelen))
        return refuse(v, FH_IPC_REC_NAME, h.type, 0, 0);
    if ((h.type == FH_IPC_REQUEST || h.type == FH_IPC_REPLY) != (h.id != 0))
        return refuse(v, FH_IPC_REC_ID, h.type, 0, 0);
    v->type = h.type;           /* well-formed from here on */
    switch (side) {
    case FH_IPC_FIRST_RECORD:
        if (h.type != FH_IPC_HELLO)
            return refuse(v, FH_IPC_REC_NOT_HELLO, h.type, 0, 0);
        if (h.param_len != sizeof(struct fh_ipc_hello))
            return refuse(v, FH_IPC_REC_HELLO_SIZE, h.param_len,
                          sizeof(struct fh_ipc_hello), 0);
        break;
    case FH_IPC_FROM_PRIMARY:
        if (h.type == FH_IPC_HELLO || h.type == FH_IPC_BYE)
            return refuse(v, FH_IPC_REC_SIDE, h.type, 0, 0);
        break;
    case FH_IPC_FROM_SECONDARY:
        if (h.type == FH_IPC_WELCOME || h.type == FH_IPC_REFUSE)
            return refuse(v, FH_IPC_REC_SIDE, h.type, 0, 0);
        break;
    default:
        return refuse(v, FH_IPC_REC_SIDE, h.type, 0, 0);
    }
    return h.type;
}

FH_API int fh_ipc_record_check(const void *buf, size_t n, int mflags,
                               unsigned nfds, int side, struct fh_ipc_verdict *v)
{
    return check_record(buf, n, mflags, nfds, side, v);
}

/* The words of each refusal; the numbers are the verdict's a, b and c, the
 * %s a record type's name (a).  One table, so C and Python say the same. */
static const char *const rec_messages[FH_IPC_REC_NERRORS] = {
    [FH_IPC_REC_OK]                = "a valid record",
    [FH_IPC_REC_EMPTY]             = "an empty record",
    [FH_IPC_REC_TOO_MANY_FDS]      = "more than %llu fds",
    [FH_IPC_REC_TOO_LARGE]         = "a record over %llu bytes",
    [FH_IPC_REC_SHORT]             = "a truncated record (%llu bytes)",
    [FH_IPC_REC_MAGIC]             = "bad magic 0x%08llx, not an IPC record",
    [FH_IPC_REC_VERSION]           = "IPC version %llu, not %llu",
    [FH_IPC_REC_LENGTH]            = "its header says %llu bytes with a param of "
                                     "%llu, %llu arrived",
    [FH_IPC_REC_NFDS]              = "%llu fds announced, %llu arrived",
    [FH_IPC_REC_TYPE]              = "unknown type 0x%02llx",
    [FH_IPC_REC_NAME_UNTERMINATED] = "an unterminated name",
    [FH_IPC_REC_NAME]              = "a name its type does not allow",
    [FH_IPC_REC_ID]                = "a request id its type does not allow",
    [FH_IPC_REC_SIDE]              = "a %s record, which only the other side sends",
    [FH_IPC_REC_HELLO_VERSION]     = "IPC version mismatch: the secondary speaks "
                                     "%llu, the primary speaks %llu",
    [FH_IPC_REC_NOT_HELLO]         = "the first IPC record must be HELLO, not %s",
    [FH_IPC_REC_HELLO_SIZE]        = "malformed HELLO: its param is %llu bytes, "
                                     "not %llu",
};

/* A malformed first record is refused with this before its reason. */
#define FIRST_MALFORMED "the first IPC record must be HELLO; this one is malformed: "

FH_API size_t fh_ipc_record_message(const struct fh_ipc_verdict *v, char *out,
                                    size_t size)
{
    char text[FH_IPC_MESSAGE_MAX + 1];
    size_t k = 0;
    int m;

    if (size == 0)
        return 0;
    if (v->error >= FH_IPC_REC_NERRORS) {
        m = snprintf(text, sizeof text, "unknown verdict %u", v->error);
    } else {
        const char *fmt = rec_messages[v->error];

        if (v->side == FH_IPC_FIRST_RECORD && v->error != FH_IPC_REC_OK
            && v->error < FH_IPC_REC_HELLO_VERSION) {
            memcpy(text, FIRST_MALFORMED, sizeof FIRST_MALFORMED - 1);
            k = sizeof FIRST_MALFORMED - 1;
        }
        /* The table's formats take a, b and c, or one type name. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#pragma GCC diagnostic ignored "-Wformat-extra-args"
        if (v->error == FH_IPC_REC_SIDE || v->error == FH_IPC_REC_NOT_HELLO) {
            const char *t = fh_ipc_type_name((unsigned)v->a);

            m = snprintf(text + k, sizeof text - k, fmt, t ? t : "?");
        } else {
            m = snprintf(text + k, sizeof text - k, fmt, (unsigned long long)v->a,
                         (unsigned long long)v->b, (unsigned long long)v->c);
        }
#pragma GCC diagnostic pop
    }
    if (m < 0)
        m = 0;
    k += (size_t)m;
    if (k > sizeof text - 1)
        k = sizeof text - 1;
    if (k > size - 1)
        k = size - 1;
    memcpy(out, text, k);
    out[k] = '\0';
    return k;
}
