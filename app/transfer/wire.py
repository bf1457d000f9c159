"""The wire under httpx while a response's head, or the next bytes of a body, are awaited.

httpx's read timeout is per read: a server that sends its head one byte a second never
trips it, nor one that sends a chunked body's framing (a chunk extension) a byte at a time
and no data, which the low-speed limit never sees; such a server held a job (and a stop:
SIGTERM, a cancel, the socket not yet handed to `Control.watching`) as long as it liked.
Every transport dsm builds reads through `WatchedStream`: while a thread awaits a head or
a body's next bytes (`awaiting`), its reads wake every POLL_S to let a stop through, and
what is awaited must come within the stall timeout of the first read for it. Otherwise (a
body read from the socket itself, another client's thread) a read is the plain stream's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore

from dsm.domain.redact import public_url
from dsm.errors import Stalled

POLL_S = 0.25  # how soon a stop reaches a thread waiting for a head
HEAD = "the response head"
BODY = "the body's next bytes"


@dataclass
class Awaited:
    """`what` (HEAD, BODY) of the response from `url`: `seconds` to arrive from its first
    read (`deadline`: 0 until then); `check` raises to stop the wait (Control.check)."""

    seconds: float
    url: str
    what: str = HEAD
    check: Callable[[], None] = lambda: None
    deadline: float = field(default=0.0, init=False)

    def read(self, stream: httpcore.NetworkStream, max_bytes: int, timeout: float | None) -> bytes:
        now = time.monotonic()
        first = not self.deadline  # nothing read for it yet
        self.deadline = self.deadline or now + self.seconds
        stall_at = self.deadline if timeout is None else min(self.deadline, now + timeout)
        while (left := stall_at - time.monotonic()) > 0:
            self.check()
            try:
                return stream.read(max_bytes, min(left, POLL_S))
            except httpcore.ReadTimeout:
                continue
        if first or stall_at < self.deadline:
            raise httpcore.ReadTimeout("timed out")  # no byte at all for the stall timeout
        raise Stalled(
            f"stalled: {self.what} did not arrive whole within {self.seconds:g} s from "
            f"{public_url(self.url)} (the server sent a byte now and then)"
        )


_awaiting = threading.local()  # .watch: what this thread's reads wait for, or None


@contextlib.contextmanager
def awaiting(watch: Awaited) -> Iterator[None]:
    _awaiting.watch = watch
    try:
        yield
    finally:
        _awaiting.watch = None


class WatchedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch: Awaited | None = getattr(_awaiting, "watch", None)
        if watch is None:
            return self._stream.read(max_bytes, timeout)
        return watch.read(self._stream, max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return WatchedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)  # the socket: read directly for the body


class WatchedBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return WatchedStream(
            self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return WatchedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def watch_heads(pool: Any) -> None:
    """Make `pool` (an httpx transport's httpcore pool, direct or through a proxy) connect
    through WatchedBackend; before its first request."""
    pool._network_backend = WatchedBackend(pool._network_backend)
