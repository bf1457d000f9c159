"""The store bookkeeping of jobs: recording them, claiming and finishing them, adopting the
jobs of dead processes, and cancel requests between processes.

Every method here is blocking store work; the engine runs it with `call` or `defer` (the
store thread, storethread.py, which also says how job records are batched), so the event
loop never waits on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from dsm.catalog.paths import Resolver
from dsm.config import Settings
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import ACTIVE, AT_REST, Dataset, Status
from dsm.engine import files
from dsm.engine.liveness import owner_lock_path, owner_running
from dsm.engine.outcome import Facts, end_state, nothing_to_do, resting_status
from dsm.engine.storethread import StoreThread
from dsm.errors import DsmError, UnknownDataset
from dsm.repository import Repository, now_ms

_FINISHED = frozenset(s.value for s in JobStatus if s.finished)
_OK = frozenset(s.value for s in JobStatus if s.ok)


def jobs_to_prune(docs: list[dict[str, Any]], owner: str | None = None) -> list[str]:
    """Retention: per dataset its newest finished job, and its newest that did not end well
    (failed, canceled, timed out) when that is an older one, so the store stays proportional
    to the catalogue. The jobs of the engine `owner` are kept while it runs (its callers may
    still read them). `docs`: the stored job rows or their summaries (not parsed: 10,000
    Jobs cost ~1 s)."""
    newest: dict[str, tuple[int, str]] = {}  # per dataset: (created_ms, id) of its newest
    newest_bad: dict[str, tuple[int, str]] = {}  # ... and of its newest that did not end well
    ended = [d for d in docs if d["status"] in _FINISHED]  # not JobStatus(): 40k enum calls
    now = now_ms()
    for doc in ended:
        created = doc.get("created_ms") or 0
        # Made while the clock was ahead (set back since): no newer than any job, or each
        # job after it was pruned as older, for as long as the clock had been ahead.
        stamp = (created if created <= now else -1, doc["id"])
        name = doc["dataset"]
        if newest.get(name, _NO_STAMP) < stamp:
            newest[name] = stamp
        if doc["status"] not in _OK and newest_bad.get(name, _NO_STAMP) < stamp:
            newest_bad[name] = stamp
    keep = {job_id for _, job_id in newest.values()} | {job_id for _, job_id in newest_bad.values()}
    return [d["id"] for d in ended if d["id"] not in keep and d.get("owner") != owner]


_NO_STAMP = (-1, "")
_AS_ENDED = {"status": JobStatus.COMPLETED.value}


class TakenOver(DsmError):
    """Another engine adopted this engine's job: this process was stopped (SIGSTOP, a
    suspended VM) while `.locks/` was cleared, and looked dead. The job's records are the
    taker's now."""


@dataclass(frozen=True)
class Asked:
    """What a run for some datasets asked (a `--run-job`, `dsm.library`): at start its engine
    resumes the orphaned jobs (of dead processes) of those datasets of its own type and ends
    those of another type, canceled, unrun: the run is the newest word on them (a killed
    `delete --all` ran inside the next `download --all` and removed what it fetched, exit
    0). Orphans of other datasets wait for a start that asks for them."""

    names: frozenset[str]
    job_type: JobType


def taken(repo: Repository, owner: str, job: Job) -> bool:
    """Whether an engine other than `owner` adopted the job (`TakenOver`); checked in the
    store transaction that would record it, so no record of it follows the adoption."""
    stored = repo.job_owner(job.id)
    return stored is not None and stored != owner


def check_owned(repo: Repository, owner: str, job: Job) -> None:
    """Raise TakenOver, before the transaction changes anything (an error after a change
    would drop every deferred change with it)."""
    if taken(repo, owner, job):
        raise TakenOver(
            f"another dsm process took over this job of {job.dataset} while this one was"
            " stopped (the locks under .locks/ were deleted); it is left to that process"
        )


def supersede(repo: Repository, job: Job, by: JobType) -> None:
    """End an orphaned job unrun (`Asked`)."""
    job.status, job.finished_ms = JobStatus.CANCELED, now_ms()
    job.error = f"superseded by a {by.value} job asked for later; not run"
    repo.save_job(job)


class Ledger(StoreThread):
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        owner: str,
        adopt_only: Asked | None = None,
    ) -> None:
        super().__init__(repo)
        self.settings = settings
        self.owner = owner
        self.adopt_only = adopt_only

    async def close(self) -> None:
        """The engine stops: prune the jobs finished before its own (`jobs_to_prune`) and
        write what is deferred."""
        await self.defer(self._prune)
        await self.commit()

    def _prune(self) -> None:
        self.repo.remove_jobs(jobs_to_prune(self.repo.job_summaries(), self.owner))

    def dataset_names(self) -> frozenset[str]:
        return self.repo.dataset_names()

    def record_queued(
        self, jobs: list[Job], key: str | None, request: dict[str, Any], others_twins: bool
    ) -> tuple[list[Job], dict[str, Dataset]]:
        """Store the jobs that have no live twin (repository.find_or_add_jobs: this engine's,
        or with `others_twins` any live process's), check and insert in one store
        transaction (across processes); their datasets at rest become queued and point at
        their job; a download with nothing to do ends at once, skipped (`_nothing_to_do`). Per
        job: the job stored, or its twin."""
        queued: dict[str, Dataset] = {}
        alive: dict[str, bool] = {}
        resolver = Resolver(self.settings.home)  # one pass over the datasets
        with self.repo.transaction():
            rows: dict[str, Dataset] = {}
            for job in jobs:
                ds = rows.get(job.dataset) or self.repo.dataset(job.dataset)
                self._nothing_to_do(job, ds, resolver)
                if not job.status.finished:  # kept for the jobs queued (a second --all: none)
                    rows[job.dataset] = ds
            found = self.repo.find_or_add_jobs(
                jobs,
                lambda j: (
                    j.owner == self.owner or (others_twins and self.owner_alive(j.owner, alive))
                ),
                key,
                request if key is not None else None,
            )
            new = {j.id for j in jobs}
            if not others_twins:  # the API's clients may still poll the jobs it handed out
                renewed = frozenset(j.dataset for j in found if j.id in new)
                self._prune_superseded(renewed, new, alive)
            for job in (j for j in found if j.id in new and not j.status.finished):
                ds = rows[job.dataset]
                if ds.status in AT_REST and job.dataset not in queued:
                    ds.set_status(Status.QUEUED)
                    ds.download_job_id = job.id
                    queued[job.dataset] = ds
            self.repo.save_many(list(queued.values()))
        return found, queued

    def _prune_superseded(
        self, renewed: frozenset[str], new: set[str], alive: dict[str, bool]
    ) -> None:
        """The jobs that the `new` jobs of `renewed` datasets supersede go in the submission's
        write, not at stop: an `update --all` on 10,000 datasets would otherwise hold 20,000
        jobs (the store's memory and every write doubled) until the end. A new job counts as
        ended, so what goes is what retention drops however it ends: the older ones, but the
        newest that did not end well. Kept for the stop: the jobs of live processes (their
        callers may still read them) and those an idempotency key names (a client may send
        the key again). A new job that never ends (a crash) leaves its dataset without its
        earlier finished job until it is adopted and ends."""
        if not renewed:
            return
        stale = self.repo.job_summaries(renewed, keyed=False)
        as_ended = [
            d | _AS_ENDED if d["id"] in new and d["status"] not in _FINISHED else d for d in stale
        ]
        owners = {d["id"]: d.get("owner") for d in stale}
        gone = jobs_to_prune(as_ended, self.owner)
        self.repo.remove_jobs(j for j in gone if not self.owner_alive(owners[j], alive))

    def _nothing_to_do(self, job: Job, ds: Dataset, resolver: Resolver) -> None:
        """A download whose dataset is current ends here, skipped, and is never queued: a
        second `--all` on 10,000 datasets costs one store write, not 10,000 jobs' work."""
        home, offline = self.settings.home, self.settings.offline
        if job.type != JobType.DOWNLOAD or ds.status not in AT_REST:
            return
        if not files.still_verified(home, ds, resolver):
            return
        end = nothing_to_do(job.force_download, ds, True, offline)
        if end is not None:
            job.status, job.error = end
            job.started_ms = job.finished_ms = now_ms()
            files.forget_install(files.target_text(home, ds, resolver), ds.checksum)

    def claim(self, job: Job) -> tuple[Dataset, bool]:
        """A worker starts the job: store it running, and point its dataset at it. Returns
        the row, and whether its verified copy is still in place."""
        with self.repo.transaction():
            ds = self.repo.dataset(job.dataset)  # raises before anything changed
            had_copy = files.still_verified(self.settings.home, ds)
            job.status, job.started_ms, job.error = JobStatus.RUNNING, now_ms(), None
            self.repo.save_job(job)
            # A held job (paused, suspended) may find its row at rest: its copy was placed
            # and recorded as the stop came (EarlyInstall). Queue it again all the same. A
            # row active for another job is stale (a write that failed lost that job's end):
            # this job holds the dataset's lock, so no other works on it.
            stale = ds.status not in AT_REST and ds.download_job_id != job.id
            status = Status.QUEUED if ds.status in AT_REST or stale else None
            if ds.download_job_id != job.id or status is not None:
                self.repo.change(job.dataset, status, download_job_id=job.id)
        return ds, had_copy

    def set_status(
        self, job: Job, status: Status | None, fields: dict[str, Any], save_job: bool = False
    ) -> Dataset:
        """The row of the job's dataset changes (and with `save_job` the job is stored too).
        At `verifying`, the step before a file is moved into place, the store must have room
        to record it: StoreFull fails the job there."""
        with self.repo.transaction():
            check_owned(self.repo, self.owner, job)
            if save_job:
                self.repo.save_job(job)
            ds = self.repo.change(job.dataset, status, **fields)
        if status == Status.VERIFYING:
            self.repo.check_room()
        return ds

    def record_finished(self, job: Job, had_copy: bool | None) -> Dataset | None:
        """Store the job's end; put its dataset at rest (outcome.end_state) if this job
        still owns it. `had_copy` None: not known yet (the job never started). Nothing for
        a job another engine took over (`TakenOver`)."""
        with self.repo.transaction():
            if taken(self.repo, self.owner, job):
                return None
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

    def record_done(self, job: Job, fields: dict[str, Any], folder: Path | None = None) -> Dataset:
        """The row takes the installed copy (`fields`: size, checksum, stamps, ...), checked
        in the same transaction against the expectations the job downloaded against: if
        another process registered a changed catalogue meanwhile, the copy is kept but
        `outdated`, saying what changed. `folder`: where the copy was renamed, synced before
        the store records it (once for a batch)."""
        with self.repo.transaction():
            check_owned(self.repo, self.owner, job)
            if folder is not None:
                self.repo.before_write(folder, partial(files.fsync_dir, folder))
            drift = files.catalogue_drift(self.repo.dataset(job.dataset), job.expect)
            done: dict[str, Any] = {
                "downloaded": True,
                "downloaded_at_ms": now_ms(),
                "download_progress": 100.0,
                "outdated": drift is not None,
                "outdated_reason": drift,
                "confirmed": True,
                "unconfirmed_reason": None,
                "error": None,
            }
            return self.repo.change(job.dataset, Status.DOWNLOADED, **(done | fields))

    def write_progress(self, jobs: list[Job]) -> None:
        """The progress of running jobs, but those another engine took over."""
        with self.repo.transaction():
            self.repo.write_progress([j for j in jobs if not taken(self.repo, self.owner, j)])

    def record_many(self, jobs: list[Job], had_copy: bool | None) -> list[Dataset | None]:
        """`record_finished` for several jobs, in one store write."""
        with self.repo.transaction():
            return [self.record_finished(job, had_copy) for job in jobs]

    def record_held(self, jobs: list[Job], had_copy: bool | None) -> list[Dataset | None]:
        """Jobs no worker picked, now held waiting (paused, suspended): their rows already
        say queued, so only the jobs change, in one write (~0.1 s at 10,000 jobs, where
        ending them one by one took ~1 s)."""
        self.repo.mark_waiting(jobs)
        return [None] * len(jobs)

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
            seen[owner] = owner_running(self.settings.lock_dir, owner)
            if not seen[owner]:  # its process died: its lock file is of no more use
                owner_lock_path(self.settings.lock_dir, owner).unlink(missing_ok=True)
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
            jobs = self.repo.unfinished_jobs()
            running: set[str] = set()  # jobs of live processes: their rows are theirs
            waiting: set[str] = set()  # jobs that wait for this or a later start
            for job in jobs:
                if job.owner == self.owner or self.owner_alive(job.owner, alive):
                    running.add(job.id)
                    continue
                asked = self.adopt_only
                if asked is not None and job.dataset not in asked.names:
                    waiting.add(job.id)
                    continue  # left waiting for a start that asks for its dataset
                if asked is not None and job.type != asked.job_type:
                    supersede(self.repo, job, asked.job_type)  # its row goes at rest below
                    continue
                waiting.add(job.id)
                job.owner, job.status, job.started_ms = self.owner, JobStatus.WAITING, None
                self.repo.save_job(job)
                adopted.append(job)
            self._reconcile(running, waiting)
            self.repo.remove_jobs(jobs_to_prune(self.repo.job_summaries()))
        return adopted

    def _reconcile(self, running: set[str], waiting: set[str]) -> None:
        """Active rows: untouched while a live process's job owns them (it may be
        downloading: issue 12.5), queued when their job waits, else at rest."""
        for ds in self.repo.datasets_in(ACTIVE):
            if ds.download_job_id in running:
                continue
            if ds.download_job_id in waiting:
                if ds.status != Status.QUEUED:
                    self.repo.change(ds.name, Status.QUEUED)
            else:
                self.repo.change(ds.name, self.resting_status(ds))
