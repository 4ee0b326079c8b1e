/*
 * parse_size.c - sizes as people write them ("64M", "1.5 GiB", "4096"),
 * for fh_init's --arena-size and the THP threshold (thp.c).  A leaf.
 */
#include <errno.h>
#include <string.h>
#include <stdlib.h>

#include "forkhost.h"

FH_API int fh_parse_size(const char *text, size_t *out)
{
    char buf[64], *end;
    size_t n = strlen(text), mult = 1;
    double v;

    while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\t'))
        n--;
    while (n > 0 && (*text == ' ' || *text == '\t'))
        text++, n--;
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, text, n);
    buf[n] = '\0';
    if (n > 0 && (buf[n - 1] == 'b' || buf[n - 1] == 'B'))
        buf[--n] = '\0';
    if (n > 0 && (buf[n - 1] == 'i' || buf[n - 1] == 'I'))
        buf[--n] = '\0';
    if (n > 0) {
        switch (buf[n - 1]) {
        case 'k': case 'K': mult = (size_t)1 << 10; break;
        case 'm': case 'M': mult = (size_t)1 << 20; break;
        case 'g': case 'G': mult = (size_t)1 << 30; break;
        case 't': case 'T': mult = (size_t)1 << 40; break;
        }
        if (mult > 1)
            buf[--n] = '\0';
    }
    if (n == 0)
        return -1;
    errno = 0;
    v = strtod(buf, &end);
    if (*end != '\0' || errno != 0 || v != v || v < 0 || v * (double)mult >= 0x1p63)
        return -1;
    *out = (size_t)(v * (double)mult);
    return 0;
}
