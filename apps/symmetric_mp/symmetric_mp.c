/*
 * symmetric_mp - DPDK's symmetric_mp sample on forkhost, in C: N processes
 * of one program, all alike, each serving its own receive queue on every
 * port.
 *
 *   symmetric_mp [forkhost options] -- [-p PORTMASK] --num-procs N
 *                --proc-id I [--count K] [--flows F]
 *
 * Start N of them (--proc-type=auto: whichever comes first is the primary;
 * the primary need not be proc 0).  The primary creates, by name:
 *
 *   SMP_MBUF_POOL    the packet pool (struct mp_pkt, "mbufs")
 *   SMP_P<p>_Q<q>    receive queue q of port p: one ring per port and process
 *   SMP_FLOWS        the flow table: F flows, hashed by smp_flow_hash, a
 *                    function of this executable whose address the table
 *                    keeps in shared memory
 *   SMP_STATE        the run's configuration and its shared counters
 *
 * and the secondaries look them up.  There is no NIC: each process also
 * plays the wire, generating K packets over the F flows and the ports;
 * "RSS" sends each packet to queue smp_flow_hash(flow) % N of its port,
 * through the table's stored function pointer (fh_hash_hash), so every
 * process calls the primary's function.  Each process then reads its
 * queues, looks every packet's flow up in the table (fh_hash_lookup_data:
 * the stored pointer again), counts it, and "transmits" it on the paired
 * port (0<->1, 2<->3, ...), which here means counting it and freeing the
 * buffer.
 *
 * A process stops when every process has generated its packets and its
 * own queues are empty, or on SIGINT/SIGTERM; it then prints DPDK's
 * per-port lines and a summary.  The primary waits for the others to
 * finish before it ends the prefix (fh_cleanup).  Exit 0; 1 for bad
 * arguments, a missing object, or a run (not stopped by a signal) whose
 * counts do not add up.
 */
#define _GNU_SOURCE         /* dladdr */
#include <dlfcn.h>
#include <getopt.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/mp_sample.h"

#define PROG "symmetric_mp"

#define MAX_PROCS     32u
#define MAX_PORTS     8u
#define NB_MBUFS      (64u * 1024u)
#define MBUF_CACHE    256u
#define PKT_BURST     32u
#define RX_RING_SIZE  1024u
#define DEFAULT_COUNT 100000ul
#define DEFAULT_FLOWS 64ul
#define MAX_FLOWS     65536ul

#define POOL_NAME  "SMP_MBUF_POOL"
#define FLOWS_NAME "SMP_FLOWS"
#define STATE_NAME "SMP_STATE"

/* The run, in a memzone.  The primary writes the configuration, then
 * publishes `ready` (release); a secondary reads the configuration after
 * seeing it (acquire). */
struct smp_state {
    uint32_t num_procs;
    uint32_t num_ports;
    uint32_t ports[MAX_PORTS];
    uint32_t flows;
    _Atomic uint32_t ready;
    /* Processes that generated all their packets; each adds 1 (release)
     * after its last enqueue and its last `expected` increment. */
    alignas(64) _Atomic uint32_t gens_done;
    /* Processes that printed their statistics; the primary waits for all. */
    _Atomic uint32_t finished;
    /* The pid serving each proc-id, 0 when none (one process per id). */
    alignas(64) _Atomic int32_t owner[MAX_PROCS];
    /* Packets generated for queue q of any port, over every generator.
     * Relaxed increments; read after gens_done == num_procs (acquire). */
    alignas(64) _Atomic uint64_t expected[MAX_PROCS];
};

/* Statistics per port (by position in state->ports), this process only, as
 * DPDK's sample keeps them.  Drop stays 0: the emulated TX always sends. */
struct port_stats {
    uint64_t rx, tx, drop;
};

static struct smp_state *state;
static struct fh_mempool *pool;
static struct fh_hash *flows;
static struct fh_ring *rxq[MAX_PORTS][MAX_PROCS];
static struct port_stats pstats[MAX_PORTS];
static uint64_t generated, flow_hits, flow_misses, misrouted;
/*
 * The flow table's hash function (mp_fnv1a_murmur: its low bits pick the
 * queue).  It lives in this executable: the table stores its address, and
 * every process calls it through that pointer.
 */
uint32_t smp_flow_hash(const void *key, uint32_t key_len, uint32_t init_val)
{
    return mp_fnv1a_murmur(key, key_len, init_val);
}

static void usage(const char *msg)
{
    fprintf(stderr, "%s: %s\n"
            "usage: %s [forkhost options] -- [-p PORTMASK] --num-procs N "
            "--proc-id I [--count K] [--flows F]\n"
            "  -p           hex mask of the emulated ports (default 3: ports 0 and 1)\n"
            "  --num-procs  processes in the run, 1..%u (a secondary may omit it)\n"
            "  --proc-id    this process's queue, 0..N-1\n"
            "  --count      packets this process generates (default %lu)\n"
            "  --flows      flows in the table, 1..%lu (primary; default %lu)\n",
            PROG, msg, PROG, MAX_PROCS, DEFAULT_COUNT, MAX_FLOWS, DEFAULT_FLOWS);
    mp_exit_failure();
}

struct smp_args {
    unsigned long portmask, num_procs, proc_id, count, flows;
};

static void parse_args(int argc, char **argv, struct smp_args *a)
{
    enum { OPT_NUM_PROCS = 256, OPT_PROC_ID, OPT_COUNT, OPT_FLOWS };
    static const struct option lgopts[] = {
        { "num-procs", required_argument, NULL, OPT_NUM_PROCS },
        { "proc-id",   required_argument, NULL, OPT_PROC_ID },
        { "count",     required_argument, NULL, OPT_COUNT },
        { "flows",     required_argument, NULL, OPT_FLOWS },
        { NULL, 0, NULL, 0 },
    };
    long v;
    int opt;

    a->portmask = 0x3;
    a->num_procs = 0;
    a->proc_id = MAX_PROCS;
    a->count = DEFAULT_COUNT;
    a->flows = DEFAULT_FLOWS;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "p:", lgopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            if ((v = mp_parse_uint(optarg, 16, 1, (1ul << MAX_PORTS) - 1)) < 0)
                usage("invalid port mask");
            a->portmask = (unsigned long)v;
            break;
        case OPT_NUM_PROCS:
            if ((v = mp_parse_uint(optarg, 10, 1, MAX_PROCS)) < 0)
                usage("invalid --num-procs");
            a->num_procs = (unsigned long)v;
            break;
        case OPT_PROC_ID:
            if ((v = mp_parse_uint(optarg, 10, 0, MAX_PROCS - 1)) < 0)
                usage("invalid --proc-id");
            a->proc_id = (unsigned long)v;
            break;
        case OPT_COUNT:
            if ((v = mp_parse_uint(optarg, 10, 0, 1ul << 40)) < 0)
                usage("invalid --count");
            a->count = (unsigned long)v;
            break;
        case OPT_FLOWS:
            if ((v = mp_parse_uint(optarg, 10, 1, MAX_FLOWS)) < 0)
                usage("invalid --flows");
            a->flows = (unsigned long)v;
            break;
        default:
            usage("cannot parse the arguments");
        }
    }
    if (optind < argc)
        usage("unexpected argument");
    if (a->proc_id == MAX_PROCS)
        usage("missing --proc-id");
    if (fh_proc_type() == FH_PROC_PRIMARY && a->num_procs == 0)
        usage("missing --num-procs");
    if (__builtin_popcountl(a->portmask) & 1)
        usage("the port mask must name an even number of ports");
}

static void primary_init(const struct smp_args *a)
{
    const struct fh_memzone *mz;
    uint32_t n = 0;

    pool = fh_mempool_create(POOL_NAME, NB_MBUFS, sizeof(struct mp_pkt),
                             MBUF_CACHE, 0);
    if (pool == NULL)
        mp_die(PROG, "cannot create mbuf pool: %s", strerror(errno));
    flows = fh_hash_create(FLOWS_NAME, (uint32_t)a->flows,
                           sizeof(struct mp_flow_key), smp_flow_hash, 0, 0);
    if (flows == NULL)
        mp_die(PROG, "cannot create the flow table: %s (%s)", strerror(errno),
               fh_hash_error());
    for (uint32_t f = 0; f < a->flows; f++) {
        struct mp_flow_key k = mp_flow_key_of(f);

        if (fh_hash_add_key_data(flows, &k, f) < 0)
            mp_die(PROG, "cannot add flow %u: %s", f, fh_hash_error());
    }
    mz = fh_memzone_reserve(STATE_NAME, sizeof *state, 0, 0);
    if (mz == NULL)
        mp_die(PROG, "cannot reserve " STATE_NAME ": %s", strerror(errno));
    state = mz->addr;
    for (uint32_t p = 0; p < MAX_PORTS; p++)
        if (a->portmask & (1ul << p))
            state->ports[n++] = p;
    state->num_ports = n;
    state->num_procs = (uint32_t)a->num_procs;
    state->flows = (uint32_t)a->flows;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t q = 0; q < state->num_procs; q++) {
            char name[FH_RING_NAMESIZE];

            snprintf(name, sizeof name, "SMP_P%u_Q%u", state->ports[i], q);
            /* Any process may generate into it; only process q reads it. */
            rxq[i][q] = fh_ring_create(name, RX_RING_SIZE, sizeof(void *),
                                       FH_RING_F_SC_DEQ);
            if (rxq[i][q] == NULL)
                mp_die(PROG, "cannot create ring %s: %s", name, strerror(errno));
        }
    /* Release: the configuration and every object above are complete
     * before a secondary that sees ready reads them. */
    atomic_store_explicit(&state->ready, 1, memory_order_release);
}

static void secondary_init(const struct smp_args *a)
{
    const struct fh_memzone *mz = MP_LOOKUP_WAIT(fh_memzone_lookup(STATE_NAME));
    unsigned ms = 0;

    if (mz == NULL)
        mp_die(PROG, "no " STATE_NAME " - is the primary running?");
    state = mz->addr;
    /* Acquire: pairs with the primary's release store of ready. */
    while (!atomic_load_explicit(&state->ready, memory_order_acquire)) {
        struct timespec ts = { 0, 1000000 };

        if (++ms > MP_LOOKUP_WAIT_MS)
            mp_die(PROG, "the primary did not finish its setup");
        nanosleep(&ts, NULL);
    }
    if (a->num_procs != 0 && a->num_procs != state->num_procs)
        mp_die(PROG, "--num-procs %lu, but the primary runs %u processes",
               a->num_procs, state->num_procs);
    pool = fh_mempool_lookup(POOL_NAME);
    flows = fh_hash_find_existing(FLOWS_NAME);
    if (pool == NULL || flows == NULL)
        mp_die(PROG, "cannot find " POOL_NAME " or " FLOWS_NAME);
    for (uint32_t i = 0; i < state->num_ports; i++)
        for (uint32_t q = 0; q < state->num_procs; q++) {
            char name[FH_RING_NAMESIZE];

            snprintf(name, sizeof name, "SMP_P%u_Q%u", state->ports[i], q);
            if ((rxq[i][q] = fh_ring_lookup(name)) == NULL)
                mp_die(PROG, "cannot find ring %s", name);
        }
}

/* The wire and RSS: up to PKT_BURST new packets; how many went out. */
static unsigned generate(uint32_t me, uint64_t left, uint64_t *seq)
{
    void *pkts[PKT_BURST];
    unsigned n = left < PKT_BURST ? (unsigned)left : PKT_BURST, sent = 0;

    if (fh_mempool_get_bulk(pool, pkts, n) < 0)
        return 0;                       /* all buffers in flight: drain first */
    for (; sent < n; sent++) {
        struct mp_pkt *pkt = pkts[sent];
        uint32_t port_idx = (uint32_t)(*seq % state->num_ports);
        uint32_t flow = (uint32_t)((*seq * 7 + me) % state->flows);
        uint32_t sig, q;

        pkt->key = mp_flow_key_of(flow);
        pkt->port = (uint16_t)state->ports[port_idx];
        pkt->len = 64;
        pkt->seq = (uint32_t)*seq;
        /* Through the function pointer the primary stored in the table. */
        if (fh_hash_hash(flows, &pkt->key, &sig) < 0)
            mp_die(PROG, "cannot hash: %s", fh_hash_error());
        q = sig % state->num_procs;
        if (fh_ring_mp_enqueue(rxq[port_idx][q], &pkts[sent]) < 0)
            break;                      /* queue full: drain, come back */
        /* Relaxed: published by the release add to gens_done. */
        atomic_fetch_add_explicit(&state->expected[q], 1, memory_order_relaxed);
        ++*seq;
    }
    if (sent < n)
        fh_mempool_put_bulk(pool, pkts + sent, n - sent);
    return sent;
}

/* Read this process's queue of every port; how many packets came. */
static unsigned receive(uint32_t me)
{
    unsigned total = 0;

    for (uint32_t i = 0; i < state->num_ports; i++) {
        void *pkts[PKT_BURST];
        unsigned n = fh_ring_sc_dequeue_burst(rxq[i][me], pkts, PKT_BURST, NULL);

        for (unsigned j = 0; j < n; j++) {
            struct mp_pkt *pkt = pkts[j];
            uint64_t flow;
            uint32_t sig;

            if (fh_hash_lookup_data(flows, &pkt->key, &flow) >= 0)
                flow_hits++;
            else
                flow_misses++;
            if (fh_hash_hash(flows, &pkt->key, &sig) < 0 ||
                sig % state->num_procs != me)
                misrouted++;
            pstats[i].rx++;
            pstats[i ^ 1].tx++;           /* the paired port, by position */
        }
        if (n > 0)
            fh_mempool_put_bulk(pool, pkts, n);
        total += n;
    }
    return total;
}

int main(int argc, char **argv)
{
    const struct timespec idle = { 0, 100000 };   /* 100 us */
    struct smp_args a;
    Dl_info self;
    uint64_t left, seq = 0, rx = 0, expected;
    uint32_t me;
    int32_t owner;
    int ret, primary, ok;

    ret = mp_fh_init(PROG, argc, argv);
    argc -= ret;
    argv += ret;
    parse_args(argc, argv, &a);

    primary = fh_proc_type() == FH_PROC_PRIMARY;
    if (primary)
        primary_init(&a);
    else
        secondary_init(&a);
    me = (uint32_t)a.proc_id;
    if (me >= state->num_procs)
        mp_die(PROG, "--proc-id %u, but the run has %u processes (0..%u)",
               me, state->num_procs, state->num_procs - 1);
    if ((owner = mp_claim(&state->owner[me])) != 0)
        mp_die(PROG, "proc-id %u is already served by pid %d", me, (int)owner);
    if (fh_hash_check(flows) < 0)
        mp_die(PROG, "cannot call the flow hash function: %s", fh_hash_error());

    mp_catch_stop();

    if (dladdr((void *)smp_flow_hash, &self) == 0)
        mp_die(PROG, "dladdr cannot place smp_flow_hash");
    /* The table's function is the primary's smp_flow_hash, in the primary's
     * executable, which a secondary's main runs too: the same base in
     * every process. */
    printf("%s: proc %u of %u: %s (pid %d, prefix '%s'); the flow table hashes "
           "with the function in %s loaded at 0x%llx; this process runs the copy "
           "loaded at %p\n", PROG, me, state->num_procs,
           primary ? "primary" : "secondary", (int)getpid(), fh_file_prefix(),
           fh_hash_fn_module(flows), (unsigned long long)fh_hash_fn_base(flows),
           self.dli_fbase);

    left = a.count;
    if (left == 0)
        atomic_fetch_add_explicit(&state->gens_done, 1, memory_order_release);
    while (!mp_stop_signal) {
        unsigned moved = 0, got;
        int all_sent;

        if (left > 0) {
            unsigned sent = generate(me, left, &seq);

            generated += sent;
            left -= sent;
            moved += sent;
            /* Release: this process's enqueues and expected[] counts come
             * before the add, for whoever sees the total. */
            if (left == 0)
                atomic_fetch_add_explicit(&state->gens_done, 1,
                                          memory_order_release);
        }
        /* Acquire: pairs with the adds above, in every process.  Read
         * before the dequeue, so an empty queue after it is final. */
        all_sent = atomic_load_explicit(&state->gens_done, memory_order_acquire)
                   == state->num_procs;
        got = receive(me);
        rx += got;
        moved += got;
        if (all_sent && got == 0)
            break;
        if (moved == 0)
            nanosleep(&idle, NULL);
    }

    if (mp_stop_signal)
        printf("\nExiting on signal %d\n\n", (int)mp_stop_signal);
    for (uint32_t i = 0; i < state->num_ports; i++) {
        printf("Port %u: RX - %llu, TX - %llu, Drop - %llu\n", state->ports[i],
               (unsigned long long)pstats[i].rx,
               (unsigned long long)pstats[i].tx,
               (unsigned long long)pstats[i].drop);
    }
    /* Relaxed: final once gens_done was seen complete (acquire above). */
    expected = atomic_load_explicit(&state->expected[me], memory_order_relaxed);
    ok = mp_stop_signal || (rx == expected && flow_misses == 0 && misrouted == 0);
    printf("%s: proc %u: generated %llu, received %llu (expected %llu), "
           "flow hits %llu, misses %llu, misrouted %llu: %s\n", PROG, me,
           (unsigned long long)generated, (unsigned long long)rx,
           (unsigned long long)expected, (unsigned long long)flow_hits,
           (unsigned long long)flow_misses, (unsigned long long)misrouted,
           mp_stop_signal ? "stopped" : ok ? "ok" : "MISMATCH");

    /* Release the proc-id, then count this process as finished (release:
     * its statistics are final). */
    mp_unclaim(&state->owner[me]);
    atomic_fetch_add_explicit(&state->finished, 1, memory_order_release);
    if (primary) {
        /* Ending the prefix ends the secondaries: wait for them first. */
        while (!mp_stop_signal &&
               atomic_load_explicit(&state->finished, memory_order_acquire)
               < state->num_procs)
            nanosleep(&idle, NULL);
        if (fh_cleanup() < 0)
            mp_die(PROG, "cleanup: %s", strerror(errno));
    }
    return ok ? 0 : MP_EXIT_FAILURE;
}
