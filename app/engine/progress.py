"""Progress of one transfer as the engine reports it: throttled, with a smoothed rate."""

from __future__ import annotations

import time
from collections.abc import Callable

from dsm.domain.jobs import Job
from dsm.transfer.single import ProgressFn

PROGRESS_EVENT_INTERVAL = 0.1  # listeners hear progress at most 10 times a second


def progress_meter(job: Job, ticked: Callable[[Job], None]) -> ProgressFn:
    """A transfer's progress callback: updates `job` and calls `ticked(job)` at most every
    PROGRESS_EVENT_INTERVAL (and at the end); the rate is an exponential moving average."""
    last = {"t": time.monotonic(), "bytes": -1}

    def on_progress(done: int, total: int | None) -> None:
        job.bytes_done, job.bytes_total = done, total
        job.progress = 100.0 * done / total if total else 0.0
        now = time.monotonic()
        if last["bytes"] < 0:
            last["t"], last["bytes"] = now, done
            return
        elapsed = now - last["t"]
        if elapsed < PROGRESS_EVENT_INTERVAL and done != total:
            return
        instant = (done - last["bytes"]) / elapsed if elapsed > 0 else 0.0
        job.rate = instant if job.rate == 0 else 0.3 * instant + 0.7 * job.rate
        last["t"], last["bytes"] = now, done
        ticked(job)

    return on_progress
