/* cffi cdef for csrc/include/forkhost/template.h: the template's loop, in
 * C (forkhost/_template.py calls it; Python's part are the hooks below). */

#define FH_TEMPLATE_READ_AHEAD_US ...
#define FH_ON_PRIMARY_DEATH_SURVIVE ...
#define FH_ON_PRIMARY_DEATH_STOP ...

struct fh_template_exit {
    int32_t pid;
    int32_t status;
};

struct fh_template_hooks {
    void (*run_python)(struct fh_taken_launch *run);
    void (*member_ready)(void);
    void (*read_ahead)(int cwd_fd, const char *entry, int module_flag);
    size_t (*info_extra)(char *buf, size_t size);
};

struct fh_template_config {
    int          listen_fd;
    const char  *prefix;
    const char  *socket_path;
    uint64_t     socket_ino;
    pid_t        primary_pid;
    unsigned     max_secondaries;
    unsigned     grace_ms;
    unsigned     pool_size;
    unsigned     request_timeout_ms;
    int          exit_notice_fd;
    int          ready_fd;
    const int   *keep_fds;
    unsigned     nkeep;
    char        *title_area;
    size_t       title_len;
    struct fh_template_hooks hooks;
    int          log_level;
    int          on_primary_death;
    const char  *log_root;
    unsigned     generation;
};

#define FH_TEMPLATE_REBORN ...
int fh_template_reborn(unsigned *generation);

int fh_template_main(const struct fh_template_config *c);
pid_t fh_template_fork(const struct fh_template_config *c);

/* Python's hooks (forkhost/_template.py). */
extern "Python" void fh_py_run_python(struct fh_taken_launch *);
extern "Python" void fh_py_member_ready(void);
extern "Python" void fh_py_read_ahead(int, const char *, int);
extern "Python" size_t fh_py_info_extra(char *, size_t);
