"""The pure rules of issue 18: NO_PROXY (CIDR, `*`, names, ports), DSM_HEADERS keys and the
origins they name, what a connect failure is called."""

from __future__ import annotations

import socket

import httpx
import pytest

from dsm.config import is_loopback, load_settings, parse_host_headers
from dsm.engine.handlers import host_headers
from dsm.errors import BadInput, NetworkError, Unreachable, retry_after
from dsm.transfer.http import network_error
from dsm.transfer.proxy import NoProxy, ProxyConfig


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("127.0.0.0/8", "127.0.0.1", 80, True),
        ("127.0.0.0/8", "127.1.2.3", None, True),
        ("10.0.0.0/8, example.org", "11.0.0.1", None, False),
        ("::1/128", "[::1]", None, True),
        ("*", "anything.example", 443, True),
        ("example.org", "example.org", None, True),
        ("example.org", "data.example.org", None, True),
        (".example.org", "data.example.org", None, True),
        ("example.org", "badexample.org", None, False),
        ("example.org:8080", "example.org", 8080, True),
        ("example.org:8080", "example.org", None, False),
        ("192.168.1.5", "192.168.1.5", None, True),
        ("", "example.org", None, False),
    ],
)
def test_no_proxy(no_proxy: str, host: str, port: int | None, bypass: bool) -> None:
    assert NoProxy.parse(no_proxy).bypass(host, port) is bypass


def test_proxy_config_from_env() -> None:
    env = {"ALL_PROXY": "proxy:3128", "https_proxy": "http://secure:8080", "NO_PROXY": "10.0.0.0/8"}
    config = ProxyConfig.from_env(env)
    assert config.http == "http://proxy:3128"  # curl's default scheme for a bare host:port
    assert config.for_url(httpx.URL("https://example.org/")) == "http://secure:8080"
    assert config.for_url(httpx.URL("http://10.1.2.3/")) is None
    # httpoxy: in a CGI request HTTP_PROXY comes from a client's header, so it is not used
    assert (
        ProxyConfig.from_env({"HTTP_PROXY": "http://evil:1", "REQUEST_METHOD": "GET"}).http is None
    )


@pytest.mark.parametrize(
    "key", ["exa mple.org", "https://", "ftp://example.org", "example.org/path", "h:99999", ""]
)
def test_bad_dsm_headers_keys_are_named(key: str) -> None:
    with pytest.raises(BadInput, match="DSM_HEADERS"):
        parse_host_headers(f"{key}=X-Key: 1")


def test_bad_header_name_is_named() -> None:
    with pytest.raises(BadInput, match="'X Key' is no header name"):
        parse_host_headers("example.org=X Key: 1")


def test_headers_each_source_alone() -> None:
    """Only DSM_HEADERS, only a Hub token, neither: each still reaches its origin alone."""
    home = "/tmp/h"
    only_headers = load_settings(home=home, env={"DSM_HEADERS": "a.example=K: 1", "HF_HOME": home})
    only_token = load_settings(home=home, env={"HF_TOKEN": "hf_x"})
    neither = load_settings(home=home, env={"HF_HOME": home})
    assert only_headers.hf_token is None and neither.hf_token is None
    assert host_headers(only_headers, "https://a.example/f") == {"K": "1"}
    assert host_headers(only_token, "https://huggingface.co/x") == {"Authorization": "Bearer hf_x"}
    assert host_headers(only_token, "https://a.example/f") == {}
    assert host_headers(neither, "https://a.example/f") == {}
    assert host_headers(neither, "https://huggingface.co/x") == {}


def test_headers_go_to_their_origin_only() -> None:
    settings = load_settings(
        home="/tmp/h",
        env={
            "DSM_HEADERS": "a.example=K: 1; b.example:8443=K: 2; https://c.example=K: 3",
            "HF_TOKEN": "hf_x",
        },
    )
    assert host_headers(settings, "https://a.example/f") == {"K": "1"}
    assert host_headers(settings, "https://a.example:443/f") == {"K": "1"}
    assert host_headers(settings, "https://a.example:8443/f") == {}  # another port
    assert host_headers(settings, "https://b.example:8443/f") == {"K": "2"}
    assert host_headers(settings, "https://b.example/f") == {}
    assert host_headers(settings, "https://c.example/f") == {"K": "3"}
    assert host_headers(settings, "http://a.example/f") == {}  # clear text
    assert host_headers(settings, "https://huggingface.co:8443/x") == {}
    assert host_headers(settings, "https://huggingface.co/x") == {"Authorization": "Bearer hf_x"}


def test_loopback() -> None:
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1"]))
    assert not any(map(is_loopback, ["example.org", "10.0.0.1", "localhost.example.org"]))


def _connect_error(cause: BaseException) -> httpx.ConnectError:
    try:
        try:
            raise cause
        except OSError as inner:
            raise httpx.ConnectError(str(inner)) from inner
    except httpx.ConnectError as exc:
        return exc


def test_connect_failures_are_named() -> None:
    dns = network_error(_connect_error(socket.gaierror(-2, "no")), "https://u:p@h.example/f", 1)
    assert isinstance(dns, Unreachable) and retry_after(dns) == 1.0
    assert (
        str(dns)
        == "cannot resolve h.example: is this machine offline? (DSM_OFFLINE=1 skips the network)"
    )
    refused = network_error(_connect_error(ConnectionRefusedError(111, "refused")), "http://h/f", 1)
    assert isinstance(refused, Unreachable) and "connection refused by h:80" in str(refused)
    other = network_error(
        _connect_error(OSError(113, "no route")), "http://u:secret@h/f?token=t", 1
    )
    assert (
        type(other) is NetworkError and "secret" not in str(other) and "[redacted]@h" in str(other)
    )
