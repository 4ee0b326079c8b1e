"""cffi API-mode build of forkhost._native._fh over libforkhost.

API mode means the C compiler checks every declaration in cdef/*.h against
the real public header, so the Python view cannot drift from the library.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

ffi = FFI()
for part in sorted((HERE / "cdef").glob("*.h")):
    ffi.cdef(part.read_text())

ffi.set_source(
    "forkhost._native._fh",
    '#include "forkhost.h"\n',
    include_dirs=[str(ROOT / "csrc" / "include")],
    libraries=["forkhost"],
    runtime_library_dirs=["$ORIGIN"],
    extra_compile_args=["-std=gnu11", "-D_GNU_SOURCE"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
