/*
 * rt.c - the part of libc that forkhost-run uses, written on raw system
 * calls, so that the client links no libc at all (x86_64 Linux only; on
 * other machines build_native.py links libc statically as before).
 *
 * Why: a launch is a whole client process, and starting a process is most
 * of what a launch costs.  A static glibc binary that does nothing still
 * pays for TLS and IRELATIVE set-up, tunables, stdio and atexit, in page
 * faults and CPU; this runtime takes a handful of faults (the figures:
 * docs/architecture.md, "The client").
 *
 * Every function here has the prototype the system headers declare, so
 * forkhost-run.c is one source for both builds and calls what it always
 * called.  Only what the client calls is here, and only as far as it calls
 * it: vsnprintf knows the conversions the client's messages use (%s %d %u
 * %x %c %g %% with the l/ll/z sizes and a precision; no widths or flags)
 * and prints anything else as written, without taking its argument, so a
 * message that needs more needs a line here and a case in
 * csrc/tests/rt/test_rt.c; strtod reads decimal numbers, inf and nan, not
 * hex floats.  strerror's texts are the build machine's C library's, generated
 * by build_native.py into rt_errors.h.
 *
 * The process is single-threaded and signal handlers only call write(), so
 * errno is one plain int.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "rt_errors.h"      /* rt_error_text[], RT_NERRORS: generated */

#if !defined(__x86_64__) || !defined(__linux__)
#error "rt.c is for x86_64 Linux; build_native.py links libc elsewhere"
#endif

char **environ;
int rt_errno;     /* not static: the asm below stores to it by name */

int *__errno_location(void)
{
    return &rt_errno;
}

/* ------------------------------------------------------------------ */
/* start and system calls                                               */

int main(int argc, char **argv);
__attribute__((noreturn, used)) void rt_start(long *sp);

/* The kernel starts us with argc, argv[], NULL, envp[], NULL, auxv at
 * %rsp.  rt_start gets that pointer with the stack aligned as a call
 * expects; %rbp = 0 ends a debugger's backtrace here. */
__asm__(".pushsection .text\n"
        ".global _start\n"
        ".type _start, @function\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call rt_start\n"
        "    hlt\n"
        ".popsection\n");

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long r;

    __asm__ volatile("syscall"
                     : "=a"(r)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return r;
}

#define SYS(n, a, b, c) rt_result(sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0))
#define SYS6(n, a, b, c, d, e, f) \
    rt_result(sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f)))

/* The kernel returns -4095..-1 for an error. */
static long rt_result(long r)
{
    if ((unsigned long)r > -4096UL) {
        rt_errno = (int)-r;
        return -1;
    }
    return r;
}

void rt_start(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);

    environ = argv + argc + 1;
    _exit(main(argc, argv));
}

/* glibc's syscall(): number in %rdi, up to six arguments after it. */
__asm__(".pushsection .text\n"
        ".global syscall\n"
        ".type syscall, @function\n"
        "syscall:\n"
        "    mov %rdi, %rax\n"
        "    mov %rsi, %rdi\n"
        "    mov %rdx, %rsi\n"
        "    mov %rcx, %rdx\n"
        "    mov %r8, %r10\n"
        "    mov %r9, %r8\n"
        "    mov 8(%rsp), %r9\n"
        "    syscall\n"
        "    cmp $-4095, %rax\n"
        "    jae 1f\n"
        "    ret\n"
        "1:  neg %eax\n"
        "    mov %eax, rt_errno(%rip)\n"
        "    mov $-1, %rax\n"
        "    ret\n"
        ".popsection\n");

void _exit(int status)
{
    for (;;)
        sys6(SYS_exit_group, status, 0, 0, 0, 0, 0);
}

ssize_t read(int fd, void *buf, size_t n)    { return SYS(SYS_read, fd, buf, n); }
ssize_t write(int fd, const void *buf, size_t n) { return SYS(SYS_write, fd, buf, n); }
int close(int fd)                            { return (int)SYS(SYS_close, fd, 0, 0); }
int pipe2(int fds[2], int flags)             { return (int)SYS(SYS_pipe2, fds, flags, 0); }
mode_t umask(mode_t mask)                    { return (mode_t)SYS(SYS_umask, mask, 0, 0); }
uid_t getuid(void)                           { return (uid_t)SYS(SYS_getuid, 0, 0, 0); }
uid_t geteuid(void)                          { return (uid_t)SYS(SYS_geteuid, 0, 0, 0); }
pid_t getpid(void)                           { return (pid_t)SYS(SYS_getpid, 0, 0, 0); }
int kill(pid_t pid, int sig)                 { return (int)SYS(SYS_kill, pid, sig, 0); }
int raise(int sig)                           { return kill(getpid(), sig); }
int poll(struct pollfd *p, nfds_t n, int ms) { return (int)SYS(SYS_poll, p, n, ms); }
pid_t getpgrp(void)                          { return (pid_t)SYS(SYS_getpgid, 0, 0, 0); }

/* The terminal requests (csrc/client/tty.c) all take a pointer. */
int ioctl(int fd, unsigned long req, ...)
{
    void *arg;
    va_list ap;

    va_start(ap, req);
    arg = va_arg(ap, void *);
    va_end(ap);
    return (int)SYS(SYS_ioctl, fd, req, arg);
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;

    /* O_TMPFILE includes O_DIRECTORY: only all of its bits take a mode. */
    if ((flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return (int)SYS6(SYS_openat, AT_FDCWD, path, flags, mode, 0, 0);
}

/* x86_64's struct stat is the kernel's: no conversion. */
int stat(const char *restrict path, struct stat *restrict st)
{
    return (int)SYS6(SYS_newfstatat, AT_FDCWD, path, st, 0, 0, 0);
}

int fstat(int fd, struct stat *st)
{
    return (int)SYS(SYS_fstat, fd, st, 0);
}

/* The commands without an argument are not given one: read none.  The
 * client passes an int to the others (F_SETFL). */
int fcntl(int fd, int cmd, ...)
{
    int arg = 0;

    if (cmd != F_GETFD && cmd != F_GETFL) {
        va_list ap;
        va_start(ap, cmd);
        arg = va_arg(ap, int);
        va_end(ap);
    }
    return (int)SYS(SYS_fcntl, fd, cmd, arg);
}

int socket(int domain, int type, int proto)
{
    return (int)SYS(SYS_socket, domain, type, proto);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    return (int)SYS(SYS_connect, fd, addr, len);
}

ssize_t sendmsg(int fd, const struct msghdr *mh, int flags)
{
    return SYS(SYS_sendmsg, fd, mh, flags);
}

ssize_t recvmsg(int fd, struct msghdr *mh, int flags)
{
    return SYS(SYS_recvmsg, fd, mh, flags);
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    return (int)SYS6(SYS_setsockopt, fd, level, name, val, len, 0);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    return (int)SYS6(SYS_getsockopt, fd, level, name, val, len, 0);
}

int setrlimit(__rlimit_resource_t res, const struct rlimit *rl)
{
    return (int)SYS6(SYS_prlimit64, 0, res, rl, 0, 0, 0);
}

/* Two or three calls per launch: the system call, not the vDSO, is fine. */
int clock_gettime(clockid_t clk, struct timespec *ts)
{
    return (int)SYS(SYS_clock_gettime, clk, ts, 0);
}

/* ------------------------------------------------------------------ */
/* signals: the kernel's sigset is 64 bits, glibc's sigset_t 1024       */

#define KSIGSET 8       /* bytes of the kernel's sigset */
#define RT_SA_RESTORER 0x04000000UL

struct ksigaction {
    void        (*handler)(int);
    unsigned long flags;
    void        (*restorer)(void);
    unsigned long mask;
};

/* Returning from a handler: the kernel's x86_64 ABI wants SA_RESTORER. */
void rt_sigreturn(void);
__asm__(".pushsection .text\n"
        ".global rt_sigreturn\n"
        ".type rt_sigreturn, @function\n"
        "rt_sigreturn:\n"
        "    mov $15, %eax\n"           /* SYS_rt_sigreturn */
        "    syscall\n"
        ".popsection\n");

int sigemptyset(sigset_t *set)
{
    memset(set, 0, sizeof(*set));
    return 0;
}

int sigaddset(sigset_t *set, int sig)
{
    if (sig <= 0 || sig > 64) {
        rt_errno = EINVAL;
        return -1;
    }
    set->__val[0] |= 1UL << (sig - 1);
    return 0;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    unsigned long kold = 0;
    long r = SYS6(SYS_rt_sigprocmask, how, set ? &set->__val[0] : NULL,
                  old ? &kold : NULL, KSIGSET, 0, 0);

    if (r == 0 && old) {
        sigemptyset(old);
        old->__val[0] = kold;
    }
    return (int)r;
}

int sigaction(int sig, const struct sigaction *sa, struct sigaction *old)
{
    struct ksigaction k, kold;
    long r;

    if (sa) {
        k.handler = sa->sa_handler;
        k.flags = (unsigned long)(unsigned)sa->sa_flags | RT_SA_RESTORER;
        k.restorer = rt_sigreturn;
        k.mask = sa->sa_mask.__val[0];
    }
    r = SYS6(SYS_rt_sigaction, sig, sa ? &k : NULL, old ? &kold : NULL,
             KSIGSET, 0, 0);
    if (r == 0 && old) {
        memset(old, 0, sizeof(*old));
        old->sa_handler = kold.handler;
        old->sa_flags = (int)(kold.flags & ~RT_SA_RESTORER);
        old->sa_mask.__val[0] = kold.mask;
    }
    return (int)r;
}

/* ------------------------------------------------------------------ */
/* memory and strings                                                   */

/* Built with -fno-tree-loop-distribute-patterns, or gcc would turn these
 * loops into calls to themselves. */
void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;

    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;

    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x - *y;
    return 0;
}

size_t strlen(const char *s)
{
    const char *p = s;

    while (*p)
        p++;
    return (size_t)(p - s);
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (!*a)
            break;
    }
    return 0;
}

int strcmp(const char *a, const char *b)
{
    return strncmp(a, b, SIZE_MAX);
}

char *strrchr(const char *s, int c)
{
    const char *last = NULL;

    for (;; s++) {
        if (*s == (char)c)
            last = s;
        if (!*s)
            return (char *)last;
    }
}

char *getenv(const char *name)
{
    size_t n = strlen(name);

    if (!environ)
        return NULL;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

char *strerror(int err)
{
    static char unknown[32];

    if (err >= 0 && err < RT_NERRORS && rt_error_text[err])
        return (char *)rt_error_text[err];
    snprintf(unknown, sizeof(unknown), "Unknown error %d", err);
    return unknown;
}

/* ------------------------------------------------------------------ */
/* numbers                                                              */

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* s starts with word, in any case. */
static int word_at(const char *s, const char *word)
{
    for (; *word; s++, word++)
        if (lower((unsigned char)*s) != *word)
            return 0;
    return 1;
}

/* 10^e, exact for e <= 22 (every partial product is an exact double). */
static double pow10_of(unsigned e)
{
    double r = 1.0, b = 10.0;

    for (; e; e >>= 1, b *= b)
        if (e & 1)
            r *= b;
    return r;
}

/*
 * Decimal numbers (digits, a point, an exponent), inf, infinity and nan,
 * after optional white space and sign.  Up to 19 significant digits are
 * kept; the result is correctly rounded for what a timeout is written with
 * (up to 15 digits, exponents within +-22) and within a few ulps otherwise.
 */
double strtod(const char *s, char **end)
{
    const char *p = s;
    double sign = 1.0, v;
    uint64_t mant = 0;
    int digits = 0, exp10 = 0, any = 0;

    while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
        p++;
    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1.0 : 1.0;
    if (word_at(p, "inf")) {
        p += word_at(p, "infinity") ? 8 : 3;
        v = __builtin_inf();
        goto out;
    }
    if (word_at(p, "nan")) {
        p += 3;
        v = __builtin_nan("");
        goto out;
    }
    for (; *p >= '0' && *p <= '9'; p++, any = 1) {
        if (digits < 19) {
            mant = mant * 10 + (uint64_t)(*p - '0');
            digits += mant != 0;
        } else {
            exp10++;
        }
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, any = 1) {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                digits += mant != 0;
                exp10--;
            }
        }
    }
    if (!any) {
        if (end)
            *end = (char *)s;
        return 0.0;
    }
    if (*p == 'e' || *p == 'E') {
        const char *q = p + 1;
        int esign = 1, e = 0;

        if (*q == '+' || *q == '-')
            esign = *q++ == '-' ? -1 : 1;
        if (*q >= '0' && *q <= '9') {
            for (; *q >= '0' && *q <= '9'; q++)
                if (e < 10000)
                    e = e * 10 + (*q - '0');
            exp10 += esign * e;
            p = q;
        }
    }
    /* Powers of ten up to 1e22 are exact doubles, so 0.3 is 3 / 10,
     * rounded once; larger exponents are taken in steps of 1e22. */
    v = (double)mant;
    for (; exp10 > 22; exp10 -= 22)
        v *= 1e22;
    for (; exp10 < -22; exp10 += 22)
        v /= 1e22;
    if (exp10 < 0)
        v /= pow10_of((unsigned)-exp10);
    else
        v *= pow10_of((unsigned)exp10);
out:
    if (end)
        *end = (char *)p;
    return sign * v;
}

/* ------------------------------------------------------------------ */
/* formatting                                                           */

struct out {
    char  *buf;
    size_t size;
    size_t len;     /* as if the buffer were unbounded */
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void puts_n(struct out *o, const char *s, size_t n)
{
    while (n--)
        put(o, *s++);
}

static void put_unsigned(struct out *o, unsigned long long v, unsigned base,
                         int min_digits)
{
    char tmp[24];
    int n = 0;

    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (n < min_digits && n < (int)sizeof(tmp))
        tmp[n++] = '0';
    while (n)
        put(o, tmp[--n]);
}

/* %g with the default precision, 6 significant digits, as C prints it:
 * fixed notation for exponents -4..5, else d.ddddde+XX; no trailing
 * zeros, no point without a digit after it. */
static void put_g(struct out *o, double v)
{
    uint64_t m;
    int exp10 = 0, ndig = 6, point;
    char d[8];

    if (v != v) {
        puts_n(o, "nan", 3);
        return;
    }
    if (v < 0) {
        put(o, '-');
        v = -v;
    }
    if (v == __builtin_inf()) {
        puts_n(o, "inf", 3);
        return;
    }
    if (v == 0.0) {
        put(o, '0');
        return;
    }
    /* Scale into [1e5, 1e6) and round to an integer of 6 digits. */
    while (v >= 1e6) {
        v /= 10.0;
        exp10++;
    }
    while (v < 1e5) {
        v *= 10.0;
        exp10--;
    }
    m = (uint64_t)(v + 0.5);
    if (m >= 1000000) {
        m /= 10;
        exp10++;
    }
    exp10 += 5;                 /* the exponent of the first digit */
    for (int k = 5; k >= 0; k--, m /= 10)
        d[k] = (char)('0' + m % 10);
    while (ndig > 1 && d[ndig - 1] == '0')
        ndig--;
    if (exp10 < -4 || exp10 >= 6) {
        put(o, d[0]);
        if (ndig > 1) {
            put(o, '.');
            puts_n(o, d + 1, (size_t)ndig - 1);
        }
        put(o, 'e');
        put(o, exp10 < 0 ? '-' : '+');
        put_unsigned(o, (unsigned)(exp10 < 0 ? -exp10 : exp10), 10, 2);
        return;
    }
    if (exp10 < 0) {
        puts_n(o, "0.", 2);
        for (int k = -1; k > exp10; k--)
            put(o, '0');
        puts_n(o, d, (size_t)ndig);
        return;
    }
    point = exp10 + 1;          /* digits before the point */
    for (int k = 0; k < point; k++)
        put(o, k < ndig ? d[k] : '0');
    if (ndig > point) {
        put(o, '.');
        puts_n(o, d + point, (size_t)(ndig - point));
    }
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };

    for (const char *f = fmt; *f; f++) {
        const char *start = f;
        int prec = -1, size_mod = 0;    /* 1: l, 2: ll, 3: z */

        if (*f != '%') {
            put(&o, *f);
            continue;
        }
        f++;
        if (*f == '.') {
            f++;
            if (*f == '*') {
                prec = va_arg(ap, int);
                f++;
            } else {
                for (prec = 0; *f >= '0' && *f <= '9'; f++)
                    prec = prec * 10 + (*f - '0');
            }
        }
        if (*f == 'z') {
            size_mod = 3;
            f++;
        } else if (*f == 'l') {
            size_mod = 1;
            if (*++f == 'l') {
                size_mod = 2;
                f++;
            }
        }
        switch (*f) {
        case '%':
            put(&o, '%');
            break;
        case 'c':
            put(&o, (char)va_arg(ap, int));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            size_t n = 0;

            if (!s)
                s = "(null)";
            while ((prec < 0 || n < (size_t)prec) && s[n])
                n++;
            puts_n(&o, s, n);
            break;
        }
        case 'd':
        case 'i': {
            long long v = size_mod == 2 ? va_arg(ap, long long)
                        : size_mod == 1 ? va_arg(ap, long)
                        : size_mod == 3 ? (long long)va_arg(ap, ssize_t)
                        : va_arg(ap, int);
            unsigned long long u = (unsigned long long)v;

            if (v < 0) {
                put(&o, '-');
                u = -u;
            }
            put_unsigned(&o, u, 10, 1);
            break;
        }
        case 'u':
        case 'x': {
            unsigned long long v = size_mod == 2 ? va_arg(ap, unsigned long long)
                                 : size_mod == 1 ? va_arg(ap, unsigned long)
                                 : size_mod == 3 ? va_arg(ap, size_t)
                                 : va_arg(ap, unsigned);

            put_unsigned(&o, v, *f == 'x' ? 16 : 10, 1);
            break;
        }
        case 'g':
            put_g(&o, va_arg(ap, double));
            break;
        default:                /* not ours to know: print it as written */
            if (!*f)
                f--;
            puts_n(&o, start, (size_t)(f - start + 1));
            break;
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return o.len > INT_MAX ? INT_MAX : (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
