/*
 * mp_sample.h - what the C multi-process samples (simple_mp, symmetric_mp,
 * client_server_mp) share: starting forkhost, stopping on a signal, the
 * emulated packet, its flow key and hash, and looking up an object that
 * another process may still be creating.
 *
 * There is no NIC in these samples.  A "packet" is a small mbuf-like
 * object from a mempool whose address travels through rings; its flow key
 * is what a real application would parse out of the headers.
 */
#ifndef MP_SAMPLE_H
#define MP_SAMPLE_H

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "forkhost.h"
#include "forkhost/init.h"

/* Exit status of a sample for bad arguments or a missing shared object,
 * as DPDK's samples exit through rte_exit(EXIT_FAILURE, ...).  fh_init's
 * own failures exit 125 or 126 (forkhost/init.h). */
#define MP_EXIT_FAILURE 1

/* How long a secondary waits for an object the primary has not created
 * yet.  With --proc-type=auto the processes start together, so a
 * secondary's fh_init can return before the primary's main got past its
 * creation calls; DPDK's secondaries would fail there instead. */
#define MP_LOOKUP_WAIT_MS 10000

/* A flow: the 5-tuple a real application reads from the packet headers.
 * 16 bytes, no padding left uninitialised: it is a hash key, compared
 * byte by byte. */
struct mp_flow_key {
    uint32_t src_ip;
    uint32_t dst_ip;
    uint16_t src_port;
    uint16_t dst_port;
    uint8_t  proto;
    uint8_t  pad[3];
};

/* The mbuf stand-in: a pool object whose address goes through rings. */
struct mp_pkt {
    uint16_t port;            /* the port it was received on */
    uint16_t len;
    uint32_t seq;             /* per sender */
    struct mp_flow_key key;
};

/* The key of flow number f: distinct for every f < 2^16. */
static inline struct mp_flow_key mp_flow_key_of(uint32_t f)
{
    struct mp_flow_key k;

    memset(&k, 0, sizeof k);
    k.src_ip = 0x0a000000u | f;          /* 10.0.x.y */
    k.dst_ip = 0xc0a80001u;              /* 192.168.0.1 */
    k.src_port = (uint16_t)(1024u + f);
    k.dst_port = 80;
    k.proto = 17;                        /* UDP */
    return k;
}

/* Exit MP_EXIT_FAILURE after fh_init; a primary ends its prefix first
 * (fh_cleanup: its runtime files go, its secondaries get SIGTERM). */
static inline void mp_exit_failure(void)
{
    fflush(stdout);
    fh_cleanup();
    exit(MP_EXIT_FAILURE);
}

/* Print "PROGRAM: message" on stderr and exit, as mp_exit_failure. */
#define mp_die(prog, ...) do {                                             \
        fprintf(stderr, "%s: ", (prog));                                   \
        fprintf(stderr, __VA_ARGS__);                                      \
        fputc('\n', stderr);                                               \
        mp_exit_failure();                                                 \
    } while (0)

/* fh_init, where DPDK's samples call rte_eal_init: exit on failure, else
 * how many arguments it used (the sample's own follow them).  stdout is
 * made line-buffered, so that each line shows up whole and at once when
 * several processes write to one pipe. */
static inline int mp_fh_init(const char *prog, int argc, char **argv)
{
    int ret = fh_init(argc, argv);

    if (ret < 0)
        mp_die(prog, "cannot init forkhost");
    setvbuf(stdout, NULL, _IOLBF, 0);
    return ret;
}

/* The signal (SIGINT or SIGTERM) that asked the sample to stop, 0 until
 * one came: DPDK's samples' force_quit.  Set once mp_catch_stop() ran. */
static volatile sig_atomic_t mp_stop_signal __attribute__((unused));

static inline void mp_on_stop(int sig)
{
    mp_stop_signal = sig;
}

/* Stop on SIGINT and SIGTERM (the primary's end sends a secondary
 * SIGTERM): mp_stop_signal says which came. */
static inline void mp_catch_stop(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mp_on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* The flow tables' hash: FNV-1a over the key, then a murmur3 finaliser so
 * that the low bits (the queue, the client) depend on every byte.  A
 * sample hands the table a function of its own executable that returns
 * this: the table keeps that function's address, and every process calls
 * it through the pointer. */
static inline uint32_t mp_fnv1a_murmur(const void *key, uint32_t key_len,
                                       uint32_t init_val)
{
    const unsigned char *p = key;
    uint32_t h = 2166136261u ^ init_val;

    for (uint32_t i = 0; i < key_len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* Evaluate the lookup expression `expr` (fh_ring_lookup(name), ...) until
 * it is not NULL or MP_LOOKUP_WAIT_MS passed; its value, or NULL. */
#define MP_LOOKUP_WAIT(expr) ({                                            \
        __typeof__(expr) mp_obj_ = (expr);                                 \
        for (unsigned mp_ms_ = 0; mp_obj_ == NULL &&                       \
             mp_ms_ < MP_LOOKUP_WAIT_MS; mp_ms_++) {                       \
            struct timespec mp_ts_ = { 0, 1000000 };                       \
            nanosleep(&mp_ts_, NULL);                                      \
            mp_obj_ = (expr);                                              \
        }                                                                  \
        mp_obj_;                                                           \
    })

/* Parse an unsigned option value (base 10 or 16) in [min, max]; -1 if it
 * is not one. */
static inline long mp_parse_uint(const char *s, int base, unsigned long min,
                                 unsigned long max)
{
    char *end;
    unsigned long v;

    if (s == NULL || *s == '\0' || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    errno = 0;
    v = strtoul(s, &end, base);
    if (errno || *end != '\0' || v < min || v > max)
        return -1;
    return (long)v;
}

/* Claim *slot (a pid; 0 = free) for this process, one process per id: a
 * slot whose process is gone (killed before it could free it) is taken
 * over.  0, or the pid of the live process that holds it. */
static inline int32_t mp_claim(_Atomic int32_t *slot)
{
    int32_t owner = 0;

    /* Acq_rel/acquire: the claim itself orders nothing else; a failed CAS
     * leaves the holder in owner. */
    while (!atomic_compare_exchange_strong_explicit(slot, &owner,
                                                    (int32_t)getpid(),
                                                    memory_order_acq_rel,
                                                    memory_order_acquire))
        if (kill(owner, 0) == 0 || errno != ESRCH)
            return owner;
    return 0;
}

/* Free a slot claimed by mp_claim.  Relaxed: nothing waits on it. */
static inline void mp_unclaim(_Atomic int32_t *slot)
{
    atomic_store_explicit(slot, 0, memory_order_relaxed);
}

#endif /* MP_SAMPLE_H */
