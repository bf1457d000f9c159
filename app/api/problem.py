"""RFC 9457 problem details: the one shape of every error `dsm serve` sends."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

from dsm.domain.redact import redact_text
from dsm.domain.terminal import json_text

PROBLEM_MEDIA = "application/problem+json"


def problem_body(status: int, detail: str) -> dict[str, object]:
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": redact_text(detail),  # details quote input and errors, which may hold URLs
    }


class SafeJSONResponse(JSONResponse):
    """Every JSON answer of `dsm serve`: Starlette's encoding, but no terminal-hostile
    character raw (catalogue text, servers' errors: a client may print the body)."""

    def render(self, content: Any) -> bytes:
        return json_text(content, allow_nan=False, separators=(",", ":")).encode()


class Problem(Exception):
    """Raised anywhere below the routes (or sent by a middleware) as a problem response."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})

    def response(self) -> SafeJSONResponse:
        body = problem_body(self.status, self.detail)
        return SafeJSONResponse(body, self.status, self.headers, media_type=PROBLEM_MEDIA)
