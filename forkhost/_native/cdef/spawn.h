/* cffi cdef for csrc/include/forkhost/spawn.h (API mode: checked against
 * the real header when the extension is compiled). */

/* cffi has no built-in pid_t; "int..." lets the compiler fill in its size
 * and signedness.  Declared once for all cdef files: do not repeat it. */
typedef int... pid_t;

struct fh_child_spec {
    const int   *fds;
    unsigned     nfds;
    unsigned     stdio_mask;
    unsigned     nextra;
    char *const *argv;
    char *const *envp;
    char        *title_area;
    size_t       title_len;
    unsigned     umask;
    int          report_fd;
    int          client_fd;
    int          signals_ready;
    pid_t        client_pid;
    const uint32_t *fd_target;
    int          inherit_fds;
    uint64_t     sig_ignored;
    uint64_t     sig_blocked;
};

int fh_child_setup(struct fh_child_spec *spec, const char **error);

pid_t fh_spawn_native(struct fh_child_spec *spec,
                      const char *path, const char *symbol);

void fh_run_native(struct fh_child_spec *spec, const char *path,
                   const char *symbol);

void fh_exit_report(int report_fd, int code);

void fh_set_title(char *area, size_t len, char *const *argv);
int fh_reset_signals(void);
int fh_spec_strings(struct fh_child_spec *spec, const char *blob, size_t len,
                    unsigned argc, unsigned envc);
void fh_spec_release(struct fh_child_spec *spec);
int fh_install_environ(const struct fh_child_spec *spec);
char **environ;         /* the C library's: what fh_install_environ made */
