/*
 * rundir_path.c - where a prefix lives (forkhost/rundir.h): its name, its
 * runtime directory, its socket's path.
 *
 * Compiled into libforkhost and into forkhost-run (build_native.py), so
 * that the primaries and the client find the same place by the same code.
 * The client links no libc on x86_64 (csrc/client/rt/rt.c): only getenv,
 * stat, getuid/geteuid, snprintf and the string functions rt.c has are
 * used here.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "forkhost/rundir.h"

/* The text into err, errno e, -1: how every rundir function fails
 * (rundir.c's too; declared in rundir.h's internal part). */
int fh__rundir_fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    errno = e;
    return -1;
}

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

int fh_prefix_name(char out[FH_PREFIX_MAX_LEN + 1], const char *prefix,
                   const char *origin, char *err, size_t errlen)
{
    if (!prefix) {
        prefix = env_nonempty("FORKHOST_PREFIX");
        origin = "FORKHOST_PREFIX";
        if (!prefix) {
            prefix = FH_PREFIX_DEFAULT;
            origin = "the default";
        }
    }
    if (!prefix_ok(prefix))
        return fh__rundir_fail(err, errlen, EINVAL, FH_PREFIX_INVALID, prefix,
                    origin ? origin : "--prefix");
    memmove(out, prefix, strlen(prefix) + 1);     /* prefix may be out */
    return 0;
}

/* s in place as pathlib shows a path: components joined by one "/",
 * without "" and "." ones; a leading "/" kept, "//" kept as POSIX allows
 * (three or more are one); "." when nothing is left. */
static void normalize(char *s)
{
    size_t r = 0, w = 0, lead = 0;

    while (s[lead] == '/')
        lead++;
    lead = lead == 2 ? 2 : lead ? 1 : 0;
    w = lead;
    r = 0;
    while (s[r] == '/')
        r++;
    while (s[r]) {
        size_t start = r, n;

        while (s[r] && s[r] != '/')
            r++;
        n = r - start;
        while (s[r] == '/')
            r++;
        if (n == 1 && s[start] == '.')
            continue;
        if (w > lead)
            s[w++] = '/';
        memmove(s + w, s + start, n);
        w += n;
    }
    for (size_t i = 0; i < lead; i++)
        s[i] = '/';
    if (w == 0)
        s[w++] = '.';
    s[w] = '\0';
}

/* "%s/%s" of a and b into out, normalized; -1 when it does not fit. */
static int join(char *out, size_t outlen, const char *a, const char *b)
{
    int n = snprintf(out, outlen, "%s/%s", a, b);

    if (n < 0 || (size_t)n >= outlen)
        return -1;
    normalize(out);
    return 0;
}

int fh_rundir_path(char *out, size_t outlen, const char *dir, char *err,
                   size_t errlen)
{
    const char *base;
    char sub[32];
    struct stat st;
    int n;

    if (outlen > FH_RUNDIR_PATH_MAX)
        outlen = FH_RUNDIR_PATH_MAX;
    if (!dir || !*dir)
        dir = env_nonempty("FORKHOST_RUNTIME_DIR");
    if (dir)
        n = snprintf(out, outlen, "%s", dir);
    else if ((base = env_nonempty("RUNTIME_DIRECTORY")) ||
             (base = env_nonempty("XDG_RUNTIME_DIR")))
        n = snprintf(out, outlen, "%s/forkhost", base);
    else if (geteuid() == 0)
        n = snprintf(out, outlen, "/run/forkhost");
    else
        n = snprintf(out, outlen, "/tmp/" FH_RUNDIR_SHARED_SUBDIR,
                     (unsigned)getuid());
    if (n < 0 || (size_t)n >= outlen)
        return fh__rundir_fail(err, errlen, ENAMETOOLONG, FH_RUNDIR_TOO_LONG, out);
    normalize(out);
    /* A shared sticky directory: ours is the private subdirectory in it. */
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode) &&
        (st.st_mode & S_ISVTX) && (st.st_mode & (S_IWGRP | S_IWOTH))) {
        size_t len = strlen(out);

        snprintf(sub, sizeof(sub), FH_RUNDIR_SHARED_SUBDIR, (unsigned)getuid());
        n = snprintf(out + len, outlen - len, "/%s", sub);
        if (n < 0 || (size_t)n >= outlen - len)
            return fh__rundir_fail(err, errlen, ENAMETOOLONG, FH_RUNDIR_TOO_LONG, out);
        normalize(out);
    }
    return 0;
}

int fh_prefix_socket_path(const struct fh_prefix_paths *p, char *out,
                          size_t outlen, char *err, size_t errlen)
{
    char dir[FH_RUNDIR_PATH_MAX + FH_PREFIX_MAX_LEN + 2];
    char path[sizeof(dir) + sizeof("/template.sock")];
    size_t n;

    if (join(dir, sizeof(dir), p->root, p->prefix) < 0 ||
        join(path, sizeof(path), dir, "template.sock") < 0)
        return fh__rundir_fail(err, errlen, ENAMETOOLONG, FH_RUNDIR_TOO_LONG, p->root);
    n = strlen(path);
    if (n > FH_SOCKET_PATH_MAX)
        return fh__rundir_fail(err, errlen, ENAMETOOLONG, FH_SOCKET_PATH_TOO_LONG, (int)n,
                    FH_SOCKET_PATH_MAX, path);
    if (n >= outlen)
        return fh__rundir_fail(err, errlen, ENAMETOOLONG, FH_RUNDIR_TOO_LONG, path);
    memcpy(out, path, n + 1);
    return (int)n;
}

int fh_prefix_resolve(struct fh_prefix_paths *p, const char *prefix,
                      const char *origin, const char *runtime_dir, char *err,
                      size_t errlen)
{
    char sock[FH_SOCKET_PATH_MAX + 1];

    if (fh_prefix_name(p->prefix, prefix, origin, err, errlen) < 0 ||
        fh_rundir_path(p->root, sizeof(p->root), runtime_dir, err, errlen) < 0 ||
        fh_prefix_socket_path(p, sock, sizeof(sock), err, errlen) < 0)
        return -1;
    return 0;
}
