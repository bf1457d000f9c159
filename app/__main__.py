"""`python -m app` runs the same entry point as the `dsm` console script."""

import sys

from app.cli import main

sys.exit(main())
