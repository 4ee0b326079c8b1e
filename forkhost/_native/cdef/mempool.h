/* cffi view of forkhost/mempool.h: pools of fixed-size objects with
 * per-thread caches.  Bulk calls take arrays of object addresses: pass
 * ffi.cast("void **", ffi.from_buffer(a_uint64_array)). */
#define FH_MEMPOOL_NAMESIZE ...
#define FH_MEMPOOL_CACHE_MAX ...
#define FH_MEMPOOL_CACHE_SLOTS ...
#define FH_MEMPOOL_COUNT_MAX ...
#define FH_MEMPOOL_F_NO_CACHE_ALIGN ...
#define FH_MEMPOOL_F_TRACK ...

struct fh_mempool;

struct fh_mempool *fh_mempool_create(const char *name, unsigned n,
                                     unsigned obj_size, unsigned cache_size,
                                     unsigned flags);
struct fh_mempool *fh_mempool_lookup(const char *name);
int fh_mempool_get(struct fh_mempool *mp, void **obj);
int fh_mempool_get_bulk(struct fh_mempool *mp, void **objs, unsigned n);
int fh_mempool_get_timed(struct fh_mempool *mp, void **obj, int64_t timeout_ns);
int fh_mempool_get_bulk_timed(struct fh_mempool *mp, void **objs, unsigned n, int64_t timeout_ns);
unsigned fh_mempool_waiting(const struct fh_mempool *mp);
int fh_mempool_put(struct fh_mempool *mp, void *obj);
int fh_mempool_put_bulk(struct fh_mempool *mp, void *const *objs, unsigned n);
unsigned fh_mempool_avail_count(const struct fh_mempool *mp);
unsigned fh_mempool_in_use_count(const struct fh_mempool *mp);
int fh_mempool_full(const struct fh_mempool *mp);
int fh_mempool_empty(const struct fh_mempool *mp);
int fh_mempool_cache_flush(struct fh_mempool *mp);
unsigned fh_mempool_reclaim(struct fh_mempool *mp);
uint64_t fh_mempool_recovered(const struct fh_mempool *mp);
unsigned fh_mempool_held_count(const struct fh_mempool *mp, int32_t tid);
long fh_mempool_obj_index(const struct fh_mempool *mp, const void *obj);
void *fh_mempool_obj_at(const struct fh_mempool *mp, unsigned idx);
unsigned fh_mempool_count(const struct fh_mempool *mp);
unsigned fh_mempool_obj_size(const struct fh_mempool *mp);
unsigned fh_mempool_elt_size(const struct fh_mempool *mp);
unsigned fh_mempool_cache_size(const struct fh_mempool *mp);
unsigned fh_mempool_flags(const struct fh_mempool *mp);
const char *fh_mempool_name(const struct fh_mempool *mp);
int fh_mempool_destroy(struct fh_mempool *mp);
