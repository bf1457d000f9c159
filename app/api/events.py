"""`GET /events`: the engine's job and dataset events as Server-Sent Events.

Every event has an `id:`, increasing for the life of the process and beyond (the counter
starts at the start time in microseconds, so a later server's ids are larger). State
changes are kept in a ring of the last RING_SIZE; a client reconnecting with Last-Event-ID
gets those it missed (all but `progress`). An id the ring no longer covers, or one from
another server run, gets a `snapshot` event first: the datasets and unfinished jobs as they
are now. Progress is thinned to one event per job per PROGRESS_INTERVAL_S and not kept for
replay: the next one says it all.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from dsm.domain.events import EventKind, JobEvent
from dsm.domain.redact import redact_doc
from dsm.domain.terminal import json_text

RING_SIZE = 1000
PROGRESS_INTERVAL_S = 0.25
CLIENT_BUFFER = 256  # events a slow client may lag behind before it is dropped
KEEPALIVE_S = 15.0
RETRY_MS = 1000
SNAPSHOT = "snapshot"
DATASET = "dataset"
EVENT_NAMES = (*(k.value for k in EventKind), DATASET, SNAPSHOT)


@dataclass(frozen=True)
class Sse:
    id: int
    event: str
    data: str

    def encode(self) -> bytes:
        return f"id: {self.id}\nevent: {self.event}\ndata: {self.data}\n\n".encode()


class EventHub:
    """Fans the engine's events out to the /events streams. Runs on the event loop."""

    def __init__(self, snapshot: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._snapshot = snapshot
        self._next = self._first = time.time_ns() // 1000
        self._ring: deque[Sse] = deque(maxlen=RING_SIZE)
        self._evicted = 0  # the newest state change that left the ring
        self._clients: set[MemoryObjectSendStream[Sse]] = set()
        self._progress_at: dict[str, float] = {}
        self._closed = False

    @property
    def last_id(self) -> int:
        return self._next - 1

    def _new(self, event: str, data: dict[str, Any]) -> Sse:
        sse = Sse(self._next, event, json_text(redact_doc(data)))
        self._next += 1
        return sse

    def publish(self, event: JobEvent) -> None:
        """The engine's listener: must not block."""
        job = event.job
        progress_only = event.kind == EventKind.PROGRESS and event.dataset is None
        now = time.monotonic()
        if progress_only:
            if now - self._progress_at.get(job.id, -PROGRESS_INTERVAL_S) < PROGRESS_INTERVAL_S:
                return
            self._progress_at[job.id] = now
        elif event.kind in (EventKind.FINISHED, EventKind.QUEUED):
            self._progress_at.pop(job.id, None)
        # A PROGRESS with a dataset is the dataset's state changing (downloading, verifying).
        kind = DATASET if event.kind == EventKind.PROGRESS and not progress_only else event.kind
        data = {
            "kind": kind,
            "job": job.to_dict(),
            "dataset": event.dataset.to_dict() if event.dataset else None,
            "eta_s": event.eta_s,
        }
        sse = self._new(kind, data)
        if not progress_only:
            if len(self._ring) == RING_SIZE:
                self._evicted = self._ring[0].id
            self._ring.append(sse)
        for client in list(self._clients):
            try:
                client.send_nowait(sse)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                # Too slow (or gone): dropped; a client reconnects with Last-Event-ID.
                client.close()
                self._clients.discard(client)

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self._closed = True
        for client in self._clients:
            client.close()
        self._clients.clear()

    def _missed(self, last_event_id: str | None) -> list[Sse] | None:
        """The kept events after the client's last one; None when a snapshot is needed."""
        if last_event_id is None:
            return []
        text = last_event_id.strip()
        seen = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else -1
        if seen < max(self._evicted, self._first - 1) or seen > self.last_id:
            return None
        return [e for e in self._ring if e.id > seen]

    async def stream(self, last_event_id: str | None) -> AsyncGenerator[bytes, None]:
        if self._closed:
            return
        send, recv = anyio.create_memory_object_stream[Sse](CLIENT_BUFFER)
        self._clients.add(send)  # before the backlog is taken: nothing falls in between
        missed = self._missed(last_event_id)
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            if missed is None:
                at = self.last_id
                missed = [Sse(at, SNAPSHOT, json_text(redact_doc(await self._snapshot())))]
            for old in missed:
                yield old.encode()
            async with recv:
                while True:
                    sse: Sse | None = None
                    with anyio.move_on_after(KEEPALIVE_S):
                        sse = await recv.receive()
                    yield sse.encode() if sse is not None else b": keepalive\n\n"
        except anyio.EndOfStream:  # dropped as too slow, or the server is stopping
            return
        finally:
            self._clients.discard(send)
            send.close()
