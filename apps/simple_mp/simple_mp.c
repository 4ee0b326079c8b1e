/*
 * simple_mp - DPDK's simple_mp sample on forkhost, in C: two processes of
 * one program exchange messages through two rings and a mempool, typed at
 * a prompt.
 *
 *   simple_mp --proc-type=primary   [--file-prefix=P]   # terminal 1
 *   simple_mp --proc-type=secondary [--file-prefix=P]   # terminal 2
 *
 * The primary creates the rings PRI_2_SEC and SEC_2_PRI and the pool
 * MSG_POOL; the secondary looks them up by name (PRI_2_SEC is the
 * primary's send ring and the secondary's receive ring).  Commands, one a
 * line on stdin (a terminal or a pipe):
 *
 *   send <text>   copy <text> into a pool buffer and put its address on
 *                 the send ring; the other process prints "Received '<text>'"
 *   help          list the commands
 *   quit          (or end of input) stop this process
 *
 * A receiver thread prints what arrives.  The secondary also stops, saying
 * so, when its primary quits (the template then sends it SIGTERM).
 */
#define _GNU_SOURCE         /* ppoll */
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/mp_sample.h"

#define PROG "simple_mp"

static const char *const MSG_POOL = "MSG_POOL";
static const char *const SEC_2_PRI = "SEC_2_PRI";
static const char *const PRI_2_SEC = "PRI_2_SEC";

#define RING_SIZE      64u
#define POOL_SIZE      1024u
#define POOL_CACHE     32u
#define STR_TOKEN_SIZE 128u      /* a message buffer, NUL included */

static struct fh_ring *send_ring, *recv_ring;
static struct fh_mempool *message_pool;

/* Set by the main thread (quit or SIGTERM); read by the receiver.  Relaxed is enough: it only ends a polling loop, and the
 * thread join orders everything after it. */
static atomic_int quit;
static volatile sig_atomic_t got_sigterm;

static void on_sigterm(int sig)
{
    (void)sig;
    got_sigterm = 1;
}

static void *lcore_recv(void *arg)
{
    const struct timespec pause = { 0, 1000000 };   /* 1 ms between polls */

    (void)arg;
    while (!atomic_load_explicit(&quit, memory_order_relaxed)) {
        void *msg;

        if (fh_ring_dequeue(recv_ring, &msg) < 0) {
            nanosleep(&pause, NULL);
            continue;
        }
        printf("Received '%s'\n", (const char *)msg);
        fh_mempool_put(message_pool, msg);
    }
    return NULL;
}

static void cmd_send(const char *text)
{
    size_t len = strnlen(text, STR_TOKEN_SIZE - 1);  /* longer: cut, as DPDK */
    void *msg;

    if (fh_mempool_get(message_pool, &msg) < 0) {
        printf("Failed to get a message buffer - message discarded\n");
        return;
    }
    memcpy(msg, text, len);
    ((char *)msg)[len] = '\0';
    if (fh_ring_enqueue(send_ring, &msg) < 0) {
        printf("Failed to send message - message discarded\n");
        fh_mempool_put(message_pool, msg);
    }
}

static void cmd_help(void)
{
    printf("Simple demo example of multi-process in forkhost\n\n"
           "Commands supported:\n\n"
           "- send [string]\n- help\n- quit\n\n");
}

/*
 * The next line of stdin, without its newline (a longer one than the
 * buffer comes in pieces); NULL at end of input or at SIGTERM.  SIGTERM is
 * blocked except inside ppoll, so it cannot slip in between a check of
 * got_sigterm and a read that would then block for good.
 */
static char *next_line(const sigset_t *waitmask)
{
    static char buf[4096];
    static size_t start, end;     /* buf[start, end) is unread */

    for (;;) {
        struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
        char *nl = memchr(buf + start, '\n', end - start);
        ssize_t n;

        if (nl != NULL || (start == 0 && end == sizeof buf - 1)) {
            char *line = buf + start;

            if (nl == NULL)
                nl = buf + end;
            *nl = '\0';
            start = (size_t)(nl - buf) + (nl < buf + end);
            if (start >= end)
                start = end = 0;
            return line;
        }
        memmove(buf, buf + start, end - start);
        end -= start;
        start = 0;
        if (ppoll(&pfd, 1, NULL, waitmask) < 0) {
            if (errno == EINTR && !got_sigterm)
                continue;
            return NULL;
        }
        n = read(STDIN_FILENO, buf + end, sizeof buf - 1 - end);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (end == 0)
                return NULL;
            buf[end] = '\0';     /* a last line without a newline */
            start = end = 0;
            return buf;
        }
        end += (size_t)n;
    }
}

/* The prompt: returns at quit, end of input or SIGTERM. */
static void interact(const sigset_t *waitmask)
{
    const int tty = isatty(STDIN_FILENO);
    char *line;

    for (;;) {
        if (tty) {
            printf("simple_mp > ");
            fflush(stdout);
        }
        if ((line = next_line(waitmask)) == NULL)
            return;
        if (strncmp(line, "send ", 5) == 0 && line[5] != '\0')
            cmd_send(line + 5);
        else if (strcmp(line, "help") == 0)
            cmd_help();
        else if (strcmp(line, "quit") == 0)
            return;
        else if (line[0] != '\0')
            printf("Bad arguments: '%s' (try help)\n", line);
    }
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    sigset_t block, waitmask;
    pthread_t recv_thread;
    int ret, primary, err;

    ret = mp_fh_init(PROG, argc, argv);
    argc -= ret;
    argv += ret;
    if (argc > 1)
        mp_die(PROG, "unexpected argument '%s' (usage: %s [forkhost options])",
               argv[1], PROG);

    primary = fh_proc_type() == FH_PROC_PRIMARY;
    if (primary) {
        send_ring = fh_ring_create(PRI_2_SEC, RING_SIZE, sizeof(void *), 0);
        recv_ring = fh_ring_create(SEC_2_PRI, RING_SIZE, sizeof(void *), 0);
        message_pool = fh_mempool_create(MSG_POOL, POOL_SIZE, STR_TOKEN_SIZE,
                                         POOL_CACHE, 0);
    } else {
        recv_ring = MP_LOOKUP_WAIT(fh_ring_lookup(PRI_2_SEC));
        send_ring = MP_LOOKUP_WAIT(fh_ring_lookup(SEC_2_PRI));
        message_pool = MP_LOOKUP_WAIT(fh_mempool_lookup(MSG_POOL));
    }
    if (send_ring == NULL)
        mp_die(PROG, "Problem getting sending ring: %s", strerror(errno));
    if (recv_ring == NULL)
        mp_die(PROG, "Problem getting receiving ring: %s", strerror(errno));
    if (message_pool == NULL)
        mp_die(PROG, "Problem getting message pool: %s", strerror(errno));

    /* SIGTERM (the primary's end, in a secondary) ends the prompt.  It
     * stays blocked, in both threads, except while the prompt waits for
     * input (next_line's ppoll). */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    err = pthread_create(&recv_thread, NULL, lcore_recv, NULL);
    if (err != 0)
        mp_die(PROG, "cannot start the receiver: %s", strerror(err));

    printf("%s: %s ready (pid %d, prefix '%s')\n", PROG,
           primary ? "primary" : "secondary", (int)getpid(), fh_file_prefix());
    interact(&waitmask);

    atomic_store_explicit(&quit, 1, memory_order_relaxed);
    pthread_join(recv_thread, NULL);
    if (got_sigterm)
        printf("%s: stopped by SIGTERM (the primary quit?)\n", PROG);
    if (fh_cleanup() < 0)
        mp_die(PROG, "cleanup: %s", strerror(errno));
    return 0;
}
