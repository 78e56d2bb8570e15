"""``python -m singleshot ...`` (and ``torchrun -m singleshot train ...``) runs the command line."""

import sys

from singleshot.cli import main

if __name__ == "__main__":
    sys.exit(main())
