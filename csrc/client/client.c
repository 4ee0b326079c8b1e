/*
 * client.c - a launch from the client's side, for forkhost-run and for
 * fh_init() / forkhost.init() (forkhost/client.h): connect to the
 * template, send LAUNCH, forward signals, exit as the secondary does.
 *
 * Deliberately no stdio FILE streams, no locale, no NSS, nothing a libc
 * must set up: in forkhost-run on x86_64 Linux this links no libc at all,
 * only rt/rt.c (system-call wrappers and the few helpers used here).
 * Diagnostics are formatted with snprintf and written with one write(2)
 * each.  It is also part of libforkhost, where it runs in a program that
 * is about to hand itself over (fh_init) and never returns there either.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Only the protocol and the runtime directory's rules: forkhost-run maps
 * nothing and links nothing else of libforkhost. */
#include "forkhost/client.h"
#include "forkhost/proto.h"
#include "forkhost/rundir.h"
#include "tty.h"

extern char **environ;

/* The largest reply we accept: ERROR with its longest text.  STARTED and
 * EXITED are smaller; anything longer arrives with MSG_TRUNC and is refused. */
#define REPLY_MAX (sizeof(struct fh_error) + FH_PROTO_MAX_ERROR)

/* Room for a few more fds than any reply carries (STARTED: 1), so that a
 * misbehaving template's extras are received and closed by us rather than
 * turning into MSG_CTRUNC. */
#define REPLY_MAX_FDS 4

/* One diagnostic line: our prefix, an ERROR text (<= 1024) and a path or two. */
#define DIAG_MAX 4096

/* Signals we do not catch: SIGKILL and SIGSTOP cannot be, and glibc keeps
 * 32 and 33 (thread cancellation, setxid) for itself, so no program can
 * have a handler for them.  Every other signal sent to us is the
 * secondary's (forward_signals): it is the template's child, not ours, and
 * not in our process group, so a terminal's ^C / ^Z / ^\ / resize, a
 * supervisor's SIGTERM and a `kill -USR1` or `kill -RTMIN+3` reach only us
 * unless we pass them on. */
#define FIRST_SIG 1
#define LAST_SIG  64
static int caught(int sig)
{
    return sig != SIGKILL && sig != SIGSTOP && sig != 32 && sig != 33;
}

/* Our pid, for telling our own SIGPIPE from someone's kill -PIPE. */
static pid_t self_pid;

/* Set once we know whether fd 2 was open at startup: if it was not, our own
 * socket or pipe may now sit on fd 2 and must not receive diagnostics. */
static int stderr_ok = 1;

/* Who we are in diagnostics (fh_client_init). */
static const char *prog = "forkhost";

/* Write end of the self-pipe.  Signal handlers only write the signal number
 * here; the main loop reads it (the multiprocessing / set_wakeup_fd habit),
 * so nothing non-async-signal-safe ever runs in a handler. */
static int wakeup_w = -1;

/* ------------------------------------------------------------------ */
/* diagnostics and exits                                                */

__attribute__((format(printf, 1, 2)))
static void diag(const char *fmt, ...)
{
    char buf[DIAG_MAX];
    size_t off = strlen(prog) < 256 ? strlen(prog) : 256;
    va_list ap;
    int n;

    if (!stderr_ok)
        return;
    memcpy(buf, prog, off);
    buf[off++] = ':';
    buf[off++] = ' ';
    va_start(ap, fmt);
    n = vsnprintf(buf + off, sizeof(buf) - off - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    off += (size_t)n < sizeof(buf) - off - 1 ? (size_t)n : sizeof(buf) - off - 2;
    buf[off++] = '\n';
    fh__write_all(2, buf, off);
}

__attribute__((noreturn, format(printf, 1, 2)))
static void die(const char *fmt, ...)
{
    char msg[DIAG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fh__tty_restore();
    diag("%s", msg);
    _exit(FH_EXIT_FORKHOST);
}

/*
 * Leave the way the secondary left.  For a signal we die by the same
 * signal, so a shell prints "Killed" / "Segmentation fault" and sees 128+S,
 * and a parent's WIFSIGNALED() is true.  RLIMIT_CORE goes to 0 first: the
 * secondary already dumped (or not) its own core, and a second, useless
 * core of this client must not overwrite it.
 */
__attribute__((noreturn))
static void exit_like(int code, int sig)
{
    fh__tty_finish();       /* its last output, then the terminal's modes */
    if (sig > 0) {
        struct rlimit no_core = { 0, 0 };
        struct sigaction dfl;
        sigset_t set;

        setrlimit(RLIMIT_CORE, &no_core);
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigaction(sig, &dfl, NULL);     /* EINVAL for SIGKILL/SIGSTOP: fine */
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(sig);
        /* Still here: the signal's default action is to ignore or stop
         * (the template reported something odd); say it the shell's way. */
        _exit(128 + sig);
    }
    _exit(code);
}

/* ------------------------------------------------------------------ */
/* options                                                              */


/* Seconds as a decimal float, >= 0; "inf" waits forever (timeout_ms = -1).
 * No hex: rt.c's strtod (forkhost-run) reads none, the C library's
 * (libforkhost: forkhost run, fh_init) would, and both must agree. */
static int parse_timeout(const char *s, double *secs, int *ms)
{
    char *end;
    double t, t_ms;

    if (*s == '\0' || *s == ' ' || *s == '\t')
        return -1;
    for (const char *p = s; *p; p++)
        if (*p == 'x' || *p == 'X')
            return -1;
    t = strtod(s, &end);
    if (*end != '\0' || t != t || t < 0.0)      /* t != t: NaN */
        return -1;
    *secs = t;
    t_ms = t * 1000.0;
    if (t_ms >= (double)INT_MAX) {              /* ~24.8 days, or inf */
        *ms = -1;
    } else {
        int whole = (int)t_ms;
        *ms = (double)whole < t_ms ? whole + 1 : whole;   /* round up */
    }
    return 0;
}


static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* <runtime dir>/<prefix>/template.sock into addr, found by
 * fh_prefix_resolve (csrc/lib/rundir_path.c, compiled into forkhost-run
 * too): the code every primary uses, so both ends agree on the place and
 * refuse the same prefixes and paths with the same words.  o->prefix
 * becomes the prefix settled on. */
static socklen_t socket_address(struct fh_client *o, struct sockaddr_un *addr)
{
    static struct fh_prefix_paths paths;
    char err[FH_RUNDIR_ERR_MAX];
    int n;

    _Static_assert(FH_SOCKET_PATH_MAX < sizeof(addr->sun_path),
                   "a socket path and its NUL fit sun_path");
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (fh_prefix_resolve(&paths, o->prefix, o->prefix_from, o->runtime_dir,
                          err, sizeof(err)) < 0 ||
        (n = fh_prefix_socket_path(&paths, addr->sun_path, sizeof(addr->sun_path),
                                   err, sizeof(err))) < 0)
        die("%s", err);
    o->prefix = paths.prefix;
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
}

/* ------------------------------------------------------------------ */
/* time                                                                 */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline, for poll(); -1 when there is none. */
static int remaining_ms(const struct fh_client *o, int64_t deadline)
{
    int64_t left;

    if (o->timeout_ms < 0)
        return -1;
    left = deadline - now_ms();
    return left < 0 ? 0 : (int)left;
}

/* ------------------------------------------------------------------ */
/* signals                                                              */

static void on_signal(int sig, siginfo_t *si, void *ctx)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t r;

    (void)ctx;
    if (si->si_code > 0) {
        /* The kernel's, about this process rather than sent to it. */
        switch (sig) {
        case SIGCHLD:           /* a child of ours (fh_init's program's) */
        case SIGURG:            /* out-of-band data on a socket of ours */
        case SIGPIPE:
            errno = saved;
            return;
        case SIGSEGV: case SIGBUS: case SIGFPE: case SIGILL: case SIGTRAP:
        case SIGSYS: {
            /* Our own fault: die of it, as without the handler, the
             * terminal's modes restored first (tty.c). */
            struct sigaction dfl;

            fh__tty_restore();
            memset(&dfl, 0, sizeof(dfl));
            dfl.sa_handler = SIG_DFL;
            sigaction(sig, &dfl, NULL);
            errno = saved;
            return;             /* the instruction faults again */
        }
        case SIGTTIN: case SIGTTOU:
            /* Our own terminal I/O from the background: stop, as without
             * the handler, right here (the I/O is retried once we are
             * continued; the main loop would come too late). */
            raise(SIGSTOP);
            errno = saved;
            return;
        case SIGXCPU: case SIGXFSZ: {
            /* Our own CPU or file-size limit: end by it, as without the
             * handler, the terminal's modes restored first. */
            struct sigaction dfl;

            fh__tty_restore();
            memset(&dfl, 0, sizeof(dfl));
            dfl.sa_handler = SIG_DFL;
            sigaction(sig, &dfl, NULL);
            raise(sig);
            errno = saved;
            return;
        }
        default:                /* the terminal's ^C, ^Z, ^\, resize, hangup */
            break;
        }
    } else if (sig == SIGPIPE && si->si_code == SI_USER && si->si_pid == self_pid) {
        errno = saved;          /* a write of ours to a closed pipe: EPIPE */
        return;
    }
    r = write(wakeup_w, &b, 1);   /* full pipe: drop, never block */
    (void)r;
    errno = saved;
}

/*
 * The mask a program we exec'd would start with, read before we change
 * it, bit sig - 1 (FH_LAUNCH_SIGBIT).  The secondary starts with the same
 * (proto.h); the ignored signals are read as setup_signals replaces them.
 */
static uint64_t read_mask(void)
{
    uint64_t mask = 0;

    /* The kernel's 64-bit mask, the same with or without libc. */
    if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &mask, sizeof mask) != 0)
        return 0;
    return mask;
}

/*
 * Catch every catchable signal into the self-pipe (on_signal), ignored
 * ones too: the secondary ignores those itself, unless its program set a
 * handler, which then runs as it would have run directly.  *ignored: the
 * signals that were SIG_IGN (nohup's SIGHUP, `trap '' PIPE`, a background
 * job's SIGINT and SIGQUIT), as exec would keep them.  Then unblock
 * everything: a signal the secondary blocks stays pending there, not here.
 * Returns the pipe's read end.
 */
static int setup_signals(uint64_t *ignored)
{
    struct sigaction sa, old;
    sigset_t none;
    int p[2], sig;

    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        die("cannot create a pipe: %s", strerror(errno));
    wakeup_w = p[1];
    self_pid = getpid();

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;  /* poll() still returns EINTR */
    sigemptyset(&sa.sa_mask);
    *ignored = 0;
    for (sig = FIRST_SIG; sig <= LAST_SIG; sig++) {
        if (!caught(sig))
            continue;
        memset(&old, 0, sizeof(old));
        if (sigaction(sig, &sa, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
            old.sa_handler == SIG_IGN)
            *ignored |= FH_LAUNCH_SIGBIT(sig);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    return p[0];
}

static int pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Stop as the secondary stopped: with a relayed terminal, its modes
 * restored first and by the same signal (tty.c). */
static void stop_self(int sig)
{
    if (fh__tty_active())
        fh__tty_stop(sig);
    else
        raise(SIGSTOP);
}

/*
 * Pass every signal queued in the self-pipe to the secondary.  ^Z is
 * passed as SIGTSTP and then stops us too, as the foreground job a shell
 * thinks we are (unless SIGTSTP was ignored when we started: the
 * secondary ignores it too); the shell's later SIGCONT to us is passed on
 * in turn.  ESRCH (the secondary already exited; EXITED is on its way) is
 * ignored.  The kernel drops SIGTSTP (default action) for a process in an
 * orphaned process group, so it only stops the secondary if the template
 * puts it in a group whose parent is in the same session, e.g. with
 * setpgid(0, 0).
 */
static uint64_t sig_ignored_at_start;

static void forward_signals(int pipe_r, int pidfd)
{
    unsigned char buf[64];
    ssize_t n, k;

    while ((n = read(pipe_r, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
        for (k = 0; k < n; k++) {
            int sig = buf[k];

            if (fh__tty_signal(sig))
                continue;       /* resize, TSTP, CONT: through the pty (tty.c) */
            pidfd_send_signal(pidfd, sig);
            if (sig == SIGTSTP && !(sig_ignored_at_start & FH_LAUNCH_SIGBIT(SIGTSTP)))
                stop_self(SIGSTOP);
        }
    }
}

/*
 * The fds a program we exec'd would have besides 0, 1 and 2: every open fd
 * without FD_CLOEXEC (ours all have it: the socket, the self-pipe, the cwd
 * fd), at its own number, in increasing order.  /proc/self/fd lists them;
 * without /proc, the numbers below FH_INHERIT_SCAN_MAX are tried.  More
 * than FH_PROTO_MAX_EXTRA_FDS is an error (docs/cli.md).
 */
#define FH_INHERIT_SCAN_MAX 1024

static int inheritable(int fd)
{
    int fl = fcntl(fd, F_GETFD);

    return fl >= 0 && !(fl & FD_CLOEXEC);
}

static void add_inherited(int fd, int *fds, uint32_t *target, unsigned *n)
{
    unsigned k;

    if (fd < 3 || !inheritable(fd))
        return;
    if (*n >= FH_PROTO_MAX_EXTRA_FDS)
        die("too many open file descriptors to pass on: more than %u besides "
            "0, 1 and 2 are open without close-on-exec (fd %d and up); close "
            "some, or choose the ones to pass with --fd",
            FH_PROTO_MAX_EXTRA_FDS, fd);
    for (k = *n; k > 0 && target[k - 1] > (uint32_t)fd; k--) {
        target[k] = target[k - 1];
        fds[k] = fds[k - 1];
    }
    target[k] = (uint32_t)fd;
    fds[k] = fd;
    (*n)++;
}

struct fh_dirent64 {
    uint64_t       d_ino;
    int64_t        d_off;
    unsigned short d_reclen;
    unsigned char  d_type;
    char           d_name[];
};

/* Without /proc: every fd number below FH_INHERIT_SCAN_MAX, asked. */
static unsigned scan_inherited(int *fds, uint32_t *target)
{
    unsigned n = 0;

    for (int fd = 3; fd < FH_INHERIT_SCAN_MAX; fd++)
        add_inherited(fd, fds, target, &n);
    return n;
}

static unsigned collect_inherited(int *fds, uint32_t *target)
{
    char buf[4096];
    unsigned n = 0;
    long got;
    int dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (dfd < 0)
        return scan_inherited(fds, target);
    while ((got = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
        long off = 0;

        while (off < got) {
            struct fh_dirent64 *d = (struct fh_dirent64 *)(void *)(buf + off);
            const char *p = d->d_name;
            long v = 0;

            for (; *p >= '0' && *p <= '9' && v < INT_MAX / 10; p++)
                v = v * 10 + (*p - '0');
            if (*p == '\0' && p != d->d_name && v != dfd)
                add_inherited((int)v, fds, target, &n);
            off += d->d_reclen;
        }
    }
    close(dfd);
    /* A listing that failed part way may have missed some: ask each fd. */
    return got < 0 ? scan_inherited(fds, target) : n;
}

/* ------------------------------------------------------------------ */
/* connect and send                                                     */

/*
 * A non-blocking connect() on an AF_UNIX socket never returns
 * EINPROGRESS: it either completes at once or fails with EAGAIN when the
 * listener's backlog is full, and poll() cannot wait for backlog room.
 * So the rare EAGAIN falls back to a blocking connect bounded by
 * SO_SNDTIMEO, which the kernel's unix_stream_connect() honours.
 */
static int connect_slow(int fd, const struct sockaddr_un *addr, socklen_t alen,
                        const struct fh_client *o, int64_t deadline)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
        return -1;
    for (;;) {
        int left = remaining_ms(o, deadline);
        struct timeval tv = { 0, 0 };           /* 0: no timeout */

        if (left == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (left > 0) {
            tv.tv_sec = left / 1000;
            tv.tv_usec = (left % 1000) * 1000;
        }
        if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
            return -1;
        if (connect(fd, (const struct sockaddr *)addr, alen) == 0)
            break;
        if (errno != EINTR && errno != EAGAIN)
            return -1;
    }
    return fcntl(fd, F_SETFL, flags);
}

static int connect_template(const struct fh_client *o,
                            const struct sockaddr_un *addr, socklen_t alen)
{
    int64_t deadline = o->timeout_ms < 0 ? 0 : now_ms() + o->timeout_ms;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int r;

    if (fd < 0)
        die("cannot create a socket: %s", strerror(errno));
    for (;;) {
        do
            r = connect(fd, (const struct sockaddr *)addr, alen);
        while (r < 0 && errno == EINTR);
        /* A primary starting (fh_init's auto): its socket comes soon. */
        if (r == 0 || !o->wait_for_socket || (errno != ENOENT && errno != ECONNREFUSED))
            break;
        if (remaining_ms(o, deadline) == 0)
            die("timed out after %gs waiting for the starting primary of prefix "
                "'%s' (looked for %s)", o->timeout_s, o->prefix, addr->sun_path);
        poll(NULL, 0, 5);
    }
    if (r < 0 && errno == EAGAIN)
        r = connect_slow(fd, addr, alen, o, deadline);
    if (r == 0)
        return fd;
    switch (errno) {
    case ENOENT:
    case ECONNREFUSED:      /* a socket file left behind by a dead primary */
        die("no forkhost primary for prefix '%s' (looked for %s)",
            o->prefix, addr->sun_path);
    case ETIMEDOUT:
        die("timed out after %gs connecting to %s", o->timeout_s, addr->sun_path);
    default:
        die("cannot connect to %s: %s", addr->sun_path, strerror(errno));
    }
}

/*
 * LAUNCH hands our environment, fds and cwd to whatever listens on the
 * socket.  The runtime dir is 0700, but in /tmp someone else may have
 * created it first: only talk to a template of our own user (or root).
 */
static void check_peer(int fd, const struct fh_client *o, const char *path)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        die("cannot read the credentials of %s: %s", path, strerror(errno));
    if (cred.uid != 0 && cred.uid != geteuid())
        die("refusing to launch through %s: the template for prefix '%s' runs "
            "as uid %u, not as uid %u", path, o->prefix,
            (unsigned)cred.uid, (unsigned)geteuid());
}

/* The LAUNCH record is built here.  Static, not stack: 192 KiB is more than
 * a small RLIMIT_STACK may allow, and untouched .bss pages cost nothing. */
static union {
    struct fh_launch msg;
    unsigned char    bytes[FH_PROTO_MAX_MSG];
} launch_buf;

static char *put_string(char *p, const char *s)
{
    size_t n = strlen(s) + 1;

    memcpy(p, s, n);
    return p + n;
}

/* What LAUNCH says besides argv and environ. */
struct launch_extra {
    uint32_t flags;             /* FH_LAUNCH_INHERIT_FDS or 0 */
    unsigned nextra;
    uint32_t target[FH_PROTO_MAX_EXTRA_FDS];
    uint64_t sig_ignored, sig_blocked;
};

/* Build LAUNCH: entry, argv = argv0 (else entry) + ARGS, our whole
 * environ; its length. */
/* The secondary's argv[0] when the caller names none: the entry, less a
 * ":symbol" after a file ("./prog:main" runs ./prog, whose own argv[0]
 * is "./prog"), the template's own rule for splitting it (request.c). */
static const char *default_argv0(const struct fh_client *o)
{
    static char head[PATH_MAX];
    const char *colon = strrchr(o->entry, ':');
    struct stat st;
    size_t n;

    if (o->flags & FH_LAUNCH_MODULE || colon == NULL || colon == o->entry ||
        stat(o->entry, &st) == 0)
        return o->entry;
    n = (size_t)(colon - o->entry);
    if (n >= sizeof head)
        return o->entry;
    memcpy(head, o->entry, n);
    head[n] = '\0';
    return stat(head, &st) == 0 && S_ISREG(st.st_mode) ? head : o->entry;
}

static size_t build_launch(const struct fh_client *o, unsigned stdio_mask,
                           unsigned nfds, const struct launch_extra *x)
{
    struct fh_launch *m = &launch_buf.msg;
    const char *argv0 = o->argv0 ? o->argv0 : default_argv0(o);
    size_t tlen = x->nextra * sizeof x->target[0];
    size_t total = sizeof(*m) + tlen + strlen(o->entry) + 1 + strlen(argv0) + 1;
    size_t envc = 0;
    mode_t mask;
    char *p;
    int k;

    for (k = 0; k < o->nargs; k++)
        total += strlen(o->args[k]) + 1;
    for (; environ[envc]; envc++)
        total += strlen(environ[envc]) + 1;
    if (total > FH_PROTO_MAX_MSG)
        die("argument list and environment too long (%zu bytes; the limit is %u)",
            total, FH_PROTO_MAX_MSG);

    mask = umask(0);            /* the only way to read it without /proc */
    umask(mask);

    m->hdr.magic = FH_PROTO_MAGIC;
    m->hdr.version = FH_PROTO_VERSION;
    m->hdr.type = FH_MSG_LAUNCH;
    m->hdr.len = (uint32_t)total;
    m->hdr.nfds = nfds;
    m->hdr.reserved = 0;
    /* We are the job a shell sees, and we say why the template ended it. */
    m->flags = o->flags | x->flags | FH_LAUNCH_JOBCTL | FH_LAUNCH_NOTICE;
    m->umask = (uint32_t)mask;
    m->stdio_mask = stdio_mask;
    m->nextra = x->nextra;
    m->argc = (uint32_t)o->nargs + 1;
    m->envc = (uint32_t)envc;
    m->strings_len = (uint32_t)(total - sizeof(*m) - tlen);
    m->reserved = 0;
    m->sig_ignored = x->sig_ignored;
    m->sig_blocked = x->sig_blocked;

    memcpy(m + 1, x->target, tlen);
    p = (char *)(m + 1) + tlen;
    p = put_string(p, o->entry);        /* the entry string */
    p = put_string(p, argv0);
    for (k = 0; k < o->nargs; k++)
        p = put_string(p, o->args[k]);
    for (size_t e = 0; e < envc; e++)
        p = put_string(p, environ[e]);
    return total;
}

/* ------------------------------------------------------------------ */
/* replies                                                              */

struct reply {
    union {
        struct fh_msg_hdr hdr;
        struct fh_started started;
        struct fh_exited  exited;
        struct fh_stopped stopped;
        struct fh_error   error;
        struct fh_notice  notice;
        unsigned char     bytes[REPLY_MAX];
    } u;
    size_t len;
    int    fd;          /* STARTED's pidfd, else -1 */
};

enum recv_result { RECV_OK, RECV_AGAIN, RECV_EOF };

struct session {
    const struct fh_client *o;
    const char *path;
    int   sock;
    pid_t pid;          /* the secondary, once STARTED */
    int   pidfd;        /* -1 until STARTED */
};

/* Leave with 125; a running secondary must not outlive our knowing of it. */
__attribute__((noreturn, format(printf, 2, 3)))
static void fail(const struct session *s, const char *fmt, ...)
{
    char msg[DIAG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (s->pidfd >= 0) {
        pidfd_send_signal(s->pidfd, SIGKILL);
        die("%s; killed secondary %d", msg, (int)s->pid);
    }
    die("%s", msg);
}

/*
 * The connection closed before any reply.  Either the template died as we
 * connected (its pool members hold the listening socket until the kernel
 * has torn them down, a millisecond or so after it), or a live one dropped
 * us.  Probe: a connection that is reset at once means a dying socket, so
 * probe again; refused means no primary, as if we had come a moment later;
 * a probe that stays open is a live template.
 */
__attribute__((noreturn))
static void closed_early(const struct session *s)
{
    struct fh_client o = *s->o;
    struct sockaddr_un addr;
    socklen_t alen = socket_address(&o, &addr);
    int i;

    for (i = 0; i < 20; i++) {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct pollfd p;
        int r, ready;

        if (fd < 0)
            break;
        r = connect(fd, (const struct sockaddr *)&addr, alen);
        if (r < 0 && (errno == ENOENT || errno == ECONNREFUSED)) {
            close(fd);
            die("no forkhost primary for prefix '%s' (looked for %s)",
                o.prefix, addr.sun_path);
        }
        if (r < 0) {
            close(fd);
            break;
        }
        p.fd = fd;
        p.events = POLLIN;
        p.revents = 0;
        ready = poll(&p, 1, 50);
        close(fd);
        if (ready <= 0)
            break;          /* someone is waiting for a request: alive */
    }
    fail(s, "the template for prefix '%s' closed the connection", s->o->prefix);
}

/* Our LAUNCH still lies unread in the connection (SIOCOUTQ: bytes sent
 * that the receiver has not consumed), so nobody accepted the connection
 * yet: a socket-activated primary starting (template_running). */
static int request_unread(int sock)
{
    int n = 0;

    return ioctl(sock, SIOCOUTQ, &n) == 0 && n > 0;
}

/*
 * Whether a template runs for the prefix whose socket is sock_path: its
 * config.json (beside the socket) names a template_pid that is alive.
 * Read only when the wait for STARTED reaches the timeout: a primary
 * started by socket activation (docs/systemd.md) finds our connection
 * queued on the listening socket the service manager passed it, so while
 * nobody has read our LAUNCH and no template runs, the client waits
 * however long the start takes (bounded by the service manager, which
 * resets the queued connections when it gives the socket up).
 */
static int template_running(const char *sock_path)
{
    static char buf[16384];
    static const char key[] = "\"template_pid\":";
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + sizeof "/config.json"];
    const char *slash = strrchr(sock_path, '/');
    size_t dir = slash ? (size_t)(slash - sock_path) + 1 : 0, have = 0;
    long pid = 0;
    char *p;
    int fd;

    if (dir + sizeof "config.json" > sizeof path)
        return 0;
    memcpy(path, sock_path, dir);
    memcpy(path + dir, "config.json", sizeof "config.json");
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    close(fd);
    buf[have] = '\0';
    for (p = buf; *p != '\0'; p++)
        if (strncmp(p, key, sizeof key - 1) == 0)
            break;
    if (*p == '\0')
        return 0;
    for (p += sizeof key - 1; *p == ' '; p++)
        ;
    for (; *p >= '0' && *p <= '9' && pid < INT_MAX / 10; p++)
        pid = pid * 10 + (*p - '0');
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

int fh_client_primary_starting(int sock, const char *sock_path, int *seen_starting)
{
    int unread = request_unread(sock);

    if (unread && !template_running(sock_path)) {
        *seen_starting = 1;
        return 1;
    }
    /* It came up during our wait: once more, at least the default timeout
     * from now to read us (its loop may not have reached our connection
     * yet) or to answer what it read (a short --connect-timeout was meant
     * for a running one). */
    if (*seen_starting) {
        *seen_starting = 0;
        return 2;
    }
    return 0;
}

static void close_fds(const int *fds, size_t n)
{
    for (size_t k = 0; k < n; k++)
        close(fds[k]);
}

/*
 * Receive and validate one record.  Every fd that arrives is either kept
 * (STARTED's pidfd) or closed here, whatever else is wrong with the record.
 */
static enum recv_result recv_reply(const struct session *s, struct reply *r)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * REPLY_MAX_FDS)];
    } ctl;
    struct iovec iov = { r->u.bytes, sizeof(r->u.bytes) };
    struct msghdr mh;
    struct cmsghdr *c;
    int fds[REPLY_MAX_FDS];
    size_t nfds = 0, want_fds = 0;
    const struct fh_msg_hdr *h = &r->u.hdr;
    ssize_t n;
    int resets = 0;

    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof(ctl.buf);
    /* ECONNRESET means the template closed while our LAUNCH sat unread in
     * its queue (it refused the connection on accept).  The kernel reports
     * that before the records it had queued for us, so read on once: the
     * ERROR saying why comes next, then EOF. */
    do
        n = recvmsg(s->sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && (errno == EINTR || (errno == ECONNRESET && resets++ == 0)));
    if (n < 0) {
        if (errno == EAGAIN)
            return RECV_AGAIN;
        if (errno == ECONNRESET)
            return RECV_EOF;
        fail(s, "cannot read from %s: %s", s->path, strerror(errno));
    }
    for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t j = 0; j < k && nfds < REPLY_MAX_FDS; j++)
                memcpy(&fds[nfds++], CMSG_DATA(c) + j * sizeof(int), sizeof(int));
        }
    }
    if (n == 0 && nfds == 0)
        return RECV_EOF;

    r->len = (size_t)n;
    r->fd = -1;
    /* Magic and version first: a newer template may have changed the rest. */
    if (r->len < offsetof(struct fh_msg_hdr, type) || h->magic != FH_PROTO_MAGIC) {
        close_fds(fds, nfds);
        fail(s, "protocol error: %s did not answer as a forkhost template", s->path);
    }
    if (h->version != FH_PROTO_VERSION) {
        close_fds(fds, nfds);
        fail(s, "protocol version mismatch: %s speaks %d, the template "
             "speaks %u", prog, FH_PROTO_VERSION, (unsigned)h->version);
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        close_fds(fds, nfds);
        fail(s, "protocol error: a reply from %s was truncated (%s)", s->path,
             mh.msg_flags & MSG_TRUNC ? "data" : "fds");
    }
    if (r->len < sizeof(*h) || h->len != r->len) {
        close_fds(fds, nfds);
        fail(s, "protocol error: a reply from %s is %zu bytes, its header says %u",
             s->path, r->len, r->len < sizeof(*h) ? 0 : (unsigned)h->len);
    }

    switch (h->type) {
    case FH_MSG_STARTED:
        want_fds = 1;
        if (r->len != sizeof(struct fh_started))
            goto bad_len;
        break;
    case FH_MSG_EXITED:
        if (r->len != sizeof(struct fh_exited))
            goto bad_len;
        break;
    case FH_MSG_STOPPED:
        if (r->len != sizeof(struct fh_stopped))
            goto bad_len;
        break;
    case FH_MSG_NOTICE:
        if (r->len < sizeof(struct fh_notice) ||
            r->u.notice.text_len > FH_PROTO_MAX_ERROR ||
            r->len != sizeof(struct fh_notice) + r->u.notice.text_len)
            goto bad_len;
        break;
    case FH_MSG_ERROR:
        if (r->len < sizeof(struct fh_error) ||
            r->u.error.text_len > FH_PROTO_MAX_ERROR ||
            r->len != sizeof(struct fh_error) + r->u.error.text_len)
            goto bad_len;
        break;
    default:
        close_fds(fds, nfds);
        fail(s, "protocol error: unexpected message type 0x%x from %s",
             (unsigned)h->type, s->path);
    }
    if (h->nfds != want_fds || nfds != want_fds) {
        close_fds(fds, nfds);
        fail(s, "protocol error: message type 0x%x from %s carried %zu fds "
             "(header: %u), expected %zu", (unsigned)h->type, s->path, nfds,
             (unsigned)h->nfds, want_fds);
    }
    if (want_fds)
        r->fd = fds[0];
    return RECV_OK;

bad_len:
    close_fds(fds, nfds);
    fail(s, "protocol error: message type 0x%x from %s has a bad length (%zu bytes)",
         (unsigned)h->type, s->path, r->len);
}

/*
 * NOTICE: why the template is ending the secondary (its primary died), in
 * the template's words.  Kept, and said as our one line when EXITED comes,
 * so that it comes with the secondary's end (whose status we still exit
 * with, docs/cli.md), after anything the secondary wrote on its way out.
 */
static char notice[FH_PROTO_MAX_ERROR + 1];

static void keep_notice(struct reply *r)
{
    const char *text = (const char *)(&r->u.notice + 1);
    uint32_t k, n = r->u.notice.text_len;

    for (k = 0; k < n; k++)     /* one line, whatever came */
        notice[k] = text[k] == '\0' || text[k] == '\n' || text[k] == '\r'
                    ? ' ' : text[k];
    notice[n] = '\0';
}

/* ERROR: the template's own words, then its exit code (125/126/127). */
__attribute__((noreturn))
static void exit_error(const struct session *s, struct reply *r)
{
    char *text = (char *)(&r->u.error + 1);
    int32_t code = r->u.error.exit_code;

    /* The entry's own failure, found before the fork: what it would have
     * written on its stderr (ours, which we passed), as it is. */
    if (code >= 1 && code <= FH_ERROR_ENTRY_MAX) {
        fh__tty_restore();
        if (stderr_ok)
            fh__write_all(2, text, r->u.error.text_len);
        if (s->pidfd >= 0)
            pidfd_send_signal(s->pidfd, SIGKILL);
        _exit(code);
    }
    /* The protocol promises no NUL and no newline; keep it one line anyway. */
    for (uint32_t k = 0; k < r->u.error.text_len; k++)
        if (text[k] == '\0' || text[k] == '\n' || text[k] == '\r')
            text[k] = ' ';
    if (code < 1 || code > 255)
        fail(s, "protocol error: an ERROR from %s has exit code %d: %.*s",
             s->path, (int)code, (int)r->u.error.text_len, text);
    fh__tty_restore();
    diag("%.*s", (int)r->u.error.text_len, text);
    if (s->pidfd >= 0)
        pidfd_send_signal(s->pidfd, SIGKILL);
    _exit(code);
}

static void send_launch(struct session *s, size_t len, const int *fds,
                        unsigned nfds, int64_t deadline)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * FH_PROTO_MAX_FDS)];
    } ctl;
    struct iovec iov = { launch_buf.bytes, len };
    struct msghdr mh;
    struct cmsghdr *c;

    memset(&mh, 0, sizeof(mh));
    memset(&ctl, 0, sizeof(ctl));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);

    for (;;) {
        struct pollfd pfd = { s->sock, POLLOUT, 0 };
        int left;

        if (sendmsg(s->sock, &mh, MSG_NOSIGNAL) >= 0)
            return;
        switch (errno) {
        case EINTR:
            continue;
        case EAGAIN:            /* the template's queue is full: wait */
            break;
        case EPIPE:
        case ECONNRESET: {
            /* It may have said why before closing (e.g. an ERROR on accept). */
            struct reply r;
            if (recv_reply(s, &r) == RECV_OK && r.u.hdr.type == FH_MSG_ERROR)
                exit_error(s, &r);
            closed_early(s);
        }
        case EMSGSIZE:
            fail(s, "argument list and environment too long for the socket "
                 "buffer (%zu bytes)", len);
        default:
            fail(s, "cannot send to %s: %s", s->path, strerror(errno));
        }
        left = remaining_ms(s->o, deadline);
        if (left == 0 || (poll(&pfd, 1, left) == 0))
            fail(s, "timed out after %gs sending to %s", s->o->timeout_s, s->path);
    }
}

/*
 * STOPPED: a signal stopped the secondary (someone's kill -STOP, say), and a
 * shell must see its job stopped, as it would a normal child: we stop too,
 * and the shell's SIGCONT to us is passed on (forward_signals).  Only while
 * the secondary is still stopped: after a ^Z the STOPPED for it is read once
 * we were continued and passed SIGCONT on, and must not stop us again.
 */
static int secondary_stopped(pid_t pid)
{
    char path[64], buf[512], *p;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    p = strrchr(buf, ')');      /* comm may hold anything, even ") " */
    return p != NULL && p[1] == ' ' && (p[2] == 'T' || p[2] == 't');
}

/* ------------------------------------------------------------------ */

void fh_client_init(struct fh_client *c, const char *name)
{
    memset(c, 0, sizeof(*c));
    c->prog = prog = name;
}

int fh_client_set_timeout(struct fh_client *c, const char *s)
{
    if (parse_timeout(s, &c->timeout_s, &c->timeout_ms) < 0)
        return -1;
    c->timeout_given = 1;
    return 0;
}

void fh_client_die(const struct fh_client *c, const char *fmt, ...)
{
    char msg[DIAG_MAX];
    va_list ap;

    prog = c->prog;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    die("%s", msg);
}

void fh_client_run(struct fh_client *c)
{
    struct fh_client o = *c;
    struct session s;
    struct sockaddr_un addr;
    socklen_t alen;
    int fds[FH_PROTO_MAX_FDS];
    unsigned nfds = 0, stdio_mask = 0;
    int pipe_r, cwd;    /* cwd is never closed: exit does it for free */
    int stopped_early = 0;
    int seen_starting = 0;      /* fh_client_primary_starting's */
    int64_t deadline;
    size_t len;
    struct launch_extra x;
    int inherited[FH_PROTO_MAX_EXTRA_FDS];

    prog = o.prog;
    /* First, before anything here changes it: what exec would keep. */
    memset(&x, 0, sizeof x);
    x.sig_blocked = read_mask();
    if (!o.timeout_given) {
        const char *val = env_nonempty("FORKHOST_CONNECT_TIMEOUT");

        o.timeout_s = FH_CLIENT_CONNECT_TIMEOUT_S;
        o.timeout_ms = (int)(FH_CLIENT_CONNECT_TIMEOUT_S * 1000);
        if (val && parse_timeout(val, &o.timeout_s, &o.timeout_ms) < 0)
            die("invalid FORKHOST_CONNECT_TIMEOUT '%s': not a number of seconds", val);
    }
    /* Which std fds are open must be known before we open anything of our
     * own, or our first fd would land on a closed 0/1/2 and be sent as it. */
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            stdio_mask |= 1u << fd;
    stderr_ok = (stdio_mask & 4u) != 0;
    /* --fd chooses and renumbers (3, 4, ...); without it every fd a
     * program we exec'd would have passes at its own number. */
    if (o.nextra > 0) {
        x.nextra = o.nextra;
        for (unsigned k = 0; k < o.nextra; k++)
            x.target[k] = 3 + k;
    } else {
        x.nextra = collect_inherited(inherited, x.target);
        x.flags = FH_LAUNCH_INHERIT_FDS;
    }

    alen = socket_address(&o, &addr);

    /* A terminal to relay (tty.c): decided before our signal handlers, so
     * theirs win where both would catch a signal. */
    if (fh__tty_prepare(stdio_mask) < 0)
        die("invalid FORKHOST_TTY '%s': 0 turns the terminal relay off, 1 "
            "(the default) relays one", getenv("FORKHOST_TTY"));

    /* Before the connection exists, so no signal between connect and
     * STARTED is lost: they wait in the pipe and are forwarded after. */
    pipe_r = setup_signals(&x.sig_ignored);
    sig_ignored_at_start = x.sig_ignored;

    cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0)
        die("cannot open the current directory: %s", strerror(errno));
    fds[nfds++] = cwd;
    for (int fd = 0; fd <= 2; fd++)
        if (stdio_mask & (1u << fd))
            fds[nfds++] = fh__tty_fd(fd);
    for (unsigned k = 0; k < x.nextra; k++)
        fds[nfds++] = o.nextra > 0 ? o.extra_fds[k] : inherited[k];
    len = build_launch(&o, stdio_mask, nfds, &x);

    memset(&s, 0, sizeof(s));
    s.o = &o;
    s.path = addr.sun_path;
    s.pidfd = -1;
    s.sock = connect_template(&o, &addr, alen);
    check_peer(s.sock, &o, s.path);

    deadline = o.timeout_ms < 0 ? 0 : now_ms() + o.timeout_ms;
    send_launch(&s, len, fds, nfds, deadline);

    /* Until STARTED: only the socket, bounded by the timeout.  The
     * self-pipe is not read yet; it is the queue of early signals. */
    deadline = o.timeout_ms < 0 ? 0 : now_ms() + o.timeout_ms;
    for (;;) {
        struct pollfd pfd = { s.sock, POLLIN, 0 };
        struct reply r;
        int left = remaining_ms(&o, deadline);
        int ready = poll(&pfd, 1, left);

        if (ready < 0) {
            if (errno == EINTR)
                continue;
            fail(&s, "poll: %s", strerror(errno));
        }
        if (ready == 0) {
            int starting = fh_client_primary_starting(s.sock, s.path, &seen_starting);
            int more = (int)(FH_CLIENT_CONNECT_TIMEOUT_S * 1000);

            if (starting > 0) {     /* a primary starting (docs/systemd.md) */
                deadline = now_ms() +
                    (starting == 2 && more > o.timeout_ms ? more : o.timeout_ms);
                continue;
            }
        }
        if (ready == 0)
            fail(&s, "timed out after %gs waiting for the template at %s to "
                 "start the secondary", o.timeout_s, s.path);
        switch (recv_reply(&s, &r)) {
        case RECV_AGAIN:
            continue;
        case RECV_EOF:
            closed_early(&s);
        case RECV_OK:
            break;
        }
        if (r.u.hdr.type == FH_MSG_ERROR)
            exit_error(&s, &r);
        if (r.u.hdr.type == FH_MSG_STOPPED) {
            /* the template heard first; see below */
            stopped_early = r.u.stopped.signal > 0 ? r.u.stopped.signal : SIGSTOP;
            continue;
        }
        if (r.u.hdr.type == FH_MSG_NOTICE) {
            keep_notice(&r);     /* the template may hear of the launch first */
            continue;
        }
        if (r.u.hdr.type != FH_MSG_STARTED)
            fail(&s, "protocol error: %s sent EXITED before STARTED", s.path);
        if (r.u.started.pid <= 0 || r.u.started.pid > INT_MAX) {
            close(r.fd);
            fail(&s, "protocol error: %s sent STARTED with pid %lld", s.path,
                 (long long)r.u.started.pid);
        }
        s.pid = (pid_t)r.u.started.pid;
        s.pidfd = r.fd;
        break;
    }
    fh__tty_started(s.pid);
    if (stopped_early && secondary_stopped(s.pid))
        stop_self(stopped_early);

    /* Running: forward signals until EXITED.  The pipe goes first, so
     * early signals reach the secondary before we act on an EXITED that
     * may already be queued behind STARTED. */
    for (;;) {
        struct pollfd pfd[2 + FH_TTY_POLLFDS] = {
            { pipe_r, POLLIN, 0 }, { s.sock, POLLIN, 0 } };
        struct reply r;
        int ntty = fh__tty_poll(pfd + 2);

        if (poll(pfd, 2 + (nfds_t)ntty, -1) < 0) {
            if (errno == EINTR)
                continue;
            fail(&s, "poll: %s", strerror(errno));
        }
        if (pfd[0].revents) {
            forward_signals(pipe_r, s.pidfd);
            continue;
        }
        fh__tty_ready(pfd + 2, ntty);
        if (!pfd[1].revents)
            continue;
        switch (recv_reply(&s, &r)) {
        case RECV_AGAIN:
            continue;
        case RECV_EOF:
            /* The template is gone, and with it whoever would tell us how
             * the secondary ends: end it ourselves rather than leave it. */
            pidfd_send_signal(s.pidfd, SIGKILL);
            die("lost the template for prefix '%s' while secondary %d was "
                "running; killed it", o.prefix, (int)s.pid);
        case RECV_OK:
            break;
        }
        if (r.u.hdr.type == FH_MSG_ERROR)
            exit_error(&s, &r);
        if (r.u.hdr.type == FH_MSG_STOPPED) {
            if (secondary_stopped(s.pid))
                stop_self(r.u.stopped.signal);
            continue;
        }
        if (r.u.hdr.type == FH_MSG_NOTICE) {
            keep_notice(&r);
            continue;
        }
        if (r.u.hdr.type != FH_MSG_EXITED) {
            if (r.fd >= 0)
                close(r.fd);
            fail(&s, "protocol error: %s sent a second STARTED", s.path);
        }
        if (r.u.exited.signal < 0 || r.u.exited.signal >= NSIG ||
            (r.u.exited.signal == 0 &&
             (r.u.exited.code < 0 || r.u.exited.code > 255)))
            fail(&s, "protocol error: %s sent EXITED with code %d, signal %d",
                 s.path, (int)r.u.exited.code, (int)r.u.exited.signal);
        if (notice[0])
            diag("%s", notice);
        exit_like(r.u.exited.code, r.u.exited.signal);
    }
}
