"""Jobs through `dsm serve`: typed bodies, twins and idempotency keys across processes,
credentials kept out of answers, and a stop that suspends what runs."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsm.domain.jobs import JobStatus
from dsm.domain.model import Status
from dsm.engine import files
from tests.conftest import CatalogFn, make_settings, open_repo, run_dsm, wait_for
from tests.httpserver import FileServer
from tests.system.apiserver import JOB_TIMEOUT, ApiServer, assert_problem, post_job
from tests.system.test_api_events import Listener, finished

JSON_VALUES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 3,
    "number": 1.5,
    "string": "humaneval",
    "array": ["humaneval"],
    "object": {"a": 1},
}
# Each field of POST /jobs and the one JSON type it takes.
FIELDS = {
    ("type",): "string",
    ("params",): "object",
    ("idempotency_key",): "string",
    ("params", "dataset"): "string",
    ("params", "force_download"): "boolean",
}


def valid_body() -> dict[str, Any]:
    return {
        "type": "verify",
        "params": {"dataset": "humaneval", "force_download": False},
        "idempotency_key": "typed",
    }


@pytest.mark.parametrize("kind", sorted(JSON_VALUES))
def test_every_json_type_in_every_field(api: ApiServer, kind: str) -> None:
    for path, wanted in FIELDS.items():
        if kind == wanted:
            continue
        body = valid_body()
        parent = body if len(path) == 1 else body[path[0]]
        parent[path[-1]] = JSON_VALUES[kind]
        response = api.client.post("/jobs", json=body)
        problem = assert_problem(response, 422, ".".join(path))
        assert kind in problem["detail"] or kind == "string", problem
    assert api.client.get("/jobs").json()["total"] == 0


def test_a_valid_body_still_queues(api: ApiServer) -> None:
    assert api.client.post("/jobs", json=valid_body()).status_code == 202


# -- twins and keys --------------------------------------------------------------------------
def submit_everywhere(servers: list[ApiServer], body: dict[str, Any], n: int) -> list[Any]:
    def post(i: int) -> httpx.Response:
        return servers[i % len(servers)].client.post("/jobs", json=body)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(post, range(n)))


def test_twins_and_keys_are_one_job_across_two_servers(home: Path, catalog_path: Path) -> None:
    servers = [ApiServer(home, catalog_path), ApiServer(home, catalog_path)]
    try:
        answers = submit_everywhere(
            servers, {"type": "download", "params": {"dataset": "slow"}}, 12
        )
        assert sorted(r.status_code for r in answers) == [200] * 11 + [202]
        assert len({r.json()["id"] for r in answers}) == 1
        keyed = {"type": "verify", "params": {"dataset": "mbpp"}, "idempotency_key": "k"}
        answers = submit_everywhere(servers, keyed, 8)
        assert sorted(r.status_code for r in answers) == [200] * 7 + [202]
        job_id = answers[0].json()["id"]
        assert {r.json()["id"] for r in answers} == {job_id}
        # The key is compared on the whole request: another force_download is refused.
        other = {**keyed, "params": {"dataset": "mbpp", "force_download": True}}
        assert_problem(servers[1].client.post("/jobs", json=other), 422, "idempotency_key")
        assert servers[0].client.get("/jobs").json()["total"] == 2
        stored = open_repo(make_settings(home, catalog_path)).jobs()
        assert len(stored) == 2
    finally:
        for srv in servers:
            srv.stop()


def test_the_idempotency_key_header(api: ApiServer) -> None:
    body = {"type": "verify", "params": {"dataset": "humaneval"}}
    first = api.client.post("/jobs", json=body, headers={"Idempotency-Key": "h-1"})
    assert first.status_code == 202
    again = api.client.post("/jobs", json={**body, "idempotency_key": "h-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    both = api.client.post(
        "/jobs", json={**body, "idempotency_key": "h-2"}, headers={"Idempotency-Key": "h-3"}
    )
    assert_problem(both, 422, "Idempotency-Key")
    long = api.client.post("/jobs", json=body, headers={"Idempotency-Key": "k" * 201})
    assert_problem(long, 422, "Idempotency-Key")


# -- credentials ------------------------------------------------------------------------------
SECRETS = ("hunter2", "s3cr3t-token", "deadbeefsig")


def test_credentials_in_catalogue_urls_are_redacted_everywhere(
    server: FileServer, catalog: CatalogFn, home: Path
) -> None:
    base = server.url("missing.bin").replace("http://", "http://alice:hunter2@")
    url = f"{base}?token=s3cr3t-token&X-Amz-Signature=deadbeefsig&split=test"
    catalog_path = catalog(secret=url)
    srv = ApiServer(home, catalog_path)
    try:
        shown = srv.client.get("/datasets/secret").json()["original_url"]
        assert shown == (
            server.url("missing.bin").replace("http://", "http://[redacted]@")
            + "?token=[redacted]&X-Amz-Signature=[redacted]&split=test"
        )
        listener = Listener(srv)
        try:
            job = post_job(srv, "secret")
            events = listener.until(finished(job["id"]))
        finally:
            listener.close()
        assert events[-1].data["job"]["status"] == "failed"
        assert any("[redacted]" in json.dumps(e.data) for e in events)
        answers = [
            *(json.dumps(e.data) for e in events),
            srv.client.get("/datasets").text,
            srv.client.get("/jobs").text,
            srv.client.get(f"/jobs/{job['id']}").text,
        ]
    finally:
        srv.stop()
    for args in (("show", "secret"), ("show", "secret", "--json"), ("list", "--json")):
        out = run_dsm(*args, home=home, catalog_path=catalog_path)
        assert out.returncode == 0, out.stderr
        assert "[redacted]" in out.stdout
        answers.append(out.stdout)
    answers.append(srv.log)
    for text in answers:
        for secret in SECRETS:
            assert secret not in text, text


# -- stopping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_suspends_running_jobs_and_the_next_start_resumes_them(
    server: FileServer, catalog: CatalogFn, home: Path, sig: signal.Signals
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    server.add("big.bin", body)
    server.always("big.bin", rate=64 * 1024)
    catalog_path = catalog(big=server.url("big.bin"))
    first = ApiServer(home, catalog_path)
    try:
        job = post_job(first, "big")
        wait_for(lambda: first.job(job["id"])["bytes_done"] > 0, timeout=JOB_TIMEOUT)
    finally:
        code = first.stop(sig)
    assert code in (-sig, 128 + sig), first.log
    assert "stopped on request" not in first.log
    repo = open_repo(make_settings(home, catalog_path))
    stored = repo.job(job["id"])
    assert stored is not None and stored.status == JobStatus.WAITING
    assert stored.error is not None and "interrupted by shutdown" in stored.error
    ds = repo.dataset("big")
    assert ds.status == Status.QUEUED
    part = files.part_of(files.target(home, ds))
    kept = part.stat().st_size
    assert kept > 0
    server.persistent.pop("/big.bin")  # full speed from now on
    second = ApiServer(home, catalog_path)
    try:
        done = second.wait_job(job["id"], "completed", "failed")
        assert done["status"] == "completed", done["error"]
    finally:
        second.stop()
    resumed = server.requests("big.bin")[-1]
    assert resumed.range_start is not None and resumed.range_start > 0
    assert (home / ds.local_path).read_bytes() == body
    assert json.loads(run_dsm("show", "big", "--json", home=home).stdout)["status"] == (
        "downloaded"
    )
