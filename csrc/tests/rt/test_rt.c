/*
 * test_rt.c - forkhost-run's libc-free runtime (csrc/client/rt/rt.c),
 * linked the way the client is, without libc, and built with
 * UndefinedBehaviorSanitizer in trap mode (its runtime needs libc; a trap
 * needs nothing).  AddressSanitizer needs libc too, so this test has none.
 *
 * It checks what the client relies on: the formatter and strtod against
 * what glibc prints and parses, strerror, getenv, the string functions,
 * and that the system-call wrappers (signals with their return
 * trampoline, masks, fcntl, open, stat, fstat, ioctl, syscall) behave as
 * libc's do.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int checks, failures;

static void say(const char *s)
{
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

#define CHECK(cond, ...) do {                                            \
    checks++;                                                            \
    if (!(cond)) {                                                       \
        char m_[512];                                                    \
        snprintf(m_, sizeof(m_), "test_rt.c:%d: CHECK(%s) failed: ",     \
                 __LINE__, #cond);                                       \
        say(m_);                                                         \
        snprintf(m_, sizeof(m_), __VA_ARGS__);                           \
        say(m_);                                                         \
        say("\n");                                                       \
        failures++;                                                      \
    }                                                                    \
} while (0)

/* Input for strtod, and what glibc's printf("%g") prints for the result
 * (taken from Python's "%g" % float(text), which is C's). */
static const struct { const char *text, *g; } g_cases[] = {
    { "0",                                     "0"              },
    { "5",                                     "5"              },
    { "0.25",                                  "0.25"           },
    { "0.3",                                   "0.3"            },
    { ".5",                                    "0.5"            },
    { "5.",                                    "5"              },
    { "1e3",                                   "1000"           },
    { "1E-5",                                  "1e-05"          },
    { "123456",                                "123456"         },
    { "1234567",                               "1.23457e+06"    },
    { "999999.5",                              "1e+06"          },
    { "999999.4",                              "999999"         },
    { "0.0001",                                "0.0001"         },
    { "0.00001",                               "1e-05"          },
    { "0.000123456789",                        "0.000123457"    },
    { "3600",                                  "3600"           },
    { "86400",                                 "86400"          },
    { "2147483.647",                           "2.14748e+06"    },
    { "1e-300",                                "1e-300"         },
    { "1e300",                                 "1e+300"         },
    { "-0.5",                                  "-0.5"           },
    { "+2.5",                                  "2.5"            },
    { "  7",                                   "7"              },
    { "\t\n8",                                 "8"              },
    { "0.1",                                   "0.1"            },
    { "0.7",                                   "0.7"            },
    { "2.675",                                 "2.675"          },
    { "1.0000005",                             "1"              },
    { "123.456e2",                             "12345.6"        },
    { "00012.5000",                            "12.5"           },
    { "3.14159265358979323846264338327950288", "3.14159"        },
    { "12345678901234567890123",               "1.23457e+22"    },
    { "0.000000000000000000000000000001234",   "1.234e-30"      },
    { "inf",                                   "inf"            },
    { "-Infinity",                             "-inf"           },
    { "nan",                                   "nan"            },
};

static void test_strtod_and_g(void)
{
    char buf[64];
    char *end;
    double v;

    for (size_t k = 0; k < sizeof(g_cases) / sizeof(g_cases[0]); k++) {
        v = strtod(g_cases[k].text, &end);
        CHECK(*end == '\0', "strtod(\"%s\") stopped at \"%s\"", g_cases[k].text, end);
        snprintf(buf, sizeof(buf), "%g", v);
        CHECK(strcmp(buf, g_cases[k].g) == 0, "%%g of \"%s\": \"%s\", want \"%s\"",
              g_cases[k].text, buf, g_cases[k].g);
    }
    /* Exactly the double a correctly rounding strtod gives. */
    CHECK(strtod("0.3", NULL) == 0.3, "0.3");
    CHECK(strtod("1.5e2", NULL) == 150.0, "1.5e2");
    CHECK(strtod("0.001", NULL) == 0.001, "0.001");
    CHECK(strtod("2147483.647", NULL) == 2147483.647, "2147483.647");

    /* Where parsing stops. */
    v = strtod("", &end);
    CHECK(v == 0.0 && *end == '\0', "empty");
    v = strtod("abc", &end);
    CHECK(v == 0.0 && strcmp(end, "abc") == 0, "abc: %s", end);
    v = strtod(" .", &end);
    CHECK(v == 0.0 && strcmp(end, " .") == 0, "' .': %s", end);
    v = strtod("1.5x", &end);
    CHECK(v == 1.5 && strcmp(end, "x") == 0, "1.5x: %s", end);
    v = strtod("1e", &end);
    CHECK(v == 1.0 && strcmp(end, "e") == 0, "1e: %s", end);
    v = strtod("2e+", &end);
    CHECK(v == 2.0 && strcmp(end, "e+") == 0, "2e+: %s", end);
    v = strtod("infx", &end);
    CHECK(v > 1e308 && strcmp(end, "x") == 0, "infx: %s", end);
    v = strtod("infinit", &end);
    CHECK(v > 1e308 && strcmp(end, "init") == 0, "infinit: %s", end);
    v = strtod("NaN", &end);
    CHECK(v != v && *end == '\0', "NaN");
    v = strtod("1e99999", &end);
    CHECK(v > 1e308 && *end == '\0', "overflow to inf");
    v = strtod("1e-99999", &end);
    CHECK(v == 0.0 && *end == '\0', "underflow to 0");
}

static void test_formats(void)
{
    /* Through a pointer the compiler does not check the format: what it
     * would warn about, the runtime must still print without harm. */
    int (*unchecked)(char *, size_t, const char *, ...) = snprintf;
    char buf[128];
    int n;

#define FMT(want, ...) do {                                              \
        n = snprintf(buf, sizeof(buf), __VA_ARGS__);                     \
        CHECK(strcmp(buf, want) == 0 && n == (int)strlen(want),          \
              "got \"%s\" (%d), want \"%s\"", buf, n, want);             \
    } while (0)

    FMT("-2147483648 2147483647 0", "%d %d %d", INT_MIN, INT_MAX, 0);
    FMT("-9223372036854775808", "%lld", LLONG_MIN);
    FMT("4294967295", "%u", UINT_MAX);
    FMT("18446744073709551615", "%zu", SIZE_MAX);
    FMT("-1 7", "%ld %lu", -1L, 7UL);
    FMT("deadbeef 0x7f", "%x 0x%x", 0xdeadbeefU, 0x7fU);
    FMT("abc|ab", "%.*s|%.2s", 3, "abcdef", "abcdef");
    FMT("100% x", "100%% %c", 'x');
    n = unchecked(buf, sizeof(buf), "a %q b|%s|end %", (char *)NULL);
    CHECK(strcmp(buf, "a %q b|(null)|end %") == 0 && n == 19, "\"%s\" %d", buf, n);
    FMT("timed out after 0.25s", "timed out after %gs", 0.25);

    /* Truncation: the return value is the length it would have had. */
    n = snprintf(buf, 5, "%s", "abcdefgh");
    CHECK(n == 8 && strcmp(buf, "abcd") == 0, "%d %s", n, buf);
    n = snprintf(NULL, 0, "%d", 12345);
    CHECK(n == 5, "%d", n);
    buf[0] = 'x';
    n = snprintf(buf, 1, "%d", 12345);
    CHECK(n == 5 && buf[0] == '\0', "%d", n);
#undef FMT
}

static void test_strings_and_env(void)
{
    static char *test_env[] = { "A=1", "AB=2", "B=", "C", NULL };
    char **saved = environ;
    char m[16] = "0123456789";

    CHECK(strcmp(strerror(ENOENT), "No such file or directory") == 0, "%s",
          strerror(ENOENT));
    CHECK(strcmp(strerror(ENOTDIR), "Not a directory") == 0, "%s", strerror(ENOTDIR));
    CHECK(strcmp(strerror(0), "Success") == 0, "%s", strerror(0));
    CHECK(strcmp(strerror(9999), "Unknown error 9999") == 0, "%s", strerror(9999));
    CHECK(strcmp(strerror(-3), "Unknown error -3") == 0, "%s", strerror(-3));

    environ = test_env;
    CHECK(getenv("A") && strcmp(getenv("A"), "1") == 0, "A");
    CHECK(getenv("AB") && strcmp(getenv("AB"), "2") == 0, "AB");
    CHECK(getenv("B") && strcmp(getenv("B"), "") == 0, "B");
    CHECK(getenv("C") == NULL && getenv("D") == NULL && getenv("") == NULL, "C, D");
    environ = saved;
    CHECK(getenv("RT_TEST_MARK") && strcmp(getenv("RT_TEST_MARK"), "x=y") == 0,
          "the environment from the kernel: RT_TEST_MARK");

    memmove(m + 2, m, 5);
    CHECK(memcmp(m, "0101234789", 10) == 0, "%s", m);
    memmove(m, m + 3, 5);
    CHECK(memcmp(m, "1234734789", 10) == 0, "%s", m);
    CHECK(memcmp("ab", "ac", 2) < 0 && memcmp("b", "a", 1) > 0, "memcmp");
    CHECK(strcmp("abc", "abd") < 0 && strcmp("b", "abc") > 0 && strcmp("x", "x") == 0,
          "strcmp");
    CHECK(strcmp("\xff", "a") > 0, "strcmp is unsigned");
    CHECK(strncmp("--prefix=x", "--prefix", 8) == 0 && strncmp("ab", "ac", 1) == 0,
          "strncmp");
    CHECK(strcmp(strrchr("a)b) c", ')'), ") c") == 0 && strrchr("abc", 'z') == NULL,
          "strrchr");
    CHECK(strrchr("abc", '\0') != NULL, "strrchr finds the NUL");
}

static volatile sig_atomic_t got;

static void on_usr1(int sig)
{
    got = sig;
}

static void test_system_calls(void)
{
    struct sigaction sa, old;
    sigset_t set, before;
    struct timespec t1, t2;
    struct rlimit no_core = { 0, 0 };
    int p[2], fd;
    char buf[64];

    /* A handler runs and returns through the trampoline. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, &old) == 0, "sigaction");
    CHECK(old.sa_handler == SIG_DFL, "old handler");
    CHECK(raise(SIGUSR1) == 0 && got == SIGUSR1, "handler ran: %d", (int)got);

    /* Blocked: held until unblocked; the old mask comes back. */
    got = 0;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &set, &before) == 0, "block");
    CHECK((before.__val[0] & (1UL << (SIGUSR1 - 1))) == 0, "not blocked before");
    raise(SIGUSR1);
    CHECK(got == 0, "delivered while blocked");
    CHECK(sigprocmask(SIG_UNBLOCK, &set, &before) == 0, "unblock");
    CHECK(got == SIGUSR1, "delivered once unblocked");
    CHECK(before.__val[0] & (1UL << (SIGUSR1 - 1)), "blocked in the old mask");
    CHECK(sigaddset(&set, 0) == -1 && errno == EINVAL, "sigaddset(0)");

    /* Reading back what was set, and SIG_IGN. */
    sa.sa_handler = SIG_IGN;
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0, "ignore");
    CHECK(sigaction(SIGUSR2, NULL, &old) == 0 && old.sa_handler == SIG_IGN &&
          (old.sa_flags & SA_RESTART), "read back");
    CHECK(sigaction(SIGKILL, &sa, NULL) == -1 && errno == EINVAL, "SIGKILL");

    /* fds */
    CHECK(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0, "pipe2");
    CHECK(fcntl(p[0], F_GETFD) == FD_CLOEXEC, "cloexec");
    CHECK(fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) & ~O_NONBLOCK) == 0, "setfl");
    CHECK((fcntl(p[0], F_GETFL) & O_NONBLOCK) == 0, "blocking now");
    CHECK(read(p[0], buf, 0) == 0, "read 0");
    CHECK(write(p[1], "hi", 2) == 2 && read(p[0], buf, sizeof(buf)) == 2, "round trip");
    close(p[0]);
    close(p[1]);
    CHECK(fcntl(p[0], F_GETFD) == -1 && errno == EBADF, "closed");
    CHECK(close(-1) == -1 && errno == EBADF, "close(-1)");

    fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0 && read(fd, buf, sizeof(buf)) > 0, "open /proc/self/stat");
    close(fd);
    CHECK(open("/nonexistent/x", O_RDONLY) == -1 && errno == ENOENT, "ENOENT");
    {
        /* stat, for the runtime directory's sticky-directory rule */
        struct stat st;

        CHECK(stat("/", &st) == 0 && S_ISDIR(st.st_mode) && st.st_ino != 0,
              "stat /");
        CHECK(stat("/proc/self/stat", &st) == 0 && S_ISREG(st.st_mode) &&
              st.st_uid == geteuid(), "stat a file of ours");
        CHECK(stat("/nonexistent/x", &st) == -1 && errno == ENOENT, "stat ENOENT");
    }

    {
        /* fstat, ioctl and getpgrp, for the terminal relay (tty.c): a pty
         * pair, its window size both ways, and a pipe that is no terminal */
        struct winsize ws = { 33, 101, 0, 0 }, got_ws;
        struct stat st;
        int unlock = 0, m, q[2];
        unsigned n;

        CHECK(getpgrp() == (pid_t)syscall(SYS_getpgid, 0), "getpgrp");
        m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        CHECK(m >= 0 && ioctl(m, TIOCSPTLCK, &unlock) == 0 &&
              ioctl(m, TIOCGPTN, &n) == 0, "a pty");
        fd = ioctl(m, TIOCGPTPEER, (unsigned long)(O_RDWR | O_NOCTTY | O_CLOEXEC));
        CHECK(fd >= 0 && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) &&
              fcntl(fd, F_GETFD) == FD_CLOEXEC, "its slave");
        CHECK(ioctl(m, TIOCSWINSZ, &ws) == 0 && ioctl(fd, TIOCGWINSZ, &got_ws) == 0 &&
              got_ws.ws_row == 33 && got_ws.ws_col == 101, "window size");
        close(fd);
        close(m);
        CHECK(pipe2(q, O_CLOEXEC) == 0, "pipe2");
        CHECK(ioctl(q[0], TIOCGWINSZ, &got_ws) == -1 && errno == ENOTTY, "ENOTTY");
        CHECK(fstat(q[0], &st) == 0 && S_ISFIFO(st.st_mode), "fstat a pipe");
        close(q[0]);
        close(q[1]);
        CHECK(fstat(q[0], &st) == -1 && errno == EBADF, "fstat EBADF");
    }

    /* glibc's syscall(): the number, then up to six arguments. */
    CHECK(syscall(SYS_getpid) == getpid(), "syscall(getpid)");
    CHECK(syscall(SYS_close, -1) == -1 && errno == EBADF, "syscall error");
    CHECK(syscall(SYS_pidfd_send_signal, -1, 0, NULL, 0) == -1 && errno == EBADF,
          "syscall with four arguments");

    CHECK(clock_gettime(CLOCK_MONOTONIC, &t1) == 0 &&
          clock_gettime(CLOCK_MONOTONIC, &t2) == 0 &&
          (t2.tv_sec > t1.tv_sec ||
           (t2.tv_sec == t1.tv_sec && t2.tv_nsec >= t1.tv_nsec)), "monotonic");
    CHECK(setrlimit(RLIMIT_CORE, &no_core) == 0, "setrlimit");
    CHECK(getuid() == geteuid(), "uids");
    CHECK((umask(022), umask(077)) == 022 && umask(022) == 077, "umask");
}

int main(int argc, char **argv)
{
    char line[96];

    CHECK(argc == 2 && strcmp(argv[1], "arg") == 0, "argv from the kernel");
    test_strtod_and_g();
    test_formats();
    test_strings_and_env();
    test_system_calls();
    snprintf(line, sizeof(line), "test_rt: %d checks, %d failed\n", checks, failures);
    say(line);
    return failures ? 1 : 0;
}
