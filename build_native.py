"""Build forkhost's native parts: libforkhost.so, forkhost-run and the C tests.

One place that knows how the C is compiled, used by setup.py (inside
``pip install``), by the test suite (the sanitizer run of the C tests) and by
hand::

    python build_native.py lib OUTDIR      # OUTDIR/libforkhost.so
    python build_native.py client OUTDIR   # OUTDIR/forkhost-run
    python build_native.py wire FILE       # FILE: forkhost/_wire.py
    python build_native.py ctest [OUTDIR]  # C tests under ASan + UBSan,
                                           # then the fuzzers

Only the standard library is used, so it runs in pip's isolated build
environment.
"""

from __future__ import annotations

import errno
import json
import os
import platform
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


# The library's sources that forkhost-run compiles in too: where a prefix
# lives (forkhost/rundir.h), so that the client and every primary find it by
# the same code.  They use only what rt/rt.c offers.
CLIENT_LIB_SOURCES = [str(CSRC / "lib" / "rundir_path.c")]


def lib_sources() -> list[str]:
    """csrc/lib, and the client's launch (client.c and its terminal relay,
    tty.c, for fh_init), which forkhost-run is built from too."""
    return sorted(str(p) for p in (CSRC / "lib").glob("*.c")) + [
        str(CSRC / "client" / "client.c"), str(CSRC / "client" / "tty.c")]


def run_all(cmds: list[list[str]]) -> None:
    """Run independent commands, as many at once as this process may use
    CPUs; the first that fails raises (once the running ones have ended)."""
    jobs = max(1, len(os.sched_getaffinity(0)))
    running: list[tuple[list[str], subprocess.Popen]] = []
    failed: list[subprocess.CalledProcessError] = []

    def wait_oldest() -> None:
        cmd, proc = running.pop(0)
        if proc.wait() != 0:
            failed.append(subprocess.CalledProcessError(proc.returncode, cmd))
    for cmd in cmds:
        if len(running) >= jobs:
            wait_oldest()
        if failed:
            break
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        running.append((cmd, subprocess.Popen(cmd)))
    while running:
        wait_oldest()
    if failed:
        raise failed[0]


def build_library(outdir: str | os.PathLike, extra: list[str] | None = None,
                  opt: str = "-O2") -> Path:
    """Compile csrc/lib/*.c into OUTDIR/libforkhost.so: each source to its
    object in OUTDIR/obj (on every CPU at once), then one link."""
    out = Path(outdir)
    objdir = out / "obj"
    objdir.mkdir(parents=True, exist_ok=True)
    target = out / SONAME
    flags = cc() + CFLAGS + [opt, "-g"] + (extra or [])
    objs = [objdir / f"{Path(src).parent.name}_{Path(src).stem}.o" for src in lib_sources()]
    run_all([flags + ["-c", "-o", str(obj), src] for obj, src in zip(objs, lib_sources())])
    run(flags + ["-shared", f"-Wl,-soname,{SONAME}", "-Wl,-z,defs", "-o", str(target)]
        + [str(obj) for obj in objs] + ["-ldl"])
    return target


def build_test_library(outdir: str | os.PathLike, extra: list[str]) -> Path:
    """OUTDIR/libforkhost.so for the C tests and fuzzers: TEST_OPT,
    TEST_FLAGS and EXTRA (SANITIZE, or nothing)."""
    return build_library(outdir, TEST_FLAGS + extra, opt=TEST_OPT)


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


def write_wire_module(path: str | os.PathLike) -> Path:
    """forkhost/_wire.py: the launch protocol's constants and struct
    layouts as proto.h has them, printed by csrc/tools/wire.c, so that
    forkhost.protocol derives them without loading the native library."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="forkhost-wire-") as tmp:
        exe = Path(tmp) / "wire"
        run(cc() + CFLAGS + ["-o", str(exe), str(CSRC / "tools" / "wire.c")])
        text = subprocess.run([str(exe)], check=True, capture_output=True,
                              text=True).stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    tmp_path.write_text(text)
    os.replace(tmp_path, path)
    return path


def client_cc() -> list[str]:
    """The compiler and flags of forkhost-run, however it is linked."""
    return cc() + ["-std=gnu11", "-D_GNU_SOURCE", "-O2", "-I", str(INCLUDE)] + WARNINGS


# forkhost-run without libc (csrc/client/rt/rt.c): no stack protector or
# fortified calls (both want glibc), no PIE (nothing would relocate it), and
# no loop in rt.c's memcpy/memset turned into a call to itself.
FREESTANDING = ["-static", "-nostdlib", "-no-pie", "-fno-pie", "-ffreestanding",
                "-fno-stack-protector", "-U_FORTIFY_SOURCE",
                "-fno-tree-loop-distribute-patterns",
                "-fno-asynchronous-unwind-tables", "-Wl,--gc-sections",
                "-ffunction-sections", "-fdata-sections", "-Wl,-z,noexecstack"]


def freestanding_client_ok() -> bool:
    """rt.c is written for x86_64 Linux; FORKHOST_CLIENT_LIBC=1 asks for
    the libc build anyway (for comparing the two)."""
    return (sys.platform == "linux" and platform.machine() == "x86_64"
            and os.environ.get("FORKHOST_CLIENT_LIBC", "") in ("", "0"))


def write_error_table(path: Path) -> None:
    """rt_errors.h: strerror's texts, as this machine's C library has them
    (Python's os.strerror is that strerror)."""
    n = max(errno.errorcode) + 1
    lines = ["/* Generated by build_native.py from os.strerror(); do not edit. */",
             f"#define RT_NERRORS {n}",
             "static const char *const rt_error_text[RT_NERRORS] = {"]
    for e in range(n):
        text = os.strerror(e) if e in errno.errorcode or e == 0 else None
        lines.append(f"    {json.dumps(text)}," if text else "    0,")
    path.write_text("\n".join(lines + ["};", ""]))


def build_freestanding(target: Path, sources: list[str], extra: list[str]) -> None:
    """Link sources with rt.c and no libc (x86_64 Linux)."""
    with tempfile.TemporaryDirectory(prefix="forkhost-rt-") as gen:
        write_error_table(Path(gen) / "rt_errors.h")
        run(client_cc() + ["-I", gen] + FREESTANDING + extra + ["-o", str(target)]
            + sources + [str(CSRC / "client" / "rt" / "rt.c"), "-lgcc"])


def build_client(outdir: str | os.PathLike) -> Path:
    """Compile forkhost-run: without libc on x86_64 Linux (rt.c), else
    statically when the toolchain allows, else dynamically.

    Starting the client is most of what a launch costs.  A static binary
    skips the dynamic loader; without libc it also skips libc's own start
    (0.33 ms against 0.84 ms to spawn and reap a static do-nothing binary on
    a 2-vCPU VM; docs/architecture.md).
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "forkhost-run"
    src = sorted(str(p) for p in (CSRC / "client").glob("*.c")) + CLIENT_LIB_SOURCES
    if freestanding_client_ok():
        try:
            build_freestanding(target, src, ["-s", "-DFH_RT"])
            return target
        except subprocess.CalledProcessError:
            print("building forkhost-run without libc failed; "
                  "linking libc statically", flush=True)
    base = client_cc() + ["-o", str(target)] + src
    try:
        run(base + ["-static", "-s"])
    except subprocess.CalledProcessError:
        print("static link failed; building forkhost-run dynamically", flush=True)
        run(base + ["-s"])
    return target


def run_rt_test(outdir: Path) -> bool:
    """csrc/tests/rt/test_rt.c: the client's runtime, linked as the client
    is, with UBSan in trap mode (its runtime, like ASan's, needs libc)."""
    exe = outdir / "test_rt"
    try:
        build_freestanding(exe, [str(CSRC / "tests" / "rt" / "test_rt.c")],
                           ["-g", "-Werror", "-fsanitize=undefined",
                            "-fsanitize-undefined-trap-on-error"])
    except subprocess.CalledProcessError:
        return False
    print(f"== {exe.name}", flush=True)
    rc = subprocess.run([str(exe), "arg"],
                        env=dict(os.environ, RT_TEST_MARK="x=y")).returncode
    return rc == 0


# How the C tests, the fuzzers and the library they link are compiled
# (with SANITIZE or without): -Og keeps the code close to the source for
# the sanitizers' reports and compiles faster than -O1; line tables (-g1)
# are what a report needs.
TEST_OPT = "-Og"
TEST_FLAGS = ["-g1", "-Werror"]
# The C tests built -O1 instead: test_ring_kill aims its kills inside the
# ring's fast paths, which it inlines (ring.h), and needs them compiled as
# an optimized program runs them (with -Og too few kills land inside).
TEST_PROGRAMS_O1 = {"test_ring_kill"}

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]

# The fuzz targets `ctest` runs: fh_request_check() (the launch protocol's
# parser), fh_ipc_record_check() (IPC's) and the cgroup parsers of
# spawn.c (fuzz_cgroup), each csrc/tests/NAME.c.
FUZZERS = ["fuzz_request", "fuzz_ipc", "fuzz_cgroup"]
# How long `ctest` runs each of them.
FUZZ_SECONDS_DEFAULT = 20


def libfuzzer_ok(outdir: Path) -> bool:
    """Whether $CC links -fsanitize=fuzzer (clang's libFuzzer)."""
    probe = outdir / "libfuzzer_probe.c"
    probe.write_text("#include <stddef.h>\n#include <stdint.h>\n"
                     "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\n"
                     "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)"
                     " { (void)d; (void)n; return 0; }\n")
    r = subprocess.run(cc() + ["-fsanitize=fuzzer", "-o", str(outdir / "libfuzzer_probe"),
                               str(probe)], capture_output=True)
    return r.returncode == 0


def build_fuzzer(outdir: Path, extra: list[str], libfuzzer: bool,
                 name: str = "fuzz_request") -> Path:
    """csrc/tests/NAME.c linked to OUTDIR/libforkhost.so (built with the
    same `extra` flags): for libFuzzer, or standalone (its own seeded
    mutation loop, FUZZ_STANDALONE, which also takes a count of inputs:
    `NAME RUNS`)."""
    exe = Path(outdir) / name
    mode = ["-fsanitize=fuzzer"] if libfuzzer else ["-DFUZZ_STANDALONE"]
    run(cc() + CFLAGS + [TEST_OPT] + TEST_FLAGS + extra + mode
        + ["-o", str(exe), str(CSRC / "tests" / f"{name}.c"), "-L", str(outdir),
           "-lforkhost", f"-Wl,-rpath,{outdir}", "-ldl"])
    return exe


def run_fuzzer(outdir: Path, extra: list[str], env: dict,
               name: str = "fuzz_request", runs: int | None = None) -> bool:
    """Build csrc/tests/NAME.c and run it for FORKHOST_FUZZ_SECONDS
    (default FUZZ_SECONDS_DEFAULT), or for exactly `runs` inputs (from
    FORKHOST_FUZZ_SEED when env has it, else a new seed): under
    libFuzzer when $CC has it, else with its own seeded mutation loop
    (FUZZ_STANDALONE).  Either prints how many inputs ran."""
    seconds = env.get("FORKHOST_FUZZ_SECONDS", str(FUZZ_SECONDS_DEFAULT))
    libfuzzer = libfuzzer_ok(outdir)
    try:
        exe = build_fuzzer(outdir, extra, libfuzzer, name)
    except subprocess.CalledProcessError:
        return False
    print(f"== {exe.name} ({'libFuzzer' if libfuzzer else 'standalone'}, "
          f"{f'{runs} inputs' if runs else f'{seconds} s'})", flush=True)
    if libfuzzer:
        corpus = outdir / f"{name}_corpus"
        corpus.mkdir(exist_ok=True)
        limit = f"-runs={runs}" if runs else f"-max_total_time={int(float(seconds))}"
        seed = [f"-seed={env['FORKHOST_FUZZ_SEED']}"] if "FORKHOST_FUZZ_SEED" in env else []
        cmd = [str(exe), limit, *seed, "-print_final_stats=1", str(corpus)]
    else:
        cmd = [str(exe)] + ([str(runs)] if runs else [])
    env = dict(env, FORKHOST_FUZZ_SECONDS=seconds)
    return subprocess.run(cmd, env=env, cwd=outdir).returncode == 0


def c_test_programs() -> list[Path]:
    """csrc/tests/test_*.c: one program each."""
    return sorted((CSRC / "tests").glob("test_*.c"))


def sanitizer_env(outdir: Path) -> dict:
    """The environment the C tests run in: leaks and any undefined
    behaviour fail them; FORKHOST_CTEST_DIR is their scratch directory."""
    return dict(os.environ,
                ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
                FORKHOST_CTEST_DIR=str(outdir))


def build_c_test(outdir: Path, src: Path, extra: list[str]) -> Path:
    """One csrc/tests/test_*.c linked to OUTDIR/libforkhost.so (built with
    the same `extra` flags by build_library)."""
    exe = Path(outdir) / src.stem
    opt = "-O1" if src.stem in TEST_PROGRAMS_O1 else TEST_OPT
    run(cc() + CFLAGS + [opt] + TEST_FLAGS + extra
        + ["-o", str(exe), str(src), "-L", str(outdir), "-lforkhost",
           f"-Wl,-rpath,{outdir}", "-ldl"])
    return exe


def build_and_run_c_tests(outdir: str | os.PathLike | None = None,
                          sanitize: bool = True) -> int:
    """Build libforkhost and every csrc/tests/test_*.c, run each; 0 if all pass."""
    outdir = Path(outdir or tempfile.mkdtemp(prefix="forkhost-ctest-"))
    extra = SANITIZE if sanitize else []
    lib = build_test_library(outdir, extra)
    failed = []
    tests = c_test_programs()
    for t in tests:
        try:
            exe = build_c_test(outdir, t, extra)
        except subprocess.CalledProcessError:
            failed.append(f"{t.stem} (does not build)")
            continue
        print(f"== {exe.name}", flush=True)
        rc = subprocess.run([str(exe)], env=sanitizer_env(outdir)).returncode
        if rc != 0:
            failed.append(f"{exe.name} (exit {rc})")
    if freestanding_client_ok():
        tests.append(CSRC / "tests" / "rt" / "test_rt.c")
        if not run_rt_test(outdir):
            failed.append("test_rt")
    for name in FUZZERS:
        tests.append(CSRC / "tests" / f"{name}.c")
        if not run_fuzzer(outdir, extra, sanitizer_env(outdir), name):
            failed.append(name)
    print(f"C tests: {len(tests) - len(failed)} passed, {len(failed)} failed"
          + (": " + ", ".join(failed) if failed else ""), flush=True)
    del lib
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("lib", "client", "wire", "ctest"):
        print(__doc__, file=sys.stderr)
        return 2
    what = argv[1]
    outdir = argv[2] if len(argv) > 2 else None
    if what == "ctest":
        return build_and_run_c_tests(outdir)
    if outdir is None:
        print(f"{'FILE' if what == 'wire' else 'OUTDIR'} is required", file=sys.stderr)
        return 2
    if what == "wire":
        write_wire_module(outdir)
        return 0
    (build_library if what == "lib" else build_client)(outdir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
