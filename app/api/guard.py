"""ASGI middleware that keeps other web pages and greedy clients out of `dsm serve`.

A browser lets any page send some requests to 127.0.0.1 without asking the server first:
a POST with text/plain, form or multipart bodies, or none. And a page whose DNS name is
rebound to 127.0.0.1 talks to us as "its own" origin. So, for every route:

- Host must be a name of the bound address (421; 400 when there is none): no rebinding.
- A request a browser marks as coming from another site (Origin, Sec-Fetch-Site) is 403.
- State-changing methods need Content-Type: application/json (415), which a browser only
  sends cross-site after a preflight that this server never answers.
- A body is read whole only up to MAX_BODY (413, from Content-Length before reading, or
  while counting a chunked one) and within BODY_TIMEOUT_S (408): a bounded, cheap read.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence

import anyio
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dsm.api.problem import Problem

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
BODY_TIMEOUT_S = 10.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
JSON_MEDIA = "application/json"
# Too big or too slow: the rest of the body is not read, the connection ends. (Other
# refusals leave the connection open: uvicorn reads and drops their bodies, which a client
# still sending would otherwise meet as a reset instead of our answer.)
CLOSE = {"Connection": "close"}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        return False


def host_names(bound: str, port: int, configured: Iterable[str]) -> frozenset[str]:
    """The Host header values this server answers to, lower-case `name:port`.

    Bound to loopback: the loopback names. Otherwise the bound address itself (unless it
    is a wildcard) and the configured names; a configured name may carry its own port (a
    proxy in front)."""
    names = list(configured)
    if is_loopback(bound):
        names += LOOPBACK_NAMES
    elif not is_wildcard(bound):
        names.append(bound)
    out: set[str] = set()
    for name in (n.strip().lower() for n in names):
        if name.count(":") > 1 and not name.startswith("["):
            name = f"[{name}]"  # a bare IPv6 literal
        if name.rpartition(":")[2].isdigit() and not name.endswith("]"):
            out.add(name)
            continue
        out.add(f"{name}:{port}")
        if port == 80:  # a client may leave the default port out
            out.add(name)
    return frozenset(out)


def origins(hosts: Iterable[str]) -> frozenset[str]:
    """The origins a page of this server has: over http, or https through a proxy."""
    out = set()
    for host in hosts:
        out |= {f"http://{host}", f"https://{host}"}
        name, _, port = host.rpartition(":")
        if port in ("80", "443"):
            out.add(f"{'https' if port == '443' else 'http'}://{name}")
    return frozenset(out)


class SameOrigin:
    """Host, Origin and Sec-Fetch-Site checks, before anything else runs."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts
        self.origins = origins(hosts)

    def refusal(self, headers: Headers) -> Problem | None:
        host = headers.get("host")
        if not host:
            return Problem(400, "the request has no Host header")
        if host.lower() not in self.hosts:
            return Problem(
                421,
                f"Host {host!r} is not a name of this server; it answers to: "
                + ", ".join(sorted(self.hosts)),
            )
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return Problem(403, f"cross-site request refused: Origin {origin!r} is not this server")
        site = headers.get("sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site"):
            return Problem(403, f"cross-site request refused: Sec-Fetch-Site is {site}")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.refusal(Headers(scope=scope))
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ClientGone(Exception):
    pass


async def read_body(receive: Receive) -> bytes:
    """The whole body, at most MAX_BODY bytes, within BODY_TIMEOUT_S; Problem otherwise."""
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(BODY_TIMEOUT_S):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:  # a chunked body: counted as it comes
                raise Problem(413, f"the body is over the limit of {MAX_BODY} bytes", CLOSE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    raise Problem(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s", CLOSE)


class JsonBody:
    """State-changing requests: a JSON Content-Type and a bounded body, read here once and
    handed on whole (so no route reads an unbounded body, and a client that hangs up
    mid-body is one log line). Only requests a route takes: the others are the router's
    404 or 405, whatever their body."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app, self.routes = app, routes

    def _routed(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] == Match.FULL for route in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS or not self._routed(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        length = headers.get("content-length")
        try:
            if length is not None and int(length) > MAX_BODY:  # h11 has checked the number
                raise Problem(413, f"the body is {length} bytes; the limit is {MAX_BODY}", CLOSE)
            if media != JSON_MEDIA:
                given = f"Content-Type {media!r}" if media else "no Content-Type"
                raise Problem(
                    415, f"{scope['method']} needs Content-Type: {JSON_MEDIA}; got {given}"
                )
            body = await read_body(receive)
        except Problem as problem:
            await problem.response()(scope, receive, send)
            return
        except ClientGone:
            client = scope.get("client") or ("?", 0)
            log.warning("%s:%s hung up before its request body arrived", *client)
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # from now on: only a disconnect can come
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
