"""Issue 12: never call wrong bytes a verified download, never let the store say what is not
so. Each test drives the live local server (faults on demand) or real `dsm` processes."""

from __future__ import annotations

import email.utils
import errno
import gzip
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from dsm.api.app import render_dataset
from dsm.cli import main
from dsm.domain.events import EventKind
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine.engine import Engine
from dsm.engine.ledger import Ledger
from dsm.engine.locks import LockFile
from dsm.transfer import single
from tests.conftest import CatalogFn, blob, dsm_command, dsm_env, run_dsm, sha, wait_for
from tests.enginehelp import Run, run_jobs, setup, until
from tests.httpserver import FileServer

pytestmark = pytest.mark.anyio
SIZE = 2_000_000
CUT = 700_000


def entry(name: str, url: str, data: bytes | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"name": name, "description": name, "original_url": url}
    e["local_path"] = f"data/{name}"
    if data is not None:
        e["expected_size"], e["expected_sha256"] = len(data), sha(data)
    return e


def retry_errors(run: Run) -> list[str]:
    return [e.job.error or "" for e in run.kinds(EventKind.RETRYING)]


# -- 1. nothing is marked a proven download unless its bytes are proven ---------------------
def test_a_cut_body_nothing_can_prove_is_not_a_proven_download(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """No Content-Length, no validators, Range ignored, cut at 700,000 of 2,000,000: the
    copy is kept but `confirmed: false` everywhere, the run fails, the next download fetches
    again and compares."""
    data = blob(21, SIZE)
    cat = catalog(a=server.add("a.bin", data, etag=None, last_modified=False))
    server.always("a.bin", no_length=True, ignore_range=True)
    server.fault("a.bin", no_length=True, ignore_range=True, drop_after=CUT)
    run = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert run.returncode == 1, run.stderr
    assert "dsm: a: downloaded, not confirmed: the server sent no length" in run.stderr
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["size"], row["confirmed"]) == (CUT, False)
    assert "may have been cut short" in row["unconfirmed_reason"]
    listed = run_dsm("list", home=home, catalog_path=cat).stdout
    assert "(unconfirmed)" in listed
    page = json.loads(run_dsm("list", "--json", home=home, catalog_path=cat).stdout)
    assert page["datasets"][0]["confirmed"] is False
    # The API serialises the same row.
    repo = setup(home, cat)[1]
    assert render_dataset(repo.dataset("a"))["confirmed"] is False
    # Not trusted: the next download fetches again (no "already downloaded"), and says how the
    # new bytes compare with the unproven ones.
    again = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert again.returncode == 1 and "already downloaded" not in again.stderr
    assert len(server.requests("a.bin")) == 2
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["size"], row["checksum"], row["confirmed"]) == (SIZE, sha(data), False)
    assert (
        f"other bytes than the previous fetch, sha256 {sha(data[:CUT])}"
        in (row["unconfirmed_reason"])
    )


def test_catalogue_size_and_sha256_prove_a_body_without_length(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(22, 300_000)
    url = server.add("a.bin", data, etag=None, last_modified=False)
    cat = catalog([entry("a", url, data)])
    server.always("a.bin", no_length=True, ignore_range=True)
    run = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert run.returncode == 0, run.stderr
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["confirmed"], row["unconfirmed_reason"]) == (True, None)


@pytest.mark.parametrize("validators", [False, True], ids=["no-validator", "strong-etag"])
def test_a_body_without_length_stops_past_the_catalogue_size(
    server: FileServer, home: Path, catalog: CatalogFn, validators: bool
) -> None:
    """A server that sends no length and more than the catalogue's `expected_size` (an endless
    body fills the disk) is cut off one byte past it: the job fails without a retry, saying
    so, and nothing of it is kept."""
    size, sent = 300_000, blob(23, 24 << 20)
    url = server.add("a.bin", sent, etag="auto" if validators else None, last_modified=False)
    cat = catalog([{**entry("a", url), "expected_size": size}])
    server.always("a.bin", no_length=True, ignore_range=True)
    run = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert run.returncode == 1, run.stderr
    assert f"the server sent more than the expected {size} bytes" in run.stderr
    assert len(server.requests("a.bin")) == 1  # no retry: the server sends another file
    assert server.bytes_sent("a.bin") < len(sent)  # cut off, not read to its end
    assert sorted(p.name for p in (home / "data").iterdir()) == []
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["status"], row["downloaded"]) == ("error", False)


@pytest.mark.parametrize("framing", ["close", "chunked", "announced"])
def test_a_body_without_a_catalogue_size_stops_at_the_download_cap(
    server: FileServer, home: Path, catalog: CatalogFn, framing: str
) -> None:
    """No `expected_size` in the catalogue and a server that sends more than
    DSM_DOWNLOAD_MAX_BYTES (no length: an endless body; or a length that says so): cut off
    past the cap, or refused before the body; no retry, nothing kept, the store intact."""
    sent = blob(24, 24 << 20)
    url = server.add("a.bin", sent, last_modified=False)
    cat = catalog(a=url)
    fault = {
        "close": {"no_length": True, "ignore_range": True},
        "chunked": {"chunked": True, "ignore_range": True},
        "announced": {},
    }[framing]
    server.always("a.bin", **fault)
    run = run_dsm(
        "--run-job",
        "download",
        "--dataset",
        "a",
        home=home,
        catalog_path=cat,
        DSM_DOWNLOAD_MAX_BYTES=str(1 << 20),
    )
    assert run.returncode == 1, run.stderr
    said = (
        f"server announces {len(sent)} bytes ({url}), more than the 1048576 taken without the "
        "catalogue's expected_size (DSM_DOWNLOAD_MAX_BYTES)"
        if framing == "announced"
        else "stopped: the server sent more than 1048576 bytes without a length, the most "
        "taken without the catalogue's expected_size (DSM_DOWNLOAD_MAX_BYTES)"
    )
    assert f"download a: failed: {said}" in run.stderr
    assert len(server.requests("a.bin")) == 1  # no retry: the server sends the same again
    assert server.bytes_sent("a.bin") < len(sent) // 2  # cut off, not read to its end
    assert list((home / "data").glob("*")) == []
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["status"], row["downloaded"], row["error"]) == ("error", False, said)


@pytest.mark.parametrize("size", [300_000, 6 << 20], ids=["small", "large"])
def test_a_content_encoded_body_is_kept_as_sent(
    server: FileServer, home: Path, catalog: CatalogFn, size: int
) -> None:
    """dsm asks for the bytes as stored (Accept-Encoding: identity). A server that sends
    `Content-Encoding: gzip` anyway (Apache's AddEncoding on a .gz file) is taken as sent:
    the file on disk is the raw body, the bytes its hash names, never decoded; a catalogue
    hash of the decoded bytes is a mismatch, not a silent decode."""
    data = blob(26, size)
    raw = gzip.compress(data, compresslevel=1)
    url = server.add("a.bin", raw)
    server.always("a.bin", headers={"Content-Encoding": "gzip"})
    cat = catalog(
        [
            {**entry("raw", url), "expected_size": len(raw), "expected_sha256": sha(raw)},
            {**entry("decoded", url), "expected_sha256": sha(data)},
        ]
    )
    run = run_dsm("--run-job", "download", "--dataset", "raw", home=home, catalog_path=cat)
    assert run.returncode == 0, run.stderr
    assert (home / "data" / "raw").read_bytes() == raw
    assert all(s.headers["accept-encoding"] == "identity" for s in server.requests("a.bin"))
    run = run_dsm("--run-job", "download", "--dataset", "decoded", home=home, catalog_path=cat)
    assert run.returncode == 1 and "checksum mismatch" in run.stderr, run.stderr
    assert not (home / "data" / "decoded").exists()


# -- 2. a response that contradicts the request is never appended -------------------------
@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (
            {"range_as_200": True},
            f"server answered 200 (a whole file) with Content-Range "
            f"'bytes {CUT}-{SIZE - 1}/{SIZE}'",
        ),
        (
            {"range_end_short": 1000},
            f"server sent bytes {CUT}-{SIZE - 1001}/{SIZE} for a request from byte {CUT}",
        ),
        (
            {"range_total": SIZE + 5},
            f"server says the file has {SIZE + 5} bytes, the partial file's sidecar recorded "
            f"{SIZE}",
        ),
        (
            # "Nothing after your bytes": the partial would be called whole at 700,000.
            {"status": 416, "headers": {"Content-Range": f"bytes */{CUT}"}},
            f"server says the file has {CUT} bytes (HTTP 416), the partial file's sidecar "
            f"recorded {SIZE}",
        ),
    ],
    ids=["200-with-tail", "206-short-end", "206-other-total", "416-at-the-partial-end"],
)
async def test_a_resume_answer_that_contradicts_the_request_restarts(
    server: FileServer, home: Path, catalog: CatalogFn, fault: dict[str, Any], said: str
) -> None:
    """A broken proxy's answer to the resume: nothing appended; the partial restarts from
    zero and the error says what the server did. No catalogue size or sha to catch it."""
    data = blob(23, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", drop_after=CUT)
    server.fault("a.bin", for_ranges=(CUT, CUT + 1), **fault)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert f"{said}; restarting from zero" in retry_errors(run)[1]
    resumed, fresh = server.requests("a.bin")[1:3]
    assert resumed.range_start == CUT and fresh.range_start in (None, 0)
    assert (home / "data" / "a").read_bytes() == data
    ds = run.dataset("a")
    assert (ds.size, ds.checksum, ds.confirmed) == (SIZE, sha(data), True)


def coded(encoding: str | None) -> dict[str, str]:
    return {"Content-Encoding": encoding} if encoding else {}


@pytest.mark.parametrize(
    ("first", "then"), [("gzip", None), (None, "gzip"), ("gzip", "br"), ("gzip", "gzip")]
)
async def test_a_resume_under_another_content_encoding_restarts(
    server: FileServer, home: Path, catalog: CatalogFn, first: str | None, then: str | None
) -> None:
    """A body is kept as sent, Content-Encoding and all: a server that starts the file in one
    encoding and answers the resume in another under the same strong ETag would leave a
    partial of two encodings. The sidecar records the encoding the partial began with; a
    206 in another restarts from zero (the same one resumes)."""
    data = blob(47, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", drop_after=CUT, headers=coded(first))
    server.fault("a.bin", for_ranges=(CUT, CUT + 1), headers=coded(then))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    seen = server.requests("a.bin")
    assert seen[1].range_start == CUT and seen[1].status == 206
    if first == then:
        assert len(seen) == 2  # resumed
    else:
        said = (
            f"the server answered the resume with Content-Encoding {then or 'identity'}, the "
            f"partial file was started with {first or 'identity'}; restarting from zero"
        )
        assert said in retry_errors(run)[1]
        assert len(seen) == 3 and seen[2].range_start in (None, 0)
    assert (home / "data" / "a").read_bytes() == data


@pytest.mark.parametrize("etag", ["auto", None], ids=["etag", "last-modified"])
async def test_a_resume_answered_without_the_version_asked_for_restarts(
    server: FileServer, home: Path, catalog: CatalogFn, etag: str | None
) -> None:
    """The file changes between a cut and the resume, and the server ignores If-Range: it
    answers the range with a 206 naming no ETag or Last-Modified. Appended, v1's head and
    v2's tail were recorded as a verified, confirmed download (no catalogue sha to catch
    it). A 206 that does not echo the validator asked for proves nothing: restart."""
    v1, v2 = blob(48, SIZE), blob(49, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", v1, etag=etag)))
    server.fault("a.bin", drop_after=CUT)
    cut = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", max_retries=0)
    assert cut.job.status == JobStatus.FAILED
    old = email.utils.formatdate(time.time() - 30, usegmt=True)  # another Last-Modified
    server.add("a.bin", v2, etag=etag, last_modified=old)
    server.fault("a.bin", for_ranges=(CUT, CUT + 1), blind_range=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    named = "ETag" if etag else "Last-Modified"
    assert f"names no {named}" in retry_errors(run)[0]
    resumed, fresh = server.requests("a.bin")[1:3]
    assert resumed.range_start == CUT and resumed.status == 206
    assert fresh.range_start in (None, 0)
    assert (home / "data" / "a").read_bytes() == v2
    assert (run.dataset("a").checksum, run.dataset("a").confirmed) == (sha(v2), True)


async def test_a_contradicting_answer_fails_with_what_the_server_did(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(24, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), DSM_MAX_RETRIES="1")
    server.fault("a.bin", drop_after=CUT)
    server.always("a.bin", range_as_200=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "server answered 200 (a whole file) with Content-Range" in (run.job.error or "")
    assert not (home / "data" / "a").exists()


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        (
            [{"chunked": True, "content_length": 5}],
            "the server framed its answer two ways, Transfer-Encoding 'chunked' and "
            "Content-Length '5': one of them lies",
        ),
        (
            [{"drop_after": CUT}, {"for_ranges": (CUT, CUT + 1), "excess": 64 << 20}],
            f"the server sent more than the {SIZE} bytes it announced",
        ),
        (
            [
                {"drop_after": CUT},
                {"for_ranges": (CUT, CUT + 1), "excess": 64 << 20, "chunked": True},
            ],
            f"the server sent more than the {SIZE} bytes it announced",
        ),
    ],
    ids=["chunked-and-a-length", "206-longer-than-its-range", "chunked-206-past-its-range"],
)
async def test_a_body_past_the_length_it_announced_is_cut_off(
    server: FileServer, home: Path, catalog: CatalogFn, faults: list[dict[str, Any]], said: str
) -> None:
    """A response whose framing goes on past the length it announced: chunks under a
    Content-Length of 5 (dsm wrote the 2 MB body, called the partial of 2 MB over its 5
    whole, cut it to 5 bytes and recorded them as a verified download, exit 0), or a resume
    answered with a 206 whose Content-Length or chunks go 64 MiB past its Content-Range (read
    to the end: an endless one filled the disk). Refused or cut off one byte past the
    total, no retry, nothing kept. No catalogue size or sha to catch it."""
    data = blob(27, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    for fault in faults:
        server.fault("a.bin", **fault)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert said in (run.job.error or "")
    assert server.bytes_sent("a.bin") < SIZE + (32 << 20)  # cut off, not read to its end
    assert list((home / "data").glob("*")) == []
    assert (run.dataset("a").status, run.dataset("a").downloaded) == (Status.ERROR, False)


# -- 3. resume only with validators RFC 9110 calls strong ----------------------------------
async def test_last_modified_of_the_same_second_does_not_resume(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The file is replaced within the second its Last-Modified names (Date == Last-Modified):
    that Last-Modified is weak, so the partial of v1 is not continued with v2's bytes."""
    stamp = email.utils.formatdate(time.time(), usegmt=True)
    v1, v2 = blob(25, SIZE), blob(26, SIZE)
    url = server.add("a.bin", v1, etag=None, last_modified=stamp, date=stamp)
    settings, repo = setup(home, catalog(a=url), DSM_MAX_RETRIES="0")
    server.fault("a.bin", drop_after=CUT)
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert first.job.status == JobStatus.FAILED
    assert (home / "data" / "a.part").stat().st_size == CUT
    server.add("a.bin", v2, etag=None, last_modified=stamp, date=stamp)
    second = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert second.job.status == JobStatus.COMPLETED
    fresh = server.requests("a.bin")[1]
    assert fresh.range_start in (None, 0) and "if-range" not in fresh.headers
    assert (home / "data" / "a").read_bytes() == v2


async def test_last_modified_a_second_older_than_date_resumes(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The contrast: the same file, its Last-Modified a minute old, resumes with If-Range."""
    data = blob(27, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data, etag=None)))
    server.fault("a.bin", drop_after=CUT)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    resumed = server.requests("a.bin")[1]
    last_modified = server.resources["/a.bin"].last_modified
    assert resumed.range_start == CUT and resumed.headers["if-range"] == last_modified
    assert (home / "data" / "a").read_bytes() == data


# -- 4. a job downloads against the expectations it started with ---------------------------
async def test_catalogue_changed_by_another_process_during_a_download(
    server: FileServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    a, b = blob(28, 300_000), blob(29, 400_000)
    v1 = catalog([entry("a", server.add("a.bin", a), a)])
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"datasets": [entry("a", server.add("b.bin", b), b)]}))
    settings, repo = setup(home, v1)
    gate = threading.Event()
    server.fault("a.bin", gate=gate)

    async def register_v2(engine: Engine, jobs: list[Job]) -> None:
        await until(lambda: bool(server.requests("a.bin")))  # the download has started
        listed = await anyio.to_thread.run_sync(lambda: run_dsm("list", home=home, catalog_path=v2))
        assert listed.returncode == 0, listed.stderr
        gate.set()

    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=register_v2)
    assert run.job.status == JobStatus.COMPLETED
    assert run.job.expect == {"url": server.url("a.bin"), "expected_size": len(a)} | {
        "expected_sha256": sha(a)
    }
    ds = run.dataset("a")
    assert (ds.status, ds.size, ds.checksum, ds.outdated) == (
        Status.DOWNLOADED,
        len(a),
        sha(a),
        True,
    )
    assert ds.outdated_reason is not None
    assert f"url '{server.url('a.bin')}' -> '{server.url('b.bin')}'" in ds.outdated_reason
    # verify names the expectation and where it comes from.
    settings2, repo2 = setup(home, v2)
    check = await run_jobs(settings2, repo2, JobType.VERIFY, "a")
    assert check.job.error == (
        f"size mismatch on disk: expected {len(b)} bytes (catalogue), found {len(a)}"
    )
    # Under v2 the download is not skipped: it fetches B.
    again = await run_jobs(settings2, repo2, JobType.DOWNLOAD, "a")
    assert again.job.status == JobStatus.COMPLETED
    assert (home / "data" / "a").read_bytes() == b
    assert again.dataset("a").outdated is False


# -- 6. every write loop checks the bytes written -----------------------------------------
def short_pwrite(limit: int, calls: list[int]) -> Any:
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        calls.append(len(data))
        return real(fd, bytes(data)[:limit], offset) if limit else 0

    return pwrite


class ShortFile:
    """A file object whose write takes at most `limit` bytes (0: none)."""

    def __init__(self, fh: Any, limit: int) -> None:
        self.fh, self.limit = fh, limit

    def write(self, data: Any) -> int:
        return self.fh.write(bytes(data)[: self.limit]) if self.limit else 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def short_sink(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    real_init = single._Sink.__init__

    def init(self: single._Sink, part: Path, offset: int, blob_size: int | None) -> None:
        real_init(self, part, offset, blob_size)
        self.fh = ShortFile(self.fh, limit)  # type: ignore[assignment]

    monkeypatch.setattr(single._Sink, "__init__", init)


def segments(segmented: bool) -> dict[str, str]:
    """Settings that make a 2 MB download segmented (pwrite) or one stream (file writes)."""
    return {"DSM_SEGMENTS": "4" if segmented else "1", "DSM_SEGMENT_MIN": "100000"}


@pytest.mark.parametrize("segmented", [False, True], ids=["single", "segmented"])
async def test_short_writes_are_completed(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    segmented: bool,
) -> None:
    """Without a catalogue sha256 to catch it: a write that takes part of the bytes is
    continued, and the file is the server's."""
    data = blob(30, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **segments(segmented))
    calls: list[int] = []
    if segmented:
        monkeypatch.setattr(os, "pwrite", short_pwrite(4097, calls))
    else:
        short_sink(monkeypatch, 4097)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == data
    assert run.dataset("a").checksum == sha(data)
    assert (len(calls) > SIZE // 4097) == segmented  # every short write was continued


@pytest.mark.parametrize("segmented", [False, True], ids=["single", "segmented"])
async def test_a_write_that_writes_nothing_fails_the_job(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    segmented: bool,
) -> None:
    data = blob(31, SIZE)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **segments(segmented))
    if segmented:
        monkeypatch.setattr(os, "pwrite", short_pwrite(0, []))
    else:
        short_sink(monkeypatch, 0)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "short write" in (run.job.error or "")
    ds = run.dataset("a")
    assert (ds.status, ds.downloaded, ds.checksum) == (Status.ERROR, False, None)
    assert not (home / "data" / "a").exists()


# -- 5. no start-up changes a row a live process owns ---------------------------------------
def stored_row(home: Path, name: str) -> dict[str, Any]:
    """The row as db.json holds it (read without starting a dsm process)."""
    row: dict[str, Any] = json.loads((home / "db.json").read_text())["datasets"][name]
    return row


def test_other_processes_leave_a_running_download_alone(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`kilo` downloads in one `dsm --run-job`; `dsm list`, `dsm show` and a `--run-job` of
    another dataset start on the same home; after each the row is still `downloading`, and
    the download ends `downloaded`."""
    kilo, other = blob(40, 500_000), blob(41, 100_000)
    cat = catalog(kilo=server.add("kilo.bin", kilo), other=server.add("other.bin", other))
    gate = threading.Event()
    server.fault("kilo.bin", gate=gate)  # holds the answer until the checks are done
    env = dsm_env(home, cat, DSM_STALL_TIMEOUT="60")
    cmd = [*dsm_command(), "--run-job", "download", "--dataset", "kilo"]
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for(lambda: bool(server.requests("kilo.bin")), timeout=30)
            # The row's state reaches db.json with the next batch (storethread.COMMIT_DELAY).
            wait_for(lambda: stored_row(home, "kilo")["status"] == "downloading")
            for args in (
                ["list"],
                ["show", "kilo"],
                ["--run-job", "download", "--dataset", "other"],
            ):
                started = run_dsm(*args, home=home, catalog_path=cat)
                assert started.returncode == 0, (args, started.stderr)
                assert stored_row(home, "kilo")["status"] == "downloading", args
            assert stored_row(home, "other")["status"] == "downloaded"
        finally:
            gate.set()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    row = stored_row(home, "kilo")
    assert (row["status"], row["checksum"]) == ("downloaded", sha(kilo))


# -- 7. a store that cannot be written ------------------------------------------------------
def disk_full_while(monkeypatch: pytest.MonkeyPatch, full: Callable[[], bool]) -> None:
    """The store's writes fail with ENOSPC, and the disk shows no room left, while `full()`
    holds (at the OS calls the store makes)."""
    real, real_statvfs = tempfile.mkstemp, os.statvfs

    def mkstemp(*args: Any, **kw: Any) -> tuple[int, str]:
        if full():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kw)

    def statvfs(path: Any) -> os.statvfs_result:
        st = real_statvfs(path)
        return os.statvfs_result((*st[:3], 0, 0, *st[5:])) if full() else st

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)  # the store's temp file for a write
    monkeypatch.setattr(os, "statvfs", statvfs)  # the room the store checks before an install


async def test_disk_full_after_the_download_fails_the_job_and_frees_the_room(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finished `.part` fills the disk: the store cannot record the end. The job fails
    saying so, the partial is dropped (the room it frees records the failure), no row stays
    `downloading`, and the next processes download and delete normally."""
    data = blob(42, SIZE)
    cat = catalog(a=server.add("a.bin", data))
    settings, repo = setup(home, cat)
    part = home / "data" / "a.part"
    disk_full_while(monkeypatch, lambda: part.exists() and part.stat().st_size == SIZE)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert run.job.error is not None
    assert "cannot record the job in the store" in run.job.error
    assert "No space left on device" in run.job.error
    assert not part.exists() and not (home / "data" / "a").exists()
    assert stored_row(home, "a")["status"] == "error"
    monkeypatch.undo()
    again = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
    assert stored_row(home, "a")["status"] == "downloaded"
    gone = run_dsm("--run-job", "delete", "--dataset", "a", home=home, catalog_path=cat)
    assert gone.returncode == 0, gone.stderr
    assert stored_row(home, "a")["status"] == "not_loaded"


def test_a_full_disk_at_start_up_is_one_clear_error(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    """Recovery must write (a dead process's row stuck `downloading`) and cannot: one line,
    exit 1, no ExceptionGroup traceback; once there is room the next start recovers (it
    resumes the dead process's download, then deletes)."""
    cat = catalog(a=server.add("a.bin", blob(43, 1000)))
    repo = setup(home, cat)[1]
    job = Job(JobType.DOWNLOAD, "a", {"dataset": "a", "force_download": False}, owner="dead")
    job.status = JobStatus.RUNNING
    repo.save_job(job)
    repo.change("a", Status.QUEUED, download_job_id=job.id)
    repo.change("a", Status.DOWNLOADING)
    disk_full_while(monkeypatch, lambda: True)
    code = main(
        ["--run-job", "delete", "--dataset", "a", "--home", str(home), "--catalog", str(cat)]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("dsm: error: ") and "No space left on device" in err
    assert "Traceback" not in err and "ExceptionGroup" not in err
    monkeypatch.undo()
    gone = run_dsm("--run-job", "delete", "--dataset", "a", home=home, catalog_path=cat)
    assert gone.returncode == 0, gone.stderr
    assert stored_row(home, "a")["status"] == "not_loaded"


def test_a_store_that_stays_unwritable_is_said_once_per_streak(
    home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Every commit (each COMMIT_DELAY) failed with one identical error line: a full disk
    flooded a run's report with a dozen. Now the first failure of a streak is said, then one
    line once a write succeeds again; the changes lost meanwhile stay known (`lost`)."""
    settings, repo = setup(home, catalog(a="http://127.0.0.1:9/a"))
    ledger = Ledger(settings, repo, "owner")
    full = [True]
    disk_full_while(monkeypatch, lambda: full[0])
    monkeypatch.setattr(logging.getLogger("dsm"), "propagate", True)  # cli.main unhooks it

    async def change(note: str) -> None:
        await ledger.defer(repo.change, "a", None, error=note)
        await ledger.commit()

    async def streaks() -> None:
        for n in range(6):
            await change(f"lost {n}")
        full[0] = False
        await change("written")
        await change("written too")
        full[0] = True
        for n in range(3):
            await change(f"lost again {n}")

    with caplog.at_level(logging.INFO, logger="dsm.engine.ledger"):
        anyio.run(streaks)
        ledger.abandon()  # at exit, still failing: no further line
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    errors = [m for level, m in said if level == logging.ERROR]
    assert len(errors) == 2, said  # one per streak
    assert all("No space left on device" in m for m in errors)
    assert [m for level, m in said if level == logging.WARNING] == [
        "the store is written again; what could not be written meanwhile is lost"
        " (the next start checks those jobs again)"
    ], said
    assert stored_row(home, "a")["error"] == "written too"
    assert ledger.lost


def test_a_run_whose_changes_were_lost_fails_with_one_line(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    """The disk fills once the copy is installed: the job completed, but the store never
    learns it. One error line however many commits failed, and the run exits 1 (its end
    is not recorded), not 0."""
    cat = catalog(a=server.add("a.bin", blob(45, 1000)))
    setup(home, cat)
    installed = home / "data" / "a"
    disk_full_while(monkeypatch, installed.exists)
    dsm_log = logging.getLogger("dsm")  # main() routes it to stderr: as it was, afterwards
    monkeypatch.setattr(dsm_log, "handlers", list(dsm_log.handlers))
    monkeypatch.setattr(dsm_log, "propagate", dsm_log.propagate)
    args = ["--run-job", "download", "--dataset", "a", "--home", str(home), "--catalog", str(cat)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("No space left on device") == 1, err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert stored_row(home, "a")["status"] != "downloaded"  # the next start re-checks it
    again = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert again.returncode == 0, again.stderr
    assert stored_row(home, "a")["status"] == "downloaded"


# -- 9. atomic submission, deletes that cancel, writes only under the lock ------------------
async def test_concurrent_submissions_of_one_download_make_one_job(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(44, 1000))))
    gate = threading.Event()
    server.fault("a.bin", gate=gate)
    ids: list[str] = []
    async with Engine(settings, repo, []).running() as engine:

        async def submit() -> None:
            job = await engine.submit(JobType.DOWNLOAD, {"dataset": "a"})
            ids.append(job.id)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(submit)
        gate.set()
        await engine.wait_idle()
    assert len(ids) == 5 and len(set(ids)) == 1
    assert [j.id for j in repo.jobs()] == ids[:1]


def test_a_delete_asks_the_downloading_process_to_cancel(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`kilo` downloads slowly (40 s) in one process; a `--run-job delete` in another asks it
    to cancel and deletes once it stopped: the download ends canceled, not completed."""
    kilo = blob(45, SIZE)
    cat = catalog(kilo=server.add("kilo.bin", kilo))
    server.always("kilo.bin", rate=50_000)
    cmd = [*dsm_command(), "--run-job", "download", "--dataset", "kilo"]
    with subprocess.Popen(cmd, env=dsm_env(home, cat), stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for(lambda: server.bytes_sent("kilo.bin") > 0, timeout=30)
            gone = run_dsm("--run-job", "delete", "--dataset", "kilo", home=home, catalog_path=cat)
        finally:
            server.release.set()  # whatever happened, the throttled body ends now
        _, err = proc.communicate(timeout=60)
    assert gone.returncode == 0, gone.stderr
    assert proc.returncode == 1 and "download kilo: canceled" in err, err
    row = stored_row(home, "kilo")
    assert (row["status"], row["downloaded"]) == ("not_loaded", False)
    assert not any((home / "data").glob("kilo*"))


async def test_the_dataset_lock_is_held_until_an_abandoned_writer_stops(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel ends the job at once, but the transfer thread may be inside a write: the
    dataset's cross-process lock stays held until it is out, so another process that takes
    the lock never shares the `.part` with it."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(46, SIZE))))
    server.always("a.bin", rate=500_000)
    writing, proceed = threading.Event(), threading.Event()
    real_write = single._Sink.write

    def slow_write(self: single._Sink, data: bytes) -> None:
        writing.set()
        proceed.wait(30)
        real_write(self, data)

    monkeypatch.setattr(single._Sink, "write", slow_write)
    other = LockFile(settings.lock_dir)  # another holder, as another process would be

    def lock_is_free() -> bool:
        lock = other.try_lock("a")
        if lock is None:
            return False
        lock.release()
        return True

    async with Engine(settings, repo, []).running() as engine:
        job = await engine.submit(JobType.DOWNLOAD, {"dataset": "a"})
        await until(writing.is_set)
        await engine.cancel(job.id)
        await engine.wait_idle()  # the job has ended...
        await anyio.wait_all_tasks_blocked()  # ...and its worker went as far as it goes
        assert not lock_is_free()  # the writer is still inside its write: the lock is held
        proceed.set()
        await until(lock_is_free)
    stored = repo.job(job.id)
    assert stored is not None and stored.status == JobStatus.CANCELED
