"""Segmented downloads: one large file fetched as N byte ranges in parallel, as aria2 does.

Every range request carries `If-Range` with the validator of the first response, and only a
206 that starts exactly where the segment stands is accepted: a 200 or another validator means
the file changed, so the whole set is dropped and the next attempt starts clean (never a mix of
two versions). Segments write at their offsets into the one `.part` file; the sidecar records
each segment's progress (written after the bytes it counts), so a restart resumes every segment
where its bytes end. The lead segment (from byte 0) hashes its buffers as they are written, as
the single stream does; past its end, a hashing thread follows the contiguous prefix as it
grows, reading back what was just written (still in the page cache). Either way the SHA-256 is
ready moments after the last byte: still one logical pass. A lead that is never split (a fast
connection) is thus never read back: on 2 cores that copy cost ~0.3 s per GiB.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import httpx

from dsm.errors import DiskFull, Restart, TransferError, Truncated, retry_after, retryable
from dsm.transfer import resume
from dsm.transfer.bodyread import BodyReader, Stage, Stages
from dsm.transfer.http import (
    Answer,
    Digest,
    Env,
    Fetched,
    Slot,
    Stopped,
    base_headers,
    disk_error,
    network_error,
    open_stream,
)
from dsm.transfer.partfile import (
    Partial,
    discard_partial,
    file_id,
    make_folders,
    open_own,
    pwrite_all,
    write_sidecar,
)

HASH_BLOCK = 4 << 20
WRITE_BATCH = 1 << 20
WRITE_BUFFERS = 4  # per segment, between its reader and its writer
SAVE_INTERVAL = 1.0  # seconds between sidecar saves of the segments' progress
# Bytes written between two fdatasyncs (and saves): the disk writes while the body still
# arrives, so the fsync before the rename has little left (after a save a second apart it
# had up to a second of bytes, ~0.3 s of waiting per GiB on the development machine).
SYNC_EVERY = 64 << 20
TICK = 0.1
# A download starts on one connection; after SPLIT_AFTER seconds, if that connection brings
# less than SPLIT_BELOW bytes/s (a per-connection cap, as CDNs have), the rest is split.
# A fast connection is left alone: on 2 cores more streams only fight over the CPU
# (bench/RESULTS.md: 4 segments were 27 % slower than one stream from an uncapped server).
SPLIT_AFTER = 0.1
SPLIT_BELOW = 64 << 20


@dataclass
class Segment:
    start: int
    end: int  # exclusive
    done: int = 0

    @property
    def pos(self) -> int:
        return self.start + self.done

    @property
    def complete(self) -> bool:
        return self.pos >= self.end


def plan(start: int, total: int, count: int) -> list[Segment]:
    """`count` equal segments covering [start, total)."""
    step = -(-(total - start) // count)
    return [Segment(s, min(s + step, total)) for s in range(start, total, step)]


class SegmentedDownload:
    def __init__(self, env: Env, p: Partial, total: int, segments: list[Segment]) -> None:
        self.env, self.ctl, self.policy = env, env.ctl, env.policy
        self.p, self.total, self.segments = p, total, segments
        self.if_range = str(p.validator)
        self.cond = threading.Condition()
        self.error: TransferError | None = None
        self.sha = Digest(total if env.policy.git_blob else None)
        self.hashed = 0  # bytes of the prefix hashed (moved under `cond`)
        self.inline = False  # the lead segment's stream hashes, not the hashing thread
        self.fd = -1
        # Where a lone segment would be split if it turns out slow (see SPLIT_BELOW).
        self.split_plan: list[Segment] | None = None
        if len(segments) == 1 and not segments[0].complete and env.policy.segments > 1:
            self.split_plan = plan(segments[0].pos, total, env.policy.segments)

    # -- entry points ------------------------------------------------------------------
    @classmethod
    def fresh(
        cls,
        env: Env,
        first: httpx.Response,
        slot: Slot,
        p: Partial,
        total: int,
    ) -> Fetched:
        """A fresh download whose first response (`bytes=0-`) becomes segment 0; `p.meta`
        holds that response's validators."""
        make_folders(p.part.parent)
        free = shutil.disk_usage(p.part.parent).free
        if total > free:
            raise DiskFull(
                f"not enough disk space in {p.part.parent}: need {total} bytes, {free} free"
            )
        return cls(env, p, total, [Segment(0, total)]).run(first, slot)

    @classmethod
    def resume(cls, env: Env, p: Partial) -> Fetched:
        """Continue a segmented download from its sidecar: each segment where its bytes end."""
        segments = [Segment(int(a), int(b), int(c)) for a, b, c in p.meta["segments"]]
        return cls(env, p, int(p.meta["total"]), segments).run(None, None)

    # -- the run -----------------------------------------------------------------------
    def run(self, first: httpx.Response | None, slot: Slot | None) -> Fetched:
        try:
            make_folders(self.p.part.parent)
            self.fd = open_own(self.p.part, os.O_RDWR | os.O_CREAT)
            os.ftruncate(self.fd, self.total)  # sparse; segments fill their own ranges
            self._save()
        except OSError as exc:
            raise disk_error(exc, self.p.part) from exc
        try:
            threads = [threading.Thread(target=self._hash, name="dsm-hash", daemon=True)]
            for i, seg in enumerate(self.segments):
                if not seg.complete:
                    lead = first if i == 0 else None
                    threads.append(
                        threading.Thread(target=self._segment, args=(seg, lead, slot), daemon=True)
                    )
            if first is not None and self.segments[0].complete and slot is not None:
                slot.release()
            for t in threads:
                t.start()
            self._supervise(threads)
            return self._finish()
        finally:
            os.close(self.fd)

    def _supervise(self, threads: list[threading.Thread]) -> None:
        started = saved = time.monotonic()
        lead_before = self.segments[0].done  # a resumed segment's old bytes are not speed
        synced = self.ctl.done = sum(s.done for s in self.segments)
        while any(t.is_alive() for t in threads):
            threads[0].join(TICK)
            self.ctl.done = sum(s.done for s in self.segments)
            now = time.monotonic()
            if self.split_plan is not None and now - started >= SPLIT_AFTER:
                threads += self._split((self.segments[0].done - lead_before) / (now - started))
            if now - saved >= SAVE_INTERVAL or self.ctl.done - synced >= SYNC_EVERY:
                # Flush what the segments wrote before the sidecar counts it: the counts then
                # survive a power cut too, and the fsync before the rename has little left.
                with contextlib.suppress(OSError):  # a real disk error shows on the writes
                    os.fdatasync(self.fd)
                self._save()
                saved, synced = now, self.ctl.done
        self.ctl.done = sum(s.done for s in self.segments)
        self._save()

    def _split(self, rate: float) -> list[threading.Thread]:
        """Split a slow lone segment along the plan; returns the new segments' threads."""
        planned, self.split_plan = self.split_plan or [], None
        lead = self.segments[0]
        with self.cond:
            if rate >= SPLIT_BELOW or self.error is not None or lead.pos >= planned[0].end:
                return []
            lead.end = planned[0].end  # its stream stops there (checked under this lock)
            self.segments = [lead, *planned[1:]]
        self._save()
        threads = [
            threading.Thread(target=self._segment, args=(seg, None, None), daemon=True)
            for seg in planned[1:]
        ]
        for t in threads:
            t.start()
        return threads

    def _finish(self) -> Fetched:
        if self.error is not None:
            # Every thread has stopped: drop a set that cannot go on (another version of the
            # file), or that filled the disk (the store needs the room to record the failure).
            if isinstance(self.error, Restart | DiskFull):
                discard_partial(self.p.part)
            raise self.error
        self.ctl.check()
        if self.hashed != self.total:
            raise Truncated(f"hashed {self.hashed} of {self.total} bytes")
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise disk_error(exc, self.p.part) from exc
        return self.sha.fetched(self.total, file_id(os.fstat(self.fd)))

    def _save(self) -> None:
        if self.error is not None:  # a failed set may have dropped its files: never revive them
            return
        with self.cond:
            segs = [[s.start, s.end, s.done] for s in self.segments]
        write_sidecar(self.p.part, {**self.p.meta, "segments": segs})

    def _fail(self, exc: TransferError) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()
        self.ctl.interrupt()  # siblings blocked in a read give up now, not at the stall timeout

    # -- one segment -------------------------------------------------------------------
    def _segment(self, seg: Segment, first: httpx.Response | None, slot: Slot | None) -> None:
        """Bring one segment to its end; a retry draws from the job's one budget."""
        try:
            if first is not None and slot is not None:
                try:
                    self._stream(seg, first)
                except (httpx.HTTPError, TransferError):
                    pass  # retried below on a connection of its own, like any segment
                finally:
                    first.close()
                    slot.release()
            while not seg.complete and self.error is None:
                try:
                    self._request(seg)
                except Restart as exc:
                    self._fail(exc)
                except TransferError as exc:
                    if self.error is not None:
                        break  # interrupted because a sibling failed the set
                    if not retryable(exc) or not self.env.budget.draw():
                        self._fail(exc)
                    else:
                        delay = retry_after(exc)
                        self.ctl.pause(self.policy.retry_delay if delay is None else delay)
        except Stopped:
            with self.cond:
                self.cond.notify_all()
        except Exception as exc:  # a bug must fail the set, not leave the hasher waiting
            self._fail(TransferError(f"internal error in a segment: {exc!r}"))

    def _request(self, seg: Segment) -> None:
        url = self.p.source
        first, last = seg.pos, seg.end - 1  # a split may move seg.end: check what was asked
        headers = base_headers() | {"Range": f"bytes={first}-{last}", "If-Range": self.if_range}
        with self.env.slots.slot(url, self.ctl):
            try:
                with open_stream(*self.env.stream_args(url, headers)) as (resp, final):
                    answer = Answer.of(resp, final)
                    verdict = resume.segment(first, last, self.total, self.p.meta, answer)
                    if isinstance(verdict, resume.Reject):
                        raise verdict.error
                    if isinstance(verdict, resume.Restart):  # _finish drops the set's files
                        raise Restart(f"{verdict.reason}; restarting from zero")
                    self._stream(seg, resp)
            except httpx.HTTPError as exc:
                self.ctl.check()
                raise network_error(exc, url, self.policy.stall_timeout) from exc
        if not seg.complete:
            raise Truncated(f"connection ended at byte {seg.pos} of {self.total}")

    def _stream(self, seg: Segment, resp: httpx.Response) -> None:
        """Write the body at the segment's offset; a thread of its own writes each filled
        buffer while the next one is read. Bytes that came before an error are written
        before it is raised (bodyread)."""
        with self.ctl.watching(resp), self._hashing(seg) as inline:
            reader = BodyReader(resp, self.policy, self.p.source)
            read = seg.pos  # the writer thread moves seg.pos a buffer or two behind
            steps: list[Stage] = [partial(self._write, seg)]
            if inline:
                steps.append(partial(self._hash_written, seg))
            with Stages(steps, WRITE_BUFFERS, WRITE_BATCH) as stages:
                while (buf := stages.take(self.ctl.check)) is not None and (
                    n := reader.fill(buf[: max(0, seg.end - read)])
                ):
                    read += n
                    stages.put(buf, n)

    def _write(self, seg: Segment, batch: memoryview) -> bool:
        """Write what belongs to the segment; False when it is complete or the set failed."""
        with self.cond:  # a split may move seg.end: cut, write and count under one lock
            if self.error is not None:
                return False
            data = batch[: seg.end - seg.pos]
            try:
                pwrite_all(self.fd, data, seg.pos)
            except OSError as exc:
                self._fail(disk_error(exc, self.p.part))
                return False
            seg.done += len(data)
            self.cond.notify_all()
            return not seg.complete

    # -- hashing the contiguous prefix -------------------------------------------------
    @contextlib.contextmanager
    def _hashing(self, seg: Segment) -> Iterator[bool]:
        """Whether this stream of `seg` hashes what it writes: only the lead segment, and only
        when every byte before its position is hashed (not on a resume, which reads back)."""
        with self.cond:
            inline = seg.start == 0 and not self.inline and self.hashed == seg.pos
            self.inline = self.inline or inline
        try:
            yield inline
        finally:
            if inline:
                with self.cond:
                    self.inline = False  # the hashing thread takes over from self.hashed
                    self.cond.notify_all()

    def _hash_written(self, seg: Segment, batch: memoryview) -> bool:
        """Hash what _write wrote of `batch` (which starts at self.hashed): all of it, or the
        part up to the segment's end. A split only moves the end down to bytes not yet
        written, so the end now cuts the batch where _write did."""
        with self.cond:
            if self.error is not None:
                return False
            data = batch[: max(0, seg.end - self.hashed)]
        self.sha.update(data)
        with self.cond:
            self.hashed += len(data)
            self.cond.notify_all()
        return True

    def _prefix(self) -> int:
        end = 0
        for seg in self.segments:
            end = seg.pos
            if not seg.complete:
                break
        return end

    def _hash(self) -> None:
        buf = memoryview(bytearray(HASH_BLOCK))  # read back into one buffer, never a new one
        while self.hashed < self.total:
            with self.cond:
                while (
                    (self.inline or self._prefix() <= self.hashed)
                    and self.hashed < self.total  # the lead may have hashed it all
                    and self.error is None
                    and not self._all_stopped()
                ):
                    self.cond.wait(TICK)
                # Stopped while the lead hashes: never read back beside it.
                ready = 0 if self.inline else self._prefix()
            if self.error is not None or ready <= self.hashed:
                return
            while self.hashed < ready:
                block = buf[: min(HASH_BLOCK, ready - self.hashed)]
                got = os.preadv(self.fd, [block], self.hashed)
                if not got:
                    return
                self.sha.update(block[:got])
                with self.cond:  # a lead stream that starts reads it (_hashing)
                    self.hashed += got

    def _all_stopped(self) -> bool:
        try:
            self.ctl.check()
        except Stopped:
            return True
        return False
