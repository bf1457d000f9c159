"""Where one file's bytes come from: the team cache when it holds them, else the file's URL,
else (when that fails for good) the catalogue's mirrors in order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from dsm.catalog.secrets import source_url
from dsm.domain.hub import ManifestFile
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset
from dsm.engine import files
from dsm.engine.cache import SERVED_BY_CACHE, SERVED_BY_ORIGIN
from dsm.engine.outcome import Outcome
from dsm.engine.tree import Handlers
from dsm.transfer.http import Fetched, RetryBudget
from dsm.transfer.partfile import discard_partial
from dsm.transfer.single import Then


@dataclass(frozen=True)
class Served:
    by: str  # "origin" or the mirror's URL, redacted
    fetched: Fetched


def redacted(url: str) -> str:
    """The URL as shown (served_by, errors): no query, no user or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _same(ds: Dataset) -> Dataset:
    """What a mirror must serve: the catalogue's checksum, else the copy verified before."""
    verified_before = None if ds.outdated else ds.checksum  # outdated: another source
    return dataclasses.replace(ds, expected_sha256=ds.expected_sha256 or verified_before)


async def obtain(
    h: Handlers,
    job: Job,
    ds: Dataset,
    url: str,
    target: Path,
    budget: RetryBudget,
    listed: ManifestFile | None,
    then: Then | None = None,
) -> Served | Outcome:
    """The file's bytes in `target`'s partial: from the team cache when it holds them (a Hub
    file, `listed`, is checked by the Hub's hash, so it comes from the Hub only), else from
    `url`, then each mirror in order (each with its own retry budget) until one serves
    the dataset's bytes. A mirror must serve the same file: the catalogue's checksum, or
    without one the checksum of the copy verified before. A partial file is continued
    only from the URL that started it (resume.start): another URL starts from zero. A
    mirror stored without its credentials is read again from the catalogue. `then` runs in
    the transfer's thread after a transfer from `url` (transfer.fetch), for a dataset
    without mirrors."""
    if listed is None:
        cached = await h.cache.fetch(
            ds,
            target,
            lambda u, size: h.transfer(job, u, target, size),
            lambda: job.bytes_done,
            job.params["force_download"],
        )
        if cached is not None:
            return Served(SERVED_BY_CACHE, cached)
    urls = [url, *ds.mirrors]
    size = listed.size if listed else ds.expected_size
    failures: list[str] = []
    for index, source in enumerate(urls):
        if index:
            budget = RetryBudget(h.settings.max_retries)
            try:
                source = await anyio.to_thread.run_sync(
                    source_url, h.settings.catalog, ds.name, source
                )
            except ValueError as exc:
                failures.append(str(exc))
                continue
        got = await h.fetch(job, source, target, size, budget, None, listed, then)
        if len(urls) == 1:  # checked by the caller, as every copy is
            return Served(SERVED_BY_ORIGIN, got) if isinstance(got, Fetched) else got
        if isinstance(got, Fetched):
            problem = files.integrity_problem(_same(ds) if index else ds, got.size, got.sha256)
            if problem is None:
                return Served(SERVED_BY_ORIGIN if index == 0 else redacted(source), got)
            await anyio.to_thread.run_sync(discard_partial, files.part_of(target))
            failures.append(problem)
        else:
            failures.append(got[1] or "failed")
    return JobStatus.FAILED, "; ".join(
        f"{redacted(u)}: {why}" for u, why in zip(urls, failures, strict=True)
    )
