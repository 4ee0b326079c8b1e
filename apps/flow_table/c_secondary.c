/*
 * c_secondary.c - flow_table's C secondary: a separate shared object,
 * started by run.py as `libflow_secondary.so:flow_secondary` in a
 * secondary forked from the primary's template.
 *
 * It links libforkhost only.  It does not link libflowhash.so and never
 * names flow_hash: every add and lookup goes through the function pointer
 * the primary stored in the table, which is valid here because this
 * process descends from the template and has libflowhash.so at the
 * primary's address.
 *
 *   flow_secondary TABLE N
 * adds its N flows (owner 3), then looks up the N flows of the primary
 * (owner 1) and of the Python secondary (owner 2).  Exit 0 when all are
 * found with the right data.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forkhost.h"

enum { PRIMARY = 1, PY_SECONDARY = 2, C_SECONDARY = 3 };  /* names.py */
#define KEY_LEN 16
#define BULK 64

/* flows.py's rule, byte for byte. */
static void flow(unsigned char key[KEY_LEN], uint32_t owner, uint32_t i)
{
    static const uint16_t dports[4] = { 80, 443, 53, 8080 };
    uint32_t src = htonl(0x0A000000u | owner << 16 | (i & 0xFFFFu));
    uint32_t dst = htonl(0xC0A80000u | ((7u * i) & 0xFFFFu));
    uint16_t sport = htons((uint16_t)(1024 + i % 50000));
    uint16_t dport = htons(dports[i % 4]);

    memset(key, 0, KEY_LEN);
    memcpy(key, &src, 4);
    memcpy(key + 4, &dst, 4);
    memcpy(key + 8, &sport, 2);
    memcpy(key + 10, &dport, 2);
    key[12] = i % 3 ? 6 : 17;
}

static uint64_t data(uint32_t owner, uint32_t i) { return (uint64_t)owner << 32 | i; }

/* How many of owner's n flows are there, in bulk lookups of BULK keys. */
static uint32_t check(const struct fh_hash *h, uint32_t owner, uint32_t n)
{
    unsigned char keys[BULK * KEY_LEN];
    int32_t pos[BULK];
    uint64_t found[BULK];
    uint32_t ok = 0;

    for (uint32_t i = 0; i < n; i += BULK) {
        uint32_t k = n - i < BULK ? n - i : BULK;
        for (uint32_t j = 0; j < k; j++)
            flow(keys + j * KEY_LEN, owner, i + j);
        if (fh_hash_lookup_bulk_data(h, keys, k, pos, found) < 0)
            return ok;
        for (uint32_t j = 0; j < k; j++)
            ok += pos[j] >= 0 && found[j] == data(owner, i + j);
    }
    return ok;
}

int flow_secondary(int argc, char **argv, char **envp)
{
    struct fh_hash *h;
    unsigned char key[KEY_LEN];
    uint32_t n, p, py;

    (void)envp;
    if (argc != 3) {
        fprintf(stderr, "usage: flow_secondary TABLE N\n");
        return 2;
    }
    n = (uint32_t)strtoul(argv[2], NULL, 0);
    h = fh_hash_find_existing(argv[1]);
    if (!h) {
        fprintf(stderr, "c secondary: no hash table %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    for (uint32_t i = 0; i < n; i++) {
        int32_t pos;
        flow(key, C_SECONDARY, i);
        pos = fh_hash_add_key_data(h, key, data(C_SECONDARY, i));
        if (pos < 0) {
            fprintf(stderr, "c secondary: add: %s %s\n", strerror(-pos), fh_hash_error());
            return 1;
        }
    }
    p = check(h, PRIMARY, n);
    py = check(h, PY_SECONDARY, n);
    printf("c secondary: added %u flows through the stored hash function %s:%s; "
           "found %u/%u of the primary's and %u/%u of the Python secondary's\n",
           n, fh_hash_fn_module(h), "flow_hash", p, n, py, n);
    fflush(stdout);
    return p == n && py == n ? 0 : 1;
}
