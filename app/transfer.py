"""One file over HTTP: streamed to `<target>.part`, hashed in the same pass, resumed safely.

The partial file is only ever extended when the server proves it is sending the same file:
`Range` goes with `If-Range` (a strong ETag or Last-Modified recorded in a sidecar), and only
a 206 whose Content-Range starts exactly at our offset is appended. Anything else restarts
from zero. Disk writes and SHA-256 run in a worker thread fed by a small bounded stream, so
the event loop only moves bytes.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from app import __version__

BATCH = 1 << 20  # bytes handed to the writer thread at a time
QUEUE_DEPTH = 4  # batches in flight between the network and the disk
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


def _read_sidecar(part: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(part: Path, meta: dict[str, Any]) -> None:
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


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], host_headers: HeadersFn
) -> AsyncIterator[tuple[httpx.Response, str]]:
    """GET with redirects followed by hand: only to http(s), each hop gets its own host's
    headers, so a token never follows a redirect to another host."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise TransferError(f"refusing to follow a redirect to {url}", retryable=False)
        request = client.build_request("GET", url, headers={**headers, **host_headers(url)})
        resp = await client.send(request, stream=True)
        location = resp.headers.get("location")
        if resp.is_redirect and location:
            await resp.aclose()
            url = urljoin(url, location)
            continue
        try:
            yield resp, url
        finally:
            await resp.aclose()
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
        _write_sidecar(part, meta)
    return _Sink(part, have)


def _disk_error(exc: OSError, part: Path) -> TransferError:
    if exc.errno == errno.ENOSPC:
        return TransferError(f"disk full while writing {part}", retryable=False)
    return TransferError(f"cannot write {part}: {exc.strerror or exc}", retryable=False)


async def _pump(resp: httpx.Response, sink: _Sink, progress: ProgressFn, total: int | None) -> None:
    """Network -> bounded stream -> writer thread; reading overlaps hashing and writing."""
    send, recv = anyio.create_memory_object_stream[bytes](QUEUE_DEPTH)
    failure: httpx.HTTPError | None = None

    async def writer() -> None:
        async with recv:
            async for batch in recv:
                await anyio.to_thread.run_sync(sink.write, batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        async with send:
            buf = bytearray()
            received = sink.size
            try:
                async for chunk in resp.aiter_raw():
                    buf += chunk
                    received += len(chunk)
                    if len(buf) >= BATCH:
                        await send.send(bytes(buf))
                        buf.clear()
                    progress(received, total)
            except httpx.HTTPError as exc:
                # Bytes that arrived before a network error are good: let the writer keep
                # them for the resume instead of raising here, which would cancel it.
                failure = exc
            if buf:
                await send.send(bytes(buf))
    if failure is not None:
        raise failure


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
    client: httpx.AsyncClient,
    url: str,
    target: Path,
    *,
    expected_size: int | None,
    host_headers: HeadersFn,
    progress: ProgressFn,
    stall_timeout: float,
) -> Fetched:
    """Bring `<target>.part` to the complete file; returns its size and SHA-256.

    The caller verifies and renames. On any error the partial file and its sidecar are left
    consistent, so the next call resumes.
    """
    part = target.with_name(target.name + ".part")
    p = _Partial(
        url, target, part, part.stat().st_size if part.exists() else 0, _read_sidecar(part)
    )
    if p.meta.get("url") != url or not p.validator:
        p.have = 0  # cannot prove the partial is the same file: start clean
    total = p.meta.get("total")
    if p.have and isinstance(total, int) and p.have >= total:
        # Complete before a crash: no request needed, only the hash.
        sink = await anyio.to_thread.run_sync(_Sink, part, total)
        return await _finish(sink, part, total)
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if p.have:
        headers |= {"Range": f"bytes={p.have}-", "If-Range": str(p.validator)}
    try:
        async with open_stream(client, url, headers, host_headers) as (resp, final_url):
            return await _receive(resp, final_url, p, expected_size, progress)
    except httpx.HTTPError as exc:
        raise network_error(exc, url, stall_timeout) from exc


def _restart(p: _Partial, why: str) -> TransferError:
    """The partial cannot be continued: drop it and retry at once from zero."""
    discard_partial(p.part)
    return TransferError(f"{why}; restarting from zero", retryable=True, retry_after=0.0)


async def _receive(
    resp: httpx.Response,
    url: str,
    p: _Partial,
    expected_size: int | None,
    progress: ProgressFn,
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
        sink = await anyio.to_thread.run_sync(_prepare, p.part, p.have, total, meta)
    except OSError as exc:
        raise _disk_error(exc, p.part) from exc
    return await _finish(sink, p.part, p.have, resp, progress, total)


async def _finish(
    sink: _Sink,
    part: Path,
    resumed_from: int,
    resp: httpx.Response | None = None,
    progress: ProgressFn | None = None,
    total: int | None = None,
) -> Fetched:
    try:
        if resp is not None and progress is not None:
            try:
                await _pump(resp, sink, progress, total)
            except BaseExceptionGroup as group:
                raise _first(group) from None
        await anyio.to_thread.run_sync(sink.finish)
    except OSError as exc:
        raise _disk_error(exc, part) from exc
    finally:
        sink.close()  # the writer thread is done by now; a close cannot block
    if total is not None and sink.size != total:
        raise TransferError(f"connection ended at byte {sink.size} of {total}", retryable=True)
    return Fetched(size=sink.size, sha256=sink.sha.hexdigest(), resumed_from=resumed_from)


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one real error inside a task group's exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
