/*
 * pytext.h - messages written as Python wrote them (pytext.c); internal,
 * shared by request.c and entry.c.
 */
#ifndef FORKHOST_PYTEXT_H
#define FORKHOST_PYTEXT_H

#include <stddef.h>

/* A bounded string being built: what does not fit is dropped, len counts
 * what was kept. */
struct fh__out {
    char  *buf;
    size_t size;                          /* room, the NUL included */
    size_t len;
};

void fh__put(struct fh__out *o, const char *s, size_t n);
void fh__puts(struct fh__out *o, const char *s);
void fh__putf(struct fh__out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* repr(os.fsdecode(s)): the text as Python shows a str that came from
 * these bytes, undecodable bytes as the surrogates they become. */
void fh__put_repr(struct fh__out *o, const char *text, size_t n);
/* Text that goes into a message as it is, as the ERROR record carries a
 * Python str: a newline becomes a space and an undecodable byte '?'
 * (protocol.encode_error). */
void fh__put_text(struct fh__out *o, const char *text, size_t n);

#endif /* FORKHOST_PYTEXT_H */
