/* What forkhost.shm needs beyond the objects' own cdefs: the Python side of
 * fh_memzone_walk's callback (cffi's extern "Python", so no libffi closure
 * is needed and the callback works in every forked secondary). */
extern "Python" int _fh_shm_memzone_cb(const struct fh_memzone *mz, void *arg);
