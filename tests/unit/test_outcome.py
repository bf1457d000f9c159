"""The end-state rule as a table: what a dataset row becomes when its job ends."""

from __future__ import annotations

import pytest

from dsm.domain.jobs import JobStatus
from dsm.domain.model import Status
from dsm.engine.outcome import Change, Facts, end_state, resting_status

OWNED = Facts(owned=True, had_copy=False, resting=Status.NOT_LOADED)
KEPT_COPY = Facts(owned=True, had_copy=True, resting=Status.DOWNLOADED)
NOT_OURS = Facts(owned=False, had_copy=False, resting=Status.NOT_LOADED)
PARTIAL = Facts(owned=True, had_copy=False, resting=Status.CANCELED)

TABLE = [
    # (job status, job error, facts, the row's change)
    (JobStatus.COMPLETED, None, NOT_OURS, None),
    (JobStatus.FAILED, "boom", NOT_OURS, None),
    (JobStatus.WAITING, "suspended", OWNED, Change(Status.QUEUED, {})),
    (JobStatus.WAITING, "suspended", KEPT_COPY, Change(Status.QUEUED, {})),
    (
        JobStatus.CANCELED,
        "stopped",
        KEPT_COPY,
        Change(Status.DOWNLOADED, {"error": None, "download_progress": 100.0}),
    ),
    (
        JobStatus.FAILED,
        "HTTP 500",
        KEPT_COPY,
        Change(Status.DOWNLOADED, {"error": None, "download_progress": 100.0}),
    ),
    (JobStatus.CANCELED, "stopped", OWNED, Change(Status.CANCELED, {})),
    (
        JobStatus.TIMEOUT,
        "timed out",
        OWNED,
        Change(Status.ERROR, {"error": "timed out", "downloaded": False}),
    ),
    (
        JobStatus.FAILED,
        "HTTP 404",
        OWNED,
        Change(Status.ERROR, {"error": "HTTP 404", "downloaded": False}),
    ),
    (JobStatus.SKIPPED, "not downloaded", OWNED, Change(Status.NOT_LOADED, {})),
    (JobStatus.SKIPPED, "not downloaded", PARTIAL, Change(Status.CANCELED, {})),
    (JobStatus.COMPLETED, None, OWNED, Change(Status.NOT_LOADED, {})),
]


@pytest.mark.parametrize(("job", "error", "facts", "want"), TABLE)
def test_end_state(job: JobStatus, error: str | None, facts: Facts, want: Change | None) -> None:
    assert end_state(job, error, facts) == want


@pytest.mark.parametrize(
    ("verified", "partial", "error", "want"),
    [
        (True, True, "old error", Status.DOWNLOADED),
        (False, True, "old error", Status.CANCELED),
        (False, False, "old error", Status.ERROR),
        (False, False, None, Status.NOT_LOADED),
    ],
)
def test_resting_status(verified: bool, partial: bool, error: str | None, want: Status) -> None:
    assert resting_status(verified, partial, error) == want
