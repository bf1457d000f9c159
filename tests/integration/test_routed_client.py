"""The engine's client (RoutedClient.stream_get) against the live loopback server: the same
request on the wire as httpx's own Client.send, the same errors, cookies and redirects kept,
and httpx's path wherever only it knows what to do (a URL's password, stored cookies)."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import httpx
import pytest

from dsm.transfer.http import base_headers, open_stream
from dsm.transfer.proxy import RoutedClient, make_client
from tests.conftest import blob
from tests.httpserver import FileServer


@pytest.fixture
def client() -> Iterator[RoutedClient]:
    with make_client(httpx.Timeout(5.0), httpx.Limits()) as made:
        yield made


def no_headers(url: str) -> dict[str, str]:
    return {}


def body_of(client: httpx.Client, url: str, headers: dict[str, str]) -> bytes:
    with open_stream(client, url, headers, no_headers, 10) as (resp, _):
        return b"".join(resp.iter_raw())


def test_the_request_on_the_wire_is_the_one_httpx_sends(
    server: FileServer, client: RoutedClient
) -> None:
    data = blob(5000)
    url = server.add("f.bin", data)
    headers = {**base_headers(), "Range": "bytes=10-", "X-Extra": "1"}
    with httpx.Client(timeout=5.0) as plain:
        assert body_of(plain, url, headers) == data[10:]
    assert body_of(client, url, headers) == data[10:]
    by_httpx, ours = server.requests("f.bin")[-2:]
    assert list(ours.headers.items()) == list(by_httpx.headers.items())
    assert ours.headers["user-agent"].startswith("dsm/")
    assert ours.headers["range"] == "bytes=10-"


def test_a_host_header_of_the_callers_replaces_the_urls(
    server: FileServer, client: RoutedClient
) -> None:
    """DSM_HEADERS may name a Host (a virtual host reached by IP): it goes alone, as httpx
    sends it (two Host fields are refused by the HTTP/1.1 layer)."""
    data = blob(5001)
    url = server.add("f.bin", data)
    headers = {**base_headers(), "Host": "vhost.example"}
    with httpx.Client(timeout=5.0) as plain:
        assert body_of(plain, url, headers) == data
    assert body_of(client, url, headers) == data
    by_httpx, ours = server.requests("f.bin")[-2:]
    assert list(ours.headers.items()) == list(by_httpx.headers.items())
    assert ours.headers["host"] == "vhost.example"


def test_the_short_path_is_taken_and_reads_the_whole_body(
    server: FileServer, client: RoutedClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kw: object) -> httpx.Response:
        raise AssertionError("Client.send used for a plain GET")

    monkeypatch.setattr(client, "send", refuse)
    data = blob(300_000)
    url = server.add("f.bin", data)
    with open_stream(client, url, base_headers(), no_headers, 10) as (resp, final):
        assert resp.status_code == 200 and final == url
        assert resp.headers["content-length"] == str(len(data))
        assert resp.request.extensions["timeout"]["read"] == 5.0  # BodyReader reads it
        assert b"".join(resp.iter_raw()) == data
    assert server.connections == 1
    assert body_of(client, url, base_headers()) == data  # the pooled connection again
    assert server.connections == 1


def test_redirects_are_followed_with_each_hop_headers(
    server: FileServer, client: RoutedClient
) -> None:
    data = blob(64)
    landed = server.add("f.bin", data).replace("127.0.0.1", "localhost")
    server.always("start", redirect_to=landed)

    def only_for_127(url: str) -> dict[str, str]:
        return {"Authorization": "Bearer s3cret"} if "//127.0.0.1:" in url else {}

    with open_stream(client, server.url("start"), base_headers(), only_for_127, 10) as (
        resp,
        final,
    ):
        assert final == landed and b"".join(resp.iter_raw()) == data
    (start,) = server.requests("start")
    (hop,) = server.requests("f.bin")
    assert start.headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in hop.headers
    assert hop.headers["host"] == landed.split("/")[2]


def test_a_cookie_set_on_a_redirect_goes_with_the_next_request(
    server: FileServer, client: RoutedClient
) -> None:
    server.add("f.bin", b"data")
    server.always("start", redirect_to="f.bin", headers={"Set-Cookie": "session=s1; Path=/"})
    assert body_of(client, server.url("start"), base_headers()) == b"data"
    (hop,) = server.requests("f.bin")
    assert hop.headers["cookie"] == "session=s1"
    assert "session" in client.cookies


def test_a_password_in_the_url_goes_as_basic_auth(server: FileServer, client: RoutedClient) -> None:
    url = server.add("f.bin", b"data").replace("://", "://alice:pw@")
    assert body_of(client, url, base_headers()) == b"data"
    (seen,) = server.requests("f.bin")
    assert seen.headers["authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()


def test_errors_are_httpx_errors(server: FileServer, client: RoutedClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/f"
    with pytest.raises(httpx.ConnectError):
        body_of(client, closed, base_headers())
    data = blob(100_000)
    url = server.add("cut.bin", data)
    server.fault("cut.bin", drop_after=1000)
    with pytest.raises(httpx.RemoteProtocolError):
        body_of(client, url, base_headers())
    assert body_of(client, url, base_headers()) == data  # the next request is whole again


def test_a_closed_client_refuses_as_httpx_does(server: FileServer) -> None:
    url = server.add("f.bin", b"data")
    client = make_client(httpx.Timeout(5.0), httpx.Limits())
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        body_of(client, url, base_headers())
    assert server.requests("f.bin") == []
