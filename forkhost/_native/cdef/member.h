/* cffi cdef for csrc/include/forkhost/member.h: a pool member takes a
 * launch straight from template.sock (pool.py). */

#define FH_CTL_TOOK ...
#define FH_CTL_BUSY ...
#define FH_CTL_HANDOFF ...
#define FH_HANDOFF_MESSAGE ...
#define FH_HANDOFF_PENDING ...
#define FH_HANDOFF_EXPIRED ...
#define FH_HANDOFF_PEER ...
#define FH_MEMBER_HANDOFF ...
#define FH_MEMBER_PYTHON ...
#define FH_ENTRY_DEFER ...
#define FH_ENTRY_NATIVE ...
#define FH_ENTRY_FUNCTION ...
#define FH_ENTRY_SCRIPT ...
#define FH_ENTRY_MODULE ...
#define FH_NEWS_URGENT ...

struct fh_launch {
    uint32_t flags;
    uint32_t umask;
    uint32_t stdio_mask;
    uint32_t nextra;
    uint32_t argc;
    uint32_t envc;
    uint32_t strings_len;
    ...;
};

struct fh_launch_view {
    struct fh_launch launch;
    const char *entry;
    const char *strings;
    size_t      strings_len;
};

struct fh_taken_launch {
    unsigned    kind;
    const char *name;
    const char *symbol;
    struct fh_launch_view view;
    struct fh_child_spec spec;
    ...;
};

struct fh_member {
    int       listen_fd;
    int       ctl_fd;
    int       news_fd;
    unsigned  uid;
    int       timeout_ms;
    char     *title_area;
    size_t    title_len;
    char     *buf;
    struct fh_hotset *hot;
    int       epoll_fd;
    int       conn;
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
int fh_entry_classify(const char *entry, int module_flag, int cwd_fd,
                      char *head, size_t head_len, const char **name,
                      const char **symbol);

int fh_launch_parse(const void *rec, size_t n, unsigned nfds,
                    struct fh_launch_view *v);

struct fh_hotset { ...; };
struct fh_hotset *fh_hotset_create(void);
void fh_hotset_arm(struct fh_hotset *h, unsigned launches);
unsigned fh_hotset_pages(struct fh_hotset *h);
long fh_member_prefault(void);
