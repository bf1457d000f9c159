"""How engine events and store changes reach the dashboard's event loop.

Engine listeners run on the engine's thread, so they only hand data over: progress goes into
a dict the UI drains a few times a second (many ticks collapse into one), everything else is
posted as a message at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from textual.message import Message

from app.events import EventKind, JobEvent
from app.jobs import Job
from app.model import Dataset


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
    """The engine listener: coalesces progress ticks, posts the rest."""

    def __init__(self, post: Callable[[Message], object]) -> None:
        self._post = post
        self._lock = threading.Lock()
        self._progress: dict[str, Job] = {}  # job id -> latest progress snapshot

    def __call__(self, event: JobEvent) -> None:
        job = event.job
        with self._lock:
            if event.kind == EventKind.PROGRESS and event.dataset is None:
                self._progress[job.id] = job
                return
            if job.status.finished:
                # A tick still waiting here would redraw a finished job as running.
                self._progress.pop(job.id, None)
        self._post(JobChanged(event))

    def drain(self) -> list[Job]:
        """The latest progress of every job that moved since the last drain."""
        with self._lock:
            jobs, self._progress = list(self._progress.values()), {}
        return jobs
