"""`dsm serve` as clients use it: a live server subprocess on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsm.domain.jobs import PARAMS_SCHEMA
from tests.conftest import (
    CatalogFn,
    dsm_command,
    dsm_env,
    make_settings,
    open_repo,
    run_dsm,
    wait_for,
)
from tests.system.apiserver import JOB_TIMEOUT, STOP_TIMEOUT, ApiServer, assert_problem, post_job
from tests.system.test_cli import HOSTILE_TEXT, RAW

TOKEN = "t" * 32


# -- reading ---------------------------------------------------------------------------------
def test_datasets_are_paged_with_the_total_over_all_pages(api: ApiServer) -> None:
    first = api.client.get("/datasets", params={"page_size": 2}).json()
    assert first["page_size"] == 2 and first["page_number"] == 1 and first["total"] == 3
    assert [d["name"] for d in first["datasets"]] == ["humaneval", "mbpp"]
    for name in ("page", "page_number"):
        second = api.client.get("/datasets", params={"page_size": 2, name: 2}).json()
        assert second["page_number"] == 2 and second["total"] == 3
        assert [d["name"] for d in second["datasets"]] == ["slow"]
    empty = api.client.get("/datasets", params={"page": 9}).json()
    assert empty["datasets"] == [] and empty["total"] == 3
    assert api.client.get("/datasets").json()["page_size"] == 50


@pytest.mark.parametrize(
    "query",
    [
        {"page_size": 0},
        {"page_size": 1001},
        {"page_size": -1},
        {"page_size": "ten"},
        {"page": 0},
        {"page_number": "1.5"},
        {"page": 1, "page_number": 2},
    ],
)
def test_bad_paging_is_a_422_problem(api: ApiServer, query: dict[str, Any]) -> None:
    assert_problem(api.client.get("/datasets", params=query), 422, next(iter(query)))


def test_one_dataset_and_the_unknown_one(api: ApiServer) -> None:
    ds = api.client.get("/datasets/humaneval").json()
    assert ds["name"] == "humaneval" and ds["status"] == "not_loaded"
    assert_problem(api.client.get("/datasets/nope"), 404, "dataset not found")


def test_catalogue_text_in_answers_cannot_drive_a_terminal(home: Path, catalog: CatalogFn) -> None:
    """Starlette writes JSON with non-ASCII raw: a description's ESC, C1 CSI (U+009B) or
    bidi override reached whoever prints the body (`curl`), as did a problem's detail
    quoting the request (a field's name). Escaped now: the same value decoded, other text
    readable."""
    url = "http://127.0.0.1:9/x"
    cat = catalog(
        [{"name": "x", "description": HOSTILE_TEXT, "original_url": url, "local_path": "x"}]
    )
    srv = ApiServer(home, cat)
    try:
        one, page = srv.client.get("/datasets/x"), srv.client.get("/datasets")
        body = {"type": "download", "params": {"dataset": "x"}, HOSTILE_TEXT: 1}
        refused = srv.client.post("/jobs", json=body)  # the detail names the field
    finally:
        srv.stop()
    for answer in (one, page, refused):
        assert not [raw for raw in RAW if raw in answer.content], answer.content
    assert one.json()["description"] == HOSTILE_TEXT
    assert page.json()["datasets"][0]["description"] == HOSTILE_TEXT
    assert "é 日本".encode() in one.content
    assert refused.status_code == 422
    assert HOSTILE_TEXT in refused.json()["detail"]


def test_job_params_schema_is_the_cli_one(api: ApiServer) -> None:
    assert api.client.get("/job_params/dataset").json() == PARAMS_SCHEMA


def test_openapi_describes_every_route(api: ApiServer) -> None:
    doc = api.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    routes = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == {
        ("/datasets", "get"),
        ("/datasets/{name}", "get"),
        ("/events", "get"),
        ("/job_params/dataset", "get"),
        ("/jobs", "get"),
        ("/jobs", "post"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}/cancel", "post"),
        ("/openapi.json", "get"),
    }
    assert {"Dataset", "Job", "JobRequest", "Problem"} <= set(doc["components"]["schemas"])
    assert "security" not in doc  # no token, no auth to declare
    submit = doc["paths"]["/jobs"]["post"]
    assert {"200", "202", "400", "403", "408", "413", "415", "421", "422", "503"} == set(
        submit["responses"]
    )
    assert "Idempotency-Key" in {p["name"] for p in submit["parameters"]}
    events = doc["paths"]["/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert "Last-Event-ID" in {p["name"] for p in events["parameters"]}


def test_unknown_route_and_method_are_problems(api: ApiServer) -> None:
    assert_problem(api.client.get("/nowhere"), 404)
    response = api.client.delete("/jobs")
    assert_problem(response, 405)
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["allow"].split(",")}


# -- jobs ------------------------------------------------------------------------------------
def test_a_posted_download_reaches_downloaded_with_the_right_sha256(
    api: ApiServer, home: Path, catalog_path: Path, data: bytes
) -> None:
    job = post_job(api, "humaneval")
    assert job["status"] in ("waiting", "running") and job["dataset"] == "humaneval"
    done = api.wait_job(job["id"], "completed", "failed")
    assert done["status"] == "completed", done["error"]
    ds = api.client.get("/datasets/humaneval").json()
    assert ds["status"] == "downloaded" and ds["downloaded"] is True
    assert ds["checksum"] == hashlib.sha256(data).hexdigest() and ds["size"] == len(data)
    assert ds["download_job_id"] == job["id"]
    assert (home / ds["local_path"]).read_bytes() == data
    # What the dashboard and `dsm show` read: the shared store.
    stored = open_repo(make_settings(home, catalog_path)).job(job["id"])
    assert stored is not None and stored.status == "completed"
    shown = run_dsm("show", "humaneval", "--json", home=home, catalog_path=catalog_path)
    assert '"status": "downloaded"' in shown.stdout, shown.stderr


# JSON may come in UTF-16 (json.loads detects it): a lone surrogate is no text there too.
SURROGATE_KEY = '{"type": "download", "params": {"dataset": "mbpp"}, "idempotency_key": "\\ud800"}'


@pytest.mark.parametrize(
    ("body", "status", "word"),
    [
        (b"{not json", 400, "JSON"),
        (b"[]", 422, "object"),
        (b'{"type": "download", "params": {"dataset": "mbpp"}, "x": 1}', 422, "x"),
        (b'{"type": "fetch", "params": {"dataset": "mbpp"}}', 422, "type"),
        (b'{"type": "download"}', 422, "params"),
        (b'{"type": "download", "params": {"dataset": "nope"}}', 422, "dataset"),
        (b'{"type": "download", "params": {"dataset": "mbpp", "y": 1}}', 422, "y"),
        (
            b'{"type": "download", "params": {"dataset": "mbpp", "force_download": 1}}',
            422,
            "force_download",
        ),
        (
            b'{"type": "download", "params": {"dataset": "mbpp"}, "idempotency_key": ""}',
            422,
            "idempotency_key",
        ),
        (
            SURROGATE_KEY.encode("utf-16"),
            400,
            "idempotency_key holds '\\ud800', half of a UTF-16 pair",
        ),
    ],
)
def test_bad_job_requests_are_problems_naming_the_field(
    api: ApiServer, body: bytes, status: int, word: str
) -> None:
    response = api.client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert_problem(response, status, word)
    assert api.client.get("/jobs").json()["total"] == 0


def test_idempotency_key_returns_the_same_job_also_after_a_restart(
    home: Path, catalog_path: Path
) -> None:
    first = ApiServer(home, catalog_path)
    try:
        job = post_job(first, "humaneval", idempotency_key="k-1")
        assert post_job(first, "humaneval", 200, idempotency_key="k-1")["id"] == job["id"]
        first.wait_job(job["id"], "completed")
        slow = post_job(first, "slow", idempotency_key="k-slow")
        first.wait_job(slow["id"], "running")
    finally:
        assert first.stop() == 130  # SIGINT, after a graceful shutdown
    # Stopping suspended the unfinished job: queued for the next start, not canceled.
    stored = open_repo(make_settings(home, catalog_path)).job(slow["id"])
    assert stored is not None and stored.status == "waiting"
    assert stored.error is not None and "interrupted by shutdown" in stored.error
    second = ApiServer(home, catalog_path)
    try:
        again = post_job(second, "humaneval", 200, idempotency_key="k-1")
        assert again["id"] == job["id"] and again["status"] == "completed"
        resumed = post_job(second, "slow", 200, idempotency_key="k-slow")
        assert resumed["id"] == slow["id"] and resumed["status"] in ("waiting", "running")
        reused = second.client.post(
            "/jobs",
            json={"type": "delete", "params": {"dataset": "humaneval"}, "idempotency_key": "k-1"},
        )
        assert_problem(reused, 422, "idempotency_key", "k-1")
        other = post_job(second, "humaneval", idempotency_key="k-2")
        assert other["id"] != job["id"]
        assert second.client.get("/jobs").json()["total"] == 3
    finally:
        second.stop()


def test_cancel_and_filters(api: ApiServer) -> None:
    job = post_job(api, "slow", idempotency_key="a")
    # The engine hands an identical unfinished job to a second key: both keys name it.
    assert post_job(api, "slow", 200, idempotency_key="b")["id"] == job["id"]
    api.wait_job(job["id"], "running")
    response = api.cancel(job["id"])
    assert response.status_code == 202 and response.json()["id"] == job["id"]
    api.wait_job(job["id"], "canceled")
    assert post_job(api, "slow", 200, idempotency_key="b")["id"] == job["id"]
    assert_problem(api.cancel(job["id"]), 409, "finished")
    assert_problem(api.cancel("nope"), 404, "job not found")
    assert_problem(api.client.get("/jobs/nope"), 404, "job not found")
    done = post_job(api, "mbpp")
    api.wait_job(done["id"], "completed")

    def ids(**query: str) -> list[str]:
        return [j["id"] for j in api.client.get("/jobs", params=query).json()["jobs"]]

    assert ids() == [done["id"], job["id"]]  # newest first
    assert ids(status="canceled") == [job["id"]]
    assert ids(dataset="mbpp") == [done["id"]]
    assert ids(dataset="mbpp", status="canceled") == []
    assert ids(page_size="1", page="2") == [job["id"]]
    assert_problem(api.client.get("/jobs", params={"status": "bogus"}), 422, "status")


def test_api_and_run_job_see_each_others_jobs(
    api: ApiServer, home: Path, catalog_path: Path
) -> None:
    headless = subprocess.Popen(
        [*dsm_command(), "--run-job", "download", "--dataset", "slow"],
        env=dsm_env(home, catalog_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def running() -> list[dict[str, Any]]:
            query = {"dataset": "slow", "status": "running"}
            jobs: list[dict[str, Any]] = api.client.get("/jobs", params=query).json()["jobs"]
            return jobs

        wait_for(lambda: bool(running()), timeout=JOB_TIMEOUT)
        theirs = running()[0]
        assert_problem(api.cancel(theirs["id"]), 409, "another dsm process")
        headless.send_signal(signal.SIGINT)
        _, err = headless.communicate(timeout=STOP_TIMEOUT)
        assert headless.returncode == 130, err
        assert api.job(theirs["id"])["status"] == "canceled"
    finally:
        if headless.poll() is None:
            headless.kill()
            headless.communicate()
    mine = post_job(api, "humaneval")
    api.wait_job(mine["id"], "completed")
    repo = open_repo(make_settings(home, catalog_path))
    assert {j.id for j in repo.jobs()} == {theirs["id"], mine["id"]}


# -- the seed's curl examples ----------------------------------------------------------------
def test_the_seeds_curl_examples_with_jq(api: ApiServer) -> None:
    if not (shutil.which("curl") and shutil.which("jq")):
        pytest.skip("curl and jq are needed (apt-get install -y curl jq)")
    examples = {
        f"curl -X GET \"{api.url}/datasets/humaneval\" | jq '.status'": '"not_loaded"',
        f'curl -X GET "{api.url}/job_params/dataset" -H "Content-Type: application/json" '
        "| jq '.additionalProperties'": "false",
        f'curl -X GET "{api.url}/datasets?page_size=10&page_number=1" '
        "-H \"Content-Type: application/json\" | jq '.total'": "3",
        f'curl -X GET "{api.url}/datasets/humaneval" -H "Content-Type: application/json" '
        "| jq -r '.name'": "humaneval",
    }
    for command, expected in examples.items():
        out = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0 and out.stdout.strip() == expected, (command, out.stderr)


# -- schemathesis ----------------------------------------------------------------------------
@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api: ApiServer, tmp_path: Path
) -> None:
    st = Path(sys.executable).parent / "st"
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
    ]
    out = subprocess.run(
        [
            str(st),
            "run",
            f"{api.url}/openapi.json",
            "--checks",
            ",".join(checks),
            "--max-examples",
            "30",
            "--seed",
            "5",
            # One worker: on Python 3.11, schemathesis's threads can hit CPython's ast bug
            # gh-106905 ("AST constructor recursion depth mismatch") and stop the run.
            "--workers",
            "1",
            "--no-color",
            "--generation-database",
            "none",
            "--exclude-path",  # a stream that ends only when the server stops
            "/events",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


# -- auth ------------------------------------------------------------------------------------
def test_beyond_loopback_without_token_refuses_to_start(home: Path, catalog_path: Path) -> None:
    out = run_dsm(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        home=home,
        catalog_path=catalog_path,
        DSM_API_TOKEN="",
    )
    assert out.returncode == 2
    assert "DSM_API_TOKEN" in out.stderr and "0.0.0.0" in out.stderr


def test_a_port_in_use_or_out_of_range_is_reported(home: Path, catalog_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        out = run_dsm("serve", "--port", port, home=home, catalog_path=catalog_path)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr
    out = run_dsm("serve", "--port", "70000", home=home, catalog_path=catalog_path)
    assert out.returncode == 2 and "--port" in out.stderr


def test_a_home_the_engine_cannot_use_is_said_in_one_line(home: Path, catalog_path: Path) -> None:
    """The engine starts in the server's lifespan: a file where its lock folder goes (to
    root, what a read-only home is) was a 20-line traceback and exit 3."""
    assert run_dsm("list", home=home, catalog_path=catalog_path).returncode == 0
    (home / ".locks").write_text("")
    out = run_dsm("serve", "--port", "0", home=home, catalog_path=catalog_path)
    assert out.returncode == 1, out.stderr
    assert out.stderr.endswith(
        f"dsm: error: cannot use {home / '.locks'}: File exists; check the data home and its "
        "permissions\n"
    )
    assert "Traceback" not in out.stderr and "dsm: serving on" not in out.stderr


def test_a_token_is_checked_on_every_request_even_on_loopback(
    home: Path, catalog_path: Path
) -> None:
    srv = ApiServer(home, catalog_path, DSM_API_TOKEN=TOKEN)
    try:
        good = {"Authorization": f"Bearer {TOKEN}"}
        # Four failures: under the five a client may make before it has to wait.
        for path, headers in (
            ("/datasets", {}),
            ("/openapi.json", {"Authorization": "Bearer wrong"}),
            ("/events", {"Authorization": TOKEN}),
        ):
            response = srv.client.get(path, headers=headers)
            assert_problem(response, 401, "token")
            assert response.headers["www-authenticate"] == "Bearer"
        posted = srv.client.post("/jobs", json={"type": "download", "params": {"dataset": "x"}})
        assert_problem(posted, 401, "token")
        assert srv.client.get("/datasets", headers=good).status_code == 200
        doc = srv.client.get("/openapi.json", headers=good).json()
        assert doc["security"] == [{"bearer": []}]
        assert {"401", "429"} <= set(doc["paths"]["/jobs"]["get"]["responses"])
        assert srv.client.get("/jobs", headers=good).json()["total"] == 0
    finally:
        srv.stop()


def test_guessing_tokens_is_rate_limited_per_client(home: Path, catalog_path: Path) -> None:
    srv = ApiServer(home, catalog_path, DSM_API_TOKEN=TOKEN)
    try:
        good = {"Authorization": f"Bearer {TOKEN}"}
        statuses = []
        for guess in range(50):  # one more try per second is forgiven: 429 comes long before
            headers = {"Authorization": f"Bearer {guess}", "X-Forwarded-For": f"10.0.0.{guess}"}
            response = srv.client.get("/datasets", headers=headers)
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
        assert_problem(response, 429)
        assert int(response.headers["retry-after"]) >= 1
        # Counted per connecting address: X-Forwarded-For does not make a new client.
        # While it waits, even the right token is not looked at (no oracle for guesses).
        assert_problem(srv.client.get("/datasets", headers=good), 429)
        wait_for(
            lambda: srv.client.get("/datasets", headers=good).status_code == 200,
            timeout=30,
            interval=0.5,
        )
    finally:
        srv.stop()


def test_requests_without_a_token_do_not_lock_the_token_holder_out(
    home: Path, catalog_path: Path
) -> None:
    """A request with no Authorization header guesses nothing: a health probe, a script that
    forgot the token or a page loading `<img src=http://127.0.0.1:PORT/...>` in a loop must
    not make the real client wait (all of them come from 127.0.0.1)."""
    srv = ApiServer(home, catalog_path, DSM_API_TOKEN=TOKEN)
    try:
        for _ in range(20):
            assert_problem(srv.client.get("/datasets"), 401, "token")
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert srv.client.get("/datasets", headers=good).status_code == 200
    finally:
        srv.stop()


def test_the_api_imports_no_textual() -> None:
    code = (
        "import sys, dsm.api.serve; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual'); "
        "sys.exit(str(bad) if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
