"""The job engine: queues of anyio workers running download, update, verify and delete jobs.

One engine per process. Jobs and dataset rows live in the store so other processes (a
dashboard beside a `--run-job`) see them, and so a restarted process can adopt the jobs of a
dead one. Store calls run in a worker thread, one at a time and in order, so the event loop
never waits on disk; progress is written at most once a second, status changes at once.

The engine owns the queues, the workers and the lifecycle (start, submit, cancel, suspend,
stop). It delegates the store bookkeeping of jobs to `Ledger` (ledger.py), what each job type
does to `Handlers` (handlers.py, which also documents the one retry budget per job), and
what a dataset row becomes when its job ends to `end_state` (outcome.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from filelock import FileLock, Timeout

from dsm.config import CONNECT_TIMEOUT, Settings
from dsm.domain.events import EventKind, JobEvent, Listener
from dsm.domain.jobs import Job, JobStatus, JobType, parse_params
from dsm.domain.model import Dataset
from dsm.domain.redact import redact_text
from dsm.engine import files
from dsm.engine.handlers import Handlers
from dsm.engine.ledger import Ledger, owner_lock_path
from dsm.engine.outcome import Outcome
from dsm.errors import BadInput, UnknownDataset
from dsm.repository import Repository, StoreError, now_ms
from dsm.transfer.proxy import make_client
from dsm.transfer.single import ProgressFn

log = logging.getLogger(__name__)
PROGRESS_EVENT_INTERVAL = 0.1  # listeners hear progress at most 10 times a second
STORE_FLUSH_INTERVAL = 1.0  # progress reaches the store at most once a second
LOCK_POLL = 0.2
STOPPED_MESSAGE = "stopped on request"
SUSPENDED_MESSAGE = "interrupted when dsm quit; resumes at the next start"


class Submitted(list[Job]):
    """The jobs of a submission in the order asked; `created` holds the ids of those this
    call queued (the others are unfinished twins, or the job an idempotency key names)."""

    def __init__(self, jobs: Iterable[Job], created: frozenset[str]) -> None:
        super().__init__(jobs)
        self.created = created


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
        self._suspending = False
        # A UI sets this: quitting then suspends running jobs instead of canceling them.
        self.suspend_on_exit = False
        self.suspend_message = SUSPENDED_MESSAGE  # what a suspended job's row says
        self._known: frozenset[str] = frozenset()  # dataset names, refreshed on a miss
        self._changed = anyio.Event()
        # The store bookkeeping of jobs, and what each job type does.
        self.ledger = Ledger(settings, repo, self.owner, adopt_only)
        self.handlers = Handlers(settings, self.ledger, self._emit, self._progress_fn)

    # -- plumbing ----------------------------------------------------------------------
    def _lock_path(self, name: str) -> Path:
        return self.settings.lock_dir / f"{name}.lock"

    def _emit(self, kind: EventKind, job: Job, ds: Dataset | None = None) -> None:
        event = JobEvent(kind, dataclasses.replace(job), ds and dataclasses.replace(ds))
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener (a closed pipe) must not break a job
                log.exception("listener %r failed on %s", listener, kind.value)

    # -- lifecycle ---------------------------------------------------------------------
    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Start the workers and adopt orphaned jobs; on exit cancel what still runs."""
        self.settings.lock_dir.mkdir(parents=True, exist_ok=True)
        owner_lock = FileLock(owner_lock_path(self.settings, self.owner), thread_local=False)
        owner_lock.acquire()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=self.settings.stall_timeout)
        try:
            # A sync client: transfers run in threads (see dsm/transfer/single.py for why).
            with make_client(timeout, limits) as client:
                async with anyio.create_task_group() as tg:
                    self.handlers.client = client
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
            owner_lock_path(self.settings, self.owner).unlink(missing_ok=True)

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

    async def submit_many(
        self,
        job_type: JobType,
        many: list[dict[str, Any]],
        idempotency_key: str | None = None,
        others_twins: bool = False,
    ) -> Submitted:
        """Submit several jobs with one store write (`a` on 10,000 datasets, `--all`).

        Every params object is checked before anything is recorded: one bad entry queues none.
        An unfinished twin (same type and params) of this engine is returned instead of a new
        job, as is the job an `idempotency_key` (one params object) already names. With
        `others_twins`, so is a twin of another live process on this home (the API, whose
        clients poll any job; a `--run-job` must run its own jobs to wait for them).
        """
        if not all(isinstance(p, dict) and p.get("dataset") in self._known for p in many):
            self._known = await self.ledger.call(self.ledger.dataset_names)  # catalogue grew?
        fresh: dict[str, Job] = {}  # one new job per distinct request
        wanted: list[str] = []
        request: dict[str, Any] = {}
        for params in many:
            p = parse_params(params, self._known)
            force = p.force_download or job_type == JobType.UPDATE
            clean = {"dataset": p.dataset, "force_download": force}
            twin = json.dumps(clean, sort_keys=True)
            if twin not in fresh:
                fresh[twin] = Job(job_type, p.dataset, clean, owner=self.owner, created_ms=now_ms())
            wanted.append(twin)
            # What a key is compared on: the request as given (update+false != update+true).
            request = {
                "type": job_type.value,
                "dataset": p.dataset,
                "force_download": p.force_download,
            }
        try:
            found, queued = await self.ledger.call(
                self.ledger.record_queued,
                list(fresh.values()),
                idempotency_key,
                request,
                others_twins,
            )
        except UnknownDataset as exc:  # the row vanished since the check (another process)
            raise BadInput(f"job params: dataset not found: {exc}") from None
        created = frozenset(j.id for j in fresh.values()) & {j.id for j in found}
        for job in found:
            if job.id in created:
                self._enqueue(job, queued.get(job.dataset))
        by_twin = dict(zip(fresh, found, strict=True))
        return Submitted([self._active.get(by_twin[t].id, by_twin[t]) for t in wanted], created)

    def _enqueue(self, job: Job, ds: Dataset | None) -> Job:
        self._active[job.id] = job
        self._scopes[job.id] = anyio.CancelScope()
        self._emit(EventKind.QUEUED, job, ds)
        self._queues[job.queue].send_nowait(job.id)
        return job

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job of this engine; a running one stops within a second."""
        job = self._active.get(job_id)
        if job is None:
            return False
        self._scopes[job_id].cancel()
        if job_id not in self._picked:
            # Not picked up yet: finish it now rather than when a worker frees up.
            self._active.pop(job.id)
            with anyio.CancelScope(shield=True):
                await self._finish(job, (JobStatus.CANCELED, STOPPED_MESSAGE), had_copy=None)
        return True

    async def cancel_dataset(self, name: str) -> bool:
        """Cancel the dataset's unfinished jobs: this engine's at once, another live
        process's by a request in the store that its engine acts on within a second."""
        found = False
        for job in [j for j in self._active.values() if j.dataset == name]:
            found = await self.cancel(job.id) or found
        return found or await self.ledger.call(self.ledger.request_cancel, name)

    async def cancel_all(self) -> None:
        for job_id in list(self._active):
            await self.cancel(job_id)

    async def suspend_all(self) -> None:
        """Stop every job but leave it waiting, partial files kept: the next engine on this
        home adopts and resumes it (a dashboard that quits mid-download)."""
        self._suspending = True
        await self.cancel_all()

    # -- crash recovery ----------------------------------------------------------------
    async def recover(self) -> None:
        """Adopt unfinished jobs of dead processes and reconcile rows nobody works on."""
        adopted = await self.ledger.call(self.ledger.adopt)
        for job in adopted:
            self._enqueue(job, None)

    # -- running jobs --------------------------------------------------------------------
    async def _worker(self, recv: MemoryObjectReceiveStream[str]) -> None:
        async with recv:
            async for job_id in recv:
                job = self._active.get(job_id)
                if job is not None:
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
                ds = await self.ledger.call(self.repo.dataset, job.dataset)
                had_copy = files.still_verified(self.settings.home, ds)
                job.status, job.started_ms, job.error = JobStatus.RUNNING, now_ms(), None
                await self.ledger.call(self.ledger.claim, job)
                self._emit(EventKind.STARTED, job)
                try:
                    with anyio.fail_after(self.settings.job_timeout):
                        outcome = await self.handlers.for_type(job.type)(job, ds, had_copy)
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

    async def _finish(self, job: Job, outcome: Outcome, had_copy: bool | None) -> None:
        job.status, error = outcome
        job.error = None if job.status == JobStatus.COMPLETED or not error else redact_text(error)
        job.finished_ms = now_ms()
        if job.status == JobStatus.CANCELED and self._suspending:
            job.status, job.error = JobStatus.WAITING, self.suspend_message
            job.started_ms = job.finished_ms = None
        self._dirty.pop(job.id, None)
        try:
            ds = await self.ledger.call(self.ledger.record_finished, job, had_copy)
        except StoreError as exc:  # e.g. the disk is full: the job still ends, loudly
            log.error("job %s: cannot record its end: %s", job.id, exc)
            job.error = f"{job.error or job.status.value}; not recorded in the store: {exc}"
            ds = None
        self._active.pop(job.id, None)
        self._scopes.pop(job.id, None)
        self._emit(
            EventKind.QUEUED if job.status == JobStatus.WAITING else EventKind.FINISHED, job, ds
        )
        self._touch()

    # -- progress ----------------------------------------------------------------------
    def _progress_fn(self, job: Job) -> ProgressFn:
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
                asked = await self.ledger.call(self.ledger.cancels_requested, list(self._active))
                for job_id in asked:
                    await self.cancel(job_id)

    async def _flush(self) -> None:
        if self._dirty:
            batch, self._dirty = self._dirty, {}
            await self.ledger.call(self.repo.write_progress, list(batch.values()))
