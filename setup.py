"""Build hooks: the native parts are built inside `pip install`.

build_ext first compiles csrc/lib into libforkhost.so next to the cffi
module (which links it with rpath $ORIGIN) and copies the public headers
there, so `forkhost config --cflags --libs` can point C programs at them,
and writes forkhost/_wire.py (the protocol's constants and layouts from
proto.h, for forkhost.protocol);
build_scripts compiles the forkhost-run client into the scripts directory,
from which pip installs it on PATH.  How the C is compiled lives in
build_native.py, shared with the C test run.
"""

import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup  # noqa: I001  (imports distutils first)
from setuptools.command.build_ext import build_ext
# setuptools has no build_scripts of its own; its bundled distutils does.
from distutils.command.build_scripts import build_scripts  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_native  # noqa: E402


class BuildExt(build_ext):
    def run(self):
        pkgdirs = [Path(self.build_lib) / "forkhost" / "_native"]
        if self.inplace:
            pkgdirs.append(build_native.ROOT / "forkhost" / "_native")
        lib = build_native.build_library(Path(self.build_temp) / "native")
        demo = build_native.build_demo(lib.parent)
        wire = build_native.write_wire_module(Path(self.build_temp) / "_wire.py")
        for d in pkgdirs:
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wire, d.parent / wire.name)
            shutil.copy2(lib, d / lib.name)
            shutil.copy2(demo, d / demo.name)
            inc = d / "include"
            if inc.exists():
                shutil.rmtree(inc)
            shutil.copytree(build_native.INCLUDE, inc)
        for ext in self.extensions:
            ext.library_dirs.append(str(lib.parent))
        super().run()


class BuildScripts(build_scripts):
    def run(self):
        # The only "script" is the C client: compile it instead of copying.
        build_native.build_client(self.build_dir)


# The extensions inline the library's headers (ring.h's operations):
# rebuild them whenever a header changes, not only their own source.
HEADERS = sorted(str(p) for p in (build_native.INCLUDE / "forkhost").glob("*.h"))

setup(
    cffi_modules=["forkhost/_native/build_ffi.py:ffi"],
    # A Python secondary's entry on a stack of its own: CPython's thread
    # state API, beyond the limited API the cffi module keeps to.
    ext_modules=[Extension("forkhost._native._pystack",
                           ["forkhost/_native/pystack.c"]),
                 # HashTable's hot lookups, calling libforkhost without
                 # cffi's per-call cost; linked like the cffi module.
                 # It also reads tables through the library's own
                 # layout and lookup core (csrc/lib/hash_core.h).
                 Extension("forkhost._native._hashfast",
                           ["forkhost/_native/hashfast.c"],
                           include_dirs=[str(build_native.INCLUDE)],
                           depends=HEADERS + [str(build_native.CSRC / "lib" / "hash_core.h")],
                           libraries=["forkhost"],
                           runtime_library_dirs=["$ORIGIN"],
                           # csrc/lib for "hash_core.h" only, not for <...>
                           extra_compile_args=["-std=gnu11", "-D_GNU_SOURCE", "-iquote",
                                               str(build_native.CSRC / "lib")]
                           + build_native.WARNINGS),
                 # Ring's hot calls without cffi's per-call objects.
                 Extension("forkhost._native._ring",
                           ["forkhost/_native/pyring.c"],
                           include_dirs=[str(build_native.INCLUDE)],
                           depends=HEADERS,
                           libraries=["forkhost"],
                           runtime_library_dirs=["$ORIGIN"],
                           extra_compile_args=["-std=gnu11", "-D_GNU_SOURCE"]
                           + build_native.WARNINGS)],
    scripts=["csrc/client/forkhost-run.c"],
    cmdclass={"build_ext": BuildExt, "build_scripts": BuildScripts},
)
