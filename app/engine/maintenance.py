"""The maintenance jobs: verify (hash the copy again) and delete (remove it)."""

from __future__ import annotations

from typing import Any, Protocol

import anyio

from dsm.config import Settings
from dsm.domain.hub import is_hub
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset, Status
from dsm.engine import files
from dsm.engine.ledger import Ledger
from dsm.engine.outcome import Outcome
from dsm.repository import Repository


class Handlers(Protocol):
    """What these jobs use of dsm.engine.handlers.Handlers (which imports this module)."""

    settings: Settings
    ledger: Ledger
    repo: Repository

    async def set_status(self, job: Job, status: Status | None, **fields: Any) -> Dataset: ...


async def verify(h: Handlers, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
    """Hash the copy on disk again against what the store recorded."""
    if not ds.downloaded:
        return JobStatus.SKIPPED, "not downloaded: nothing to verify"
    await h.set_status(job, Status.VERIFYING)
    problem, stamps = await anyio.to_thread.run_sync(
        files.rehash,
        h.settings.home,
        ds,
        abandon_on_cancel=True,  # it only reads
    )
    if problem:
        await h.set_status(job, Status.ERROR, error=problem, downloaded=False)
        return JobStatus.FAILED, problem
    await h.set_status(job, Status.DOWNLOADED, error=None, **stamps)
    return JobStatus.COMPLETED, None


async def delete(h: Handlers, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
    """Remove the copy (a file, an unpacked tree and its archive; never a folder of the
    user's) and put the row back to not loaded; a row no longer in the catalogue goes."""
    try:
        target = files.target(h.settings.home, ds)
    except ValueError as exc:
        return JobStatus.FAILED, f"refusing to delete: {exc}"
    problem = files.folder_problem(h.settings.home, target, ds)
    if problem and not (is_hub(ds.original_url) or ds.files):  # the user's: never removed
        return JobStatus.FAILED, f"refusing to delete: {problem}"
    await h.set_status(job, Status.DELETING)
    with anyio.CancelScope(shield=True):  # a removed file is recorded as removed
        await anyio.to_thread.run_sync(files.remove, target)
        # An unpacked copy's tree and archive, also when the catalogue no longer unpacks it.
        await anyio.to_thread.run_sync(files.remove_unpacked, h.settings.home, ds)
        await h.set_status(job, Status.NOT_LOADED, **files.RESET_FIELDS)
    if not ds.in_catalog:
        await h.ledger.defer(h.repo.remove_dataset, ds.name)
    return JobStatus.COMPLETED, None
