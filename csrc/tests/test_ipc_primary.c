/*
 * test_ipc_primary.c - a C primary's IPC endpoint (fh_ipc_primary_*,
 * csrc/lib/ipc_primary.c) under the sanitizers: this program is the
 * primary, raw SEQPACKET sockets (some in forked children) are its
 * members, and it plays the template itself by writing exit records on
 * the channel fh_ipc_primary_prepare() returned.
 *
 * Covered: the refusals of a first record that is not a valid HELLO, each
 * with its words; HELLO/WELCOME and the members list; a rejoining member's
 * forkhost.primary notice; a member's request
 * answered by an action, NO_ACTION for a name without one, an action that
 * fails (ACTION_FAILED), a message with an fd; a broadcast async request
 * from the primary answered by two members, replies counted, and one that
 * times out; a template exit record and an attached member's EOF turned
 * into forkhost.exit (to the members and the primary's own action); BYE;
 * a sync request from another thread (an fd in its answer), and one that
 * the stop completes unanswered; a silent connection closed after
 * HELLO_TIMEOUT; a broadcast request, sync and async, whose reply lists
 * every member it reached with what became of it there (answered, no such
 * action, timed out, killed while it was pending: forked members), with
 * nb_sent, nb_received and msgs agreeing; forkhost.shutdown answered and
 * waited for; the socket
 * removed; sync requests refused on the IPC thread; no fd left behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"
#include "fhtest.h"
#include "fhtest_ipc.h"

#define TPL 0x7ffffff0          /* the template's pid, as far as IPC knows */

static char g_path[256];
static int g_note[2];           /* actions and callbacks report here */

static int connect_raw(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    CHECK(fd >= 0, "socket");
    strcpy(sa.sun_path, g_path);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect %s", g_path);
    return fd;
}

static void send_rec(int fd, int type, uint64_t id, int status, const char *name,
                     const void *param, uint32_t plen, const int *fds, int nfds)
{
    CHECK(fht_send_rec(fd, (uint16_t)type, id, status, name, param, plen, fds, nfds)
          == (ssize_t)(FH_IPC_HDR_SIZE + plen), "send a record");
}

/* The next record on fd (10 s at most); 0 at EOF. */
static int recv_rec(int fd, struct fht_rec *r)
{
    struct pollfd p = { fd, POLLIN, 0 };
    ssize_t n;

    CHECK(poll(&p, 1, 10000) == 1, "a record within 10 s");
    n = fht_recv_rec(fd, r);
    CHECK(n >= 0, "recvmsg");
    if (n == 0)
        return 0;
    CHECK(n >= (ssize_t)FH_IPC_HDR_SIZE, "a whole header (%zd)", n);
    CHECK(r->h.magic == FH_IPC_MAGIC && r->h.len == (uint32_t)n, "a valid record");
    return 1;
}

static int join(pid_t ppid)
{
    struct fh_ipc_hello hello = { getpid(), ppid, 0, 0 };
    struct fh_ipc_welcome w;
    struct fht_rec r;
    int fd = connect_raw();

    send_rec(fd, FH_IPC_HELLO, 0, 0, NULL, &hello, sizeof hello, NULL, 0);
    CHECK(recv_rec(fd, &r) == 1 && r.h.type == FH_IPC_WELCOME, "WELCOME (%u)", r.h.type);
    CHECK(r.h.param_len == sizeof w, "WELCOME's param");
    memcpy(&w, r.param, sizeof w);
    CHECK(w.primary_pid == getpid() || w.primary_pid == getppid(), "primary pid %d",
          w.primary_pid);
    CHECK(w.template_pid == TPL && w.name_max == FH_IPC_NAME_MAX
          && w.param_max == FH_IPC_PARAM_MAX, "WELCOME's values");
    return fd;
}

/* A first record, and the REFUSE it must get. */
static void expect_refused(const void *bytes, size_t n, const char *why)
{
    struct fht_rec r;
    int fd = connect_raw();

    CHECK(send(fd, bytes, n, MSG_NOSIGNAL) == (ssize_t)n, "send %zu bytes", n);
    CHECK(recv_rec(fd, &r) == 1 && r.h.type == FH_IPC_REFUSE, "REFUSE");
    r.param[r.h.param_len] = '\0';
    CHECK(strcmp((char *)r.param, why) == 0, "refused with '%s', not '%s'",
          (char *)r.param, why);
    CHECK(recv_rec(fd, &r) == 0, "closed after REFUSE");
    close(fd);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    line[n++] = '\n';
    CHECK(write(g_note[1], line, (size_t)n) == n, "note");
}

/* The next note (a line), 10 s at most. */
static void expect_note(const char *want)
{
    char line[256];
    size_t n = 0;

    for (;;) {
        struct pollfd p = { g_note[0], POLLIN, 0 };

        CHECK(poll(&p, 1, 10000) == 1, "a note within 10 s (want %s)", want);
        CHECK(read(g_note[0], line + n, 1) == 1, "read a note");
        if (line[n] == '\n')
            break;
        CHECK(++n < sizeof line - 1, "a short note");
    }
    line[n] = '\0';
    CHECK(strcmp(line, want) == 0, "note '%s', not '%s'", line, want);
}

static int on_echo(const struct fh_ipc_msg *m, const void *peer)
{
    struct fh_ipc_msg r;
    struct fh_ipc_reply rep;

    memset(&r, 0, sizeof r);
    strcpy(r.name, "echo");
    r.len_param = m->len_param;
    memcpy(r.param, m->param, (size_t)m->len_param);
    CHECK(fh_ipc_on_ipc_thread(), "actions run on the IPC thread");
    CHECK(fh_ipc_peer_id(peer) == 7 || fh_ipc_peer_id(peer) == 10,
          "a request's peer has its id (the member sends 7 and 10)");
    CHECK(fh_ipc_request(m, &rep, NULL) == -1 && errno == EDEADLK,
          "a sync request on the IPC thread is refused");
    CHECK(fh_ipc_reply(&r, peer) == 0, "reply");
    CHECK(fh_ipc_reply(&r, peer) == -1 && errno == EALREADY, "reply twice");
    return 0;
}

static int on_fd(const struct fh_ipc_msg *m, const void *peer)
{
    CHECK(fh_ipc_peer_id(peer) == 0, "a message's peer has no request id");
    CHECK(m->num_fds == 1, "one fd");
    CHECK(write(m->fds[0], m->param, (size_t)m->len_param) == m->len_param, "write");
    close(m->fds[0]);
    return 0;
}

static int on_exit_notice(const struct fh_ipc_msg *m, const void *peer)
{
    struct fh_ipc_exit_notice e;

    (void)peer;
    CHECK(m->len_param == sizeof e && m->pid == getpid(), "the primary's own notice");
    memcpy(&e, m->param, sizeof e);
    note("exit %d %d %d %u", e.pid, e.code, e.signal, e.flags);
    return 0;
}

static void on_async(const struct fh_ipc_msg *req, const struct fh_ipc_reply *rep,
                     void *arg)
{
    char answers[64] = "";

    CHECK(fh_ipc_on_ipc_thread(), "callbacks run on the IPC thread");
    for (int i = 0; i < rep->nb_received; i++) {
        /* in any order: summed up sorted below by the test */
        strncat(answers, (const char *)rep->msgs[i].param,
                (size_t)rep->msgs[i].len_param);
    }
    note("%s %s %d %d %s", (const char *)arg, req->name, rep->nb_sent,
         rep->nb_received, answers);
}

/* A member in a child: joins as an attached process (ppid not the
 * template), answers one request with "b", and exits when told. */
static pid_t member_child(int *ctl)
{
    int sv[2];
    pid_t pid;

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    pid = fork_child();
    if (pid == 0) {
        struct fht_rec r;
        char c;
        int fd;

        close(sv[0]);
        fd = join(getppid());
        CHECK(write(sv[1], "j", 1) == 1, "joined");
        CHECK(recv_rec(fd, &r) == 1 && r.h.type == FH_IPC_REQUEST, "a request");
        send_rec(fd, FH_IPC_REPLY, r.h.id, FH_IPC_OK, r.h.name, "b", 1, NULL, 0);
        CHECK(read(sv[1], &c, 1) == 1, "told to exit");
        _exit(0);               /* no BYE: an exit */
    }
    close(sv[1]);
    *ctl = sv[0];
    {
        char c;

        CHECK(read(sv[0], &c, 1) == 1, "the child joined");
    }
    return pid;
}

static void wait_members(int n)
{
    for (int i = 0; i < 10000; i++) {
        if (fh_ipc_members(NULL, 0) == n)
            return;
        usleep(1000);
    }
    CHECK(0, "%d members within 10 s (%d)", n, fh_ipc_members(NULL, 0));
}

struct sync_req {
    pid_t               to;
    struct fh_ipc_reply rep;
    int                 rc;
};

/* A sync request from a thread that is not the IPC thread. */
static void *requester(void *arg)
{
    struct sync_req *r = arg;
    struct fh_ipc_msg m;
    struct timespec ts = { 30, 0 };

    memset(&m, 0, sizeof m);
    strcpy(m.name, "sync");
    m.len_param = 1;
    m.param[0] = 's';
    r->rc = fh_ipc_request_to(&m, r->to, &r->rep, &ts);
    return NULL;
}

/* -- the peer entries of a reply --------------------------------------- */

/* A member in a forked child, joined as a secondary (so that its end is
 * no forkhost.exit), for one request: 'n' answers NO_ACTION, 's' stays
 * silent, 'k' says "g" on *ctl and waits to be killed.  Exits when told. */
static pid_t peer_child(char mode, int *ctl)
{
    int sv[2];
    pid_t pid;
    char c;

    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    pid = fork_child();
    if (pid == 0) {
        struct fht_rec r;
        int fd;

        close(sv[0]);
        fd = join(TPL);
        CHECK(write(sv[1], "j", 1) == 1, "joined");
        CHECK(recv_rec(fd, &r) == 1 && r.h.type == FH_IPC_REQUEST, "a request");
        if (mode == 'n')
            send_rec(fd, FH_IPC_REPLY, r.h.id, FH_IPC_NO_ACTION, r.h.name, NULL, 0,
                     NULL, 0);
        else if (mode == 'k')
            CHECK(write(sv[1], "g", 1) == 1, "got it");
        CHECK(read(sv[1], &c, 1) == 1, "told to exit");
        _exit(0);
    }
    close(sv[1]);
    *ctl = sv[0];
    CHECK(read(sv[0], &c, 1) == 1, "the child joined");
    return pid;
}

static void close_fds_of(const struct fh_ipc_msg *m)
{
    for (int i = 0; i < m->num_fds; i++)
        close(m->fds[i]);
}

/* What a reply said, copied out of an async callback (its block is freed
 * when the callback returns). */
struct who {
    int   nb_sent, nb_received, n;
    pid_t pid[4];
    int   status[4], msg_status[4];     /* msg_status -1: no msg */
    char  name[4][FH_IPC_PEER_NAME_MAX];
    bool  consistent;                   /* msgs and peers agree */
};

static void who_of(const struct fh_ipc_reply *rep, struct who *w)
{
    int answers = 0;

    memset(w, 0, sizeof *w);
    w->nb_sent = rep->nb_sent;
    w->nb_received = rep->nb_received;
    w->consistent = rep->nb_sent == 0 ? !rep->peers && !rep->msgs : rep->peers != NULL;
    for (int i = 0; i < rep->nb_sent && i < 4; i++) {
        const struct fh_ipc_peer_reply *e = &rep->peers[i];
        bool has_msg = e->status == FH_IPC_PEER_ANSWERED
                       || e->status == FH_IPC_PEER_NO_ACTION;

        w->pid[i] = e->pid;
        w->status[i] = e->status;
        memcpy(w->name[i], e->name, sizeof w->name[i]);
        w->msg_status[i] = e->msg ? e->msg->status : -1;
        answers += has_msg;
        if (has_msg != (e->msg != NULL)
            || (e->msg && (e->msg < rep->msgs || e->msg >= rep->msgs + rep->nb_received
                           || e->msg->pid != e->pid)))
            w->consistent = false;
        if (e->msg)
            close_fds_of(e->msg);
    }
    w->n = rep->nb_sent < 4 ? rep->nb_sent : 4;
    if (answers != rep->nb_received)
        w->consistent = false;
}

static struct who g_who;

static void on_who(const struct fh_ipc_msg *req, const struct fh_ipc_reply *rep,
                   void *arg)
{
    (void)req;
    (void)arg;
    who_of(rep, &g_who);
    note("who");
}

struct who_req {
    struct fh_ipc_reply rep;
    int                 rc;
};

static const struct timespec who_timeout = { 2, 0 };

static void *who_requester(void *arg)
{
    struct who_req *r = arg;
    struct fh_ipc_msg m;

    memset(&m, 0, sizeof m);
    strcpy(m.name, "who");
    r->rc = fh_ipc_request(&m, &r->rep, &who_timeout);
    return NULL;
}

/* The entry of pid in w, or -1. */
static int who_index(const struct who *w, pid_t pid)
{
    for (int i = 0; i < w->n; i++)
        if (w->pid[i] == pid)
            return i;
    return -1;
}

/* A broadcast request to a (this process, answers OK), a member without
 * the action, a silent one and one killed while the request is pending:
 * each is listed with what became of the request there. */
static void test_peer_entries(int a, bool async)
{
    char comm[FH_IPC_PEER_NAME_MAX] = "";
    int n_ctl, s_ctl, k_ctl, fd;
    pid_t n, s, k;
    struct fht_rec r;
    struct who w;
    struct who_req wr;
    pthread_t t;
    char c;

    fd = open("/proc/self/comm", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0 && read(fd, comm, sizeof comm - 1) > 0, "comm");
    close(fd);
    comm[strcspn(comm, "\n")] = '\0';
    n = peer_child('n', &n_ctl);
    s = peer_child('s', &s_ctl);
    k = peer_child('k', &k_ctl);
    wait_members(4);
    if (async) {
        struct fh_ipc_msg m;

        memset(&m, 0, sizeof m);
        strcpy(m.name, "who");
        CHECK(fh_ipc_request_async(&m, &who_timeout, on_who, NULL) == 0, "async who");
    } else {
        CHECK(pthread_create(&t, NULL, who_requester, &wr) == 0, "requester");
    }
    CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_REQUEST
          && strcmp(r.h.name, "who") == 0, "a's request");
    send_rec(a, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "who", "A", 1, NULL, 0);
    CHECK(read(k_ctl, &c, 1) == 1 && c == 'g', "k has the request");
    CHECK(kill(k, SIGKILL) == 0 && reap(k) == 128 + SIGKILL, "k killed");
    close(k_ctl);
    if (async) {
        expect_note("who");
        w = g_who;
    } else {
        CHECK(pthread_join(t, NULL) == 0 && wr.rc == 0, "the request returned");
        who_of(&wr.rep, &w);
        free(wr.rep.msgs);
    }
    CHECK(w.nb_sent == 4 && w.nb_received == 2 && w.n == 4 && w.consistent,
          "4 reached, 2 answered (%d %d)", w.nb_sent, w.nb_received);
    {
        pid_t pids[4] = { getpid(), n, s, k };
        int want[4] = { FH_IPC_PEER_ANSWERED, FH_IPC_PEER_NO_ACTION,
                        FH_IPC_PEER_TIMED_OUT, FH_IPC_PEER_DIED };
        int msg_status[4] = { FH_IPC_OK, FH_IPC_NO_ACTION, -1, -1 };

        for (int i = 0; i < 4; i++) {
            int j = who_index(&w, pids[i]);

            CHECK(j >= 0 && w.status[j] == want[i] && w.msg_status[j] == msg_status[i]
                  && strcmp(w.name[j], comm) == 0, "pid %d: status %d (%d), name '%s'",
                  (int)pids[i], j >= 0 ? w.status[j] : -9, want[i],
                  j >= 0 ? w.name[j] : "");
        }
    }
    CHECK(write(n_ctl, "x", 1) == 1 && write(s_ctl, "x", 1) == 1, "n, s exit");
    CHECK(reap(n) == 0 && reap(s) == 0, "n, s exited");
    close(n_ctl);
    close(s_ctl);
    wait_members(1);
}

static void *stopper(void *arg)
{
    (void)arg;
    /* a answers the notice as a leaving secondary but never exits (it is
     * this process): the stop waits its whole grace for a's exit. */
    CHECK(fh_ipc_primary_stop(1500) == 0, "stop");
    return NULL;
}

int main(void)
{
    char dir[] = "/tmp/fh-ipc-primary-XXXXXX";
    int fds0 = count_fds(), efd, tpl_end, a, b_ctl, p[2];
    struct fh_ipc_member ms[4];
    struct fh_ipc_stats st;
    struct fh_ipc_msg m;
    struct fht_rec r;
    pid_t b;

    CHECK(mkdtemp(dir), "mkdtemp");
    snprintf(g_path, sizeof g_path, "%s/pfx", dir);
    CHECK(mkdir(g_path, 0700) == 0, "mkdir");
    strcat(g_path, "/ipc.sock");
    CHECK(pipe2(g_note, O_CLOEXEC) == 0, "pipe");
    CHECK(fh_ipc_register("echo", on_echo) == 0, "register before start");
    CHECK(fh_ipc_register("fail", fht_action_fails) == 0 && fh_ipc_register("fd", on_fd) == 0,
          "register");
    CHECK(fh_ipc_register(FH_IPC_EXIT_NOTICE, on_exit_notice) == 0, "register exit");
    memset(&m, 0, sizeof m);
    strcpy(m.name, "x");
    CHECK(fh_ipc_send(&m) == -1 && errno == ENOTCONN, "nothing to send to yet");

    efd = fh_ipc_primary_prepare(g_path);
    CHECK(efd >= 0, "prepare");
    CHECK(fh_ipc_primary_prepare(g_path) == -1 && errno == EALREADY, "prepare twice");
    CHECK(strcmp(fh_ipc_socket_path(), g_path) == 0 && fh_ipc_primary_pid() == getpid(),
          "the path every secondary inherits");
    tpl_end = dup(efd);         /* we play the template: start closes efd */
    CHECK(fh_ipc_primary_start(TPL) == 0, "start");
    CHECK(fh_ipc_primary_start(TPL) == 0, "start is idempotent");
    {
        struct stat sb;

        CHECK(stat(g_path, &sb) == 0 && S_ISSOCK(sb.st_mode)
              && (sb.st_mode & 0777) == 0600, "ipc.sock, 0600");
    }

    /* First records that are not a valid HELLO: refused, in words. */
    {
        struct fh_ipc_hdr h;
        unsigned char buf[FH_IPC_HDR_SIZE + 16];

        memset(&h, 0, sizeof h);
        h.magic = FH_IPC_MAGIC;
        h.version = FH_IPC_VERSION;
        h.type = FH_IPC_MSG;
        h.len = FH_IPC_HDR_SIZE;
        strcpy(h.name, "hi");
        memcpy(buf, &h, sizeof h);
        expect_refused(buf, FH_IPC_HDR_SIZE, "the first IPC record must be HELLO, not MSG");
        expect_refused(buf, 0, "the first IPC record must be HELLO; this one is "
                               "malformed: an empty record");
        expect_refused(buf, 7, "the first IPC record must be HELLO; this one is "
                               "malformed: a truncated record (7 bytes)");
        h.magic = 0xdeadbeef;
        memcpy(buf, &h, sizeof h);
        expect_refused(buf, FH_IPC_HDR_SIZE, "the first IPC record must be HELLO; this "
                       "one is malformed: bad magic 0xdeadbeef, not an IPC record");
        h.magic = FH_IPC_MAGIC;
        h.type = FH_IPC_HELLO;
        h.name[0] = h.name[1] = '\0';
        h.len = FH_IPC_HDR_SIZE + 8;
        h.param_len = 8;
        memcpy(buf, &h, sizeof h);
        memset(buf + FH_IPC_HDR_SIZE, 0, 16);
        expect_refused(buf, FH_IPC_HDR_SIZE + 8,
                       "malformed HELLO: its param is 8 bytes, not 16");
        h.version = 2;
        h.len = FH_IPC_HDR_SIZE + 16;
        h.param_len = 16;
        memcpy(buf, &h, sizeof h);
        expect_refused(buf, FH_IPC_HDR_SIZE + 16, "IPC version mismatch: the "
                       "secondary speaks 2, the primary speaks 1");
        h.version = FH_IPC_VERSION;
        h.len = FH_IPC_HDR_SIZE + 99;
        memcpy(buf, &h, sizeof h);
        expect_refused(buf, FH_IPC_HDR_SIZE + 16, "the first IPC record must be HELLO; "
                       "this one is malformed: its header says 195 bytes with a "
                       "param of 16, 112 arrived");
    }
    fh_ipc_stats(&st);
    CHECK(st.malformed == 7, "refusals counted as malformed (%lu)",
          (unsigned long)st.malformed);

    /* A member that rejoins (its last primary went away without a word):
     * WELCOME, then forkhost.primary naming this primary and its template. */
    {
        struct fh_ipc_hello hello = { getpid(), TPL, FH_IPC_HELLO_REJOIN, 0 };
        struct fh_ipc_primary_notice pn;
        int fd = connect_raw();

        send_rec(fd, FH_IPC_HELLO, 0, 0, NULL, &hello, sizeof hello, NULL, 0);
        CHECK(recv_rec(fd, &r) == 1 && r.h.type == FH_IPC_WELCOME, "WELCOME (%u)",
              r.h.type);
        CHECK(recv_rec(fd, &r) == 1 && r.h.type == FH_IPC_MSG
              && strcmp(r.h.name, FH_IPC_PRIMARY_NOTICE) == 0
              && r.h.param_len == sizeof pn, "the primary notice");
        memcpy(&pn, r.param, sizeof pn);
        CHECK(pn.primary_pid == getpid() && pn.template_pid == TPL, "its values %d %d",
              pn.primary_pid, pn.template_pid);
        close(fd);
        wait_members(0);
    }

    /* Members. */
    a = join(TPL);
    b = member_child(&b_ctl);
    CHECK(fh_ipc_members(ms, 4) == 2, "two members");
    CHECK(ms[0].pid == getpid() && ms[0].ppid == TPL && ms[0].secondary, "a secondary");
    CHECK(ms[1].pid == b && ms[1].ppid == getpid() && !ms[1].secondary, "an attached one");

    /* A member's requests and messages. */
    send_rec(a, FH_IPC_REQUEST, 7, 0, "echo", "hi", 2, NULL, 0);
    CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_REPLY && r.h.id == 7
          && r.h.status == FH_IPC_OK && r.h.param_len == 2
          && memcmp(r.param, "hi", 2) == 0 && strcmp(r.h.name, "echo") == 0, "echoed");
    send_rec(a, FH_IPC_REQUEST, 8, 0, "nobody", NULL, 0, NULL, 0);
    CHECK(recv_rec(a, &r) == 1 && r.h.id == 8 && r.h.status == FH_IPC_NO_ACTION,
          "NO_ACTION");
    send_rec(a, FH_IPC_REQUEST, 9, 0, "fail", NULL, 0, NULL, 0);
    CHECK(recv_rec(a, &r) == 1 && r.h.id == 9 && r.h.status == FH_IPC_ACTION_FAILED,
          "ACTION_FAILED");
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    send_rec(a, FH_IPC_MSG, 0, 0, "fd", "via fd", 6, &p[1], 1);
    close(p[1]);
    {
        char got[8] = "";

        CHECK(read(p[0], got, sizeof got) == 6 && memcmp(got, "via fd", 6) == 0,
              "the action wrote to the fd it got");
        CHECK(read(p[0], got, sizeof got) == 0, "and closed it");
        close(p[0]);
    }
    send_rec(a, FH_IPC_HELLO, 0, 0, NULL, "0123456789abcdef", 16, NULL, 0);
    send_rec(a, FH_IPC_MSG, 0, 0, "unheard", NULL, 0, NULL, 0);
    send_rec(a, FH_IPC_REQUEST, 10, 0, "echo", "again", 5, NULL, 0);
    CHECK(recv_rec(a, &r) == 1 && r.h.id == 10, "still a member after a bad record");

    /* A broadcast async request: both answer, replies counted. */
    memset(&m, 0, sizeof m);
    strcpy(m.name, "q");
    CHECK(fh_ipc_request_async(&m, NULL, on_async, "all") == 0, "async to all");
    CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_REQUEST && strcmp(r.h.name, "q") == 0,
          "the request reached a");
    send_rec(a, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "q", "a", 1, NULL, 0);
    /* b answers "b" itself; the order of the two answers is the kernel's */
    {
        char line[64];
        size_t n = 0;

        for (;;) {
            struct pollfd pf = { g_note[0], POLLIN, 0 };

            CHECK(poll(&pf, 1, 10000) == 1, "the callback");
            CHECK(read(g_note[0], line + n, 1) == 1, "read");
            if (line[n] == '\n')
                break;
            n++;
        }
        line[n] = '\0';
        CHECK(strcmp(line, "all q 2 2 ab") == 0 || strcmp(line, "all q 2 2 ba") == 0,
              "both answered: '%s'", line);
    }
    /* One that times out: a does not answer. */
    {
        struct timespec ts = { 0, 100 * 1000000L };

        CHECK(fh_ipc_request_async_to(&m, getpid(), &ts, on_async, "late") == 0,
              "async to one");
        CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_REQUEST, "the request");
        expect_note("late q 1 0 ");
        send_rec(a, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "q", "late", 4, NULL, 0);
    }
    CHECK(fh_ipc_send_to(&m, 1) == 0, "nobody with pid 1");

    /* A sync request from another thread (to a: b answers once only),
     * answered with an fd. */
    {
        struct sync_req sr = { getpid(), { 0, 0, NULL, NULL }, -1 };
        pthread_t t;
        int q[2];
        char got[4] = "";

        CHECK(pthread_create(&t, NULL, requester, &sr) == 0, "requester");
        CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_REQUEST
              && strcmp(r.h.name, "sync") == 0 && r.h.param_len == 1
              && r.param[0] == 's', "a's request");
        CHECK(pipe2(q, O_CLOEXEC) == 0, "pipe");
        send_rec(a, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "sync", "A", 1, &q[1], 1);
        close(q[1]);
        CHECK(pthread_join(t, NULL) == 0 && sr.rc == 0, "the request returned");
        CHECK(sr.rep.nb_sent == 1 && sr.rep.nb_received == 1, "1 sent, 1 answered");
        CHECK(sr.rep.msgs[0].pid == getpid() && sr.rep.msgs[0].status == FH_IPC_OK
              && sr.rep.msgs[0].len_param == 1 && sr.rep.msgs[0].param[0] == 'A'
              && sr.rep.msgs[0].num_fds == 1, "a's answer with its fd");
        CHECK(write(sr.rep.msgs[0].fds[0], "ok", 2) == 2, "write to the fd");
        close(sr.rep.msgs[0].fds[0]);
        CHECK(read(q[0], got, sizeof got) == 2 && memcmp(got, "ok", 2) == 0, "it is a's");
        close(q[0]);
        free(sr.rep.msgs);
    }

    /* Exits: the template's record, then an attached member's EOF. */
    {
        struct fh_template_exit e = { 4242, 3 << 8 };
        struct fh_ipc_exit_notice n;

        CHECK(send(tpl_end, &e, sizeof e, 0) == sizeof e, "an exit record");
        expect_note("exit 4242 3 0 1");
        CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_MSG
              && strcmp(r.h.name, FH_IPC_EXIT_NOTICE) == 0, "a member's notice");
        memcpy(&n, r.param, sizeof n);
        CHECK(n.pid == 4242 && n.code == 3 && n.signal == 0
              && n.flags == FH_IPC_EXIT_STATUS_KNOWN, "its status");
        e.status = SIGKILL;
        CHECK(send(tpl_end, &e, sizeof e, 0) == sizeof e, "a killed one");
        expect_note("exit 4242 0 9 1");
        CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_MSG, "its notice");
    }
    CHECK(write(b_ctl, "x", 1) == 1, "b exits");
    CHECK(reap(b) == 0, "b exited");
    close(b_ctl);
    {
        char want[64];

        snprintf(want, sizeof want, "exit %d 0 0 0", (int)b);
        expect_note(want);
    }
    CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_MSG
          && strcmp(r.h.name, FH_IPC_EXIT_NOTICE) == 0, "b's exit, no status");
    wait_members(1);

    /* BYE: gone, without a notice. */
    {
        int c = join(getpid());

        wait_members(2);
        send_rec(c, FH_IPC_BYE, 0, 0, NULL, NULL, 0, NULL, 0);
        wait_members(1);
        close(c);
    }

    test_peer_entries(a, false);
    test_peer_entries(a, true);

    /* A connection that says nothing is closed after HELLO_TIMEOUT. */
    {
        int q = connect_raw();
        struct pollfd pf = { q, POLLIN, 0 };
        char c;

        CHECK(poll(&pf, 1, FH_IPC_HELLO_TIMEOUT_MS + 10000) == 1, "closed in time");
        CHECK(recv(q, &c, 1, 0) == 0, "closed without a word");
        close(q);
    }

    /* Shutdown: a answers and leaves; stop waits for that, then ends;
     * c answers NO_ACTION and is not waited for.  A sync request still waiting (for c, which never answers it) is
     * completed by the stop: nobody answered. */
    {
        struct sync_req sr = { getpid(), { 0, 0, NULL, NULL }, -1 };
        pthread_t t, rq;
        int c = join(TPL);

        wait_members(2);
        CHECK(pthread_create(&rq, NULL, requester, &sr) == 0, "requester");
        CHECK(recv_rec(a, &r) == 1 && strcmp(r.h.name, "sync") == 0, "a's request");
        CHECK(recv_rec(c, &r) == 1 && strcmp(r.h.name, "sync") == 0, "c's request");
        CHECK(pthread_create(&t, NULL, stopper, NULL) == 0, "stopper");
        CHECK(recv_rec(a, &r) == 1 && r.h.type == FH_IPC_REQUEST
              && strcmp(r.h.name, FH_IPC_SHUTDOWN_NOTICE) == 0, "forkhost.shutdown");
        send_rec(a, FH_IPC_REPLY, r.h.id, FH_IPC_OK, r.h.name, NULL, 0, NULL, 0);
        close(a);
        CHECK(recv_rec(c, &r) == 1 && r.h.type == FH_IPC_REQUEST
              && strcmp(r.h.name, FH_IPC_SHUTDOWN_NOTICE) == 0, "c's notice");
        send_rec(c, FH_IPC_REPLY, r.h.id, FH_IPC_NO_ACTION, r.h.name, NULL, 0, NULL, 0);
        CHECK(pthread_join(t, NULL) == 0, "join");
        CHECK(recv_rec(c, &r) == 0, "the rest see EOF");
        close(c);
        CHECK(pthread_join(rq, NULL) == 0 && sr.rc == 0, "the request returned");
        CHECK(sr.rep.nb_sent == 2 && sr.rep.nb_received == 0,
              "2 sent, none answered (%d %d)", sr.rep.nb_sent, sr.rep.nb_received);
        CHECK(sr.rep.peers[0].status == FH_IPC_PEER_DIED
              && sr.rep.peers[1].status == FH_IPC_PEER_DIED && !sr.rep.peers[0].msg,
              "completed by the stop: listed as gone");
        free(sr.rep.msgs);
    }
    CHECK(access(g_path, F_OK) == -1 && errno == ENOENT, "ipc.sock removed");
    CHECK(fh_ipc_members(NULL, 0) == -1 && errno == ENOTCONN, "stopped");
    close(tpl_end);
    close(g_note[0]);
    close(g_note[1]);
    fh_ipc_unregister("echo");
    fh_ipc_unregister("fail");
    fh_ipc_unregister("fd");
    fh_ipc_unregister(FH_IPC_EXIT_NOTICE);
    *strrchr(g_path, '/') = '\0';
    rmdir(g_path);
    rmdir(dir);
    CHECK(count_fds() == fds0, "no fd left behind (%d, were %d)", count_fds(), fds0);
    printf("test_ipc_primary: ok\n");
    return 0;
}
