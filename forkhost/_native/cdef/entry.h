/* cffi cdef for csrc/include/forkhost/entry.h (API mode: checked against
 * the real header when the extension is compiled): the one classifier of
 * entries, and native entries' loading. */

#define FH_ENTRY_ERROR ...
#define FH_ENTRY_NATIVE ...
#define FH_ENTRY_FUNCTION ...
#define FH_ENTRY_SCRIPT ...
#define FH_ENTRY_MODULE ...
#define FH_ENTRY_HEAD_MAX ...
#define FH_EXIT_CANNOT_RUN ...
#define FH_EXIT_NOT_FOUND ...
/* <fcntl.h>'s: fh_entry_decide's cwd_fd for this process's cwd. */
#define AT_FDCWD ...

struct fh_entry_target {
    unsigned    kind;
    const char *name;
    const char *symbol;
    int         exit_code;
    char        head[...];
    char        message[...];
};

int fh_entry_decide(const char *entry, int module_flag, int cwd_fd,
                    struct fh_entry_target *t);

typedef int (*fh_main_fn)(int argc, char **argv, char **envp);

fh_main_fn fh_entry_load(const char *path, const char *symbol,
                         char *err, size_t errlen, int *exit_code);

int fh_entry_check(int argc, char **argv, char **envp);
