"""`python -m dsm` and the `dsm` console script: one entry point."""

import sys


def entry() -> None:
    try:
        from dsm.cli import main  # most of what dsm loads at start
    except KeyboardInterrupt:  # Ctrl-C while it loads: the quiet 130 of a later Ctrl-C
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    entry()
