"""``forkhost demo``: the main job on an embedded default, no setup.

Starts a primary with a small arena, stores a function pointer in the arena
(a memzone holding a pointer to a function of libforkhost), then launches a
Python secondary and a native (C) secondary through forkhost-run.  Each
looks the memzone up by name and calls the stored pointer, which works only
because the secondary has the primary's mappings at the same addresses.
Prints what happened and what each launch cost, then stops the primary.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import time

from ._native import LIBRARY, ffi, lib

ZONE = ffi.string(lib.FH_DEMO_ZONE)   # demo.h names the memzone
ROUNDS = 20


def _zone():
    mz = lib.fh_memzone_lookup(ZONE)
    if mz == ffi.NULL:
        raise SystemExit(f"forkhost demo: no memzone {ZONE.decode()!r} here; is this "
                         "a secondary of the demo primary?")
    return mz, ffi.cast("struct fh_demo_zone *", mz.addr)


def python_secondary(argv: list[str]) -> int:
    """The Python secondary: call the stored function pointer via cffi."""
    mz, zone = _zone()
    calls = zone.fn(zone, os.getpid())
    if "--quiet" not in argv:
        print(f"Python secondary (pid {os.getpid()}): arena at "
              f"0x{int(ffi.cast('uintptr_t', lib.fh_arena_base())):x}, zone "
              f"'{ffi.string(mz.name).decode()}' at 0x{int(ffi.cast('uintptr_t', zone)):x} "
              f"says \"{ffi.string(zone.greeting).decode()}\"; called fn at "
              f"0x{int(ffi.cast('uintptr_t', zone.fn)):x} -> call #{calls}")
    return 0


def _launch(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return time.perf_counter() - t0, proc


def _check(name: str, proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout.decode(errors="replace"))
        raise SystemExit(f"forkhost demo: the {name} secondary failed (exit "
                         f"{proc.returncode}):\n{proc.stderr.decode(errors='replace')}")


def _measure(commands: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    """commands: name -> (first, then): one launch of `first`, which prints
    what it did, then the median time of `then` over ROUNDS - 1
    interleaved rounds (so all see the same machine), in an order shuffled
    in each round (seeded).  Launches are 10 ms apart, as launches on
    demand would be: on a small machine a launch right after another pays
    for the one before (its secondary's exit, the pool's refill), and with
    a fixed order always the same command would."""
    for name, (first, _) in commands.items():
        _, proc = _launch(first)
        _check(name, proc)
        if proc.stdout:
            sys.stdout.write("  " + proc.stdout.decode(errors="replace"))
    times: dict[str, list[float]] = {name: [] for name in commands}
    order = list(commands)
    rng = random.Random(2017)
    for _ in range(ROUNDS - 1):
        rng.shuffle(order)
        for name in order:
            time.sleep(0.01)
            dt, proc = _launch(commands[name][1])
            _check(name, proc)
            times[name].append(dt)
    return {name: statistics.median(t) for name, t in times.items()}


def demo(prefix: str | None = None, runtime_dir=None) -> int:
    from .primary import Primary
    prefix = prefix or f"demo-{os.getpid()}"
    runner = shutil.which("forkhost-run")
    if runner is None:
        print("forkhost demo: forkhost-run is not on PATH; install forkhost with "
              "`pip install .` so its bin directory is on PATH", file=sys.stderr)
        return 1
    native = str(LIBRARY.parent / "demo_secondary.so")
    print(f"forkhost demo: a primary for prefix {prefix!r}, then secondaries "
          f"launched with {runner}")
    with Primary(prefix, runtime_dir=runtime_dir, arena_size="16M") as p:
        print(f"  {p.ready_line()}")
        zone = lib.fh_demo_setup(b"hello from the primary")
        if zone == ffi.NULL:
            raise SystemExit(f"forkhost demo: cannot reserve the demo memzone: "
                             f"{os.strerror(ffi.errno)}")
        print(f"  primary (pid {os.getpid()}): stored fn at "
              f"0x{int(ffi.cast('uintptr_t', zone.fn)):x} in memzone {ZONE.decode()!r} "
              f"at 0x{int(ffi.cast('uintptr_t', zone)):x}")
        base = [runner, "--prefix", prefix] + (
            ["--runtime-dir", str(runtime_dir)] if runtime_dir else [])
        py_cmd, c_cmd = base + ["forkhost._demo:python_secondary"], base + [native]
        med = _measure({"Python": (py_cmd, py_cmd + ["--quiet"]),
                        "C": (c_cmd, c_cmd + ["--quiet"]),
                        "true": (["/bin/true"], ["/bin/true"])})
        py, c, true = med["Python"], med["C"], med["true"]
        calls = zone.calls
        print(f"  the primary reads the arena: fn was called {calls} times, last by "
              f"pid {zone.last_caller}")
        print(f"  launch latency, median of {ROUNDS - 1} interleaved rounds of "
              f"whole-process runs: Python "
              f"secondary {py * 1e3:.2f} ms, C secondary {c * 1e3:.2f} ms, "
              f"/bin/true {true * 1e3:.2f} ms")
    print(f"forkhost demo: primary stopped; {calls} calls through one function "
          f"pointer from {2 * ROUNDS} secondaries")
    return 0 if calls == 2 * ROUNDS else 1
