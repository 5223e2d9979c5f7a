"""``python -m occbench``: the CLI without its console script, e.g. in the Waymo environment."""

import sys

from occbench.cli import main

sys.exit(main())
