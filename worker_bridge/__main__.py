"""`python -m worker_bridge` is the `worker-bridge` command."""

import sys

from worker_bridge.cli import main

sys.exit(main())
