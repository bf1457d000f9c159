"""The store bookkeeping of jobs: recording them, claiming and finishing them, adopting the
jobs of dead processes, and cancel requests between processes.

Every method here is blocking store work; the engine runs it with `call`, in one worker
thread, one call at a time and in order, so the event loop never waits on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from filelock import FileLock, Timeout

from dsm.config import Settings
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import ACTIVE, AT_REST, Dataset, Status
from dsm.engine import files
from dsm.engine.outcome import Facts, end_state, resting_status
from dsm.errors import UnknownDataset
from dsm.repository import Repository

T = TypeVar("T")
JOBS_KEPT_PER_DATASET = 20


def owner_lock_path(settings: Settings, owner: str) -> Path:
    """The file a live engine holds locked; a free lock means its owner died."""
    return settings.lock_dir / f"owner-{owner}.lock"


class Ledger:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        owner: str,
        adopt_only: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.owner = owner
        self.adopt_only = adopt_only
        self._limiter = anyio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call in the store thread, after every store call queued before it."""
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)

    def dataset_names(self) -> frozenset[str]:
        return self.repo.dataset_names()

    def record_queued(
        self, jobs: list[Job], key: str | None, request: dict[str, Any], others_twins: bool
    ) -> tuple[list[Job], dict[str, Dataset]]:
        """Store the jobs that have no live twin (repository.find_or_add_jobs: this engine's,
        or with `others_twins` any live process's); their datasets at rest become queued and
        point at their job. Per job: the job stored, or its twin."""
        queued: dict[str, Dataset] = {}
        alive: dict[str, bool] = {}
        with self.repo.transaction():
            found = self.repo.find_or_add_jobs(
                jobs,
                lambda j: (
                    j.owner == self.owner or (others_twins and self.owner_alive(j.owner, alive))
                ),
                key,
                request if key is not None else None,
            )
            new = {j.id for j in jobs}
            for job in (j for j in found if j.id in new):
                ds = self.repo.dataset(job.dataset)
                if ds.status in AT_REST and job.dataset not in queued:
                    ds.set_status(Status.QUEUED)
                    ds.download_job_id = job.id
                    queued[job.dataset] = ds
            self.repo.save_many(list(queued.values()))
        return found, queued

    def claim(self, job: Job) -> None:
        """A worker starts the job: store it running, and point its dataset at it."""
        with self.repo.transaction():
            self.repo.save_job(job)
            ds = self.repo.dataset(job.dataset)
            if ds.download_job_id != job.id:
                status = Status.QUEUED if ds.status in AT_REST else None
                self.repo.change(job.dataset, status, download_job_id=job.id)

    def record_finished(self, job: Job, had_copy: bool | None) -> Dataset | None:
        """Store the job's end; put its dataset at rest (outcome.end_state) if this job
        still owns it. `had_copy` None: not known yet (the job never started)."""
        with self.repo.transaction():
            self.repo.save_job(job)
            self.repo.clear_cancel(job.id)
            try:
                ds = self.repo.dataset(job.dataset)
            except UnknownDataset:  # a delete of a row that left the catalogue removed it
                return None
            owned = ds.download_job_id == job.id and ds.status not in AT_REST
            if not owned:
                return ds
            if had_copy is None:
                had_copy = files.still_verified(self.settings.home, ds)
            facts = Facts(owned, had_copy, self.resting_status(ds))
            change = end_state(job.status, job.error, facts)
            if change is None:
                return ds
            return self.repo.change(ds.name, change.status, **change.fields)

    def resting_status(self, ds: Dataset) -> Status:
        return resting_status(
            files.still_verified(self.settings.home, ds),
            files.has_partial(self.settings.home, ds),
            ds.error,
        )

    # -- other processes ---------------------------------------------------------------
    def owner_alive(self, owner: str | None, seen: dict[str, bool]) -> bool:
        """Whether the engine `owner` still runs (its lock is held); `seen` caches answers."""
        if owner is None:
            return False
        if owner not in seen:
            path = owner_lock_path(self.settings, owner)
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

    def request_cancel(self, name: str) -> bool:
        """Ask the live processes running the dataset's jobs to cancel them."""
        alive: dict[str, bool] = {}
        wanted = [
            job
            for job in self.repo.jobs()
            if job.dataset == name
            and not job.status.finished
            and job.owner != self.owner
            and self.owner_alive(job.owner, alive)
        ]
        if wanted:
            self.repo.request_cancel(j.id for j in wanted)
        return bool(wanted)

    def cancels_requested(self, job_ids: list[str]) -> list[str]:
        """This engine's jobs that another process asked to cancel (`c` in a dashboard)."""
        return self.repo.cancels_requested(job_ids)

    def adopt(self) -> list[Job]:
        """Take over the unfinished jobs of dead processes (they wait again, owned by us) and
        put the rows nobody works on at rest."""
        adopted: list[Job] = []
        alive: dict[str, bool] = {}
        with self.repo.transaction():
            jobs = self.repo.jobs()
            live: set[str] = set()
            for job in jobs:
                if job.status.finished:
                    continue
                if job.owner == self.owner or self.owner_alive(job.owner, alive):
                    live.add(job.id)
                    continue
                if self.adopt_only is not None and job.dataset not in self.adopt_only:
                    live.add(job.id)  # left waiting for a start that asks for its dataset
                    continue
                job.owner, job.status, job.started_ms = self.owner, JobStatus.WAITING, None
                self.repo.save_job(job)
                adopted.append(job)
                live.add(job.id)
            self._reconcile(live)
            self.repo.prune_jobs(jobs, JOBS_KEPT_PER_DATASET)
        return adopted

    def _reconcile(self, live: set[str]) -> None:
        """Active rows: queued when a live job owns them, else at rest."""
        for ds in self.repo.datasets():
            if ds.status not in ACTIVE:
                continue
            if ds.download_job_id in live:
                if ds.status != Status.QUEUED:
                    self.repo.change(ds.name, Status.QUEUED)
            else:
                self.repo.change(ds.name, self.resting_status(ds))
