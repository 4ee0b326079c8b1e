/*
 * arena.c - the one shared mapping of a prefix.
 *
 * The primary creates it (memfd + MAP_SHARED) before it forks the template,
 * so the template and every secondary inherit the same mapping at the same
 * address.  A memfd rather than a file in /dev/shm: it needs no name in a
 * shared namespace, vanishes with its last user, and a separate process can
 * still reach it through /proc/PID/fd/N or an fd handed over a socket.
 *
 * The whole maximum is mapped at once (MAP_NORESERVE: address space, no
 * memory) and the memfd holds only the bytes in use so far; growing it
 * (fh__arena_grow) needs nothing from the other processes, whose mappings
 * already cover the range.
 *
 * The process-local record below (g_arena) is inherited by fork as well; it
 * is written once, by fh_arena_create() (arena_create.c, through
 * fh__arena_map) or fh_arena_attach(), while the process is still
 * single-threaded, and only read afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "forkhost.h"
#include "ring_internal.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static struct {
    void  *base;
    size_t max;        /* bytes mapped at base: the header's max_size */
    int    fd;         /* the memfd (its number in the primary, too) */
    dev_t  dev;        /* which file it is: fds get closed in secondaries */
    ino_t  ino;        /* (pool members keep only their own), and reused */
} g_arena = { NULL, 0, -1, 0, 0 };

FH_API const char *fh_version(void) { return FH_VERSION_STRING; }

FH_API void *fh_arena_base(void) { return g_arena.base; }
FH_API size_t fh_arena_max(void) { return g_arena.max; }
FH_API int fh_arena_fd(void) { return g_arena.fd; }
FH_API struct fh_arena_hdr *fh_arena_hdr(void) { return g_arena.base; }

static void remember_file(int fd);

static _Atomic uint64_t *size_word(struct fh_arena_hdr *hdr)
{
    return (_Atomic uint64_t *)&hdr->size;
}

FH_API size_t fh_arena_size(void)
{
    if (!g_arena.base)
        return 0;
    /* Acquire pairs with the release store in fh__arena_grow: the bytes
     * below the size seen are backed by the memfd. */
    return (size_t)atomic_load_explicit(size_word(g_arena.base),
                                        memory_order_acquire);
}

FH_API int fh_arena_contains(const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)g_arena.base;
    size_t size = fh_arena_size();

    if (!g_arena.base || a < b)
        return 0;
    return a - b <= size && len <= size - (a - b);
}

/*
 * Huge pages of the default size that a new mapping can still reserve, from
 * /proc/meminfo; 0 when none.  HugePages_Free counts pages no one has
 * faulted in yet, including those other mappings have reserved
 * (HugePages_Rsvd): only the difference is ours to take.
 */
static size_t free_huge_bytes(size_t *hpsize)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char line[128];
    unsigned long long free_pages = 0, rsvd = 0, kb = 0;

    *hpsize = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "HugePages_Free: %llu", &free_pages);
        sscanf(line, "HugePages_Rsvd: %llu", &rsvd);
        sscanf(line, "Hugepagesize: %llu kB", &kb);
    }
    fclose(f);
    *hpsize = (size_t)kb * 1024;
    if (rsvd >= free_pages)
        return 0;
    return (size_t)((free_pages - rsvd) * kb * 1024);
}

/*
 * A memfd of size bytes, mapped MAP_SHARED over max bytes (MAP_NORESERVE:
 * the part past size is address space only); huge: from the hugetlb pool,
 * the size bytes allocated now by fallocate (ENOSPC when the pool cannot
 * cover them: someone took them since we looked).  Returns the mapping
 * (*fd set) or MAP_FAILED with errno set and nothing left open.
 */
static void *map_memfd(const char *name, size_t size, size_t max, int huge,
                       int *fd)
{
    void *base;
    int e, rc;

    *fd = memfd_create(name, MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
    if (*fd < 0)
        return MAP_FAILED;
    /* Normal pages: ftruncate only sets the size and pages are allocated on
     * first touch, so an 8 GiB arena costs nothing until used, and fork()
     * does not copy the page tables of a MAP_SHARED mapping (the child
     * faults them in).  Huge pages: allocate them now, so that a short pool
     * is an error here and not a SIGBUS later. */
    rc = huge ? fallocate(*fd, 0, 0, (off_t)size) : ftruncate(*fd, (off_t)size);
    if (rc == 0) {
        base = mmap(NULL, max, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_NORESERVE, *fd, 0);
        if (base != MAP_FAILED)
            return base;
    }
    e = errno;
    close(*fd);
    *fd = -1;
    errno = e;
    return MAP_FAILED;
}

static size_t round_up(size_t v, size_t page)
{
    return (v + page - 1) / page * page;
}

int fh__arena_map(size_t size, size_t max, unsigned flags, const char *name)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), hpsize = 0;
    unsigned hdr_flags = 0;
    int fd = -1;
    void *base = MAP_FAILED;

    if (g_arena.base) {
        errno = EEXIST;
        return -1;
    }
    if (max == 0)
        max = size > FH_ARENA_DEFAULT_MAX ? size : (size_t)FH_ARENA_DEFAULT_MAX;
    if (size < FH_ARENA_MIN_SIZE || max < size || max > (SIZE_MAX >> 2)) {
        errno = EINVAL;
        return -1;
    }
    if (flags & (FH_ARENA_HUGE_AUTO | FH_ARENA_HUGE_ONLY)) {
        size_t avail = free_huge_bytes(&hpsize);
        size_t want = hpsize ? round_up(size, hpsize) : 0;
        if (hpsize && want <= avail)
            base = map_memfd(name, want, round_up(max, hpsize), 1, &fd);
        if (base != MAP_FAILED) {
            size = want;
            max = round_up(max, hpsize);
            page = hpsize;
            hdr_flags |= FH_ARENA_F_HUGE;
        } else if (flags & FH_ARENA_HUGE_ONLY) {
            errno = ENOMEM;
            return -1;
        }
        /* auto: normal pages, below. */
    }
    if (!(hdr_flags & FH_ARENA_F_HUGE)) {
        size = round_up(size, page);
        max = round_up(max, page);
        base = map_memfd(name, size, max, 0, &fd);
        if (base == MAP_FAILED)
            return -1;
    }

    struct fh_arena_hdr *hdr = base;
    hdr->magic = FH_ARENA_MAGIC;
    hdr->version = FH_ARENA_VERSION;
    hdr->page_size = (uint32_t)page;
    hdr->size = size;
    hdr->base = (uint64_t)(uintptr_t)base;
    hdr->primary_pid = (int32_t)getpid();
    hdr->flags = hdr_flags;
    hdr->max_size = max;
    g_arena.base = base;
    g_arena.max = max;
    g_arena.fd = fd;
    remember_file(fd);
    fh__ring_register_process();
    return 0;
}

void fh__arena_unmap(void)
{
    int e = errno;

    if (g_arena.base != NULL) {
        munmap(g_arena.base, g_arena.max);
        close(g_arena.fd);
    }
    g_arena.base = NULL;
    g_arena.max = 0;
    g_arena.fd = -1;
    errno = e;
}

static void remember_file(int fd)
{
    struct stat st;

    if (fstat(fd, &st) == 0) {
        g_arena.dev = st.st_dev;
        g_arena.ino = st.st_ino;
    }
}

static int is_arena_file(int fd)
{
    struct stat st;

    return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == g_arena.dev &&
           st.st_ino == g_arena.ino;
}

/*
 * An fd of the arena's memfd for growing it, or -1: this process's own when
 * it still has it (a secondary's fds were closed and their numbers may be
 * reused, so the file is checked), else a new one (*opened set) from the
 * primary's, /proc/PID/fd/N, as classic attach does.
 */
static int grow_fd(const struct fh_arena_hdr *hdr, int *opened)
{
    char path[64];
    int fd;

    *opened = 0;
    if (is_arena_file(g_arena.fd))
        return g_arena.fd;
    /* Acquire: pairs with fh_arena_adopt's release of a new primary. */
    snprintf(path, sizeof path, "/proc/%d/fd/%d",
             (int)atomic_load_explicit((_Atomic int32_t *)&hdr->primary_pid,
                                       memory_order_acquire), g_arena.fd);
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0 && !is_arena_file(fd)) {
        close(fd);
        fd = -1;
    }
    *opened = fd >= 0;
    return fd;
}

int fh__arena_grow(uint64_t end)
{
    struct fh_arena_hdr *hdr = g_arena.base;
    uint64_t cur, want, step;
    struct stat st;
    int rc, fd, opened;

    if (!hdr) {
        errno = ENODEV;
        return -1;
    }
    /* Relaxed: the only writer of size is the directory lock holder, us. */
    cur = atomic_load_explicit(size_word(hdr), memory_order_relaxed);
    if (end <= cur)
        return 0;
    if (end > hdr->max_size) {
        errno = ENOSPC;
        return -1;
    }
    fd = grow_fd(hdr, &opened);
    if (fd < 0) {
        errno = ENOMEM;
        return -1;
    }
    step = round_up(FH_ARENA_GROW_MIN, hdr->page_size);
    want = round_up(end, step);
    if (want > hdr->max_size)
        want = hdr->max_size;
    if (hdr->flags & FH_ARENA_F_HUGE) {
        /* Allocates the huge pages now; ENOSPC when the pool is short.  A
         * range allocated by a grower that died before storing the size is
         * allocated again at no cost. */
        rc = fallocate(fd, 0, (off_t)cur, (off_t)(want - cur));
    } else {
        /* A grower that died after its ftruncate left the file longer than
         * size says: never shrink it. */
        rc = fstat(fd, &st);
        if (rc == 0 && (uint64_t)st.st_size < want)
            rc = ftruncate(fd, (off_t)want);
    }
    if (opened)
        close(fd);
    if (rc < 0) {
        errno = ENOMEM;
        return -1;
    }
    /* Release pairs with the acquire load in fh_arena_size: a process that
     * sees the new size sees a memfd that backs it. */
    atomic_store_explicit(size_word(hdr), want, memory_order_release);
    return 0;
}

/* Copy the /proc/self/maps line that overlaps [lo, hi) into err; 1 when
 * there is one. */
static int describe_conflict(uintptr_t lo, uintptr_t hi, char *err, size_t errlen)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];
    int found = 0;

    snprintf(err, errlen, "address range 0x%lx-0x%lx is taken",
             (unsigned long)lo, (unsigned long)hi);
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a < hi && b > lo) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(err, errlen,
                     "address range 0x%lx-0x%lx is taken by: %s",
                     (unsigned long)lo, (unsigned long)hi, line);
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

FH_API int fh_arena_range_taken(uintptr_t addr, size_t size, char *err,
                                size_t errlen)
{
    char scratch[16];

    if (err == NULL || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    return describe_conflict(addr, addr + size, err, errlen);
}

FH_API int fh_arena_adopt(int fd, uintptr_t addr, size_t size, int want_fd,
                          char *err, size_t errlen)
{
    struct fh_arena_hdr *hdr;

    if (fh_arena_attach(fd, addr, size, err, errlen) < 0)
        return -1;
    if (want_fd >= 0 && want_fd != g_arena.fd) {
        /* The lowest free number from want_fd on, taken atomically: never
         * an fd another thread opened meanwhile (dup3 would close it). */
        int got = fcntl(g_arena.fd, F_DUPFD_CLOEXEC, want_fd);

        if (got == want_fd) {
            close(g_arena.fd);
            g_arena.fd = want_fd;
        } else if (got >= 0) {
            close(got);         /* taken: the memfd stays where it is */
        }
    }
    hdr = g_arena.base;
    /* Release: a process that reads the new pid (grow_fd(), to reach the
     * memfd through /proc/PID/fd) finds the memfd already at g_arena.fd. */
    atomic_store_explicit((_Atomic int32_t *)&hdr->primary_pid,
                          (int32_t)getpid(), memory_order_release);
    return 0;
}

FH_API int fh_arena_attach(int fd, uintptr_t addr, size_t size,
                           char *err, size_t errlen)
{
    struct fh_arena_hdr probe;
    void *base;

    if (err && errlen)
        err[0] = '\0';
    if (g_arena.base) {
        if (err)
            snprintf(err, errlen, "this process already has an arena at %p",
                     g_arena.base);
        errno = EEXIST;
        return -1;
    }
    /* Check what the fd holds before touching the address space. */
    if (pread(fd, &probe, sizeof probe, 0) != (ssize_t)sizeof probe ||
        probe.magic != FH_ARENA_MAGIC || probe.version != FH_ARENA_VERSION ||
        probe.max_size != size || probe.base != (uint64_t)addr) {
        if (err)
            snprintf(err, errlen, "fd %d is not a forkhost arena of %zu bytes "
                     "at 0x%lx", fd, size, (unsigned long)addr);
        errno = EINVAL;
        return -1;
    }
    base = mmap((void *)addr, size, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_FIXED_NOREPLACE | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        if (e == EEXIST && err)
            describe_conflict(addr, addr + size, err, errlen);
        else if (err)
            snprintf(err, errlen, "mmap at 0x%lx: %s", (unsigned long)addr,
                     strerror(e));
        errno = e;
        return -1;
    }
    if ((uintptr_t)base != addr) {
        /* Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the
         * address as a hint; a mapping elsewhere is as good as a conflict. */
        munmap(base, size);
        describe_conflict(addr, addr + size, err, errlen);
        errno = EEXIST;
        return -1;
    }
    g_arena.base = base;
    g_arena.max = size;
    g_arena.fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    remember_file(g_arena.fd);
    fh__ring_register_process();
    return 0;
}
