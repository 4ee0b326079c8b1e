"""Build forkhost's native parts: libforkhost.so, forkhost-run and the C tests.

One place that knows how the C is compiled, used by setup.py (inside
``pip install``), by the test suite (the sanitizer run of the C tests) and by
hand::

    python build_native.py lib OUTDIR      # OUTDIR/libforkhost.so
    python build_native.py client OUTDIR   # OUTDIR/forkhost-run
    python build_native.py ctest [OUTDIR]  # C tests under ASan + UBSan

Only the standard library is used, so it runs in pip's isolated build
environment.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
INCLUDE = CSRC / "include"
SONAME = "libforkhost.so"

# -Wall -Wextra clean is a project rule; -Werror is added where we control the
# compiler (the C tests), not in users' builds, where a newer gcc's new
# warning must not break `pip install`.
WARNINGS = ["-Wall", "-Wextra", "-Wshadow", "-Wstrict-prototypes",
            "-Wmissing-prototypes", "-Wno-unused-parameter"]
CFLAGS = ["-std=gnu11", "-D_GNU_SOURCE", "-fPIC", "-pthread",
          "-fvisibility=hidden", "-I", str(INCLUDE)] + WARNINGS


def cc() -> list[str]:
    return shlex.split(os.environ.get("CC", "cc"))


def run(cmd: list[str]) -> None:
    print(" ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)


def lib_sources() -> list[str]:
    return sorted(str(p) for p in (CSRC / "lib").glob("*.c"))


def build_library(outdir: str | os.PathLike, extra: list[str] | None = None,
                  opt: str = "-O2") -> Path:
    """Compile csrc/lib/*.c into OUTDIR/libforkhost.so."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / SONAME
    run(cc() + CFLAGS + [opt, "-g"] + (extra or []) + ["-shared",
        f"-Wl,-soname,{SONAME}", "-Wl,-z,defs", "-o", str(target)]
        + lib_sources() + ["-ldl"])
    return target


def build_demo(libdir: str | os.PathLike) -> Path:
    """The native secondary of `forkhost demo`: a separate shared object
    that links libforkhost, installed next to it."""
    libdir = Path(libdir)
    target = libdir / "demo_secondary.so"
    # Built like a user's entry would be: default visibility, so main is
    # exported.
    flags = [f for f in CFLAGS if f != "-fvisibility=hidden"]
    run(cc() + flags + ["-O2", "-shared", "-o", str(target),
        str(CSRC / "demo" / "demo_secondary.c"), "-L", str(libdir),
        "-lforkhost", "-Wl,-rpath,$ORIGIN"])
    return target


def build_client(outdir: str | os.PathLike) -> Path:
    """Compile forkhost-run, statically when the toolchain allows.

    A static binary skips the dynamic loader, which is most of what starting
    a tiny program costs; without libc.a we fall back to a dynamic one.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "forkhost-run"
    src = sorted(str(p) for p in (CSRC / "client").glob("*.c"))
    base = cc() + ["-std=gnu11", "-D_GNU_SOURCE", "-O2", "-I", str(INCLUDE)] \
        + WARNINGS + ["-o", str(target)] + src
    try:
        run(base + ["-static", "-s"])
    except subprocess.CalledProcessError:
        print("static link failed; building forkhost-run dynamically", flush=True)
        run(base + ["-s"])
    return target


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def build_and_run_c_tests(outdir: str | os.PathLike | None = None,
                          sanitize: bool = True) -> int:
    """Build libforkhost and every csrc/tests/test_*.c, run each; 0 if all pass."""
    outdir = Path(outdir or tempfile.mkdtemp(prefix="forkhost-ctest-"))
    extra = SANITIZE if sanitize else []
    lib = build_library(outdir, extra + ["-Werror"], opt="-O1")
    failed = []
    tests = sorted((CSRC / "tests").glob("test_*.c"))
    for t in tests:
        exe = outdir / t.stem
        run(cc() + CFLAGS + ["-O1", "-g", "-Werror"] + extra
            + ["-o", str(exe), str(t), "-L", str(outdir), "-lforkhost",
               f"-Wl,-rpath,{outdir}", "-ldl"])
        env = dict(os.environ,
                   ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
                   FORKHOST_CTEST_DIR=str(outdir))
        print(f"== {exe.name}", flush=True)
        rc = subprocess.run([str(exe)], env=env).returncode
        if rc != 0:
            failed.append(f"{exe.name} (exit {rc})")
    print(f"C tests: {len(tests) - len(failed)} passed, {len(failed)} failed"
          + (": " + ", ".join(failed) if failed else ""), flush=True)
    del lib
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("lib", "client", "ctest"):
        print(__doc__, file=sys.stderr)
        return 2
    what = argv[1]
    outdir = argv[2] if len(argv) > 2 else None
    if what == "ctest":
        return build_and_run_c_tests(outdir)
    if outdir is None:
        print("OUTDIR is required", file=sys.stderr)
        return 2
    (build_library if what == "lib" else build_client)(outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
