/*
 * test_hash.c - hash tables: CRC32C, creation, random operations against a
 * reference model (fixed seed, several key lengths and a degenerate hash
 * function), bulk lookup, the *_with_hash calls, lookups from a forked
 * secondary through the stored function pointer, the module-mismatch error,
 * concurrent readers and writers in several processes, and recovery from a
 * writer that dies inside an update.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forkhost.h"

/* A failed CHECK also shows the hash library's last message. */
static const char *hash_detail(void);
#define FHT_DETAIL hash_detail()
#include "fhtest.h"

static const char *hash_detail(void)
{
    static char buf[1100];

    snprintf(buf, sizeof buf, "; fh_hash_error: %s", fh_hash_error());
    return buf;
}

/* A user hash function living in this executable: FNV-1a. */
static uint32_t fnv_hash(const void *key, uint32_t len, uint32_t init)
{
    const unsigned char *p = key;
    uint32_t h = 2166136261u ^ init;
    while (len--)
        h = (h ^ *p++) * 16777619u;
    return h;
}

/* A terrible one: every key in one bucket, to exercise overflow chains. */
static uint32_t const_hash(const void *key, uint32_t len, uint32_t init)
{
    (void)key;
    (void)len;
    return 0x12340005u ^ init;
}

static uint64_t rng_state = 42;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Key k of length len: distinct for distinct k. */
static void make_key(unsigned char *out, uint32_t len, uint32_t k)
{
    for (uint32_t i = 0; i < len; i++)
        out[i] = (unsigned char)(k * 31 + i * 7);
    memcpy(out, &k, len < 4 ? len : 4);
}

static void test_crc32c(void)
{
    unsigned char buf[300];
    /* The standard check value: CRC-32C("123456789") = 0xe3069283, with
     * init ~0 and a final inversion (which the hash convention omits). */
    CHECK((fh_hash_crc32c("123456789", 9, 0xffffffffu) ^ 0xffffffffu) == 0xe3069283u,
          "crc32c check value");
    CHECK((fh__hash_crc32c_sw("123456789", 9, 0xffffffffu) ^ 0xffffffffu) == 0xe3069283u,
          "software crc32c check value");
    for (uint32_t len = 0; len < sizeof buf; len++) {
        for (uint32_t i = 0; i < len; i++)
            buf[i] = (unsigned char)rnd();
        /* Misaligned on purpose. */
        CHECK(fh_hash_crc32c(buf + 1, len > 0 ? len - 1 : 0, len) ==
              fh__hash_crc32c_sw(buf + 1, len > 0 ? len - 1 : 0, len),
              "hardware and software agree at len %u", len);
    }
}

static void test_create(void)
{
    struct fh_hash *h;
    errno = 0;
    CHECK(!fh_hash_create("h.bad", 0, 16, NULL, 0, 0) && errno == EINVAL, "entries 0");
    errno = 0;
    CHECK(!fh_hash_create("h.bad", 10, 0, NULL, 0, 0) && errno == EINVAL, "key_len 0");
    errno = 0;
    CHECK(!fh_hash_create("h.bad", 10, FH_HASH_KEY_LEN_MAX + 1, NULL, 0, 0) &&
          errno == EINVAL, "key too long");
    errno = 0;
    CHECK(!fh_hash_create("h.bad", 10, 8, NULL, 0, 0x40) && errno == EINVAL, "flags");
    errno = 0;
    CHECK(!fh_hash_create("h.bad", 10, 8, (fh_hash_fn)(uintptr_t)0x10, 0, 0) &&
          errno == EINVAL && strstr(fh_hash_error(), "no loaded module"),
          "function outside any module");
    h = fh_hash_create("h.one", 100, 16, NULL, 0, 0);
    CHECK(h, "create");
    errno = 0;
    CHECK(!fh_hash_create("h.one", 100, 16, NULL, 0, 0) && errno == EEXIST, "EEXIST");
    CHECK(fh_hash_find_existing("h.one") == h, "find");
    CHECK(fh_memzone_lookup("HT_h.one"), "memzone name");
    errno = 0;
    CHECK(!fh_hash_find_existing("h.none") && errno == ENOENT, "ENOENT");
    CHECK(fh_hash_max_entries(h) == 100 && fh_hash_key_len(h) == 16 &&
          fh_hash_count(h) == 0 && strcmp(fh_hash_name(h), "h.one") == 0 &&
          fh_hash_fn_module(h)[0] == '\0' && fh_hash_fn_base(h) == 0,
          "queries (built-in function)");
    CHECK(fh_hash_check(h) == 0, "built-in always callable");
    {
        const void *ptrs[2] = { "0123456789abcdef", NULL };
        int32_t pos[2];
        CHECK(fh_hash_lookup_bulk_ptrs(h, ptrs, NULL, 2, pos, NULL) == -EINVAL,
              "bulk over pointers refuses a NULL key");
        CHECK(fh_hash_lookup_bulk_ptrs(h, ptrs, NULL, 1, pos, NULL) == 0 &&
              pos[0] == -ENOENT, "bulk over pointers, a miss");
    }
    struct fh_hash *c = fh_hash_create("h.crc", 10, 8, fh_hash_crc32c, 0, 0);
    CHECK(c && fh_hash_fn_module(c)[0] == '\0', "fh_hash_crc32c is the built-in");
}

/* The reference model: key k present?, its data and position. */
struct model {
    uint32_t nkeys;
    signed char *present;
    uint64_t *data;
    int32_t *pos;
    uint32_t count;
};

static void verify_all(struct fh_hash *h, struct model *m, uint32_t klen)
{
    unsigned char key[64];
    uint32_t next = 0, seen = 0;
    const void *kp;
    uint64_t d;
    int32_t p;
    char *pos_seen = calloc(fh_hash_max_entries(h), 1);

    CHECK(pos_seen, "calloc");
    CHECK(fh_hash_count(h) == (int32_t)m->count, "count %d vs model %u",
          fh_hash_count(h), m->count);
    while ((p = fh_hash_iterate(h, &kp, &d, &next)) >= 0) {
        uint32_t k;
        memcpy(&k, kp, klen < 4 ? klen : 4);
        if (klen < 4)
            k &= (1u << (8 * klen)) - 1;
        CHECK(k < m->nkeys && m->present[k], "iterate: unknown key %u", k);
        CHECK(m->pos[k] == p && m->data[k] == d, "iterate: key %u pos %d/%d", k,
              p, m->pos[k]);
        CHECK(!pos_seen[p], "iterate: position %d twice", p);
        pos_seen[p] = 1;
        seen++;
    }
    CHECK(p == -ENOENT && seen == m->count, "iterate saw %u of %u", seen, m->count);
    for (uint32_t k = 0; k < m->nkeys; k++) {
        make_key(key, klen, k);
        p = fh_hash_lookup_data(h, key, &d);
        if (m->present[k]) {
            const void *kk;
            CHECK(p == m->pos[k] && d == m->data[k], "lookup %u: %d want %d", k,
                  p, m->pos[k]);
            CHECK(fh_hash_get_key_with_position(h, p, &kk) == 0 &&
                  memcmp(kk, key, klen) == 0, "key at position %d", p);
        } else {
            CHECK(p == -ENOENT, "lookup absent %u gave %d", k, p);
        }
    }
    free(pos_seen);
}

static void random_ops(const char *name, uint32_t entries, uint32_t klen,
                       fh_hash_fn fn, uint32_t nkeys, int ops)
{
    struct fh_hash *h = fh_hash_create(name, entries, klen, fn, 7, 0);
    struct model m = { nkeys, calloc(nkeys, 1), calloc(nkeys, 8),
                       calloc(nkeys, 4), 0 };
    unsigned char key[64], *keys = malloc((size_t)200 * klen);
    unsigned char *rkeys = malloc((size_t)200 * klen);
    const void *kptrs[200];
    int32_t positions[200];
    uint64_t datas[200];
    uint32_t sigs[200];

    CHECK(h && m.present && keys && rkeys, "create %s", name);
    for (int op = 0; op < ops; op++) {
        uint32_t k = rnd() % nkeys, r = rnd() % 100;
        uint32_t sig;
        int32_t p;
        uint64_t d;

        make_key(key, klen, k);
        CHECK(fh_hash_hash(h, key, &sig) == 0, "hash");
        if (r < 45) {
            d = ((uint64_t)rnd() << 32) | rnd();
            p = (r & 1) ? fh_hash_add_key_data(h, key, d)
                        : fh_hash_add_key_with_hash_data(h, key, sig, d);
            if (m.present[k]) {
                CHECK(p == m.pos[k], "%s: re-add keeps position", name);
                m.data[k] = d;
            } else if (m.count == entries) {
                CHECK(p == -ENOSPC, "%s: full table gave %d", name, p);
            } else {
                CHECK(p >= 0 && (uint32_t)p < entries, "%s: add gave %d", name, p);
                for (uint32_t j = 0; j < nkeys; j++)
                    CHECK(!m.present[j] || m.pos[j] != p,
                          "%s: position %d reused while key %u holds it", name, p, j);
                m.present[k] = 1;
                m.pos[k] = p;
                m.data[k] = d;
                m.count++;
            }
        } else if (r < 80) {
            p = (r & 1) ? fh_hash_del_key(h, key)
                        : fh_hash_del_key_with_hash(h, key, sig);
            if (m.present[k]) {
                CHECK(p == m.pos[k], "%s: del gave %d want %d", name, p, m.pos[k]);
                m.present[k] = 0;
                m.count--;
            } else {
                CHECK(p == -ENOENT, "%s: del absent gave %d", name, p);
            }
        } else if (r < 95) {
            d = 0;
            p = (r & 1) ? fh_hash_lookup_data(h, key, &d)
                        : fh_hash_lookup_with_hash_data(h, key, sig, &d);
            CHECK(p == (m.present[k] ? m.pos[k] : -ENOENT) &&
                  (!m.present[k] || d == m.data[k]), "%s: lookup %u", name, k);
            CHECK(fh_hash_lookup(h, key) == p && fh_hash_lookup_with_hash(h, key, sig) == p,
                  "%s: lookup without data", name);
        } else {
            uint32_t n = 1 + rnd() % 200;
            int hits = 0, got;
            for (uint32_t i = 0; i < n; i++) {
                uint32_t kk = rnd() % nkeys;
                make_key(keys + (size_t)i * klen, klen, kk);
                hits += m.present[kk];
                CHECK(fh_hash_hash(h, keys + (size_t)i * klen, &sigs[i]) == 0, "hash");
            }
            /* The key-pointer calls get the keys in reverse memory order,
             * so a pointer mix-up cannot pass for the packed layout. */
            for (uint32_t i = 0; i < n; i++) {
                memcpy(rkeys + (size_t)(n - 1 - i) * klen, keys + (size_t)i * klen, klen);
                kptrs[i] = rkeys + (size_t)(n - 1 - i) * klen;
            }
            /* Every key shape, with and without sigs. */
            switch (r % 5) {
            case 0: got = fh_hash_lookup_bulk_data(h, keys, n, positions, datas); break;
            case 1: got = fh_hash_lookup_bulk_with_hash(h, keys, sigs, n, positions, datas); break;
            case 2: got = fh_hash_lookup_bulk_ptrs(h, kptrs, NULL, n, positions, datas); break;
            case 3: got = fh_hash_lookup_bulk_with_hash(h, keys, NULL, n, positions, datas); break;
            default: got = fh_hash_lookup_bulk_ptrs(h, kptrs, sigs, n, positions, datas);
            }
            CHECK(got == hits, "%s: bulk hits %d want %d", name, got, hits);
            for (uint32_t i = 0; i < n; i++) {
                uint32_t kk;
                memcpy(&kk, keys + (size_t)i * klen, klen < 4 ? klen : 4);
                if (klen < 4)
                    kk &= (1u << (8 * klen)) - 1;
                CHECK(positions[i] == (m.present[kk] ? m.pos[kk] : -ENOENT) &&
                      datas[i] == (m.present[kk] ? m.data[kk] : 0),
                      "%s: bulk item %u", name, i);
            }
            CHECK(fh_hash_lookup_bulk(h, keys, n, positions) == hits, "bulk no data");
        }
        if (op % 2000 == 1999)
            verify_all(h, &m, klen);
    }
    verify_all(h, &m, klen);

    /* Fill to exactly `entries`, then one more. */
    for (uint32_t k = 0; k < nkeys && m.count < entries; k++)
        if (!m.present[k]) {
            make_key(key, klen, k);
            int32_t p = fh_hash_add_key_data(h, key, k);
            CHECK(p >= 0, "%s: fill %u (count %u) gave %d", name, k, m.count, p);
            m.present[k] = 1;
            m.pos[k] = p;
            m.data[k] = k;
            m.count++;
        }
    CHECK(m.count == entries, "%s: enough keys to fill", name);
    for (uint32_t k = 0; k < nkeys; k++)
        if (!m.present[k]) {
            make_key(key, klen, k);
            CHECK(fh_hash_add_key(h, key) == -ENOSPC, "%s: ENOSPC", name);
            break;
        }
    verify_all(h, &m, klen);

    CHECK(fh_hash_reset(h) == 0 && fh_hash_count(h) == 0, "%s: reset", name);
    memset(m.present, 0, nkeys);
    m.count = 0;
    verify_all(h, &m, klen);
    free(m.present);
    free(m.data);
    free(m.pos);
    free(keys);
    free(rkeys);
}

/* A forked secondary uses the table, and so its stored function pointer. */
static void test_fork_lookup(void)
{
    struct fh_hash *h = fh_hash_create("h.fnv", 4096, 12, fnv_hash, 3, 0);
    unsigned char key[12];
    pid_t pid;

    CHECK(h, "create");
    CHECK(fh_hash_fn_module(h)[0] == '/' && fh_hash_fn_base(h) != 0,
          "module recorded: '%s'", fh_hash_fn_module(h));
    for (uint32_t k = 0; k < 1000; k++) {
        make_key(key, 12, k);
        CHECK(fh_hash_add_key_data(h, key, k * 3ull) >= 0, "add %u", k);
    }
    pid = fork_child();
    if (pid == 0) {
        struct fh_hash *c = fh_hash_find_existing("h.fnv");
        uint64_t d;
        if (c != h)
            _exit(2);
        for (uint32_t k = 0; k < 1000; k++) {
            make_key(key, 12, k);
            int32_t p = fh_hash_lookup_data(c, key, &d);
            if (p < 0 || d != k * 3ull ||
                fh_hash_lookup_with_hash(c, key, fnv_hash(key, 12, 3)) != p)
                _exit(3);
        }
        for (uint32_t k = 1000; k < 2000; k++) {
            make_key(key, 12, k);
            if (fh_hash_add_key_data(c, key, k * 3ull) < 0)
                _exit(4);
        }
        _exit(0);
    }
    CHECK(reap(pid) == 0, "child lookups through the stored pointer");
    CHECK(fh_hash_count(h) == 2000, "child's adds visible");
    for (uint32_t k = 1000; k < 2000; k++) {
        uint64_t d;
        make_key(key, 12, k);
        CHECK(fh_hash_lookup_data(h, key, &d) >= 0 && d == k * 3ull, "child key %u", k);
    }
}

/* Tampering with the recorded module stands in for a process whose
 * mapping differs: a clear error, never a call through a bad pointer. */
static void test_module_mismatch(void)
{
    struct fh_hash *h = fh_hash_find_existing("h.fnv");
    uint64_t real_base = fh_hash_fn_base(h), bad_base = real_base + 0x200000;
    char module[FH_HASH_MODULE_PATH_MAX], want[64], exe[PATH_MAX];
    unsigned char key[12];
    int32_t pos[4];
    uint32_t sig;
    pid_t pid;

    CHECK(realpath("/proc/self/exe", exe), "realpath");
    snprintf(module, sizeof module, "%s", fh_hash_fn_module(h));
    CHECK(strcmp(module, exe) == 0, "module is this executable: %s", module);
    make_key(key, 12, 5);
    sig = fnv_hash(key, 12, 3);
    CHECK(fh_hash_lookup(h, key) >= 0, "fine before");

    fh__hash_tamper(h, 0, bad_base, NULL);
    CHECK(fh_hash_check(h) == -EFAULT, "check fails");
    CHECK(fh_hash_lookup(h, key) == -EFAULT, "lookup refuses");
    CHECK(fh_hash_add_key(h, key) == -EFAULT, "add refuses");
    CHECK(fh_hash_del_key(h, key) == -EFAULT, "del refuses");
    CHECK(fh_hash_lookup_bulk(h, key, 1, pos) == -EFAULT, "bulk refuses");
    CHECK(fh_hash_hash(h, key, &sig) == -EFAULT, "hash refuses");
    fprintf(stderr, "expected error: %s\n", fh_hash_error());
    CHECK(strstr(fh_hash_error(), module), "names the module");
    snprintf(want, sizeof want, "0x%lx", (unsigned long)bad_base);
    CHECK(strstr(fh_hash_error(), want), "names the recorded base %s", want);
    snprintf(want, sizeof want, "loaded at 0x%lx in this process",
             (unsigned long)real_base);
    CHECK(strstr(fh_hash_error(), want), "names the actual base %s", want);
    sig = fnv_hash(key, 12, 3);
    CHECK(fh_hash_lookup_with_hash(h, key, sig) >= 0, "*_with_hash still work");

    /* The same from a forked secondary. */
    pid = fork_child();
    if (pid == 0)
        _exit(fh_hash_lookup(h, key) == -EFAULT &&
              strstr(fh_hash_error(), module) ? 0 : 1);
    CHECK(reap(pid) == 0, "child gets the error too");

    fh__hash_tamper(h, 0, 0, "/nonexistent/libflows.so");
    CHECK(fh_hash_lookup(h, key) == -EFAULT &&
          strstr(fh_hash_error(), "/nonexistent/libflows.so is not loaded"),
          "module not loaded: %s", fh_hash_error());
    fh__hash_tamper(h, 0x10, 0, NULL);
    CHECK(fh_hash_lookup(h, key) == -EFAULT &&
          strstr(fh_hash_error(), "in no module"), "address in no module");

    fh__hash_tamper(h, (uint64_t)(uintptr_t)fnv_hash, real_base, module);
    CHECK(fh_hash_check(h) == 0 && fh_hash_lookup(h, key) >= 0, "restored");
}

/* Writers in three processes, readers in two, all at once. */
static void test_concurrent(void)
{
    enum { STABLE = 2000, CHURN = 2000, WRITERS = 3, READERS = 2, ROUNDS = 6 };
    struct fh_hash *h = fh_hash_create("h.conc", STABLE + WRITERS * CHURN, 16,
                                       NULL, 0, 0);
    const struct fh_memzone *mz = fh_memzone_reserve("h.conc.stop", 64, 0, 0);
    _Atomic int *stop;
    unsigned char key[16];
    pid_t pids[WRITERS + READERS];

    CHECK(h && mz, "create");
    stop = mz->addr;
    for (uint32_t k = 0; k < STABLE; k++) {
        make_key(key, 16, k);
        CHECK(fh_hash_add_key_data(h, key, k * 11ull) >= 0, "stable %u", k);
    }
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork_child();
        if (pids[w] == 0) {
            uint32_t lo = STABLE + (uint32_t)w * CHURN;
            for (int round = 0; round < ROUNDS; round++) {
                for (uint32_t k = lo; k < lo + CHURN; k++) {
                    make_key(key, 16, k);
                    if (fh_hash_add_key_data(h, key, k * 11ull) < 0)
                        _exit(2);
                }
                for (uint32_t k = lo; k < lo + CHURN; k++) {
                    make_key(key, 16, k);
                    if (fh_hash_del_key(h, key) < 0)
                        _exit(3);
                }
            }
            for (uint32_t k = lo; k < lo + CHURN; k += 2) {
                make_key(key, 16, k);
                if (fh_hash_add_key_data(h, key, k * 11ull) < 0)
                    _exit(4);
            }
            _exit(0);
        }
    }
    for (int r = 0; r < READERS; r++) {
        pids[WRITERS + r] = fork_child();
        if (pids[WRITERS + r] == 0) {
            unsigned char keys[64 * 16];
            int32_t pos[64];
            uint64_t data[64];
            uint32_t seed = (uint32_t)r + 1, iters = 0;
            while (!atomic_load(stop) || iters < 10) {
                for (int i = 0; i < 64; i++) {
                    seed = seed * 1103515245u + 12345u;
                    make_key(keys + i * 16, 16, (seed >> 8) % (STABLE + WRITERS * CHURN));
                }
                fh_hash_lookup_bulk_data(h, keys, 64, pos, data);
                for (int i = 0; i < 64; i++) {
                    uint32_t k;
                    uint64_t d;
                    memcpy(&k, keys + i * 16, 4);
                    if (k < STABLE && (pos[i] < 0 || data[i] != k * 11ull))
                        _exit(5);   /* a stable key went missing */
                    if (pos[i] >= 0 && data[i] != k * 11ull)
                        _exit(6);   /* torn or wrong data */
                    int32_t p = fh_hash_lookup_data(h, keys + i * 16, &d);
                    if (k < STABLE && (p != pos[i] || d != k * 11ull))
                        _exit(7);
                }
                iters++;
            }
            _exit(0);
        }
    }
    alarm(120);
    for (int w = 0; w < WRITERS; w++)
        CHECK(reap(pids[w]) == 0, "writer %d", w);
    atomic_store(stop, 1);
    for (int r = 0; r < READERS; r++)
        CHECK(reap(pids[WRITERS + r]) == 0, "reader %d", r);
    alarm(0);
    CHECK(fh_hash_count(h) == STABLE + WRITERS * CHURN / 2, "final count %d",
          fh_hash_count(h));
    for (uint32_t k = 0; k < STABLE + WRITERS * CHURN; k++) {
        uint64_t d;
        int present = k < STABLE || (k - STABLE) % 2 == 0;
        make_key(key, 16, k);
        int32_t p = fh_hash_lookup_data(h, key, &d);
        CHECK(present ? (p >= 0 && d == k * 11ull) : p == -ENOENT, "final key %u", k);
    }
}

/* A writer dies inside an add (bucket seq left odd, lock held) and inside a
 * delete (counts and free stack not updated): readers must not hang and
 * the next writer must find a consistent table with nothing leaked. */
static void test_writer_death(void)
{
    enum { N = 64 };
    struct fh_hash *h = fh_hash_create("h.death", N, 8, NULL, 0, 0);
    unsigned char key[8];
    uint32_t hash = 0xabcd0003u; /* everything in one bucket, then overflow */
    pid_t pid;

    CHECK(h, "create");
    for (uint32_t k = 0; k < 10; k++) {
        make_key(key, 8, k);
        CHECK(fh_hash_add_key_with_hash_data(h, key, hash, k) >= 0, "add %u", k);
    }
    pid = fork_child();
    if (pid == 0) {
        fh__hash_crash_at(1);
        make_key(key, 8, 100);
        fh_hash_add_key_with_hash_data(h, key, hash, 100);
        _exit(0); /* not reached */
    }
    CHECK(reap(pid) == 99, "writer died inside the add");
    alarm(30);
    make_key(key, 8, 1);
    /* The key sits in the bucket left odd: this reader recovers. */
    CHECK(fh_hash_lookup_with_hash(h, key, hash) >= 0, "reader did not hang");
    make_key(key, 8, 100);
    CHECK(fh_hash_lookup_with_hash(h, key, hash) >= 0, "the published add counts");
    CHECK(fh_hash_count(h) == 11, "count repaired: %d", fh_hash_count(h));
    alarm(0);

    pid = fork_child();
    if (pid == 0) {
        fh__hash_crash_at(2);
        make_key(key, 8, 2);
        fh_hash_del_key_with_hash(h, key, hash);
        _exit(0);
    }
    CHECK(reap(pid) == 99, "writer died inside the delete");
    alarm(30);
    make_key(key, 8, 50);
    CHECK(fh_hash_add_key_with_hash(h, key, hash) >= 0, "next writer proceeds");
    make_key(key, 8, 2);
    CHECK(fh_hash_lookup_with_hash(h, key, hash) == -ENOENT, "deleted");
    CHECK(fh_hash_count(h) == 11, "count after repair: %d", fh_hash_count(h));
    /* Nothing leaked: the table still takes exactly N keys. */
    for (uint32_t k = 1000; fh_hash_count(h) < N; k++) {
        make_key(key, 8, k);
        CHECK(fh_hash_add_key(h, key) >= 0, "fill %u at count %d", k, fh_hash_count(h));
    }
    make_key(key, 8, 99999);
    CHECK(fh_hash_add_key(h, key) == -ENOSPC, "full at N");
    alarm(0);
}

static void test_single_writer(void)
{
    struct fh_hash *h = fh_hash_create("h.sw", 1000, 4, NULL, 0,
                                       FH_HASH_F_SINGLE_WRITER);
    uint32_t k;
    CHECK(h, "create");
    for (k = 0; k < 1000; k++)
        CHECK(fh_hash_add_key_data(h, &k, k) == (int32_t)k, "positions in order");
    k = 1000;
    CHECK(fh_hash_add_key(h, &k) == -ENOSPC, "full");
    k = 500;
    CHECK(fh_hash_del_key(h, &k) == 500 && fh_hash_lookup(h, &k) == -ENOENT, "del");
}

/*
 * Overflow chains that run off the end of the bucket array and wrap to
 * bucket 0.  A 30-entry table has 5 buckets (40 slots; not a power of two);
 * 30 keys sharing one hash fill their home bucket and overflow into the
 * next three, so for homes 2..4 the chain wraps.  Each of 64 hashes (which
 * between them have every bucket as home) gets the full treatment: fill to
 * capacity, ENOSPC, every key found (one by one and in bulk), the home
 * bucket's keys deleted and the rest still found past the hole, the deleted
 * keys added back, iterate seeing each key once.
 */
static void test_wrapping_chains(void)
{
    enum { N = 30 };
    struct fh_hash *h = fh_hash_create("h.wrap", N, 8, NULL, 0, 0);
    unsigned char key[8], keys[N * 8];
    int32_t pos[N], bpos[N];
    uint64_t bdata[N];
    uint32_t sigs[N];

    CHECK(h, "create h.wrap");
    for (uint32_t t = 0; t < 64; t++) {
        uint32_t sig = t * 0x04000001u + 7;
        char seen[N] = {0};
        const void *kp;
        uint64_t d;
        uint32_t next = 0;
        int32_t p;
        int n = 0;

        CHECK(fh_hash_reset(h) == 0, "reset");
        for (uint32_t k = 0; k < N; k++) {
            make_key(key, 8, k);
            pos[k] = fh_hash_add_key_with_hash_data(h, key, sig, 1000 + k);
            CHECK(pos[k] >= 0 && pos[k] < N, "hash %#x: add %u -> %d", sig, k, pos[k]);
            CHECK(!seen[pos[k]], "hash %#x: position %d twice", sig, pos[k]);
            seen[pos[k]] = 1;
        }
        make_key(key, 8, N);
        CHECK(fh_hash_add_key_with_hash(h, key, sig) == -ENOSPC, "hash %#x: full", sig);
        for (uint32_t k = 0; k < N; k++) {
            make_key(key, 8, k);
            CHECK(fh_hash_lookup_with_hash_data(h, key, sig, &d) == pos[k] &&
                  d == 1000 + k, "hash %#x: lookup %u", sig, k);
            memcpy(keys + k * 8, key, 8);
            sigs[k] = sig;
        }
        CHECK(fh_hash_lookup_bulk_with_hash(h, keys, sigs, N, bpos, bdata) == N,
              "hash %#x: bulk", sig);
        for (uint32_t k = 0; k < N; k++)
            CHECK(bpos[k] == pos[k] && bdata[k] == 1000 + k, "hash %#x: bulk %u", sig, k);
        /* The first 8 went into the home bucket: empty it. */
        for (uint32_t k = 0; k < 8; k++) {
            make_key(key, 8, k);
            CHECK(fh_hash_del_key_with_hash(h, key, sig) == pos[k], "hash %#x: del %u", sig, k);
        }
        for (uint32_t k = 0; k < N; k++) {
            make_key(key, 8, k);
            p = fh_hash_lookup_with_hash(h, key, sig);
            CHECK(k < 8 ? p == -ENOENT : p == pos[k],
                  "hash %#x: after deletes, lookup %u -> %d", sig, k, p);
        }
        CHECK(fh_hash_count(h) == N - 8, "count after deletes");
        for (uint32_t k = 0; k < 8; k++) {
            make_key(key, 8, k);
            CHECK(fh_hash_add_key_with_hash_data(h, key, sig, 1000 + k) >= 0,
                  "hash %#x: re-add %u", sig, k);
        }
        while ((p = fh_hash_iterate(h, &kp, &d, &next)) >= 0) {
            uint32_t k;
            memcpy(&k, kp, 4);
            CHECK(k < N && d == 1000 + k && fh_hash_lookup_with_hash(h, kp, sig) == p,
                  "hash %#x: iterate gave key %u", sig, k);
            n++;
        }
        CHECK(n == N && fh_hash_count(h) == N, "hash %#x: iterate saw %d", sig, n);
    }
}

int main(void)
{
    int fds;

    CHECK(fh_arena_create(256u << 20, 0, "test") == 0, "arena");
    fds = count_fds();
    test_crc32c();
    test_create();
    random_ops("h.r16", 1000, 16, NULL, 3000, 30000);
    random_ops("h.r13", 500, 13, fnv_hash, 1500, 20000);
    random_ops("h.r4", 300, 4, NULL, 700, 20000);
    random_ops("h.r40", 200, 40, NULL, 600, 10000);
    random_ops("h.const", 60, 8, const_hash, 150, 10000);
    random_ops("h.tiny", 1, 8, NULL, 3, 2000);
    test_wrapping_chains();
    test_single_writer();
    test_fork_lookup();
    test_module_mismatch();
    test_concurrent();
    test_writer_death();
    CHECK(count_fds() == fds, "fd leak: %d -> %d", fds, count_fds());
    CHECK(waitpid(-1, NULL, WNOHANG) == -1 && errno == ECHILD, "children left");
    printf("test_hash: ok\n");
    return 0;
}
