"""What the dashboard shows, kept apart from Textual: datasets, live jobs, marks, filter, sort.

The dashboard feeds it engine events and store snapshots; every `apply_*` returns the names
of the rows that changed, so the view touches only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset, Status
from dsm.widgets.dataset_table import Row, shown_progress
from dsm.widgets.panels import Totals

SORTS = ("name", "status", "size", "progress")
STATUS_ORDER = {s: i for i, s in enumerate(Status)}


@dataclass(frozen=True)
class Change:
    """Rows whose cells changed, and whether rows appeared or vanished (a reload)."""

    names: frozenset[str]
    structural: bool = False


class DashboardState:
    def __init__(self, own_engine: str) -> None:
        self.own_engine = own_engine  # our engine's owner id: its jobs come from events
        self.datasets: dict[str, Dataset] = {}
        self.jobs: list[Job] = []  # every stored job, oldest first
        self.live: dict[str, dict[str, Job]] = {}  # dataset -> our unfinished jobs by id
        self.foreign: dict[str, Job] = {}  # dataset -> an unfinished job of another process
        self.marked: set[str] = set()
        self.filter = ""
        self.sort = SORTS[0]
        # Kept up to date row by row: summing 10,000 rows on every flush cost ~3 % of a core.
        self._downloaded = 0
        self._failed = 0
        self._on_disk = 0

    # -- feeding -----------------------------------------------------------------------
    def _accept(self, ds: Dataset) -> bool:
        """Take a row unless ours is newer (a store read can trail an engine event)."""
        old = self.datasets.get(ds.name)
        # A store read hands back the very objects of rows that did not change: `is` first.
        if old is not None and (old is ds or old == ds or old.updated_at_ms > ds.updated_at_ms):
            return False
        if old is not None:
            self._tally(old, -1)
        self._tally(ds, 1)
        self.datasets[ds.name] = ds
        return True

    def _tally(self, ds: Dataset, sign: int) -> None:
        """Count a row into the totals (sign 1) or out of them (-1)."""
        self._downloaded += sign * (ds.status == Status.DOWNLOADED)
        self._failed += sign * (ds.status == Status.ERROR)
        self._on_disk += sign * (ds.size or 0 if ds.downloaded else 0)

    def apply_job(self, job: Job, ds: Dataset | None = None) -> bool:
        """An engine event of ours; True when the dataset is shown. Stale progress of a job
        that already finished is ignored."""
        if ds is not None:
            self._accept(ds)
        jobs = self.live.setdefault(job.dataset, {})
        if job.status.finished:
            jobs.pop(job.id, None)
        elif job.id in jobs or ds is not None or job.status != JobStatus.RUNNING:
            jobs[job.id] = job
        if not jobs:
            del self.live[job.dataset]
        return job.dataset in self.datasets

    def apply_snapshot(self, datasets: Iterable[Dataset], jobs: list[Job]) -> Change:
        """A fresh read of the store (ours or another process's writes)."""
        fresh = {ds.name: ds for ds in datasets}
        structural = fresh.keys() != self.datasets.keys()
        for name in self.datasets.keys() - fresh.keys():
            self._tally(self.datasets.pop(name), -1)
        self.marked &= fresh.keys()
        changed = {name for name, ds in fresh.items() if self._accept(ds)}
        foreign = {
            j.dataset: j for j in jobs if not j.status.finished and j.owner != self.own_engine
        }
        changed |= {
            n for n in foreign.keys() | self.foreign.keys() if foreign.get(n) != self.foreign.get(n)
        }
        self.foreign = foreign
        self.jobs = jobs
        return Change(frozenset(changed & fresh.keys()), structural)

    # -- reading -----------------------------------------------------------------------
    def job_for(self, name: str) -> Job | None:
        """The job to show on a row: ours (running before waiting), else another process's."""
        ours = self.live.get(name)
        if ours:
            return max(ours.values(), key=lambda j: j.status == JobStatus.RUNNING)
        return self.foreign.get(name)

    def row(self, name: str) -> Row:
        return self.datasets[name], self.job_for(name), name in self.marked

    def jobs_of(self, name: str) -> list[Job]:
        return [j for j in self.jobs if j.dataset == name]

    @property
    def own_active(self) -> int:
        return sum(len(jobs) for jobs in self.live.values())

    def _matches(self, ds: Dataset) -> bool:
        needle = self.filter.casefold()
        return not needle or any(
            needle in s.casefold() for s in (ds.name, ds.description, ds.status.label)
        )

    def _sort_key(self) -> Callable[[Dataset], Any]:
        if self.sort == "status":
            return lambda d: (STATUS_ORDER[d.status], d.name)
        if self.sort == "size":
            return lambda d: (-(d.size or d.expected_size or 0), d.name)
        if self.sort == "progress":
            return lambda d: (-shown_progress(d, self.job_for(d.name)), d.name)
        return lambda d: d.name

    def rows(self) -> list[Row]:
        return [self.row(name) for name in self.datasets]

    def visible(self) -> list[str]:
        """The names of the rows to show, filtered and sorted."""
        shown = sorted(filter(self._matches, self.datasets.values()), key=self._sort_key())
        return [ds.name for ds in shown]

    def totals(self) -> Totals:
        jobs = [j for ours in self.live.values() for j in ours.values()]
        jobs += self.foreign.values()
        return Totals(
            datasets=len(self.datasets),
            downloaded=self._downloaded,
            failed=self._failed,
            bytes_on_disk=self._on_disk,
            active_jobs=len(jobs),
            rate=sum(j.rate for j in jobs if j.status == JobStatus.RUNNING),
        )
