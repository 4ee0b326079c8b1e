/* cffi cdef for csrc/include/forkhost/entry.h (API mode: checked against
 * the real header when the extension is compiled). */

typedef int (*fh_main_fn)(int argc, char **argv, char **envp);

enum fh_elf_kind {
    FH_ELF_NOT_ELF = 0,
    FH_ELF_SHARED = 1,
    FH_ELF_PIE = 2,
    FH_ELF_OTHER = 3,
};

int fh_elf_kind(const char *path);

fh_main_fn fh_entry_load(const char *path, const char *symbol,
                         char *err, size_t errlen, int *exit_code);

int fh_entry_check(int argc, char **argv, char **envp);
