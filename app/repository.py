"""The one door to the store: datasets and jobs as objects, every access a named method.

Nothing else in dsm imports `store/` or names a table. A row that does not parse into its
domain object (a dataset or a job) is a corrupt store, reported as `StoreCorrupt` (exit 2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset, Status, snapshot
from dsm.errors import BadInput, UnknownDataset
from dsm.store import Store, StoreCorrupt, StoreError, StoreFull

__all__ = [
    "IdempotencyMismatch",
    "Repository",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "UnknownDataset",
    "now_ms",
]

T = TypeVar("T")
_DATASETS = "datasets"
_JOBS = "jobs"
_META = "meta"
_CANCELS = "cancels"  # job id -> a cancel request from another process
_CATALOG_STAMP = "catalog"
_IDEMPOTENCY = "idempotency_keys"  # kept in the job's own document, pruned with it
_PROGRESS_FIELDS = ("progress", "bytes_done", "bytes_total", "rate")
_WAITING_FIELDS = ("error", "started_ms", "finished_ms")
_SUMMARY_FIELDS = ("id", "dataset", "status", "created_ms", "owner")
_UNFINISHED = frozenset(s.value for s in JobStatus if not s.finished)


def now_ms() -> int:
    return int(time.time() * 1000)


class IdempotencyMismatch(BadInput):
    """An idempotency key sent again with a request that differs from its first one."""


def _twin_key(job: Job) -> Hashable:
    """What twins share: type, dataset and params (plain JSON scalars when dsm wrote them)."""
    key = (job.type.value, job.dataset, tuple(sorted(job.params.items())))
    try:
        hash(key)
    except TypeError:  # a value that is a list or an object (not written by dsm): as text
        return (job.type.value, job.dataset, json.dumps(job.params, sort_keys=True))
    return key


def _keys(doc: dict[str, Any]) -> dict[str, Any]:
    """A job document's idempotency keys -> their requests (None: kept before requests were)."""
    raw = doc.get(_IDEMPOTENCY) or {}
    return dict(raw) if isinstance(raw, dict) else dict.fromkeys(raw)


def _keys_ok(raw: object) -> bool:
    """What `_keys` reads: none, a list of keys (older dsm), or keys -> their requests."""
    if raw is None:
        return True
    if isinstance(raw, list):
        return all(isinstance(k, str) for k in raw)
    return isinstance(raw, dict) and all(isinstance(r, dict | None) for r in raw.values())


class Repository:
    def __init__(self, store: Store) -> None:
        self._store = store

    @classmethod
    def open(cls, path: Path) -> Repository:
        """Open the store at `path` and check every row now, so a corrupt store is reported
        before anything is written."""
        repo = cls(Store(path))
        repo._store.check()
        # Row by row, nothing kept: 10,000 parsed rows at once cost ~30 MB of peak memory.
        repo._store.check_each(_DATASETS, repo._check_dataset)
        repo._store.check_each(_JOBS, repo._check_job)
        return repo

    def _check_job(self, key: str, raw: dict[str, Any]) -> None:
        job = self.parse_job(raw)
        if job.id != key:  # found by key, saved by id: the row under `key` would stay
            raise StoreCorrupt(f"{self.path}: job row {key!r} has the id {job.id!r}")
        if not _keys_ok(raw.get(_IDEMPOTENCY)):
            raise StoreCorrupt(
                f"{self.path}: job {key}: field {_IDEMPOTENCY!r} is neither a list of keys "
                "nor an object of requests"
            )

    def _check_dataset(self, key: str, raw: dict[str, Any]) -> None:
        self._parse(Dataset.check_dict, raw, "dataset")
        if raw["name"] != key:  # rows are found by key and act by name
            raise StoreCorrupt(f"{self.path}: dataset row {key!r} is named {raw['name']!r}")

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def identity(self) -> tuple[int, int, int] | None:
        """Changes whenever any process rewrites the store (for cheap change polling)."""
        return self._store.identity

    def transaction(self, defer: bool = False) -> AbstractContextManager[None]:
        """Group calls into one locked read-modify-write of the store, across processes. With
        `defer`, the changes reach the file later, with others (`flush`): the store stays
        locked for other processes until then, so flush within a fraction of a second."""
        return self._store.transaction(defer)

    def open_deferred(self) -> AbstractContextManager[bool]:
        """True (holding the store for this thread) when a deferred transaction is open and
        nobody else is in the store: a deferred change then needs no I/O of the store."""
        return self._store.open_deferred()

    def flush(self) -> None:
        """Write the deferred changes in one write, and let other processes in."""
        self._store.flush()

    @property
    def pending(self) -> bool:
        """Deferred changes are waiting for `flush`."""
        return self._store.pending

    def check_room(self) -> None:
        """Raise StoreFull unless there is room to write the store now (no write made)."""
        self._store.check_room()

    def before_write(self, key: object, fn: Callable[[], None]) -> None:
        """Run `fn` before the next write of the store (once per key), e.g. syncing a folder
        whose renamed file the pending changes record."""
        self._store.before_write(key, fn)

    def close(self) -> None:
        self._store.close()

    def _parse(self, build: Callable[[dict[str, Any]], T], raw: dict[str, Any], what: str) -> T:
        try:
            return build(raw)
        except ValueError as exc:  # the row's check, naming the row and the field
            raise StoreCorrupt(f"{self.path}: malformed {what} row: {exc}") from None
        except (KeyError, TypeError) as exc:
            raise StoreCorrupt(f"{self.path}: malformed {what} row ({exc!r})") from None

    # -- datasets ----------------------------------------------------------------------
    def datasets(self) -> list[Dataset]:
        rows = (self._parse(Dataset.from_dict, d, "dataset") for d in self.dataset_documents())
        return sorted(rows, key=lambda d: d.name)

    def dataset_documents(self) -> list[dict[str, Any]]:
        """The stored dataset rows as plain dicts (to rebuild only the rows that changed)."""
        return self._store.all(_DATASETS)

    def parse_dataset(self, raw: dict[str, Any]) -> Dataset:
        return self._parse(Dataset.from_dict, raw, "dataset")

    def dataset_names(self) -> frozenset[str]:
        return frozenset(self._store.keys(_DATASETS))  # rows are stored under their name

    def datasets_in(self, statuses: Iterable[Status]) -> list[Dataset]:
        """The rows in one of `statuses` (only those are parsed)."""
        wanted = frozenset(s.value for s in statuses)
        docs = self._store.where(_DATASETS, "status", wanted)
        return sorted((self.parse_dataset(d) for d in docs), key=lambda d: d.name)

    def dataset(self, name: str) -> Dataset:
        # A job reads its row several times: parsed once per version of the row.
        ds = self._store.get_as(_DATASETS, name, self.parse_dataset, snapshot)
        if ds is None:
            raise UnknownDataset(name)
        return ds

    def save(self, ds: Dataset) -> None:
        self.save_many([ds])

    def save_many(self, datasets: list[Dataset]) -> None:
        stamp = now_ms()
        for ds in datasets:
            # Never back, whatever the clock does (set back by hand or by NTP): readers keep
            # the later of two reads of a row by this stamp (the dashboard ignored every
            # change until the clock caught up: a finished download said downloading).
            ds.updated_at_ms = max(stamp, ds.updated_at_ms + 1)
        self._store.put_many(
            _DATASETS,
            {ds.name: ds.to_dict() for ds in datasets},
            {ds.name: snapshot(ds) for ds in datasets},  # what the next read returns a copy of
        )

    def change(self, name: str, status: Status | None = None, **fields: Any) -> Dataset:
        """Apply a status change and field updates to the latest stored row, atomically."""
        with self._store.transaction():
            ds = self.dataset(name)
            if status is not None:
                ds.set_status(status)
            for key, value in fields.items():
                if not hasattr(ds, key):
                    raise AttributeError(f"Dataset has no field {key!r}")
                setattr(ds, key, value)
            self.save(ds)
            return ds

    def remove_dataset(self, name: str) -> None:
        self._store.remove(_DATASETS, name)

    # -- jobs --------------------------------------------------------------------------
    def job_documents(self) -> list[dict[str, Any]]:
        """The stored job rows as plain dicts (to rebuild only the jobs that changed)."""
        return self._store.all(_JOBS)

    def parse_job(self, raw: dict[str, Any]) -> Job:
        return self._parse(Job.from_dict, raw, "job")

    def jobs(self) -> list[Job]:
        rows = (self._parse(Job.from_dict, d, "job") for d in self._store.all(_JOBS))
        return sorted(rows, key=lambda j: j.created_ms)

    def unfinished_jobs(self) -> list[Job]:
        """The jobs not ended yet (only those rows are parsed: most are finished)."""
        return [self.parse_job(d) for d in self._store.where(_JOBS, "status", _UNFINISHED)]

    def job(self, job_id: str) -> Job | None:
        raw = self._store.get(_JOBS, job_id)
        return self._parse(Job.from_dict, raw, "job") if raw is not None else None

    def job_owner(self, job_id: str) -> str | None:
        """The stored owner of the job (None: no such job, or no owner)."""
        raw = self._store.get(_JOBS, job_id)
        owner = raw.get("owner") if raw is not None else None
        return owner if isinstance(owner, str) else None

    def save_job(self, job: Job) -> None:
        self.save_jobs([job])

    def save_jobs(self, jobs: Iterable[Job]) -> None:
        self._store.put_many(_JOBS, {j.id: j.to_dict() for j in jobs})

    def remove_jobs(self, job_ids: Iterable[str]) -> None:
        self._store.remove_many(_JOBS, job_ids)

    def job_summaries(
        self, datasets: frozenset[str] | None = None, keyed: bool = True
    ) -> list[dict[str, Any]]:
        """What retention looks at (id, dataset, status, created_ms, owner) of every job, or
        of the jobs of `datasets`: a fraction of the cost of copying whole documents. Without
        `keyed`, not of the jobs an idempotency key names."""
        only = (*_SUMMARY_FIELDS, _IDEMPOTENCY)
        if datasets is None:
            docs = self._store.project(_JOBS, only)
        else:
            docs = self._store.where(_JOBS, "dataset", datasets, only)
        return [d for d in docs if keyed or not d[_IDEMPOTENCY]]

    def write_progress(self, jobs: list[Job]) -> None:
        """Record the progress of running jobs, and of their datasets' rows where the row
        still points at the job, in one write."""
        with self._store.transaction():
            for job in jobs:
                fields = {k: getattr(job, k) for k in _PROGRESS_FIELDS}
                self._store.update(_JOBS, job.id, fields)
                ds = self._store.get(_DATASETS, job.dataset)
                if ds is not None and ds.get("download_job_id") == job.id:
                    self._store.update(_DATASETS, job.dataset, {"download_progress": job.progress})

    def mark_waiting(self, jobs: list[Job]) -> None:
        """Record jobs as waiting again (suspended at quit, paused) in one write, touching
        only the fields that change: serialising 10,000 whole jobs took ~0.7 s."""
        with self._store.transaction():
            for job in jobs:
                fields = {k: getattr(job, k) for k in _WAITING_FIELDS}
                self._store.update(_JOBS, job.id, {**fields, "status": job.status.value})

    # -- cancel requests between processes ---------------------------------------------
    def request_cancel(self, job_ids: Iterable[str]) -> None:
        self._store.put_many(_CANCELS, {j: {"requested_ms": now_ms()} for j in job_ids})

    def cancels_requested(self, job_ids: Iterable[str]) -> list[str]:
        """Those of `job_ids` that another process asked to cancel."""
        return [j for j in job_ids if self._store.get(_CANCELS, j) is not None]

    def clear_cancel(self, job_id: str) -> None:
        self._store.remove(_CANCELS, job_id)

    # -- submitting: twins and idempotency keys ------------------------------------------
    def find_or_add_jobs(
        self,
        jobs: list[Job],
        reusable: Callable[[Job], bool] = lambda job: True,
        key: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> list[Job]:
        """Store each job unless an unfinished twin (same type, dataset and params) that
        `reusable` accepts is stored; per job, the twin or the job itself. One transaction:
        two processes on one home cannot both add a twin.

        `key` (an idempotency key, for a single job) is stored with the job, or its twin, in
        the same write, with the `request` it came with. A key already stored names its job;
        a different request under it is `IdempotencyMismatch`.
        """
        if key is not None and len(jobs) != 1:
            raise ValueError("an idempotency key names a single job")
        with self._store.transaction():
            if key is not None:
                known = self._job_by_key(key, request)
                if known is not None:
                    return [known]
            twins = {_twin_key(j): j for j in self.unfinished_jobs() if reusable(j)}
            out: list[Job] = []
            added: dict[str, dict[str, Any]] = {}
            for job in jobs:
                found = twins.setdefault(_twin_key(job), job)
                keys = {key: request} if key is not None else {}
                if found is job:
                    added[job.id] = {**job.to_dict(), _IDEMPOTENCY: keys}
                elif keys:  # one job, and its twin was stored before this call
                    stored = self._store.get(_JOBS, found.id) or {}
                    self._store.update(_JOBS, found.id, {_IDEMPOTENCY: {**_keys(stored), **keys}})
                out.append(found)
            self._store.put_many(_JOBS, added)
            return out

    def _job_by_key(self, key: str, request: dict[str, Any] | None) -> Job | None:
        for doc in self._store.all(_JOBS):
            keys = _keys(doc)
            if key not in keys:
                continue
            job = self._parse(Job.from_dict, doc, "job")
            # Keys stored before requests were kept with them: compare what the job says.
            stored = keys[key] or {"type": job.type.value, "dataset": job.dataset}
            if request is not None and any(request.get(k) != v for k, v in stored.items()):
                raise IdempotencyMismatch(
                    f"idempotency_key {key!r} was already used for another request: "
                    f"{json.dumps(stored, sort_keys=True)}"
                )
            return job
        return None

    # -- the registered catalogue --------------------------------------------------------
    def catalog_stamp(self) -> dict[str, Any] | None:
        return self._store.get(_META, _CATALOG_STAMP)

    def set_catalog_stamp(self, stamp: dict[str, Any]) -> None:
        self._store.put(_META, _CATALOG_STAMP, stamp)
