/*
 * test_ipc_loop.c - the primary's receive loop (fh_ipc_loop_*, forkhost/ipc.h)
 * without Python: a C upcall plays forkhost/ipc/_primary.py's part, raw sockets play
 * the members, so the loop's own work is checked under the sanitizers.
 *
 * Covered: records read and checked in C (valid ones handed up in the
 * loop's buffer with their fds; malformed ones, a zero-length record among
 * them, counted, their fds closed, the connection kept), a reply queued during the upcall and sent when it
 * returns, in order with a record sent after it, an EOF reported once, an
 * EVENTS fd handed up as an event, a tick's timeout honoured, wake and stop
 * from another thread, a stale event of an unwatched fd skipped, counters,
 * and no fd left behind.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"
#include "fhtest.h"

/* The loop's thread counts, the test's waits: both sides use atomics. */
#define BUMP(x) __atomic_add_fetch(&(x), 1, __ATOMIC_SEQ_CST)

struct ctx {
    struct fh_ipc_loop *loop;
    int                 member;     /* the loop's end of the member */
    int                 other;      /* an EVENTS fd (a pipe's read end) */
    int                 records, gone, events, ticks;
    int                 last_nfds;
    char                last_param[64];
};

static long on_upcall(void *arg, int kind, int fd, uint32_t events, int len)
{
    struct ctx *c = arg;
    const struct fh_ipc_hdr *h = fh_ipc_loop_buffer(c->loop);

    (void)events;
    switch (kind) {
    case FH_IPC_UP_RECORD: {
        const int *fds = fh_ipc_loop_fds(c->loop);

        CHECK(fd == c->member, "record from fd %d", fd);
        CHECK((uint32_t)len == h->len && h->magic == FH_IPC_MAGIC, "record as it came");
        BUMP(c->records);
        c->last_nfds = (int)h->nfds;
        snprintf(c->last_param, sizeof c->last_param, "%.*s", (int)h->param_len,
                 (const char *)h + FH_IPC_HDR_SIZE);
        for (uint32_t i = 0; i < h->nfds; i++)
            close(fds[i]);
        if (h->type == FH_IPC_REQUEST) {
            /* queued: it leaves when we return, before the MSG below */
            CHECK(fh_ipc_send_reply(c->loop, fd, h->id, FH_IPC_OK, h->name,
                                    "pong", 4) == 0, "queue the reply");
            CHECK(fh_ipc_send_fd(c->loop, fd, FH_IPC_MSG, 0, 0, "after", "m", 1,
                                 NULL, 0, 0) == 0, "a record after the reply");
        }
        return 0;
    }
    case FH_IPC_UP_GONE:
        CHECK(fd == c->member, "gone: fd %d", fd);
        BUMP(c->gone);
        CHECK(fh_ipc_loop_unwatch(c->loop, fd) == 0, "unwatch");
        return 0;
    case FH_IPC_UP_EVENT: {
        char b[16];

        CHECK(fd == c->other, "event on fd %d", fd);
        BUMP(c->events);
        CHECK(read(fd, b, sizeof b) > 0, "read the pipe");
        return 0;
    }
    case FH_IPC_UP_TICK:
        BUMP(c->ticks);
        return 20;              /* ms: the loop must come back by itself */
    }
    CHECK(0, "unknown upcall %d", kind);
    return 0;
}

static void *runner(void *arg)
{
    struct ctx *c = arg;

    CHECK(fh_ipc_loop_run(c->loop, on_upcall, c) == 0, "loop_run");
    return NULL;
}

static void put(int fd, uint16_t type, uint64_t id, const char *name,
                const char *param, const int *fds, int nfds, uint32_t nfds_said)
{
    unsigned char buf[FH_IPC_RECORD_MAX];
    struct fh_ipc_hdr h;
    union { struct cmsghdr c; unsigned char b[CMSG_SPACE(9 * sizeof(int))]; } ctl;
    struct iovec iov;
    struct msghdr mh;
    size_t plen = param ? strlen(param) : 0;

    memset(&h, 0, sizeof h);
    h.magic = FH_IPC_MAGIC;
    h.version = FH_IPC_VERSION;
    h.type = type;
    h.len = (uint32_t)(FH_IPC_HDR_SIZE + plen);
    h.nfds = nfds_said;
    h.id = id;
    h.param_len = (uint32_t)plen;
    if (name)
        snprintf(h.name, sizeof h.name, "%s", name);
    memcpy(buf, &h, sizeof h);
    if (plen)
        memcpy(buf + FH_IPC_HDR_SIZE, param, plen);
    iov.iov_base = buf;
    iov.iov_len = FH_IPC_HDR_SIZE + plen;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds) {
        memset(&ctl, 0, sizeof ctl);
        mh.msg_control = ctl.b;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        CMSG_FIRSTHDR(&mh)->cmsg_level = SOL_SOCKET;
        CMSG_FIRSTHDR(&mh)->cmsg_type = SCM_RIGHTS;
        CMSG_FIRSTHDR(&mh)->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(CMSG_FIRSTHDR(&mh)), fds, nfds * sizeof(int));
    }
    CHECK(sendmsg(fd, &mh, 0) >= 0, "sendmsg");
}

static void get(int fd, uint16_t type, const char *name, const char *param)
{
    unsigned char buf[FH_IPC_RECORD_MAX];
    struct fh_ipc_hdr h;
    ssize_t n = recv(fd, buf, sizeof buf, 0);

    CHECK(n >= (ssize_t)FH_IPC_HDR_SIZE, "recv %zd", n);
    memcpy(&h, buf, sizeof h);
    CHECK(h.type == type && strcmp(h.name, name) == 0, "got type %u %s", h.type, h.name);
    CHECK(h.param_len == strlen(param) && !memcmp(buf + FH_IPC_HDR_SIZE, param,
                                                   h.param_len), "param");
}

static void wait_for(int *what, int n)
{
    for (int i = 0; i < 5000 && __atomic_load_n(what, __ATOMIC_SEQ_CST) < n; i++)
        usleep(1000);
    CHECK(__atomic_load_n(what, __ATOMIC_SEQ_CST) >= n, "waited for %d, have %d", n,
          *what);
}

int main(void)
{
    int before = count_fds();
    struct ctx c;
    int sv[2], pfd[2], extra[2];
    pthread_t t;
    struct fh_ipc_stats st;

    memset(&c, 0, sizeof c);
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    CHECK(pipe(pfd) == 0 && pipe(extra) == 0, "pipe");
    c.loop = fh_ipc_loop_new();
    CHECK(c.loop != NULL, "loop_new");
    c.member = sv[0];
    c.other = pfd[0];
    CHECK(fh_ipc_loop_watch(c.loop, c.member, FH_IPC_WATCH_RECORDS) == 0, "watch");
    CHECK(fh_ipc_loop_watch(c.loop, c.other, FH_IPC_WATCH_EVENTS) == 0, "watch");
    CHECK(fh_ipc_loop_watch(c.loop, c.other, 7) < 0 && errno == EINVAL, "bad how");
    CHECK(pthread_create(&t, NULL, runner, &c) == 0, "thread");

    /* a message with an fd: handed up with it */
    put(sv[1], FH_IPC_MSG, 0, "note", "hello", &extra[0], 1, 1);
    wait_for(&c.records, 1);
    CHECK(c.last_nfds == 1 && strcmp(c.last_param, "hello") == 0, "the note");

    /* malformed: counted, fds closed (our write end then sees no reader) */
    put(sv[1], FH_IPC_MSG, 0, "", "x", NULL, 0, 0);             /* empty name */
    put(sv[1], FH_IPC_MSG, 0, "note", "x", &extra[1], 1, 0);    /* fds unsaid */
    put(sv[1], FH_IPC_REQUEST, 0, "note", "x", NULL, 0, 0);     /* id 0 */
    put(sv[1], FH_IPC_WELCOME, 0, NULL, NULL, NULL, 0, 0);      /* wrong way */
    CHECK(send(sv[1], "tiny", 4, 0) == 4, "a truncated record");
    /* a zero-length record: recvmsg() returns 0 as at EOF, but the member
     * is still there (peer_shut()): counted, not the end of it */
    CHECK(send(sv[1], "", 0, 0) == 0, "an empty record");
    close(extra[1]);

    /* a request: answered when the upcall returns, before what it sent next */
    put(sv[1], FH_IPC_REQUEST, 42, "echo", "ping", NULL, 0, 0);
    get(sv[1], FH_IPC_REPLY, "echo", "pong");
    get(sv[1], FH_IPC_MSG, "after", "m");
    CHECK(__atomic_load_n(&c.records, __ATOMIC_SEQ_CST) == 2, "records");

    /* an EVENTS fd */
    CHECK(write(pfd[1], "e", 1) == 1, "write");
    wait_for(&c.events, 1);

    /* ticks come by themselves (the upcall asked for 20 ms) */
    {
        int t0 = __atomic_load_n(&c.ticks, __ATOMIC_SEQ_CST);

        wait_for(&c.ticks, t0 + 2);
        fh_ipc_loop_wake(c.loop);       /* and a wake-up makes one at once */
        wait_for(&c.ticks, t0 + 3);
    }

    /* the member goes: one GONE, then its fd is not watched any more */
    close(sv[1]);
    wait_for(&c.gone, 1);
    usleep(50000);
    CHECK(__atomic_load_n(&c.gone, __ATOMIC_SEQ_CST) == 1, "gone once");

    fh_ipc_loop_stop(c.loop);
    CHECK(pthread_join(t, NULL) == 0, "join");
    fh_ipc_loop_stats(c.loop, &st);
    CHECK(st.received == 2 && st.malformed == 6, "received %lu malformed %lu",
          (unsigned long)st.received, (unsigned long)st.malformed);
    CHECK(st.sent == 2 && st.send_failed == 0, "sent %lu failed %lu",
          (unsigned long)st.sent, (unsigned long)st.send_failed);
    {
        char b;     /* the malformed record's fd was closed by the loop */

        CHECK(read(extra[0], &b, 1) == 0, "EOF on the pipe: no writer left");
    }
    fh_ipc_loop_close(c.loop);
    fh_ipc_loop_wake(c.loop);           /* after close: harmless */
    fh_ipc_loop_free(c.loop);
    close(sv[0]);
    close(pfd[0]);
    close(pfd[1]);
    close(extra[0]);
    CHECK(count_fds() == before, "fd leak: %d -> %d", before, count_fds());
    printf("test_ipc_loop: ok\n");
    return 0;
}
