/*
 * forkhost/hash.h - fixed-capacity hash tables in the arena (DPDK's
 * rte_hash), shared by every process of the prefix, hash function included.
 *
 * A table maps fixed-length keys to a position (0 .. entries-1, stable
 * while the key is in the table, usable as an index into the caller's own
 * arrays) and a 64-bit data value.  It is created by name in a memzone
 * ("HT_<name>") and found by name anywhere.
 *
 * The hash function is a pointer stored in the table.  That works here
 * where DPDK's does not, because every secondary descends from the template
 * and so maps every module at the primary's addresses.  To turn the case
 * where that is not true (a classically attached process, a module loaded
 * only after the fork, or at another address) into an error instead of a
 * jump into the void, the table records, at creation, which module the
 * function lies in (its path) and where that module was loaded (dladdr's
 * dli_fbase).  Each process checks once that it has the same module at the
 * same base before its first call through the pointer; if not, calls that
 * need the function fail with -EFAULT and fh_hash_error() names the module
 * and both addresses.  The *_with_hash calls never call the function and
 * work in any process.  The default function (fn == NULL, or
 * fh_hash_crc32c) is recorded as "built in" and always resolved locally.
 *
 * Concurrency contract:
 *  - Readers (lookup*, iterate, count, get_key_with_position) take no lock
 *    and may run in any number of threads and processes, concurrently with
 *    a writer.  A reader sees a key either before or after a concurrent add
 *    or delete of it, never a torn key or data value (per-bucket sequence
 *    counters; a reader retries the bucket a writer changed under it).
 *  - Writers (add*, del*, reset) are serialised by a process-shared robust
 *    mutex in the table, so any process may write.  A writer that dies
 *    mid-update is repaired after by the next writer (or by a reader that
 *    waited on it for long).  With FH_HASH_F_SINGLE_WRITER the mutex is
 *    skipped: the caller guarantees one writer at a time (DPDK's default).
 *  - A position or key pointer returned to a reader stays meaningful while
 *    the key stays in the table; after a delete the position is reused.
 *
 * Structure: 64-byte buckets of 8 slots (16-bit signature + key index
 * each), the keys and data in a separate array.  Collisions overflow into
 * the next bucket (linear probing by bucket, wrapping at the end) and each
 * bucket counts how many keys probed past it, so a lookup stops at the
 * first bucket whose count is zero, deletes need no tombstones and keys
 * never move.  At most 80% of the slots are ever used; `entries` keys
 * always fit.  The bucket count is exactly what that takes (no rounding to
 * a power of two); the signature is hash >> 16, the home bucket a
 * multiply-shift of the scrambled hash.
 */
#ifndef FORKHOST_HASH_H
#define FORKHOST_HASH_H

#include <stdint.h>

#include "forkhost/memzone.h"

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

#define FH_HASH_MZ_PREFIX "HT_"
#define FH_HASH_NAMESIZE (FH_MEMZONE_NAMESIZE - 3)
/* Slots per 64-byte bucket. */
#define FH_HASH_BUCKET_ENTRIES 8
/* Largest key: keys are compared byte by byte on every hit; beyond this a
 * caller should hash the key itself and store a digest. */
#define FH_HASH_KEY_LEN_MAX 1024
/* Largest table: positions are int32_t and the slot index must fit. */
#define FH_HASH_ENTRIES_MAX (1u << 30)
/* Keys a bulk lookup pipelines at once (any n is accepted). */
#define FH_HASH_LOOKUP_BULK_MAX 64
/* Longest recorded module path, NUL included. */
#define FH_HASH_MODULE_PATH_MAX 256

/* Creation flags. */
#define FH_HASH_F_SINGLE_WRITER 0x1u /* no writer lock: one writer at a time */

typedef uint32_t (*fh_hash_fn)(const void *key, uint32_t key_len,
                               uint32_t init_val);

struct fh_hash;

/* CRC32C (Castagnoli), SSE4.2 when the CPU has it, a table otherwise; the
 * same value either way.  The default hash function. */
FH_API uint32_t fh_hash_crc32c(const void *key, uint32_t key_len,
                               uint32_t init_val);

/* Create table "name" for up to entries keys of key_len bytes.  fn NULL
 * means fh_hash_crc32c.  NULL with errno: EINVAL (bad argument, or fn lies
 * in no loaded module; see fh_hash_error()), EEXIST, ENOSPC, ENODEV. */
FH_API struct fh_hash *fh_hash_create(const char *name, uint32_t entries,
                                      uint32_t key_len, fh_hash_fn fn,
                                      uint32_t init_val, unsigned flags);
/* NULL with errno ENOENT: no such table, or its creator has not finished. */
FH_API struct fh_hash *fh_hash_find_existing(const char *name);

/* 0 when this process may call the table's hash function, else -EFAULT
 * with the reason in fh_hash_error().  Checked once per process and
 * module; every call below that hashes does it itself. */
FH_API int fh_hash_check(const struct fh_hash *h);
/* This thread's last error message from the fh_hash_* calls ("" if none). */
FH_API const char *fh_hash_error(void);
/* The table's hash of key: 0 and *sig, or -EFAULT. */
FH_API int fh_hash_hash(const struct fh_hash *h, const void *key, uint32_t *sig);

/* Add key (or update its data when present): its position, or -ENOSPC
 * (full), -EINVAL, -EFAULT (hash function unusable here), or the error of
 * the writer lock.  add_key stores data 0, as rte_hash_add_key does. */
FH_API int32_t fh_hash_add_key(struct fh_hash *h, const void *key);
FH_API int32_t fh_hash_add_key_data(struct fh_hash *h, const void *key,
                                    uint64_t data);
FH_API int32_t fh_hash_add_key_with_hash(struct fh_hash *h, const void *key,
                                         uint32_t sig);
FH_API int32_t fh_hash_add_key_with_hash_data(struct fh_hash *h,
                                              const void *key, uint32_t sig,
                                              uint64_t data);

/* Position of key, or -ENOENT (-EINVAL, -EFAULT); *data gets its value. */
FH_API int32_t fh_hash_lookup(const struct fh_hash *h, const void *key);
FH_API int32_t fh_hash_lookup_data(const struct fh_hash *h, const void *key,
                                   uint64_t *data);
FH_API int32_t fh_hash_lookup_with_hash(const struct fh_hash *h,
                                        const void *key, uint32_t sig);
FH_API int32_t fh_hash_lookup_with_hash_data(const struct fh_hash *h,
                                             const void *key, uint32_t sig,
                                             uint64_t *data);

/* Remove key: the position it had, or -ENOENT (-EINVAL, -EFAULT). */
FH_API int32_t fh_hash_del_key(struct fh_hash *h, const void *key);
FH_API int32_t fh_hash_del_key_with_hash(struct fh_hash *h, const void *key,
                                         uint32_t sig);

/*
 * Look up n keys packed back to back in keys (n * key_len bytes):
 * positions[i] gets key i's position or -ENOENT, data[i] (when data is not
 * NULL) its value or 0.  Returns the number found, or a negative errno
 * (-EFAULT, -EINVAL).  sigs, when given, holds the n precomputed hashes.
 */
FH_API int fh_hash_lookup_bulk(const struct fh_hash *h, const void *keys,
                               uint32_t n, int32_t *positions);
FH_API int fh_hash_lookup_bulk_data(const struct fh_hash *h, const void *keys,
                                    uint32_t n, int32_t *positions,
                                    uint64_t *data);
FH_API int fh_hash_lookup_bulk_with_hash(const struct fh_hash *h,
                                         const void *keys,
                                         const uint32_t *sigs, uint32_t n,
                                         int32_t *positions, uint64_t *data);

/*
 * The same over n keys anywhere in memory (DPDK's rte_hash_lookup_bulk
 * shape): keys[i] points at key i (key_len bytes, not NULL), so a caller
 * whose keys are scattered (packet headers, records) looks them up without
 * gathering them first; the keys are prefetched ahead of hashing.  sigs
 * NULL: hashed here (-EFAULT if this process may not call the function).
 */
FH_API int fh_hash_lookup_bulk_ptrs(const struct fh_hash *h,
                                    const void *const *keys,
                                    const uint32_t *sigs, uint32_t n,
                                    int32_t *positions, uint64_t *data);

/* Walk the keys: start with *next = 0; returns a position and sets *key
 * (pointer into the table, key_len bytes) and *data (either may be NULL),
 * or -ENOENT at the end. */
FH_API int32_t fh_hash_iterate(const struct fh_hash *h, const void **key,
                               uint64_t *data, uint32_t *next);
/* The key stored at position: 0 and *key, or -ENOENT (-EINVAL). */
FH_API int fh_hash_get_key_with_position(const struct fh_hash *h,
                                         int32_t position, const void **key);
/* Remove every key.  0 or the error of the writer lock. */
FH_API int fh_hash_reset(struct fh_hash *h);

/* A writer killed while holding the writer lock (inside add, delete or
 * reset): the next writer, a reader that waits long on its bucket, or
 * this call repairs the table (rolling its half-done change back or
 * forward) and frees the lock.  1 when this call repaired, else 0. */
FH_API int fh_hash_recover(struct fh_hash *h);
/* Repairs after dead writers since creation. */
FH_API uint32_t fh_hash_repairs(const struct fh_hash *h);

FH_API int32_t fh_hash_count(const struct fh_hash *h);
FH_API uint32_t fh_hash_max_entries(const struct fh_hash *h);
FH_API uint32_t fh_hash_key_len(const struct fh_hash *h);
FH_API const char *fh_hash_name(const struct fh_hash *h);
/* The recorded module path ("" for the built-in function) and its load
 * base in the creating process (0 for built-in). */
FH_API const char *fh_hash_fn_module(const struct fh_hash *h);
FH_API uint64_t fh_hash_fn_base(const struct fh_hash *h);

/* Test hooks, exported for the C and Python tests only. */
/* Overwrite the recorded function address, module base and module path
 * (0 / NULL: keep), to simulate a process whose mapping differs. */
FH_API void fh__hash_tamper(struct fh_hash *h, uint64_t fn_addr,
                            uint64_t fn_base, const char *module);
/* Make this process's next add _exit(99) while holding the writer lock
 * inside a bucket's seqlock (step 1), or its next delete _exit(99) after
 * the slot is cleared but before the overflow counts and the free stack
 * are updated (step 2); 0 disables. */
FH_API void fh__hash_crash_at(int step);
/* The software CRC32C, to check it against the SSE4.2 one. */
FH_API uint32_t fh__hash_crc32c_sw(const void *key, uint32_t key_len,
                                   uint32_t init_val);

/* Destroy table h (rte_hash_free): its name can be created again at once,
 * lookups fail from now on, and its memory goes back to the arena.  Nobody
 * may use h afterwards (memzone.h).  0, or -1 with errno ENOENT (not a
 * table that exists), EINVAL. */
FH_API int fh_hash_destroy(struct fh_hash *h);

#endif /* FORKHOST_HASH_H */
