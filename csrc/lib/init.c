/*
 * init.c - fh_init(): one program, either role (forkhost/init.h).
 *
 * The role is decided here, once: in a secondary (fh_child_setup marked
 * it) fh_init only checks the options and returns; otherwise
 * --proc-type decides, "auto" by trying the prefix's lock: whoever gets it
 * is the primary, and everyone else hands itself over to that primary's
 * template with the client code forkhost-run runs (client.c).
 */
#include "forkhost.h"
#include "forkhost/init.h"
#include "forkhost/arena.h"
#include "forkhost/client.h"
#include "forkhost/entry.h"
#include "forkhost/ipc.h"
#include "forkhost/rundir.h"
#include "forkhost/template.h"
#include "forkhost/thp.h"
#include "forkhost/version.h"
#include "init_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* What fh_init made of this process. */
static struct {
    int                    done;
    enum fh_proc_type      type;
    pid_t                  pid;           /* the primary's, for atexit */
    pid_t                  template_pid;
    int                    lock_fd;
    unsigned               grace_ms;
    struct fh_prefix_paths paths;
} g = { 0, FH_PROC_NONE, 0, 0, -1, 0, { "", "" } };

static const char *prog_name(char **argv)
{
    const char *p = argv != NULL && argv[0] != NULL ? argv[0] : "forkhost";
    const char *slash = strrchr(p, '/');

    return slash != NULL && slash[1] != '\0' ? slash + 1 : p;
}

/* One line "prog: text" and exit with code (125, 126). */
__attribute__((noreturn, format(printf, 3, 4)))
static void init_fail(const char *prog, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fflush(NULL);
    fprintf(stderr, "%s: %s\n", prog, msg);
    exit(code);
}

/* "--name=value" or "--name value": the value, advancing *i; NULL when
 * argv[*i] is not --name. */
static const char *opt_value(const char *prog, int argc, char **argv, int *i,
                             const char *name)
{
    const char *a = argv[*i];
    size_t n = strlen(name);

    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        init_fail(prog, FH_EXIT_FORKHOST, "option '%s' requires a value", name);
    return argv[++*i];
}

static int dashdash_after(int argc, char **argv, int i)
{
    for (; i < argc; i++)
        if (strcmp(argv[i], "--") == 0)
            return 1;
    return 0;
}

_Static_assert(FH_POOL_MAX == 1024, "FH_POOL_INVALID names the limit");

FH_API void fh_init_parse(int argc, char **argv, struct fh_init_options *o)
{
    const char *prog = prog_name(argv);
    const char *v;
    int i;

    memset(o, 0, sizeof *o);
    o->huge_pages = FH_DEFAULT_HUGE_PAGES;
    o->proc_type = FH_PROC_AUTO;
    o->arena_size = FH_DEFAULT_ARENA_SIZE;
    o->arena_flags = FH_ARENA_HUGE_AUTO;
    o->pool = FH_DEFAULT_POOL;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "--") == 0) {
            o->consumed = i;
            return;
        }
        /* Without a "--" later, the program's arguments start here. */
        if (strncmp(a, "--", 2) != 0 && !dashdash_after(argc, argv, i))
            break;
        if ((v = opt_value(prog, argc, argv, &i, "--proc-type"))) {
            if (strcmp(v, "primary") == 0)
                o->proc_type = FH_PROC_PRIMARY;
            else if (strcmp(v, "secondary") == 0)
                o->proc_type = FH_PROC_SECONDARY;
            else if (strcmp(v, "auto") == 0)
                o->proc_type = FH_PROC_AUTO;
            else
                init_fail(prog, FH_EXIT_FORKHOST, "invalid --proc-type '%s': use "
                          "primary, secondary or auto", v);
        } else if ((v = opt_value(prog, argc, argv, &i, "--file-prefix"))) {
            o->prefix = v;
        } else if ((v = opt_value(prog, argc, argv, &i, "--runtime-dir"))) {
            if (*v == '\0')
                init_fail(prog, FH_EXIT_FORKHOST, "option '--runtime-dir' requires "
                          "a non-empty value");
            o->runtime_dir = v;
        } else if ((v = opt_value(prog, argc, argv, &i, "--arena-size"))) {
            if (fh_parse_size(v, &o->arena_size) < 0)
                init_fail(prog, FH_EXIT_FORKHOST, FH_SIZE_INVALID, v);
        } else if ((v = opt_value(prog, argc, argv, &i, "--arena-max"))) {
            if (fh_parse_size(v, &o->arena_max) < 0 || o->arena_max == 0)
                init_fail(prog, FH_EXIT_FORKHOST, FH_SIZE_INVALID, v);
        } else if ((v = opt_value(prog, argc, argv, &i, "--huge-pages"))) {
            if (strcmp(v, "auto") == 0)
                o->arena_flags = FH_ARENA_HUGE_AUTO;
            else if (strcmp(v, "always") == 0)
                o->arena_flags = FH_ARENA_HUGE_ONLY;
            else if (strcmp(v, "never") == 0)
                o->arena_flags = 0;
            if (strcmp(v, "auto") == 0 || strcmp(v, "always") == 0 ||
                strcmp(v, "never") == 0)
                o->huge_pages = v;
            else
                init_fail(prog, FH_EXIT_FORKHOST, "invalid --huge-pages '%s': use "
                          "auto, never or always", v);
        } else if ((v = opt_value(prog, argc, argv, &i, "--pool"))) {
            char *end;
            unsigned long n;

            errno = 0;
            n = strtoul(v, &end, 10);
            if (*v == '\0' || *v == '-' || *end != '\0' || errno != 0 ||
                n > FH_POOL_MAX)
                init_fail(prog, FH_EXIT_FORKHOST, FH_POOL_INVALID, v);
            o->pool = (unsigned)n;
        } else if ((v = opt_value(prog, argc, argv, &i, "--on-primary-death"))) {
            if (strcmp(v, "survive") == 0)
                o->on_primary_death = FH_ON_PRIMARY_DEATH_SURVIVE;
            else if (strcmp(v, "stop") == 0)
                o->on_primary_death = FH_ON_PRIMARY_DEATH_STOP;
            else
                init_fail(prog, FH_EXIT_FORKHOST, FH_ON_PRIMARY_DEATH_INVALID, v);
        } else {
            init_fail(prog, FH_EXIT_FORKHOST, "unrecognized option '%s' (forkhost's "
                      "options come first and end at '--': --proc-type, "
                      "--file-prefix, --runtime-dir, --arena-size, --arena-max, "
                      "--huge-pages, --pool, --on-primary-death)", a);
        }
        o->consumed = i;
    }
}

/* ------------------------------------------------------------------ */
/* the secondary started from a shell                                   */

__attribute__((noreturn))
static void hand_over(const char *prog, int argc, char **argv,
                      const struct fh_init_options *o, int primary_starting)
{
    struct fh_client c;
    char exe[PATH_MAX], err[1024];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

    if (n <= 0)
        init_fail(prog, FH_EXIT_FORKHOST, "cannot find this program's own "
                  "executable (/proc/self/exe): %s", strerror(errno));
    exe[n] = '\0';
    if (fh_entry_precheck(exe, err, sizeof err) != 0)
        init_fail(prog, 126, "cannot run as a forkhost secondary: %s", err);
    fh_client_init(&c, prog);
    c.prefix = g.paths.prefix;
    c.prefix_from = "--file-prefix";
    c.runtime_dir = g.paths.root;
    c.entry = exe;
    c.argv0 = argv[0];
    c.args = argv + 1;
    c.nargs = argc - 1;
    c.wait_for_socket = primary_starting;
    fh_client_run(&c);
}

/* ------------------------------------------------------------------ */
/* the primary                                                          */

/* config.json: what forkhost ps, attach, doctor and classic attach read
 * (the Python primary's record, forkhost/primary.py, without "python"). */
static int write_config(const struct fh_init_options *o, const char *sock,
                        const char *ipc, const struct fh_thp_report *thp,
                        int thp_on, size_t min_thp, char *err, size_t errlen)
{
    char text[20000], prefix[256], socket_s[512], ipc_s[512], lib[PATH_MAX], lib_s[PATH_MAX + 64];
    char exe[PATH_MAX], exe_s[PATH_MAX + 64], thp_s[1024];
    struct fh_arena_hdr *hdr = fh_arena_hdr();
    Dl_info di;
    struct timespec now;
    ssize_t n;

    memset(&di, 0, sizeof di);
    if (dladdr((void *)fh_init, &di) == 0 || di.dli_fname == NULL ||
        realpath(di.dli_fname, lib) == NULL)
        lib[0] = '\0';
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    if (fh__json_str(prefix, sizeof prefix, g.paths.prefix) < 0 ||
        fh__json_str(socket_s, sizeof socket_s, sock) < 0 ||
        fh__json_str(ipc_s, sizeof ipc_s, ipc) < 0 ||
        fh__json_str(lib_s, sizeof lib_s, lib) < 0 ||
        fh__json_str(exe_s, sizeof exe_s, exe) < 0) {
        snprintf(err, errlen, "the config record is too long (a path of "
                 "forkhost's or the program's)");
        return -1;
    }
    clock_gettime(CLOCK_REALTIME, &now);
    /* forkhost/_thp.py's record, which forkhost doctor reads. */
    if (!thp_on) {
        char why[160], why_s[400];

        snprintf(why, sizeof why, "FORKHOST_THP=%.48s",
                 getenv("FORKHOST_THP") ? getenv("FORKHOST_THP") : "");
        (void)fh__json_str(why_s, sizeof why_s, why);  /* 62 bytes, 6 each at most */
        snprintf(thp_s, sizeof thp_s, "{\"enabled\": false, \"why\": %s}", why_s);
    } else
        snprintf(thp_s, sizeof thp_s, "{\"enabled\": true, \"min_bytes\": %zu, "
                 "\"regions\": %llu, \"region_bytes\": %llu, \"chunk_bytes\": %llu, "
                 "\"aligned_bytes\": %llu, \"collapsed_bytes\": %llu, "
                 "\"failed_bytes\": %llu, \"sparse_bytes\": %llu, "
                 "\"seconds\": %.4f%s}", min_thp,
                 (unsigned long long)thp->regions, (unsigned long long)thp->region_bytes,
                 (unsigned long long)thp->chunk_bytes,
                 (unsigned long long)thp->aligned_bytes,
                 (unsigned long long)thp->collapsed_bytes,
                 (unsigned long long)thp->failed_bytes,
                 (unsigned long long)thp->sparse_bytes, thp->elapsed_ns / 1e9,
                 thp->unsupported ? ", \"unsupported\": \"MADV_COLLAPSE is not "
                 "supported by this kernel (Linux >= 6.1 with transparent huge pages)\""
                 : "");
    if (snprintf(text, sizeof text,
             "{\n"
             "  \"arena\": {\"base\": %llu, \"fd\": %d, \"huge_pages\": %s, "
             "\"max\": %llu, \"page_size\": %llu, \"size\": %llu},\n"
             "  \"forkhost_version\": \"%s\",\n"
             "  \"grace\": %.3f,\n"
             "  \"ipc_socket\": %s,\n"
             "  \"library\": {\"base\": %llu, \"path\": %s, \"version\": \"%s\"},\n"
             "  \"max_secondaries\": %u,\n"
             "  \"pid\": %d,\n"
             "  \"pool\": %u,\n"
             "  \"prefix\": %s,\n"
             "  \"preload\": [],\n"
             "  \"program\": {\"executable\": %s, \"init\": \"fh_init\"},\n"
             "  \"socket\": %s,\n"
             "  \"started\": %lld.%03ld,\n"
             "  \"template_pid\": %d,\n"
             "  \"thp\": %s\n"
             "}\n",
             (unsigned long long)(uintptr_t)fh_arena_base(), fh_arena_fd(),
             hdr != NULL && (hdr->flags & FH_ARENA_F_HUGE) ? "true" : "false",
             (unsigned long long)fh_arena_max(),
             hdr != NULL ? (unsigned long long)hdr->page_size : 0ull,
             (unsigned long long)fh_arena_size(), FH_VERSION_STRING,
             g.grace_ms / 1000.0, ipc_s, (unsigned long long)(uintptr_t)di.dli_fbase,
             lib_s, fh_version(), FH_DEFAULT_MAX_SECONDARIES, (int)getpid(),
             o->pool, prefix, exe_s, socket_s, (long long)now.tv_sec,
             now.tv_nsec / 1000000, (int)g.template_pid, thp_s)
        >= (int)sizeof text) {
        snprintf(err, errlen, "the config record is too long");
        return -1;
    }
    return fh_prefix_write_config(&g.paths, text, err, errlen);
}

static void at_exit(void)
{
    if (g.type == FH_PROC_PRIMARY && getpid() == g.pid)
        fh_cleanup();
}

/* Become the primary: lock_fd is the prefix's lock, ours. */
static void become_primary(const char *prog, const struct fh_init_options *o)
{
    struct fh_template_config c;
    struct fh_thp_report thp;
    struct sockaddr_un addr;
    char err[FH_RUNDIR_ERR_MAX], name[128];
    size_t min_thp = 0;
    int thp_on = fh_thp_wanted(getenv("FORKHOST_THP"), &min_thp);

    if (thp_on < 0) {
        fh_prefix_release(&g.paths, g.lock_fd);
        init_fail(prog, FH_EXIT_FORKHOST, FH_THP_INVALID, getenv("FORKHOST_THP"));
    }
    int fd, efd, keep[1];
    char ipc_path[sizeof addr.sun_path];
    struct stat st;
    mode_t old;

    snprintf(name, sizeof name, "forkhost-arena:%s", g.paths.prefix);
    if (fh_arena_create_growable(o->arena_size, o->arena_max, o->arena_flags,
                                 name) < 0) {
        int e = errno;

        fh_prefix_release(&g.paths, g.lock_fd);
        init_fail(prog, FH_EXIT_FORKHOST, "cannot create a %zu-byte arena: %s%s",
                  o->arena_size, strerror(e),
                  e != EINVAL ? "" : o->arena_max && o->arena_max < o->arena_size
                  ? FH_ARENA_MAX_TOO_SMALL : FH_ARENA_TOO_SMALL);
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s/template.sock",
                 g.paths.root, g.paths.prefix) >= (int)sizeof addr.sun_path) {
        fh_prefix_release(&g.paths, g.lock_fd);   /* fh_prefix_resolve checked */
        init_fail(prog, FH_EXIT_FORKHOST, "the socket path is too long");
    }
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    old = umask(0177);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(fd, SOMAXCONN) < 0 || stat(addr.sun_path, &st) < 0) {
        int e = errno;

        umask(old);
        fh_prefix_release(&g.paths, g.lock_fd);
        init_fail(prog, FH_EXIT_FORKHOST, "cannot listen on %s: %s", addr.sun_path,
                  strerror(e));
    }
    umask(old);

    memset(&thp, 0, sizeof thp);
    if (thp_on)
        fh_thp_collapse(min_thp, &thp);

    /* IPC: where it will be, inherited by every secondary; the template
     * reports exits on efd. */
    if (snprintf(ipc_path, sizeof ipc_path, "%s/%s/ipc.sock", g.paths.root,
                 g.paths.prefix) >= (int)sizeof ipc_path)
        efd = -1, errno = ENAMETOOLONG;   /* no longer than template.sock */
    else
        efd = fh_ipc_primary_prepare(ipc_path);
    if (efd < 0) {
        int e = errno;

        close(fd);
        fh_prefix_release(&g.paths, g.lock_fd);
        init_fail(prog, FH_EXIT_FORKHOST, "cannot prepare IPC at %s: %s", ipc_path,
                  strerror(e));
    }
    keep[0] = fh_arena_fd();
    memset(&c, 0, sizeof c);
    c.listen_fd = fd;
    c.prefix = g.paths.prefix;
    c.socket_path = addr.sun_path;
    c.socket_ino = (uint64_t)st.st_ino;
    c.max_secondaries = FH_DEFAULT_MAX_SECONDARIES;
    c.grace_ms = g.grace_ms = FH_DEFAULT_GRACE_MS;
    c.pool_size = o->pool;
    c.on_primary_death = o->on_primary_death;
    c.exit_notice_fd = efd;
    c.ready_fd = -1;
    c.keep_fds = keep;
    c.nkeep = 1;
    fh_init_main_is_primary = 1;
    g.template_pid = fh_template_fork(&c);
    if (g.template_pid < 0) {
        int e = errno;

        close(fd);
        fh_prefix_release(&g.paths, g.lock_fd);
        if (e == EBUSY)
            init_fail(prog, FH_EXIT_FORKHOST, "fh_init must run while the process "
                      "is single-threaded: the template is forked from it, and "
                      "locks other threads hold would stay held there forever");
        init_fail(prog, FH_EXIT_FORKHOST, "the template did not start: %s",
                  strerror(e));
    }
    close(fd);
    g.type = FH_PROC_PRIMARY;
    g.pid = getpid();
    if (fh_ipc_primary_start(g.template_pid) < 0) {
        int e = errno;

        fh_cleanup();
        init_fail(prog, FH_EXIT_FORKHOST, "cannot start IPC at %s: %s", ipc_path,
                  strerror(e));
    }
    if (write_config(o, addr.sun_path, ipc_path, &thp, thp_on, min_thp, err, sizeof err) < 0) {
        fh_cleanup();
        init_fail(prog, FH_EXIT_FORKHOST, "%s", err);
    }
    atexit(at_exit);
}

/* ------------------------------------------------------------------ */

/* A template listens on the prefix's socket although we hold the lock:
 * its primary died and it serves on (--on-primary-death survive). */
static int orphan_listens(const struct fh_prefix_paths *p)
{
    struct sockaddr_un addr;
    char err[FH_RUNDIR_ERR_MAX];
    int fd, ok;

    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (fh_prefix_socket_path(p, addr.sun_path, sizeof addr.sun_path, err,
                              sizeof err) < 0)
        return 0;
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    ok = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    close(fd);
    return ok;
}

FH_API int fh_init(int argc, char **argv)
{
    const char *prog = prog_name(argv);
    struct fh_init_options o;
    char err[FH_RUNDIR_ERR_MAX];
    pid_t holder = 0, stale = -1;
    int lock;

    /* A secondary inherits the primary's g (when the primary is a C
     * program that called fh_init): what counts there is its own call. */
    if (fh_init_in_secondary && g.type != FH_PROC_SECONDARY) {
        g.done = 0;
        g.pid = 0;
        g.template_pid = 0;
        g.lock_fd = -1;
    }
    if (g.done)
        init_fail(prog, FH_EXIT_FORKHOST, "fh_init was already called in this "
                  "process");
    g.done = 1;
    fh_init_parse(argc, argv, &o);
    if (fh_init_in_secondary) {
        g.type = FH_PROC_SECONDARY;
        /* The prefix is the primary's, whatever the options say. */
        snprintf(g.paths.prefix, sizeof g.paths.prefix, "%s",
                 fh_init_template_prefix);
    } else {
        if (fh_prefix_resolve(&g.paths, o.prefix, "--file-prefix", o.runtime_dir,
                              err, sizeof err) < 0)
            init_fail(prog, FH_EXIT_FORKHOST, "%s", err);
        if (o.proc_type == FH_PROC_SECONDARY)
            hand_over(prog, argc, argv, &o, 0);
        /* A dead primary's files stay until we know whether its template
         * serves on (orphaned): a C primary does not adopt it. */
        lock = fh_prefix_lock_keep(&g.paths, FH_PREFIX_KEEP_LEFTOVERS, &holder,
                                   &stale, err, sizeof err);
        if (lock == FH_PREFIX_BUSY) {
            if (o.proc_type == FH_PROC_PRIMARY)
                init_fail(prog, FH_EXIT_FORKHOST, "%s", err);
            hand_over(prog, argc, argv, &o, 1);
        }
        if (lock < 0)
            init_fail(prog, FH_EXIT_FORKHOST, "%s", err);
        if (orphan_listens(&g.paths)) {
            fh_prefix_lock_leave(lock, stale);  /* its files stay the orphan's */
            if (o.proc_type == FH_PROC_PRIMARY)
                init_fail(prog, FH_EXIT_FORKHOST, "prefix '%s' has an orphaned "
                          "template (its primary, pid %d, died): `forkhost "
                          "primary` adopts it, `forkhost stop` ends it",
                          g.paths.prefix, (int)stale);
            hand_over(prog, argc, argv, &o, 1);     /* it serves launches */
        }
        if (fh_prefix_clean_leftovers(&g.paths, 0, &stale, err, sizeof err) < 0)
            init_fail(prog, FH_EXIT_FORKHOST, "%s", err);
        g.lock_fd = lock;
        become_primary(prog, &o);
    }
    if (o.consumed > 0)
        argv[o.consumed] = argv[0];
    return o.consumed;
}

FH_API enum fh_proc_type fh_proc_type(void)
{
    return fh_init_in_secondary ? FH_PROC_SECONDARY : g.type;
}

FH_API const char *fh_file_prefix(void)
{
    return g.done && g.paths.prefix[0] != '\0' ? g.paths.prefix : NULL;
}

FH_API int fh_cleanup(void)
{
    struct timespec start, now;
    int status;

    if (g.type != FH_PROC_PRIMARY || getpid() != g.pid)
        return 0;
    g.type = FH_PROC_NONE;
    /* Members are told first (forkhost.shutdown) and get the grace. */
    fh_ipc_primary_stop(g.grace_ms);
    if (g.template_pid > 0) {
        kill(g.template_pid, SIGTERM);
        /* The template gives its secondaries the grace, then SIGKILL. */
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
            pid_t r = waitpid(g.template_pid, &status, WNOHANG);

            if (r == g.template_pid || (r < 0 && errno != EINTR))
                break;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if ((now.tv_sec - start.tv_sec) * 1000 >= (long)g.grace_ms + 5000) {
                kill(g.template_pid, SIGKILL);
                waitpid(g.template_pid, &status, 0);
                break;
            }
            poll(NULL, 0, 10);
        }
        g.template_pid = 0;
    }
    fh_prefix_release(&g.paths, g.lock_fd);
    g.lock_fd = -1;
    return 0;
}
