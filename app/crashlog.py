"""Where an unexpected exception goes: its traceback appended to a log file, never the screen.

The file is `dsm-error.log` in the data home, or in the platform's log folder
(platformdirs `user_log_dir`) when the home cannot be written. URLs in it are redacted like
everything else dsm writes: the log is what users attach to a bug report.
"""

from __future__ import annotations

import datetime
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from dsm.domain.redact import redact_text
from dsm.domain.terminal import printable
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
    return _append(home, f"dsm {shlex.join(args)}\n{traceback.format_exc()}")


class _Handler(logging.Handler):
    """dsm's own warnings: the message on stderr as before (a script reads it), a traceback
    (a listener that failed, a job that hit a bug) only in the log file, named on stderr: on
    the dashboard or in a script's output a traceback would garble what the user reads."""

    def __init__(self, home: Path) -> None:
        super().__init__(logging.WARNING)
        self.home = home

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = redact_text(record.getMessage())
            if record.exc_info:
                trace = "".join(traceback.format_exception(*record.exc_info))
                path = _append(self.home, f"{record.name}: {message}\n{trace}")
                message += f" (the traceback is in {path})" if path else ""
            print(printable(message), file=sys.stderr)
        except Exception:  # logging must never raise into the engine
            self.handleError(record)


def route_logs(home: Path) -> None:
    """Send the `dsm` loggers to this handler instead of Python's last-resort one."""
    root = logging.getLogger("dsm")
    root.handlers = [h for h in root.handlers if not isinstance(h, _Handler)]
    root.addHandler(_Handler(home))
    root.propagate = False


def _append(home: Path | None, text: str) -> Path | None:
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = redact_text(f"--- {when} dsm {__version__}: {text}\n")
    for path in candidates(home):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Never through a link planted at its name (another user of a shared home): the
            # traceback, words a server chose among them, went into the file it named.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(path, flags, 0o666), "a", encoding="utf-8") as fh:
                fh.write(entry)
        except OSError:  # a link too (ELOOP): the next place
            continue
        return path
    return None
