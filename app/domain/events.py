"""What the engine tells its listeners (the dashboard, the headless printer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from dsm.domain.display import eta
from dsm.domain.jobs import Job
from dsm.domain.model import Dataset


class EventKind(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    FINISHED = "finished"


@dataclass(frozen=True)
class JobEvent:
    """A snapshot: the job and, when it changed, its dataset. Listeners must not block."""

    kind: EventKind
    job: Job
    dataset: Dataset | None = None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the job's rate; None when unknown or absurd (a near-stalled stream)."""
        job = self.job
        return eta(None if job.bytes_total is None else job.bytes_total - job.bytes_done, job.rate)


Listener = Callable[[JobEvent], None]
