"""``python -m fourstep_sqla.demo [URL]``: the same as ``fourstep demo``."""

import sys

from . import run_demo

sys.exit(run_demo(sys.argv[1] if len(sys.argv) > 1 else None))
