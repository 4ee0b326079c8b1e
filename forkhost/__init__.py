"""forkhost: a pre-fork secondary-process host.

A *primary* maps shared memory and forks a clean-slate *template*; a
*client* hands an entry, argv, env, cwd and fds to the template, which forks
a *secondary* that shares every mapping of the primary at the same address.
"""

__version__ = "0.1.0"

from .client import DEVNULL, Secondary, info, launch
from .errors import (EXIT_CANNOT_RUN, EXIT_FORKHOST, EXIT_NOT_FOUND, ArenaError,
                     ForkhostError, NoPrimaryError, NotSingleThreadedError,
                     PrefixInUseError, PreloadError, ProtocolError, RefusedError)
from .primary import Primary

__all__ = [
    "__version__", "Primary", "launch", "info", "Secondary", "DEVNULL",
    "ForkhostError", "NoPrimaryError", "PrefixInUseError", "NotSingleThreadedError",
    "PreloadError", "ProtocolError", "RefusedError", "ArenaError",
    "EXIT_FORKHOST", "EXIT_CANNOT_RUN", "EXIT_NOT_FOUND",
]
