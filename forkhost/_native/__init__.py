"""The raw cffi layer: ``ffi`` and ``lib`` mirror libforkhost's C names 1:1.

Importing this loads libforkhost.so into the process (the cffi module links
it), which is what the primary must do before it forks the template.
"""

from pathlib import Path

from ._fh import ffi, lib

HERE = Path(__file__).resolve().parent
LIBRARY = HERE / "libforkhost.so"
INCLUDE = HERE / "include"

__all__ = ["ffi", "lib", "LIBRARY", "INCLUDE"]
