"""``python -m forkhost`` is the same as ``forkhost``."""

import sys

from ._cli import main

sys.exit(main())
