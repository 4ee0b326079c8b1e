/* cffi view of forkhost/thp.h: huge pages for the primary's big private
 * anonymous regions before the template fork. */
#define FH_THP_MIN_BYTES ...
#define FH_THP_MIN_RESIDENT_PER_512 ...

struct fh_thp_report {
    uint64_t regions;
    uint64_t region_bytes;
    uint64_t chunk_bytes;
    uint64_t aligned_bytes;
    uint64_t collapsed_bytes;
    uint64_t failed_bytes;
    uint64_t sparse_bytes;
    uint64_t elapsed_ns;
    uint32_t fail_enomem;
    uint32_t fail_eagain;
    uint32_t fail_other;
    int32_t  first_errno;
    int32_t  unsupported;
    int32_t  madvise_errno;
};

long fh_thp_collapse(size_t min_bytes, struct fh_thp_report *r);
int fh_thp_wanted(const char *value, size_t *min_bytes);
