/* cffi view of forkhost/spawn.h */
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
};
int fh_child_setup(const struct fh_child_spec *spec, const char **error);
pid_t fh_spawn_native(const struct fh_child_spec *spec, const char *path,
                      const char *symbol);
