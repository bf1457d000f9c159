"""The on-disk state of an unfinished download: `<target>.part` and its JSON sidecar, which
records the URL asked for, the validators (ETag / Last-Modified) that prove a resume continues
the same file, the total length, and for a segmented download each segment's progress."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm.domain.redact import redact_url

_target_locks: dict[Path, threading.Lock] = {}
_target_locks_guard = threading.Lock()


def target_lock(part: Path) -> threading.Lock:
    """One writer per partial file in this process: a transfer abandoned on cancel may still
    be finishing its last step when the next job for the same file starts."""
    with _target_locks_guard:
        return _target_locks.setdefault(part, threading.Lock())


def sidecar_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def read_sidecar(part: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(part: Path, meta: dict[str, Any]) -> None:
    """Write the sidecar atomically; its URL redacted (resume.start compares it redacted)."""
    side = sidecar_path(part)
    tmp = side.with_name(side.name + ".tmp")
    if isinstance(meta.get("url"), str):
        meta = {**meta, "url": redact_url(meta["url"])}
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, side)


def discard_partial(part: Path) -> None:
    part.unlink(missing_ok=True)
    sidecar_path(part).unlink(missing_ok=True)


def validator(etag: str | None, last_modified: str | None) -> str | None:
    """The If-Range value that proves identity: a strong ETag, else Last-Modified."""
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified or None


@dataclass
class Partial:
    """What is on disk for one target: the `.part` file, its sidecar, the bytes we keep."""

    source: str  # the URL asked for; the sidecar records it, not where redirects led
    target: Path
    part: Path
    have: int
    meta: dict[str, Any]

    @property
    def validator(self) -> str | None:
        return validator(self.meta.get("etag"), self.meta.get("last_modified"))
