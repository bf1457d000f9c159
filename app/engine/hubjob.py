"""Downloading a Hugging Face Hub source (`hf://datasets/...`), and noticing a branch that
moved on upstream.

A download resolves the source (dsm.transfer.hub) to a commit and its files, with the job's
retry budget, then fetches at that commit. One file whose path the source names goes the
way of any single file (`Handlers.install_file`), checked against the Hub's LFS sha256 or
git blob id as well as the catalogue. A directory or glob is a multi-file dataset: each file
is fetched (resumably) into the staging folder `<local_path>.part/` under its repo path and
checked as it lands; once all are there the folder is swapped into place, so an `update`
keeps the old copy until the new commit is complete and verified. The row records the
commit and the manifest of files (dsm.domain.hub), whose hash is the dataset's checksum.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import httpx

from dsm.config import Settings
from dsm.domain.hub import HubRef, ManifestFile, is_hub, manifest_checksum, parse_hub_url
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.engine import files
from dsm.engine.cache import SERVED_BY_ORIGIN
from dsm.engine.outcome import Outcome
from dsm.errors import NetworkError, TransferError
from dsm.repository import Repository
from dsm.transfer.http import Fetched, RetryBudget
from dsm.transfer.hub import Hub, auth_headers
from dsm.transfer.partfile import discard_partial
from dsm.transfer.single import ProgressFn

T = TypeVar("T")


class Handlers(Protocol):
    """What a Hub download uses of dsm.engine.handlers.Handlers (which imports this module)."""

    settings: Settings
    client: httpx.Client | None
    progress_fn: Callable[[Job], ProgressFn]

    async def retrying(
        self, job: Job, budget: RetryBudget, attempt: Callable[[], Awaitable[T]]
    ) -> T | Outcome: ...

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
    ) -> Outcome: ...

    async def fetch(
        self,
        job: Job,
        url: str,
        target: Path,
        expected_size: int | None,
        budget: RetryBudget,
        progress: ProgressFn | None = None,
        git_blob: ManifestFile | None = None,
    ) -> Fetched | Outcome: ...

    async def set_status(self, job: Job, status: Status | None, **fields: Any) -> Dataset: ...

    async def record_done(self, job: Job, **fields: Any) -> None: ...


UPSTREAM_TIMEOUT = 5.0  # seconds: the upstream check is a hint shown by `dsm list`


@dataclass(frozen=True)
class Resolved:
    commit: str
    listing: list[ManifestFile]


def hub_for(settings: Settings, client: httpx.Client) -> Hub:
    return Hub(
        client,
        settings.hf_endpoint,
        settings.hf_token,
        lambda url: auth_headers(settings.hf_endpoint, settings.hf_token, url),
        settings.stall_timeout,
    )


def _resolve(hub: Hub, ref: HubRef) -> Resolved:
    commit = hub.commit(ref)
    return Resolved(commit, hub.files(ref, commit))


class HubDownload:
    def __init__(
        self, h: Handlers, job: Job, ds: Dataset, target: Path, budget: RetryBudget
    ) -> None:
        self.h, self.job, self.ds, self.target, self.budget = h, job, ds, target, budget

    async def run(self, had_copy: bool) -> Outcome:
        h, job, ds = self.h, self.job, self.ds
        assert h.client is not None
        ref = parse_hub_url(ds.original_url)  # the catalogue was validated
        hub = hub_for(h.settings, h.client)
        resolved = await h.retrying(
            job,
            self.budget,
            lambda: anyio.to_thread.run_sync(
                partial(_resolve, hub, ref),
                abandon_on_cancel=True,  # it only asks
            ),
        )
        if not isinstance(resolved, Resolved):
            return resolved
        commit, listing = resolved.commit, resolved.listing
        # An update (always forced) of a copy already at the commit has nothing to fetch: a
        # commit's bytes never change. A download asked with force_download fetches again.
        current = had_copy and not ds.outdated and commit == ds.source_commit
        if current and (job.type == JobType.UPDATE or not job.params["force_download"]):
            return JobStatus.SKIPPED, f"up to date: {ds.name} is at commit {commit}"
        record: dict[str, Any] = {"source_commit": commit, "upstream_commit": commit}
        if not ref.is_glob and [f.path for f in listing] == [ref.path]:
            one = listing[0]
            return await h.install_file(
                job, ds, self.target, had_copy, one.url, self.budget, one, **record
            )
        return await self._tree(listing, record)

    async def _tree(self, listing: list[ManifestFile], record: dict[str, Any]) -> Outcome:
        """Fetch every file into the staging folder, then swap it into place."""
        h, job = self.h, self.job
        staging = files.part_of(self.target)
        total = sum(f.size for f in listing)
        # A catalogue's expected size and sha256 of a multi-file source are the total and the
        # manifest checksum: both known from the listing, before a byte is fetched.
        problem = files.integrity_problem(self.ds, total, manifest_checksum(listing))
        if problem:
            return JobStatus.FAILED, f"the files at the commit are not the catalogue's: {problem}"
        report = h.progress_fn(job)
        offset = 0
        for want in listing:
            try:
                dest = files.member(staging, want.path)
            except ValueError as exc:
                return JobStatus.FAILED, str(exc)
            if not await anyio.to_thread.run_sync(files.staged, dest, want):
                fetched = await h.fetch(
                    job,
                    want.url,
                    dest,
                    want.size,
                    self.budget,
                    progress=_shifted(report, offset, total),
                    git_blob=want,
                )
                if not isinstance(fetched, Fetched):
                    return fetched
                problem = files.file_problem(want, fetched)
                if problem:
                    await anyio.to_thread.run_sync(discard_partial, files.part_of(dest))
                    return JobStatus.FAILED, problem
                await anyio.to_thread.run_sync(files.install, dest, fetched.size, fetched.sha256)
                await anyio.to_thread.run_sync(files.forget_install, dest)
            offset += want.size
            report(offset, total)
        await h.set_status(job, Status.VERIFYING)
        with anyio.CancelScope(shield=True):  # a swapped folder is recorded as installed
            stamped = await anyio.to_thread.run_sync(
                files.install_tree, self.target, staging, listing
            )
            await h.record_done(
                job,
                size=total,
                checksum=manifest_checksum(stamped),
                manifest=[f.to_dict() for f in stamped],
                file_mtime_ns=None,
                served_by=SERVED_BY_ORIGIN,
                **record,
            )
        return JobStatus.COMPLETED, None


def _shifted(report: ProgressFn, before: int, total: int) -> ProgressFn:
    """One file's progress as the whole dataset's: the files before it are done."""
    return lambda done, _size: report(before + done, total)


# -- a branch that moved on -------------------------------------------------------------------
def _followed(rows: Iterable[Dataset]) -> list[tuple[Dataset, HubRef]]:
    """Downloaded Hub datasets whose source names a branch or tag, not a commit."""
    out: list[tuple[Dataset, HubRef]] = []
    for ds in rows:
        if ds.downloaded and ds.source_commit and is_hub(ds.original_url):
            ref = parse_hub_url(ds.original_url)
            if not ref.pinned:
                out.append((ds, ref))
    return out


def refresh_upstream(settings: Settings, repo: Repository) -> int:
    """Ask the Hub once where each followed branch is now and record it on the rows
    (`upstream_commit`); returns how many datasets moved. Never offline; a Hub that cannot
    be asked leaves the rows as they were (this is a hint, not a job)."""
    followed = _followed(repo.datasets())
    if settings.offline or not followed:
        return 0
    heads: dict[tuple[str, str], str | None] = {}
    # A hint must not hold up `dsm list`: short timeouts, and an unreachable Hub is asked once.
    timeout = httpx.Timeout(UPSTREAM_TIMEOUT)
    with httpx.Client(timeout=timeout, trust_env=True) as client:
        hub = hub_for(settings, client)
        for _, ref in followed:
            key = (ref.repo, ref.revision)
            if key in heads:
                continue
            try:
                heads[key] = hub.commit(ref)
            except NetworkError:
                break
            except TransferError:  # this repo only (gated, gone): ask the others
                heads[key] = None
    moved = 0
    with repo.transaction():
        for ds, ref in followed:
            head = heads.get((ref.repo, ref.revision))
            if head is not None and head != ds.upstream_commit:
                repo.change(ds.name, None, upstream_commit=head)
            moved += head is not None and head != ds.source_commit
    return moved
