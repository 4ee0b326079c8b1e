"""cffi API-mode build of forkhost._native._fh over libforkhost.

API mode means the C compiler checks every declaration in cdef/*.h against
the real public header, so the Python view cannot drift from the library.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# A declaration must come before the ones that use it: these first, in
# this order, then the rest by name.
FIRST = ["spawn.h", "entry.h", "request.h", "hotset.h", "member.h", "template.h"]

ffi = FFI()
for name in FIRST + sorted(p.name for p in (HERE / "cdef").glob("*.h")
                           if p.name not in FIRST):
    ffi.cdef((HERE / "cdef" / name).read_text())

ffi.set_source(
    "forkhost._native._fh",
    '#include <fcntl.h>\n#include "forkhost.h"\n',
    include_dirs=[str(ROOT / "csrc" / "include")],
    # forkhost.h's inline ring operations are compiled in: rebuild on any
    # header change, not only when the generated source changes.
    depends=sorted(str(p) for p in (ROOT / "csrc" / "include").rglob("*.h")),
    libraries=["forkhost"],
    runtime_library_dirs=["$ORIGIN"],
    extra_compile_args=["-std=gnu11", "-D_GNU_SOURCE"],
)

if __name__ == "__main__":
    ffi.compile(verbose=True)
