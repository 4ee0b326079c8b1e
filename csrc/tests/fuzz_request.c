/*
 * fuzz_request.c - fh_request_check(), fh_request_message() and
 * fh_entry_decide() on arbitrary records.
 *
 * The input's first two bytes choose recvmsg's msg_flags (MSG_TRUNC,
 * MSG_CTRUNC) and the fds that arrived; the rest is the record.  Checked
 * invariants: the verdict is one of LAUNCH, INFO, RELOAD, EOF or a refusal with a
 * known code; a refusal's message is one line of at most
 * FH_PROTO_MAX_ERROR bytes, the same at every buffer size, and the same
 * for the same record; a LAUNCH's view lies inside the record and holds
 * what the record says; its entry decides to a kind with the fields that
 * kind has, relative to an empty directory; and fh_launch_decide() with
 * cwd and stdio fds the first byte picks refuses a cwd that is not a
 * directory (125, one line), a Python entry with a directory as stdio
 * (python's own text, exit status 1), and otherwise agrees with
 * fh_entry_decide().
 *
 * With clang, -fsanitize=fuzzer builds it for libFuzzer.  Without
 * (FUZZ_STANDALONE, as build_native.py builds it with gcc), main() below
 * runs a seeded mutation loop for FORKHOST_FUZZ_SECONDS (default 20), or
 * for exactly RUNS inputs when given one (`fuzz_request RUNS`, as the
 * reliability suite runs it: stress/fuzz_launch.py), starting from valid
 * records built here, and prints how many inputs ran.
 */
#include "forkhost/request.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_request"
#include "fuzz_fail.h"

static int g_dir = -1;              /* an empty directory, O_PATH */
/* Verdicts seen: each refusal by its code, then EOF, INFO (or RELOAD),
 * LAUNCH. */
static unsigned long long g_seen[FH_REQ_NERRORS + 3];

static void open_empty_dir(void)
{
    char tmpl[] = "/tmp/fh-fuzz-XXXXXX";

    if (g_dir >= 0)
        return;
    if (mkdtemp(tmpl) == NULL)
        FAIL("mkdtemp");
    g_dir = open(tmpl, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (g_dir < 0)
        FAIL("open %s", tmpl);
    rmdir(tmpl);                    /* still empty, and nothing to clean up */
}

static void check_message(const struct fh_req_result *r)
{
    char big[FH_PROTO_MAX_ERROR + 64], small[17];
    size_t n = fh_request_message(r, big, sizeof big), m;

    if (n == 0 || n > FH_PROTO_MAX_ERROR || strlen(big) != n)
        FAIL("message length %zu", n);
    if (memchr(big, '\n', n) != NULL)
        FAIL("a newline in \"%s\"", big);
    m = fh_request_message(r, small, sizeof small);
    if (m != (n < sizeof small ? n : sizeof small - 1) ||
        memcmp(small, big, m) != 0 || small[m] != '\0')
        FAIL("truncated message differs: \"%s\" vs \"%s\"", small, big);
}

static void check_entry(const char *entry, int module)
{
    static struct fh_entry_target t;
    int kind = fh_entry_decide(entry, module, g_dir, &t);
    size_t n = strlen(entry);

    if (kind != (int)t.kind)
        FAIL("kind %d vs %u", kind, t.kind);
    switch (kind) {
    case FH_ENTRY_ERROR:
        if ((t.exit_code != 126 && t.exit_code != 127) ||
            t.name != NULL || t.symbol != NULL)
            FAIL("error %d", t.exit_code);
        n = strnlen(t.message, sizeof t.message);
        if (n == 0 || n > FH_PROTO_MAX_ERROR || memchr(t.message, '\n', n))
            FAIL("entry message of %zu bytes", n);
        break;
    case FH_ENTRY_MODULE:
        if (!module || t.name != entry || t.symbol != NULL)
            FAIL("module");
        break;
    case FH_ENTRY_FUNCTION:
        /* Nothing exists in an empty directory, so only MODULE:FUNCTION. */
        if (module || t.name != t.head || t.symbol == NULL ||
            t.symbol < entry || t.symbol > entry + n ||
            strlen(t.head) + 1 + strlen(t.symbol) != n ||
            memcmp(entry, t.head, strlen(t.head)) != 0)
            FAIL("function");
        break;
    case FH_ENTRY_NATIVE:
    case FH_ENTRY_SCRIPT:
        /* Possible for absolute entries (/bin/true, /dev/null, /). */
        if (module || t.name == NULL)
            FAIL("file");
        break;
    default:
        FAIL("kind %d", kind);
    }
}

/* fh_launch_decide() on a LAUNCH that checked out, with fds chosen by
 * `pick`: bits 3-4 the cwd (the empty directory, "/" opened O_RDONLY,
 * /dev/null, a regular file), bits 5-7 which stdio fds are directories
 * (else /dev/null). */
static void check_launch_decide(const struct fh_launch_view *v,
                                unsigned nfds, unsigned pick)
{
    static int dir = -1, null = -1, file = -1;
    static struct fh_entry_target t, e;
    int fds[FH_PROTO_MAX_FDS + 4], cwd_dir, kind, python;
    unsigned i, k = 1;
    size_t n;

    if (dir < 0) {
        dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        null = open("/dev/null", O_RDWR | O_CLOEXEC);
        file = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        if (dir < 0 || null < 0 || file < 0)
            FAIL("fixture fds");
    }
    switch ((pick >> 3) & 3) {
    case 0: fds[0] = g_dir; break;
    case 1: fds[0] = dir; break;
    case 2: fds[0] = null; break;
    default: fds[0] = file; break;
    }
    cwd_dir = ((pick >> 3) & 3) < 2;
    for (i = 1; i < nfds && i < sizeof fds / sizeof fds[0]; i++)
        fds[i] = null;
    for (i = 0; i < 3; i++)
        if (v->launch.stdio_mask & (1u << i)) {
            if (k < nfds && (pick & (0x20u << i)))
                fds[k] = dir;
            k++;
        }
    kind = fh_launch_decide(v, fds, nfds, &t);
    if (kind != (int)t.kind)
        FAIL("launch kind %d vs %u", kind, t.kind);
    n = strnlen(t.message, sizeof t.message);
    if (!cwd_dir) {
        if (kind != FH_ENTRY_ERROR || t.exit_code != 125 || n == 0 ||
            memchr(t.message, '\n', n) != NULL)
            FAIL("a cwd that is not a directory: %d %d", kind, t.exit_code);
        return;
    }
    fh_entry_decide(v->entry, (v->launch.flags & FH_LAUNCH_MODULE) != 0,
                    fds[0], &e);
    python = e.kind != FH_ENTRY_NATIVE && e.kind != FH_ENTRY_ERROR;
    if (e.kind == FH_ENTRY_ERROR) {
        if (kind != FH_ENTRY_ERROR || t.exit_code != e.exit_code ||
            strcmp(t.message, e.message) != 0)
            FAIL("the entry's error differs");
    } else if (kind != FH_ENTRY_ERROR) {
        if (kind != (int)e.kind || (python && (pick & 0xe0u) &&
                                    (v->launch.stdio_mask & (pick >> 5))))
            FAIL("launch kind %d, entry kind %u", kind, e.kind);
    } else if (!python || t.exit_code != 1 || n < 60 ||
               strncmp(t.message, "Fatal Python error: init_sys_streams: ",
                       38) != 0 ||
               strcmp(t.message + n - 20, "  <no Python frame>\n") != 0 ||
               t.name != NULL || t.symbol != NULL) {
        FAIL("a stdio refusal: %d \"%s\"", t.exit_code, t.message);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fh_launch_view v;
    struct fh_req_result r, r2;
    const char *rec;
    unsigned nfds;
    int mflags, type;
    size_t n;

    if (size < 2)
        return 0;
    open_empty_dir();
    /* byte 0: bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC, bit 2 "n is larger than
     * what the buffer holds"; byte 1: the fds that arrived */
    mflags = ((data[0] & 1) ? MSG_TRUNC : 0) | ((data[0] & 2) ? MSG_CTRUNC : 0);
    nfds = data[1] % (FH_PROTO_MAX_FDS + 4);
    rec = (const char *)data + 2;
    n = size - 2;
    /* A copy of exactly n bytes, so ASan sees any read past the record. */
    {
        char *copy = malloc(n ? n : 1);
        size_t claimed = n;

        if (copy == NULL)
            FAIL("malloc");
        memcpy(copy, rec, n);
        if ((data[0] & 4) && n > FH_PROTO_MAX_MSG)
            claimed = n + 4096;    /* recvmsg said more than was kept */
        memset(&v, 0xa5, sizeof v);
        type = fh_request_check(copy, claimed, mflags, nfds, &v, &r);
        if (fh_request_check(copy, claimed, mflags, nfds, &v, &r2) != type ||
            r2.error != r.error || r2.a != r.a || r2.b != r.b)
            FAIL("two verdicts on one record");
        g_seen[type < 0 ? (r.error < FH_REQ_NERRORS ? r.error : 0)
               : type == 0 ? FH_REQ_NERRORS
               : type == FH_MSG_INFO || type == FH_MSG_RELOAD ||
                 type == FH_MSG_ADOPT ? FH_REQ_NERRORS + 1
               : FH_REQ_NERRORS + 2]++;
        if (type < 0) {
            if (r.error == FH_REQ_OK || r.error >= FH_REQ_NERRORS)
                FAIL("refusal code %u", r.error);
            check_message(&r);
        } else if (type == 0) {
            if (n != 0 || nfds != 0)
                FAIL("EOF on %zu bytes, %u fds", n, nfds);
        } else if (type == FH_MSG_INFO || type == FH_MSG_RELOAD ||
                   type == FH_MSG_ADOPT) {
            if (r.error != FH_REQ_OK)
                FAIL("INFO, RELOAD or ADOPT with an error");
            if (n < sizeof(struct fh_msg_hdr) ||
                ((const struct fh_msg_hdr *)(const void *)copy)->type != type)
                FAIL("INFO, RELOAD or ADOPT on a record of another type");
        } else if (type == FH_MSG_LAUNCH) {
            const char *end = copy + n;

            if (r.error != FH_REQ_OK || n > FH_PROTO_MAX_MSG ||
                v.entry != copy + sizeof(struct fh_launch) +
                           4 * (size_t)v.launch.nextra ||
                v.strings != v.entry + strlen(v.entry) + 1 ||
                v.strings + v.strings_len != end || v.entry[0] == '\0' ||
                (v.strings_len > 0 && end[-1] != '\0') ||
                v.launch.argc < 1 ||
                v.launch.nextra > FH_PROTO_MAX_EXTRA_FDS ||
                v.launch.hdr.nfds != nfds ||
                1u + (unsigned)__builtin_popcount(v.launch.stdio_mask) +
                v.launch.nextra != nfds)
                FAIL("a LAUNCH view that does not match its record");
            for (uint32_t i = 0; i < v.launch.nextra; i++)
                if (v.fd_target[i] < (i ? v.fd_target[i - 1] + 1 : 3u) ||
                    v.fd_target[i] > FH_PROTO_FD_TARGET_MAX ||
                    memcmp(&v.fd_target[i], copy + sizeof(struct fh_launch) +
                           4 * i, 4) != 0)
                    FAIL("fd number %u not as the record says", i);
            check_entry(v.entry, (v.launch.flags & FH_LAUNCH_MODULE) != 0);
            check_launch_decide(&v, nfds, data[0]);
        } else {
            FAIL("verdict %d", type);
        }
        free(copy);
    }
    return 0;
}

#ifdef FUZZ_STANDALONE
/* ---- the standalone driver (no libFuzzer) ----------------------------- */

#define MAX_INPUT (FH_PROTO_MAX_MSG + 64)
#define NSEEDS 6

#include "fuzz_driver.h"

/* A valid LAUNCH of entry with argv and env (each string array
 * NULL-terminated), with its two control bytes. */
static void make_launch(struct input *in, const char *entry,
                        const char *const *argv, const char *const *env,
                        uint32_t flags, uint32_t mask, uint32_t nextra)
{
    struct fh_launch l;
    size_t at = 2 + sizeof l, len;
    uint32_t argc = 0, envc = 0, i;
    const char *const *p;

    memset(&l, 0, sizeof l);
    /* the fd numbers: 3, 4, ... with --fd; the client's own otherwise */
    for (i = 0; i < nextra; i++) {
        uint32_t t = (flags & FH_LAUNCH_INHERIT_FDS) ? 3 + 7 * i : 3 + i;

        memcpy(in->data + at, &t, sizeof t);
        at += sizeof t;
    }
    len = strlen(entry) + 1;
    memcpy(in->data + at, entry, len);
    at += len;
    for (p = argv; *p; p++, argc++) {
        len = strlen(*p) + 1;
        memcpy(in->data + at, *p, len);
        at += len;
    }
    for (p = env; *p; p++, envc++) {
        len = strlen(*p) + 1;
        memcpy(in->data + at, *p, len);
        at += len;
    }
    l.hdr.magic = FH_PROTO_MAGIC;
    l.hdr.version = FH_PROTO_VERSION;
    l.hdr.type = FH_MSG_LAUNCH;
    l.hdr.len = (uint32_t)(at - 2);
    l.hdr.nfds = 1u + (unsigned)__builtin_popcount(mask) + nextra;
    l.flags = flags;
    l.umask = 022;
    l.stdio_mask = mask;
    l.nextra = nextra;
    l.argc = argc;
    l.envc = envc;
    l.strings_len = (uint32_t)(at - 2 - sizeof l - 4 * (size_t)nextra);
    l.sig_ignored = FH_LAUNCH_SIGBIT(SIGPIPE);
    l.sig_blocked = FH_LAUNCH_SIGBIT(SIGUSR1);
    memcpy(in->data + 2, &l, sizeof l);
    in->data[0] = 0;
    in->data[1] = (uint8_t)l.hdr.nfds;
    in->len = at;
}

static void make_seeds(void)
{
    static const char *const argv1[] = {"mod:fn", "a", NULL};
    static const char *const env1[] = {"A=1", "PATH=/bin", NULL};
    static const char *const argv2[] = {"x", NULL};
    static const char *const none[] = {NULL};
    static const char *const env3[] = {"K=\xff'\"\\\t", "B==", "NOEQ", NULL};
    struct fh_msg_hdr h;

    make_launch(&seeds[0], "mod:fn", argv1, env1, 0, 7, 0);
    make_launch(&seeds[1], "pkg.mod", argv2, none, FH_LAUNCH_MODULE, 0, 2);
    make_launch(&seeds[2], "/bin/true:main", argv2, env3, FH_LAUNCH_JOBCTL,
                5, FH_PROTO_MAX_EXTRA_FDS - 1);
    make_launch(&seeds[3], "s\xc3\xa9.py", argv1, env1, FH_LAUNCH_INHERIT_FDS,
                1, 3);
    memset(&h, 0, sizeof h);                      /* INFO */
    h.magic = FH_PROTO_MAGIC;
    h.version = FH_PROTO_VERSION;
    h.type = FH_MSG_INFO;
    h.len = sizeof h;
    memcpy(seeds[4].data + 2, &h, sizeof h);
    seeds[4].data[0] = seeds[4].data[1] = 0;
    seeds[4].len = 2 + sizeof h;
    /* the largest valid LAUNCH: its environment fills FH_PROTO_MAX_MSG */
    {
        static char big[FH_PROTO_MAX_MSG];
        const char *env[] = {big, NULL};
        size_t fixed = sizeof(struct fh_launch) + sizeof "m:f" +
                       sizeof "m:f";

        memset(big, 'v', sizeof big);
        big[0] = 'K';
        big[1] = '=';
        big[FH_PROTO_MAX_MSG - fixed - 1] = '\0';
        {
            const char *a[] = {"m:f", NULL};

            make_launch(&seeds[5], "m:f", a, env, 0, 0, 0);
        }
    }
}

/* One random change of cur (fuzz_driver.h), with this protocol's edge
 * values and bytes. */
static void mutate(void)
{
    static const uint32_t edges[] = {0, 1, 2, 7, 8, 32, 33, 36, 37, 56,
                                     0xff, 0xffff, 0x7fffffff, 0xffffffff,
                                     FH_PROTO_MAX_MSG, FH_PROTO_MAX_MSG + 1};
    static const struct mutations m = {
        edges, sizeof edges / sizeof edges[0], 14, "\0=:./a\xff\n", 8};

    mutate_with(&m);
}

static void check_seed(int i)
{
    struct fh_launch_view v;
    struct fh_req_result r;
    int t = fh_request_check(seeds[i].data + 2, seeds[i].len - 2, 0,
                             seeds[i].data[1], &v, &r);

    if (t != (i == 4 ? FH_MSG_INFO : FH_MSG_LAUNCH))
        FAIL("seed %d refused (%d, error %u)", i, t, r.error);
}

static const struct input *pick(void)
{
    const struct input *from = &seeds[rnd() % NSEEDS];

    /* the big seed is costly to copy: take it rarely */
    if (from == &seeds[5] && rnd() % 16)
        from = &seeds[0];
    return from;
}

/* The record made to agree with itself again, now and then: hdr.len,
 * strings_len, and the fd count with the flags. */
static void fix(void)
{
    fix_len_field(8, 12, 0);
    fix_len_field(48, 56, 56);                  /* strings_len */
    if (cur.len >= 2 + 56 && rnd() % 2)
        cur.data[1] = (uint8_t)(1 + __builtin_popcount(cur.data[2 + 32] & 7) +
                                cur.data[2 + 36]);
}

int main(int argc, char **argv)
{
    static const struct fuzz_target t = {
        "fuzz_request", LLVMFuzzerTestOneInput, make_seeds, check_seed, pick, mutate,
        fix, g_seen, FH_REQ_NERRORS + 2, FH_REQ_NERRORS - 1, "EOF, INFO, LAUNCH"};
    int rc = fuzz_main(argc, argv, &t);

    close(g_dir);
    return rc;
}
#endif
