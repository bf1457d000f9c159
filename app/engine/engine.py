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
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dsm.config import CONNECT_TIMEOUT, Settings
from dsm.domain.events import EventKind, JobEvent, Listener
from dsm.domain.jobs import PAUSED_MESSAGE, Job, JobStatus, JobType, parse_params
from dsm.domain.model import Dataset, snapshot
from dsm.domain.redact import error_text
from dsm.engine import files
from dsm.engine.handlers import Handlers
from dsm.engine.ledger import Asked, Ledger
from dsm.engine.liveness import owner_lock_path
from dsm.engine.locks import DatasetLocks, HeldLock, OwnerLock
from dsm.engine.outcome import Outcome
from dsm.engine.progress import progress_meter
from dsm.errors import BadInput, DsmError, UnknownDataset
from dsm.repository import Repository, StoreError, StoreFull, now_ms
from dsm.transfer.proxy import make_client
from dsm.transfer.single import ProgressFn

log = logging.getLogger(__name__)
STORE_FLUSH_INTERVAL = 1.0  # progress reaches the store at most once a second
STOPPED_MESSAGE = "stopped on request"
SUSPENDED_MESSAGE = "interrupted when dsm quit; resumes at the next start"


class Submitted(list[Job]):
    """The jobs of a submission in the order asked; `created` holds the ids of those this
    call queued (the others are unfinished twins, or the job an idempotency key names)."""

    def __init__(self, jobs: Iterable[Job], created: frozenset[str]) -> None:
        super().__init__(jobs)
        self.created = created


# How a batch of ended jobs reaches the store (None: Ledger.record_many).
Recorder = Callable[[list[Job], bool | None], list[Dataset | None]] | None


class Engine:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        listeners: Iterable[Listener] = (),
        adopt_only: Asked | None = None,
    ) -> None:
        """`adopt_only`: the datasets and job type whose orphaned jobs this engine resumes at
        start (`Asked`: a `--run-job`); None resumes all (the dashboard, the API)."""
        self.adopt_only = adopt_only
        self.settings = settings
        self.repo = repo
        self.listeners: list[Listener] = list(listeners)
        self.owner = uuid.uuid4().hex
        self._active: dict[str, Job] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._queues: dict[str, MemoryObjectSendStream[str]] = {}
        self._dirty: dict[str, Job] = {}
        self._picked: set[str] = set()  # jobs a worker has taken from a queue
        self._held: dict[str, str] = {}  # job id -> why it waits instead of being canceled
        self._paused: dict[str, Job] = {}  # stopped by `pause`, waiting for `resume`
        self._suspending = False
        # A UI sets this: quitting then suspends running jobs instead of canceling them.
        self.suspend_on_exit = False
        self.suspend_message = SUSPENDED_MESSAGE  # what a suspended job's row says
        self._known: frozenset[str] = frozenset()  # dataset names, refreshed on a miss
        self._changed = anyio.Event()
        # The store bookkeeping of jobs, and what each job type does.
        self.ledger = Ledger(settings, repo, self.owner, adopt_only)
        self.handlers = Handlers(settings, self.ledger, self._emit, self._progress_fn)
        self._locks = DatasetLocks(settings.lock_dir, self.ledger)

    # -- plumbing ----------------------------------------------------------------------
    def _emit(self, kind: EventKind, job: Job, ds: Dataset | None = None) -> None:
        event = JobEvent(kind, snapshot(job), ds and snapshot(ds))
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
        (owner_lock := OwnerLock(owner_lock_path(self.settings.lock_dir, self.owner))).acquire()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=self.settings.stall_timeout)
        failure: StoreError | None = None
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
                    tg.start_soon(self._flusher, owner_lock)
                    tg.start_soon(self.handlers.watch.run)
                    tg.start_soon(self.ledger.committer)
                    tg.start_soon(self.ledger.on_terminal_stop)
                    try:
                        await self.recover()
                    except StoreError as exc:  # a full disk: said once, no ExceptionGroup
                        failure = exc
                        tg.cancel_scope.cancel()
                    else:
                        try:
                            yield self
                        finally:
                            with anyio.CancelScope(shield=True):
                                await (
                                    self.suspend_all()
                                    if self.suspend_on_exit
                                    else self.cancel_all()
                                )
                                await self.wait_idle()
                                await self._flush()
                                await self.ledger.close()
                            tg.cancel_scope.cancel()
        finally:
            self.ledger.abandon()
            self._locks.close()
            owner_lock.release()
        if failure is not None:
            raise failure

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
        fresh: dict[tuple[str, bool], Job] = {}  # one new job per distinct request
        wanted: list[tuple[str, bool]] = []
        request: dict[str, Any] = {}
        for params in many:
            p = parse_params(params, self._known)
            force = p.force_download or job_type == JobType.UPDATE
            clean = {"dataset": p.dataset, "force_download": force}
            twin = (p.dataset, force)  # all that `clean` holds
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
        for job in (j for j in found if j.id in created):
            if job.status.finished:  # nothing to do (Ledger.record_queued)
                self._emit(EventKind.FINISHED, job)
            else:
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
        """Cancel a job of this engine (paused ones too); a running one stops within a second."""
        return bool(await self._stop([job_id]))

    async def _stop(self, job_ids: Iterable[str], hold: str | None = None) -> int:
        """Cancel these jobs (paused too), or with `hold` keep them waiting with that message;
        queued ones end at once in ONE store write (10,000 at a quit), running ones in ~1 s."""
        ids = list(job_ids)
        jobs = [self._active[i] for i in ids if i in self._active]
        for job in jobs:
            self._scopes[job.id].cancel()
            if hold is not None:
                self._held[job.id] = hold
        waiting = [self._active.pop(j.id) for j in jobs if j.id not in self._picked]
        paused = [self._paused.pop(i) for i in ids if i in self._paused] if hold is None else []
        record = self.ledger.record_held if hold is not None else None
        with anyio.CancelScope(shield=True):
            outcome = (JobStatus.CANCELED, STOPPED_MESSAGE)
            await self._finish_many(waiting + paused, outcome, None, record)
        return len(jobs) + len(paused)

    async def cancel_dataset(self, name: str) -> bool:
        """Cancel the dataset's unfinished jobs: this engine's at once, another live
        process's by a request in the store that its engine acts on within a second."""
        found = False
        mine = [*self._active.values(), *self._paused.values()]
        for job in [j for j in mine if j.dataset == name]:
            found = await self.cancel(job.id) or found
        return found or await self.ledger.call(self.ledger.request_cancel, name)

    async def cancel_all(self) -> None:
        """Cancel every job of this engine, paused ones too."""
        await self._stop([*self._active, *self._paused])

    async def suspend_all(self) -> None:
        """Stop every job but leave it waiting, partial files kept: the next engine on this
        home adopts and resumes it (a dashboard that quits mid-download)."""
        self._suspending = True
        await self._stop(list(self._active), self.suspend_message)

    async def pause(self, job_ids: Iterable[str]) -> int:
        """Stop these jobs, keep them waiting with their partial files until `resume` (or the
        next start, which adopts them); returns how many were stopped."""
        return await self._stop(job_ids, PAUSED_MESSAGE)

    async def resume(self, job_ids: Iterable[str]) -> list[Job]:
        """Queue paused jobs again, in one store write; they continue from their partials."""
        jobs = [self._paused.pop(i) for i in job_ids if i in self._paused]
        for job in jobs:
            job.error = None
        await self.ledger.call(self.repo.save_jobs, jobs)
        return [self._enqueue(job, None) for job in jobs]

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
                # A resumed job is queued again; its first id may still be in the queue.
                if job is not None and job_id not in self._picked:
                    self._picked.add(job_id)
                    try:
                        await self._execute(job)
                    finally:
                        self._picked.discard(job_id)

    async def _execute(self, job: Job) -> None:
        outcome: Outcome = (JobStatus.CANCELED, STOPPED_MESSAGE)
        had_copy: bool | None = None
        lock: HeldLock | None = None
        ds: Dataset | None = None
        try:
            with self._scopes[job.id]:
                lock = await self._locks.acquire(job)
                ds, had_copy = row, copy = await self.ledger.defer(self.ledger.claim, job)
                self._emit(EventKind.STARTED, job)
                try:
                    with anyio.fail_after(self.settings.job_timeout):
                        outcome = await self.handlers.for_type(job.type)(job, row, copy)
                except TimeoutError:
                    outcome = (
                        JobStatus.TIMEOUT,
                        f"timed out after {self.settings.job_timeout:g} s"
                        + (f" (last error: {job.error})" if job.error else ""),
                    )
        except StoreError as exc:  # say, the disk filled up under the download
            outcome = (JobStatus.FAILED, f"cannot record the job in the store: {exc}")
            if isinstance(exc, StoreFull) and ds is not None and job.type.queue == "download":
                # The partial is what fills the disk: drop it so its end can be recorded.
                home = self.settings.home
                await anyio.to_thread.run_sync(files.drop_partial, home, ds)
        except Exception as exc:  # a bug must fail its job, never the engine
            outcome = uncaught(job, exc)
        finally:
            outcome = self.handlers.outcome(job, outcome)
            with anyio.CancelScope(shield=True):
                try:
                    await self._finish(job, outcome, had_copy)
                finally:
                    if lock is not None:
                        # A transfer abandoned on cancel may still write: wait for it (a
                        # completed job's transfer has ended).
                        if ds is not None and outcome[0] != JobStatus.COMPLETED:
                            home = self.settings.home
                            await anyio.to_thread.run_sync(files.writers_stopped, home, ds)
                        self._locks.release(job.dataset, lock)

    async def _finish(self, job: Job, outcome: Outcome, had_copy: bool | None) -> None:
        await self._finish_many([job], outcome, had_copy)

    async def _finish_many(
        self, jobs: list[Job], outcome: Outcome, had_copy: bool | None, record: Recorder = None
    ) -> None:
        """Record the end of jobs in one store write; held ones (paused, suspended) wait."""
        for job in jobs:
            job.status, error = outcome
            job.error = (
                None if job.status == JobStatus.COMPLETED or not error else error_text(error)
            )
            job.finished_ms = now_ms()
            held = self._held.pop(job.id, self.suspend_message if self._suspending else None)
            if job.status == JobStatus.CANCELED and held is not None:
                job.status, job.error = JobStatus.WAITING, held
                job.started_ms = job.finished_ms = None
                if held == PAUSED_MESSAGE:
                    self._paused[job.id] = job
            self._dirty.pop(job.id, None)
        try:
            store = self.ledger.call if record else self.ledger.defer  # ends: see ledger.py
            rows = await store(record or self.ledger.record_many, jobs, had_copy)
        except StoreError as exc:  # e.g. the disk is full: the jobs still end, loudly
            self.ledger.failed(exc)  # each job's error says it; the run fails (headless)
            for job in jobs:
                why = f"{job.error or job.status.value}; not recorded in the store: {exc}"
                job.error = error_text(why)
            rows = [None] * len(jobs)
        for job, ds in zip(jobs, rows, strict=True):
            self._active.pop(job.id, None)
            self._scopes.pop(job.id, None)
            kind = EventKind.QUEUED if job.status == JobStatus.WAITING else EventKind.FINISHED
            self._emit(kind, job, ds)
        self._touch()

    # -- progress ----------------------------------------------------------------------
    def _progress_fn(self, job: Job) -> ProgressFn:
        return progress_meter(job, self._ticked)

    def _ticked(self, job: Job) -> None:
        self._dirty[job.id] = job
        self._emit(EventKind.PROGRESS, job)

    async def _flusher(self, owner_lock: OwnerLock) -> None:
        while True:
            await anyio.sleep(STORE_FLUSH_INTERVAL)
            await self._stop(self._locks.renew(owner_lock, self._active.values()))  # taken
            await self._flush()
            if self._active:
                asked = await self.ledger.call(self.ledger.cancels_requested, list(self._active))
                for job_id in asked:
                    await self.cancel(job_id)

    async def _flush(self) -> None:
        if self._dirty:
            batch, self._dirty = self._dirty, {}
            try:
                await self.ledger.defer(self.ledger.write_progress, list(batch.values()))
            except StoreError as exc:  # progress is advisory: the next flush writes newer
                self.ledger.failed(exc, lost=False)


def uncaught(job: Job, exc: Exception) -> Outcome:
    """The end of a job by an exception nothing caught (call it in the except block): a
    DsmError says what went wrong (a lock file dsm cannot use); any other is a bug, its
    traceback logged."""
    if isinstance(exc, DsmError):
        return JobStatus.FAILED, str(exc)
    log.exception("job %s failed unexpectedly", job.id)
    return JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}"
