/* cffi view of forkhost/rundir.h: the runtime directory, the prefix's lock
 * and its config record (forkhost/_runtime.py). */
#define FH_PREFIX_MAX_LEN ...
#define FH_RUNDIR_PATH_MAX ...
#define FH_RUNDIR_ERR_MAX ...
#define FH_PREFIX_BUSY ...
#define FH_RUNDIR_MISSING ...
#define FH_PREFIX_KEEP_SOCKET ...
#define FH_PREFIX_KEEP_IPC ...
#define FH_PREFIX_KEEP_LEFTOVERS ...

struct fh_prefix_paths {
    char root[...];
    char prefix[...];
};

int fh_prefix_name(char *out, const char *prefix, const char *origin,
                   char *err, size_t errlen);
int fh_rundir_path(char *out, size_t outlen, const char *dir, char *err,
                   size_t errlen);
int fh_prefix_socket_path(const struct fh_prefix_paths *p, char *out,
                          size_t outlen, char *err, size_t errlen);
int fh_prefix_resolve(struct fh_prefix_paths *p, const char *prefix,
                      const char *origin, const char *runtime_dir, char *err,
                      size_t errlen);
int fh_rundir_open(const char *path, int create, char *err, size_t errlen);
int fh_prefix_dir_open(const struct fh_prefix_paths *p, int create, char *err,
                       size_t errlen);
int fh_prefix_log_open(const struct fh_prefix_paths *p, char *err, size_t errlen);
int fh_prefix_lock(const struct fh_prefix_paths *p, pid_t *holder, pid_t *stale,
                   char *err, size_t errlen);
void fh_prefix_release(const struct fh_prefix_paths *p, int lock_fd);
int fh_prefix_lock_keep(const struct fh_prefix_paths *p, unsigned keep,
                        pid_t *holder, pid_t *stale, char *err, size_t errlen);
int fh_prefix_clean_leftovers(const struct fh_prefix_paths *p, unsigned keep,
                              pid_t *stale, char *err, size_t errlen);
void fh_prefix_release_keep(const struct fh_prefix_paths *p, unsigned keep,
                            int lock_fd);
void fh_prefix_lock_leave(int lock_fd, pid_t stale);
int fh_prefix_write_config(const struct fh_prefix_paths *p, const char *text,
                           char *err, size_t errlen);
