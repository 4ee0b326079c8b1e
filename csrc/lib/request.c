/*
 * request.c - the one parser of what a client sends to template.sock, and
 * the decision on a launch before the fork (forkhost/request.h); what its
 * entry names is fh_entry_decide's (entry.c).
 *
 * It replaced Python code whose texts clients and tests know, so every
 * check runs in the order the Python ran it and every message is the one
 * it printed, Python's repr() included (pytext.c): fh_request_check() is
 * what protocol.parse(), the template's type check and Launch.decode()
 * were.
 */
#include "forkhost/request.h"
#include "forkhost/proto.h"
#include "pytext.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the client exits with (errors.py's FH_EXIT_NOT_FOUND, FH_EXIT_CANNOT_RUN). */
#define FH_EXIT_NOT_FOUND  127
#define FH_EXIT_CANNOT_RUN 126

/* ---- the record ------------------------------------------------------- */

static int refuse(struct fh_req_result *r, unsigned error, uint64_t a,
                  uint64_t b)
{
    r->error = error;
    r->a = a;
    r->b = b;
    return -1;
}

/* Launch.decode(): the body of a record whose header checked out. */
static int check_launch(const unsigned char *rec, size_t n, unsigned nfds,
                        struct fh_launch_view *v, struct fh_req_result *r)
{
    struct fh_launch l;
    uint32_t target[FH_PROTO_MAX_EXTRA_FDS];
    const unsigned char *s, *p, *end;
    uint64_t want, found = 0, fds;
    size_t slen, elen, tlen;
    uint32_t i;

    if (n < sizeof l)
        return refuse(r, FH_REQ_LAUNCH_SHORT, 0, 0);
    memcpy(&l, rec, sizeof l);              /* the record may be unaligned */
    if (l.nextra > FH_PROTO_MAX_EXTRA_FDS)
        return refuse(r, FH_REQ_LAUNCH_EXTRA, l.nextra, FH_PROTO_MAX_EXTRA_FDS);
    tlen = (size_t)l.nextra * sizeof target[0];
    if (n < sizeof l + tlen)
        return refuse(r, FH_REQ_LAUNCH_SHORT, 0, 0);
    memcpy(target, rec + sizeof l, tlen);
    slen = n - sizeof l - tlen;
    if (l.strings_len != slen)
        return refuse(r, FH_REQ_LAUNCH_STRINGS_LEN, l.strings_len, slen);
    if ((l.flags & ~FH_LAUNCH_FLAGS) || (l.stdio_mask & ~7u) ||
        (l.umask & ~0777u))
        return refuse(r, FH_REQ_LAUNCH_FLAGS, 0, 0);
    if (l.argc < 1)
        return refuse(r, FH_REQ_LAUNCH_ARGV, 0, 0);
    /* strings.split(b"\0") must give 1 + argc + envc pieces and a last,
     * empty one: every NUL counts, and the strings end with one. */
    want = 1 + (uint64_t)l.argc + l.envc;
    s = rec + sizeof l + tlen;
    end = s + slen;
    for (p = s; p < end && (p = memchr(p, '\0', (size_t)(end - p))) != NULL;
         p++)
        found++;
    if (found != want || (slen > 0 && end[-1] != '\0'))
        return refuse(r, FH_REQ_LAUNCH_STRINGS, want, found);
    if (s[0] == '\0')
        return refuse(r, FH_REQ_LAUNCH_ENTRY, 0, 0);
    /* Each extra fd's number: above the previous one, 3 at least, and a
     * number an fd can have (an int). */
    for (i = 0; i < l.nextra; i++)
        if (target[i] < (i == 0 ? 3u : target[i - 1] + 1u) ||
            target[i] > FH_PROTO_FD_TARGET_MAX)
            return refuse(r, FH_REQ_LAUNCH_FD_TARGET, i, target[i]);
    elen = strlen((const char *)s) + 1;
    fds = 1u + (unsigned)__builtin_popcount(l.stdio_mask) + (uint64_t)l.nextra;
    if (fds != nfds)
        return refuse(r, FH_REQ_LAUNCH_FDS, fds, nfds);
    if (v != NULL) {
        v->launch = l;
        v->entry = (const char *)s;
        v->strings = (const char *)s + elen;
        v->strings_len = slen - elen;
        memcpy(v->fd_target, target, tlen);
    }
    return FH_MSG_LAUNCH;
}

FH_API int fh_request_check(const void *buf, size_t n, int mflags,
                            unsigned nfds, struct fh_launch_view *v,
                            struct fh_req_result *r)
{
    struct fh_msg_hdr hdr;

    r->error = FH_REQ_OK;
    r->a = r->b = 0;
    if (n == 0 && nfds == 0)
        return 0;
    if (mflags & MSG_CTRUNC)
        return refuse(r, FH_REQ_TOO_MANY_FDS, FH_PROTO_MAX_FDS, 0);
    if ((mflags & MSG_TRUNC) || n > FH_PROTO_MAX_MSG)
        return refuse(r, FH_REQ_TOO_LARGE, FH_PROTO_MAX_MSG, 0);
    if (n < sizeof hdr)
        return refuse(r, FH_REQ_SHORT, n, sizeof hdr);
    memcpy(&hdr, buf, sizeof hdr);
    if (hdr.magic != FH_PROTO_MAGIC)
        return refuse(r, FH_REQ_MAGIC, hdr.magic, 0);
    if (hdr.version != FH_PROTO_VERSION)
        return refuse(r, FH_REQ_VERSION, hdr.version, FH_PROTO_VERSION);
    if (hdr.len != n)
        return refuse(r, FH_REQ_LENGTH, hdr.len, n);
    if (hdr.nfds != nfds)
        return refuse(r, FH_REQ_NFDS, hdr.nfds, nfds);
    if (hdr.type == FH_MSG_INFO || hdr.type == FH_MSG_RELOAD ||
        hdr.type == FH_MSG_ADOPT)
        return hdr.type;                  /* a body, if any, is not read:
                                             the template checks RELOAD's
                                             and ADOPT's sender and fds */
    if (hdr.type != FH_MSG_LAUNCH)
        return refuse(r, FH_REQ_TYPE, hdr.type, 0);
    return check_launch(buf, n, nfds, v, r);
}

/* ---- messages ---------------------------------------------------------- */

/* The message table: each refusal's text, with the numbers it names (a,
 * then b, both as unsigned long long). */
static const char *const req_messages[FH_REQ_NERRORS] = {
    [FH_REQ_OK] = "",
    [FH_REQ_TOO_MANY_FDS] = "too many file descriptors (the limit is %llu)",
    [FH_REQ_TOO_LARGE] = "message too large (the limit is %llu bytes)",
    [FH_REQ_SHORT] = "truncated message (%llu bytes, header is %llu)",
    [FH_REQ_MAGIC] = "bad magic 0x%08llx: not a forkhost client",
    [FH_REQ_VERSION] = "protocol version mismatch: the client speaks %llu, "
                       "the template speaks %llu",
    [FH_REQ_LENGTH] = "truncated message: header says %llu bytes, "
                      "%llu arrived",
    [FH_REQ_NFDS] = "header says %llu file descriptors, %llu arrived",
    [FH_REQ_TYPE] = "unexpected message type 0x%02llx",
    [FH_REQ_LAUNCH_SHORT] = "truncated LAUNCH request",
    [FH_REQ_LAUNCH_STRINGS_LEN] = "truncated LAUNCH request: %llu bytes of "
                                  "strings announced, %llu present",
    [FH_REQ_LAUNCH_FLAGS] = "LAUNCH request has unknown flags or bits set",
    [FH_REQ_LAUNCH_EXTRA] = "too many extra fds (%llu; the limit is %llu)",
    [FH_REQ_LAUNCH_ARGV] = "LAUNCH request has an empty argv",
    [FH_REQ_LAUNCH_STRINGS] = "malformed LAUNCH request: expected %llu "
                              "NUL-terminated strings, found %llu",
    [FH_REQ_LAUNCH_ENTRY] = "LAUNCH request has an empty entry",
    [FH_REQ_LAUNCH_FD_TARGET] = "LAUNCH request puts extra fd %llu at %llu: "
                                "the numbers must increase from 3 up",
    [FH_REQ_LAUNCH_FDS] = "LAUNCH request announces %llu file descriptors, "
                          "%llu arrived",
};

FH_API size_t fh_request_message(const struct fh_req_result *r, char *out,
                                 size_t size)
{
    char text[FH_PROTO_MAX_ERROR + 1];
    struct fh__out o = {text, sizeof text, 0};

    if (size == 0)
        return 0;
    text[0] = '\0';
    if (r->error >= FH_REQ_NERRORS) {
        fh__putf(&o, "unknown refusal %u", r->error);
    } else {
        /* The table's formats take a and b and nothing else. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        int k = snprintf(text, sizeof text, req_messages[r->error],
                         (unsigned long long)r->a, (unsigned long long)r->b);
#pragma GCC diagnostic pop
        o.len = k < 0 ? 0 : (size_t)k < sizeof text ? (size_t)k
                                                    : sizeof text - 1;
    }
    if (o.len > size - 1)
        o.len = size - 1;
    memcpy(out, text, o.len);
    out[o.len] = '\0';
    return o.len;
}

/* ---- the launch, before the fork ------------------------------------- */

/* What python writes on its stderr when init_sys_streams stops it (its
 * fatal error, then faulthandler's dump of the one thread): why, the
 * exception if one was raised, then the thread.  Its exit status is 1. */
#define PY_STREAMS_EXIT 1
static const char py_stdin_dir[] =
    "Fatal Python error: init_sys_streams: <stdin> is a directory, "
    "cannot continue\n"
    "Python runtime state: core initialized\n";
static const char py_streams[] =
    "Fatal Python error: init_sys_streams: can't initialize sys standard "
    "streams\n"
    "Python runtime state: core initialized\n"
    "IsADirectoryError: [Errno %d] %s: %d\n";
/* The thread python names is its main thread, pthread_self(): in a fork of
 * this process, this process's. */
static const char py_thread[] =
    "\n"
    "Current thread 0x%016lx (most recent call first):\n"
    "  <no Python frame>\n";

static const char cwd_not_dir[] =
    "the client's cwd fd is not a directory (a client sends its cwd as an "
    "O_PATH directory fd)";

static int is_dir_fd(int fd)
{
    struct stat st;

    return fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
}

FH_API int fh_launch_decide(const struct fh_launch_view *v, const int *fds,
                            unsigned nfds, struct fh_entry_target *t)
{
    int stdio[3] = { -1, -1, -1 };
    unsigned i, k = 1;
    struct fh__out o = {t->message, sizeof t->message, 0};

    t->kind = FH_ENTRY_ERROR;
    t->name = t->symbol = NULL;
    t->head[0] = '\0';
    t->message[0] = '\0';
    if (nfds < 1 || !is_dir_fd(fds[0])) {
        fh__puts(&o, cwd_not_dir);
        return fh__entry_refused(t, 125);
    }
    if (fh_entry_decide(v->entry, (v->launch.flags & FH_LAUNCH_MODULE) != 0,
                        fds[0], t) != FH_ENTRY_NATIVE &&
        t->kind != FH_ENTRY_ERROR) {
        for (i = 0; i < 3; i++)
            if ((v->launch.stdio_mask & (1u << i)) && k < nfds)
                stdio[i] = fds[k++];
        /* python's order: stdin first, then each stream it opens. */
        if (stdio[0] >= 0 && is_dir_fd(stdio[0])) {
            fh__puts(&o, py_stdin_dir);
        } else {
            for (i = 1; i < 3; i++)
                if (stdio[i] >= 0 && is_dir_fd(stdio[i]))
                    break;
            if (i == 3)
                return (int)t->kind;
            {
                char line[200];

                snprintf(line, sizeof line, py_streams, EISDIR,
                         strerror(EISDIR), (int)i);
                fh__puts(&o, line);
            }
        }
        {
            char line[200];

            snprintf(line, sizeof line, py_thread,
                     (unsigned long)pthread_self());
            fh__puts(&o, line);
        }
        t->name = t->symbol = NULL;
        return fh__entry_refused(t, PY_STREAMS_EXIT);
    }
    return (int)t->kind;
}
