"""The /events hub: ids, replay after Last-Event-ID, the snapshot when too much was missed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsm.api.events import RING_SIZE, EventHub
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.headless import describe

pytestmark = pytest.mark.anyio


async def snapshot() -> dict[str, Any]:
    return {"datasets": [], "jobs": []}


JOB = Job(JobType.DOWNLOAD, "a", {"dataset": "a"})


def event(kind: EventKind = EventKind.QUEUED) -> JobEvent:
    return JobEvent(kind, JOB)


async def first_events(hub: EventHub, last_id: str | None, n: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    stream = hub.stream(last_id)
    async for chunk in stream:
        text = chunk.decode()
        if text.startswith("id:"):
            lines = dict(line.split(": ", 1) for line in text.strip().split("\n"))
            out.append((int(lines["id"]), lines["event"]))
            json.loads(lines["data"])
        if len(out) == n:
            break
    await stream.aclose()
    return out


async def test_replay_after_an_id_and_a_snapshot_once_it_left_the_ring() -> None:
    hub = EventHub(snapshot)
    hub.publish(event())
    first = hub.last_id
    for _ in range(3):
        hub.publish(event(EventKind.STARTED))
    assert await first_events(hub, str(first), 3) == [(first + i, "started") for i in range(1, 4)]
    for _ in range(RING_SIZE):
        hub.publish(event(EventKind.FINISHED))
    assert await first_events(hub, str(first), 1) == [(hub.last_id, "snapshot")]
    assert await first_events(hub, str(hub.last_id - 1), 1) == [(hub.last_id, "finished")]


async def test_progress_is_thinned_and_not_kept() -> None:
    hub = EventHub(snapshot)
    hub.publish(event())
    start = hub.last_id
    for _ in range(10):
        hub.publish(event(EventKind.PROGRESS))
    assert hub.last_id == start + 1  # one progress event within the interval
    hub.publish(event(EventKind.FINISHED))
    assert await first_events(hub, str(start), 1) == [(hub.last_id, "finished")]


@pytest.mark.parametrize(
    ("done", "rate", "eta", "line"),
    [
        (0, 0.0, None, "download a: running 0.0% of 1.0 MiB"),
        (524_288, 262_144.0, 2.0, "download a: running  50.0% of 1.0 MiB at 256 KiB/s, eta 2s"),
        (0, 0.001, None, "download a: running   0.0% of 1.0 MiB at 0 B/s"),  # near-stalled
    ],
)
def test_an_eta_is_given_only_when_it_means_something(
    done: int, rate: float, eta: float | None, line: str
) -> None:
    job = Job(JobType.DOWNLOAD, "a", {}, status=JobStatus.RUNNING, bytes_total=1 << 20)
    job.bytes_done, job.rate, job.progress = done, rate, 100 * done / (1 << 20)
    event = JobEvent(EventKind.PROGRESS, job)
    assert event.eta_s == eta
    assert describe(job, event.eta_s).split() == line.split()
