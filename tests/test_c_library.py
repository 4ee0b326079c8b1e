"""The C library's own tests (csrc/tests/test_*.c), built with libforkhost
under AddressSanitizer and UndefinedBehaviorSanitizer: a memory error or
undefined behaviour in C fails the suite like any other test.

Each program is a test of its own (so that pytest-xdist spreads them over
its workers), linked to one sanitized libforkhost built once per run, by
build_native.py: the same steps `python build_native.py ctest` takes."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shlex
import subprocess

import pytest

from fhtest import ROOT

SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# The fuzz targets (build_native.FUZZERS: csrc/tests/fuzz_request.c, the
# launch protocol's parser, fuzz_ipc.c, IPC's, and fuzz_cgroup.c, the
# cgroup files' parsers) here: this many inputs
# from this seed, the same ones every run, among which every verdict (a
# fuzzer fails a run of 100,000 inputs or more that misses one; the
# rarest, fuzz_request's empty entry, comes once in a few hundred
# thousand).  `python build_native.py ctest` fuzzes for
# FORKHOST_FUZZ_SECONDS from a new seed each time instead.
FUZZ_RUNS = 300_000
FUZZ_SEED = 22


def _build_native():
    """The checkout's build_native.py, the one place that knows how C is built."""
    spec = importlib.util.spec_from_file_location("build_native", ROOT / "build_native.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bn = _build_native()


def test_sanitizer_toolchain_works(tmp_path):
    """Without gcc's libasan/libubsan the C tests cannot run: say so plainly
    instead of failing somewhere inside the build."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    src = tmp_path / "probe.c"
    src.write_text("#include <stdlib.h>\n"
                   "int main(void) { char *p = malloc(4); p[0] = 0; free(p); return 0; }\n")
    exe = tmp_path / "probe"
    r = subprocess.run(cc + SANITIZERS + ["-o", str(exe), str(src)], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cc)} cannot build with {' '.join(SANITIZERS)}: install "
                    f"the sanitizer runtimes (Debian/Ubuntu: libasan and libubsan, e.g. "
                    f"`apt-get install gcc` pulls them in; Fedora: libasan libubsan)\n"
                    f"{r.stderr}")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"a sanitized program does not run here:\n{r.stderr}"


def _step(fn, *args, **kw):
    """build_native's fn; a command it runs that fails fails the test, with
    that command (the compiler's output is in the test's captured output)."""
    try:
        return fn(*args, **kw)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"{' '.join(map(str, err.cmd))} failed ({err.returncode})")


@pytest.fixture(scope="session")
def sanitized_lib(tmp_path_factory):
    """The directory of libforkhost.so built under ASan + UBSan, once per
    run: under pytest-xdist the first worker builds it (under a lock in
    the directory the workers share), the others wait and link to it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    outdir = base / "ctest"
    outdir.mkdir(exist_ok=True)
    done = outdir / "libforkhost.done"
    with open(outdir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _step(bn.build_test_library, outdir, bn.SANITIZE)
            done.touch()
    return outdir


@pytest.mark.heavy
@pytest.mark.parametrize("program", bn.c_test_programs(), ids=lambda p: p.stem)
def test_c_program_passes_under_asan_and_ubsan(sanitized_lib, program, tmp_path):
    exe = _step(bn.build_c_test, sanitized_lib, program, bn.SANITIZE)
    r = subprocess.run([str(exe)], env=bn.sanitizer_env(tmp_path), capture_output=True,
                       text=True, timeout=600)
    print(r.stdout)         # its notes, as what it skipped here (`pytest -rP`)
    assert r.returncode == 0, (f"{program.name} exited {r.returncode}"
                               f"\n--- stdout (tail)\n{r.stdout[-6000:]}"
                               f"\n--- stderr (tail)\n{r.stderr[-6000:]}")


@pytest.mark.heavy
def test_client_runtime_passes_under_ubsan(tmp_path):
    """csrc/tests/rt/test_rt.c: forkhost-run's own runtime, linked as the
    client is (where the toolchain can build that client at all)."""
    if not bn.freestanding_client_ok():
        pytest.skip("no freestanding forkhost-run on this machine (not x86_64 Linux "
                    "or $CC cannot build it): its runtime is not used")
    assert _step(bn.run_rt_test, tmp_path), "test_rt failed (its output is above)"


@pytest.mark.heavy
@pytest.mark.parametrize("fuzzer", bn.FUZZERS)
def test_fuzzer_holds_every_invariant(sanitized_lib, fuzzer, tmp_path, capfd):
    """FUZZ_RUNS inputs from FUZZ_SEED through the parser under the
    sanitizers, linked to the sanitized libforkhost; the count the fuzzer
    prints (`pytest -rP` shows it) is checked."""
    os.symlink(sanitized_lib / bn.SONAME, tmp_path / bn.SONAME)
    env = dict(bn.sanitizer_env(tmp_path), FORKHOST_FUZZ_SEED=str(FUZZ_SEED))
    ok = _step(bn.run_fuzzer, tmp_path, bn.SANITIZE, env, fuzzer, runs=FUZZ_RUNS)
    out = "".join(capfd.readouterr())
    print(out)
    assert ok, f"{fuzzer} failed\n{out[-6000:]}"
    # the standalone loop's count, or libFuzzer's
    assert (f"{fuzzer}: {FUZZ_RUNS} inputs" in out
            or f"Done {FUZZ_RUNS} runs" in out), out[-3000:]
