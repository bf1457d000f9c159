"""One file over HTTP: streamed to `<target>.part`, hashed in the same pass, resumed safely.

The partial file is only ever extended when the server proves it is sending the same file:
`Range` goes with `If-Range` (a strong ETag or Last-Modified recorded in a sidecar), and only
a 206 whose Content-Range starts exactly at our offset is appended. Anything else restarts
from zero. That decision is resume.py's (pure); this module does the I/O the plan asks for.

The transfer itself runs off the event loop, in a pipeline of threads (_pump): one reads
the body into preallocated buffers (bodyread: straight from the socket for a large plain
body), one writes them, one hashes them. Measured on a 2-core machine, httpx's async stream
reached 354 MiB/s before any hashing (h11 parsing and anyio hops per 64 KiB), the sync stream
744 MiB/s, `recv_into` ~2.4 GB/s; see bench/RESULTS.md. The event loop only polls progress and
turns a cancel into a stop signal that also shuts the socket, so a stalled read ends at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx

from dsm.errors import BadResponse, DiskFull, IntegrityError, Restart, TooLarge, Truncated
from dsm.transfer import resume
from dsm.transfer.bodyread import BodyReader, Stages
from dsm.transfer.http import (
    Answer,
    Control,
    Digest,
    Env,
    Fetched,
    HeadersFn,
    HostSlots,
    Policy,
    RetryBudget,
    Slot,
    Stopped,
    base_headers,
    disk_error,
    network_error,
    open_stream,
)
from dsm.transfer.partfile import (
    Partial,
    Room,
    discard_partial,
    file_id,
    make_folders,
    open_own,
    read_sidecar,
    target_lock,
    write_all,
    write_sidecar,
)
from dsm.transfer.resume import OnDisk
from dsm.transfer.segmented import SegmentedDownload

BUFFER = 1 << 20  # bytes read into one buffer before it goes to the writer
BUFFERS = 8  # buffers in flight between the network, the disk and the hash
PROGRESS_POLL = 0.1  # seconds between progress reports to the caller
SYNC_EVERY = 64 << 20  # bytes written between two fdatasyncs
SMALL_BODY = 4 << 20  # a body this small is read, written and hashed on one thread
SMALL_CHUNK = 256 << 10  # ... in reads of at most this many bytes

ProgressFn = Callable[[int, int | None], None]
# Run in the transfer's thread once the body is whole and durable (Control.settle).
Then = Callable[[Fetched], None]
log = logging.getLogger(__name__)


class _Sink:
    """The partial file and the hash of its bytes: written by one thread, hashed by another."""

    def __init__(self, part: Path, offset: int, blob_size: int | None) -> None:
        self.part = part
        self.sha = Digest(blob_size)
        self.size = 0
        self.resume_meta: dict[str, Any] | None = None  # the sidecar not written yet
        flags = os.O_RDWR | os.O_CREAT | (0 if offset else os.O_TRUNC)
        # Unbuffered: each write goes straight to the file (what write_all expects), and the
        # buffered layer's isatty and position look-ups (five system calls a file) are saved.
        self.fh: BinaryIO = os.fdopen(open_own(part, flags), "r+b", buffering=0)
        self.written = file_id(os.fstat(self.fh.fileno()))  # the file its install places
        if offset:
            # Hash the kept prefix once, then append: still one pass over every byte.
            while self.size < offset:
                block = self.fh.read(min(BUFFER * 4, offset - self.size))
                if not block:
                    break
                self.sha.update(block)
                self.size += len(block)
            self.fh.truncate(self.size)
            self.fh.seek(self.size)

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.fh, data, self.size)
        self.size += len(data)

    def finish(self) -> None:
        os.fsync(self.fh.fileno())
        self.written = file_id(os.fstat(self.fh.fileno()))  # as written: size and mtime too

    def close(self) -> None:
        self.fh.close()


def _prepare(
    part: Path, have: int, total: int | None, meta: dict[str, Any], policy: Policy
) -> _Sink:
    """Check free space, record the sidecar of a fresh start, and open the partial file."""
    need = (total or 0) - have
    try:
        free = shutil.disk_usage(part.parent).free
    except FileNotFoundError:  # the folder is made only when missing: a mkdir costs a journal lock
        make_folders(part.parent)
        free = shutil.disk_usage(part.parent).free
    if need > free:
        raise DiskFull(f"not enough disk space in {part.parent}: need {need} bytes, {free} free")
    # Truncates a fresh start before the sidecar names the new file. A small body's sidecar
    # waits until a read leaves more to come (_pump_small) or the transfer stops short
    # (_finish): a body of one read needs none, two file operations fewer per file. A kill -9
    # before it leaves a partial without one, which is fetched again (resume.start).
    sink = _Sink(part, have, total if policy.git_blob else None)
    if have == 0 and total is not None and total <= SMALL_BODY:
        sink.resume_meta = meta
    elif have == 0:
        try:
            write_sidecar(part, meta)
        except OSError:
            sink.close()
            raise
    return sink


class _Syncer:
    """Appends to the sink and fdatasyncs it on a thread of its own as the file grows, so the
    disk writes while the body still arrives and the fsync before the rename has little left,
    without the writer ever waiting for the disk."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.unsynced = 0
        self.wake = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self._sync, name="dsm-sync", daemon=True)

    def __enter__(self) -> _Syncer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done = True
        self.wake.set()
        self.thread.join()

    def write(self, data: memoryview) -> bool:
        self.sink.write(data)
        self.unsynced += len(data)
        if self.unsynced >= SYNC_EVERY:
            self.unsynced = 0
            self.wake.set()
        return True

    def _sync(self) -> None:
        while self.wake.wait() and not self.done:
            self.wake.clear()
            with contextlib.suppress(OSError):  # a real disk error shows on the writes
                os.fdatasync(self.sink.fh.fileno())


def _pump(
    reader: BodyReader,
    sink: _Sink,
    ctl: Control,
    total: int | None,
    limit: resume.Limit | None = None,
) -> None:
    """Read the body to its end; a thread writes each buffer, another hashes it. Bytes that
    arrived before a network error are written (kept for the resume) before it is raised.
    A body stops past `limit` bytes (its announced total, else a cap), or, without a length,
    when the disk is nearly full."""
    if total is not None and total - sink.size <= SMALL_BODY:
        _pump_small(reader, sink, ctl, total - sink.size, limit)
        return

    def hash_(data: memoryview) -> bool:
        sink.sha.update(data)
        return True

    read = sink.size
    room = Room(sink.part.parent) if total is None else None  # no size was checked
    with _Syncer(sink) as syncer, Stages([syncer.write, hash_], BUFFERS, BUFFER) as stages:
        while (buf := stages.take(ctl.check)) is not None and (n := reader.fill(buf)):
            read += n
            if limit is not None and read > limit.size:
                raise limit.exceeded()
            if room is not None and (lacking := room.lacking(read - sink.size)):
                raise DiskFull(f"stopped at byte {read}: the server sent no length and {lacking}")
            stages.put(buf, n)


def _pump_small(
    reader: BodyReader, sink: _Sink, ctl: Control, size: int, limit: resume.Limit | None
) -> None:
    """A small body on this thread alone: starting threads and allocating the pipeline's
    buffers cost more than the whole transfer (bench/RESULTS.md). Written as it comes, so a
    cancel or a cut keeps what arrived."""
    buf = memoryview(bytearray(max(min(size, SMALL_CHUNK), 1)))
    end = sink.size + size
    while n := reader.fill(buf):
        if limit is not None and sink.size + n > limit.size:
            raise limit.exceeded()
        sink.write(buf[:n])  # before the check: what arrived before a stop is kept
        sink.sha.update(buf[:n])
        if sink.resume_meta is not None and sink.size < end:  # more to come: resumable now
            with contextlib.suppress(OSError):  # it only makes a resume possible (_finish)
                write_sidecar(sink.part, sink.resume_meta)
            sink.resume_meta = None
        ctl.check()


class Watch:
    """Reports the progress of every running transfer each PROGRESS_POLL seconds, from one
    task (`run`, started by the engine): a task per transfer cost more than the whole
    transfer of a small file."""

    def __init__(self) -> None:
        self._running: dict[Control, ProgressFn] = {}

    async def run(self) -> None:
        while True:
            await anyio.sleep(PROGRESS_POLL)
            for ctl, progress in list(self._running.items()):
                if ctl.done:
                    try:
                        progress(ctl.done, ctl.total)
                    except Exception:  # one transfer's listener must not stop the others'
                        log.exception("progress report failed")

    @contextlib.contextmanager
    def watching(self, ctl: Control, progress: ProgressFn) -> Iterator[None]:
        self._running[ctl] = progress
        try:
            yield
        finally:
            del self._running[ctl]
            ctl.stop()  # canceled (or done): the threads stop at their next step


async def fetch(
    client: httpx.Client,
    url: str,
    target: Path,
    *,
    expected_size: int | None,
    host_headers: HeadersFn,
    progress: ProgressFn,
    watch: Watch,
    policy: Policy,
    slots: HostSlots,
    budget: RetryBudget,
    then: Then | None = None,
) -> Fetched:
    """Bring `<target>.part` to the complete file; returns its size and SHA-256.

    The caller verifies and renames, or `then` does in the same thread (a thread hop
    fewer); it runs only if the transfer was not stopped, and a stop waits for it. On any
    error or cancel the partial file and its sidecar are left consistent, so the next call
    resumes. Segments that retry draw from `budget`, the job's one retry budget. `watch`
    reports `progress` while it runs.
    """
    ctl = Control()
    env = Env(client, host_headers, policy, slots, ctl, budget)
    blocking = partial(_fetch_blocking, env, url, target, expected_size, then)
    failure: Exception | None = None
    with watch.watching(ctl, progress):
        try:
            # Abandoned on cancel, so a cancel is immediate even while a connect or the
            # response headers hang. The threads stop at their next step (see watching);
            # until then they hold the file's target_lock, so no other writer can touch it.
            fetched = await anyio.to_thread.run_sync(
                blocking, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        except Stopped:
            await anyio.lowlevel.checkpoint()  # raises the cancellation that caused the stop
            raise
        except Exception as exc:  # reported below, after the last progress
            failure = exc
    if failure is None or ctl.done:
        # After a failure too: the bytes kept for the resume are the job's progress while it
        # waits to retry (a transfer can fail before the first poll reported anything).
        progress(ctl.done, ctl.total)
    if failure is not None:
        raise failure
    return fetched


def _fetch_blocking(
    env: Env, url: str, target: Path, expected_size: int | None, then: Then | None
) -> Fetched:
    part = target.with_name(target.name + ".part")
    lock = target_lock(part)
    while not lock.acquire(timeout=0.1):
        env.ctl.check()
    try:
        fetched = _fetch_locked(env, url, target, part, expected_size)
        if then is not None:
            env.ctl.settle(partial(then, fetched))
        return fetched
    finally:
        lock.release()


def _fetch_locked(
    env: Env, url: str, target: Path, part: Path, expected_size: int | None
) -> Fetched:
    """Act on the resume plan; a body ended by a close is confirmed by one more request."""
    confirming = False
    while True:
        disk = _on_disk(part)
        step = resume.start(url, disk, env.policy, expected_size, confirming)
        if isinstance(step, resume.Complete):
            env.ctl.done = env.ctl.total = step.size
            return _complete(part, step.size, {"url": url}, env.policy)
        p = Partial(
            url, target, part, step.offset if isinstance(step, resume.Ask) else 0, step.meta
        )
        if isinstance(step, resume.ResumeSegments):
            env.ctl.total = step.meta.get("total")
            return SegmentedDownload.resume(env, p)
        fetched, confirm = _ask(env, step, p, expected_size)
        if not confirm:
            return fetched
        # The body had no length: it ended when the connection closed, and a dropped
        # connection looks the same. Ask once for the bytes after it: a 416 proves the end,
        # anything more is appended (the sidecar's validator guards it).
        confirming = True


def _on_disk(part: Path) -> OnDisk:
    """The partial's size and sidecar; without a partial its sidecar says nothing of use (a
    resume from byte 0 reads none: resume.respond), so it is not read: a stat per file."""
    try:
        have = os.stat(part).st_size
    except FileNotFoundError:
        return OnDisk(0, {})
    return OnDisk(have, read_sidecar(part))


def _ask(env: Env, step: resume.Ask, p: Partial, expected_size: int | None) -> tuple[Fetched, bool]:
    """Send the planned request and act on the plan for its response: (result, confirm)."""
    headers = base_headers() | step.headers
    with env.slots.slot(p.source, env.ctl) as slot:
        try:
            with (
                open_stream(*env.stream_args(p.source, headers)) as (resp, final),
                env.ctl.watching(resp),
            ):
                answer = Answer.of(resp, final)
                plan = resume.respond(step, answer, p.source, p.target, expected_size, env.policy)
                confirm = isinstance(plan, resume.Write) and plan.confirm
                return _act(env, plan, resp, slot, p), confirm
        except httpx.HTTPError as exc:
            env.ctl.check()  # a read broken by our own stop is a cancel, not a network error
            raise network_error(exc, p.source, env.policy.stall_timeout) from exc


def _act(env: Env, plan: resume.Plan, resp: httpx.Response, slot: Slot, p: Partial) -> Fetched:
    """Do what the plan says with the response: the I/O half of the resume decision."""
    if isinstance(plan, resume.Reject):
        raise plan.error
    if isinstance(plan, resume.Restart):
        discard_partial(p.part)
        raise Restart(f"{plan.reason}; restarting from zero")
    if isinstance(plan, resume.Complete):
        return _complete(p.part, plan.size, {"url": p.source}, env.policy)
    env.ctl.done, env.ctl.total = plan.offset if isinstance(plan, resume.Write) else 0, plan.total
    if isinstance(plan, resume.Split):
        p.meta = plan.meta
        return SegmentedDownload.fresh(env, resp, slot, p, plan.total)
    try:
        sink = _prepare(p.part, plan.offset, plan.total, plan.meta, env.policy)
    except OSError as exc:
        raise disk_error(exc, p.part) from exc
    reader = BodyReader(resp, env.policy, p.source, on_read=env.ctl.add)
    return _finish(sink, p.part, reader, env.ctl, plan.total, plan.proven, plan.limit)


def _complete(part: Path, size: int, meta: dict[str, Any], policy: Policy) -> Fetched:
    """The partial already holds all `size` bytes (or the file is empty): only hash it."""
    try:
        sink = _prepare(part, size, size, meta, policy)
    except OSError as exc:
        raise disk_error(exc, part) from exc
    return _finish(sink, part)


def _finish(
    sink: _Sink,
    part: Path,
    reader: BodyReader | None = None,
    ctl: Control | None = None,
    total: int | None = None,
    proven: bool = True,
    limit: resume.Limit | None = None,
) -> Fetched:
    try:
        if reader is not None and ctl is not None:
            _pump(reader, sink, ctl, total, limit)
        sink.finish()
        if total is not None and sink.size != total:
            raise Truncated(f"connection ended at byte {sink.size} of {total}")
    except (IntegrityError, TooLarge, DiskFull, BadResponse):
        sink.close()
        # Another file than the catalogue's, one too large for the limit or the disk, or a
        # body past the length it announced: no resume, and the room goes back (the store
        # records the end there).
        discard_partial(part)
        raise
    except OSError as exc:
        sink.close()
        error = disk_error(exc, part)
        if isinstance(error, DiskFull):
            sink.resume_meta = None
            discard_partial(part)  # frees the room the store needs to record the failure
        raise error from exc
    except BaseException:
        if sink.resume_meta is not None and sink.size:
            with contextlib.suppress(OSError):  # without it the partial is fetched again
                write_sidecar(part, sink.resume_meta)
        raise
    finally:
        sink.close()
    return sink.sha.fetched(sink.size, sink.written, None if proven else resume.UNPROVEN)
