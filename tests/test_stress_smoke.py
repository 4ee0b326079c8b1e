"""The reliability suite (stress/, docs/reliability.md), bounded: every
part with small counts, each kill-matrix and hostile-neighbour cell as its
own test.  `python -m stress --all` runs the full counts by hand.

The hostile-neighbour cells and the kill matrix's primary × burst/long/ipc
cells (the clients' line when the primary dies) describe the hardening of
issue 22: they fail on a forkhost without it (docs/reliability.md)."""

from __future__ import annotations

import sys

import pytest

from fhtest import ROOT

sys.path.append(str(ROOT))          # after site-packages: forkhost stays the installed one
from stress import fuzz_ipc, fuzz_launch, hostile, kill, load, soak  # noqa: E402
from stress.common import Result  # noqa: E402

SEED = 22                            # the fuzzers' (a failure can be replayed by hand)
FUZZ_COUNT = 20_000                  # the CI minimum, per fuzzer


def assert_cells(res: Result) -> None:
    print(res.summary())
    for c in res.cells:
        if c.skipped:
            pytest.skip(f"{c.name}: {c.skipped}")
    bad = [f"{c.name}: expected {c.expected}; observed {c.observed}"
           + (f" [asserts {c.expected_fail}]" if c.expected_fail else "")
           for c in res.failures]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cell", kill.CELLS, ids=lambda c: f"{c[0]}-{c[1]}".replace(" ", "-"))
def test_kill_matrix(cell):
    assert_cells(kill.run(burst=6, cells=[cell]))


@pytest.mark.heavy
def test_launch_fuzzer():
    """The wire-level part: the C target, fuzz_request, runs with more
    inputs against the suite's one sanitized library in
    test_c_library.py::test_fuzzer_holds_every_invariant."""
    assert_cells(fuzz_launch.run(count=FUZZ_COUNT, c_count=0, seed=SEED))


@pytest.mark.heavy
def test_ipc_record_fuzzer():
    assert_cells(fuzz_ipc.run(count=FUZZ_COUNT, seed=SEED))


@pytest.mark.heavy
def test_leak_soak():
    assert_cells(soak.run(launches=150))


def test_concurrent_clients_against_the_cap():
    assert_cells(load.run(clients=(50,), max_secondaries=10))


@pytest.mark.parametrize("cell", hostile.CELLS, ids=lambda c: c[2].__name__)
def test_hostile_neighbour(cell):
    name, expected, fn, defect = cell
    res = Result("hostile neighbour")
    res.check(name, expected, fn, expected_fail=f"the fix of issue 22's {defect}")
    assert_cells(res)
