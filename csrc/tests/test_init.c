/*
 * test_init.c - fh_init's parsers, as tables: fh_parse_size (the primary's
 * --arena-size in C and Python), fh_thp_wanted (FORKHOST_THP), and
 * fh_init_parse (the options before "--"), whose refusals exit 125 with one
 * line, run in forked children.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

static void test_sizes(void)
{
    static const struct { const char *text; int ok; size_t want; } t[] = {
        { "4096", 1, 4096 }, { "64M", 1, 64u << 20 }, { "64m", 1, 64u << 20 },
        { "64MiB", 1, 64u << 20 }, { "64MB", 1, 64u << 20 }, { " 1G ", 1, 1u << 30 },
        { "1.5G", 1, 3u << 29 }, { "2k", 1, 2048 }, { "1T", 1, (size_t)1 << 40 },
        { "0", 1, 0 }, { "", 0, 0 }, { " ", 0, 0 }, { "M", 0, 0 }, { "lots", 0, 0 },
        { "-1M", 0, 0 }, { "1Q", 0, 0 }, { "nan", 0, 0 }, { "1e30G", 0, 0 },
        { "12345678901234567890123456789012345678901234567890123456789012345", 0, 0 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        size_t got = 7;
        int r = fh_parse_size(t[i].text, &got);

        CHECK((r == 0) == t[i].ok, "fh_parse_size('%s') = %d", t[i].text, r);
        CHECK(!t[i].ok || got == t[i].want, "fh_parse_size('%s') gave %zu, not %zu",
              t[i].text, got, t[i].want);
        CHECK(t[i].ok || got == 7, "a refused '%s' wrote its result", t[i].text);
    }
}

static void test_thp(void)
{
    static const struct { const char *v; int want; size_t min; } t[] = {
        { NULL, 1, FH_THP_MIN_BYTES }, { "", 1, FH_THP_MIN_BYTES },
        { "1", 1, FH_THP_MIN_BYTES }, { " ON ", 1, FH_THP_MIN_BYTES },
        { "true", 1, FH_THP_MIN_BYTES }, { "0", 0, 0 }, { "Off", 0, 0 },
        { "never", 0, 0 }, { "16M", 1, 16u << 20 }, { "0M", 1, 0 }, { "bad", -1, 0 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        size_t min = 1;
        int r = fh_thp_wanted(t[i].v, &min);

        CHECK(r == t[i].want, "fh_thp_wanted('%s') = %d", t[i].v ? t[i].v : "NULL", r);
        CHECK(r != 1 || min == t[i].min, "fh_thp_wanted('%s') min %zu", t[i].v, min);
    }
}

#define MAXARGS 8

/* fh_init_parse of "prog ARGS..." in a child: its exit code (0 when it
 * returned; what it parsed then goes to out through a pipe) and its stderr. */
static int parse_in_child(const char *const args[], struct fh_init_options *out,
                          char *err, size_t errlen)
{
    int po[2], pe[2], status;
    ssize_t n;
    pid_t pid;

    CHECK(pipe2(po, O_CLOEXEC) == 0 && pipe2(pe, O_CLOEXEC) == 0, "pipes");
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        char *argv[MAXARGS + 2];
        struct fh_init_options o;
        int argc = 0;

        argv[argc++] = (char *)"prog";
        for (; args[argc - 1] != NULL; argc++)
            argv[argc] = (char *)args[argc - 1];
        argv[argc] = NULL;
        dup2(pe[1], 2);
        fh_init_parse(argc, argv, &o);
        o.prefix = o.runtime_dir = o.huge_pages = NULL;   /* pointers: not sent */
        _exit(write(po[1], &o, sizeof o) == (ssize_t)sizeof o ? 0 : 99);
    }
    close(po[1]);
    close(pe[1]);
    memset(out, 0, sizeof *out);
    n = read(po[0], out, sizeof *out);
    (void)n;
    n = read(pe[0], err, errlen - 1);
    err[n > 0 ? n : 0] = '\0';
    close(po[0]);
    close(pe[0]);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status), "child");
    return WEXITSTATUS(status);
}

static void test_options(void)
{
    static const struct {
        const char *args[MAXARGS];
        int code;               /* 0: parsed */
        int proc_type, consumed;
        size_t arena;
        unsigned pool;
        const char *err;        /* the line, for 125 */
    } t[] = {
        { { NULL }, 0, FH_PROC_AUTO, 0, FH_DEFAULT_ARENA_SIZE, FH_DEFAULT_POOL, NULL },
        { { "--proc-type=primary", NULL }, 0, FH_PROC_PRIMARY, 1, FH_DEFAULT_ARENA_SIZE,
          FH_DEFAULT_POOL, NULL },
        { { "--proc-type", "secondary", "--", "x", NULL }, 0, FH_PROC_SECONDARY, 3,
          FH_DEFAULT_ARENA_SIZE, FH_DEFAULT_POOL, NULL },
        { { "--arena-size=1G", "--pool", "5", "app-arg", "--pool=9", NULL }, 0,
          FH_PROC_AUTO, 3, 1u << 30, 5, NULL },
        { { "--arena-max", "2G", "--", NULL }, 0, FH_PROC_AUTO, 3,
          FH_DEFAULT_ARENA_SIZE, FH_DEFAULT_POOL, NULL },
        { { "x", "--", NULL }, 125, 0, 0, 0, 0,
          "prog: unrecognized option 'x' (forkhost's options come first and end at "
          "'--': --proc-type, --file-prefix, --runtime-dir, --arena-size, "
          "--arena-max, --huge-pages, --pool, --on-primary-death)\n" },
        { { "--arena-max=lots", NULL }, 125, 0, 0, 0, 0,
          "prog: invalid size 'lots': use bytes or a K/M/G suffix\n" },
        { { "--arena-max=0", NULL }, 125, 0, 0, 0, 0,
          "prog: invalid size '0': use bytes or a K/M/G suffix\n" },
        { { "--pool=1025", NULL }, 125, 0, 0, 0, 0,
          "prog: invalid --pool '1025': use a number from 0 to 1024\n" },
        { { "--pool=", NULL }, 125, 0, 0, 0, 0,
          "prog: invalid --pool '': use a number from 0 to 1024\n" },
        { { "--huge-pages=some", NULL }, 125, 0, 0, 0, 0,
          "prog: invalid --huge-pages 'some': use auto, never or always\n" },
        { { "--arena-size", NULL }, 125, 0, 0, 0, 0,
          "prog: option '--arena-size' requires a value\n" },
        { { "--runtime-dir=", NULL }, 125, 0, 0, 0, 0,
          "prog: option '--runtime-dir' requires a non-empty value\n" },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct fh_init_options o;
        char err[1024];
        int code = parse_in_child(t[i].args, &o, err, sizeof err);

        CHECK(code == t[i].code, "case %zu: exit %d (%s)", i, code, err);
        if (code != 0) {
            CHECK(strcmp(err, t[i].err) == 0, "case %zu: said '%s'", i, err);
            continue;
        }
        CHECK(err[0] == '\0', "case %zu: said '%s'", i, err);
        CHECK(o.arena_max == (strcmp(t[i].args[0] ? t[i].args[0] : "",
                                     "--arena-max") == 0 ? (size_t)2 << 30 : 0),
              "case %zu: arena max %zu", i, o.arena_max);
        CHECK(o.proc_type == t[i].proc_type && o.consumed == t[i].consumed &&
              o.arena_size == t[i].arena && o.pool == t[i].pool,
              "case %zu: type %d consumed %d arena %zu pool %u", i, o.proc_type,
              o.consumed, o.arena_size, o.pool);
    }
}

int main(void)
{
    test_sizes();
    test_thp();
    test_options();
    printf("test_init: ok\n");
    return 0;
}
