/*
 * test_spawn.c - fh_spawn_native() and fh_child_setup() with real processes:
 * pipes as the client's stdio and extra fds, an O_PATH cwd, an environment
 * with stale LISTEN_* variables, a umask, and a parent that ignores,
 * catches and blocks signals.  A fixture entry (built here with $CC) reports
 * what its process looks like from the inside; this test checks the report.
 * The client's connection (client_fd) is a SOCK_SEQPACKET socketpair whose
 * other end this test reads as the client would.
 *
 * Every child is reaped, and the test fails if it leaves a child or an fd.
 */
#include "forkhost/proto.h"
#include "forkhost/spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fhtest.h"

static char dir[PATH_MAX / 2];    /* fixture paths must fit PATH_MAX */
static char entry_so[PATH_MAX], entry_pie[PATH_MAX];
static char *title_area;          /* this process's argv strings */
static size_t title_len;

/* The fixture entry: one report line per property, on stdout (a pipe, so
 * fully buffered: it only arrives if the secondary flushes stdio at the
 * end). */
static const char ENTRY_C[] =
    "#define _GNU_SOURCE\n"
    "#include <dirent.h>\n"
    "#include <errno.h>\n"
    "#include <fcntl.h>\n"
    "#include <locale.h>\n"
    "#include <signal.h>\n"
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "#include <string.h>\n"
    "#include <sys/resource.h>\n"
    "#include <sys/socket.h>\n"
    "#include <sys/stat.h>\n"
    "#include <unistd.h>\n"
    "extern char **environ;\n"
    "static void print_fds(void) {\n"
    "    DIR *d = opendir(\"/proc/self/fd\");\n"
    "    struct dirent *e; int fds[64], n = 0, i, j;\n"
    "    while (d && (e = readdir(d)) != NULL)\n"
    "        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d) && n < 64)\n"
    "            fds[n++] = atoi(e->d_name);\n"
    "    if (d) closedir(d);\n"
    "    for (i = 0; i < n; i++) for (j = i + 1; j < n; j++)\n"
    "        if (fds[j] < fds[i]) { int t = fds[i]; fds[i] = fds[j]; fds[j] = t; }\n"
    "    printf(\"fds=\");\n"
    "    for (i = 0; i < n; i++) printf(\"%s%d\", i ? \",\" : \"\", fds[i]);\n"
    "    printf(\"\\n\");\n"
    "}\n"
    "static void print_file(const char *name, const char *path) {\n"
    "    char buf[4096] = \"\"; int fd = open(path, O_RDONLY); ssize_t n = 0;\n"
    "    if (fd >= 0) { n = read(fd, buf, sizeof buf - 1); close(fd); }\n"
    "    if (n < 0) n = 0;\n"
    "    buf[n] = 0; buf[strcspn(buf, \"\\n\")] = 0;\n"
    "    printf(\"%s=%s\\n\", name, buf);\n"
    "}\n"
    "static void print_read(const char *name, int fd) {\n"
    "    char buf[256] = \"\"; ssize_t n = read(fd, buf, sizeof buf - 1);\n"
    "    if (n < 0) n = 0;\n"
    "    buf[n] = 0; buf[strcspn(buf, \"\\n\")] = 0;\n"
    "    printf(\"%s=%s\\n\", name, buf);\n"
    "}\n"
    "int main(int argc, char **argv, char **envp) {\n"
    "    char buf[4096]; int i, sig; mode_t m; sigset_t set;\n"
    "    const char *lp = getenv(\"LISTEN_PID\");\n"
    "    printf(\"argc=%d\\n\", argc);\n"
    "    for (i = 0; i < argc; i++) printf(\"argv[%d]=%s\\n\", i, argv[i]);\n"
    "    printf(\"envp_is_environ=%d\\n\", envp == environ);\n"
    "    for (i = 0; envp[i]; i++) printf(\"env=%s\\n\", envp[i]);\n"
    "    printf(\"listen_pid_ok=%d\\n\", lp != NULL && atol(lp) == getpid());\n"
    "    printf(\"pgid_ok=%d\\n\", getpgid(0) == getpid());\n"
    "    printf(\"cwd=%s\\n\", getcwd(buf, sizeof buf) ? buf : strerror(errno));\n"
    "    m = umask(0); umask(m); printf(\"umask=%03o\\n\", (unsigned)m);\n"
    "    printf(\"nondefault=[\");\n"
    "    for (sig = 1; sig < NSIG; sig++) {\n"
    "        struct sigaction sa;\n"
    "        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL)\n"
    "            printf(\"%d \", sig);\n"
    "    }\n"
    "    printf(\"]\\nblocked=[\");\n"
    "    sigprocmask(SIG_BLOCK, NULL, &set);\n"
    "    for (sig = 1; sig < NSIG; sig++)\n"
    "        if (sigismember(&set, sig) == 1) printf(\"%d \", sig);\n"
    "    printf(\"]\\n\");\n"
    "    print_fds();\n"
    "    print_file(\"comm\", \"/proc/self/comm\");\n"
    "    { char c[4096]; int fd = open(\"/proc/self/cmdline\", O_RDONLY);\n"
    "      ssize_t k = fd >= 0 ? read(fd, c, sizeof c - 1) : 0, i;\n"
    "      if (fd >= 0) close(fd);\n"
    "      if (k < 0) k = 0;\n"
    "      for (i = 0; i < k; i++) if (c[i] == 0) c[i] = '|';\n"
    "      c[k] = 0; printf(\"cmdline=%s\\n\", c); }\n"
    "    printf(\"locale=%s\\n\", setlocale(LC_ALL, NULL));\n"
    "    printf(\"progname=%s\\n\", program_invocation_short_name);\n"
    "    if (fcntl(3, F_GETFD) >= 0) {\n"
    "        printf(\"extra_cloexec=%d\\n\", fcntl(3, F_GETFD) & FD_CLOEXEC);\n"
    "        print_read(\"extra\", 3);\n"
    "    }\n"
    "    if (fcntl(0, F_GETFD) >= 0) print_read(\"stdin\", 0);\n"
    "    fprintf(stderr, \"to stderr\\n\");\n"
    "    return 42;\n"
    "}\n"
    "int die_by_signal(int argc, char **argv, char **envp) {\n"
    "    raise(SIGUSR1);\n"
    "    return 1;\n"
    "}\n"
    "int exit_code(int argc, char **argv, char **envp) {\n"
    "    return argc > 1 ? atoi(argv[1]) : 0;\n"
    "}\n"
    "int show_parked(int argc, char **argv, char **envp) {\n"
    "    int fd, t; socklen_t tl; struct stat st; const char *kind;\n"
    "    for (fd = 1020; fd < 1100; fd++) {\n"
    "        if (fstat(fd, &st) < 0) continue;\n"
    "        tl = sizeof t; t = 0;\n"
    "        kind = S_ISFIFO(st.st_mode) ? \"fifo\" : !S_ISSOCK(st.st_mode) ? \"other\"\n"
    "            : getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &tl) == 0\n"
    "              && t == SOCK_SEQPACKET ? \"seqpacket\" : \"socket\";\n"
    "        printf(\"parked=%d,%s,%s\\n\", fd,\n"
    "               fcntl(fd, F_GETFD) & FD_CLOEXEC ? \"cloexec\" : \"inherited\", kind);\n"
    "    }\n"
    "    print_fds();\n"
    "    return argc > 1 ? atoi(argv[1]) : 0;\n"
    "}\n"
    "int show_nofile(int argc, char **argv, char **envp) {\n"
    "    struct rlimit rl;\n"
    "    print_fds();\n"
    "    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)\n"
    "        printf(\"nofile=%llu\\n\", (unsigned long long)rl.rlim_cur);\n"
    "    return 0;\n"
    "}\n"
    "int read_extras(int argc, char **argv, char **envp) {\n"
    "    print_fds();\n"
    "    print_read(\"fd3\", 3);\n"
    "    print_read(\"fd4\", 4);\n"
    "    return 0;\n"
    "}\n";

static const char PIE_C[] =
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "int main(int argc, char **argv, char **envp) {\n"
    "    printf(\"pie secondary argv1=%s FOO=%s\\n\", argc > 1 ? argv[1] : \"-\",\n"
    "           getenv(\"FOO\"));\n"
    "    return 0;\n"
    "}\n";

static void build_fixtures(void)
{
    const char *cc = getenv("CC");
    char cmd[4 * PATH_MAX];
    FILE *f;

    f = fopen("spawn_entry.c", "w");
    if (f == NULL || fputs(ENTRY_C, f) < 0 || fclose(f) != 0) {
        perror("spawn_entry.c");
        exit(2);
    }
    f = fopen("spawn_pie.c", "w");
    if (f == NULL || fputs(PIE_C, f) < 0 || fclose(f) != 0) {
        perror("spawn_pie.c");
        exit(2);
    }
    snprintf(entry_so, sizeof entry_so, "%s/libspawnentry.so", dir);
    snprintf(entry_pie, sizeof entry_pie, "%s/spawn-pie", dir);
    snprintf(cmd, sizeof cmd, "%s -fPIC -shared -o '%s' spawn_entry.c && "
             "%s -fPIC -pie -o '%s' spawn_pie.c",
             cc != NULL && *cc != '\0' ? cc : "cc", entry_so,
             cc != NULL && *cc != '\0' ? cc : "cc", entry_pie);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot build the fixtures: %s\n", cmd);
        exit(2);
    }
}

/* ------------------------------------------------------------------------ */

struct run {
    int status;                 /* raw wait status */
    char out[16384];
    char err[4096];
};

static void read_all(int fd, char *buf, size_t len)
{
    size_t o = 0;
    ssize_t n;

    while (o + 1 < len && (n = read(fd, buf + o, len - 1 - o)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        o += (size_t)n;
    }
    buf[o] = '\0';
}

static int reap_status(pid_t pid)
{
    int st = -1;

    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

static void xpipe(int p[2])
{
    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("pipe2");
        exit(2);
    }
}

/* A spec for a child with only a stdout: fds {cwd, out}, cwd from dir. */
static void stdout_spec(struct fh_child_spec *spec, int fds[2], int cwd, int out,
                        char *const *argv)
{
    fds[0] = cwd;
    fds[1] = out;
    memset(spec, 0, sizeof *spec);
    spec->fds = fds;
    spec->nfds = 2;
    spec->stdio_mask = 2;
    spec->argv = argv;
}

/*
 * Launch path:symbol the way the template does, with this process as the
 * template: cwd = cwd_fd (or the fixture dir), stdio = pipes for the bits
 * of stdio_mask, one extra fd when with_extra, the stdin and extra pipes
 * pre-filled, then collect stdout/stderr and reap.
 */
static void launch(struct run *r, const char *path, const char *symbol,
                   char *const *argv, char *const *envp, unsigned stdio_mask,
                   int with_extra, int cwd_fd, char *area, size_t area_len,
                   int *report)
{
    struct fh_child_spec spec;
    int in[2], out[2], err[2], extra[2], rep[2] = {-1, -1}, fds[5], nfds = 0;
    int own_cwd = cwd_fd < 0;
    pid_t pid;

    memset(r, 0, sizeof *r);
    xpipe(in);
    xpipe(out);
    xpipe(err);
    xpipe(extra);
    if (own_cwd)
        cwd_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    fds[nfds++] = cwd_fd;
    if (stdio_mask & 1)
        fds[nfds++] = in[0];
    if (stdio_mask & 2)
        fds[nfds++] = out[1];
    if (stdio_mask & 4)
        fds[nfds++] = err[1];
    if (with_extra)
        fds[nfds++] = extra[0];
    memset(&spec, 0, sizeof spec);
    spec.fds = fds;
    spec.nfds = (unsigned)nfds;
    spec.stdio_mask = stdio_mask;
    spec.nextra = with_extra ? 1 : 0;
    spec.argv = argv;
    spec.envp = envp;
    spec.title_area = area;
    spec.title_len = area_len;
    spec.umask = 027;
    if (report != NULL) {
        xpipe(rep);
        spec.report_fd = rep[1];
    }

    if (write(in[1], "stdin-data\n", 11) != 11
        || write(extra[1], "extra-data\n", 11) != 11) {
        perror("write");
        exit(2);
    }
    fflush(NULL);
    pid = fh_spawn_native(&spec, path, symbol);
    EXPECT(pid > 0, "fh_spawn_native: %s", strerror(errno));
    /* The parent keeps none of the secondary's ends: EOF on out and err
     * then means the secondary (and anything it forked) is gone. */
    close(in[0]);
    close(in[1]);
    close(out[1]);
    close(err[1]);
    close(extra[0]);
    close(extra[1]);
    if (own_cwd)
        close(cwd_fd);
    if (report != NULL)
        close(rep[1]);
    read_all(out[0], r->out, sizeof r->out);
    read_all(err[0], r->err, sizeof r->err);
    close(out[0]);
    close(err[0]);
    if (report != NULL) {
        struct fh_exit_report v;
        *report = read(rep[0], &v, sizeof v) == (ssize_t)sizeof v ? v.code : -1;
        close(rep[0]);
    }
    r->status = pid > 0 ? reap_status(pid) : -1;
}

static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    const char *p = text;

    while ((p = strstr(p, line)) != NULL) {
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return 1;
        p += n;
    }
    return 0;
}

#define EXPECT_LINE(r, line)                                               \
    EXPECT(has_line((r)->out, line), "no line [%s] in:\n%s", line, (r)->out)

static void test_full(void)
{
    static char *const argv[] = {"/opt/fixture/spawn-fixture-prog-long",
                                 "a b", "", "c", NULL};
    static char *const envp[] = {"FOO=bar", "LISTEN_PID=1", "LISTEN_FDS=7",
                                 "LISTEN_FDNAMES=stale", "EMPTY=", NULL};
    char real[PATH_MAX], line[PATH_MAX + 16], title[4096];
    struct run r;
    size_t tl;

    launch(&r, entry_so, NULL, argv, envp, 7, 1, -1, title_area, title_len,
           NULL);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 42,
          "status %#x, stderr %s", r.status, r.err);
    EXPECT_LINE(&r, "argc=4");
    EXPECT_LINE(&r, "argv[0]=/opt/fixture/spawn-fixture-prog-long");
    EXPECT_LINE(&r, "argv[1]=a b");
    EXPECT_LINE(&r, "argv[2]=");
    EXPECT_LINE(&r, "argv[3]=c");
    EXPECT_LINE(&r, "envp_is_environ=1");
    EXPECT_LINE(&r, "env=FOO=bar");
    EXPECT_LINE(&r, "env=EMPTY=");
    EXPECT_LINE(&r, "env=LISTEN_FDS=1");
    EXPECT_LINE(&r, "listen_pid_ok=1");
    EXPECT(strstr(r.out, "LISTEN_FDNAMES") == NULL
          && strstr(r.out, "LISTEN_PID=1\n") == NULL
          && strstr(r.out, "LISTEN_FDS=7") == NULL, "stale LISTEN_*: %s",
          r.out);
    EXPECT(strstr(r.out, "env=PATH=") == NULL, "template env leaked");
    EXPECT_LINE(&r, "pgid_ok=1");
    EXPECT(realpath(dir, real) != NULL, "realpath");
    snprintf(line, sizeof line, "cwd=%s", real);
    EXPECT_LINE(&r, line);
    EXPECT_LINE(&r, "umask=027");
    EXPECT_LINE(&r, "nondefault=[]");
    EXPECT_LINE(&r, "blocked=[]");
    EXPECT_LINE(&r, "fds=0,1,2,3");
    EXPECT_LINE(&r, "extra_cloexec=0");
    EXPECT_LINE(&r, "extra=extra-data");
    EXPECT_LINE(&r, "stdin=stdin-data");
    EXPECT_LINE(&r, "comm=spawn-fixture-p");      /* 15 bytes */
    EXPECT_LINE(&r, "locale=C");
    EXPECT_LINE(&r, "progname=spawn-fixture-prog-long");
    EXPECT(strcmp(r.err, "to stderr\n") == 0, "stderr [%s]", r.err);

    /* The kernel shows argv as exec lays it out (PR_SET_MM_MAP), or where
     * it does not let us, the title went into the argv area (our own argv
     * strings, as the template's would be), truncated to it and padded
     * with NULs. */
    tl = title_len - 1;
    snprintf(title, sizeof title, "%s",
             "/opt/fixture/spawn-fixture-prog-long a b  c");
    if (strlen(title) > tl)
        title[tl] = '\0';
    snprintf(line, sizeof line, "cmdline=%s", title);
    for (size_t k = strlen(line); k < strlen("cmdline=") + title_len; k++)
        line[k] = '|';
    line[strlen("cmdline=") + title_len] = '\0';
    EXPECT(has_line(r.out, "cmdline=/opt/fixture/spawn-fixture-prog-long|a b||c|")
           || has_line(r.out, line), "cmdline: %s", r.out);
}

static void test_no_stderr_no_extra(void)
{
    static char *const argv[] = {"prog", NULL};
    static char *const envp[] = {"LISTEN_FDS=2", NULL};
    struct run r;

    launch(&r, entry_so, "main", argv, envp, 3, 0, -1, NULL, 0, NULL);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 42,
          "status %#x", r.status);
    EXPECT_LINE(&r, "fds=0,1");
    EXPECT_LINE(&r, "listen_pid_ok=0");
    EXPECT(strstr(r.out, "LISTEN") == NULL, "LISTEN_* without extra fds");
    EXPECT_LINE(&r, "comm=prog");
    EXPECT(r.err[0] == '\0', "stderr [%s] though fd 2 was closed", r.err);
}

static int untouched(const char *area, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (area[i] != 'X')
            return 0;
    return 1;
}

static void test_title_area(void)
{
    static char *const argv[] = {"prog", "7", NULL};
    char *area, expect[64];
    struct run r;

    /* MAP_SHARED: the secondary's writes are visible here. */
    area = mmap(NULL, 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                -1, 0);
    EXPECT(area != MAP_FAILED, "mmap");
    if (area == MAP_FAILED)
        return;
    memset(area, 'X', 64);
    launch(&r, entry_so, "exit_code", argv, NULL, 7, 0, -1, area, 64, NULL);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 7, "status %#x",
          r.status);
    /* Where the kernel shows the argv laid out as exec lays it out
     * (PR_SET_MM_MAP), the area is left alone; else the title is in it. */
    memset(expect, 0, sizeof expect);
    memcpy(expect, "prog 7", 6);
    EXPECT(memcmp(area, expect, 64) == 0 || untouched(area, 64),
           "title [%.64s]", area);

    /* Truncated to title_len - 1 bytes, then a NUL; nothing written past. */
    memset(area, 'X', 64);
    launch(&r, entry_so, "exit_code", argv, NULL, 7, 0, -1, area, 4, NULL);
    EXPECT(memcmp(area, "pro\0XXXX", 8) == 0 || untouched(area, 64),
           "truncated title [%.8s]", area);
    munmap(area, 64);
}

static void test_exit_paths(void)
{
    static char *const argv[] = {"prog", NULL};
    char missing[PATH_MAX];
    struct run r;
    int p[2];

    /* Default dispositions: this process ignores SIGUSR1. */
    launch(&r, entry_so, "die_by_signal", argv, NULL, 7, 0, -1, NULL, 0, NULL);
    EXPECT(WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGUSR1,
          "status %#x", r.status);

    /* Entry not found: 127, one line on the client's stderr. */
    snprintf(missing, sizeof missing, "%s/no-such-entry.so", dir);
    launch(&r, missing, NULL, argv, NULL, 7, 0, -1, NULL, 0, NULL);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 127,
          "status %#x", r.status);
    EXPECT(strncmp(r.err, "forkhost: no such file: ", 24) == 0
          && strstr(r.err, missing) != NULL && strchr(r.err, '\n')
          == r.err + strlen(r.err) - 1, "stderr [%s]", r.err);
    launch(&r, entry_so, "no_such_symbol", argv, NULL, 7, 0, -1, NULL, 0,
           NULL);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 127,
          "status %#x", r.status);
    EXPECT(strstr(r.err, "'no_such_symbol'") != NULL, "stderr [%s]", r.err);

    /* Setup failure: the "cwd" is a pipe.  125, reported on the client's
     * stderr, which is in place before the fchdir. */
    xpipe(p);
    launch(&r, entry_so, NULL, argv, NULL, 7, 0, p[0], NULL, 0, NULL);
    close(p[0]);
    close(p[1]);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 125,
          "status %#x", r.status);
    EXPECT(strstr(r.err, "forkhost: cannot set up the secondary: ") == r.err
          && strstr(r.err, "fchdir") != NULL
          && strstr(r.err, strerror(ENOTDIR)) != NULL, "stderr [%s]", r.err);
}

static void test_pie(void)
{
    static char *const argv[] = {"spawn-pie", "x", NULL};
    static char *const envp[] = {"FOO=pie-env", NULL};
    struct run r;

    launch(&r, entry_pie, NULL, argv, envp, 7, 0, -1, NULL, 0, NULL);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0,
          "status %#x, stderr %s", r.status, r.err);
    EXPECT_LINE(&r, "pie secondary argv1=x FOO=pie-env");
}

/*
 * Received fds sitting exactly where others must land: run as a template
 * process of its own, with the cwd at fd 0, extras at 4 then 3 (swapped),
 * stdout far away, stdin and stderr absent, and the report fd at 2, which
 * the secondary must close as its stderr yet keep as its report fd.  A
 * naive dup2 sequence would give fd 3 and fd 4 the same file.
 */
static void test_fd_shuffle(void)
{
    static char *const argv[] = {"shuffle", NULL};
    char out[4096];
    int rep[2], st;
    pid_t tpl;

    xpipe(rep);
    fflush(NULL);
    /* Child: a stand-in template.  It gets our fds; it rearranges its own
     * freely, reports through rep[1] (moved to fd 20) and its exit status,
     * and leaves only by _exit. */
    tpl = fork();
    if (tpl == 0) {
        struct fh_child_spec spec;
        int a[2], b[2], r[2], fds[4];
        int32_t v = -1;
        pid_t pid;

        if (dup2(rep[1], 20) < 0 || pipe(a) < 0 || pipe(b) < 0
            || pipe(r) < 0 || dup2(a[0], 40) < 0 || dup2(b[0], 41) < 0
            || dup2(r[0], 42) < 0 || dup2(r[1], 2) < 0
            || write(a[1], "A", 1) != 1 || write(b[1], "B", 1) != 1)
            _exit(90);
        close(r[1]);
        close(0);
        close(3);
        close(4);
        if (open(dir, O_PATH | O_DIRECTORY) != 0   /* lowest free: 0 */
            || dup2(40, 4) != 4 || dup2(41, 3) != 3)
            _exit(91);
        fds[0] = 0;             /* cwd */
        fds[1] = 20;            /* stdout */
        fds[2] = 4;             /* extra #0: "A", must land at 3 */
        fds[3] = 3;             /* extra #1: "B", must land at 4 */
        memset(&spec, 0, sizeof spec);
        spec.fds = fds;
        spec.nfds = 4;
        spec.stdio_mask = 2;
        spec.nextra = 2;
        spec.argv = argv;
        spec.umask = 022;
        spec.report_fd = 2;     /* where the secondary's stderr is closed */
        pid = fh_spawn_native(&spec, entry_so, "read_extras");
        if (pid < 0)
            _exit(92);
        close(2);
        st = reap_status(pid);
        if (read(42, &v, sizeof v) != (ssize_t)sizeof v || v != 0)
            _exit(94);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 93);
    }
    close(rep[1]);
    read_all(rep[0], out, sizeof out);
    close(rep[0]);
    st = reap_status(tpl);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    EXPECT(has_line(out, "fds=1,3,4,1023"), "fds: %s", out);
    EXPECT(has_line(out, "fd3=A") && has_line(out, "fd4=B"), "extras: %s",
          out);
}

/* fh_child_setup refuses an fd list that does not match its mask before it
 * changes anything; fh_spawn_native refuses it before forking. */
static void test_bad_spec(void)
{
    static char *const argv[] = {"prog", NULL};
    struct fh_child_spec spec;
    int fds[2] = {0, 1}, rep[2], st, rc;
    const char *step = NULL;
    char buf[256] = "";
    pid_t pid;

    memset(&spec, 0, sizeof spec);
    spec.fds = fds;
    spec.nfds = 2;
    spec.stdio_mask = 7;        /* says 4 fds */
    spec.argv = argv;
    errno = 0;
    EXPECT(fh_spawn_native(&spec, entry_so, NULL) == -1 && errno == EINVAL,
          "bad spec forked");
    xpipe(rep);
    fflush(NULL);
    /* Child: only calls fh_child_setup on a bad spec and reports. */
    pid = fork();
    if (pid == 0) {
        rc = fh_child_setup(&spec, &step);
        dprintf(rep[1], "%d %s", rc, step ? step : "(null)");
        _exit(0);
    }
    close(rep[1]);
    read_all(rep[0], buf, sizeof buf);
    close(rep[0]);
    st = reap_status(pid);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    EXPECT(atoi(buf) == -EINVAL && strstr(buf, "fd list") != NULL, "[%s]",
          buf);
}

/* report_fd: parked at the lowest free fd >= 1023 (the entry sees it there,
 * close-on-exec), and the entry's return value arrives on it as an int32. */
static void test_report_fd(void)
{
    static char *const argv[] = {"prog", NULL};
    static char *const argv9[] = {"prog", "9", NULL};
    struct run r;
    int report = -2;

    launch(&r, entry_so, NULL, argv, NULL, 7, 1, -1, NULL, 0, &report);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 42, "status %#x",
          r.status);
    EXPECT(report == 42, "report %d", report);
    EXPECT_LINE(&r, "fds=0,1,2,3,1023");
    report = -2;
    launch(&r, entry_so, "exit_code", argv9, NULL, 7, 0, -1, NULL, 0,
           &report);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 9, "status %#x",
          r.status);
    EXPECT(report == 9, "report %d", report);
    /* A load failure is reported too, with its exit code. */
    report = -2;
    launch(&r, entry_so, "no_such_symbol", argv, NULL, 7, 0, -1, NULL, 0,
           &report);
    EXPECT(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 127, "status %#x",
          r.status);
    EXPECT(report == 127, "report %d", report);
}

/* fh_run_native in a process of our own (a pre-forked pool member), and
 * fh_exit_report and fh_set_title called directly.  Each runs in a child:
 * they never return, or they rename the caller. */
static void test_direct_calls(void)
{
    static char *const argv[] = {"/a/b/titled-program", "x", NULL};
    static char *const argv9[] = {"prog", "9", NULL};
    char out[256] = "", *area;
    int o[2], rep[2], st, cwd;
    int32_t v = -1;
    pid_t pid;

    /* fh_run_native: stdout only, exits with the entry's value. */
    xpipe(o);
    xpipe(rep);
    cwd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    fflush(NULL);
    /* Child: becomes the secondary; gets our fds, keeps o[1] and rep[1]. */
    pid = fork();
    if (pid == 0) {
        struct fh_child_spec spec;
        int fds[2];

        stdout_spec(&spec, fds, cwd, o[1], argv9);
        spec.report_fd = rep[1];
        fh_run_native(&spec, entry_so, "exit_code");
    }
    close(cwd);
    close(o[1]);
    close(rep[1]);
    read_all(o[0], out, sizeof out);
    EXPECT(read(rep[0], &v, sizeof v) == (ssize_t)sizeof v && v == 9,
          "run_native report %d", (int)v);
    close(o[0]);
    close(rep[0]);
    st = reap_status(pid);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 9, "run_native status %#x", st);

    /* fh_exit_report: flushes stdio, reports the int32, exits with it. */
    xpipe(o);
    xpipe(rep);
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        if (dup2(o[1], 1) < 0)
            _exit(90);
        setvbuf(stdout, NULL, _IOFBF, BUFSIZ);
        printf("buffered\n");
        fh_exit_report(rep[1], 300);
    }
    close(o[1]);
    close(rep[1]);
    read_all(o[0], out, sizeof out);
    v = -1;
    EXPECT(read(rep[0], &v, sizeof v) == (ssize_t)sizeof v && v == 300,
          "exit_report %d", (int)v);
    close(o[0]);
    close(rep[0]);
    st = reap_status(pid);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == (300 & 0xff), "status %#x",
          st);
    EXPECT(strcmp(out, "buffered\n") == 0, "not flushed: [%s]", out);

    /* fh_set_title: comm from argv[0]'s basename, the area as in
     * setproctitle(3). */
    area = mmap(NULL, 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                -1, 0);
    EXPECT(area != MAP_FAILED, "mmap");
    if (area == MAP_FAILED)
        return;
    memset(area, 'X', 64);
    xpipe(o);
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        char comm[64] = "";
        int fd;
        ssize_t n = 0;

        fh_set_title(area, 32, argv);
        fd = open("/proc/self/comm", O_RDONLY);
        if (fd >= 0)
            n = read(fd, comm, sizeof comm - 1);
        if (n > 0 && write(o[1], comm, (size_t)n) != n)
            _exit(91);
        _exit(0);
    }
    close(o[1]);
    read_all(o[0], out, sizeof out);
    close(o[0]);
    st = reap_status(pid);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "set_title status %#x", st);
    EXPECT(strcmp(out, "titled-program\n") == 0, "comm [%s]", out);
    EXPECT(memcmp(area, "/a/b/titled-program x\0\0\0\0\0\0\0\0\0\0\0XXXX", 36)
          == 0, "title [%.36s]", area);
    munmap(area, 64);
}

/*
 * One secondary with the client's connection: entry symbol with argv, the
 * client's stdout a pipe, report_fd a pipe, and client as client_fd (one
 * end of a SOCK_SEQPACKET pair, or 0: none).  report gets the report's two
 * int32s ({-1, -1} when short), out the secondary's stdout; returns the
 * wait status.  The secondary is reaped by then, so once the caller closes
 * its own copy of that end, a read past the records on the other sees EOF.
 */
static int launch_client(const char *symbol, char *const *argv, int client,
                         int32_t report[2], char *out, size_t outlen)
{
    struct fh_child_spec spec;
    int o[2], rep[2], fds[2];
    pid_t pid;

    xpipe(o);
    xpipe(rep);
    stdout_spec(&spec, fds, open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC), o[1], argv);
    spec.umask = 022;
    spec.report_fd = rep[1];
    spec.client_fd = client;
    fflush(NULL);
    pid = fh_spawn_native(&spec, entry_so, symbol);
    EXPECT(pid > 0, "fh_spawn_native: %s", strerror(errno));
    close(fds[0]);
    close(o[1]);
    close(rep[1]);
    read_all(o[0], out, outlen);
    close(o[0]);
    report[0] = report[1] = -1;
    if (read(rep[0], report, 2 * sizeof *report)
        != (ssize_t)(2 * sizeof *report))
        report[0] = report[1] = -1;
    close(rep[0]);
    return pid > 0 ? reap_status(pid) : -1;
}

static void xsocketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("socketpair");
        exit(2);
    }
}

/* The next record on the client's end, without blocking: its length (0 at
 * EOF, -1 with errno). */
static ssize_t client_recv(int fd, struct fh_exited *ex)
{
    char buf[256];
    ssize_t n;

    memset(ex, 0, sizeof *ex);
    n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0)
        memcpy(ex, buf, (size_t)n < sizeof *ex ? (size_t)n : sizeof *ex);
    return n;
}

#define EXPECT_EXITED(ex, n, want)                                          \
    EXPECT((n) == (ssize_t)sizeof(struct fh_exited)                          \
          && (ex).hdr.magic == FH_PROTO_MAGIC                               \
          && (ex).hdr.version == FH_PROTO_VERSION                           \
          && (ex).hdr.type == FH_MSG_EXITED                                 \
          && (ex).hdr.len == sizeof(struct fh_exited)                       \
          && (ex).hdr.nfds == 0 && (ex).hdr.reserved == 0                   \
          && (ex).code == (want) && (ex).signal == 0,                       \
          "EXITED record: %zd bytes, type %#x, len %u, code %d, signal %d", \
          (ssize_t)(n), (unsigned)(ex).hdr.type, (unsigned)(ex).hdr.len,    \
          (int)(ex).code, (int)(ex).signal)

/*
 * client_fd: the secondary itself tells the client how it ended.  With a
 * report fd and a client connection, both are parked at 1023 and above and
 * close-on-exec while the entry runs; at the end exactly one EXITED record
 * arrives on the connection and the report says {code, client_told = 1}.
 * Without a connection (client_fd <= 0, or no report fd to go with it)
 * nothing is sent and client_told is 0.  client_told says the secondary
 * has the connection (the report goes out first, so the template counts
 * the secondary finished before its client knows): a client that already
 * hung up still makes it 1, and the failed send costs no SIGPIPE.
 */
static void test_client_fd(void)
{
    static char *const argv7[] = {"prog", "7", NULL};
    char out[4096];
    struct fh_exited ex;
    int32_t report[2];
    int sv[2], st;
    ssize_t n;

    /* With the connection. */
    xsocketpair(sv);
    st = launch_client("show_parked", argv7, sv[1], report, out, sizeof out);
    close(sv[1]);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 7, "status %#x", st);
    EXPECT(report[0] == 7 && report[1] == 1, "report {%d, %d}",
          (int)report[0], (int)report[1]);
    EXPECT(has_line(out, "parked=1023,cloexec,fifo")
          && has_line(out, "parked=1024,cloexec,seqpacket")
          && has_line(out, "fds=1,1023,1024"), "parked fds:\n%s", out);
    n = client_recv(sv[0], &ex);
    EXPECT_EXITED(ex, n, 7);
    n = client_recv(sv[0], &ex);
    EXPECT(n == 0, "a second record (%zd bytes) instead of EOF", n);
    close(sv[0]);

    /* A template whose soft RLIMIT_NOFILE is the usual 1024 (1023 is the
     * highest fd it may have): both still fit, just below the limit. */
    {
        struct rlimit was, low;

        if (getrlimit(RLIMIT_NOFILE, &was) == 0 && was.rlim_max >= 1024) {
            low = was;
            low.rlim_cur = 1024;
            EXPECT(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit: %s",
                   strerror(errno));
            xsocketpair(sv);
            st = launch_client("show_parked", argv7, sv[1], report, out,
                               sizeof out);
            setrlimit(RLIMIT_NOFILE, &was);
            close(sv[1]);
            EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 7,
                   "soft NOFILE 1024: status %#x", st);
            EXPECT(report[0] == 7 && report[1] == 1,
                   "soft NOFILE 1024: report {%d, %d}", (int)report[0],
                   (int)report[1]);
            EXPECT(has_line(out, "parked=1022,cloexec,fifo")
                   && has_line(out, "parked=1023,cloexec,seqpacket")
                   && has_line(out, "fds=1,1022,1023"),
                   "soft NOFILE 1024: parked fds:\n%s", out);
            n = client_recv(sv[0], &ex);
            EXPECT_EXITED(ex, n, 7);
            close(sv[0]);
        }
    }

    /* client_fd 0, as in a zeroed spec: no connection. */
    xsocketpair(sv);
    st = launch_client("show_parked", argv7, 0, report, out, sizeof out);
    close(sv[1]);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 7, "status %#x", st);
    EXPECT(report[0] == 7 && report[1] == 0, "report {%d, %d}",
          (int)report[0], (int)report[1]);
    EXPECT(has_line(out, "parked=1023,cloexec,fifo")
          && has_line(out, "fds=1,1023"), "parked fds:\n%s", out);
    n = client_recv(sv[0], &ex);
    EXPECT(n == 0, "%zd bytes sent without a client_fd", n);
    close(sv[0]);

    /* A client that hung up before the end: the send fails without a
     * SIGPIPE (the secondary runs with default dispositions, and a SIGPIPE
     * would change the status), and the status is still the entry's. */
    xsocketpair(sv);
    close(sv[0]);
    st = launch_client("exit_code", argv7, sv[1], report, out, sizeof out);
    close(sv[1]);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 7, "status %#x", st);
    EXPECT(report[0] == 7 && report[1] == 1, "report {%d, %d}",
          (int)report[0], (int)report[1]);
}

/* The same through fh_child_setup and fh_exit_report called directly, in a
 * child of our own: setup stores the parked numbers in the spec, and the
 * record carries the status the client will see (code & 0xff) while the
 * report keeps the entry's int.  A client_fd without a report fd is not
 * kept. */
static void test_client_fd_direct(void)
{
    static char *const argv[] = {"prog", NULL};
    char out[256] = "";
    struct fh_exited ex;
    int32_t report[2] = {-1, -1};
    int o[2], rep[2], sv[2], cwd, st, with_report;
    ssize_t n;
    pid_t pid;

    for (with_report = 1; with_report >= 0; with_report--) {
        xpipe(o);
        xpipe(rep);
        xsocketpair(sv);
        cwd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        fflush(NULL);
        /* Child: becomes the secondary with our fds; reports on its stdout
         * (o[1]) what setup did, then ends through fh_exit_report. */
        pid = fork();
        if (pid == 0) {
            struct fh_child_spec spec;
            const char *step = NULL;
            int fds[2], rc;

            stdout_spec(&spec, fds, cwd, o[1], argv);
            spec.report_fd = with_report ? rep[1] : 0;
            spec.client_fd = sv[1];
            rc = fh_child_setup(&spec, &step);
            if (rc < 0)
                _exit(90);
            /* fd flags: FD_CLOEXEC (1) when parked, -1 when closed. */
            printf("report_fd=%d client_fd=%d flags=%d,%d\n",
                   spec.report_fd, spec.client_fd,
                   fcntl(spec.report_fd, F_GETFD),
                   fcntl(spec.client_fd, F_GETFD));
            fh_exit_report(spec.report_fd, 300);
        }
        close(cwd);
        close(o[1]);
        close(rep[1]);
        read_all(o[0], out, sizeof out);
        close(o[0]);
        report[0] = report[1] = -1;
        if (read(rep[0], report, sizeof report) != (ssize_t)sizeof report)
            report[0] = report[1] = -1;
        close(rep[0]);
        st = reap_status(pid);
        close(sv[1]);
        EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == (300 & 0xff),
              "status %#x", st);
        n = client_recv(sv[0], &ex);
        if (with_report) {
            EXPECT(strcmp(out, "report_fd=1023 client_fd=1024 flags=1,1\n")
                  == 0, "setup: [%s]", out);
            EXPECT(report[0] == 300 && report[1] == 1, "report {%d, %d}",
                  (int)report[0], (int)report[1]);
            EXPECT_EXITED(ex, n, 300 & 0xff);
            n = client_recv(sv[0], &ex);
            EXPECT(n == 0, "a second record (%zd bytes)", n);
        } else {
            /* Setup leaves both fields alone and closes the client's fd
             * with the template's other fds (fd 0 too: no stdin). */
            char expect[64];
            snprintf(expect, sizeof expect,
                     "report_fd=0 client_fd=%d flags=-1,-1\n", sv[1]);
            EXPECT(strcmp(out, expect) == 0, "setup: [%s]", out);
            EXPECT(report[0] == -1, "a report without a report fd");
            EXPECT(n == 0, "%zd bytes sent without a report fd", n);
        }
        close(sv[0]);
    }
}

static int write_oom(int adj)
{
    char buf[16];
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC), n, r;

    if (fd < 0)
        return -1;
    n = snprintf(buf, sizeof buf, "%d\n", adj);
    r = write(fd, buf, (size_t)n) == n ? 0 : -1;
    close(fd);
    return r;
}

static int read_oom(void)
{
    char buf[16] = "";
    int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);

    if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0)
        buf[0] = '\0';
    if (fd >= 0)
        close(fd);
    return atoi(buf);
}

/* A "client" for test_client_attrs: sets its attributes (root may raise
 * its hard limits first), optionally drops to nobody, says so on ready[1]
 * and waits for go[0] to close. */
static pid_t attrs_client(int ready[2], int go[2], rlim_t soft, rlim_t hard,
                          int nice, int as_nobody)
{
    pid_t pid;

    xpipe(ready);
    xpipe(go);
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        struct rlimit rl = { soft, hard };
        cpu_set_t one;
        char c;

        CPU_ZERO(&one);
        CPU_SET(0, &one);
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0 ||
            setpriority(PRIO_PROCESS, 0, nice) < 0 || write_oom(200) < 0 ||
            sched_setaffinity(0, sizeof one, &one) < 0 ||
            (as_nobody && (setgid(65534) < 0 || setuid(65534) < 0)))
            _exit(91);
        close(ready[0]);
        close(go[1]);
        if (write(ready[1], "r", 1) != 1)
            _exit(92);
        while (read(go[0], &c, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(ready[1]);
    close(go[0]);
    return pid;
}

/* fh_child_setup takes the client's limits, nice value and affinity as far
 * as the kernel lets the secondary: run as nobody with a hard NOFILE of
 * 2048, against a client that is nobody too with (3000, 4096), it can
 * lower but not raise the hard limit, so it gets (2048, 2048); a higher
 * nice value, a narrower affinity and a higher oom_score_adj it takes.
 * Against a root client it cannot read the limits of, its own stay, and
 * the rest is still taken.
 * Needs root, to be nobody and to raise hard limits. */
static void test_client_attrs(void)
{
    static char *const argv[] = {"prog", NULL};
    int round;

    if (geteuid() != 0) {
        printf("test_spawn: not root: test_client_attrs skipped (it needs root "
               "to become nobody and raise hard limits)\n");
        return;
    }
    for (round = 0; round < 2; round++) {
        int ready[2], go[2], o[2], cwd, st;
        char out[256] = "", c;
        pid_t client, pid;

        client = attrs_client(ready, go, 3000, 4096, 5, round == 0);
        EXPECT(read(ready[0], &c, 1) == 1, "client ready");
        close(ready[0]);
        xpipe(o);
        /* Not dir: nobody may not enter our 0700 fixture directory. */
        cwd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        fflush(NULL);
        pid = fork();
        if (pid == 0) {
            struct rlimit mine = { 1024, 2048 }, got;
            struct fh_child_spec spec;
            const char *step = NULL;
            cpu_set_t cpus;
            int fds[2];

            /* oom_score_adj 0, which nobody may raise to the client's
             * 200 (whether it may lower it depends on where root's
             * CAP_SYS_RESOURCE counts: not checked). */
            if (setrlimit(RLIMIT_NOFILE, &mine) < 0 || write_oom(0) < 0 ||
                setgid(65534) < 0 || setuid(65534) < 0 ||
                /* dumpable again, as a process that never changed uid
                 * is: /proc/self is then nobody's, oom_score_adj too */
                prctl(PR_SET_DUMPABLE, 1) < 0)
                _exit(93);
            stdout_spec(&spec, fds, cwd, o[1], argv);
            spec.client_pid = client;
            if (fh_child_setup(&spec, &step) < 0)
                _exit(94);
            getrlimit(RLIMIT_NOFILE, &got);
            sched_getaffinity(0, sizeof cpus, &cpus);
            printf("nofile=%llu,%llu nice=%d cpus=%d cpu0=%d oom=%d\n",
                   (unsigned long long)got.rlim_cur,
                   (unsigned long long)got.rlim_max,
                   getpriority(PRIO_PROCESS, 0), CPU_COUNT(&cpus),
                   CPU_ISSET(0, &cpus) ? 1 : 0, read_oom());
            fflush(stdout);
            _exit(0);
        }
        close(cwd);
        close(o[1]);
        read_all(o[0], out, sizeof out);
        close(o[0]);
        st = reap_status(pid);
        close(go[1]);
        EXPECT(WIFEXITED(reap_status(client)), "client");
        EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "secondary status %#x", st);
        if (round == 0)
            EXPECT(strcmp(out, "nofile=2048,2048 nice=5 cpus=1 cpu0=1 oom=200\n") == 0,
                  "a client of the same uid: [%s]", out);
        else
            EXPECT(strcmp(out, "nofile=1024,2048 nice=5 cpus=1 cpu0=1 oom=200\n") == 0,
                  "a root client: [%s]", out);
    }
}

static void on_term(int sig)
{
    (void)sig;
}

/* A client's fd at a number the template's soft RLIMIT_NOFILE does not
 * reach (40 under 41) arrives there, as exec would keep it, and the soft
 * limit the program sees is the template's again (the client's, once
 * client_pid is set). */
static void test_fd_above_soft_nofile(void)
{
    static char *const argv1[] = {"prog", NULL};
    static const uint32_t target[1] = {40};
    struct fh_child_spec spec;
    struct rlimit was, low;
    int o[2], x[2], rep[2], fds[3], st;
    char out[4096];
    pid_t pid;

    if (getrlimit(RLIMIT_NOFILE, &was) < 0 || was.rlim_cur < 64
        || was.rlim_max < 1100)
        return;
    xpipe(o);
    xpipe(x);
    xpipe(rep);
    fds[0] = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    fds[1] = o[1];
    fds[2] = x[0];
    memset(&spec, 0, sizeof spec);
    spec.fds = fds;
    spec.nfds = 3;
    spec.stdio_mask = 2;
    spec.nextra = 1;
    spec.fd_target = target;
    spec.argv = argv1;
    spec.report_fd = rep[1];
    low = was;
    low.rlim_cur = 41;
    fflush(NULL);
    EXPECT(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit: %s",
           strerror(errno));
    pid = fh_spawn_native(&spec, entry_so, "show_nofile");
    setrlimit(RLIMIT_NOFILE, &was);
    EXPECT(pid > 0, "fh_spawn_native: %s", strerror(errno));
    close(fds[0]);
    close(o[1]);
    close(x[0]);
    close(rep[1]);
    read_all(o[0], out, sizeof out);
    st = pid > 0 ? reap_status(pid) : -1;
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
    EXPECT(has_line(out, "fds=1,40,1023") && has_line(out, "nofile=41"),
           "fd 40 under a soft NOFILE of 41:\n%s", out);
    close(o[0]);
    close(x[1]);
    close(rep[0]);
}

/* A setup that fails before the client's stdio is in place (here: an
 * extra fd at the hard RLIMIT_NOFILE, no room above it for the report fd)
 * says why on the client's stderr, not on the template's, and exits
 * FH_EXIT_SETUP. */
static void test_setup_error_on_client_stderr(void)
{
    static char *const argv1[] = {"prog", NULL};
    static uint32_t target[1];
    struct fh_child_spec spec;
    struct rlimit was;
    int e[2], x[2], rep[2], fds[3], st;
    char buf[1024];
    pid_t pid;

    if (getrlimit(RLIMIT_NOFILE, &was) < 0 || was.rlim_max >= INT32_MAX - 1)
        return;
    target[0] = (uint32_t)was.rlim_max;
    xpipe(e);
    xpipe(x);
    xpipe(rep);
    fds[0] = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    fds[1] = e[1];
    fds[2] = x[0];
    memset(&spec, 0, sizeof spec);
    spec.fds = fds;
    spec.nfds = 3;
    spec.stdio_mask = 4;
    spec.nextra = 1;
    spec.fd_target = target;
    spec.argv = argv1;
    spec.report_fd = rep[1];
    fflush(NULL);
    pid = fh_spawn_native(&spec, entry_so, "exit_code");
    EXPECT(pid > 0, "fh_spawn_native: %s", strerror(errno));
    close(fds[0]);
    close(e[1]);
    close(x[0]);
    close(rep[1]);
    read_all(e[0], buf, sizeof buf);
    st = pid > 0 ? reap_status(pid) : -1;
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == FH_EXIT_SETUP, "status %#x",
           st);
    EXPECT(strstr(buf, "forkhost: cannot set up the secondary: keeping the "
                  "report fd") != NULL, "the client's stderr: '%s'", buf);
    close(e[0]);
    close(x[1]);
    close(rep[0]);
}

int main(int argc, char **argv)
{
    struct sigaction sa, old_term;
    sigset_t block, before, after;
    const char *base = getenv("FORKHOST_CTEST_DIR");
    int created = 0, fds, st;

    /* Our own argv strings are the title area, as the primary's are. */
    title_area = argv[0];
    title_len = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) + 1
                         - argv[0]);

    if (base != NULL && *base != '\0') {
        snprintf(dir, sizeof dir, "%s/spawn-fixtures", base);
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            perror(dir);
            return 2;
        }
    } else {
        snprintf(dir, sizeof dir, "/tmp/forkhost-test-spawn-XXXXXX");
        if (mkdtemp(dir) == NULL) {
            perror("mkdtemp");
            return 2;
        }
        created = 1;
    }
    if (chdir(dir) < 0) {
        perror(dir);
        return 2;
    }
    build_fixtures();

    /* A template with opinions the secondary must not inherit: SIGUSR1 and
     * SIGPIPE ignored, a SIGTERM handler, SIGUSR2 blocked, umask 077. */
    signal(SIGUSR1, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, &old_term);
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, NULL);
    /* glibc's sigprocmask writes only the kernel's 8 bytes of a 128-byte
     * sigset_t (and here, under the sanitizers, sigemptyset cleared no
     * more): zeroed first, the memcmp below compares no stack garbage (it
     * failed on whatever system() had left there, depending on where ASLR
     * put the stack). */
    memset(&before, 0, sizeof before);
    memset(&after, 0, sizeof after);
    sigprocmask(SIG_BLOCK, NULL, &before);
    umask(077);

    fds = count_fds();
    test_full();
    test_no_stderr_no_extra();
    test_title_area();
    test_exit_paths();
    test_pie();
    test_fd_shuffle();
    test_bad_spec();
    test_report_fd();
    test_direct_calls();
    test_client_fd();
    test_client_fd_direct();
    test_client_attrs();
    test_setup_error_on_client_stderr();
    test_fd_above_soft_nofile();

    sigprocmask(SIG_BLOCK, NULL, &after);
    EXPECT(sigismember(&after, SIGUSR2) == 1
          && memcmp(&before, &after, sizeof before) == 0,
          "fh_spawn_native changed the parent's signal mask");
    EXPECT(count_fds() == fds, "fds: %d before, %d after", fds, count_fds());
    errno = 0;
    EXPECT(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD,
          "a child was left behind");

    sigprocmask(SIG_UNBLOCK, &block, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    signal(SIGUSR1, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    if (chdir("/") == 0 && created) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", dir);
    }
    fprintf(stderr, "test_spawn: %s (%d failures)\n",
            fht_failures ? "FAILED" : "ok", fht_failures);
    return fht_failures ? 1 : 0;
}
