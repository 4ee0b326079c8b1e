/* cffi view of forkhost/memzone.h: named, aligned allocations in the arena. */
#define FH_MEMZONE_NAMESIZE ...
#define FH_MEMZONE_MAX ...
#define FH_EWRONGTYPE ...

struct fh_memzone {
    char     name[...];
    void    *addr;
    uint64_t len;
    uint64_t align;
    uint32_t flags;
    uint32_t gen;
    ...;
};

const struct fh_memzone *fh_memzone_reserve(const char *name, size_t len,
                                            size_t align, unsigned flags);
const struct fh_memzone *fh_memzone_lookup(const char *name);
int fh_memzone_walk(int (*fn)(const struct fh_memzone *, void *), void *arg);
size_t fh_memzone_free_bytes(void);
unsigned fh_memzone_count(void);
int fh_memzone_free(const struct fh_memzone *mz);
int fh_memzone_copy(const struct fh_memzone *mz, struct fh_memzone *out);
uint32_t fh_memzone_gen(const struct fh_memzone *mz);
const char *fh_memzone_name_kind(const char *name);

void fh_publish_u64(uint64_t *p, uint64_t v);
uint64_t fh_published_u64(const uint64_t *p);

/* test hooks: die holding the directory lock */
int fh__memzone_lock(void);
void fh__memzone_unlock(void);
void fh__memzone_crash_at(int step);
