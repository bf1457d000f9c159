"""The resume planner as tables: what is on disk and what the server said in, what to do out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsm.errors import BadResponse, HttpStatusError, IntegrityError
from dsm.transfer import resume
from dsm.transfer.http import Answer, Policy
from dsm.transfer.resume import (
    Ask,
    Complete,
    OnDisk,
    Reject,
    Restart,
    ResumeSegments,
    Split,
    Write,
)

URL = "http://127.0.0.1:9/a.bin"
TARGET = Path("data/a.bin")
STRONG = '"v1"'
LAST_MOD = "Tue, 01 Dec 2026 10:00:00 GMT"
ONE = Policy(stall_timeout=5)  # one stream
SPLIT = Policy(stall_timeout=5, segments=4, segment_min=1000)


def sidecar(**over: Any) -> dict[str, Any]:
    return {"url": URL, "etag": STRONG, "last_modified": None, "total": 5000, **over}


# -- before the request ------------------------------------------------------------------
@dataclass(frozen=True)
class StartCase:
    name: str
    disk: OnDisk
    want: type
    offset: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    policy: Policy = ONE
    expected_size: int | None = None


START_CASES = [
    StartCase("nothing on disk", OnDisk(0, {}), Ask),
    StartCase(
        "partial with a strong validator: resume with If-Range",
        OnDisk(1200, sidecar()),
        Ask,
        offset=1200,
        headers={"Range": "bytes=1200-", "If-Range": STRONG},
    ),
    StartCase(
        "weak ETag falls back to Last-Modified",
        OnDisk(1200, sidecar(etag='W/"v1"', last_modified=LAST_MOD)),
        Ask,
        offset=1200,
        headers={"Range": "bytes=1200-", "If-Range": LAST_MOD},
    ),
    StartCase(
        "weak ETag alone proves nothing: start clean", OnDisk(1200, sidecar(etag='W/"v1"')), Ask
    ),
    StartCase("no validator: start clean", OnDisk(1200, sidecar(etag=None)), Ask),
    StartCase("sidecar of another URL: start clean", OnDisk(1200, sidecar(url=URL + "?x")), Ask),
    StartCase("partial already whole: only hash it", OnDisk(5000, sidecar()), Complete),
    StartCase(
        "segmented sidecar with the full-size .part: resume the segments",
        OnDisk(5000, sidecar(segments=[[0, 2500, 100], [2500, 5000, 0]])),
        ResumeSegments,
    ),
    StartCase(
        "segmented sidecar whose .part is gone: start clean",
        OnDisk(0, sidecar(segments=[[0, 2500, 100], [2500, 5000, 0]])),
        Ask,
    ),
    StartCase(
        "fresh and segments allowed: `bytes=0-` asks for the size",
        OnDisk(0, {}),
        Ask,
        headers={"Range": "bytes=0-"},
        policy=SPLIT,
    ),
    StartCase(
        "fresh and known to be small: no range",
        OnDisk(0, {}),
        Ask,
        policy=SPLIT,
        expected_size=10,
    ),
]


@pytest.mark.parametrize("case", START_CASES, ids=lambda c: c.name)
def test_start(case: StartCase) -> None:
    plan = resume.start(URL, case.disk, case.policy, case.expected_size)
    assert type(plan) is case.want
    if isinstance(plan, Ask):
        assert (plan.offset, plan.headers) == (case.offset, case.headers)
        assert plan.meta == ({} if case.offset == 0 else dict(case.disk.meta))
    if isinstance(plan, Complete):
        assert plan.size == case.disk.size


# -- the response --------------------------------------------------------------------------
def answer(status: int, **headers: str) -> Answer:
    fields = httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()})
    return Answer(status, fields, URL, httpx.codes.get_reason_phrase(status))


RESUMING = Ask(1200, sidecar(), {"Range": "bytes=1200-", "If-Range": STRONG})
FRESH = Ask(0, {}, {"Range": "bytes=0-"})


@dataclass(frozen=True)
class RespondCase:
    name: str
    asked: Ask
    answer: Answer
    want: resume.Plan | type
    policy: Policy = ONE
    expected_size: int | None = None


RESPOND_CASES = [
    RespondCase(
        "206 at our offset, same strong validator: append",
        RESUMING,
        answer(206, content_range="bytes 1200-4999/5000", etag=STRONG, content_length="3800"),
        Write(1200, 5000, {"url": URL, "etag": STRONG, "last_modified": None, "total": 5000}),
    ),
    RespondCase(
        "206 at another offset: restart",
        RESUMING,
        answer(206, content_range="bytes 0-4999/5000", etag=STRONG),
        Restart("server sent a range that does not start at byte 1200"),
    ),
    RespondCase(
        "206 with another validator: the file changed, restart",
        RESUMING,
        answer(206, content_range="bytes 1200-4999/5000", etag='"v2"'),
        Restart("the file changed on the server"),
    ),
    RespondCase(
        "200 to a Range request: the whole body from zero, never appended",
        RESUMING,
        answer(200, content_length="5000", etag='"v2"'),
        Write(0, 5000, {"url": URL, "etag": '"v2"', "last_modified": None, "total": 5000}),
    ),
    RespondCase(
        "416 naming our size: we have it all",
        RESUMING,
        answer(416, content_range="bytes */1200"),
        Complete(1200),
    ),
    RespondCase(
        "416 naming another size: restart",
        RESUMING,
        answer(416, content_range="bytes */9000"),
        Restart("HTTP 416 for a resume from byte 1200"),
    ),
    RespondCase(
        "416 to `bytes=0-` of an empty file: complete at zero bytes",
        FRESH,
        answer(416, content_range="bytes */0"),
        Complete(0),
    ),
    RespondCase("416 to a fresh request otherwise: an HTTP error", FRESH, answer(416), Reject),
    RespondCase(
        "fresh 206 of a big file with a validator: split into segments",
        FRESH,
        answer(206, content_range="bytes 0-4999/5000", etag=STRONG),
        Split(5000, {"url": URL, "etag": STRONG, "last_modified": None, "total": 5000}),
        policy=SPLIT,
    ),
    RespondCase(
        "fresh 206 without a validator: one stream, ranges cannot be pinned",
        FRESH,
        answer(206, content_range="bytes 0-4999/5000", content_length="5000"),
        Write(0, 5000, {"url": URL, "etag": None, "last_modified": None, "total": 5000}),
        policy=SPLIT,
    ),
    RespondCase(
        "a body without a length ends by close: confirm it afterwards",
        FRESH,
        answer(200, etag=STRONG),
        Write(0, None, {"url": URL, "etag": STRONG, "last_modified": None, "total": None}, True),
    ),
    RespondCase(
        "the confirming request itself is not confirmed again",
        Ask(1200, sidecar(), RESUMING.headers, confirming=True),
        answer(206, content_range="bytes 1200-1300/*", etag=STRONG),
        Write(1200, None, {"url": URL, "etag": STRONG, "last_modified": None, "total": None}),
    ),
    RespondCase("503: an HTTP error", RESUMING, answer(503), Reject),
    RespondCase(
        "HTML instead of data: rejected",
        FRESH,
        answer(200, content_type="text/html; charset=utf-8", content_length="10"),
        Reject,
    ),
    RespondCase(
        "announced size differs from the catalogue: rejected",
        FRESH,
        answer(200, content_length="10"),
        Reject,
        expected_size=11,
    ),
]


@pytest.mark.parametrize("case", RESPOND_CASES, ids=lambda c: c.name)
def test_respond(case: RespondCase) -> None:
    plan = resume.respond(case.asked, case.answer, URL, TARGET, case.expected_size, case.policy)
    if isinstance(case.want, type):
        assert type(plan) is case.want
    else:
        assert plan == case.want


@pytest.mark.parametrize(
    ("ans", "error", "message"),
    [
        (answer(503, retry_after="7"), HttpStatusError, f"HTTP 503 Service Unavailable from {URL}"),
        (answer(200, content_type="text/html"), BadResponse, "HTML page instead of data"),
        (
            answer(200, content_length="10"),
            IntegrityError,
            "expected 11 bytes, server announces 10",
        ),
    ],
)
def test_rejections_carry_typed_errors(ans: Answer, error: type, message: str) -> None:
    plan = resume.respond(FRESH, ans, URL, TARGET, 11, ONE)
    assert isinstance(plan, Reject) and type(plan.error) is error
    assert message in str(plan.error)


# -- one segment's response ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ans", "want"),
    [
        (answer(206, content_range="bytes 2500-4999/5000", etag=STRONG), None),
        (answer(206, content_range="bytes 2500-4999/5000"), None),  # no validator echoed
        (answer(200, etag='"v2"'), Restart("the file changed on the server")),
        (
            answer(206, content_range="bytes 0-4999/5000", etag=STRONG),
            Restart("server sent a range that is not 2500-"),
        ),
        (
            answer(206, content_range="bytes 2500-4999/6000", etag=STRONG),
            Restart("server sent a range that is not 2500-"),
        ),
        (
            answer(206, content_range="bytes 2500-4999/5000", etag='"v2"'),
            Restart("the file changed on the server"),
        ),
    ],
)
def test_segment(ans: Answer, want: Restart | None) -> None:
    assert resume.segment(2500, 5000, STRONG, ans) == want


def test_segment_http_error_is_rejected() -> None:
    plan = resume.segment(2500, 5000, STRONG, answer(404))
    assert isinstance(plan, Reject) and isinstance(plan.error, HttpStatusError)
    assert plan.error.status == 404
