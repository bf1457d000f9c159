"""`python -m dsm` runs the same entry point as the `dsm` console script."""

import sys

from dsm.cli import main

sys.exit(main())
