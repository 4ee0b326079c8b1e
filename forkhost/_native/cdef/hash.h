/* cffi view of forkhost/hash.h: shared hash tables whose hash function is
 * a stored pointer.  Bulk lookups take the keys packed back to back
 * (n * key_len bytes) and fill int32_t positions / uint64_t data arrays. */
#define FH_HASH_NAMESIZE ...
#define FH_HASH_BUCKET_ENTRIES ...
#define FH_HASH_KEY_LEN_MAX ...
#define FH_HASH_ENTRIES_MAX ...
#define FH_HASH_LOOKUP_BULK_MAX ...
#define FH_HASH_MODULE_PATH_MAX ...
#define FH_HASH_F_SINGLE_WRITER ...

typedef uint32_t (*fh_hash_fn)(const void *key, uint32_t key_len,
                               uint32_t init_val);
struct fh_hash;

uint32_t fh_hash_crc32c(const void *key, uint32_t key_len, uint32_t init_val);
struct fh_hash *fh_hash_create(const char *name, uint32_t entries,
                               uint32_t key_len, fh_hash_fn fn,
                               uint32_t init_val, unsigned flags);
struct fh_hash *fh_hash_find_existing(const char *name);
int fh_hash_check(const struct fh_hash *h);
const char *fh_hash_error(void);
int fh_hash_hash(const struct fh_hash *h, const void *key, uint32_t *sig);

int32_t fh_hash_add_key(struct fh_hash *h, const void *key);
int32_t fh_hash_add_key_data(struct fh_hash *h, const void *key, uint64_t data);
int32_t fh_hash_add_key_with_hash(struct fh_hash *h, const void *key, uint32_t sig);
int32_t fh_hash_add_key_with_hash_data(struct fh_hash *h, const void *key,
                                       uint32_t sig, uint64_t data);
int32_t fh_hash_lookup(const struct fh_hash *h, const void *key);
int32_t fh_hash_lookup_data(const struct fh_hash *h, const void *key, uint64_t *data);
int32_t fh_hash_lookup_with_hash(const struct fh_hash *h, const void *key, uint32_t sig);
int32_t fh_hash_lookup_with_hash_data(const struct fh_hash *h, const void *key,
                                      uint32_t sig, uint64_t *data);
int32_t fh_hash_del_key(struct fh_hash *h, const void *key);
int32_t fh_hash_del_key_with_hash(struct fh_hash *h, const void *key, uint32_t sig);
int fh_hash_lookup_bulk(const struct fh_hash *h, const void *keys, uint32_t n,
                        int32_t *positions);
int fh_hash_lookup_bulk_data(const struct fh_hash *h, const void *keys,
                             uint32_t n, int32_t *positions, uint64_t *data);
int fh_hash_lookup_bulk_with_hash(const struct fh_hash *h, const void *keys,
                                  const uint32_t *sigs, uint32_t n,
                                  int32_t *positions, uint64_t *data);
int fh_hash_lookup_bulk_ptrs(const struct fh_hash *h, const void *const *keys,
                             const uint32_t *sigs, uint32_t n,
                             int32_t *positions, uint64_t *data);
int32_t fh_hash_iterate(const struct fh_hash *h, const void **key,
                        uint64_t *data, uint32_t *next);
int fh_hash_get_key_with_position(const struct fh_hash *h, int32_t position,
                                  const void **key);
int fh_hash_reset(struct fh_hash *h);
int fh_hash_recover(struct fh_hash *h);
uint32_t fh_hash_repairs(const struct fh_hash *h);
int32_t fh_hash_count(const struct fh_hash *h);
uint32_t fh_hash_max_entries(const struct fh_hash *h);
uint32_t fh_hash_key_len(const struct fh_hash *h);
const char *fh_hash_name(const struct fh_hash *h);
const char *fh_hash_fn_module(const struct fh_hash *h);
uint64_t fh_hash_fn_base(const struct fh_hash *h);

/* test hooks */
void fh__hash_tamper(struct fh_hash *h, uint64_t fn_addr, uint64_t fn_base,
                     const char *module);
void fh__hash_crash_at(int step);
uint32_t fh__hash_crc32c_sw(const void *key, uint32_t key_len, uint32_t init_val);
int fh_hash_destroy(struct fh_hash *h);
