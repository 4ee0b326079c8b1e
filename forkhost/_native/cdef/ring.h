/* cffi view of forkhost/ring.h: lock-free rings of 64-bit values or of
 * fixed-size elements.  objs/obj point at packed elements of
 * fh_ring_elem_size() bytes (a uint64_t[] for 8-byte rings): pass
 * ffi.from_buffer() of an array or bytearray to move a burst per call. */
#define FH_RING_NAMESIZE ...
#define FH_RING_F_SP_ENQ ...
#define FH_RING_F_SC_DEQ ...
#define FH_RING_F_MASK ...
#define FH_RING_SZ_MAX ...
#define FH_RING_ELEM_MAX ...
#define FH_RING_WAIT_SLOTS ...
#define FH_RING_POLL_NS ...
#define FH_RING_DRAIN_NS ...

struct fh_ring;

ssize_t fh_ring_get_memsize(unsigned count, unsigned elem_size);
int fh_ring_init(struct fh_ring *r, const char *name, unsigned count,
                 unsigned elem_size, unsigned flags);
struct fh_ring *fh_ring_create(const char *name, unsigned count,
                               unsigned elem_size, unsigned flags);
struct fh_ring *fh_ring_lookup(const char *name);
struct fh_mempool;
struct fh_ring *fh_ring_create_for(const char *name, unsigned count,
                                   unsigned flags, struct fh_mempool *mp);
unsigned fh_ring_recover(struct fh_ring *r);
uint64_t fh_ring_lost(const struct fh_ring *r, int which);

unsigned fh_ring_mp_enqueue_bulk(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space);
unsigned fh_ring_sp_enqueue_bulk(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space);
unsigned fh_ring_enqueue_bulk(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space);
unsigned fh_ring_mp_enqueue_burst(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space);
unsigned fh_ring_sp_enqueue_burst(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space);
unsigned fh_ring_enqueue_burst(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space);
unsigned fh_ring_mc_dequeue_bulk(struct fh_ring *r, void *objs, unsigned n, unsigned *available);
unsigned fh_ring_sc_dequeue_bulk(struct fh_ring *r, void *objs, unsigned n, unsigned *available);
unsigned fh_ring_dequeue_bulk(struct fh_ring *r, void *objs, unsigned n, unsigned *available);
unsigned fh_ring_mc_dequeue_burst(struct fh_ring *r, void *objs, unsigned n, unsigned *available);
unsigned fh_ring_sc_dequeue_burst(struct fh_ring *r, void *objs, unsigned n, unsigned *available);
unsigned fh_ring_dequeue_burst(struct fh_ring *r, void *objs, unsigned n, unsigned *available);

int fh_ring_mp_enqueue(struct fh_ring *r, const void *obj);
int fh_ring_sp_enqueue(struct fh_ring *r, const void *obj);
int fh_ring_enqueue(struct fh_ring *r, const void *obj);
int fh_ring_mc_dequeue(struct fh_ring *r, void *obj);
int fh_ring_sc_dequeue(struct fh_ring *r, void *obj);
int fh_ring_dequeue(struct fh_ring *r, void *obj);
int fh_ring_enqueue_u64(struct fh_ring *r, uint64_t v);
int fh_ring_dequeue_u64(struct fh_ring *r, uint64_t *v);

int fh_ring_enqueue_bulk_timed(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space, int64_t timeout_ns);
int fh_ring_enqueue_burst_timed(struct fh_ring *r, const void *objs, unsigned n, unsigned *free_space, int64_t timeout_ns);
int fh_ring_dequeue_bulk_timed(struct fh_ring *r, void *objs, unsigned n, unsigned *available, int64_t timeout_ns);
int fh_ring_dequeue_burst_timed(struct fh_ring *r, void *objs, unsigned n, unsigned *available, int64_t timeout_ns);
int fh_ring_wait_elements(struct fh_ring *r, unsigned n, int64_t timeout_ns);
int fh_ring_wait_room(struct fh_ring *r, unsigned n, int64_t timeout_ns);
unsigned fh_ring_waiting_consumers(const struct fh_ring *r);
unsigned fh_ring_waiting_producers(const struct fh_ring *r);
unsigned fh_ring_reclaim_waiters(struct fh_ring *r);

unsigned fh_ring_count(const struct fh_ring *r);
unsigned fh_ring_free_count(const struct fh_ring *r);
int fh_ring_full(const struct fh_ring *r);
int fh_ring_empty(const struct fh_ring *r);
unsigned fh_ring_capacity(const struct fh_ring *r);
unsigned fh_ring_elem_size(const struct fh_ring *r);
unsigned fh_ring_flags(const struct fh_ring *r);
const char *fh_ring_name(const struct fh_ring *r);
int fh_ring_destroy(struct fh_ring *r);
