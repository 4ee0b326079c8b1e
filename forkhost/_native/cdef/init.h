/* cffi cdef for csrc/include/forkhost/init.h and client.h: fh_init's
 * option parser and the client's launch, for forkhost.init(). */

#define FH_DEFAULT_ARENA_SIZE ...
#define FH_DEFAULT_POOL ...
#define FH_DEFAULT_MAX_SECONDARIES ...
#define FH_DEFAULT_GRACE_MS ...
#define FH_EXIT_FORKHOST ...

enum fh_proc_type {
    FH_PROC_AUTO = -1,
    FH_PROC_PRIMARY = 0,
    FH_PROC_SECONDARY = 1,
    FH_PROC_NONE = 2,
};

struct fh_init_options {
    int          proc_type;
    const char  *prefix;
    const char  *runtime_dir;
    size_t       arena_size;
    unsigned     arena_flags;
    const char  *huge_pages;
    unsigned     pool;
    int          consumed;
    size_t       arena_max;
    int          on_primary_death;
};

void fh_init_parse(int argc, char **argv, struct fh_init_options *o);
enum fh_proc_type fh_proc_type(void);
const char *fh_file_prefix(void);
int fh_parse_size(const char *text, size_t *out);

struct fh_client {
    const char  *prog;
    const char  *prefix;
    const char  *prefix_from;
    const char  *runtime_dir;
    const char  *entry;
    uint32_t     flags;
    const char  *argv0;
    char *const *args;
    int          nargs;
    int          extra_fds[...];
    unsigned     nextra;
    int          wait_for_socket;
    ...;
};

void fh_client_init(struct fh_client *c, const char *prog);
int fh_client_set_timeout(struct fh_client *c, const char *s);
void fh_client_run(struct fh_client *c);
int fh_client_primary_starting(int sock, const char *sock_path, int *seen_starting);
