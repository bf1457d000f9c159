"""Proxies as curl reads them: `http_proxy`, `https_proxy`, `all_proxy` (either case) and a
`no_proxy` that also takes CIDR ranges (`10.0.0.0/8`) and `*`.

httpx's own environment handling matches `NO_PROXY` entries as host names only, so dsm builds
the routing itself: one transport per proxy and a direct one, chosen per request by
`ProxyRouter`. A failure to reach a proxy names the proxy, not the URL asked for.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dsm.domain.redact import redact_url
from dsm.errors import BadInput
from dsm.transfer.wire import watch_heads

SOCKS_HINT = "pip install 'httpx[socks]' (or dsm[socks]) to use a SOCKS proxy"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NoProxy:
    """The hosts `no_proxy` sends direct: names (and their subdomains), addresses, ranges."""

    everything: bool = False
    names: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> NoProxy:
        names: list[tuple[str, int | None]] = []
        networks: list[Network] = []
        for entry in (e.strip().lower() for e in raw.split(",")):
            if entry == "*":
                return cls(everything=True)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host, port = _split_port(entry)
            names.append((host.lstrip(".").lstrip("*").lstrip("."), port))
        return cls(False, tuple(names), tuple(networks))

    def bypass(self, host: str, port: int | None) -> bool:
        host = host.lower().strip("[]")
        if self.everything:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in self.networks):
            return True
        return any(
            (host == name or host.endswith("." + name)) and want in (None, port)
            for name, want in self.names
        )


def _split_port(entry: str) -> tuple[str, int | None]:
    host, colon, port = entry.rpartition(":")
    if colon and port.isdigit() and "]" not in port:
        return host, int(port)
    return entry, None


@dataclass(frozen=True)
class ProxyConfig:
    """Which proxy each scheme goes through (None: direct), and who bypasses them."""

    http: str | None = None
    https: str | None = None
    no_proxy: NoProxy = NoProxy()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxyConfig:
        def var(name: str) -> str | None:
            upper = name.upper()
            if name == "http_proxy" and "REQUEST_METHOD" in env:
                upper = name  # a CGI request sets HTTP_PROXY from a header (httpoxy), as curl
            return (env.get(name) or env.get(upper) or "").strip() or None

        every = var("all_proxy")
        return cls(
            _normal(var("http_proxy") or every),
            _normal(var("https_proxy") or every),
            NoProxy.parse(var("no_proxy") or ""),
        )

    def for_url(self, url: httpx.URL) -> str | None:
        proxy = self.https if url.scheme == "https" else self.http
        if proxy is None or self.no_proxy.bypass(url.host, url.port):
            return None
        return proxy


def _normal(proxy: str | None) -> str | None:
    """curl's default: a bare `host:port` is an HTTP proxy."""
    return proxy if proxy is None or "://" in proxy else "http://" + proxy


def _variable(proxy: str) -> str:
    return f"the proxy {redact_url(proxy)}"


class ProxyRouter(httpx.BaseTransport):
    """Sends each request direct or through its proxy, as `ProxyConfig` says.

    TLS is set up on the first https request of each route, not at start: httpx builds an SSL
    context and loads the CA bundle (~0.2 s) for every transport it makes, which a catalogue
    served over plain http never needs. Plain http goes through transports whose SSL context
    trusts no certificate at all, so a TLS handshake can never pass through one unverified."""

    def __init__(self, config: ProxyConfig, **transport: Any) -> None:
        self.config = config
        self._options = transport
        self._routes: dict[tuple[str | None, bool], httpx.HTTPTransport] = {}
        self._lock = threading.Lock()  # transfers run in several threads
        # The plain transports now: a proxy that cannot be used is refused at start.
        for proxy in (None, *sorted({p for p in (config.http, config.https) if p})):
            self._transport(proxy, tls=False)

    def _transport(self, proxy: str | None, tls: bool) -> httpx.HTTPTransport:
        with self._lock:
            found = self._routes.get((proxy, tls))
            if found is None:
                options = self._options if tls else {**self._options, "verify": _trusts_nothing()}
                found = self._routes[proxy, tls] = _build(proxy, options)
            return found

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self.config.for_url(request.url)
        transport = self._transport(proxy, tls=request.url.scheme == "https")
        try:
            return transport.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            if proxy is None:
                raise
            raise httpx.ProxyError(f"{_variable(proxy)} failed: {exc}", request=request) from exc

    def close(self) -> None:
        with self._lock:
            transports = list(self._routes.values())
        for transport in transports:
            transport.close()


def _trusts_nothing() -> ssl.SSLContext:
    """An SSL context with verification on and no CA loaded (cheap: no bundle is read)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _build(proxy: str | None, options: dict[str, Any]) -> httpx.HTTPTransport:
    """A transport whose connections read through dsm.transfer.wire (httpx has no option for
    a network backend: its pool is given one before any request)."""
    try:
        transport = httpx.HTTPTransport(proxy=proxy, **options)
    except ImportError:
        raise BadInput(f"{_variable(proxy or '')} is a SOCKS proxy: {SOCKS_HINT}") from None
    except ValueError as exc:
        raise BadInput(f"{_variable(proxy or '')} cannot be used: {exc}") from None
    watch_heads(transport._pool)
    return transport


class RoutedClient(httpx.Client):
    """The engine's client: `stream_get` hands a plain GET straight to the router.

    httpx's `Client.send` around the transport (merging URL and headers again, auth, the
    redirect and event-hook machinery, the cookie jar, timing the body) cost ~0.6 M
    instructions per request, ~8% of a small file's whole job (bench/RESULTS.md). The request
    that goes out is the same: Host, the client's headers, then the caller's in their order
    (httpx's merge), the client's timeouts."""

    def __init__(self, router: ProxyRouter, timeout: httpx.Timeout) -> None:
        super().__init__(timeout=timeout, transport=router, trust_env=False)
        self.router = router

    def stream_get(self, url: httpx.URL, headers: Mapping[str, str]) -> httpx.Response:
        """GET `url` with `headers`, the body left to stream; not following redirects. Unlike
        Client.send: no `elapsed` on the response and no "HTTP Request" log line (dsm reads
        neither)."""
        if url.userinfo or self.cookies or self.is_closed or any(self.event_hooks.values()):
            # What only Client.send does: basic auth from the URL, sending stored cookies,
            # hooks, refusing a closed client.
            return self.send(self.build_request("GET", url, headers=headers), stream=True)
        ours = [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        replaced = {k.lower() for k, _ in ours}
        # A Host of the caller's (DSM_HEADERS: a virtual host behind an IP) replaces ours,
        # as httpx adds one only when none is given: two are refused on the wire.
        fields = [] if b"host" in replaced else [(b"Host", url.netloc)]
        fields += [(k, v) for k, v in self.headers.raw if k.lower() not in replaced]
        request = httpx.Request(
            "GET",
            url,
            headers=fields + ours,
            stream=_NO_BODY,
            extensions={"timeout": self.timeout.as_dict()},
        )
        try:
            response = self.router.handle_request(request)
        except httpx.RequestError as exc:
            exc.request = request  # as Client.send does: the URL that failed (a redirect's)
            raise
        response.request = request
        if "set-cookie" in response.headers:  # kept for later requests, as Client.send does
            self.cookies.extract_cookies(response)
        return response


_NO_BODY = httpx.ByteStream(b"")  # a GET's empty body, as httpx encodes it (stateless)


def make_client(timeout: httpx.Timeout, limits: httpx.Limits) -> RoutedClient:
    """The engine's HTTP client, with proxies routed by `ProxyRouter` (from the environment).
    The environment's certificate settings (SSL_CERT_FILE, SSL_CERT_DIR) still apply."""
    router = ProxyRouter(ProxyConfig.from_env(os.environ), limits=limits, trust_env=True)
    return RoutedClient(router, timeout)
