/* cffi cdef for csrc/include/forkhost/member.h: a pool member takes a
 * launch straight from template.sock (what the tests drive by hand). */

#define FH_CTL_TAKEN ...
#define FH_CTL_BUSY ...
#define FH_CTL_HANDOFF ...
#define FH_HANDOFF_MESSAGE ...
#define FH_HANDOFF_PENDING ...
#define FH_HANDOFF_EXPIRED ...
#define FH_HANDOFF_PEER ...
#define FH_MEMBER_HANDOFF ...
#define FH_MEMBER_PYTHON ...
#define FH_NOTICE_URGENT ...


struct fh_taken_launch {
    struct fh_entry_target target;
    struct fh_launch_view view;
    struct fh_child_spec spec;
    ...;
};

struct fh_member {
    int       listen_fd;
    int       ctl_fd;
    int       notice_fd;
    unsigned  uid;
    int       timeout_ms;
    char     *title_area;
    size_t    title_len;
    char     *buf;
    struct fh_hotset *hot;
    int       python;
    int       signals_reset;
    int       python_ready;
    int       epoll_fd;
    int       conn;
    int64_t   accepted_us;
    size_t    n;
    int       mflags;
    unsigned  state;
    int       fds[...];
    unsigned  nfds;
    struct fh_taken_launch run;
};

int fh_member_init(struct fh_member *m);
int fh_member_next(struct fh_member *m);
int fh_member_handoff(struct fh_member *m);
