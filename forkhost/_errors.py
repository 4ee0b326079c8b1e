"""forkhost's exceptions and the exit codes users and scripts rely on.

The exit-status contract (docs/cli.md): a client exits with the secondary's
status N, dies by the secondary's signal, or exits with one of these when
forkhost itself or the entry failed.
"""

# The exit statuses forkhost gives, from the C headers: EXIT_FORKHOST
# (client.h: no primary, protocol or version mismatch, refused),
# EXIT_CANNOT_RUN (entry.h: the entry was found but cannot be loaded or
# run) and EXIT_NOT_FOUND (entry.h: no such file, module, function or
# symbol).
from ._wire import EXIT_CANNOT_RUN, EXIT_FORKHOST, EXIT_NOT_FOUND, PREFIX_IN_USE

# `forkhost primary`'s status for a configuration refused before anything
# started: a supervision plan (forkhost/_supervise.py), the sockets of
# socket activation (forkhost/_systemd.py).  sysexits.h's EX_CONFIG, which
# systemd and shells know as "configuration error" (docs/cli.md).
EXIT_CONFIG = 78


class ForkhostError(Exception):
    """Base class; ``exit_code`` is what a client exits with for it."""

    exit_code = EXIT_FORKHOST


class NoPrimaryError(ForkhostError):
    """No primary serves the prefix (the template socket is missing or dead)."""


class PrefixInUseError(ForkhostError):
    """Another live primary holds the prefix's lock."""

    def __init__(self, prefix, pid, path):
        super().__init__(PREFIX_IN_USE % (prefix, pid, path))   # forkhost/rundir.h
        self.prefix, self.pid, self.path = prefix, pid, path


class NotSingleThreadedError(ForkhostError):
    """The primary has more than one thread where it must fork the template."""


class PreloadError(ForkhostError):
    """A --preload module raised while being imported."""


class ReloadError(ForkhostError):
    """A reload did not start a new generation (a preload failed: the
    message holds its traceback); the old generation serves on."""


class ReloadPendingError(ReloadError):
    """A reload did not finish within its timeout: the template goes on
    with it, and the primary takes its outcome when it comes."""


class ProtocolError(ForkhostError):
    """A malformed, truncated, oversized or wrong-version message."""


class RefusedError(ForkhostError):
    """The template answered a launch with an error."""

    def __init__(self, message, exit_code=EXIT_FORKHOST):
        super().__init__(message)
        self.exit_code = exit_code


class ArenaError(ForkhostError):
    """The arena could not be created or attached."""


class IPCError(ForkhostError):
    """An IPC call that cannot be made as asked: bad name, oversized
    parameter, too many fds, a sync request on the IPC thread, no primary
    to talk to (see docs/ipc.md)."""


class PrimaryGoneError(IPCError, NoPrimaryError):
    """An IPC call of a member (a secondary, an attached process) that needs
    the primary, made while it has none: its primary went away without
    ``forkhost.shutdown`` and it waits to rejoin the next one
    (``forkhost.ipc.rejoining()``), or its primary stopped (docs/ipc.md,
    "When the primary goes away").  C: ENOTCONN."""


# -- shared memory (forkhost.shm) -------------------------------------------
#
# The C library reports failures as -1/NULL with errno or as a negative
# errno; forkhost/shm/_util.py turns each errno into one of these, chained
# to the OSError it came from (`raise NameExistsError(...) from err`).


class ShmError(ForkhostError):
    """A shared-memory call failed.  ``errno`` is the C library's error
    number when there is one (else None)."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


class NoArenaError(ShmError):
    """This process has no arena: it is neither a primary nor a secondary,
    and has not attached (ENODEV)."""


class NameExistsError(ShmError):
    """An object of that name exists already (EEXIST)."""


class NotFoundError(ShmError):
    """No object of that name (ENOENT), or its creator has not finished."""


class WrongTypeError(NameExistsError):
    """The name exists as another type of object (a ring looked up or
    created under the name of a mempool, ...): FH_EWRONGTYPE, memzone.h.
    The message names the type when it is known."""


class DestroyedError(NotFoundError):
    """The object this handle refers to was freed or destroyed (EIDRM):
    the handle stays unusable even if its name is created again."""


class NoSpaceError(ShmError):
    """The arena, the memzone directory, a hash table or a mempool is full
    (ENOSPC, ENOBUFS)."""


class ModuleMismatchError(ShmError):
    """A hash table's function lies in a module that this process does not
    have at the address the table recorded (EFAULT); the message names the
    module and both addresses."""


class AttachError(ShmError, ArenaError):
    """Classic attach failed: no primary, its arena cannot be opened, or the
    address range is taken in this process (the message then names the
    mapping found in /proc/self/maps)."""
