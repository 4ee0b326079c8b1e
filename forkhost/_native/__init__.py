"""The raw cffi layer: ``ffi`` and ``lib`` mirror libforkhost's C names 1:1.

Importing this loads libforkhost.so into the process (the cffi module links
it), which is what the primary must do before it forks the template.
"""

import os
from pathlib import Path

from ._fh import ffi, lib

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "libforkhost.so"
INCLUDE = HERE / "include"

__all__ = ["ffi", "lib", "LIBRARY", "INCLUDE", "library_base"]


def library_base() -> int:
    """Where libforkhost.so is mapped in this process (file offset 0), from
    /proc/self/maps; 0 when it is not found there.  The primary records
    its own in the runtime directory and attach compares it with this."""
    path = os.path.realpath(LIBRARY)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == path and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    return 0
