"""The error hierarchy: what can heal is decided by the type (and an HTTP status), never a flag."""

from __future__ import annotations

import pytest

from dsm.errors import (
    BadInput,
    BadResponse,
    CatalogError,
    DiskError,
    DiskFull,
    DsmError,
    HttpStatusError,
    IntegrityError,
    NetworkError,
    Restart,
    Stalled,
    TransferError,
    Truncated,
    retry_after,
    retryable,
)

TABLE: list[tuple[TransferError, bool, float | None]] = [
    # (error, retryable, retry_after)
    (HttpStatusError("HTTP 503", 503, 7.0), True, 7.0),
    (HttpStatusError("HTTP 500", 500), True, None),
    (HttpStatusError("HTTP 429", 429, 2.0), True, 2.0),
    (HttpStatusError("HTTP 408", 408), True, None),
    (HttpStatusError("HTTP 404", 404, 7.0), False, None),  # a Retry-After on a 404 is ignored
    (HttpStatusError("HTTP 403", 403), False, None),
    (NetworkError("ConnectError"), True, None),
    (Stalled("stalled"), True, None),
    (Truncated("connection ended at byte 5 of 10"), True, None),
    (Restart("the file changed on the server; restarting from zero"), True, 0.0),
    (DiskFull("disk full while writing x"), False, None),
    (DiskError("cannot write x"), False, None),
    (IntegrityError("size mismatch"), False, None),
    (BadResponse("server sent an HTML page instead of data"), False, None),
    (TransferError("internal error in a segment"), False, None),
]


@pytest.mark.parametrize(("exc", "heals", "delay"), TABLE, ids=lambda v: repr(v))
def test_classified_by_type(exc: TransferError, heals: bool, delay: float | None) -> None:
    assert retryable(exc) is heals
    assert retry_after(exc) == delay


def test_one_hierarchy() -> None:
    assert issubclass(CatalogError, BadInput) and issubclass(BadInput, DsmError)
    assert issubclass(TransferError, DsmError)
    assert (CatalogError.exit_code, TransferError.exit_code) == (2, 1)
