/* cffi view of forkhost/demo.h */
static const char *const FH_DEMO_ZONE;
struct fh_demo_zone;
typedef uint64_t (*fh_demo_fn)(struct fh_demo_zone *zone, int64_t caller);
struct fh_demo_zone {
    fh_demo_fn fn;
    uint64_t   calls;
    int64_t    last_caller;
    char       greeting[64];
};
struct fh_demo_zone *fh_demo_setup(const char *greeting);
