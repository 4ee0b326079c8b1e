/*
 * test_member.c - a pool member's side of template.sock, under ASan and
 * UBSan: fh_member_next/fh_member_handoff on real sockets (a request that
 * is not a launch is handed over with its bytes and fds; a slow one says
 * BUSY first; a Python launch is taken and set up, its TAKEN carrying the
 * cwd, and the latency the template's histogram counts).  The parser
 * and the classifier are test_request.c's.  Also the log lines' format and
 * the template's counters (forkhost/log.h).
 */
#include "forkhost.h"
#include "fhtest.h"

#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The fixed part of a LAUNCH whose strings take strings_len bytes. */
static struct fh_launch launch_head(size_t strings_len, unsigned stdio_mask,
                                    unsigned nextra, unsigned argc, unsigned envc)
{
    struct fh_launch l;

    memset(&l, 0, sizeof l);
    l.hdr.magic = FH_PROTO_MAGIC;
    l.hdr.version = FH_PROTO_VERSION;
    l.hdr.type = FH_MSG_LAUNCH;
    l.hdr.len = (uint32_t)(sizeof l + strings_len);
    l.hdr.nfds = 1u + (unsigned)__builtin_popcount(stdio_mask) + nextra;
    l.umask = 022;
    l.stdio_mask = stdio_mask;
    l.nextra = nextra;
    l.argc = argc;
    l.envc = envc;
    l.strings_len = (uint32_t)strings_len;
    return l;
}

/* sendmsg of iov with nfds fds (at most 4) attached. */
static ssize_t send_fds(int sock, struct iovec *iov, size_t niov,
                        const int *fds, unsigned nfds)
{
    union { char b[CMSG_SPACE(sizeof(int) * 4)]; struct cmsghdr a; } u;
    struct msghdr msg;
    struct cmsghdr *cm;

    memset(&u, 0, sizeof u);
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = niov;
    msg.msg_control = u.b;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    return sendmsg(sock, &msg, 0);
}

/* A record from the member's socketpair (or the template's socket, as a
 * client reads it): type, body, fds. */
static int read_ctl(int fd, char *body, size_t cap, int *fds, unsigned *nfds,
                    size_t *blen)
{
    union { char b[CMSG_SPACE(sizeof(int) * 40)]; struct cmsghdr a; } u;
    struct fh_msg_hdr h;
    struct iovec iov[2] = {{&h, sizeof h}, {body, cap}};
    struct msghdr msg;
    struct cmsghdr *c;
    ssize_t r;

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = u.b;
    msg.msg_controllen = sizeof u.b;
    r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    CHECK(r >= (ssize_t)sizeof h, "ctl record");
    CHECK(h.magic == FH_PROTO_MAGIC && h.len == (uint32_t)r, "ctl header");
    *blen = (size_t)r - sizeof h;
    *nfds = 0;
    for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        unsigned k = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));

        memcpy(fds + *nfds, CMSG_DATA(c), k * sizeof(int));
        *nfds += k;
    }
    CHECK(*nfds == h.nfds, "ctl fds");
    return h.type;
}

static void test_member_sockets(void)
{
    struct sockaddr_un addr;
    int lst, ctl[2], notices, fds_before = count_fds();
    pid_t member;
    char body[FH_PROTO_MAX_MSG + 64];
    int fds[40];
    unsigned nfds, i;
    size_t blen;
    uint64_t count;
    struct fh_handoff h;

    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "fh-test-member-%d",
             (int)getpid());
    lst = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(lst >= 0 && bind(lst, (struct sockaddr *)&addr, sizeof addr) == 0 &&
          listen(lst, 8) == 0, "listen");
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) == 0, "pair");
    notices = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    CHECK(notices >= 0, "eventfd");

    member = fork_child();
    if (member == 0) {
        static char buf[FH_PROTO_MAX_MSG + 1];
        struct fh_member m;
        int k;

        memset(&m, 0, sizeof m);
        m.listen_fd = lst;
        m.ctl_fd = ctl[1];
        m.notice_fd = notices;
        m.uid = (unsigned)getuid();
        m.timeout_ms = 5000;
        m.buf = buf;
        m.python = 1;          /* Python entries are taken (FH_MEMBER_PYTHON) */
        CHECK(fh_member_init(&m) == 0, "init");
        for (k = 0; k < 2; k++) {
            int rc = fh_member_next(&m);

            CHECK(rc == FH_MEMBER_HANDOFF, "handoff, got %d", rc);
            CHECK(fh_member_handoff(&m) == 0, "send the handoff");
        }
        /* 3: a Python launch, taken: this process is the secondary, set
         * up; say where it runs on its stdout and exit with 7. */
        {
            char cwd[256];
            int rc = fh_member_next(&m);

            CHECK(rc == FH_MEMBER_PYTHON, "a Python launch, got %d", rc);
            CHECK(m.run.target.kind == FH_ENTRY_FUNCTION, "kind");
            CHECK(getcwd(cwd, sizeof cwd) != NULL &&
                  write(1, cwd, strlen(cwd)) == (ssize_t)strlen(cwd), "cwd");
            fh_exit_report(m.run.spec.report_fd, 7);
        }
    }

    /* 1: an INFO request, with two fds: handed over as received. */
    {
        int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        struct fh_msg_hdr q;
        int two[2] = {0, 1};
        struct iovec iov = {&q, sizeof q};

        CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0, "connect");
        memset(&q, 0, sizeof q);
        q.magic = FH_PROTO_MAGIC;
        q.version = FH_PROTO_VERSION;
        q.type = FH_MSG_INFO;
        q.len = sizeof q;
        q.nfds = 2;
        CHECK(send_fds(c, &iov, 1, two, 2) == (ssize_t)sizeof q, "send INFO");
        CHECK(read_ctl(ctl[0], body, sizeof body, fds, &nfds, &blen) ==
              FH_CTL_HANDOFF, "HANDOFF");
        CHECK(blen == sizeof h + sizeof q && nfds == 3, "handoff %zu %u", blen, nfds);
        memcpy(&h, body, sizeof h);
        CHECK(h.state == FH_HANDOFF_MESSAGE && h.received == sizeof q, "state");
        CHECK(memcmp(body + sizeof h, &q, sizeof q) == 0, "bytes as received");
        {
            struct pollfd p = {notices, POLLIN, 0};

            /* The eventfd is written just after the record. */
            CHECK(poll(&p, 1, 5000) == 1, "the template was woken");
            CHECK(read(notices, &count, sizeof count) == sizeof count && count >= 1,
                  "the count");
        }
        for (i = 0; i < nfds; i++)
            close(fds[i]);
        close(c);
    }

    /* 2: a client that says nothing at first: BUSY, then its (bad) record. */
    {
        int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

        CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0, "connect");
        CHECK(read_ctl(ctl[0], body, sizeof body, fds, &nfds, &blen) ==
              FH_CTL_BUSY && nfds == 0, "BUSY before the request");
        CHECK(send(c, "junk", 4, 0) == 4, "send junk");
        CHECK(read_ctl(ctl[0], body, sizeof body, fds, &nfds, &blen) ==
              FH_CTL_HANDOFF && nfds == 1, "HANDOFF of the junk");
        memcpy(&h, body, sizeof h);
        CHECK(h.received == 4 && memcmp(body + sizeof h, "junk", 4) == 0, "junk");
        close(fds[0]);
        close(c);
    }
    /* 3: a Python launch: TAKEN carries the connection and the cwd; the
     * member sets itself up in C (cwd, stdio) before Python would run. */
    {
        static const char strings[] = "m:f\0m:f";   /* entry, argv[0] */
        char dir[] = "/tmp/fhtest-member-XXXXXX", out[256];
        int c = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), p[2];
        int sent[3];
        struct fh_launch l = launch_head(sizeof strings, 6, 0, 1, 0);
        struct iovec iov[2] = {{&l, sizeof l}, {(void *)strings, sizeof strings}};
        struct stat a, b;
        struct fh_exited ex;
        struct fh_exit_report report;
        struct fh_taken_msg tk;
        int64_t before, after;
        ssize_t n;

        CHECK(mkdtemp(dir) != NULL && pipe2(p, O_CLOEXEC) == 0, "dir, pipe");
        sent[0] = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        sent[1] = sent[2] = p[1];
        before = mono_us();
        CHECK(sent[0] >= 0 &&
              connect(c, (struct sockaddr *)&addr, sizeof addr) == 0 &&
              send_fds(c, iov, 2, sent, 3) == (ssize_t)l.hdr.len, "send LAUNCH");
        close(p[1]);
        CHECK(read_ctl(ctl[0], body, sizeof body, fds, &nfds, &blen) ==
              FH_CTL_TAKEN && nfds == 2, "TAKEN with two fds, got %u", nfds);
        after = mono_us();
        /* When it was taken, and how long after its accept: within what
         * this process saw. */
        memcpy(&tk, body, sizeof tk);
        CHECK(tk.taken_us >= before && tk.taken_us <= after &&
              tk.latency_us <= after - before, "TAKEN's times: %lld in "
              "[%lld, %lld], latency %u", (long long)tk.taken_us,
              (long long)before, (long long)after, tk.latency_us);
        CHECK(fstat(fds[1], &a) == 0 && fstat(sent[0], &b) == 0 &&
              a.st_ino == b.st_ino && a.st_dev == b.st_dev, "TAKEN's cwd");
        CHECK(blen == sizeof(struct fh_taken_msg) + 7 &&
              memcmp(body + sizeof(struct fh_taken_msg), "m:f\0m:f", 7) == 0,
              "TAKEN's entry and argv0");
        close(fds[0]);
        close(fds[1]);
        n = read(p[0], out, sizeof out - 1);
        CHECK(n > 0, "the secondary's stdout");
        out[n] = '\0';
        CHECK(realpath(dir, body) != NULL && strcmp(out, body) == 0,
              "its cwd: %s", out);
        /* The client: STARTED (with a pidfd), then EXITED 7. */
        CHECK(read_ctl(c, body, sizeof body, fds, &nfds, &blen) == FH_MSG_STARTED &&
              nfds == 1, "STARTED with a pidfd");
        close(fds[0]);
        CHECK(recv(c, &ex, sizeof ex, 0) == (ssize_t)sizeof ex &&
              ex.hdr.type == FH_MSG_EXITED && ex.code == 7, "EXITED 7");
        CHECK(read(ctl[0], &report, sizeof report) == (ssize_t)sizeof report &&
              report.code == 7, "the report");
        close(p[0]);
        close(sent[0]);
        close(c);
        CHECK(rmdir(dir) == 0, "clean up");
    }
    CHECK(reap(member) == 7, "member");
    close(lst);
    close(ctl[0]);
    close(ctl[1]);
    close(notices);
    CHECK(count_fds() == fds_before, "fds leaked");
}

/* forkhost/log.h: levels, signal names, quoting, one line's format, and
 * the counters' buckets and exits. */
static void test_log_and_counters(void)
{
    static struct fh_template_stats st;
    char buf[256], line[512];
    int p[2], i;
    ssize_t n;

    CHECK(fh_log_level_parse("debug") == FH_LOG_DEBUG &&
          fh_log_level_parse("warning") == FH_LOG_WARNING &&
          fh_log_level_parse("loud") == -1 && fh_log_level_parse(NULL) == -1,
          "levels by name");
    for (i = 0; i < 8; i++)
        CHECK(fh_log_level_name(i) == NULL ||
              fh_log_level_parse(fh_log_level_name(i)) == i, "level %d", i);
    CHECK(fh_log_level_name(FH_LOG_DEFAULT) != NULL && fh_log_level_name(8) == NULL,
          "names");
    CHECK(strcmp(fh_log_signal_name(SIGKILL, buf, sizeof buf), "SIGKILL") == 0 &&
          strcmp(fh_log_signal_name(SIGRTMIN + 2, buf, sizeof buf),
                 "SIGRTMIN+2") == 0 &&
          strcmp(fh_log_signal_name(0, buf, sizeof buf), "SIG0") == 0, "signals");
    CHECK(fh_log_quote(buf, sizeof buf, "a\"b\n") == 12 &&
          strcmp(buf, "\"a\\\"b\\u000a\"") == 0, "quoted: %s", buf);
    CHECK(fh_log_quote(buf, 4, "abcdef") == -1, "does not fit");
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    CHECK(fh_log_write(p[1], FH_LOG_INFO, "t", "exit", "pid=1 status=0") == 0 &&
          fh_log_write(p[1], FH_LOG_DEBUG, "t", "start", NULL) == 0, "write");
    n = read(p[0], line, sizeof line - 1);
    CHECK(n > 0, "read");
    line[n] = '\0';
    /* <6>YYYY-MM-DDTHH:MM:SS.mmmZ forkhost[t] exit pid=1 status=0 */
    CHECK(n == 2 * 27 + (ssize_t)strlen(" forkhost[t] exit pid=1 status=0\n") +
          (ssize_t)strlen(" forkhost[t] start\n") &&
          strncmp(line, "<6>", 3) == 0 && line[13] == 'T' && line[26] == 'Z' &&
          strncmp(line + 27, " forkhost[t] exit pid=1 status=0\n<7>", 36) == 0 &&
          strcmp(line + 60 + 27, " forkhost[t] start\n") == 0, "lines: %s", line);
    close(p[0]);
    close(p[1]);

    CHECK(fh_stats_latency_bucket(0) == 0 && fh_stats_latency_bucket(100) == 0 &&
          fh_stats_latency_bucket(101) == 1 &&
          fh_stats_latency_bucket(1000000) == FH_STATS_LATENCY_BUCKETS - 2 &&
          fh_stats_latency_bucket(1000001) == FH_STATS_LATENCY_BUCKETS - 1 &&
          fh_stats_latency_bucket(UINT64_MAX) == FH_STATS_LATENCY_BUCKETS - 1,
          "buckets");
    for (i = 0; i + 1 < FH_STATS_LATENCY_BUCKETS; i++)
        CHECK(fh_stats_latency_bucket(fh_stats_latency_bound((unsigned)i)) ==
              (unsigned)i && (i == 0 || fh_stats_latency_bound((unsigned)i) >
                              fh_stats_latency_bound((unsigned)i - 1)),
              "bound %d", i);
    CHECK(fh_stats_latency_bound(FH_STATS_LATENCY_BUCKETS - 1) == 0, "+Inf");
    fh_stats_launch(&st, 50);
    fh_stats_launch(&st, 300);
    fh_stats_launch(&st, 2000000);
    CHECK(st.launches == 3 && st.latency[0] == 1 && st.latency[2] == 1 &&
          st.latency[FH_STATS_LATENCY_BUCKETS - 1] == 1 &&
          st.latency_sum_us == 2000350, "launches");
    fh_stats_exit(&st, 0);
    fh_stats_exit(&st, 3 << 8);
    fh_stats_exit(&st, 3 << 8);
    fh_stats_exit(&st, 255 << 8);
    fh_stats_exit(&st, SIGKILL);
    fh_stats_exit(&st, SIGSEGV | 0x80);      /* with a core dump */
    CHECK(st.exit_status[0] == 1 && st.exit_status[3] == 2 &&
          st.exit_status[255] == 1 && st.exit_signal[SIGKILL] == 1 &&
          st.exit_signal[SIGSEGV] == 1, "exits");
}

int main(void)
{
    test_log_and_counters();
    test_member_sockets();
    printf("test_member: ok\n");
    return 0;
}
