"""The resume decision, as pure functions: what is on disk and what the server answered in,
what to do out. No file or socket is touched here; single.py and segmented.py act on the plan.

A partial file is only ever extended when the server proves it is sending the same file: the
request carries `If-Range` with a strong ETag (else Last-Modified) recorded in the sidecar,
and only a 206 whose Content-Range starts exactly at our offset is appended. A 200 is a whole
body, written from zero; anything else that contradicts the partial drops it (`Restart`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.domain.redact import redact_url
from dsm.errors import BadResponse, IntegrityError, TransferError
from dsm.transfer.http import (
    Answer,
    Policy,
    http_error,
    looks_like_html,
    parse_content_range,
    parse_unsatisfied,
    public_url,
)
from dsm.transfer.partfile import validator

CHANGED = "the file changed on the server"


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
class Write:
    """Stream the body into the partial file from `offset` (0: from zero, never appended).
    `confirm`: the body has no length, so its end may be a dropped connection: afterwards ask
    once more for the bytes after it (a 416 proves the end)."""

    offset: int
    total: int | None
    meta: dict[str, Any]
    confirm: bool = False


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
    proof = validator(meta.get("etag"), meta.get("last_modified"))
    if meta.get("url") != redact_url(url) or not proof:  # sidecars keep no credentials
        have, meta = 0, {}  # cannot prove the partial is the same file: start clean
    if meta.get("segments") and have != meta.get("total"):
        have, meta = 0, {}  # a segmented .part always has the full size: this is not it
    if meta.get("segments"):
        return ResumeSegments(meta)
    total = meta.get("total")
    if have and isinstance(total, int) and have >= total:
        return Complete(total)  # complete before a crash: only the hash is missing
    if have:
        return Ask(have, meta, {"Range": f"bytes={have}-", "If-Range": str(proof)}, confirming)
    if policy.segments > 1 and (expected_size or policy.segment_min) >= policy.segment_min:
        # A 206 tells the size and that ranges work: no probe before splitting.
        return Ask(0, meta, {"Range": "bytes=0-"}, confirming)
    return Ask(0, meta, {}, confirming)


def worth_it(policy: Policy, total: int | None, meta: Mapping[str, Any]) -> bool:
    """Split only big files, and only when a validator can pin every range to one version."""
    return (
        policy.segments > 1
        and total is not None
        and total >= policy.segment_min
        and validator(meta.get("etag"), meta.get("last_modified")) is not None
    )


def respond(
    asked: Ask, answer: Answer, source: str, target: Path, expected_size: int | None, policy: Policy
) -> Plan:
    """What to do with the response to `asked`; `source` is the URL asked for (the sidecar
    records it, not where redirects led)."""
    have, headers = asked.offset, answer.headers
    etag, modified = headers.get("etag"), headers.get("last-modified")
    if answer.status == 416:
        size = parse_unsatisfied(headers.get("content-range"))
        if size == have:  # we have it all already; `bytes=0-` of an empty file says 0
            return Complete(have)
        if have:
            return Restart(f"HTTP 416 for a resume from byte {have}")
        return Reject(http_error(answer))
    if answer.status == 206:
        rng = parse_content_range(headers.get("content-range"))
        if rng is None or rng[0] != have:
            return Restart(f"server sent a range that does not start at byte {have}")
        if have and validator(etag, modified) not in (None, asked.headers.get("If-Range")):
            return Restart(CHANGED)
        total = rng[1]
    elif answer.status == 200:
        have = 0  # a full body: never appended to a partial file
        length = headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
    else:
        return Reject(http_error(answer))
    if looks_like_html(headers, target):
        return Reject(
            BadResponse(f"server sent an HTML page instead of data ({public_url(answer.url)})")
        )
    if expected_size is not None and total is not None and total != expected_size:
        return Reject(
            IntegrityError(
                f"size mismatch: expected {expected_size} bytes, server announces {total} "
                f"({public_url(answer.url)})"
            )
        )
    meta = {"url": source, "etag": etag, "last_modified": modified, "total": total}
    if answer.status == 206 and have == 0 and worth_it(policy, total, meta):
        assert total is not None  # worth_it checked it
        return Split(total, meta)
    return Write(have, total, meta, confirm=not asked.confirming and _ended_by_close(answer))


def _ended_by_close(answer: Answer) -> bool:
    """A body without Content-Length or chunked framing, resumable by its validators."""
    headers = answer.headers
    return (
        "content-length" not in headers
        and "chunked" not in headers.get("transfer-encoding", "").lower()
        and validator(headers.get("etag"), headers.get("last-modified")) is not None
    )


def segment(pos: int, total: int, if_range: str, answer: Answer) -> Restart | Reject | None:
    """Check one segment's response to `Range: bytes=pos-…` with `If-Range`; None accepts it."""
    if answer.status == 200:
        return Restart(CHANGED)  # If-Range did not match: the server sent the new file whole
    if answer.status != 206:
        return Reject(http_error(answer))
    rng = parse_content_range(answer.headers.get("content-range"))
    if rng is None or rng[0] != pos or rng[1] != total:
        return Restart(f"server sent a range that is not {pos}-")
    got = validator(answer.headers.get("etag"), answer.headers.get("last-modified"))
    if got not in (None, if_range):
        return Restart(CHANGED)
    return None
