"""The team cache as the engine uses it: look up before the origin, publish after a verified
download, push and report on demand. Nothing here raises a cache failure at a job: each one
becomes a single warning (per cause, per process) and the origin is used instead."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from dsm.config import Settings
from dsm.domain.model import Dataset
from dsm.domain.redact import error_text, public_url, redact_url
from dsm.engine import files
from dsm.errors import TransferError, retryable
from dsm.transfer.http import Fetched
from dsm.transfer.partfile import discard_partial, read_sidecar, write_sidecar

if TYPE_CHECKING:
    from dsm.transfer.s3cache import CachedFile, TeamCache

log = logging.getLogger("dsm.cache")

SERVED_BY_ORIGIN = "origin"
SERVED_BY_CACHE = "team cache"
# After a failure the cache is left alone for a while: with thousands of datasets, an outage
# would otherwise cost every job a time-out and print a warning each.
RESTING = 60.0
# A download from the cache cut short goes on from its partial (a Range, as for any URL)
# while each attempt brings bytes, this many times: it restarted from zero at the origin.
CACHE_RESUMES = 3


class _Rests:
    """The rest and the warning, per cache (`TeamCache.where`) and per process: not per engine, as a
    script's every `dsm.library` call starts one (each waited a time-out, and warned)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def resting(self, url: str) -> bool:
        return time.monotonic() < self._until.get(url, 0.0)

    def rest(self, url: str) -> bool:
        """Rest the cache at `url`; True the first time in this process (warn then)."""
        with self._lock:
            self._until[url] = time.monotonic() + RESTING
            first = url not in self._warned
            self._warned.add(url)
        return first


_rests = _Rests()


@dataclass(frozen=True)
class CacheReport:
    url: str
    reachable: bool
    error: str | None
    held: int  # datasets of the catalogue whose verified file the cache holds
    known: int  # datasets whose checksum is known (catalogue or a verified copy)
    total: int


def carry_partial(part: Path, url: str) -> None:
    """Let a partial file fetched through an earlier presigned URL of the same object go on:
    every presign is a new URL (its date and signature), but the object behind it is the same
    immutable bytes, and the If-Range validator the sidecar keeps still has to match."""
    meta = read_sidecar(part)
    old = meta.get("url")
    if isinstance(old, str) and old != redact_url(url) and public_url(old) == public_url(url):
        write_sidecar(part, {**meta, "url": redact_url(url)})


class CacheSide:
    def __init__(self, settings: Settings) -> None:
        self.cache: TeamCache | None = None
        if settings.cache_url:  # obstore loads only for a configured cache
            from dsm.transfer.s3cache import TeamCache

            self.cache = TeamCache(settings.cache_url, push=settings.cache_push)
        self._bad: set[str] = (
            set()
        )  # objects found not to be their file: the next publish replaces them

    @property
    def enabled(self) -> bool:
        return self.cache is not None and not _rests.resting(self.cache.where)

    def failed(self, what: str, exc: BaseException | str) -> None:
        """Rest the cache after a failure; warn once per process, not once per job."""
        if self.cache is not None and _rests.rest(self.cache.where):
            log.warning("dsm: team cache: %s failed (%s); using the origin", what, exc)

    def find(self, ds: Dataset) -> CachedFile | None:
        """The cached copy of `ds`, by its expected checksum or its source's pointer."""
        if self.cache is None or not self.enabled:
            return None
        from dsm.transfer.s3cache import CacheError

        try:
            return self.cache.find(ds.expected_sha256, ds.original_url)
        except CacheError as exc:
            self.failed("the look-up", exc)
            return None

    async def fetch(
        self,
        ds: Dataset,
        target: Path,
        transfer: Callable[[str, int], Awaitable[Fetched]],
        done: Callable[[], int],
        forced: bool = False,
    ) -> Fetched | None:
        """The file from the cache through `transfer(url, size)`, verified; None to go to the
        origin instead (not held, the cache failed, or it held other bytes); `done()`: the
        bytes the job holds, for `_download`. A `forced`
        download (an update) of a file the catalogue gives no checksum for asks the origin:
        a source's pointer names the file it served once, maybe the very copy to replace."""
        if not self.enabled or (forced and ds.expected_sha256 is None):
            return None
        cached = await anyio.to_thread.run_sync(self.find, ds, abandon_on_cancel=True)
        if cached is None:
            return None
        if ds.expected_size is not None and cached.size != ds.expected_size:
            # Its size says it is not the file: not worth a download (it may be huge).
            self._held_bad(ds, cached, f"{cached.size} bytes, not {ds.expected_size}")
            return None
        await anyio.to_thread.run_sync(carry_partial, files.part_of(target), cached.url)
        fetched = await self._download(cached, transfer, done)
        if fetched is None:
            return None
        problem = (
            files.integrity_problem(ds, fetched.size, fetched.sha256)
            if fetched.sha256 == cached.sha256
            else f"its bytes hash to {fetched.sha256}"
        )
        if problem is None:
            return fetched
        await anyio.to_thread.run_sync(discard_partial, files.part_of(target))
        self._held_bad(ds, cached, problem)
        return None

    async def _download(
        self,
        cached: CachedFile,
        transfer: Callable[[str, int], Awaitable[Fetched]],
        done: Callable[[], int],
    ) -> Fetched | None:
        """The cached object, resumed after a cut that brought bytes (CACHE_RESUMES); None
        after a failure that brought none, or cannot heal: the origin then."""
        resumes = CACHE_RESUMES
        while True:
            before = done()
            try:
                return await transfer(cached.url, cached.size)
            except TransferError as exc:  # its message carries no presigned query
                if not resumes or not retryable(exc) or done() <= before:
                    self.failed("the download", exc)
                    return None
                resumes -= 1
                log.info("team cache: %s; resuming from byte %d", exc, done())

    def _held_bad(self, ds: Dataset, cached: CachedFile, why: str) -> None:
        """Warn that the cache's object for `ds` is not its file; the caller uses the origin,
        and once the origin's copy is verified, publishing it replaces the object."""
        self._bad.add(cached.sha256)
        log.warning(
            "dsm: team cache: held a bad object for %s (sha256 %s: %s); using the origin",
            ds.name,
            cached.sha256,
            why,
        )

    def publish(self, ds: Dataset, path: Path, sha256: str, size: int) -> None:
        """Share a file just verified from its origin with the team, unless pushing is off."""
        if self.cache is None or not self.cache.push or not self.enabled:
            return
        from dsm.transfer.s3cache import CacheError

        try:
            bad = sha256 in self._bad
            self.cache.publish(path, sha256, size, ds.original_url, fresh=True, bad=bad)
            self._bad.discard(sha256)
        except (CacheError, OSError) as exc:
            self.failed("publishing", exc)

    def push(self, home: Path, datasets: list[Dataset]) -> tuple[list[str], list[str], list[str]]:
        """Publish every dataset whose local copy is still verified and proven whole; (pushed,
        not pushed and why, refused and why: a copy whose bytes are no longer the verified
        ones). The reasons are lines to show."""
        from dsm.transfer.s3cache import CacheError, NotTheFile

        if self.cache is None:
            raise CacheError("no team cache: set DSM_CACHE_URL or --cache-url")
        pushed: list[str] = []
        skipped: list[str] = []
        refused: list[str] = []
        for ds in datasets:
            if not files.still_verified(home, ds) or ds.checksum is None or ds.size is None:
                skipped.append(f"not verified {ds.name} (download it first)")
            elif ds.manifest is not None:  # a folder: the cache holds single files only
                skipped.append(f"not pushed   {ds.name}: several files (the cache holds one)")
            elif ds.outdated:  # the row names the new source, the file is the old one's
                skipped.append(f"not pushed   {ds.name}: outdated ({ds.outdated_reason})")
            elif not ds.confirmed:  # a teammate would take it as a proven, verified copy
                why = ds.unconfirmed_reason or "nothing proved it whole"
                skipped.append(f"not pushed   {ds.name}: not confirmed ({why})")
            else:
                path = files.target(home, ds)
                try:
                    self.cache.publish(path, ds.checksum, ds.size, ds.original_url)
                except NotTheFile as exc:
                    verify = f"dsm --run-job verify --dataset {ds.name}"
                    refused.append(f"not pushed   {ds.name}: {exc}; run `{verify}`")
                    continue
                pushed.append(ds.name)
        return pushed, skipped, refused

    def report(self, datasets: list[Dataset]) -> CacheReport:
        """Where the cache is, whether it answers, and how much of the catalogue it holds."""
        from dsm.transfer.s3cache import CacheError

        if self.cache is None:
            raise CacheError("no team cache: set DSM_CACHE_URL or --cache-url")
        url, held, known = self.cache.url, 0, 0
        try:
            self.cache.ping()
            for ds in datasets:
                sha = ds.expected_sha256 or (ds.checksum if ds.downloaded else None)
                if sha is not None:
                    known += 1
                if self.cache.find(sha, ds.original_url) is not None:
                    held += 1
        except CacheError as exc:
            return CacheReport(url, False, error_text(str(exc)), held, known, len(datasets))
        return CacheReport(url, True, None, held, known, len(datasets))
