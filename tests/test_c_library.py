"""The C library's own tests (csrc/tests/test_*.c), built with libforkhost
under AddressSanitizer and UndefinedBehaviorSanitizer and run by
`python build_native.py ctest`: a memory error or undefined behaviour in C
fails the suite like any other test."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from fhtest import ROOT

SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


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


def test_c_tests_pass_under_asan_and_ubsan(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "build_native.py"), "ctest",
                        str(tmp_path / "ctest")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    summary = [line for line in r.stdout.splitlines() if line.startswith("C tests:")]
    assert r.returncode == 0, (f"{summary[-1] if summary else 'the C tests did not run'}"
                               f"\n--- stdout (tail)\n{r.stdout[-6000:]}"
                               f"\n--- stderr (tail)\n{r.stderr[-6000:]}")
    assert summary and " 0 failed" in summary[-1], r.stdout[-2000:]
