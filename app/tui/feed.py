"""How engine events and store changes reach the dashboard's event loop.

Engine listeners run on the engine's thread, so they only hand data over: progress goes into
a dict the UI drains a few times a second (many ticks collapse into one), everything else is
posted as a message at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from textual.message import Message

from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job
from dsm.domain.model import Dataset
from dsm.repository import Repository

COALESCED = (EventKind.PROGRESS, EventKind.QUEUED)


class JobChanged(Message):
    """A job was queued, started, retried or finished, or its dataset's row changed."""

    def __init__(self, event: JobEvent) -> None:
        super().__init__()
        self.event = event


class StoreRead(Message):
    """A fresh read of the store, after it changed on disk."""

    def __init__(self, datasets: list[Dataset], jobs: list[Job]) -> None:
        super().__init__()
        self.datasets = datasets
        self.jobs = jobs


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


class DatasetReader:
    """Reads every dataset row, building a Dataset only for a row whose stored document changed
    since the last read; the others are the very objects read before. While our own engine
    downloads it rewrites the store every second, and rebuilding 10,000 rows each time cost
    ~15 % of a core."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._known: dict[str, tuple[dict[str, Any], Dataset]] = {}

    def read(self) -> list[Dataset]:
        known: dict[str, tuple[dict[str, Any], Dataset]] = {}
        for raw in self._repo.dataset_documents():
            seen = self._known.get(raw.get("name", ""))
            known[raw.get("name", "")] = (
                seen
                if seen is not None and seen[0] == raw
                else (raw, self._repo.parse_dataset(raw))
            )
        self._known = known
        return [ds for _, ds in known.values()]
