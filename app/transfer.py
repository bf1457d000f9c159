"""One file over HTTP: streamed to `<target>.part`, hashed in the same pass, resumed safely.

The partial file is only ever extended when the server proves it is sending the same file:
`Range` goes with `If-Range` (a strong ETag or Last-Modified recorded in a sidecar), and only
a 206 whose Content-Range starts exactly at our offset is appended. Anything else restarts
from zero.

The transfer itself runs off the event loop: one thread reads the body with httpx's sync
client and a second hashes and writes it, fed by a small bounded queue. Measured on a 2-core
machine, httpx's async stream reached 354 MiB/s before any hashing (h11 parsing and anyio
hops per 64 KiB), the sync stream 744 MiB/s; see bench/RESULTS.md. The event loop only polls
progress and turns a cancel into a stop signal that also shuts the socket, so a stalled read
ends at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import json
import os
import queue
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from app import __version__

BATCH = 1 << 20  # bytes handed to the writer thread at a time
QUEUE_DEPTH = 8  # batches in flight between the network and the disk
PROGRESS_POLL = 0.1  # seconds between progress reports to the caller
MAX_REDIRECTS = 10
RETRY_AFTER_CAP = 600.0
USER_AGENT = f"dsm/{__version__}"
HTML_SUFFIXES = (".html", ".htm")


class TransferError(Exception):
    """A failed transfer; `retryable` says whether trying again can heal it."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    resumed_from: int


ProgressFn = Callable[[int, int | None], None]
HeadersFn = Callable[[str], dict[str, str]]


def sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def read_sidecar(part: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(part: Path, meta: dict[str, Any]) -> None:
    side = sidecar_path(part)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, side)


def discard_partial(part: Path) -> None:
    part.unlink(missing_ok=True)
    sidecar_path(part).unlink(missing_ok=True)


def _validator(etag: str | None, last_modified: str | None) -> str | None:
    """The If-Range value that proves identity: a strong ETag, else Last-Modified."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified or None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when - time.time(), RETRY_AFTER_CAP))


def http_error(resp: httpx.Response, url: str) -> TransferError:
    """Classify an unwanted status: 408, 429 and 5xx can heal, other statuses cannot."""
    code = resp.status_code
    retryable = code in (408, 429) or code >= 500
    return TransferError(
        f"HTTP {code} {resp.reason_phrase} from {url}",
        retryable=retryable,
        retry_after=_retry_after(resp.headers.get("retry-after")) if retryable else None,
    )


def network_error(exc: httpx.HTTPError, url: str, stall_timeout: float) -> TransferError:
    if isinstance(exc, httpx.ReadTimeout):
        msg = f"stalled: no data for {stall_timeout:g} s from {url}"
    elif isinstance(exc, httpx.ConnectTimeout):
        msg = f"connect timeout to {url}"
    else:
        msg = f"{type(exc).__name__}: {exc or 'connection failed'} ({url})"
    return TransferError(msg, retryable=isinstance(exc, httpx.TransportError))


class _Stopped(BaseException):
    """The caller canceled: not a transfer failure, so no handler of TransferError sees it."""


class _Control:
    """Shared between the event loop and the transfer threads: progress out, stop in."""

    def __init__(self) -> None:
        self.done = 0
        self.total: int | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, resp: httpx.Response) -> None:
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock if isinstance(sock, socket.socket) else None
        self.check()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                # shutdown (not close) wakes a recv blocked in the reader thread.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        if self._stop.is_set():
            raise _Stopped


@contextlib.contextmanager
def open_stream(
    client: httpx.Client, url: str, headers: dict[str, str], host_headers: HeadersFn
) -> Iterator[tuple[httpx.Response, str]]:
    """GET with redirects followed by hand: only to http(s), each hop gets its own host's
    headers, so a token never follows a redirect to another host."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise TransferError(f"refusing to follow a redirect to {url}", retryable=False)
        request = client.build_request("GET", url, headers={**headers, **host_headers(url)})
        resp = client.send(request, stream=True)
        location = resp.headers.get("location")
        if resp.is_redirect and location:
            resp.close()
            url = urljoin(url, location)
            continue
        try:
            yield resp, url
        finally:
            resp.close()
        return
    raise TransferError(f"more than {MAX_REDIRECTS} redirects from {url}", retryable=False)


class _Sink:
    """The writer thread's side: appends to the partial file and hashes what it writes."""

    def __init__(self, part: Path, offset: int) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.fh: BinaryIO = part.open("r+b" if offset else "wb")
        if offset:
            # Hash the kept prefix once, then append: still one pass over every byte.
            while self.size < offset:
                block = self.fh.read(min(BATCH * 4, offset - self.size))
                if not block:
                    break
                self.sha.update(block)
                self.size += len(block)
            self.fh.truncate(self.size)
            self.fh.seek(self.size)

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)

    def finish(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _prepare(part: Path, have: int, total: int | None, meta: dict[str, Any]) -> _Sink:
    """Check free space, record the sidecar of a fresh start, and open the partial file."""
    part.parent.mkdir(parents=True, exist_ok=True)
    need = (total or 0) - have
    free = shutil.disk_usage(part.parent).free
    if need > free:
        raise TransferError(
            f"not enough disk space in {part.parent}: need {need} bytes, {free} free",
            retryable=False,
        )
    if have == 0:
        write_sidecar(part, meta)
    return _Sink(part, have)


def _disk_error(exc: OSError, part: Path) -> TransferError:
    if exc.errno == errno.ENOSPC:
        return TransferError(f"disk full while writing {part}", retryable=False)
    return TransferError(f"cannot write {part}: {exc.strerror or exc}", retryable=False)


class _Writer(threading.Thread):
    """Drains batches into the sink; a disk error is kept and re-raised on the reader's side."""

    def __init__(self, sink: _Sink) -> None:
        super().__init__(name="dsm-writer", daemon=True)
        self.sink = sink
        self.batches: queue.Queue[bytes | None] = queue.Queue(QUEUE_DEPTH)
        self.error: OSError | None = None

    def run(self) -> None:
        while (batch := self.batches.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write(batch)
                except OSError as exc:
                    self.error = exc

    def put(self, batch: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.batches.put(batch)

    def close(self) -> None:
        self.batches.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def _pump(resp: httpx.Response, sink: _Sink, ctl: _Control) -> None:
    """Read the body and hand it to the writer thread in batches; reading overlaps hashing
    and writing. Bytes that arrived before a network error are kept for the resume."""
    writer = _Writer(sink)
    writer.start()
    pending: list[bytes] = []
    size = 0
    try:
        for chunk in resp.iter_raw():
            ctl.check()
            pending.append(chunk)
            size += len(chunk)
            ctl.done += len(chunk)
            if size >= BATCH:
                writer.put(b"".join(pending))
                pending, size = [], 0
    finally:
        if pending:
            writer.put(b"".join(pending))
        writer.close()


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        return None
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _looks_like_html(resp: httpx.Response, target: Path) -> bool:
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype in ("text/html", "application/xhtml+xml") and not target.name.lower().endswith(
        HTML_SUFFIXES
    )


@dataclass
class _Partial:
    """What is on disk for one target: the `.part` file, its sidecar, the bytes we keep."""

    source: str  # the URL asked for; the sidecar records it, not where redirects led
    target: Path
    part: Path
    have: int
    meta: dict[str, Any]

    @property
    def validator(self) -> str | None:
        return _validator(self.meta.get("etag"), self.meta.get("last_modified"))


async def fetch(
    client: httpx.Client,
    url: str,
    target: Path,
    *,
    expected_size: int | None,
    host_headers: HeadersFn,
    progress: ProgressFn,
    stall_timeout: float,
) -> Fetched:
    """Bring `<target>.part` to the complete file; returns its size and SHA-256.

    The caller verifies and renames. On any error or cancel the partial file and its sidecar
    are left consistent, so the next call resumes.
    """
    ctl = _Control()
    blocking = partial(
        _fetch_blocking, client, url, target, expected_size, host_headers, stall_timeout, ctl
    )
    async with anyio.create_task_group() as tg:

        async def report() -> None:
            try:
                while True:
                    await anyio.sleep(PROGRESS_POLL)
                    if ctl.done:
                        progress(ctl.done, ctl.total)
            finally:
                ctl.stop()  # canceled (or done): the threads stop at their next step

        tg.start_soon(report)
        failure: Exception | None = None
        try:
            # Not abandoned on cancel: the threads finish (promptly, see report) before the
            # dataset lock is released, so two writers never touch one file.
            fetched = await anyio.to_thread.run_sync(blocking, limiter=anyio.CapacityLimiter(1))
        except _Stopped:
            await anyio.lowlevel.checkpoint()  # raises the cancellation that caused the stop
            raise
        except Exception as exc:  # raised below, outside the task group, unwrapped
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    progress(ctl.done, ctl.total)
    return fetched


def _fetch_blocking(
    client: httpx.Client,
    url: str,
    target: Path,
    expected_size: int | None,
    host_headers: HeadersFn,
    stall_timeout: float,
    ctl: _Control,
) -> Fetched:
    part = target.with_name(target.name + ".part")
    p = _Partial(url, target, part, part.stat().st_size if part.exists() else 0, read_sidecar(part))
    if p.meta.get("url") != url or not p.validator:
        p.have = 0  # cannot prove the partial is the same file: start clean
    total = p.meta.get("total")
    if p.have and isinstance(total, int) and p.have >= total:
        # Complete before a crash: no request needed, only the hash.
        ctl.done = ctl.total = total
        return _finish(_Sink(part, total), part, total)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if p.have:
        headers |= {"Range": f"bytes={p.have}-", "If-Range": str(p.validator)}
    try:
        with open_stream(client, url, headers, host_headers) as (resp, final_url):
            ctl.attach(resp)
            return _receive(resp, final_url, p, expected_size, ctl)
    except httpx.HTTPError as exc:
        ctl.check()  # a read broken by our own stop is a cancel, not a network error
        raise network_error(exc, url, stall_timeout) from exc


def _restart(p: _Partial, why: str) -> TransferError:
    """The partial cannot be continued: drop it and retry at once from zero."""
    discard_partial(p.part)
    return TransferError(f"{why}; restarting from zero", retryable=True, retry_after=0.0)


def _receive(
    resp: httpx.Response, url: str, p: _Partial, expected_size: int | None, ctl: _Control
) -> Fetched:
    etag, modified = resp.headers.get("etag"), resp.headers.get("last-modified")
    if resp.status_code == 416 and p.have:
        raise _restart(p, f"HTTP 416 for a resume from byte {p.have}")
    if resp.status_code == 206 and p.have:
        rng = _parse_content_range(resp.headers.get("content-range"))
        if rng is None or rng[0] != p.have:
            raise _restart(p, f"server sent a range that does not start at byte {p.have}")
        if _validator(etag, modified) not in (None, p.validator):
            raise _restart(p, "the file changed on the server")
        total = rng[1]
    elif resp.status_code == 200:
        p.have = 0  # a full body: never appended to a partial file
        length = resp.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
    else:
        raise http_error(resp, url)
    if _looks_like_html(resp, p.target):
        raise TransferError(f"server sent an HTML page instead of data ({url})", retryable=False)
    if expected_size is not None and total is not None and total != expected_size:
        raise TransferError(
            f"size mismatch: expected {expected_size} bytes, server announces {total} ({url})",
            retryable=False,
        )
    meta = {"url": p.source, "etag": etag, "last_modified": modified, "total": total}
    try:
        sink = _prepare(p.part, p.have, total, meta)
    except OSError as exc:
        raise _disk_error(exc, p.part) from exc
    ctl.done, ctl.total = p.have, total
    return _finish(sink, p.part, p.have, resp, ctl, total)


def _finish(
    sink: _Sink,
    part: Path,
    resumed_from: int,
    resp: httpx.Response | None = None,
    ctl: _Control | None = None,
    total: int | None = None,
) -> Fetched:
    try:
        if resp is not None and ctl is not None:
            _pump(resp, sink, ctl)
        sink.finish()
    except OSError as exc:
        sink.close()
        if exc.errno == errno.ENOSPC:
            discard_partial(part)  # frees the room the store needs to record the failure
        raise _disk_error(exc, part) from exc
    finally:
        sink.close()
    if total is not None and sink.size != total:
        raise TransferError(f"connection ended at byte {sink.size} of {total}", retryable=True)
    return Fetched(size=sink.size, sha256=sink.sha.hexdigest(), resumed_from=resumed_from)
