"""The resume decision, as pure functions: what is on disk and what the server answered in,
what to do out. No file or socket is touched here; single.py and segmented.py act on the plan.

A partial file is only ever extended when the server proves it is sending the same file: the
request carries `If-Range` with a validator RFC 9110 calls strong (a strong ETag, else a
Last-Modified a second older than its response's Date) recorded in the sidecar, and only a 206
whose Content-Range is exactly the range asked, with the sidecar's total and the
Content-Encoding the partial began with (a coded body is kept as sent), is appended. A 200
is a whole body, written from zero; anything that contradicts the request or the partial (a
200 with a partial Content-Range, another range or total) drops it (`Restart`), saying what
the server did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.domain.redact import public_url, redact_url
from dsm.errors import BadResponse, IntegrityError, TooLarge, TransferError
from dsm.transfer.http import (
    Answer,
    Policy,
    content_coding,
    http_error,
    looks_like_html,
    parse_content_range,
    parse_unsatisfied,
)
from dsm.transfer.partfile import meta_validator, validator

CHANGED = "the file changed on the server"
UNECHOED = "nothing proves its bytes are of the same file"
UNPROVEN = (
    "the server sent no length (no Content-Length, Content-Range or chunked framing) and no "
    "strong validator to confirm the end: the body may have been cut short"
)


@dataclass(frozen=True)
class OnDisk:
    """The partial download as found: the `.part`'s size and its sidecar."""

    size: int
    meta: Mapping[str, Any]


# -- plans -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Complete:
    """The partial file already holds the whole file: hash it, no body to read."""

    size: int


@dataclass(frozen=True)
class ResumeSegments:
    """A segmented download's sidecar: every segment continues where its bytes end."""

    meta: dict[str, Any]


@dataclass(frozen=True)
class Ask:
    """Send a request. `offset` > 0 resumes the kept bytes (with Range and If-Range); 0 starts
    clean. `confirming`: this request only confirms that a body without a length was whole."""

    offset: int
    meta: dict[str, Any]  # the sidecar we trust; {} when starting clean
    headers: dict[str, str] = field(default_factory=dict)
    confirming: bool = False


@dataclass(frozen=True)
class Limit:
    """Where a body without a length is cut off (an endless body must not fill the disk
    before a size check fails it): one byte past `size`, failing with `error(message)`."""

    size: int
    error: type[TransferError]
    message: str

    def exceeded(self) -> TransferError:
        return self.error(self.message)


@dataclass(frozen=True)
class Write:
    """Stream the body into the partial file from `offset` (0: from zero, never appended).
    `confirm`: the body has no length, so its end may be a dropped connection: afterwards ask
    once more for the bytes after it (a 416 proves the end). `proven`: the response frames
    its end (a length, a total, chunks), so a body that ends early is detected."""

    offset: int
    total: int | None
    meta: dict[str, Any]
    confirm: bool = False
    proven: bool = True
    # Where the body is cut off: its announced total (a framing that goes on past the length
    # it was announced with: an endless chunked body, a 206 longer than its range), without
    # one the catalogue's size, else DSM_DOWNLOAD_MAX_BYTES.
    limit: Limit | None = None


@dataclass(frozen=True)
class Split:
    """A fresh 206 for a big file: the response becomes segment 0 of a segmented download."""

    total: int
    meta: dict[str, Any]


@dataclass(frozen=True)
class Restart:
    """The partial cannot be continued: drop it and start again from zero."""

    reason: str


@dataclass(frozen=True)
class Reject:
    """Fail this attempt with the error (whether it is retried depends on its type)."""

    error: TransferError


Start = Complete | ResumeSegments | Ask
Plan = Complete | Write | Split | Restart | Reject


# -- deciding --------------------------------------------------------------------------------
def start(
    url: str, disk: OnDisk, policy: Policy, expected_size: int | None, confirming: bool = False
) -> Start:
    """What to do before any request, from what is on disk."""
    have, meta = disk.size, dict(disk.meta)
    proof = meta_validator(meta)
    if meta.get("url") != redact_url(url) or not proof:  # sidecars keep no credentials
        have, meta = 0, {}  # cannot prove the partial is the same file: start clean
    if meta.get("segments") and (have != meta.get("total") or not _laid_out(meta)):
        have, meta = 0, {}  # a segmented .part always has the full size: this is not it
    if meta.get("segments"):
        return ResumeSegments(meta)
    total = meta.get("total")
    if have and isinstance(total, int) and have > total:
        have, meta = 0, {}  # more than the file has: not its bytes (a body that overran)
    if have and isinstance(total, int) and have == total:
        return Complete(total)  # complete before a crash: only the hash is missing
    if have:
        return Ask(have, meta, {"Range": f"bytes={have}-", "If-Range": str(proof)}, confirming)
    if policy.segments > 1 and (expected_size or policy.segment_min) >= policy.segment_min:
        # A 206 tells the size and that ranges work: no probe before splitting.
        return Ask(0, meta, {"Range": "bytes=0-"}, confirming)
    return Ask(0, meta, {}, confirming)


def _laid_out(meta: Mapping[str, Any]) -> bool:
    """The sidecar's segments, `[start, end, done]` each, tile [0, total) with `done` inside
    its segment: else (another version's sidecar, a damaged one) no byte can be placed."""
    segs, total = meta["segments"], meta.get("total")
    if not isinstance(segs, list) or not all(
        isinstance(s, list) and len(s) == 3 and all(type(v) is int for v in s) for s in segs
    ):
        return False
    at = 0
    for start, end, done in sorted(segs):
        if start != at or not 0 <= done <= end - start:
            return False
        at = end
    return at == total


def worth_it(policy: Policy, total: int | None, meta: Mapping[str, Any]) -> bool:
    """Split only big files, and only when a validator can pin every range to one version."""
    return (
        policy.segments > 1
        and total is not None
        and total >= policy.segment_min
        and meta_validator(meta) is not None
    )


def respond(
    asked: Ask, answer: Answer, source: str, target: Path, expected_size: int | None, policy: Policy
) -> Plan:
    """What to do with the response to `asked`; `source` is the URL asked for (the sidecar
    records it, not where redirects led)."""
    have, headers = asked.offset, answer.headers
    etag, modified, date = headers.get("etag"), headers.get("last-modified"), headers.get("date")
    if answer.status == 416:
        size, recorded = parse_unsatisfied(headers.get("content-range")), asked.meta.get("total")
        if have and size == have and isinstance(recorded, int) and recorded != size:
            return Restart(
                f"server says the file has {size} bytes (HTTP 416), the partial file's sidecar "
                f"recorded {recorded}"
            )
        if size == have:  # we have it all already; `bytes=0-` of an empty file says 0
            return Complete(have)
        if have:
            return Restart(f"HTTP 416 for a resume from byte {have}")
        return Reject(http_error(answer))
    if answer.status not in (200, 206):
        return Reject(http_error(answer))
    if (twice := framed_twice(answer)) is not None:
        return Reject(twice)
    wrong = contradiction(asked, answer.status, headers.get("content-range"))
    if wrong is not None:
        return Restart(wrong)
    if answer.status == 206:
        if have and (other := _other_version(asked.headers.get("If-Range"), answer)):
            return Restart(other)
        if have and (switched := _recoded(asked.meta, answer)) is not None:
            return Restart(switched)
        rng = parse_content_range(headers.get("content-range"))
        assert rng is not None  # contradiction() checked it
        total = rng[2]
    else:
        have = 0  # a full body: never appended to a partial file
        length = headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
    if looks_like_html(headers, target):
        return Reject(
            BadResponse(f"server sent an HTML page instead of data ({public_url(answer.url)})")
        )
    if (refused := _announced(total, expected_size, policy, answer.url)) is not None:
        return Reject(refused)
    meta = {
        "url": source,
        "etag": etag,
        "last_modified": modified,
        "date": date,
        "total": total,
        "encoding": content_coding(headers),
    }
    if answer.status == 206 and have == 0 and worth_it(policy, total, meta):
        assert total is not None  # worth_it checked it
        return Split(total, meta)
    framed = total is not None or _chunked(answer)
    confirm = not framed and not asked.confirming and _resumable(answer)
    limit = body_limit(expected_size, policy) if total is None else announced(total, answer.url)
    return Write(have, total, meta, confirm=confirm, proven=framed, limit=limit)


def _announced(
    total: int | None, expected_size: int | None, policy: Policy, url: str
) -> TransferError | None:
    """Why the announced size is refused before the body: not the catalogue's, or above the
    largest file taken without one."""
    if total is None:
        return None
    if expected_size is not None and total != expected_size:
        return IntegrityError(
            f"size mismatch: expected {expected_size} bytes, server announces {total} "
            f"({public_url(url)})"
        )
    if expected_size is None and total > policy.max_size:
        return TooLarge(
            f"server announces {total} bytes ({public_url(url)}), more than the "
            f"{policy.max_size} taken without the catalogue's expected_size "
            "(DSM_DOWNLOAD_MAX_BYTES)"
        )
    return None


def body_limit(expected_size: int | None, policy: Policy) -> Limit:
    """Where a body without a length is cut off: the catalogue's size, else the cap."""
    if expected_size is not None:
        return Limit(
            expected_size,
            IntegrityError,
            f"size mismatch: the server sent more than the expected {expected_size} bytes",
        )
    return Limit(
        policy.max_size,
        TooLarge,
        f"stopped: the server sent more than {policy.max_size} bytes without a length, the "
        "most taken without the catalogue's expected_size (DSM_DOWNLOAD_MAX_BYTES)",
    )


def announced(total: int, url: str) -> Limit:
    """Where a body with a length is cut off: past the total it was announced with, should
    its framing go on (chunks, or a Content-Length longer than the Content-Range)."""
    return Limit(
        total,
        BadResponse,
        f"the server sent more than the {total} bytes it announced ({public_url(url)})",
    )


def framed_twice(answer: Answer) -> BadResponse | None:
    """A response framed both by Transfer-Encoding and by Content-Length: its body ends
    where the chunks say and the length is a lie one of them tells (RFC 9112 6.3: to be
    handled as an error, as smuggled and split responses are). Refused, never read."""
    te, length = answer.headers.get("transfer-encoding"), answer.headers.get("content-length")
    if te is None or length is None:
        return None
    return BadResponse(
        f"the server framed its answer two ways, Transfer-Encoding {te!r} and Content-Length "
        f"{length!r}: one of them lies ({public_url(answer.url)})"
    )


def contradiction(asked: Ask, status: int, content_range: str | None) -> str | None:
    """Why a 200 or 206 contradicts the request or the partial's sidecar (say a broken proxy
    answered), or None. Such a body is never written: the partial restarts from zero."""
    rng = parse_content_range(content_range)
    if status == 200:
        if content_range is None or (rng is not None and _whole(rng)):
            return None
        return f"server answered 200 (a whole file) with Content-Range {content_range!r}"
    have, recorded = asked.offset, asked.meta.get("total")
    if rng is None:
        return f"server answered 206 without a usable Content-Range ({content_range!r})"
    first, last, total = rng
    if first != have or (total is not None and last != total - 1):
        return f"server sent bytes {first}-{last}/{total or '*'} for a request from byte {have}"
    if have and isinstance(recorded, int) and total != recorded:
        return (
            f"server says the file has {total or 'an unknown number of'} bytes, "
            f"the partial file's sidecar recorded {recorded}"
        )
    return None


def _whole(rng: tuple[int, int, int | None]) -> bool:
    first, last, total = rng
    return first == 0 and total is not None and last == total - 1


def _chunked(answer: Answer) -> bool:
    return "chunked" in answer.headers.get("transfer-encoding", "").lower()


def _resumable(answer: Answer) -> bool:
    """The response carries a strong validator: the bytes after its end can be asked for."""
    headers = answer.headers
    return (
        validator(headers.get("etag"), headers.get("last-modified"), headers.get("date"))
        is not None
    )


def segment(
    first: int, last: int, total: int, meta: Mapping[str, Any], answer: Answer
) -> Restart | Reject | None:
    """Check one segment's response to `Range: bytes=first-last` with `If-Range` (the
    validator of the set's sidecar `meta`); None accepts it."""
    if answer.status == 200:
        return Restart(CHANGED)  # If-Range did not match: the server sent the new file whole
    if answer.status != 206:
        return Reject(http_error(answer))
    if (twice := framed_twice(answer)) is not None:
        return Reject(twice)
    cr = answer.headers.get("content-range")
    if parse_content_range(cr) != (first, last, total):
        return Restart(f"server sent {cr!r} for a request of bytes {first}-{last}/{total}")
    if other := _other_version(meta_validator(meta), answer):
        return Restart(other)
    switched = _recoded(meta, answer)
    return None if switched is None else Restart(switched)


def _recoded(meta: Mapping[str, Any], answer: Answer) -> str | None:
    """Why a range of the partial cannot be appended: it comes in another Content-Encoding
    than the partial began with (one ETag may name each encoding's bytes), or None."""
    began, now = meta.get("encoding"), content_coding(answer.headers)
    if began == now:
        return None
    return (
        f"the server answered the resume with Content-Encoding {now or 'identity'}, the "
        f"partial file was started with {began or 'identity'}"
    )


def _other_version(if_range: str | None, answer: Answer) -> str | None:
    """Why a 206 does not prove it is a range of the version the If-Range named, or None.
    It must echo that validator: a 206 carries the ETag and Last-Modified a 200 would (RFC
    9110 15.3.7), so one naming none comes from a server that may not do If-Range at all
    (it would append another version's bytes to the partial)."""
    if not if_range:
        return None
    field = "ETag" if if_range.startswith('"') else "Last-Modified"
    named = answer.headers.get(field)
    if named == if_range:
        return None
    if named is None:
        return f"the server's answer to the resume names no {field}: {UNECHOED}"
    return CHANGED
