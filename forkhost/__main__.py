"""``python -m forkhost`` is the same as ``forkhost``."""

import sys

from .cli import main

sys.exit(main())
