"""What a browser on another site, a rebound DNS name or a greedy client gets from `dsm serve`:
refusals (problem+json), no job, no traceback. Real clients: curl and httpx."""

from __future__ import annotations

import json
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsm.api.app import create_app
from dsm.api.guard import MAX_BODY
from dsm.api.protocol import MAX_CONNECTIONS
from tests.conftest import make_settings, open_repo
from tests.system.apiserver import ApiServer, assert_problem

DELETE = b'{"type": "delete", "params": {"dataset": "humaneval"}}'
EVIL = "http://evil.example"
WRITE_OUT = "\n%{http_code}\n%{content_type}"  # curl -w: after the body


def no_jobs(api: ApiServer) -> None:
    assert api.client.get("/jobs").json()["total"] == 0


# -- what a page on another site can make a browser send --------------------------------------
@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        ({"Content-Type": "text/plain;charset=UTF-8"}, DELETE, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"type=delete", 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n", 415),
        ({}, DELETE, 415),  # no Content-Type at all
        ({"Content-Type": "application/json", "Origin": EVIL}, DELETE, 403),
        ({"Content-Type": "text/plain", "Origin": EVIL}, DELETE, 403),
        ({"Content-Type": "application/json", "Origin": "null"}, DELETE, 403),
        ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, DELETE, 403),
        ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, DELETE, 403),
        ({"Content-Type": "application/json", "Host": "evil.example"}, DELETE, 421),
        ({"Content-Type": "application/json", "Host": "evil.example:80"}, DELETE, 421),
    ],
)
def test_cross_site_posts_are_refused_and_create_nothing(
    api: ApiServer, headers: dict[str, str], content: bytes, status: int
) -> None:
    response = api.client.post("/jobs", content=content, headers=headers)
    assert_problem(response, status)
    no_jobs(api)


def test_dns_rebinding_reads_nothing(api: ApiServer) -> None:
    for path in ("/jobs", "/datasets/humaneval", "/events", "/openapi.json"):
        assert_problem(api.client.get(path, headers={"Host": "evil.example"}), 421, "Host")
    assert_problem(api.client.get("/jobs", headers={"Origin": EVIL}), 403, "Origin")


@pytest.mark.parametrize("host", ["evil.example", None], ids=["foreign-host", "own-host"])
def test_a_websocket_upgrade_is_never_accepted(api: ApiServer, host: str | None) -> None:
    """An upgrade is answered as plain HTTP by the guard (uvicorn's `ws="none"`): with a
    WebSocket library installed, uvicorn would hand it to a protocol the guard never sees."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(
            f"GET /events HTTP/1.1\r\nHost: {host or f'127.0.0.1:{api.port}'}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nOrigin: http://evil.example\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status = conn.recv(4096).split(b"\r\n", 1)[0]
    assert status == (b"HTTP/1.1 421 Misdirected Request" if host else b"HTTP/1.1 403 Forbidden")


def test_our_own_names_and_origin_are_accepted(api: ApiServer) -> None:
    for name in ("127.0.0.1", "localhost", "LOCALHOST", "[::1]"):
        host = f"{name}:{api.port}"
        headers = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert api.client.get("/datasets", headers=headers).status_code == 200, name
    response = api.client.post(
        "/jobs",
        json={"type": "verify", "params": {"dataset": "humaneval"}},
        headers={"Origin": api.url, "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 202, response.text
    # The same name on another port is another origin.
    other = f"http://127.0.0.1:{api.port + 1}"
    assert_problem(api.client.get("/jobs", headers={"Origin": other}), 403)


def test_curl_as_a_browser_would_send_it(api: ApiServer) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is needed (apt-get install -y curl)")
    body = DELETE.decode()
    cases = {
        ("-H", "Origin: http://evil.example", "-H", "Content-Type: text/plain;charset=UTF-8"): 403,
        ("-H", "Content-Type: text/plain;charset=UTF-8"): 415,
        ("-F", "type=delete"): 415,
        ("-H", "Content-Type: application/x-www-form-urlencoded"): 415,
        ("-H", "Host: evil.example", "-H", "Content-Type: application/json"): 421,
        ("-H", "Sec-Fetch-Site: cross-site", "-H", "Content-Type: application/json"): 403,
    }
    for args, status in cases.items():
        data = () if "-F" in args else ("-d", body)
        out = subprocess.run(
            ["curl", "-s", "-X", "POST", f"{api.url}/jobs", *args, *data, "-w", WRITE_OUT],
            capture_output=True,
            text=True,
            timeout=30,
        )
        payload, code, media = out.stdout.rsplit("\n", 2)
        assert (int(code), media) == (status, "application/problem+json"), (args, out.stdout)
        assert json.loads(payload)["status"] == status
    no_jobs(api)


def test_allowed_host_adds_a_name(home: Path, catalog_path: Path) -> None:
    srv = ApiServer(home, catalog_path, "--allowed-host", "dsm.test")
    try:
        ok = srv.client.get("/datasets", headers={"Host": f"dsm.test:{srv.port}"})
        assert ok.status_code == 200
        assert_problem(srv.client.get("/datasets", headers={"Host": "dsm.test:1"}), 421)
    finally:
        srv.stop()


# -- bodies ----------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_before_it_is_read(api: ApiServer) -> None:
    big = b"[" + b"0," * MAX_BODY + b"0]"
    response = api.client.post("/jobs", content=big, headers={"Content-Type": "application/json"})
    assert_problem(response, 413, str(MAX_BODY))

    def chunks() -> Any:  # no Content-Length: counted while it streams
        for _ in range(100):
            yield b" " * 4096

    response = api.client.post(
        "/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, str(MAX_BODY))
    no_jobs(api)


def test_a_length_announced_too_large_gets_413_without_sending_it(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300000000\r\n\r\n" % api.port
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "application/problem+json" in head


def raw_request(port: int, data: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_malformed_request_is_a_problem_too(api: ApiServer) -> None:
    answer = raw_request(api.port, b"GARBAGE\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400"), answer
    head, _, body = answer.partition("\r\n\r\n")
    assert "application/problem+json" in head and json.loads(body)["status"] == 400


def test_a_client_hanging_up_mid_body_is_one_log_line(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"type":' % api.port
        )
    wait = time.monotonic() + 10
    while "hung up" not in api.log and time.monotonic() < wait:
        time.sleep(0.05)
    assert [line for line in api.lines if "hung up" in line], api.log
    assert "Traceback" not in api.log
    no_jobs(api)


def test_slow_headers_and_bodies_are_cut_off(api: ApiServer) -> None:
    """A connection that never finishes its headers, and one that never finishes its body,
    are both closed by the server (within its 10 s limits) while others are served."""
    idle = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    idle.sendall(b"GET /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no end of headers
    slow = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    slow.sendall(
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50\r\n\r\n{" % api.port
    )
    try:
        assert api.client.get("/datasets").status_code == 200
        assert idle.recv(65536) == b""  # closed, with nothing sent
        answer = slow.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
    finally:
        idle.close()
        slow.close()
    no_jobs(api)


def test_open_connections_are_bounded(api: ApiServer) -> None:
    extra = 5
    sockets = [
        socket.create_connection(("127.0.0.1", api.port), timeout=10)
        for _ in range(MAX_CONNECTIONS + extra)
    ]
    try:
        refused: list[str] = []
        deadline = time.monotonic() + 8  # before the idle ones reach the header limit
        waiting = list(sockets)
        while len(refused) < extra - 1 and time.monotonic() < deadline:
            readable, _, _ = select.select(waiting, [], [], 0.1)
            for sock in readable:
                refused.append(sock.recv(65536).decode())
                waiting.remove(sock)
        # The test client's own keep-alive connection may hold one more place.
        assert extra - 1 <= len(refused) <= extra + 1, refused
        for answer in refused:
            assert answer.startswith("HTTP/1.1 503"), answer
            assert "application/problem+json" in answer and "retry-after" in answer.lower()
    finally:
        for sock in sockets:
            sock.close()
    # Closed connections free their places: a client is served again.
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{api.url}/datasets", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "not served after the connections closed"
        time.sleep(0.1)
    assert "Traceback" not in api.log


# -- errors of the server's own making --------------------------------------------------------
@pytest.mark.anyio
async def test_an_internal_error_is_a_problem(
    home: Path, catalog_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(home, catalog_path)
    app = create_app(settings, open_repo(settings), None, frozenset({"testserver"}))

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("dsm.repository.Repository.datasets", broken)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/datasets")
    body = assert_problem(response, 500, "internal error")
    assert "a bug" not in body["detail"]  # the log has the traceback, the client no internals


@pytest.mark.parametrize(
    "content",
    [
        # A checker that reads the first "type" sees a download; json.loads keeps the last.
        b'{"type": "download", "params": {"dataset": "humaneval"}, "type": "delete"}',
        b'{"type": "verify", "params": {"dataset": "humaneval", "dataset": "humaneval"}}',
    ],
    ids=["top", "nested"],
)
def test_a_body_naming_a_key_twice_is_refused(api: ApiServer, content: bytes) -> None:
    """Two readers of one body (a proxy's filter, a log, dsm) must not see two requests."""
    response = api.client.post(
        "/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "appears twice")
    no_jobs(api)
