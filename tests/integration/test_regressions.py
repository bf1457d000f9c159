"""Regression tests for bugs a review proved: cancels, segmented failures, the store, signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsm import headless
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine import files
from dsm.engine.engine import Engine
from dsm.store import Store
from dsm.transfer.http import Fetched
from dsm.transfer.partfile import read_sidecar, sidecar_path
from dsm.transfer.segmented import SegmentedDownload
from tests.conftest import CatalogFn, blob, sha
from tests.enginehelp import run_jobs, setup, until
from tests.httpserver import FileServer

pytestmark = pytest.mark.anyio
SIZE = 8_000_000  # 4 segments of 2 MB
SEGMENT_ENV = {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}
# How long a monkeypatched step waits for the test to act; only reached when something broke.
HOLD = 5.0


class SilentServer:
    """Accepts connections on 127.0.0.1 and reads the request, but never answers it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/a.bin"
        self.request_read = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                received += chunk
            else:
                self.request_read.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    srv = SilentServer()
    yield srv
    srv.close()


async def test_cancel_before_response_headers_is_prompt(
    silent: SilentServer, home: Path, catalog: CatalogFn
) -> None:
    """A cancel while the server has not sent response headers yet stops the job at once."""
    settings, repo = setup(home, catalog(a=silent.url), DSM_STALL_TIMEOUT="8")
    took: list[float] = []

    async def during(engine: Engine, jobs: list[Job]) -> None:
        await until(silent.request_read.is_set)
        t0 = time.monotonic()
        await engine.cancel(jobs[0].id)
        await engine.wait_idle()
        took.append(time.monotonic() - t0)

    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=during)
    assert run.job.status == JobStatus.CANCELED
    assert took[0] < 2, f"cancel took {took[0]:.1f} s with a stall timeout of 8 s"


async def test_segment_sidecar_without_its_part_starts_over(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A segmented sidecar whose .part is gone is not resumed as if the bytes were on disk."""
    data = blob(7, SIZE)
    url = server.add("a.bin", data)
    settings, repo = setup(home, catalog(a=url), **SEGMENT_ENV)
    res = server.resources["/a.bin"]
    part = home / "data" / "a.part"
    part.parent.mkdir(parents=True)
    meta = {
        "url": url,
        "etag": res.etag,
        "last_modified": res.last_modified,
        "total": SIZE,
        "segments": [[0, 2_000_000, 2_000_000], [2_000_000, SIZE, 0]],
    }
    sidecar_path(part).write_text(json.dumps(meta))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == data
    assert repo.dataset("a").checksum == sha(data)


async def test_segment_restart_does_not_rewrite_the_sidecar(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a segment's restart dropped the .part, no sidecar is written again without it."""
    data = blob(8, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    server.fault("a.bin", rate=1_000_000)  # a slow first connection: the download splits
    server.fault("a.bin", ignore_range=True, for_ranges=(4_000_000, 6_000_000))  # file changed
    part = home / "data" / "a.part"
    seen: list[tuple[bool, dict[str, Any]]] = []
    real_finish = SegmentedDownload._finish

    def spy(self: SegmentedDownload, resumed_from: int) -> Fetched:
        if self.error is not None and not seen:
            seen.append((part.exists(), read_sidecar(part)))
        return real_finish(self, resumed_from)

    monkeypatch.setattr(SegmentedDownload, "_finish", spy)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert seen, "no segment restarted"
    part_exists, sidecar = seen[0]
    assert part_exists or not sidecar.get("segments"), (part_exists, sidecar)
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == data


async def test_segmented_disk_full_discards_part(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segmented download that hits ENOSPC frees its .part, like the single stream does."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(9, SIZE))), **SEGMENT_ENV)
    real_pwrite = os.pwrite
    writes: list[int] = []

    def full(fd: int, data: bytes, offset: int) -> int:
        writes.append(len(data))
        if len(writes) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "disk full" in (run.job.error or ""), run.job.error
    assert not (home / "data" / "a.part").exists()


async def test_permanent_segment_failure_ends_the_job_promptly(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A segment failing for good wakes its siblings blocked in a read: no stall timeout."""
    env = {**SEGMENT_ENV, "DSM_STALL_TIMEOUT": "8"}
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(11, SIZE))), **env)
    server.fault("a.bin", rate=1_000_000)
    server.fault("a.bin", stall_after=1000, for_ranges=(2_000_000, 4_000_000))
    server.fault("a.bin", status=404, for_ranges=(4_000_000, 6_000_000))
    t0 = time.monotonic()
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    took = time.monotonic() - t0
    assert run.job.status == JobStatus.FAILED
    assert "404" in (run.job.error or ""), run.job.error
    assert took < 4, f"job ended after {took:.1f} s with a stall timeout of 8 s"


async def test_cancel_right_after_delete_records_the_removal(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel landing after a delete removed the file still records it as not loaded."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(12))))
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert first.job.status == JobStatus.COMPLETED
    removed, cancel_requested = threading.Event(), threading.Event()
    real_remove = files.remove

    def remove_then_hold(path: Path) -> None:
        real_remove(path)
        removed.set()
        cancel_requested.wait(HOLD)

    monkeypatch.setattr(files, "remove", remove_then_hold)

    async def during(engine: Engine, jobs: list[Job]) -> None:
        await until(removed.is_set)
        await engine.cancel(jobs[0].id)
        cancel_requested.set()

    await run_jobs(settings, repo, JobType.DELETE, "a", during=during)
    ds = repo.dataset("a")
    assert not (home / "data" / "a").exists()
    assert not ds.downloaded, f"row says {ds.status}, downloaded, yet the file is gone"
    assert ds.status == Status.NOT_LOADED


async def test_cancel_right_after_update_install_records_the_new_file(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel landing after an update installed the new file records the new checksum."""
    old, new = blob(13), blob(14)
    settings, repo = setup(home, catalog(a=server.add("a.bin", old)))
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert first.job.status == JobStatus.COMPLETED
    server.add("a.bin", new)
    installed, cancel_requested = threading.Event(), threading.Event()
    real_install = files.install

    def install_then_hold(path: Path, size: int, sha256: str) -> files.Installed:
        out = real_install(path, size, sha256)
        installed.set()
        cancel_requested.wait(HOLD)
        return out

    monkeypatch.setattr(files, "install", install_then_hold)

    async def during(engine: Engine, jobs: list[Job]) -> None:
        await until(installed.is_set)
        await engine.cancel(jobs[0].id)
        cancel_requested.set()

    await run_jobs(settings, repo, JobType.UPDATE, "a", during=during)
    ds = repo.dataset("a")
    assert (home / "data" / "a").read_bytes() == new
    assert ds.status == Status.DOWNLOADED
    assert (ds.checksum, ds.size) == (sha(new), len(new)), "row describes the old file"


def test_store_reads_are_safe_against_a_writer_thread(tmp_path: Path) -> None:
    """A read in one thread never iterates tables a transaction in another thread changes."""
    store = Store(tmp_path / "db.json")
    store.put_many("jobs", {str(i): {"id": str(i), "n": i} for i in range(3000)})
    errors: list[BaseException] = []
    reads: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append(len(store.all("jobs")))
            except BaseException as exc:
                errors.append(exc)
                stop.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # threads interleave often: without the fix it fails in ~10 ms
    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 1.0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            key = uuid.uuid4().hex
            store.put("jobs", key, {"id": key})
            store.remove("jobs", key)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert not errors, f"reader failed: {errors[0]!r}"
    assert reads and set(reads) <= {3000, 3001}


async def test_signal_while_jobs_are_recorded_cancels_them(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that arrives while submit_many records the jobs cancels them, exit 143."""
    settings, repo = setup(
        home,
        catalog(a=server.add("a.bin", blob(15, 2_000_000))),
        DSM_STALL_TIMEOUT="8",
        DSM_MAX_RETRIES="0",
    )
    server.always("a.bin", stall_after=1000)  # only a cancel ends this job before 8 s
    signal_handled = threading.Event()
    real_cancel_all = Engine.cancel_all
    real_record = Engine._record_queued

    async def cancel_all(self: Engine) -> None:
        signal_handled.set()
        await real_cancel_all(self)

    def record_with_signal(self: Engine, *args: Any) -> Any:
        # In the store thread: the event loop is free to take the signal meanwhile.
        deadline = time.monotonic() + HOLD
        while signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            assert time.monotonic() < deadline, "headless installed no SIGTERM handler"
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        assert signal_handled.wait(HOLD), "SIGTERM was not handled"
        return real_record(self, *args)

    monkeypatch.setattr(Engine, "cancel_all", cancel_all)
    monkeypatch.setattr(Engine, "_record_queued", record_with_signal)
    t0 = time.monotonic()
    code = await headless.run_jobs(settings, repo, JobType.DOWNLOAD, [{"dataset": "a"}], True)
    took = time.monotonic() - t0
    assert code == 143
    assert [j.status for j in repo.jobs()] == [JobStatus.CANCELED]
    assert took < 4, f"exit after {took:.1f} s: the job was not canceled"


async def test_listener_error_on_finish_does_not_kill_engine(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A listener raising on FINISHED (a broken pipe) neither fails the job nor stops the engine."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(17))))
    finished: list[JobEvent] = []

    def listener(event: JobEvent) -> None:
        if event.kind == EventKind.FINISHED:
            finished.append(event)
            if len(finished) == 1:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    async with Engine(settings, repo, [listener]).running() as engine:
        first = await engine.submit(JobType.DOWNLOAD, {"dataset": "a"})
        await engine.wait_idle()
        second = await engine.submit(JobType.DOWNLOAD, {"dataset": "a", "force_download": True})
        await engine.wait_idle()
    assert [e.job.id for e in finished] == [first.id, second.id]
    for job in (first, second):
        stored = repo.job(job.id)
        assert stored is not None and stored.status == JobStatus.COMPLETED, stored


async def test_empty_file_downloads(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    """A zero-byte file (416 to `Range: bytes=0-`) downloads instead of failing."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", b"")))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == b""
    ds = repo.dataset("a")
    assert ds.status == Status.DOWNLOADED and ds.checksum == sha(b"")
