"""What each job type does: download (and update), verify, delete.

Retries: one budget per job. A download that fails with an error that can heal (its type
says so: `dsm.errors.retryable`) is tried again, at most `max_retries` times in all for the
job; the segments of a segmented transfer draw their retries from the same budget
(`RetryBudget`, passed down), so a job never retries more than that. The pause between tries
is `retry_delay` with jitter, the server's Retry-After when it sent one, none after a restart
from zero (the partial file was dropped: nothing to wait for).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from dsm.catalog.secrets import source_url
from dsm.config import Settings
from dsm.domain.events import EventKind
from dsm.domain.hub import ManifestFile, catalogue_listing, is_hub
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.domain.redact import REDACTED, error_text
from dsm.engine import files, maintenance
from dsm.engine.cache import SERVED_BY_CACHE, SERVED_BY_ORIGIN, CacheSide
from dsm.engine.ledger import Ledger
from dsm.engine.outcome import Outcome, nothing_to_do
from dsm.engine.sources import Served, obtain
from dsm.engine.tree import TreeDownload
from dsm.errors import (
    QUICK_RETRIES,
    ArchiveError,
    TransferError,
    Unreachable,
    retry_after,
    retryable,
)
from dsm.repository import now_ms
from dsm.transfer import single as transfer
from dsm.transfer.http import Fetched, HostSlots, Policy, RetryBudget, secure_origin
from dsm.transfer.hub import auth_headers
from dsm.transfer.partfile import discard_partial

if TYPE_CHECKING:
    from dsm.engine.unpack import Unpacked

Emit = Callable[[EventKind, Job, Dataset | None], None]
Handler = Callable[[Job, Dataset, bool], Awaitable[Outcome]]


OFFLINE_PREFIX = "offline"
T = TypeVar("T")


def host_headers(settings: Settings, url: str) -> dict[str, str]:
    """Headers configured for the URL's origin (scheme, host, port), only ever sent over
    https or to this machine, so a redirect to another origin gets that origin's; and the Hub
    token for the Hub endpoint's own origin (dsm.transfer.hub.auth_headers)."""
    if not settings.host_headers and not settings.hf_token:  # the usual case: nothing to add
        return {}
    parsed = httpx.URL(url)
    if not secure_origin(parsed):  # credentials never travel in clear text
        return {}
    host, port, scheme = (parsed.host or "").lower(), parsed.port, parsed.scheme
    shown = f"[{host}]" if ":" in host else host
    keys = {f"{shown}:{port}", f"{scheme}://{shown}:{port}"}
    if port is None:  # the scheme's own port: a bare host names it
        keys |= {shown, f"{scheme}://{shown}"}
    out = {n: v for k, n, v in settings.host_headers if k in keys}
    return out | auth_headers(settings.hf_endpoint, settings.hf_token, url)


async def unpack_archive(
    settings: Settings, ds: Dataset, archive: Path
) -> list[Unpacked] | Outcome | None:
    """Unpack a verified archive into the temporary path beside local_path (None for a
    dataset that is not unpacked). A refused archive is kept: its bytes are what the
    catalogue describes, so fetching it again would not help (--force-download does)."""
    if ds.extract is None:
        return None
    from dsm.engine import unpack  # tarfile, zipfile, lzma: for archives only

    limits = unpack.Limits(
        settings.extract_max_bytes, settings.extract_max_members, settings.extract_max_memory
    )
    try:
        return await anyio.to_thread.run_sync(
            unpack.unpack,
            archive,
            ds.extract,
            files.local(settings.home, ds),
            limits,
            anyio.from_thread.check_cancelled,  # a cancel stops it between members
        )
    except (ArchiveError, OSError) as exc:
        return JobStatus.FAILED, f"cannot unpack the {ds.extract} archive: {exc}"


def place_unpacked(
    settings: Settings, ds: Dataset, unpacked: list[Unpacked] | None
) -> dict[str, Any]:
    """Record the file list, then move the unpacked copy into place; the row's fields
    (blocking: the caller runs it in a thread, with the install before it)."""
    home = settings.home
    if unpacked is None:  # a file in place of any earlier unpacked copy: its archive goes
        files.drop_archive(home, ds)
        return {"file_count": None, "unpacked_size": None}
    from dsm.engine import unpack  # loaded by unpack_archive already

    files.write_manifest(home, ds, unpacked)
    unpack.place(files.local(home, ds))
    return {"file_count": len(unpacked), "unpacked_size": sum(u.size for u in unpacked)}


async def fetch_url(settings: Settings, ds: Dataset) -> str:
    """The row's URL, or the catalogue's when the row keeps it without its credentials
    (read in a thread: only then is there a file to read). ValueError: not to be found."""
    if REDACTED not in ds.original_url:
        return ds.original_url
    return await anyio.to_thread.run_sync(source_url, settings.catalog, ds.name, ds.original_url)


# The installed copy and the row's fields its placing sets (install_fetched).
Placed = tuple[files.Installed, dict[str, Any]]


def install_fetched(
    settings: Settings,
    ds: Dataset,
    target: Path,
    fetched: Fetched,
    unconfirmed: str | None,
    unpacked: list[Unpacked] | None,
) -> Placed:
    """Move the verified file into place, then its unpacked tree (blocking: one thread hop)."""
    installed = files.install(target, fetched, unconfirmed, False, ds.expected_sha256 is None)
    return installed, place_unpacked(settings, ds, unpacked)


class EarlyInstall:
    """The install done by the transfer's own thread once the body is whole (one thread hop
    a job fewer): checked against the catalogue, then moved into place. It runs only if the
    transfer was not stopped, and a stop waits for it (Control.settle), so a job stopped
    just after (canceled, paused, timed out) still records the copy it `placed`, and ends
    completed (Handlers.outcome). A file that fails the check is left for
    the job's usual verification, which reports and discards it; without room to record the
    copy (StoreFull) none is placed: the job fails and its partial goes."""

    def __init__(self, h: Handlers, ds: Dataset, target: Path) -> None:
        self._settings, self._repo, self._ds, self._target = h.settings, h.repo, ds, target
        self.placed: Placed | None = None

    def __call__(self, fetched: Fetched) -> None:
        ds, home = self._ds, self._settings.home
        if files.integrity_problem(ds, fetched.size, fetched.sha256) is not None:
            return
        # An earlier tree or archive to remove first: the long way, as a stop waits for this.
        if self._target.is_dir() or files.archive_dir(home, ds).exists():
            return
        unconfirmed = files.unconfirmed_reason(ds, fetched.unproven, fetched.sha256)
        self._repo.check_room()  # a stat and a statfs, as at `verifying`
        self.placed = install_fetched(self._settings, ds, self._target, fetched, unconfirmed, None)


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
        self.progress_fn = progress
        self.client: httpx.Client | None = None  # set while the engine runs
        self._slots = HostSlots(settings.host_connections)
        self.watch = transfer.Watch()  # the engine runs it: progress of running transfers
        self.cache = CacheSide(settings)
        self._recorded: set[str] = set()  # jobs whose copy is recorded (record_done)
        self._policy = Policy(
            stall_timeout=settings.stall_timeout,
            segments=settings.segments,
            segment_min=settings.segment_min,
            retry_delay=settings.retry_delay,
            low_speed_limit=settings.low_speed_limit,
            low_speed_time=settings.low_speed_time,
            max_size=settings.download_max_bytes,
        )

    def outcome(self, job: Job, outcome: Outcome) -> Outcome:
        """The job's end: completed once its copy is recorded (`record_done`), whatever stop
        came after (during EarlyInstall's move, the team-cache upload): held, it reran."""
        if job.id in self._recorded:
            self._recorded.discard(job.id)
            return JobStatus.COMPLETED, None
        return outcome

    def for_type(self, job_type: JobType) -> Handler:
        by_type: dict[JobType, Handler] = {
            JobType.DOWNLOAD: self.download,
            JobType.UPDATE: self.download,
            JobType.VERIFY: partial(maintenance.verify, self),
            JobType.DELETE: partial(maintenance.delete, self),
        }
        return by_type[job_type]

    async def set_status(
        self, job: Job, status: Status | None, save_job: bool = False, **fields: Any
    ) -> Dataset:
        """Deferred, as the job's other records (ledger.py); Ledger.set_status."""
        if fields.get("error"):
            fields["error"] = error_text(fields["error"])
        ds = await self.ledger.defer(self.ledger.set_status, job, status, fields, save_job)
        self._emit(EventKind.PROGRESS, job, ds)
        return ds

    # -- download and update -----------------------------------------------------------
    async def download(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
        force, offline = job.force_download, self.settings.offline
        if skipped := nothing_to_do(force, ds, had_copy, offline):
            files.forget_install(files.target(self.settings.home, ds), ds.checksum)
            return skipped
        if self.settings.offline:
            return JobStatus.FAILED, (
                f"{OFFLINE_PREFIX}: no verified local copy of {ds.name}, and DSM_OFFLINE or "
                "HF_HUB_OFFLINE forbids network requests"
            )
        try:
            target = files.target(self.settings.home, ds)
        except ValueError as exc:
            return JobStatus.FAILED, str(exc)
        try:
            url = await fetch_url(self.settings, ds)
        except ValueError as exc:
            return JobStatus.FAILED, str(exc)
        # A Hub dataset or a `files` list of several files is a folder; any other is one file.
        problem = files.folder_problem(self.settings.home, target, ds)
        if problem and not (is_hub(url) or ds.files):
            return JobStatus.FAILED, problem
        job.expect = files.expectations(ds)  # what the end is recorded against (issue 12.4)
        await self.set_status(job, Status.DOWNLOADING, save_job=True, error=None)
        # Attempts of an adopted job count: the budget is what the earlier process left.
        budget = RetryBudget(self.settings.max_retries - job.attempts)
        if is_hub(url):
            from dsm.engine.hubjob import HubDownload  # for Hub datasets only

            return await HubDownload(self, job, ds, target, budget).run(had_copy)
        if ds.files:
            listing = catalogue_listing(ds.files)
            return await TreeDownload(self, job, ds, target, budget).run(listing)
        return await self.install_file(job, ds, target, had_copy, url, budget)

    async def install_file(
        self,
        job: Job,
        ds: Dataset,
        target: Path,
        had_copy: bool,
        url: str,
        budget: RetryBudget,
        listed: ManifestFile | None = None,
        **record: Any,
    ) -> Outcome:
        """Fetch one file to `target` (from the team cache when it holds it, else `url`),
        check it against the catalogue (and the Hub's listing when `listed`), move it into
        place and record it with `record`'s extra fields."""
        installed = await self._in_place(job, ds, target, had_copy, listed)
        if installed is None or files.integrity_problem(ds, installed.size, installed.sha256):
            # A plain file from one URL is checked and moved into place by its transfer thread.
            early = None if listed or ds.extract or ds.mirrors else EarlyInstall(self, ds, target)
            try:
                served = await obtain(self, job, ds, url, target, budget, listed, early)
            finally:
                if early is not None and early.placed is not None:  # also when stopped since
                    with anyio.CancelScope(shield=True):
                        placed = record | {"served_by": SERVED_BY_ORIGIN}
                        await self._record_placed(job, target, early.placed, placed)
            if not isinstance(served, Served):
                return served
            served_by, fetched = served.by, served.fetched
            if (early is None or early.placed is None) and (
                outcome := await self._verify_and_install(
                    job, ds, target, fetched, listed, record | {"served_by": served_by}
                )
            ):
                return outcome
            # Share a proven copy with the team; an unconfirmed one is not shared: the cache
            # would pass an unproven file off as verified.
            unconfirmed = files.unconfirmed_reason(ds, fetched.unproven, fetched.sha256)
            shared = served_by != SERVED_BY_CACHE and listed is None and unconfirmed is None
            if shared and self.cache.enabled:
                await anyio.to_thread.run_sync(
                    self.cache.publish,
                    ds,
                    target,
                    fetched.sha256,
                    fetched.size,
                    abandon_on_cancel=True,  # create-only: an upload left running is harmless
                )
        else:
            unpacked = await unpack_archive(self.settings, ds, target)
            if isinstance(unpacked, tuple):
                return unpacked
            with anyio.CancelScope(shield=True):
                record.update(
                    await anyio.to_thread.run_sync(place_unpacked, self.settings, ds, unpacked)
                )
                await self._record_install(job, installed, target, **record)
        return JobStatus.COMPLETED, None

    async def _verify_and_install(
        self,
        job: Job,
        ds: Dataset,
        target: Path,
        fetched: Fetched,
        listed: ManifestFile | None,
        record: dict[str, Any],
    ) -> Outcome | None:
        """Check the fetched partial against the catalogue (and the Hub's listing), unpack it
        if asked, move it into place and record it; the failure, else None."""
        await self.set_status(job, Status.VERIFYING)
        problem = files.integrity_problem(ds, fetched.size, fetched.sha256)
        if listed is not None:
            problem = problem or files.file_problem(listed, fetched)
        if problem:
            await anyio.to_thread.run_sync(discard_partial, files.part_of(target))
            return JobStatus.FAILED, problem
        # The Hub's listing (size and hash) proves a Hub file; else see unconfirmed_reason.
        unconfirmed = (
            None
            if listed is not None
            else files.unconfirmed_reason(ds, fetched.unproven, fetched.sha256)
        )
        unpacked = await unpack_archive(self.settings, ds, files.part_of(target))
        if isinstance(unpacked, tuple):
            return unpacked
        # From the rename on, the store must hear of the new file: no cancel in between.
        with anyio.CancelScope(shield=True):
            placed = await anyio.to_thread.run_sync(
                install_fetched, self.settings, ds, target, fetched, unconfirmed, unpacked
            )
            await self._record_placed(job, target, placed, record)
        return None

    async def _record_placed(
        self, job: Job, target: Path, placed: Placed, record: dict[str, Any]
    ) -> None:
        copy, fields = placed
        await self._record_install(job, copy, target, **(record | fields))

    async def _in_place(
        self, job: Job, ds: Dataset, target: Path, had_copy: bool, listed: ManifestFile | None
    ) -> files.Installed | None:
        """A verified file already in place: a copy a crashed run moved there, unknown to the
        store (when the store knows a verified copy, such a leftover is stale: fetch as
        asked), or an unpacked dataset's kept archive (a re-unpack needs no download)."""
        # An update (force) takes only a recorded copy, never one the catalogue's hash proves.
        known = None if job.force_download else ds.expected_sha256
        if not had_copy and files.may_be_installed(target, known):  # most jobs: no thread
            installed = await anyio.to_thread.run_sync(
                files.installed_before_crash,
                target,
                known,
                ds.expected_size,
                listed,
                abandon_on_cancel=True,  # it only reads
            )
            if installed is not None:
                return installed
        if ds.extract and not (job.force_download or ds.outdated):
            return files.kept_archive(self.settings.home, ds)
        return None

    async def _record_install(
        self, job: Job, installed: files.Installed, target: Path, **record: Any
    ) -> None:
        await self.record_done(
            job,
            folder=target.parent,  # the rename is made durable once per batch
            size=installed.size,
            checksum=installed.sha256,
            file_mtime_ns=installed.mtime_ns,
            manifest=None,
            confirmed=installed.unconfirmed is None,
            unconfirmed_reason=installed.unconfirmed,
            **record,
        )
        # The install record goes once the store has the copy: a crash before is re-hashed.
        self.ledger.after_commit(partial(files.forget_install, target, installed.sha256))

    async def record_done(self, job: Job, folder: Path | None = None, **fields: Any) -> None:
        """The dataset is installed and verified: say so in the store, against the
        expectations the job started with (Ledger.record_done)."""
        job.progress, job.bytes_done = 100.0, fields["size"]
        ds = await self.ledger.defer(self.ledger.record_done, job, fields, folder)
        self._recorded.add(job.id)
        self._emit(EventKind.PROGRESS, job, ds)

    async def fetch(
        self,
        job: Job,
        url: str,
        target: Path,
        expected_size: int | None,
        budget: RetryBudget,
        progress: transfer.ProgressFn | None = None,
        git_blob: ManifestFile | None = None,
        then: transfer.Then | None = None,
    ) -> Fetched | Outcome:
        """One file's transfer with the job's retry budget."""
        return await self.retrying(
            job,
            budget,
            lambda: self.transfer(
                job, url, target, expected_size, budget, progress, git_blob, then
            ),
        )

    async def retrying(
        self, job: Job, budget: RetryBudget, attempt: Callable[[], Awaitable[T]]
    ) -> T | Outcome:
        """Run `attempt` with the job's retry budget: only what can heal is tried again."""
        quick = 0  # retries spent on an unreachable host
        while True:
            job.attempts += 1
            try:
                return await attempt()
            except TransferError as exc:
                quick += isinstance(exc, Unreachable)
                if not retryable(exc) or quick > QUICK_RETRIES or not budget.draw():
                    tries = f" (after {job.attempts} attempts)" if job.attempts > 1 else ""
                    return JobStatus.FAILED, f"{exc}{tries}"
                await self._wait_retry(job, exc)

    async def transfer(
        self,
        job: Job,
        url: str,
        target: Path,
        expected_size: int | None,
        budget: RetryBudget | None = None,
        progress: transfer.ProgressFn | None = None,
        git_blob: ManifestFile | None = None,
        then: transfer.Then | None = None,
    ) -> Fetched:
        """One transfer of `url` into `target`'s partial file (no retries without a budget);
        `git_blob`: a Hub file checked by its git blob id, computed in the same pass; `then`
        (transfer.fetch) in the transfer's thread."""
        assert self.client is not None
        policy = self._policy
        if git_blob is not None and not git_blob.sha256:
            policy = dataclasses.replace(policy, git_blob=True)
        return await transfer.fetch(
            self.client,
            url,
            target,
            expected_size=expected_size,
            host_headers=lambda u: host_headers(self.settings, u),
            progress=progress or self.progress_fn(job),
            watch=self.watch,
            policy=policy,
            slots=self._slots,
            budget=budget or RetryBudget(0),
            then=then,
        )

    async def _wait_retry(self, job: Job, exc: TransferError) -> None:
        delay = retry_after(exc)
        if delay is None:  # jitter spreads the retries of many jobs hit by one outage
            delay = self.settings.retry_delay * random.uniform(0.8, 1.2)
        job.status, job.retry_at_ms = JobStatus.RETRYING, now_ms() + round(delay * 1000)
        job.error = error_text(f"attempt {job.attempts} failed: {exc}; retrying in {delay:.1f} s")
        await self.ledger.defer(self.repo.save_job, job)
        self._emit(EventKind.RETRYING, job, None)
        await anyio.sleep(delay)
        job.status, job.retry_at_ms = JobStatus.RUNNING, None
        await self.ledger.defer(self.repo.save_job, job)
