"""uvicorn's h11 protocol with the limits a server left running needs.

uvicorn closes an idle keep-alive connection, but not one that never completes its request
line and headers: 1,200 such sockets starved real clients. Here every connection must
finish its headers within HEADER_TIMEOUT_S of connecting (or of its previous response),
at most MAX_CONNECTIONS are open (the next one gets a 503 and is closed at once), and the
400 uvicorn sends for a malformed request is a problem+json like every other error.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from dsm.api.problem import PROBLEM_MEDIA, problem_body
from dsm.domain.terminal import json_text

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 16 * 1024  # h11's limit on a request line plus headers


def raw_problem(status: int, detail: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 problem response that closes the connection, for where there is no
    ASGI app to send one (before h11 has a request)."""
    body = json_text(problem_body(status, detail)).encode()
    head = (
        f"HTTP/1.1 {status} {problem_body(status, '')['title']}\r\n"
        f"content-type: {PROBLEM_MEDIA}\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            self.logger.warning("%d connections open: refusing one more", MAX_CONNECTIONS)
            detail = f"the server has {MAX_CONNECTIONS} connections open; try again"
            transport.write(raw_problem(503, detail, "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers have the same limit

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_overdue)

    def _headers_overdue(self) -> None:
        # IDLE: h11 has not got a whole request line and headers yet (else a request runs).
        # Or we have answered (a refusal) and the client is still sending the body.
        late = self.conn.their_state is h11.IDLE or self.conn.our_state in (
            h11.DONE,
            h11.MUST_CLOSE,
        )
        if late and not self.transport.is_closing():
            self.logger.info(
                "closing a connection that sent no request within %g s", HEADER_TIMEOUT_S
            )
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(raw_problem(400, f"malformed HTTP request: {msg}"))
        self.transport.close()
