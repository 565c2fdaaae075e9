"""`python -m dispatcher` runs its command."""

import sys

from dispatcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
