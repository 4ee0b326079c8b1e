"""forkhost: a pre-fork secondary-process host.

A *primary* maps shared memory and forks a clean-slate *template*; a
*client* hands an entry, argv, env, cwd and fds to the template, which forks
a *secondary* that shares every mapping of the primary at the same address.
"""

__version__ = "0.1.0"

import importlib

# Names are imported when first used (PEP 562), so that `forkhost run`,
# `forkhost ps` and the other commands that only talk to a primary do not
# load the native library, the shared-memory layer and the primary, which
# would double the import time of `forkhost._cli` (docs/performance.md,
# "Single launches").
_FROM = {
    "_client": ("Secondary", "info", "launch"),
    "_errors": ("EXIT_CANNOT_RUN", "EXIT_FORKHOST", "EXIT_NOT_FOUND", "ArenaError",
               "ForkhostError", "NoPrimaryError", "NotSingleThreadedError",
               "IPCError", "PrefixInUseError", "PreloadError", "ProtocolError",
               "RefusedError", "ReloadError", "ReloadPendingError"),
    "futures": ("Executor",),
    "_popen": ("DEVNULL", "PIPE", "STDOUT", "CalledProcessError", "CompletedProcess",
              "Popen", "SubprocessError", "TimeoutExpired", "call", "check_call",
              "check_output", "run"),
    "primary": ("Primary",),
    "proctype": ("init",),
    "shm": ("AttachError", "HashTable", "Memzone", "Mempool", "ModuleMismatchError",
            "NameExistsError", "NoArenaError", "NoSpaceError", "NotFoundError",
            "Ring", "ShmError"),
}
_WHERE = {name: module for module, names in _FROM.items() for name in names}
# Submodules reachable as attributes after a plain `import forkhost`, as
# they were when this file imported them all.
_SUBMODULES = ("futures", "ipc", "primary", "proctype", "shm")


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBMODULES))


TYPE_CHECKING = False  # not typing's: importing typing is slow; checkers know this name
if TYPE_CHECKING:      # what static tools see: the names above, eagerly
    from . import shm
    from ._client import Secondary, info, launch
    from .futures import Executor
    from ._popen import (DEVNULL, PIPE, STDOUT, CalledProcessError, CompletedProcess,
                        Popen, SubprocessError, TimeoutExpired, call, check_call,
                        check_output, run)
    from ._errors import (EXIT_CANNOT_RUN, EXIT_FORKHOST, EXIT_NOT_FOUND, ArenaError,
                         ForkhostError, IPCError, NoPrimaryError,
                         NotSingleThreadedError, PrefixInUseError, PreloadError,
                         ProtocolError, RefusedError, ReloadError,
                         ReloadPendingError)
    from .primary import Primary
    from .proctype import init
    from .shm import (AttachError, HashTable, Memzone, Mempool, ModuleMismatchError,
                      NameExistsError, NoArenaError, NoSpaceError, NotFoundError,
                      Ring, ShmError)

__all__ = [
    "__version__", "Primary", "init", "launch", "info", "Secondary",
    "Popen", "run", "call", "check_call", "check_output", "PIPE", "STDOUT", "DEVNULL",
    "CompletedProcess", "CalledProcessError", "TimeoutExpired", "SubprocessError",
    "Executor",
    "ForkhostError", "NoPrimaryError", "PrefixInUseError", "NotSingleThreadedError",
    "PreloadError", "ProtocolError", "RefusedError", "ReloadError", "ReloadPendingError",
    "ArenaError",
    "IPCError",
    "EXIT_FORKHOST", "EXIT_CANNOT_RUN", "EXIT_NOT_FOUND",
    "shm", "Memzone", "Ring", "Mempool", "HashTable",
    "ShmError", "NoArenaError", "NameExistsError", "NotFoundError", "NoSpaceError",
    "ModuleMismatchError", "AttachError",
]
