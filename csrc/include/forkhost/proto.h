/*
 * forkhost/proto.h - the launch protocol between a client and the template.
 *
 * One SOCK_SEQPACKET connection per launch, on <runtime>/<prefix>/template.sock.
 * SEQPACKET keeps record boundaries, so every message is exactly one record:
 * a fixed header, a type-specific body, and the file descriptors named by
 * hdr.nfds travelling as SCM_RIGHTS on that same record.  Both ends live on
 * the same host, so integers are in native byte order.
 *
 *   client                                template
 *     LAUNCH (+ cwd, stdio, extra fds) --->
 *                                    <--- STARTED (+ the secondary's pidfd)
 *                                         ... or ERROR, then close
 *     (waits; forwards signals through the pidfd)
 *                                    <--- EXITED (code or signal), then close
 *
 * A client that closes its end before EXITED makes the template end the
 * secondary: SIGTERM, then SIGKILL after the grace period.
 *
 * Python takes these constants and layouts from here (forkhost/_wire.py,
 * generated at build time by csrc/tools/wire.c); docs/protocol.md is the
 * prose version.  Change both together and bump FH_PROTO_VERSION.
 */
#ifndef FORKHOST_PROTO_H
#define FORKHOST_PROTO_H

#include <stdint.h>

#define FH_PROTO_MAGIC   0x4b484631u /* bytes "1FHK" in memory on little-endian */
#define FH_PROTO_VERSION 2   /* 2: LAUNCH carries signals and fd numbers */

/* One record must fit the sender's socket buffer: net.core.wmem_default is
 * 208 KiB, and an unprivileged process cannot raise SO_SNDBUF past
 * net.core.wmem_max.  192 KiB leaves room for the kernel's own accounting. */
#define FH_PROTO_MAX_MSG        (192u * 1024u)
/* Extra fds: the client's own inheritable fds >= 3 at their own numbers, or
 * those named by --fd at 3, 4, ...; 32 is far above what a shell or a
 * LISTEN_FDS user passes and keeps the SCM_RIGHTS control buffer small
 * (kernel cap: 253). */
#define FH_PROTO_MAX_EXTRA_FDS  32u
/* The highest fd number an extra fd may be put at (fd_target): setup
 * works one above the highest, which must be an int too. */
#define FH_PROTO_FD_TARGET_MAX  0x7ffffffeu
/* cwd + stdin/stdout/stderr + extras. */
#define FH_PROTO_MAX_FDS        (4u + FH_PROTO_MAX_EXTRA_FDS)
/* An ERROR message's text, without the header. */
#define FH_PROTO_MAX_ERROR      1024u

enum fh_msg_type {
    FH_MSG_LAUNCH  = 0x01, /* client -> template */
    FH_MSG_INFO    = 0x02, /* client -> template: ask for FH_MSG_INFO_REPLY */
    FH_MSG_RELOAD  = 0x03, /* primary -> template: start a new generation
                              (FH_MSG_RELOADED or FH_MSG_RELOAD_FAILED);
                              refused (ERROR 125) from any other process */
    FH_MSG_ADOPT   = 0x04, /* new primary -> orphaned template: take me as
                              your primary (a body, if any, is not read;
                              at most 1 fd: the new exit-notice channel);
                              answered with FH_MSG_ADOPTED or an ERROR */
    FH_MSG_STARTED = 0x81, /* template -> client, carries 1 fd: the pidfd */
    FH_MSG_EXITED  = 0x82, /* template -> client */
    FH_MSG_ERROR   = 0x83, /* template -> client, then the template closes */
    FH_MSG_INFO_REPLY = 0x84, /* template -> client: JSON text body */
    FH_MSG_STOPPED = 0x85, /* template -> client, only with FH_LAUNCH_JOBCTL:
                              a signal stopped the secondary */
    FH_MSG_NOTICE  = 0x86, /* template -> client, only with FH_LAUNCH_NOTICE:
                              why the template is ending the secondary (its
                              primary died); the client says it on stderr
                              when EXITED comes */
    FH_MSG_RELOADED = 0x87, /* template -> primary: the new generation's
                              template is ready (struct fh_reloaded); the
                              old one retires */
    FH_MSG_RELOAD_FAILED = 0x88, /* template -> primary: the new generation
                              did not start (struct fh_reload_failed: its
                              words, a preload's traceback); the old one
                              serves on */
    FH_MSG_ADOPTED = 0x89, /* template -> new primary: struct fh_adopted,
                              carries 1 fd: the arena's memfd */
};

struct fh_msg_hdr {          /* 24 bytes */
    uint32_t magic;          /* FH_PROTO_MAGIC */
    uint16_t version;        /* FH_PROTO_VERSION */
    uint16_t type;           /* enum fh_msg_type */
    uint32_t len;            /* whole record in bytes, header included */
    uint32_t nfds;           /* fds carried by this record */
    uint64_t reserved;       /* zero */
};

/* LAUNCH flags */
#define FH_LAUNCH_MODULE 0x1u /* entry is a module name, run as `python -m` */
#define FH_LAUNCH_JOBCTL 0x2u /* the client acts as the secondary's job: tell
                                 it when the secondary stops (FH_MSG_STOPPED) */
#define FH_LAUNCH_NOTICE 0x4u /* the client reports the template's NOTICE, if
                                 one comes, with the secondary's end */
#define FH_LAUNCH_INHERIT_FDS 0x8u /* the extra fds are the client's own
                                 inheritable fds at their own numbers
                                 (fd_target), as exec would keep them: the
                                 environment's LISTEN_* pass as they are
                                 (LISTEN_PID naming the client becomes the
                                 secondary's pid).  Without it they were
                                 chosen (--fd) and land at 3, 4, ..., with
                                 LISTEN_PID/LISTEN_FDS set for them */
#define FH_LAUNCH_FLAGS  (FH_LAUNCH_MODULE | FH_LAUNCH_JOBCTL | \
                          FH_LAUNCH_NOTICE | FH_LAUNCH_INHERIT_FDS)

/* Bit (sig - 1) of a LAUNCH's sig_ignored / sig_blocked is signal sig. */
#define FH_LAUNCH_SIGBIT(sig) (1ull << ((sig) - 1))

/*
 * LAUNCH body.  fds, in order: the client's cwd (an O_PATH directory fd,
 * always present), then each stdio fd whose bit is set in stdio_mask (bit 0
 * stdin, bit 1 stdout, bit 2 stderr; an unset bit means the client had that
 * fd closed, and the secondary gets it closed too), then nextra extra fds.
 * So hdr.nfds == 1 + popcount(stdio_mask) + nextra.
 *
 * After the fixed part: fd_target, nextra uint32_t, the fd number each
 * extra fd gets in the secondary, strictly increasing from 3 up (3, 4, ...
 * for --fd; the client's own numbers with FH_LAUNCH_INHERIT_FDS).  Then
 * strings: 1 + argc + envc NUL-terminated strings packed back to back, no
 * padding: entry, argv[0..argc-1], env[0..envc-1] (normally "NAME=value";
 * an entry without '=' passes as exec passes it).  Bytes are passed through
 * untouched (not necessarily UTF-8).
 *
 * sig_ignored and sig_blocked (FH_LAUNCH_SIGBIT) are the client's signals
 * set to SIG_IGN and its signal mask when it started: the secondary starts
 * with the same ones ignored (every other disposition SIG_DFL) and the same
 * mask, as a program the client exec'd would.
 */
struct fh_launch {           /* 72 bytes + fd_target + strings */
    struct fh_msg_hdr hdr;
    uint32_t flags;          /* FH_LAUNCH_* */
    uint32_t umask;          /* the client's umask, applied in the secondary */
    uint32_t stdio_mask;     /* bits 0..2 */
    uint32_t nextra;         /* <= FH_PROTO_MAX_EXTRA_FDS */
    uint32_t argc;           /* >= 1 */
    uint32_t envc;
    uint32_t strings_len;    /* == hdr.len - sizeof(struct fh_launch)
                                     - 4 * nextra */
    uint32_t reserved;       /* zero */
    uint64_t sig_ignored;    /* signals 1..64 the client ignores */
    uint64_t sig_blocked;    /* the client's signal mask */
    /* uint32_t fd_target[nextra]; */
    /* char strings[strings_len]; */
};

struct fh_started {          /* 32 bytes; carries the pidfd */
    struct fh_msg_hdr hdr;
    int64_t pid;
};

/* The answer to an ADOPT (docs/protocol.md, "Adoption"): the template
 * that now has the sender as its primary, and where its arena is (the fd
 * it carries is the arena's memfd). */
struct fh_adopted {          /* 56 bytes; carries the arena's memfd */
    struct fh_msg_hdr hdr;
    int32_t  template_pid;
    int32_t  old_primary_pid;  /* the primary it had before */
    uint64_t arena_base;
    uint64_t arena_max;        /* the range mapped at arena_base */
    uint32_t running;          /* secondaries running when it was adopted */
    uint32_t reserved;         /* zero */
};

struct fh_stopped {          /* 32 bytes */
    struct fh_msg_hdr hdr;
    int32_t signal;          /* the signal that stopped it */
    int32_t reserved;        /* zero */
};

struct fh_exited {           /* 32 bytes */
    struct fh_msg_hdr hdr;
    int32_t code;            /* exit status when signal == 0 */
    int32_t signal;          /* terminating signal, or 0 */
};

struct fh_error {            /* 32 bytes + text */
    struct fh_msg_hdr hdr;
    int32_t exit_code;       /* what the client exits with: 125, 126, 127,
                              * or up to FH_ERROR_ENTRY_MAX (below) */
    uint32_t text_len;       /* <= FH_PROTO_MAX_ERROR, no NUL; no newline
                              * but in an entry's own text (below) */
    /* char text[text_len]; */
};

/* An ERROR's exit_code up to this is the entry's own failure, found before
 * the fork (a Python entry whose stdin is a directory): its text is what
 * the entry would have written on its stderr, newlines and all, and the
 * client writes it to the stderr it passed as it is, then exits with
 * exit_code, as the entry run directly would have.  Above it (125, 126,
 * 127) the refusal is forkhost's own: one line, no newline. */
#define FH_ERROR_ENTRY_MAX 124

struct fh_notice {          /* 32 bytes + text */
    struct fh_msg_hdr hdr;
    uint32_t text_len;       /* <= FH_PROTO_MAX_ERROR, no NUL, no newline */
    uint32_t reserved;       /* zero */
    /* char text[text_len]; */
};

/* RELOADED: the new generation's template. */
struct fh_reloaded {        /* 32 bytes */
    struct fh_msg_hdr hdr;
    int64_t pid;             /* its pid (not the primary's child) */
};

/* RELOAD_FAILED: why, in the new generation's words (a preload's
 * traceback: several lines), at most FH_PROTO_MAX_RELOAD_TEXT bytes. */
#define FH_PROTO_MAX_RELOAD_TEXT (64u * 1024u)
struct fh_reload_failed {   /* 32 bytes + text */
    struct fh_msg_hdr hdr;
    uint32_t text_len;       /* <= FH_PROTO_MAX_RELOAD_TEXT, no NUL */
    uint32_t reserved;       /* zero */
    /* char text[text_len]; */
};

/* INFO_REPLY body: hdr.len - sizeof(struct fh_msg_hdr) bytes of UTF-8 JSON. */

#endif /* FORKHOST_PROTO_H */
