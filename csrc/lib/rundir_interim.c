/*
 * rundir_interim.c - the prefix's directory and lock for fh_init, until the
 * full checks of forkhost/runtime.py move to C.
 */
#include "init_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int prefix_ok(const char *p)
{
    size_t n = 0;

    if (strcmp(p, ".") == 0 || strcmp(p, "..") == 0)
        return 0;
    for (; p[n]; n++) {
        char c = p[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= FH_PREFIX_MAX_LEN;
}

int fh_prefix_resolve(struct fh_prefix_paths *p, const char *prefix,
                      const char *origin, const char *dir, char *err,
                      size_t errlen)
{
    const char *base;
    struct stat st;
    int n;

    if (prefix == NULL) {
        prefix = env_nonempty("FORKHOST_PREFIX");
        origin = "FORKHOST_PREFIX";
        if (prefix == NULL) {
            prefix = "forkhost";
            origin = "the default";
        }
    }
    if (!prefix_ok(prefix)) {
        snprintf(err, errlen, FH_PREFIX_INVALID, prefix, origin);
        return -1;
    }
    snprintf(p->prefix, sizeof p->prefix, "%s", prefix);
    if (dir == NULL)
        dir = env_nonempty("FORKHOST_RUNTIME_DIR");
    if (dir != NULL)
        n = snprintf(p->root, sizeof p->root, "%s", dir);
    else if ((base = env_nonempty("RUNTIME_DIRECTORY")) ||
             (base = env_nonempty("XDG_RUNTIME_DIR")))
        n = snprintf(p->root, sizeof p->root, "%s/forkhost", base);
    else if (geteuid() == 0)
        n = snprintf(p->root, sizeof p->root, "/run/forkhost");
    else
        n = snprintf(p->root, sizeof p->root, "/tmp/" FH_RUNDIR_SHARED_SUBDIR,
                     (unsigned)getuid());
    if (n < 0 || (size_t)n >= sizeof p->root) {
        snprintf(err, errlen, "runtime directory path is too long");
        return -1;
    }
    if (stat(p->root, &st) == 0 && S_ISDIR(st.st_mode) &&
        (st.st_mode & S_ISVTX) && (st.st_mode & (S_IWGRP | S_IWOTH))) {
        size_t len = (size_t)n;
        n = snprintf(p->root + len, sizeof p->root - len, "/" FH_RUNDIR_SHARED_SUBDIR,
                     (unsigned)getuid());
        if (n < 0 || (size_t)n >= sizeof p->root - len) {
            snprintf(err, errlen, "runtime directory path is too long");
            return -1;
        }
    }
    n = (int)(strlen(p->root) + 1 + strlen(p->prefix) + sizeof "/template.sock" - 1);
    if (n > FH_SOCKET_PATH_MAX) {
        char path[PATH_MAX + 80];
        snprintf(path, sizeof path, "%s/%s/template.sock", p->root, p->prefix);
        snprintf(err, errlen, FH_SOCKET_PATH_TOO_LONG, n, FH_SOCKET_PATH_MAX, path);
        return -1;
    }
    return 0;
}

static int mkdirs(const char *path)
{
    char buf[4096];
    size_t i, n = strlen(path);

    if (n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) < 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

static int prefix_dir(const struct fh_prefix_paths *p, int create, char *err,
                      size_t errlen)
{
    char dir[4200];
    struct stat st;
    int fd;

    snprintf(dir, sizeof dir, "%s/%s", p->root, p->prefix);
    if (create && mkdirs(dir) < 0) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", dir, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) < 0 || st.st_uid != geteuid() || (st.st_mode & 077)) {
        snprintf(err, errlen, "refusing the prefix directory %s: not ours or "
                 "not 0700", dir);
        close(fd);
        return -1;
    }
    return fd;
}

static pid_t read_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);

    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return (pid_t)atoi(buf);
}

int fh_prefix_lock(const struct fh_prefix_paths *p, pid_t *holder, pid_t *stale,
                   char *err, size_t errlen)
{
    static const char *const leftovers[] = { "template.sock", "config.json", "ipc.sock" };
    int dfd = prefix_dir(p, 1, err, errlen), fd;
    char buf[32];
    struct stat a, b;
    pid_t old;
    size_t k;

    if (dfd < 0)
        return -1;
    *stale = -1;
    for (;;) {
        fd = openat(dfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            snprintf(err, errlen, "cannot lock %s/%s/lock: %s", p->root, p->prefix,
                     strerror(errno));
            close(dfd);
            return -1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            *holder = read_pid(fd);
            close(fd);
            close(dfd);
            return FH_PREFIX_BUSY;
        }
        if (fstat(fd, &a) == 0 && fstatat(dfd, "lock", &b, AT_SYMLINK_NOFOLLOW) == 0 &&
            a.st_ino == b.st_ino)
            break;
        close(fd);
    }
    old = read_pid(fd);
    for (k = 0; k < sizeof leftovers / sizeof leftovers[0]; k++)
        if (unlinkat(dfd, leftovers[k], 0) == 0 && *stale < 0)
            *stale = 0;
    if (old > 0 && old != getpid() && *stale >= 0)
        *stale = old;
    snprintf(buf, sizeof buf, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, strlen(buf), 0) < 0) {
        snprintf(err, errlen, "cannot write %s/%s/lock: %s", p->root, p->prefix,
                 strerror(errno));
        close(fd);
        close(dfd);
        return -1;
    }
    close(dfd);
    return fd;
}

void fh_prefix_release(const struct fh_prefix_paths *p, int lock_fd)
{
    static const char *const files[] = { "template.sock", "config.json", "ipc.sock", "lock" };
    char err[FH_RUNDIR_ERR_MAX], dir[4200];
    int dfd = prefix_dir(p, 0, err, sizeof err);
    size_t k;

    if (dfd >= 0) {
        for (k = 0; k < sizeof files / sizeof files[0]; k++)
            unlinkat(dfd, files[k], 0);
        close(dfd);
        snprintf(dir, sizeof dir, "%s/%s", p->root, p->prefix);
        rmdir(dir);
    }
    if (lock_fd >= 0)
        close(lock_fd);
}

int fh_prefix_write_config(const struct fh_prefix_paths *p, const char *text,
                           char *err, size_t errlen)
{
    char tmp[64];
    int dfd = prefix_dir(p, 0, err, errlen), fd;
    size_t len = strlen(text), off = 0;

    if (dfd < 0)
        return -1;
    snprintf(tmp, sizeof tmp, ".config.%d.tmp", (int)getpid());
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    while (fd >= 0 && off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    if (fd < 0 || off < len || close(fd) < 0 ||
        renameat(dfd, tmp, dfd, "config.json") < 0) {
        snprintf(err, errlen, "cannot write %s/%s/config.json: %s", p->root,
                 p->prefix, strerror(errno));
        unlinkat(dfd, tmp, 0);
        close(dfd);
        return -1;
    }
    close(dfd);
    return 0;
}
