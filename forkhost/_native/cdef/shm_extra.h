/* What forkhost.shm needs beyond the objects' own cdefs: the Python side of
 * fh_memzone_walk's callback (cffi's extern "Python", so no libffi closure
 * is needed and the callback works in every forked secondary). */
extern "Python" int _fh_shm_memzone_cb(const struct fh_memzone *mz, void *arg);

/* The memzone-name prefixes of the objects (ring.h, mempool.h, hash.h):
 * a Python handle finds its object's memzone (prefix + name) to check the
 * memzone's generation before each use (forkhost/shm/_util.py). */
static const char *const FH_RING_MZ_PREFIX;
static const char *const FH_MEMPOOL_MZ_PREFIX;
static const char *const FH_HASH_MZ_PREFIX;
