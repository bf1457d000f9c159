"""What each job type does: download (and update), verify, delete.

Retries: one budget per job. A download that fails with an error that can heal (its type
says so: `dsm.errors.retryable`) is tried again, at most `max_retries` times in all for the
job; the segments of a segmented transfer draw their retries from the same budget
(`RetryBudget`, passed down), so a job never retries more than that. The pause between tries
is `retry_delay` with jitter, the server's Retry-After when it sent one, none after a restart
from zero (the partial file was dropped: nothing to wait for).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from dsm.config import Settings
from dsm.domain.events import EventKind
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.engine import files, unpack
from dsm.engine.cache import SERVED_BY_CACHE, SERVED_BY_ORIGIN, CacheSide
from dsm.engine.ledger import Ledger
from dsm.engine.outcome import Outcome
from dsm.errors import ArchiveError, TransferError, retry_after, retryable
from dsm.repository import now_ms
from dsm.transfer import single as transfer
from dsm.transfer.http import Fetched, HostSlots, Policy, RetryBudget, public_url
from dsm.transfer.partfile import discard_partial

SKIP_MESSAGE = "already downloaded; use --force-download (force_download: true) to fetch again"
Emit = Callable[[EventKind, Job, Dataset | None], None]
Handler = Callable[[Job, Dataset, bool], Awaitable[Outcome]]


def host_headers(settings: Settings, url: str) -> dict[str, str]:
    """Headers configured for the URL's host (tokens); only ever sent over https."""
    parsed = httpx.URL(url)
    if parsed.scheme != "https":  # credentials never travel in clear text
        return {}
    host = (parsed.host or "").lower()
    out = {n: v for h, n, v in settings.host_headers if h == host}
    if host == "huggingface.co" and settings.hf_token:
        out["Authorization"] = f"Bearer {settings.hf_token}"
    return out


@dataclass(frozen=True)
class Served:
    by: str  # "origin" or the mirror's URL, redacted
    fetched: Fetched


def redacted(url: str) -> str:
    """The URL as shown (served_by, errors): no query, no user or password."""
    parts = urlsplit(public_url(url))
    host = parts.hostname or ""
    return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()


class Handlers:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        emit: Emit,
        progress: Callable[[Job], transfer.ProgressFn],
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.repo = ledger.repo
        self._emit = emit
        self._progress = progress
        self.client: httpx.Client | None = None  # set while the engine runs
        self._slots = HostSlots(settings.host_connections)
        self.cache = CacheSide(settings)
        self._policy = Policy(
            stall_timeout=settings.stall_timeout,
            segments=settings.segments,
            segment_min=settings.segment_min,
            retry_delay=settings.retry_delay,
        )

    def for_type(self, job_type: JobType) -> Handler:
        return {
            JobType.DOWNLOAD: self.download,
            JobType.UPDATE: self.download,
            JobType.VERIFY: self.verify,
            JobType.DELETE: self.delete,
        }[job_type]

    async def _set(self, job: Job, status: Status | None, **fields: Any) -> Dataset:
        ds = await self.ledger.call(self.repo.change, job.dataset, status, **fields)
        self._emit(EventKind.PROGRESS, job, ds)
        return ds

    # -- download and update -----------------------------------------------------------
    async def download(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
        if not job.params["force_download"] and had_copy and not ds.outdated:
            return JobStatus.SKIPPED, SKIP_MESSAGE
        try:
            target = files.target(self.settings.home, ds)
        except ValueError as exc:
            return JobStatus.FAILED, str(exc)
        await self._set(job, Status.DOWNLOADING, error=None)
        # A copy a crashed run verified and moved into place, unknown to the store. When the
        # store knows a verified copy, such a leftover is stale: fetch as asked.
        installed = None
        if not had_copy:
            installed = await anyio.to_thread.run_sync(
                files.installed_before_crash,
                target,
                abandon_on_cancel=True,  # it only reads
            )
        if installed is None and ds.extract and not (job.params["force_download"] or ds.outdated):
            installed = files.kept_archive(self.settings.home, ds)  # re-unpack, no download
        if installed is None or files.integrity_problem(ds, installed.size, installed.sha256):
            served = await self._obtain(job, ds, target)
            if not isinstance(served, Served):
                return served
            served_by, fetched = served.by, served.fetched
            await self._set(job, Status.VERIFYING)
            problem = files.integrity_problem(ds, fetched.size, fetched.sha256)
            if problem:
                await anyio.to_thread.run_sync(discard_partial, files.part_of(target))
                return JobStatus.FAILED, problem
            unpacked = await self._unpack(job, ds, files.part_of(target))
            if isinstance(unpacked, tuple):
                return unpacked
            # From the rename on, the store must hear of the new file: no cancel in between.
            with anyio.CancelScope(shield=True):
                installed = await anyio.to_thread.run_sync(
                    files.install, target, fetched.size, fetched.sha256
                )
                await self._record_install(job, ds, installed, target, unpacked, served_by)
            if served_by != SERVED_BY_CACHE:  # share it; the row already says downloaded
                await anyio.to_thread.run_sync(
                    self.cache.publish,
                    ds,
                    target,
                    fetched.sha256,
                    fetched.size,
                    abandon_on_cancel=True,  # create-only: an upload left running is harmless
                )
        else:
            unpacked = await self._unpack(job, ds, target)
            if isinstance(unpacked, tuple):
                return unpacked
            with anyio.CancelScope(shield=True):
                await self._record_install(job, ds, installed, target, unpacked)
        return JobStatus.COMPLETED, None

    async def _unpack(
        self, job: Job, ds: Dataset, archive: Path
    ) -> list[unpack.Unpacked] | Outcome | None:
        """Unpack a verified archive into the temporary path beside local_path (None for a
        dataset that is not unpacked). A refused archive is kept: its bytes are what the
        catalogue describes, so fetching it again would not help (--force-download does)."""
        if ds.extract is None:
            return None
        limits = unpack.Limits(self.settings.extract_max_bytes, self.settings.extract_max_members)
        try:
            return await anyio.to_thread.run_sync(
                unpack.unpack,
                archive,
                ds.extract,
                files.local(self.settings.home, ds),
                limits,
                anyio.from_thread.check_cancelled,  # a cancel stops it between members
            )
        except (ArchiveError, OSError) as exc:
            return JobStatus.FAILED, f"cannot unpack the {ds.extract} archive: {exc}"

    async def _record_install(
        self,
        job: Job,
        ds: Dataset,
        installed: files.Installed,
        target: Path,
        unpacked: list[unpack.Unpacked] | None,
        served_by: str | None = None,
    ) -> None:
        job.progress, job.bytes_done = 100.0, installed.size
        tree: dict[str, Any] = {}
        if unpacked is not None:  # the file list first: a listed tree is checked, not trusted
            await anyio.to_thread.run_sync(files.write_manifest, self.settings.home, ds, unpacked)
            await anyio.to_thread.run_sync(unpack.place, files.local(self.settings.home, ds))
            tree = {"file_count": len(unpacked), "unpacked_size": sum(u.size for u in unpacked)}
        await self._set(
            job,
            Status.DOWNLOADED,
            downloaded=True,
            size=installed.size,
            checksum=installed.sha256,
            downloaded_at_ms=now_ms(),
            file_mtime_ns=installed.mtime_ns,
            download_progress=100.0,
            outdated=False,
            error=None,
            **({"served_by": served_by} if served_by else {}),
            **tree,
        )
        await anyio.to_thread.run_sync(files.forget_install, target)

    async def _obtain(self, job: Job, ds: Dataset, target: Path) -> Served | Outcome:
        """The team cache's copy, else the origin's or a mirror's."""
        cached = await self.cache.fetch(
            ds, target, lambda url, size: self._transfer(job, url, target, size)
        )
        if cached is None:
            return await self._fetch(job, ds, target)
        return Served(SERVED_BY_CACHE, cached) if isinstance(cached, Fetched) else cached

    async def _fetch(self, job: Job, ds: Dataset, target: Path) -> Served | Outcome:
        """The origin, then each mirror in order, until one serves the dataset's bytes. A
        mirror must serve the same file: the catalogue's checksum, or without one the checksum
        of the copy verified before."""
        urls = [ds.original_url, *ds.mirrors]
        failures: list[str] = []
        verified_before = None if ds.outdated else ds.checksum  # outdated: another source
        same = replace(ds, expected_sha256=ds.expected_sha256 or verified_before)
        for index, url in enumerate(urls):
            got = await self._fetch_from(job, url, target, ds.expected_size, first=index == 0)
            if isinstance(got, Fetched):
                problem = files.integrity_problem(ds if index == 0 else same, got.size, got.sha256)
                if problem is None:
                    return Served(SERVED_BY_ORIGIN if index == 0 else redacted(url), got)
                await anyio.to_thread.run_sync(discard_partial, files.part_of(target))
                got = problem
            failures.append(got)
        if len(urls) == 1:
            return JobStatus.FAILED, failures[0]
        return JobStatus.FAILED, "; ".join(
            f"{redacted(url)}: {why}" for url, why in zip(urls, failures, strict=True)
        )

    async def _fetch_from(
        self, job: Job, url: str, target: Path, expected_size: int | None, first: bool
    ) -> Fetched | str:
        """One URL with its own retry budget (only what can heal is tried again); the
        origin's budget is what an adopted job's earlier process left of it."""
        budget = RetryBudget(self.settings.max_retries - (job.attempts if first else 0))
        tries = 0
        while True:
            job.attempts += 1
            tries += 1
            try:
                return await self._transfer(job, url, target, expected_size, budget)
            except TransferError as exc:
                if not retryable(exc) or not budget.draw():
                    return f"{exc}" + (f" (after {tries} attempts)" if tries > 1 else "")
                await self._wait_retry(job, exc)

    async def _transfer(
        self,
        job: Job,
        url: str,
        target: Path,
        expected_size: int | None,
        budget: RetryBudget | None = None,
    ) -> Fetched:
        """One transfer of `url` into `target`'s partial file (no retries without a budget)."""
        assert self.client is not None
        return await transfer.fetch(
            self.client,
            url,
            target,
            expected_size=expected_size,
            host_headers=lambda u: host_headers(self.settings, u),
            progress=self._progress(job),
            policy=self._policy,
            slots=self._slots,
            budget=budget or RetryBudget(0),
        )

    async def _wait_retry(self, job: Job, exc: TransferError) -> None:
        delay = retry_after(exc)
        if delay is None:  # jitter spreads the retries of many jobs hit by one outage
            delay = self.settings.retry_delay * random.uniform(0.8, 1.2)
        job.status = JobStatus.RETRYING
        job.error = f"attempt {job.attempts} failed: {exc}; retrying in {delay:.1f} s"
        await self.ledger.call(self.repo.save_job, job)
        self._emit(EventKind.RETRYING, job, None)
        await anyio.sleep(delay)
        job.status = JobStatus.RUNNING
        await self.ledger.call(self.repo.save_job, job)

    # -- verify and delete -------------------------------------------------------------
    async def verify(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
        if not ds.downloaded:
            return JobStatus.SKIPPED, "not downloaded: nothing to verify"
        await self._set(job, Status.VERIFYING)
        problem, mtime_ns = await anyio.to_thread.run_sync(
            files.rehash,
            self.settings.home,
            ds,
            abandon_on_cancel=True,  # it only reads
        )
        if problem:
            await self._set(job, Status.ERROR, error=problem, downloaded=False)
            return JobStatus.FAILED, problem
        await self._set(job, Status.DOWNLOADED, file_mtime_ns=mtime_ns, error=None)
        return JobStatus.COMPLETED, None

    async def delete(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
        try:
            files.target(self.settings.home, ds)
        except ValueError as exc:
            return JobStatus.FAILED, f"refusing to delete: {exc}"
        await self._set(job, Status.DELETING)
        with anyio.CancelScope(shield=True):  # a removed file is recorded as removed
            await anyio.to_thread.run_sync(files.remove, self.settings.home, ds)
            await self._set(job, Status.NOT_LOADED, **files.RESET_FIELDS)
        if not ds.in_catalog:
            await self.ledger.call(self.repo.remove_dataset, ds.name)
        return JobStatus.COMPLETED, None
