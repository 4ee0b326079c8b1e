"""Adoption: a new primary takes over the orphaned template of a primary
that died (docs/reliability.md, "The primary's death"), with its arena at
its recorded address, its pool and its running secondaries.

Primary.start() holds the prefix lock (the dead primary's files left where
they are: FH_PREFIX_KEEP_LEFTOVERS) when it asks orphan(): config.json must
name a live template on this prefix's socket.  adopt() then checks that the
arena's range is free here (else one line naming the mapping in the way,
before the template is asked anything), sends ADOPT on template.sock with
the new exit-notice channel, and maps the memfd the ADOPTED answer carries
at the recorded base (fh_arena_adopt).  The template checks the rest
(csrc/lib/template.c, adopt()): it has lost its primary, the sender has its
uid; it then watches the sender's pidfd as its primary's.
"""

from __future__ import annotations

import os
import socket
import sys

from . import _protocol as protocol, _runtime as runtime
from ._errors import ArenaError, ForkhostError

# How long the template has to answer ADOPT (it answers at once; a
# template that does not is not one to adopt).
ADOPT_TIMEOUT = 10.0


class RangeTaken(ArenaError):
    """The arena's address range holds a mapping of this process (named in
    the text): nothing was asked of the template."""


def range_taken(cfg: dict) -> str | None:
    """Why the arena cfg records cannot be mapped at its base in this
    process (the mapping in the way), or None when its range is free (or
    cfg names no arena)."""
    from ._native import ffi, lib
    arena = arena_range(cfg)
    if arena is None:
        return None
    err = ffi.new("char[]", 512)
    if lib.fh_arena_range_taken(arena[0], arena[1], err, len(err)):
        return ffi.string(err).decode(errors="replace")
    return None


# Commands that must map a prefix's arena at its recorded base run
# themselves again (exec) at most this many times when one of their own
# mappings sits in its range, each exec placing the libraries anew; the
# variable counts the execs.
FRESH_LAYOUT_TRIES = 8
FRESH_LAYOUT_ENV = "FORKHOST_FRESH_LAYOUT"


def fresh_layout(cfg: dict | None) -> None:
    """For a forkhost command about to map the arena cfg records at its
    base (forkhost primary adopting it, forkhost ptr naming memzones): if
    a mapping of this process sits in its range (address space layout
    randomization put a library there), exec this same command again;
    after FRESH_LAYOUT_TRIES it returns, and the command's own mapping
    fails naming the mapping in the way.  Returns at once when the range
    is free or cfg is None.  Call it before the command has printed or
    taken anything."""
    tries = os.environ.pop(FRESH_LAYOUT_ENV, "0")
    tries = int(tries) if tries.isdigit() else FRESH_LAYOUT_TRIES
    if cfg is None or tries >= FRESH_LAYOUT_TRIES or range_taken(cfg) is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[FRESH_LAYOUT_ENV] = str(tries + 1)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def arena_range(cfg: dict) -> tuple[int, int] | None:
    """(base, reserved size) of the arena a config record names, or None
    when it names none."""
    arena = cfg.get("arena") if isinstance(cfg, dict) else None
    if not isinstance(arena, dict) or "base" not in arena:
        return None
    return int(arena["base"]), int(arena.get("max", arena.get("size", 0)))


class Refused(ForkhostError):
    """The template answered ADOPT with an ERROR (its text): nothing was
    adopted, the template is as it was."""


def orphan(paths: runtime.PrefixPaths) -> dict | None:
    """The dead primary's config record when it names a template that is
    still alive on this prefix's socket, else None (nothing to adopt: the
    leftovers are cleaned as before)."""
    try:
        cfg = runtime.read_config(paths)
    except ForkhostError:
        return None
    if not isinstance(cfg, dict):
        return None
    tpid, arena = cfg.get("template_pid"), cfg.get("arena")
    if (not isinstance(tpid, int) or tpid <= 0 or not isinstance(arena, dict)
            or cfg.get("socket") != str(paths.socket)
            or not runtime.pid_alive(tpid)):
        return None
    return cfg


def retiring(cfg: dict, prefix: str, serving: int) -> list[list]:
    """The dead primary's retiring generations (a reload's older templates,
    and the template config.json names if the one serving, pid serving, is
    newer) still serving their last secondaries, as Primary.retiring's
    [pid, pidfd, our child] entries: each checked to be this prefix's
    template still running, then watched by a pidfd."""
    out = []
    title = f"forkhost template [{prefix}]".encode()
    for pid in set(cfg.get("retiring") or []) | {cfg.get("template_pid")}:
        if pid == serving or not isinstance(pid, int) or pid <= 0 or \
                not runtime.pid_alive(pid):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(title):
                    continue
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        out.append([pid, fd, False])
    return out


def adopt(cfg: dict, paths: runtime.PrefixPaths, exit_fd: int) -> dict:
    """Adopt the template cfg names; exit_fd: the template's end of the new
    exit-notice channel (sent, not closed here).  Returns what ADOPTED
    said: template_pid, old_primary_pid, running.  Raises ArenaError when
    the arena's range is taken here or cannot be mapped, Refused when the
    template said no, ForkhostError when it could not be asked."""
    from ._native import ffi, lib
    base, size = arena_range(cfg)
    taken = range_taken(cfg)
    if taken is not None:
        raise RangeTaken(f"cannot adopt the arena of prefix {paths.prefix!r} "
                         f"(pid {cfg['template_pid']}'s template) at 0x{base:x}: "
                         f"{taken}")
    err = ffi.new("char[]", 512)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(ADOPT_TIMEOUT)
    msg = None
    try:
        try:
            sock.connect(str(paths.socket))
        except (FileNotFoundError, ConnectionRefusedError) as err_:
            raise Refused(f"nothing listens on {paths.socket} "
                          f"({err_.strerror})") from err_
        try:
            protocol.send(sock, protocol.ADOPT, b"", [exit_fd] if exit_fd >= 0 else [])
            msg = protocol.recv(sock)
        except OSError as err_:
            raise ForkhostError(f"cannot ask the template of prefix "
                                f"{paths.prefix!r} to be adopted: "
                                f"{err_.strerror or err_}") from err_
        if msg is None:
            raise ForkhostError(f"the template of prefix {paths.prefix!r} closed "
                                f"the connection without answering ADOPT")
        if msg.type == protocol.ERROR:
            _, text = protocol.decode_error(msg.body)
            raise Refused(text)
        if msg.type != protocol.ADOPTED or len(msg.fds) != 1:
            raise ForkhostError(f"the template of prefix {paths.prefix!r} answered "
                                f"ADOPT with message type 0x{msg.type:02x}")
        tpid, old, a_base, a_max, running, _ = protocol.decode_struct(
            protocol.ADOPTED_BODY, msg.body, "ADOPTED")
        # The template serving template.sock may be a newer generation than
        # config.json names (the primary died between a reload's end and
        # its config.json write): the same arena says it is this prefix's.
        if a_base != base or a_max != size:
            raise ForkhostError(
                f"the template that answered ADOPT (pid {tpid}, arena 0x{a_base:x}, "
                f"{a_max} bytes) does not have the arena config.json names "
                f"(0x{base:x}, {size} bytes)")
        want = cfg["arena"].get("fd", -1)
        if lib.fh_arena_adopt(msg.fds[0], base, size,
                              want if isinstance(want, int) else -1,
                              err, len(err)) < 0:
            raise ArenaError(f"cannot adopt the arena of prefix {paths.prefix!r} "
                             f"at 0x{base:x}: "
                             f"{ffi.string(err).decode(errors='replace')}")
        return {"template_pid": tpid, "old_primary_pid": old, "running": running}
    finally:
        if msg is not None:
            msg.close_fds()
        sock.close()
