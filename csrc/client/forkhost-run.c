/*
 * forkhost-run - the native client: run an entry as a secondary of a live
 * forkhost primary and exit exactly as that secondary does.
 *
 * Why it exists: the point of a pre-fork host is that a launch costs little
 * more than a fork.  A Python client would spend more time importing itself
 * than the template spends forking, so the client is a small static C
 * program that makes a handful of syscalls: connect to <runtime>/<prefix>/
 * template.sock, send one LAUNCH record carrying entry, argv, environ, umask,
 * cwd and stdio (proto.h), then wait for STARTED and EXITED, forwarding
 * signals to the secondary through the pidfd that STARTED carries.
 *
 * What the caller sees (docs/cli.md, exit status): the secondary's exit
 * code; death by the secondary's own terminating signal; 125 when forkhost
 * itself failed (with one line on stderr), or whatever code the template's
 * ERROR names (126 / 127 for an entry that cannot be run / was not found).
 *
 * This file is the command line; the launch itself is client.c
 * (forkhost/client.h), shared with fh_init() in libforkhost.  On x86_64
 * Linux the two link no libc at all, only rt/rt.c (system-call wrappers and
 * the few helpers they use), and elsewhere libc statically.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forkhost/client.h"
#include "forkhost/version.h"

#define PROG "forkhost-run"

#define STR_(x) #x
#define STR(x) STR_(x)

/* --version says how it was linked (build_native.py defines FH_RT for the
 * build on rt/rt.c), so `forkhost doctor` shows it. */
#ifdef FH_RT
#define BUILT ", without libc"
#else
#define BUILT ""
#endif

/* A command-line mistake: the message, then where to read about it. */
__attribute__((noreturn, format(printf, 1, 2)))
static void usage_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(msg))
        n = (int)strlen(msg);
    (void)!write(2, PROG ": ", sizeof(PROG ": ") - 1);
    (void)!write(2, msg, (size_t)n);
    (void)!write(2, "\nTry '" PROG " --help'.\n", sizeof("\nTry '" PROG " --help'.\n") - 1);
    _exit(FH_EXIT_FORKHOST);
}

/* The limit as the help prints it (STR() of the macro would say "32u"). */
#define MAX_EXTRA_FDS_TEXT "32"
_Static_assert(FH_PROTO_MAX_EXTRA_FDS == 32, "update MAX_EXTRA_FDS_TEXT");

static const char usage_text[] =
    "Usage: " PROG " [OPTIONS] ENTRY [ARGS...]\n"
    "       " PROG " [OPTIONS] -m MODULE [ARGS...]\n"
    "\n"
    "Run ENTRY as a secondary forked from the template of a running forkhost\n"
    "primary, with this process's arguments, environment, cwd, umask, open\n"
    "fds and signal state, and exit exactly as the secondary does.\n"
    "\n"
    "ENTRY is pkg.module:function, path/to/script.py, path/to/lib.so[:symbol]\n"
    "or a PIE executable; -m MODULE runs the module as __main__.\n"
    "\n"
    "Options (recognised only before ENTRY; '--' ends them):\n"
    "  --prefix P            the primary's prefix (default: $FORKHOST_PREFIX,\n"
    "                        else 'forkhost')\n"
    "  --runtime-dir D       the runtime directory (default: $FORKHOST_RUNTIME_DIR,\n"
    "                        $RUNTIME_DIRECTORY/forkhost, $XDG_RUNTIME_DIR/forkhost,\n"
    "                        /run/forkhost for root, else /tmp/forkhost-UID;\n"
    "                        in a shared sticky directory D: D/forkhost-UID)\n"
    "  --fd N                pass open fd N, and then only the fds named so\n"
    "                        (besides 0, 1, 2), at 3, 4, ... in the order given\n"
    "                        (repeatable, at most " MAX_EXTRA_FDS_TEXT "); without --fd every\n"
    "                        fd not close-on-exec passes at its own number\n"
    "  --connect-timeout SECONDS\n"
    "                        how long to wait for the template (default:\n"
    "                        $FORKHOST_CONNECT_TIMEOUT, else 5; 'inf': forever)\n"
    "  -h, --help            show this help and exit\n"
    "  --version             show the version and exit\n"
    "\n"
    "From a terminal, the secondary gets a pseudo-terminal relayed to it, as\n"
    "ssh -t does; FORKHOST_TTY=0 passes the terminal as it is.\n"
    "\n"
    "Exit status: the secondary's; if it was killed by a signal, " PROG "\n"
    "dies by the same signal.  125: forkhost itself failed; 126: the entry\n"
    "cannot be loaded or run; 127: the entry was not found.\n";

/* A non-negative decimal fd number, nothing else. */
static int parse_fd(const char *s, int *out)
{
    long v = 0;

    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
        if (v > INT_MAX)
            return -1;
    }
    *out = (int)v;
    return 0;
}

static void add_extra_fd(struct fh_client *o, const char *val)
{
    int fd;

    if (parse_fd(val, &fd) < 0)
        usage_error("invalid --fd value '%s': not a file descriptor number", val);
    if (fd <= 2)
        fh_client_die(o, "--fd %d: the standard streams 0, 1 and 2 are always passed; "
            "--fd is for fds 3 and up", fd);
    if (fcntl(fd, F_GETFD) < 0)
        fh_client_die(o, "--fd %d: not an open file descriptor", fd);
    if (o->nextra >= FH_PROTO_MAX_EXTRA_FDS)
        fh_client_die(o, "too many --fd options: at most %u fds can be passed",
            FH_PROTO_MAX_EXTRA_FDS);
    o->extra_fds[o->nextra++] = fd;
}

/*
 * If arg is the long option `name`, return its value: the part after '=',
 * or the next argument (advancing *i).  NULL when arg is another option.
 */
static const char *long_value(const char *arg, const char *name,
                              int argc, char **argv, int *i)
{
    size_t n = strlen(name);

    if (strncmp(arg, name, n) != 0)
        return NULL;
    if (arg[n] == '=')
        return arg + n + 1;
    if (arg[n] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        usage_error("option '%s' requires an argument", name);
    return argv[++*i];
}

static void parse_args(struct fh_client *o, int argc, char **argv)
{
    const char *timeout_arg = NULL;
    const char *val;
    int i;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (a[0] != '-' || a[1] == '\0')        /* ENTRY ("-" too) */
            break;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[1] == 'm') {          /* -m MODULE, or -mMODULE as python takes */
            o->entry = a + 2;
            if (*o->entry == '\0') {
                if (i + 1 >= argc)
                    usage_error("option '-m' requires a MODULE");
                o->entry = argv[++i];
            }
            o->flags |= FH_LAUNCH_MODULE;
            goto done;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            (void)!write(1, usage_text, sizeof(usage_text) - 1);
            _exit(0);
        }
        if (strcmp(a, "--version") == 0) {
            static const char v[] = PROG " " FH_VERSION_STRING
                                    " (protocol " STR(FH_PROTO_VERSION) BUILT ")\n";
            (void)!write(1, v, sizeof(v) - 1);
            _exit(0);
        }
        if ((val = long_value(a, "--prefix", argc, argv, &i))) {
            o->prefix = val;
            o->prefix_from = "--prefix";
        } else if ((val = long_value(a, "--runtime-dir", argc, argv, &i))) {
            if (*val == '\0')
                usage_error("option '--runtime-dir' requires a non-empty value");
            o->runtime_dir = val;
        } else if ((val = long_value(a, "--fd", argc, argv, &i))) {
            add_extra_fd(o, val);
        } else if ((val = long_value(a, "--connect-timeout", argc, argv, &i))) {
            timeout_arg = val;
        } else if (a[1] == '-') {
            usage_error("unrecognized option '%s'", a);
        } else {
            usage_error("invalid option -- '%s'", a + 1);
        }
    }
    if (i >= argc)
        usage_error("missing ENTRY");
    o->entry = argv[i];

done:
    o->args = argv + i + 1;
    o->nargs = argc - i - 1;
    if (timeout_arg) {
        if (fh_client_set_timeout(o, timeout_arg) < 0)
            usage_error("invalid --connect-timeout value '%s': "
                        "not a number of seconds", timeout_arg);
    }
}

int main(int argc, char **argv)
{
    struct fh_client c;

    fh_client_init(&c, PROG);
    parse_args(&c, argc, argv);
    fh_client_run(&c);
}
