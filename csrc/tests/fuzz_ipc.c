/*
 * fuzz_ipc.c - fh_ipc_record_check() and fh_ipc_record_message(), the one
 * parser of IPC records (csrc/lib/ipc_wire.c), on arbitrary records.
 *
 * The input's first byte chooses recvmsg's msg_flags (MSG_TRUNC,
 * MSG_CTRUNC) and where the record arrived (enum fh_ipc_side), the second
 * the fds that arrived; the rest is the record.  Checked invariants: the
 * verdict is a record type or a refusal with a known code, the same twice;
 * a valid record is one whose header says what arrived (length, param,
 * fds, a terminated name its type allows, an id only for requests and
 * replies) and whose type the side receives (a first record: a HELLO with
 * its 16-byte param); a refusal's message is one line of at most
 * FH_IPC_MESSAGE_MAX bytes, the same at every buffer size.
 *
 * With clang, -fsanitize=fuzzer builds it for libFuzzer.  Without
 * (FUZZ_STANDALONE, as build_native.py builds it with gcc), main() below
 * runs a seeded mutation loop for FORKHOST_FUZZ_SECONDS (default 20), or
 * for exactly RUNS inputs (`fuzz_ipc RUNS`), starting from valid records
 * built here, and prints how many inputs ran and the verdicts seen.
 */
#include "forkhost/ipc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_ipc"
#include "fuzz_fail.h"

/* Verdicts seen: each refusal by its code, then valid records. */
static unsigned long long g_seen[FH_IPC_REC_NERRORS + 1];

static void check_message(const struct fh_ipc_verdict *v)
{
    char big[FH_IPC_MESSAGE_MAX + 64], small[17];
    size_t n = fh_ipc_record_message(v, big, sizeof big), m;

    if (n == 0 || n > FH_IPC_MESSAGE_MAX || strlen(big) != n)
        FAIL("message length %zu", n);
    if (memchr(big, '\n', n) != NULL)
        FAIL("a newline in \"%s\"", big);
    m = fh_ipc_record_message(v, small, sizeof small);
    if (m != (n < sizeof small ? n : sizeof small - 1) ||
        memcmp(small, big, m) != 0 || small[m] != '\0')
        FAIL("truncated message differs: \"%s\" vs \"%s\"", small, big);
}

static void check_valid(const struct fh_ipc_hdr *h, size_t n, unsigned nfds,
                        int side, int type)
{
    size_t namelen = strnlen(h->name, FH_IPC_NAME_MAX);
    int named = type == FH_IPC_MSG || type == FH_IPC_REQUEST || type == FH_IPC_REPLY;

    if (type != h->type || !fh_ipc_type_name((unsigned)type))
        FAIL("valid type %d, header %u", type, h->type);
    if (h->magic != FH_IPC_MAGIC || h->version != FH_IPC_VERSION || h->len != n
        || h->param_len + FH_IPC_HDR_SIZE != n || h->param_len > FH_IPC_PARAM_MAX
        || h->nfds != nfds || nfds > FH_IPC_FDS_MAX)
        FAIL("a valid record whose header does not say what arrived");
    if (namelen >= FH_IPC_NAME_MAX || (namelen > 0) != named)
        FAIL("a valid record with a name of %zu bytes", namelen);
    for (size_t i = namelen; i < FH_IPC_NAME_MAX; i++)
        if (h->name[i] != '\0')
            FAIL("a valid record with bytes after its name's NUL");
    if ((h->id != 0) != (type == FH_IPC_REQUEST || type == FH_IPC_REPLY))
        FAIL("a valid record with id %llu", (unsigned long long)h->id);
    if (side == FH_IPC_FIRST_RECORD && (type != FH_IPC_HELLO
                                        || h->param_len != sizeof(struct fh_ipc_hello)))
        FAIL("a first record that is not a HELLO");
    if (side == FH_IPC_FROM_PRIMARY && (type == FH_IPC_HELLO || type == FH_IPC_BYE))
        FAIL("a secondary's record valid from the primary");
    if (side == FH_IPC_FROM_SECONDARY && (type == FH_IPC_WELCOME || type == FH_IPC_REFUSE))
        FAIL("a primary's record valid from a secondary");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fh_ipc_verdict v, v2;
    unsigned nfds;
    int mflags, side, type;
    size_t n;
    unsigned char *copy;

    if (size < 2)
        return 0;
    /* byte 0: bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC, bits 2-3 the side;
     * byte 1: the fds that arrived */
    mflags = ((data[0] & 1) ? MSG_TRUNC : 0) | ((data[0] & 2) ? MSG_CTRUNC : 0);
    side = 1 + (data[0] >> 2) % 3;
    nfds = data[1] % (FH_IPC_FDS_MAX + 2);
    n = size - 2;
    if (n > FH_IPC_RECORD_MAX)
        n = FH_IPC_RECORD_MAX;     /* what a receive buffer holds */
    /* A copy of exactly n bytes, so ASan sees any read past the record. */
    copy = malloc(n ? n : 1);
    if (copy == NULL)
        FAIL("malloc");
    memcpy(copy, data + 2, n);
    type = fh_ipc_record_check(copy, n, mflags, nfds, side, &v);
    if (fh_ipc_record_check(copy, n, mflags, nfds, side, &v2) != type
        || memcmp(&v, &v2, sizeof v) != 0)
        FAIL("two verdicts on one record");
    if (v.side != (unsigned)side)
        FAIL("side %u, not %d", v.side, side);
    if (type < 0) {
        if (v.error == FH_IPC_REC_OK || v.error >= FH_IPC_REC_NERRORS)
            FAIL("refusal code %u", v.error);
        if (side != FH_IPC_FIRST_RECORD && v.error >= FH_IPC_REC_HELLO_VERSION)
            FAIL("a first record's refusal %u at side %d", v.error, side);
        g_seen[v.error]++;
        check_message(&v);
    } else {
        struct fh_ipc_hdr h;

        if (v.error != FH_IPC_REC_OK || (unsigned)type != v.type || mflags
            || n < FH_IPC_HDR_SIZE)
            FAIL("valid type %d with error %u", type, v.error);
        memcpy(&h, copy, sizeof h);
        check_valid(&h, n, nfds, side, type);
        g_seen[FH_IPC_REC_NERRORS]++;
    }
    free(copy);
    return 0;
}

#ifdef FUZZ_STANDALONE
/* ---- the standalone driver (no libFuzzer) ----------------------------- */

#define MAX_INPUT (2 + FH_IPC_RECORD_MAX + 64)
#define NSEEDS 7

#include "fuzz_driver.h"

/* A valid record with its two control bytes (side as enum fh_ipc_side). */
static void make_record(struct input *in, int side, uint16_t type, uint64_t id,
                        const char *name, const void *param, uint32_t plen,
                        uint32_t nfds)
{
    struct fh_ipc_hdr h;

    memset(&h, 0, sizeof h);
    h.magic = FH_IPC_MAGIC;
    h.version = FH_IPC_VERSION;
    h.type = type;
    h.len = FH_IPC_HDR_SIZE + plen;
    h.nfds = nfds;
    h.id = id;
    h.param_len = plen;
    if (name)
        strncpy(h.name, name, FH_IPC_NAME_MAX - 1);
    in->data[0] = (uint8_t)((side - 1) << 2);
    in->data[1] = (uint8_t)nfds;
    memcpy(in->data + 2, &h, sizeof h);
    if (plen)
        memcpy(in->data + 2 + sizeof h, param, plen);
    in->len = 2 + sizeof h + plen;
}

static void make_seeds(void)
{
    static unsigned char big[FH_IPC_PARAM_MAX];
    struct fh_ipc_hello hello = { 1234, 1, 0, 0 };
    struct fh_ipc_welcome w = { 1, 2, FH_IPC_NAME_MAX, FH_IPC_PARAM_MAX };

    memset(big, 'p', sizeof big);
    make_record(&seeds[0], FH_IPC_FIRST_RECORD, FH_IPC_HELLO, 0, NULL, &hello,
                sizeof hello, 0);
    make_record(&seeds[1], FH_IPC_FROM_SECONDARY, FH_IPC_REQUEST, 7, "stats",
                "{}", 2, 1);
    make_record(&seeds[2], FH_IPC_FROM_PRIMARY, FH_IPC_REPLY, 7, "stats", big, 40, 0);
    make_record(&seeds[3], FH_IPC_FROM_PRIMARY, FH_IPC_WELCOME, 0, NULL, &w,
                sizeof w, 0);
    make_record(&seeds[4], FH_IPC_FROM_SECONDARY, FH_IPC_MSG, 0,
                "a-name-of-sixty-three-bytes-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                big, FH_IPC_PARAM_MAX, FH_IPC_FDS_MAX);
    make_record(&seeds[5], FH_IPC_FROM_SECONDARY, FH_IPC_BYE, 0, NULL, NULL, 0, 0);
    make_record(&seeds[6], FH_IPC_FROM_PRIMARY, FH_IPC_REFUSE, 0, NULL,
                "too many IPC members", 20, 0);
}

/* One random change of cur (fuzz_driver.h), with this protocol's edge
 * values and bytes. */
static void mutate(void)
{
    static const uint32_t edges[] = {0, 1, 2, 8, 9, 0x10, 0x13, 63, 64, 95, 96,
                                     97, 0xffff, 0x7fffffff, 0xffffffff,
                                     FH_IPC_PARAM_MAX, FH_IPC_RECORD_MAX,
                                     FH_IPC_RECORD_MAX + 1, FH_IPC_MAGIC};
    static const struct mutations m = {
        edges, sizeof edges / sizeof edges[0], 8, "\0a.\xff", 4};

    mutate_with(&m);
}

/* The header made to agree with the record again, now and then: its
 * length, its param_len and its fd count. */
static void fix(void)
{
    fix_len_field(8, 12, 0);
    fix_len_field(24, 28, FH_IPC_HDR_SIZE);
    if (cur.len >= 2 + 16 && rnd() % 2)        /* the fds in step */
        memcpy(&cur.data[1], cur.data + 2 + 12, 1);
}

static void check_seed(int i)
{
    struct fh_ipc_verdict v;
    int side = 1 + (seeds[i].data[0] >> 2) % 3;

    if (fh_ipc_record_check(seeds[i].data + 2, seeds[i].len - 2, 0,
                            seeds[i].data[1], side, &v) < 0)
        FAIL("seed %d refused (error %u)", i, v.error);
}

static const struct input *pick(void)
{
    return &seeds[rnd() % NSEEDS];
}

int main(int argc, char **argv)
{
    static const struct fuzz_target t = {
        "fuzz_ipc", LLVMFuzzerTestOneInput, make_seeds, check_seed, pick, mutate,
        fix, g_seen, FH_IPC_REC_NERRORS, FH_IPC_REC_NERRORS - 1, "valid"};

    return fuzz_main(argc, argv, &t);
}
#endif
