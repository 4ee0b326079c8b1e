/*
 * common.h - what mp_server (the primary) and mp_client (a secondary)
 * share: the names of the shared objects and the layout of the port-info
 * memzone.  DPDK's shared/common.h, plus the flow table and the
 * distribution mode.
 */
#ifndef CSMP_COMMON_H
#define CSMP_COMMON_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/mp_sample.h"

#define MAX_CLIENTS 16u
#define MAX_PORTS   8u

/* Packets a ring call moves at most, on both sides. */
#define PKT_BURST 32u

#define MP_CLIENT_RXQ_NAME "MProc_Client_%u_RX"
#define PKTMBUF_POOL_NAME  "MProc_pktmbuf_pool"
#define MZ_PORT_INFO       "MProc_port_info"
#define FLOW_TABLE_NAME    "MProc_flow_table"

enum csmp_dist {
    DIST_ROUND_ROBIN = 0,   /* DPDK's: packet k to client k mod n */
    DIST_HASH = 1,          /* by flow: mp_flow_hash(flow) mod n */
};

/* Written by client i only (relaxed stores: statistics, read by the
 * server after the client stopped or as a snapshot).  One cache line
 * pair per client. */
struct tx_stats {
    alignas(128) _Atomic uint64_t tx[MAX_PORTS];
    _Atomic uint64_t tx_drop[MAX_PORTS];
    _Atomic uint64_t rx;            /* packets taken off its ring */
    _Atomic uint64_t flow_hits;
    _Atomic uint64_t flow_misses;
    _Atomic uint64_t misrouted;     /* DIST_HASH: hash mod n was not us */
    _Atomic int32_t  pid;           /* the client serving this id, or 0 */
};

/* Memzone MZ_PORT_INFO.  The server writes the configuration, then
 * publishes ready (release); a client reads it after seeing ready
 * (acquire). */
struct port_info {
    uint16_t num_ports;
    uint16_t id[MAX_PORTS];
    uint32_t num_clients;
    uint32_t dist;                  /* enum csmp_dist */
    _Atomic uint32_t ready;
    alignas(64) _Atomic uint64_t rx[MAX_PORTS];   /* server: per port */
    struct tx_stats tx_stats[MAX_CLIENTS];
};

/* The name of client id's ring, in buf (FH_RING_NAMESIZE bytes). */
static inline const char *get_rx_queue_name(char *buf, unsigned id)
{
    snprintf(buf, FH_RING_NAMESIZE, MP_CLIENT_RXQ_NAME, id);
    return buf;
}

#endif /* CSMP_COMMON_H */
