"""The wire under httpx while a response's head (status line and headers) is awaited.

httpx's read timeout is per read: a server that sends its head one byte a second never
trips it, and the low-speed limit only sees the body, so such a server held a job (and a
stop: SIGTERM, a cancel) for as long as it liked, the socket not yet handed to
`Control.watching`. Every transport dsm builds reads through `WatchedStream`: while a
thread awaits a head (`awaiting_head`), its reads wake every POLL_S to let a stop through,
and the head must be whole within the stall timeout of its first read. Afterwards (the body,
or another thread) a read is the plain stream's.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore

from dsm.errors import Stalled

POLL_S = 0.25  # how soon a stop reaches a thread waiting for a head


@dataclass
class HeadWatch:
    """The head of one request: `seconds` to arrive from its first read; `check` raises to
    stop the wait (Control.check), if given."""

    seconds: float
    url: str
    check: Callable[[], None] = lambda: None
    deadline: float = field(default=0.0, init=False)

    def read(self, stream: httpcore.NetworkStream, max_bytes: int, timeout: float | None) -> bytes:
        now = time.monotonic()
        self.deadline = self.deadline or now + self.seconds
        stall_at = None if timeout is None else now + timeout
        while True:
            self.check()
            left = min(self.deadline, stall_at or self.deadline) - time.monotonic()
            if left <= 0:
                break
            try:
                return stream.read(max_bytes, min(left, POLL_S))
            except httpcore.ReadTimeout:
                continue
        if stall_at is not None and stall_at < self.deadline:
            raise httpcore.ReadTimeout("timed out")  # no byte for the stall timeout
        raise Stalled(
            f"stalled: the response head did not arrive whole within {self.seconds:g} s "
            f"from {self.url}"
        )


_awaiting = threading.local()  # .watch: the HeadWatch of this thread's request, or None


@contextlib.contextmanager
def awaiting_head(watch: HeadWatch) -> Iterator[None]:
    _awaiting.watch = watch
    try:
        yield
    finally:
        _awaiting.watch = None


class WatchedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch: HeadWatch | None = getattr(_awaiting, "watch", None)
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
