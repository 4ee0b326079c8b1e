"""The checkout's root, for `python -m pytest` run from here: python puts
this directory first on sys.path, where forkhost/ lacks what `pip install`
generates and compiles (forkhost/_wire.py, libforkhost.so).  Dropping it
makes the installed forkhost the one imported, as with plain `pytest`."""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

if importlib.util.find_spec("forkhost") is None:
    sys.exit("forkhost is not installed: run `pip install '.[test]'` "
             "first (the tests use the installed package)")
