/*
 * test_member.c - a pool member's side of template.sock, under ASan and
 * UBSan: the LAUNCH parser on valid, broken and fuzzed records, and
 * fh_entry_classify on real files, and
 * fh_member_next/fh_member_handoff on real sockets (a request that is not
 * a launch is handed over with its bytes and fds; a slow one says BUSY
 * first; a Python launch is taken and set up, its TOOK carrying the cwd).
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

static char rec[4096];

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

/* A valid LAUNCH: entry "e", argv {"a", ""}, env {"K=v"}, stdio 0b101,
 * one extra fd: 1 + 2 + 1 = 4 fds. */
static size_t good(void)
{
    static const char strings[] = "e\0a\0\0K=v";   /* + the final NUL */
    struct fh_launch l = launch_head(sizeof strings, 5, 1, 2, 1);

    memcpy(rec, &l, sizeof l);
    memcpy(rec + sizeof l, strings, sizeof strings);
    return sizeof l + sizeof strings;
}

static int parses(size_t n, unsigned nfds)
{
    struct fh_launch_view v;

    return fh_launch_parse(rec, n, nfds, &v) == 0;
}

#define FIELD(member) (*(uint32_t *)(rec + offsetof(struct fh_launch, member)))

static void test_parse(void)
{
    struct fh_launch_view v;
    size_t n = good(), i;

    CHECK(fh_launch_parse(rec, n, 4, &v) == 0, "a valid launch");
    CHECK(strcmp(v.entry, "e") == 0 && v.launch.argc == 2, "the view");
    CHECK(v.strings == v.entry + 2 && v.strings_len == n - sizeof(struct fh_launch) - 2,
          "strings after the entry");
    CHECK(!parses(n, 3) && !parses(n, 5), "fds received must match");
    good(); FIELD(hdr.magic) ^= 1;      CHECK(!parses(n, 4), "magic");
    good(); rec[4] = 2;                 CHECK(!parses(n, 4), "version");
    good(); rec[6] = FH_MSG_INFO;       CHECK(!parses(n, 4), "type");
    good(); FIELD(hdr.len) += 1;        CHECK(!parses(n, 4), "length");
    good(); FIELD(hdr.nfds) = 3;        CHECK(!parses(n, 4), "header nfds");
    good(); FIELD(strings_len) -= 1;    CHECK(!parses(n, 4), "strings_len");
    good(); FIELD(flags) = 4;           CHECK(!parses(n, 4), "flags");
    good(); FIELD(flags) = FH_LAUNCH_MODULE; CHECK(parses(n, 4), "module flag");
    good(); FIELD(flags) = FH_LAUNCH_FLAGS; CHECK(parses(n, 4), "every known flag");
    good(); FIELD(stdio_mask) = 8;      CHECK(!parses(n, 4), "stdio mask");
    good(); FIELD(umask) = 01000;       CHECK(!parses(n, 4), "umask");
    good(); FIELD(nextra) = 33;         CHECK(!parses(n, 4), "nextra");
    good(); FIELD(argc) = 0; FIELD(envc) = 2; CHECK(!parses(n, 4), "argc 0");
    good(); FIELD(argc) = 3;            CHECK(!parses(n, 4), "one string short");
    good(); FIELD(envc) = 0;            CHECK(!parses(n, 4), "one string over");
    good(); rec[n - 1] = 'x';           CHECK(!parses(n, 4), "no final NUL");
    good(); rec[sizeof(struct fh_launch)] = '\0';
    FIELD(argc) = 3; FIELD(envc) = 0;   CHECK(!parses(n, 4), "empty entry");
    good(); rec[n - 3] = 'x';           CHECK(!parses(n, 4), "env without '='");
    good(); rec[n - 4] = '='; rec[n - 3] = 'x';
    CHECK(!parses(n, 4), "env '=' first only");
    CHECK(!parses(10, 4) && !parses(sizeof(struct fh_msg_hdr), 4), "short");
    /* Every truncation, and every single-byte change: no read outside the
     * record (ASan watches), and only a few survive. */
    for (i = 0; i <= good(); i++) {
        good();
        FIELD(hdr.len) = (uint32_t)i;
        (void)parses(i, 4);
    }
    for (i = 0; i < good(); i++) {
        unsigned bit;

        for (bit = 0; bit < 8; bit++) {
            good();
            rec[i] ^= (char)(1u << bit);
            (void)parses(n, 4);
        }
    }
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
    int lst, ctl[2], news, fds_before = count_fds();
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
    news = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    CHECK(news >= 0, "eventfd");

    member = fork_child();
    if (member == 0) {
        static char buf[FH_PROTO_MAX_MSG + 1];
        struct fh_member m;
        int k;

        memset(&m, 0, sizeof m);
        m.listen_fd = lst;
        m.ctl_fd = ctl[1];
        m.news_fd = news;
        m.uid = (unsigned)getuid();
        m.timeout_ms = 5000;
        m.buf = buf;
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
            CHECK(m.run.kind == FH_ENTRY_FUNCTION, "kind");
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
            struct pollfd p = {news, POLLIN, 0};

            /* The eventfd is written just after the record. */
            CHECK(poll(&p, 1, 5000) == 1, "the template was woken");
            CHECK(read(news, &count, sizeof count) == sizeof count && count >= 1,
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
    /* 3: a Python launch: TOOK carries the connection and the cwd; the
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
        int32_t report[2];
        ssize_t n;

        CHECK(mkdtemp(dir) != NULL && pipe2(p, O_CLOEXEC) == 0, "dir, pipe");
        sent[0] = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        sent[1] = sent[2] = p[1];
        CHECK(sent[0] >= 0 &&
              connect(c, (struct sockaddr *)&addr, sizeof addr) == 0 &&
              send_fds(c, iov, 2, sent, 3) == (ssize_t)l.hdr.len, "send LAUNCH");
        close(p[1]);
        CHECK(read_ctl(ctl[0], body, sizeof body, fds, &nfds, &blen) ==
              FH_CTL_TOOK && nfds == 2, "TOOK with two fds, got %u", nfds);
        CHECK(fstat(fds[1], &a) == 0 && fstat(sent[0], &b) == 0 &&
              a.st_ino == b.st_ino && a.st_dev == b.st_dev, "TOOK's cwd");
        CHECK(blen == 4 + 7 && memcmp(body + 4, "m:f\0m:f", 7) == 0,
              "TOOK's entry and argv0");
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
        CHECK(read(ctl[0], report, sizeof report) == (ssize_t)sizeof report &&
              report[0] == 7, "the report");
        close(p[0]);
        close(sent[0]);
        close(c);
        CHECK(rmdir(dir) == 0, "clean up");
    }
    CHECK(reap(member) == 7, "member");
    close(lst);
    close(ctl[0]);
    close(ctl[1]);
    close(news);
    CHECK(count_fds() == fds_before, "fds leaked");
}

/* fh_entry_classify against a directory holding Python source, an ELF
 * file and a subdirectory; the property test in test_pool.py holds it to
 * entries.classify, this one runs it under the sanitizers. */
static void test_classify(void)
{
    char dir[] = "/tmp/fhtest-classify-XXXXXX", path[64], head[8], big[64];
    const char *name, *symbol;
    int fd, dfd;

    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/s.py", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    CHECK(fd >= 0 && write(fd, "pass\n", 5) == 5 && close(fd) == 0, "s.py");
    snprintf(path, sizeof path, "%s/sub", dir);
    CHECK(mkdir(path, 0700) == 0, "sub/");
    dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    CHECK(dfd >= 0, "open the directory");

#define KIND(entry, mod) fh_entry_classify(entry, mod, dfd, head, sizeof head, \
                                           &name, &symbol)
    CHECK(KIND("mod.sub:fn", 0) == FH_ENTRY_FUNCTION &&
          strcmp(name, "mod.sub") == 0 && strcmp(symbol, "fn") == 0, "module:function");
    CHECK(KIND("s.py", 0) == FH_ENTRY_SCRIPT && strcmp(name, "s.py") == 0 &&
          symbol == NULL, "a script");
    CHECK(KIND("pkg.mod", 1) == FH_ENTRY_MODULE && strcmp(name, "pkg.mod") == 0,
          "-m module");
    CHECK(KIND("/bin/true", 0) == FH_ENTRY_NATIVE && symbol == NULL, "ELF");
    CHECK(KIND("/bin/true:", 0) == FH_ENTRY_DEFER, "head longer than its buffer");
    CHECK(KIND("s.py:main", 0) == FH_ENTRY_DEFER, "a symbol on Python source");
    CHECK(KIND("missing", 0) == FH_ENTRY_DEFER, "not found");
    CHECK(KIND("sub", 0) == FH_ENTRY_SCRIPT && strcmp(name, "sub") == 0,
          "a directory (python DIR runs its __main__.py)");
    CHECK(KIND("sub:fn", 0) == FH_ENTRY_FUNCTION, "a directory is no PATH:SYMBOL head");
    CHECK(KIND("/dev/null", 0) == FH_ENTRY_DEFER, "a device: the template decides");
    CHECK(KIND("mod:", 0) == FH_ENTRY_DEFER && KIND(":fn", 0) == FH_ENTRY_DEFER &&
          KIND("1m:fn", 0) == FH_ENTRY_DEFER && KIND("m.:fn", 0) == FH_ENTRY_DEFER &&
          KIND("m:f..g", 0) == FH_ENTRY_DEFER && KIND("a b", 1) == FH_ENTRY_DEFER,
          "names that are not dotted identifiers");
    memset(big, 'm', sizeof big - 4);
    memcpy(big + sizeof big - 4, ":fn", 4);
    CHECK(KIND(big, 0) == FH_ENTRY_DEFER, "a module name longer than head");
#undef KIND
    close(dfd);
    unlink(strcat(strcpy(path, dir), "/s.py"));
    rmdir(strcat(strcpy(path, dir), "/sub"));
    CHECK(rmdir(dir) == 0, "clean up");
}

int main(void)
{
    test_parse();
    test_classify();
    test_member_sockets();
    printf("test_member: ok\n");
    return 0;
}
