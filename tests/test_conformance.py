"""Whole test suites, run directly and through forkhost: CPython's own
`test` modules (regrtest, in-process) must give the same totals and result
both ways.  A third-party package's own suite would be run the same way;
none installed here ships its tests, so that case says so and skips."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from fhtest import RUNNER

MODULES = ["test_json", "test_textwrap", "test_struct", "test_bisect"]


def _totals(out: str) -> tuple[str, str]:
    """regrtest's "Total tests: ..." and "Result: ..." lines (timings and
    the order of slow tests differ from run to run)."""
    total = re.search(r"^Total tests: .*$", out, re.M)
    result = re.search(r"^Result: .*$", out, re.M)
    return (total.group(0) if total else "", result.group(0) if result else "")


def _missing_test_modules() -> list[str]:
    if importlib.util.find_spec("test.libregrtest") is None:
        return ["test.libregrtest"]
    return [f"test.{m}" for m in MODULES if importlib.util.find_spec(f"test.{m}") is None]


@pytest.mark.skipif(bool(_missing_test_modules()),
                    reason=f"this Python lacks {', '.join(_missing_test_modules())} of its "
                           f"test package (Debian: libpython3-testsuite)")
@pytest.mark.heavy
def test_cpython_test_modules_direct_and_through_forkhost(primary, tmp_path):
    args = ["-m", "test", *MODULES]
    direct = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            env=primary.env, cwd=tmp_path, timeout=600)
    through = subprocess.run([RUNNER, *args], capture_output=True, text=True,
                             env=primary.env, cwd=tmp_path, timeout=600)
    assert direct.returncode == 0, direct.stdout[-2000:] + direct.stderr[-2000:]
    assert _totals(direct.stdout)[1] == "Result: SUCCESS"
    assert through.returncode == direct.returncode, through.stdout[-2000:] + through.stderr
    assert _totals(through.stdout) == _totals(direct.stdout)


THIRD_PARTY = ["more_itertools", "six", "toolz", "idna"]


def test_a_third_party_suite_direct_and_through_forkhost(primary, tmp_path):
    have = [m for m in THIRD_PARTY if importlib.util.find_spec(m) is not None
            and importlib.util.find_spec(f"{m}.tests") is not None]
    if not have:
        pytest.skip(f"none of {', '.join(THIRD_PARTY)} is installed with its own tests")
    pkg = have[0]
    args = ["-m", "pytest", "-q", "-p", "no:randomly", "--pyargs", f"{pkg}.tests"]
    direct = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            env=primary.env, cwd=tmp_path, timeout=600)
    through = subprocess.run([RUNNER, *args], capture_output=True, text=True,
                             env=primary.env, cwd=tmp_path, timeout=600)
    summary = re.compile(r"^\d+ passed.*$", re.M)
    assert through.returncode == direct.returncode
    assert summary.findall(through.stdout)[-1:] and \
        re.sub(r" in [0-9.]+s", "", summary.findall(through.stdout)[-1]) == \
        re.sub(r" in [0-9.]+s", "", summary.findall(direct.stdout)[-1])
