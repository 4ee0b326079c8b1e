/*
 * fhtest.h - what the C test programs share: a CHECK that stops the program
 * with where and why, an EXPECT that counts the failure and goes on, an fd
 * count for leak checks, a fork whose child dies with the parent (a failing
 * CHECK never leaves a spinning producer or consumer behind), and a reap
 * that returns the exit code or 128+signal.
 *
 * A test may define FHT_DETAIL (an expression giving a string) before
 * including this, to add its own detail to a failed CHECK.
 */
#ifndef FORKHOST_FHTEST_H
#define FORKHOST_FHTEST_H

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FHT_DETAIL
#define FHT_DETAIL ""
#endif

#define CHECK(cond, ...) do {                                              \
    if (!(cond)) {                                                         \
        fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__,   \
                #cond);                                                    \
        fprintf(stderr, __VA_ARGS__);                                      \
        fprintf(stderr, " (errno %d %s%s)\n", errno, strerror(errno),      \
                FHT_DETAIL);                                               \
        exit(1);                                                           \
    }                                                                      \
} while (0)

/* A CHECK that records the failure and goes on, for tests that report
 * every property that fails in a run and end with fht_failures. */
static int fht_failures __attribute__((unused));

#define EXPECT(cond, ...) do {                                             \
    if (!(cond)) {                                                         \
        fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond);   \
        fprintf(stderr, __VA_ARGS__);                                      \
        fputc('\n', stderr);                                               \
        fht_failures++;                                                    \
    }                                                                      \
} while (0)

/* Open fds of this process, not counting the directory listing them. */
static inline int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;

    CHECK(d != NULL, "opendir /proc/self/fd");
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

static inline pid_t fork_child(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();

    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(111);
    }
    return pid;
}

/* Wait for pid; its exit code, or 128+signal. */
static inline int reap(pid_t pid)
{
    int st;

    CHECK(waitpid(pid, &st, 0) == pid, "waitpid %d", (int)pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#endif /* FORKHOST_FHTEST_H */
