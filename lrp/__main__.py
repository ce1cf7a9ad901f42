"""``python -m lrp``: the same as the ``lrp`` command (see :mod:`lrp.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
