"""RFC 9457 problem details: the one shape of every error `dsm serve` sends."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.responses import JSONResponse

from dsm.domain.redact import redact_text

PROBLEM_MEDIA = "application/problem+json"


def problem_body(status: int, detail: str) -> dict[str, object]:
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": redact_text(detail),  # details quote input and errors, which may hold URLs
    }


class Problem(Exception):
    """Raised anywhere below the routes (or sent by a middleware) as a problem response."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})

    def response(self) -> JSONResponse:
        body = problem_body(self.status, self.detail)
        return JSONResponse(body, self.status, self.headers, media_type=PROBLEM_MEDIA)
