/*
 * fuzz_cgroup.c - the two parsers a secondary uses to join its client's
 * cgroup (csrc/lib/spawn.c, "The client's cgroup"), on arbitrary text:
 * fh__cgroup_path_of() over the contents of /proc/PID/cgroup, and
 * fh__cgroup2_mount_of() over one line of /proc/self/mountinfo.  Both read
 * files of the kernel's, but of another process (the client's cgroup) or
 * of a mount namespace anybody may have filled, so their input is not
 * trusted.
 *
 * The input's first byte chooses the parser (even: the cgroup file, odd: a
 * mountinfo line), the second is unused; the rest is the text, which the
 * parser gets NUL-terminated in a buffer of exactly its size, so ASan sees
 * any read past it.  Checked invariants: the verdict is 0 or 1 and the
 * same twice; a path found is non-empty, shorter than PATH_MAX, and is
 * what follows "0::" on the text's first line that starts so (the whole
 * rest of that line); a mount point found comes from a line with
 * " - cgroup2 " after its fields, whose root field is "/", is no longer
 * than its field, and is that field itself, whole, when the field has no
 * escape (one too long for PATH_MAX is refused, never cut short).
 *
 * Built and run as fuzz_ipc.c is (see there): with clang's libFuzzer, or
 * standalone (FUZZ_STANDALONE) with fuzz_driver.h's seeded loop.
 */
#include "forkhost/spawn.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz_cgroup"
#include "fuzz_fail.h"

/* Verdicts seen: 1 no cgroup v2 path, 2 not a cgroup2 mount, 3 a cgroup2
 * mount line refused (its root or mount point), 4 a path, 5 a mount. */
enum { NO_PATH = 1, NOT_CGROUP2, CGROUP2_REFUSED, PATH_FOUND, MOUNT_FOUND, NVERDICTS = 5 };
static unsigned long long g_seen[NVERDICTS + 1];

/* The text's first line that starts with "0::": what follows it, up to
 * the line's end, into want; 1, or 0 when there is no such line. */
static int first_v2_line(const char *text, char *want, size_t cap, size_t *len)
{
    for (const char *line = text;;) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);

        if (n >= 3 && memcmp(line, "0::", 3) == 0) {
            *len = n - 3;
            memcpy(want, line + 3, n - 3 < cap ? n - 3 : cap);
            return 1;
        }
        if (end == NULL)
            return 0;
        line = end + 1;
    }
}

static void check_path(const char *text)
{
    static char out[PATH_MAX], out2[PATH_MAX], want[PATH_MAX];
    size_t wlen = 0;
    int r = fh__cgroup_path_of(text, out), has = first_v2_line(text, want, sizeof want, &wlen);

    if (fh__cgroup_path_of(text, out2) != r || (r == 1 && strcmp(out, out2) != 0))
        FAIL("two verdicts on one cgroup file");
    if (r != 0 && r != 1)
        FAIL("cgroup verdict %d", r);
    if (r == 0) {
        if (has && wlen > 0 && wlen < PATH_MAX)
            FAIL("a \"0::\" line of %zu bytes not found", wlen);
        g_seen[NO_PATH]++;
        return;
    }
    if (!has || strlen(out) != wlen || wlen == 0 || wlen >= PATH_MAX
        || memcmp(out, want, wlen) != 0 || strchr(out, '\n') != NULL)
        FAIL("path \"%.80s\" is not the first \"0::\" line's", out);
    g_seen[PATH_FOUND]++;
}

static void check_mount(const char *line)
{
    static char out[PATH_MAX], out2[PATH_MAX];
    const char *dash = strstr(line, " - "), *field = line;
    int r = fh__cgroup2_mount_of(line, out), i;
    size_t flen;

    if (fh__cgroup2_mount_of(line, out2) != r || (r == 1 && strcmp(out, out2) != 0))
        FAIL("two verdicts on one mountinfo line");
    if (r != 0 && r != 1)
        FAIL("mount verdict %d", r);
    if (dash == NULL || strncmp(dash + 3, "cgroup2 ", 8) != 0) {
        if (r)
            FAIL("a mount point from a line that is no cgroup2 mount");
        g_seen[NOT_CGROUP2]++;
        return;
    }
    if (r == 0) {
        g_seen[CGROUP2_REFUSED]++;
        return;
    }
    for (i = 0; i < 4; i++) {            /* id parent dev root, to the point */
        if (i == 3 && strncmp(field, "/ ", 2) != 0)
            FAIL("a mount point from a root that is not \"/\"");
        field = strchr(field, ' ');
        if (field == NULL)
            FAIL("a mount point from a line of %d fields", i + 1);
        field++;
    }
    flen = strcspn(field, " ");
    if (strlen(out) == 0 || strlen(out) >= PATH_MAX || strlen(out) > flen)
        FAIL("mount point of %zu bytes from a field of %zu", strlen(out), flen);
    if (memchr(field, '\\', flen) == NULL
        && (strlen(out) != flen || memcmp(out, field, flen) != 0))
        FAIL("mount point \"%.80s\" is not its field (cut short?)", out);
    g_seen[MOUNT_FOUND]++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text;
    size_t n;

    if (size < 2)
        return 0;
    n = size - 2;
    text = malloc(n + 1);
    if (text == NULL)
        FAIL("malloc");
    memcpy(text, data + 2, n);
    text[n] = '\0';
    if (data[0] % 2 == 0)
        check_path(text);
    else
        check_mount(text);
    free(text);
    return 0;
}

#ifdef FUZZ_STANDALONE
/* ---- the standalone driver (no libFuzzer) ----------------------------- */

#undef MAX_INPUT        /* <limits.h>'s (a terminal's), not fuzz_driver.h's */
#define MAX_INPUT (2 + PATH_MAX + 256)
#define NSEEDS 7

#include "fuzz_driver.h"

static void make_seed(struct input *in, int mount, const char *text)
{
    in->data[0] = (uint8_t)mount;
    in->data[1] = 0;
    in->len = 2 + strlen(text);
    memcpy(in->data + 2, text, strlen(text));
}

static void make_seeds(void)
{
    make_seed(&seeds[0], 0, "0::/system.slice/forkhost.service\n");
    make_seed(&seeds[1], 0, "12:cpu,cpuacct:/a\n1:name=systemd:/b\n0::/user.slice/c\n");
    make_seed(&seeds[2], 1, "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev - "
                            "cgroup2 cgroup2 rw,nsdelegate");
    make_seed(&seeds[3], 1, "40 24 0:31 / /mnt/my\\040cgroup rw shared:9 - "
                            "cgroup2 none rw");
    make_seed(&seeds[4], 1, "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw");
    make_seed(&seeds[5], 1, "41 24 0:30 /sub /sys/fs/cgroup/sub rw - cgroup2 cgroup2 rw");
    {   /* a mount point a few bytes short of PATH_MAX: insertions pass it */
        static char line[PATH_MAX + 64];
        int n = snprintf(line, sizeof line, "42 24 0:30 / /");

        memset(line + n, 'm', PATH_MAX - 8);
        strcpy(line + n + PATH_MAX - 8, " rw - cgroup2 x rw");
        make_seed(&seeds[6], 1, line);
    }
}

static void mutate(void)
{
    static const uint32_t edges[] = {0, 0x3a3a30, 0x2d20, 0x5c303430, 0x0a};
    static const struct mutations m = {
        edges, sizeof edges / sizeof edges[0], 4, "0:/\\ -\n24c7", 12};

    mutate_with(&m);
}

static void fix(void)
{
}

static void check_seed(int i)
{
    unsigned long long before[NVERDICTS + 1];

    memcpy(before, g_seen, sizeof before);
    LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].len);
    /* Every seed but the ext4 line and the /sub root is one found. */
    if (i != 4 && i != 5 && g_seen[PATH_FOUND] == before[PATH_FOUND]
        && g_seen[MOUNT_FOUND] == before[MOUNT_FOUND])
        FAIL("seed %d found nothing", i);
    memcpy(g_seen, before, sizeof before);
}

static const struct input *pick(void)
{
    return &seeds[rnd() % NSEEDS];
}

int main(int argc, char **argv)
{
    static const struct fuzz_target t = {
        "fuzz_cgroup", LLVMFuzzerTestOneInput, make_seeds, check_seed, pick,
        mutate, fix, g_seen, NVERDICTS, CGROUP2_REFUSED, "a path, a mount point"};

    return fuzz_main(argc, argv, &t);
}
#endif
