/*
 * request.c - the one parser and the one classifier of what a client sends
 * to template.sock (forkhost/request.h).
 *
 * Both replaced Python code whose texts clients and tests know, so every
 * check runs in the order the Python ran it and every message is the one
 * it printed, Python's repr() included: fh_request_check() is what
 * protocol.parse(), the template's type check and Launch.decode() were,
 * fh_entry_decide() what entries.classify() was.
 */
#include "forkhost/request.h"
#include "forkhost/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the client exits with (errors.py's EXIT_NOT_FOUND, EXIT_CANNOT_RUN). */
#define EXIT_NOT_FOUND  127
#define EXIT_CANNOT_RUN 126

/* ---- the record ------------------------------------------------------- */

static int refuse(struct fh_req_result *r, unsigned error, uint64_t a,
                  uint64_t b)
{
    r->error = error;
    r->a = a;
    r->b = b;
    return -1;
}

/* Launch.decode(): the body of a record whose header checked out. */
static int check_launch(const unsigned char *rec, size_t n, unsigned nfds,
                        struct fh_launch_view *v, struct fh_req_result *r)
{
    struct fh_launch l;
    uint32_t target[FH_PROTO_MAX_EXTRA_FDS];
    const unsigned char *s, *p, *end;
    uint64_t want, found = 0, fds;
    size_t slen, elen, tlen;
    uint32_t i;

    if (n < sizeof l)
        return refuse(r, FH_REQ_LAUNCH_SHORT, 0, 0);
    memcpy(&l, rec, sizeof l);              /* the record may be unaligned */
    if (l.nextra > FH_PROTO_MAX_EXTRA_FDS)
        return refuse(r, FH_REQ_LAUNCH_EXTRA, l.nextra, FH_PROTO_MAX_EXTRA_FDS);
    tlen = (size_t)l.nextra * sizeof target[0];
    if (n < sizeof l + tlen)
        return refuse(r, FH_REQ_LAUNCH_SHORT, 0, 0);
    memcpy(target, rec + sizeof l, tlen);
    slen = n - sizeof l - tlen;
    if (l.strings_len != slen)
        return refuse(r, FH_REQ_LAUNCH_STRINGS_LEN, l.strings_len, slen);
    if ((l.flags & ~FH_LAUNCH_FLAGS) || (l.stdio_mask & ~7u) ||
        (l.umask & ~0777u))
        return refuse(r, FH_REQ_LAUNCH_FLAGS, 0, 0);
    if (l.argc < 1)
        return refuse(r, FH_REQ_LAUNCH_ARGV, 0, 0);
    /* strings.split(b"\0") must give 1 + argc + envc pieces and a last,
     * empty one: every NUL counts, and the strings end with one. */
    want = 1 + (uint64_t)l.argc + l.envc;
    s = rec + sizeof l + tlen;
    end = s + slen;
    for (p = s; p < end && (p = memchr(p, '\0', (size_t)(end - p))) != NULL;
         p++)
        found++;
    if (found != want || (slen > 0 && end[-1] != '\0'))
        return refuse(r, FH_REQ_LAUNCH_STRINGS, want, found);
    if (s[0] == '\0')
        return refuse(r, FH_REQ_LAUNCH_ENTRY, 0, 0);
    /* Each extra fd's number: above the previous one, 3 at least, and a
     * number an fd can have (an int). */
    for (i = 0; i < l.nextra; i++)
        if (target[i] < (i == 0 ? 3u : target[i - 1] + 1u) ||
            target[i] > FH_PROTO_FD_TARGET_MAX)
            return refuse(r, FH_REQ_LAUNCH_FD_TARGET, i, target[i]);
    elen = strlen((const char *)s) + 1;
    fds = 1u + (unsigned)__builtin_popcount(l.stdio_mask) + (uint64_t)l.nextra;
    if (fds != nfds)
        return refuse(r, FH_REQ_LAUNCH_FDS, fds, nfds);
    if (v != NULL) {
        v->launch = l;
        v->entry = (const char *)s;
        v->strings = (const char *)s + elen;
        v->strings_len = slen - elen;
        memcpy(v->fd_target, target, tlen);
    }
    return FH_MSG_LAUNCH;
}

FH_API int fh_request_check(const void *buf, size_t n, int mflags,
                            unsigned nfds, struct fh_launch_view *v,
                            struct fh_req_result *r)
{
    struct fh_msg_hdr hdr;

    r->error = FH_REQ_OK;
    r->a = r->b = 0;
    if (n == 0 && nfds == 0)
        return 0;
    if (mflags & MSG_CTRUNC)
        return refuse(r, FH_REQ_TOO_MANY_FDS, FH_PROTO_MAX_FDS, 0);
    if ((mflags & MSG_TRUNC) || n > FH_PROTO_MAX_MSG)
        return refuse(r, FH_REQ_TOO_LARGE, FH_PROTO_MAX_MSG, 0);
    if (n < sizeof hdr)
        return refuse(r, FH_REQ_SHORT, n, sizeof hdr);
    memcpy(&hdr, buf, sizeof hdr);
    if (hdr.magic != FH_PROTO_MAGIC)
        return refuse(r, FH_REQ_MAGIC, hdr.magic, 0);
    if (hdr.version != FH_PROTO_VERSION)
        return refuse(r, FH_REQ_VERSION, hdr.version, FH_PROTO_VERSION);
    if (hdr.len != n)
        return refuse(r, FH_REQ_LENGTH, hdr.len, n);
    if (hdr.nfds != nfds)
        return refuse(r, FH_REQ_NFDS, hdr.nfds, nfds);
    if (hdr.type == FH_MSG_INFO)
        return FH_MSG_INFO;               /* a body, if any, is not read */
    if (hdr.type != FH_MSG_LAUNCH)
        return refuse(r, FH_REQ_TYPE, hdr.type, 0);
    return check_launch(buf, n, nfds, v, r);
}

/* ---- messages ---------------------------------------------------------- */

/* A bounded string being built: what does not fit is dropped, len counts
 * what was kept. */
struct out {
    char  *buf;
    size_t size;                          /* room, the NUL included */
    size_t len;
};

static void put(struct out *o, const char *s, size_t n)
{
    size_t room = o->size - 1 - o->len;

    if (n > room)
        n = room;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void putf(struct out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void putf(struct out *o, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int k;

    va_start(ap, fmt);
    k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0)
        put(o, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* One UTF-8 sequence at s (n bytes left), as Python's strict decoder
 * accepts it: its length, with *cp the code point; 0 if s does not start
 * one (that byte is then undecodable on its own). */
static size_t utf8_char(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t len, i;
    uint32_t v, lo = 0x80, hi = 0xbf;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0;                    /* no overlong forms */
        else if (c == 0xed)
            hi = 0x9f;                    /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;                    /* nothing past U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (i = 1; i < len; i++) {
        if (i > 1 && (s[i] < 0x80 || s[i] > 0xbf))
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Code points str.isprintable() refuses past ASCII: categories Cc, Cf,
 * Zs, Zl, Zp and Co (unassigned ones, Cn, are taken as printable). */
static const uint32_t unprintable[][2] = {
    {0x80, 0xa0}, {0xad, 0xad}, {0x600, 0x605}, {0x61c, 0x61c},
    {0x6dd, 0x6dd}, {0x70f, 0x70f}, {0x890, 0x891}, {0x8e2, 0x8e2},
    {0x1680, 0x1680}, {0x180e, 0x180e}, {0x2000, 0x200f}, {0x2028, 0x202f},
    {0x205f, 0x2064}, {0x2066, 0x206f}, {0x3000, 0x3000}, {0xe000, 0xf8ff},
    {0xfeff, 0xfeff}, {0xfff9, 0xfffb}, {0x110bd, 0x110bd},
    {0x110cd, 0x110cd}, {0x13430, 0x13438}, {0x1bca0, 0x1bca3},
    {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f},
    {0xf0000, 0xffffd}, {0x100000, 0x10fffd},
};

static int printable(uint32_t cp)
{
    size_t i;

    if (cp < 0x80)
        return cp >= 0x20 && cp < 0x7f;
    for (i = 0; i < sizeof unprintable / sizeof unprintable[0]; i++)
        if (cp >= unprintable[i][0] && cp <= unprintable[i][1])
            return 0;
    return 1;
}

/* The quote repr() picks: ' unless the text has ' and no ". */
static char repr_quote(const unsigned char *s, size_t n)
{
    return memchr(s, '\'', n) != NULL && memchr(s, '"', n) == NULL ? '"'
                                                                    : '\'';
}

/* An ASCII character as repr() writes it (str and bytes agree there). */
static void put_ascii(struct out *o, unsigned char c, char quote)
{
    char ch = (char)c;

    if (c == '\\' || ch == quote) {
        put(o, "\\", 1);
        put(o, &ch, 1);
    } else if (c == '\n') {
        puts_(o, "\\n");
    } else if (c == '\r') {
        puts_(o, "\\r");
    } else if (c == '\t') {
        puts_(o, "\\t");
    } else if (c < 0x20 || c == 0x7f) {
        putf(o, "\\x%02x", c);
    } else {
        put(o, &ch, 1);
    }
}

/* repr(os.fsdecode(s)): the text as Python shows a str that came from
 * these bytes, undecodable bytes as the surrogates they become. */
static void put_repr(struct out *o, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    char quote = repr_quote(s, n);
    size_t i = 0, k;
    uint32_t cp;

    put(o, &quote, 1);
    while (i < n) {
        k = utf8_char(s + i, n - i, &cp);
        if (k == 0)
            putf(o, "\\udc%02x", s[i]);
        else if (cp < 0x80)
            put_ascii(o, s[i], quote);
        else if (printable(cp))
            put(o, text + i, k);
        else if (cp <= 0xff)
            putf(o, "\\x%02x", (unsigned)cp);
        else if (cp <= 0xffff)
            putf(o, "\\u%04x", (unsigned)cp);
        else
            putf(o, "\\U%08x", (unsigned)cp);
        i += k ? k : 1;
    }
    put(o, &quote, 1);
}

/* Text that goes into a message as it is, as the ERROR record carries a
 * Python str: a newline becomes a space and an undecodable byte '?'
 * (protocol.encode_error). */
static void put_text(struct out *o, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, k;
    uint32_t cp;

    while (i < n) {
        k = utf8_char(s + i, n - i, &cp);
        if (k == 0)
            put(o, "?", 1);
        else if (cp == '\n')
            put(o, " ", 1);
        else
            put(o, text + i, k);
        i += k ? k : 1;
    }
}

/* The message table: each refusal's text, with the numbers it names (a,
 * then b, both as unsigned long long). */
static const char *const req_messages[FH_REQ_NERRORS] = {
    [FH_REQ_OK] = "",
    [FH_REQ_TOO_MANY_FDS] = "too many file descriptors (the limit is %llu)",
    [FH_REQ_TOO_LARGE] = "message too large (the limit is %llu bytes)",
    [FH_REQ_SHORT] = "truncated message (%llu bytes, header is %llu)",
    [FH_REQ_MAGIC] = "bad magic 0x%08llx: not a forkhost client",
    [FH_REQ_VERSION] = "protocol version mismatch: the client speaks %llu, "
                       "the template speaks %llu",
    [FH_REQ_LENGTH] = "truncated message: header says %llu bytes, "
                      "%llu arrived",
    [FH_REQ_NFDS] = "header says %llu file descriptors, %llu arrived",
    [FH_REQ_TYPE] = "unexpected message type 0x%02llx",
    [FH_REQ_LAUNCH_SHORT] = "truncated LAUNCH request",
    [FH_REQ_LAUNCH_STRINGS_LEN] = "truncated LAUNCH request: %llu bytes of "
                                  "strings announced, %llu present",
    [FH_REQ_LAUNCH_FLAGS] = "LAUNCH request has unknown flags or bits set",
    [FH_REQ_LAUNCH_EXTRA] = "too many extra fds (%llu; the limit is %llu)",
    [FH_REQ_LAUNCH_ARGV] = "LAUNCH request has an empty argv",
    [FH_REQ_LAUNCH_STRINGS] = "malformed LAUNCH request: expected %llu "
                              "NUL-terminated strings, found %llu",
    [FH_REQ_LAUNCH_ENTRY] = "LAUNCH request has an empty entry",
    [FH_REQ_LAUNCH_FD_TARGET] = "LAUNCH request puts extra fd %llu at %llu: "
                                "the numbers must increase from 3 up",
    [FH_REQ_LAUNCH_FDS] = "LAUNCH request announces %llu file descriptors, "
                          "%llu arrived",
};

FH_API size_t fh_request_message(const struct fh_req_result *r, char *out,
                                 size_t size)
{
    char text[FH_PROTO_MAX_ERROR + 1];
    struct out o = {text, sizeof text, 0};

    if (size == 0)
        return 0;
    text[0] = '\0';
    if (r->error >= FH_REQ_NERRORS) {
        putf(&o, "unknown refusal %u", r->error);
    } else {
        /* The table's formats take a and b and nothing else. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        int k = snprintf(text, sizeof text, req_messages[r->error],
                         (unsigned long long)r->a, (unsigned long long)r->b);
#pragma GCC diagnostic pop
        o.len = k < 0 ? 0 : (size_t)k < sizeof text ? (size_t)k
                                                    : sizeof text - 1;
    }
    if (o.len > size - 1)
        o.len = size - 1;
    memcpy(out, text, o.len);
    out[o.len] = '\0';
    return o.len;
}

/* ---- entries --------------------------------------------------------- */

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

/* entries._DOTTED.match(): its '$' also matches before a final newline,
 * so "mod\n" was a module name too. */
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

static int entry_error(struct fh_entry_target *t, int code)
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
    struct out o = {t->message, sizeof t->message, 0};

    puts_(&o, "entry ");
    put_repr(&o, entry, strlen(entry));
    puts_(&o, " not found: no such file");
    if (entry[0] != '/') {
        char link[64], cwd[FH_ENTRY_HEAD_MAX];
        ssize_t k;

        snprintf(link, sizeof link, "/proc/self/fd/%d", cwd_fd);
        k = readlink(link, cwd, sizeof cwd);
        puts_(&o, " (relative to ");
        if (k >= 0)
            put_text(&o, cwd, (size_t)k);
        else
            puts_(&o, "the client's cwd");
        puts_(&o, ")");
    }
    if (!has_colon && !looks_like_path(entry))
        puts_(&o, "; for a module use '-m MODULE' or 'MODULE:FUNCTION'");
    return entry_error(t, EXIT_NOT_FOUND);
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
            struct out o = {t->message, sizeof t->message, 0};

            puts_(&o, "invalid module name ");
            put_repr(&o, entry, n);
            return entry_error(t, EXIT_NOT_FOUND);
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
                struct out o = {t->message, sizeof t->message, 0};

                puts_(&o, "module ");
                put_repr(&o, entry, hl);
                puts_(&o, " not found (searched the client's cwd, "
                          "PYTHONPATH and the primary's sys.path)");
                return entry_error(t, EXIT_NOT_FOUND);
            }
            return decided(t, FH_ENTRY_FUNCTION, t->head, colon + 1);
        } else {
            return not_found(entry, colon != NULL, cwd_fd, t);
        }
    }
    if (is_elf(cwd_fd, path))
        return decided(t, FH_ENTRY_NATIVE, path, symbol);
    if (symbol != NULL) {
        struct out o = {t->message, sizeof t->message, 0};

        puts_(&o, "entry ");
        put_repr(&o, entry, n);
        puts_(&o, ": a ':symbol' applies to shared objects and executables, "
                  "and ");
        put_repr(&o, path, strlen(path));
        puts_(&o, " is not ELF");
        return entry_error(t, EXIT_CANNOT_RUN);
    }
    if (named_shared_object(path)) {
        /* Named as a library is run as one, as exec would (ENOEXEC), not
         * as Python source. */
        struct out o = {t->message, sizeof t->message, 0};

        puts_(&o, "entry ");
        put_repr(&o, entry, n);
        puts_(&o, ": named as a shared object, and not ELF");
        return entry_error(t, EXIT_CANNOT_RUN);
    }
    return decided(t, FH_ENTRY_SCRIPT, path, NULL);
}

/* ---- the launch, before the fork ------------------------------------- */

/* What python writes on its stderr when init_sys_streams stops it (its
 * fatal error, then faulthandler's dump of the one thread): why, the
 * exception if one was raised, then the thread.  Its exit status is 1. */
#define PY_STREAMS_EXIT 1
static const char py_stdin_dir[] =
    "Fatal Python error: init_sys_streams: <stdin> is a directory, "
    "cannot continue\n"
    "Python runtime state: core initialized\n";
static const char py_streams[] =
    "Fatal Python error: init_sys_streams: can't initialize sys standard "
    "streams\n"
    "Python runtime state: core initialized\n"
    "IsADirectoryError: [Errno %d] %s: %d\n";
/* The thread python names is its main thread, pthread_self(): in a fork of
 * this process, this process's. */
static const char py_thread[] =
    "\n"
    "Current thread 0x%016lx (most recent call first):\n"
    "  <no Python frame>\n";

static const char cwd_not_dir[] =
    "the client's cwd fd is not a directory (a client sends its cwd as an "
    "O_PATH directory fd)";

static int is_dir_fd(int fd)
{
    struct stat st;

    return fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
}

FH_API int fh_launch_decide(const struct fh_launch_view *v, const int *fds,
                            unsigned nfds, struct fh_entry_target *t)
{
    int stdio[3] = { -1, -1, -1 };
    unsigned i, k = 1;
    struct out o = {t->message, sizeof t->message, 0};

    t->kind = FH_ENTRY_ERROR;
    t->name = t->symbol = NULL;
    t->head[0] = '\0';
    t->message[0] = '\0';
    if (nfds < 1 || !is_dir_fd(fds[0])) {
        puts_(&o, cwd_not_dir);
        return entry_error(t, 125);
    }
    if (fh_entry_decide(v->entry, (v->launch.flags & FH_LAUNCH_MODULE) != 0,
                        fds[0], t) != FH_ENTRY_NATIVE &&
        t->kind != FH_ENTRY_ERROR) {
        for (i = 0; i < 3; i++)
            if ((v->launch.stdio_mask & (1u << i)) && k < nfds)
                stdio[i] = fds[k++];
        /* python's order: stdin first, then each stream it opens. */
        if (stdio[0] >= 0 && is_dir_fd(stdio[0])) {
            puts_(&o, py_stdin_dir);
        } else {
            for (i = 1; i < 3; i++)
                if (stdio[i] >= 0 && is_dir_fd(stdio[i]))
                    break;
            if (i == 3)
                return (int)t->kind;
            {
                char line[200];

                snprintf(line, sizeof line, py_streams, EISDIR,
                         strerror(EISDIR), (int)i);
                puts_(&o, line);
            }
        }
        {
            char line[200];

            snprintf(line, sizeof line, py_thread,
                     (unsigned long)pthread_self());
            puts_(&o, line);
        }
        t->name = t->symbol = NULL;
        return entry_error(t, PY_STREAMS_EXIT);
    }
    return (int)t->kind;
}
