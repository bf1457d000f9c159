"""The transfer against a live server on 127.0.0.1: resume, faults, integrity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine.engine import Engine
from dsm.engine.handlers import host_headers
from dsm.transfer.http import open_stream
from dsm.transfer.partfile import sidecar_path
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.enginehelp import run_jobs, setup, until
from tests.httpserver import FileServer

pytestmark = pytest.mark.anyio
SIZE = 3 * 1024 * 1024 + 17


def body(seed: int = 1, size: int = SIZE) -> bytes:
    return blob(seed, size)


def entry(name: str, url: str, data: bytes | None = None, **kw: object) -> dict[str, object]:
    e: dict[str, object] = {"name": name, "description": name, "original_url": url}
    e["local_path"] = f"data/{name}"
    if data is not None:
        e["expected_size"] = len(data)
        e["expected_sha256"] = sha(data)
    return {**e, **kw}


def target(home: Path, name: str = "a") -> Path:
    return home / "data" / name


async def test_download_verifies_and_renames(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body()
    settings, repo = setup(home, catalog([entry("a", server.add("a.bin", data), data)]))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    ds = run.dataset("a")
    assert (ds.status, ds.downloaded, ds.size, ds.checksum) == (
        Status.DOWNLOADED,
        True,
        len(data),
        sha(data),
    )
    assert ds.download_progress == 100.0 and ds.download_job_id == run.job.id
    assert target(home).read_bytes() == data
    assert sorted(p.name for p in (home / "data").iterdir()) == ["a"]  # no .part, no sidecar
    (req,) = server.requests("a.bin")
    assert req.headers["user-agent"].startswith("dsm/")
    assert "range" not in req.headers


async def test_trust_on_first_download_records_size_and_hash(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(2, 1000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    ds = repo.dataset("a")
    assert (ds.size, ds.checksum) == (1000, sha(data))


async def test_dropped_connection_resumes_with_if_range(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body()
    settings, repo = setup(home, catalog([entry("a", server.add("a.bin", data), data)]))
    server.fault("a.bin", drop_after=1_000_000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 2
    first, second = server.requests("a.bin")
    assert second.range_start is not None and second.range_start >= 1_000_000 - 64 * 1024
    assert second.headers["if-range"] in (
        first.headers.get("etag"),
        server.resources["/a.bin"].etag,
    )
    assert second.status == 206
    assert server.bytes_sent("a.bin") < len(data) + 100_000
    assert target(home).read_bytes() == data


async def test_retry_message_keeps_the_cause(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(3, 5000)
    settings, repo = setup(home, catalog([entry("a", server.add("a.bin", data), data)]))
    server.fault("a.bin", status=503, headers={"Retry-After": "0"})
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 2
    (retry,) = [e for e in run.events if e.kind.value == "retrying"]
    assert "HTTP 503 Service Unavailable from http://127.0.0.1" in (retry.job.error or "")
    assert len(server.requests("a.bin")) == 2


async def test_retry_after_is_honoured(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    data = body(3, 5000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", status=429, headers={"Retry-After": "1"})
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", retry_delay=0.0)
    first, second = server.requests("a.bin")
    assert run.job.status == JobStatus.COMPLETED
    (retry,) = [e for e in run.events if e.kind.value == "retrying"]
    assert "retrying in 1.0 s" in (retry.job.error or "")
    assert second.at - first.at >= 0.9  # waited as told, though the retry delay is zero


@pytest.mark.parametrize("code", [401, 403, 404, 410])
async def test_client_errors_fail_at_once(
    code: int, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog(a=server.add("a.bin", b"x")))
    server.always("a.bin", status=code)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert run.job.error is not None and f"HTTP {code} " in run.job.error
    assert server.url("a.bin") in run.job.error
    assert len(server.requests("a.bin")) == 1
    ds = repo.dataset("a")
    assert ds.status == Status.ERROR and not ds.downloaded and ds.error == run.job.error
    assert not (home / "data" / "a").exists()


async def test_persistent_5xx_gives_up_after_max_retries(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog(a=server.add("a.bin", b"x")))
    server.always("a.bin", status=500)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", max_retries=2)
    assert run.job.status == JobStatus.FAILED and run.job.attempts == 3
    assert "HTTP 500" in (run.job.error or "") and "after 3 attempts" in (run.job.error or "")
    assert len(server.requests("a.bin")) == 3


@pytest.mark.parametrize(
    ("fault", "statuses", "ranged"),
    [
        # The server ignores the Range: its 200 body replaces the partial, never appended.
        ({"ignore_range": True}, [200, 200], [False, True]),
        # A 206 that does not continue our offset: drop the partial, start clean at once.
        ({"wrong_range_start": 10}, [200, 206, 200], [False, True, False]),
        # 416 to a resume: the partial is not what the server has; start clean.
        ({"status": 416}, [200, 416, 200], [False, True, False]),
    ],
)
async def test_a_resume_the_server_refuses_starts_clean(
    fault: dict[str, Any],
    statuses: list[int],
    ranged: list[bool],
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
) -> None:
    data = body()
    settings, repo = setup(home, catalog([entry("a", server.add("a.bin", data), data)]))
    server.fault("a.bin", drop_after=500_000)
    server.fault("a.bin", **fault)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    reqs = server.requests("a.bin")
    assert [r.status for r in reqs] == statuses
    assert [r.range_start is not None for r in reqs] == ranged
    assert target(home).read_bytes() == data


async def test_file_changed_between_attempts_gives_the_new_file(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    old, new = body(1), body(2)
    settings, repo = setup(home, catalog(a=server.add("a.bin", old)))
    server.fault("a.bin", drop_after=700_000)

    async def change_while_retrying(engine: Engine, jobs: list[Job]) -> None:
        await until(lambda: jobs[0].status == JobStatus.RETRYING)
        server.add("a.bin", new)  # new ETag and Last-Modified

    run = await run_jobs(
        settings, repo, JobType.DOWNLOAD, "a", during=change_while_retrying, retry_delay=0.5
    )
    assert run.job.status == JobStatus.COMPLETED
    second = server.requests("a.bin")[1]
    assert second.range_start is not None and second.status == 200  # If-Range did not match
    assert target(home).read_bytes() == new
    assert repo.dataset("a").checksum == sha(new)


async def test_stall_is_detected_and_resumed(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body()
    settings, repo = setup(home, catalog([entry("a", server.add("a.bin", data), data)]))
    server.fault("a.bin", stall_after=300_000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", stall_timeout=0.5)
    assert run.job.status == JobStatus.COMPLETED
    (retry,) = [e for e in run.events if e.kind.value == "retrying"]
    assert "stalled: no data for 0.5 s" in (retry.job.error or "")
    assert server.requests("a.bin")[1].range_start is not None
    assert target(home).read_bytes() == data


async def test_lying_content_length_is_never_accepted(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(4, 100_000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.always("a.bin", content_length=200_000, ignore_range=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", max_retries=1)
    assert run.job.status == JobStatus.FAILED
    assert not target(home).exists()
    ds = repo.dataset("a")
    assert not ds.downloaded and ds.status == Status.ERROR


async def test_announced_length_contradicting_expected_size_fails_at_once(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(5, 10_000)
    settings, repo = setup(
        home, catalog([entry("a", server.add("a.bin", data), data, expected_size=9_999)])
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "size mismatch: expected 9999 bytes, server announces 10000" in (run.job.error or "")
    assert len(server.requests("a.bin")) == 1 and not target(home).exists()


async def test_html_page_is_rejected(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    settings, repo = setup(home, catalog(a=server.add("a.bin", b"data")))
    server.always("a.bin", html=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "HTML page" in (run.job.error or "")
    assert len(server.requests("a.bin")) == 1
    assert not repo.dataset("a").downloaded and not target(home).exists()


async def test_checksum_mismatch_is_removed_and_not_retried(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(6, 50_000)
    wrong = "0" * 64
    settings, repo = setup(
        home, catalog([entry("a", server.add("a.bin", data), data, expected_sha256=wrong)])
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert f"expected sha256 {wrong}, got {sha(data)}" in (run.job.error or "")
    assert len(server.requests("a.bin")) == 1
    assert list((home / "data").iterdir()) == []  # neither the file nor its partial
    ds = repo.dataset("a")
    assert ds.status == Status.ERROR and not ds.downloaded and ds.checksum is None


async def test_redirect_chain_is_followed(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(7, 20_000)
    server.add("real.bin", data)
    server.always("hop1", redirect_to="hop2")
    server.always("hop2", redirect_to="real.bin")
    settings, repo = setup(home, catalog([entry("a", server.url("hop1"), data)]))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert target(home).read_bytes() == data


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("ftp://127.0.0.1/x", "refusing to follow a redirect to ftp://"),
        ("loop", "more than 10 redirects"),
    ],
)
async def test_bad_redirects_fail(
    where: str, message: str, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    server.always("loop", redirect_to=where)
    settings, repo = setup(home, catalog(a=server.url("loop")))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED and message in (run.job.error or "")


def test_headers_are_chosen_per_hop_and_never_follow_to_another_host(
    server: FileServer,
) -> None:
    server.add("f.bin", b"data")
    server.always("start", redirect_to=server.url("f.bin").replace("127.0.0.1", "localhost"))

    def only_for_127(url: str) -> dict[str, str]:
        return {"Authorization": "Bearer s3cret"} if "//127.0.0.1:" in url else {}

    with (
        httpx.Client() as client,
        open_stream(client, server.url("start"), {}, only_for_127, 10) as (resp, final),
    ):
        assert resp.status_code == 200 and final.startswith("http://localhost:")
    (start,) = server.requests("start")
    (landed,) = server.requests("f.bin")
    assert start.headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in landed.headers


async def test_credentials_only_for_their_host_and_only_over_https(
    home: Path, catalog: CatalogFn
) -> None:
    settings, _ = setup(
        home,
        catalog(a="http://127.0.0.1:9/x"),
        HF_TOKEN="hf_abc",
        DSM_HEADERS="data.example.org=X-Key: k1",
    )
    assert host_headers(settings, "https://huggingface.co/datasets/x") == {
        "Authorization": "Bearer hf_abc"
    }
    assert host_headers(settings, "https://data.example.org/f") == {"X-Key": "k1"}
    for url in (
        "https://cdn-lfs.huggingface.co/x",  # another host, even a sibling
        "https://evil.example/huggingface.co",
        "http://huggingface.co/datasets/x",  # clear text
        "http://data.example.org/f",
        "http://127.0.0.1/",
    ):
        assert host_headers(settings, url) == {}, url


async def test_not_enough_disk_space_fails_at_once(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    url = server.add("a.bin", b"x" * 10)
    settings, repo = setup(home, catalog(a=url), DSM_DOWNLOAD_MAX_BYTES=str(1 << 62))
    server.always("a.bin", content_length=1 << 60, ignore_range=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert f"need {1 << 60} bytes" in (run.job.error or "") and "free" in (run.job.error or "")
    assert len(server.requests("a.bin")) == 1


async def test_complete_partial_needs_no_request(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(9, 4096)
    url = server.add("a.bin", data)
    settings, repo = setup(home, catalog([entry("a", url, data)]))
    part = home / "data" / "a.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    meta = {
        "url": url,
        "etag": server.resources["/a.bin"].etag,
        "last_modified": None,
        "total": len(data),
    }
    Path(str(part) + ".json").write_text(json.dumps(meta))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert server.requests("a.bin") == []
    assert target(home).read_bytes() == data


async def test_partial_without_validator_is_not_trusted(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(10, 200_000)
    url = server.add("a.bin", data, etag=None, last_modified=False)
    settings, repo = setup(home, catalog([entry("a", url, data)]))
    server.fault("a.bin", drop_after=100_000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert all(r.range_start is None for r in server.requests("a.bin"))
    assert target(home).read_bytes() == data


async def test_a_body_without_length_cut_short_is_completed_not_accepted(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(11, 400_000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", ignore_range=True, no_length=True, drop_after=100_000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    first, rest = server.requests("a.bin")
    assert first.status == 200 and rest.status == 206 and rest.range_start == 100_000
    assert target(home).read_bytes() == data
    assert repo.dataset("a").checksum == sha(data)


async def test_a_whole_body_without_length_is_confirmed_by_a_416(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = body(12, 300_000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    server.fault("a.bin", ignore_range=True, no_length=True)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 1
    assert [r.status for r in server.requests("a.bin")] == [200, 416]
    assert target(home).read_bytes() == data


async def test_empty_file_downloads(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    """A zero-byte file (416 to `Range: bytes=0-`) downloads instead of failing."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", b"")))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "a").read_bytes() == b""
    ds = repo.dataset("a")
    assert ds.status == Status.DOWNLOADED and ds.checksum == sha(b"")


@pytest.mark.parametrize(
    "damage",
    [
        {"etag": 5},
        {"etag": '"v1"\r\nX-Injected: 1'},
        {"last_modified": ["Tue, 01 Dec 2026 10:00:00 GMT"]},
        {"total": "5000"},
        {"total": -1},
        {"url": None},
    ],
    ids=["etag-number", "etag-line-break", "date-list", "total-text", "total-negative", "no-url"],
)
def test_a_damaged_sidecar_starts_the_partial_clean(
    server: FileServer, home: Path, catalog: CatalogFn, damage: dict[str, Any]
) -> None:
    """A sidecar this code would not write (damaged, another program's): the partial is
    fetched again from zero, nothing of the sidecar goes to the server (an ETag that was a
    number failed every download with an internal error; one with a line break, each of
    its attempts)."""
    data = body(31, 300_000)
    url = server.add("a.bin", data)
    cat = catalog(a=url)
    part = home / "data" / "a.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    meta = {"url": url, "etag": '"v1"', "last_modified": None, "date": None, "total": len(data)}
    sidecar_path(part).write_text(json.dumps({**meta, **damage}))
    run = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert run.returncode == 0, run.stderr
    assert (home / "data" / "a").read_bytes() == data
    asked = server.requests("a.bin")
    assert len(asked) == 1 and "if-range" not in asked[0].headers
