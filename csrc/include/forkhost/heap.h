/*
 * forkhost/heap.h - a shared heap in the arena (DPDK's rte_malloc):
 * fh_malloc and friends hand out blocks that every process of the prefix
 * (the primary, the template's secondaries, classically attached
 * processes) sees at the same address, and any of them may free.
 *
 * Layout.  The heap's control block is memzone FH_HEAP_MZ_NAME, made by
 * the first process that allocates (any process; the others wait for its
 * magic, or take over the initialisation when its maker died).  The memory
 * comes from the arena in segments: memzones "HEAP_<n>" of
 * FH_HEAP_SEGMENT_SIZE bytes, and an allocation too big to share one
 * (more than a quarter of it) gets a segment of its own.  A segment is a
 * run of blocks that tile it, then a 64-byte end marker:
 *
 *   block:  64-byte header | data (a multiple of 64 bytes)
 *   header: magic  state  size  prev_size  next  prev  pid  seg  req
 *
 * size is the whole block's (header included), prev_size the block
 * before it (0 for a segment's first), so a segment is walked from either
 * end.  Every block starts on a cache line and holds a multiple of 64
 * bytes: the data of fh_malloc is 64-byte aligned (rte_malloc's align 0),
 * and no two blocks share a cache line.  Free blocks are on one of
 * FH_HEAP_BINS doubly linked lists (next/prev: offsets from the arena
 * base), bin i holding sizes in [64 << i, 64 << (i + 1)), with a bitmap of
 * the non-empty bins; a request takes the first block that fits from its
 * own bin, else the head of the next non-empty bin, and splits off the
 * rest when it is at least two lines.  Free merges a block with free
 * neighbours at once, so no two free blocks are ever adjacent.  A big
 * block's own segment goes back to the arena when the block is freed (its
 * slot in the segment table is then free for the next segment); shared
 * segments stay with the heap for later allocations.
 *
 * Concurrency.  One process-shared robust mutex serialises every call
 * (the same kind as the memzone directory's).  A process that dies holding
 * it leaves the heap to the next locker, who gets EOWNERDEAD and repairs:
 * each step of a call leaves every segment walkable (a new block header is
 * written before the size store that makes it reachable, and each size or
 * state change is one store), and a call writes a journal (its block, and
 * the statistics it will store) just before its one commit store.  The
 * repair finishes the journal's statistics when the commit happened and
 * drops them when it did not, then walks every segment, merges adjacent
 * free blocks and rebuilds the lists.  A block a dead process allocated
 * stays allocated (to that pid), like one it never freed.
 *
 * Errors.  Pointers are checked before anything is changed: fh_free of a
 * block already freed, or of anything that is not the start of a heap
 * block (its header's magic), fails with EINVAL and changes nothing.  A
 * block freed, merged and handed out again is the new owner's: freeing the
 * old pointer then frees that block (a use after free the heap cannot
 * tell from a real call, as with any malloc).
 *
 * Statistics.  Per process (pid): allocations and frees, in blocks and in
 * usable bytes (a block's data size: fh_malloc_usable_size), kept in
 * FH_HEAP_PROC_SLOTS slots.  A slot whose process has ended is folded into
 * the slot of pid 0 ("ended or untracked") when the table is full, and a
 * process that finds no slot counts there too, so the sums over all slots
 * always match the heap: allocated - freed = in use.
 */
#ifndef FORKHOST_HEAP_H
#define FORKHOST_HEAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef FH_API
#define FH_API __attribute__((visibility("default")))
#endif

/* The control block's memzone, and the segments' names: FH_HEAP_SEG_PREFIX
 * then a decimal sequence number. */
#define FH_HEAP_MZ_NAME "HEAP"
#define FH_HEAP_SEG_PREFIX "HEAP_"
/* A shared segment: two huge pages' worth, so most programs take one or
 * two from the arena; a request of more than a quarter of it gets its own. */
#define FH_HEAP_SEGMENT_SIZE (4u * 1024u * 1024u)
/* Segments the heap can hold (shared and own), and per-process slots. */
#define FH_HEAP_MAX_SEGMENTS 256
#define FH_HEAP_PROC_SLOTS 128
#define FH_HEAP_BINS 48
/* Block header size and the granule of every block: a cache line. */
#define FH_HEAP_HDR_SIZE 64u
/* Largest alignment fh_malloc_aligned accepts (a 1 GiB page). */
#define FH_HEAP_MAX_ALIGN (1ull << 30)
/* Requests beyond this (64 TiB, more than any arena) fail at once with
 * ENOSPC, before any arithmetic can overflow. */
#define FH_HEAP_MAX_REQUEST (1ull << 46)

/* Allocate size bytes (0 is taken as 1), 64-byte aligned, from the shared
 * heap.  NULL with errno, when no free block fits and: ENOSPC (the arena
 * has no room for another segment at its maximum size, or the memzone
 * directory is full; or size > FH_HEAP_MAX_REQUEST), ENOMEM (the arena
 * cannot grow: no free huge pages or memory to back it), ENOBUFS (the
 * heap holds FH_HEAP_MAX_SEGMENTS segments: shared ones, and one for each
 * block bigger than a quarter of FH_HEAP_SEGMENT_SIZE, given back once
 * that block is freed and nothing else is left in it); ENODEV (no arena in
 * this process).  The data is not zeroed (fh_calloc zeroes). */
FH_API void *fh_malloc(size_t size);
/* The same, with the data aligned to align (a power of two up to
 * FH_HEAP_MAX_ALIGN; 0 and powers of two below 64 mean 64); EINVAL
 * otherwise. */
FH_API void *fh_malloc_aligned(size_t size, size_t align);
/* n * size bytes, zeroed; ENOSPC also when the product overflows. */
FH_API void *fh_calloc(size_t n, size_t size);
/* Resize p's block to size bytes, keeping the first min(old, new) bytes:
 * in place when it shrinks or the next block is free and big enough, else
 * a new block (64-byte aligned, whatever p's alignment was, as
 * rte_realloc with align 0), a copy and a free of the old one.  p NULL: fh_malloc;
 * size 0: fh_free(p), NULL.  On failure (NULL, errno as fh_malloc, or
 * EINVAL for a p fh_free would refuse) p is unchanged. */
FH_API void *fh_realloc(void *p, size_t size);
/* Give p's block back.  NULL is a no-op.  0, or -1 with errno EINVAL when
 * p is not a block in use (already freed, or not from this heap); nothing
 * is changed then. */
FH_API int fh_free(void *p);
/* The data size of p's block (at least what was asked), or 0 with errno
 * EINVAL as fh_free. */
FH_API size_t fh_malloc_usable_size(const void *p);

/* The heap as a whole (rte_malloc_socket_stats), a consistent snapshot
 * taken under the lock by walking the segments. */
struct fh_heap_stats {
    uint64_t total_bytes;     /* bytes in segments, headers included */
    uint64_t free_bytes;      /* data bytes of free blocks */
    uint64_t greatest_free;   /* data bytes of the largest free block */
    uint64_t alloc_bytes;     /* data bytes of blocks in use */
    uint64_t alloc_count;     /* blocks in use */
    uint64_t free_count;      /* free blocks */
    uint64_t total_allocs;    /* allocations ever, all processes */
    uint64_t total_frees;     /* frees ever, all processes */
    uint32_t segments;
    uint32_t procs;           /* processes with a statistics slot */
};

/* One process's counters.  pid 0 is the slot of ended processes whose slot
 * was reused, and of processes that found the table full. */
struct fh_heap_proc_stats {
    int32_t  pid;
    uint32_t pad;
    uint64_t alloc_count;
    uint64_t alloc_bytes;
    uint64_t free_count;
    uint64_t free_bytes;
};

/* 0, or -1 with errno ENODEV (no arena).  A heap nobody has used yet
 * reads as all zeros (the call creates nothing). */
FH_API int fh_heap_get_stats(struct fh_heap_stats *st);
/* Copy up to max slots in use (the pid 0 slot first, when used) into out;
 * returns how many slots are in use (may exceed max), or -1 with errno. */
FH_API int fh_heap_get_proc_stats(struct fh_heap_proc_stats *out, unsigned max);
/* Check every invariant (rte_malloc_validate): blocks tile each segment,
 * headers are sound, no two free blocks are adjacent, each free block is
 * on the right list exactly once, and the statistics' sums match the
 * blocks in use.  0, or -1 with errno EUCLEAN (and a line on stderr naming
 * what is wrong), or ENODEV. */
FH_API int fh_heap_validate(void);

/*
 * Test hooks (exported so the C and Python tests can kill a process at
 * each step of a call while it holds the heap lock); not for applications.
 * fh__heap_crash_at(step) makes this process _exit(99) at that step of its
 * next call that reaches it; 0 disables.  fh__heap_lock() takes the heap's
 * lock (creating the heap if needed), repairing first when its previous
 * holder died (then it returns 1, else 0; -1 with errno);
 * fh__heap_unlock() releases it.
 */
#define FH_HEAP_CRASH_SPLIT      1  /* malloc: block split, not committed */
#define FH_HEAP_CRASH_ALLOC      2  /* malloc: committed, statistics not */
#define FH_HEAP_CRASH_ALLOC_STAT 3  /* malloc: statistics half stored */
#define FH_HEAP_CRASH_FREE       4  /* free: journal written, not committed */
#define FH_HEAP_CRASH_FREE_STAT  5  /* free: committed, statistics half */
#define FH_HEAP_CRASH_MERGE      6  /* free: merged with the next block only */
#define FH_HEAP_CRASH_SEGMENT    7  /* new segment reserved, not registered */
#define FH_HEAP_CRASH_RESIZE     8  /* realloc in place: tail split, not committed */
#define FH_HEAP_CRASH_RECYCLE    9  /* a dead process's slot half folded */
#define FH_HEAP_CRASH_INIT      10  /* heap control block claimed, not formatted */
#define FH_HEAP_CRASH_RELEASE   11  /* free: an emptied own segment unlisted, not given back */
#define FH_HEAP_CRASH_STEPS     11

FH_API void fh__heap_crash_at(int step);
FH_API int fh__heap_lock(void);
FH_API void fh__heap_unlock(void);

#endif /* FORKHOST_HEAP_H */
