"""A real HTTP/1.1 server on 127.0.0.1 for the tests: Range, If-Range and ETag, faults on demand.

Files live in memory. Each request to a path takes the next queued fault for that path (if
any), so a test says exactly what the server does on the first, second, ... request, and
afterwards reads what the server saw: every request's headers, status and bytes sent.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024


@dataclass
class Resource:
    body: bytes
    etag: str | None
    last_modified: str | None
    content_type: str = "application/octet-stream"
    date: str | None = None  # the Date header of every answer; None: the real clock

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass
class Fault:
    """What to do differently for one request. Unset fields mean normal behaviour."""

    status: int | None = None  # answer with this status and a short body
    headers: dict[str, str] = field(default_factory=dict)  # extra headers (Retry-After...)
    drop_after: int | None = None  # close the connection after this many body bytes
    stall_after: int | None = None  # stop sending after this many bytes until released
    ignore_range: bool = False  # answer 200 with the whole body even to a Range request
    wrong_range_start: int | None = None  # answer 206 starting at another offset
    content_length: int | None = None  # announce this length (a lie) instead of the real one
    # Bytes (zeros) sent after the body, inside its framing (its Content-Length counts them,
    # or its chunks carry them) but past its Content-Range: a body that overruns its range.
    excess: int = 0
    html: bool = False  # an HTML error page with status 200
    redirect_to: str | None = None  # 302 to this path or URL
    rate: float | None = None  # bytes per second
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    chunked: bool = False  # Transfer-Encoding: chunked (with `content_length`: framed twice)
    for_ranges: tuple[int, int] | None = None  # only for a Range starting in [lo, hi)
    range_as_200: bool = False  # a broken proxy: the 206's Content-Range and bytes, status 200
    range_end_short: int | None = None  # a 206 that ends this many bytes before the end asked
    range_total: int | None = None  # a 206 whose Content-Range names this total
    # A server without If-Range: any Range answered 206, no ETag or Last-Modified in the 206.
    blind_range: bool = False
    gate: threading.Event | None = None  # answer only once the test sets this event
    # Send the status line, then a header byte every this many seconds, never ending the
    # head (until the client leaves or the server stops).
    trickle_head: float | None = None
    # A chunked 200 whose first chunk is the body's first 5 bytes, then a chunk extension
    # a byte every this many seconds: framing without data, never ending.
    trickle_chunk: float | None = None


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0
    at: float = field(default_factory=time.monotonic)
    done: bool = False  # the server has finished with this request
    ended: float = float("inf")

    @property
    def range_start(self) -> int | None:
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range", ""))
        return int(m.group(1)) if m else None

    @property
    def range_end(self) -> int | None:
        """The last byte asked for (inclusive), or None for an open range."""
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("range", ""))
        return int(m.group(2)) if m else None


class FileServer:
    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.persistent: dict[str, Fault] = {}
        self.seen: list[Seen] = []
        self.connections = 0  # TCP connections accepted so far (keep-alive reuse shows here)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- set-up ------------------------------------------------------------------------
    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def add(
        self,
        path: str,
        body: bytes,
        *,
        etag: str | None = "auto",
        last_modified: bool | str = True,
        content_type: str = "application/octet-stream",
        date: str | None = None,
    ) -> str:
        """Serve `body` at `path` (replacing any earlier version); returns its URL.

        `last_modified`: True for a minute ago (strong: older than any Date sent, RFC 9110
        8.8.2.2), or the exact header; `date`: a fixed Date header instead of the clock."""
        path = "/" + path.lstrip("/")
        tag = f'"{hashlib.sha256(body).hexdigest()[:16]}"' if etag == "auto" else etag
        modified = (
            last_modified
            if isinstance(last_modified, str)
            else email.utils.formatdate(time.time() - 60, usegmt=True)
            if last_modified
            else None
        )
        with self.lock:
            self.resources[path] = Resource(body, tag, modified, content_type, date)
        return self.url(path)

    def fault(self, path: str, times: int = 1, **kw: Any) -> None:
        """Queue a fault for the next `times` requests to `path`."""
        path = "/" + path.lstrip("/")
        with self.lock:
            self.faults.setdefault(path, []).extend(Fault(**kw) for _ in range(times))

    def always(self, path: str, **kw: Any) -> None:
        """A fault for every request to `path` (after the queued ones)."""
        self.persistent["/" + path.lstrip("/")] = Fault(**kw)

    # -- what happened -----------------------------------------------------------------
    def requests(self, path: str) -> list[Seen]:
        path = "/" + path.lstrip("/")
        with self.lock:
            return [s for s in self.seen if s.path == path]

    def bytes_sent(self, path: str) -> int:
        return sum(s.sent for s in self.requests(path))

    def _next_fault(self, seen: Seen) -> Fault:
        with self.lock:
            queue = self.faults.get(seen.path, [])
            for i, fault in enumerate(queue):
                lo, hi = fault.for_ranges or (0, 0)
                start = seen.range_start
                if fault.for_ranges is None or (start is not None and lo <= start < hi):
                    return queue.pop(i)
            return self.persistent.get(seen.path, Fault())


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a cancel, a dropped segment) is normal here, not an error."""


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        fixed_date: str | None = None

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:  # once per connection, however many requests it serves
            super().setup()
            with server.lock:
                server.connections += 1

        def date_time_string(self, timestamp: float | None = None) -> str:
            return self.fixed_date or super().date_time_string(timestamp)

        def do_GET(self) -> None:
            seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()})
            with server.lock:
                server.seen.append(seen)
            fault = server._next_fault(seen)
            self.fixed_date = None  # until the resource says (a connection serves many)
            try:
                self._serve(seen, fault)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                seen.ended = time.monotonic()
                seen.done = True

        def _simple(self, seen: Seen, status: int, body: bytes, headers: dict[str, str]) -> None:
            seen.status = status
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            seen.sent += len(body)

        def _serve(self, seen: Seen, fault: Fault) -> None:
            if fault.gate is not None:
                fault.gate.wait(60)
            if fault.trickle_head is not None:
                return self._trickle(seen, b"X-Slow: ", fault.trickle_head)
            if fault.trickle_chunk is not None:
                first = server.resources[self.path].body[:5]
                head = b"Transfer-Encoding: chunked\r\n\r\n5\r\n%s\r\n1;" % first
                return self._trickle(seen, head, fault.trickle_chunk)
            if fault.redirect_to:
                target = fault.redirect_to
                if not target.startswith(("http://", "https://", "ftp://", "file:")):
                    target = server.url(target)
                return self._simple(seen, 302, b"", {"Location": target, **fault.headers})
            if fault.status:
                return self._simple(seen, fault.status, b"fault\n", fault.headers)
            if fault.html:
                page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
                return self._simple(seen, 200, page, {"Content-Type": "text/html; charset=utf-8"})
            res = server.resources.get(self.path)
            if res is None:
                return self._simple(seen, 404, b"not found\n", {})
            self.fixed_date = res.date
            body, status, start = res.body, 200, 0
            headers = {"Content-Type": res.content_type, "Accept-Ranges": "bytes"}
            if res.etag:
                headers["ETag"] = res.etag
            if res.last_modified:
                headers["Last-Modified"] = res.last_modified
            begin = seen.range_start
            if_range = seen.headers.get("if-range")
            same = if_range is None or if_range in (res.etag, res.last_modified)
            same = same or fault.blind_range
            if begin is not None and same and not fault.ignore_range:
                if begin >= len(body):
                    headers = {"Content-Range": f"bytes */{len(body)}"}
                    return self._simple(seen, 416, b"", headers)
                start = begin if fault.wrong_range_start is None else fault.wrong_range_start
                last = min(seen.range_end or len(body) - 1, len(body) - 1)
                last -= fault.range_end_short or 0
                status = 200 if fault.range_as_200 else 206
                body = body[: last + 1]
                if fault.range_total is not None:  # consistent in itself, another file's size
                    last = fault.range_total - 1
                total = len(res.body) if fault.range_total is None else fault.range_total
                headers["Content-Range"] = f"bytes {start}-{last}/{total}"
                if fault.blind_range:
                    headers.pop("ETag", None)
                    headers.pop("Last-Modified", None)
            payload = body[start:]
            seen.status = status
            self.send_response(status)
            for k, v in {**headers, **fault.headers}.items():
                self.send_header(k, v)
            length = fault.content_length
            length = len(payload) + fault.excess if length is None else length
            if fault.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            elif fault.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                if fault.content_length is not None:  # framed two ways: a lie in one
                    self.send_header("Content-Length", str(length))
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            self._send_body(seen, payload, fault)

        def _trickle(self, seen: Seen, start: bytes, every: float) -> None:
            seen.status = 200
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\n" + start)
            while not server.release.wait(every):
                self.wfile.write(b"x")  # raises once the client has gone
                self.wfile.flush()

        def _send_body(self, seen: Seen, payload: bytes, fault: Fault) -> None:
            limit = len(payload)
            for cut in (fault.drop_after, fault.stall_after):
                if cut is not None:
                    limit = min(limit, cut)
            pos = 0
            started = time.monotonic()
            while pos < limit:
                n = min(CHUNK, limit - pos)
                if fault.rate:
                    n = min(n, max(1, int(fault.rate / 20)))
                data = payload[pos : pos + n]
                self.wfile.write(b"%x\r\n%s\r\n" % (n, data) if fault.chunked else data)
                self.wfile.flush()
                pos += n
                seen.sent += n
                if fault.rate:
                    ahead = pos / fault.rate - (time.monotonic() - started)
                    if ahead > 0 and server.release.wait(ahead):
                        break
            if pos == len(payload):
                self._send_excess(seen, fault)
            if fault.chunked and pos == len(payload):
                self.wfile.write(b"0\r\n\r\n")
            if fault.stall_after is not None and pos < len(payload):
                server.release.wait(60)
            if pos < len(payload) or fault.content_length is not None:
                self.close_connection = True

        def _send_excess(self, seen: Seen, fault: Fault) -> None:
            left, zeros = fault.excess, bytes(CHUNK)
            while left > 0:
                n = min(CHUNK, left)
                self.wfile.write(b"%x\r\n%s\r\n" % (n, zeros[:n]) if fault.chunked else zeros[:n])
                left -= n
                seen.sent += n

    return Handler
