"""Helpers of the shared-memory tests: the native fixtures and a primary
that preloaded the tests' hash-function module.

Every check runs in secondaries (the test process itself never maps an
arena: it would keep an fd and a mapping past the test).  Python entries
are tests/fixtures/shmfix.py, native ones tests/fixtures/shm_entry.c
(same names, same arguments), so one test body checks both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fhtest import FIXTURES, PrimaryProc, forkhost_flags, module_primary

KINDS = ("python", "native")


@dataclass(frozen=True)
class ShmNative:
    entry: str       # shm_entry.c: the twins of shmfix.py
    lookup: str      # shm_lookup.c: a second, separate native program
    hashfn: str      # shm_hashfn.c: preloaded by the primary
    late: str        # the same code at another path, never preloaded


def _flags() -> list[str]:
    return list(forkhost_flags())


def build_shm_native(outdir: Path) -> ShmNative:
    flags = _flags()
    out = {}
    for name, src, link in (("entry", "shm_entry.c", True),
                            ("lookup", "shm_lookup.c", True),
                            ("hashfn", "shm_hashfn.c", False)):
        so = Path(outdir) / f"{src[:-2]}.so"
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(so),
                        str(FIXTURES / src), *(flags if link else [])], check=True)
        out[name] = str(so)
    late = Path(outdir) / "shm_hashfn_late.so"
    shutil.copy2(out["hashfn"], late)
    return ShmNative(out["entry"], out["lookup"], out["hashfn"], str(late))


def shm_primary(runtime_dir: str, native: ShmNative, *args) -> PrimaryProc:
    """A primary that loaded native.hashfn before forking its template."""
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), FH_TEST_HASHFN=native.hashfn)
    return PrimaryProc(runtime_dir, args=("--preload", "shm_preload", *args), env=env)


def module_shm_primary(tmp_path_factory, native: ShmNative, *args):
    """shm_primary for a module-scoped fixture (fhtest.module_primary): one
    arena the module's tests share, each with names of its own (names)."""
    return module_primary(tmp_path_factory, make=lambda d: shm_primary(d, native, *args))


def names(request):
    """NAME -> NAME.TAG, TAG a short tag of the test's node id: the names of
    the shm objects a test creates on an arena other tests share (a name
    two tests create would collide)."""
    tag = f"{zlib.crc32(request.node.nodeid.encode()):08x}"
    return lambda name: f"{name}.{tag}"


def entry(kind: str, name: str, native: ShmNative) -> str:
    return f"shmfix:{name}" if kind == "python" else f"{native.entry}:{name}"


def run(primary: PrimaryProc, kind: str, name: str, native: ShmNative, *args,
        expect: int = 0, **kw) -> subprocess.CompletedProcess:
    """Run entry ``name`` (Python or native) in a secondary; check its exit."""
    r = primary.run(entry(kind, name, native), *args, cwd=FIXTURES, **kw)
    assert r.returncode == expect, (
        f"{kind} {name} {args} exited {r.returncode}, expected {expect}:\n"
        f"{r.stdout.decode(errors='replace')}{r.stderr.decode(errors='replace')}")
    return r


def py(primary: PrimaryProc, name: str, *args, expect: int = 0, **kw):
    return run(primary, "python", name, None, *args, expect=expect, **kw)


def fix_output(primary: PrimaryProc, entry: str, *args, expect: int = 0) -> str:
    """Run the Python entry ``entry`` (a module:function of tests/fixtures)
    in a secondary; check its exit status; its stdout."""
    r = primary.run(entry, *args, cwd=FIXTURES, capture_output=True)
    assert r.returncode == expect, (f"{entry} {args} exited {r.returncode}:\n"
                                    f"{r.stdout.decode()}{r.stderr.decode()}")
    return r.stdout.decode()


def arena_primary(runtime_dir: str, size: str, maximum: str):
    """A primary whose arena starts at ``size`` and may grow to ``maximum``,
    for a fixture to ``yield from``; it must stop with status 0."""
    p = PrimaryProc(runtime_dir, args=("--arena-size", size, "--arena-max", maximum))
    yield p
    code, out, err = p.stop()
    assert code == 0, f"primary exited {code}: {err}"


def module_arena_primary(tmp_path_factory, size: str, maximum: str):
    """arena_primary for a module-scoped fixture (fhtest.module_primary)."""
    return module_primary(tmp_path_factory, ("--arena-size", size, "--arena-max", maximum))


@contextmanager
def fixtures_primary(runtime_dir: str):
    """A primary whose secondaries import the modules of tests/fixtures;
    it must stop cleanly."""
    p = PrimaryProc(runtime_dir, env=dict(os.environ, PYTHONPATH=str(FIXTURES)))
    yield p
    code, out, err = p.stop()
    assert code == 0, f"primary exited {code}: {err}"


def module_fixtures_primary(tmp_path_factory):
    """fixtures_primary for a module-scoped fixture (fhtest.module_primary)."""
    return module_primary(tmp_path_factory, env=dict(os.environ, PYTHONPATH=str(FIXTURES)))


def fixture_run(primary: PrimaryProc, module: str, name: str, *args) -> bytes:
    """Run MODULE:NAME ARGS (tests/fixtures) as a secondary; its stdout."""
    r = primary.run(f"{module}:{name}", *args, cwd=FIXTURES)
    assert r.returncode == 0, (f"{name} {args} exited {r.returncode}:\n"
                               f"{r.stdout.decode(errors='replace')}"
                               f"{r.stderr.decode(errors='replace')}")
    return r.stdout


def fixture_start(primary: PrimaryProc, module: str, name: str, *args):
    """Start MODULE:NAME ARGS as a secondary, stdout and stderr piped."""
    return primary.popen(f"{module}:{name}", *args, cwd=FIXTURES,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
