"""`forkhost primary` under systemd (docs/systemd.md): the sd_notify
protocol (Type=notify, the watchdog) and socket activation, both
implemented here on plain sockets, without libsystemd.

- sd_notify: one datagram per message to the AF_UNIX socket NOTIFY_SOCKET
  names (a path, or "@name" for an abstract socket), newline-separated
  VAR=value lines: READY=1 with MAINPID= and STATUS= once the ready line is
  printed, RELOADING=1 with MONOTONIC_USEC= when a reload begins (READY=1
  again when it ends), STOPPING=1 when the stop begins, WATCHDOG=1 every WATCHDOG_USEC/2
  when WATCHDOG_USEC is set (and WATCHDOG_PID, if set, is this process).
- socket activation: when LISTEN_PID is this process, the fds 3 ..
  3+LISTEN_FDS-1, named by LISTEN_FDNAMES: "launch" is template.sock,
  "ipc" ipc.sock.  Each must be a listening AF_UNIX SOCK_SEQPACKET socket
  bound to the path forkhost-run and the other commands look at, else the
  primary refuses to start (EXIT_CONFIG).

take_environment() removes every one of these variables from the
environment, so that nothing the primary starts (the template, pool
members, supervised workers) talks to systemd as the service or takes the
service's sockets.
"""

from __future__ import annotations

import os
import socket
import stat
import time

from ._errors import EXIT_CONFIG, ForkhostError

# LISTEN_FDNAMES names forkhost takes, and the socket each one is.
FD_NAMES = {"launch": "template.sock", "ipc": "ipc.sock"}
LISTEN_FDS_START = 3    # sd_listen_fds(3): the first passed fd

_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
         "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ForkhostError):
    """The sockets systemd passed are not the ones forkhost can use."""
    exit_code = EXIT_CONFIG


def take_environment() -> dict[str, str]:
    """The systemd variables of this process's environment, removed from it
    (os.environ and the C environment: children inherit neither)."""
    return {name: os.environ.pop(name) for name in _VARS if name in os.environ}


class Notifier:
    """The sd_notify side of a service: messages to NOTIFY_SOCKET, and the
    watchdog's period.  Without NOTIFY_SOCKET every method does nothing."""

    def __init__(self, env: dict[str, str]):
        self.address = None
        self.sock = None
        self.interval = None        # seconds between WATCHDOG=1, or None
        self.next_ping = 0.0
        name = env.get("NOTIFY_SOCKET", "")
        if name.startswith("@"):
            self.address = "\0" + name[1:]     # abstract namespace
        elif name.startswith("/"):
            self.address = name
        if self.address is None:
            return
        # Non-blocking: a service manager that does not read (its queue
        # full) loses a message rather than stopping the primary's loop.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM |
                                  socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        usec, wpid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            self.interval = int(usec) / 2e6
            self.next_ping = time.monotonic()

    def send(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass    # systemd gone, not listening or not reading: nothing to tell

    def ready(self, status: str) -> None:
        self.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        """A reload begins (READY=1 follows when it ends, done or not):
        MONOTONIC_USEC is CLOCK_MONOTONIC now, as Type=notify-reload asks."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def timeout(self) -> float | None:
        """Seconds the primary's loop may wait before tick() is due."""
        if self.interval is None:
            return None
        return max(0.0, self.next_ping - time.monotonic())

    def tick(self) -> None:
        """WATCHDOG=1 when it is due."""
        if self.interval is None or time.monotonic() < self.next_ping:
            return
        self.send("WATCHDOG=1")
        self.next_ping = time.monotonic() + self.interval

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def listen_fds(env: dict[str, str], prefix: str | None, runtime_dir,
               detach: bool = False) -> dict[str, int]:
    """The sockets systemd passed this process, by forkhost's names
    ({"launch": fd, "ipc": fd}, either may be missing; {} without socket
    activation), each checked; ActivationError otherwise.  They must be
    bound to the paths of prefix in runtime_dir (forkhost/_runtime.py)."""
    if env.get("LISTEN_PID") != str(os.getpid()) or "LISTEN_FDS" not in env:
        return {}
    if detach:
        raise ActivationError(
            "socket activation: --detach would pass the sockets to another "
            "process; under systemd run forkhost primary without --detach "
            "(Type=notify)")
    from ._runtime import paths as prefix_paths
    paths = prefix_paths(prefix, runtime_dir)
    count = env["LISTEN_FDS"]
    if not count.isdigit() or int(count) < 1:
        raise ActivationError(f"socket activation: LISTEN_FDS={count!r} is not a "
                              f"number of fds")
    n = int(count)
    names = env.get("LISTEN_FDNAMES")
    if names is None:
        names_list = ["launch"] if n == 1 else []
    else:
        names_list = names.split(":")
    if len(names_list) != n:
        raise ActivationError(
            f"socket activation: {n} fds passed but LISTEN_FDNAMES names "
            f"{len(names_list) if names is not None else 'none'} ({names!r}); name "
            f"them with FileDescriptorName= in the .socket unit: "
            + ", ".join(f"{k!r} ({v})" for k, v in FD_NAMES.items()))
    found: dict[str, int] = {}
    for k, name in enumerate(names_list):
        fd = LISTEN_FDS_START + k
        if name not in FD_NAMES:
            raise ActivationError(
                f"socket activation: fd {fd} is named {name!r}; forkhost takes "
                + " and ".join(f"{k!r} ({v})" for k, v in FD_NAMES.items())
                + " (FileDescriptorName= in the .socket unit)")
        if name in found:
            raise ActivationError(f"socket activation: two fds named {name!r} "
                                  f"({found[name]} and {fd})")
        want = str(paths.socket if name == "launch" else paths.ipc_socket)
        _check_listener(fd, name, want)
        os.set_inheritable(fd, False)
        found[name] = fd
    return found


def _check_listener(fd: int, name: str, want: str) -> None:
    """fd is a listening AF_UNIX SOCK_SEQPACKET socket bound to want."""
    def refuse(what: str):
        raise ActivationError(
            f"socket activation: fd {fd} ({name!r}) {what}; forkhost needs a "
            f"listening AF_UNIX SOCK_SEQPACKET socket at {want} "
            f"(ListenSequentialPacket={want} in the .socket unit)")
    try:
        st = os.fstat(fd)
    except OSError as err:
        refuse(f"is not open ({err.strerror})")
    if not stat.S_ISSOCK(st.st_mode):
        refuse("is not a socket")
    s = socket.socket(fileno=fd)
    try:
        family = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        bound = s.getsockname() if family == socket.AF_UNIX else None
    finally:
        s.detach()
    if family != socket.AF_UNIX:
        refuse(f"is not an AF_UNIX socket (family {_name(socket.AddressFamily, family)})")
    if kind != socket.SOCK_SEQPACKET:
        refuse(f"is a {_name(socket.SocketKind, kind)} socket")
    if not listening:
        refuse("is not listening")
    if isinstance(bound, bytes):
        bound = "@" + bound[1:].decode(errors="replace") if bound[:1] == b"\0" else \
            os.fsdecode(bound)
    if bound != want:
        refuse(f"is bound to {bound or 'no address'}, where forkhost-run would "
               f"not look")


def _name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)
