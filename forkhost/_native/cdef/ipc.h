/* cffi view of forkhost/ipc.h: what forkhost/ipc uses, and where its
 * constants and layouts come from (no number is repeated here: "..." is
 * the compiler's).  The primary
 * stores where its IPC socket is before forking the template and runs the
 * receive loop (fh_ipc_loop_*) on its IPC thread; a Python secondary uses
 * the C secondary's side through the flat *_raw calls.  pid_t is declared
 * as int here: spawn.h's cdef defines pid_t, but after this file, and the
 * compiler converts between the two (pid_t is int on Linux). */
int fh_ipc_set_primary(const char *path, int primary_pid);
const char *fh_ipc_socket_path(void);
int fh_ipc_primary_pid(void);

#define FH_IPC_MAGIC ...
#define FH_IPC_VERSION ...
#define FH_IPC_NAME_MAX ...
#define FH_IPC_PARAM_MAX ...
#define FH_IPC_FDS_MAX ...
#define FH_IPC_HDR_SIZE ...
#define FH_IPC_RECORD_MAX ...
#define FH_IPC_HELLO_TIMEOUT_MS ...
#define FH_IPC_DEFAULT_TIMEOUT_MS ...
#define FH_IPC_SEND_TIMEOUT_MS ...
#define FH_IPC_CONNECT_TIMEOUT_MS ...
#define FH_IPC_MAX_MEMBERS ...
#define FH_IPC_EXIT_STATUS_KNOWN ...
#define FH_IPC_HELLO_REJOIN ...
static char *const FH_IPC_RESERVED_PREFIX;

/* enum fh_ipc_type, enum fh_ipc_status, enum fh_ipc_peer_status */
#define FH_IPC_MSG ...
#define FH_IPC_REQUEST ...
#define FH_IPC_REPLY ...
#define FH_IPC_HELLO ...
#define FH_IPC_WELCOME ...
#define FH_IPC_REFUSE ...
#define FH_IPC_BYE ...
#define FH_IPC_OK ...
#define FH_IPC_NO_ACTION ...
#define FH_IPC_ACTION_FAILED ...
#define FH_IPC_PEER_ANSWERED ...
#define FH_IPC_PEER_NO_ACTION ...
#define FH_IPC_PEER_TIMED_OUT ...
#define FH_IPC_PEER_DIED ...
#define FH_IPC_PEER_NAME_MAX ...
#define FH_IPC_MESSAGE_MAX ...

struct fh_ipc_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t len;
    uint32_t nfds;
    uint64_t id;
    uint32_t param_len;
    int32_t  status;
    char     name[...];
};

struct fh_ipc_hello {
    int32_t  pid;
    int32_t  ppid;
    uint32_t flags;
    uint32_t reserved;
};

struct fh_ipc_welcome {
    int32_t  primary_pid;
    int32_t  template_pid;
    uint32_t name_max;
    uint32_t param_max;
};

struct fh_ipc_exit_notice {
    int32_t  pid;
    int32_t  code;
    int32_t  signal;
    uint32_t flags;
};

struct fh_ipc_shutdown_notice {
    int32_t  primary_pid;
    uint32_t grace_ms;
};

struct fh_ipc_primary_notice {
    int32_t  primary_pid;
    int32_t  template_pid;
};

/* the one parser of records (ipc_wire.c) */
#define FH_IPC_FROM_PRIMARY ...
#define FH_IPC_FROM_SECONDARY ...
#define FH_IPC_FIRST_RECORD ...

struct fh_ipc_verdict {
    unsigned error;
    unsigned side;
    unsigned type;
    uint64_t a, b, c;
};

int fh_ipc_record_check(const void *buf, size_t n, int mflags, unsigned nfds,
                        int side, struct fh_ipc_verdict *v);
size_t fh_ipc_record_message(const struct fh_ipc_verdict *v, char *out, size_t size);
const char *fh_ipc_type_name(unsigned type);

struct fh_ipc_msg {
    char    name[...];
    int     len_param;
    int     num_fds;
    uint8_t param[...];
    int     fds[...];
    int     pid;
    int     status;
};

struct fh_ipc_peer_reply {
    int                pid;
    int                status;
    char               name[...];
    struct fh_ipc_msg *msg;
};

struct fh_ipc_reply {
    int nb_sent;
    int nb_received;
    struct fh_ipc_msg *msgs;
    struct fh_ipc_peer_reply *peers;
};

struct fh_ipc_stats {
    uint64_t sent, received, dropped, notices_ignored, no_action, malformed,
             action_errors, timeouts, peer_died, late_replies, send_failed;
};

typedef int (*fh_ipc_action_t)(const struct fh_ipc_msg *msg, const void *peer);
typedef void (*fh_ipc_async_t)(const struct fh_ipc_msg *request,
                               const struct fh_ipc_reply *reply, void *arg);

/* a secondary (or an attached process) */
int fh_ipc_register(const char *name, fh_ipc_action_t action);
const char *fh_ipc_notice_name(unsigned i);
int fh_ipc_unregister(const char *name);
int fh_ipc_start(void);
int fh_ipc_attach(const char *path);
int fh_ipc_leave(int bye);
int fh_ipc_peer_pid(void);
const char *fh_ipc_peer_name(void);
const char *fh_ipc_refusal(void);
int fh_ipc_rejoining(void);
void fh_ipc_stats(struct fh_ipc_stats *out);
int fh_ipc_send_raw(const char *name, const void *param, int len_param,
                    const int *fds, int num_fds);
int fh_ipc_request_raw(const char *name, const void *param, int len_param,
                       const int *fds, int num_fds, double timeout,
                       void *record, int *reply_fds, int *out);
int fh_ipc_request_async_raw(const char *name, const void *param, int len_param,
                             const int *fds, int num_fds, double timeout,
                             fh_ipc_async_t callback, void *arg);
int fh_ipc_reply_raw(uint64_t id, int status, const char *name,
                     const void *param, int len_param, const int *fds, int num_fds);
uint64_t fh_ipc_peer_id(const void *peer);
int fh_ipc_on_ipc_thread(void);

extern "Python" int _fh_ipc_action(const struct fh_ipc_msg *, const void *);
extern "Python" void _fh_ipc_async(const struct fh_ipc_msg *,
                                   const struct fh_ipc_reply *, void *);

/* the primary's receive loop */
struct fh_ipc_loop;
#define FH_IPC_WATCH_EVENTS ...
#define FH_IPC_WATCH_RECORDS ...
#define FH_IPC_UP_RECORD ...
#define FH_IPC_UP_GONE ...
#define FH_IPC_UP_EVENT ...
#define FH_IPC_UP_TICK ...

typedef long (*fh_ipc_upcall_t)(void *arg, int kind, int fd, uint32_t events,
                                int len);

struct fh_ipc_loop *fh_ipc_loop_new(void);
int  fh_ipc_loop_watch(struct fh_ipc_loop *loop, int fd, int how);
int  fh_ipc_loop_unwatch(struct fh_ipc_loop *loop, int fd);
int  fh_ipc_loop_run(struct fh_ipc_loop *loop, fh_ipc_upcall_t upcall, void *arg);
void fh_ipc_loop_wake(struct fh_ipc_loop *loop);
void fh_ipc_loop_stop(struct fh_ipc_loop *loop);
void fh_ipc_loop_close(struct fh_ipc_loop *loop);
void fh_ipc_loop_forget(struct fh_ipc_loop *loop);
void fh_ipc_loop_free(struct fh_ipc_loop *loop);
void fh_ipc_loop_stats(struct fh_ipc_loop *loop, struct fh_ipc_stats *out);
void *fh_ipc_loop_buffer(struct fh_ipc_loop *loop);
int *fh_ipc_loop_fds(struct fh_ipc_loop *loop);
int  fh_ipc_send_fd(struct fh_ipc_loop *loop, int fd, int type, uint64_t id,
                    int status, const char *name, const void *param,
                    int len_param, const int *fds, int num_fds, int wait_ms);
int  fh_ipc_send_reply(struct fh_ipc_loop *loop, int fd, uint64_t id, int status,
                       const char *name, const void *param, int len_param);
#define FH_IPC_FIRST_WAIT ...
#define FH_IPC_FIRST_HELLO ...
#define FH_IPC_FIRST_GONE ...
#define FH_IPC_FIRST_REFUSED ...
int  fh_ipc_loop_first(struct fh_ipc_loop *loop, int fd, struct fh_ipc_hello *hello);
void fh_ipc_refuse_fd(int fd, const char *why);

extern "Python" long _fh_ipc_upcall(void *, int, int, uint32_t, int);
