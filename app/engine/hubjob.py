"""Downloading a Hugging Face Hub source (`hf://datasets/...`), and noticing a branch that
moved on upstream.

A download resolves the source (dsm.transfer.hub) to a commit and its files, with the job's
retry budget, then fetches at that commit. One file whose path the source names goes the
way of any single file (`Handlers.install_file`), checked against the Hub's LFS sha256 or
git blob id as well as the catalogue. A directory or glob is a dataset of several files,
fetched by the code a catalogue's `files` list uses (dsm.engine.tree): an `update` keeps the
old copy until the new commit is complete and verified. The row records the commit and the manifest
of files (dsm.domain.hub), whose hash is the dataset's checksum.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import httpx

from dsm.config import Settings
from dsm.domain.hub import HubRef, ManifestFile, hub_followed, parse_hub_url
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset
from dsm.engine import tree
from dsm.engine.outcome import Outcome
from dsm.engine.tree import TreeDownload
from dsm.errors import NetworkError, TransferError
from dsm.repository import Repository
from dsm.transfer.http import RetryBudget
from dsm.transfer.hub import Hub, auth_headers
from dsm.transfer.proxy import make_client

T = TypeVar("T")


class Handlers(tree.Handlers, Protocol):
    """What a Hub download uses of dsm.engine.handlers.Handlers (which imports this module)."""

    client: httpx.Client | None

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


UPSTREAM_TIMEOUT = 5.0  # seconds: the upstream check is a hint shown by `dsm list`


@dataclass(frozen=True)
class Resolved:
    commit: str
    listing: list[ManifestFile]


def hub_for(settings: Settings, client: httpx.Client, stall_timeout: float | None = None) -> Hub:
    """The Hub of the settings on `client`; its answers' heads and bodies must each arrive
    whole within `stall_timeout` (the settings' by default)."""
    return Hub(
        client,
        settings.hf_endpoint,
        settings.hf_token,
        lambda url: auth_headers(settings.hf_endpoint, settings.hf_token, url),
        settings.stall_timeout if stall_timeout is None else stall_timeout,
        settings.extract_max_members,
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
        if current and (job.type == JobType.UPDATE or not job.force_download):
            return JobStatus.SKIPPED, f"up to date: {ds.name} is at commit {commit}"
        record: dict[str, Any] = {"source_commit": commit, "upstream_commit": commit}
        if not ref.is_glob and [f.path for f in listing] == [ref.path]:
            one = listing[0]
            return await h.install_file(
                job, ds, self.target, had_copy, one.url, self.budget, one, **record
            )
        return await TreeDownload(h, job, ds, self.target, self.budget).run(listing, **record)


# -- a branch that moved on -------------------------------------------------------------------
def refresh_upstream(settings: Settings, repo: Repository) -> int:
    """Ask the Hub once where each followed branch is now and record it on the rows
    (`upstream_commit`); returns how many datasets moved. Never offline; a Hub that cannot
    be asked leaves the rows as they were (this is a hint, not a job)."""
    followed = hub_followed(repo.datasets())
    if settings.offline or not followed:
        return 0
    heads: dict[tuple[str, str], str | None] = {}
    # A hint must not hold up `dsm list`: short timeouts (each answer's head and body whole
    # within them, on the engine's kind of client, whose reads are watched), and an
    # unreachable Hub is asked once.
    timeout = httpx.Timeout(UPSTREAM_TIMEOUT)
    with make_client(timeout, httpx.Limits()) as client:
        hub = hub_for(settings, client, UPSTREAM_TIMEOUT)
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
