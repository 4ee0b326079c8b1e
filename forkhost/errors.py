"""forkhost's exceptions and the exit codes users and scripts rely on.

The exit-status contract (DESIGN.md): a client exits with the secondary's
status N, dies by the secondary's signal, or exits with one of these when
forkhost itself or the entry failed.
"""

EXIT_FORKHOST = 125   # no primary, protocol or version mismatch, refused
EXIT_CANNOT_RUN = 126  # the entry was found but cannot be loaded or run
EXIT_NOT_FOUND = 127   # the entry (file, module, function, symbol) not found


class ForkhostError(Exception):
    """Base class; ``exit_code`` is what a client exits with for it."""

    exit_code = EXIT_FORKHOST


class NoPrimaryError(ForkhostError):
    """No primary serves the prefix (the template socket is missing or dead)."""


class PrefixInUseError(ForkhostError):
    """Another live primary holds the prefix's lock."""

    def __init__(self, prefix, pid, path):
        super().__init__(
            f"prefix {prefix!r} is in use by the primary with pid {pid} ({path})")
        self.prefix, self.pid, self.path = prefix, pid, path


class NotSingleThreadedError(ForkhostError):
    """The primary has more than one thread where it must fork the template."""


class PreloadError(ForkhostError):
    """A --preload module raised while being imported."""


class ProtocolError(ForkhostError):
    """A malformed, truncated, oversized or wrong-version message."""


class RefusedError(ForkhostError):
    """The template answered a launch with an error."""

    def __init__(self, message, exit_code=EXIT_FORKHOST):
        super().__init__(message)
        self.exit_code = exit_code


class ArenaError(ForkhostError):
    """The arena could not be created or attached."""
