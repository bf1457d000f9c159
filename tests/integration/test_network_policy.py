"""Issue 18 in the engine: offline fails fast, credentials stay with their origin and out of
the store, the low-speed limit, proxies routed with a CIDR-aware NO_PROXY."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dsm.catalog.sync import sync_catalog
from dsm.domain.events import EventKind
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.engine.engine import Engine
from dsm.errors import BadResponse
from dsm.transfer.http import open_stream
from tests.conftest import CatalogFn, blob, sha
from tests.enginehelp import run_jobs, setup, until
from tests.httpserver import FileServer

pytestmark = pytest.mark.anyio
SLOW = {"DSM_RETRY_DELAY": "30", "DSM_MAX_RETRIES": "5"}  # a retry at this pace would time out
OFFLINE_HINT = "is this machine offline? (DSM_OFFLINE=1 skips the network)"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_fails_after_two_quick_retries(
    home: Path, catalog: CatalogFn
) -> None:
    port = closed_port()
    settings, repo = setup(home, catalog(a=f"http://127.0.0.1:{port}/f"), **SLOW)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert run.job.attempts == 3
    assert f"connection refused by 127.0.0.1:{port}" in (run.job.error or "")
    assert "is the server down, or this machine offline? (DSM_OFFLINE=1" in (run.job.error or "")


async def test_a_redirect_to_a_closed_port_names_where_it_led(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The error names the host and port that refused, not the catalogue's (which answered:
    'is the server down, or this machine offline?' about it sent the user the wrong way)."""
    port = closed_port()
    server.always("start", redirect_to=f"http://127.0.0.1:{port}/f")
    settings, repo = setup(home, catalog(a=server.url("start")))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert f"connection refused by 127.0.0.1:{port}" in (run.job.error or ""), run.job.error


async def test_a_name_that_does_not_resolve_fails_fast(
    home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def offline(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "data.offline.test":  # the resolver's answer on a machine without network
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    settings, repo = setup(home, catalog(a="https://data.offline.test/f"), **SLOW)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert run.job.attempts == 3
    assert run.job.error == f"cannot resolve data.offline.test: {OFFLINE_HINT} (after 3 attempts)"


async def test_other_transient_errors_keep_the_retry_policy(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(1)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), DSM_MAX_RETRIES="4")
    server.fault("a.bin", times=4, status=503)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 5


async def test_password_in_the_url_is_used_but_never_stored_or_shown(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(2)
    url = server.add("a.bin", data).replace("://", "://alice:S3cr3tPW@")
    settings, repo = setup(home, catalog(a=url, b=url.replace("a.bin", "missing")))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", "b")
    assert run.jobs[0].status == JobStatus.COMPLETED
    assert run.jobs[1].status == JobStatus.FAILED and "404" in (run.jobs[1].error or "")
    (seen,) = server.requests("a.bin")
    assert (
        seen.headers["authorization"] == "Basic " + base64.b64encode(b"alice:S3cr3tPW").decode()
    )  # loopback: the catalogue's credentials are sent
    stored = (home / "db.json").read_text()
    assert "S3cr3tPW" not in stored and "alice" not in stored
    assert repo.dataset("a").original_url == url.replace("alice:S3cr3tPW", "[redacted]")
    events = json.dumps([(e.job.error, e.dataset and e.dataset.to_dict()) for e in run.events])
    assert "S3cr3tPW" not in events
    assert repo.dataset("a").checksum == sha(data)


async def test_a_catalogue_that_lost_the_credentials_fails_the_job_clearly(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    url = server.add("a.bin", blob(3)).replace("://", "://alice:pw@")
    settings, repo = setup(home, catalog(a=url))
    catalog(a=url.replace("alice:pw@", ""))  # the file changed; the store still has the row
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "carries credentials, kept only in the catalogue" in (run.job.error or "")
    assert server.requests("a.bin") == []


def test_basic_auth_never_goes_over_plain_http_beyond_this_machine() -> None:
    with (
        httpx.Client() as client,
        pytest.raises(BadResponse, match=r"over plain http") as err,
        open_stream(client, "http://alice:pw@data.example.org/f", {}, lambda url: {}, 10),
    ):
        pass
    assert "pw" not in str(err.value).replace("plain", "")


async def test_credentials_and_headers_dropped_on_a_redirect_to_another_port(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    other = FileServer().start()
    try:
        data = blob(4)
        landed = other.add("f.bin", data)
        port = server.base.rsplit(":", 1)[1]
        url = server.add("start", b"").replace("://", "://alice:pw@")
        server.always("start", redirect_to=landed)
        settings, repo = setup(home, catalog(a=url), DSM_HEADERS=f"127.0.0.1:{port}=X-Key: k1")
        run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
        assert run.job.status == JobStatus.COMPLETED
        (first,) = server.requests("start")
        assert first.headers["x-key"] == "k1" and first.headers["authorization"].startswith(
            "Basic "
        )
        (second,) = other.requests("f.bin")
        assert "x-key" not in second.headers and "authorization" not in second.headers
    finally:
        other.stop()


async def test_a_same_origin_redirect_keeps_the_headers(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    port = server.base.rsplit(":", 1)[1]
    server.add("f.bin", blob(5))
    server.always("start", redirect_to="/f.bin")
    settings, repo = setup(
        home, catalog(a=server.url("start")), DSM_HEADERS=f"http://127.0.0.1:{port}=X-Key: k1"
    )
    server.add("start", b"")
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert [r.headers.get("x-key") for r in server.requests("f.bin")] == ["k1"]


LOW_SPEED = {"DSM_LOW_SPEED_LIMIT": "50000", "DSM_LOW_SPEED_TIME": "0.5", "DSM_RETRY_DELAY": "0"}


async def test_a_transfer_below_the_low_speed_limit_is_retried_as_stalled(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(6, 3_000_000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **LOW_SPEED)
    server.fault("a.bin", rate=5000)  # 10 times below the limit (it would take 10 minutes)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 2
    assert (home / "data" / "a").read_bytes() == data
    (retry,) = [e.job.error or "" for e in run.events if e.kind.value == "retrying"]
    assert "below the low-speed limit of 50000 bytes/s" in retry


async def test_a_slow_segment_is_retried_as_stalled(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(7, 4_000_000)
    env = {**LOW_SPEED, "DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **env)
    server.always("a.bin", rate=1_000_000)  # slow enough to be split, fast enough to pass
    server.fault("a.bin", rate=5000, for_ranges=(2_000_000, 3_000_000))  # one slow segment
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED
    assert (home / "data" / "a").read_bytes() == data
    third = [r for r in server.requests("a.bin") if 2_000_000 <= (r.range_start or 0) < 3_000_000]
    # The slow one, given up early, and its retry from where it stood, on a new connection.
    assert len(third) == 2 and 2_000_000 < (third[1].range_start or 0) <= 2_000_000 + third[0].sent


async def test_no_proxy_cidr_bypasses_the_proxy(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("ALL_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "example.org, 127.0.0.0/8")
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(7))))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED

    monkeypatch.setenv("NO_PROXY", "example.org")  # now the proxy is asked, and is not there
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", force=True)
    assert run.job.status == JobStatus.FAILED
    assert f"the proxy {proxy} failed" in (run.job.error or "")
    assert "offline" not in (run.job.error or "")


async def test_a_store_from_before_loses_its_credentials_and_keeps_its_copy(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A row that an older dsm stored with the password: the next start stores it redacted,
    and the copy it fetched from that very URL is still trusted (not outdated)."""
    data = blob(8)
    url = server.add("a.bin", data).replace("://", "://alice:pw@")
    cat = catalog(a=url)
    settings, repo = setup(home, cat)
    assert (await run_jobs(settings, repo, JobType.DOWNLOAD, "a")).job.status.ok
    doc = json.loads((home / "db.json").read_text())
    row = next(iter(doc["datasets"].values()))
    row["original_url"] = url  # as the older dsm kept it
    doc["meta"] = {}  # and no stamp of this version's registration
    (home / "db.json").write_text(json.dumps(doc))
    _, repo = setup(home, cat)  # opening the home registers the catalogue again
    sync_catalog(repo, cat, home)
    ds = repo.dataset("a")
    assert ds.original_url == url.replace("alice:pw", "[redacted]")
    assert ds.downloaded and not ds.outdated
    assert "alice:pw" not in (home / "db.json").read_text()


HUGE = "9" * 5000  # past int()'s 4300-digit limit
UNUSABLE_HEADERS = {
    # A Retry-After of a digit Python's isdigit knows and float() does not ('²', sent as
    # the latin-1 byte 0xb2): the attempt is retried.
    "retry-after-superscript": ({"status": 503, "headers": {"Retry-After": "\u00b2"}}, None),
    "retry-after-arabic-digits": ({"status": 503, "headers": {"Retry-After": "\u0663"}}, None),
    # A Content-Range too long for int(): a 200 that is not the whole file, restarted.
    "content-range-huge": ({"headers": {"Content-Range": f"bytes 0-{HUGE}/{HUGE}"}}, None),
    # A Location no URL parser takes: the job fails naming it.
    "location-bad-ipv6": ({"redirect_to": "http://[zz/"}, "redirects to a Location that is no URL"),
    "location-too-long": (
        {"redirect_to": "http://127.0.0.1:1/" + "a" * 70_000},
        "redirects to a Location that is no URL",
    ),
}


@pytest.mark.parametrize(("fault", "fails"), UNUSABLE_HEADERS.values(), ids=list(UNUSABLE_HEADERS))
async def test_a_header_no_parser_takes_is_the_servers_fault_not_an_internal_error(
    server: FileServer, home: Path, catalog: CatalogFn, fault: dict[str, Any], fails: str | None
) -> None:
    data = blob(6)
    url = server.add("f", data)
    server.fault("f", **fault)
    settings, repo = setup(home, catalog(a=url))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    errors = [e.job.error or "" for e in run.events if e.job.error]
    assert not any("internal error" in e for e in errors), errors
    if fails is None:
        assert run.job.status == JobStatus.COMPLETED, run.job.error
        assert (home / "data/a").read_bytes() == data
    else:
        assert run.job.status == JobStatus.FAILED
        assert fails in (run.job.error or "") and len(run.job.error or "") < 1000


@pytest.mark.parametrize(
    ("fault", "said"),
    [("trickle_head", "the response head"), ("trickle_chunk", "the body's next bytes")],
    ids=["head", "chunk-extension"],
)
async def test_bytes_sent_one_at_a_time_but_never_what_is_awaited_are_stalled(
    server: FileServer, home: Path, catalog: CatalogFn, fault: str, said: str
) -> None:
    """A byte every 0.1 s resets httpx's read timeout each time, and framing (a chunk
    extension) is no body byte the low-speed limit counts: what is awaited, the head or the
    body's next bytes, must come within the stall timeout (2 s here), or the attempt is
    stalled and retried."""
    data = blob(7)
    url = server.add("f", data)
    faults: dict[str, Any] = {fault: 0.1}
    server.fault("f", **faults)
    settings, repo = setup(home, catalog(a=url))
    with anyio.fail_after(60):  # without the limit the head never ends
        run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    (retry,) = [e.job.error or "" for e in run.kinds(EventKind.RETRYING)]
    assert f"{said} did not arrive whole within 2 s" in retry, retry
    assert (home / "data/a").read_bytes() == data


async def test_a_cancel_reaches_a_transfer_waiting_for_its_head(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The socket is not in Control.watching before the head: a cancel must still end the
    wait (SIGTERM to `dsm --run-job` waited as long as the server trickled)."""
    url = server.add("f", blob(8))
    server.always("f", trickle_head=0.1)
    settings, repo = setup(home, catalog(a=url), DSM_STALL_TIMEOUT="600")

    async def cancel(engine: Engine, jobs: list[Job]) -> None:
        await until(lambda: bool(server.requests("f")))
        await engine.cancel(jobs[0].id)

    with anyio.fail_after(60):
        run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=cancel)
    assert run.job.status == JobStatus.CANCELED
    assert not (home / "data/a").exists()
