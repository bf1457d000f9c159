"""Segmented downloads against a live server on 127.0.0.1 with per-connection throttling."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.engine.engine import Engine
from dsm.transfer import segmented
from dsm.transfer.partfile import read_sidecar, sidecar_path, write_sidecar
from tests.conftest import (
    CatalogFn,
    blob,
    dsm_command,
    dsm_env,
    run_dsm,
    sha,
    wait_for,
)
from tests.enginehelp import run_jobs, setup, until
from tests.httpserver import FileServer

pytestmark = pytest.mark.anyio
SIZE = 8_000_000  # 4 segments of 2 MB
SEGMENT_ENV = {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}


def starts(server: FileServer, path: str) -> list[int | None]:
    return [r.range_start for r in server.requests(path)]


def read_back(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offsets the hashing thread reads back from the .part (segmented's os.preadv)."""
    offsets: list[int] = []
    real = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        offsets.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    return offsets


async def test_a_lead_that_is_not_split_is_hashed_as_written(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast first connection keeps the whole file: its bytes are hashed from its buffers,
    none read back from the disk, and the hash is still of the bytes written."""
    data = blob(21, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    monkeypatch.setattr(segmented, "SPLIT_BELOW", 0)  # however loaded the machine: no split
    offsets = read_back(monkeypatch)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert starts(server, "a.bin") == [0]
    assert (home / "data" / "a").read_bytes() == data and repo.dataset("a").checksum == sha(data)
    assert offsets == []


async def test_a_split_lead_is_hashed_as_written_and_the_rest_read_back(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(22, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    server.always("a.bin", rate=2_000_000)  # slow enough per connection to be split
    offsets = read_back(monkeypatch)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert sorted(s or 0 for s in starts(server, "a.bin")) == [0, 2_000_000, 4_000_000, 6_000_000]
    assert repo.dataset("a").checksum == sha(data)
    assert offsets and min(offsets) == 2_000_000  # the lead's 2 MB never read back


def segmented_partial(
    server: FileServer, home: Path, segments: list[list[int]], encoding: str | None = None
) -> Path:
    """The sidecar a segmented download of the server's a.bin left (validators, total,
    `segments` as [start, end, done], the Content-Encoding it began with); returns the
    .part's path (not written)."""
    res = server.resources["/a.bin"]
    part = home / "data" / "a.part"
    part.parent.mkdir(parents=True)
    meta = {
        "url": server.url("a.bin"),
        "etag": res.etag,
        "last_modified": res.last_modified,
        "total": SIZE,
        "encoding": encoding,
        "segments": segments,
    }
    sidecar_path(part).write_text(json.dumps(meta))
    return part


async def test_a_resumed_lead_is_read_back_from_the_start(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed lead has bytes from before that its stream never saw: they are read back
    (and hashed) before anything after them."""
    data = blob(23, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    part = segmented_partial(server, home, [[0, SIZE, 1_000_000]])
    part.write_bytes(data[:1_000_000] + bytes(SIZE - 1_000_000))
    offsets = read_back(monkeypatch)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert starts(server, "a.bin") == [1_000_000]
    assert repo.dataset("a").checksum == sha(data)
    assert offsets[0] == 0


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_segments_resumed_under_another_content_encoding_restart(
    server: FileServer, home: Path, catalog: CatalogFn, encoding: str | None
) -> None:
    """The segments were started with a gzip body (kept as sent); the server now answers
    identity under the same ETag: continuing would mix the two in one file. The set starts
    again from zero; started identity, it resumes."""
    data = blob(24, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    part = segmented_partial(server, home, [[0, SIZE, 1_000_000]], encoding)
    part.write_bytes(data[:1_000_000] + bytes(SIZE - 1_000_000))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == data
    if encoding is None:
        assert starts(server, "a.bin") == [1_000_000]
    else:
        assert starts(server, "a.bin")[:2] == [1_000_000, 0]
        assert run.job.attempts == 2


async def test_a_lone_segment_is_flushed_as_it_grows(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk writes while the body arrives (an fdatasync and a sidecar save every
    SYNC_EVERY bytes), not only once a second, so the final fsync has little left."""
    data = blob(24, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    server.always("a.bin", rate=4_000_000)
    monkeypatch.setattr(segmented, "SPLIT_BELOW", 0)
    monkeypatch.setattr(segmented, "SAVE_INTERVAL", 1000.0)  # only the byte count saves
    monkeypatch.setattr(segmented, "SYNC_EVERY", 1_000_000)
    saved: list[list[list[int]]] = []
    real = write_sidecar

    def record(part: Path, meta: dict[str, object]) -> None:
        segs = meta["segments"]
        assert isinstance(segs, list)
        saved.append(segs)
        real(part, meta)

    monkeypatch.setattr(segmented, "write_sidecar", record)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    progress = [segs[0][2] for segs in saved]
    # Saves in between the first (nothing yet) and the last (all), each after a flush.
    assert len([p for p in progress if 0 < p < SIZE]) >= 2, progress


async def test_segmented_is_faster_than_one_stream_and_verifies(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(1, SIZE)
    cat = catalog(a=server.add("a.bin", data))
    server.always("a.bin", rate=2_000_000)  # per connection
    settings, repo = setup(home, cat, **SEGMENT_ENV)
    t0 = time.monotonic()
    seg = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    segmented = time.monotonic() - t0
    assert seg.job.status == JobStatus.COMPLETED
    assert (home / "data" / "a").read_bytes() == data
    assert repo.dataset("a").checksum == sha(data)
    assert sorted(s or 0 for s in starts(server, "a.bin")) == [0, 2_000_000, 4_000_000, 6_000_000]
    assert server.bytes_sent("a.bin") < SIZE + 300_000  # segment 0's stream stops at its end
    assert not (home / "data" / "a.part").exists()

    t0 = time.monotonic()
    one = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", force=True, segments=1)
    single = time.monotonic() - t0
    assert one.job.status == JobStatus.COMPLETED
    assert single / segmented > 2.0, (single, segmented)


async def test_small_files_take_the_single_stream(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(2, 500_000))), **SEGMENT_ENV)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert len(server.requests("a.bin")) == 1


async def test_server_without_ranges_takes_the_single_stream(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(3, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    server.always("a.bin", ignore_range=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert [r.status for r in server.requests("a.bin")] == [200]
    assert (home / "data" / "a").read_bytes() == data


async def test_one_failing_segment_is_retried_on_its_own(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(4, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    server.always("a.bin", rate=2_000_000)  # slow enough per connection to be split
    server.fault("a.bin", times=3, drop_after=100_000, for_ranges=(4_000_000, 6_000_000))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 1
    seen = starts(server, "a.bin")
    assert seen.count(0) == 1 and seen.count(2_000_000) == 1 and seen.count(6_000_000) == 1
    third = [s for s in seen if s is not None and 4_000_000 <= s < 6_000_000]
    assert third[0] == 4_000_000 and len(third) == 4  # three drops, each resumed where it ended
    assert third == sorted(third) and third[-1] >= 4_000_000 + 3 * 100_000 - 3 * 65_536
    assert (home / "data" / "a").read_bytes() == data


async def test_validator_change_aborts_the_set_and_gives_the_new_version(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    old, new = blob(5, SIZE), blob(6, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", old)), **SEGMENT_ENV)
    server.always("a.bin", rate=2_000_000)
    # Segment 1 drops early; by its retry the file has changed on the server.
    server.fault("a.bin", drop_after=50_000, for_ranges=(2_000_000, 4_000_000), rate=2_000_000)

    def segment_1_dropped() -> bool:
        return any(
            r.done and 2_000_000 <= (r.range_start or 0) < 4_000_000
            for r in server.requests("a.bin")
        )

    async def change(engine: Engine, jobs: list[Job]) -> None:
        await until(segment_1_dropped)
        server.add("a.bin", new)  # before the segment's retry (retry_delay below)

    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=change, retry_delay=0.3)
    assert run.job.status == JobStatus.COMPLETED
    assert (home / "data" / "a").read_bytes() == new  # never a mix of two versions
    assert repo.dataset("a").checksum == sha(new)
    assert 200 in [r.status for r in server.requests("a.bin")]  # If-Range refused the old tag


def test_kill_9_resumes_every_segment(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    data = blob(7, SIZE)
    cat = catalog(a=server.add("a.bin", data))
    server.always("a.bin", rate=1_500_000)
    env = {**dsm_env(home, cat), **SEGMENT_ENV}
    proc = subprocess.Popen(
        [*dsm_command(), "--run-job", "download", "--dataset", "a"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    part = home / "data" / "a.part"

    def progressed() -> bool:
        segs = read_sidecar(part).get("segments") or []
        return len(segs) == 4 and all(done >= 500_000 for _, _, done in segs)

    wait_for(progressed, timeout=30)
    proc.kill()
    proc.wait()
    segments = read_sidecar(part)["segments"]
    recorded = {start + done for start, _, done in segments}
    kept = sum(done for _, _, done in segments)
    before = len(server.requests("a.bin"))
    server.always("a.bin")
    again = run_dsm(
        "--run-job",
        "download",
        "--dataset",
        "a",
        home=home,
        catalog_path=cat,
        DSM_SEGMENTS="4",
        DSM_SEGMENT_MIN="1000000",
    )
    assert again.returncode == 0, again.stderr
    resumed = {r.range_start for r in server.requests("a.bin")[before:]}
    assert resumed == recorded  # every segment continued where its recorded bytes end
    # Only what the sidecar had not counted travels again (how much was in flight at the
    # kill depends on timing; what the resume asks for does not).
    assert sum(r.sent for r in server.requests("a.bin")[before:]) == len(data) - kept
    assert (home / "data" / "a").read_bytes() == data


async def test_connections_per_host_are_capped(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog(a=server.add("a.bin", blob(8, SIZE)), b=server.add("b.bin", blob(9, SIZE)))
    server.always("a.bin", rate=3_000_000)
    server.always("b.bin", rate=3_000_000)
    settings, repo = setup(home, cat, DSM_HOST_CONNECTIONS="3", **SEGMENT_ENV)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", "b")
    assert [j.status for j in run.jobs] == [JobStatus.COMPLETED, JobStatus.COMPLETED]
    reqs = server.requests("a.bin") + server.requests("b.bin")
    assert len(reqs) == 8
    # The throttled server notices a client's close up to one tick (50 ms) late: count a
    # request from its arrival until 0.1 s before the server let go of it.
    events = sorted([(r.at, 1) for r in reqs] + [(r.ended - 0.1, -1) for r in reqs])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 3


async def test_segment_sidecar_without_its_part_starts_over(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A segmented sidecar whose .part is gone is not resumed as if the bytes were on disk."""
    data = blob(7, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **SEGMENT_ENV)
    segmented_partial(server, home, [[0, 2_000_000, 2_000_000], [2_000_000, SIZE, 0]])
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == data
    assert repo.dataset("a").checksum == sha(data)


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


async def test_segment_restart_drops_the_whole_set(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A segment that meets another version drops the .part and its sidecar together (never a
    sidecar left without its .part); the next attempt starts clean and completes."""
    data = blob(8, SIZE)
    url = server.add("a.bin", data)
    settings, repo = setup(home, catalog(a=url), DSM_MAX_RETRIES="0", **SEGMENT_ENV)
    server.fault("a.bin", rate=1_000_000)  # a slow first connection: the download splits
    server.fault("a.bin", ignore_range=True, for_ranges=(4_000_000, 6_000_000))  # file changed
    part = home / "data" / "a.part"
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED, run.job.error
    assert "the file changed on the server; restarting from zero" in (run.job.error or "")
    assert not part.exists() and not sidecar_path(part).exists()
    again = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert again.job.status == JobStatus.COMPLETED, again.job.error
    assert (home / "data" / "a").read_bytes() == data


@pytest.mark.parametrize(("retries", "status"), [(1, JobStatus.FAILED), (2, JobStatus.COMPLETED)])
async def test_segments_draw_from_the_jobs_one_retry_budget(
    retries: int, status: JobStatus, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """Two segments dropped once each need two retries: a job allowed one fails (segments
    have no budget of their own), a job allowed two completes."""
    data = blob(16, SIZE)
    env = {**SEGMENT_ENV, "DSM_MAX_RETRIES": str(retries), "DSM_RETRY_DELAY": "0"}
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **env)
    server.always("a.bin", rate=2_000_000)  # slow enough per connection to be split
    server.fault("a.bin", drop_after=100_000, for_ranges=(2_000_000, 4_000_000))
    server.fault("a.bin", drop_after=100_000, for_ranges=(4_000_000, 6_000_000))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == status, run.job.error
    assert run.job.attempts == 1  # the engine never retried the whole: the segments spent it
    if status == JobStatus.FAILED:
        assert "peer closed connection" in (run.job.error or ""), run.job.error
