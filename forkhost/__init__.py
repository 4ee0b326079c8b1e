"""forkhost: a pre-fork secondary-process host.

A *primary* maps shared memory and forks a clean-slate *template*; a
*client* hands an entry, argv, env, cwd and fds to the template, which forks
a *secondary* that shares every mapping of the primary at the same address.
"""

__version__ = "0.1.0"

from .client import DEVNULL, Secondary, info, launch
from .errors import (EXIT_CANNOT_RUN, EXIT_FORKHOST, EXIT_NOT_FOUND, ArenaError,
                     ForkhostError, NoPrimaryError, NotSingleThreadedError,
                     IPCError, PrefixInUseError, PreloadError, ProtocolError,
                     RefusedError)
from .primary import Primary
from . import shm
from .shm import (AttachError, HashTable, Memzone, Mempool, ModuleMismatchError,
                  NameExistsError, NoArenaError, NoSpaceError, NotFoundError, Ring,
                  ShmError)

__all__ = [
    "__version__", "Primary", "launch", "info", "Secondary", "DEVNULL",
    "ForkhostError", "NoPrimaryError", "PrefixInUseError", "NotSingleThreadedError",
    "PreloadError", "ProtocolError", "RefusedError", "ArenaError", "IPCError",
    "EXIT_FORKHOST", "EXIT_CANNOT_RUN", "EXIT_NOT_FOUND",
    "shm", "Memzone", "Ring", "Mempool", "HashTable",
    "ShmError", "NoArenaError", "NameExistsError", "NotFoundError", "NoSpaceError",
    "ModuleMismatchError", "AttachError",
]
