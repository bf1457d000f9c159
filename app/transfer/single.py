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

import errno
import hashlib
import os
import queue
import shutil
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx

from dsm.transfer.http import (
    Control,
    Env,
    Fetched,
    HeadersFn,
    HostSlots,
    Policy,
    Slot,
    Stopped,
    TransferError,
    base_headers,
    disk_error,
    http_error,
    looks_like_html,
    network_error,
    open_stream,
    parse_content_range,
    parse_unsatisfied,
    public_url,
)
from dsm.transfer.partfile import (
    Partial,
    discard_partial,
    read_sidecar,
    restart,
    target_lock,
    validator,
    write_sidecar,
)
from dsm.transfer.segmented import SegmentedDownload, worth_it

BATCH = 1 << 20  # bytes handed to the writer thread at a time
QUEUE_DEPTH = 8  # batches in flight between the network and the disk
PROGRESS_POLL = 0.1  # seconds between progress reports to the caller
SYNC_EVERY = 64 << 20  # bytes written between two fdatasyncs

ProgressFn = Callable[[int, int | None], None]


class _Sink:
    """The writer thread's side: appends to the partial file and hashes what it writes."""

    def __init__(self, part: Path, offset: int) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.unsynced = 0
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
        self.unsynced += len(data)
        if self.unsynced >= SYNC_EVERY:
            # Flush as we go (this is the writer thread): the fsync before the rename then
            # has little left, instead of a whole file's worth of dirty pages at the end.
            self.fh.flush()
            os.fdatasync(self.fh.fileno())
            self.unsynced = 0

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
    sink = _Sink(part, have)  # truncates a fresh start before the sidecar names the new file
    if have == 0:
        try:
            write_sidecar(part, meta)
        except OSError:
            sink.close()
            raise
    return sink


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


def _pump(resp: httpx.Response, sink: _Sink, ctl: Control) -> None:
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
        try:
            if pending:
                writer.put(b"".join(pending))
        finally:
            writer.close()


async def fetch(
    client: httpx.Client,
    url: str,
    target: Path,
    *,
    expected_size: int | None,
    host_headers: HeadersFn,
    progress: ProgressFn,
    policy: Policy,
    slots: HostSlots,
) -> Fetched:
    """Bring `<target>.part` to the complete file; returns its size and SHA-256.

    The caller verifies and renames. On any error or cancel the partial file and its sidecar
    are left consistent, so the next call resumes.
    """
    ctl = Control()
    env = Env(client, host_headers, policy, slots, ctl)
    blocking = partial(_fetch_blocking, env, url, target, expected_size)
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
            # Abandoned on cancel, so a cancel is immediate even while a connect or the
            # response headers hang. The threads stop at their next step (see report); until
            # then they hold the file's target_lock, so no other writer can touch it.
            fetched = await anyio.to_thread.run_sync(
                blocking, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        except Stopped:
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


def _fetch_blocking(env: Env, url: str, target: Path, expected_size: int | None) -> Fetched:
    part = target.with_name(target.name + ".part")
    lock = target_lock(part)
    while not lock.acquire(timeout=0.1):
        env.ctl.check()
    try:
        return _fetch_locked(env, url, target, part, expected_size)
    finally:
        lock.release()


def _fetch_locked(
    env: Env, url: str, target: Path, part: Path, expected_size: int | None, confirm: bool = True
) -> Fetched:
    p = Partial(url, target, part, part.stat().st_size if part.exists() else 0, read_sidecar(part))
    if p.meta.get("url") != url or not p.validator:
        p.have, p.meta = 0, {}  # cannot prove the partial is the same file: start clean
    ctl, policy = env.ctl, env.policy
    if p.meta.get("segments") and p.have != p.meta.get("total"):
        p.have, p.meta = 0, {}  # a segmented .part always has the full size: this is not it
    if p.meta.get("segments"):
        ctl.total = p.meta.get("total")
        return SegmentedDownload.resume(env, p)
    total = p.meta.get("total")
    if p.have and isinstance(total, int) and p.have >= total:
        # Complete before a crash: no request needed, only the hash.
        ctl.done = ctl.total = total
        return _finish(_Sink(part, total), part, total)
    headers = base_headers()
    if p.have:
        headers |= {"Range": f"bytes={p.have}-", "If-Range": str(p.validator)}
    elif policy.segments > 1 and (expected_size or policy.segment_min) >= policy.segment_min:
        headers["Range"] = "bytes=0-"  # a 206 tells the size and that ranges work: no probe
    with env.slots.slot(url, ctl) as slot:
        try:
            with (
                open_stream(env.client, url, headers, env.host_headers) as (resp, final_url),
                ctl.watching(resp),
            ):
                fetched = _receive(env, resp, final_url, p, expected_size, slot)
                unconfirmed = _ended_by_close(resp)
        except httpx.HTTPError as exc:
            ctl.check()  # a read broken by our own stop is a cancel, not a network error
            raise network_error(exc, url, policy.stall_timeout) from exc
    if unconfirmed and confirm:
        # The body had no length: it ended when the connection closed, and a dropped
        # connection looks the same. Ask for the bytes after it: a 416 proves the end,
        # anything more is appended (the sidecar's validator guards it).
        return _fetch_locked(env, url, target, part, expected_size, confirm=False)
    return fetched


def _ended_by_close(resp: httpx.Response) -> bool:
    """A body without Content-Length or chunked framing, resumable by its validators."""
    return (
        resp.status_code in (200, 206)
        and "content-length" not in resp.headers
        and "chunked" not in resp.headers.get("transfer-encoding", "").lower()
        and validator(resp.headers.get("etag"), resp.headers.get("last-modified")) is not None
    )


def _receive(
    env: Env, resp: httpx.Response, url: str, p: Partial, expected_size: int | None, slot: Slot
) -> Fetched:
    etag, modified = resp.headers.get("etag"), resp.headers.get("last-modified")
    if resp.status_code == 416 and p.have:
        if parse_unsatisfied(resp.headers.get("content-range")) == p.have:
            return _finish(_Sink(p.part, p.have), p.part, p.have)  # we have it all already
        raise restart(p, f"HTTP 416 for a resume from byte {p.have}")
    if resp.status_code == 416 and parse_unsatisfied(resp.headers.get("content-range")) == 0:
        # `bytes=0-` of an empty file: nothing is satisfiable, and nothing is missing.
        sink = _prepare(p.part, 0, 0, {"url": p.source})
        return _finish(sink, p.part, 0)
    if resp.status_code == 206:
        rng = parse_content_range(resp.headers.get("content-range"))
        if rng is None or rng[0] != p.have:
            raise restart(p, f"server sent a range that does not start at byte {p.have}")
        if p.have and validator(etag, modified) not in (None, p.validator):
            raise restart(p, "the file changed on the server")
        total = rng[1]
    elif resp.status_code == 200:
        p.have = 0  # a full body: never appended to a partial file
        length = resp.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
    else:
        raise http_error(resp, url)
    if looks_like_html(resp, p.target):
        raise TransferError(
            f"server sent an HTML page instead of data ({public_url(url)})", retryable=False
        )
    if expected_size is not None and total is not None and total != expected_size:
        raise TransferError(
            f"size mismatch: expected {expected_size} bytes, server announces {total} "
            f"({public_url(url)})",
            retryable=False,
        )
    meta = {"url": p.source, "etag": etag, "last_modified": modified, "total": total}
    env.ctl.done, env.ctl.total = p.have, total
    if resp.status_code == 206 and p.have == 0 and worth_it(env.policy, total, meta):
        assert total is not None
        return SegmentedDownload.fresh(env, resp, slot, p, total, meta)
    try:
        sink = _prepare(p.part, p.have, total, meta)
    except OSError as exc:
        raise disk_error(exc, p.part) from exc
    return _finish(sink, p.part, p.have, resp, env.ctl, total)


def _finish(
    sink: _Sink,
    part: Path,
    resumed_from: int,
    resp: httpx.Response | None = None,
    ctl: Control | None = None,
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
        raise disk_error(exc, part) from exc
    finally:
        sink.close()
    if total is not None and sink.size != total:
        raise TransferError(f"connection ended at byte {sink.size} of {total}", retryable=True)
    return Fetched(size=sink.size, sha256=sink.sha.hexdigest(), resumed_from=resumed_from)
