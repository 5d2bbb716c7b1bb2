"""``python -m memopt_bptt``: the memopt-bptt command line (see :mod:`memopt_bptt.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
