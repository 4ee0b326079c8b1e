/*
 * tty.c - the client relays a pseudo-terminal, as ssh -t and docker run -t
 * do, so that a secondary started from a terminal has one (docs/cli.md,
 * "Terminals").
 *
 * When one of the client's stdin/stdout/stderr is its controlling terminal
 * (and $FORKHOST_TTY is not 0), the client opens a pty pair and sends the
 * slave in place of each std fd that is that terminal; the secondary makes
 * the slave its controlling terminal (csrc/lib/spawn.c, take_terminal).
 * While the secondary runs, the client copies the user's keys to the pty's
 * master and the master's output to the terminal, with the terminal in raw
 * mode: the pty's own line discipline, which starts with the terminal's
 * modes, does the echoing, the line editing and ^C / ^Z / ^\ for the
 * secondary's process group.  Std fds that are not the terminal (pipes,
 * files) go to the secondary as they are; with no terminal nothing here
 * runs.
 *
 * Job control maps onto the outer shell: when the pty's line discipline
 * stops the secondary (^Z, or SIGTTIN for a read while the client is a
 * background job), the template reports STOPPED and the client restores
 * the terminal and stops itself with the same signal; when the shell
 * continues the client (fg, bg), it continues the secondary's group
 * through the secondary's keeper (spawn.c), which first makes the pty's
 * foreground group follow the client's place on the real terminal.  The
 * client reads the terminal only while it is in the foreground, so a
 * background job never takes the user's keys.
 *
 * The modes are restored on every way out: the secondary's exit (after the
 * rest of its output), an error, a stop, and the client's own fault or
 * limit (client.c, on_signal, restores before the default action).  Every
 * other catchable signal is the secondary's: client.c forwards it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "forkhost/client.h"
#include "tty.h"

static struct {
    int   on;            /* relaying */
    int   outer;         /* the user's terminal: our own /dev/tty fd */
    int   master;        /* the pty's master, non-blocking */
    int   slave;         /* the pty's slave, ours too */
    unsigned slave_for;  /* bit k: std fd k is the terminal, send the slave */
    int   outer_open;    /* the terminal can still be read */
    int   master_open;   /* the master can still be read (no EIO yet) */
    volatile sig_atomic_t raw;  /* the terminal is in raw mode, saved holds
                                   the modes to restore */
    pid_t secondary;     /* its session and process group */
    pid_t pgrp;          /* ours: a process's own group never changes here */
    struct termios saved;
    size_t pending, off; /* keys read, not yet written to the master */
    unsigned char keys[4096];
} t = { .outer = -1, .master = -1, .slave = -1 };

/* The modes of terminal fd into tio; 0, or -1 if fd is no terminal.  The
 * kernel's TCGETS/TCSETS record is the start of the C library's struct
 * termios (it adds only room at the end), so one struct serves both the
 * libc-free client and libforkhost. */
static int get_modes(int fd, struct termios *tio)
{
    return ioctl(fd, TCGETS, tio) == 0 ? 0 : -1;
}

static int foreground(void)
{
    pid_t pg;

    return ioctl(t.outer, TIOCGPGRP, &pg) == 0 && pg == t.pgrp;
}

/* Change the terminal's modes even as a background job: a blocked SIGTTOU
 * lets tcsetattr() through instead of stopping us. */
static void set_modes(const struct termios *tio, unsigned long how)
{
    sigset_t ttou, old;

    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    sigprocmask(SIG_BLOCK, &ttou, &old);
    while (ioctl(t.outer, how, tio) < 0 && errno == EINTR)
        ;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Only while we are the foreground: once the shell has the terminal back
 * (say the script that started us in its group exited), its modes are its
 * own and ours would spoil its prompt. */
void fh__tty_restore(void)
{
    int saved = errno;

    if (t.on && t.raw) {
        t.raw = 0;
        if (foreground())
            set_modes(&t.saved, TCSETSW);
    }
    errno = saved;
}

/* Raw mode (cfmakeraw's), only in the foreground; the modes it replaces are
 * read anew each time: the shell may have changed them while we were
 * stopped. */
static void enter_raw(void)
{
    struct termios r;

    if (!t.on || t.raw || !t.outer_open || !foreground() ||
        get_modes(t.outer, &t.saved) < 0)
        return;
    r = t.saved;
    r.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR |
                             IGNCR | ICRNL | IXON);
    r.c_oflag &= ~(tcflag_t)OPOST;
    r.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    r.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    r.c_cflag |= CS8;
    r.c_cc[VMIN] = 1;
    r.c_cc[VTIME] = 0;
    t.raw = 1;
    set_modes(&r, TCSETSW);
}

static void copy_size(void)
{
    struct winsize ws;

    if (ioctl(t.outer, TIOCGWINSZ, &ws) == 0)
        (void)ioctl(t.master, TIOCSWINSZ, &ws);
}

static void close_all(void)
{
    if (t.slave >= 0)
        close(t.slave);
    if (t.master >= 0)
        close(t.master);
    if (t.outer >= 0)
        close(t.outer);
    t.slave = t.master = t.outer = -1;
    t.slave_for = 0;
}

/* The slave of master, without a path where the kernel can (4.13). */
static int open_slave(int master)
{
    char path[32];
    unsigned n;
    int fd = ioctl(master, TIOCGPTPEER,
                   (unsigned long)(O_RDWR | O_NOCTTY | O_CLOEXEC));

    if (fd >= 0 || ioctl(master, TIOCGPTN, &n) < 0)
        return fd;
    snprintf(path, sizeof path, "/dev/pts/%u", n);
    return open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
}

int fh__tty_prepare(unsigned stdio_mask)
{
    const char *want = getenv("FORKHOST_TTY");
    struct winsize ws;
    pid_t sid;
    int unlock = 0, k;

    if (want && *want && strcmp(want, "1") != 0)
        return strcmp(want, "0") == 0 ? 0 : -1;
    /* Our controlling terminal, if we have one; a std fd that is another
     * terminal is passed as it is. */
    t.outer = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    t.pgrp = getpgrp();
    if (t.outer < 0)
        return 0;
    /* TIOCGSID answers only on our controlling terminal. */
    for (k = 0; k <= 2; k++)
        if ((stdio_mask & (1u << k)) && ioctl(k, TIOCGSID, &sid) == 0)
            t.slave_for |= 1u << k;
    if (!t.slave_for || get_modes(t.outer, &t.saved) < 0)
        goto off;
    t.master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (t.master < 0 || ioctl(t.master, TIOCSPTLCK, &unlock) < 0)
        goto off;
    t.slave = open_slave(t.master);
    if (t.slave < 0)
        goto off;
    /* The pty starts as the terminal is: modes and size. */
    if (ioctl(t.slave, TCSETS, &t.saved) < 0)
        goto off;
    if (ioctl(t.outer, TIOCGWINSZ, &ws) == 0)
        (void)ioctl(t.master, TIOCSWINSZ, &ws);
    t.on = t.outer_open = t.master_open = 1;
    return 1;
off:
    close_all();
    return 0;
}

int fh__tty_fd(int k)
{
    return t.on && (t.slave_for & (1u << k)) ? t.slave : k;
}

int fh__tty_active(void)
{
    return t.on;
}

void fh__tty_started(pid_t secondary)
{
    if (!t.on)
        return;
    t.secondary = secondary;
    /* Our slave fd stays open: with the secondary's last fd closed the
     * master would answer EIO, and could before the last bytes written to
     * the slave are readable; we read until EAGAIN when EXITED comes. */
    enter_raw();
}

int fh__tty_poll(struct pollfd *p)
{
    int n = 0;

    if (!t.on)
        return 0;
    if (t.master_open) {
        p[n].fd = t.master;
        p[n].events = POLLIN | (t.pending ? POLLOUT : 0);
        p[n++].revents = 0;
    }
    /* The keys only in the foreground, and only as fast as the pty takes
     * them. */
    if (t.outer_open && t.master_open && !t.pending && foreground()) {
        p[n].fd = t.outer;
        p[n].events = POLLIN;
        p[n++].revents = 0;
    }
    return n;
}

/*
 * Output to the terminal while it is not in raw mode (we are a background
 * job: the shell has the terminal and its modes).  The pty has done the
 * output processing already, and the terminal would do it again: each
 * newline the pty turned into CR NL would arrive as CR CR NL.  Where both
 * map NL to CR NL (ONLCR, the usual), give the terminal back the plain NL,
 * so it writes what a direct run would.  A CR NL pair split between two
 * reads is left as it is.
 */
static size_t undo_onlcr(unsigned char *buf, size_t n)
{
    struct termios outer, inner;
    size_t i, o = 0;

    if (get_modes(t.outer, &outer) < 0 || get_modes(t.master, &inner) < 0 ||
        !(outer.c_oflag & OPOST) || !(outer.c_oflag & ONLCR) ||
        !(inner.c_oflag & OPOST) || !(inner.c_oflag & ONLCR))
        return n;
    for (i = 0; i < n; i++)
        if (!(buf[i] == '\r' && i + 1 < n && buf[i + 1] == '\n'))
            buf[o++] = buf[i];
    return o;
}

/* Everything the master has now to the terminal; 0 at EIO (every slave
 * fd closed) or when nothing is left. */
static int drain_master(void)
{
    unsigned char buf[4096];

    for (;;) {
        ssize_t n = read(t.master, buf, sizeof buf);

        if (n > 0) {
            fh__write_all(t.outer, buf, t.raw ? (size_t)n : undo_onlcr(buf, (size_t)n));
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 1;
        t.master_open = 0;
        return 0;
    }
}

static void push_keys(void)
{
    while (t.pending) {
        ssize_t n = write(t.master, t.keys + t.off, t.pending);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno != EAGAIN)
                t.pending = 0;      /* the pty is gone: drop them */
            return;
        }
        t.off += (size_t)n;
        t.pending -= (size_t)n;
    }
}

void fh__tty_ready(const struct pollfd *p, int n)
{
    for (int k = 0; k < n; k++) {
        if (!p[k].revents)
            continue;
        if (p[k].fd == t.master) {
            if (p[k].revents & (POLLIN | POLLHUP | POLLERR))
                drain_master();
            if (p[k].revents & POLLOUT)
                push_keys();
        } else if (p[k].fd == t.outer) {
            ssize_t r = read(t.outer, t.keys, sizeof t.keys);

            if (r > 0) {
                t.off = 0;
                t.pending = (size_t)r;
                push_keys();
            } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                t.outer_open = 0;   /* hung up: its SIGHUP is forwarded */
            }
        }
    }
}

/* The oldest child of pid if it is a keeper (spawn.c, take_terminal: K1 is
 * the secondary's oldest child, K2 K1's, both named forkhost-tty); else 0. */
static pid_t first_child(pid_t pid)
{
    char path[64], buf[64];
    ssize_t n;
    pid_t v = 0;
    int fd, k;

    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    for (k = 0; k < n && buf[k] >= '0' && buf[k] <= '9'; k++)
        v = v * 10 + (buf[k] - '0');
    if (v <= 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%d/comm", (int)v);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n == 13 && memcmp(buf, "forkhost-tty\n", 13) == 0 ? v : 0;
}

static void continue_secondary(void)
{
    pid_t k1 = first_child(t.secondary), k2 = k1 > 0 ? first_child(k1) : 0;

    /* K2 sets the pty's foreground group, then continues the group; without
     * a keeper (it could not start) we continue the group ourselves. */
    if (k2 <= 0 || kill(k2, FH_TTY_KEEPER_SIGNAL) < 0)
        kill(-t.secondary, SIGCONT);
}

int fh__tty_signal(int sig)
{
    if (!t.on || t.secondary <= 0)
        return 0;
    if (sig == SIGWINCH) {
        copy_size();        /* the pty signals its foreground group */
        return 1;
    }
    if (sig == SIGTSTP) {
        /* Someone's kill -TSTP: to the pty's foreground group, as a ^Z
         * typed there; its STOPPED stops us, if it stops. */
        (void)ioctl(t.master, TIOCSIG, (unsigned long)SIGTSTP);
        return 1;
    }
    if (sig == SIGCONT) {
        enter_raw();
        copy_size();
        continue_secondary();
        return 1;
    }
    return 0;
}

void fh__tty_stop(int sig)
{
    struct sigaction dfl, old;
    sigset_t set, oldset;

    fh__tty_restore();
    if (sig != SIGTSTP && sig != SIGTTIN && sig != SIGTTOU) {
        raise(SIGSTOP);
        return;
    }
    /* The same signal, so the shell says why ("Stopped", "Stopped (tty
     * input)"); its default action, whatever we had for it. */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, &old);
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, &oldset);
    raise(sig);
    sigprocmask(SIG_SETMASK, &oldset, NULL);
    sigaction(sig, &old, NULL);
}

void fh__tty_finish(void)
{
    if (!t.on)
        return;
    if (t.master_open)
        drain_master();
    fh__tty_restore();
}

/* Write all of data to fd, retrying after signals; gives up silently on
 * an error (the client's and the relay's output have nowhere left to
 * complain).  Declared in tty.h for client.c too. */
void fh__write_all(int fd, const void *data, size_t len)
{
    const char *buf = data;

    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;                 /* nowhere left to complain */
        }
        buf += n;
        len -= (size_t)n;
    }
}
