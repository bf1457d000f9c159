"""How engine events and store changes reach the dashboard's event loop.

Engine listeners run on the engine's thread, so they only hand data over: progress goes into
a dict the UI drains a few times a second (many ticks collapse into one), everything else is
posted as a message at once.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from textual.message import Message

from dsm.catalog.paths import Resolver
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job
from dsm.domain.model import Dataset
from dsm.engine.liveness import copy_seen, owner_running
from dsm.repository import Repository

T = TypeVar("T")
FREEZE_ROWS = 1000  # rows (datasets and jobs) that came or went since the last freeze
PROBE_ROWS = 500  # rows whose copy a store poll looks at in turn: 10,000 every 10 s
COALESCED = (EventKind.PROGRESS, EventKind.QUEUED)


class JobChanged(Message):
    """A job was queued, started, retried or finished, or its dataset's row changed."""

    def __init__(self, event: JobEvent) -> None:
        super().__init__()
        self.event = event


class StoreRead(Message):
    """A fresh read of the store, after it changed on disk, or after an owner of other
    processes' unfinished jobs died (`dead`: their owners)."""

    def __init__(
        self, datasets: list[Dataset], jobs: list[Job], dead: frozenset[str] = frozenset()
    ) -> None:
        super().__init__()
        self.datasets = datasets
        self.jobs = jobs
        self.dead = dead


# A row whose copy on disk is not as recorded: the row as it was seen, what the disk says.
Seen = dict[str, tuple[Dataset, str]]


class CopiesSeen(Message):
    """The rows whose recorded copy is no longer on disk as recorded (liveness.copy_seen)."""

    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen


class CopyProbe:
    """Which recorded copies were removed or changed by hand: the store cannot say (dsm
    records its own changes), so the dashboard looks, as `dsm list` does (liveness.copy_seen).
    Each store poll looks at the rows read anew since the last and PROBE_ROWS others in turn:
    a change shows within seconds at 10,000 datasets, for a stat a row (in the poll's
    thread, never the UI's)."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._paths = Resolver(home)  # anew each round: a symlink may change meanwhile
        self._looked: dict[str, Dataset] = {}  # name -> the row object looked at last
        self._rows: list[Dataset] | None = None  # the read they came from
        self._turn = 0
        self.seen: Seen = {}

    def look(self, rows: list[Dataset]) -> bool:
        """Look again at some of `rows` (the latest read); whether `seen` changed."""
        if self._turn >= len(rows):
            self._turn, self._paths = 0, Resolver(self._home)
        turn = rows[self._turn : self._turn + PROBE_ROWS]
        self._turn += PROBE_ROWS
        fresh: list[Dataset] = []
        seen = self.seen
        if rows is not self._rows:  # a new read (most polls read nothing: O(n) saved)
            self._rows = rows
            fresh = [ds for ds in rows if self._looked.get(ds.name) is not ds]
            self._looked = {ds.name: ds for ds in rows}  # what is looked at now, or was before
            seen = {n: v for n, v in seen.items() if n in self._looked}
        seen = dict(seen)
        for ds in (*fresh, *turn):
            if said := copy_seen(self._paths, ds):
                seen[ds.name] = (ds, said)
            else:
                seen.pop(ds.name, None)
        changed = seen.keys() != self.seen.keys() or any(
            v[0] is not self.seen[n][0] or v[1] != self.seen[n][1] for n, v in seen.items()
        )
        self.seen = seen
        return changed


class EngineFeed:
    """The engine listener: coalesces progress ticks and requeues (10,000 jobs suspended or
    queued at once), posts the rest."""

    def __init__(self, post: Callable[[Message], object]) -> None:
        self._post = post
        self._lock = threading.Lock()
        self._progress: dict[str, Job] = {}  # job id -> latest progress snapshot

    def __call__(self, event: JobEvent) -> None:
        job = event.job
        with self._lock:
            if event.kind in COALESCED and event.dataset is None:
                self._progress[job.id] = job
                return
            # A tick still waiting here is older than this event: drained after it, it would
            # redraw a finished or paused job as running.
            self._progress.pop(job.id, None)
        self._post(JobChanged(event))

    @property
    def pending(self) -> bool:
        """Progress is waiting for the next drain."""
        return bool(self._progress)

    def drain(self) -> list[Job]:
        """The latest progress of every job that moved since the last drain."""
        with self._lock:
            jobs, self._progress = list(self._progress.values()), {}
        return jobs


class RowReader(Generic[T]):
    """Reads every stored row, building an object only for a row whose stored document changed
    since the last read; the others are the very objects read before. While our own engine
    downloads it rewrites the store every second, and rebuilding 10,000 datasets each time
    cost ~15 % of a core; 10,000 jobs took ~0.5 s a read."""

    def __init__(
        self,
        documents: Callable[[], list[dict[str, Any]]],
        parse: Callable[[dict[str, Any]], T],
        key: str,
    ) -> None:
        self._documents, self._parse, self._key = documents, parse, key
        self._known: dict[str, tuple[dict[str, Any], T]] = {}

    def read(self) -> list[T]:
        known: dict[str, tuple[dict[str, Any], T]] = {}
        for raw in self._documents():
            key = str(raw.get(self._key, ""))
            seen = self._known.get(key)
            known[key] = seen if seen is not None and seen[0] == raw else (raw, self._parse(raw))
        self._known = known
        return [row for _, row in known.values()]


class DatasetReader(RowReader[Dataset]):
    def __init__(self, repo: Repository) -> None:
        super().__init__(repo.dataset_documents, repo.parse_dataset, "name")


class JobReader(RowReader[Job]):
    """Every job, oldest first (as `Repository.jobs`)."""

    def __init__(self, repo: Repository) -> None:
        super().__init__(repo.job_documents, repo.parse_job, "id")

    def read(self) -> list[Job]:
        return sorted(super().read(), key=lambda j: j.created_ms)


class StoreWatch:
    """The dashboard's store poll: a read whenever any process rewrote the store (a stat a
    poll otherwise), and again when an engine owning unfinished jobs of another process has
    died since (a --run-job killed: it writes nothing more, and its rows said `downloading`
    at its last rate for as long as the dashboard ran). A probe of each such owner's lock a
    poll: there are few."""

    def __init__(self, repo: Repository, lock_dir: Path, own_engine: str) -> None:
        self._repo, self._lock_dir, self._own = repo, lock_dir, own_engine
        self._datasets, self._jobs = DatasetReader(repo), JobReader(repo)
        self._identity: object = None
        self._read: tuple[list[Dataset], list[Job]] | None = None
        self._dead: frozenset[str] = frozenset()

    @property
    def datasets(self) -> list[Dataset]:
        """The rows of the latest read (none before the first)."""
        return self._read[0] if self._read is not None else []

    def poll(self) -> StoreRead | None:
        """What changed since the last poll, or None. StoreError: the store cannot be read."""
        identity = self._repo.identity
        fresh = self._read is None or identity != self._identity
        if fresh:
            self._identity = identity
            self._read = self._datasets.read(), self._jobs.read()
        assert self._read is not None
        datasets, jobs = self._read
        owners = {j.owner for j in jobs if not j.status.finished and j.owner != self._own}
        dead = frozenset(o for o in owners if o and not owner_running(self._lock_dir, o))
        if not fresh and dead == self._dead:
            return None
        self._dead = dead
        return StoreRead(datasets, jobs, dead)


class HeapFreezer:
    """Takes the long-lived rows out of the cyclic garbage collector's scans (`gc.freeze`)
    once they are read and drawn. At 10,000 datasets and 10,000 jobs a full collection
    walked ~0.5 M objects (rows, their cells) and held the GIL ~0.3 s every few seconds: a
    key or the job log froze that long. Frozen only at start and after a change of a
    thousand rows or more: anything frozen that turns into cyclic garbage is never
    collected, and the rows are not cyclic."""

    def __init__(self) -> None:
        self._rows = 0

    def after_read(self, rows: int) -> None:
        """Freeze if the store now holds FREEZE_ROWS rows more or fewer than at the last."""
        if abs(rows - self._rows) >= FREEZE_ROWS:
            self._rows = rows
            gc.freeze()
