/*
 * forkhost/log.h - the primary's log lines and the template's counters.
 *
 * One line per event (docs/cli.md, "Log lines"), written with one write()
 * to fd 2 by whoever saw the event: the primary (start, ready, reopen,
 * stop) and the template (launch, exit, refusal, reopen).  Both format it
 * here, so the format has one source:
 *
 *   <L>2026-12-05T08:33:17.123Z forkhost[PREFIX] EVENT key=value ...
 *
 * <L> is the syslog priority (journald reads it from a service's stderr),
 * the time is UTC, values are numbers or JSON strings.
 *
 * The counters are the template's (single-threaded: plain integers, read
 * by its own INFO answer): launches, refusals, exits by status and by
 * signal, and a launch latency histogram with fixed bounds.
 */
#ifndef FORKHOST_LOG_H
#define FORKHOST_LOG_H

#include <stddef.h>
#include <stdint.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* Levels, as syslog's priorities: a line is written when its level is at
 * most the threshold. */
enum fh_log_level {
    FH_LOG_ERROR   = 3,
    FH_LOG_WARNING = 4,
    FH_LOG_INFO    = 6,
    FH_LOG_DEBUG   = 7,
};
/* The threshold when none is given (a config's 0): failures only, as
 * before there were levels. */
#define FH_LOG_DEFAULT FH_LOG_WARNING
/* Their names, indexed by level (an array of 8). */
#define FH_LOG_LEVEL_NAMES { [FH_LOG_ERROR] = "error", \
    [FH_LOG_WARNING] = "warning", [FH_LOG_INFO] = "info", \
    [FH_LOG_DEBUG] = "debug" }

/* "error", "warning", "info", "debug" for a level; NULL for another
 * number. */
FH_API const char *fh_log_level_name(int level);
/* The level of such a name, or -1. */
FH_API int fh_log_level_parse(const char *name);

/* "SIGKILL" (or "SIGRTMIN+3", or "SIG99") for a signal number, into buf. */
FH_API const char *fh_log_signal_name(int sig, char *buf, size_t size);

/* s as a JSON string, quotes included, into buf (a log line's string
 * value); its length, or -1 when it does not fit. */
FH_API int fh_log_quote(char *buf, size_t size, const char *s);

/* One line on fd: "<level>TIME forkhost[prefix] event fields\n" (fields
 * may be "" or NULL), in one write().  0, or -errno. */
FH_API int fh_log_write(int fd, int level, const char *prefix,
                        const char *event, const char *fields);

/* ---- the template's counters ------------------------------------------ */

/* The latency histogram's upper bounds (microseconds, "le"); a last bucket
 * takes the rest (+Inf).  The latency is from the moment the connection
 * was accepted to the one its launch was taken (TAKEN, then STARTED to the
 * client at once): the server's part of a launch. */
#define FH_STATS_LATENCY_BOUNDS_US \
    { 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, \
      250000, 1000000 }
#define FH_STATS_LATENCY_BUCKETS 13     /* the bounds, and +Inf */
#define FH_STATS_SIGNALS 65             /* signal numbers 0-64 */

/* Shared by every generation of a prefix's templates (a reload's old
 * template counts the exits of its last secondaries while the new one
 * counts launches: template.h), hence atomic; counts only, no ordering
 * with anything else (relaxed). */
struct fh_template_stats {
    _Atomic uint64_t launches;
    _Atomic uint64_t pool_launches;     /* ... taken by a pool member */
    _Atomic uint64_t refusals;
    _Atomic uint64_t exit_status[256];          /* exited with this status */
    _Atomic uint64_t exit_signal[FH_STATS_SIGNALS];  /* killed by this signal */
    _Atomic uint64_t latency[FH_STATS_LATENCY_BUCKETS];   /* not cumulative */
    _Atomic uint64_t latency_sum_us;
    _Atomic uint64_t reloads;           /* new generations started */
};

/* The bucket a latency falls in: the first whose bound it does not
 * exceed, or the last (+Inf). */
FH_API unsigned fh_stats_latency_bucket(uint64_t us);
/* The bound of bucket i in microseconds; 0 for the last (+Inf). */
FH_API uint64_t fh_stats_latency_bound(unsigned i);
/* Count a launch taken after latency_us. */
FH_API void fh_stats_launch(struct fh_template_stats *s, uint64_t latency_us);
/* Count an exit (a wait status as waitpid gives it). */
FH_API void fh_stats_exit(struct fh_template_stats *s, int status);

#endif /* FORKHOST_LOG_H */
