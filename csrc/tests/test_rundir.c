/*
 * test_rundir.c - the runtime directory, the prefix's lock and its config
 * record (forkhost/rundir.h): where a prefix lives, what is created (0700
 * whatever the umask), what is refused and in which words (a directory
 * others may write in, one of another user, a symbolic link loop, a file
 * on the way), the lock held by another process (its pid reported), a dead
 * holder's leftovers removed (its pid reported), and release leaving
 * nothing behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "forkhost.h"

#include "fhtest.h"

#define OTHER_UID 1001          /* any uid that is neither root nor us */

static char base[PATH_MAX];     /* this run's private directory */
static char err[FH_RUNDIR_ERR_MAX];

__attribute__((format(printf, 1, 2)))
static const char *fmt(const char *f, ...)
{
    static char buf[8][FH_RUNDIR_ERR_MAX];
    static int which;
    char *b = buf[which++ % 8];
    va_list ap;

    va_start(ap, f);
    vsnprintf(b, sizeof(buf[0]), f, ap);
    va_end(ap);
    return b;
}

/* base/rel */
static const char *at(const char *rel)
{
    return fmt("%s/%s", base, rel);
}

static unsigned mode_of(const char *path)
{
    struct stat st;

    CHECK(lstat(path, &st) == 0, "lstat %s", path);
    return st.st_mode & 07777;
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static void make_dir(const char *path, unsigned mode)
{
    CHECK(mkdir(path, 0700) == 0, "mkdir %s", path);
    CHECK(chmod(path, mode) == 0, "chmod %s", path);
}

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    CHECK(fd >= 0, "open %s", path);
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "write %s", path);
    close(fd);
}

static const char *read_file(const char *path)
{
    static char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    CHECK(fd >= 0, "open %s", path);
    n = read(fd, buf, sizeof(buf) - 1);
    CHECK(n >= 0, "read %s", path);
    buf[n] = '\0';
    close(fd);
    return buf;
}

static void paths_for(struct fh_prefix_paths *p, const char *root, const char *prefix)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->root, sizeof(p->root), "%s", root);
    snprintf(p->prefix, sizeof(p->prefix), "%s", prefix);
}

/* --- where ---------------------------------------------------------- */

static void test_where(void)
{
    struct fh_prefix_paths p;
    char name[FH_PREFIX_MAX_LEN + 1], out[FH_RUNDIR_PATH_MAX];
    char sock[FH_SOCKET_PATH_MAX + 1], longdir[200];

    unsetenv("FORKHOST_PREFIX");
    EXPECT(fh_prefix_name(name, NULL, NULL, err, sizeof(err)) == 0 &&
           strcmp(name, FH_PREFIX_DEFAULT) == 0, "default prefix: %s", name);
    setenv("FORKHOST_PREFIX", "", 1);            /* empty counts as unset */
    EXPECT(fh_prefix_name(name, NULL, NULL, err, sizeof(err)) == 0 &&
           strcmp(name, FH_PREFIX_DEFAULT) == 0, "empty FORKHOST_PREFIX: %s", name);
    setenv("FORKHOST_PREFIX", "../x", 1);
    EXPECT(fh_prefix_name(name, NULL, NULL, err, sizeof(err)) == -1 &&
           strcmp(err, fmt(FH_PREFIX_INVALID, "../x", "FORKHOST_PREFIX")) == 0,
           "bad FORKHOST_PREFIX: %s", err);
    unsetenv("FORKHOST_PREFIX");
    EXPECT(fh_prefix_name(name, "", "--prefix", err, sizeof(err)) == -1 &&
           errno == EINVAL &&
           strcmp(err, "invalid prefix '' (from --prefix): use 1 to 64 of A-Z a-z "
                  "0-9 . _ -, not '.' or '..'") == 0, "empty prefix: %s", err);
    EXPECT(fh_prefix_name(name, "..", "--file-prefix", err, sizeof(err)) == -1,
           "'..' accepted");
    EXPECT(fh_prefix_name(name, fmt("%065d", 0), "x", err, sizeof(err)) == -1,
           "65 characters accepted");
    EXPECT(fh_prefix_name(name, "a.B_c-9", "x", err, sizeof(err)) == 0 &&
           strcmp(name, "a.B_c-9") == 0, "a valid prefix: %s", err);

    /* The order of the environment's choices, and the shown form. */
    setenv("FORKHOST_RUNTIME_DIR", "/x//y/./", 1);
    setenv("XDG_RUNTIME_DIR", "/xdg", 1);
    EXPECT(fh_rundir_path(out, sizeof(out), NULL, err, sizeof(err)) == 0 &&
           strcmp(out, "/x/y") == 0, "FORKHOST_RUNTIME_DIR: %s", out);
    EXPECT(fh_rundir_path(out, sizeof(out), "rel/", err, sizeof(err)) == 0 &&
           strcmp(out, "rel") == 0, "given: %s", out);
    EXPECT(fh_rundir_path(out, sizeof(out), "./", err, sizeof(err)) == 0 &&
           strcmp(out, ".") == 0, "given '.': %s", out);
    EXPECT(fh_rundir_path(out, sizeof(out), "//a//", err, sizeof(err)) == 0 &&
           strcmp(out, "//a") == 0, "'//' kept: %s", out);
    EXPECT(fh_rundir_path(out, sizeof(out), "///a/.", err, sizeof(err)) == 0 &&
           strcmp(out, "/a") == 0, "'///' is '/': %s", out);
    setenv("FORKHOST_RUNTIME_DIR", "", 1);
    EXPECT(fh_rundir_path(out, sizeof(out), "", err, sizeof(err)) == 0 &&
           strcmp(out, "/xdg/forkhost") == 0, "XDG_RUNTIME_DIR: %s", out);
    setenv("RUNTIME_DIRECTORY", "/svc", 1);
    EXPECT(fh_rundir_path(out, sizeof(out), NULL, err, sizeof(err)) == 0 &&
           strcmp(out, "/svc/forkhost") == 0, "RUNTIME_DIRECTORY: %s", out);
    unsetenv("RUNTIME_DIRECTORY");
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("FORKHOST_RUNTIME_DIR");
    EXPECT(fh_rundir_path(out, sizeof(out), NULL, err, sizeof(err)) == 0 &&
           strcmp(out, geteuid() == 0 ? "/run/forkhost"
                       : fmt("/tmp/forkhost-%u", (unsigned)getuid())) == 0,
           "the default: %s", out);

    /* A shared sticky directory: our private subdirectory in it. */
    make_dir(at("shared"), 01777);
    EXPECT(fh_rundir_path(out, sizeof(out), at("shared"), err, sizeof(err)) == 0 &&
           strcmp(out, at(fmt("shared/forkhost-%u", (unsigned)getuid()))) == 0,
           "sticky: %s", out);
    CHECK(rmdir(at("shared")) == 0, "rmdir");

    /* The socket's path, refused over sun_path's limit. */
    paths_for(&p, "/r/", "P");
    EXPECT(fh_prefix_socket_path(&p, sock, sizeof(sock), err, sizeof(err)) ==
           (int)strlen("/r/P/template.sock") && strcmp(sock, "/r/P/template.sock") == 0,
           "socket: %s", sock);
    memset(longdir, 'd', 95);
    longdir[95] = '\0';
    EXPECT(fh_prefix_resolve(&p, "t", "--prefix", fmt("/%s", longdir), err,
                             sizeof(err)) == -1 && errno == ENAMETOOLONG &&
           strcmp(err, fmt(FH_SOCKET_PATH_TOO_LONG, 1 + 95 + 16, FH_SOCKET_PATH_MAX,
                           fmt("/%s/t/template.sock", longdir))) == 0,
           "long socket path: %s", err);
    /* The first refusal is the prefix's. */
    EXPECT(fh_prefix_resolve(&p, "", "--prefix", fmt("/%s", longdir), err,
                             sizeof(err)) == -1 && strncmp(err, "invalid prefix", 14) == 0,
           "prefix first: %s", err);
    EXPECT(fh_prefix_resolve(&p, "t", "--prefix", "/r", err, sizeof(err)) == 0 &&
           strcmp(p.root, "/r") == 0 && strcmp(p.prefix, "t") == 0, "resolve: %s", err);
}

/* --- the walk -------------------------------------------------------- */

static void test_create(void)
{
    struct fh_prefix_paths p;
    mode_t old = umask(0);      /* 0700 whatever the umask leaves */
    int fd;

    fd = fh_rundir_open(at("c/d/e"), 0, err, sizeof(err));
    EXPECT(fd == FH_RUNDIR_MISSING && errno == ENOENT && err[0] == '\0',
           "missing without create: %d %s", fd, err);
    EXPECT(!exists(at("c")), "created without create");
    fd = fh_rundir_open(at("c/d/e"), 1, err, sizeof(err));
    EXPECT(fd >= 0, "create: %s", err);
    if (fd >= 0)
        close(fd);
    EXPECT(mode_of(at("c")) == 0700 && mode_of(at("c/d")) == 0700 &&
           mode_of(at("c/d/e")) == 0700, "modes %o %o %o", mode_of(at("c")),
           mode_of(at("c/d")), mode_of(at("c/d/e")));
    umask(022);
    paths_for(&p, at("c/d/e"), "P");
    fd = fh_prefix_dir_open(&p, 1, err, sizeof(err));
    EXPECT(fd >= 0 && mode_of(at("c/d/e/P")) == 0700, "prefix dir: %s", err);
    if (fd >= 0)
        close(fd);
    paths_for(&p, at("c/d/e"), "Q");
    EXPECT(fh_prefix_dir_open(&p, 0, err, sizeof(err)) == FH_RUNDIR_MISSING &&
           err[0] == '\0', "missing prefix dir: %s", err);
    /* An existing directory's mode is never changed: 0750 is refused. */
    CHECK(chmod(at("c/d/e/P"), 0750) == 0, "chmod");
    paths_for(&p, at("c/d/e"), "P");
    EXPECT(fh_prefix_dir_open(&p, 1, err, sizeof(err)) == -1 &&
           strcmp(err, fmt("refusing the prefix directory %s: its mode is 0750, "
                           "not 0700", at("c/d/e/P"))) == 0, "0750: %s", err);
    EXPECT(mode_of(at("c/d/e/P")) == 0750, "chmodded");
    CHECK(rmdir(at("c/d/e/P")) == 0 && rmdir(at("c/d/e")) == 0 &&
          rmdir(at("c/d")) == 0 && rmdir(at("c")) == 0, "rmdir");
    umask(old);
}

static void test_refusals(void)
{
    struct fh_prefix_paths p;
    int fd;

    /* A directory on the way that others may write in, without the
     * sticky bit: nothing is created under it. */
    make_dir(at("open"), 0777);
    fd = fh_rundir_open(at("open/rt"), 1, err, sizeof(err));
    EXPECT(fd == -1 && strcmp(err, fmt("refusing the runtime directory under %s: "
                                       "its mode 0777 lets other users write in it "
                                       "without the sticky bit", at("open"))) == 0,
           "open on the way: %s", err);
    EXPECT(!exists(at("open/rt")), "created under an open directory");
    /* The same with the sticky bit is fine on the way ... */
    CHECK(chmod(at("open"), 01777) == 0, "chmod");
    fd = fh_rundir_open(at("open/rt"), 1, err, sizeof(err));
    EXPECT(fd >= 0, "sticky on the way: %s", err);
    if (fd >= 0)
        close(fd);
    CHECK(rmdir(at("open/rt")) == 0, "rmdir");
    /* ... but not as the runtime directory itself. */
    fd = fh_rundir_open(at("open"), 1, err, sizeof(err));
    EXPECT(fd == -1 && strcmp(err, fmt("refusing the runtime directory %s: its mode "
                                       "1777 lets other users write in it",
                                       at("open"))) == 0, "sticky itself: %s", err);
    CHECK(rmdir(at("open")) == 0, "rmdir");
    make_dir(at("grp"), 0770);
    paths_for(&p, at("grp"), "P");
    EXPECT(fh_prefix_lock(&p, NULL, NULL, err, sizeof(err)) == -1 &&
           strcmp(err, fmt("refusing the runtime directory %s: its mode 0770 lets "
                           "other users write in it", at("grp"))) == 0,
           "group-writable: %s", err);
    EXPECT(!exists(at("grp/P")), "prefix made in a refused directory");
    CHECK(rmdir(at("grp")) == 0, "rmdir");

    /* A file on the way. */
    write_file(at("file"), "x");
    fd = fh_rundir_open(at("file/rt"), 1, err, sizeof(err));
    EXPECT(fd == -1 && strcmp(err, fmt("cannot use the runtime directory %s: %s is "
                                       "not a directory", at("file/rt"),
                                       at("file"))) == 0, "file: %s", err);
    CHECK(unlink(at("file")) == 0, "unlink");

    /* Another user's directory, on the way and as the runtime directory. */
    if (geteuid() != 0) {
        printf("test_rundir: not root: another owner's directory not tried\n");
        return;
    }
    make_dir(at("theirs"), 0755);
    CHECK(chown(at("theirs"), OTHER_UID, OTHER_UID) == 0, "chown");
    fd = fh_rundir_open(at("theirs/rt"), 1, err, sizeof(err));
    EXPECT(fd == -1 && strcmp(err, fmt("refusing the runtime directory under %s: %s "
                                       "belongs to uid %d, neither root nor us "
                                       "(uid 0)", at("theirs"), at("theirs"),
                                       OTHER_UID)) == 0, "theirs on the way: %s", err);
    fd = fh_rundir_open(at("theirs"), 1, err, sizeof(err));
    EXPECT(fd == -1 && strcmp(err, fmt("refusing the runtime directory %s: it belongs "
                                       "to uid %d, not to us (uid 0)", at("theirs"),
                                       OTHER_UID)) == 0, "theirs: %s", err);
    EXPECT(!exists(at("theirs/rt")), "created in theirs");
    /* A prefix directory of theirs in our runtime directory. */
    CHECK(chown(at("theirs"), 0, 0) == 0 && chmod(at("theirs"), 0700) == 0, "chown");
    make_dir(at("theirs/P"), 0700);
    CHECK(chown(at("theirs/P"), OTHER_UID, OTHER_UID) == 0, "chown");
    paths_for(&p, at("theirs"), "P");
    EXPECT(fh_prefix_lock(&p, NULL, NULL, err, sizeof(err)) == -1 &&
           strcmp(err, fmt("refusing the prefix directory %s: it belongs to uid %d, "
                           "not to us (uid 0)", at("theirs/P"), OTHER_UID)) == 0,
           "their prefix dir: %s", err);
    EXPECT(!exists(at("theirs/P/lock")), "lock made in their directory");
    CHECK(rmdir(at("theirs/P")) == 0 && rmdir(at("theirs")) == 0, "rmdir");
}

static void test_symlinks(void)
{
    struct fh_prefix_paths p;
    int fd;

    /* A link in a checked directory is followed, relative or absolute. */
    make_dir(at("real"), 0700);
    CHECK(symlink("real", at("rel")) == 0 && symlink(at("real"), at("abs")) == 0,
          "symlink");
    fd = fh_rundir_open(at("rel"), 0, err, sizeof(err));
    EXPECT(fd >= 0, "relative link: %s", err);
    if (fd >= 0)
        close(fd);
    paths_for(&p, at("abs"), "P");
    fd = fh_prefix_lock(&p, NULL, NULL, err, sizeof(err));
    EXPECT(fd >= 0 && exists(at("real/P/lock")), "absolute link: %s", err);
    if (fd >= 0)
        fh_prefix_release(&p, fd);
    EXPECT(!exists(at("real/P")), "released");
    /* A link as the prefix directory is refused, not followed. */
    CHECK(symlink("..", at("real/P")) == 0, "symlink");
    paths_for(&p, at("real"), "P");
    EXPECT(fh_prefix_lock(&p, NULL, NULL, err, sizeof(err)) == -1 &&
           strcmp(err, fmt("refusing %s: not a directory", at("real/P"))) == 0,
           "linked prefix dir: %s", err);
    /* A link that ends on a directory passed as one on the way (sticky,
     * writable by all) leaves it the runtime directory: checked as such. */
    make_dir(at("real/sub"), 0700);
    CHECK(chmod(at("real"), 01777) == 0 && symlink("sub/..", at("real/up")) == 0,
          "symlink");
    EXPECT(fh_rundir_open(at("real/up"), 0, err, sizeof(err)) == -1 &&
           strcmp(err, fmt("refusing the runtime directory %s: its mode 1777 lets "
                           "other users write in it", at("real"))) == 0,
           "'..' at the end: %s", err);
    CHECK(chmod(at("real"), 0700) == 0 && unlink(at("real/up")) == 0 &&
          rmdir(at("real/sub")) == 0, "clean up");
    /* A loop. */
    CHECK(symlink("loop2", at("loop1")) == 0 && symlink("loop1", at("loop2")) == 0,
          "symlink");
    fd = fh_rundir_open(at("loop1"), 1, err, sizeof(err));
    EXPECT(fd == -1 && errno == ELOOP &&
           strcmp(err, fmt("cannot use the runtime directory %s: too many symbolic "
                           "links", at("loop1"))) == 0, "loop: %s", err);
    CHECK(unlink(at("loop1")) == 0 && unlink(at("loop2")) == 0 &&
          unlink(at("real/P")) == 0 && unlink(at("rel")) == 0 &&
          unlink(at("abs")) == 0 && rmdir(at("real")) == 0, "clean up");
}

/* --- the lock --------------------------------------------------------- */

static void test_lock_busy(void)
{
    struct fh_prefix_paths p;
    int ready[2], go[2], fd;
    pid_t child, holder = -1, stale = 5;
    char c;

    paths_for(&p, at("rt"), "P");
    CHECK(pipe2(ready, O_CLOEXEC) == 0 && pipe2(go, O_CLOEXEC) == 0, "pipe2");
    child = fork_child();
    if (child == 0) {
        pid_t st;
        int lfd = fh_prefix_lock(&p, NULL, &st, err, sizeof(err));

        c = lfd >= 0 && st == -1 ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) < 0)
            _exit(2);
        fh_prefix_release(&p, lfd);
        _exit(0);
    }
    CHECK(read(ready[0], &c, 1) == 1 && c == 'y', "the child's lock");
    fd = fh_prefix_lock(&p, &holder, &stale, err, sizeof(err));
    EXPECT(fd == FH_PREFIX_BUSY && holder == child &&
           strcmp(err, fmt("prefix 'P' is in use by the primary with pid %d (%s)",
                           (int)child, at("rt/P"))) == 0,
           "busy: %d holder %d (child %d) %s", fd, (int)holder, (int)child, err);
    EXPECT(strcmp(read_file(at("rt/P/lock")), fmt("%d\n", (int)child)) == 0,
           "the holder's lock was written to: %s", read_file(at("rt/P/lock")));
    CHECK(write(go[1], "x", 1) == 1, "write");
    EXPECT(reap(child) == 0, "child");
    EXPECT(!exists(at("rt/P")), "the child's release");
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
    /* Free again: ours. */
    fd = fh_prefix_lock(&p, &holder, &stale, err, sizeof(err));
    EXPECT(fd >= 0 && stale == -1, "after release: %s", err);
    fh_prefix_release(&p, fd);
    CHECK(rmdir(at("rt")) == 0, "rmdir");
}

static void test_leftovers(void)
{
    struct fh_prefix_paths p;
    pid_t dead, stale = 7;
    struct stat st;
    int fd;

    /* A dead holder's pid: a child already reaped. */
    dead = fork_child();
    if (dead == 0)
        _exit(0);
    CHECK(reap(dead) == 0, "reap");
    make_dir(at("rt"), 0700);
    make_dir(at("rt/P"), 0700);
    write_file(at("rt/P/lock"), fmt("%d\n", (int)dead));
    write_file(at("rt/P/template.sock"), "");
    write_file(at("rt/P/config.json"), "{}");
    write_file(at("rt/P/ipc.sock"), "");
    write_file(at("rt/P/.config.123.tmp"), "{");
    write_file(at("rt/P/.config.x.tmp"), "not ours");
    paths_for(&p, at("rt"), "P");
    fd = fh_prefix_lock(&p, NULL, &stale, err, sizeof(err));
    EXPECT(fd >= 0 && stale == dead, "stale %d (dead %d) %s", (int)stale, (int)dead,
           err);
    EXPECT(!exists(at("rt/P/template.sock")) && !exists(at("rt/P/config.json")) &&
           !exists(at("rt/P/ipc.sock")) && !exists(at("rt/P/.config.123.tmp")),
           "leftovers kept");
    EXPECT(exists(at("rt/P/.config.x.tmp")), "a file not ours removed");
    EXPECT(strcmp(read_file(at("rt/P/lock")), fmt("%d\n", (int)getpid())) == 0,
           "our pid: %s", read_file(at("rt/P/lock")));
    EXPECT(fcntl(fd, F_GETFD) == FD_CLOEXEC, "lock fd not O_CLOEXEC");

    /* The config record: replaced whole, 0600, no temporary file left. */
    EXPECT(fh_prefix_write_config(&p, "{\"a\": 1}\n", err, sizeof(err)) == 0, "%s", err);
    EXPECT(fh_prefix_write_config(&p, "{\"b\": 2}\n", err, sizeof(err)) == 0, "%s", err);
    EXPECT(strcmp(read_file(at("rt/P/config.json")), "{\"b\": 2}\n") == 0, "config");
    EXPECT(mode_of(at("rt/P/config.json")) == 0600, "config mode %o",
           mode_of(at("rt/P/config.json")));
    EXPECT(!exists(at(fmt("rt/P/.config.%d.tmp", (int)getpid()))), "tmp left");

    /* Release: everything of ours goes, the directory only when empty. */
    write_file(at("rt/P/template.sock"), "");
    write_file(at("rt/P/ipc.sock"), "");
    fh_prefix_release(&p, fd);
    EXPECT(fcntl(fd, F_GETFD) == -1 && errno == EBADF, "lock fd left open");
    EXPECT(!exists(at("rt/P/lock")) && !exists(at("rt/P/config.json")) &&
           !exists(at("rt/P/template.sock")) && !exists(at("rt/P/ipc.sock")),
           "files left");
    EXPECT(exists(at("rt/P/.config.x.tmp")), "a file not ours removed");
    CHECK(unlink(at("rt/P/.config.x.tmp")) == 0, "unlink");

    /* Leftovers of an unknown holder (no pid in the lock): stale 0. */
    write_file(at("rt/P/lock"), "garbage\n");
    write_file(at("rt/P/config.json"), "{}");
    fd = fh_prefix_lock(&p, NULL, &stale, err, sizeof(err));
    EXPECT(fd >= 0 && stale == 0, "unknown holder: stale %d %s", (int)stale, err);
    fh_prefix_release(&p, fd);
    EXPECT(!exists(at("rt/P")), "prefix dir left");

    /* Socket activation: the sockets the service manager made are kept,
     * as leftovers and at release; the rest goes as before. */
    make_dir(at("rt/P"), 0700);
    write_file(at("rt/P/template.sock"), "");
    write_file(at("rt/P/ipc.sock"), "");
    write_file(at("rt/P/config.json"), "{}");
    fd = fh_prefix_lock_keep(&p, FH_PREFIX_KEEP_SOCKET | FH_PREFIX_KEEP_IPC, NULL,
                             &stale, err, sizeof(err));
    EXPECT(fd >= 0 && stale == 0, "keep: stale %d %s", (int)stale, err);
    EXPECT(exists(at("rt/P/template.sock")) && exists(at("rt/P/ipc.sock")) &&
           !exists(at("rt/P/config.json")), "keep: leftovers");
    fh_prefix_release_keep(&p, FH_PREFIX_KEEP_SOCKET, fd);
    EXPECT(exists(at("rt/P/template.sock")) && !exists(at("rt/P/ipc.sock")) &&
           !exists(at("rt/P/lock")), "keep: release");
    CHECK(unlink(at("rt/P/template.sock")) == 0, "unlink");
    CHECK(rmdir(at("rt/P")) == 0, "rmdir");

    /* Nothing left: stale -1; the config cannot be written without the
     * directory. */
    fd = fh_prefix_lock(&p, NULL, &stale, err, sizeof(err));
    EXPECT(fd >= 0 && stale == -1, "clean: stale %d %s", (int)stale, err);
    fh_prefix_release(&p, fd);
    EXPECT(fh_prefix_write_config(&p, "{}", err, sizeof(err)) == -1 &&
           strcmp(err, fmt("cannot write %s: %s", at("rt/P/config.json"),
                           strerror(ENOENT))) == 0, "no directory: %s", err);
    EXPECT(stat(at("rt"), &st) == 0 && (st.st_mode & 07777) == 0700, "rt");
    CHECK(rmdir(at("rt")) == 0, "rmdir");
}

static void test_log(void)
{
    struct fh_prefix_paths p;
    int fd;

    paths_for(&p, at("rt"), "P");
    fd = fh_prefix_log_open(&p, err, sizeof(err));
    EXPECT(fd >= 0 && mode_of(at("rt/P.log")) == 0600 &&
           !(fcntl(fd, F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFL) & O_APPEND),
           "log: %s", err);
    if (fd >= 0)
        close(fd);
    CHECK(unlink(at("rt/P.log")) == 0 && symlink("/etc/passwd", at("rt/P.log")) == 0,
          "symlink");
    EXPECT(fh_prefix_log_open(&p, err, sizeof(err)) == -1 &&
           strcmp(err, fmt("refusing the log %s: it is a symbolic link",
                           at("rt/P.log"))) == 0, "log link: %s", err);
    CHECK(unlink(at("rt/P.log")) == 0 && mkdir(at("rt/P.log"), 0700) == 0, "mkdir");
    EXPECT(fh_prefix_log_open(&p, err, sizeof(err)) == -1 &&
           strncmp(err, fmt("cannot open the log %s: ", at("rt/P.log")),
                   strlen(fmt("cannot open the log %s: ", at("rt/P.log")))) == 0,
           "log dir: %s", err);
    CHECK(rmdir(at("rt/P.log")) == 0 && rmdir(at("rt")) == 0, "rmdir");
}

int main(void)
{
    const char *dir = getenv("FORKHOST_CTEST_DIR");
    int fds;

    snprintf(base, sizeof(base), "%s/rundir-XXXXXX", dir && *dir ? dir : "/tmp");
    CHECK(mkdtemp(base), "mkdtemp %s", base);
    fds = count_fds();
    test_where();
    test_create();
    test_refusals();
    test_symlinks();
    test_lock_busy();
    test_leftovers();
    test_log();
    EXPECT(count_fds() == fds, "fds leaked: %d, were %d", count_fds(), fds);
    CHECK(rmdir(base) == 0, "%s is not empty", base);
    if (fht_failures)
        return 1;
    printf("test_rundir: ok\n");
    return 0;
}
