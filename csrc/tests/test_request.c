/*
 * test_request.c - fh_request_check(), fh_request_message() and
 * fh_entry_decide() (forkhost/entry.h) against tables of records and of
 * entries, every message compared with the exact text the Python code
 * they replaced printed.
 *
 * Records: EOF, every refusal at least once (and which one wins when a
 * record has several faults), INFO with and without a body, valid LAUNCH
 * records at odd alignments and at the size limit, every truncation and
 * every one-bit change of a valid record.  Entries: real files in
 * a temporary directory (an ELF file copied from /proc/self/exe, Python
 * source, a directory, a FIFO, symlinks, names with ':' in them), missing
 * ones, module names, PATH:SYMBOL on ELF and on other files, absolute and
 * relative entries, and repr() edge cases (quotes, control characters,
 * undecodable bytes, non-printable code points).
 */
#include "forkhost/request.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fhtest.h"

/* ---- records ---------------------------------------------------------- */

static unsigned char g_buf[FH_PROTO_MAX_MSG + 64];

struct rec {
    const char *entry;
    const char *strings;     /* argv then env, each NUL-terminated */
    size_t      strings_n;   /* bytes of strings */
    uint32_t    argc, envc;
    uint32_t    flags, umask, mask, nextra;
    const uint32_t *target;  /* nextra fd numbers; NULL: 3, 4, ... */
};

/* A LAUNCH record at g_buf + off: its length.  *hdr_nfds is what a valid
 * one carries. */
static size_t launch_at(size_t off, const struct rec *r, unsigned *hdr_nfds)
{
    struct fh_launch l;
    size_t elen = strlen(r->entry) + 1, n, i;
    /* a refused nextra (too many) still gets the most a record holds */
    size_t nt = r->nextra < FH_PROTO_MAX_EXTRA_FDS ? r->nextra
                                                   : FH_PROTO_MAX_EXTRA_FDS;
    size_t tlen = nt * sizeof(uint32_t);

    memset(&l, 0, sizeof l);
    n = sizeof l + tlen + elen + r->strings_n;
    l.hdr.magic = FH_PROTO_MAGIC;
    l.hdr.version = FH_PROTO_VERSION;
    l.hdr.type = FH_MSG_LAUNCH;
    l.hdr.len = (uint32_t)n;
    l.hdr.nfds = 1u + (unsigned)__builtin_popcount(r->mask & 7) + r->nextra;
    l.flags = r->flags;
    l.umask = r->umask;
    l.stdio_mask = r->mask;
    l.nextra = r->nextra;
    l.argc = r->argc;
    l.envc = r->envc;
    l.strings_len = (uint32_t)(elen + r->strings_n);
    l.sig_ignored = FH_LAUNCH_SIGBIT(SIGHUP);
    l.sig_blocked = FH_LAUNCH_SIGBIT(64);
    memcpy(g_buf + off, &l, sizeof l);
    for (i = 0; i < nt; i++) {
        uint32_t t = r->target != NULL ? r->target[i] : 3 + (uint32_t)i;

        memcpy(g_buf + off + sizeof l + i * sizeof t, &t, sizeof t);
    }
    memcpy(g_buf + off + sizeof l + tlen, r->entry, elen);
    memcpy(g_buf + off + sizeof l + tlen + elen, r->strings, r->strings_n);
    *hdr_nfds = l.hdr.nfds;
    return n;
}

/* The default LAUNCH: "fhfix:exit_with" with argv ["fhfix:exit_with", "0"]
 * and env ["A=1"], all three stdio fds: 4 fds, 38 bytes of strings. */
static const char STR[] = "fhfix:exit_with\0" "0\0" "A=1";
#define DEFAULT { "fhfix:exit_with", STR, sizeof STR, 2, 1, 0, 022, 7, 0, NULL }

/* Patch a 32-bit field of the record at g_buf + off. */
static void set32(size_t off, size_t field, uint32_t v)
{
    memcpy(g_buf + off + field, &v, sizeof v);
}

static void set16(size_t off, size_t field, uint16_t v)
{
    memcpy(g_buf + off + field, &v, sizeof v);
}

static int check(size_t off, size_t n, int mflags, unsigned nfds,
                 struct fh_launch_view *v, struct fh_req_result *r)
{
    return fh_request_check(g_buf + off, n, mflags, nfds, v, r);
}

/* A refusal with exactly this message. */
#define REFUSED(call, code, text) do {                                    \
    struct fh_req_result r_;                                              \
    struct fh_launch_view v_;                                             \
    char m_[FH_PROTO_MAX_ERROR + 1];                                      \
    int rc_ = fh_request_check call;                                      \
                                                                          \
    (void)v_;                                                             \
    EXPECT(rc_ == -1 && r_.error == (code), "%s: rc %d error %u, not %u", \
           text, rc_, r_.error, (unsigned)(code));                        \
    fh_request_message(&r_, m_, sizeof m_);                               \
    EXPECT(strcmp(m_, text) == 0, "message \"%s\", not \"%s\"", m_, text);\
} while (0)

#define AT(off, n, mflags, nfds) (g_buf + (off), n, mflags, nfds, &v_, &r_)

static void test_framing(void)
{
    struct fh_launch_view v;
    struct fh_req_result r;
    struct rec d = DEFAULT;
    unsigned nf;
    size_t n;

    /* EOF: nothing, no fds */
    EXPECT(check(0, 0, 0, 0, &v, &r) == 0 && r.error == FH_REQ_OK, "EOF");
    REFUSED(AT(0, 0, 0, 1), FH_REQ_SHORT,
            "truncated message (0 bytes, header is 24)");

    n = launch_at(0, &d, &nf);
    EXPECT(n == 72 + 16 + 22 && nf == 4, "default record %zu %u", n, nf);
    EXPECT(check(0, n, 0, 4, &v, &r) == FH_MSG_LAUNCH, "a valid LAUNCH");

    /* recvmsg's flags come first, whatever the record */
    REFUSED(AT(0, n, MSG_CTRUNC, 4), FH_REQ_TOO_MANY_FDS,
            "too many file descriptors (the limit is 36)");
    REFUSED(AT(0, n, MSG_CTRUNC | MSG_TRUNC, 40), FH_REQ_TOO_MANY_FDS,
            "too many file descriptors (the limit is 36)");
    REFUSED(AT(0, n, MSG_TRUNC, 4), FH_REQ_TOO_LARGE,
            "message too large (the limit is 196608 bytes)");
    REFUSED(AT(0, FH_PROTO_MAX_MSG + 1, 0, 4), FH_REQ_TOO_LARGE,
            "message too large (the limit is 196608 bytes)");
    REFUSED(AT(0, (size_t)1 << 40, 0, 4), FH_REQ_TOO_LARGE,
            "message too large (the limit is 196608 bytes)");

    /* the header */
    REFUSED(AT(0, 10, 0, 0), FH_REQ_SHORT,
            "truncated message (10 bytes, header is 24)");
    REFUSED(AT(0, 23, 0, 4), FH_REQ_SHORT,
            "truncated message (23 bytes, header is 24)");
    set32(0, 0, 0xdeadbeef);
    REFUSED(AT(0, n, 0, 4), FH_REQ_MAGIC,
            "bad magic 0xdeadbeef: not a forkhost client");
    set32(0, 0, 1);
    set16(0, 4, 7);                              /* and a bad version */
    REFUSED(AT(0, n, 0, 4), FH_REQ_MAGIC,
            "bad magic 0x00000001: not a forkhost client");
    set32(0, 0, FH_PROTO_MAGIC);
    set16(0, 4, 1);
    set32(0, 8, 999);                            /* and a bad length */
    REFUSED(AT(0, n, 0, 4), FH_REQ_VERSION,
            "protocol version mismatch: the client speaks 1, "
            "the template speaks 2");
    set16(0, 4, 0xffff);
    REFUSED(AT(0, n, 0, 4), FH_REQ_VERSION,
            "protocol version mismatch: the client speaks 65535, "
            "the template speaks 2");
    set16(0, 4, FH_PROTO_VERSION);
    set32(0, 8, 100);
    REFUSED(AT(0, 34, 0, 4), FH_REQ_LENGTH,
            "truncated message: header says 100 bytes, 34 arrived");
    set32(0, 8, (uint32_t)n);
    REFUSED(AT(0, n, 0, 1), FH_REQ_NFDS,
            "header says 4 file descriptors, 1 arrived");
    set32(0, 12, 2);
    REFUSED(AT(0, n, 0, 1), FH_REQ_NFDS,
            "header says 2 file descriptors, 1 arrived");
    set32(0, 12, 4);
    /* the type, after the header's counts */
    set16(0, 6, 0x33);
    REFUSED(AT(0, n, 0, 4), FH_REQ_TYPE, "unexpected message type 0x33");
    set16(0, 6, FH_MSG_EXITED);
    REFUSED(AT(0, n, 0, 4), FH_REQ_TYPE, "unexpected message type 0x82");
    set16(0, 6, 0);
    REFUSED(AT(0, n, 0, 4), FH_REQ_TYPE, "unexpected message type 0x00");
    set16(0, 6, 0x1234);
    REFUSED(AT(0, n, 0, 4), FH_REQ_TYPE, "unexpected message type 0x1234");
    set32(0, 12, 5);                             /* nfds before type */
    REFUSED(AT(0, n, 0, 4), FH_REQ_NFDS,
            "header says 5 file descriptors, 4 arrived");

    /* INFO: the header's checks only, a body is allowed and not read */
    set16(0, 6, FH_MSG_INFO);
    set32(0, 12, 4);
    EXPECT(check(0, n, 0, 4, &v, &r) == FH_MSG_INFO, "INFO with a body");
    set32(0, 8, 24);
    set32(0, 12, 0);
    EXPECT(check(0, 24, 0, 0, &v, &r) == FH_MSG_INFO, "INFO, header only");
    EXPECT(check(0, 24, MSG_CTRUNC, 0, &v, &r) == -1 &&
           r.error == FH_REQ_TOO_MANY_FDS, "INFO, CTRUNC");
    /* RELOAD: the same (who may ask is the template's check) */
    set16(0, 6, FH_MSG_RELOAD);
    EXPECT(check(0, 24, 0, 0, &v, &r) == FH_MSG_RELOAD, "RELOAD");
    set16(0, 6, 0x7f);
    EXPECT(check(0, 24, 0, 0, &v, &r) == -1 && r.error == FH_REQ_TYPE,
           "an unknown type");
}

static void test_launch(void)
{
    struct fh_launch_view v;
    struct fh_req_result r;
    struct rec d = DEFAULT, x;
    unsigned nf;
    size_t n, off;

    /* a body shorter than struct fh_launch's fixed part */
    n = launch_at(0, &d, &nf);
    set32(0, 8, 44);
    REFUSED(AT(0, 44, 0, 4), FH_REQ_LAUNCH_SHORT, "truncated LAUNCH request");
    set32(0, 8, 24);
    REFUSED(AT(0, 24, 0, 4), FH_REQ_LAUNCH_SHORT, "truncated LAUNCH request");
    set32(0, 8, 71);
    REFUSED(AT(0, 71, 0, 4), FH_REQ_LAUNCH_SHORT, "truncated LAUNCH request");
    /* the fixed part, but not the fd numbers it announces */
    x = d;
    x.mask = 0;
    x.nextra = 2;
    n = launch_at(0, &x, &nf);
    set32(0, 8, 72 + 4);
    REFUSED(AT(0, 72 + 4, 0, nf), FH_REQ_LAUNCH_SHORT,
            "truncated LAUNCH request");

    /* strings_len */
    n = launch_at(0, &d, &nf);
    set32(0, 48, 999);
    REFUSED(AT(0, n, 0, 4), FH_REQ_LAUNCH_STRINGS_LEN,
            "truncated LAUNCH request: 999 bytes of strings announced, "
            "38 present");
    set32(0, 48, 0);
    REFUSED(AT(0, n, 0, 4), FH_REQ_LAUNCH_STRINGS_LEN,
            "truncated LAUNCH request: 0 bytes of strings announced, "
            "38 present");
    set32(0, 8, 72);
    REFUSED(AT(0, 72, 0, 4), FH_REQ_LAUNCH_STRINGS,
            "malformed LAUNCH request: expected 4 NUL-terminated strings, "
            "found 0");

    /* flags, stdio_mask and umask bits; after the nextra check */
    x = d;
    x.flags = (FH_LAUNCH_FLAGS + 1) & ~FH_LAUNCH_FLAGS;  /* the first unknown bit */
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_FLAGS,
            "LAUNCH request has unknown flags or bits set");
    x = d;
    x.flags = 0x80000000u;
    x.nextra = 99;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_EXTRA,
            "too many extra fds (99; the limit is 32)");
    x = d;
    x.mask = 8;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_FLAGS,
            "LAUNCH request has unknown flags or bits set");
    x = d;
    x.umask = 01000;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_FLAGS,
            "LAUNCH request has unknown flags or bits set");
    x = d;
    x.flags = FH_LAUNCH_FLAGS;
    x.umask = 0777;
    n = launch_at(0, &x, &nf);
    EXPECT(check(0, n, 0, nf, &v, &r) == FH_MSG_LAUNCH, "every valid bit");

    /* nextra */
    x = d;
    x.nextra = FH_PROTO_MAX_EXTRA_FDS + 1;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_EXTRA,
            "too many extra fds (33; the limit is 32)");
    x.nextra = 0xffffffffu;
    n = launch_at(0, &x, &nf);                  /* nf wraps around to 3 */
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_EXTRA,
            "too many extra fds (4294967295; the limit is 32)");
    x = d;
    x.nextra = FH_PROTO_MAX_EXTRA_FDS;
    x.mask = 7;
    n = launch_at(0, &x, &nf);
    EXPECT(nf == FH_PROTO_MAX_FDS && check(0, n, 0, nf, &v, &r) ==
           FH_MSG_LAUNCH, "the most fds");

    /* argc */
    x = d;
    x.argc = 0;
    x.envc = 3;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_ARGV,
            "LAUNCH request has an empty argv");

    /* the strings: Python's strings.split(b"\0") counting */
    x = d;
    x.argc = 5;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_STRINGS,
            "malformed LAUNCH request: expected 7 NUL-terminated strings, "
            "found 4");
    x = d;
    x.envc = 0;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_STRINGS,
            "malformed LAUNCH request: expected 3 NUL-terminated strings, "
            "found 4");
    x = d;
    x.strings_n = sizeof STR - 1;               /* no final NUL */
    x.envc = 0;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_STRINGS,
            "malformed LAUNCH request: expected 3 NUL-terminated strings, "
            "found 3");
    x = d;
    x.argc = 0xffffffffu;
    x.envc = 0xffffffffu;
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_STRINGS,
            "malformed LAUNCH request: expected 8589934591 NUL-terminated "
            "strings, found 4");

    /* the entry */
    x = d;
    x.entry = "";
    n = launch_at(0, &x, &nf);
    REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_ENTRY,
            "LAUNCH request has an empty entry");

    /* the environment: entries without '=' pass, as exec passes them */
    {
        static const struct {
            const char *env;
            size_t      len;
        } envs[] = {
#define E(s) { s, sizeof s }
            E("NOEQ"), E("=x"), E("="), E(""), E("\t\n\r\\\x01\x7f\x80\xff"),
#undef E
        };
        char strings[128];
        size_t i;

        for (i = 0; i < sizeof envs / sizeof envs[0]; i++) {
            memcpy(strings, "a\0A=1", 6);
            memcpy(strings + 6, envs[i].env, envs[i].len);
            memcpy(strings + 6 + envs[i].len, "Z", 2);
            x = d;
            x.strings = strings;
            x.strings_n = 6 + envs[i].len + 2;
            x.argc = 1;
            x.envc = 3;
            n = launch_at(0, &x, &nf);
            EXPECT(check(0, n, 0, nf, &v, &r) == FH_MSG_LAUNCH &&
                   v.strings_len == x.strings_n, "env %zu passes", i);
        }
    }

    /* the fd numbers: increasing from 3 up, each an int */
    {
        static const struct {
            uint32_t t[3];
            unsigned n;
            const char *message;        /* NULL: valid */
        } ts[] = {
            { {3, 4, 5}, 3, NULL },
            { {3, 10, 63}, 3, NULL },
            { {63}, 1, NULL },
            { {FH_PROTO_FD_TARGET_MAX}, 1, NULL },
            { {FH_PROTO_FD_TARGET_MAX + 1u}, 1, "LAUNCH request puts extra fd 0 at "
                      "2147483647: the numbers must increase from 3 up" },
            { {2}, 1, "LAUNCH request puts extra fd 0 at 2: the numbers must "
                      "increase from 3 up" },
            { {0}, 1, "LAUNCH request puts extra fd 0 at 0: the numbers must "
                      "increase from 3 up" },
            { {3, 3}, 2, "LAUNCH request puts extra fd 1 at 3: the numbers "
                         "must increase from 3 up" },
            { {5, 9, 4}, 3, "LAUNCH request puts extra fd 2 at 4: the "
                            "numbers must increase from 3 up" },
            { {0x80000000u}, 1, "LAUNCH request puts extra fd 0 at "
                                "2147483648: the numbers must increase from "
                                "3 up" },
            { {3, 0xffffffffu}, 2, "LAUNCH request puts extra fd 1 at "
                                   "4294967295: the numbers must increase "
                                   "from 3 up" },
        };
        size_t i;

        for (i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            x = d;
            x.flags = FH_LAUNCH_INHERIT_FDS;
            x.nextra = ts[i].n;
            x.target = ts[i].t;
            n = launch_at(0, &x, &nf);
            if (ts[i].message != NULL) {
                REFUSED(AT(0, n, 0, nf), FH_REQ_LAUNCH_FD_TARGET,
                        ts[i].message);
                continue;
            }
            memset(&v, 0, sizeof v);
            EXPECT(check(0, n, 0, nf, &v, &r) == FH_MSG_LAUNCH &&
                   memcmp(v.fd_target, ts[i].t, ts[i].n * 4) == 0 &&
                   v.entry == (const char *)g_buf + 72 + 4 * ts[i].n &&
                   v.launch.sig_ignored == FH_LAUNCH_SIGBIT(SIGHUP) &&
                   v.launch.sig_blocked == FH_LAUNCH_SIGBIT(64),
                   "fd numbers %zu", i);
        }
    }

    /* the fds */
    n = launch_at(0, &d, &nf);
    set32(0, 12, 1);
    REFUSED(AT(0, n, 0, 1), FH_REQ_LAUNCH_FDS,
            "LAUNCH request announces 4 file descriptors, 1 arrived");
    x = d;
    x.mask = 0;
    x.nextra = 3;
    n = launch_at(0, &x, &nf);
    set32(0, 12, 2);
    REFUSED(AT(0, n, 0, 2), FH_REQ_LAUNCH_FDS,
            "LAUNCH request announces 4 file descriptors, 2 arrived");

    /* valid records at every alignment: the view points into them */
    for (off = 0; off < 8; off++) {
        memset(&v, 0, sizeof v);
        n = launch_at(off, &d, &nf);
        EXPECT(check(off, n, 0, 4, &v, &r) == FH_MSG_LAUNCH, "at +%zu", off);
        EXPECT(v.entry == (const char *)g_buf + off + 72 &&
               strcmp(v.entry, "fhfix:exit_with") == 0 &&
               v.strings == v.entry + 16 && v.strings_len == sizeof STR &&
               memcmp(v.strings, STR, sizeof STR) == 0 &&
               v.launch.argc == 2 && v.launch.envc == 1 &&
               v.launch.stdio_mask == 7 && v.launch.umask == 022 &&
               v.launch.hdr.len == n, "the view at +%zu", off);
    }
    /* a NULL view is allowed */
    n = launch_at(0, &d, &nf);
    EXPECT(fh_request_check(g_buf, n, 0, 4, NULL, &r) == FH_MSG_LAUNCH,
           "no view");

    /* the size limit: exactly FH_PROTO_MAX_MSG bytes is valid */
    {
        static char env[FH_PROTO_MAX_MSG];
        size_t fixed = 72 + 2, len = FH_PROTO_MAX_MSG - fixed;

        memset(env, 'v', sizeof env);
        memcpy(env, "a\0K=", 4);
        env[len - 1] = '\0';
        x = d;
        x.entry = "m";
        x.strings = env;
        x.strings_n = len;
        x.argc = 1;
        x.envc = 1;
        x.mask = 0;
        n = launch_at(0, &x, &nf);
        EXPECT(n == FH_PROTO_MAX_MSG, "%zu bytes", n);
        EXPECT(check(0, n, 0, 1, &v, &r) == FH_MSG_LAUNCH,
               "a LAUNCH of FH_PROTO_MAX_MSG bytes (error %u)", r.error);
        /* one more byte: too large, before anything else is looked at */
        REFUSED(AT(0, n + 1, 0, 1), FH_REQ_TOO_LARGE,
                "message too large (the limit is 196608 bytes)");
    }
}

/* Every truncation of a valid record, and every single-bit change of one,
 * checked from a heap copy of exactly its length: no read outside the
 * record (ASan watches), the verdict is one of the four, a refusal has a
 * message, and a LAUNCH that survives still points into its record. */
static void test_mutations(void)
{
    struct fh_launch_view v;
    struct fh_req_result r;
    struct rec d = DEFAULT;
    unsigned nf, bit;
    size_t n = launch_at(0, &d, &nf), i, len;
    unsigned char *copy;
    char m[FH_PROTO_MAX_ERROR + 1];
    int rc;

    for (i = 0; i <= n; i++) {
        copy = malloc(i ? i : 1);
        CHECK(copy != NULL, "malloc");
        memcpy(copy, g_buf, i);
        if (i >= 12)                      /* the header agrees, mostly */
            memcpy(copy + 8, &(uint32_t){(uint32_t)i}, 4);
        rc = fh_request_check(copy, i, 0, 4, &v, &r);
        EXPECT(rc == (i == n ? FH_MSG_LAUNCH : -1), "cut at %zu: %d", i, rc);
        EXPECT(rc >= 0 || fh_request_message(&r, m, sizeof m) > 0,
               "cut at %zu: a message", i);
        free(copy);
    }
    for (i = 0; i < n; i++) {
        for (bit = 0; bit < 8; bit++) {
            copy = malloc(n);
            CHECK(copy != NULL, "malloc");
            memcpy(copy, g_buf, n);
            copy[i] ^= (unsigned char)(1u << bit);
            rc = fh_request_check(copy, n, 0, 4, &v, &r);
            EXPECT(rc == -1 || rc == FH_MSG_LAUNCH || rc == FH_MSG_INFO ||
                   rc == FH_MSG_RELOAD, "byte %zu bit %u: %d", i, bit, rc);
            if (rc == -1) {
                len = fh_request_message(&r, m, sizeof m);
                EXPECT(len > 0 && strchr(m, '\n') == NULL, "byte %zu", i);
            } else if (rc == FH_MSG_LAUNCH) {
                EXPECT(v.entry >= (char *)copy + 72 &&
                       v.strings + v.strings_len == (char *)copy + n,
                       "byte %zu bit %u: the view", i, bit);
            }
            free(copy);
        }
    }
}

static void test_messages(void)
{
    struct fh_req_result r;
    char out[FH_PROTO_MAX_ERROR + 16];
    size_t n;

    memset(&r, 0, sizeof r);
    r.error = FH_REQ_MAGIC;
    r.a = 0xdeadbeef;
    n = fh_request_message(&r, out, sizeof out);
    EXPECT(n == 43 && strcmp(out, "bad magic 0xdeadbeef: not a forkhost "
                             "client") == 0, "\"%s\"", out);
    /* truncated to the buffer, NUL included */
    n = fh_request_message(&r, out, 10);
    EXPECT(n == 9 && strcmp(out, "bad magic") == 0, "\"%s\" %zu", out, n);
    n = fh_request_message(&r, out, 1);
    EXPECT(n == 0 && out[0] == '\0', "size 1");
    out[0] = 'x';
    EXPECT(fh_request_message(&r, out, 0) == 0 && out[0] == 'x', "size 0");
    /* no error: an empty message */
    r.error = FH_REQ_OK;
    EXPECT(fh_request_message(&r, out, sizeof out) == 0 && out[0] == '\0',
           "OK");
    /* an unknown code still gets one line */
    r.error = FH_REQ_NERRORS + 5;
    n = fh_request_message(&r, out, sizeof out);
    EXPECT(n > 0 && strchr(out, '\n') == NULL, "unknown: \"%s\"", out);
    /* every code has a message, none with a newline or a stray % */
    for (r.error = 1; r.error < FH_REQ_NERRORS; r.error++) {
        r.a = 7;
        r.b = 9;
        n = fh_request_message(&r, out, sizeof out);
        EXPECT(n > 0 && n == strlen(out) && strchr(out, '\n') == NULL &&
               strchr(out, '%') == NULL, "code %u: \"%s\"", r.error, out);
    }
}

/* ---- entries ---------------------------------------------------------- */

static char g_dir[PATH_MAX / 2];   /* the fixture directory, its real path */
static int g_dfd = -1;

static void make_file(const char *name, const void *data, size_t n)
{
    char path[PATH_MAX];
    int fd;

    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    CHECK(fd >= 0, "create %s", path);
    CHECK(write(fd, data, n) == (ssize_t)n, "write %s", path);
    close(fd);
}

static void make_elf(const char *name)
{
    static char data[1 << 16];
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    CHECK(fd >= 0, "open /proc/self/exe");
    n = read(fd, data, sizeof data);       /* enough: only 4 bytes count */
    CHECK(n >= 4 && memcmp(data, "\177ELF", 4) == 0, "read /proc/self/exe");
    close(fd);
    make_file(name, data, (size_t)n);
}

/* A directory, or a FIFO (fifo), in the fixture directory. */
static void make_node(int fifo, const char *name)
{
    char path[PATH_MAX];

    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    if (fifo)
        CHECK(mkfifo(path, 0644) == 0, "mkfifo %s", path);
    else
        CHECK(mkdir(path, 0755) == 0, "mkdir %s", path);
}

static void make_fixtures(void)
{
    char tmpl[] = "/tmp/fhtest-request-XXXXXX";

    CHECK(mkdtemp(tmpl) != NULL, "mkdtemp");
    CHECK(realpath(tmpl, g_dir) != NULL, "realpath");
    make_elf("prog");
    make_file("s.py", "pass\n", 5);
    make_file("a:b", "pass\n", 5);
    make_file("empty", "", 0);
    make_file("short", "\177EL", 3);            /* not the whole magic */
    make_file("notelf", "\177ELx", 4);         /* wrong fourth byte */
    make_file("it's.py", "pass\n", 5);
    make_node(0, "pkg");
    make_node(0, "pkg:x");
    make_node(0, "nl\nname");
    make_node(1, "fifo");
    {
        char path[PATH_MAX];

        snprintf(path, sizeof path, "%s/link", g_dir);
        CHECK(symlink("prog", path) == 0, "symlink");
        snprintf(path, sizeof path, "%s/dangling", g_dir);
        CHECK(symlink("missing", path) == 0, "symlink");
    }
    g_dfd = open(g_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    CHECK(g_dfd >= 0, "open %s", g_dir);
}

static void remove_fixtures(void)
{
    static const char *const names[] = {
        "prog", "s.py", "a:b", "empty", "short", "notelf", "it's.py", "fifo",
        "link", "dangling",
    };
    char path[PATH_MAX];
    size_t i;

    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", g_dir, names[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/pkg", g_dir);
    rmdir(path);
    snprintf(path, sizeof path, "%s/pkg:x", g_dir);
    rmdir(path);
    snprintf(path, sizeof path, "%s/nl\nname", g_dir);
    rmdir(path);
    close(g_dfd);
    CHECK(rmdir(g_dir) == 0, "rmdir %s", g_dir);
}

static const char *kind_name(unsigned k)
{
    static const char *const names[] = {"ERROR", "NATIVE", "FUNCTION",
                                        "SCRIPT", "MODULE"};

    return k < 5 ? names[k] : "?";
}

/* The message with "DIR" replaced by the fixture directory. */
static void expand(char *out, size_t size, const char *fmt)
{
    const char *p = strstr(fmt, "DIR");

    if (p == NULL)
        snprintf(out, size, "%s", fmt);
    else
        snprintf(out, size, "%.*s%s%s", (int)(p - fmt), fmt, g_dir, p + 3);
}

static struct fh_entry_target g_t;

/* entry decides to kind with name and symbol (NULL: none), or to an error
 * with code and message. */
static void decide(const char *entry, int module, int dfd, unsigned kind,
                   const char *name, const char *symbol, int code,
                   const char *message)
{
    char want[4096];
    int k = fh_entry_decide(entry, module, dfd, &g_t);

    EXPECT(k == (int)kind && g_t.kind == kind, "'%s'%s: %s, not %s (%s)",
           entry, module ? " (-m)" : "", kind_name((unsigned)k),
           kind_name(kind), g_t.message);
    if (kind == FH_ENTRY_ERROR) {
        expand(want, sizeof want, message);
        EXPECT(g_t.exit_code == code, "'%s': exit code %d, not %d", entry,
               g_t.exit_code, code);
        EXPECT(strcmp(g_t.message, want) == 0,
               "'%s': message\n  \"%s\", not\n  \"%s\"", entry, g_t.message,
               want);
        EXPECT(g_t.name == NULL && g_t.symbol == NULL, "'%s': names", entry);
        return;
    }
    EXPECT(g_t.name != NULL && strcmp(g_t.name, name) == 0,
           "'%s': name '%s', not '%s'", entry, g_t.name ? g_t.name : "(null)",
           name);
    EXPECT(symbol == NULL ? g_t.symbol == NULL
           : g_t.symbol != NULL && strcmp(g_t.symbol, symbol) == 0,
           "'%s': symbol '%s', not '%s'", entry,
           g_t.symbol ? g_t.symbol : "(null)", symbol ? symbol : "(null)");
}

#define HINT "; for a module use '-m MODULE' or 'MODULE:FUNCTION'"
#define NF(e, rest) decide(e, 0, g_dfd, FH_ENTRY_ERROR, NULL, NULL, 127, rest)
#define OK(e, m, k, n, s) decide(e, m, g_dfd, k, n, s, 0, NULL)
#define BAD_MODULE(e, shown) decide(e, 1, g_dfd, FH_ENTRY_ERROR, NULL, NULL, 127, \
                                    "invalid module name " shown)

static void test_entries(void)
{
    char big[8192];

    /* -m */
    OK("pkg.mod", 1, FH_ENTRY_MODULE, "pkg.mod", NULL);
    OK("_", 1, FH_ENTRY_MODULE, "_", NULL);
    OK("A_b.c9", 1, FH_ENTRY_MODULE, "A_b.c9", NULL);
    OK("mod\n", 1, FH_ENTRY_MODULE, "mod\n", NULL);   /* re's '$' */
    OK("prog", 1, FH_ENTRY_MODULE, "prog", NULL);     /* never a file */
    BAD_MODULE("1x", "'1x'");
    BAD_MODULE("a..b", "'a..b'");
    BAD_MODULE("a.", "'a.'");
    BAD_MODULE("mod\n\n", "'mod\\n\\n'");
    BAD_MODULE("\n", "'\\n'");
    BAD_MODULE("it's", "\"it's\"");
    BAD_MODULE("m:f", "'m:f'");
    BAD_MODULE("\xff", "'\\udcff'");
    BAD_MODULE("caf\xc3\xa9", "'caf\xc3\xa9'");

    /* files */
    OK("prog", 0, FH_ENTRY_NATIVE, "prog", NULL);
    OK("link", 0, FH_ENTRY_NATIVE, "link", NULL);
    OK("prog:main", 0, FH_ENTRY_NATIVE, "prog", "main");
    OK("prog:", 0, FH_ENTRY_NATIVE, "prog", NULL);
    EXPECT(g_t.name == g_t.head, "a head in head");
    NF("./prog:f:g", "entry './prog:f:g' not found: no such file "
       "(relative to DIR)");                        /* head ./prog:f */
    OK("s.py", 0, FH_ENTRY_SCRIPT, "s.py", NULL);
    OK("s.py:", 0, FH_ENTRY_SCRIPT, "s.py", NULL);
    OK("empty", 0, FH_ENTRY_SCRIPT, "empty", NULL);
    OK("short", 0, FH_ENTRY_SCRIPT, "short", NULL);
    OK("notelf", 0, FH_ENTRY_SCRIPT, "notelf", NULL);
    OK("a:b", 0, FH_ENTRY_SCRIPT, "a:b", NULL);       /* the file, whole */
    OK("pkg", 0, FH_ENTRY_SCRIPT, "pkg", NULL);
    OK("pkg:x", 0, FH_ENTRY_SCRIPT, "pkg:x", NULL);
    OK("fifo", 0, FH_ENTRY_SCRIPT, "fifo", NULL);
    OK("/dev/null", 0, FH_ENTRY_SCRIPT, "/dev/null", NULL);
    OK("/", 0, FH_ENTRY_SCRIPT, "/", NULL);
    OK(".", 0, FH_ENTRY_SCRIPT, ".", NULL);
    OK("/proc/self/exe", 0, FH_ENTRY_NATIVE, "/proc/self/exe", NULL);
    OK("/proc/self/exe:main", 0, FH_ENTRY_NATIVE, "/proc/self/exe", "main");
    decide("s.py:main", 0, g_dfd, FH_ENTRY_ERROR, NULL, NULL, 126,
           "entry 's.py:main': a ':symbol' applies to shared objects and "
           "executables, and 's.py' is not ELF");
    decide("it's.py:f", 0, g_dfd, FH_ENTRY_ERROR, NULL, NULL, 126,
           "entry \"it's.py:f\": a ':symbol' applies to shared objects and "
           "executables, and \"it's.py\" is not ELF");
    decide("a:b:c", 0, g_dfd, FH_ENTRY_ERROR, NULL, NULL, 126,
           "entry 'a:b:c': a ':symbol' applies to shared objects and "
           "executables, and 'a:b' is not ELF");
    /* a FIFO or directory head is not a file: then MODULE:FUNCTION */
    OK("fifo:main", 0, FH_ENTRY_FUNCTION, "fifo", "main");
    OK("pkg:main", 0, FH_ENTRY_FUNCTION, "pkg", "main");

    /* MODULE:FUNCTION */
    OK("mod:fn", 0, FH_ENTRY_FUNCTION, "mod", "fn");
    OK("pkg.mod:obj.fn", 0, FH_ENTRY_FUNCTION, "pkg.mod", "obj.fn");
    decide("a:b:c.d", 0, g_dfd, FH_ENTRY_ERROR, NULL, NULL, 126,
           "entry 'a:b:c.d': a ':symbol' applies to shared objects and "
           "executables, and 'a:b' is not ELF");   /* a:b is a file */
    NF("x:y:z", "entry 'x:y:z' not found: no such file (relative to DIR)");
    OK("mod\n:fn\n", 0, FH_ENTRY_FUNCTION, "mod\n", "fn\n");
    EXPECT(g_t.name == g_t.head, "the module in head");

    /* not found */
    NF("missing", "entry 'missing' not found: no such file "
       "(relative to DIR)" HINT);
    NF("dangling", "entry 'dangling' not found: no such file "
       "(relative to DIR)" HINT);
    NF("", "entry '' not found: no such file (relative to DIR)" HINT);
    NF("missing.py", "entry 'missing.py' not found: no such file "
       "(relative to DIR)");
    NF("lib.so", "entry 'lib.so' not found: no such file (relative to DIR)");
    NF("lib.so.1", "entry 'lib.so.1' not found: no such file "
       "(relative to DIR)");
    NF("x.sox", "entry 'x.sox' not found: no such file (relative to DIR)"
       HINT);
    NF("x.pyc", "entry 'x.pyc' not found: no such file (relative to DIR)"
       HINT);
    NF("sub/x", "entry 'sub/x' not found: no such file (relative to DIR)");
    NF("m:", "entry 'm:' not found: no such file (relative to DIR)");
    NF(":f", "entry ':f' not found: no such file (relative to DIR)");
    NF("1m:fn", "entry '1m:fn' not found: no such file (relative to DIR)");
    NF("m:f..g", "entry 'm:f..g' not found: no such file "
       "(relative to DIR)");
    NF("x-y", "entry 'x-y' not found: no such file (relative to DIR)" HINT);
    NF("/nonexistent", "entry '/nonexistent' not found: no such file");
    NF("/nonexistent:f", "entry '/nonexistent:f' not found: no such file");
    NF("/x.so:f", "entry '/x.so:f' not found: no such file");
    decide("missing", 0, -1, FH_ENTRY_ERROR, NULL, NULL, 127,
           "entry 'missing' not found: no such file "
           "(relative to the client's cwd)" HINT);

    /* repr(): quotes, escapes, undecodable bytes */
    NF("it's", "entry \"it's\" not found: no such file (relative to DIR)"
       HINT);
    NF("a'b\"c", "entry 'a\\'b\"c' not found: no such file "
       "(relative to DIR)" HINT);
    NF("say \"hi\"", "entry 'say \"hi\"' not found: no such file "
       "(relative to DIR)" HINT);
    NF("t\tr\rb\\s\x01\x1f\x7f", "entry 't\\tr\\rb\\\\s\\x01\\x1f\\x7f' not "
       "found: no such file (relative to DIR)" HINT);
    NF("\xff\xfe", "entry '\\udcff\\udcfe' not found: no such file "
       "(relative to DIR)" HINT);
    NF("caf\xc3\xa9", "entry 'caf\xc3\xa9' not found: no such file "
       "(relative to DIR)" HINT);
    NF("\xf0\x9f\x98\x80", "entry '\xf0\x9f\x98\x80' not found: no such "
       "file (relative to DIR)" HINT);
    NF("\xc2\x85\xc2\xa0\xc2\xad\xe2\x80\xa8\xef\xbb\xbf\xf3\xa0\x80\x81",
       "entry '\\x85\\xa0\\xad\\u2028\\ufeff\\U000e0001' not found: no such "
       "file (relative to DIR)" HINT);
    /* an encoded surrogate, an overlong form, a cut sequence: each byte
     * undecodable on its own */
    NF("\xed\xa0\x80", "entry '\\udced\\udca0\\udc80' not found: no such "
       "file (relative to DIR)" HINT);
    NF("\xc0\xaf", "entry '\\udcc0\\udcaf' not found: no such file "
       "(relative to DIR)" HINT);
    NF("\xe2\x82z\xe2\x82\xac", "entry '\\udce2\\udc82z\xe2\x82\xac' not "
       "found: no such file (relative to DIR)" HINT);
    NF("\xf4\x90\x80\x80", "entry '\\udcf4\\udc90\\udc80\\udc80' not found: "
       "no such file (relative to DIR)" HINT);

    /* the cwd's name goes in as it is, one line: '\n' as a space */
    {
        char path[PATH_MAX];
        int fd;

        snprintf(path, sizeof path, "%s/nl\nname", g_dir);
        fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        CHECK(fd >= 0, "open %s", path);
        decide("missing", 0, fd, FH_ENTRY_ERROR, NULL, NULL, 127,
               "entry 'missing' not found: no such file "
               "(relative to DIR/nl name)" HINT);
        close(fd);
    }

    /* messages are cut at FH_PROTO_MAX_ERROR bytes */
    memset(big, 'x', 2000);
    big[2000] = '\0';
    EXPECT(fh_entry_decide(big, 0, g_dfd, &g_t) == FH_ENTRY_ERROR &&
           strlen(g_t.message) == FH_PROTO_MAX_ERROR &&
           strncmp(g_t.message, "entry 'xxx", 10) == 0, "a long entry");
    /* a head longer than a path names no file */
    memset(big, 'x', 5000);
    memcpy(big + 5000, ".py:f", 6);
    EXPECT(fh_entry_decide(big, 0, g_dfd, &g_t) == FH_ENTRY_ERROR &&
           g_t.exit_code == 127, "a long head");
    /* and a module that long is not found */
    memset(big, 'a', 5000);
    memcpy(big + 5000, ":f", 3);
    EXPECT(fh_entry_decide(big, 0, g_dfd, &g_t) == FH_ENTRY_ERROR &&
           g_t.exit_code == 127 && strncmp(g_t.message, "module 'aaa", 11) == 0,
           "a long module: %s", g_t.message);
    /* the longest module that fits head */
    memset(big, 'a', FH_ENTRY_HEAD_MAX - 1);
    big[FH_ENTRY_HEAD_MAX - 1] = '\0';
    {
        char entry[FH_ENTRY_HEAD_MAX + 8];

        memcpy(entry, big, FH_ENTRY_HEAD_MAX - 1);
        memcpy(entry + FH_ENTRY_HEAD_MAX - 1, ":f", 3);
        OK(entry, 0, FH_ENTRY_FUNCTION, big, "f");
    }
}

/* ---- the launch, before the fork -------------------------------------- */

/* What python writes when init_sys_streams stops it, this process's thread
 * in its last lines: for stdin (fd 0), or a stream it could not open. */
static void python_text(char *out, size_t size, int fd)
{
    char thread[160];

    snprintf(thread, sizeof thread,
             "\nCurrent thread 0x%016lx (most recent call first):\n"
             "  <no Python frame>\n", (unsigned long)pthread_self());
    if (fd == 0)
        snprintf(out, size, "Fatal Python error: init_sys_streams: <stdin> is "
                 "a directory, cannot continue\n"
                 "Python runtime state: core initialized\n%s", thread);
    else
        snprintf(out, size, "Fatal Python error: init_sys_streams: can't "
                 "initialize sys standard streams\n"
                 "Python runtime state: core initialized\n"
                 "IsADirectoryError: [Errno 21] Is a directory: %d\n%s", fd,
                 thread);
}

/* A view of a LAUNCH of entry (module: -m) with these stdio bits. */
static struct fh_launch_view view(const char *entry, int module, unsigned mask)
{
    struct fh_launch_view v;

    memset(&v, 0, sizeof v);
    v.launch.flags = module ? FH_LAUNCH_MODULE : 0;
    v.launch.stdio_mask = mask;
    v.launch.argc = 1;
    v.entry = entry;
    v.strings = entry;
    v.strings_len = strlen(entry) + 1;
    return v;
}

static void launch_decides(const char *what, const struct fh_launch_view *v,
                           const int *fds, unsigned nfds, unsigned kind,
                           int code, const char *message)
{
    char want[4096];
    int k = fh_launch_decide(v, fds, nfds, &g_t);

    EXPECT(k == (int)kind && g_t.kind == kind, "%s: %s, not %s (%s)", what,
           kind_name((unsigned)k), kind_name(kind), g_t.message);
    if (kind != FH_ENTRY_ERROR)
        return;
    EXPECT(g_t.exit_code == code, "%s: exit code %d, not %d", what,
           g_t.exit_code, code);
    expand(want, sizeof want, message);
    EXPECT(strcmp(g_t.message, want) == 0,
           "%s: message\n  \"%s\", not\n  \"%s\"", what, g_t.message,
           want);
    EXPECT(g_t.name == NULL && g_t.symbol == NULL, "%s: names", what);
}

static void test_launch_decide(void)
{
    static const char cwd_text[] = "the client's cwd fd is not a directory (a "
        "client sends its cwd as an O_PATH directory fd)";
    char py[4][1024];
    int dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    char path[PATH_MAX];
    int file, f;
    struct fh_launch_view mod = view("mod", 1, 7), func = view("m:f", 0, 7),
                          script = view("s.py", 0, 7), native = view("prog", 0, 7);

    snprintf(path, sizeof path, "%s/s.py", g_dir);
    file = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(dir >= 0 && null >= 0 && file >= 0, "open");
    for (f = 0; f < 3; f++)
        python_text(py[f], sizeof py[f], f);
    {
        int fds[] = { g_dfd, null, null, null };

        launch_decides("-m, stdio /dev/null", &mod, fds, 4, FH_ENTRY_MODULE,
                       0, NULL);
        launch_decides("script", &script, fds, 4, FH_ENTRY_SCRIPT, 0, NULL);
        launch_decides("m:f", &func, fds, 4, FH_ENTRY_FUNCTION, 0, NULL);
        launch_decides("native", &native, fds, 4, FH_ENTRY_NATIVE, 0, NULL);
    }
    /* The cwd fd: a regular file, a device, an O_PATH file, none. */
    {
        int fds[] = { file, null, null, null };
        int opath = open(path, O_PATH | O_CLOEXEC);

        CHECK(opath >= 0, "open O_PATH");
        launch_decides("cwd a file", &mod, fds, 4, FH_ENTRY_ERROR, 125,
                       cwd_text);
        launch_decides("cwd a file, native", &native, fds, 4, FH_ENTRY_ERROR,
                       125, cwd_text);
        fds[0] = null;
        launch_decides("cwd /dev/null", &mod, fds, 4, FH_ENTRY_ERROR, 125,
                       cwd_text);
        fds[0] = opath;
        launch_decides("cwd O_PATH file", &mod, fds, 4, FH_ENTRY_ERROR, 125,
                       cwd_text);
        launch_decides("no cwd", &mod, fds, 0, FH_ENTRY_ERROR, 125, cwd_text);
        fds[0] = -1;
        launch_decides("cwd -1", &mod, fds, 4, FH_ENTRY_ERROR, 125, cwd_text);
        close(opath);
    }
    /* A Python entry with a directory as stdio: python's own words. */
    {
        int fds[] = { g_dfd, dir, null, null };

        launch_decides("stdin a dir", &mod, fds, 4, FH_ENTRY_ERROR, 1, py[0]);
        launch_decides("stdin a dir, script", &script, fds, 4, FH_ENTRY_ERROR,
                       1, py[0]);
        launch_decides("stdin a dir, m:f", &func, fds, 4, FH_ENTRY_ERROR, 1,
                       py[0]);
        launch_decides("stdin a dir, native", &native, fds, 4,
                       FH_ENTRY_NATIVE, 0, NULL);
        fds[2] = dir;          /* stdin wins: python checks it first */
        launch_decides("stdin and stdout dirs", &mod, fds, 4, FH_ENTRY_ERROR,
                       1, py[0]);
        fds[1] = null;
        launch_decides("stdout a dir", &mod, fds, 4, FH_ENTRY_ERROR, 1, py[1]);
        fds[3] = dir;
        launch_decides("stdout and stderr dirs", &mod, fds, 4, FH_ENTRY_ERROR,
                       1, py[1]);
        fds[2] = null;
        launch_decides("stderr a dir", &mod, fds, 4, FH_ENTRY_ERROR, 1, py[2]);
        launch_decides("stderr a dir, native", &native, fds, 4,
                       FH_ENTRY_NATIVE, 0, NULL);
    }
    /* The bits say which fd is which: closed ones are not passed. */
    {
        struct fh_launch_view v = view("mod", 1, 6);   /* no stdin */
        int fds[] = { g_dfd, dir, null };

        launch_decides("stdin closed, stdout a dir", &v, fds, 3,
                       FH_ENTRY_ERROR, 1, py[1]);
        v = view("mod", 1, 5);                          /* no stdout */
        launch_decides("stdout closed, stdin a dir", &v, fds, 3,
                       FH_ENTRY_ERROR, 1, py[0]);
        fds[1] = null;
        fds[2] = dir;
        launch_decides("stdout closed, stderr a dir", &v, fds, 3,
                       FH_ENTRY_ERROR, 1, py[2]);
        v = view("mod", 1, 0);
        launch_decides("no stdio", &v, fds, 1, FH_ENTRY_MODULE, 0, NULL);
    }
    /* The entry's own verdict comes before its stdio. */
    {
        int fds[] = { g_dfd, dir, dir, dir };
        struct fh_launch_view v = view("missing", 0, 7);

        launch_decides("missing, stdio dirs", &v, fds, 4, FH_ENTRY_ERROR, 127,
                       "entry 'missing' not found: no such file (relative "
                       "to DIR)" HINT);
    }
    close(dir);
    close(null);
    close(file);
}

int main(void)
{
    test_framing();
    test_launch();
    test_mutations();
    test_messages();
    make_fixtures();
    test_entries();
    test_launch_decide();
    remove_fixtures();
    if (fht_failures) {
        fprintf(stderr, "test_request: %d failures\n", fht_failures);
        return 1;
    }
    printf("test_request: ok\n");
    return 0;
}
