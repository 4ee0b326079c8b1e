/*
 * ipc_bench.c - the native side of benchmarks/ipc.py, run as a forkhost
 * secondary (forkhost-run ./ipc_bench.so MODE ...):
 *
 *   rtt PATH N BATCHES       sync requests "echo" to the primary, in
 *                            batches alternating with a bare ping-pong with
 *                            the Python echo server at PATH
 *   rate N                   N messages "count", then a request "flush"
 *   serve                    answer "echo" until stdin closes
 *   bare-cc N BATCHES        C client and C echo server over a socketpair
 *   bare-client PATH N B     C client of the Python echo server at PATH
 *
 * Each prints one JSON line; times are the best batch's mean.  FHB_CPU
 * (and FHB_PEER_CPU for bare-cc's echo child) pin them to a CPU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"

#define PAYLOAD 64
#define BARE_LEN (96 + PAYLOAD)

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct fh_ipc_msg req;

static int one_request(void)
{
    struct fh_ipc_reply r;
    struct timespec ts = { 5, 0 };

    if (fh_ipc_request(&req, &r, &ts) < 0 || r.nb_received != 1)
        return -1;
    free(r.msgs);
    return 0;
}

static int bare_fd;
static char bare_buf[8192];

static int one_bare(void)
{
    static char rec[BARE_LEN] = "E";

    if (send(bare_fd, rec, sizeof rec, 0) < 0 || recv(bare_fd, bare_buf, sizeof bare_buf, 0) <= 0)
        return -1;
    return 0;
}

/* Batches of each fn in turn; best[i] is fn i's best batch mean. */
static int best_means(int (*fns[])(void), int nfn, double *best, long n, long batches)
{
    long per = n / batches > 0 ? n / batches : 1;

    for (int f = 0; f < nfn; f++) {
        best[f] = 1e9;
        for (int i = 0; i < 200; i++)
            if (fns[f]() < 0)
                return -1;
    }
    for (long b = 0; b < batches; b++) {
        for (int f = 0; f < nfn; f++) {
            double t = now();

            for (long i = 0; i < per; i++)
                if (fns[f]() < 0)
                    return -1;
            t = (now() - t) / per;
            if (t < best[f])
                best[f] = t;
        }
    }
    return 0;
}

static double best_mean(int (*fn)(void), long n, long batches)
{
    double best;
    int (*fns[1])(void) = { fn };

    return best_means(fns, 1, &best, n, batches) < 0 ? -1 : best;
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd;

    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static int echo(const struct fh_ipc_msg *msg, const void *peer)
{
    return fh_ipc_reply(msg, peer);   /* same name, same param */
}

/* Pin the calling thread (and the threads it starts later, the IPC
 * thread among them) to the CPU named by the environment variable var, if
 * set (benchmarks/ipc.py's placements). */
static void pin_from_env(const char *var)
{
    const char *v = getenv(var);
    cpu_set_t set;

    if (v == NULL || *v == '\0')
        return;
    CPU_ZERO(&set);
    CPU_SET(atoi(v), &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        perror("sched_setaffinity");
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";

    pin_from_env("FHB_CPU");
    memset(req.param, 'x', PAYLOAD);
    req.len_param = PAYLOAD;
    if (strcmp(mode, "rtt") == 0 && argc == 5) {
        int (*fns[2])(void) = { one_request, one_bare };
        double best[2];

        strcpy(req.name, "echo");
        bare_fd = connect_to(argv[2]);
        if (bare_fd < 0 || best_means(fns, 2, best, atol(argv[3]), atol(argv[4])) < 0)
            return 1;
        close(bare_fd);
        printf("{\"rtt_us\": %.3f, \"bare_us\": %.3f}\n", best[0] * 1e6, best[1] * 1e6);
    } else if (strcmp(mode, "rate") == 0 && argc == 3) {
        long n = atol(argv[2]);
        struct fh_ipc_reply r;
        struct timespec ts = { 60, 0 };
        double t;

        strcpy(req.name, "flush");
        if (fh_ipc_request(&req, &r, &ts) < 0 || r.nb_received != 1)
            return 1;
        free(r.msgs);
        t = now();
        strcpy(req.name, "count");
        for (long i = 0; i < n; i++)
            if (fh_ipc_send(&req) < 0)
                return 1;
        strcpy(req.name, "flush");
        if (fh_ipc_request(&req, &r, &ts) < 0 || r.nb_received != 1)
            return 1;
        t = now() - t;
        printf("{\"rate\": %.1f, \"counted\": %.*s}\n", n / t,
               r.msgs[0].len_param, (char *)r.msgs[0].param);
        free(r.msgs);
    } else if (strcmp(mode, "serve") == 0) {
        char c;

        if (fh_ipc_register("echo", echo) < 0)
            return 1;
        printf("ready\n");
        fflush(stdout);
        while (read(0, &c, 1) > 0)
            ;
    } else if (strcmp(mode, "bare-cc") == 0 && argc == 4) {
        int sv[2];
        pid_t pid;
        double t;

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
            return 1;
        pid = fork();
        if (pid == 0) {
            char buf[8192];
            ssize_t k;

            pin_from_env("FHB_PEER_CPU");
            close(sv[0]);
            while ((k = recv(sv[1], buf, sizeof buf, 0)) > 0)
                if (send(sv[1], buf, (size_t)k, 0) < 0)
                    break;
            _exit(0);
        }
        close(sv[1]);
        bare_fd = sv[0];
        t = best_mean(one_bare, atol(argv[2]), atol(argv[3]));
        close(sv[0]);
        waitpid(pid, NULL, 0);
        printf("{\"rtt_us\": %.3f}\n", t * 1e6);
    } else if (strcmp(mode, "bare-client") == 0 && argc == 5) {
        double t;

        bare_fd = connect_to(argv[2]);
        if (bare_fd < 0)
            return 1;
        t = best_mean(one_bare, atol(argv[3]), atol(argv[4]));
        close(bare_fd);
        printf("{\"rtt_us\": %.3f}\n", t * 1e6);
    } else {
        fprintf(stderr, "usage: see the top of ipc_bench.c\n");
        return 2;
    }
    fflush(stdout);
    return 0;
}
