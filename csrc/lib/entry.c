/*
 * entry.c - what an entry names (fh_entry_decide, before the fork), and
 * loading a native entry in a secondary: a shared object, or a PIE
 * executable, and finding the function to call.
 *
 * Why this exists: the RFC's whole idea is "compile the application as a
 * PIE, fork, dlopen it, call main".  glibc >= 2.30 refuses that dlopen
 * ("cannot dlopen() a PIE object") because an executable's code may assume
 * it is the main program.  We load a copy whose DF_1_PIE bit is cleared, and
 * we check, before anything runs, the two ways that assumption really bites
 * (both verified on glibc 2.36 / gcc 12, x86-64):
 *
 *  - Thread-local storage.  The linker relaxes every TLS access in an
 *    executable to the local-exec model: a fixed offset from the thread
 *    pointer, with no relocation left for the loader.  That slot belongs to
 *    the real main program's TLS block, so a dlopened PIE reading its
 *    `static __thread int x` reads the host's TLS (we saw it return another
 *    module's variable) and writing it corrupts the host.  Refused (126).
 *
 *  - Copy relocations.  gcc's -fPIE code reaches a library's variables
 *    directly (optarg, optind, std::cout, __libc_single_threaded...), so the
 *    linker gives the executable its own copy and the library is meant to
 *    bind to that copy.  A library that was already loaded and relocated
 *    before the PIE (libc always is) keeps using its own variable, and the
 *    PIE reads a snapshot: getopt() then leaves optarg NULL in the PIE.
 *    On x86_64 the loaded libraries are pointed at the PIE's copies, as
 *    ld.so does for a main program (bind_copies()); elsewhere refused (126)
 *    unless the variable is one whose snapshot stays right (stdin/stdout/
 *    stderr, environ, the program names).  -fPIC -pie code goes through the
 *    GOT and has no copy relocations at all.
 *
 * Everything is read with pread(): a file being replaced under us yields a
 * short read and a clean error, never a SIGBUS.
 *
 * Before all that, and before the fork, what an entry names is decided
 * here too (fh_entry_decide): one stat and a 4-byte read.
 */
#include "forkhost/entry.h"
#include "init_internal.h"
#include "pytext.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * What an entry names, before the fork.
 */

/* The file type of path (S_IFREG, S_IFDIR, ...), 0 when it names nothing. */
static mode_t file_type(int dirfd, const char *path)
{
    struct stat st;

    return fstatat(dirfd, path, &st, 0) == 0 ? (st.st_mode & S_IFMT) : 0;
}

/* The first four bytes are ELF's magic.  O_NONBLOCK: only regular files
 * come here, but one may have become a FIFO since its stat. */
static int is_elf(int dirfd, const char *path)
{
    char magic[4];
    ssize_t r;
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return 0;
    r = pread(fd, magic, sizeof magic, 0);
    close(fd);
    return r == (ssize_t)sizeof magic && memcmp(magic, "\177ELF", 4) == 0;
}

/* A shared object's name: NAME.so, or NAME.so.1, NAME.so.1.2... */
static int named_shared_object(const char *path)
{
    const char *base = strrchr(path, '/'), *so, *p;

    base = base != NULL ? base + 1 : path;
    for (so = strstr(base, ".so"); so != NULL; so = strstr(so + 1, ".so")) {
        if (so == base)
            continue;                    /* ".so" alone names no library */
        for (p = so + 3; *p == '.' && p[1] >= '0' && p[1] <= '9';) {
            p++;
            while (*p >= '0' && *p <= '9')
                p++;
        }
        if (*p == '\0')
            return 1;
    }
    return 0;
}

/* ASCII identifiers joined by single dots, n bytes of s. */
static int dotted(const char *s, size_t n)
{
    int start = 1;
    size_t i;

    for (i = 0; i < n; i++) {
        char c = s[i];

        if (c == '.') {
            if (start)
                return 0;
            start = 1;
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                   c == '_' || (!start && c >= '0' && c <= '9')) {
            start = 0;
        } else {
            return 0;
        }
    }
    return !start;
}

/* What Python's re.match(r"^NAME(\.NAME)*$") accepted: its '$' also
 * matches before a final newline, so "mod\n" was a module name too. */
static int dotted_py(const char *s, size_t n)
{
    return dotted(s, n) || (n > 1 && s[n - 1] == '\n' && dotted(s, n - 1));
}

/* Python's '"/" in e or e.endswith((".py", ".so")) or
 * re.search(r"\.so[.:]", e)'. */
static int looks_like_path(const char *e)
{
    size_t n = strlen(e);
    const char *p;

    if (strchr(e, '/') != NULL)
        return 1;
    if (n >= 3 && (strcmp(e + n - 3, ".py") == 0 ||
                   strcmp(e + n - 3, ".so") == 0))
        return 1;
    for (p = e; (p = strstr(p, ".so")) != NULL; p++)
        if (p[3] == '.' || p[3] == ':')
            return 1;
    return 0;
}

static int decided(struct fh_entry_target *t, enum fh_entry_kind kind,
                   const char *name, const char *symbol)
{
    t->kind = kind;
    t->name = name;
    t->symbol = symbol;
    return (int)kind;
}

int fh__entry_refused(struct fh_entry_target *t, int code)
{
    t->kind = FH_ENTRY_ERROR;
    t->name = t->symbol = NULL;
    t->exit_code = code;
    return FH_ENTRY_ERROR;
}

/* "entry %r not found: no such file (relative to CWD)HINT" */
static int not_found(const char *entry, int has_colon, int cwd_fd,
                     struct fh_entry_target *t)
{
    struct fh__out o = {t->message, sizeof t->message, 0};

    fh__puts(&o, "entry ");
    fh__put_repr(&o, entry, strlen(entry));
    fh__puts(&o, " not found: no such file");
    if (entry[0] != '/') {
        char link[64], cwd[FH_ENTRY_HEAD_MAX];
        ssize_t k;

        snprintf(link, sizeof link, "/proc/self/fd/%d", cwd_fd);
        k = readlink(link, cwd, sizeof cwd);
        fh__puts(&o, " (relative to ");
        if (k >= 0)
            fh__put_text(&o, cwd, (size_t)k);
        else
            fh__puts(&o, "the client's cwd");
        fh__puts(&o, ")");
    }
    if (!has_colon && !looks_like_path(entry))
        fh__puts(&o, "; for a module use '-m MODULE' or 'MODULE:FUNCTION'");
    return fh__entry_refused(t, FH_EXIT_NOT_FOUND);
}

FH_API int fh_entry_decide(const char *entry, int module_flag, int cwd_fd,
                           struct fh_entry_target *t)
{
    const char *colon, *path = entry, *symbol = NULL;
    size_t n = strlen(entry), hl = 0;
    mode_t type;

    t->kind = FH_ENTRY_ERROR;
    t->name = t->symbol = NULL;
    t->exit_code = 0;
    t->head[0] = '\0';
    t->message[0] = '\0';
    if (module_flag) {
        if (!dotted_py(entry, n)) {
            struct fh__out o = {t->message, sizeof t->message, 0};

            fh__puts(&o, "invalid module name ");
            fh__put_repr(&o, entry, n);
            return fh__entry_refused(t, FH_EXIT_NOT_FOUND);
        }
        return decided(t, FH_ENTRY_MODULE, entry, NULL);
    }
    type = file_type(cwd_fd, entry);
    if (type != 0 && type != S_IFREG) {
        /* A directory (its __main__.py), a FIFO, /dev/stdin: python PATH
         * runs them, and so does the secondary, which reads them. */
        return decided(t, FH_ENTRY_SCRIPT, entry, NULL);
    }
    if (type == 0) {
        colon = strrchr(entry, ':');
        if (colon != NULL) {
            hl = (size_t)(colon - entry);
            /* A head past PATH_MAX names no file (ENAMETOOLONG). */
            if (hl > 0 && hl < sizeof t->head) {
                memcpy(t->head, entry, hl);
                t->head[hl] = '\0';
            }
        }
        if (colon != NULL && hl > 0 && hl < sizeof t->head &&
            file_type(cwd_fd, t->head) == S_IFREG) {
            path = t->head;
            symbol = colon[1] != '\0' ? colon + 1 : NULL;
        } else if (colon != NULL && hl > 0 && colon[1] != '\0' &&
                   dotted_py(entry, hl) && dotted_py(colon + 1, n - hl - 1)) {
            if (hl >= sizeof t->head) {
                /* What the import of a name this long would say. */
                struct fh__out o = {t->message, sizeof t->message, 0};

                fh__puts(&o, "module ");
                fh__put_repr(&o, entry, hl);
                fh__puts(&o, " not found (searched the client's cwd, "
                          "PYTHONPATH and the primary's sys.path)");
                return fh__entry_refused(t, FH_EXIT_NOT_FOUND);
            }
            return decided(t, FH_ENTRY_FUNCTION, t->head, colon + 1);
        } else {
            return not_found(entry, colon != NULL, cwd_fd, t);
        }
    }
    if (is_elf(cwd_fd, path))
        return decided(t, FH_ENTRY_NATIVE, path, symbol);
    if (symbol != NULL) {
        struct fh__out o = {t->message, sizeof t->message, 0};

        fh__puts(&o, "entry ");
        fh__put_repr(&o, entry, n);
        fh__puts(&o, ": a ':symbol' applies to shared objects and executables, "
                  "and ");
        fh__put_repr(&o, path, strlen(path));
        fh__puts(&o, " is not ELF");
        return fh__entry_refused(t, FH_EXIT_CANNOT_RUN);
    }
    if (named_shared_object(path)) {
        /* Named as a library is run as one, as exec would (ENOEXEC), not
         * as Python source. */
        struct fh__out o = {t->message, sizeof t->message, 0};

        fh__puts(&o, "entry ");
        fh__put_repr(&o, entry, n);
        fh__puts(&o, ": named as a shared object, and not ELF");
        return fh__entry_refused(t, FH_EXIT_CANNOT_RUN);
    }
    return decided(t, FH_ENTRY_SCRIPT, path, NULL);
}

/* ------------------------------------------------------------------------
 * Loading a native entry, in the secondary.
 */

/*
 * RTLD_NOW: resolve every symbol at load time, so an unresolved reference is
 * a clean 126 here instead of ld.so's "symbol lookup error" killing the
 * program halfway through its run.
 *
 * RTLD_GLOBAL: the entry plays the main program's part, and a main program's
 * exported symbols are in the global scope: plugins it dlopens later may call
 * back into it, as they would if it had been exec'd.  Neither flag decides
 * whether the entry shares libforkhost.so with the primary: a DT_NEEDED
 * "libforkhost.so" is matched by soname against the copy the primary already
 * loaded (whatever scope that was loaded in), so the entry always gets that
 * same instance, at the same address, with its state in the arena.
 *
 * Not RTLD_DEEPBIND: it would hide the interposers the process already has
 * (a sanitizer's or profiler's malloc) from the entry.
 */
#define FH_ENTRY_DLFLAGS (RTLD_NOW | RTLD_GLOBAL)

/* Program headers beyond this are not a real file: ld -z separate-code
 * makes about 13, and PN_XNUM programs do not exist in practice. */
#define FH_MAX_PHNUM 4096u
/* Dynamic sections are a few dozen entries; this caps a corrupt p_filesz. */
#define FH_MAX_DYN_BYTES (1u << 20)
/* How many copy-relocated symbol names an error message lists. */
#define FH_MAX_COPY_NAMES 4

/* The relocation type a copy relocation has on this machine.  On machines not
 * listed the copy-relocation check is skipped (the PIE still loads). */
#if defined(__x86_64__)
#define FH_R_COPY R_X86_64_COPY
#elif defined(__i386__)
#define FH_R_COPY R_386_COPY
#elif defined(__aarch64__)
#define FH_R_COPY R_AARCH64_COPY
#elif defined(__arm__)
#define FH_R_COPY R_ARM_COPY
#elif defined(__riscv)
#define FH_R_COPY R_RISCV_COPY
#elif defined(__powerpc64__)
#define FH_R_COPY R_PPC64_COPY
#elif defined(__powerpc__)
#define FH_R_COPY R_PPC_COPY
#elif defined(__s390__)
#define FH_R_COPY R_390_COPY
#endif

/* Where stock executables are handled in full (see "Stock executables"
 * below): main found from glibc's _start, copy relocations bound.  Tested
 * on x86_64 only; elsewhere stripped PIEs without an exported main and
 * PIEs with stale copy relocations are refused with the reason. */
#if defined(__x86_64__) && __ELF_NATIVE_CLASS == 64
#define FH_START_DECODE 1       /* main from _start: x86_64 glibc */
#define FH_BIND_COPIES 1        /* copy relocations bound: x86_64 */
#define FH_R_GLOB_DAT R_X86_64_GLOB_DAT
#define FH_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define FH_R_ABS R_X86_64_64
#endif

/* <link.h> gives ElfW(type) for this process's ELF class; these are the
 * matching macros it keeps to itself. */
#if __ELF_NATIVE_CLASS == 64
#define FH_ELFCLASS ELFCLASS64
#define FH_R_TYPE ELF64_R_TYPE
#define FH_R_SYM ELF64_R_SYM
#define FH_ST_BIND ELF64_ST_BIND
#define FH_ST_TYPE ELF64_ST_TYPE
#else
#define FH_ELFCLASS ELFCLASS32
#define FH_R_TYPE ELF32_R_TYPE
#define FH_R_SYM ELF32_R_SYM
#define FH_ST_BIND ELF32_ST_BIND
#define FH_ST_TYPE ELF32_ST_TYPE
#endif

/*
 * Why an entry cannot be loaded, named where the loading fails: the launch
 * prints the message, fh_entry_check() prints the name too, and
 * `forkhost doctor ENTRY` maps each name to its fix (forkhost/_doctor.py).
 */
enum cause {
    CAUSE_OK,
    CAUSE_NOT_FOUND,            /* no such file (127) */
    CAUSE_UNREADABLE,           /* cannot open or read it, a directory */
    CAUSE_NOT_ELF,              /* a regular file that is not ELF, a FIFO */
    CAUSE_WRONG_ELF,            /* another class, machine or byte order, a
                                   .o, a core dump, malformed */
    CAUSE_NOT_PIE,              /* ET_EXEC */
    CAUSE_STATIC_PIE,
    CAUSE_PIE_TLS,              /* a PIE with PT_TLS: local-exec TLS */
    CAUSE_COPY_RELOC,
    CAUSE_STATIC_TLS,           /* dlopen: no static TLS left */
    CAUSE_MISSING_LIB,          /* dlopen: a needed library not found */
    CAUSE_UNDEFINED,            /* dlopen: an undefined symbol */
    CAUSE_LOAD_ERROR,           /* any other dlopen or copy failure */
    CAUSE_NOT_EXPORTED,         /* the symbol is not the entry's (127) */
    CAUSE_STRIPPED,             /* a stripped PIE without it in .dynsym (127) */
};

static const char *const cause_names[] = {
    [CAUSE_OK] = "ok",
    [CAUSE_NOT_FOUND] = "not-found",
    [CAUSE_UNREADABLE] = "unreadable",
    [CAUSE_NOT_ELF] = "not-elf",
    [CAUSE_WRONG_ELF] = "wrong-elf",
    [CAUSE_NOT_PIE] = "not-pie",
    [CAUSE_STATIC_PIE] = "static-pie",
    [CAUSE_PIE_TLS] = "pie-tls",
    [CAUSE_COPY_RELOC] = "copy-relocation",
    [CAUSE_STATIC_TLS] = "static-tls",
    [CAUSE_MISSING_LIB] = "missing-library",
    [CAUSE_UNDEFINED] = "undefined-symbol",
    [CAUSE_LOAD_ERROR] = "load-error",
    [CAUSE_NOT_EXPORTED] = "not-exported",
    [CAUSE_STRIPPED] = "stripped",
};

/* What a file is, judged from its headers (no dlopen). */
enum fh_elf_kind {
    FH_ELF_NOT_ELF = 0,   /* readable, not ELF (a Python script, say) */
    FH_ELF_SHARED  = 1,   /* ET_DYN without DF_1_PIE: a shared object */
    FH_ELF_PIE     = 2,   /* ET_DYN with DF_1_PIE (or PT_INTERP): a PIE */
    FH_ELF_OTHER   = 3,   /* ET_EXEC (non-PIE), ET_REL, wrong class/machine */
};

/* What inspecting one file found: enough to pick the loading route and to
 * say exactly why a file cannot be an entry. */
struct elf_info {
    int kind;                   /* enum fh_elf_kind */
    char why[160];              /* FH_ELF_OTHER: "a non-PIE executable; ..." */
    int cause;                  /* FH_ELF_OTHER: enum cause */
    off_t size;                 /* file size */
    int special;                /* not a regular file (FH_ELF_NOT_ELF) */
    ElfW(Ehdr) eh;
    ElfW(Phdr) *ph;             /* malloc'd, phnum entries */
    unsigned phnum;
    ElfW(Dyn) *dyn;             /* malloc'd PT_DYNAMIC contents, or NULL */
    size_t ndyn;
    off_t dyn_off;              /* file offset of dyn[0] */
    int has_interp;             /* PT_INTERP: made to be run, not loaded */
    int has_tls;                /* PT_TLS */
    uint64_t tls_size;          /* its p_memsz */
    int has_soname;             /* DT_SONAME */
    uint64_t flags;             /* DT_FLAGS */
    uint64_t flags_1;           /* DT_FLAGS_1 */
    long flags_1_idx;           /* index of DT_FLAGS_1 in dyn, or -1 */
};

static void elf_info_free(struct elf_info *ei)
{
    free(ei->ph);
    free(ei->dyn);
    ei->ph = NULL;
    ei->dyn = NULL;
}

/* 0 when [off, off+len) lies inside a file of the given size. */
static int out_of_range(off_t size, uint64_t off, uint64_t len)
{
    return off > (uint64_t)size || len > (uint64_t)size - off;
}

/* Read exactly len bytes at off: 0; 1 on a short read (file shorter than
 * its headers say, or changed under us); -1 with errno on an I/O error. */
static int read_at(int fd, void *buf, size_t len, off_t off)
{
    char *p = buf;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            return 1;
        p += n;
        off += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read [off, off+len) into a new buffer with a NUL after it, checking the
 * range first.  NULL with errno (EINVAL: out of range or short read). */
static void *read_alloc(int fd, off_t size, uint64_t off, uint64_t len)
{
    char *buf;
    int rc;

    if (out_of_range(size, off, len) || len > SIZE_MAX - 1) {
        errno = EINVAL;
        return NULL;
    }
    buf = malloc((size_t)len + 1);
    if (buf == NULL)
        return NULL;
    rc = read_at(fd, buf, (size_t)len, (off_t)off);
    if (rc != 0) {
        free(buf);
        if (rc > 0)
            errno = EINVAL;
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* The ELF identity of the code running now, taken from libforkhost's own
 * mapped ELF header, so no per-architecture table is needed (and x32 or
 * big-endian builds are judged right).  0, or -1 when it cannot be found; the
 * machine check is then left to dlopen(). */
static int host_machine(unsigned *machine)
{
    Dl_info di;
    const ElfW(Ehdr) *self;

    if (dladdr((void *)&fh_entry_load, &di) == 0 || di.dli_fbase == NULL)
        return -1;
    self = di.dli_fbase;
    if (memcmp(self->e_ident, ELFMAG, SELFMAG) != 0)
        return -1;
    *machine = self->e_machine;
    return 0;
}

static int other(struct elf_info *ei, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A file that is not an entry for this process: ei->why says what it is
 * (a wrong ELF file, unless the caller names another cause). */
static int other(struct elf_info *ei, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(ei->why, sizeof ei->why, fmt, ap);
    va_end(ap);
    ei->kind = FH_ELF_OTHER;
    ei->cause = CAUSE_WRONG_ELF;
    return 0;
}

/*
 * Classify the open file fd.  0 with ei->kind set (and ei->why for
 * FH_ELF_OTHER, malformed files included), or -1 with errno when the file
 * cannot be read at all.  The caller frees with elf_info_free().
 */
static int inspect(int fd, struct elf_info *ei)
{
    unsigned char ident[EI_NIDENT];
    struct stat st;
    unsigned machine;
    ssize_t n;
    size_t i;
    int rc;

    memset(ei, 0, sizeof *ei);
    ei->flags_1_idx = -1;
    if (fstat(fd, &st) < 0)
        return -1;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {   /* a FIFO or a tty: reading could block */
        ei->kind = FH_ELF_NOT_ELF;
        ei->special = 1;
        return 0;
    }
    ei->size = st.st_size;

    do
        n = pread(fd, ident, sizeof ident, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    if ((size_t)n < SELFMAG || memcmp(ident, ELFMAG, SELFMAG) != 0) {
        ei->kind = FH_ELF_NOT_ELF;
        return 0;
    }
    if ((size_t)n < sizeof ident)
        return other(ei, "a truncated ELF file");
    if (ident[EI_CLASS] != FH_ELFCLASS)
        return other(ei, "a %s ELF object; this process is %d-bit",
                     ident[EI_CLASS] == ELFCLASS32 ? "32-bit"
                     : ident[EI_CLASS] == ELFCLASS64 ? "64-bit" : "bad-class",
                     __ELF_NATIVE_CLASS);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (ident[EI_DATA] != ELFDATA2LSB)
#else
    if (ident[EI_DATA] != ELFDATA2MSB)
#endif
        return other(ei, "an ELF object of the other byte order");

    rc = read_at(fd, &ei->eh, sizeof ei->eh, 0);
    if (rc < 0)
        return -1;
    if (rc > 0)
        return other(ei, "a truncated ELF file (no complete ELF header)");
    if (host_machine(&machine) == 0 && ei->eh.e_machine != machine)
        return other(ei, "built for another machine (e_machine %u; this "
                     "process is %u)", ei->eh.e_machine, machine);
    switch (ei->eh.e_type) {
    case ET_DYN:
        break;
    case ET_EXEC:
        other(ei, "a non-PIE executable; build with -fPIE -pie");
        ei->cause = CAUSE_NOT_PIE;
        return 0;
    case ET_REL:
        return other(ei, "a relocatable object (.o); link it with -shared "
                     "or -pie");
    case ET_CORE:
        return other(ei, "a core dump");
    default:
        return other(ei, "an ELF file of unknown type %u", ei->eh.e_type);
    }

    /* Program headers: PT_INTERP, PT_TLS, PT_DYNAMIC. */
    ei->phnum = ei->eh.e_phnum;
    if (ei->eh.e_phentsize != sizeof(ElfW(Phdr)) || ei->phnum == 0
        || ei->phnum > FH_MAX_PHNUM)
        return other(ei, "a malformed ELF file (program header table)");
    ei->ph = read_alloc(fd, ei->size, ei->eh.e_phoff,
                        (uint64_t)ei->phnum * sizeof(ElfW(Phdr)));
    if (ei->ph == NULL)
        return errno == EINVAL
            ? other(ei, "a malformed ELF file (program headers out of range)")
            : -1;
    for (i = 0; i < ei->phnum; i++) {
        const ElfW(Phdr) *ph = &ei->ph[i];

        if (ph->p_type == PT_INTERP)
            ei->has_interp = 1;
        else if (ph->p_type == PT_TLS) {
            ei->has_tls = 1;
            ei->tls_size = ph->p_memsz;
        } else if (ph->p_type == PT_DYNAMIC && ei->dyn == NULL) {
            if (ph->p_filesz > FH_MAX_DYN_BYTES)
                return other(ei, "a malformed ELF file (dynamic section)");
            ei->dyn = read_alloc(fd, ei->size, ph->p_offset, ph->p_filesz);
            if (ei->dyn == NULL)
                return errno == EINVAL
                    ? other(ei, "a malformed ELF file (dynamic section out "
                            "of range)")
                    : -1;
            ei->ndyn = ph->p_filesz / sizeof(ElfW(Dyn));
            ei->dyn_off = (off_t)ph->p_offset;
        }
    }
    for (i = 0; i < ei->ndyn && ei->dyn[i].d_tag != DT_NULL; i++) {
        switch (ei->dyn[i].d_tag) {
        case DT_FLAGS:
            ei->flags = ei->dyn[i].d_un.d_val;
            break;
        case DT_FLAGS_1:
            ei->flags_1 = ei->dyn[i].d_un.d_val;
            ei->flags_1_idx = (long)i;
            break;
        case DT_SONAME:
            ei->has_soname = 1;
            break;
        }
    }
    ei->kind = (ei->flags_1 & DF_1_PIE) || ei->has_interp
        ? FH_ELF_PIE : FH_ELF_SHARED;
    return 0;
}

/* ------------------------------------------------------------------------
 * Reading the dynamic section's tables (strings, symbols, relocations).
 */

/* The dynamic tag's value, or dflt. */
static uint64_t dyn_val(const struct elf_info *ei, ElfW(Sxword) tag,
                        uint64_t dflt)
{
    size_t i;

    for (i = 0; i < ei->ndyn && ei->dyn[i].d_tag != DT_NULL; i++)
        if (ei->dyn[i].d_tag == tag)
            return ei->dyn[i].d_un.d_val;
    return dflt;
}

/* The file offset of [vaddr, vaddr+len) when a PT_LOAD maps it from the
 * file, or -1. */
static off_t vaddr_to_off(const struct elf_info *ei, uint64_t vaddr,
                          uint64_t len)
{
    unsigned i;

    for (i = 0; i < ei->phnum; i++) {
        const ElfW(Phdr) *ph = &ei->ph[i];

        if (ph->p_type == PT_LOAD && vaddr >= ph->p_vaddr
            && vaddr - ph->p_vaddr <= ph->p_filesz
            && len <= ph->p_filesz - (vaddr - ph->p_vaddr))
            return (off_t)(ph->p_offset + (vaddr - ph->p_vaddr));
    }
    return -1;
}

/* Read a table the dynamic section points to by address (DT_STRTAB, DT_RELA
 * ...), NUL-terminated; NULL when absent or out of range. */
static void *read_dyn_table(int fd, const struct elf_info *ei, uint64_t vaddr,
                            uint64_t len)
{
    off_t off = vaddr_to_off(ei, vaddr, len);

    return off < 0 ? NULL : read_alloc(fd, ei->size, (uint64_t)off, len);
}

/* The dynamic string table (NUL-terminated past its end), or NULL. */
static char *read_dynstr(int fd, const struct elf_info *ei, size_t *len)
{
    uint64_t addr = dyn_val(ei, DT_STRTAB, 0);
    uint64_t sz = dyn_val(ei, DT_STRSZ, 0);

    *len = (size_t)sz;
    return addr && sz ? read_dyn_table(fd, ei, addr, sz) : NULL;
}

static const char *str_at(const char *tab, size_t len, uint64_t off)
{
    return tab != NULL && off < len ? tab + off : NULL;
}

/* ------------------------------------------------------------------------
 * Copy relocations (see the top of the file): which are stale, where they
 * are not bound (bind_copies() binds them on x86_64).
 */
#ifndef FH_BIND_COPIES

/* Variables whose copy in the PIE stays right even though libc keeps its
 * own: libc never reassigns the std streams, and environ and the program
 * names are set by fh_spawn_native before the entry is loaded, so the copy
 * taken at load time is the value the program expects. */
static int copy_is_harmless(const char *name)
{
    static const char *const ok[] = {
        "stdin", "stdout", "stderr", "environ", "__environ",
        "program_invocation_name", "program_invocation_short_name",
        "__progname", "__progname_full",
    };
    size_t i;

    for (i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (strcmp(name, ok[i]) == 0)
            return 1;
    return 0;
}

struct name_list {
    char **v;
    size_t n, cap;
};

static int collect_object_name(struct dl_phdr_info *info, size_t size,
                               void *data)
{
    struct name_list *l = data;
    char *dup;

    (void)size;
    if (info->dlpi_name == NULL || info->dlpi_name[0] == '\0')
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **v = realloc(l->v, cap * sizeof *v);
        if (v == NULL)
            return 1;
        l->v = v;
        l->cap = cap;
    }
    dup = strdup(info->dlpi_name);
    if (dup == NULL)
        return 1;
    l->v[l->n++] = dup;
    return 0;
}

/*
 * Does an object already loaded in this process define name?  Those objects
 * are relocated already and keep using their own definition, so a copy of it
 * in the PIE would go stale.  An object the PIE brings in with it is not
 * loaded yet and will bind to the PIE's copy, as in a normal exec (we saw
 * std::cout work when libstdc++ came in with the PIE).  Objects loaded
 * RTLD_LOCAL (Python extension modules and their libraries) are not in the
 * global scope, so each loaded object is asked in turn.
 */
static int defined_by_loaded_object(const char *name)
{
    struct name_list l = {NULL, 0, 0};
    int found = 0;
    size_t i;

    if (dlsym(RTLD_DEFAULT, name) != NULL)
        return 1;
    /* dl_iterate_phdr holds the loader's lock: collect, then dlopen. */
    dl_iterate_phdr(collect_object_name, &l);
    for (i = 0; i < l.n; i++) {
        if (!found) {
            void *h = dlopen(l.v[i], RTLD_LAZY | RTLD_NOLOAD);
            if (h != NULL) {
                found = dlsym(h, name) != NULL;
                dlclose(h);
            }
        }
        free(l.v[i]);
    }
    free(l.v);
    dlerror();
    return found;
}

#ifdef FH_R_COPY
/* Append to out (a comma-separated list) the copy-relocated symbols of the
 * relocation table at DT_<tag> that would go stale.  Returns the count. */
static int stale_copies_in(int fd, const struct elf_info *ei,
                           ElfW(Sxword) tab_tag, ElfW(Sxword) sz_tag,
                           size_t entsize, int is_rela,
                           const char *strtab, size_t strsz,
                           char *out, size_t outlen, int count)
{
    uint64_t addr = dyn_val(ei, tab_tag, 0), sz = dyn_val(ei, sz_tag, 0);
    uint64_t symtab = dyn_val(ei, DT_SYMTAB, 0);
    uint64_t syment = dyn_val(ei, DT_SYMENT, sizeof(ElfW(Sym)));
    unsigned char *rel;
    size_t i;

    if (addr == 0 || sz == 0 || symtab == 0 || syment < sizeof(ElfW(Sym)))
        return count;
    rel = read_dyn_table(fd, ei, addr, sz);
    if (rel == NULL)
        return count;
    for (i = 0; i + entsize <= sz; i += entsize) {
        ElfW(Addr) info;
        ElfW(Sym) sym;
        const char *name;
        off_t off;

        if (is_rela) {
            ElfW(Rela) r;
            memcpy(&r, rel + i, sizeof r);
            info = r.r_info;
        } else {
            ElfW(Rel) r;
            memcpy(&r, rel + i, sizeof r);
            info = r.r_info;
        }
        if (FH_R_TYPE(info) != FH_R_COPY)
            continue;
        off = vaddr_to_off(ei, symtab + (uint64_t)FH_R_SYM(info) * syment,
                           sizeof sym);
        if (off < 0 || read_at(fd, &sym, sizeof sym, off) != 0)
            continue;
        name = str_at(strtab, strsz, sym.st_name);
        if (name == NULL || copy_is_harmless(name)
            || !defined_by_loaded_object(name))
            continue;
        if (count < FH_MAX_COPY_NAMES) {
            size_t used = strlen(out);
            snprintf(out + used, outlen - used, "%s%s", count ? ", " : "",
                     name);
        } else if (count == FH_MAX_COPY_NAMES) {
            size_t used = strlen(out);
            snprintf(out + used, outlen - used, ", ...");
        }
        count++;
    }
    free(rel);
    return count;
}
#endif

/* The copy-relocated variables of a PIE that a loaded library already owns,
 * as "optarg, optind" in out; 0 when there are none. */
static int stale_copies(int fd, const struct elf_info *ei, char *out,
                        size_t outlen)
{
    int count = 0;
#ifdef FH_R_COPY
    size_t strsz;
    char *strtab = read_dynstr(fd, ei, &strsz);

    out[0] = '\0';
    count = stale_copies_in(fd, ei, DT_RELA, DT_RELASZ,
                            dyn_val(ei, DT_RELAENT, sizeof(ElfW(Rela))), 1,
                            strtab, strsz, out, outlen, count);
    count = stale_copies_in(fd, ei, DT_REL, DT_RELSZ,
                            dyn_val(ei, DT_RELENT, sizeof(ElfW(Rel))), 0,
                            strtab, strsz, out, outlen, count);
    free(strtab);
#else
    out[0] = '\0';
    (void)fd;
    (void)ei;
    (void)outlen;
#endif
    return count;
}
#endif /* !FH_BIND_COPIES */

/* ------------------------------------------------------------------------
 * $ORIGIN for a PIE loaded from a memfd.
 *
 * glibc takes $ORIGIN from the name the object was opened by, which for our
 * copy is "/proc/self/fd": a PIE built with -Wl,-rpath,'$ORIGIN/../lib' (meson
 * does that for every program in a build tree) would not find its libraries.
 * So, before loading the copy, each DT_NEEDED library that is not loaded yet
 * is looked for in the RUNPATH (or RPATH) entries that use $ORIGIN, with the
 * real directory put in, and loaded from there; the copy's DT_NEEDED then
 * matches it by soname.  Entries with other tokens ($LIB, $PLATFORM) and
 * libraries not found this way are left to glibc's own search.  Unlike ld.so
 * this tries these directories before LD_LIBRARY_PATH even for RUNPATH.
 */

static int origin_token(const char *s, size_t *toklen)
{
    if (strncmp(s, "$ORIGIN", 7) == 0) {
        *toklen = 7;
        return 1;
    }
    if (strncmp(s, "${ORIGIN}", 9) == 0) {
        *toklen = 9;
        return 1;
    }
    return 0;
}

/* elem (not NUL-terminated, elen bytes) with $ORIGIN replaced by origin, into
 * out; 0 on success, -1 when it has no $ORIGIN, another $ token, or does not
 * fit. */
static int expand_origin(const char *elem, size_t elen, const char *origin,
                         char *out, size_t outlen)
{
    size_t i = 0, o = 0, tok;
    int had_origin = 0;

    while (i < elen) {
        if (elem[i] == '$') {
            if (elen - i < 7 || !origin_token(elem + i, &tok)
                || tok > elen - i)
                return -1;
            if (o + strlen(origin) >= outlen)
                return -1;
            memcpy(out + o, origin, strlen(origin));
            o += strlen(origin);
            i += tok;
            had_origin = 1;
            continue;
        }
        if (o + 1 >= outlen)
            return -1;
        out[o++] = elem[i++];
    }
    out[o] = '\0';
    return had_origin ? 0 : -1;
}

/* Cut a file's real path to its directory, as $ORIGIN means it. */
static void cut_to_dir(char *real)
{
    char *slash = strrchr(real, '/');

    if (slash != NULL)
        slash[slash == real ? 1 : 0] = '\0';
}

static void preload_origin_deps(int fd, const struct elf_info *ei,
                                const char *real)
{
    size_t strsz, i;
    char *strtab, *origin;
    const char *path;

    strtab = read_dynstr(fd, ei, &strsz);
    if (strtab == NULL)
        return;
    path = str_at(strtab, strsz, dyn_val(ei, DT_RUNPATH, UINT64_MAX));
    if (path == NULL)
        path = str_at(strtab, strsz, dyn_val(ei, DT_RPATH, UINT64_MAX));
    if (path == NULL || strstr(path, "ORIGIN") == NULL
        || (origin = strdup(real)) == NULL) {
        free(strtab);
        return;
    }
    cut_to_dir(origin);

    for (i = 0; i < ei->ndyn && ei->dyn[i].d_tag != DT_NULL; i++) {
        const char *needed, *p;
        void *h;

        if (ei->dyn[i].d_tag != DT_NEEDED)
            continue;
        needed = str_at(strtab, strsz, ei->dyn[i].d_un.d_val);
        if (needed == NULL || strchr(needed, '/') != NULL)
            continue;
        h = dlopen(needed, RTLD_LAZY | RTLD_NOLOAD);
        if (h != NULL) {          /* already here: glibc will match it */
            dlclose(h);
            continue;
        }
        for (p = path; *p != '\0';) {
            size_t elen = strcspn(p, ":");
            char dir[PATH_MAX], cand[PATH_MAX];

            if (expand_origin(p, elen, origin, dir, sizeof dir) == 0
                && (size_t)snprintf(cand, sizeof cand, "%s/%s", dir, needed)
                   < sizeof cand
                && access(cand, F_OK) == 0
                && dlopen(cand, FH_ENTRY_DLFLAGS) != NULL)
                break;  /* kept loaded: the PIE's DT_NEEDED matches it */
            p += elen;
            if (*p == ':')
                p++;
        }
    }
    dlerror();
    free(origin);
    free(strtab);
}

/* ------------------------------------------------------------------------
 * The client's LD_LIBRARY_PATH.
 *
 * glibc's loader reads LD_LIBRARY_PATH once, when a process starts: a
 * secondary's is the primary's, and dlopen() would never search the
 * client's.  Run directly, the entry's libraries would be found there
 * (before the system's, and for a RUNPATH before that too).  So before the
 * entry is loaded, each library it needs (DT_NEEDED, by name) that is not
 * loaded already and that a directory of the client's LD_LIBRARY_PATH has
 * is loaded from there by path, its own needs first, in the same way;
 * the entry's DT_NEEDED then matches it by soname (a library without a
 * DT_SONAME is not matched, and the load fails as before).  What none of
 * these directories has is left to the loader's own search.  An entry with an
 * old-style DT_RPATH has its RPATH searched after these, not before as
 * ld.so would.
 */
#define FH_LIBPATH_DEPTH 8

/* LD_LIBRARY_PATH as this process's loader read it, near enough: as it was
 * when libforkhost was loaded (the primary's start, or its import of
 * forkhost), before any secondary took its client's environment.  A
 * client with the same value needs no search of ours: the loader does it. */
static char *g_loader_libpath;

__attribute__((constructor))
static void note_loader_libpath(void)
{
    const char *v = getenv("LD_LIBRARY_PATH");

    g_loader_libpath = v != NULL ? strdup(v) : NULL;
}

static void preload_client_libpath(int fd, const struct elf_info *ei,
                                   const char *libpath, int depth)
{
    size_t strsz, i;
    char *strtab;

    if (depth > FH_LIBPATH_DEPTH || (strtab = read_dynstr(fd, ei, &strsz)) == NULL)
        return;
    for (i = 0; i < ei->ndyn && ei->dyn[i].d_tag != DT_NULL; i++) {
        const char *needed, *p;
        void *h;

        if (ei->dyn[i].d_tag != DT_NEEDED)
            continue;
        needed = str_at(strtab, strsz, ei->dyn[i].d_un.d_val);
        if (needed == NULL || needed[0] == '\0' || strchr(needed, '/') != NULL)
            continue;
        h = dlopen(needed, RTLD_LAZY | RTLD_NOLOAD);
        if (h != NULL) {          /* already here: the loader matches it */
            dlclose(h);
            continue;
        }
        for (p = libpath; ; ) {
            size_t elen = strcspn(p, ":;");
            char cand[PATH_MAX];
            int n, lfd;

            /* An empty element is the current directory, as for ld.so. */
            n = elen == 0 ? snprintf(cand, sizeof cand, "./%s", needed)
                          : snprintf(cand, sizeof cand, "%.*s/%s", (int)elen,
                                     p, needed);
            if (n > 0 && (size_t)n < sizeof cand &&
                (lfd = open(cand, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) >= 0) {
                struct elf_info lib;
                int ok = inspect(lfd, &lib) == 0 && lib.kind != FH_ELF_NOT_ELF
                         && lib.kind != FH_ELF_OTHER;

                if (ok)
                    preload_client_libpath(lfd, &lib, libpath, depth + 1);
                elf_info_free(&lib);
                close(lfd);
                /* Kept loaded: the DT_NEEDED that named it matches it. */
                if (ok && dlopen(cand, FH_ENTRY_DLFLAGS) != NULL)
                    break;
            }
            p += elen;
            if (*p == '\0')
                break;
            p++;
        }
    }
    dlerror();
    free(strtab);
}

/* ------------------------------------------------------------------------
 * Symbols.
 */

/* A name to look up in a .symtab: a global or weak function, or with
 * object, a variable of any binding (a hidden one is local in a shared
 * object, global in a PIE).  value: its st_value, or 0 when absent. */
struct sym_query {
    const char *name;
    int object;
    uint64_t value;
};

static int sym_matches(const ElfW(Sym) *s, const char *str, size_t strsz,
                       const struct sym_query *q)
{
    int bind = FH_ST_BIND(s->st_info);
    int type = FH_ST_TYPE(s->st_info);

    return s->st_name < strsz && s->st_shndx != SHN_UNDEF
        && s->st_shndx != SHN_ABS && s->st_value != 0
        && (q->object ? type == STT_OBJECT
            : (bind == STB_GLOBAL || bind == STB_WEAK)
              && (type == STT_FUNC || type == STT_NOTYPE))
        && strcmp(str + s->st_name, q->name) == 0;
}

static int sections_lookup(int fd, const struct elf_info *ei,
                           struct sym_query *q, size_t n, uint32_t type);

/* Look the n queries up in the file's .symtab (where a PIE's main lives
 * unless it was linked with -rdynamic), reading it once.  Returns whether
 * there was a .symtab at all (none: stripped). */
static int symtab_lookup(int fd, const struct elf_info *ei,
                         struct sym_query *q, size_t n)
{
    return sections_lookup(fd, ei, q, n, SHT_SYMTAB);
}

/* The same in the section of the given type (SHT_SYMTAB, SHT_DYNSYM). */
static int sections_lookup(int fd, const struct elf_info *ei,
                           struct sym_query *q, size_t n, uint32_t type)
{
    const ElfW(Ehdr) *eh = &ei->eh;
    ElfW(Shdr) *sh = NULL, first;
    uint64_t shnum = eh->e_shnum;
    size_t i, k;
    int has_symtab = 0;

    for (k = 0; k < n; k++)
        q[k].value = 0;
    if (eh->e_shoff == 0 || eh->e_shentsize != sizeof(ElfW(Shdr)))
        return 0;
    if (shnum == 0) {             /* >= SHN_LORESERVE sections: real count */
        if (out_of_range(ei->size, eh->e_shoff, sizeof first)
            || read_at(fd, &first, sizeof first, (off_t)eh->e_shoff) != 0)
            return 0;
        shnum = first.sh_size;
    }
    if (shnum == 0 || shnum > (uint64_t)ei->size / sizeof(ElfW(Shdr)))
        return 0;
    sh = read_alloc(fd, ei->size, eh->e_shoff, shnum * sizeof(ElfW(Shdr)));
    if (sh == NULL)
        return 0;
    for (i = 0; i < shnum && !has_symtab; i++) {
        ElfW(Sym) *syms;
        char *str;
        size_t nsym, j, strsz;

        if (sh[i].sh_type != type || sh[i].sh_link >= shnum
            || sh[i].sh_entsize != sizeof(ElfW(Sym)))
            continue;
        has_symtab = 1;
        strsz = (size_t)sh[sh[i].sh_link].sh_size;
        syms = read_alloc(fd, ei->size, sh[i].sh_offset, sh[i].sh_size);
        str = read_alloc(fd, ei->size, sh[sh[i].sh_link].sh_offset, strsz);
        nsym = (size_t)(sh[i].sh_size / sizeof(ElfW(Sym)));
        for (j = 0; syms != NULL && str != NULL && j < nsym; j++)
            for (k = 0; k < n; k++)
                if (q[k].value == 0 && sym_matches(&syms[j], str, strsz, &q[k]))
                    q[k].value = syms[j].st_value;
        free(syms);
        free(str);
    }
    free(sh);
    return has_symtab;
}

/* The object that contains addr, by its link map. */
static struct link_map *object_of(void *addr)
{
    struct link_map *lm = NULL;
    Dl_info di;

    if (dladdr1(addr, &di, (void **)&lm, RTLD_DL_LINKMAP) == 0)
        return NULL;
    return lm;
}

/* ------------------------------------------------------------------------
 * Errors.
 */

/* What one load found besides the line a launch prints, for
 * fh_entry_check(). */
struct load_result {
    int cause;                  /* enum cause */
    int kind;                   /* loaded: FH_ELF_SHARED or FH_ELF_PIE */
    int exported;               /* loaded: dlsym() found the symbol */
    int has_symtab;             /* loaded: 1 .symtab, 0 stripped, -1 unknown */
    int via_start;              /* loaded: main found from _start */
    size_t copies;              /* loaded: copy relocations bound */
    uint64_t static_tls;        /* loaded with DF_STATIC_TLS: its TLS size */
    int details;                /* fill in the fields below on failure */
    char missing[256];          /* CAUSE_MISSING_LIB: the library's name */
    int missing_direct;         /* the entry's own DT_NEEDED names it */
    const char *runpath_tag;    /* "RUNPATH", "RPATH", or NULL: none */
    char runpath[1024];         /* its directories, $ORIGIN put in */
};

/* Where one load reports: the launch's line and exit code, and the rest. */
struct load_ctx {
    char *err;
    size_t errlen;
    int *exit_code;
    struct load_result *res;
};

static fh_main_fn fail(struct load_ctx *c, int code, int cause,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Store one line (control characters from paths or dlerror become spaces),
 * the exit code and the cause; always NULL. */
static fh_main_fn fail(struct load_ctx *c, int code, int cause,
                       const char *fmt, ...)
{
    va_list ap;
    char *p;

    if (c->exit_code != NULL)
        *c->exit_code = code;
    c->res->cause = cause;
    if (c->err != NULL && c->errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
        for (p = c->err; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20)
                *p = ' ';
    }
    return NULL;
}

/* The cause of a dlopen() failure, from the loader's own message, in
 * glibc's words (a secondary's LC_MESSAGES is the C locale; in other words
 * it is a load-error, with the message).  A missing library's name goes to
 * res->missing. */
static int dlopen_cause(const char *why, struct load_result *res)
{
    const char *p = strstr(why, ": cannot open shared object file");

    if (p != NULL) {
        size_t n = (size_t)(p - why);

        if (n >= sizeof res->missing)
            n = sizeof res->missing - 1;
        memcpy(res->missing, why, n);
        res->missing[n] = '\0';
        return CAUSE_MISSING_LIB;
    }
    if (strstr(why, "cannot allocate memory in static TLS block") != NULL)
        return CAUSE_STATIC_TLS;
    if (strstr(why, "undefined symbol: ") != NULL)
        return CAUSE_UNDEFINED;
    return CAUSE_LOAD_ERROR;
}

/* For a missing library: whether the entry itself needs it, and the
 * entry's RUNPATH (or RPATH) with $ORIGIN put in, where the loader looked
 * before its own path. */
static void describe_runpath(int fd, const struct elf_info *ei,
                             const char *path, struct load_result *res)
{
    size_t strsz, i, used = 0;
    char *strtab = read_dynstr(fd, ei, &strsz), *origin;
    const char *rp, *p;

    res->runpath_tag = NULL;
    res->runpath[0] = '\0';
    if (strtab == NULL)
        return;
    for (i = 0; i < ei->ndyn && ei->dyn[i].d_tag != DT_NULL; i++) {
        const char *needed = ei->dyn[i].d_tag == DT_NEEDED
            ? str_at(strtab, strsz, ei->dyn[i].d_un.d_val) : NULL;

        if (needed != NULL && strcmp(needed, res->missing) == 0)
            res->missing_direct = 1;
    }
    res->runpath_tag = "RUNPATH";
    rp = str_at(strtab, strsz, dyn_val(ei, DT_RUNPATH, UINT64_MAX));
    if (rp == NULL) {
        res->runpath_tag = "RPATH";
        rp = str_at(strtab, strsz, dyn_val(ei, DT_RPATH, UINT64_MAX));
    }
    if (rp == NULL) {
        res->runpath_tag = NULL;
        free(strtab);
        return;
    }
    origin = realpath(path, NULL);
    if (origin != NULL)
        cut_to_dir(origin);
    for (p = rp; *p != '\0' && used + 1 < sizeof res->runpath;) {
        size_t elen = strcspn(p, ":");
        char dir[PATH_MAX];
        int n;

        if (origin != NULL
            && expand_origin(p, elen, origin, dir, sizeof dir) == 0)
            n = snprintf(res->runpath + used, sizeof res->runpath - used,
                         "%s%s", used ? ":" : "", dir);
        else
            n = snprintf(res->runpath + used, sizeof res->runpath - used,
                         "%s%.*s", used ? ":" : "", (int)elen, p);
        used += (size_t)n < sizeof res->runpath - used
            ? (size_t)n : sizeof res->runpath - used - 1;
        p += elen;
        if (*p == ':')
            p++;
    }
    free(origin);
    free(strtab);
}

/* dlerror() without the "<name we passed>: " prefix it usually starts with:
 * our message names the file already, and for a memfd copy that name would
 * be a meaningless /proc/self/fd/N. */
static const char *dl_reason(const char *dlpath)
{
    const char *e = dlerror();
    size_t n = strlen(dlpath);

    if (e == NULL)
        return "unknown dlopen error";
    if (strncmp(e, dlpath, n) == 0 && e[n] == ':' && e[n + 1] == ' ')
        return e + n + 2;
    return e;
}

/* ------------------------------------------------------------------------
 * Stock executables: main from _start, and copy relocations bound.
 *
 * A distribution's programs are PIEs built with -fPIE (copy relocations of
 * optarg, stdout, environ...) and stripped (main is in no symbol table).  A
 * stripped PIE still says where main is: glibc's _start passes its address
 * to __libc_start_main.  And a PIE's copy relocations are made to work the
 * way the dynamic linker makes them work for a main program: every loaded
 * library's reference to the variable is pointed at the executable's copy.
 */

#if defined(FH_START_DECODE) || defined(FH_BIND_COPIES)
/* Read the relocation table at DT_<tab> (RELA entries, size at DT_<sz>) of
 * the file; NULL when absent.  *n: its entry count. */
static ElfW(Rela) *read_rela(int fd, const struct elf_info *ei,
                             ElfW(Sxword) tab, ElfW(Sxword) sz, size_t *n)
{
    uint64_t addr = dyn_val(ei, tab, 0), len = dyn_val(ei, sz, 0);
    ElfW(Rela) *r;

    *n = 0;
    if (addr == 0 || len < sizeof *r)
        return NULL;
    r = read_dyn_table(fd, ei, addr, len);
    if (r != NULL)
        *n = (size_t)(len / sizeof *r);
    return r;
}

/* The name of the file's dynamic symbol number idx, copied into out (empty
 * when unknown); its st_size into *size when size is not NULL. */
static void dynsym_name(int fd, const struct elf_info *ei, const char *strtab,
                        size_t strsz, uint64_t idx, char *out, size_t outlen,
                        uint64_t *size)
{
    uint64_t symtab = dyn_val(ei, DT_SYMTAB, 0);
    uint64_t syment = dyn_val(ei, DT_SYMENT, sizeof(ElfW(Sym)));
    const char *name;
    ElfW(Sym) sym;
    off_t off;

    out[0] = '\0';
    if (size != NULL)
        *size = 0;
    if (symtab == 0 || syment < sizeof sym || idx > UINT64_MAX / syment)
        return;
    off = vaddr_to_off(ei, symtab + idx * syment, sizeof sym);
    if (off < 0 || read_at(fd, &sym, sizeof sym, off) != 0)
        return;
    name = str_at(strtab, strsz, sym.st_name);
    if (name != NULL)
        snprintf(out, outlen, "%s", name);
    if (size != NULL)
        *size = sym.st_size;
}
#endif

#ifdef FH_START_DECODE
#define FH_START_DECODES 1
#else
#define FH_START_DECODES 0
#endif

#ifdef FH_START_DECODE
/* Bytes of _start decoded at most: glibc's is 34 (2.34+) to 44 bytes. */
#define FH_START_BYTES 64

/* Whether the file's relocation for the GOT slot at vaddr binds it to
 * __libc_start_main. */
static int slot_is_libc_start_main(int fd, const struct elf_info *ei,
                                   uint64_t slot)
{
    static const ElfW(Sxword) tabs[2][2] = {
        { DT_RELA, DT_RELASZ }, { DT_JMPREL, DT_PLTRELSZ },
    };
    size_t strsz, n, i, t;
    char *strtab = read_dynstr(fd, ei, &strsz), name[64];
    int found = 0;

    for (t = 0; t < 2 && !found; t++) {
        ElfW(Rela) *r;

        if (t == 1 && dyn_val(ei, DT_PLTREL, DT_RELA) != DT_RELA)
            continue;
        r = read_rela(fd, ei, tabs[t][0], tabs[t][1], &n);
        for (i = 0; r != NULL && i < n && !found; i++) {
            unsigned type = (unsigned)FH_R_TYPE(r[i].r_info);

            if (r[i].r_offset != slot
                || (type != FH_R_GLOB_DAT && type != FH_R_JUMP_SLOT))
                continue;
            dynsym_name(fd, ei, strtab, strsz, FH_R_SYM(r[i].r_info), name,
                        sizeof name, NULL);
            found = strcmp(name, "__libc_start_main") == 0;
        }
        free(r);
    }
    free(strtab);
    return found;
}

/* Whether [vaddr, vaddr+1) is in an executable PT_LOAD. */
static int in_code(const struct elf_info *ei, uint64_t vaddr)
{
    unsigned i;

    for (i = 0; i < ei->phnum; i++)
        if (ei->ph[i].p_type == PT_LOAD && (ei->ph[i].p_flags & PF_X)
            && vaddr >= ei->ph[i].p_vaddr
            && vaddr - ei->ph[i].p_vaddr < ei->ph[i].p_filesz)
            return 1;
    return 0;
}

/* The GOT slot a PLT stub at vaddr jumps through ("endbr64; bnd jmp
 * *slot(%rip)" or "jmp *slot(%rip)"), or 0. */
static uint64_t plt_slot(int fd, const struct elf_info *ei, uint64_t vaddr)
{
    static const unsigned char endbr64[4] = { 0xf3, 0x0f, 0x1e, 0xfa };
    unsigned char b[16];
    size_t i = 0;
    int32_t disp;
    off_t off = vaddr_to_off(ei, vaddr, sizeof b);

    if (off < 0 || read_at(fd, b, sizeof b, off) != 0)
        return 0;
    if (memcmp(b, endbr64, sizeof endbr64) == 0)
        i += sizeof endbr64;
    if (b[i] == 0xf2)           /* bnd */
        i++;
    if (b[i] != 0xff || b[i + 1] != 0x25)
        return 0;
    memcpy(&disp, b + i + 2, sizeof disp);
    return vaddr + i + 6 + (uint64_t)(int64_t)disp;
}

/* What glibc's x86_64 _start is made of (sysdeps/x86_64/start.S, every
 * version since 2.26, PIE or not): each form with its immediate's length. */
enum start_op { OP_SKIP, OP_LEA_RDI, OP_MOV_RDI_GOT, OP_CALL_GOT, OP_CALL };
static const struct start_insn {
    unsigned char len;
    unsigned char bytes[4];
    unsigned char imm;          /* bytes of displacement after them */
    unsigned char op;           /* enum start_op */
} start_insns[] = {
    { 4, { 0xf3, 0x0f, 0x1e, 0xfa }, 0, OP_SKIP },  /* endbr64 */
    { 2, { 0x31, 0xed }, 0, OP_SKIP },              /* xor %ebp,%ebp */
    { 3, { 0x49, 0x89, 0xd1 }, 0, OP_SKIP },        /* mov %rdx,%r9 */
    { 1, { 0x5e }, 0, OP_SKIP },                    /* pop %rsi */
    { 3, { 0x48, 0x89, 0xe2 }, 0, OP_SKIP },        /* mov %rsp,%rdx */
    { 4, { 0x48, 0x83, 0xe4, 0xf0 }, 0, OP_SKIP },  /* and $-16,%rsp */
    { 1, { 0x50 }, 0, OP_SKIP },                    /* push %rax */
    { 1, { 0x54 }, 0, OP_SKIP },                    /* push %rsp */
    { 3, { 0x45, 0x31, 0xc0 }, 0, OP_SKIP },        /* xor %r8d,%r8d */
    { 2, { 0x31, 0xc9 }, 0, OP_SKIP },              /* xor %ecx,%ecx */
    { 3, { 0x4c, 0x8d, 0x05 }, 4, OP_SKIP },        /* lea fini(%rip),%r8 */
    { 3, { 0x48, 0x8d, 0x0d }, 4, OP_SKIP },        /* lea init(%rip),%rcx */
    { 3, { 0x4c, 0x8b, 0x05 }, 4, OP_SKIP },        /* mov fini@GOT,%r8 */
    { 3, { 0x48, 0x8b, 0x0d }, 4, OP_SKIP },        /* mov init@GOT,%rcx */
    { 3, { 0x48, 0x8d, 0x3d }, 4, OP_LEA_RDI },     /* lea main(%rip),%rdi */
    { 3, { 0x48, 0x8b, 0x3d }, 4, OP_MOV_RDI_GOT }, /* mov main@GOT,%rdi */
    { 2, { 0xff, 0x15 }, 4, OP_CALL_GOT },          /* call *lsm@GOT */
    { 1, { 0xe8 }, 4, OP_CALL },                    /* call lsm@PLT */
};

/*
 * main's address in a PIE that names it nowhere, from its _start: the
 * address _start puts in %rdi before it calls __libc_start_main.  0 with
 * *vaddr (main's address, or with *indirect the GOT slot holding it, read
 * once loaded), or -1 with why ("what _start does that this does not
 * read").
 */
static int start_main(int fd, const struct elf_info *ei, uint64_t *vaddr,
                      int *indirect, char *why, size_t whylen)
{
    unsigned char code[FH_START_BYTES];
    uint64_t pc = ei->eh.e_entry, main_at = 0, slot;
    size_t at = 0, k, len = 0;
    int have_rdi = 0, rdi_indirect = 0;
    off_t off = -1;

    /* At most FH_START_BYTES, within the code segment _start is in. */
    for (k = 0; k < ei->phnum && off < 0; k++) {
        const ElfW(Phdr) *ph = &ei->ph[k];

        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && pc != 0
            && pc >= ph->p_vaddr && pc - ph->p_vaddr < ph->p_filesz) {
            len = ph->p_filesz - (pc - ph->p_vaddr);
            if (len > sizeof code)
                len = sizeof code;
            off = vaddr_to_off(ei, pc, len);
        }
    }
    if (off < 0 || read_at(fd, code, len, off) != 0) {
        snprintf(why, whylen, "its entry point is not in its code");
        return -1;
    }
    while (at < len) {
        const struct start_insn *in = NULL;
        int32_t disp = 0;
        uint64_t next;

        for (k = 0; k < sizeof start_insns / sizeof start_insns[0]; k++)
            if (start_insns[k].len + start_insns[k].imm <= len - at
                && memcmp(code + at, start_insns[k].bytes,
                          start_insns[k].len) == 0) {
                in = &start_insns[k];
                break;
            }
        if (in == NULL) {
            snprintf(why, whylen, "_start is not glibc's: byte %#x at "
                     "_start+%zu is none of the instructions it is made of",
                     code[at], at);
            return -1;
        }
        if (in->imm != 0)
            memcpy(&disp, code + at + in->len, sizeof disp);
        at += in->len + in->imm;
        next = pc + at;
        switch (in->op) {
        case OP_LEA_RDI:
        case OP_MOV_RDI_GOT:
            main_at = next + (uint64_t)(int64_t)disp;
            rdi_indirect = in->op == OP_MOV_RDI_GOT;
            have_rdi = 1;
            break;
        case OP_CALL_GOT:
        case OP_CALL:
            slot = in->op == OP_CALL_GOT ? next + (uint64_t)(int64_t)disp
                : plt_slot(fd, ei, next + (uint64_t)(int64_t)disp);
            if (slot == 0 || !slot_is_libc_start_main(fd, ei, slot)) {
                snprintf(why, whylen, "the call at _start+%zu is not to "
                         "__libc_start_main", at - in->len - in->imm);
                return -1;
            }
            if (!have_rdi) {
                snprintf(why, whylen, "_start calls __libc_start_main "
                         "without loading main's address the way glibc's "
                         "does");
                return -1;
            }
            if (!rdi_indirect && !in_code(ei, main_at)) {
                snprintf(why, whylen, "the address _start passes as main "
                         "(%#llx) is not in its code",
                         (unsigned long long)main_at);
                return -1;
            }
            *vaddr = main_at;
            *indirect = rdi_indirect;
            return 0;
        }
    }
    snprintf(why, whylen, "_start does not call __libc_start_main within "
             "its first %d bytes", FH_START_BYTES);
    return -1;
}
#endif

/* main of a stripped PIE loaded at lm (or, with lm NULL, whether it can be
 * found): its address, or NULL with why. */
static void *main_from_start(int fd, const struct elf_info *ei,
                             const struct link_map *lm, char *why,
                             size_t whylen)
{
#ifdef FH_START_DECODE
    uint64_t vaddr;
    int indirect;

    if (start_main(fd, ei, &vaddr, &indirect, why, whylen) < 0)
        return NULL;
    if (lm == NULL)
        return (void *)1;
    if (indirect)               /* the GOT slot, relocated by now */
        return *(void **)(lm->l_addr + vaddr);
    return (void *)(lm->l_addr + vaddr);
#else
    (void)fd;
    (void)ei;
    (void)lm;
    snprintf(why, whylen, "finding main through _start is implemented for "
             "x86_64 only");
    return NULL;
#endif
}

#ifdef FH_BIND_COPIES
/* One copy-relocated variable of the entry: where its copy is, how big,
 * and the library definition the loaded libraries use (0: none). */
struct copy_var {
    uintptr_t copy, def;
    size_t size;
};

/* Variables already bound to a PIE's copy in this process (a second PIE
 * loaded after a first): by their library definition, the copy the
 * libraries use now. */
#define FH_MAX_REBOUND 64
static struct {
    uintptr_t def, now;
} g_rebound[FH_MAX_REBOUND];
static size_t g_nrebound;

/* Where the libraries' references to the variable defined at def point now. */
static uintptr_t bound_now(uintptr_t def)
{
    size_t i;

    for (i = 0; i < g_nrebound; i++)
        if (g_rebound[i].def == def)
            return g_rebound[i].now;
    return def;
}

/* Record that they point at copy from now on. */
static void rebound(uintptr_t def, uintptr_t copy)
{
    size_t i;

    for (i = 0; i < g_nrebound && g_rebound[i].def != def; i++)
        ;
    if (i == g_nrebound) {
        if (g_nrebound == FH_MAX_REBOUND)
            return;
        g_nrebound++;
    }
    g_rebound[i].def = def;
    g_rebound[i].now = copy;
}

struct bind_ctx {
    const struct link_map *entry;
    struct copy_var *v;
    size_t n;
    int err;                    /* errno of a failed mprotect, or 0 */
};

/* A d_ptr of an object mapped at base spanning [lo, hi): glibc relocates
 * some in place (DT_RELA, DT_SYMTAB...), not all, and not the vDSO's. */
static uintptr_t dyn_addr(uintptr_t p, uintptr_t base, uintptr_t lo,
                          uintptr_t hi)
{
    return p >= lo && p < hi ? p : p + base;
}

/* Whether addr is in one of the object's writable segments (RELRO
 * included): never write into its code (a text relocation). */
static int in_writable(const struct dl_phdr_info *info, uintptr_t addr)
{
    size_t i;

    for (i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;

        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && addr >= start
            && addr - start + sizeof(uintptr_t) <= ph->p_memsz)
            return 1;
    }
    return 0;
}

/* Point one object's references to the copied variables (GLOB_DAT and
 * absolute relocations, whatever symbol name they use: environ and
 * __environ are one variable) at the entry's copies. */
static int bind_object(struct dl_phdr_info *info, size_t size, void *data)
{
    struct bind_ctx *b = data;
    const ElfW(Dyn) *dyn = NULL, *d;
    uintptr_t base = info->dlpi_addr, lo = UINTPTR_MAX, hi = 0;
    uintptr_t relro = 0, relro_end = 0, rela = 0, jmprel = 0;
    size_t relasz = 0, jmprelsz = 0, t, i, k;
    long page = sysconf(_SC_PAGESIZE);
    int pltrela = 1;

    (void)size;
    if (base == b->entry->l_addr)
        return 0;               /* the entry itself: bound to its copies */
    for (i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

        if (ph->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(base + ph->p_vaddr);
        else if (ph->p_type == PT_GNU_RELRO) {
            /* The pages the loader made read-only (_dl_protect_relro):
             * the last, partly RELRO, stays writable. */
            relro = (base + ph->p_vaddr) & ~(uintptr_t)(page - 1);
            relro_end = (base + ph->p_vaddr + ph->p_memsz)
                & ~(uintptr_t)(page - 1);
        } else if (ph->p_type == PT_LOAD) {
            if (base + ph->p_vaddr < lo)
                lo = base + ph->p_vaddr;
            if (base + ph->p_vaddr + ph->p_memsz > hi)
                hi = base + ph->p_vaddr + ph->p_memsz;
        }
    }
    for (d = dyn; d != NULL && d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_RELA: rela = dyn_addr(d->d_un.d_ptr, base, lo, hi); break;
        case DT_RELASZ: relasz = d->d_un.d_val; break;
        case DT_JMPREL: jmprel = dyn_addr(d->d_un.d_ptr, base, lo, hi); break;
        case DT_PLTRELSZ: jmprelsz = d->d_un.d_val; break;
        case DT_PLTREL: pltrela = d->d_un.d_val == DT_RELA; break;
        }
    }
    for (t = 0; t < 2; t++) {
        const ElfW(Rela) *r = (const ElfW(Rela) *)(t == 0 ? rela : jmprel);
        size_t n = (t == 0 ? relasz : jmprelsz) / sizeof *r;

        if (r == NULL || (t == 1 && !pltrela))
            continue;
        for (i = 0; i < n; i++) {
            unsigned type = (unsigned)FH_R_TYPE(r[i].r_info);
            uintptr_t *slot = (uintptr_t *)(base + r[i].r_offset), v;

            if ((type != FH_R_GLOB_DAT && type != FH_R_ABS)
                || FH_R_SYM(r[i].r_info) == 0
                || (uintptr_t)slot % sizeof *slot != 0
                || !in_writable(info, (uintptr_t)slot))
                continue;
            v = *slot;
            for (k = 0; k < b->n; k++) {
                const struct copy_var *c = &b->v[k];
                int in_relro = (uintptr_t)slot >= relro
                    && (uintptr_t)slot < relro_end;
                void *pg = (void *)((uintptr_t)slot & ~(uintptr_t)(page - 1));

                if (c->def == 0 || v < c->def
                    || v - c->def >= (c->size ? c->size : 1))
                    continue;
                if (in_relro && mprotect(pg, (size_t)page,
                                         PROT_READ | PROT_WRITE) != 0) {
                    b->err = errno;
                    return 1;
                }
                *slot = c->copy + (v - c->def);
                if (in_relro)
                    mprotect(pg, (size_t)page, PROT_READ);
                break;
            }
        }
    }
    return 0;
}

/*
 * Make the entry's copy-relocated variables the ones every loaded library
 * uses, as the dynamic linker does for a main program: each copy takes the
 * library variable's current value, then the libraries' references are
 * pointed at it.  Run in the secondary, which becomes the entry's process.
 * 0, or -1 after fail().
 */
static int bind_copies(int fd, const struct elf_info *ei,
                       const struct link_map *lm, const char *path,
                       struct load_ctx *c)
{
    struct bind_ctx b = { lm, NULL, 0, 0 };
    ElfW(Rela) *r;
    size_t n, i, strsz;
    char *strtab;

    if (dyn_val(ei, DT_RELA, 0) == 0)
        return 0;
    r = read_rela(fd, ei, DT_RELA, DT_RELASZ, &n);
    strtab = read_dynstr(fd, ei, &strsz);
    b.v = calloc(n ? n : 1, sizeof *b.v);
    if (r == NULL || strtab == NULL || b.v == NULL) {
        free(r);
        free(strtab);
        free(b.v);
        fail(c, 126, CAUSE_COPY_RELOC, "cannot read the relocations of %s",
             path);
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct copy_var *v = &b.v[b.n];
        uint64_t size;
        const ElfW(Sym) *def = NULL;
        void *addr;
        Dl_info di;
        char name[1024];

        if (FH_R_TYPE(r[i].r_info) != FH_R_COPY)
            continue;
        dynsym_name(fd, ei, strtab, strsz, FH_R_SYM(r[i].r_info), name,
                    sizeof name, &size);
        if (strlen(name) == sizeof name - 1) {
            free(r);
            free(strtab);
            free(b.v);
            fail(c, 126, CAUSE_COPY_RELOC, "%s has a copy relocation of a "
                 "variable whose name is longer than %zu bytes", path,
                 sizeof name - 2);
            return -1;
        }
        v->copy = lm->l_addr + r[i].r_offset;
        v->size = (size_t)size;
        /* The definition libraries bind to: the global scope's first,
         * unless that is the copy itself (a library that came in with the
         * entry defines it: already bound to the copy, as in an exec).  A
         * name dlsym() does not find (only a non-default version left, such
         * as sys_errlist@GLIBC_2.2.5) keeps the value ld.so copied. */
        addr = name[0] != '\0' ? dlsym(RTLD_DEFAULT, name) : NULL;
        if (addr == NULL || (uintptr_t)addr == v->copy
            || object_of(addr) == lm)
            continue;
        if (dladdr1(addr, &di, (void **)&def, RTLD_DL_SYMENT) != 0
            && def != NULL && def->st_size < v->size)
            v->size = def->st_size;
        v->def = bound_now((uintptr_t)addr);
        memcpy((void *)v->copy, (void *)v->def, v->size);
        rebound((uintptr_t)addr, v->copy);
        b.n++;
    }
    dlerror();
    free(r);
    free(strtab);
    if (b.n > 0)
        dl_iterate_phdr(bind_object, &b);
    if (c->res != NULL)
        c->res->copies = b.n;
    free(b.v);
    if (b.err != 0) {
        fail(c, 126, CAUSE_COPY_RELOC, "cannot point the loaded libraries "
             "at the copies of variables %s has (copy relocations): "
             "mprotect: %s", path, strerror(b.err));
        return -1;
    }
    return 0;
}
#else
static int bind_copies(int fd, const struct elf_info *ei,
                       const struct link_map *lm, const char *path,
                       struct load_ctx *c)
{
    (void)fd;
    (void)ei;
    (void)lm;
    (void)path;
    (void)c;
    return 0;
}
#endif

/*
 * The __dso_handle of a loaded PIE whose symbol table does not name it
 * (stripped): crtbeginS's `void *__dso_handle = &__dso_handle`, the first
 * word of its initialised data that holds its own address.  Were another
 * such word found first, __cxa_finalize() with it would run nothing (no
 * handler is filed under it), and the handlers would run with the
 * destructors, as without a handle.  NULL when there is none.
 */
static void *find_dso_handle(const struct elf_info *ei,
                             const struct link_map *lm)
{
    unsigned i;

    for (i = 0; i < ei->phnum; i++) {
        const ElfW(Phdr) *ph = &ei->ph[i];
        uintptr_t p, end;

        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_W))
            continue;
        p = (lm->l_addr + ph->p_vaddr + sizeof p - 1) & ~(sizeof p - 1);
        end = lm->l_addr + ph->p_vaddr + ph->p_filesz;
        for (; p + sizeof p <= end; p += sizeof p)
            if (*(const uintptr_t *)p == p)
                return (void *)p;
    }
    return NULL;
}

/* ------------------------------------------------------------------------
 * Loading.
 */

/* Copy fd into a sealed memfd whose DT_FLAGS_1 lacks DF_1_PIE.  The memfd,
 * or -1 with errno. */
static int pie_copy(int fd, const struct elf_info *ei)
{
    ElfW(Dyn) d;
    off_t off = 0;
    int mfd;

    mfd = memfd_create("forkhost-entry", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0)
        return -1;
    while (off < ei->size) {
        ssize_t n = sendfile(mfd, fd, &off, (size_t)(ei->size - off));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
            char buf[16384];      /* no sendfile into this fs: copy by hand */
            ssize_t r = pread(fd, buf, sizeof buf, off);
            if (r > 0 && write(mfd, buf, (size_t)r) == r) {
                off += r;
                continue;
            }
            n = r == 0 ? 0 : -1;
        }
        if (n <= 0) {
            if (n == 0)
                errno = EIO;      /* the file shrank under us */
            goto fail;
        }
    }
    d = ei->dyn[ei->flags_1_idx];
    d.d_un.d_val &= ~(ElfW(Xword))DF_1_PIE;
    if (pwrite(mfd, &d, sizeof d,
               ei->dyn_off + ei->flags_1_idx * (off_t)sizeof d)
        != (ssize_t)sizeof d)
        goto fail;
    /* Best effort: nobody can change the copy while the loader maps it. */
    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
          | F_SEAL_SEAL);
    return mfd;
fail:
    {
        int saved = errno;
        close(mfd);
        errno = saved;
    }
    return -1;
}

/*
 * What is left of the loaded copy's name.  glibc matches dlopen() names
 * against every name an object was loaded by, so a second PIE copied to the
 * same fd number later in this process would be taken for the first one: each
 * load gets a distinct spelling of its /proc path.
 */
static void memfd_path(char *buf, size_t len, int mfd)
{
    static unsigned loads;      /* PIE copies loaded by this process */
    size_t used = (size_t)snprintf(buf, len, "/proc/self/fd/");
    unsigned i;

    for (i = 0; i < loads && used + 2 < len - 16; i++) {
        memcpy(buf + used, "./", 2);
        used += 2;
    }
    snprintf(buf + used, len - used, "%d", mfd);
    loads++;
}

/* The entry fh_entry_load() loaded last, for fh_entry_finish(). */
static struct link_map *g_entry;
static void *g_dso_handle;

/* Whether fd is this process's own executable. */
static int is_main_program(int fd)
{
    struct stat a, b;

    return fstat(fd, &a) == 0 && stat("/proc/self/exe", &b) == 0 &&
           a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* What can be told of path (open as fd, inspected into ei) before it is
 * loaded: the kinds of file a launch refuses, and the executables it cannot
 * load (static PIE, TLS, stale copy relocations).  preload: load the
 * libraries a PIE finds through $ORIGIN first (load() does, as it goes on
 * to dlopen the copy).  0, or -1 after fail(). */
static int check_file(const char *path, int fd, struct elf_info *ei,
                      struct load_ctx *c, int *is_exec, int preload)
{
    char copies[256];

    switch (ei->kind) {
    case FH_ELF_NOT_ELF:
        fail(c, 126, CAUSE_NOT_ELF, "%s is not %s (expected a shared "
             "object or a PIE executable)", path,
             ei->special ? "a regular file" : "an ELF file");
        return -1;
    case FH_ELF_OTHER:
        fail(c, 126, ei->cause, "%s is %s", path, ei->why);
        return -1;
    }

    /* An executable, as opposed to a library that also has PT_INTERP
     * (libc.so.6 does): DF_1_PIE, or, from linkers older than binutils 2.26 that did not
     * set it, a program interpreter and no soname. */
    *is_exec = (ei->flags_1 & DF_1_PIE) || (ei->has_interp && !ei->has_soname);
    if (*is_exec && !ei->has_interp) {
        fail(c, 126, CAUSE_STATIC_PIE, "%s is a static PIE: it carries its "
             "own C library, which cannot run inside this process; build it "
             "dynamically with -fPIC -pie", path);
        return -1;
    }
    if (*is_exec && ei->has_tls) {
        fail(c, 126, CAUSE_PIE_TLS, "%s is a PIE with thread-local "
             "variables (PT_TLS): an executable reaches them at fixed offsets "
             "from the thread pointer that belong to the main program here; "
             "build the entry as a shared object (-fPIC -shared) instead",
             path);
        return -1;
    }

    if ((ei->flags_1 & DF_1_PIE) && preload) {
        char *real = realpath(path, NULL);

        if (real != NULL) {
            preload_origin_deps(fd, ei, real);
            free(real);
        }
    }
#ifndef FH_BIND_COPIES
    /* Elsewhere than x86_64 the copies are not bound (bind_copies()). */
    if (*is_exec && stale_copies(fd, ei, copies, sizeof copies) > 0) {
        fail(c, 126, CAUSE_COPY_RELOC, "%s is a PIE with copy relocations "
             "of variables that libraries already loaded here own (%s): on "
             "this machine forkhost does not point those libraries at the "
             "program's copies; rebuild it with -fPIC -pie",
             path, copies);
        return -1;
    }
#else
    (void)copies;
#endif

    return 0;
}

/* fh_entry_load(), reporting to c: every way a launch loads an entry and
 * every way it fails, which fh_entry_check() reports as they are. */
static fh_main_fn load(const char *path, const char *symbol,
                       struct load_ctx *c)
{
    struct elf_info ei;
    struct link_map *lm = NULL, *owner;
    fh_main_fn fn = NULL;
    char dlpath[PATH_MAX + 16];
    int fd, mfd = -1, is_exec, has_symtab = -1, looked_up = 0, exported = 0;
    void *h, *addr;
    struct sym_query q[2] = { { NULL, 0, 0 }, { "__dso_handle", 1, 0 } };

    if (c->err != NULL && c->errlen > 0)
        c->err[0] = '\0';
    if (symbol == NULL || symbol[0] == '\0')
        symbol = "main";
    q[0].name = symbol;
    if (path == NULL || path[0] == '\0')
        return fail(c, 127, CAUSE_NOT_FOUND, "no such file: (empty path)");

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return fail(c, 127, CAUSE_NOT_FOUND, "no such file: %s", path);
        return fail(c, 126, CAUSE_UNREADABLE, "cannot open %s: %s", path,
                    strerror(errno));
    }
    if (inspect(fd, &ei) < 0) {
        int e = errno;
        elf_info_free(&ei);
        close(fd);
        if (e == EISDIR)
            return fail(c, 126, CAUSE_UNREADABLE, "%s is a directory, not "
                        "a shared object or PIE executable", path);
        return fail(c, 126, CAUSE_UNREADABLE, "cannot read %s: %s", path,
                    strerror(e));
    }
    /* The program this template was forked from, when it is its own
     * primary (fh_init): its main, already mapped, at the address every
     * process of the prefix has it. */
    if (fh_init_main_is_primary && is_main_program(fd)) {
        void *self = dlopen(NULL, RTLD_NOW);

        if (self != NULL && dlinfo(self, RTLD_DI_LINKMAP, &lm) == 0 && lm != NULL) {
            addr = dlsym(self, symbol);
            if (addr != NULL && object_of(addr) == lm) {
                fn = (fh_main_fn)addr;
                exported = 1;
                goto out;
            }
            has_symtab = symtab_lookup(fd, &ei, q, 2);
            looked_up = 1;
            if (q[0].value != 0) {
                fn = (fh_main_fn)(lm->l_addr + q[0].value);
                goto out;
            }
            if (!has_symtab && strcmp(symbol, "main") == 0) {
                char why[160];

                addr = main_from_start(fd, &ei, lm, why, sizeof why);
                if (addr != NULL) {
                    fn = (fh_main_fn)addr;
                    c->res->via_start = 1;
                    goto out;
                }
            }
        }
        lm = NULL;
    }
    if (check_file(path, fd, &ei, c, &is_exec, 1) < 0)
        goto out;

    dlerror();
    if (ei.flags_1 & DF_1_PIE) {
        mfd = pie_copy(fd, &ei);
        if (mfd < 0) {
            fail(c, 126, CAUSE_LOAD_ERROR, "cannot copy %s into memory to "
                 "load it: %s", path, strerror(errno));
            goto out;
        }
        memfd_path(dlpath, sizeof dlpath, mfd);
    } else {
        /* A bare name would send dlopen() through the library search path;
         * "lib.so" means the file in the client's cwd, as for open(). */
        snprintf(dlpath, sizeof dlpath, "%s%s",
                 strchr(path, '/') != NULL ? "" : "./", path);
    }
    {
        const char *libpath = getenv("LD_LIBRARY_PATH");

        if (libpath != NULL && libpath[0] != '\0' &&
            (g_loader_libpath == NULL || strcmp(libpath, g_loader_libpath) != 0))
            preload_client_libpath(fd, &ei, libpath, 0);
    }
    h = dlopen(dlpath, FH_ENTRY_DLFLAGS);
    if (h == NULL) {
        const char *why = dl_reason(dlpath);
        int cause = dlopen_cause(why, c->res);

        if (cause == CAUSE_MISSING_LIB && c->res->details)
            describe_runpath(fd, &ei, path, c->res);
        fail(c, 126, cause, "cannot load %s: %s", path, why);
        goto out;
    }
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) != 0)
        lm = NULL;
    if (mfd >= 0 && lm != NULL) {
        /* Name the copy after its file, so dladdr(), backtraces and a
         * debugger attaching later find the real program (same bytes but
         * one flag).  glibc frees l_name with free() only on dlclose, and
         * l_name is malloc'd by the same malloc we use; the old name is
         * kept reachable, never freed, in case that ever differs. */
        static char *replaced_name;
        char *real = realpath(path, NULL);

        if (real != NULL) {
            replaced_name = lm->l_name;
            lm->l_name = real;
        }
        (void)replaced_name;
    }
    if (is_exec && lm != NULL && bind_copies(fd, &ei, lm, path, c) < 0)
        goto out;

    /* dlsym() searches the handle's dependencies too: a symbol that only
     * libc defines (say "printf") is not the entry's own. */
    addr = dlsym(h, symbol);
    owner = addr != NULL ? object_of(addr) : NULL;
    if (addr != NULL && (lm == NULL || owner == lm)) {
        fn = (fh_main_fn)addr;
        exported = 1;
        goto out;
    }
    if (ei.kind == FH_ELF_PIE && lm != NULL) {
        /* One read of .symtab for main and for __dso_handle. */
        has_symtab = symtab_lookup(mfd >= 0 ? mfd : fd, &ei, q, 2);
        looked_up = 1;
        if (q[0].value != 0) {
            fn = (fh_main_fn)(lm->l_addr + q[0].value);
            goto out;
        }
        if (!has_symtab && is_exec) {
            char why[160];

            if (strcmp(symbol, "main") == 0
                && (addr = main_from_start(fd, &ei, lm, why,
                                           sizeof why)) != NULL) {
                fn = (fh_main_fn)addr;
                c->res->via_start = 1;
                goto out;
            }
            if (strcmp(symbol, "main") != 0)
                snprintf(why, sizeof why, "only main can be found that way");
            fail(c, 127, CAUSE_STRIPPED, "no symbol '%s' in %s: it is "
                 "not exported, the file has no symbol table (stripped), and "
                 "it cannot be found from _start (%s); rebuild it with "
                 "-rdynamic or -Wl,--export-dynamic-symbol=%s",
                 symbol, path, why, symbol);
            goto out;
        }
    }
    if (addr != NULL && owner != NULL && owner->l_name != NULL
        && owner->l_name[0] != '\0')
        fail(c, 127, CAUSE_NOT_EXPORTED, "no symbol '%s' in %s (only %s "
             "defines it)", symbol, path, owner->l_name);
    else
        fail(c, 127, CAUSE_NOT_EXPORTED, "no symbol '%s' in %s", symbol,
             path);
out:
    if (fn != NULL && lm != NULL) {
        /* For fh_entry_finish(): the handle atexit() files the entry's
         * handlers under (crtstuff's hidden __dso_handle, whose value is its
         * own address), when the symbol table names it. */
        if (!looked_up)
            has_symtab = symtab_lookup(mfd >= 0 ? mfd : fd, &ei, &q[1], 1);
        g_entry = lm;
        g_dso_handle = q[1].value != 0 ? (void *)(lm->l_addr + q[1].value)
                                       : NULL;
        if (g_dso_handle == NULL && ei.kind == FH_ELF_PIE)
            g_dso_handle = find_dso_handle(&ei, lm);
    }
    if (fn != NULL) {
        c->res->cause = CAUSE_OK;
        c->res->kind = ei.kind;
        c->res->exported = exported;
        c->res->has_symtab = has_symtab;
        c->res->static_tls = (ei.flags & DF_STATIC_TLS) && ei.has_tls
            ? ei.tls_size : 0;
    }
    if (mfd >= 0)
        close(mfd);
    elf_info_free(&ei);
    close(fd);
    return fn;
}

FH_API fh_main_fn fh_entry_load(const char *path, const char *symbol,
                                char *err, size_t errlen, int *exit_code)
{
    struct load_result res;
    struct load_ctx c = { err, errlen, exit_code, &res };

    memset(&res, 0, sizeof res);
    res.cause = CAUSE_OK;
    return load(path, symbol, &c);
}

FH_API int fh_entry_precheck(const char *path, char *err, size_t errlen)
{
    struct load_result res = { .cause = CAUSE_OK };
    struct load_ctx c = { err, errlen, NULL, &res };
    struct sym_query q = { "main", 0, 0 };
    struct elf_info ei;
    int fd, is_exec = 0, code = 0;
    char why[160];

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        fail(&c, 126, CAUSE_UNREADABLE, "cannot open %s: %s", path, strerror(errno));
        return 126;
    }
    if (inspect(fd, &ei) < 0) {
        fail(&c, 126, CAUSE_UNREADABLE, "cannot read %s: %s", path, strerror(errno));
        code = 126;
    } else if (check_file(path, fd, &ei, &c, &is_exec, 0) < 0) {
        code = 126;
    } else if (ei.kind == FH_ELF_PIE &&
               (sections_lookup(fd, &ei, &q, 1, SHT_DYNSYM), q.value == 0) &&
               (symtab_lookup(fd, &ei, &q, 1), q.value == 0) &&
               main_from_start(fd, &ei, NULL, why, sizeof why) == NULL) {
        /* Neither exported nor in a symbol table nor found from _start. */
        fail(&c, 126, CAUSE_STRIPPED, "%s does not export main, has no "
             "symbol table (stripped), and main cannot be found from _start "
             "(%s): link it with -rdynamic (or "
             "-Wl,--export-dynamic-symbol=main)", path, why);
        code = 126;
    }
    elf_info_free(&ei);
    close(fd);
    return code;
}

/* glibc: run the exit handlers registered with dso handle d. */
extern void __cxa_finalize(void *d);

FH_API void fh_entry_finish(void)
{
    typedef void (*fini_fn)(void);
    const ElfW(Dyn) *d;
    ElfW(Addr) arr = 0, fini = 0;
    size_t n = 0;

    if (g_entry == NULL)
        return;
    /* What exit() runs for this object, in its order: first the handlers
     * atexit() and C++ static objects registered (last first), then its
     * destructors, as _dl_fini does (DT_FINI_ARRAY last first, then
     * DT_FINI).  Without __dso_handle (a stripped file) the destructors
     * still run, and crtstuff's among them runs the handlers, after the
     * program's own destructors. */
    if (g_dso_handle != NULL)
        __cxa_finalize(g_dso_handle);
    for (d = g_entry->l_ld; d != NULL && d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_FINI_ARRAY)
            arr = d->d_un.d_ptr;
        else if (d->d_tag == DT_FINI_ARRAYSZ)
            n = (size_t)d->d_un.d_val / sizeof(ElfW(Addr));
        else if (d->d_tag == DT_FINI)
            fini = d->d_un.d_ptr;
    }
    /* As in glibc's _dl_call_fini: these d_ptr are not relocated. */
    if (arr != 0)
        while (n-- > 0)
            ((fini_fn *)(g_entry->l_addr + arr))[n]();
    if (fini != 0)
        ((fini_fn)(g_entry->l_addr + fini))();
    g_entry = NULL;
}

/* ------------------------------------------------------------------------
 * fh_entry_check: can an entry be loaded here?
 */

/* The longest line fh_entry_check() prints. */
#define FH_CHECK_LINE 4096

static void append(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Add to the string in buf, cutting what does not fit. */
static void append(char *buf, size_t len, const char *fmt, ...)
{
    size_t used = strlen(buf);
    va_list ap;

    if (used + 1 >= len)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

/* The directories the loader searches for this process's libraries, as it
 * reports them for the main program: the LD_LIBRARY_PATH the process
 * started with (the loader reads it only then), the program's own RPATH or
 * RUNPATH, the system's; ':' between them. */
static void loader_path(char *buf, size_t len)
{
    Dl_serinfo size, *si;
    void *h = dlopen(NULL, RTLD_LAZY);
    unsigned i;

    buf[0] = '\0';
    if (h == NULL)
        return;
    if (dlinfo(h, RTLD_DI_SERINFOSIZE, &size) == 0
        && (si = malloc(size.dls_size)) != NULL) {
        if (dlinfo(h, RTLD_DI_SERINFOSIZE, si) == 0
            && dlinfo(h, RTLD_DI_SERINFO, si) == 0)
            for (i = 0; i < si->dls_cnt; i++)
                append(buf, len, "%s%s", i ? ":" : "",
                       si->dls_serpath[i].dls_name);
        free(si);
    }
    dlclose(h);
    dlerror();
}

/* Whether dir (dlen bytes) is one of the ':'-separated directories in
 * list. */
static int in_path_list(const char *list, const char *dir, size_t dlen)
{
    const char *p = list;

    while (*p != '\0') {
        size_t n = strcspn(p, ":");

        if (n == dlen && strncmp(p, dir, dlen) == 0)
            return 1;
        p += n;
        if (*p == ':')
            p++;
    }
    return 0;
}

/* After "cannot load X: LIB: cannot open shared object file": where the
 * loader looked for LIB, and where this environment has it if the loader
 * does not look there (a secondary's loader keeps the path the primary
 * started with; the client's LD_LIBRARY_PATH is searched only for the
 * entry's libraries and theirs, preload_client_libpath). */
static void describe_search(char *line, size_t len, const char *path,
                            const struct load_result *res)
{
    char loader[2048];
    const char *env = getenv("LD_LIBRARY_PATH"), *p;

    loader_path(loader, sizeof loader);
    append(line, len, "; %s (needed by %s%s) was looked for in ",
           res->missing, res->missing_direct ? "" : "a library of ", path);
    if (res->runpath_tag != NULL)
        append(line, len, "the %s of %s (%s), ", res->runpath_tag, path,
               res->runpath);
    append(line, len, "the loader's search path, fixed when this process "
           "started (its LD_LIBRARY_PATH, its program's RUNPATH, the system "
           "directories: %s) and /etc/ld.so.cache",
           loader[0] != '\0' ? loader : "unknown");
    for (p = env != NULL ? env : ""; *p != '\0';) {
        size_t n = strcspn(p, ":");
        char cand[PATH_MAX];

        if (n > 0 && !in_path_list(loader, p, n)
            && (size_t)snprintf(cand, sizeof cand, "%.*s/%s", (int)n, p,
                                res->missing) < sizeof cand
            && access(cand, F_OK) == 0) {
            append(line, len, "; it is in %.*s, on this environment's "
                   "LD_LIBRARY_PATH, which the loader does not search: it "
                   "reads LD_LIBRARY_PATH only when a process starts, and "
                   "a secondary's is the primary's; forkhost searches the "
                   "client's for the entry's own libraries and theirs, not "
                   "for what a library found elsewhere needs", (int)n, p);
            break;
        }
        p += n;
        if (*p == ':')
            p++;
    }
}

/* What a loaded entry is, and how its symbol was found. */
static void describe_loaded(char *line, size_t len, const char *path,
                            const char *symbol, const struct load_result *r)
{
    int pie = r->kind == FH_ELF_PIE, stripped = pie && r->has_symtab == 0;

    if (symbol == NULL || symbol[0] == '\0')
        symbol = "main";
    if (r->via_start)
        snprintf(line, len, "%s is a stripped PIE executable; '%s' is not "
                 "exported and it has no symbol table: '%s' is found from its "
                 "_start (the address it passes to __libc_start_main)",
                 path, symbol, symbol);
    else if (r->exported)
        snprintf(line, len, "%s is a %s%s; '%s' is exported (in .dynsym)%s",
                 path, stripped ? "stripped " : "",
                 pie ? "PIE executable" : "shared object", symbol,
                 stripped ? ", which is all a stripped PIE needs" : "");
    else
        snprintf(line, len, "%s is a PIE executable; '%s' is not exported, "
                 "but its symbol table (.symtab) has it%s",
                 path, symbol, FH_START_DECODES && strcmp(symbol, "main") == 0
                 ? " (once stripped, main is found from _start)"
                 : ": it loads, but would not once stripped (link with "
                   "-rdynamic to export it)");
    if (r->copies != 0)
        append(line, len, "; the loaded libraries were pointed at its own "
               "copies of %zu variable%s (copy relocations), as for a "
               "program exec'd", r->copies, r->copies == 1 ? "" : "s");
    if (r->static_tls != 0)
        append(line, len, "; it takes %llu bytes of static TLS (initial-exec "
               "thread-local variables), which this process still had",
               (unsigned long long)r->static_tls);
}

FH_API int fh_entry_check(int argc, char **argv, char **envp)
{
    static const char *const python_kinds[] = {
        [FH_ENTRY_FUNCTION] = "function", [FH_ENTRY_SCRIPT] = "script",
        [FH_ENTRY_MODULE] = "module",
    };
    struct fh_entry_target t;
    struct load_result res;
    struct load_ctx c;
    char err[1024], line[FH_CHECK_LINE];
    const char *cause;
    int code = 0;
    unsigned kind;

    (void)envp;
    /* Launched as libforkhost.so:fh_entry_check, this function is the
     * entry, and what exit() would run for libforkhost is the primary's to
     * run, never a secondary's; and the entry checked here never runs, so
     * neither does its exit work. */
    g_entry = NULL;
    g_dso_handle = NULL;
    if (argc != 2 || argv == NULL || argv[1] == NULL) {
        fprintf(stderr, "usage: forkhost-run PATH/libforkhost.so:"
                "fh_entry_check ENTRY\n");
        return 2;
    }
    memset(&res, 0, sizeof res);
    res.details = 1;
    c.err = err;
    c.errlen = sizeof err;
    c.exit_code = &code;
    c.res = &res;
    kind = (unsigned)fh_entry_decide(argv[1], 0, AT_FDCWD, &t);
    if (kind == FH_ENTRY_ERROR) {
        code = t.exit_code;
        cause = cause_names[code == 127 ? CAUSE_NOT_FOUND : CAUSE_NOT_ELF];
        snprintf(line, sizeof line, "%s", t.message);
    } else if (kind != FH_ENTRY_NATIVE) {
        code = 126;
        cause = "python-entry";
        snprintf(line, sizeof line, "%s is a Python %s: this check loads "
                 "native entries only (forkhost doctor checks both)",
                 argv[1], kind < sizeof python_kinds / sizeof python_kinds[0]
                 && python_kinds[kind] != NULL ? python_kinds[kind]
                 : "entry");
    } else if (load(t.name, t.symbol, &c) != NULL) {
        cause = cause_names[CAUSE_OK];
        describe_loaded(line, sizeof line, t.name, t.symbol, &res);
    } else {
        cause = cause_names[res.cause];
        snprintf(line, sizeof line, "%s", err);
        if (res.cause == CAUSE_MISSING_LIB)
            describe_search(line, sizeof line, t.name, &res);
    }
    g_entry = NULL;
    g_dso_handle = NULL;
    printf("entry-check: %s: %s\n", cause, line);
    fflush(stdout);
    return code;
}
