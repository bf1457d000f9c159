"""`GET /events` against the live server, read with httpx streaming as a client would."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.system.apiserver import ApiServer, post_job

READ_TIMEOUT = 30.0


@dataclass
class Event:
    id: int
    event: str
    data: dict[str, Any]


def parse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events from text lines; comments and the retry field are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


class Listener:
    """A /events stream read by a thread into a queue, so the test can wait with a deadline."""

    def __init__(self, api: ApiServer, last_event_id: str | None = None) -> None:
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.connected = threading.Event()
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        self.client = httpx.Client(base_url=api.url, timeout=httpx.Timeout(10, read=60))
        self._thread = threading.Thread(target=self._read, args=(headers,), daemon=True)
        self._thread.start()
        assert self.connected.wait(READ_TIMEOUT), "no answer from /events"

    def _read(self, headers: dict[str, str]) -> None:
        try:
            with self.client.stream("GET", "/events", headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                self.connected.set()
                for event in parse(response.iter_lines()):
                    self.events.put(event)
        except httpx.HTTPError:
            pass  # closed by the test or the server
        finally:
            self.connected.set()
            self.events.put(None)

    def until(self, done: Any) -> list[Event]:
        """Events until one satisfies `done` (included)."""
        seen: list[Event] = []
        while True:
            event = self.events.get(timeout=READ_TIMEOUT)
            assert event is not None, f"the stream ended; got {seen}"
            seen.append(event)
            if done(event):
                return seen

    def close(self) -> None:
        self.client.close()


def finished(job_id: str) -> Any:
    return lambda e: e.event == "finished" and e.data["job"]["id"] == job_id


def test_events_of_a_job_and_a_reconnect_that_missed_some(api: ApiServer) -> None:
    first = Listener(api)
    try:
        job = post_job(api, "humaneval")
        events = first.until(finished(job["id"]))
    finally:
        first.close()
    kinds = [e.event for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "finished" and "started" in kinds
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[-1].data["job"]["status"] == "completed"
    statuses = [e.data["dataset"]["status"] for e in events if e.event == "dataset"]
    assert "downloading" in statuses and statuses[-1] == "downloaded"
    assert all(e.data["dataset"] is None for e in events if e.event == "progress")
    # Reconnect as if the connection broke after the first event: the state changes since
    # then come first, the same ids and kinds (progress is not replayed).
    again = Listener(api, last_event_id=str(ids[0]))
    try:
        second = post_job(api, "mbpp")
        replayed = again.until(finished(second["id"]))
    finally:
        again.close()
    changes = [e for e in events[1:] if e.event != "progress"]
    assert [(e.id, e.event) for e in replayed[: len(changes)]] == [(e.id, e.event) for e in changes]
    assert replayed[len(changes)].data["job"]["id"] == second["id"]


def test_an_id_too_old_gets_a_snapshot_first(api: ApiServer) -> None:
    job = post_job(api, "slow")
    api.wait_job(job["id"], "running")
    for stale in ("1", "not-a-number"):
        listener = Listener(api, last_event_id=stale)
        try:
            (snapshot,) = listener.until(lambda e: True)
        finally:
            listener.close()
        assert snapshot.event == "snapshot"
        assert {d["name"] for d in snapshot.data["datasets"]} == {"humaneval", "mbpp", "slow"}
        assert [j["id"] for j in snapshot.data["jobs"]] == [job["id"]]


def test_progress_is_thinned_and_a_cancel_ends_in_finished(api: ApiServer) -> None:
    listener = Listener(api)
    try:
        job = post_job(api, "slow")
        progress = listener.until(lambda e: e.event == "progress")
        assert progress[-1].data["job"]["bytes_done"] >= 0
        assert api.cancel(job["id"]).status_code == 202
        events = listener.until(finished(job["id"]))
    finally:
        listener.close()
    assert events[-1].data["job"]["status"] == "canceled"


def test_a_stop_ends_open_streams(api: ApiServer) -> None:
    listener = Listener(api)
    assert api.stop() == 130  # SIGINT: graceful, the stream did not hold it up
    while listener.events.get(timeout=READ_TIMEOUT) is not None:
        pass
    listener.close()
