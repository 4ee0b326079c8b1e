/* cffi cdef for csrc/include/forkhost/hotset.h: the pool members' hot set
 * (what the tests drive by hand). */

struct fh_hotset { ...; };
struct fh_hotset *fh_hotset_create(void);
void fh_hotset_arm(struct fh_hotset *h, unsigned launches);
void fh_hotset_note(struct fh_hotset *h, int python);
unsigned fh_hotset_pages(struct fh_hotset *h);
long fh_member_prefault(void);
