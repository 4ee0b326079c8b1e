/*
 * test_template.c - the template's reload and adoption paths (template.c,
 * docs/protocol.md "Reload" and "Adoption"), driven for real under the
 * sanitizers: a C primary (a child of this test: an arena, template.sock,
 * fh_template_fork, no Python), launches through the template with the
 * library's own client (fh_client_run, in children of this test) of a
 * native entry built here with $CC, then:
 *
 *   - RELOAD from the primary: RELOADED, the new generation serves a
 *     launch; the old one retires, keeps serving the secondary that ran
 *     across the reload, whose client gets its exit status, and exits 0
 *     after it;
 *   - RELOAD from another process (this one): ERROR 125, served on;
 *   - kill -9 of the primary: the template serves on (a launch works,
 *     INFO says orphaned);
 *   - ADOPT from this process: ADOPTED with one fd, the arena's memfd
 *     (mapped here: the header and the bytes the primary wrote); a second
 *     ADOPT is refused; the exit of a secondary that ran across the
 *     primary's death comes on the adopter's exit-notice channel;
 *   - SIGTERM ends the template, which removes template.sock.
 *
 * This process is a child subreaper, so the templates (the second
 * generation's parent, the first, exits; the primary is killed) end up
 * as its children and are reaped here.  It fails if a child or an fd is
 * left.  Waits are short polls with deadlines, never timing assertions.
 */
#include "forkhost/arena.h"
#include "forkhost/client.h"
#include "forkhost/memzone.h"
#include "forkhost/proto.h"
#include "forkhost/template.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>

#include "fhtest.h"

#define PREFIX "p"
#define MARK "forkhost test_template: written by the primary"
#define WAIT_MS 20000          /* a deadline, never expected to be reached */

static char dir[64], sock_path[sizeof ((struct sockaddr_un *)0)->sun_path];
static char entry_hold[160], entry_quick[160];

/* The native entry.  hold: "ready PID PPID", then runs to its stdin's end
 * and exits 7.  quick: "quick PID PPID", exit 42. */
static const char ENTRY_C[] =
    "#include <stdio.h>\n"
    "#include <unistd.h>\n"
    "int hold(int argc, char **argv, char **envp) {\n"
    "    char b;\n"
    "    (void)argc; (void)argv; (void)envp;\n"
    "    printf(\"ready %d %d\\n\", (int)getpid(), (int)getppid());\n"
    "    fflush(stdout);\n"
    "    while (read(0, &b, 1) > 0)\n"
    "        ;\n"
    "    return 7;\n"
    "}\n"
    "int quick(int argc, char **argv, char **envp) {\n"
    "    (void)argc; (void)argv; (void)envp;\n"
    "    printf(\"quick %d %d\\n\", (int)getpid(), (int)getppid());\n"
    "    fflush(stdout);\n"
    "    return 42;\n"
    "}\n";

static void build_entry(void)
{
    const char *cc = getenv("CC");
    char src[128], so[128], cmd[512];
    FILE *f;

    snprintf(src, sizeof src, "%s/entry.c", dir);
    snprintf(so, sizeof so, "%s/libtplentry.so", dir);
    f = fopen(src, "w");
    CHECK(f != NULL && fputs(ENTRY_C, f) >= 0 && fclose(f) == 0, "%s", src);
    snprintf(cmd, sizeof cmd, "%s -fPIC -shared -o '%s' '%s'",
             cc != NULL && *cc != '\0' ? cc : "cc", so, src);
    CHECK(system(cmd) == 0, "cannot build the entry: %s", cmd);
    snprintf(entry_hold, sizeof entry_hold, "%s:hold", so);
    snprintf(entry_quick, sizeof entry_quick, "%s:quick", so);
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait up to WAIT_MS for fd to be readable. */
static void wait_readable(int fd, const char *what)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r;

    do
        r = poll(&p, 1, WAIT_MS);
    while (r < 0 && errno == EINTR);
    CHECK(r == 1, "waiting for %s", what);
}

static void short_pause(void)
{
    struct timespec ts = { 0, 2 * 1000 * 1000 };

    nanosleep(&ts, NULL);
}

/* ---- records on template.sock ------------------------------------------- */

static int connect_template(void)
{
    struct sockaddr_un a;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    CHECK(fd >= 0, "socket");
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect %s",
          sock_path);
    return fd;
}

/* A header-only record of type, carrying pass (-1: nothing). */
static void send_hdr(int fd, unsigned type, int pass)
{
    struct fh_msg_hdr h;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { &h, sizeof h };
    struct msghdr m;

    memset(&h, 0, sizeof h);
    memset(&m, 0, sizeof m);
    h.magic = FH_PROTO_MAGIC;
    h.version = FH_PROTO_VERSION;
    h.type = (uint16_t)type;
    h.len = sizeof h;
    h.nfds = pass >= 0;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (pass >= 0) {
        struct cmsghdr *cm;

        memset(&ctl, 0, sizeof ctl);
        m.msg_control = ctl.buf;
        m.msg_controllen = sizeof ctl.buf;
        cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass, sizeof pass);
    }
    CHECK(sendmsg(fd, &m, MSG_NOSIGNAL) == (ssize_t)sizeof h, "send type %u",
          type);
}

/* One record into buf (NUL-terminated after its bytes); its fds, closed
 * but the first, which goes to *got (-1: none); *nfds their count.  The
 * record's length. */
static size_t recv_rec(int fd, char *buf, size_t size, int *got, unsigned *nfds)
{
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { buf, size - 1 };
    struct msghdr m;
    struct cmsghdr *cm;
    ssize_t n;

    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = ctl.buf;
    m.msg_controllen = sizeof ctl.buf;
    wait_readable(fd, "a record from the template");
    n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
    CHECK(n >= (ssize_t)sizeof(struct fh_msg_hdr), "recv: %zd", n);
    CHECK(!(m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)), "truncated record");
    buf[n] = '\0';
    *got = -1;
    *nfds = 0;
    for (cm = CMSG_FIRSTHDR(&m); cm != NULL; cm = CMSG_NXTHDR(&m, cm)) {
        size_t i, k;

        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < k; i++) {
            int f;

            memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof f);
            if (*got < 0)
                *got = f;
            else
                close(f);
            (*nfds)++;
        }
    }
    return (size_t)n;
}

static unsigned rec_type(const char *buf)
{
    struct fh_msg_hdr h;

    memcpy(&h, buf, sizeof h);
    CHECK(h.magic == FH_PROTO_MAGIC && h.version == FH_PROTO_VERSION,
          "a record with magic %#x version %u", h.magic, h.version);
    return h.type;
}

/* Send a header-only request of type (carrying pass, or -1) on a new
 * connection; the answer's type, its ERROR text and exit code, its fd. */
struct answer {
    unsigned type, nfds;
    int fd, exit_code;
    size_t len;
    char buf[1u << 16];
};

static void ask(unsigned type, int pass, struct answer *a)
{
    int fd = connect_template();

    send_hdr(fd, type, pass);
    a->len = recv_rec(fd, a->buf, sizeof a->buf, &a->fd, &a->nfds);
    a->type = rec_type(a->buf);
    a->exit_code = -1;
    if (a->type == FH_MSG_ERROR) {
        struct fh_error e;

        CHECK(a->len >= sizeof e, "a short ERROR");
        memcpy(&e, a->buf, sizeof e);
        a->exit_code = e.exit_code;
        memmove(a->buf, a->buf + sizeof e, a->len - sizeof e + 1);
    }
    close(fd);
}

/* ---- the primary ---------------------------------------------------------- */

/* What the primary tells the test when its template runs. */
struct primary_report {
    int32_t  template_pid;
    uint64_t arena_base, arena_max, arena_ino, mark_offset;
};

/* Its answers to the test's commands: 'r' RELOAD (type and the new
 * template's pid), 'w' reap the first template (its wait status). */
struct primary_answer {
    int32_t type;
    int64_t value;
};

static void xwrite(int fd, const void *p, size_t n)
{
    CHECK(write(fd, p, n) == (ssize_t)n, "write");
}

static void xread(int fd, void *p, size_t n)
{
    wait_readable(fd, "the primary's answer");
    CHECK(read(fd, p, n) == (ssize_t)n, "read");
}

static __attribute__((noreturn)) void primary(int cmd, int rep)
{
    struct fh_template_config c;
    struct primary_report r;
    const struct fh_memzone *mz;
    struct sockaddr_un a;
    struct stat st;
    int lfd, keep[1];
    pid_t tpl;
    char op;

    CHECK(fh_arena_create(FH_ARENA_MIN_SIZE, 0, "forkhost-arena:test_template")
          == 0, "fh_arena_create");
    mz = fh_memzone_reserve("test_template", sizeof MARK, 0, 0);
    CHECK(mz != NULL, "fh_memzone_reserve");
    memcpy(mz->addr, MARK, sizeof MARK);
    lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, sock_path, strlen(sock_path) + 1);
    CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 &&
          listen(lfd, SOMAXCONN) == 0 && stat(sock_path, &st) == 0,
          "listen on %s", sock_path);
    keep[0] = fh_arena_fd();
    memset(&c, 0, sizeof c);
    c.listen_fd = lfd;
    c.prefix = PREFIX;
    c.socket_path = sock_path;
    c.socket_ino = (uint64_t)st.st_ino;
    c.max_secondaries = 8;
    c.grace_ms = 1000;
    c.pool_size = 1;
    c.exit_notice_fd = -1;
    c.ready_fd = -1;
    c.keep_fds = keep;
    c.nkeep = 1;
    c.on_primary_death = FH_ON_PRIMARY_DEATH_SURVIVE;
    c.generation = 1;
    c.log_level = FH_LOG_ERROR;       /* not the orphan's warning */
    tpl = fh_template_fork(&c);
    CHECK(tpl > 0, "fh_template_fork");
    close(lfd);
    CHECK(fstat(fh_arena_fd(), &st) == 0, "fstat arena");
    memset(&r, 0, sizeof r);
    r.template_pid = (int32_t)tpl;
    r.arena_base = (uint64_t)(uintptr_t)fh_arena_base();
    r.arena_max = fh_arena_max();
    r.arena_ino = (uint64_t)st.st_ino;
    r.mark_offset = (uint64_t)((uintptr_t)mz->addr - (uintptr_t)fh_arena_base());
    xwrite(rep, &r, sizeof r);
    while (read(cmd, &op, 1) == 1) {
        struct primary_answer ans;
        struct answer *an;
        int status;

        memset(&ans, 0, sizeof ans);
        if (op == 'r') {
            an = malloc(sizeof *an);
            CHECK(an != NULL, "malloc");
            ask(FH_MSG_RELOAD, -1, an);
            ans.type = (int32_t)an->type;
            if (an->type == FH_MSG_RELOADED) {
                struct fh_reloaded rl;

                CHECK(an->len == sizeof rl, "RELOADED of %zu bytes", an->len);
                memcpy(&rl, an->buf, sizeof rl);
                ans.value = rl.pid;
            }
            free(an);
        } else if (op == 'w') {
            CHECK(waitpid(tpl, &status, 0) == tpl, "waitpid template");
            ans.value = status;
        }
        xwrite(rep, &ans, sizeof ans);
    }
    _exit(0);          /* the test ended (it kills this process before) */
}

/* ---- launches --------------------------------------------------------- */

struct launch {
    pid_t client;
    int in, out;        /* the client's stdin (ours to write), its stdout */
};

/* A client (this test's child) of entry: fh_client_run, which exits as
 * the secondary does. */
static void start(struct launch *l, const char *entry)
{
    int in[2], out[2];

    CHECK(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0, "pipes");
    l->client = fork_child();
    if (l->client == 0) {
        struct fh_client c;

        /* Only its stdio: no other launch's pipe end stays open here
         * (the client passes its inheritable fds, and a copy of a
         * secondary's stdin would keep it from its end). */
        if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 ||
            syscall(SYS_close_range, 3u, ~0u, 0u) < 0)
            _exit(99);
        fh_client_init(&c, "test_template");
        c.prefix = PREFIX;
        c.prefix_from = "test_template";
        c.runtime_dir = dir;
        c.entry = entry;
        fh_client_run(&c);
    }
    close(in[0]);
    close(out[1]);
    l->in = in[1];
    l->out = out[0];
}

/* A line of the secondary's stdout (up to WAIT_MS); "" at its end. */
static void read_line(struct launch *l, char *line, size_t size)
{
    size_t n = 0;

    while (n + 1 < size) {
        ssize_t k;

        wait_readable(l->out, "the secondary's output");
        k = read(l->out, line + n, 1);
        CHECK(k >= 0, "read the secondary's output");
        if (k == 0 || line[n++] == '\n')
            break;
    }
    line[n] = '\0';
}

/* Let the secondary's stdin end; the client's exit code (or 128+signal). */
static int finish(struct launch *l)
{
    char rest[64];
    int code;

    close(l->in);
    code = reap(l->client);
    read_line(l, rest, sizeof rest);
    EXPECT(rest[0] == '\0', "more output: '%s'", rest);
    close(l->out);
    return code;
}

/* A quick launch: its exit code 42 and the template that forked it.  Its
 * secondary's pid. */
static pid_t launch_quick(pid_t template)
{
    struct launch l;
    char line[128];
    int pid = 0, ppid = 0;

    start(&l, entry_quick);
    read_line(&l, line, sizeof line);
    EXPECT(sscanf(line, "quick %d %d", &pid, &ppid) == 2 && ppid == template,
           "said '%s', not run by the template %d", line, (int)template);
    EXPECT(finish(&l) == 42, "a quick launch did not exit 42");
    return pid;
}

/* A hold launch, running when this returns; its secondary's pid. */
static pid_t launch_hold(struct launch *l, pid_t template)
{
    char line[128];
    int pid = 0, ppid = 0;

    start(l, entry_hold);
    read_line(l, line, sizeof line);
    CHECK(sscanf(line, "ready %d %d", &pid, &ppid) == 2, "said '%s'", line);
    EXPECT(ppid == template, "run by %d, not the template %d", ppid,
           (int)template);
    return pid;
}

/* ---- the test ------------------------------------------------------------ */

/* The templates not reaped yet: killed should a CHECK end the test (an
 * orphaned template would serve on); the directory goes either way. */
static pid_t test_pid, live_templates[2];

static void at_end(void)
{
    char rm[128];

    if (getpid() != test_pid)
        return;
    for (int i = 0; i < 2; i++)
        if (live_templates[i] > 0)
            kill(live_templates[i], SIGKILL);
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "test_template: %s failed\n", rm);
}

static int pidfd_of(pid_t pid)
{
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);

    CHECK(fd >= 0, "pidfd_open %d", (int)pid);
    return fd;
}

/* Whether INFO says orphaned, with one secondary running: pid. */
static int orphaned_running(pid_t pid, struct answer *a)
{
    char want[64];
    const char *s;

    ask(FH_MSG_INFO, -1, a);
    CHECK(a->type == FH_MSG_INFO_REPLY, "INFO answered with type %#x", a->type);
    s = strstr(a->buf + sizeof(struct fh_msg_hdr), "\"secondaries\": [");
    CHECK(s != NULL, "INFO without secondaries: %s",
          a->buf + sizeof(struct fh_msg_hdr));
    snprintf(want, sizeof want, "\"secondaries\": [{\"pid\": %d,", (int)pid);
    if (strstr(a->buf + sizeof(struct fh_msg_hdr), "\"orphaned\": true") == NULL ||
        strncmp(s, want, strlen(want)) != 0)
        return 0;
    s = strstr(s, "client_pid");           /* one secondary only */
    return s != NULL && strstr(s + 1, "client_pid") == NULL;
}

int main(void)
{
    struct primary_report r;
    struct primary_answer ans;
    struct answer *a = malloc(sizeof *a);
    struct launch l1, l3;
    struct fh_adopted ad;
    struct fh_template_exit ex;
    struct stat st;
    int cmd[2], rep[2], chan[2], fds, pfd, status;
    pid_t prim, tpl1, tpl2, sec3, sec4, quick[2];
    int64_t deadline;
    const unsigned char *map;

    CHECK(a != NULL, "malloc");
    signal(SIGCHLD, SIG_DFL);          /* whatever the runner left: reaped here */
    snprintf(dir, sizeof dir, "/tmp/fh-test-template-XXXXXX");
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    build_entry();
    snprintf(sock_path, sizeof sock_path, "%s/%s", dir, PREFIX);
    CHECK(mkdir(sock_path, 0700) == 0, "mkdir %s", sock_path);
    snprintf(sock_path, sizeof sock_path, "%s/%s/template.sock", dir, PREFIX);
    /* The templates outlive their parents: they become ours to reap. */
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "PR_SET_CHILD_SUBREAPER");
    fds = count_fds();
    test_pid = getpid();
    CHECK(atexit(at_end) == 0, "atexit");

    /* The primary and its first template. */
    CHECK(pipe2(cmd, O_CLOEXEC) == 0 && pipe2(rep, O_CLOEXEC) == 0, "pipes");
    prim = fork_child();
    if (prim == 0) {
        close(cmd[1]);
        close(rep[0]);
        primary(cmd[0], rep[1]);
    }
    close(cmd[0]);
    close(rep[1]);
    xread(rep[0], &r, sizeof r);
    tpl1 = live_templates[0] = r.template_pid;

    /* A secondary of the first generation, running across the reload. */
    launch_hold(&l1, tpl1);

    /* RELOAD from the primary: the second generation. */
    xwrite(cmd[1], "r", 1);
    xread(rep[0], &ans, sizeof ans);
    CHECK(ans.type == FH_MSG_RELOADED, "RELOAD answered with type %#x",
          (unsigned)ans.type);
    tpl2 = live_templates[1] = (pid_t)ans.value;
    CHECK(tpl2 > 0 && tpl2 != tpl1 && tpl2 != prim, "the new template %d",
          (int)tpl2);
    quick[0] = launch_quick(tpl2);

    /* RELOAD from a process that is not the primary: refused, served on. */
    ask(FH_MSG_RELOAD, -1, a);
    EXPECT(a->type == FH_MSG_ERROR && a->exit_code == 125 &&
           strstr(a->buf, "only the primary of prefix 'p'") != NULL,
           "RELOAD from the test: type %#x exit %d '%s'", a->type, a->exit_code,
           a->buf);
    quick[1] = launch_quick(tpl2);

    /* The first generation retired: it ends once its secondary has, whose
     * client gets its exit status. */
    pfd = pidfd_of(tpl1);
    {
        struct pollfd p = { .fd = pfd, .events = POLLIN };

        EXPECT(poll(&p, 1, 0) == 0, "the retired template ended early");
    }
    EXPECT(finish(&l1) == 7, "the first generation's secondary's client");
    wait_readable(pfd, "the retired template to end");
    close(pfd);
    xwrite(cmd[1], "w", 1);
    xread(rep[0], &ans, sizeof ans);
    status = (int)ans.value;
    live_templates[0] = 0;
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "the retired template: wait status %#x", status);
    EXPECT(stat(sock_path, &st) == 0, "template.sock gone after the retirement");

    /* The primary's death: the template serves on, orphaned. */
    sec3 = launch_hold(&l3, tpl2);
    CHECK(kill(prim, SIGKILL) == 0, "kill the primary");
    EXPECT(reap(prim) == 128 + SIGKILL, "the primary");
    close(cmd[1]);
    close(rep[0]);
    sec4 = launch_quick(tpl2);
    deadline = now_ms() + WAIT_MS;
    while (!orphaned_running(sec3, a)) {
        CHECK(now_ms() < deadline, "INFO never said orphaned with one "
              "secondary running: %s", a->buf + sizeof(struct fh_msg_hdr));
        short_pause();
    }

    /* ADOPT from this process, with an exit-notice channel. */
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, chan) == 0,
          "socketpair");
    ask(FH_MSG_ADOPT, chan[1], a);
    close(chan[1]);
    CHECK(a->type == FH_MSG_ADOPTED, "ADOPT answered with type %#x: %s",
          a->type, a->buf);
    CHECK(a->len == sizeof ad && a->nfds == 1 && a->fd >= 0,
          "ADOPTED of %zu bytes with %u fds", a->len, a->nfds);
    memcpy(&ad, a->buf, sizeof ad);
    EXPECT(ad.template_pid == tpl2 && ad.old_primary_pid == prim &&
           ad.arena_base == r.arena_base && ad.arena_max == r.arena_max &&
           ad.running == 1 && ad.reserved == 0,
           "ADOPTED: template %d old primary %d base %#llx max %llu running %u",
           ad.template_pid, ad.old_primary_pid,
           (unsigned long long)ad.arena_base, (unsigned long long)ad.arena_max,
           ad.running);
    CHECK(fstat(a->fd, &st) == 0, "fstat the adopted fd");
    EXPECT((uint64_t)st.st_ino == r.arena_ino, "not the arena's memfd");
    CHECK((uint64_t)st.st_size >= r.mark_offset + sizeof MARK,
          "the memfd has %lld bytes", (long long)st.st_size);
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, a->fd, 0);
    CHECK(map != MAP_FAILED, "mmap the adopted memfd");
    {
        struct fh_arena_hdr h;

        memcpy(&h, map, sizeof h);
        EXPECT(h.base == r.arena_base && h.primary_pid == prim &&
               h.max_size == r.arena_max,
               "the arena's header: base %#llx primary %d max %llu",
               (unsigned long long)h.base, h.primary_pid,
               (unsigned long long)h.max_size);
        EXPECT(memcmp(map + r.mark_offset, MARK, sizeof MARK) == 0,
               "the primary's bytes are not in the adopted arena");
    }
    munmap((void *)map, (size_t)st.st_size);
    close(a->fd);

    /* Adopted: no longer orphaned, so a second ADOPT is refused. */
    ask(FH_MSG_ADOPT, -1, a);
    EXPECT(a->type == FH_MSG_ERROR && a->exit_code == 125 &&
           strstr(a->buf, "has a live primary") != NULL,
           "a second ADOPT: type %#x exit %d '%s'", a->type, a->exit_code, a->buf);
    if (a->fd >= 0)
        close(a->fd);

    /* On the adopter's channel: the exits kept while orphaned (the launch
     * made then, and the quick ones before, whose secondaries may have
     * lingered past their client's status to record the hot set), then
     * that of the secondary that ran across the death, which ends now. */
    EXPECT(finish(&l3) == 7, "the orphaned template's secondary's client");
    for (int seen4 = 0;;) {
        wait_readable(chan[0], "an exit notice");
        CHECK(recv(chan[0], &ex, sizeof ex, 0) == (ssize_t)sizeof ex,
              "recv notice");
        if (ex.pid == sec3) {
            EXPECT(WIFEXITED(ex.status) && WEXITSTATUS(ex.status) == 7,
                   "exit notice of %d: status %#x", ex.pid, ex.status);
            EXPECT(seen4, "no exit notice of %d, kept while orphaned",
                   (int)sec4);
            break;
        }
        EXPECT((ex.pid == sec4 || ex.pid == quick[0] || ex.pid == quick[1]) &&
               WIFEXITED(ex.status) && WEXITSTATUS(ex.status) == 42,
               "exit notice: pid %d status %#x", ex.pid, ex.status);
        seen4 |= ex.pid == sec4;
    }
    close(chan[0]);

    /* SIGTERM ends the template (ours by now), which removes its socket. */
    CHECK(kill(tpl2, SIGTERM) == 0, "SIGTERM the template");
    EXPECT(reap(tpl2) == 0, "the template's exit");
    live_templates[1] = 0;
    EXPECT(stat(sock_path, &st) < 0 && errno == ENOENT,
           "template.sock left after the template's end");

    EXPECT(count_fds() == fds, "fds: %d before, %d after", fds, count_fds());
    errno = 0;
    EXPECT(waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD,
           "a child was left behind");
    free(a);
    fprintf(stderr, "test_template: %s (%d failures)\n",
            fht_failures ? "FAILED" : "ok", fht_failures);
    return fht_failures ? 1 : 0;
}
