/*
 * forkhost/ipc.h - IPC between the primary and its secondaries (DPDK's
 * rte_mp): named actions, best-effort messages, synchronous and
 * asynchronous requests that count their replies, up to 8 fds per message.
 *
 * This is the native secondary's side, which a Python secondary uses too
 * (through the flat calls at the end), a C primary's endpoint
 * (fh_ipc_primary_*), and the receive loop both primaries run: a Python
 * primary (forkhost/ipc/_primary.py) runs it with its actions in Python.
 * Everything speaks the wire format defined here and described in
 * docs/ipc.md; forkhost/ipc/_wire.py takes its constants and layouts from
 * here (through the cffi cdef).  Change the header and the doc together
 * and bump FH_IPC_VERSION.
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET connection from each secondary to
 * <runtime>/<prefix>/ipc.sock.  A record is a struct fh_ipc_hdr, param_len
 * bytes of parameter, and nfds descriptors as SCM_RIGHTS on the same
 * record.  The kernel closes a dead process's connection, so membership,
 * peer death and the primary's death need no polling; a member whose
 * primary went away without forkhost.shutdown joins the next one that
 * listens at the same path (fh_ipc_rejoining()).
 *
 * Threads: the first call that needs the primary (register, send, request,
 * start) connects, says HELLO, waits for WELCOME and starts one receive
 * thread (pthreads).  Actions and asynchronous callbacks run on that
 * thread; a synchronous request from there fails with EDEADLK instead of
 * waiting for a reply only that thread could receive.  After fork() the
 * child has no IPC: its copy of the connection is closed, its actions are
 * forgotten, and its first IPC call joins as a new member.
 *
 * Errors: -1 with errno.  EINVAL (bad name, argument or reserved name),
 * ENAMETOOLONG (name of 64 bytes or more), EMSGSIZE (param too long or too
 * many fds), EBADF (an fd that is not open), ENOTCONN (no primary to talk
 * to: not a secondary, IPC not started in the primary, or the primary is
 * gone: see fh_ipc_rejoining()), EDEADLK (sync request on the IPC
 * thread), EEXIST / ENOENT (register / unregister), ECONNREFUSED (the
 * primary refused the HELLO).
 */
#ifndef FORKHOST_IPC_H
#define FORKHOST_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

#define FH_IPC_MAGIC   0x4b484950u /* bytes "PIHK" in memory on little-endian */
#define FH_IPC_VERSION 1

/* Requests whose caller passes no timeout. */
#define FH_IPC_DEFAULT_TIMEOUT_MS 5000
/* A send from an ordinary thread waits this long for room in a full
 * buffer; an IPC thread never waits (it would stall every other peer). */
#define FH_IPC_SEND_TIMEOUT_MS 1000
/* connect + HELLO + WELCOME must not hang on a wedged primary. */
#define FH_IPC_CONNECT_TIMEOUT_MS 5000

/* A name is an identifier: DPDK's RTE_MP_MAX_NAME_LEN, NUL included. */
#define FH_IPC_NAME_MAX  64
/* DPDK's 256 bytes cannot hold a path (PATH_MAX is 4096) or a short JSON
 * object.  4 KiB can, and a whole record still fits a fixed buffer and
 * ~40 of them a default socket send buffer (208 KiB).  Bulk data belongs
 * in the arena or a passed memfd. */
#define FH_IPC_PARAM_MAX 4096
/* DPDK's RTE_MP_MAX_FD_NUM: keeps the control buffer fixed and small. */
#define FH_IPC_FDS_MAX   8

enum fh_ipc_type {
    FH_IPC_MSG     = 0x01, /* either way, no reply */
    FH_IPC_REQUEST = 0x02, /* either way, answered by one REPLY */
    FH_IPC_REPLY   = 0x03, /* same id as its REQUEST, same connection */
    FH_IPC_HELLO   = 0x10, /* secondary -> primary, first record */
    FH_IPC_WELCOME = 0x11, /* primary -> secondary: a member now */
    FH_IPC_REFUSE  = 0x12, /* primary -> secondary: UTF-8 reason, then close */
    FH_IPC_BYE     = 0x13, /* secondary -> primary: leaving, not exiting */
};

/* REPLY status (fh_ipc_msg.status) */
enum fh_ipc_status {
    FH_IPC_OK            = 0, /* the action's answer */
    FH_IPC_NO_ACTION     = 1, /* the peer has no action under that name */
    FH_IPC_ACTION_FAILED = 2, /* the action failed (C: returned < 0) unanswered */
};

/*
 * The header of every record, 96 bytes:
 *   0 magic  4 version  6 type  8 len  12 nfds  16 id  24 param_len
 *   28 status  32 name[64]  96 param...
 * len is the whole record (96 + param_len).  id: a REQUEST's id, unique
 * in its requesting process and never 0, repeated in its REPLY; 0 for the
 * other types.  name: 1..63 bytes, NUL-padded, for MSG/REQUEST/REPLY;
 * all NUL otherwise.
 */
struct fh_ipc_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t len;
    uint32_t nfds;
    uint64_t id;
    uint32_t param_len;
    int32_t  status;
    char     name[FH_IPC_NAME_MAX];
};

#define FH_IPC_HDR_SIZE   96u
#define FH_IPC_RECORD_MAX (FH_IPC_HDR_SIZE + FH_IPC_PARAM_MAX)

/*
 * The one parser of records (csrc/lib/ipc_wire.c).  Every endpoint checks
 * what it receives with it, the Python primary's first records included,
 * so a malformed or hostile record gets the same verdict from C and Python
 * (docs/ipc.md, "Checks").  Which types are valid depends on where the
 * record was received.
 */
enum fh_ipc_side {
    FH_IPC_FROM_PRIMARY   = 1, /* at a secondary: not HELLO or BYE */
    FH_IPC_FROM_SECONDARY = 2, /* at the primary, from a member: not WELCOME
                                  or REFUSE */
    FH_IPC_FIRST_RECORD   = 3, /* at the primary, from a connection that has
                                  not said HELLO: a HELLO, nothing else */
};

/* Why a record was refused, in the order the checks run (one record
 * always gets the same one). */
enum fh_ipc_record_error {
    FH_IPC_REC_OK = 0,
    FH_IPC_REC_EMPTY,             /* no bytes (fds alone, or an empty record) */
    FH_IPC_REC_TOO_MANY_FDS,      /* recvmsg's MSG_CTRUNC */
    FH_IPC_REC_TOO_LARGE,         /* recvmsg's MSG_TRUNC */
    FH_IPC_REC_SHORT,             /* fewer bytes than a header */
    FH_IPC_REC_MAGIC,
    FH_IPC_REC_VERSION,
    FH_IPC_REC_LENGTH,            /* len or param_len is not what arrived */
    FH_IPC_REC_NFDS,              /* nfds is not what arrived */
    FH_IPC_REC_TYPE,              /* no such type */
    FH_IPC_REC_NAME_UNTERMINATED, /* name[FH_IPC_NAME_MAX - 1] is not NUL */
    FH_IPC_REC_NAME,              /* a name its type does not allow */
    FH_IPC_REC_ID,                /* a request id its type does not allow */
    FH_IPC_REC_SIDE,              /* a type only the other side sends */
    /* FH_IPC_FIRST_RECORD only: */
    FH_IPC_REC_HELLO_VERSION,     /* a HELLO of another FH_IPC_VERSION */
    FH_IPC_REC_NOT_HELLO,         /* well-formed, but not a HELLO */
    FH_IPC_REC_HELLO_SIZE,        /* a HELLO whose param is not a struct
                                     fh_ipc_hello */
    FH_IPC_REC_NERRORS
};

/* A verdict: why, and the numbers its message names. */
struct fh_ipc_verdict {
    unsigned error;     /* enum fh_ipc_record_error */
    unsigned side;      /* enum fh_ipc_side, as checked */
    unsigned type;      /* the record's type once it is well-formed (valid,
                           SIDE, NOT_HELLO, HELLO_SIZE), else 0 */
    uint64_t a, b, c;
};

/* The longest message fh_ipc_record_message() writes (without its NUL). */
#define FH_IPC_MESSAGE_MAX 255

/*
 * Check one record as recvmsg left it: n bytes in buf (at most
 * FH_IPC_RECORD_MAX), recvmsg's msg_flags (MSG_TRUNC, MSG_CTRUNC), the
 * nfds descriptors that arrived, and where it arrived (enum fh_ipc_side).
 * Returns its type when valid, or -1 with *v saying why.  n == 0 is an
 * empty record: telling one from EOF is the caller's (docs/ipc.md).
 */
FH_API int fh_ipc_record_check(const void *buf, size_t n, int mflags,
                               unsigned nfds, int side, struct fh_ipc_verdict *v);
/* The one-line message for a refused record (no newline; a first record's
 * is the REFUSE text the primary sends), truncated to fit size.  Its
 * length. */
FH_API size_t fh_ipc_record_message(const struct fh_ipc_verdict *v, char *out,
                                    size_t size);
/* "MSG", "REQUEST", ... for a type, NULL for none. */
FH_API const char *fh_ipc_type_name(unsigned type);

/* HELLO and WELCOME params, 16 bytes each. */
struct fh_ipc_hello {
    int32_t  pid;
    int32_t  ppid;        /* the template, for a secondary */
    uint32_t flags;       /* FH_IPC_HELLO_* */
    uint32_t reserved;
};

/* fh_ipc_hello.flags: this process was a member of a primary at the same
 * socket whose connection ended without forkhost.shutdown (it died, or
 * stopped its IPC without a word), and joins the one listening there now
 * with the actions it had.  The primary answers WELCOME, then sends it
 * FH_IPC_PRIMARY_NOTICE.  Otherwise 0; a primary ignores bits it does not
 * know. */
#define FH_IPC_HELLO_REJOIN 0x1u

struct fh_ipc_welcome {
    int32_t  primary_pid;
    int32_t  template_pid;
    uint32_t name_max;    /* FH_IPC_NAME_MAX */
    uint32_t param_max;   /* FH_IPC_PARAM_MAX */
};

/*
 * Notices: names in the reserved "forkhost." namespace, sent only by the
 * primary's IPC layer.  Register an action under one to receive it.
 *
 * FH_IPC_EXIT_NOTICE (a MSG): a secondary exited; param is struct
 * fh_ipc_exit_notice.  FH_IPC_SHUTDOWN_NOTICE (a REQUEST): the primary is
 * stopping; param is struct fh_ipc_shutdown_notice.  Reply to it if this
 * process will exit: the primary then waits for it (up to grace_ms) before
 * the template sends SIGTERM.
 */
#define FH_IPC_RESERVED_PREFIX "forkhost."
#define FH_IPC_EXIT_NOTICE     "forkhost.exit"
#define FH_IPC_SHUTDOWN_NOTICE "forkhost.shutdown"
/* FH_IPC_STOP_NOTICE (a MSG from a supervising primary to a worker that
 * is about to be stopped): param is the reason, UTF-8 text; SIGTERM
 * follows after the worker's grace.  FH_IPC_WORKER_NOTICE (a MSG to every
 * member): a supervised worker started, exited, was restarted or given
 * up; param is one JSON object (docs/supervision.md). */
#define FH_IPC_STOP_NOTICE     "forkhost.stop"
#define FH_IPC_WORKER_NOTICE   "forkhost.worker"
/* FH_IPC_RECLAIM_NOTICE (a MSG to every member): the primary gave back
 * what a dead process left in the arena (mempool objects, ring slots, a
 * hash table's writer lock); param is one JSON object (docs/shm.md). */
#define FH_IPC_RECLAIM_NOTICE  "forkhost.reclaim"
/* FH_IPC_PRIMARY_NOTICE (a MSG from the primary to one member, right after
 * the WELCOME of a HELLO with FH_IPC_HELLO_REJOIN): this member has a
 * primary again, after its last one went away without forkhost.shutdown;
 * param is struct fh_ipc_primary_notice. */
#define FH_IPC_PRIMARY_NOTICE  "forkhost.primary"

/* The i-th of the notices above (from 0), the only reserved names an
 * action may be registered under; NULL past the last. */
FH_API const char *fh_ipc_notice_name(unsigned i);

#define FH_IPC_EXIT_STATUS_KNOWN 0x1u /* code/signal are valid */

struct fh_ipc_exit_notice {
    int32_t  pid;
    int32_t  code;        /* exit status when it exited, else 0 */
    int32_t  signal;      /* the signal that killed it, else 0 */
    uint32_t flags;       /* FH_IPC_EXIT_* */
};

struct fh_ipc_shutdown_notice {
    int32_t  primary_pid;
    uint32_t grace_ms;
};

struct fh_ipc_primary_notice {
    int32_t  primary_pid;  /* the primary this member has now joined */
    int32_t  template_pid; /* its (serving) template, as in WELCOME; an
                              adopted one keeps its pid */
};

/* A message as the API sees it (DPDK's struct rte_mp_msg, plus who sent it
 * and, for replies, its status). */
struct fh_ipc_msg {
    char    name[FH_IPC_NAME_MAX];
    int     len_param;
    int     num_fds;
    uint8_t param[FH_IPC_PARAM_MAX];
    int     fds[FH_IPC_FDS_MAX];
    pid_t   pid;          /* received: the sender */
    int     status;       /* received replies: enum fh_ipc_status */
};

/* What became of a request at one peer it reached (fh_ipc_peer_reply.status).
 * A peer that never says NO_ACTION (an older one) and has no action stays
 * silent: it counts as TIMED_OUT. */
enum fh_ipc_peer_status {
    FH_IPC_PEER_ANSWERED  = 0, /* msg is its answer (OK, or ACTION_FAILED) */
    FH_IPC_PEER_NO_ACTION = 1, /* it has no action under that name (msg: its
                                  NO_ACTION reply) */
    FH_IPC_PEER_TIMED_OUT = 2, /* no answer by the deadline */
    FH_IPC_PEER_DIED      = 3, /* its connection closed first: it died, left,
                                  or this process stopped its IPC */
};

/* A peer's name: its /proc/PID/comm when it joined (the kernel's
 * TASK_COMM_LEN, NUL included). */
#define FH_IPC_PEER_NAME_MAX 16

struct fh_ipc_peer_reply {
    pid_t              pid;
    int                status;  /* enum fh_ipc_peer_status */
    char               name[FH_IPC_PEER_NAME_MAX];
    struct fh_ipc_msg *msg;     /* ANSWERED, NO_ACTION: its entry in msgs;
                                   NULL otherwise */
};

/* Replies to a request.  nb_sent: peers the request reached (0 or 1 from a
 * secondary); nb_received: answers, NO_ACTION and ACTION_FAILED included;
 * msgs: nb_received answers in arrival order; peers: nb_sent entries, one
 * per peer reached, in the order it was sent to them, each ANSWERED,
 * NO_ACTION, TIMED_OUT or DIED (nb_received is the ANSWERED and NO_ACTION
 * ones).  msgs and peers are one malloc'd block starting at msgs (both
 * NULL only when nb_sent is 0): after a sync request the caller closes the
 * fds it does not keep and free()s msgs, which frees peers too; after an
 * async one the library frees it once the callback returns (the fds are
 * the callback's). */
struct fh_ipc_reply {
    int nb_sent;
    int nb_received;
    struct fh_ipc_msg *msgs;
    struct fh_ipc_peer_reply *peers;
};

/* An action: runs on the IPC thread with a received MSG or REQUEST.  The
 * fds in msg are the action's to close.  For a request, answer with
 * fh_ipc_reply(reply, peer) during the action; returning < 0 without
 * having answered sends FH_IPC_ACTION_FAILED. */
typedef int (*fh_ipc_action_t)(const struct fh_ipc_msg *msg, const void *peer);

/* An async request's callback, on the IPC thread, once the reply is in, the
 * primary is gone, or the timeout passed. */
typedef void (*fh_ipc_async_t)(const struct fh_ipc_msg *request,
                               const struct fh_ipc_reply *reply, void *arg);

FH_API int fh_ipc_register(const char *name, fh_ipc_action_t action);
FH_API int fh_ipc_unregister(const char *name);

/* Join now (connect, HELLO, WELCOME, start the thread).  Idempotent. */
FH_API int fh_ipc_start(void);
/* Leave: BYE, close, join the thread.  Not from an action. */
FH_API int fh_ipc_stop(void);

/* A message to the primary (in a C primary: to every member).  0, or -1
 * with errno (ENOTCONN: not joined or the primary is gone, or IPC not
 * started in the primary; EAGAIN: its buffer stayed full for 1 s). */
FH_API int fh_ipc_send(const struct fh_ipc_msg *msg);

/* Request (in a C primary: every member), wait up to *ts (relative; NULL:
 * 5 s) for the replies.  0 even when it timed out (nb_received < nb_sent),
 * -1 with errno on bad input or EDEADLK on the IPC thread. */
FH_API int fh_ipc_request(const struct fh_ipc_msg *req,
                          struct fh_ipc_reply *reply,
                          const struct timespec *ts);
FH_API int fh_ipc_request_async(const struct fh_ipc_msg *req,
                                const struct timespec *ts,
                                fh_ipc_async_t callback, void *arg);

/* Answer the request an action received; peer is the action's argument.
 * -1 with EALREADY when already answered, EINVAL outside the action. */
FH_API int fh_ipc_reply(const struct fh_ipc_msg *reply, const void *peer);

struct fh_ipc_stats {
    uint64_t sent, received, dropped, notices_ignored, no_action, malformed,
             action_errors, timeouts, peer_died, late_replies, send_failed;
};
FH_API void fh_ipc_stats(struct fh_ipc_stats *out);

/*
 * Join the primary listening at path, from a process that is not one of
 * its secondaries (a tool, a debugger helper): the same as fh_ipc_start()
 * otherwise.  EISCONN when already joined elsewhere.
 */
FH_API int fh_ipc_attach(const char *path);
/* The primary this process joined (its WELCOME), 0 when not joined (also
 * while it waits to rejoin: fh_ipc_rejoining()), and
 * its name (/proc/PID/comm when this process joined), "" when not; the
 * name is this thread's copy, valid until its next call. */
FH_API pid_t fh_ipc_peer_pid(void);
FH_API const char *fh_ipc_peer_name(void);
/* Why the primary refused the last join (its REFUSE), "" otherwise. */
FH_API const char *fh_ipc_refusal(void);
/*
 * 1 while this member has no primary and waits for one: its connection
 * ended without forkhost.shutdown.  Its IPC thread watches the socket's
 * directory (inotify; retries with a backoff after a change, or while the
 * directory cannot be watched) and joins the primary that listens there
 * again, with FH_IPC_HELLO_REJOIN and the actions it has; that primary
 * sends it FH_IPC_PRIMARY_NOTICE.  Meanwhile every call that needs the
 * primary fails at once with ENOTCONN (fh_ipc_peer_pid() is 0), and what
 * was pending completes with the primary DIED.  0 otherwise, and after
 * forkhost.shutdown, which is final.
 */
FH_API int fh_ipc_rejoining(void);

/*
 * Addressing one peer.  In the primary, to is a member's pid (0: every
 * member, as fh_ipc_send and fh_ipc_request do there); in a secondary it
 * must be 0 or the primary's pid.  fh_ipc_send_to returns how many peers
 * the message reached (a member that has just closed is not counted), or
 * -1 with errno as fh_ipc_send.
 */
FH_API int fh_ipc_send_to(const struct fh_ipc_msg *msg, pid_t to);
FH_API int fh_ipc_request_to(const struct fh_ipc_msg *req, pid_t to,
                             struct fh_ipc_reply *reply,
                             const struct timespec *ts);
FH_API int fh_ipc_request_async_to(const struct fh_ipc_msg *req, pid_t to,
                                   const struct timespec *ts,
                                   fh_ipc_async_t callback, void *arg);

/* -------------------------------------------------------------------------
 * A C primary's endpoint (csrc/lib/ipc_primary.c): the same wire and
 * behaviour as forkhost/ipc/_primary.py's, with no Python in the process.  Once
 * prepared, the calls above act as the primary's: fh_ipc_send and
 * fh_ipc_request go to every member (fh_ipc_*_to: to one), actions get
 * the members' messages and requests, fh_ipc_reply answers them (during
 * the action), and a sync request made on the IPC thread fails with
 * EDEADLK.  The sequence is forkhost/primary.py's:
 *
 *     int efd = fh_ipc_primary_prepare("<runtime>/<prefix>/ipc.sock");
 *     cfg.exit_notice_fd = efd;         (struct fh_template_config)
 *     pid_t tpl = fh_template_fork(&cfg);
 *     fh_ipc_primary_start(tpl);
 *     ...
 *     fh_ipc_primary_stop(grace_ms);    then end the template
 */

/* An accepted connection that says nothing is closed after this, so idle
 * connections cannot hold the primary's fds. */
#define FH_IPC_HELLO_TIMEOUT_MS 5000
/* Each member is an fd and a little memory in the primary: more are
 * refused with REFUSE. */
#define FH_IPC_MAX_MEMBERS 4096

/* Before the template fork, single-threaded: record where IPC will be
 * (fh_ipc_set_primary(), which every secondary inherits) and make the
 * channel the template reports exits on.  Returns the template's end, to
 * pass as fh_template_config.exit_notice_fd, or -1 with errno
 * (ENAMETOOLONG; EALREADY when already prepared). */
FH_API int fh_ipc_primary_prepare(const char *socket_path);
/* After the template fork: close the template's end of the exit channel,
 * bind the socket (mode 0600) and start the IPC thread (it blocks every
 * signal).  0 (also when already started), or -1 with errno (EINVAL: not
 * prepared or no template pid; bind and thread errors). */
FH_API int fh_ipc_primary_start(pid_t template_pid);
/* Tell the members forkhost.shutdown; those that answer get until
 * grace_ms after the notice to close their connections and, for
 * secondaries, to exit (the template's exit record).  Then stop the thread,
 * close every connection (the rest see EOF), complete what is pending and
 * unlink the socket.  Not from an action (EDEADLK).  0, or -1 with errno
 * (EINVAL: not prepared). */
FH_API int fh_ipc_primary_stop(unsigned grace_ms);

/* The primary's members (Python's ipc.members()): secondary is 1 when the
 * member's parent is the template (otherwise it attached). */
struct fh_ipc_member {
    pid_t pid;
    pid_t ppid;
    int   secondary;
};
/* Fills up to max members in join order; returns how many there are (may
 * be more than max), or -1 with ENOTCONN when IPC is not running here. */
FH_API int fh_ipc_members(struct fh_ipc_member *out, int max);

/* -------------------------------------------------------------------------
 * For forkhost/ipc (the Python binding); not needed by native
 * secondaries, and free to change with the binding.
 *
 * The same calls with flat arguments, so Python fills no 4 KiB struct, and
 * replies by request id, so a Python action may answer later from any
 * thread.  timeout is in seconds.
 */
FH_API int fh_ipc_send_raw(const char *name, const void *param, int len_param,
                           const int *fds, int num_fds);
/* A sync request.  The answer, if one came, is copied to record
 * (FH_IPC_RECORD_MAX bytes) as a REPLY record in the wire layout (header,
 * then param) and its fds to reply_fds (FH_IPC_FDS_MAX); returns its
 * length, 0 when none came, or -1 with errno.  out[0]: nb_sent, 0 or 1;
 * out[1]: what became of it at the primary (enum fh_ipc_peer_status),
 * when nb_sent is 1; out[2]: that primary's pid (it changes when the
 * member rejoins another). */
FH_API int fh_ipc_request_raw(const char *name, const void *param, int len_param,
                              const int *fds, int num_fds, double timeout,
                              void *record, int *reply_fds, int *out);
FH_API int fh_ipc_request_async_raw(const char *name, const void *param,
                                    int len_param, const int *fds, int num_fds,
                                    double timeout, fh_ipc_async_t callback,
                                    void *arg);
/* Answer request id with status (enum fh_ipc_status).  When called from
 * the action that received it, that action counts as having replied. */
FH_API int fh_ipc_reply_raw(uint64_t id, int status, const char *name,
                            const void *param, int len_param,
                            const int *fds, int num_fds);
/* The request id of an action's peer (during the action), 0 for a MSG. */
FH_API uint64_t fh_ipc_peer_id(const void *peer);
/* Is the calling thread this process's IPC (receive) thread? */
FH_API int fh_ipc_on_ipc_thread(void);
/* fh_ipc_stop() with bye = 1; bye = 0 leaves as an exiting process does
 * (the primary reports it in forkhost.exit). */
FH_API int fh_ipc_leave(int bye);

/*
 * The primary's receive loop (csrc/lib/ipc_primary.c).  A Python
 * primary's IPC thread (forkhost/ipc/_primary.py) runs it with
 * the GIL released: epoll over the primary's fds, and for every member
 * connection (FH_IPC_WATCH_RECORDS) recvmsg, the checks of docs/ipc.md
 * ("Checks") and counting here, in C.  Python is called (upcall) for what
 * only it can do: a valid record (to run an action or complete a request),
 * a member's EOF, events on the other fds (the listener, the template's
 * exit channel, connections that have not said HELLO yet, whose first
 * record fh_ipc_loop_first() reads), and a tick
 * (deferred work and deadlines), whose return value is the next timeout in
 * ms (-1: none).  Replies and every other record are framed and sent by
 * fh_ipc_send_fd().
 *
 * watch/unwatch are called by the thread that runs the loop (from an
 * upcall), or by any one thread while no loop runs.  wake and stop from
 * any thread.
 */
struct fh_ipc_loop;

enum fh_ipc_watch {
    FH_IPC_WATCH_EVENTS  = 1, /* readiness goes to an FH_IPC_UP_EVENT upcall */
    FH_IPC_WATCH_RECORDS = 2, /* records are read and checked here */
};

enum fh_ipc_upcall_kind {
    FH_IPC_UP_RECORD = 1, /* a valid record from fd; return 1 to stop reading fd */
    FH_IPC_UP_GONE   = 2, /* fd (RECORDS) reached EOF or failed */
    FH_IPC_UP_EVENT  = 3, /* fd (EVENTS) is ready: events */
    FH_IPC_UP_TICK   = 4, /* return the next timeout in ms, -1 for none */
};

/* kind RECORD: a checked record of len bytes in the wire layout (header,
 * then param) is in fh_ipc_loop_buffer() and its hdr.nfds descriptors in
 * fh_ipc_loop_fds(), valid during the upcall (the fds become the
 * upcall's).  Passed there rather than as arguments: every pointer
 * argument costs cffi an object on every record.  Other kinds: len 0. */
typedef long (*fh_ipc_upcall_t)(void *arg, int kind, int fd, uint32_t events,
                                int len);

FH_API struct fh_ipc_loop *fh_ipc_loop_new(void);
FH_API int  fh_ipc_loop_watch(struct fh_ipc_loop *loop, int fd, int how);
FH_API int  fh_ipc_loop_unwatch(struct fh_ipc_loop *loop, int fd);
/* Until fh_ipc_loop_stop(): 0, or -1 with errno when epoll fails. */
FH_API int  fh_ipc_loop_run(struct fh_ipc_loop *loop, fh_ipc_upcall_t upcall,
                            void *arg);
FH_API void fh_ipc_loop_wake(struct fh_ipc_loop *loop);
FH_API void fh_ipc_loop_stop(struct fh_ipc_loop *loop);
/* Close the epoll and wake-up fds (after run returned).  forget: the same
 * in a forked child, where another thread may have held the loop's lock. */
FH_API void fh_ipc_loop_close(struct fh_ipc_loop *loop);
FH_API void fh_ipc_loop_forget(struct fh_ipc_loop *loop);
FH_API void fh_ipc_loop_free(struct fh_ipc_loop *loop);
/* Where the record of an FH_IPC_UP_RECORD upcall is (FH_IPC_RECORD_MAX
 * bytes) and its fds (FH_IPC_FDS_MAX): Python reads them in place. */
FH_API void *fh_ipc_loop_buffer(struct fh_ipc_loop *loop);
FH_API int  *fh_ipc_loop_fds(struct fh_ipc_loop *loop);
/* What the loop and fh_ipc_send_fd() counted for this loop. */
FH_API void fh_ipc_loop_stats(struct fh_ipc_loop *loop, struct fh_ipc_stats *out);
/* One record to connection fd, counted as sent or send_failed in loop.
 * wait_ms: how long to wait for room in a full buffer (0 on the loop's
 * thread, which must never wait).  0, or -1 with errno. */
FH_API int  fh_ipc_send_fd(struct fh_ipc_loop *loop, int fd, int type, uint64_t id,
                           int status, const char *name, const void *param,
                           int len_param, const int *fds, int num_fds, int wait_ms);
/* The first record of connection fd, watched FH_IPC_WATCH_EVENTS, which
 * has not said HELLO: it must be a valid HELLO (fh_ipc_record_check() with
 * FH_IPC_FIRST_RECORD).  Anything else is refused at once: fd is unwatched,
 * gets a REFUSE with fh_ipc_record_message()'s words, and is closed.
 * Counted in loop (received, malformed). */
enum fh_ipc_first {
    FH_IPC_FIRST_WAIT    = 0, /* nothing there yet */
    FH_IPC_FIRST_HELLO   = 1, /* *hello is its HELLO: the caller welcomes it */
    FH_IPC_FIRST_GONE    = 2, /* EOF or a socket error: the caller drops fd */
    FH_IPC_FIRST_REFUSED = 3, /* refused, unwatched and closed */
};
FH_API int  fh_ipc_loop_first(struct fh_ipc_loop *loop, int fd,
                              struct fh_ipc_hello *hello);
/* REFUSE connection fd with why (one line of UTF-8), drain what it sent so
 * that it reads the REFUSE, shut it down and close it. */
FH_API void fh_ipc_refuse_fd(int fd, const char *why);
/* A REPLY without fds: the hot path of an action's answer.  Made during an
 * upcall (on the loop's thread), it is queued and sent when the upcall
 * returns, just before the loop sleeps again, as a bare echo server sends
 * and then waits: the kernel's wake-up of the requester expects the sender
 * to sleep next, and a sender that goes on running (back through Python)
 * invites the scheduler to move the requester to the other CPU, a
 * cross-CPU wake-up on every round trip.  Anything else the loop's thread sends, or an unwatch,
 * sends the queue first, so records still leave in the order they were
 * made.  0 when queued or sent; -1 with errno. */
FH_API int  fh_ipc_send_reply(struct fh_ipc_loop *loop, int fd, uint64_t id,
                              int status, const char *name, const void *param,
                              int len_param);

/*
 * Set by the primary before it forks the template, so that every secondary
 * (Python or native) inherits where the primary's IPC socket is.  path is
 * copied (at most 107 bytes: sun_path).  -1 with ENAMETOOLONG otherwise.
 */
FH_API int fh_ipc_set_primary(const char *path, pid_t primary_pid);
/* What fh_ipc_set_primary() stored: "" and 0 in a process that is not
 * part of a prefix. */
FH_API const char *fh_ipc_socket_path(void);
FH_API pid_t fh_ipc_primary_pid(void);

#endif /* FORKHOST_IPC_H */
