/*
 * arena.c - the one shared mapping of a prefix.
 *
 * The primary creates it (memfd + MAP_SHARED) before it forks the template,
 * so the template and every secondary inherit the same mapping at the same
 * address.  A memfd rather than a file in /dev/shm: it needs no name in a
 * shared namespace, vanishes with its last user, and a separate process can
 * still reach it through /proc/PID/fd/N or an fd handed over a socket.
 *
 * The process-local record below (g_arena) is inherited by fork as well; it
 * is written once, by fh_arena_create() or fh_arena_attach(), while the
 * process is still single-threaded, and only read afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "forkhost.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static struct {
    void  *base;
    size_t size;
    int    fd;
} g_arena = { NULL, 0, -1 };

FH_API const char *fh_version(void) { return FH_VERSION_STRING; }

FH_API void *fh_arena_base(void) { return g_arena.base; }
FH_API size_t fh_arena_size(void) { return g_arena.size; }
FH_API int fh_arena_fd(void) { return g_arena.fd; }
FH_API struct fh_arena_hdr *fh_arena_hdr(void) { return g_arena.base; }

FH_API int fh_arena_contains(const void *p, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)g_arena.base;
    if (!g_arena.base || a < b)
        return 0;
    return a - b <= g_arena.size && len <= g_arena.size - (a - b);
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
 * A memfd of size bytes mapped MAP_SHARED; huge: from the hugetlb pool (the
 * mmap reserves every page, and fails with ENOMEM when the pool cannot
 * cover them: someone took them since we looked).  Returns the mapping
 * (*fd set) or MAP_FAILED with errno set and nothing left open.
 */
static void *map_memfd(const char *name, size_t size, int huge, int *fd)
{
    void *base;
    int e;

    *fd = memfd_create(name, MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
    if (*fd < 0)
        return MAP_FAILED;
    /* ftruncate only sets the size: pages are allocated on first touch, so
     * an 8 GiB arena costs nothing until used, and fork() does not copy the
     * page tables of a MAP_SHARED mapping (the child faults them in). */
    if (ftruncate(*fd, (off_t)size) == 0) {
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
        if (base != MAP_FAILED)
            return base;
    }
    e = errno;
    close(*fd);
    *fd = -1;
    errno = e;
    return MAP_FAILED;
}

FH_API int fh_arena_create(size_t size, unsigned flags, const char *name)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), hpsize = 0;
    unsigned hdr_flags = 0;
    int fd = -1;
    void *base;

    if (g_arena.base) {
        errno = EEXIST;
        return -1;
    }
    if (size < FH_ARENA_MIN_SIZE) {
        errno = EINVAL;
        return -1;
    }
    if (flags & (FH_ARENA_HUGE_AUTO | FH_ARENA_HUGE_ONLY)) {
        size_t avail = free_huge_bytes(&hpsize);
        size_t want = hpsize ? (size + hpsize - 1) / hpsize * hpsize : 0;
        base = MAP_FAILED;
        if (hpsize && want <= avail)
            base = map_memfd(name, want, 1, &fd);
        if (base != MAP_FAILED) {
            size = want;
            page = hpsize;
            hdr_flags |= FH_ARENA_F_HUGE;
        } else if (flags & FH_ARENA_HUGE_ONLY) {
            errno = ENOMEM;
            return -1;
        }
        /* auto: normal pages, below. */
    }
    if (!(hdr_flags & FH_ARENA_F_HUGE)) {
        size = (size + page - 1) / page * page;
        base = map_memfd(name, size, 0, &fd);
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
    g_arena.base = base;
    g_arena.size = size;
    g_arena.fd = fd;
    if (fh__memzone_format(hdr) < 0) {
        int e = errno;
        munmap(base, size);
        g_arena.base = NULL;
        g_arena.size = 0;
        g_arena.fd = -1;
        close(fd);
        errno = e;
        return -1;
    }
    return 0;
}

/* Copy the /proc/self/maps line that overlaps [lo, hi) into err. */
static void describe_conflict(uintptr_t lo, uintptr_t hi, char *err, size_t errlen)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char line[512];

    snprintf(err, errlen, "address range 0x%lx-0x%lx is taken",
             (unsigned long)lo, (unsigned long)hi);
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx", &a, &b) == 2 && a < hi && b > lo) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(err, errlen,
                     "address range 0x%lx-0x%lx is taken by: %s",
                     (unsigned long)lo, (unsigned long)hi, line);
            break;
        }
    }
    fclose(f);
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
        probe.magic != FH_ARENA_MAGIC || probe.size != size ||
        probe.base != (uint64_t)addr) {
        if (err)
            snprintf(err, errlen, "fd %d is not a forkhost arena of %zu bytes "
                     "at 0x%lx", fd, size, (unsigned long)addr);
        errno = EINVAL;
        return -1;
    }
    base = mmap((void *)addr, size, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
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
    g_arena.size = size;
    g_arena.fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    return 0;
}
