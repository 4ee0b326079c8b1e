/*
 * task.c - liveness of the tasks named in the arena (see task.h).
 */
#include "task.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The state letter of /proc/TID/stat, or 0 when it cannot be read.  The
 * letter follows the last ')' (the command name may hold any byte). */
static char task_state(int32_t tid)
{
    char path[32], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

int fh__task_gone(int32_t tid)
{
    if (tid <= 0)
        return 0;
    int saved = errno;
    int gone;
    if (kill(tid, 0) < 0 && errno == ESRCH) {
        gone = 1;
    } else {
        /* It exists (or is another user's): a zombie still answers kill
         * until its parent reaps it. */
        char s = task_state(tid);
        gone = s == 'Z' || s == 'X' || s == 'x';
    }
    errno = saved;
    return gone;
}
