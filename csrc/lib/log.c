/*
 * log.c - the log lines' format and the template's counters
 * (forkhost/log.h).
 */
#include "forkhost/log.h"
#include "init_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[8] = FH_LOG_LEVEL_NAMES;

FH_API const char *fh_log_level_name(int level)
{
    return level >= 0 && level < 8 ? level_names[level] : NULL;
}

FH_API int fh_log_level_parse(const char *name)
{
    int i;

    for (i = 0; name != NULL && i < 8; i++)
        if (level_names[i] != NULL && strcmp(level_names[i], name) == 0)
            return i;
    return -1;
}

/* By the macros, not by number: the numbers differ between machines.  (Not
 * sigabbrev_np: glibc has it from 2.32 only.) */
static const char *const signal_names[] = {
    [SIGHUP] = "SIGHUP", [SIGINT] = "SIGINT", [SIGQUIT] = "SIGQUIT",
    [SIGILL] = "SIGILL", [SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT",
    [SIGBUS] = "SIGBUS", [SIGFPE] = "SIGFPE", [SIGKILL] = "SIGKILL",
    [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
    [SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM",
#ifdef SIGSTKFLT
    [SIGSTKFLT] = "SIGSTKFLT",
#endif
    [SIGCHLD] = "SIGCHLD", [SIGCONT] = "SIGCONT", [SIGSTOP] = "SIGSTOP",
    [SIGTSTP] = "SIGTSTP", [SIGTTIN] = "SIGTTIN", [SIGTTOU] = "SIGTTOU",
    [SIGURG] = "SIGURG", [SIGXCPU] = "SIGXCPU", [SIGXFSZ] = "SIGXFSZ",
    [SIGVTALRM] = "SIGVTALRM", [SIGPROF] = "SIGPROF", [SIGWINCH] = "SIGWINCH",
    [SIGIO] = "SIGIO",
#ifdef SIGPWR
    [SIGPWR] = "SIGPWR",
#endif
    [SIGSYS] = "SIGSYS",
};

FH_API const char *fh_log_signal_name(int sig, char *buf, size_t size)
{
    if (sig > 0 && (size_t)sig < sizeof signal_names / sizeof signal_names[0] &&
        signal_names[sig] != NULL)
        snprintf(buf, size, "%s", signal_names[sig]);
    else if (sig >= SIGRTMIN && sig <= SIGRTMAX)
        snprintf(buf, size, "SIGRTMIN+%d", sig - SIGRTMIN);
    else
        snprintf(buf, size, "SIG%d", sig);
    return buf;
}

FH_API int fh_log_quote(char *buf, size_t size, const char *s)
{
    return fh__json_str(buf, size, s);
}

FH_API int fh_log_write(int fd, int level, const char *prefix,
                        const char *event, const char *fields)
{
    char line[4096];
    struct timespec ts;
    struct tm tm;
    size_t len;
    int n;

    /* CLOCK_REALTIME and gmtime_r: no system call (vDSO, no time zone). */
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof line - 1,
                 "<%d>%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ forkhost[%s] %s%s%s",
                 level, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 prefix != NULL ? prefix : "", event,
                 fields != NULL && fields[0] != '\0' ? " " : "",
                 fields != NULL ? fields : "");
    if (n < 0)
        return -EINVAL;
    len = (size_t)n < sizeof line - 1 ? (size_t)n : sizeof line - 2;
    line[len++] = '\n';
    /* One write: lines of several processes never mix (O_APPEND, or a
     * pipe under PIPE_BUF). */
    return write(fd, line, len) < 0 ? -errno : 0;
}

/* ---- counters ----------------------------------------------------------- */

static const uint64_t bounds[] = FH_STATS_LATENCY_BOUNDS_US;
_Static_assert(sizeof bounds / sizeof bounds[0] == FH_STATS_LATENCY_BUCKETS - 1,
               "FH_STATS_LATENCY_BUCKETS: the bounds and +Inf");

FH_API unsigned fh_stats_latency_bucket(uint64_t us)
{
    unsigned i;

    for (i = 0; i < FH_STATS_LATENCY_BUCKETS - 1; i++)
        if (us <= bounds[i])
            return i;
    return FH_STATS_LATENCY_BUCKETS - 1;
}

FH_API uint64_t fh_stats_latency_bound(unsigned i)
{
    return i < FH_STATS_LATENCY_BUCKETS - 1 ? bounds[i] : 0;
}

FH_API void fh_stats_launch(struct fh_template_stats *s, uint64_t latency_us)
{
    /* relaxed: counters (log.h) */
    atomic_fetch_add_explicit(&s->launches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency[fh_stats_latency_bucket(latency_us)],
                              1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_sum_us, latency_us,
                              memory_order_relaxed);
}

FH_API void fh_stats_exit(struct fh_template_stats *s, int status)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);

        /* relaxed: counters (log.h) */
        atomic_fetch_add_explicit(
            &s->exit_signal[sig >= 0 && sig < FH_STATS_SIGNALS ? sig : 0], 1,
            memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&s->exit_status[WEXITSTATUS(status) & 0xFF],
                                  1, memory_order_relaxed);
    }
}
