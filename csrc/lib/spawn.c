/*
 * spawn.c - what the template does at each fork: turn a copy of itself into
 * the client's process, and for native entries do the whole fork in C.
 *
 * A secondary must look like the program the client asked for, started
 * fresh as if the client had exec'd it: the client's fds at 0/1/2 and at
 * their numbers above, nothing else open, the client's cwd and umask, the
 * client's ignored signals ignored and every other disposition default,
 * the client's signal mask, its own process group, the client's resource
 * limits, nice value, scheduling policy and CPU affinity (as far as the
 * kernel allows), and the argv and environment /proc shows laid out as
 * exec lays them out (else a title `ps` shows as the client's argv).  Everything else is deliberately inherited
 * from the primary: every mapping, at the same address, is the point of
 * forkhost.
 *
 * fh_child_setup() runs between fork() and the entry, in a child of the
 * single-threaded template, for Python and native entries alike; it calls
 * only async-signal-safe functions and never allocates, so it stays correct
 * even if someone calls it after forking a threaded process.
 */
#include "forkhost/spawn.h"
#include "forkhost/client.h"
#include "forkhost/entry.h"
#include "forkhost/hotset.h"
#include "forkhost/proto.h"
#include "init_internal.h"
#include "spawn_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* SCM_RIGHTS carries at most 253 fds per message (the kernel's SCM_MAX_FD),
 * so no launch can hand over more; it also sizes a stack array. */
#define FH_SPAWN_MAX_FDS 253u
/* The kernel's comm is 16 bytes with its NUL (TASK_COMM_LEN). */
#define FH_COMM_LEN 16
/* Where the exit-report fd is parked in a secondary: the lowest free fd at
 * or above this, the client's connection above it, so they do not take the
 * numbers a program's first open()s expect; lower when the soft
 * RLIMIT_NOFILE is below 1025 (park_base). */
#define FH_REPORT_FD_MIN 1023
/* One line from fh_entry_load(). */
#define FH_ERR_LEN 1024

extern char **environ;

/* Store the failing step and return -errno (errno as the step left it). */
static int step_failed(const char **error, const char *step)
{
    int e = errno ? errno : EINVAL;

    if (error != NULL)
        *error = step;
    return -e;
}

static int parse_fd_name(const char *s)
{
    int v = 0;

    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > (INT32_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/*
 * Close every fd >= lowfd.  close_range(2) (Linux 5.9) does it in one call;
 * before that, list /proc/self/fd with getdents64 into a stack buffer
 * (opendir() would allocate), and without /proc close up to the fd limit.
 */
static int close_from(int lowfd)
{
    char buf[4096];
    struct rlimit rl;
    int dfd, fd;
    long n;

#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
        return 0;
    if (errno != ENOSYS)
        return -1;
#endif
    dfd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
            long off = 0;

            while (off < n) {
                struct dirent64 *d = (struct dirent64 *)(buf + off);

                fd = parse_fd_name(d->d_name);
                if (fd >= lowfd && fd != dfd)
                    close(fd);
                off += d->d_reclen;
            }
        }
        close(dfd);
        return n < 0 ? -1 : 0;
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY
        || rl.rlim_cur > INT32_MAX)
        rl.rlim_cur = 65536;
    for (fd = lowfd; fd < (int)rl.rlim_cur; fd++)
        close(fd);
    return 0;
}

/* close_range(2) for [lo, hi]; a loop where the kernel lacks it. */
static int close_range_(unsigned lo, unsigned hi)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return 0;
    if (errno != ENOSYS)
        return -1;
#endif
    for (; lo <= hi; lo++)
        close((int)lo);
    return 0;
}

/* The fd list must be what the header says: cwd, the stdio fds of
 * stdio_mask, nextra extras.  Checked before anything is changed. */
static int spec_valid(const struct fh_child_spec *spec)
{
    unsigned nstd = 0, std;

    if (spec == NULL)
        return 0;
    for (std = 0; std < 3; std++)
        nstd += (spec->stdio_mask >> std) & 1u;
    if (!((spec->stdio_mask & ~7u) == 0 && spec->fds != NULL
          && spec->nfds <= FH_SPAWN_MAX_FDS && spec->nextra <= FH_SPAWN_MAX_FDS
          && spec->nfds == 1 + nstd + spec->nextra))
        return 0;
    for (std = 0; spec->fd_target != NULL && std < spec->nextra; std++)
        if (spec->fd_target[std] < (std == 0 ? 3u : spec->fd_target[std - 1] + 1u)
            || spec->fd_target[std] > FH_PROTO_FD_TARGET_MAX)
            return 0;
    return 1;
}

/* Where extra fd i lands in the secondary. */
static int target_of(const struct fh_child_spec *spec, unsigned i)
{
    return spec->fd_target != NULL ? (int)spec->fd_target[i] : 3 + (int)i;
}

/*
 * Put the client's fds in place: stdio at 0/1/2, the extras at their
 * targets (3, 4, ... or the client's own numbers), N one above the highest.
 * Received fds sit at arbitrary numbers,
 * possibly at 0..N-1 where others must land, so all of them are first
 * duplicated to N and above; after that no dup2() can overwrite a source
 * still needed.  Numbers below N that no extra fd takes are closed.  The cwd fd is moved too, so that a failing fchdir() is
 * reported on the client's stderr, which is in place by then.
 */
/* The client's connection in this secondary (fh_exit_report sends EXITED
 * on it), or -1.  Set once by setup_fds in the single-threaded child. */
static int g_client_fd = -1;

/* Where a failed setup's line goes (die): the client's stderr, wherever it
 * is while setup_fds moves it; -1 once it is at 2 (or the client has none),
 * and before setup: fd 2.  Without this the line went to the template's
 * stderr and the client only saw the 125. */
static int g_err_fd = -1;

/* The client's stderr among spec->fds (cwd, then the std fds), or -1. */
static int stderr_index(const struct fh_child_spec *spec)
{
    unsigned mask = spec->stdio_mask;

    return (mask & 4u) ? 1 + (int)(mask & 1u) + (int)((mask >> 1) & 1u) : -1;
}

/* Where the report fd (and the client's connection right above it) are
 * parked: FH_REPORT_FD_MIN, or lower so that both fit under the soft
 * RLIMIT_NOFILE (the usual 1024 has 1023 as its highest fd), and never
 * below N. */
static int park_base(unsigned N, int need)
{
    struct rlimit rl;
    int at = FH_REPORT_FD_MIN;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
        && rl.rlim_cur < (rlim_t)FH_REPORT_FD_MIN + (rlim_t)need)
        at = rl.rlim_cur > (rlim_t)need ? (int)(rl.rlim_cur - (rlim_t)need)
                                        : 0;
    return at > (int)N ? at : (int)N;
}

/* The client may have an fd at a number the template's soft RLIMIT_NOFILE
 * does not reach (exec would keep it): for setup_fds, which needs that
 * number, the copies above it and the parked pair, the soft limit is
 * lifted towards the hard one, and put back after (*was).  1 when lifted. */
static int lift_nofile(const struct fh_child_spec *spec, struct rlimit *was)
{
    struct rlimit up;
    rlim_t need = 3 + (rlim_t)spec->nfds + 2;

    if (spec->nextra > 0 && spec->fd_target != NULL)
        need += (rlim_t)spec->fd_target[spec->nextra - 1];
    if (getrlimit(RLIMIT_NOFILE, was) < 0 || was->rlim_cur == RLIM_INFINITY
        || was->rlim_cur >= need || was->rlim_max <= was->rlim_cur)
        return 0;
    up = *was;
    up.rlim_cur = was->rlim_max;    /* the template's own fds sit there too */
    return setrlimit(RLIMIT_NOFILE, &up) == 0;
}

static int setup_fds(struct fh_child_spec *spec, const char **error)
{
    int moved[FH_SPAWN_MAX_FDS];
    unsigned mask = spec->stdio_mask, i, k, N;
    int std, keep = -1, ckeep = -1, lo;

    N = spec->nextra > 0 ? (unsigned)target_of(spec, spec->nextra - 1) + 1 : 3;

    /* The report fd, if any, is parked high (and close-on-exec: an exec'd
     * program has nothing to report through it), so that the entry's own
     * first open() still gets 3 + nextra, as in a normal child.  Parked
     * first, like the others: its number may be one a dup2() below
     * overwrites or a std fd the client did not have. */
    if (spec->report_fd > 0) {
        int need = spec->client_fd > 0 ? 2 : 1, at = park_base(N, need);

        keep = fcntl(spec->report_fd, F_DUPFD_CLOEXEC, at);
        if (need == 2 && keep >= 0) {
            ckeep = fcntl(spec->client_fd, F_DUPFD_CLOEXEC, keep + 1);
            if (ckeep < 0) {        /* keep took the last number: lower */
                close(keep);
                keep = -1;
            }
        }
        if (keep < 0 && at > (int)N) {
            keep = fcntl(spec->report_fd, F_DUPFD_CLOEXEC, (int)N);
            if (need == 2 && keep >= 0)
                ckeep = fcntl(spec->client_fd, F_DUPFD_CLOEXEC, keep + 1);
        }
        if (keep < 0)
            return step_failed(error, "keeping the report fd (fcntl)");
        if (need == 2 && ckeep < 0)
            return step_failed(error, "keeping the client's connection "
                               "(fcntl)");
        spec->report_fd = keep;
        if (need == 2) {
            spec->client_fd = ckeep;
            g_client_fd = ckeep;
        }
    }
    for (i = 0; i < spec->nfds; i++) {
        moved[i] = fcntl(spec->fds[i], F_DUPFD_CLOEXEC, (int)N);
        if (moved[i] < 0)
            return step_failed(error, "moving the client's fds out of the "
                               "way (fcntl F_DUPFD_CLOEXEC)");
    }
    /* The dup2()s below may land on the received original. */
    if (stderr_index(spec) >= 0)
        g_err_fd = moved[stderr_index(spec)];
    /* dup2() leaves FD_CLOEXEC clear on the target: these stay open across
     * an exec the entry may do, like any inherited stdio. */
    k = 1;
    for (std = 0; std < 3; std++) {
        if (!((mask >> std) & 1u))
            continue;
        if (dup2(moved[k++], std) < 0)
            return step_failed(error, "placing the client's stdio (dup2)");
    }
    g_err_fd = -1;                  /* 2 is the client's stderr now */
    for (i = 0; i < spec->nextra; i++)
        if (dup2(moved[k++], target_of(spec, i)) < 0)
            return step_failed(error, "placing the client's extra fds "
                               "(dup2)");
    /* The numbers between them are the template's (or received
     * originals): the client had nothing there. */
    for (lo = 3, i = 0; i < spec->nextra; i++) {
        int t = target_of(spec, i);

        if (t > lo && close_range_((unsigned)lo, (unsigned)t - 1) < 0)
            return step_failed(error, "closing the template's fds "
                               "(close_range)");
        lo = t + 1;
    }
    /* The client had these closed: so does its program. */
    for (std = 0; std < 3; std++)
        if (!((mask >> std) & 1u) && close(std) < 0 && errno != EBADF)
            return step_failed(error, "closing the std fds the client did "
                               "not have");
    if (fchdir(moved[0]) < 0)
        return step_failed(error, "changing to the client's cwd (fchdir)");
    /* Everything else >= N: the template's own fds (its listening socket,
     * the client connection, Python's), the received originals, the moved
     * copies.  The parked report fd and client connection stay: ckeep is
     * the lowest free fd above keep, so anything between them is the
     * template's. */
    if (keep >= 0) {
        if ((keep > (int)N
             && close_range_((unsigned)N, (unsigned)keep - 1) < 0)
            || (ckeep > keep + 1
                && close_range_((unsigned)keep + 1, (unsigned)ckeep - 1) < 0)
            || close_from((ckeep >= 0 ? ckeep : keep) + 1) < 0)
            return step_failed(error, "closing the template's fds "
                               "(close_range)");
    } else if (close_from((int)N) < 0)
        return step_failed(error, "closing the template's fds (close_range)");
    return 0;
}

/* argv[0]'s last path component, at most 15 bytes, as the kernel's comm. */
static void set_comm(const char *argv0)
{
    char comm[FH_COMM_LEN];
    const char *base = argv0, *p;
    size_t len;

    for (p = argv0; *p != '\0'; p++)
        if (p[0] == '/' && p[1] != '\0' && p[1] != '/')
            base = p + 1;
    len = strcspn(base, "/");
    if (len == 0)
        return;
    if (len > sizeof comm - 1)
        len = sizeof comm - 1;
    memcpy(comm, base, len);
    comm[len] = '\0';
    prctl(PR_SET_NAME, (unsigned long)comm, 0UL, 0UL, 0UL);
}

/*
 * What /proc/PID/cmdline (and so ps) shows: the memory that held the
 * primary's own argv strings.  As setproctitle(3) does, write the title and
 * zero the rest: the kernel then shows the bytes up to the first NUL.  The
 * argv strings must not live inside area (the template's come from the
 * launch message).
 */
static void set_title(char *area, size_t len, char *const *argv)
{
    size_t o = 0, i;

    if (area == NULL || len == 0)
        return;
    for (i = 0; argv[i] != NULL && o + 1 < len; i++) {
        size_t n = strlen(argv[i]);

        if (i > 0)
            area[o++] = ' ';
        if (n > len - 1 - o)
            n = len - 1 - o;
        memcpy(area + o, argv[i], n);
        o += n;
    }
    memset(area + o, 0, len - o);
}

/* SIG_DFL for every signal that can have a handler. */
static int reset_dispositions(void)
{
    struct sigaction dfl;
    int sig;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        /* glibc keeps 32 and 33 for itself (thread cancellation, setxid)
         * and answers EINVAL: they must keep glibc's handlers. */
        if (sigaction(sig, &dfl, NULL) < 0 && errno != EINVAL)
            return -1;
    }
    return 0;
}

FH_API int fh_reset_signals(void)
{
    sigset_t set;

    sigfillset(&set);
    if (sigprocmask(SIG_SETMASK, &set, NULL) < 0 || reset_dispositions() < 0)
        return -errno;
    sigemptyset(&set);
    return sigprocmask(SIG_SETMASK, &set, NULL) < 0 ? -errno : 0;
}

/* A signal the client ignored stays ignored, as across exec (glibc's 32
 * and 33 answer EINVAL and keep glibc's handlers). */
static int ignore_client_signals(uint64_t ignored)
{
    struct sigaction ign;
    int sig;

    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    for (sig = 1; sig <= 64 && sig < NSIG; sig++) {
        if (!(ignored & FH_LAUNCH_SIGBIT(sig)) || sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, &ign, NULL) < 0 && errno != EINVAL)
            return -1;
    }
    return 0;
}

/* The client's mask as a sigset (sigaddset refuses glibc's 32 and 33). */
static void mask_of(uint64_t bits, sigset_t *set)
{
    int sig;

    sigemptyset(set);
    for (sig = 1; sig <= 64 && sig < NSIG; sig++)
        if (bits & FH_LAUNCH_SIGBIT(sig))
            (void)sigaddset(set, sig);
}

FH_API void fh_set_title(char *area, size_t len, char *const *argv)
{
    if (argv == NULL || argv[0] == NULL)
        return;
    set_comm(argv[0]);
    set_title(area, len, argv);
}

/* ------------------------------------------------------------------------
 * The client's process attributes.
 *
 * A program a shell starts inherits the shell's resource limits, nice
 * value, scheduling policy, CPU affinity, I/O priority and OOM score
 * adjustment (`ulimit -c unlimited`, `nice`, `chrt`, `taskset`, `ionice`,
 * `choom`).  A secondary is the template's child, so
 * fh_child_setup reads the client's, by the pid SO_PEERCRED gave (the
 * client waits on its connection meanwhile), and takes each one that
 * differs from its own, as far as the kernel lets this process:
 *  - a limit whose hard value it may not raise (no CAP_SYS_RESOURCE) keeps
 *    its own hard value, with the soft one capped there;
 *  - a nice value or policy it may not take (a higher priority than its
 *    RLIMIT_NICE / RLIMIT_RTPRIO allow, which are the client's by then)
 *    stays its own, as does SCHED_DEADLINE, which sched_setscheduler()
 *    cannot set;
 *  - an affinity with no CPU it may use (another cpuset) stays its own;
 *  - so does an I/O priority in the real-time class (CAP_SYS_ADMIN), and
 *    an oom_score_adj below what it may set (CAP_SYS_RESOURCE);
 *  - an RLIMIT_AS or RLIMIT_DATA below what the secondary already has
 *    mapped (the primary's address space, the arena) is not taken: every
 *    allocation would fail, where the same program started fresh would
 *    run.
 * Limits come first, so the nice and real-time limits that decide the rest
 * are the client's.  A client of another uid (root) whose limits this
 * process may not read (prlimit) leaves them as they are.  Only system
 * calls and string functions, no allocation and no stdio: this runs where
 * fh_child_setup runs.
 */
/* linux/ioprio.h: the target of ioprio_get/ioprio_set is one process. */
#define FH_IOPRIO_WHO_PROCESS 1

struct proc_attrs {
    struct rlimit rlim[RLIM_NLIMITS];
    unsigned rlim_ok;                   /* bit r: rlim[r] was read */
    int nice, nice_ok;
    int policy, sched_ok;               /* policy | SCHED_RESET_ON_FORK */
    struct sched_param param;
    cpu_set_t cpus;
    int cpus_ok;
    int ioprio;                         /* ioprio_get(); -1: unknown */
    int oom_adj, oom_ok;                /* /proc/PID/oom_score_adj */
};

/* A pool member's own attributes, read once while it waited
 * (fh__attrs_snapshot): a secondary compares the client's with them
 * instead of reading its own on the launch's path. */
static struct proc_attrs g_own;
static int g_own_valid;

/* The contents of a small /proc file into buf, NUL-terminated: the byte
 * count, or -1.  open, read and close only. */
static ssize_t read_small(const char *path, char *buf, size_t len)
{
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -1;
    n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return n;
}

/* v in decimal, written to end back to front; returns where it starts.
 * The caller's buffer has room for it before end (12 bytes for an int). */
static char *put_int(char *end, int v)
{
    unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;

    do
        *--end = (char)('0' + u % 10);
    while ((u /= 10) > 0);
    if (v < 0)
        *--end = '-';
    return end;
}

/* "/proc/<pid>/oom_score_adj" (pid 0: self) into buf, without stdio. */
static void oom_path(char *buf, pid_t pid)
{
    char digits[16];

    digits[sizeof digits - 1] = '\0';
    strcpy(buf, "/proc/");
    strcat(buf, pid == 0 ? "self" : put_int(digits + sizeof digits - 1, (int)pid));
    strcat(buf, "/oom_score_adj");
}

/* The oom_score_adj of pid into *adj: 1, or 0 when it cannot be read. */
static int read_oom_adj(pid_t pid, int *adj)
{
    char path[64], buf[16];
    int neg, v = 0, i = 0;

    oom_path(path, pid);
    if (read_small(path, buf, sizeof buf) < 0)
        return 0;
    neg = buf[0] == '-';
    for (i = neg; buf[i] >= '0' && buf[i] <= '9'; i++)
        v = v * 10 + (buf[i] - '0');
    if (i == neg)
        return 0;
    *adj = neg ? -v : v;
    return 1;
}

/* Write oom_score_adj; a value below what this process may set without
 * CAP_SYS_RESOURCE fails (EACCES) and changes nothing. */
static void write_oom_adj(int adj)
{
    char path[64], buf[16], *p;
    int fd;

    buf[sizeof buf - 1] = '\n';
    p = put_int(buf + sizeof buf - 1, adj);
    oom_path(path, 0);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)!write(fd, p, (size_t)(buf + sizeof buf - p));
    close(fd);
}

static void read_attrs(pid_t pid, struct proc_attrs *a)
{
    int r;

    a->rlim_ok = 0;
    for (r = 0; r < RLIM_NLIMITS; r++)
        if (prlimit(pid, (__rlimit_resource_t)r, NULL, &a->rlim[r]) == 0)
            a->rlim_ok |= 1u << r;
    errno = 0;
    a->nice = getpriority(PRIO_PROCESS, (id_t)pid);
    a->nice_ok = !(a->nice == -1 && errno != 0);
    a->policy = sched_getscheduler(pid);
    a->sched_ok = a->policy >= 0 && sched_getparam(pid, &a->param) == 0;
    a->cpus_ok = sched_getaffinity(pid, sizeof a->cpus, &a->cpus) == 0;
    a->ioprio = (int)syscall(SYS_ioprio_get, FH_IOPRIO_WHO_PROCESS, (int)pid);
    a->oom_ok = read_oom_adj(pid, &a->oom_adj);
}

void fh__attrs_snapshot(void)
{
    read_attrs(0, &g_own);
    g_own_valid = 1;
}

static void take_rlimit(int r, const struct rlimit *want, const struct rlimit *own)
{
    struct rlimit capped;

    if (want->rlim_cur == own->rlim_cur && want->rlim_max == own->rlim_max)
        return;
    if (setrlimit((__rlimit_resource_t)r, want) == 0 || errno != EPERM)
        return;
    /* Raising the hard limit takes CAP_SYS_RESOURCE (and NOFILE's stops at
     * fs.nr_open): keep ours, with the soft one at most that. */
    capped.rlim_max = own->rlim_max;
    capped.rlim_cur = want->rlim_cur < own->rlim_max ? want->rlim_cur : own->rlim_max;
    (void)setrlimit((__rlimit_resource_t)r, &capped);
}

/* What RLIMIT_AS (r) or RLIMIT_DATA counts of this process now, in bytes,
 * from /proc/self/statm (size, resident, shared, text, lib, data: pages);
 * 0 when it cannot be read.  open, read and close only. */
static unsigned long long vm_bytes(int r)
{
    char buf[256];
    unsigned long long field[6] = {0};
    int i = 0;
    char *p;

    if (read_small("/proc/self/statm", buf, sizeof buf) < 0)
        return 0;
    for (p = buf; *p != '\0' && i < 6; i++) {
        while (*p >= '0' && *p <= '9')
            field[i] = field[i] * 10 + (unsigned long long)(*p++ - '0');
        while (*p == ' ')
            p++;
    }
    return (r == RLIMIT_AS ? field[0] : field[5]) * (unsigned long long)getpagesize();
}

static void take_client_attrs(pid_t client)
{
    struct proc_attrs want, mine;
    const struct proc_attrs *own = &g_own;
    int r, saved_errno = errno;   /* what fails here is no error of setup's */

    read_attrs(client, &want);
    if (!g_own_valid) {
        read_attrs(0, &mine);
        own = &mine;
    }
    for (r = 0; r < RLIM_NLIMITS; r++) {
        if (!(want.rlim_ok & own->rlim_ok & (1u << r)))
            continue;
        /* An address-space or data limit the secondary is already over
         * (the primary's mappings, the arena: not the program's own)
         * would fail its every allocation: that one is not taken. */
        if ((r == RLIMIT_AS || r == RLIMIT_DATA) &&
            want.rlim[r].rlim_cur != RLIM_INFINITY &&
            want.rlim[r].rlim_cur <= vm_bytes(r))
            continue;
        take_rlimit(r, &want.rlim[r], &own->rlim[r]);
    }
    if (want.sched_ok && own->sched_ok &&
        (want.policy != own->policy ||
         want.param.sched_priority != own->param.sched_priority) &&
        (want.policy & ~SCHED_RESET_ON_FORK) != SCHED_DEADLINE)
        (void)sched_setscheduler(0, want.policy, &want.param);
    if (want.nice_ok && own->nice_ok && want.nice != own->nice)
        (void)setpriority(PRIO_PROCESS, 0, want.nice);
    if (want.cpus_ok && own->cpus_ok && !CPU_EQUAL(&want.cpus, &own->cpus))
        (void)sched_setaffinity(0, sizeof want.cpus, &want.cpus);
    if (want.ioprio >= 0 && own->ioprio >= 0 && want.ioprio != own->ioprio)
        (void)syscall(SYS_ioprio_set, FH_IOPRIO_WHO_PROCESS, 0, want.ioprio);
    if (want.oom_ok && own->oom_ok && want.oom_adj != own->oom_adj)
        write_oom_adj(want.oom_adj);
    errno = saved_errno;
}

/* ------------------------------------------------------------------------
 * The client's cgroup (cgroup v2; docs/systemd.md).
 *
 * `systemd-run --scope -p MemoryMax=1G forkhost-run ENTRY` puts the client
 * in a cgroup whose limits should hold the program it runs, as they would
 * hold it started from that shell.  So the secondary moves itself into the
 * client's cgroup: it writes "0" (itself) into <the cgroup2 mount><the
 * client's "0::" path>/cgroup.procs.  When the kernel refuses (no cgroup
 * v2 hierarchy, no write permission on that file or on the common
 * ancestor's, the no-internal-processes rule's EBUSY, a threaded cgroup)
 * the secondary stays in the template's cgroup and the launch goes on;
 * `forkhost doctor` says why (forkhost/_doctor.py, the same rules).
 *
 * On the launch's path a secondary only reads the client's
 * /proc/PID/cgroup and compares it with its own, which the template found
 * once with the mount point (fh__cgroup_snapshot) for every child: equal
 * (the usual case, client and primary in one session) means nothing is
 * written.  Only system calls and string functions, as for the
 * attributes above.
 */

/* The cgroup2 mount point (""), our own "0::" path, both valid once found. */
static char g_cg_mount[PATH_MAX];
static char g_cg_own[PATH_MAX];
static int g_cg_valid;

/* "/proc/<pid>/<name>" (pid 0: self) into buf (64 bytes), without stdio. */
static void proc_file(char *buf, pid_t pid, const char *name)
{
    char digits[16];

    digits[sizeof digits - 1] = '\0';
    strcpy(buf, "/proc/");
    strcat(buf, pid == 0 ? "self" : put_int(digits + sizeof digits - 1, (int)pid));
    strcat(buf, "/");
    strcat(buf, name);
}

/* spawn.h: the "0::PATH" line of /proc/PID/cgroup's text. */
FH_API int fh__cgroup_path_of(const char *text, char *out)
{
    const char *line, *end;
    size_t n;

    for (line = text; *line != '\0'; line = end + 1) {
        end = strchr(line, '\n');
        if (end == NULL)
            end = line + strlen(line);
        if (strncmp(line, "0::", 3) == 0) {
            n = (size_t)(end - line - 3);
            if (n == 0 || n >= PATH_MAX)
                return 0;
            memcpy(out, line + 3, n);
            out[n] = '\0';
            return 1;
        }
        if (*end == '\0')
            break;
    }
    return 0;
}

/* The path of pid's "0::PATH" line of /proc/PID/cgroup into out (PATH_MAX
 * bytes): 1, or 0 when there is none (no cgroup v2) or it cannot be read. */
static int read_cgroup(pid_t pid, char *out)
{
    char path[64], buf[PATH_MAX + 256];

    proc_file(path, pid, "cgroup");
    if (read_small(path, buf, sizeof buf) < 0)
        return 0;
    return fh__cgroup_path_of(buf, out);
}

/* spawn.h: one line of /proc/self/mountinfo, a cgroup2 mount point. */
FH_API int fh__cgroup2_mount_of(const char *line, char *out)
{
    const char *f[5], *dash = strstr(line, " - ");
    const char *p = line;
    size_t o = 0;
    int i;

    if (dash == NULL || strncmp(dash + 3, "cgroup2 ", 8) != 0)
        return 0;
    for (i = 0; i < 5; i++) {           /* id parent dev root mountpoint */
        f[i] = p;
        p = strchr(p, ' ');
        if (p == NULL)
            return 0;
        p++;
    }
    if (strncmp(f[3], "/ ", 2) != 0)
        return 0;
    for (p = f[4]; *p != ' ' && *p != '\0' && o + 1 < PATH_MAX; o++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' &&
            p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
            out[o] = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 4;
        } else {
            out[o] = *p++;
        }
    }
    out[o] = '\0';
    /* A mount point that does not fit is refused, not cut short: a prefix
     * of it would name another directory. */
    return o > 0 && (*p == ' ' || *p == '\0');
}

/* The first cgroup2 mount point into out (PATH_MAX bytes), "" if none:
 * /proc/self/mountinfo read a buffer at a time, line by line. */
static void find_cgroup2_mount(char *out)
{
    char buf[8192];
    size_t have = 0;
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);

    out[0] = '\0';
    if (fd < 0)
        return;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        char *line = buf, *nl;

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        while ((nl = strchr(line, '\n')) != NULL) {
            *nl = '\0';
            if (fh__cgroup2_mount_of(line, out)) {
                close(fd);
                return;
            }
            line = nl + 1;
        }
        have = (size_t)(buf + have - line);
        if (have == sizeof buf - 1)     /* a line longer than buf: skip it */
            have = 0;
        memmove(buf, line, have);
    }
    close(fd);
}

void fh__cgroup_snapshot(void)
{
    find_cgroup2_mount(g_cg_mount);
    if (!read_cgroup(0, g_cg_own))
        g_cg_own[0] = '\0';
    g_cg_valid = 1;
}

static void join_client_cgroup(pid_t client)
{
    char want[PATH_MAX], target[2 * PATH_MAX];
    int fd, saved_errno = errno;    /* a refusal is no error of setup's */

    if (!g_cg_valid)           /* a fork not from fh_template_main */
        fh__cgroup_snapshot();
    if (g_cg_mount[0] == '\0' || !read_cgroup(client, want) ||
        strcmp(want, g_cg_own) == 0)
        goto out;
    if (strlen(g_cg_mount) + strlen(want) + sizeof "/cgroup.procs" > sizeof target)
        goto out;
    strcpy(target, g_cg_mount);
    if (strcmp(want, "/") != 0)
        strcat(target, want);
    strcat(target, "/cgroup.procs");
    fd = open(target, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!write(fd, "0\n", 2);
        close(fd);
    }
out:
    errno = saved_errno;
}

/* ------------------------------------------------------------------------
 * The argument and environment areas.
 *
 * exec puts argv and the environment in the new stack, back to back, and
 * the kernel shows exactly those bytes as /proc/PID/cmdline and environ
 * (ps, psutil, debuggers).  A secondary's are the primary's.  So setup lays
 * out the client's argv and the environment the secondary gets (build_env's
 * rule) in one fresh mapping, makes `environ` point there, and moves the
 * kernel's arg_start..env_end to it with PR_SET_MM_MAP (CONFIG_CHECKPOINT_
 * RESTORE; no capability unless the executable is changed, which it is
 * not).  A kernel without it, or one that refuses, leaves the title written
 * into the primary's own argv area (fh_set_title): one line, padded.
 */

/* The environment setup laid out (NULL-terminated), or NULL. */
static char **g_env;

static int is_listen_var(const char *s)
{
    return strncmp(s, "LISTEN_PID=", 11) == 0
        || strncmp(s, "LISTEN_FDS=", 11) == 0
        || strncmp(s, "LISTEN_FDNAMES=", 15) == 0;
}

/* s is "LISTEN_PID=<pid>" exactly. */
static int listen_pid_is(const char *s, pid_t pid)
{
    char digits[16];
    const char *d;

    if (pid <= 0 || strncmp(s, "LISTEN_PID=", 11) != 0)
        return 0;
    digits[sizeof digits - 1] = '\0';
    d = put_int(digits + sizeof digits - 1, (int)pid);
    return strcmp(s + 11, d) == 0;
}

struct env_out {
    char  **ptrs;       /* NULL: only count */
    char   *buf;
    size_t  n, bytes;
};

static void env_put(struct env_out *o, const char *a, const char *b)
{
    size_t la = strlen(a), lb = b != NULL ? strlen(b) : 0;

    if (o->ptrs != NULL) {
        memcpy(o->buf + o->bytes, a, la);
        if (lb > 0)
            memcpy(o->buf + o->bytes + la, b, lb);
        o->buf[o->bytes + la + lb] = '\0';
        o->ptrs[o->n] = o->buf + o->bytes;
    }
    o->n++;
    o->bytes += la + lb + 1;
}

/*
 * The secondary's environment: the client's, in its order, entries
 * without '=' included (exec passes them).  systemd's socket-activation
 * variables (sd_listen_fds(3) checks LISTEN_PID against getpid()): with
 * the client's own fds (inherit_fds) they pass as exec passes them, a
 * LISTEN_PID naming the client becoming this process's pid, since exec
 * keeps the pid; with --fd's fds they are set for those fds; without
 * extra fds they are dropped, describing fds the secondary does not have.
 */
static void env_lay_out(const struct fh_child_spec *spec, struct env_out *o)
{
    char pid[16], fds[16];
    const char *p, *f;
    size_t i;

    pid[sizeof pid - 1] = fds[sizeof fds - 1] = '\0';
    p = put_int(pid + sizeof pid - 1, (int)getpid());
    f = put_int(fds + sizeof fds - 1, (int)spec->nextra);
    for (i = 0; spec->envp != NULL && spec->envp[i] != NULL; i++) {
        const char *e = spec->envp[i];

        if (spec->inherit_fds && listen_pid_is(e, spec->client_pid))
            env_put(o, "LISTEN_PID=", p);
        else if (spec->inherit_fds || !is_listen_var(e))
            env_put(o, e, NULL);
    }
    if (!spec->inherit_fds && spec->nextra > 0) {
        env_put(o, "LISTEN_PID=", p);
        env_put(o, "LISTEN_FDS=", f);
    }
}

/* The first n numbers of /proc/self/stat, counted from 1 as proc(5) does;
 * 0, or -1. */
static int read_stat(unsigned long long *field, int n)
{
    char buf[1024];
    const char *p;
    int i;

    if (read_small("/proc/self/stat", buf, sizeof buf) < 0 ||
        (p = strrchr(buf, ')')) == NULL)
        return -1;
    p++;                                  /* " S ppid ...": field 3 on */
    for (i = 3; i <= n; i++) {
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return -1;
        field[i] = 0;
        if (*p == '-')
            p++;
        while (*p >= '0' && *p <= '9')
            field[i] = field[i] * 10 + (unsigned long long)(*p++ - '0');
        while (*p != ' ' && *p != '\0')
            p++;
    }
    return 0;
}

/* /proc/self/stat's fields 26..47 of this image, read once (the template
 * does it before its first fork: fh__spawn_read_image). */
static unsigned long long g_image[52];
static int g_image_read;

void fh__spawn_read_image(void)
{
    if (!g_image_read && read_stat(g_image, 51) == 0)
        g_image_read = 1;
}

static int point_kernel_at(const char *arg, const char *arg_end,
                           const char *env, const char *env_end)
{
#if defined(PR_SET_MM) && defined(PR_SET_MM_MAP)
    const unsigned long long *f = g_image;
    struct prctl_mm_map map;
    long brk;

    fh__spawn_read_image();
    if (!g_image_read)
        return -1;
    brk = syscall(SYS_brk, 0);          /* the heap's end moves: now's */
    memset(&map, 0, sizeof map);
    map.start_code = f[26];
    map.end_code = f[27];
    map.start_stack = f[28];
    map.start_data = f[45];
    map.end_data = f[46];
    map.start_brk = f[47];
    map.brk = (uint64_t)brk;
    map.arg_start = (uintptr_t)arg;
    map.arg_end = (uintptr_t)arg_end;
    map.env_start = (uintptr_t)env;
    map.env_end = (uintptr_t)env_end;
    map.auxv = NULL;
    map.auxv_size = 0;
    map.exe_fd = (uint32_t)-1;            /* keep the executable */
    return prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&map,
                 (unsigned long)sizeof map, 0UL) < 0 ? -1 : 0;
#else
    (void)arg; (void)arg_end; (void)env; (void)env_end;
    return -1;
#endif
}

/* 0 when the kernel now shows the laid-out argv and environment; -1 when
 * it does not (g_env may still be set: environ uses it either way). */
static int lay_out_image(const struct fh_child_spec *spec)
{
    struct env_out o = {NULL, NULL, 0, 0};
    size_t argbytes = 0, ptrsz, size, i;
    char *base, *args;
    int saved = errno, rc;

    g_env = NULL;
    if (spec->argv == NULL || spec->argv[0] == NULL)
        return -1;
    for (i = 0; spec->argv[i] != NULL; i++)
        argbytes += strlen(spec->argv[i]) + 1;
    env_lay_out(spec, &o);
    ptrsz = (o.n + 1) * sizeof(char *);
    size = ptrsz + argbytes + o.bytes;
    base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        errno = saved;
        return -1;
    }
    args = base + ptrsz;
    for (i = 0, argbytes = 0; spec->argv[i] != NULL; i++) {
        size_t n = strlen(spec->argv[i]) + 1;

        memcpy(args + argbytes, spec->argv[i], n);
        argbytes += n;
    }
    o.ptrs = (char **)(void *)base;
    o.buf = args + argbytes;
    o.n = o.bytes = 0;
    env_lay_out(spec, &o);
    o.ptrs[o.n] = NULL;
    g_env = o.ptrs;
    rc = point_kernel_at(args, args + argbytes, o.buf, o.buf + o.bytes);
    errno = saved;
    return rc;
}

/* ------------------------------------------------------------------------
 * A terminal of its own (docs/cli.md, "Terminals").
 *
 * A client started from a terminal relays a pseudo-terminal (csrc/client/
 * tty.c): the secondary's stdio is the pty's slave, which is no session's
 * controlling terminal yet.  The secondary makes it its own, as a program
 * started by ssh -t is given one: setsid() and TIOCSCTTY, so /dev/tty
 * opens, tcgetpgrp() works and the line discipline signals its process
 * group (^C, ^Z, ^\, resize).  A terminal that is the client's own
 * controlling terminal (relaying turned off, or the Python API handing its
 * stdio over) is left alone: it belongs to the client's session.
 *
 * The new session's leader is the secondary, whose parent (the template) is
 * outside it, so its process group is orphaned: the kernel drops the stop
 * signals a terminal sends (^Z, SIGTTIN, SIGTTOU) to an orphaned group.  A
 * keeper pair fixes that, as a shell's presence does for its jobs: K1, a
 * child of the secondary in a process group of its own, and K2, K1's
 * child, in the secondary's group.  K2's parent is in another group of the
 * same session, so the group is no longer orphaned.  K2 also carries the
 * client's place on the outer terminal into the pty: when the client is a
 * background job there, the pty's foreground group becomes K1's, so a read
 * of the terminal stops the secondary with SIGTTIN and the client stops
 * the same way ("Stopped (tty input)").  The client sends K2
 * FH_TTY_KEEPER_SIGNAL when it is continued (fg, bg); K2 then looks again,
 * sets the foreground group and continues the secondary's group itself, in
 * that order.  Both block every signal, hold no fd and die with their
 * parent (PR_SET_PDEATHSIG).
 */

/* The client's process group and its terminal's foreground group
 * (/proc/PID/stat fields 5 and 8) and its controlling terminal (field 7). */
static int client_tty_state(pid_t client, pid_t *pgrp, pid_t *tpgid,
                            unsigned long *tty_nr)
{
    char path[48], digits[16], buf[512], *p;
    long f[9];
    int k;

    digits[sizeof digits - 1] = '\0';
    strcpy(path, "/proc/");
    strcat(path, put_int(digits + sizeof digits - 1, (int)client));
    strcat(path, "/stat");
    if (read_small(path, buf, sizeof buf) < 0)
        return -1;
    p = strrchr(buf, ')');      /* comm may hold anything */
    if (p == NULL || p[1] != ' ')
        return -1;
    p += 2;
    /* p is field 3 (state); read fields 4..8 as numbers */
    while (*p && *p != ' ')
        p++;
    for (k = 4; k <= 8; k++) {
        long v = 0, sign = 1;

        if (*p != ' ')
            return -1;
        p++;
        if (*p == '-') {
            sign = -1;
            p++;
        }
        if (*p < '0' || *p > '9')
            return -1;
        while (*p >= '0' && *p <= '9')
            v = v * 10 + (*p++ - '0');
        f[k] = v * sign;
    }
    *pgrp = (pid_t)f[5];
    *tty_nr = (unsigned long)f[7];
    *tpgid = (pid_t)f[8];
    return 0;
}

/* K2: the pty's foreground group follows the client's place on its own
 * terminal: the secondary's group when the client is in the foreground
 * (or gone), K1's otherwise. */
static void follow_client(pid_t client, pid_t session, pid_t k1)
{
    pid_t pgrp, tpgid, fg = session;
    unsigned long tty_nr;
    int fd;

    if (client_tty_state(client, &pgrp, &tpgid, &tty_nr) == 0 &&
        tpgid != pgrp)
        fg = k1;
    /* Every signal is blocked here, SIGTTOU too, so a change from a
     * background group is allowed. */
    fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)ioctl(fd, TIOCSPGRP, &fg);
    close(fd);
}

static __attribute__((noreturn)) void keeper_wait(void)
{
    sigset_t all;

    sigfillset(&all);
    for (;;)
        sigsuspend(&all);       /* nothing is ever delivered: SIGKILL ends it */
}

static void start_keepers(pid_t client)
{
    pid_t session = getpid(), k1;
    int ready[2];
    char b;

    if (pipe2(ready, O_CLOEXEC) < 0)
        return;
    k1 = fork();
    if (k1 == 0) {
        pid_t me = getpid(), k2;

        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != session)
            _exit(0);
        (void)setpgid(0, 0);
        (void)prctl(PR_SET_NAME, "forkhost-tty");
        k2 = fork();
        if (k2 == 0) {
            sigset_t wake;
            siginfo_t si;
            int sig;

            if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != me)
                _exit(0);
            (void)setpgid(0, session);
            if (ready[1] > 0)
                close_range_(0, (unsigned)ready[1] - 1);
            close_from(ready[1] + 1);
            follow_client(client, session, me);
            close(ready[1]);
            sigemptyset(&wake);
            sigaddset(&wake, FH_TTY_KEEPER_SIGNAL);
            for (;;) {
                sig = sigwaitinfo(&wake, &si);
                if (sig != FH_TTY_KEEPER_SIGNAL || si.si_pid != client)
                    continue;       /* only the client's wake-up */
                follow_client(client, session, me);
                (void)kill(-session, SIGCONT);
            }
        }
        close_from(0);
        keeper_wait();
    }
    close(ready[1]);
    /* EOF: K2 looked (or K1 or K2 failed): the pty is as the client's
     * place says before the program can read it. */
    if (k1 > 0)
        while (read(ready[0], &b, 1) < 0 && errno == EINTR)
            ;
    close(ready[0]);
}

/* Before the fds move (setsid() must come before the secondary leads a
 * process group): 1 when the secondary now leads a session of its own, with
 * the client's terminal as its controlling terminal; 0 when it is to take a
 * process group in the template's session as before. */
static int take_terminal(const struct fh_child_spec *spec)
{
    pid_t pgrp, tpgid;
    unsigned long ctty;
    struct termios tio;
    struct stat st;
    unsigned k, at = 1;         /* spec->fds: cwd, then the std fds */
    int fd = -1, saved_errno = errno;

    if (spec->client_pid <= 0)
        return 0;
    for (k = 0; k <= 2 && fd < 0; k++)
        if (spec->stdio_mask & (1u << k)) {
            if (ioctl(spec->fds[at], TCGETS, &tio) == 0)
                fd = spec->fds[at];
            at++;
        }
    if (fd < 0 || fstat(fd, &st) < 0 ||
        client_tty_state(spec->client_pid, &pgrp, &tpgid, &ctty) < 0 ||
        ctty == 0 || ctty == (unsigned long)st.st_rdev || setsid() < 0) {
        errno = saved_errno;
        return 0;
    }
    /* A session of its own from here, terminal or not (TIOCSCTTY fails if
     * another session has it: then none). */
    if (ioctl(fd, TIOCSCTTY, 0) == 0)
        start_keepers(spec->client_pid);
    errno = saved_errno;
    return 1;
}

FH_API int fh_child_setup(struct fh_child_spec *spec, const char **error)
{
    sigset_t set;
    struct rlimit nofile;
    int rc, lifted;

    if (error != NULL)
        *error = NULL;
    fh_init_in_secondary = 1;       /* fh_init and fh_proc_type say so */
    if (!spec_valid(spec)) {
        errno = EINVAL;
        return step_failed(error, "checking the fd list (the count does not "
                           "match stdio_mask and nextra)");
    }
    if (stderr_index(spec) >= 0)
        g_err_fd = spec->fds[stderr_index(spec)];
    /* Block everything first.  Until the dispositions are back to SIG_DFL,
     * a signal would run a template handler in the secondary (one that
     * writes to the template's wakeup fd, whose number may already be a
     * client fd).  fh_spawn_native forks with everything blocked already; a
     * Python caller cannot, so its window is the few instructions between
     * os.fork() and here.  A pool member reset its signals while it waited
     * (signals_ready): no template handler is left to run. */
    sigfillset(&set);
    if (sigprocmask(SIG_SETMASK, &set, NULL) < 0)
        return step_failed(error, "blocking signals (sigprocmask)");
    if (!spec->signals_ready && reset_dispositions() < 0)
        return step_failed(error, "resetting signal dispositions "
                           "(sigaction)");
    if (ignore_client_signals(spec->sig_ignored) < 0)
        return step_failed(error, "ignoring the signals the client ignores "
                           "(sigaction)");

    /* Its own group: a signal to the template's group (a Ctrl-C in the
     * primary's terminal, a kill -TERM -PGID) does not reach the client's
     * program, which gets the client's signals through the template.  With
     * a terminal the client relays, its own session (take_terminal). */
    if (!take_terminal(spec) && setpgid(0, 0) < 0)
        return step_failed(error, "leaving the template's process group "
                           "(setpgid)");

    lifted = lift_nofile(spec, &nofile);
    rc = setup_fds(spec, error);
    if (rc < 0)
        return rc;
    if (lifted)
        (void)setrlimit(RLIMIT_NOFILE, &nofile);

    umask((mode_t)(spec->umask & 07777));
    /* After setup_fds: a client's lower RLIMIT_NOFILE must not stop the
     * report fd from being parked at FH_REPORT_FD_MIN. */
    if (spec->client_pid > 0) {
        take_client_attrs(spec->client_pid);
        join_client_cgroup(spec->client_pid);
    }

    /* What /proc/PID/cmdline and environ show: the argv and environment
     * laid out as exec lays them out where the kernel lets us point at
     * them, else the title written into the primary's argv area. */
    if (lay_out_image(spec) == 0) {
        if (spec->argv != NULL && spec->argv[0] != NULL)
            set_comm(spec->argv[0]);
    } else {
        fh_set_title(spec->title_area, spec->title_len, spec->argv);
    }

    mask_of(spec->sig_blocked, &set);
    if (sigprocmask(SIG_SETMASK, &set, NULL) < 0)
        return step_failed(error, "setting the client's signal mask "
                           "(sigprocmask)");
    return 0;
}

/* ------------------------------------------------------------------------
 * Native secondaries.
 */

static void write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static __attribute__((noreturn)) void die(int report_fd, int code,
                                          const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One line on the secondary's stderr (the client's, once setup got that
 * far), then exit with code, reported on report_fd when there is one. */
static void die(int report_fd, int code, const char *fmt, ...)
{
    char line[FH_ERR_LEN + 64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof line)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    write_all(g_err_fd >= 0 ? g_err_fd : 2, line, (size_t)n);
    if (report_fd < 0)
        _exit(code);            /* setup failed: flush nothing of ours */
    fh_exit_report(report_fd, code);
}

/*
 * The secondary's environment as an environ array: the one setup laid out
 * (lay_out_image), else the same built with calloc (env_lay_out's rule).
 */
static char **build_env(const struct fh_child_spec *spec)
{
    struct env_out o = {NULL, NULL, 0, 0};

    if (g_env != NULL)
        return g_env;
    env_lay_out(spec, &o);
    o.ptrs = calloc(o.n + 1, sizeof(char *));
    o.buf = malloc(o.bytes + 1);
    if (o.ptrs == NULL || o.buf == NULL) {
        free(o.ptrs);
        free(o.buf);
        return NULL;
    }
    o.n = o.bytes = 0;
    env_lay_out(spec, &o);
    o.ptrs[o.n] = NULL;
    return o.ptrs;
}

/*
 * C library state a fresh program would start with, where the template's
 * differs: stdio is bound to new files, so whatever the primary had
 * buffered (unflushed output, read-ahead, a sticky EOF) is dropped, not
 * replayed into the client's files; buffering follows the new fds as at
 * startup.  The primary (Python) set LC_CTYPE from its environment; a C
 * program starts in the "C" locale.  err(3)/error(3) print the program name.
 */
static void reset_libc(char *const *argv)
{
    FILE *streams[3] = {stdin, stdout, stderr};
    const char *base;
    int i;

    for (i = 0; i < 3; i++) {
        __fpurge(streams[i]);
        clearerr(streams[i]);
    }
    setvbuf(stdout, NULL, isatty(1) ? _IOLBF : _IOFBF, BUFSIZ);
    setvbuf(stderr, NULL, _IONBF, 0);
    setlocale(LC_ALL, "C");
    optind = 1;
    opterr = 1;
    if (argv[0] != NULL) {
        program_invocation_name = argv[0];
        base = strrchr(argv[0], '/');
        program_invocation_short_name = base != NULL ? (char *)base + 1
                                                     : argv[0];
    }
}

FH_API int fh_install_environ(const struct fh_child_spec *spec)
{
    char **env = build_env(spec);

    if (env == NULL)
        return -ENOMEM;
    environ = env;
    tzset();            /* localtime_r() reads TZ only here */
    return 0;
}

FH_API int fh_spec_strings(struct fh_child_spec *spec, const char *blob,
                           size_t len, unsigned argc, unsigned envc)
{
    char **arr = calloc((size_t)argc + envc + 2, sizeof *arr);
    size_t off = 0;
    unsigned i;

    if (arr == NULL)
        return -1;
    for (i = 0; i < argc + envc; i++) {
        const char *nul = off < len ? memchr(blob + off, '\0', len - off) : NULL;

        if (nul == NULL) {
            free(arr);
            errno = EINVAL;
            return -1;
        }
        /* argv in arr[0..argc-1], NULL, then envp, NULL */
        arr[i < argc ? i : i + 1] = (char *)blob + off;
        off = (size_t)(nul - blob) + 1;
    }
    spec->argv = arr;
    spec->envp = arr + argc + 1;
    return 0;
}

FH_API void fh_spec_release(struct fh_child_spec *spec)
{
    free((void *)spec->argv);
    spec->argv = NULL;
    spec->envp = NULL;
}

FH_API void fh_exit_report(int report_fd, int code)
{
    struct fh_exit_report report = { code, 0 };
    sigset_t all;

    fflush(NULL);
    if (report_fd > 0) {
        int cfd = g_client_fd > report_fd ? g_client_fd : -1;

        /* No signal may end us between the reports and _exit: the status
         * the client and the template get must be the one we exit with. */
        sigfillset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        /* Close the client's fds first, so that whoever reads its pipes
         * sees EOF no later than the client sees the status. */
        close_range_(0U, (unsigned)report_fd - 1);
        if (cfd > report_fd + 1)
            close_range_((unsigned)report_fd + 1, (unsigned)cfd - 1);
        close_from((cfd >= 0 ? cfd : report_fd) + 1);
        /* The template hears first, then the client: once a client has its
         * status, its secondary no longer counts against --max-secondaries
         * (the client's next launch must not be refused).  The template may
         * close its copy of the connection meanwhile; ours keeps it open. */
        report.client_told = cfd >= 0;
        write_all(report_fd, (const char *)&report, sizeof report);
        if (cfd >= 0) {
            struct fh_exited ex;

            memset(&ex, 0, sizeof ex);
            ex.hdr.magic = FH_PROTO_MAGIC;
            ex.hdr.version = FH_PROTO_VERSION;
            ex.hdr.type = FH_MSG_EXITED;
            ex.hdr.len = sizeof ex;
            ex.code = code & 0xff;
            send(cfd, &ex, sizeof ex, MSG_NOSIGNAL);
            /* The send woke the client with a "sync" wake-up, which
             * queues it on this CPU on the promise that we sleep now;
             * instead _exit tears down an address space as large as the
             * primary's.  Let the client run first: it has its status. */
            sched_yield();
        }
        fh__hotset_learn();  /* the client has its status: time is ours */
    }
    _exit(code);
}

void fh__child_setup_or_exit(struct fh_child_spec *spec)
{
    const char *step = NULL;
    int rc = fh_child_setup(spec, &step);

    if (rc < 0)
        die(-1, FH_EXIT_SETUP, "forkhost: cannot set up the secondary: "
            "%s: %s", step != NULL ? step : "?", strerror(-rc));
}

FH_API void fh_run_native(struct fh_child_spec *spec, const char *path,
                          const char *symbol)
{
    static char *const no_args[] = {NULL};
    char *const *args = spec->argv != NULL ? spec->argv : no_args;
    char err[FH_ERR_LEN];
    char **argv, **env;
    fh_main_fn fn;
    int rc, code = 126;
    size_t argc = 0;

    /* Copied first: the title written by fh_child_setup() overwrites
     * title_area, and a caller's strings may live there. */
    path = strdup(path);
    symbol = symbol != NULL ? strdup(symbol) : NULL;
    if (path == NULL)
        die(-1, FH_EXIT_SETUP, "forkhost: cannot set up the secondary: "
            "copying the entry path: %s", strerror(ENOMEM));
    fh__child_setup_or_exit(spec);

    /* After setup: allocation is fine from here on (the template is
     * single-threaded, and dlopen() allocates anyway). */
    env = build_env(spec);
    while (args[argc] != NULL)
        argc++;
    /* The entry may permute argv (GNU getopt does): give it its own array. */
    argv = calloc(argc + 1, sizeof *argv);
    if (env == NULL || argv == NULL)
        die(spec->report_fd, FH_EXIT_SETUP, "forkhost: cannot set up the "
            "secondary: allocating argv and environment: %s",
            strerror(ENOMEM));
    memcpy(argv, args, argc * sizeof *argv);
    /* Before loading: a PIE takes its copies of these at load time. */
    environ = env;
    tzset();            /* the client's TZ: localtime_r() reads it only here */
    reset_libc(argv);

    fn = fh_entry_load(path, symbol, err, sizeof err, &code);
    if (fn == NULL)
        die(spec->report_fd, code, "forkhost: %s", err);
    errno = 0;
    rc = fn((int)argc, argv, environ);
    /*
     * Not exit(): it would run every atexit handler and ELF destructor in
     * the process, and most of them belong to the primary's libraries
     * (Python's, the sanitizer's, libforkhost's users'), which must not run
     * once per secondary against state they share with the primary.  The
     * entry's own run, as after a returning main(), then stdio is flushed
     * and fh_exit_report leaves by _exit.
     */
    fh_entry_finish();
    fh_exit_report(spec->report_fd, rc);
}

FH_API pid_t fh_spawn_native(struct fh_child_spec *spec,
                             const char *path, const char *symbol)
{
    sigset_t all, old;
    pid_t pid;
    int saved, e;

    /* Validate before forking: a bad spec is the caller's error, not a
     * secondary that exits 125. */
    if (!spec_valid(spec) || path == NULL) {
        errno = EINVAL;
        return -1;
    }
    /* Fork with every signal blocked, so no template handler ever runs in
     * the child; the parent restores its mask right after. */
    sigfillset(&all);
    e = pthread_sigmask(SIG_SETMASK, &all, &old);
    if (e != 0) {
        errno = e;
        return -1;
    }
    /*
     * The child gets: every mapping of the template (so of the primary, at
     * the same addresses), all its fds until fh_child_setup() closes every
     * one but the client's and the report fd (parked high, park_base), the
     * blocked mask.  It closes: the template's sockets, the received
     * originals, everything else >= 3 + nextra.  It must
     * never: return into the caller (its code is the template's loop), run
     * the template's atexit handlers (it leaves only by _exit), or touch the
     * template's connection state.
     */
    pid = fork();
    if (pid == 0)
        fh_run_native(spec, path, symbol);
    saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return pid;
}
