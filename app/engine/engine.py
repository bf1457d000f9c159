"""The job engine: queues of anyio workers running download, update, verify and delete jobs.

One engine per process. Jobs and dataset rows live in the store so other processes (a
dashboard beside a `--run-job`) see them, and so a restarted process can adopt the jobs of a
dead one. Store calls run in a worker thread, one at a time and in order, so the event loop
never waits on disk; progress is written at most once a second, status changes at once.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from filelock import FileLock, Timeout

from dsm.config import CONNECT_TIMEOUT, Settings
from dsm.domain.events import EventKind, JobEvent, Listener
from dsm.domain.jobs import PAUSED_MESSAGE, Job, JobStatus, JobType, parse_params
from dsm.domain.model import ACTIVE, AT_REST, Dataset, Status
from dsm.engine import files
from dsm.errors import BadInput
from dsm.repository import Repository, StoreError, UnknownDataset, now_ms
from dsm.transfer import single as transfer
from dsm.transfer.http import Fetched, HostSlots, Policy, TransferError
from dsm.transfer.partfile import discard_partial

T = TypeVar("T")
log = logging.getLogger(__name__)
PROGRESS_EVENT_INTERVAL = 0.1  # listeners hear progress at most 10 times a second
STORE_FLUSH_INTERVAL = 1.0  # progress reaches the store at most once a second
LOCK_POLL = 0.2
JOBS_KEPT_PER_DATASET = 20
SKIP_MESSAGE = "already downloaded; use --force-download (force_download: true) to fetch again"
STOPPED_MESSAGE = "stopped on request"
SUSPENDED_MESSAGE = "interrupted when dsm quit; resumes at the next start"
Outcome = tuple[JobStatus, str | None]


class Engine:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        listeners: Iterable[Listener] = (),
        adopt_only: frozenset[str] | None = None,
    ) -> None:
        """`adopt_only`: the datasets whose orphaned jobs this engine resumes at start (a
        `--run-job` for some datasets); None resumes all (the dashboard, the API)."""
        self.adopt_only = adopt_only
        self.settings = settings
        self.repo = repo
        self.listeners: list[Listener] = list(listeners)
        self.owner = uuid.uuid4().hex
        self._active: dict[str, Job] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._queues: dict[str, MemoryObjectSendStream[str]] = {}
        self._ds_locks: dict[str, anyio.Lock] = {}
        self._dirty: dict[str, Job] = {}
        self._picked: set[str] = set()  # jobs a worker has taken from a queue
        self._held: dict[str, str] = {}  # job id -> why it waits instead of being canceled
        self._paused: dict[str, Job] = {}  # stopped by `pause`, waiting for `resume`
        self._suspending = False
        # A UI sets this: quitting then suspends running jobs instead of canceling them.
        self.suspend_on_exit = False
        self._known: frozenset[str] = frozenset()  # dataset names, refreshed on a miss
        self._changed = anyio.Event()
        self._store_limiter = anyio.CapacityLimiter(1)
        self._client: httpx.Client | None = None
        self._slots = HostSlots(settings.host_connections)
        self._policy = Policy(
            stall_timeout=settings.stall_timeout,
            segments=settings.segments,
            segment_min=settings.segment_min,
            max_retries=settings.max_retries,
            retry_delay=settings.retry_delay,
        )

    # -- plumbing ----------------------------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call in the store thread, after every store call queued before it."""
        return await anyio.to_thread.run_sync(
            partial(fn, *args, **kwargs), limiter=self._store_limiter
        )

    def _lock_path(self, name: str) -> Path:
        return self.settings.lock_dir / f"{name}.lock"

    def _emit(self, kind: EventKind, job: Job, ds: Dataset | None = None) -> None:
        event = JobEvent(kind, dataclasses.replace(job), ds and dataclasses.replace(ds))
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener (a closed pipe) must not break a job
                log.exception("listener %r failed on %s", listener, kind.value)

    def _host_headers(self, url: str) -> dict[str, str]:
        parsed = httpx.URL(url)
        if parsed.scheme != "https":  # credentials never travel in clear text
            return {}
        host = (parsed.host or "").lower()
        out = {n: v for h, n, v in self.settings.host_headers if h == host}
        if host == "huggingface.co" and self.settings.hf_token:
            out["Authorization"] = f"Bearer {self.settings.hf_token}"
        return out

    # -- lifecycle ---------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Start the workers and adopt orphaned jobs; on exit cancel what still runs."""
        self.settings.lock_dir.mkdir(parents=True, exist_ok=True)
        owner_lock = FileLock(self._lock_path(f"owner-{self.owner}"), thread_local=False)
        owner_lock.acquire()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=self.settings.stall_timeout)
        try:
            # A sync client: transfers run in threads (see app/transfer.py for why).
            with httpx.Client(timeout=timeout, limits=limits, trust_env=True) as client:
                async with anyio.create_task_group() as tg:
                    self._client = client
                    for queue, count in (
                        ("download", self.settings.workers),
                        ("maintenance", self.settings.maintenance_workers),
                    ):
                        send, recv = anyio.create_memory_object_stream[str](1 << 20)
                        self._queues[queue] = send
                        for _ in range(count):
                            tg.start_soon(self._worker, recv.clone())
                        recv.close()
                    tg.start_soon(self._flusher)
                    await self.recover()
                    try:
                        yield self
                    finally:
                        with anyio.CancelScope(shield=True):
                            await (
                                self.suspend_all() if self.suspend_on_exit else self.cancel_all()
                            )
                            await self.wait_idle()
                            await self._flush()
                        tg.cancel_scope.cancel()
        finally:
            owner_lock.release()
            self._lock_path(f"owner-{self.owner}").unlink(missing_ok=True)

    async def wait_idle(self) -> None:
        """Return once this engine has no unfinished job."""
        while self._active:
            await self._changed.wait()

    async def snapshot(self) -> list[Job]:
        """Copies of this engine's unfinished jobs."""
        return [dataclasses.replace(j) for j in self._active.values()]

    def _touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- submitting and canceling --------------------------------------------------------
    async def submit(self, job_type: JobType, params: dict[str, Any]) -> Job:
        """Validate params, record the job and queue it. An identical unfinished job is reused."""
        (job,) = await self.submit_many(job_type, [params])
        return job

    async def submit_many(self, job_type: JobType, many: list[dict[str, Any]]) -> list[Job]:
        """Submit several jobs with one store write (`a` on 10,000 datasets, `--all`).

        Every params object is checked before anything is recorded: one bad entry queues none.
        """
        if not all(isinstance(p, dict) and p.get("dataset") in self._known for p in many):
            self._known = await self._db(self._dataset_names)  # a catalogue may have grown
        jobs: list[Job] = []
        fresh: list[Job] = []
        for params in many:
            p = parse_params(params, self._known)
            force = p.force_download or job_type == JobType.UPDATE
            clean = {"dataset": p.dataset, "force_download": force}
            same = (
                j
                for j in [*self._active.values(), *fresh]
                if j.dataset == p.dataset and j.type == job_type and j.params == clean
            )
            job = next(same, None)
            if job is None:
                job = Job(job_type, p.dataset, clean, owner=self.owner, created_ms=now_ms())
                fresh.append(job)
            jobs.append(job)
        try:
            queued = await self._db(self._record_queued, fresh)
        except UnknownDataset as exc:  # the row vanished since the check (another process)
            raise BadInput(f"job params: dataset not found: {exc}") from None
        for job in fresh:
            self._enqueue(job, queued.get(job.dataset))
        return jobs

    def _dataset_names(self) -> frozenset[str]:
        return self.repo.dataset_names()

    def _record_queued(self, jobs: list[Job]) -> dict[str, Dataset]:
        """Store the jobs; datasets at rest become queued and point at their job."""
        queued: dict[str, Dataset] = {}
        with self.repo.transaction():
            self.repo.save_jobs(jobs)
            for job in jobs:
                ds = self.repo.dataset(job.dataset)
                if ds.status in AT_REST and job.dataset not in queued:
                    ds.set_status(Status.QUEUED)
                    ds.download_job_id = job.id
                    queued[job.dataset] = ds
            self.repo.save_many(list(queued.values()))
        return queued

    def _enqueue(self, job: Job, ds: Dataset | None) -> Job:
        self._active[job.id] = job
        self._scopes[job.id] = anyio.CancelScope()
        self._emit(EventKind.QUEUED, job, ds)
        self._queues[job.queue].send_nowait(job.id)
        return job

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job of this engine; a running one stops within a second."""
        paused = self._paused.pop(job_id, None)
        if paused is not None:
            with anyio.CancelScope(shield=True):
                await self._finish_many([paused], (JobStatus.CANCELED, STOPPED_MESSAGE), None)
            return True
        return bool(await self._stop([job_id]))

    async def _stop(self, job_ids: Iterable[str], hold: str | None = None) -> int:
        """Cancel these jobs, or with `hold` leave them waiting with that message (partial
        files kept). Jobs no worker picked yet end at once, all in ONE store write (quitting
        with 10,000 queued jobs); running ones end within a second."""
        jobs = [self._active[i] for i in job_ids if i in self._active]
        for job in jobs:
            self._scopes[job.id].cancel()
            if hold is not None:
                self._held[job.id] = hold
        waiting = [j for j in jobs if j.id not in self._picked]
        for job in waiting:
            self._active.pop(job.id)
        # Their rows already say queued: a held job's only change is its own, so the whole
        # batch is one write of jobs (~0.1 s at 10,000, where a row-by-row end took ~1 s).
        record = self._record_held if hold is not None else self._record_many
        if waiting:
            with anyio.CancelScope(shield=True):
                await self._finish_many(
                    waiting, (JobStatus.CANCELED, STOPPED_MESSAGE), None, record
                )
        return len(jobs)

    async def cancel_dataset(self, name: str) -> bool:
        """Cancel the dataset's unfinished jobs: this engine's at once, another live
        process's by a request in the store that its engine acts on within a second."""
        found = False
        for job in [
            j for j in [*self._active.values(), *self._paused.values()] if j.dataset == name
        ]:
            found = await self.cancel(job.id) or found
        return found or await self._db(self._request_cancel, name)

    def _request_cancel(self, name: str) -> bool:
        alive: dict[str, bool] = {}
        wanted = [
            job
            for job in self.repo.jobs()
            if job.dataset == name
            and not job.status.finished
            and job.owner != self.owner
            and self._owner_alive(job.owner, alive)
        ]
        if wanted:
            self.repo.request_cancel(j.id for j in wanted)
        return bool(wanted)

    async def cancel_all(self) -> None:
        """Cancel every job of this engine, paused ones too."""
        await self._stop(list(self._active))
        for job_id in list(self._paused):
            await self.cancel(job_id)

    async def suspend_all(self) -> None:
        """Stop every job but leave it waiting, partial files kept: the next engine on this
        home adopts and resumes it (a dashboard that quits mid-download)."""
        self._suspending = True
        await self._stop(list(self._active), SUSPENDED_MESSAGE)

    async def pause(self, job_ids: Iterable[str]) -> int:
        """Stop these jobs, keep them waiting with their partial files until `resume` (or the
        next start, which adopts them); returns how many were stopped."""
        return await self._stop(job_ids, PAUSED_MESSAGE)

    async def resume(self, job_ids: Iterable[str]) -> list[Job]:
        """Queue paused jobs again, in one store write; they continue from their partials."""
        jobs = [self._paused.pop(i) for i in job_ids if i in self._paused]
        for job in jobs:
            job.error = None
        if jobs:
            await self._db(self.repo.save_jobs, jobs)
        for job in jobs:
            self._enqueue(job, None)
        return jobs

    def paused(self) -> list[Job]:
        """Copies of this engine's paused jobs."""
        return [dataclasses.replace(j) for j in self._paused.values()]

    # -- crash recovery ----------------------------------------------------------------
    async def recover(self) -> None:
        """Adopt unfinished jobs of dead processes and reconcile rows nobody works on."""
        adopted = await self._db(self._adopt)
        for job in adopted:
            self._enqueue(job, None)

    def _owner_alive(self, owner: str | None, seen: dict[str, bool]) -> bool:
        if owner is None:
            return False
        if owner not in seen:
            path = self._lock_path(f"owner-{owner}")
            lock = FileLock(path, thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                seen[owner] = True
            else:
                lock.release()
                path.unlink(missing_ok=True)
                seen[owner] = False
        return seen[owner]

    def _adopt(self) -> list[Job]:
        adopted: list[Job] = []
        alive: dict[str, bool] = {}
        with self.repo.transaction():
            jobs = self.repo.jobs()
            live: set[str] = set()
            for job in jobs:
                if job.status.finished:
                    continue
                if job.owner == self.owner or self._owner_alive(job.owner, alive):
                    live.add(job.id)
                    continue
                if self.adopt_only is not None and job.dataset not in self.adopt_only:
                    live.add(job.id)  # left waiting for a start that asks for its dataset
                    continue
                job.owner, job.status, job.started_ms = self.owner, JobStatus.WAITING, None
                self.repo.save_job(job)
                adopted.append(job)
                live.add(job.id)
            for ds in self.repo.datasets():
                if ds.status not in ACTIVE:
                    continue
                if ds.download_job_id in live:
                    if ds.status != Status.QUEUED:
                        self.repo.change(ds.name, Status.QUEUED)
                else:
                    self.repo.change(ds.name, self._resting_status(ds))
            self.repo.prune_jobs(jobs, JOBS_KEPT_PER_DATASET)
        return adopted

    def _resting_status(self, ds: Dataset) -> Status:
        if files.still_verified(self.settings.home, ds):
            return Status.DOWNLOADED
        if files.has_partial(self.settings.home, ds):
            return Status.CANCELED
        return Status.ERROR if ds.error else Status.NOT_LOADED

    # -- running jobs --------------------------------------------------------------------
    async def _worker(self, recv: MemoryObjectReceiveStream[str]) -> None:
        async with recv:
            async for job_id in recv:
                job = self._active.get(job_id)
                # A resumed job is queued again; its first id may still be in the queue.
                if job is not None and job_id not in self._picked:
                    self._picked.add(job_id)
                    try:
                        await self._execute(job)
                    finally:
                        self._picked.discard(job_id)

    async def _lock_dataset(self, name: str) -> FileLock:
        """One job per dataset: in this process (anyio lock), and across processes (file lock)."""
        await self._ds_locks.setdefault(name, anyio.Lock()).acquire()
        lock = FileLock(self._lock_path(name), thread_local=False)
        try:
            while True:
                try:
                    lock.acquire(timeout=0)
                    return lock
                except Timeout:
                    await anyio.sleep(LOCK_POLL)
        except BaseException:
            self._ds_locks[name].release()
            raise

    async def _execute(self, job: Job) -> None:
        outcome: Outcome = (JobStatus.CANCELED, STOPPED_MESSAGE)
        had_copy: bool | None = None
        lock: FileLock | None = None
        try:
            with self._scopes[job.id]:
                lock = await self._lock_dataset(job.dataset)
                ds = await self._db(self.repo.dataset, job.dataset)
                had_copy = files.still_verified(self.settings.home, ds)
                job.status, job.started_ms, job.error = JobStatus.RUNNING, now_ms(), None
                await self._db(self._claim, job)
                self._emit(EventKind.STARTED, job)
                try:
                    with anyio.fail_after(self.settings.job_timeout):
                        outcome = await self._handler(job.type)(job, ds, had_copy)
                except TimeoutError:
                    outcome = (
                        JobStatus.TIMEOUT,
                        f"timed out after {self.settings.job_timeout:g} s"
                        + (f" (last error: {job.error})" if job.error else ""),
                    )
        except Exception as exc:  # a bug must fail its job, never the engine
            log.exception("job %s failed unexpectedly", job.id)
            outcome = (JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._finish(job, outcome, had_copy)
                finally:
                    if lock is not None:
                        lock.release()
                        self._ds_locks[job.dataset].release()

    def _claim(self, job: Job) -> None:
        with self.repo.transaction():
            self.repo.save_job(job)
            ds = self.repo.dataset(job.dataset)
            if ds.download_job_id != job.id:
                status = Status.QUEUED if ds.status in AT_REST else None
                self.repo.change(job.dataset, status, download_job_id=job.id)

    def _handler(self, job_type: JobType) -> Callable[[Job, Dataset, bool], Any]:
        return {
            JobType.DOWNLOAD: self._download,
            JobType.UPDATE: self._download,
            JobType.VERIFY: self._verify,
            JobType.DELETE: self._delete,
        }[job_type]

    async def _finish(self, job: Job, outcome: Outcome, had_copy: bool | None) -> None:
        await self._finish_many([job], outcome, had_copy)

    async def _finish_many(
        self,
        jobs: list[Job],
        outcome: Outcome,
        had_copy: bool | None,
        record: Callable[[list[Job], bool | None], list[Dataset | None]] | None = None,
    ) -> None:
        """Record the end of jobs in one store write; held ones (paused, suspended) wait."""
        for job in jobs:
            job.status, error = outcome
            job.error = None if job.status == JobStatus.COMPLETED else error
            job.finished_ms = now_ms()
            held = self._held.pop(job.id, SUSPENDED_MESSAGE if self._suspending else None)
            if job.status == JobStatus.CANCELED and held is not None:
                job.status, job.error = JobStatus.WAITING, held
                job.started_ms = job.finished_ms = None
                if held == PAUSED_MESSAGE:
                    self._paused[job.id] = job
            self._dirty.pop(job.id, None)
        try:
            rows = await self._db(record or self._record_many, jobs, had_copy)
        except StoreError as exc:  # e.g. the disk is full: the jobs still end, loudly
            log.error("jobs %s: cannot record their end: %s", [j.id for j in jobs], exc)
            for job in jobs:
                job.error = f"{job.error or job.status.value}; not recorded in the store: {exc}"
            rows = [None] * len(jobs)
        for job, ds in zip(jobs, rows, strict=True):
            self._active.pop(job.id, None)
            self._scopes.pop(job.id, None)
            kind = EventKind.QUEUED if job.status == JobStatus.WAITING else EventKind.FINISHED
            self._emit(kind, job, ds)
        self._touch()

    def _record_held(self, jobs: list[Job], had_copy: bool | None) -> list[Dataset | None]:
        """Jobs no worker picked, now held: their rows stay queued, only the jobs change."""
        self.repo.mark_waiting(jobs)
        return [None] * len(jobs)

    def _record_many(self, jobs: list[Job], had_copy: bool | None) -> list[Dataset | None]:
        with self.repo.transaction():
            return [self._record_finished(job, had_copy) for job in jobs]

    def _record_finished(self, job: Job, had_copy: bool | None) -> Dataset | None:
        """Store the job's end; put its dataset at rest if this job still owns it."""
        with self.repo.transaction():
            self.repo.save_job(job)
            self.repo.clear_cancel(job.id)
            try:
                ds = self.repo.dataset(job.dataset)
            except UnknownDataset:  # a delete of a row that left the catalogue removed it
                return None
            if ds.download_job_id != job.id or ds.status in AT_REST:
                return ds
            if job.status == JobStatus.WAITING:  # held: queued for resume or the next start
                return (
                    ds if ds.status == Status.QUEUED else self.repo.change(ds.name, Status.QUEUED)
                )
            if had_copy is None:
                had_copy = files.still_verified(self.settings.home, ds)
            if had_copy:  # an update that did not finish: the old copy is whole
                return self.repo.change(
                    ds.name, Status.DOWNLOADED, error=None, download_progress=100.0
                )
            if job.status == JobStatus.CANCELED:
                return self.repo.change(ds.name, Status.CANCELED)
            if job.status.ok:  # skipped, or completed without a copy: back to how it was
                return self.repo.change(ds.name, self._resting_status(ds))
            return self.repo.change(ds.name, Status.ERROR, error=job.error, downloaded=False)

    # -- progress ----------------------------------------------------------------------
    def _progress_fn(self, job: Job) -> transfer.ProgressFn:
        last = {"t": time.monotonic(), "bytes": -1}

        def on_progress(done: int, total: int | None) -> None:
            job.bytes_done, job.bytes_total = done, total
            job.progress = 100.0 * done / total if total else 0.0
            now = time.monotonic()
            if last["bytes"] < 0:
                last["t"], last["bytes"] = now, done
                return
            elapsed = now - last["t"]
            if elapsed < PROGRESS_EVENT_INTERVAL and done != total:
                return
            instant = (done - last["bytes"]) / elapsed if elapsed > 0 else 0.0
            job.rate = instant if job.rate == 0 else 0.3 * instant + 0.7 * job.rate
            last["t"], last["bytes"] = now, done
            self._dirty[job.id] = job
            self._emit(EventKind.PROGRESS, job)

        return on_progress

    async def _flusher(self) -> None:
        while True:
            await anyio.sleep(STORE_FLUSH_INTERVAL)
            await self._flush()
            if self._active:
                for job_id in await self._db(self._cancels_requested, list(self._active)):
                    await self.cancel(job_id)

    def _cancels_requested(self, job_ids: list[str]) -> list[str]:
        """This engine's jobs that another process asked to cancel (`c` in a dashboard)."""
        return self.repo.cancels_requested(job_ids)

    async def _flush(self) -> None:
        if self._dirty:
            batch, self._dirty = self._dirty, {}
            await self._db(self.repo.write_progress, list(batch.values()))

    # -- handlers ----------------------------------------------------------------------
    async def _set(self, job: Job, status: Status | None, **fields: Any) -> Dataset:
        ds = await self._db(self.repo.change, job.dataset, status, **fields)
        self._emit(EventKind.PROGRESS, job, ds)
        return ds

    async def _download(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
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
        if installed is None or files.integrity_problem(ds, installed.size, installed.sha256):
            fetched = await self._fetch(job, ds, target)
            if not isinstance(fetched, Fetched):
                return fetched
            await self._set(job, Status.VERIFYING)
            problem = files.integrity_problem(ds, fetched.size, fetched.sha256)
            if problem:
                await anyio.to_thread.run_sync(discard_partial, files.part_of(target))
                return JobStatus.FAILED, problem
            # From the rename on, the store must hear of the new file: no cancel in between.
            with anyio.CancelScope(shield=True):
                installed = await anyio.to_thread.run_sync(
                    files.install, target, fetched.size, fetched.sha256
                )
                await self._record_install(job, installed, target)
        else:
            with anyio.CancelScope(shield=True):
                await self._record_install(job, installed, target)
        return JobStatus.COMPLETED, None

    async def _record_install(self, job: Job, installed: files.Installed, target: Path) -> None:
        job.progress, job.bytes_done = 100.0, installed.size
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
        )
        await anyio.to_thread.run_sync(files.forget_install, target)

    async def _fetch(self, job: Job, ds: Dataset, target: Path) -> Fetched | Outcome:
        """The transfer with the retry policy: only what can heal is tried again."""
        assert self._client is not None
        while True:
            job.attempts += 1
            try:
                return await transfer.fetch(
                    self._client,
                    ds.original_url,
                    target,
                    expected_size=ds.expected_size,
                    host_headers=self._host_headers,
                    progress=self._progress_fn(job),
                    policy=self._policy,
                    slots=self._slots,
                )
            except TransferError as exc:
                if not exc.retryable or job.attempts > self.settings.max_retries:
                    tries = f" (after {job.attempts} attempts)" if job.attempts > 1 else ""
                    return JobStatus.FAILED, f"{exc}{tries}"
                await self._wait_retry(job, exc)

    async def _wait_retry(self, job: Job, exc: TransferError) -> None:
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:  # jitter spreads the retries of many jobs hit by one outage
            delay = self.settings.retry_delay * random.uniform(0.8, 1.2)
        job.status, job.retry_at_ms = JobStatus.RETRYING, now_ms() + round(delay * 1000)
        job.error = f"attempt {job.attempts} failed: {exc}; retrying in {delay:.1f} s"
        await self._db(self.repo.save_job, job)
        self._emit(EventKind.RETRYING, job)
        await anyio.sleep(delay)
        job.status, job.retry_at_ms = JobStatus.RUNNING, None
        await self._db(self.repo.save_job, job)

    async def _verify(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
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

    async def _delete(self, job: Job, ds: Dataset, had_copy: bool) -> Outcome:
        try:
            target = files.target(self.settings.home, ds)
        except ValueError as exc:
            return JobStatus.FAILED, f"refusing to delete: {exc}"
        await self._set(job, Status.DELETING)
        with anyio.CancelScope(shield=True):  # a removed file is recorded as removed
            await anyio.to_thread.run_sync(files.remove, target)
            await self._set(job, Status.NOT_LOADED, **files.RESET_FIELDS)
        if not ds.in_catalog:
            await self._db(self.repo.remove_dataset, ds.name)
        return JobStatus.COMPLETED, None
