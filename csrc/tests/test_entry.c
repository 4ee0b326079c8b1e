/*
 * test_entry.c - fh_entry_load() against real files built
 * here with $CC: shared objects, PIEs (plain, -rdynamic, stripped, with TLS,
 * with copy relocations, static, using $ORIGIN), a non-PIE executable, a .o,
 * a text file, a directory and a missing file.
 *
 * Every load runs in a forked child, as it does in a secondary: a load is
 * RTLD_GLOBAL and never undone, and the entries print to stdout.  The child
 * reports over a pipe; the parent reaps it and checks it left no fd behind.
 */
#include "forkhost/entry.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fhtest.h"

extern char **environ;

static char dir[PATH_MAX / 2];  /* fixture paths must fit PATH_MAX */

static const char *fixture(const char *name)
{
    static char paths[8][PATH_MAX];
    static unsigned next;
    char *p = paths[next++ % 8];

    snprintf(p, PATH_MAX, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(fixture(name), "w");

    if (f == NULL) {
        perror(name);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* Run a shell command in the fixture directory; its exit status. */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
    char cmd[4096];
    const char *cc = getenv("CC");
    int n, rc;
    va_list ap;

    n = snprintf(cmd, sizeof cmd, "cd '%s' && CC='%s' && ", dir,
                 cc != NULL && *cc != '\0' ? cc : "cc");
    va_start(ap, fmt);
    vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
    va_end(ap);
    rc = system(cmd);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* Fixture sources.  Built without sanitizers: a secondary's entry is an
 * ordinary program; it calls into this ASan process's libc and malloc. */

static const char LIB_C[] =
    "#include <stdio.h>\n"
    "static __thread int counter = 40;\n"
    "int main(int argc, char **argv, char **envp) {\n"
    "    printf(\"so main argc=%d argv1=%s env0=%s\\n\", argc,\n"
    "           argc > 1 ? argv[1] : \"-\", envp[0] ? envp[0] : \"-\");\n"
    "    return 7;\n"
    "}\n"
    "int alt(int argc, char **argv, char **envp) {\n"
    "    counter += 2;\n"
    "    printf(\"so alt tls=%d\\n\", counter);\n"
    "    return 9;\n"
    "}\n";

static const char UNDEF_C[] =
    "void fh_test_missing_fn(void);\n"
    "int main(void) { fh_test_missing_fn(); return 0; }\n";

/* A plain program: printf, stderr, environ, getenv. */
static const char HELLO_C[] =
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "extern char **environ;\n"
    "int main(int argc, char **argv, char **envp) {\n"
    "    printf(\"hello pie argc=%d argv1=%s env=%s same_env=%d\\n\", argc,\n"
    "           argc > 1 ? argv[1] : \"-\", getenv(\"FH_TEST_VAR\"),\n"
    "           environ == envp);\n"
    "    fprintf(stderr, \"hello pie stderr\\n\");\n"
    "    return 3;\n"
    "}\n";

/* getopt: optarg and optind are libc variables. */
static const char GETOPT_C[] =
    "#include <stdio.h>\n"
    "#include <unistd.h>\n"
    "int alt(int argc, char **argv, char **envp) {\n"
    "    printf(\"pie alt\\n\");\n"
    "    return 11;\n"
    "}\n"
    "int main(int argc, char **argv, char **envp) {\n"
    "    const char *a = \"-\";\n"
    "    int c;\n"
    "    while ((c = getopt(argc, argv, \"a:\")) != -1)\n"
    "        if (c == 'a') a = optarg;\n"
    "    printf(\"getopt pie a=%s rest=%s\\n\", a,\n"
    "           optind < argc ? argv[optind] : \"-\");\n"
    "    return 5;\n"
    "}\n";

static const char TLS_C[] =
    "#include <stdio.h>\n"
    "static __thread int x = 5;\n"
    "int main(void) { x++; printf(\"x=%d\\n\", x); return x; }\n";

static const char DEP_C[] =
    "int fh_dep_value(void) { return 21; }\n";

static const char ORIGIN_C[] =
    "#include <stdio.h>\n"
    "int fh_dep_value(void);\n"
    "int main(void) { printf(\"dep=%d\\n\", fh_dep_value());\n"
    "                 return fh_dep_value() * 2; }\n";

/* Work left for exit(): its order, exec'd, is main, second, first, dtor. */
static const char ATEXIT_C[] =
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "static int ran;\n"
    "static void first(void) { printf(\"first \"); }\n"
    "static void second(void) { printf(\"second \"); }\n"
    "__attribute__((destructor)) static void dtor(void)\n"
    "{ if (ran) printf(\"dtor\\n\"); }\n"
    "int main(void) { ran = 1; atexit(first); atexit(second);\n"
    "                 printf(\"main \"); return 4; }\n";

static void build_fixtures(int *have_static_pie, int *have_m32)
{
    write_file("lib.c", LIB_C);
    write_file("undef.c", UNDEF_C);
    write_file("hello.c", HELLO_C);
    write_file("getopt.c", GETOPT_C);
    write_file("tls.c", TLS_C);
    write_file("dep.c", DEP_C);
    write_file("origin.c", ORIGIN_C);
    write_file("atexit.c", ATEXIT_C);
    write_file("script.py", "print('not ELF')\n");
    if (sh("$CC -fPIC -shared -o libentry.so lib.c"
           " && $CC -fPIC -shared -o libundef.so undef.c"
           " && $CC -fPIE -pie -o hello-pie hello.c"
           " && $CC -fPIC -pie -o getopt-pic getopt.c"
           " && $CC -fPIC -pie -rdynamic -o getopt-rdynamic getopt.c"
           " && $CC -fPIC -pie -s -o getopt-stripped getopt.c"
           " && $CC -fPIE -pie -o getopt-copyreloc getopt.c"
           " && $CC -fPIE -pie -o tls-pie tls.c"
           " && $CC -fPIE -pie -o atexit-pie atexit.c"
           " && $CC -fPIC -shared -o libatexit.so atexit.c"
           " && $CC -fPIE -pie -rdynamic -s -o atexit-stripped atexit.c"
           " && $CC -fno-pie -no-pie -o hello-nopie hello.c"
           " && $CC -fPIC -c -o hello.o hello.c"
           " && mkdir -p sub subdir.d && rm -f fifo && mkfifo fifo"
           " && $CC -fPIC -shared -Wl,-soname,libfhdep.so"
           "    -o sub/libfhdep.so dep.c"
           " && $CC -fPIC -pie -o origin-pie origin.c -Lsub -lfhdep"
           "    '-Wl,-rpath,$ORIGIN/sub'") != 0) {
        fprintf(stderr, "cannot build the fixtures in %s\n", dir);
        exit(2);
    }
    /* Optional toolchain parts: skip what they cover when missing. */
    *have_static_pie = sh("$CC -static-pie -fPIE -o hello-static-pie hello.c"
                          " 2>/dev/null") == 0;
    *have_m32 = sh("$CC -m32 -c -o hello32.o hello.c 2>/dev/null") == 0;
}

/* ------------------------------------------------------------------------ */

struct result {
    int loaded;                 /* fh_entry_load returned a function */
    int code;                   /* its *exit_code when it did not */
    char err[1024];
    char out[4096];             /* the entry's stdout and stderr */
    char name[PATH_MAX];        /* dladdr() name of the loaded function */
    int fds_before, fds_after;  /* in the child, around fh_entry_load */
    int status;                 /* exit status: the entry's return value */
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
    /* Drain what did not fit, so the writer never blocks. */
    {
        char sink[512];
        while (read(fd, sink, sizeof sink) > 0)
            ;
    }
}

/*
 * Load path:symbol in a child (optionally after chdir(cwd)), call it with
 * argv and a one-variable environment, collect what happened.  With second,
 * the child first loads and calls that entry too (two loads in one process).
 */
static void run_case(struct result *r, const char *cwd, const char *path,
                     const char *symbol, char **argv, const char *second)
{
    static char *envp[] = {"FH_TEST_VAR=hello-env", NULL};
    int st[2], out[2], argc = 0, wst;
    char status[2048];
    pid_t pid;

    memset(r, 0, sizeof *r);
    while (argv[argc] != NULL)
        argc++;
    if (pipe(st) < 0 || pipe(out) < 0) {
        perror("pipe");
        exit(2);
    }
    fflush(NULL);
    /* Child: gets both pipes' write ends, its copy of the test; closes the
     * read ends; always leaves by _exit (no ASan leak pass in a child that
     * loaded code it never unloads). */
    pid = fork();
    if (pid == 0) {
        char err[1024];
        int code = -1, before, after;
        fh_main_fn fn;
        Dl_info di;

        close(st[0]);
        close(out[0]);
        if (cwd != NULL && chdir(cwd) < 0)
            _exit(90);
        environ = envp;         /* as fh_spawn_native does before loading */
        if (second != NULL) {
            fn = fh_entry_load(second, NULL, err, sizeof err, &code);
            if (fn == NULL) {
                dprintf(st[1], "E %d first load: %s", code, err);
                _exit(0);
            }
            dup2(out[1], 1);
            dup2(out[1], 2);
            fn(argc, argv, envp);
            fflush(stdout);
        }
        before = count_fds();
        fn = fh_entry_load(path, symbol, err, sizeof err, &code);
        after = count_fds();
        if (fn == NULL) {
            dprintf(st[1], "E %d %s", code, err);
            _exit(0);
        }
        if (dladdr((void *)fn, &di) == 0 || di.dli_fname == NULL)
            di.dli_fname = "?";
        dprintf(st[1], "L %d %d %s", before, after, di.dli_fname);
        close(st[1]);
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(out[1]);
        code = fn(argc, argv, envp);
        fh_entry_finish();      /* what fh_run_native does after main */
        fflush(stdout);
        _exit(code);
    }
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    close(st[1]);
    close(out[1]);
    read_all(st[0], status, sizeof status);
    read_all(out[0], r->out, sizeof r->out);
    close(st[0]);
    close(out[0]);
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR)
        ;
    r->status = WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + WTERMSIG(wst);
    if (status[0] == 'L') {
        r->loaded = 1;
        sscanf(status, "L %d %d %4095[^\n]", &r->fds_before, &r->fds_after,
               r->name);
    } else if (status[0] == 'E') {
        char *msg = strchr(status + 2, ' ');
        r->code = atoi(status + 2);
        snprintf(r->err, sizeof r->err, "%s", msg != NULL ? msg + 1 : "");
    } else {
        snprintf(r->err, sizeof r->err, "child died before reporting "
                 "(status %d)", r->status);
    }
}

/* The load must succeed, return `status` and print `out`. */
static void expect_run(const char *what, const char *cwd, const char *path,
                       const char *symbol, char **argv, const char *second,
                       int status, const char *out)
{
    struct result r;

    run_case(&r, cwd, path, symbol, argv, second);
    EXPECT(r.loaded, "%s: not loaded: %d %s", what, r.code, r.err);
    if (!r.loaded)
        return;
    EXPECT(r.status == status, "%s: exit %d, expected %d", what, r.status,
          status);
    EXPECT(strstr(r.out, out) != NULL, "%s: stdout %s, expected %s", what,
          r.out, out);
    EXPECT(r.fds_before == r.fds_after, "%s: fh_entry_load left %d fds open",
          what, r.fds_after - r.fds_before);
}

/* The load must fail with code and a one-line message containing each of
 * the NULL-terminated substrings. */
static void expect_fail(const char *what, const char *cwd, const char *path,
                        const char *symbol, int code, ...)
{
    static char *argv[] = {"prog", NULL};
    struct result r;
    const char *sub;
    va_list ap;

    run_case(&r, cwd, path, symbol, argv, NULL);
    EXPECT(!r.loaded, "%s: loaded, expected failure %d", what, code);
    if (r.loaded)
        return;
    EXPECT(r.code == code, "%s: code %d, expected %d (%s)", what, r.code, code,
          r.err);
    EXPECT(strchr(r.err, '\n') == NULL && r.err[0] != '\0'
          && r.err[strlen(r.err) - 1] != ' ', "%s: not one line: [%s]", what,
          r.err);
    va_start(ap, code);
    while ((sub = va_arg(ap, const char *)) != NULL)
        EXPECT(strstr(r.err, sub) != NULL, "%s: message [%s] lacks [%s]", what,
              r.err, sub);
    va_end(ap);
}

static void test_loads(int have_static_pie, int have_m32)
{
    static char *argv_so[] = {"libentry.so", "first", NULL};
    static char *argv_pie[] = {"hello-pie", "one", NULL};
    static char *argv_getopt[] = {"getopt-pic", "-a", "foo", "bar", NULL};
    static char *argv_plain[] = {"prog", NULL};
    char real[PATH_MAX];
    struct result r;

    /* Shared objects: main by default, another symbol, dynamic TLS. */
    expect_run("so main", NULL, fixture("libentry.so"), NULL, argv_so, NULL,
               7, "so main argc=2 argv1=first env0=FH_TEST_VAR=hello-env");
    expect_run("so alt", NULL, fixture("libentry.so"), "alt", argv_so, NULL,
               9, "so alt tls=42");
    expect_run("so by bare name in cwd", dir, "libentry.so", "", argv_so,
               NULL, 7, "so main argc=2");

    /* PIEs: a plain -fPIE one with printf/stderr/environ; getopt in a
     * -fPIC one; a symbol found through .dynsym, through .symtab. */
    expect_run("pie main", NULL, fixture("hello-pie"), NULL, argv_pie, NULL,
               3, "hello pie argc=2 argv1=one env=hello-env same_env=1");
    run_case(&r, NULL, fixture("hello-pie"), NULL, argv_pie, NULL);
    EXPECT(strstr(r.out, "hello pie stderr\n") != NULL, "pie stderr: %s",
          r.out);
    expect_run("pie getopt", NULL, fixture("getopt-pic"), "main",
               argv_getopt, NULL, 5, "getopt pie a=foo rest=bar");
    expect_run("pie alt via .dynsym", NULL, fixture("getopt-rdynamic"), "alt",
               argv_plain, NULL, 11, "pie alt");
    expect_run("pie main via .dynsym", NULL, fixture("getopt-rdynamic"), NULL,
               argv_getopt, NULL, 5, "a=foo");
    expect_run("pie alt via .symtab", NULL, fixture("getopt-pic"), "alt",
               argv_plain, NULL, 11, "pie alt");
    /* Two PIE copies in one process (the same memfd number twice). */
    expect_run("second pie", NULL, fixture("getopt-pic"), NULL, argv_getopt,
               fixture("hello-pie"), 5, "a=foo");
    /* $ORIGIN in RUNPATH, and the copy is named after its real file. */
    run_case(&r, NULL, fixture("origin-pie"), NULL, argv_plain, NULL);
    EXPECT(r.loaded && r.status == 42 && strstr(r.out, "dep=21") != NULL,
          "origin: %d %s status %d out %s", r.code, r.err, r.status, r.out);
    EXPECT(realpath(fixture("origin-pie"), real) != NULL
          && strcmp(r.name, real) == 0, "origin: dladdr name %s", r.name);

    /* After main: the entry's atexit handlers, then its destructors, as
     * exit() runs them; stripped too (its __dso_handle found by value). */
    expect_run("pie exit handlers", NULL, fixture("atexit-pie"), NULL,
               argv_plain, NULL, 4, "main second first dtor\n");
    expect_run("so exit handlers", NULL, fixture("libatexit.so"), NULL,
               argv_plain, NULL, 4, "main second first dtor\n");
    expect_run("stripped exit handlers", NULL, fixture("atexit-stripped"),
               NULL, argv_plain, NULL, 4, "main second first dtor\n");
#if defined(__x86_64__)
    /* Stock executables: main from _start, copy relocations bound. */
    expect_run("stripped pie", NULL, fixture("getopt-stripped"), NULL,
               argv_getopt, NULL, 5, "getopt pie a=foo rest=bar\n");
    expect_run("copy relocations", NULL, fixture("getopt-copyreloc"), NULL,
               argv_getopt, NULL, 5, "getopt pie a=foo rest=bar\n");
    expect_run("copy relocations, second pie", NULL,
               fixture("getopt-copyreloc"), NULL, argv_getopt,
               fixture("hello-pie"), 5, "getopt pie a=foo rest=bar\n");
#endif

    /* Failures. */
    expect_fail("missing file", NULL, fixture("no-such-file"), NULL, 127,
                "no such file: ", fixture("no-such-file"), NULL);
    expect_fail("missing symbol", NULL, fixture("libentry.so"), "nope", 127,
                "'nope'", fixture("libentry.so"), NULL);
    expect_fail("symbol only in a dependency", NULL, fixture("libentry.so"),
                "printf", 127, "'printf'", "libc", NULL);
    expect_fail("pie missing symbol", NULL, fixture("getopt-pic"), "nope",
                127, "'nope'", NULL);
#if defined(__x86_64__)
    expect_fail("stripped pie, not main", NULL, fixture("getopt-stripped"),
                "alt", 127, "'alt'", "stripped", "only main", "-rdynamic",
                "-Wl,--export-dynamic-symbol=alt", NULL);
#else
    expect_fail("stripped pie", NULL, fixture("getopt-stripped"), NULL, 127,
                "'main'", "stripped", "-rdynamic",
                "-Wl,--export-dynamic-symbol=main", NULL);
#endif
    expect_fail("dlopen error", NULL, fixture("libundef.so"), NULL, 126,
                "cannot load", "fh_test_missing_fn", NULL);
    expect_fail("TLS pie", NULL, fixture("tls-pie"), NULL, 126,
                "thread-local", "-shared", NULL);
#if !defined(__x86_64__)
    expect_fail("copy relocations", NULL, fixture("getopt-copyreloc"), NULL,
                126, "copy relocation", "optarg", "-fPIC -pie", NULL);
#endif
    expect_fail("non-PIE", NULL, fixture("hello-nopie"), NULL, 126,
                "non-PIE executable", "-fPIE -pie", NULL);
    expect_fail(".o", NULL, fixture("hello.o"), NULL, 126, "relocatable",
                NULL);
    expect_fail("text", NULL, fixture("script.py"), NULL, 126,
                "not an ELF file", NULL);
    expect_fail("directory", NULL, fixture("subdir.d"), NULL, 126,
                "directory", NULL);
    expect_fail("fifo", NULL, fixture("fifo"), NULL, 126,
                "not a regular file", NULL);
    if (have_static_pie)
        expect_fail("static pie", NULL, fixture("hello-static-pie"), NULL,
                    126, "static PIE", NULL);
    if (have_m32)
        expect_fail("32-bit", NULL, fixture("hello32.o"), NULL, 126,
                    "32-bit", NULL);
}

int main(void)
{
    const char *base = getenv("FORKHOST_CTEST_DIR");
    int created = 0, fds, have_static_pie, have_m32, st;

    if (base != NULL && *base != '\0') {
        snprintf(dir, sizeof dir, "%s/entry-fixtures", base);
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            perror(dir);
            return 2;
        }
    } else {
        snprintf(dir, sizeof dir, "/tmp/forkhost-test-entry-XXXXXX");
        if (mkdtemp(dir) == NULL) {
            perror("mkdtemp");
            return 2;
        }
        created = 1;
    }
    build_fixtures(&have_static_pie, &have_m32);
    if (!have_static_pie)
        fprintf(stderr, "note: no -static-pie toolchain: static PIE "
                "skipped\n");
    if (!have_m32)
        fprintf(stderr, "note: no -m32 toolchain, 32-bit check skipped\n");

    fds = count_fds();
    test_loads(have_static_pie, have_m32);
    EXPECT(count_fds() == fds, "fds: %d before, %d after", fds, count_fds());
    errno = 0;
    EXPECT(waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD,
          "a child was left behind");

    if (created)
        sh("rm -rf '%s'", dir);
    fprintf(stderr, "test_entry: %s (%d failures)\n",
            fht_failures ? "FAILED" : "ok", fht_failures);
    return fht_failures ? 1 : 0;
}
