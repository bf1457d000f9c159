"""The /events hub: ids, replay after Last-Event-ID, the snapshot when too much was missed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dsm.api.events import RING_SIZE, EventHub
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobType

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
