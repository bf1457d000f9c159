"""The direct body read (dsm.transfer.bodyread) against the live server: a large plain body
comes from the socket into preallocated buffers, and every guarantee of the httpx path holds
(length, resume, timeouts, cancel, progress); anything else falls back to httpx."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dsm.domain.events import EventKind
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine.engine import Engine
from dsm.transfer import segmented, single
from dsm.transfer.bodyread import DIRECT_MIN, BodyReader, Stages
from dsm.transfer.http import Policy
from tests.conftest import CatalogFn, blob, sha
from tests.enginehelp import run_jobs, setup, until
from tests.httpserver import CHUNK, FileServer

pytestmark = pytest.mark.anyio
# Large enough that a resume after the first MiB still takes the direct path; the last
# server write is small (see test_bytes_past_the_content_length_are_refused).
BIG = 2 * DIRECT_MIN + 5000


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> list[BodyReader]:
    """Every BodyReader the transfers make, to see which path each body took."""
    made: list[BodyReader] = []

    class Recording(BodyReader):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(single, "BodyReader", Recording)
    monkeypatch.setattr(segmented, "BodyReader", Recording)
    return made


def target(home: Path) -> Path:
    return home / "data" / "a"


def read_all(resp: httpx.Response, size: int = 1 << 20) -> tuple[BodyReader, bytes]:
    reader = BodyReader(resp, Policy(stall_timeout=10), str(resp.url))
    buf, out = memoryview(bytearray(size)), bytearray()
    while n := reader.fill(buf):
        out += buf[:n]
    return reader, bytes(out)


def test_only_a_large_plain_body_is_read_from_the_socket(server: FileServer) -> None:
    big, small = blob(1, BIG), blob(2, DIRECT_MIN - 1)
    server.add("big.bin", big)
    server.add("small.bin", small)
    server.add("gz.bin", big)
    server.always("gz.bin", headers={"Content-Encoding": "gzip"})
    with httpx.Client() as client:
        for path, data, direct in (("big.bin", big, True), ("small.bin", small, False)):
            with client.stream("GET", server.url(path)) as resp:
                reader, got = read_all(resp)
            assert (reader.direct, got) == (direct, data)
        with client.stream("GET", server.url("gz.bin")) as resp:
            reader, got = read_all(resp)
        assert not reader.direct and got == big  # the bytes as served, through httpx


def test_a_direct_read_never_hands_out_bytes_past_the_body(server: FileServer) -> None:
    """A small buffer and a body that is not a multiple of it: the last fill is short."""
    data = blob(3, BIG)
    with httpx.Client() as client, client.stream("GET", server.add("a.bin", data)) as resp:
        reader, got = read_all(resp, size=65_537)
    assert reader.direct and got == data


async def test_a_large_download_takes_the_direct_path_and_reports_progress_to_the_end(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(4, BIG)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert [r.direct for r in readers] == [True]
    assert target(home).read_bytes() == data and repo.dataset("a").checksum == sha(data)
    done = [e.job.bytes_done for e in run.kinds(EventKind.PROGRESS)]
    assert done == sorted(done) and done[-1] == len(data)
    assert run.job.bytes_done == len(data) and run.job.bytes_total == len(data)


async def test_a_body_cut_short_keeps_every_byte_and_resumes_with_if_range(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(5, BIG)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", drop_after=1_000_003)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", retry_delay=0.0)
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 2
    (retry,) = run.kinds(EventKind.RETRYING)
    assert "peer closed connection without sending complete message body" in (retry.job.error or "")
    first, second = server.requests("a.bin")
    assert first.sent == 1_000_003
    # Every byte that arrived before the close was kept: the resume asks for the next one.
    assert second.range_start == 1_000_003 and second.status == 206
    assert second.headers["if-range"] == server.resources["/a.bin"].etag
    assert [r.direct for r in readers] == [True, True]
    assert target(home).read_bytes() == data


async def test_a_body_shorter_than_its_length_is_never_accepted(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(6, BIG)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.always("a.bin", content_length=BIG + 1000, ignore_range=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", max_retries=1, retry_delay=0.0)
    assert run.job.status == JobStatus.FAILED
    assert readers and all(r.direct for r in readers)
    assert not target(home).exists()
    ds = repo.dataset("a")
    assert not ds.downloaded and ds.status == Status.ERROR


async def test_bytes_past_the_content_length_are_refused(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(7, BIG)
    assert 1000 < BIG % CHUNK < CHUNK // 2  # the announced end and the excess: one small write
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.always("a.bin", content_length=BIG - 1000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "sent more bytes than its Content-Length" in (run.job.error or "")
    assert [r.direct for r in readers] == [True]
    assert not target(home).exists() and not repo.dataset("a").downloaded
    # A server that lies about the length: nothing of it kept, a later run cannot take it.
    assert not (home / "data" / "a.part").exists()


async def test_a_stalled_server_times_out_and_the_download_resumes(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(8, BIG)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", stall_after=1_500_000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", stall_timeout=0.5)
    assert run.job.status == JobStatus.COMPLETED
    (retry,) = run.kinds(EventKind.RETRYING)
    assert "stalled: no data for 0.5 s" in (retry.job.error or "")
    assert server.requests("a.bin")[1].range_start == 1_500_000
    assert readers[0].direct and target(home).read_bytes() == data


async def test_a_cancel_stops_a_direct_read_and_the_partial_resumes(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(9, BIG)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.always("a.bin", rate=1_000_000)

    async def cancel(engine: Engine, jobs: list[Job]) -> None:
        await until(lambda: jobs[0].bytes_done > 1_500_000)
        assert await engine.cancel(jobs[0].id)
        await engine.wait_idle()

    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=cancel)
    assert run.job.status == JobStatus.CANCELED and readers[0].direct
    # The read really stopped: the server's send fails well before the end of the body.
    await until(lambda: all(r.done for r in server.requests("a.bin")))
    assert server.bytes_sent("a.bin") < BIG - DIRECT_MIN
    kept = (home / "data" / "a.part").stat().st_size
    assert kept >= 1_000_000
    server.always("a.bin")
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert server.requests("a.bin")[-1].range_start == kept
    assert target(home).read_bytes() == data


async def test_a_segmented_download_reads_its_lead_directly(
    server: FileServer, home: Path, catalog: CatalogFn, readers: list[BodyReader]
) -> None:
    data = blob(10, BIG)
    env = {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **env)
    server.always("a.bin", rate=4_000_000)  # slow: split after the first tenth of a second
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert target(home).read_bytes() == data and repo.dataset("a").checksum == sha(data)
    starts = sorted(r.range_start or 0 for r in server.requests("a.bin"))
    assert len(starts) == 4 and starts[0] == 0
    # The lead's body is the whole file (direct); the split ranges are below DIRECT_MIN.
    assert [r.direct for r in readers] == [True, False, False, False]


def test_a_stage_that_wants_no_more_still_passes_its_last_buffer_on() -> None:
    """A writer that took the last bytes it wanted (False) has that buffer hashed by the next
    stage; the buffers after it skip every stage."""
    written: list[bytes] = []
    hashed: list[bytes] = []

    def write(data: memoryview) -> bool:
        written.append(bytes(data))
        return len(written) < 2

    def hash_(data: memoryview) -> bool:
        hashed.append(bytes(data))
        return True

    with Stages([write, hash_], 4, 8) as stages:
        for fill in (b"a", b"b", b"c"):
            buf = stages.take(lambda: None)
            if buf is None:
                break
            buf[:1] = fill
            stages.put(buf, 1)
    assert written == hashed == [b"a", b"b"]
