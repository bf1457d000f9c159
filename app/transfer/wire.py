"""The wire under httpx while a response's head, or the next bytes of a body, are awaited.

httpx's read timeout is per read: a server that sends its head one byte a second never
trips it, nor one that sends a chunked body's framing (a chunk extension) a byte at a time
and no data, which the low-speed limit never sees; such a server held a job (and a stop:
SIGTERM, a cancel, the socket not yet handed to `Control.watching`) as long as it liked.
Every transport dsm builds reads through `WatchedStream`: while a thread awaits a head or
a body's next bytes (`awaiting`), its reads wake every POLL_S to let a stop through, and
what is awaited must come within the stall timeout of the first read for it. Otherwise (a
body read from the socket itself, another client's thread) a read is the plain stream's.

The connection before the head waits the same way: a connect that hangs (a SYN dropped by a
firewall, a full backlog) and a TLS handshake that a server never answers held a stop for
the whole connect timeout (30 s) in the system's connect and OpenSSL's handshake. While a
head is awaited, `WatchedBackend` connects and shakes hands itself, waking every POLL_S.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpcore
from httpcore._backends.sync import SyncStream  # the stream httpcore's own backend returns

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
T = TypeVar("T")


def _watch() -> Awaited | None:
    return getattr(_awaiting, "watch", None)


def _polled(step: Callable[[float], T], timeout: float | None, check: Callable[[], None]) -> T:
    """`step(wait)` again until it returns, `check` (a stop) before each: a step raises
    TimeoutError when nothing happened within `wait` (at most POLL_S); socket.timeout (the
    connect timeout, as httpcore says it) once `timeout` has passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        check()
        left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if left <= 0:
            raise TimeoutError("timed out")
        try:
            return step(left)
        except TimeoutError:
            continue


def _connect(address: tuple[str, int], timeout: float | None, source: str | None) -> socket.socket:
    """socket.create_connection (each address in turn), polled so that a stop gets through."""
    check = watch.check if (watch := _watch()) else (lambda: None)
    failure: OSError = OSError(f"no address for {address[0]}")
    for family, kind, proto, _, where in socket.getaddrinfo(*address, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if source is not None:
                sock.bind((source, 0))
            _connect_to(sock, where, timeout, check)
            return sock
        except OSError as exc:  # the connect timeout included: the next address, as the stdlib
            sock.close()
            failure = exc
        except BaseException:  # a stop
            sock.close()
            raise
    raise failure


def _connect_to(
    sock: socket.socket, where: Any, timeout: float | None, check: Callable[[], None]
) -> None:
    sock.setblocking(False)
    if (err := sock.connect_ex(where)) not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    _polled(lambda wait: _connected(sock, poller, wait), timeout, check)
    sock.setblocking(True)


def _connected(sock: socket.socket, poller: select.poll, wait: float) -> None:
    if not poller.poll(wait * 1000):
        raise TimeoutError
    if err := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        raise OSError(err, os.strerror(err))


def _handshake(sock: ssl.SSLSocket, wait: float) -> None:
    sock.settimeout(wait)
    sock.do_handshake()  # after a timeout, called again it carries on where it was


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
        watch = _watch()
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
        sock = self._stream.get_extra_info("socket")
        watch = _watch()
        if (
            watch is None
            or type(sock) is not socket.socket
            or not isinstance(self._stream, SyncStream)
        ):  # no head awaited, another backend, or TLS inside TLS (an https proxy)
            return WatchedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))
        try:
            tls = ssl_context.wrap_socket(
                sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except OSError as exc:  # as httpcore's start_tls maps it (raw, it escaped httpx)
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            sock.close()
            raise
        try:  # `tls` holds the descriptor now (`sock` is detached): it is the one to close
            _polled(lambda wait: _handshake(tls, wait), timeout, watch.check)
        except TimeoutError as exc:
            tls.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            tls.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:  # a stop
            tls.close()
            raise
        return WatchedStream(SyncStream(tls))

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
        if _watch() is None or type(self._backend) is not httpcore.SyncBackend:
            return WatchedStream(
                self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
            )
        try:
            sock = _connect((host, port), timeout, local_address)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        for option in [*(socket_options or ()), (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]:
            sock.setsockopt(*option)
        return WatchedStream(SyncStream(sock))

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
