"""The end-state rule, pure: what a dataset row becomes when a job ends.

The ledger gathers the facts (from the store and the files) and applies the change; the
decision itself lives here so it can be read, and tested, as a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsm.domain.jobs import JobStatus
from dsm.domain.model import Dataset, Status

# (status, error) a handler returns for its job
Outcome = tuple[JobStatus, str | None]
SKIP_MESSAGE = "already downloaded; use --force-download (force_download: true) to fetch again"


def nothing_to_do(force: bool, ds: Dataset, had_copy: bool, offline: bool) -> Outcome | None:
    """A download's outcome when its dataset's verified copy is current (an unproven or
    outdated one is fetched again): skipped unless forced, and offline forced or not."""
    current = had_copy and not ds.outdated and ds.confirmed
    if current and (offline or not force):
        return JobStatus.SKIPPED, SKIP_MESSAGE
    return None


@dataclass(frozen=True)
class Facts:
    """What is known about the dataset when its job ends."""

    owned: bool  # the row points at this job and is not at rest yet
    had_copy: bool  # a verified copy is in place (an update that did not finish keeps it)
    resting: Status  # what the files say the row is at rest (see `resting_status`)


@dataclass(frozen=True)
class Change:
    """The row's new status and the fields that change with it."""

    status: Status
    fields: dict[str, Any]


def resting_status(verified: bool, partial: bool, error: str | None) -> Status:
    """A row nobody works on: a verified copy, else a partial, else its last error or none."""
    if verified:
        return Status.DOWNLOADED
    if partial:
        return Status.CANCELED
    return Status.ERROR if error else Status.NOT_LOADED


def end_state(job: JobStatus, error: str | None, facts: Facts) -> Change | None:
    """The row's change when a job with status `job` ends; None leaves it as it is."""
    if not facts.owned:  # another job took the row over, or it is at rest already
        return None
    if job == JobStatus.WAITING:  # suspended: queued for the next start
        return Change(Status.QUEUED, {})
    if facts.had_copy:  # an update that did not finish: the old copy is whole
        return Change(Status.DOWNLOADED, {"error": None, "download_progress": 100.0})
    if job == JobStatus.CANCELED:
        return Change(Status.CANCELED, {})
    if job.ok:  # skipped, or completed without a copy: back to how it was
        return Change(facts.resting, {})
    return Change(Status.ERROR, {"error": error, "downloaded": False})
