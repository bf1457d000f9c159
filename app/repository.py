"""Domain access to the store: datasets and jobs as objects, status changes checked."""

from __future__ import annotations

import time
from typing import Any

from dsm.domain.jobs import Job
from dsm.domain.model import Dataset, Status
from dsm.store import Store, StoreCorrupt

DATASETS = "datasets"
JOBS = "jobs"


def now_ms() -> int:
    return int(time.time() * 1000)


class UnknownDataset(LookupError):
    pass


class Repository:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- datasets ----------------------------------------------------------------------
    def datasets(self) -> list[Dataset]:
        try:
            return sorted(
                (Dataset.from_dict(d) for d in self.store.all(DATASETS)), key=lambda d: d.name
            )
        except (ValueError, TypeError) as exc:
            raise StoreCorrupt(f"{self.store.path}: {exc}") from None

    def dataset(self, name: str) -> Dataset:
        raw = self.store.get(DATASETS, name)
        if raw is None:
            raise UnknownDataset(name)
        try:
            return Dataset.from_dict(raw)
        except (ValueError, TypeError) as exc:
            raise StoreCorrupt(f"{self.store.path}: {exc}") from None

    def save(self, ds: Dataset) -> None:
        self.save_many([ds])

    def save_many(self, datasets: list[Dataset]) -> None:
        stamp = now_ms()
        for ds in datasets:
            ds.updated_at_ms = stamp
        self.store.put_many(DATASETS, {ds.name: ds.to_dict() for ds in datasets})

    def change(self, name: str, status: Status | None = None, **fields: Any) -> Dataset:
        """Apply a status change and field updates to the latest stored row, atomically."""
        with self.store.transaction():
            ds = self.dataset(name)
            if status is not None:
                ds.set_status(status)
            for key, value in fields.items():
                if not hasattr(ds, key):
                    raise AttributeError(f"Dataset has no field {key!r}")
                setattr(ds, key, value)
            self.save(ds)
            return ds

    # -- jobs --------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        return sorted((Job.from_dict(d) for d in self.store.all(JOBS)), key=lambda j: j.created_ms)

    def job(self, job_id: str) -> Job | None:
        raw = self.store.get(JOBS, job_id)
        return Job.from_dict(raw) if raw is not None else None

    def save_job(self, job: Job) -> None:
        self.store.put(JOBS, job.id, job.to_dict())
