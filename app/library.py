"""dsm's Python API: the verified local path of a dataset, in one call.

    import dsm
    path = dsm.ensure("gsm8k")  # downloads and verifies the first time, then returns at once

Every call uses the same data home, store, locks and job engine as `dsm --run-job`, so it is
safe beside a running dashboard and from many processes at once: one process downloads a
file, the others wait on that dataset's lock and get the same path. Settings come from the
environment as for the command (DSM_HOME, DSM_CATALOG, DSM_MAX_RETRIES, DSM_WORKERS, ...);
the `home` and `catalog` arguments win over it. DSM_OFFLINE=1 forbids any network request.
Every error is a `DatasetError`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio

from dsm import config
from dsm.catalog.sync import open_home
from dsm.config import Settings, load_settings
from dsm.domain.display import source_text
from dsm.domain.events import EventKind, JobEvent, Listener
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset
from dsm.engine import files
from dsm.engine.engine import Engine
from dsm.engine.handlers import OFFLINE_PREFIX
from dsm.engine.ledger import Asked
from dsm.errors import EXIT_BAD_INPUT, BadInput, DsmError
from dsm.headless import Reporter
from dsm.repository import Repository, StoreError, UnknownDataset

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "IntegrityError",
    "NetworkError",
    "NotFoundError",
    "OfflineError",
    "adatasets",
    "aensure",
    "aensure_all",
    "apath",
    "averify",
    "datasets",
    "ensure",
    "ensure_all",
    "path",
    "verify",
]

P = ParamSpec("P")
T = TypeVar("T")
PathArg = str | os.PathLike[str] | None

# How a failed job's message (the engine's words, see engine/files.py and transfer/http.py)
# maps to an exception. A failed download not named here went wrong at the server or on the
# way (HTTP status, refused connection, stall, redirect): NetworkError.
_INTEGRITY_PREFIXES = ("size mismatch", "checksum mismatch", "cannot verify")
_LOCAL_PREFIXES = ("disk full", "cannot write", "internal error", "local_path")


class DatasetError(DsmError):
    """Base of every error the API raises; `dataset` names the dataset when there is one."""

    def __init__(self, message: str, dataset: str | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset


class NotFoundError(DatasetError):
    """No dataset of that name in the catalogue (nor kept in the store)."""

    exit_code = EXIT_BAD_INPUT


class OfflineError(DatasetError):
    """No verified local copy, and this call may not fetch one: `path()`, `verify()`, or any
    call while DSM_OFFLINE=1."""


class IntegrityError(DatasetError):
    """The bytes are not the dataset: the size or SHA-256 differs from the catalogue (a
    download is discarded, never installed) or a verified copy changed on disk."""


class NetworkError(DatasetError):
    """The download failed at the server or on the way (HTTP error, refused connection,
    stall, timeout), after the retries DSM_MAX_RETRIES allows."""


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset as `datasets()` reports it: a snapshot, detached from the store."""

    name: str
    description: str
    url: str
    path: Path | None  # where the file is or will be (None: its local_path is refused)
    status: str  # "not_loaded", "downloaded", "downloading", "error", ... as `dsm list`
    verified: bool  # a verified, current copy is at `path`: `path()` would return it
    expected_size: int | None
    expected_sha256: str | None
    size: int | None  # of the copy on disk, once downloaded
    sha256: str | None  # of the copy on disk, once downloaded
    in_catalog: bool  # False: it left the catalogue; the row and file stay until deleted
    commit: str | None = None  # a Hub source: the commit the copy on disk came from
    file_count: int | None = None  # a folder (several files, an unpacked archive): its files
    served_by: str | None = None  # "origin", a mirror's URL or "team cache"


# -- plumbing ------------------------------------------------------------------------------
def _offline() -> bool:
    """DSM_OFFLINE or HF_HUB_OFFLINE, read as the engine reads them."""
    try:
        return config.offline(os.environ)
    except BadInput as exc:
        raise DatasetError(str(exc)) from None


def _open(home: PathArg, catalog: PathArg) -> tuple[Settings, Repository]:
    """Settings as the command resolves them, and the opened home; errors as DatasetError."""
    try:
        settings = load_settings(
            home=None if home is None else os.fspath(home),
            catalog=None if catalog is None else os.fspath(catalog),
        )
        return settings, open_home(settings)
    except (DsmError, StoreError) as exc:
        raise DatasetError(str(exc)) from exc


def _lookup(repo: Repository, name: str) -> Dataset:
    try:
        return repo.dataset(name)
    except UnknownDataset:
        raise NotFoundError(f"dataset not found: {name}", name) from None


def _local(settings: Settings, ds: Dataset) -> Path | None:
    """The verified, current copy's path, by the engine's own cheap check (size and mtime
    as verified); None when there is none."""
    if ds.outdated or not ds.confirmed or not files.still_verified(settings.home, ds):
        return None
    return files.local(settings.home, ds)


def _info(settings: Settings, ds: Dataset) -> DatasetInfo:
    try:
        where: Path | None = files.local(settings.home, ds)
    except ValueError:
        where = None
    return DatasetInfo(
        name=ds.name,
        description=ds.description,
        url=source_text(ds),  # a dataset of several files: "3 files from http://host"
        path=where,
        status=ds.status.value,
        verified=_local(settings, ds) is not None,
        expected_size=ds.expected_size,
        expected_sha256=ds.expected_sha256,
        size=ds.size,
        sha256=ds.checksum,
        in_catalog=ds.in_catalog,
        commit=ds.source_commit,
        file_count=ds.file_count,
        served_by=ds.served_by,
    )


def _failure(job: Job) -> DatasetError:
    """The exception for a job that did not end well."""
    message = f"{job.dataset}: {job.type.value} {job.status.value}: {job.error}"
    error = job.error or ""
    kind: type[DatasetError] = DatasetError
    if job.status == JobStatus.TIMEOUT:
        kind = NetworkError
    elif error.startswith(OFFLINE_PREFIX):
        kind = OfflineError
    elif job.status == JobStatus.FAILED:
        if job.type == JobType.VERIFY or error.startswith(_INTEGRITY_PREFIXES):
            kind = IntegrityError
        elif not error.startswith(_LOCAL_PREFIXES):
            kind = NetworkError
    return kind(message, job.dataset)


def _run(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run an async twin (`aensure`) to the end from synchronous code (`ensure`)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the normal case
        return anyio.run(partial(fn, *args, **kwargs))
    raise RuntimeError(
        f"dsm.{fn.__name__[1:]}() cannot run inside an event loop: use `await dsm.{fn.__name__}()`"
    )


async def _run_jobs(
    settings: Settings,
    repo: Repository,
    job_type: JobType,
    names: list[str],
    *,
    force: bool,
    progress: bool,
) -> dict[str, Job]:
    """Run one job per dataset on an engine of our own, to the end; each dataset's last job."""
    finished: dict[str, Job] = {}

    def record(event: JobEvent) -> None:
        if event.kind == EventKind.FINISHED:
            finished[event.job.id] = event.job

    listeners: list[Listener] = [record]
    if progress and sys.stderr is not None and sys.stderr.isatty():  # never into logs
        listeners.append(Reporter(sys.stderr, sys.stdout, as_json=False))
    engine = Engine(settings, repo, listeners, adopt_only=Asked(frozenset(names), job_type))
    async with engine.running():
        params = [{"dataset": n, "force_download": force} for n in names]
        jobs = await engine.submit_many(job_type, params)
        await engine.wait_idle()
    return {j.dataset: finished.get(j.id, j) for j in jobs}


def _installed(settings: Settings, repo: Repository, jobs: dict[str, Job]) -> dict[str, Path]:
    """The verified paths the jobs left behind, or the first failure as an exception."""
    out: dict[str, Path] = {}
    for name, job in jobs.items():
        if not job.status.ok:
            raise _failure(job)
        where = _local(settings, _lookup(repo, name))
        if where is None:  # e.g. deleted by another process in between
            raise DatasetError(f"{name}: {job.type.value} {job.status.value}, no verified copy")
        out[name] = where
    return out


def _names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):  # ensure_all("gsm8k") would otherwise ask for "g", "s", ...
        raise TypeError("ensure_all() takes a list of dataset names, not one string")
    return list(dict.fromkeys(names))


# -- the API ------------------------------------------------------------------------------
async def aensure_all(
    names: Iterable[str],
    *,
    home: PathArg = None,
    catalog: PathArg = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Async twin of `ensure_all`, for callers on an event loop (asyncio)."""
    wanted = _names(names)
    offline = _offline()  # a bad value is an error even when nothing needs the network
    settings, repo = await anyio.to_thread.run_sync(_open, home, catalog)
    try:
        rows = await anyio.to_thread.run_sync(lambda: [_lookup(repo, n) for n in wanted])
        ready = {} if force else {ds.name: p for ds in rows if (p := _local(settings, ds))}
        todo = [n for n in wanted if n not in ready]
        if todo and offline:
            raise OfflineError(f"{todo[0]}: no verified local copy and DSM_OFFLINE is set", todo[0])
        if todo:
            try:
                jobs = await _run_jobs(
                    settings, repo, JobType.DOWNLOAD, todo, force=force, progress=progress
                )
            except (DsmError, StoreError) as exc:  # e.g. the store became unwritable
                raise DatasetError(str(exc)) from exc
            ready |= await anyio.to_thread.run_sync(_installed, settings, repo, jobs)
        return {n: ready[n] for n in wanted}
    finally:
        repo.close()


def ensure_all(
    names: Iterable[str],
    *,
    home: PathArg = None,
    catalog: PathArg = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Make sure every named dataset has a verified local copy; return {name: path}.

    Datasets already verified on disk are not fetched (unless `force`); the others download
    in parallel (DSM_WORKERS at a time) and are checked against the catalogue's size and
    SHA-256 before they are installed. The first failure is raised once all jobs ended.

    Raises NotFoundError (unknown name), OfflineError (DSM_OFFLINE=1 and no copy),
    IntegrityError, NetworkError, or DatasetError (anything else: a bad catalogue, a full
    disk, a job canceled from a dashboard).
    """
    return _run(aensure_all, names, home=home, catalog=catalog, force=force, progress=progress)


async def aensure(
    name: str,
    *,
    home: PathArg = None,
    catalog: PathArg = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Async twin of `ensure`, for callers on an event loop (asyncio)."""
    paths = await aensure_all([name], home=home, catalog=catalog, force=force, progress=progress)
    return paths[name]


def ensure(
    name: str,
    *,
    home: PathArg = None,
    catalog: PathArg = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Return the path of a verified local copy of dataset `name`, downloading it if needed.

    home: the data home (default: DSM_HOME, else the platform's user data folder).
    catalog: a catalogue file replacing the bundled one (default: DSM_CATALOG).
    force: download again even when a verified copy is on disk.
    progress: draw a progress line on stderr while downloading, only when stderr is a
        terminal (never in logs or captured output).

    Many processes may call it at once: one downloads, the others wait for it and return the
    same path. Raises the errors listed under `ensure_all`.
    """
    return _run(aensure, name, home=home, catalog=catalog, force=force, progress=progress)


async def averify(name: str, *, home: PathArg = None, catalog: PathArg = None) -> Path:
    """Async twin of `verify`, for callers on an event loop (asyncio)."""
    settings, repo = await anyio.to_thread.run_sync(_open, home, catalog)
    try:
        ds = await anyio.to_thread.run_sync(_lookup, repo, name)
        if ds.downloaded:
            try:
                jobs = await _run_jobs(
                    settings, repo, JobType.VERIFY, [name], force=False, progress=False
                )
            except (DsmError, StoreError) as exc:
                raise DatasetError(str(exc)) from exc
            if jobs[name].status != JobStatus.SKIPPED:  # skipped: not downloaded after all
                return (await anyio.to_thread.run_sync(_installed, settings, repo, jobs))[name]
        raise OfflineError(f"{name}: not downloaded: nothing to verify", name)
    finally:
        repo.close()


def verify(name: str, *, home: PathArg = None, catalog: PathArg = None) -> Path:
    """Hash the local copy of `name` again, in full, and return its path when it matches.

    No network. Waits while another process holds the dataset (a download in progress).
    Raises IntegrityError when the bytes differ (the dataset is then marked as an error and
    the next `ensure` downloads it again), OfflineError when there is no copy, NotFoundError.
    """
    return _run(averify, name, home=home, catalog=catalog)


def path(name: str, *, home: PathArg = None, catalog: PathArg = None) -> Path:
    """The path of the verified local copy of `name`, without any network request.

    The check is the cheap one `ensure` makes (size and modification time as verified; use
    `verify` to hash in full). Raises OfflineError when there is no verified, current copy,
    NotFoundError for an unknown name.
    """
    settings, repo = _open(home, catalog)
    try:
        where = _local(settings, _lookup(repo, name))
    finally:
        repo.close()
    if where is None:
        raise OfflineError(f"{name}: no verified local copy (dsm.ensure fetches it)", name)
    return where


async def apath(name: str, *, home: PathArg = None, catalog: PathArg = None) -> Path:
    """Async twin of `path` (the store is read in a worker thread)."""
    return await anyio.to_thread.run_sync(partial(path, name, home=home, catalog=catalog))


def datasets(*, home: PathArg = None, catalog: PathArg = None) -> list[DatasetInfo]:
    """Every dataset of the catalogue (and rows kept after leaving it), sorted by name.

    No network. Each record is a frozen `DatasetInfo` snapshot: name, description, url, path,
    status, verified, expected_size, expected_sha256, size, sha256, in_catalog.
    """
    settings, repo = _open(home, catalog)
    try:
        return [_info(settings, ds) for ds in repo.datasets()]
    finally:
        repo.close()


async def adatasets(*, home: PathArg = None, catalog: PathArg = None) -> list[DatasetInfo]:
    """Async twin of `datasets` (the store is read in a worker thread)."""
    return await anyio.to_thread.run_sync(partial(datasets, home=home, catalog=catalog))
