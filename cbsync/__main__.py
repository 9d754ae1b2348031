"""``python -m cbsync``: the command line (see ``cbsync --help``)."""

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
