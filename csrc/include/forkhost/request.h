/*
 * forkhost/request.h - the one parser of what a client sends to
 * template.sock, and the decision on a launch before the fork (what its
 * entry names: fh_entry_decide, entry.h).  Pool members and the template
 * both use them; Python has no parser of requests of its own.
 *
 * Every refusal is an entry of one table of messages (request.c), filled
 * with the numbers the result names; the client prints that
 * line and exits 125 (a bad request), 126 (an entry that cannot run) or
 * 127 (an entry not found).
 */
#ifndef FORKHOST_REQUEST_H
#define FORKHOST_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "forkhost/entry.h"
#include "forkhost/proto.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* Why a record was refused (the index into the message table). */
enum fh_req_error {
    FH_REQ_OK = 0,
    FH_REQ_TOO_MANY_FDS,      /* recvmsg's MSG_CTRUNC */
    FH_REQ_TOO_LARGE,         /* MSG_TRUNC, or more than FH_PROTO_MAX_MSG */
    FH_REQ_SHORT,             /* fewer bytes than a header */
    FH_REQ_MAGIC,
    FH_REQ_VERSION,
    FH_REQ_LENGTH,            /* hdr.len is not what arrived */
    FH_REQ_NFDS,              /* hdr.nfds is not what arrived */
    FH_REQ_TYPE,              /* neither LAUNCH, INFO nor ADOPT */
    FH_REQ_LAUNCH_SHORT,      /* body shorter than struct fh_launch's */
    FH_REQ_LAUNCH_STRINGS_LEN,/* strings_len is not what follows */
    FH_REQ_LAUNCH_FLAGS,      /* unknown flags, stdio or umask bits */
    FH_REQ_LAUNCH_EXTRA,      /* nextra > FH_PROTO_MAX_EXTRA_FDS */
    FH_REQ_LAUNCH_ARGV,       /* argc == 0 */
    FH_REQ_LAUNCH_STRINGS,    /* not 1 + argc + envc NUL-terminated strings */
    FH_REQ_LAUNCH_ENTRY,      /* the entry is empty */
    FH_REQ_LAUNCH_FD_TARGET,  /* fd_target not increasing from 3 up */
    FH_REQ_LAUNCH_FDS,        /* 1 + popcount(stdio_mask) + nextra != nfds */
    FH_REQ_NERRORS
};

/* A parsed, checked LAUNCH: views into the record. */
struct fh_launch_view {
    struct fh_launch launch; /* a copy of the fixed part */
    const char *entry;
    const char *strings;     /* argv then env, NUL-terminated, packed */
    size_t      strings_len;
    uint32_t    fd_target[FH_PROTO_MAX_EXTRA_FDS]; /* a copy: nextra used */
};

/* What a refusal names, for its message. */
struct fh_req_result {
    unsigned    error;       /* enum fh_req_error */
    uint64_t    a, b;        /* the numbers the message names */
};

/*
 * Check one record as recvmsg left it: n bytes received, of which buf holds
 * min(n, FH_PROTO_MAX_MSG + 1); mflags is recvmsg's msg_flags, nfds the
 * descriptors that arrived.  Returns the message type (FH_MSG_LAUNCH, *v
 * filled, FH_MSG_INFO or FH_MSG_ADOPT, whose bodies are not read and whose
 * sender and fds the template checks), 0 for an orderly EOF (n == 0, no fds), or -1
 * with *r saying why.  The checks run in a fixed order, so one record
 * always gets the same refusal.
 */
FH_API int fh_request_check(const void *buf, size_t n, int mflags,
                            unsigned nfds, struct fh_launch_view *v,
                            struct fh_req_result *r);

/* The one-line message for r (no newline), truncated to fit size (at most
 * FH_PROTO_MAX_ERROR bytes are ever written, plus the NUL).  Its length. */
FH_API size_t fh_request_message(const struct fh_req_result *r, char *out,
                                 size_t size);

/*
 * Everything decided about a checked LAUNCH (v) before anything is forked
 * for it, given the fds that came with it (cwd first, then the stdio fds
 * stdio_mask names): the one check the template and pool members share.
 *   - a cwd fd that is not a directory (forkhost-run opens "." with
 *     O_DIRECTORY: only a hostile client sends one): ERROR, exit_code
 *     125, one line;
 *   - what fh_entry_decide() says of the entry;
 *   - a Python entry whose stdin, stdout or stderr is a directory: what
 *     python itself does with it before running a line (it stops in
 *     init_sys_streams): ERROR, exit_code 1, and message is the text
 *     python writes on its stderr, several lines (proto.h,
 *     FH_ERROR_ENTRY_MAX).  A native entry runs with it, as directly.
 * Fills *t and returns t->kind.
 */
FH_API int fh_launch_decide(const struct fh_launch_view *v, const int *fds,
                            unsigned nfds, struct fh_entry_target *t);

#endif /* FORKHOST_REQUEST_H */
