"""forkhost._runtime, the Python face of csrc/lib/rundir.c and rundir_path.c:
its API and exceptions as callers use them, and the native library loaded
only by the functions that need it (csrc/tests/test_rundir.c tests the C
itself)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fhtest import FIXTURES

from forkhost import _runtime as runtime
from forkhost._errors import ForkhostError, PrefixInUseError


def _loaded_after(imports: str, modules: set[str]) -> list[str]:
    """Which of modules a fresh python has loaded after `import IMPORTS`."""
    code = f"import sys, {imports}; print(sorted({modules!r} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], cwd=FIXTURES,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout)


def test_importing_the_commands_loads_no_native_library():
    assert _loaded_after("forkhost._cli, forkhost._runtime, forkhost._client",
                         {"forkhost._native"}) == []


def test_the_commands_and_the_primary_import_no_dataclasses_or_typing():
    """What every `forkhost` command and primary imports stays lean: those
    two (dataclasses brings inspect, ast and dis) cost a command more than
    the rest of its own imports (forkhost._record instead)."""
    assert _loaded_after("forkhost._cli, forkhost.primary, forkhost._template",
                         {"dataclasses", "typing", "inspect"}) == []


def test_records_are_frozen_values():
    from forkhost._classify import Target
    from forkhost.ipc import Member
    t = Target("module", name="m")
    assert (t.kind, t.path, t.name, t.symbol) == ("module", "", "m", None)
    assert t == Target("module", "", "m") and hash(t) == hash(Target("module", "", "m"))
    assert t != Target("module", name="n") and t != ("module", "", "m", None)
    assert repr(t) == "Target(kind='module', path='', name='m', symbol=None)"
    assert vars(Member(1, 2, True)) == {"pid": 1, "ppid": 2, "secondary": True}
    assert t._replace(symbol="f") == Target("module", "", "m", "f")
    with pytest.raises(AttributeError):
        t.kind = "native"
    for bad in ((), ("a", "b", "c", "d", "e")):
        with pytest.raises(TypeError):
            Target(*bad)
    with pytest.raises(TypeError):
        Target("native", kind="module")
    with pytest.raises(TypeError):
        Target("native", colour="red")


def test_lock_record_and_release_in_process(runtime_dir):
    p = runtime.paths("P", runtime_dir)
    assert (p.root, p.prefix) == (Path(runtime_dir), "P")
    assert runtime.read_config(p) is None
    lock = runtime.PrefixLock(p)
    lock.acquire()
    try:
        assert lock.stale_pid is None
        assert open(p.lock).read() == f"{os.getpid()}\n"
        with pytest.raises(PrefixInUseError) as info:
            runtime.PrefixLock(p).acquire()
        assert info.value.pid == os.getpid()
        runtime.write_config(p, {"pid": 1, "b": [2]})
        assert runtime.read_config(p) == {"pid": 1, "b": [2]}
        assert oct(os.stat(p.config).st_mode & 0o777) == oct(0o600)
    finally:
        lock.release()
    assert lock.fd == -1
    assert os.listdir(runtime_dir) == []
    # The record needs the prefix's directory.
    with pytest.raises(ForkhostError, match=f"^cannot write {p.config}: "):
        runtime.write_config(p, {})


def test_release_without_remove_keeps_the_files(runtime_dir):
    p = runtime.paths("P", runtime_dir)
    lock = runtime.PrefixLock(p)
    lock.acquire()
    lock.release(remove=False)
    assert os.listdir(p.dir) == ["lock"]
    again = runtime.PrefixLock(p)
    again.acquire()          # our own pid in the lock: not a stale holder
    try:
        assert again.stale_pid is None
    finally:
        again.release()
    assert os.listdir(runtime_dir) == []


def test_paths_as_pathlib_shows_them(runtime_dir):
    p = runtime.paths("P", runtime_dir + "//./")
    assert str(p.root) == runtime_dir
    assert runtime.resolve_prefix(None) == (os.environ.get("FORKHOST_PREFIX")
                                            or runtime.DEFAULT_PREFIX)
    with pytest.raises(ForkhostError, match=r"^invalid prefix 'a\x00b' \(from --prefix\)"):
        runtime.resolve_prefix("a\0b")
