"""Every error dsm raises, in one hierarchy, classified by type.

    DsmError                      a failure explained to the user (exit_code)
    ├── BadInput                  the user's input or file is wrong (exit 2)
    │   └── CatalogError          a catalogue that cannot be used
    ├── ArchiveError              an archive refused or unreadable while unpacking
    └── TransferError             a download failed; `retryable(exc)` says if trying heals it
        ├── HttpStatusError       an unwanted HTTP status (408, 429, 5xx can heal)
        ├── NetworkError          the connection failed (heals)
        │   ├── Unreachable       the name does not resolve, the port refuses (2 quick retries)
        │   ├── Stalled           no data for the stall timeout, or too slow for too long
        │   └── Truncated         the body ended before its announced length
        ├── Restart               the partial file cannot be continued: start again from zero
        ├── DiskError             the partial file cannot be written
        │   └── DiskFull          ENOSPC: the partial file is given up to free the room
        ├── IntegrityError        the server announces another file than the catalogue's
        ├── TooLarge              past DSM_DOWNLOAD_MAX_BYTES without a catalogue size
        ├── AccessDenied          a gated or private Hub repo without a valid token
        └── BadResponse           a response that is not the file (HTML, bad redirects)
    UnknownDataset (LookupError)  a dataset name the store does not hold
    InvalidTransition             a bug: a status change the lifecycle forbids

The store's own errors (`StoreError`, `StoreCorrupt`) live in `store/`, which imports nothing
from dsm; the repository re-exports them.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class DsmError(Exception):
    """A failure explained to the user; `exit_code` says how the process should end."""

    exit_code = EXIT_FAILED


class BadInput(DsmError):
    """Bad input from the user or from a file the user gave us (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class CatalogError(BadInput):
    """A catalogue that cannot be used; the message lists every problem found."""


class ArchiveError(DsmError):
    """An archive that cannot be unpacked safely; the message names the member."""


class UnknownDataset(LookupError):
    """A dataset name the store does not hold."""


class InvalidTransition(RuntimeError):
    """A bug: code asked for a status change the lifecycle does not allow."""


# -- transfers -----------------------------------------------------------------------------
class TransferError(DsmError):
    """A failed transfer. Raised as such only for failures no retry heals (a bug in a segment)."""


class HttpStatusError(TransferError):
    """The server answered with a status we cannot use."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # the server's Retry-After, in seconds

    @property
    def transient(self) -> bool:
        """408, 429 and 5xx can heal; other statuses cannot."""
        return self.status in (408, 429) or self.status >= 500


class NetworkError(TransferError):
    """The connection failed or broke: trying again can heal it."""


class Unreachable(NetworkError):
    """The host name does not resolve or the port refuses connections: most often the machine
    is offline, and waiting the retry delay six times does not change that. Tried again
    `QUICK_RETRIES` times after `QUICK_RETRY_DELAY`, then failed."""


QUICK_RETRIES = 2
QUICK_RETRY_DELAY = 1.0


class Stalled(NetworkError):
    """No data arrived for the stall timeout, or too little for the low-speed time."""


class Truncated(NetworkError):
    """The body ended before the length it announced."""


class Restart(TransferError):
    """The partial file cannot be continued (another version, a bad range): the code that
    acted on the plan dropped it, and the next attempt starts from zero at once."""


class DiskError(TransferError):
    """The partial file cannot be written."""


class DiskFull(DiskError):
    """No space left: the partial file was dropped so the store can still record the end."""


class Swapped(DiskError, OSError):
    """The partial file at its name is no longer the one dsm wrote and hashed: another
    process (a user of a shared home) put a link or another file there before the rename
    that installs it. An OSError too: callers that keep going on a failed sidecar write
    still do."""


class IntegrityError(TransferError):
    """The server announces another file than the catalogue describes."""


class TooLarge(TransferError):
    """A body larger than dsm takes from a server without the catalogue's `expected_size`
    (DSM_DOWNLOAD_MAX_BYTES): announced so, or sent so without a length. No retry heals it."""


class AccessDenied(TransferError):
    """The Hub refused the repo (401/403): gated or private, and no valid token. No retry
    heals it: the user must give a token."""


class BadResponse(TransferError):
    """The response is not the file: an HTML page, a redirect we refuse to follow."""


def retryable(exc: TransferError) -> bool:
    """Whether trying again can heal the failure, decided by its type."""
    if isinstance(exc, HttpStatusError):
        return exc.transient
    return isinstance(exc, NetworkError | Restart)


def retry_after(exc: TransferError) -> float | None:
    """How long to wait before the retry when the failure decides it, else None (the
    caller's own delay): a restart goes at once, a server may ask for a pause."""
    if isinstance(exc, Restart):
        return 0.0
    if isinstance(exc, Unreachable):
        return QUICK_RETRY_DELAY
    if isinstance(exc, HttpStatusError) and exc.transient:
        return exc.retry_after
    return None
