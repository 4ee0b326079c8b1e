/*
 * test_ipc.c - the native secondary's IPC (forkhost/ipc.h) against a fake
 * primary: a forked child that speaks the wire format with raw sockets,
 * one scripted step at a time, so the library is checked against the
 * format itself and not only against forkhost/ipc (tests/test_ipc.py
 * covers that pairing).
 *
 * Covered: argument checks at the sender, registration rules, HELLO and
 * WELCOME, a message each way with an fd that is usable on the other side,
 * sync and async requests answered, unanswered (timeout) and cut short by
 * the primary's death, with the one peer entry of each reply (answered,
 * no such action, timed out, died), replies from actions (OK, NO_ACTION,
 * ACTION_FAILED),
 * a sync request from an action refused with EDEADLK, malformed records
 * (a zero-length one among them) counted and survived, what a forked
 * child of a member inherits, and rejoining: after the fake primary's death the member waits (ENOTCONN
 * meanwhile, an action registered then is kept), joins a second fake at
 * the same path with FH_IPC_HELLO_REJOIN once it listens, gets its
 * forkhost.primary notice and serves it with the actions it had.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"
#include "fhtest_ipc.h"

#define CHECK(cond, ...) do {                                              \
    if (!(cond)) {                                                         \
        fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__,   \
                #cond);                                                    \
        fprintf(stderr, __VA_ARGS__);                                      \
        fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno));       \
        exit(1);                                                           \
    }                                                                      \
} while (0)

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

static void set_name(struct fh_ipc_msg *m, const char *name)
{
    snprintf(m->name, sizeof m->name, "%s", name);
}

static void set_param(struct fh_ipc_msg *m, const char *text)
{
    m->len_param = (int)strlen(text);
    memcpy(m->param, text, m->len_param);
}

/* -- the fake primary (runs in a forked child) ---------------------------- */

static void fp_send(int fd, uint16_t type, uint64_t id, int32_t status,
                    const char *name, const void *param, uint32_t plen,
                    const int *fds, int nfds)
{
    if (fht_send_rec(fd, type, id, status, name, param, plen, fds, nfds) < 0)
        _exit(20);
}

/* The next record from the secondary, within 10 s; exits the fake on
 * anything else, so a broken library fails the test instead of hanging. */
static void fp_recv(int fd, struct fht_rec *r, uint16_t want_type, const char *want_name)
{
    struct pollfd p = { fd, POLLIN, 0 };
    ssize_t n;

    if (poll(&p, 1, 10000) != 1)
        _exit(21);
    n = fht_recv_rec(fd, r);
    if (n < (ssize_t)FH_IPC_HDR_SIZE)
        _exit(22);
    if (r->h.magic != FH_IPC_MAGIC || r->h.version != FH_IPC_VERSION
        || r->h.len != (uint32_t)n || r->h.type != want_type
        || (want_name && strcmp(r->h.name, want_name) != 0))
        _exit(23);
    if ((uint32_t)r->nfds != r->h.nfds)
        _exit(24);
}

/* Ask the secondary's "echo2" action with the one-byte param q under
 * request id: its reply must be OK, "a" + q; exits the fake with code
 * otherwise. */
static void fp_echo2(int fd, uint64_t id, char q, int code)
{
    struct fht_rec r;

    fp_send(fd, FH_IPC_REQUEST, id, 0, "echo2", &q, 1, NULL, 0);
    fp_recv(fd, &r, FH_IPC_REPLY, "echo2");
    if (r.h.id != id || r.h.status != FH_IPC_OK || r.h.param_len != 2
        || r.param[0] != 'a' || r.param[1] != (unsigned char)q)
        _exit(code);
}

static void fake_primary(int listener, pid_t member)
{
    struct fht_rec r;
    struct fh_ipc_hello hello;
    struct fh_ipc_welcome w = { (int32_t)getpid(), 1, FH_IPC_NAME_MAX,
                                FH_IPC_PARAM_MAX };
    int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    unsigned char junk[FH_IPC_HDR_SIZE];

    if (c < 0)
        _exit(30);
    fp_recv(c, &r, FH_IPC_HELLO, NULL);
    memcpy(&hello, r.param, sizeof hello);
    if (r.h.param_len != sizeof hello || hello.pid != member || r.h.name[0])
        _exit(31);
    fp_send(c, FH_IPC_WELCOME, 0, 0, NULL, &w, sizeof w, NULL, 0);

    /* 1. a message with an fd: write into it */
    fp_recv(c, &r, FH_IPC_MSG, "note");
    if (r.h.param_len != 5 || memcmp(r.param, "hello", 5) || r.nfds != 1)
        _exit(32);
    if (write(r.fds[0], "fake primary", 12) != 12)
        _exit(33);
    close(r.fds[0]);

    /* 2. a sync request, answered with the param and an fd back */
    fp_recv(c, &r, FH_IPC_REQUEST, "echo");
    {
        unsigned char out[64] = "re:";
        int pfd[2];

        memcpy(out + 3, r.param, r.h.param_len);
        if (pipe(pfd) < 0 || write(pfd[1], "via reply", 9) != 9)
            _exit(34);
        close(pfd[1]);
        fp_send(c, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "echo", out, 3 + r.h.param_len,
                &pfd[0], 1);
        close(pfd[0]);
    }

    /* 3. a request left unanswered: the secondary times out and says so;
     * then a late reply to it: counted and dropped */
    fp_recv(c, &r, FH_IPC_REQUEST, "silent");
    uint64_t silent_id = r.h.id;
    fp_recv(c, &r, FH_IPC_MSG, "timed_out");
    fp_send(c, FH_IPC_REPLY, silent_id, FH_IPC_OK, "silent", "late", 4, NULL, 0);

    /* 4. primary -> secondary: a message, then requests of every kind */
    fp_send(c, FH_IPC_MSG, 0, 0, "note", "from primary", 12, NULL, 0);
    fp_echo2(c, 77, 'q', 35);
    fp_send(c, FH_IPC_REQUEST, 78, 0, "missing", NULL, 0, NULL, 0);
    fp_recv(c, &r, FH_IPC_REPLY, "missing");
    if (r.h.id != 78 || r.h.status != FH_IPC_NO_ACTION)
        _exit(36);
    fp_send(c, FH_IPC_REQUEST, 79, 0, "fails", NULL, 0, NULL, 0);
    fp_recv(c, &r, FH_IPC_REPLY, "fails");
    if (r.h.id != 79 || r.h.status != FH_IPC_ACTION_FAILED)
        _exit(37);
    fp_send(c, FH_IPC_REQUEST, 80, 0, "recurse", NULL, 0, NULL, 0);
    fp_recv(c, &r, FH_IPC_REPLY, "recurse");
    if (r.h.id != 80 || r.h.param_len != 7 || memcmp(r.param, "EDEADLK", 7))
        _exit(38);

    /* 5. malformed records: counted, the connection survives */
    memset(junk, 0xab, sizeof junk);
    if (send(c, junk, sizeof junk, 0) < 0 || send(c, "tiny", 4, 0) < 0
        || send(c, "", 0, 0) < 0)           /* read as 0 bytes, not EOF */
        _exit(39);
    fp_send(c, FH_IPC_MSG, 0, 0, "note", "still here", 10, NULL, 0);

    /* 6. an async request, answered */
    fp_recv(c, &r, FH_IPC_REQUEST, "async");
    fp_send(c, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "async", "done", 4, NULL, 0);

    /* 6b. a request the fake has no action for: NO_ACTION */
    fp_recv(c, &r, FH_IPC_REQUEST, "nobody");
    fp_send(c, FH_IPC_REPLY, r.h.id, FH_IPC_NO_ACTION, "nobody", NULL, 0, NULL, 0);

    /* 7. a request, then we die: the secondary must not wait 10 s */
    fp_recv(c, &r, FH_IPC_REQUEST, "dies");
    _exit(0);
}

/* The primary that comes after the first one died: the member rejoins it
 * with the actions it had. */
static void fake_rejoined(int listener, pid_t member)
{
    struct fht_rec r;
    struct fh_ipc_hello hello;
    struct fh_ipc_welcome w = { (int32_t)getpid(), 2, FH_IPC_NAME_MAX,
                                FH_IPC_PARAM_MAX };
    struct fh_ipc_primary_notice pn = { (int32_t)getpid(), 2 };
    struct pollfd p = { listener, POLLIN, 0 };
    int c;

    if (poll(&p, 1, 10000) != 1)
        _exit(40);
    c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        _exit(41);
    fp_recv(c, &r, FH_IPC_HELLO, NULL);
    memcpy(&hello, r.param, sizeof hello);
    if (r.h.param_len != sizeof hello || hello.pid != member
        || hello.flags != FH_IPC_HELLO_REJOIN)
        _exit(42);
    fp_send(c, FH_IPC_WELCOME, 0, 0, NULL, &w, sizeof w, NULL, 0);
    fp_send(c, FH_IPC_MSG, 0, 0, FH_IPC_PRIMARY_NOTICE, &pn, sizeof pn, NULL, 0);
    fp_send(c, FH_IPC_MSG, 0, 0, "note", "rejoined", 8, NULL, 0);
    fp_echo2(c, 81, 'r', 43);
    fp_recv(c, &r, FH_IPC_REQUEST, "echo");
    fp_send(c, FH_IPC_REPLY, r.h.id, FH_IPC_OK, "echo", "again", 5, NULL, 0);
    fp_recv(c, &r, FH_IPC_BYE, NULL);
    _exit(0);
}

/* -- the secondary's side ---------------------------------------------- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int notes;
static char last_note[64];
static int async_done, async_received, async_peer_ok;
static int echo2_answered;      /* echo2 requests replied to */
static char async_param[16];
static char fake_comm[FH_IPC_PEER_NAME_MAX];

/* What a peer entry names pid: its comm. */
static void comm_of(pid_t pid, char *out)
{
    char path[32];
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    out[0] = '\0';
    f = fopen(path, "r");
    if (f) {
        if (fgets(out, FH_IPC_PEER_NAME_MAX, f))
            out[strcspn(out, "\n")] = '\0';
        fclose(f);
    }
}

/* rep's one peer entry is the fake primary's, with status. */
static int peer_is(const struct fh_ipc_reply *rep, pid_t fake, int status)
{
    const struct fh_ipc_peer_reply *e = rep->peers;

    return e && e->pid == fake && e->status == status
           && strcmp(e->name, fake_comm) == 0 && fake_comm[0]
           && (status == FH_IPC_PEER_ANSWERED || status == FH_IPC_PEER_NO_ACTION
               ? e->msg == &rep->msgs[0] : e->msg == NULL);
}

static void wait_for(int *what, int n)
{
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&lock);
    while (*what < n)
        CHECK(pthread_cond_timedwait(&cond, &lock, &until) == 0, "waiting");
    pthread_mutex_unlock(&lock);
}

static int on_note(const struct fh_ipc_msg *msg, const void *peer)
{
    (void)peer;
    pthread_mutex_lock(&lock);
    snprintf(last_note, sizeof last_note, "%.*s", msg->len_param, (char *)msg->param);
    notes++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    return 0;
}

static int on_echo2(const struct fh_ipc_msg *msg, const void *peer)
{
    struct fh_ipc_msg *r = calloc(1, sizeof *r);

    set_name(r, msg->name);
    r->param[0] = 'a';
    memcpy(r->param + 1, msg->param, msg->len_param);
    r->len_param = msg->len_param + 1;
    CHECK(fh_ipc_reply(r, peer) == 0, "reply");
    errno = 0;
    CHECK(fh_ipc_reply(r, peer) < 0 && errno == EALREADY, "second reply");
    free(r);
    pthread_mutex_lock(&lock);
    echo2_answered++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    return 0;
}

static int on_recurse(const struct fh_ipc_msg *msg, const void *peer)
{
    struct fh_ipc_msg *req = calloc(1, sizeof *req), *r = calloc(1, sizeof *r);
    struct fh_ipc_reply rep;

    set_name(req, "echo");
    errno = 0;
    CHECK(fh_ipc_request(req, &rep, NULL) < 0 && errno == EDEADLK, "EDEADLK");
    CHECK(fh_ipc_stop() < 0 && errno == EDEADLK, "stop from an action");
    set_name(r, msg->name);
    set_param(r, "EDEADLK");
    CHECK(fh_ipc_reply(r, peer) == 0, "reply");
    free(req);
    free(r);
    return 0;
}

static void on_async(const struct fh_ipc_msg *req, const struct fh_ipc_reply *reply,
                     void *arg)
{
    CHECK(arg == (void *)&async_done && strcmp(req->name, "async") == 0, "cb args");
    pthread_mutex_lock(&lock);
    async_received = reply->nb_sent * 10 + reply->nb_received;
    async_peer_ok = reply->peers && reply->peers[0].status == FH_IPC_PEER_ANSWERED
                    && reply->peers[0].msg == &reply->msgs[0]
                    && reply->peers[0].pid == fh_ipc_peer_pid()
                    && strcmp(reply->peers[0].name, fake_comm) == 0;
    if (reply->nb_received)
        snprintf(async_param, sizeof async_param, "%.*s", reply->msgs[0].len_param,
                 (char *)reply->msgs[0].param);
    async_done = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
}

static int primary_notices;
static struct fh_ipc_primary_notice last_primary;

static int on_primary(const struct fh_ipc_msg *msg, const void *peer)
{
    (void)peer;
    pthread_mutex_lock(&lock);
    if (msg->len_param == (int)sizeof last_primary)
        memcpy(&last_primary, msg->param, sizeof last_primary);
    primary_notices++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    return 0;
}

static void test_checks(void)
{
    struct fh_ipc_msg *m = calloc(1, sizeof *m);
    char name[FH_IPC_NAME_MAX + 1];

    /* not a secondary yet: registering only records */
    CHECK(fh_ipc_primary_pid() == 0 && fh_ipc_socket_path()[0] == '\0', "unset");
    CHECK(fh_ipc_register("a", on_note) == 0, "register");
    errno = 0;
    CHECK(fh_ipc_register("a", on_note) < 0 && errno == EEXIST, "EEXIST");
    CHECK(fh_ipc_unregister("a") == 0, "unregister");
    errno = 0;
    CHECK(fh_ipc_unregister("a") < 0 && errno == ENOENT, "ENOENT");
    errno = 0;
    CHECK(fh_ipc_register("", on_note) < 0 && errno == EINVAL, "empty name");
    memset(name, 'n', sizeof name);
    name[FH_IPC_NAME_MAX] = '\0';
    errno = 0;
    CHECK(fh_ipc_register(name, on_note) < 0 && errno == ENAMETOOLONG, "long name");
    name[FH_IPC_NAME_MAX - 1] = '\0';
    CHECK(fh_ipc_register(name, on_note) == 0 && fh_ipc_unregister(name) == 0,
          "63 bytes");
    errno = 0;
    CHECK(fh_ipc_register("forkhost.mine", on_note) < 0 && errno == EINVAL,
          "reserved");
    CHECK(fh_ipc_register(FH_IPC_EXIT_NOTICE, on_note) == 0 &&
          fh_ipc_unregister(FH_IPC_EXIT_NOTICE) == 0, "notice names");

    set_name(m, "x");
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == ENOTCONN, "no primary");
    m->len_param = FH_IPC_PARAM_MAX + 1;
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == EMSGSIZE, "param too long");
    m->len_param = -1;
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == EINVAL, "negative length");
    m->len_param = 0;
    m->num_fds = FH_IPC_FDS_MAX + 1;
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == EMSGSIZE, "too many fds");
    m->num_fds = 1;
    m->fds[0] = 9999;
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == EBADF, "bad fd");
    m->num_fds = 0;
    set_name(m, "forkhost.exit");
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == EINVAL, "reserved send");
    errno = 0;
    CHECK(fh_ipc_set_primary(name, 1) == 0 && fh_ipc_set_primary("", 0) == 0,
          "set/unset");
    CHECK(fh_ipc_stop() == 0, "stop when never started");
    free(m);
}

/* A fake primary listening at sa: a child that runs fn (which never
 * returns) on the listener, killed if we die. */
static pid_t fake_at(const struct sockaddr_un *sa, void (*fn)(int, pid_t), pid_t me)
{
    int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    pid_t pid;

    CHECK(listener >= 0 && bind(listener, (const struct sockaddr *)sa, sizeof *sa) == 0 &&
          listen(listener, 4) == 0, "listen at %s", sa->sun_path);
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fn(listener, me);
        _exit(99);
    }
    close(listener);
    return pid;
}

static void test_with_fake_primary(void)
{
    char dir[] = "/tmp/fh-ipc-XXXXXX", path[64];
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct fh_ipc_msg *m = calloc(1, sizeof *m);
    struct fh_ipc_reply rep;
    struct fh_ipc_stats s;
    struct timespec ts, t0, t1;
    int pfd[2], fds_before = count_fds(), status;
    pid_t me = getpid(), fake;
    char buf[32];

    CHECK(mkdtemp(dir), "mkdtemp");
    snprintf(path, sizeof path, "%s/ipc.sock", dir);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    fake = fake_at(&sa, fake_primary, me);
    CHECK(fh_ipc_set_primary(path, fake) == 0, "set_primary");
    CHECK(fh_ipc_primary_pid() == fake && strcmp(fh_ipc_socket_path(), path) == 0,
          "stored");

    /* registering joins */
    comm_of(fake, fake_comm);
    CHECK(fh_ipc_register("note", on_note) == 0, "register note");
    CHECK(fh_ipc_peer_pid() == fake && strcmp(fh_ipc_peer_name(), fake_comm) == 0,
          "the primary's pid and name: %s", fh_ipc_peer_name());
    CHECK(fh_ipc_register("echo2", on_echo2) == 0 &&
          fh_ipc_register("fails", fht_action_fails) == 0 &&
          fh_ipc_register("recurse", on_recurse) == 0, "register");

    /* 1. message with an fd */
    CHECK(pipe(pfd) == 0, "pipe");
    set_name(m, "note");
    set_param(m, "hello");
    m->num_fds = 1;
    m->fds[0] = pfd[1];
    CHECK(fh_ipc_send(m) == 0, "send");
    close(pfd[1]);
    CHECK(read(pfd[0], buf, sizeof buf) == 12 && memcmp(buf, "fake primary", 12) == 0,
          "the fd works on the other side");
    close(pfd[0]);

    /* 2. sync request, with an fd in the answer */
    memset(m, 0, sizeof *m);
    set_name(m, "echo");
    set_param(m, "abc");
    CHECK(fh_ipc_request(m, &rep, NULL) == 0, "request");
    CHECK(rep.nb_sent == 1 && rep.nb_received == 1 && rep.msgs[0].status == FH_IPC_OK
          && rep.msgs[0].len_param == 6 && memcmp(rep.msgs[0].param, "re:abc", 6) == 0
          && rep.msgs[0].pid == fake && rep.msgs[0].num_fds == 1, "reply");
    CHECK(peer_is(&rep, fake, FH_IPC_PEER_ANSWERED), "peer: answered");
    CHECK(read(rep.msgs[0].fds[0], buf, sizeof buf) == 9, "fd from the reply");
    close(rep.msgs[0].fds[0]);
    free(rep.msgs);

    /* 3. unanswered: nb_received 0 after the timeout */
    set_name(m, "silent");
    ts.tv_sec = 0;
    ts.tv_nsec = 200 * 1000000L;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(fh_ipc_request(m, &rep, &ts) == 0, "request");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rep.nb_sent == 1 && rep.nb_received == 0, "timed out");
    CHECK(peer_is(&rep, fake, FH_IPC_PEER_TIMED_OUT), "peer: timed out");
    free(rep.msgs);
    CHECK((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 >= 190,
          "waited for the timeout");
    set_name(m, "timed_out");
    CHECK(fh_ipc_send(m) == 0, "send");

    /* 4. the primary's message and requests: checked by the fake; wait for
     * the last of them (the note after the malformed records) */
    wait_for(&notes, 2);
    CHECK(strcmp(last_note, "still here") == 0, "notes: %s", last_note);
    fh_ipc_stats(&s);
    CHECK(s.malformed == 3 && s.no_action == 1 && s.action_errors == 1 &&
          s.late_replies == 1 && s.timeouts == 1, "stats %llu %llu %llu %llu %llu",
          (unsigned long long)s.malformed, (unsigned long long)s.no_action,
          (unsigned long long)s.action_errors, (unsigned long long)s.late_replies,
          (unsigned long long)s.timeouts);

    /* a forked child of a member: no thread, no connection, no actions */
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        int ok = count_fds() == fds_before
                 && fh_ipc_unregister("note") < 0 && errno == ENOENT
                 && fh_ipc_stop() == 0;
        _exit(ok ? 0 : 1);
    }
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0, "forked child");

    /* 5. async request */
    set_name(m, "async");
    CHECK(fh_ipc_request_async(m, NULL, on_async, &async_done) == 0, "async");
    wait_for(&async_done, 1);
    CHECK(async_received == 11 && strcmp(async_param, "done") == 0, "async reply");
    CHECK(async_peer_ok, "async: the peer answered");

    /* 5b. no such action at the primary: answered NO_ACTION */
    set_name(m, "nobody");
    CHECK(fh_ipc_request(m, &rep, NULL) == 0, "request");
    CHECK(rep.nb_sent == 1 && rep.nb_received == 1
          && rep.msgs[0].status == FH_IPC_NO_ACTION, "NO_ACTION");
    CHECK(peer_is(&rep, fake, FH_IPC_PEER_NO_ACTION), "peer: no action");
    free(rep.msgs);

    /* 6. the primary dies mid-request: answered (unanswered) at once */
    set_name(m, "dies");
    ts.tv_sec = 10;
    ts.tv_nsec = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(fh_ipc_request(m, &rep, &ts) == 0, "request");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rep.nb_sent == 1 && rep.nb_received == 0, "unanswered");
    CHECK(peer_is(&rep, fake, FH_IPC_PEER_DIED), "peer: died");
    free(rep.msgs);
    CHECK(t1.tv_sec - t0.tv_sec < 5, "not the whole timeout");
    CHECK(waitpid(fake, &status, 0) == fake && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0, "the fake primary: status %d", status);
    set_name(m, "note");
    errno = 0;
    CHECK(fh_ipc_send(m) < 0 && errno == ENOTCONN, "primary gone");
    errno = 0;
    CHECK(fh_ipc_request_async(m, NULL, on_async, &async_done) < 0 && errno == ENOTCONN,
          "async to a gone primary");

    /* 7. it went without forkhost.shutdown: the member waits for the next
     * primary at the same path.  Meanwhile calls fail at once, and an
     * action registered now is kept. */
    for (int i = 0; i < 1000 && !fh_ipc_rejoining(); i++)
        usleep(10000);
    CHECK(fh_ipc_rejoining() == 1 && fh_ipc_peer_pid() == 0, "waits to rejoin");
    errno = 0;
    CHECK(fh_ipc_request(m, &rep, &ts) < 0 && errno == ENOTCONN, "request, no primary");
    CHECK(fh_ipc_register(FH_IPC_PRIMARY_NOTICE, on_primary) == 0, "register meanwhile");
    unlink(path);               /* the dead one's socket file */
    fake = fake_at(&sa, fake_rejoined, me);
    wait_for(&primary_notices, 1);
    CHECK(last_primary.primary_pid == fake && last_primary.template_pid == 2,
          "the notice: %d %d", last_primary.primary_pid, last_primary.template_pid);
    CHECK(fh_ipc_peer_pid() == fake && !fh_ipc_rejoining(), "joined again");
    wait_for(&notes, 3);
    CHECK(strcmp(last_note, "rejoined") == 0, "the action it had: %s", last_note);
    /* The fake reads its echo2 reply next: our request must come after
     * it, as it would not on its own (the note arrives first). */
    wait_for(&echo2_answered, 2);
    set_name(m, "echo");
    set_param(m, "x");
    CHECK(fh_ipc_request(m, &rep, NULL) == 0 && rep.nb_received == 1
          && rep.msgs[0].len_param == 5 && memcmp(rep.msgs[0].param, "again", 5) == 0
          && rep.msgs[0].pid == fake, "a request to the new primary");
    free(rep.msgs);

    CHECK(fh_ipc_stop() == 0, "stop");
    CHECK(waitpid(fake, &status, 0) == fake && WIFEXITED(status) &&
          WEXITSTATUS(status) == 0, "the second fake primary: status %d", status);
    CHECK(count_fds() == fds_before, "fds: %d -> %d", fds_before, count_fds());
    for (const char *n = "note"; n; n = NULL)
        CHECK(fh_ipc_unregister(n) == 0, "unregister %s", n);
    fh_ipc_unregister("echo2");
    fh_ipc_unregister("fails");
    fh_ipc_unregister("recurse");
    fh_ipc_unregister(FH_IPC_PRIMARY_NOTICE);
    fh_ipc_set_primary("", 0);
    unlink(path);
    rmdir(dir);
    free(m);
}

int main(void)
{
    int fds = count_fds();

    test_checks();
    test_with_fake_primary();
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_ipc: ok\n");
    return 0;
}
