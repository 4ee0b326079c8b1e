/*
 * mp_server - the server of DPDK's client_server_mp sample on forkhost, in
 * C: the primary, which hands packets to its clients through one ring per
 * client.
 *
 *   mp_server [forkhost options] -- [-p PORTMASK] -n NUM_CLIENTS
 *             [--count K] [--dist rr|hash] [--flows F]
 *
 * It creates, by name: the pool MProc_pktmbuf_pool, the rings
 * MProc_Client_<i>_RX (one producer: this server; one consumer: client i),
 * the memzone MProc_port_info (the configuration and the statistics the
 * clients write) and the flow table MProc_flow_table, whose hash function
 * is mp_flow_hash below: the table keeps its address in shared memory and
 * every client, a different executable, calls this server's function
 * through it.
 *
 * There is no NIC: the server generates K packets (0: until stopped) over
 * F flows, received in turn on each port of PORTMASK, and sends each to a
 * client, round robin as DPDK does (--dist rr) or by flow (--dist hash:
 * mp_flow_hash(flow) mod n, through the table's stored pointer).  When a
 * client's ring is full the server waits for room (DPDK's server, fed by a
 * NIC, drops instead), so nothing is lost and the counts add up.
 *
 * It runs until SIGINT or SIGTERM, then prints the port and client
 * statistics and ends the prefix (fh_cleanup: running clients get
 * SIGTERM).  Exit 0; 1 for bad arguments or a failed setup.
 */
#define _GNU_SOURCE         /* dladdr */
#include <dlfcn.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define PROG "mp_server"

#define NB_MBUFS              (16u * 1024u)
#define MBUF_CACHE            256u
#define CLIENT_QUEUE_RINGSIZE 2048u
#define DEFAULT_FLOWS         64ul
#define MAX_FLOWS             65536ul

static struct port_info *ports;
static struct fh_mempool *pktmbuf_pool;
static struct fh_hash *flow_table;
static struct fh_ring *client_rx_q[MAX_CLIENTS];
static unsigned num_clients;
static unsigned long num_flows = DEFAULT_FLOWS;
static uint64_t count;

/* Per client, this process only (as in DPDK's server). */
static struct {
    uint64_t rx;            /* packets put on its ring */
    uint64_t rx_drop;       /* stays 0: the server waits for room */
} client_stats[MAX_CLIENTS];

static struct {
    void *buffer[PKT_BURST];
    unsigned count;
} cl_rx_buf[MAX_CLIENTS];

/*
 * The flow table's hash function (mp_fnv1a_murmur: its low bits pick the
 * client with --dist hash).  The clients call it through the pointer
 * stored in the table.
 */
uint32_t mp_flow_hash(const void *key, uint32_t key_len, uint32_t init_val)
{
    return mp_fnv1a_murmur(key, key_len, init_val);
}

static void usage(const char *msg)
{
    fprintf(stderr, "%s: %s\n"
            "usage: %s [forkhost options] -- [-p PORTMASK] -n NUM_CLIENTS "
            "[--count K] [--dist rr|hash] [--flows F]\n"
            "  -p, --portmask     hex mask of the emulated ports (default 3)\n"
            "  -n, --num-clients  clients, 1..%u\n"
            "  --count            packets to send, then wait for SIGINT (default 0: no end)\n"
            "  --dist             rr: round robin (default); hash: by flow\n"
            "  --flows            flows in the table, 1..%lu (default %lu)\n",
            PROG, msg, PROG, MAX_CLIENTS, MAX_FLOWS, DEFAULT_FLOWS);
    mp_exit_failure();
}

static void parse_app_args(int argc, char **argv, unsigned long *portmask,
                           unsigned *dist)
{
    enum { OPT_COUNT = 256, OPT_DIST, OPT_FLOWS };
    static const struct option lgopts[] = {
        { "portmask",    required_argument, NULL, 'p' },
        { "num-clients", required_argument, NULL, 'n' },
        { "count",       required_argument, NULL, OPT_COUNT },
        { "dist",        required_argument, NULL, OPT_DIST },
        { "flows",       required_argument, NULL, OPT_FLOWS },
        { NULL, 0, NULL, 0 },
    };
    long v;
    int opt;

    *portmask = 0x3;
    *dist = DIST_ROUND_ROBIN;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "p:n:", lgopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            if ((v = mp_parse_uint(optarg, 16, 1, (1ul << MAX_PORTS) - 1)) < 0)
                usage("invalid port mask");
            *portmask = (unsigned long)v;
            break;
        case 'n':
            if ((v = mp_parse_uint(optarg, 10, 1, MAX_CLIENTS)) < 0)
                usage("invalid number of clients");
            num_clients = (unsigned)v;
            break;
        case OPT_COUNT:
            if ((v = mp_parse_uint(optarg, 10, 0, 1ul << 40)) < 0)
                usage("invalid --count");
            count = (uint64_t)v;
            break;
        case OPT_DIST:
            if (strcmp(optarg, "rr") == 0)
                *dist = DIST_ROUND_ROBIN;
            else if (strcmp(optarg, "hash") == 0)
                *dist = DIST_HASH;
            else
                usage("--dist is rr or hash");
            break;
        case OPT_FLOWS:
            if ((v = mp_parse_uint(optarg, 10, 1, MAX_FLOWS)) < 0)
                usage("invalid --flows");
            num_flows = (unsigned long)v;
            break;
        default:
            usage("cannot parse the arguments");
        }
    }
    if (optind < argc)
        usage("unexpected argument");
    if (num_clients == 0)
        usage("missing -n NUM_CLIENTS");
}

static void init(unsigned long portmask, unsigned dist)
{
    const struct fh_memzone *mz;

    pktmbuf_pool = fh_mempool_create(PKTMBUF_POOL_NAME, NB_MBUFS,
                                     sizeof(struct mp_pkt), MBUF_CACHE, 0);
    if (pktmbuf_pool == NULL)
        mp_die(PROG, "cannot create the mbuf pool: %s", strerror(errno));
    flow_table = fh_hash_create(FLOW_TABLE_NAME, (uint32_t)num_flows,
                                sizeof(struct mp_flow_key), mp_flow_hash, 0, 0);
    if (flow_table == NULL)
        mp_die(PROG, "cannot create the flow table: %s (%s)", strerror(errno),
               fh_hash_error());
    for (uint32_t f = 0; f < num_flows; f++) {
        struct mp_flow_key k = mp_flow_key_of(f);

        if (fh_hash_add_key_data(flow_table, &k, f) < 0)
            mp_die(PROG, "cannot add flow %u: %s", f, fh_hash_error());
    }
    for (unsigned i = 0; i < num_clients; i++) {
        char name[FH_RING_NAMESIZE];

        client_rx_q[i] = fh_ring_create(get_rx_queue_name(name, i),
                                        CLIENT_QUEUE_RINGSIZE, sizeof(void *),
                                        FH_RING_F_SP_ENQ | FH_RING_F_SC_DEQ);
        if (client_rx_q[i] == NULL)
            mp_die(PROG, "cannot create ring %s: %s", name, strerror(errno));
    }
    mz = fh_memzone_reserve(MZ_PORT_INFO, sizeof *ports, 0, 0);
    if (mz == NULL)
        mp_die(PROG, "cannot reserve " MZ_PORT_INFO ": %s", strerror(errno));
    ports = mz->addr;
    for (unsigned p = 0; p < MAX_PORTS; p++)
        if (portmask & (1ul << p))
            ports->id[ports->num_ports++] = (uint16_t)p;
    ports->num_clients = num_clients;
    ports->dist = dist;
    /* Release: the objects and the configuration are complete before a
     * client that sees ready reads them. */
    atomic_store_explicit(&ports->ready, 1, memory_order_release);
}

/* Send client's buffered packets, waiting for room in its ring (or for a
 * stop signal: then they go back to the pool). */
static void flush_rx_queue(unsigned client)
{
    const struct timespec pause = { 0, 100000 };   /* 100 us */
    unsigned n = cl_rx_buf[client].count;

    if (n == 0)
        return;
    while (fh_ring_sp_enqueue_bulk(client_rx_q[client], cl_rx_buf[client].buffer,
                                   n, NULL) == 0) {
        if (mp_stop_signal) {
            fh_mempool_put_bulk(pktmbuf_pool, cl_rx_buf[client].buffer, n);
            cl_rx_buf[client].count = 0;
            return;
        }
        nanosleep(&pause, NULL);
    }
    client_stats[client].rx += n;
    cl_rx_buf[client].count = 0;
}

/* Generate up to PKT_BURST packets received on port index port_idx and
 * hand them out; how many. */
static unsigned process_packets(unsigned port_idx, uint64_t *seq, uint64_t left)
{
    static unsigned client;     /* round robin, as DPDK's */
    void *pkts[PKT_BURST];
    unsigned n = left < PKT_BURST ? (unsigned)left : PKT_BURST;

    if (fh_mempool_get_bulk(pktmbuf_pool, pkts, n) < 0)
        return 0;               /* every buffer is with a client */
    for (unsigned i = 0; i < n; i++) {
        struct mp_pkt *pkt = pkts[i];
        unsigned to;

        pkt->key = mp_flow_key_of((uint32_t)(*seq % num_flows));
        pkt->port = ports->id[port_idx];
        pkt->len = 64;
        pkt->seq = (uint32_t)(*seq)++;
        if (ports->dist == DIST_HASH) {
            uint32_t sig;

            if (fh_hash_hash(flow_table, &pkt->key, &sig) < 0)
                mp_die(PROG, "cannot hash: %s", fh_hash_error());
            to = sig % num_clients;
        } else {
            to = client;
            if (++client == num_clients)
                client = 0;
        }
        cl_rx_buf[to].buffer[cl_rx_buf[to].count++] = pkt;
        if (cl_rx_buf[to].count == PKT_BURST)
            flush_rx_queue(to);
    }
    for (unsigned i = 0; i < num_clients; i++)
        flush_rx_queue(i);
    /* Relaxed: a statistic, written by this thread only. */
    atomic_fetch_add_explicit(&ports->rx[port_idx], n, memory_order_relaxed);
    return n;
}

/* Every client took what it was sent off its ring (clients still running
 * or already stopped). */
static int clients_have_all(void)
{
    for (unsigned i = 0; i < num_clients; i++)
        /* Acquire: pairs with the client's release add of rx. */
        if (atomic_load_explicit(&ports->tx_stats[i].rx, memory_order_acquire)
            < client_stats[i].rx)
            return 0;
    return 1;
}

static void do_stats_display(void)
{
    uint64_t port_tx[MAX_PORTS] = { 0 };
    uint64_t client_tx[MAX_CLIENTS] = { 0 }, client_tx_drop[MAX_CLIENTS] = { 0 };

    /* Relaxed loads throughout: statistics, each written by one process. */
    for (unsigned i = 0; i < num_clients; i++) {
        struct tx_stats *tx = &ports->tx_stats[i];

        for (unsigned j = 0; j < ports->num_ports; j++) {
            uint64_t t = atomic_load_explicit(&tx->tx[j], memory_order_relaxed);
            uint64_t d = atomic_load_explicit(&tx->tx_drop[j], memory_order_relaxed);

            port_tx[j] += t;
            client_tx[i] += t;
            client_tx_drop[i] += d;
        }
    }
    printf("PORTS\n-----\n");
    for (unsigned i = 0; i < ports->num_ports; i++)
        printf("Port %u - rx: %9llu\ttx: %9llu\n", ports->id[i],
               (unsigned long long)atomic_load_explicit(&ports->rx[i],
                                                        memory_order_relaxed),
               (unsigned long long)port_tx[i]);
    printf("\nCLIENTS\n-------\n");
    for (unsigned i = 0; i < num_clients; i++) {
        struct tx_stats *tx = &ports->tx_stats[i];

        printf("Client %2u - rx: %9llu, rx_drop: %9llu\n"
               "            tx: %9llu, tx_drop: %9llu\n"
               "            flow hits: %llu, misses: %llu, misrouted: %llu\n",
               i, (unsigned long long)client_stats[i].rx,
               (unsigned long long)client_stats[i].rx_drop,
               (unsigned long long)client_tx[i],
               (unsigned long long)client_tx_drop[i],
               (unsigned long long)atomic_load_explicit(&tx->flow_hits,
                                                        memory_order_relaxed),
               (unsigned long long)atomic_load_explicit(&tx->flow_misses,
                                                        memory_order_relaxed),
               (unsigned long long)atomic_load_explicit(&tx->misrouted,
                                                        memory_order_relaxed));
    }
    printf("\n");
}

int main(int argc, char **argv)
{
    const struct timespec idle = { 0, 10000000 };  /* 10 ms */
    Dl_info self;
    unsigned long portmask;
    unsigned dist, port_idx = 0;
    uint64_t seq = 0, left;
    int ret;

    ret = mp_fh_init(PROG, argc, argv);
    argc -= ret;
    argv += ret;
    if (fh_proc_type() != FH_PROC_PRIMARY)
        mp_die(PROG, "the server must be the primary, and prefix '%s' has one",
               fh_file_prefix());
    parse_app_args(argc, argv, &portmask, &dist);
    init(portmask, dist);

    mp_catch_stop();

    if (dladdr((void *)mp_flow_hash, &self) == 0)
        mp_die(PROG, "dladdr cannot place mp_flow_hash");
    printf("%s: primary (pid %d, prefix '%s'): %u clients, %s distribution, "
           "%lu flows; flow hash function mp_flow_hash at %p in %s loaded at "
           "%p\n", PROG, (int)getpid(), fh_file_prefix(), num_clients,
           dist == DIST_HASH ? "hash" : "round-robin", num_flows,
           (void *)mp_flow_hash, self.dli_fname, self.dli_fbase);

    left = count;
    while (!mp_stop_signal && (count == 0 || left > 0)) {
        unsigned n = process_packets(port_idx, &seq, count == 0 ? PKT_BURST : left);

        if (count != 0)
            left -= n;
        if (++port_idx == ports->num_ports)
            port_idx = 0;
        if (n == 0)
            nanosleep(&idle, NULL);
    }
    if (!mp_stop_signal) {
        printf("%s: sent %llu packets\n[Press Ctrl-C to quit ...]\n", PROG,
               (unsigned long long)count);
        while (!mp_stop_signal && !clients_have_all())
            nanosleep(&idle, NULL);
        if (!mp_stop_signal)
            printf("%s: the clients received all %llu packets\n", PROG,
                   (unsigned long long)count);
    }
    while (!mp_stop_signal)
        nanosleep(&idle, NULL);

    printf("\n%s: exiting on signal %d\n\n", PROG, (int)mp_stop_signal);
    do_stats_display();
    if (fh_cleanup() < 0)
        mp_die(PROG, "cleanup: %s", strerror(errno));
    return 0;
}
