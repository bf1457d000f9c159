"""The resume planner as tables: what is on disk and what the server said in, what to do out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsm.config import DEFAULT_DOWNLOAD_MAX_BYTES
from dsm.errors import BadResponse, HttpStatusError, IntegrityError, TooLarge, retryable
from dsm.transfer import resume
from dsm.transfer.http import Answer, Policy
from dsm.transfer.partfile import validator
from dsm.transfer.resume import (
    CHANGED,
    Ask,
    Complete,
    Limit,
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
LATER = "Tue, 01 Dec 2026 10:00:01 GMT"  # a Date one second after LAST_MOD: LAST_MOD is strong
ONE = Policy(stall_timeout=5)  # one stream
SPLIT = Policy(stall_timeout=5, segments=4, segment_min=1000)
SMALL_CAP = Policy(stall_timeout=5, max_size=4096)  # DSM_DOWNLOAD_MAX_BYTES=4096
CAPPED = resume.body_limit(None, ONE)  # a body without a length, no catalogue size
ANNOUNCED = resume.announced(5000, URL)  # a body with a length: cut off past it


def meta(**over: Any) -> dict[str, Any]:
    """The sidecar `respond` records for a response to URL."""
    return {
        "url": URL,
        "etag": None,
        "last_modified": None,
        "date": None,
        "total": 5000,
        "encoding": None,
        **over,
    }


def sidecar(**over: Any) -> dict[str, Any]:
    return {"url": URL, "etag": STRONG, "last_modified": None, "date": None, "total": 5000, **over}


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
        OnDisk(1200, sidecar(etag='W/"v1"', last_modified=LAST_MOD, date=LATER)),
        Ask,
        offset=1200,
        headers={"Range": "bytes=1200-", "If-Range": LAST_MOD},
    ),
    StartCase(
        "Last-Modified in the same second as its Date is weak: start clean",
        OnDisk(1200, sidecar(etag=None, last_modified=LAST_MOD, date=LAST_MOD)),
        Ask,
    ),
    StartCase(
        "Last-Modified recorded without a Date proves nothing: start clean",
        OnDisk(1200, sidecar(etag=None, last_modified=LAST_MOD)),
        Ask,
    ),
    StartCase(
        "weak ETag alone proves nothing: start clean", OnDisk(1200, sidecar(etag='W/"v1"')), Ask
    ),
    StartCase("no validator: start clean", OnDisk(1200, sidecar(etag=None)), Ask),
    StartCase("sidecar of another URL: start clean", OnDisk(1200, sidecar(url=URL + "?x")), Ask),
    StartCase("partial already whole: only hash it", OnDisk(5000, sidecar()), Complete),
    StartCase(
        "partial longer than its sidecar's total: not its bytes, start clean (it was cut to the "
        "total and called whole)",
        OnDisk(9000, sidecar()),
        Ask,
    ),
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
    *(
        # A sidecar that does not lay out [0, total) (another version's, damaged): its
        # bytes cannot be placed, so they are not trusted.
        StartCase(f"segmented sidecar with segments {segs!r}: start clean", OnDisk(5000, s), Ask)
        for segs in ("xyz", [[0, 5000]], [[0, 2500, 0], [2600, 5000, 0]], [[0, 5000, 6000]])
        for s in [sidecar(segments=segs)]
    ),
    StartCase(
        "segmented sidecar with a total that is no number: start clean",
        OnDisk(5000, sidecar(total="5000", segments=[[0, 5000, 0]])),
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
        Write(1200, 5000, meta(etag=STRONG), limit=ANNOUNCED),
    ),
    RespondCase(
        "206 in another Content-Encoding than the partial began with: restart",
        RESUMING,
        answer(206, content_range="bytes 1200-4999/5000", etag=STRONG, content_encoding="gzip"),
        Restart(
            "the server answered the resume with Content-Encoding gzip, the partial file was "
            "started with identity"
        ),
    ),
    RespondCase(
        "206 in the Content-Encoding the partial began with: append",
        Ask(1200, sidecar(encoding="gzip"), RESUMING.headers),
        answer(206, content_range="bytes 1200-4999/5000", etag=STRONG, content_encoding="gzip"),
        Write(1200, 5000, meta(etag=STRONG, encoding="gzip"), limit=ANNOUNCED),
    ),
    RespondCase(
        "206 at another offset: restart",
        RESUMING,
        answer(206, content_range="bytes 0-4999/5000", etag=STRONG),
        Restart("server sent bytes 0-4999/5000 for a request from byte 1200"),
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
        Write(0, 5000, meta(etag='"v2"'), limit=ANNOUNCED),
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
        Split(5000, meta(etag=STRONG)),
        policy=SPLIT,
    ),
    RespondCase(
        "fresh 206 without a validator: one stream, ranges cannot be pinned",
        FRESH,
        answer(206, content_range="bytes 0-4999/5000", content_length="5000"),
        Write(0, 5000, meta(), limit=ANNOUNCED),
        policy=SPLIT,
    ),
    RespondCase(
        "a body without a length ends by close: confirm it afterwards",
        FRESH,
        answer(200, etag=STRONG),
        Write(0, None, meta(etag=STRONG, total=None), True, False, CAPPED),
    ),
    RespondCase(
        "no length and no strong validator: written, but not proven whole",
        FRESH,
        answer(200, last_modified=LAST_MOD, date=LAST_MOD),
        Write(
            0,
            None,
            meta(last_modified=LAST_MOD, date=LAST_MOD, total=None),
            proven=False,
            limit=CAPPED,
        ),
    ),
    RespondCase(
        "chunked framing proves the end",
        FRESH,
        answer(200, transfer_encoding="chunked"),
        Write(0, None, meta(total=None), limit=CAPPED),
    ),
    RespondCase(
        "a body without a length may not outgrow the catalogue's size",
        FRESH,
        answer(200, transfer_encoding="chunked"),
        Write(
            0,
            None,
            meta(total=None),
            limit=Limit(
                5000,
                IntegrityError,
                "size mismatch: the server sent more than the expected 5000 bytes",
            ),
        ),
        expected_size=5000,
    ),
    RespondCase(
        "without the catalogue's size, nor more than DSM_DOWNLOAD_MAX_BYTES",
        FRESH,
        answer(200, transfer_encoding="chunked"),
        Write(
            0,
            None,
            meta(total=None),
            limit=Limit(
                4096,
                TooLarge,
                "stopped: the server sent more than 4096 bytes without a length, the most "
                "taken without the catalogue's expected_size (DSM_DOWNLOAD_MAX_BYTES)",
            ),
        ),
        policy=SMALL_CAP,
    ),
    RespondCase(
        "a length above DSM_DOWNLOAD_MAX_BYTES, no catalogue size: rejected before the body",
        FRESH,
        answer(200, content_length="5000"),
        Reject,
        policy=SMALL_CAP,
    ),
    RespondCase(
        "a length above DSM_DOWNLOAD_MAX_BYTES the catalogue's size confirms: taken",
        FRESH,
        answer(200, content_length="5000"),
        Write(0, 5000, meta(total=5000), limit=ANNOUNCED),
        policy=SMALL_CAP,
        expected_size=5000,
    ),
    RespondCase(
        "a length is checked against the catalogue's size before the body: no limit",
        FRESH,
        answer(200, content_length="5000"),
        Write(0, 5000, meta(total=5000), limit=ANNOUNCED),
        expected_size=5000,
    ),
    RespondCase(
        "the confirming request itself is not confirmed again",
        Ask(1200, sidecar(total=None), RESUMING.headers, confirming=True),
        answer(206, content_range="bytes 1200-1300/*", etag=STRONG),
        Write(1200, None, meta(etag=STRONG, total=None), proven=False, limit=CAPPED),
    ),
    # Responses that contradict the request or the sidecar: never appended (issue 12.2).
    RespondCase(
        "200 with a Content-Range and only the tail (a broken proxy): restart",
        RESUMING,
        answer(200, content_range="bytes 1200-4999/5000", content_length="3800", etag=STRONG),
        Restart("server answered 200 (a whole file) with Content-Range 'bytes 1200-4999/5000'"),
    ),
    RespondCase(
        "200 whose Content-Range names the whole file: a whole body",
        RESUMING,
        answer(200, content_range="bytes 0-4999/5000", content_length="5000", etag=STRONG),
        Write(0, 5000, meta(etag=STRONG), limit=ANNOUNCED),
    ),
    RespondCase(
        "206 that ends before the end asked for: restart",
        RESUMING,
        answer(206, content_range="bytes 1200-2999/5000", etag=STRONG),
        Restart("server sent bytes 1200-2999/5000 for a request from byte 1200"),
    ),
    RespondCase(
        "206 with another total than the sidecar's: restart",
        RESUMING,
        answer(206, content_range="bytes 1200-5999/6000", etag=STRONG),
        Restart("server says the file has 6000 bytes, the partial file's sidecar recorded 5000"),
    ),
    RespondCase(
        "206 with an unknown total where the sidecar knew it: restart",
        RESUMING,
        answer(206, content_range="bytes 1200-4999/*", etag=STRONG),
        Restart(
            "server says the file has an unknown number of bytes, "
            "the partial file's sidecar recorded 5000"
        ),
    ),
    RespondCase(
        "206 without a Content-Range: restart",
        RESUMING,
        answer(206, etag=STRONG),
        Restart("server answered 206 without a usable Content-Range (None)"),
    ),
    RespondCase(
        "resume by Last-Modified, the 206 names the same one: append",
        Ask(1200, sidecar(etag=None, last_modified=LAST_MOD, date=LATER), {"If-Range": LAST_MOD}),
        answer(206, content_range="bytes 1200-4999/5000", last_modified=LAST_MOD, date=LATER),
        Write(1200, 5000, meta(last_modified=LAST_MOD, date=LATER), limit=ANNOUNCED),
    ),
    RespondCase(
        "resume by Last-Modified, the 206 names another (even a weak one): restart",
        Ask(1200, sidecar(etag=None, last_modified=LAST_MOD, date=LATER), {"If-Range": LAST_MOD}),
        answer(206, content_range="bytes 1200-4999/5000", last_modified=LATER, date=LATER),
        Restart(CHANGED),
    ),
    RespondCase(
        "resume by ETag, the 206 names none (a server without If-Range): restart",
        RESUMING,
        answer(206, content_range="bytes 1200-4999/5000", last_modified=LAST_MOD),
        Restart(f"the server's answer to the resume names no ETag: {resume.UNECHOED}"),
    ),
    RespondCase(
        "resume by Last-Modified, the 206 names none: restart",
        Ask(1200, sidecar(etag=None, last_modified=LAST_MOD, date=LATER), {"If-Range": LAST_MOD}),
        answer(206, content_range="bytes 1200-4999/5000", etag=STRONG, date=LATER),
        Restart(f"the server's answer to the resume names no Last-Modified: {resume.UNECHOED}"),
    ),
    RespondCase(
        "416 saying the file ends at the partial's end, against the sidecar's total: restart",
        RESUMING,
        answer(416, content_range="bytes */1200"),
        Restart(
            "server says the file has 1200 bytes (HTTP 416), the partial file's sidecar "
            "recorded 5000"
        ),
    ),
    RespondCase(
        "416 at the end of a body that had no length: it was whole",
        Ask(1200, sidecar(total=None), RESUMING.headers, confirming=True),
        answer(416, content_range="bytes */1200"),
        Complete(1200),
    ),
    RespondCase("503: an HTTP error", RESUMING, answer(503), Reject),
    *(
        RespondCase(
            f"framed by chunks and by a Content-Length ({name}): rejected",
            asked,
            answer(status, transfer_encoding="chunked", content_length="5", **extra),
            Reject,
        )
        for name, asked, status, extra in [
            ("200", FRESH, 200, {}),
            ("206", RESUMING, 206, {"content_range": "bytes 1200-4999/5000", "etag": STRONG}),
        ]
    ),
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
            answer(200, transfer_encoding="chunked", content_length="11"),
            BadResponse,
            "framed its answer two ways, Transfer-Encoding 'chunked' and Content-Length '11'",
        ),
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


def test_a_length_above_the_cap_is_too_large_and_not_retried() -> None:
    plan = resume.respond(FRESH, answer(200, content_length="5000"), URL, TARGET, None, SMALL_CAP)
    assert isinstance(plan, Reject) and type(plan.error) is TooLarge
    assert str(plan.error) == (
        f"server announces 5000 bytes ({URL}), more than the 4096 taken without the "
        "catalogue's expected_size (DSM_DOWNLOAD_MAX_BYTES)"
    )
    assert not retryable(plan.error)
    assert CAPPED.size == DEFAULT_DOWNLOAD_MAX_BYTES == 1 << 40


# -- one segment's response ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ans", "want"),
    [
        (answer(206, content_range="bytes 2500-3999/5000", etag=STRONG), None),
        (
            answer(206, content_range="bytes 2500-3999/5000"),  # no validator echoed
            Restart(f"the server's answer to the resume names no ETag: {resume.UNECHOED}"),
        ),
        (answer(200, etag='"v2"'), Restart("the file changed on the server")),
        (
            answer(206, content_range="bytes 0-3999/5000", etag=STRONG),
            Restart("server sent 'bytes 0-3999/5000' for a request of bytes 2500-3999/5000"),
        ),
        (
            answer(206, content_range="bytes 2500-4999/5000", etag=STRONG),
            Restart("server sent 'bytes 2500-4999/5000' for a request of bytes 2500-3999/5000"),
        ),
        (
            answer(206, content_range="bytes 2500-3999/6000", etag=STRONG),
            Restart("server sent 'bytes 2500-3999/6000' for a request of bytes 2500-3999/5000"),
        ),
        (
            answer(206, content_range="bytes 2500-3999/5000", etag='"v2"'),
            Restart("the file changed on the server"),
        ),
        (
            answer(
                206, content_range="bytes 2500-3999/5000", etag=STRONG, content_encoding=" GZIP "
            ),
            Restart(
                "the server answered the resume with Content-Encoding gzip, the partial file "
                "was started with identity"
            ),
        ),
        (
            answer(
                206, content_range="bytes 2500-3999/5000", etag=STRONG, content_encoding="identity"
            ),
            None,
        ),
    ],
)
def test_segment(ans: Answer, want: Restart | None) -> None:
    assert resume.segment(2500, 3999, 5000, sidecar(), ans) == want


def test_a_segment_framed_twice_is_rejected() -> None:
    both = answer(
        206,
        content_range="bytes 2500-3999/5000",
        etag=STRONG,
        transfer_encoding="chunked",
        content_length="1500",
    )
    plan = resume.segment(2500, 3999, 5000, sidecar(), both)
    assert isinstance(plan, Reject) and type(plan.error) is BadResponse
    assert not retryable(plan.error)


def test_segment_http_error_is_rejected() -> None:
    plan = resume.segment(2500, 3999, 5000, sidecar(), answer(404))
    assert isinstance(plan, Reject) and isinstance(plan.error, HttpStatusError)
    assert plan.error.status == 404


# -- which validators are strong (RFC 9110 8.8.2.2, 8.8.3) ----------------------------------
@pytest.mark.parametrize(
    ("etag", "last_modified", "date", "want"),
    [
        (STRONG, None, None, STRONG),
        (STRONG, LAST_MOD, LAST_MOD, STRONG),
        ('W/"v1"', None, None, None),
        ('W/"v1"', LAST_MOD, LATER, LAST_MOD),
        (None, LAST_MOD, LATER, LAST_MOD),  # one second older than the Date: strong
        (None, LAST_MOD, "Tue, 01 Dec 2026 11:00:00 GMT", LAST_MOD),
        (None, LAST_MOD, LAST_MOD, None),  # the same second: the file may change again in it
        (None, LATER, LAST_MOD, None),  # modified after the Date: a clock says nonsense
        (None, LAST_MOD, None, None),  # no Date to compare with
        (None, LAST_MOD, "yesterday", None),
        (None, "a while ago", LATER, None),
        (None, None, LATER, None),
        ("", "", "", None),
    ],
)
def test_strong_validator(
    etag: str | None, last_modified: str | None, date: str | None, want: str | None
) -> None:
    assert validator(etag, last_modified, date) == want
