"""forkhost's reliability suite: the kill matrix, the LAUNCH and IPC record
fuzzers, the leak soak, the concurrent-client load and the hostile
neighbours (docs/reliability.md).

Run by hand with `python -m stress` from the checkout (see --help); a
bounded smoke of every part runs in the tests (tests/test_stress_smoke.py).
It drives the *installed* forkhost (`pip install '.[test]'`): the
checkout's forkhost/ has no compiled parts, so this package moves the
checkout to the end of sys.path before anything imports forkhost, and
puts tests/ (fhtest, the shared helpers) on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _path_setup() -> None:
    def is_root(p: str) -> bool:
        try:
            return Path(p or os.curdir).resolve() == ROOT
        except OSError:
            return False

    sys.path[:] = [p for p in sys.path if not is_root(p)] + [str(ROOT)]
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


_path_setup()
