/*
 * rundir.c - the runtime directory's checks, the prefix's lock and its
 * config record (forkhost/rundir.h): what every primary does in
 * <runtime>/<prefix>/, the Python one (forkhost/_runtime.py, through cffi)
 * and a C one (fh_init) alike.  Where those directories are is
 * rundir_path.c's.
 *
 * Nothing here is followed by name from the top again once checked: each
 * directory is opened relative to the checked one above it, files
 * relative to the checked directory's fd, all with O_NOFOLLOW.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "forkhost/rundir.h"

#define DIR_FLAGS    (O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
#define MAX_SYMLINKS 40

/* root/prefix/name, shown: room for any of the prefix's paths. */
#define PREFIX_PATH_MAX (FH_RUNDIR_PATH_MAX + FH_PREFIX_MAX_LEN + 32)

/* The walk's remaining components and the path it shows, which symbolic
 * links can make longer than one path. */
#define WALK_MAX (2 * FH_RUNDIR_PATH_MAX)

/* The prefix's files that its next holder removes, then the lock. */
static const char *const leftovers[] = {"template.sock", "config.json", "ipc.sock"};
/* The FH_PREFIX_KEEP_* bit that spares each of them (0: never spared). */
static const unsigned leftover_keep[] = {FH_PREFIX_KEEP_SOCKET, 0, FH_PREFIX_KEEP_IPC};

/* ------------------------------------------------------------------ */
/* texts                                                                */

/* "WHAT: why" for a failed system call's errno e, naming a full file
 * system as such. */
__attribute__((format(printf, 4, 5)))
static int os_fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    char what[FH_RUNDIR_ERR_MAX], buf[128];
    const char *why = strerror_r(e, buf, sizeof(buf));     /* GNU: a string */
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (e == ENOSPC)
        return fh__rundir_fail(err, errlen, e, "%s: the file system is full (%s)", what, why);
    if (e == EDQUOT)
        return fh__rundir_fail(err, errlen, e, "%s: the disk quota is used up (%s)", what, why);
    return fh__rundir_fail(err, errlen, e, "%s: %s", what, why);
}

static void no_text(char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
}

/* dir/name as pathlib shows it, dir being normalized (struct
 * fh_prefix_paths): "x" in ".", "/x" in "/". */
static void path_in(char *out, size_t outlen, const char *dir, const char *name)
{
    size_t n = strlen(dir);

    if (strcmp(dir, ".") == 0)
        snprintf(out, outlen, "%s", name);
    else
        snprintf(out, outlen, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name);
}

/* ------------------------------------------------------------------ */
/* the walk                                                             */

/* path made absolute (from the current directory) and normalized as
 * os.path.abspath does: "..", "." and "//" resolved lexically, a leading
 * "//" kept.  -1 with errno. */
static int absolute(const char *path, char *out, size_t outlen)
{
    char cwd[FH_RUNDIR_PATH_MAX];
    size_t r, w, lead = 0;
    int n;

    if (path[0] == '/') {
        n = snprintf(out, outlen, "%s", path);
    } else {
        if (!getcwd(cwd, sizeof(cwd)))
            return -1;
        n = snprintf(out, outlen, "%s/%s", cwd, path);
    }
    if (n < 0 || (size_t)n >= outlen) {
        errno = ENAMETOOLONG;
        return -1;
    }
    while (out[lead] == '/')
        lead++;
    r = lead;
    lead = lead == 2 ? 2 : 1;
    w = lead;
    while (out[r]) {
        size_t start = r, len;

        while (out[r] && out[r] != '/')
            r++;
        len = r - start;
        while (out[r] == '/')
            r++;
        if (len == 1 && out[start] == '.')
            continue;
        if (len == 2 && out[start] == '.' && out[start + 1] == '.') {
            while (w > lead && out[w - 1] != '/')
                w--;
            if (w > lead)
                w--;
            continue;
        }
        if (w > lead)
            out[w++] = '/';
        memmove(out + w, out + start, len);
        w += len;
    }
    out[w] = '\0';
    return 0;
}

/* Whether s, "a/b/c", has a component other than "." (and empty ones). */
static int more(const char *s)
{
    while (*s) {
        const char *start;

        while (*s == '/')
            s++;
        start = s;
        while (*s && *s != '/')
            s++;
        if (s > start && !(s - start == 1 && *start == '.'))
            return 1;
    }
    return 0;
}

/* One directory on the way (last: the runtime directory itself). */
static int check_dir(const struct stat *st, const char *shown, int last,
                     char *err, size_t errlen)
{
    uid_t euid = geteuid();
    unsigned mode = st->st_mode & 07777;
    int writable = (mode & (S_IWGRP | S_IWOTH)) != 0;

    if (last) {
        if (st->st_uid != euid)
            return fh__rundir_fail(err, errlen, EPERM, "refusing the runtime directory %s: it "
                          "belongs to uid %u, not to us (uid %u)", shown,
                          (unsigned)st->st_uid, (unsigned)euid);
        if (writable)
            return fh__rundir_fail(err, errlen, EPERM, "refusing the runtime directory %s: its "
                          "mode %04o lets other users write in it", shown, mode);
    } else {
        if (st->st_uid != 0 && st->st_uid != euid)
            return fh__rundir_fail(err, errlen, EPERM, "refusing the runtime directory under "
                          "%s: %s belongs to uid %u, neither root nor us (uid %u)",
                          shown, shown, (unsigned)st->st_uid, (unsigned)euid);
        if (writable && !(mode & S_ISVTX))
            return fh__rundir_fail(err, errlen, EPERM, "refusing the runtime directory under "
                          "%s: its mode %04o lets other users write in it without "
                          "the sticky bit", shown, mode);
    }
    return 0;
}

struct level {
    int    fd;
    size_t shown_len;           /* of walk.shown, this directory's path */
};

struct walk {
    char          full[FH_RUNDIR_PATH_MAX];
    char          rest[WALK_MAX];     /* components still to go */
    char          shown[WALK_MAX];    /* the current directory's path */
    char          target[FH_RUNDIR_PATH_MAX];
    char          name[NAME_MAX + 1];
    struct level *stack;
    size_t        depth, cap;
};

static int push(struct walk *w, int fd, size_t shown_len)
{
    if (w->depth == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        struct level *s = realloc(w->stack, cap * sizeof(*s));

        if (!s)
            return -1;
        w->stack = s;
        w->cap = cap;
    }
    w->stack[w->depth].fd = fd;
    w->stack[w->depth].shown_len = shown_len;
    w->depth++;
    return 0;
}

static void pop(struct walk *w)
{
    close(w->stack[--w->depth].fd);
    w->shown[w->stack[w->depth - 1].shown_len] = '\0';
}

/* The next component of w->rest into w->name: 1, 0 at the end, -1
 * (ENAMETOOLONG) for a name longer than NAME_MAX. */
static int next_name(struct walk *w, size_t *pos)
{
    const char *s = w->rest + *pos, *start;
    size_t n;

    while (*s == '/')
        s++;
    if (!*s)
        return 0;
    start = s;
    while (*s && *s != '/')
        s++;
    n = (size_t)(s - start);
    *pos = (size_t)(s - w->rest);
    if (n > NAME_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(w->name, start, n);
    w->name[n] = '\0';
    return 1;
}

/* w->target, then what is left of w->rest after pos, as the new rest. */
static int prepend_target(struct walk *w, size_t *pos)
{
    size_t t = strlen(w->target), r = strlen(w->rest + *pos);

    if (t + 1 + r + 1 > sizeof(w->rest)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memmove(w->rest + t + 1, w->rest + *pos, r + 1);
    memcpy(w->rest, w->target, t);
    w->rest[t] = '/';
    *pos = 0;
    return 0;
}

int fh_rundir_open(const char *path, int create, char *err, size_t errlen)
{
    struct walk *w = calloc(1, sizeof(*w));
    size_t pos = 0;
    int links = 0, checked_last, fd, got, e, ret = -1;
    struct stat st;

    no_text(err, errlen);
    if (!w)
        return os_fail(err, errlen, ENOMEM, "cannot use %s", path);
    if (absolute(path, w->full, sizeof(w->full)) < 0) {
        e = errno;
        snprintf(w->full, sizeof(w->full), "%s", path);
        goto os_error;
    }
    memcpy(w->rest, w->full, strlen(w->full) + 1);
    fd = open("/", DIR_FLAGS);
    if (fd < 0 || push(w, fd, 1) < 0) {
        e = fd < 0 ? errno : ENOMEM;
        if (fd >= 0)
            close(fd);
        goto os_error;
    }
    strcpy(w->shown, "/");
    checked_last = !more(w->rest);
    if (fstat(fd, &st) < 0) {
        e = errno;
        goto os_error;
    }
    if (check_dir(&st, "/", checked_last, err, errlen) < 0)
        goto out;

    while ((got = next_name(w, &pos)) != 0) {
        struct level *top;
        size_t len;
        int made = 0, last, n;

        if (got < 0) {
            e = errno;
            goto os_error;
        }
        if (strcmp(w->name, ".") == 0)
            continue;
        if (strcmp(w->name, "..") == 0) {
            if (w->depth > 1)
                pop(w);
            checked_last = 0;
            continue;
        }
        top = &w->stack[w->depth - 1];
        /* os.path.join(where, name): "/" + name at the top */
        len = top->shown_len;
        n = snprintf(w->shown + len, sizeof(w->shown) - len, "%s%s",
                     len == 1 ? "" : "/", w->name);
        if (n < 0 || (size_t)n >= sizeof(w->shown) - len) {
            e = ENAMETOOLONG;
            goto os_error;
        }
        if (fstatat(top->fd, w->name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno != ENOENT || !create) {
                e = errno;
                goto os_error;
            }
            if (mkdirat(top->fd, w->name, 0700) == 0) {
                made = 1;
            } else if (errno != EEXIST) {   /* EEXIST: someone of ours was quicker */
                e = errno;
                goto os_error;
            }
            if (fstatat(top->fd, w->name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                e = errno;
                goto os_error;
            }
        }
        if (S_ISLNK(st.st_mode)) {
            ssize_t tn;

            if (++links > MAX_SYMLINKS) {
                fh__rundir_fail(err, errlen, ELOOP, "cannot use the runtime directory %s: too "
                       "many symbolic links", w->full);
                goto out;
            }
            tn = readlinkat(top->fd, w->name, w->target, sizeof(w->target));
            if (tn < 0 || (size_t)tn >= sizeof(w->target)) {
                e = tn < 0 ? errno : ENAMETOOLONG;
                goto os_error;
            }
            w->target[tn] = '\0';
            w->shown[top->shown_len] = '\0';
            if (w->target[0] == '/')
                while (w->depth > 1)
                    pop(w);
            if (prepend_target(w, &pos) < 0) {
                e = errno;
                goto os_error;
            }
            checked_last = 0;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            fh__rundir_fail(err, errlen, ENOTDIR, "cannot use the runtime directory %s: %s is "
                   "not a directory", w->full, w->shown);
            goto out;
        }
        /* Ours: the umask may have taken bits. */
        if (made && (st.st_mode & 07777) != 0700 &&
            fchmodat(top->fd, w->name, 0700, 0) < 0) {
            e = errno;
            goto os_error;
        }
        fd = openat(top->fd, w->name, DIR_FLAGS);
        if (fd < 0) {
            e = errno;
            goto os_error;
        }
        if (push(w, fd, len + (size_t)n) < 0) {
            close(fd);
            e = ENOMEM;
            goto os_error;
        }
        if (fstat(fd, &st) < 0) {
            e = errno;
            goto os_error;
        }
        last = !more(w->rest + pos);
        if (check_dir(&st, w->shown, last, err, errlen) < 0)
            goto out;
        checked_last = last;
    }
    /* Where ".." or a link's "x/.." ended the walk on a directory checked
     * as one on the way: it is the runtime directory, checked as such. */
    if (!checked_last) {
        if (fstat(w->stack[w->depth - 1].fd, &st) < 0) {
            e = errno;
            goto os_error;
        }
        if (check_dir(&st, w->shown, 1, err, errlen) < 0)
            goto out;
    }
    ret = w->stack[--w->depth].fd;
    goto out;

os_error:
    if (!create && e == ENOENT) {
        no_text(err, errlen);
        ret = FH_RUNDIR_MISSING;
    } else if (create) {
        os_fail(err, errlen, e, "cannot create the runtime directory %s", w->full);
    } else {
        os_fail(err, errlen, e, "cannot use %s", w->full);
    }
out:
    e = ret == FH_RUNDIR_MISSING ? ENOENT : errno;
    while (w->depth > 0)
        close(w->stack[--w->depth].fd);
    free(w->stack);
    free(w);
    if (ret < 0)
        errno = e;
    return ret;
}

/* ------------------------------------------------------------------ */
/* the prefix directory and its files                                   */

int fh_prefix_dir_open(const struct fh_prefix_paths *p, int create, char *err,
                       size_t errlen)
{
    char dir[PREFIX_PATH_MAX];
    uid_t euid = geteuid();
    int root, fd, made = 0, e;
    struct stat st;

    path_in(dir, sizeof(dir), p->root, p->prefix);
    root = fh_rundir_open(p->root, create, err, errlen);
    if (root < 0)
        return root;
    if (create) {
        if (mkdirat(root, p->prefix, 0700) == 0) {
            made = 1;
        } else if (errno != EEXIST) {
            e = errno;
            close(root);
            return os_fail(err, errlen, e, "cannot create %s", dir);
        }
    }
    fd = openat(root, p->prefix, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    e = errno;
    close(root);
    if (fd < 0) {
        if (e == ENOENT && !create) {
            no_text(err, errlen);
            errno = ENOENT;
            return FH_RUNDIR_MISSING;
        }
        if (e == ENOTDIR || e == ELOOP)
            return fh__rundir_fail(err, errlen, e, "refusing %s: not a directory", dir);
        return os_fail(err, errlen, e, "cannot open %s", dir);
    }
    if (fstat(fd, &st) < 0)
        goto os_error;
    /* Ours: the umask may have taken bits. */
    if (made && (st.st_mode & 07777) != 0700 &&
        (fchmod(fd, 0700) < 0 || fstat(fd, &st) < 0))
        goto os_error;
    if (st.st_uid != euid) {
        close(fd);
        return fh__rundir_fail(err, errlen, EPERM, "refusing the prefix directory %s: it "
                      "belongs to uid %u, not to us (uid %u)", dir,
                      (unsigned)st.st_uid, (unsigned)euid);
    }
    if (st.st_mode & 077) {
        close(fd);
        return fh__rundir_fail(err, errlen, EPERM, "refusing the prefix directory %s: its "
                      "mode is %04o, not 0700", dir, (unsigned)(st.st_mode & 07777));
    }
    return fd;

os_error:
    e = errno;
    close(fd);
    return os_fail(err, errlen, e, "cannot open %s", dir);
}

int fh_prefix_log_open(const struct fh_prefix_paths *p, char *err, size_t errlen)
{
    char name[FH_PREFIX_MAX_LEN + 8], log[PREFIX_PATH_MAX];
    struct stat st;
    int root, fd, e, fl;

    snprintf(name, sizeof(name), "%s.log", p->prefix);
    path_in(log, sizeof(log), p->root, name);
    root = fh_rundir_open(p->root, 1, err, errlen);
    if (root < 0)
        return -1;
    fd = openat(root, name, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_NONBLOCK
                | O_CLOEXEC, 0600);
    e = errno;
    close(root);
    if (fd < 0) {
        if (e == ELOOP)
            return fh__rundir_fail(err, errlen, e, "refusing the log %s: it is a symbolic "
                          "link", log);
        return os_fail(err, errlen, e, "cannot open the log %s", log);
    }
    if (fstat(fd, &st) < 0) {
        e = errno;
        close(fd);
        return os_fail(err, errlen, e, "cannot open the log %s", log);
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        close(fd);
        return fh__rundir_fail(err, errlen, EPERM, "refusing the log %s: not a file of ours",
                      log);
    }
    /* O_NONBLOCK only kept a FIFO planted there from blocking the open. */
    if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        e = errno;
        close(fd);
        return os_fail(err, errlen, e, "cannot open the log %s", log);
    }
    return fd;
}

/* ------------------------------------------------------------------ */
/* the lock                                                             */

static int space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* The pid a lock file holds (its first word), 0 if none can be read. */
static pid_t read_pid(int fd)
{
    char buf[33];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    long long v = 0;
    size_t i = 0;

    if (n <= 0)
        return 0;
    buf[n] = '\0';
    while (space(buf[i]))
        i++;
    if (buf[i] == '+')
        i++;
    if (buf[i] < '0' || buf[i] > '9')
        return 0;
    for (; buf[i] >= '0' && buf[i] <= '9'; i++) {
        v = v * 10 + (buf[i] - '0');
        if (v > 0x7fffffff)
            return 0;
    }
    if (buf[i] && !space(buf[i]))
        return 0;
    return (pid_t)v;
}

/* ".config.<digits>.tmp": a temporary file of fh_prefix_write_config. */
static int config_tmp(const char *name)
{
    size_t n = strlen(name), d = 0;

    if (n < sizeof(".config..tmp") || strncmp(name, ".config.", 8) != 0 ||
        strcmp(name + n - 4, ".tmp") != 0)
        return 0;
    for (const char *s = name + 8; s < name + n - 4; s++, d++)
        if (*s < '0' || *s > '9')
            return 0;
    return d > 0;
}

/* What a dead holder left: its sockets, its config and the temporary
 * files of its config writes (only the lock's holder writes them, so all
 * of them are stale now).  *stale becomes 0 if it was -1 and a file was
 * removed.  0, or -1 with errno. */
static int clean_leftovers(int dfd, unsigned keep, pid_t *stale)
{
    struct dirent *ent;
    DIR *d;
    int fd, e;

    for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++) {
        if (keep & leftover_keep[i])
            continue;
        if (unlinkat(dfd, leftovers[i], 0) == 0) {
            if (*stale < 0)
                *stale = 0;
        } else if (errno != ENOENT) {
            return -1;
        }
    }
    fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    d = fdopendir(fd);
    if (!d) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    for (;;) {
        errno = 0;
        ent = readdir(d);
        if (!ent)
            break;
        if (config_tmp(ent->d_name) && unlinkat(dfd, ent->d_name, 0) < 0 &&
            errno != ENOENT) {
            e = errno;
            closedir(d);
            errno = e;
            return -1;
        }
    }
    e = errno;
    closedir(d);
    errno = e;
    return e ? -1 : 0;
}

/* Unlink the prefix's files (but those keep spares) and its directory
 * (when empty). */
static void remove_files(int dfd, unsigned keep, const char *dir)
{
    for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++)
        if (!(keep & leftover_keep[i]))
            unlinkat(dfd, leftovers[i], 0);
    unlinkat(dfd, "lock", 0);
    rmdir(dir);
}

static int write_pid(int fd, pid_t pid)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
    size_t done = 0;

    if (ftruncate(fd, 0) < 0)
        return -1;
    while (done < (size_t)n) {
        ssize_t w = pwrite(fd, buf + done, (size_t)n - done, (off_t)done);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = ENOSPC;
            return -1;
        }
        done += (size_t)w;
    }
    return 0;
}

int fh_prefix_lock(const struct fh_prefix_paths *p, pid_t *holder, pid_t *stale,
                   char *err, size_t errlen)
{
    return fh_prefix_lock_keep(p, 0, holder, stale, err, errlen);
}

int fh_prefix_lock_keep(const struct fh_prefix_paths *p, unsigned keep,
                        pid_t *holder, pid_t *stale, char *err, size_t errlen)
{
    char dir[PREFIX_PATH_MAX], lock[PREFIX_PATH_MAX];
    pid_t me = getpid(), old, was = -1;
    struct stat a, b;
    int dfd, fd = -1, e;

    if (holder)
        *holder = 0;
    if (stale)
        *stale = -1;
    path_in(dir, sizeof(dir), p->root, p->prefix);
    path_in(lock, sizeof(lock), dir, "lock");
    dfd = fh_prefix_dir_open(p, 1, err, errlen);
    if (dfd < 0)
        return -1;
    for (;;) {
        fd = openat(dfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            goto lock_error;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            if (errno != EWOULDBLOCK)
                goto lock_error;
            pid_t pid = read_pid(fd);

            if (holder)
                *holder = pid;
            close(fd);
            close(dfd);
            fh__rundir_fail(err, errlen, EWOULDBLOCK, FH_PREFIX_IN_USE, p->prefix, (int)pid, dir);
            return FH_PREFIX_BUSY;
        }
        /* A stopping holder unlinks the lock before releasing it: if what
         * we locked is no longer at the path, lock what is there now. */
        if (fstat(fd, &a) < 0)
            goto lock_error;
        if (fstatat(dfd, "lock", &b, AT_SYMLINK_NOFOLLOW) == 0) {
            if (a.st_dev == b.st_dev && a.st_ino == b.st_ino)
                break;
        } else if (errno != ENOENT) {
            goto lock_error;
        }
        close(fd);
        fd = -1;
    }
    old = read_pid(fd);
    if (old > 0 && old != me)
        was = old;
    if ((!(keep & FH_PREFIX_KEEP_LEFTOVERS) && clean_leftovers(dfd, keep, &was) < 0) ||
        write_pid(fd, me) < 0) {
        e = errno;
        close(fd);
        remove_files(dfd, keep, dir);
        close(dfd);
        return os_fail(err, errlen, e, "cannot write %s", lock);
    }
    close(dfd);
    if (stale)
        *stale = was;
    return fd;

lock_error:
    e = errno;
    if (fd >= 0)
        close(fd);
    close(dfd);
    rmdir(dir);                 /* only if empty: it may be another's */
    return os_fail(err, errlen, e, "cannot lock %s", lock);
}

int fh_prefix_clean_leftovers(const struct fh_prefix_paths *p, unsigned keep,
                              pid_t *stale, char *err, size_t errlen)
{
    int dfd = fh_prefix_dir_open(p, 0, err, errlen), rc;

    if (dfd < 0)
        return -1;
    rc = clean_leftovers(dfd, keep & ~FH_PREFIX_KEEP_LEFTOVERS, stale);
    close(dfd);
    if (rc < 0)
        return os_fail(err, errlen, errno, "cannot clean %s/%s", p->root,
                       p->prefix);
    return 0;
}

void fh_prefix_release(const struct fh_prefix_paths *p, int lock_fd)
{
    fh_prefix_release_keep(p, 0, lock_fd);
}

FH_API void fh_prefix_lock_leave(int lock_fd, pid_t stale)
{
    if (stale > 0 && write_pid(lock_fd, stale) < 0) {
        /* the next holder reads no pid: it says "a dead primary" */
    }
    close(lock_fd);
}

void fh_prefix_release_keep(const struct fh_prefix_paths *p, unsigned keep,
                            int lock_fd)
{
    char dir[PREFIX_PATH_MAX];
    int dfd, e = errno;

    path_in(dir, sizeof(dir), p->root, p->prefix);
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd >= 0) {
        remove_files(dfd, keep, dir);
        close(dfd);
    }
    if (lock_fd >= 0)
        close(lock_fd);
    errno = e;
}

/* ------------------------------------------------------------------ */
/* the config record                                                    */

int fh_prefix_write_config(const struct fh_prefix_paths *p, const char *text,
                           char *err, size_t errlen)
{
    char dir[PREFIX_PATH_MAX], config[PREFIX_PATH_MAX], tmp[48];
    size_t len = strlen(text), done = 0;
    int dfd, fd, e;

    path_in(dir, sizeof(dir), p->root, p->prefix);
    path_in(config, sizeof(config), dir, "config.json");
    snprintf(tmp, sizeof(tmp), ".config.%d.tmp", (int)getpid());
    dfd = fh_prefix_dir_open(p, 0, err, errlen);
    if (dfd == FH_RUNDIR_MISSING)
        return os_fail(err, errlen, ENOENT, "cannot write %s", config);
    if (dfd < 0)
        return -1;
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        goto fail;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            e = w == 0 ? ENOSPC : errno;
            close(fd);
            errno = e;
            goto fail;
        }
        done += (size_t)w;
    }
    if (close(fd) < 0 || renameat(dfd, tmp, dfd, "config.json") < 0)
        goto fail;
    close(dfd);
    return 0;

fail:
    e = errno;
    unlinkat(dfd, tmp, 0);
    close(dfd);
    return os_fail(err, errlen, e, "cannot write %s", config);
}
