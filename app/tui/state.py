"""What the dashboard shows, kept apart from Textual: datasets, live jobs, rates, marks,
filter, sort. It imports no Textual (a test holds it to that), so it is tested without an app.

The dashboard feeds it engine events and store snapshots; every `apply_*` returns the names
of the rows that changed, so the view touches only those.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dsm.domain.display import (
    RateMeter,
    RowView,
    Throughput,
    Totals,
    eta,
    is_paused,
    pending_text,
    retry_text,
    short_cause,
    shown_progress,
)
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import ACTIVE, Dataset, Status
from dsm.engine.liveness import CHANGED, MISSING

SORTS = ("name", "status", "size", "progress", "rate")
STATUS_ORDER = {s: i for i, s in enumerate(Status)}
ON_DISK_HINT = {MISSING: "d fetches it again", CHANGED: "v verifies it, f fetches it again"}
# A row whose job's process died (killed): nothing runs it until d, or the next start.
INTERRUPTED = "interrupted: its dsm process died; d resumes it"
HISTORY_SECONDS = 60  # the summary's sparkline: total rate once a second, the last minute


@dataclass(frozen=True)
class Change:
    """Rows whose cells changed, and whether rows appeared or vanished (a reload)."""

    names: frozenset[str]
    structural: bool = False


@dataclass
class Sizes:
    """Bytes done and total of the jobs whose size is known; how many have none known."""

    done: int = 0
    total: int = 0
    unknown: int = 0

    def add(self, done: int, size: int | None, active: bool = True) -> None:
        if size:
            self.done += done
            self.total += size
        elif active:  # a paused job's unknown size does not hide the others' "x of y"
            self.unknown += 1


class LogJobs:
    """The job log's jobs, newest first, each looked up when its line is drawn: sorting and
    merging 10,000 jobs on every refresh cost ~40 ms, a screen of lines costs ~40 lookups.
    Our jobs the last store read has not seen come first (the newest); the stored ones
    follow, newest first, each replaced by our live copy (the store trails it by up to a
    second: attempts, status)."""

    def __init__(
        self, stored: list[Job], live: dict[str, dict[str, Job]], unseen: list[Job]
    ) -> None:
        self._stored, self._live, self._unseen = stored, live, unseen

    def __len__(self) -> int:
        return len(self._unseen) + len(self._stored)

    def __getitem__(self, index: int) -> Job:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < len(self._unseen):
            return self._unseen[index]
        job = self._stored[len(self) - 1 - index]
        return self._live.get(job.dataset, {}).get(job.id, job)


class OnDisk:
    """What the dashboard's probe saw on disk of the recorded copies (feed.CopyProbe), each
    only for the row as the probe saw it: a download or verify since recorded it anew."""

    def __init__(self, datasets: dict[str, Dataset]) -> None:
        self._datasets = datasets  # the dashboard's rows (DashboardState.datasets)
        self._seen: dict[str, tuple[Dataset, str]] = {}

    def apply(self, seen: dict[str, tuple[Dataset, str]]) -> frozenset[str]:
        """A new look of the probe; the names of the rows whose info changed."""
        before, self._seen = self._seen, seen
        flipped = before.keys() ^ seen.keys()
        flipped |= {n for n, v in seen.items() if n in before and before[n] != v}
        return frozenset(flipped & self._datasets.keys())

    def says(self, name: str) -> str:
        """MISSING, CHANGED, else ""."""
        seen, ds = self._seen.get(name), self._datasets[name]
        return seen[1] if seen is not None and (seen[0] is ds or seen[0] == ds) else ""

    def text(self, name: str) -> str:
        """What the disk says and what to do, for the row and the detail pane (`missing on
        disk: d fetches it again`), else ""."""
        said = self.says(name)
        return f"{said}: {ON_DISK_HINT[said]}" if said else ""

    def missing(self) -> tuple[int, int]:
        """The downloaded rows whose copy was removed by hand, and the bytes they counted (the
        summary said `6 downloaded` of five on disk)."""
        names = self._seen.keys() & self._datasets.keys()
        gone = [self._datasets[n] for n in names if self.says(n) == MISSING]
        count = sum(ds.status == Status.DOWNLOADED for ds in gone)
        return count, sum(ds.size or 0 for ds in gone if ds.downloaded)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class DashboardState:
    def __init__(
        self,
        own_engine: str,
        max_attempts: int = 1,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.own_engine = own_engine  # our engine's owner id: its jobs come from events
        self.max_attempts = max_attempts  # a job's first try and its retries
        self._clock, self._wall_ms = clock, wall_ms
        self.datasets: dict[str, Dataset] = {}
        self.jobs: list[Job] = []  # every stored job, oldest first
        self._stored_ids: set[str] = set()  # the jobs of the last store read
        self._stored_width = 0  # their longest dataset name
        self._unseen: dict[str, Job] = {}  # our jobs the last store read did not have yet
        self.live: dict[str, dict[str, Job]] = {}  # dataset -> our unfinished jobs by id
        self.foreign: dict[str, Job] = {}  # dataset -> an unfinished job of another process
        self.interrupted: set[str] = set()  # datasets whose job's process died
        self.pending: dict[str, str] = {}  # dataset -> an action asked for, not yet seen done
        self.marked: set[str] = set()
        self.filter = ""
        self.sort = SORTS[0]
        self.reverse = False
        self._meters: dict[str, RateMeter] = {}  # job id -> its smoothed rate
        self._throughput = Throughput()  # all jobs: the summary's rate and ETA
        self._moving: dict[str, Job] = {}  # job id -> our running or retrying jobs
        self._jobs_version = 0  # bumped when a job appears, ends or changes status
        self._resting: tuple[int, tuple[dict[str, int], Sizes]] | None = None
        self._sort_keys: dict[str, Any] = {}  # name -> its key in the last sort
        self.history: deque[float] = deque(maxlen=HISTORY_SECONDS)
        # Kept up to date row by row: summing 10,000 rows on every flush cost ~3 % of a core.
        self._downloaded = 0
        self._failed = 0
        self._on_disk = 0
        self.disk = OnDisk(self.datasets)  # copies not on disk as recorded

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
        self._moving.pop(job.id, None)
        old = jobs.get(job.id)
        if old is None or (old.status, old.error) != (job.status, job.error):
            self._jobs_version += 1  # the resting part of the totals is stale
        if job.status.finished:
            jobs.pop(job.id, None)
            meter = self._meters.pop(job.id, None)
            if meter is not None:  # the bytes since its last progress event
                self._throughput.moved(job.bytes_done - meter.last_bytes)
            self._throughput.ended(job, self._clock())
            self.pending.pop(job.dataset, None)
        elif job.id in jobs or ds is not None or job.status != JobStatus.RUNNING:
            jobs[job.id] = job
            self._measure(job)
            if job.status in (JobStatus.RUNNING, JobStatus.RETRYING):
                self._moving[job.id] = job
        if job.id not in self._stored_ids and (job.status.finished or job.id in jobs):
            self._unseen[job.id] = job
        if not jobs:
            del self.live[job.dataset]
        return job.dataset in self.datasets

    def _measure(self, job: Job) -> None:
        """Feed the job's rate meter; a job that stopped moving starts a new one when it
        moves again (a retry, a resume)."""
        if job.status != JobStatus.RUNNING:
            self._meters.pop(job.id, None)
            return
        meter = self._meters.get(job.id)
        if meter is None:  # bytes it starts with came from a partial file, not this session
            self._meters[job.id] = RateMeter(job.bytes_done, self._clock())
            self._throughput.active(True, self._clock())
        else:
            self._throughput.moved(job.bytes_done - meter.last_bytes)
            meter.sample(job.bytes_done, self._clock())

    def apply_snapshot(
        self, datasets: Iterable[Dataset], jobs: list[Job], dead: frozenset[str] = frozenset()
    ) -> Change:
        """A fresh read of the store (ours or another process's writes); `dead`: engines
        that own unfinished jobs in it and no longer run (their jobs wait for a restart)."""
        fresh = {ds.name: ds for ds in datasets}
        structural = fresh.keys() != self.datasets.keys()
        for name in self.datasets.keys() - fresh.keys():
            self._tally(self.datasets.pop(name), -1)
        self.marked &= fresh.keys()
        changed = {name for name, ds in fresh.items() if self._accept(ds)}
        unfinished = [j for j in jobs if not j.status.finished and j.owner != self.own_engine]
        interrupted = {j.dataset for j in unfinished if j.owner in dead}
        changed |= interrupted ^ self.interrupted
        self.interrupted = interrupted
        foreign = {j.dataset: j for j in unfinished if j.owner not in dead}
        if foreign:  # their small files may start and end between two reads
            self._throughput.active(True, self._clock())
        still = {j.id for j in foreign.values()}
        self._foreign_ended([j for j in self.foreign.values() if j.id not in still], jobs)
        for job in foreign.values():
            self._measure(job)
        moved = {
            n for n in foreign.keys() | self.foreign.keys() if foreign.get(n) != self.foreign.get(n)
        }
        if moved:
            self._jobs_version += 1
        changed |= moved
        self.foreign = foreign
        self.jobs = jobs
        self._stored_ids = {j.id for j in jobs}
        self._stored_width = max((len(j.dataset) for j in jobs), default=0)
        self._unseen = {i: j for i, j in self._unseen.items() if i not in self._stored_ids}
        return Change(frozenset(changed & fresh.keys()), structural)

    def _foreign_ended(self, gone: list[Job], jobs: list[Job]) -> None:
        """Jobs of other processes that the store no longer has unfinished: those that ended
        count in the totals' rate (their last bytes) and jobs finished a second; an action
        asked of one (a cancel) is answered."""
        ids = {job.id for job in gone}
        stored = {j.id: j for j in jobs if j.id in ids} if ids else {}
        now = self._clock()
        for job in gone:
            end = stored.get(job.id)
            if end is not None and end.owner == self.own_engine:
                continue  # adopted by us: its meter and its end are our events' to count
            if job.dataset not in self.live:  # else the action is our job's, still running
                self.pending.pop(job.dataset, None)
            meter = self._meters.pop(job.id, None)
            if end is None or not end.status.finished:  # pruned, or its row shows another
                continue
            self._throughput.ended(end, now)
            start = meter.last_bytes if meter is not None else job.bytes_done
            self._throughput.moved(end.bytes_done - start)

    def ask(self, names: Iterable[str], action: str) -> None:
        """The user asked for `action` (cancel, pause) on these rows: they say so at once."""
        for name in names:
            if self.job_for(name) is not None:
                self.pending[name] = action

    def tick(self) -> None:
        """Once a second: record the total rate for the sparkline."""
        self.history.append(self._throughput.rate(self._clock()))

    # -- reading -----------------------------------------------------------------------
    def job_for(self, name: str) -> Job | None:
        """The job to show on a row: ours (running before waiting), else another process's."""
        ours = self.live.get(name)
        if ours:
            return max(ours.values(), key=lambda j: j.status == JobStatus.RUNNING)
        return self.foreign.get(name)

    def rate_of(self, job: Job | None) -> float | None:
        """The job's smoothed rate, None until it is known."""
        meter = self._meters.get(job.id) if job is not None else None
        return meter.known(self._clock()) if meter is not None else None

    def info(self, name: str, job: Job | None) -> str:
        """The row's info cell: a pending action, a retry, a pause, else the failure cause."""
        ours = self.live.get(name, {}).values()
        delete = next((j for j in ours if j is not job and pending_text(j, None)), None)
        pending = pending_text(job, self.pending.get(name)) or pending_text(delete, None)
        if pending:
            return pending
        if job is not None and job.status == JobStatus.RETRYING:
            return retry_text(job, self.max_attempts, self._wall_ms())
        if is_paused(job):
            return "paused: p resumes"
        if said := self.disk.text(name):
            return said
        ds = self.datasets[name]
        if job is None and name in self.interrupted and ds.status in ACTIVE:
            return INTERRUPTED
        return short_cause(ds.error) if ds.status == Status.ERROR else ""

    def row(self, name: str) -> RowView:
        job = self.job_for(name)
        return RowView(
            self.datasets[name], job, name in self.marked, self.rate_of(job), self.info(name, job)
        )

    def ticking(self) -> list[str]:
        """Rows whose cells change with time alone: a retry's countdown, a rate warming up.
        Only moving jobs are looked at: with 10,000 queued, the others are most of them."""
        return [j.dataset for j in self._moving.values() if j.dataset in self.datasets]

    def jobs_of(self, name: str) -> list[Job]:
        return [j for j in self.jobs if j.dataset == name]

    def log_jobs(self) -> LogJobs:
        """Every job, newest first, as a view that builds a line's job when asked."""
        unseen = sorted(self._unseen.values(), key=lambda j: j.created_ms, reverse=True)
        return LogJobs(self.jobs, self.live, unseen)

    @property
    def log_name_width(self) -> int:
        """The longest dataset name in the job log (its dataset column fits it)."""
        return max([self._stored_width, *(len(j.dataset) for j in self._unseen.values())])

    def own_jobs(self) -> list[Job]:
        return [j for ours in self.live.values() for j in ours.values()]

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
            return lambda d: (-self._size(d), d.name)
        if self.sort == "progress":
            return lambda d: (-shown_progress(d, self.job_for(d.name)), d.name)
        if self.sort == "rate":
            return lambda d: (-(self.rate_of(self.job_for(d.name)) or 0), d.name)
        return lambda d: d.name

    def _size(self, ds: Dataset) -> int:
        """The size a row shows: on disk, else expected, else what its job learned."""
        job = self.job_for(ds.name)
        return ds.size or ds.expected_size or (job.bytes_total if job else None) or 0

    def rows(self) -> list[RowView]:
        return [self.row(name) for name in self.datasets]

    def visible(self) -> list[str]:
        """The names of the rows to show, filtered and sorted."""
        key = self._sort_key()
        keys = {ds.name: key(ds) for ds in self.datasets.values() if self._matches(ds)}
        self._sort_keys = keys
        return sorted(keys, key=keys.__getitem__, reverse=self.reverse)

    def needs_resort(self, names: Iterable[str]) -> bool:
        """Whether any of these rows' sort keys moved since the last `visible()`."""
        if self.sort == "name":
            return False
        key = self._sort_key()
        return any(
            n in self._sort_keys and key(self.datasets[n]) != self._sort_keys[n]
            for n in names
            if n in self.datasets
        )

    def _resting_totals(self) -> tuple[dict[str, int], Sizes]:
        """Counts by state and the sizes of every job but our moving ones; computed again
        only when those jobs changed (at 10,000 queued, ~0.1 s a time)."""
        key = self._jobs_version
        if self._resting is None or self._resting[0] != key:
            count = dict.fromkeys(("running", "waiting", "retrying", "paused"), 0)
            sizes = Sizes()
            resting = (j for j in self.own_jobs() if j.id not in self._moving)
            # A job we adopted is still another process's in the last store read: count
            # it once, as ours (the row shows ours too).
            theirs = (j for n, j in self.foreign.items() if not self.live.get(n))
            for job in [*resting, *theirs]:
                paused = is_paused(job)
                count["paused" if paused else job.status.value] += 1
                sizes.add(job.bytes_done, self._job_size(job), active=not paused)
            self._resting = (key, (count, sizes))
        return self._resting[1]

    def _job_size(self, job: Job) -> int | None:
        if job.bytes_total or job.dataset not in self.datasets:
            return job.bytes_total
        ds = self.datasets[job.dataset]
        return ds.expected_size or ds.size

    def totals(self, shown: int) -> Totals:
        resting, at_rest = self._resting_totals()
        count = dict(resting)
        sizes = Sizes(at_rest.done, at_rest.total, at_rest.unknown)
        for job in self._moving.values():
            count[job.status.value] += 1
            sizes.add(job.bytes_done, self._job_size(job))
        now = self._clock()
        left = count["running"] + count["waiting"] + count["retrying"]
        self._throughput.active(bool(left), now)
        rate = self._throughput.rate(now)
        if sizes.unknown:  # bytes left are not known: jobs left at the rate they finish
            eta_s = eta(left, self._throughput.jobs_rate(now))
        else:
            eta_s = eta(sizes.total - sizes.done, rate) if sizes.total else None
        missing, lost = self.disk.missing()
        return Totals(
            datasets=len(self.datasets),
            downloaded=self._downloaded - missing,
            failed=self._failed,
            bytes_on_disk=self._on_disk - lost,
            missing=missing,
            downloading=count["running"],
            queued=count["waiting"],
            retrying=count["retrying"],
            paused=count["paused"],
            bytes_done=sizes.done,
            bytes_total=sizes.total,
            sizes_unknown=sizes.unknown,
            rate=rate,
            eta_s=eta_s,
            shown=shown,
            marked=len(self.marked),
            history=tuple(self.history),
        )
