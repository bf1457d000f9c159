"""Downloading a dataset of several files: a catalogue entry's `files` list or a Hub folder
or glob (dsm.engine.hubjob), both a manifest (dsm.domain.hub.ManifestFile) fetched the same way.

Each file goes the way of any single file (resume, retries, integrity checks) into the
staging folder `<local_path>.part/`, checked against its listed size and hash as it lands
and renamed into place there; a file already there and correct is not fetched again, so a
re-run after one file failed fetches only what is missing or bad. Once all are there the
folder is swapped into place (the old copy stays until then: never half a tree called
verified), and the row records the manifest, whose hash is the dataset's checksum.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio

from dsm.catalog.secrets import source_url
from dsm.config import Settings
from dsm.domain.hub import ManifestFile, manifest_checksum
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset, Status
from dsm.engine import files
from dsm.engine.cache import SERVED_BY_ORIGIN, CacheSide
from dsm.engine.outcome import Outcome
from dsm.transfer.http import Fetched, RetryBudget
from dsm.transfer.partfile import discard_partial
from dsm.transfer.single import ProgressFn, Then

# Handlers.fetch: one file's transfer with the job's retry budget (job, url, target, expected
# size, budget, progress, the Hub's listing of the file for its git blob id, what to run in
# the transfer's thread once the file is whole).
FetchFile = Callable[
    [Job, str, Path, int | None, RetryBudget, ProgressFn | None, ManifestFile | None, Then | None],
    Awaitable[Fetched | Outcome],
]


class Handlers(Protocol):
    """What a download of several files uses of dsm.engine.handlers.Handlers (which imports
    this module)."""

    settings: Settings
    progress_fn: Callable[[Job], ProgressFn]
    cache: CacheSide

    @property  # a method's signature, written once: the alias above
    def fetch(self) -> FetchFile: ...

    @property
    def transfer(self) -> Callable[[Job, str, Path, int | None], Awaitable[Fetched]]: ...

    async def set_status(self, job: Job, status: Status | None, **fields: Any) -> Dataset: ...

    async def record_done(self, job: Job, **fields: Any) -> None: ...


class TreeDownload:
    def __init__(
        self, h: Handlers, job: Job, ds: Dataset, target: Path, budget: RetryBudget
    ) -> None:
        self.h, self.job, self.ds, self.target, self.budget = h, job, ds, target, budget

    async def run(self, listing: list[ManifestFile], **record: Any) -> Outcome:
        """Fetch every file of `listing` into the staging folder, then swap it into place;
        `record`: the row's extra fields (a Hub source's commit)."""
        h, job = self.h, self.job
        staging = files.part_of(self.target)
        total = sum(f.size for f in listing)
        # A catalogue's expected size and sha256 of several files are the total and the
        # manifest checksum: both known from the listing, before a byte is fetched.
        problem = files.integrity_problem(self.ds, total, manifest_checksum(listing))
        if problem:
            return JobStatus.FAILED, f"the files listed are not the catalogue's: {problem}"
        report = h.progress_fn(job)
        offset = 0
        for want in listing:
            failed = await self._one(want, staging, _shifted(report, offset, total))
            if failed is not None:
                return failed
            offset += want.size
            report(offset, total)
        await h.set_status(job, Status.VERIFYING)
        with anyio.CancelScope(shield=True):  # a swapped folder is recorded as installed
            stamped = await anyio.to_thread.run_sync(files.install_tree, self.target, listing)
            await anyio.to_thread.run_sync(files.drop_archive, h.settings.home, self.ds)
            await h.record_done(
                job,
                size=total,
                checksum=manifest_checksum(stamped),
                manifest=[f.to_dict() for f in stamped],
                file_count=len(stamped),
                unpacked_size=None,
                file_mtime_ns=None,
                served_by=SERVED_BY_ORIGIN,
                **record,
            )
        return JobStatus.COMPLETED, None

    async def _one(self, want: ManifestFile, staging: Path, progress: ProgressFn) -> Outcome | None:
        """One file into the staging folder, checked; None once it is there, else why not.
        A file of the copy in place that is still correct is taken from there (a download
        after a failed verify), unless the job asks to fetch again."""
        h, job, ds = self.h, self.job, self.ds
        try:
            dest = files.member(staging, want.path)
            kept = None if job.force_download else files.member(self.target, want.path)
        except ValueError as exc:
            return JobStatus.FAILED, str(exc)
        if await anyio.to_thread.run_sync(files.stage, dest, kept, want):
            return None
        try:  # a URL stored without its credentials is read again from the catalogue
            url = await anyio.to_thread.run_sync(source_url, h.settings.catalog, ds.name, want.url)
        except ValueError as exc:
            return JobStatus.FAILED, str(exc)
        got = await h.fetch(job, url, dest, want.size, self.budget, progress, want, None)
        if not isinstance(got, Fetched):
            return got[0], f"{want.path}: {got[1] or 'failed'}"
        problem = files.file_problem(want, got)
        if problem:
            await anyio.to_thread.run_sync(discard_partial, files.part_of(dest))
            return JobStatus.FAILED, problem
        await anyio.to_thread.run_sync(files.install, dest, got, None)
        await anyio.to_thread.run_sync(files.forget_install, dest)
        return None


def _shifted(report: ProgressFn, before: int, total: int) -> ProgressFn:
    """One file's progress as the whole dataset's: the files before it are done."""
    return lambda done, _size: report(before + done, total)
