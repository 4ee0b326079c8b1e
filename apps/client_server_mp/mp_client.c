/*
 * mp_client - a client of DPDK's client_server_mp sample on forkhost, in
 * C: a secondary that takes packets off its ring, looks their flow up and
 * "forwards" them to the paired port.
 *
 *   mp_client [forkhost options] -- -n CLIENT_ID [--count C]
 *
 * It is its own executable, not the server's: the template loads it into
 * the secondary it forks, where the server's memory, and the server's
 * executable, are already mapped.  It finds everything by name
 * (common.h).  Each packet's flow is looked up in MProc_flow_table, which
 * calls the server's mp_flow_hash through the pointer stored in the table;
 * with --dist hash it also checks that the packet's hash picks this client.
 * Forwarding means counting the packet as sent on the paired port
 * (0<->1, 2<->3 by position) and freeing its buffer: there is no NIC.
 *
 * It stops after C packets (0: no end) or on SIGINT/SIGTERM (the server's
 * end sends SIGTERM), prints its statistics and exits 0; 1 for bad
 * arguments, no server, or a client id already served.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define PROG "mp_client"

static void usage(const char *msg)
{
    fprintf(stderr, "%s: %s\n"
            "usage: %s [forkhost options] -- -n CLIENT_ID [--count C]\n"
            "  -n       this client's id, 0..NUM_CLIENTS-1 of the server\n"
            "  --count  stop after C packets (default 0: at SIGINT)\n",
            PROG, msg, PROG);
    mp_exit_failure();
}

static void parse_app_args(int argc, char **argv, unsigned *id, uint64_t *count)
{
    enum { OPT_COUNT = 256 };
    static const struct option lgopts[] = {
        { "count", required_argument, NULL, OPT_COUNT },
        { NULL, 0, NULL, 0 },
    };
    long v;
    int opt, have_id = 0;

    *count = 0;
    opterr = 0;
    optind = 1;     /* getopt's state is libc's, inherited from the template */
    while ((opt = getopt_long(argc, argv, "n:", lgopts, NULL)) != -1) {
        switch (opt) {
        case 'n':
            if ((v = mp_parse_uint(optarg, 10, 0, MAX_CLIENTS - 1)) < 0)
                usage("invalid client id");
            *id = (unsigned)v;
            have_id = 1;
            break;
        case OPT_COUNT:
            if ((v = mp_parse_uint(optarg, 10, 0, 1ul << 40)) < 0)
                usage("invalid --count");
            *count = (uint64_t)v;
            break;
        default:
            usage("cannot parse the arguments");
        }
    }
    if (optind < argc)
        usage("unexpected argument");
    if (!have_id)
        usage("missing -n CLIENT_ID");
}

/* Add this burst's counts to the shared statistics of this client id: added,
 * not stored, so that a client restarted under the same id goes on from
 * its predecessor's figures.  Relaxed: statistics; the one writer is the
 * client holding the id, and the server reads snapshots. */
static void publish(struct tx_stats *st, uint64_t rx, uint64_t hits,
                    uint64_t misses, uint64_t misrouted, const uint64_t *tx,
                    uint64_t *shown_tx, unsigned num_ports)
{
    atomic_fetch_add_explicit(&st->flow_hits, hits, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->flow_misses, misses, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->misrouted, misrouted, memory_order_relaxed);
    for (unsigned i = 0; i < num_ports; i++) {
        atomic_fetch_add_explicit(&st->tx[i], tx[i] - shown_tx[i],
                                  memory_order_relaxed);
        shown_tx[i] = tx[i];
    }
    /* Last, and release: the server that sees rx complete sees the rest. */
    atomic_fetch_add_explicit(&st->rx, rx, memory_order_release);
}

int main(int argc, char **argv)
{
    const struct timespec idle = { 0, 100000 };   /* 100 us */
    const struct fh_memzone *mz;
    struct port_info *ports;
    struct tx_stats *tx_stats;
    struct fh_ring *rx_ring;
    struct fh_mempool *mp;
    struct fh_hash *flows;
    uint16_t output_idx[MAX_PORTS];
    uint64_t count, rx = 0, hits = 0, misses = 0, misrouted = 0;
    uint64_t tx[MAX_PORTS] = { 0 }, shown_tx[MAX_PORTS] = { 0 }, shown[3] = { 0 };
    char name[FH_RING_NAMESIZE];
    unsigned client_id = 0, ms = 0;
    int32_t owner;
    int ret;

    ret = mp_fh_init(PROG, argc, argv);
    argc -= ret;
    argv += ret;
    if (fh_proc_type() != FH_PROC_SECONDARY) {
        fprintf(stderr, "%s: no server is running (prefix '%s'): start mp_server "
                "first\n", PROG, fh_file_prefix());
        fh_cleanup();
        return MP_EXIT_FAILURE;
    }
    parse_app_args(argc, argv, &client_id, &count);

    mz = MP_LOOKUP_WAIT(fh_memzone_lookup(MZ_PORT_INFO));
    if (mz == NULL)
        mp_die(PROG, "cannot get port info structure - is the server running?");
    ports = mz->addr;
    /* Acquire: pairs with the server's release store of ready. */
    while (!atomic_load_explicit(&ports->ready, memory_order_acquire)) {
        if (++ms > MP_LOOKUP_WAIT_MS)
            mp_die(PROG, "the server did not finish its setup");
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    if (client_id >= ports->num_clients)
        mp_die(PROG, "client id %u, but the server serves %u clients (0..%u)",
               client_id, ports->num_clients, ports->num_clients - 1);
    rx_ring = fh_ring_lookup(get_rx_queue_name(name, client_id));
    if (rx_ring == NULL)
        mp_die(PROG, "Cannot get RX ring - is server process running?");
    mp = fh_mempool_lookup(PKTMBUF_POOL_NAME);
    if (mp == NULL)
        mp_die(PROG, "Cannot get mempool for mbufs");
    flows = fh_hash_find_existing(FLOW_TABLE_NAME);
    if (flows == NULL)
        mp_die(PROG, "Cannot get the flow table");
    if (fh_hash_check(flows) < 0)
        mp_die(PROG, "cannot call the server's flow hash function: %s",
               fh_hash_error());
    tx_stats = &ports->tx_stats[client_id];
    if ((owner = mp_claim(&tx_stats->pid)) != 0)
        mp_die(PROG, "client %u is already running (pid %d)", client_id,
               (int)owner);
    for (unsigned i = 0; i < ports->num_ports; i++)
        output_idx[i] = (uint16_t)(i ^ 1);

    mp_catch_stop();

    printf("Client process %u handling packets (pid %d, prefix '%s'); flow "
           "hash function in %s, loaded at 0x%llx\n", client_id, (int)getpid(),
           fh_file_prefix(), fh_hash_fn_module(flows),
           (unsigned long long)fh_hash_fn_base(flows));
    printf("[Press Ctrl-C to quit ...]\n");

    while (!mp_stop_signal && (count == 0 || rx < count)) {
        void *pkts[PKT_BURST];
        unsigned want = PKT_BURST, n;

        if (count != 0 && count - rx < want)
            want = (unsigned)(count - rx);
        n = fh_ring_sc_dequeue_burst(rx_ring, pkts, want, NULL);
        if (n == 0) {
            nanosleep(&idle, NULL);
            continue;
        }
        for (unsigned i = 0; i < n; i++) {
            struct mp_pkt *pkt = pkts[i];
            unsigned in = 0;
            uint64_t flow;

            /* Both calls hash with the server's function. */
            if (fh_hash_lookup_data(flows, &pkt->key, &flow) >= 0)
                hits++;
            else
                misses++;
            if (ports->dist == DIST_HASH) {
                uint32_t sig;

                if (fh_hash_hash(flows, &pkt->key, &sig) < 0 ||
                    sig % ports->num_clients != client_id)
                    misrouted++;
            }
            while (in + 1u < ports->num_ports && ports->id[in] != pkt->port)
                in++;
            tx[output_idx[in]]++;
        }
        fh_mempool_put_bulk(mp, pkts, n);
        rx += n;
        publish(tx_stats, n, hits - shown[0], misses - shown[1],
                misrouted - shown[2], tx, shown_tx, ports->num_ports);
        shown[0] = hits;
        shown[1] = misses;
        shown[2] = misrouted;
    }

    if (mp_stop_signal)
        printf("\nExiting on signal %d\n", (int)mp_stop_signal);
    printf("Client %u: rx %llu, tx", client_id, (unsigned long long)rx);
    for (unsigned i = 0; i < ports->num_ports; i++)
        printf(" port %u %llu", ports->id[i], (unsigned long long)tx[i]);
    printf(", flow hits %llu, misses %llu, misrouted %llu\n",
           (unsigned long long)hits, (unsigned long long)misses,
           (unsigned long long)misrouted);
    mp_unclaim(&tx_stats->pid);
    return 0;
}
