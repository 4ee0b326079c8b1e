"""forkhost.shm.Array: typed, shaped data in the arena.  The primary makes
two arrays in a preload module (tests/fixtures/shm_array_preload.py);
Python secondaries (tests/fixtures/shm_array_fix.py) read and write them
through numpy and through memoryview, and a classically attached process
finds them too, all at the primary's address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fhtest import FIXTURES, PrimaryProc, leaves_nothing, module_primary

# numpy in a secondary would start OpenBLAS's threads for nothing.
NP_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _array_primary(runtime_dir, out):
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), FH_TEST_ARRAY_OUT=str(out))
    p = PrimaryProc(runtime_dir, args=("--preload", "shm_array_preload"), env=env)
    p.made = json.loads(out.read_text())
    return p


@pytest.fixture(scope="module")
def _module_primary(tmp_path_factory):
    out = tmp_path_factory.mktemp("shm_array") / "preload.json"
    with module_primary(tmp_path_factory, make=lambda d: _array_primary(d, out)) as p:
        yield p


@pytest.fixture
def primary(_module_primary):
    """The module's primary: its tests read the preload's arrays as it made
    them, or make arrays of their own names, and leave no secondary
    running.  A test that writes the preload's arrays has own_primary."""
    with leaves_nothing(_module_primary) as p:
        yield p


@pytest.fixture
def own_primary(runtime_dir, tmp_path):
    p = _array_primary(runtime_dir, tmp_path / "preload.json")
    yield p
    code, _, err = p.stop()
    assert code == 0, f"primary exited {code}: {err}"


def run(primary, name, *args, expect=0):
    r = primary.run(f"shm_array_fix:{name}", *args, cwd=FIXTURES, extra_env=NP_ENV)
    assert r.returncode == expect, (
        f"{name} {args} exited {r.returncode}:\n{r.stdout.decode(errors='replace')}"
        f"{r.stderr.decode(errors='replace')}")
    return r


def out(r) -> dict:
    return json.loads(r.stdout)


def test_made_in_the_preload_read_in_a_secondary_at_the_same_address(primary):
    made = primary.made
    assert made["pid"] == primary.pid
    assert made["counts_dtype"] == "uint32"       # "<u4" spelled as numpy does
    assert "t.grid" in made["grid_repr"] and "float64" in made["grid_repr"]
    arena = primary.config["arena"]
    assert arena["base"] <= made["grid"] < arena["base"] + arena["size"]
    got = out(run(primary, "read_numpy"))
    assert got == {"grid": made["grid"], "ndarray": made["grid"],
                   "counts": made["counts"]}


def test_numpy_writes_seen_through_memoryview_and_back(own_primary):
    primary = own_primary           # it writes t.grid, which the others read
    run(primary, "write_numpy")
    got = out(run(primary, "read_memoryview"))       # numpy blocked there
    assert got["grid"] == primary.made["grid"]
    run(primary, "read_numpy", "written")           # memoryview's write, by numpy


def test_missing_name_bad_dtype_bad_shape(primary):
    assert run(primary, "errors").stdout == b"errors ok\n"


def test_made_in_one_secondary_found_by_another(primary):
    a = out(run(primary, "create", "t.sec"))
    b = out(run(primary, "check_created", "t.sec"))
    assert a == b
    r = run(primary, "create", "t.sec", expect=1)
    assert b"NameExistsError" in r.stderr


ATTACH = """
import json, sys
import forkhost.shm as shm
from forkhost.shm import Array
try:
    shm.attach(sys.argv[1], sys.argv[2])
except shm.AttachError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
a = Array.lookup("t.grid")
mv = a.buffer()
assert mv[2, 3] == 2003.5, mv[2, 3]
print(json.dumps({"grid": a.addr, "shape": list(a.shape)}))
"""


def test_classic_attach_finds_the_array(primary):
    for _ in range(5):        # a fresh process's ASLR may overlap the arena
        r = subprocess.run([sys.executable, "-c", ATTACH, primary.prefix,
                            primary.runtime_dir], capture_output=True, timeout=60,
                           cwd=FIXTURES)
        if r.returncode != 2:
            break
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout) == {"grid": primary.made["grid"], "shape": [4, 1000]}


@pytest.mark.parametrize("in_heap", ["0", "1"])
def test_destroy_frees_and_every_handle_refuses(primary, in_heap):
    assert run(primary, "destroy_cycle", f"t.dc{in_heap}", in_heap).stdout == b"ok\n"


def test_destroyed_by_another_secondary(primary):
    """A handle in one secondary refuses once another destroyed the array."""
    run(primary, "create", "t.held")
    holder = primary.popen("shm_array_fix:hold_then_check", "t.held", cwd=FIXTURES,
                           extra_env=NP_ENV, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"holding\n"
        run(primary, "destroy", "t.held")
        out_, err = holder.communicate(b"go\n", timeout=60)
        assert holder.returncode == 0, err
        assert out_ == b"refused: array 't.held': it was destroyed\ngone\n", out_
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
