"""`python -m worker_bridge` runs its command."""

import sys

from worker_bridge.cli import main

if __name__ == "__main__":
    sys.exit(main())
