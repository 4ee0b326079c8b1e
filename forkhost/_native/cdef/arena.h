/* cffi view of forkhost/arena.h and the library's identity. */
#define FH_ARENA_HUGE_AUTO 1
#define FH_ARENA_HUGE_ONLY 2
#define FH_ARENA_F_HUGE 1
#define FH_ARENA_HDR_SIZE 4096
#define FH_ARENA_MIN_SIZE ...
#define FH_ARENA_DEFAULT_MAX ...

struct fh_arena_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t page_size;
    uint64_t size;
    uint64_t base;
    int32_t  primary_pid;
    uint32_t flags;
    uint64_t mz_dir_offset;
    uint64_t data_offset;
    uint64_t max_size;
    uint64_t ring_rec_offset;
};

const char *fh_version(void);
int fh_arena_create(size_t size, unsigned flags, const char *name);
int fh_arena_create_growable(size_t size, size_t max, unsigned flags, const char *name);
size_t fh_arena_max(void);
int fh_arena_attach(int fd, uintptr_t addr, size_t size, char *err, size_t errlen);
int fh_arena_adopt(int fd, uintptr_t addr, size_t size, int want_fd, char *err,
                   size_t errlen);
int fh_arena_range_taken(uintptr_t addr, size_t size, char *err, size_t errlen);
void *fh_arena_base(void);
size_t fh_arena_size(void);
int fh_arena_fd(void);
struct fh_arena_hdr *fh_arena_hdr(void);
int fh_arena_contains(const void *p, size_t len);

int fh_flush_stdio(void);
