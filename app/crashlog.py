"""Where an unexpected exception goes: its traceback appended to a log file, never the screen.

The file is `dsm-error.log` in the data home, or in the platform's log folder
(platformdirs `user_log_dir`) when the home cannot be written. URLs in it are redacted like
everything else dsm writes: the log is what users attach to a bug report.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from dsm.domain.redact import redact_text
from dsm.version import __version__

LOG_NAME = "dsm-error.log"


def candidates(home: Path | None) -> list[Path]:
    """Where the log may go, in order of preference."""
    fallback = Path(platformdirs.user_log_dir("dsm")) / LOG_NAME
    return [home / LOG_NAME, fallback] if home is not None else [fallback]


def write(home: Path | None, argv: Sequence[str] | None) -> Path | None:
    """Append the exception being handled to the first log file that can be written; its
    path, or None when none can."""
    args = sys.argv[1:] if argv is None else list(argv)
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = redact_text(
        f"--- {when} dsm {__version__}: dsm {shlex.join(args)}\n{traceback.format_exc()}\n"
    )
    for path in candidates(home):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(entry)
        except OSError:
            continue
        return path
    return None
