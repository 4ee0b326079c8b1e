/* cffi view of forkhost/heap.h: the shared heap (rte_malloc). */
#define FH_HEAP_SEGMENT_SIZE ...
#define FH_HEAP_MAX_SEGMENTS ...
#define FH_HEAP_PROC_SLOTS ...
#define FH_HEAP_HDR_SIZE ...
#define FH_HEAP_MAX_ALIGN ...

void *fh_malloc(size_t size);
void *fh_malloc_aligned(size_t size, size_t align);
void *fh_calloc(size_t n, size_t size);
void *fh_realloc(void *p, size_t size);
int fh_free(void *p);
size_t fh_malloc_usable_size(const void *p);

struct fh_heap_stats {
    uint64_t total_bytes;
    uint64_t free_bytes;
    uint64_t greatest_free;
    uint64_t alloc_bytes;
    uint64_t alloc_count;
    uint64_t free_count;
    uint64_t total_allocs;
    uint64_t total_frees;
    uint32_t segments;
    uint32_t procs;
};

struct fh_heap_proc_stats {
    int32_t  pid;
    uint64_t alloc_count;
    uint64_t alloc_bytes;
    uint64_t free_count;
    uint64_t free_bytes;
    ...;
};

int fh_heap_get_stats(struct fh_heap_stats *st);
int fh_heap_get_proc_stats(struct fh_heap_proc_stats *out, unsigned max);
int fh_heap_validate(void);

/* test hooks: die at a step of a call, holding the heap lock */
#define FH_HEAP_CRASH_SPLIT ...
#define FH_HEAP_CRASH_ALLOC ...
#define FH_HEAP_CRASH_ALLOC_STAT ...
#define FH_HEAP_CRASH_FREE ...
#define FH_HEAP_CRASH_FREE_STAT ...
#define FH_HEAP_CRASH_MERGE ...
#define FH_HEAP_CRASH_SEGMENT ...
#define FH_HEAP_CRASH_RESIZE ...
#define FH_HEAP_CRASH_RECYCLE ...
#define FH_HEAP_CRASH_INIT ...
#define FH_HEAP_CRASH_STEPS ...
void fh__heap_crash_at(int step);
int fh__heap_lock(void);
void fh__heap_unlock(void);
