/*
 * pytext.c - messages as the Python code they replaced printed them:
 * bounded strings, Python's repr() of a str made from bytes, and text as
 * an ERROR record carries it (pytext.h).  For the request parser
 * (request.c) and the entry classifier (entry.c).
 */
#include "pytext.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void fh__put(struct fh__out *o, const char *s, size_t n)
{
    size_t room = o->size - 1 - o->len;

    if (n > room)
        n = room;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

void fh__puts(struct fh__out *o, const char *s)
{
    fh__put(o, s, strlen(s));
}

void fh__putf(struct fh__out *o, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int k;

    va_start(ap, fmt);
    k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0)
        fh__put(o, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* One UTF-8 sequence at s (n bytes left), as Python's strict decoder
 * accepts it: its length, with *cp the code point; 0 if s does not start
 * one (that byte is then undecodable on its own). */
static size_t utf8_char(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t len, i;
    uint32_t v, lo = 0x80, hi = 0xbf;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        v = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0;                    /* no overlong forms */
        else if (c == 0xed)
            hi = 0x9f;                    /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        v = c & 0x07;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;                    /* nothing past U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (i = 1; i < len; i++) {
        if (i > 1 && (s[i] < 0x80 || s[i] > 0xbf))
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Code points str.isprintable() refuses past ASCII: categories Cc, Cf,
 * Zs, Zl, Zp and Co (unassigned ones, Cn, are taken as printable). */
static const uint32_t unprintable[][2] = {
    {0x80, 0xa0}, {0xad, 0xad}, {0x600, 0x605}, {0x61c, 0x61c},
    {0x6dd, 0x6dd}, {0x70f, 0x70f}, {0x890, 0x891}, {0x8e2, 0x8e2},
    {0x1680, 0x1680}, {0x180e, 0x180e}, {0x2000, 0x200f}, {0x2028, 0x202f},
    {0x205f, 0x2064}, {0x2066, 0x206f}, {0x3000, 0x3000}, {0xe000, 0xf8ff},
    {0xfeff, 0xfeff}, {0xfff9, 0xfffb}, {0x110bd, 0x110bd},
    {0x110cd, 0x110cd}, {0x13430, 0x13438}, {0x1bca0, 0x1bca3},
    {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f},
    {0xf0000, 0xffffd}, {0x100000, 0x10fffd},
};

static int printable(uint32_t cp)
{
    size_t i;

    if (cp < 0x80)
        return cp >= 0x20 && cp < 0x7f;
    for (i = 0; i < sizeof unprintable / sizeof unprintable[0]; i++)
        if (cp >= unprintable[i][0] && cp <= unprintable[i][1])
            return 0;
    return 1;
}

/* The quote repr() picks: ' unless the text has ' and no ". */
static char repr_quote(const unsigned char *s, size_t n)
{
    return memchr(s, '\'', n) != NULL && memchr(s, '"', n) == NULL ? '"'
                                                                    : '\'';
}

/* An ASCII character as repr() writes it (str and bytes agree there). */
static void put_ascii(struct fh__out *o, unsigned char c, char quote)
{
    char ch = (char)c;

    if (c == '\\' || ch == quote) {
        fh__put(o, "\\", 1);
        fh__put(o, &ch, 1);
    } else if (c == '\n') {
        fh__puts(o, "\\n");
    } else if (c == '\r') {
        fh__puts(o, "\\r");
    } else if (c == '\t') {
        fh__puts(o, "\\t");
    } else if (c < 0x20 || c == 0x7f) {
        fh__putf(o, "\\x%02x", c);
    } else {
        fh__put(o, &ch, 1);
    }
}

/* repr(os.fsdecode(s)): the text as Python shows a str that came from
 * these bytes, undecodable bytes as the surrogates they become. */
void fh__put_repr(struct fh__out *o, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    char quote = repr_quote(s, n);
    size_t i = 0, k;
    uint32_t cp;

    fh__put(o, &quote, 1);
    while (i < n) {
        k = utf8_char(s + i, n - i, &cp);
        if (k == 0)
            fh__putf(o, "\\udc%02x", s[i]);
        else if (cp < 0x80)
            put_ascii(o, s[i], quote);
        else if (printable(cp))
            fh__put(o, text + i, k);
        else if (cp <= 0xff)
            fh__putf(o, "\\x%02x", (unsigned)cp);
        else if (cp <= 0xffff)
            fh__putf(o, "\\u%04x", (unsigned)cp);
        else
            fh__putf(o, "\\U%08x", (unsigned)cp);
        i += k ? k : 1;
    }
    fh__put(o, &quote, 1);
}

/* Text that goes into a message as it is, as the ERROR record carries a
 * Python str: a newline becomes a space and an undecodable byte '?'
 * (protocol.encode_error). */
void fh__put_text(struct fh__out *o, const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, k;
    uint32_t cp;

    while (i < n) {
        k = utf8_char(s + i, n - i, &cp);
        if (k == 0)
            fh__put(o, "?", 1);
        else if (cp == '\n')
            fh__put(o, " ", 1);
        else
            fh__put(o, text + i, k);
        i += k ? k : 1;
    }
}
