"""`python -m swcm.cli ...` (and `accelerate launch -m swcm.cli ...`) runs the `swcm` command."""

import sys

from . import main

sys.exit(main())
