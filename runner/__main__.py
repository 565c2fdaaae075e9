"""`python -m runner` is the `dispatch-runner` command."""

import sys

from runner.cli import main

sys.exit(main())
