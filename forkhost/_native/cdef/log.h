/* cffi cdef for csrc/include/forkhost/log.h: the log lines' format and the
 * template's counters (forkhost/_log.py). */

enum fh_log_level {
    FH_LOG_ERROR   = 3,
    FH_LOG_WARNING = 4,
    FH_LOG_INFO    = 6,
    FH_LOG_DEBUG   = 7,
};
#define FH_LOG_DEFAULT ...
#define FH_STATS_LATENCY_BUCKETS ...

const char *fh_log_level_name(int level);
int fh_log_level_parse(const char *name);
const char *fh_log_signal_name(int sig, char *buf, size_t size);
int fh_log_quote(char *buf, size_t size, const char *s);
int fh_log_write(int fd, int level, const char *prefix, const char *event,
                 const char *fields);
unsigned fh_stats_latency_bucket(uint64_t us);
uint64_t fh_stats_latency_bound(unsigned i);
