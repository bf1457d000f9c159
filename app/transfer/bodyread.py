"""A response body read into the caller's preallocated buffers.

httpx still sends the request, follows redirects, speaks to proxies and does TLS. For the body
of a large plain response (HTTP/1.x, a Content-Length, no Transfer-Encoding or
Content-Encoding) the bytes are then taken from the connection's socket with `recv_into`
straight into the caller's buffer: h11's parsing and a new bytes object per 64 KiB bound the
sync stream at ~744 MiB/s on the 2-core development machine, where `recv_into` reads
~2.4 GB/s (bench/RESULTS.md). Anything else is read with `iter_raw` and copied into the
buffer, as before.

How the switch stays consistent with httpcore: the first chunk is taken from `iter_raw`. h11
hands out everything it has buffered of a Content-Length body in one Data event, so after that
chunk every remaining byte of the body is still in the socket. The response is never iterated
again, so h11 never sees the rest: closing the response then closes the connection (h11 is not
at the end of the message), and a half-read connection is never pooled. Only bodies of at
least DIRECT_MIN bytes take this path, so small files keep their pooled connections.

Every guarantee of the chunked path holds: exactly Content-Length bytes or an error (a close
before the end is httpx's RemoteProtocolError, bytes after the end are refused), the client's
read timeout on every read (httpx's ReadTimeout), the low-speed floor, and a stop that shuts
the socket (Control.watching) ends a blocked read at once.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from dsm.domain.redact import public_url
from dsm.errors import BadResponse, Stalled
from dsm.transfer.http import Policy, content_coding
from dsm.transfer.wire import BODY, Awaited, awaiting

DIRECT_MIN = 4 << 20  # smaller bodies keep the pooled connection: a new one costs a round trip


class SpeedFloor:
    """curl's --speed-limit/--speed-time: a body slower than `low_speed_limit` bytes/s on
    average over a `low_speed_time` window is Stalled (a read that gets nothing at all ends
    at the stall timeout instead)."""

    def __init__(self, policy: Policy, url: str) -> None:
        self.floor, self.window, self.url = policy.low_speed_limit, policy.low_speed_time, url
        self.since, self.got = time.monotonic(), 0

    def count(self, n: int) -> None:
        if not self.floor:
            return
        self.got += n
        now = time.monotonic()
        if now - self.since >= self.window:
            if self.got < self.floor * (now - self.since):
                raise Stalled(
                    f"too slow: {self.got / (now - self.since):.0f} bytes/s for "
                    f"{now - self.since:.0f} s, below the low-speed limit of {self.floor} "
                    f"bytes/s, from {public_url(self.url)}"
                )
            self.since, self.got = now, 0


def direct_socket(resp: httpx.Response) -> socket.socket | None:
    """The socket the rest of `resp`'s body can be read from as is, or None when only
    httpx can read it (chunked, compressed, HTTP/2, TLS inside TLS, no socket, small)."""
    headers = resp.headers
    if resp.http_version not in ("HTTP/1.1", "HTTP/1.0") or "transfer-encoding" in headers:
        return None
    if content_coding(headers) is not None:
        return None
    length = headers.get_list("content-length")
    if len(length) != 1 or not length[0].isdigit() or int(length[0]) < DIRECT_MIN:
        return None
    stream = resp.extensions.get("network_stream")
    if stream is None:
        return None
    sock, tls = stream.get_extra_info("socket"), stream.get_extra_info("ssl_object")
    if not isinstance(sock, socket.socket):
        return None
    if isinstance(sock, ssl.SSLSocket):
        # The socket decrypts what it reads, unless TLS runs inside another TLS (an https
        # proxy): then the socket is the outer layer and a separate SSLObject is the inner.
        return None if isinstance(tls, ssl.SSLObject) else sock
    return sock if tls is None else None


class BodyReader:
    """Fills buffers with the body of `resp` (opened with httpx's `stream=True`)."""

    def __init__(
        self,
        resp: httpx.Response,
        policy: Policy,
        url: str,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._chunks: Iterator[bytes] = resp.iter_raw()
        self._left = memoryview(b"")  # a chunk from httpx not yet copied out
        self._sock = direct_socket(resp)
        self.direct = self._sock is not None  # whether the body comes from the socket
        self._remaining = int(resp.headers["content-length"]) if self.direct else 0
        self._reading_socket = False
        self._floor = SpeedFloor(policy, url)
        # Framing without data (a chunk extension a byte at a time): dsm.transfer.wire.
        self._awaited = Awaited(policy.stall_timeout, url, BODY)
        self._url = url
        self._on_read = on_read  # told of every read: progress moves with the bytes, not a buffer
        self._error: Exception | None = None  # raised at the next fill, after the bytes before it
        if self._sock is not None:
            timeouts = resp.request.extensions.get("timeout", {})
            self._sock.settimeout(timeouts.get("read"))

    def fill(self, buf: memoryview) -> int:
        """Fill `buf` as far as the body goes; 0 at its end. When a read fails, the bytes
        that came before it are returned first (they are kept for a resume) and the error is
        raised by the next call."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        n = 0
        try:
            while n < len(buf):
                got = self._read(buf[n:])
                if not got:
                    break
                n += got
                if self._on_read is not None:
                    self._on_read(got)
                self._floor.count(got)
        except Exception as exc:  # httpx's errors, Stalled, the refused excess
            if not n:
                raise
            self._error = exc
        return n

    def _read(self, buf: memoryview) -> int:
        if self._left:
            got = min(len(buf), len(self._left))
            buf[:got] = self._left[:got]
            self._left = self._left[got:]
            return got
        if self._reading_socket:
            return self._recv(buf)
        self._awaited.deadline = 0.0  # from the first read for this chunk
        with awaiting(self._awaited):
            chunk = next(self._chunks, b"")
        if not chunk:
            return 0
        self._left = memoryview(chunk)
        if self.direct:
            self._remaining -= len(chunk)
            self._reading_socket = True  # h11 holds nothing more of the body (module doc)
        return self._read(buf)

    def _recv(self, buf: memoryview) -> int:
        assert self._sock is not None
        want = min(len(buf), self._remaining)
        if not want:
            return 0
        try:
            got = self._sock.recv_into(buf, want)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        if not got:
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body "
                f"({self._remaining} bytes missing)"
            )
        self._remaining -= got
        if not self._remaining and self._excess():
            # Raised before these last bytes are handed out: the partial never looks whole.
            raise BadResponse(
                f"the server sent more bytes than its Content-Length from {public_url(self._url)}"
            )
        return got

    def _excess(self) -> bool:
        """Bytes already waiting after the announced end: a server that lies about the length
        (what arrives later is not seen; the connection is closed, never reused)."""
        assert self._sock is not None
        if isinstance(self._sock, ssl.SSLSocket):
            return self._sock.pending() > 0
        # Non-blocking: a socket with a timeout would wait for it before peeking. The
        # connection is closed after this body, so its mode need not be restored.
        self._sock.setblocking(False)
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK))
        except OSError:  # nothing there (EAGAIN), or the peer is gone: no excess either way
            return False


Stage = Callable[[memoryview], bool]  # one step for a filled buffer; False: want no more


class Stages:
    """Buffers filled on the caller's thread pass through `stages` in order, each stage on a
    thread of its own, then come back to be filled again: reading, writing and hashing
    overlap (on 2 cores hashlib and file writes release the GIL), and `count` preallocated
    buffers circulate, nothing is allocated per chunk. A stage that returns False wants no
    buffer after this one (this one still goes through the later stages: a writer that took
    the last bytes it wanted has them hashed). A stage's exception is kept, the later buffers
    skip the stages, and it is raised on the caller's side (take, or the exit)."""

    def __init__(self, stages: list[Stage], count: int, size: int) -> None:
        self.free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(count):
            self.free.put(memoryview(bytearray(size)))
        # (buffer, bytes filled, whether the stages still act on it)
        self.queues: list[queue.Queue[tuple[memoryview, int, bool] | None]] = [
            queue.Queue() for _ in stages
        ]
        self.error: Exception | None = None
        self.wanted = True  # until a stage says it wants no more
        self.threads = [
            threading.Thread(target=self._run, args=(i, stage), name="dsm-stage", daemon=True)
            for i, stage in enumerate(stages)
        ]

    def __enter__(self) -> Stages:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Let every stage finish what it was given, then raise a stage's error."""
        self.queues[0].put(None)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error

    def take(self, check: Callable[[], None]) -> memoryview | None:
        """A buffer to fill (None once a stage wants no more); `check` raises on a stop."""
        while True:
            check()
            if self.error is not None:
                raise self.error
            if not self.wanted:
                return None
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue

    def put(self, buf: memoryview, n: int) -> None:
        """Hand the first `n` bytes of a buffer from take() to the stages."""
        self.queues[0].put((buf, n, True))

    def _run(self, i: int, stage: Stage) -> None:
        after = self.queues[i + 1] if i + 1 < len(self.queues) else None
        while (item := self.queues[i].get()) is not None:
            buf, n, live = item
            live = live and self.error is None and (i > 0 or self.wanted)
            if live:
                try:
                    if not stage(buf[:n]):
                        self.wanted = False
                except Exception as exc:
                    self.error = exc
            if after is None:
                self.free.put(buf)
            else:
                after.put((buf, n, live))
        if after is not None:
            after.put(None)
