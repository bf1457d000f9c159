"""TLS is set up lazily (on the first https request) and still verifies: a server whose
certificate no trusted CA signed is refused; SSL_CERT_FILE naming its CA lets it in; a plain
http URL redirected to https is verified the same way."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dsm.domain.jobs import JobStatus, JobType
from dsm.transfer import bodyread
from dsm.transfer.bodyread import DIRECT_MIN
from dsm.transfer.proxy import make_client
from tests.conftest import CatalogFn, blob
from tests.enginehelp import run_jobs, setup
from tests.httpserver import FileServer
from tests.proxyserver import ProxyServer

pytestmark = pytest.mark.anyio
BODY = blob(3)
BIG = blob(4, DIRECT_MIN + 1_000_000)  # read straight from the TLS socket (bodyread)


@dataclass
class TlsServer:
    url: str
    ca_file: Path
    hits: list[str]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of this test alone, and a certificate it signed for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("dsm test CA"))
        .issuer_name(_name("dsm test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    ca_file, cert, key = _certificates(tmp_path)
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """/a.bin: BODY; /big.bin: BIG; /cut.bin: BIG's length announced, half of it
            sent, then the connection closed (a server that lies)."""
            hits.append(self.path)
            body = BODY if self.path == "/a.bin" else BIG
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path == "/cut.bin" else body)
            self.close_connection = self.path == "/cut.bin"

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield TlsServer(f"https://127.0.0.1:{httpd.server_address[1]}", ca_file, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _client() -> httpx.Client:
    return make_client(httpx.Timeout(5.0), httpx.Limits())


def test_https_is_verified_against_the_default_bundle(
    tls_server: TlsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with _client() as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"{tls_server.url}/a.bin")
    assert tls_server.hits == []


def test_ssl_cert_file_is_honoured_when_tls_starts_after_plain_http(
    tls_server: TlsServer, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client starts, serves plain http (no TLS set up), then its first https request
    reads SSL_CERT_FILE as an eager set-up did."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    with _client() as client:
        assert client.get(server.add("plain.bin", b"plain")).content == b"plain"
        assert client.get(f"{tls_server.url}/a.bin").content == BODY
    assert tls_server.hits == ["/a.bin"]


@pytest.mark.parametrize("trusted", [True, False], ids=["ca-given", "ca-unknown"])
async def test_a_redirect_from_http_to_https_is_verified(
    tls_server: TlsServer,
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    trusted: bool,
) -> None:
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server.always("a.bin", redirect_to=f"{tls_server.url}/a.bin")
    settings, repo = setup(home, catalog(a=server.url("a.bin")))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    if trusted:
        assert run.job.status == JobStatus.COMPLETED
        assert (home / "data" / "a").read_bytes() == BODY
        assert tls_server.hits
    else:
        assert run.job.status == JobStatus.FAILED
        assert "certificate" in (run.job.error or "").lower()
        assert tls_server.hits == []
        assert not (home / "data" / "a").exists()


@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    srv = ProxyServer().start()
    yield srv
    srv.stop()


def spy_direct(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each body was read straight from its socket (and, over TLS, a decrypting
    SSLSocket): bodyread.direct_socket's answers."""
    direct: list[bool] = []
    real = bodyread.direct_socket

    def spy(resp: httpx.Response) -> socket.socket | None:
        sock = real(resp)
        tls = resp.url.scheme == "https"
        direct.append(sock is not None and isinstance(sock, ssl.SSLSocket) == tls)
        return sock

    monkeypatch.setattr(bodyread, "direct_socket", spy)
    return direct


def big_entry(url: str) -> dict[str, str]:
    return {
        "name": "a",
        "description": "a",
        "original_url": url,
        "local_path": "data/a",
        "expected_sha256": hashlib.sha256(BIG).hexdigest(),
    }


@pytest.mark.parametrize("lying", [False, True], ids=["whole", "cut-short"])
async def test_a_big_body_over_tls_is_read_from_the_socket_and_verified(
    tls_server: TlsServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    lying: bool,
) -> None:
    """The direct body read works on a TLS socket (it decrypts what it reads); a server
    that announces more than it sends is never taken as a whole file."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    direct = spy_direct(monkeypatch)
    url = tls_server.url + ("/cut.bin" if lying else "/big.bin")
    settings, repo = setup(home, catalog([big_entry(url)]), DSM_MAX_RETRIES="1")
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert direct and all(direct), "the body was not read from the TLS socket"
    if lying:
        assert run.job.status == JobStatus.FAILED
        assert "without sending complete message body" in (run.job.error or "")
        assert not (home / "data" / "a").exists() and not repo.dataset("a").downloaded
    else:
        assert run.job.status == JobStatus.COMPLETED
        assert (home / "data" / "a").read_bytes() == BIG
        assert repo.dataset("a").checksum == hashlib.sha256(BIG).hexdigest()


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_a_big_body_through_a_proxy_is_read_from_the_socket_and_verified(
    tls_server: TlsServer,
    server: FileServer,
    proxy: ProxyServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    """Through an HTTP proxy: a plain request forwarded by it, or TLS tunnelled with
    CONNECT. Either way the body is read straight from the socket and verified."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    monkeypatch.setenv("ALL_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.org")
    direct = spy_direct(monkeypatch)
    url = f"{tls_server.url}/big.bin" if scheme == "https" else server.add("big.bin", BIG)
    settings, repo = setup(home, catalog([big_entry(url)]))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert direct and all(direct)
    assert (home / "data" / "a").read_bytes() == BIG
    netloc = url.split("/")[2]
    asked = f"CONNECT {netloc} HTTP/1.1" if scheme == "https" else f"GET {url} HTTP/1.1"
    assert asked in proxy.seen
