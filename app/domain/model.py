"""The dataset entity and its lifecycle: statuses and the transitions allowed between them."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar, cast

from dsm.domain.hub import CatalogFile, HubRef, ManifestFile, is_hub, parse_hub_url
from dsm.domain.relpath import escape_problem
from dsm.domain.rows import RowSchema
from dsm.errors import InvalidTransition

T = TypeVar("T")


def snapshot(obj: T) -> T:
    """A shallow copy of a plain dataclass (a Dataset, a Job): its field values shared, its
    own field bindings. Taken several times per job: copy.copy costs ~5x more, and
    dataclasses.replace builds a dict of arguments first. Dataset and Job keep their fields
    in slots (no __dict__ to copy): their __init__, given every field at once, is as fast."""
    cls: Any = type(obj)
    getter = _GETTERS.get(cls)
    if getter is None:
        getter = _GETTERS[cls] = operator.attrgetter(*(f.name for f in fields(cls)))
    return cast(T, cls(*getter(obj)))


_GETTERS: dict[type, operator.attrgetter[Any]] = {}  # a dataclass -> its fields, all at once


class Status(StrEnum):
    NOT_LOADED = "not_loaded"
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    DOWNLOADED = "downloaded"
    DELETING = "deleting"
    CANCELED = "canceled"
    ERROR = "error"

    @property
    def label(self) -> str:
        """The readable form users see ("not loaded")."""
        return self.value.replace("_", " ")


# Statuses in which a job owns the dataset; everything else is at rest.

ACTIVE = frozenset({Status.QUEUED, Status.DOWNLOADING, Status.VERIFYING, Status.DELETING})
AT_REST = frozenset(Status) - ACTIVE

# The one place that says which status may follow which. An active status may always fall
# back to a resting one (a job ended, was canceled, or a dead process's row is reconciled)
# or to QUEUED (a job is resumed after a crash).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    **{s: frozenset({Status.QUEUED, Status.DELETING, Status.NOT_LOADED}) for s in AT_REST},
    Status.QUEUED: AT_REST | {Status.DOWNLOADING, Status.VERIFYING, Status.DELETING},
    Status.DOWNLOADING: AT_REST | {Status.VERIFYING, Status.QUEUED},
    Status.VERIFYING: AT_REST | {Status.QUEUED},
    Status.DELETING: AT_REST | {Status.QUEUED},
}


def check_transition(name: str, old: Status, new: Status) -> None:
    if old != new and new not in TRANSITIONS[old]:
        raise InvalidTransition(f"dataset {name}: {old.value} -> {new.value} is not allowed")


@dataclass(slots=True)  # ~5x smaller than a dict per instance: 10,000 of them at once
class Dataset:
    """One dataset: static fields from the catalogue, runtime fields kept by the engine.

    Field names are the seed's column names; `to_dict` is both the JSON and the stored form.
    """

    name: str
    description: str = ""
    original_url: str = ""
    local_path: str = ""
    expected_size: int | None = None
    expected_sha256: str | None = None
    updated_at_ms: int = 0
    downloaded_at_ms: int | None = None
    size: int | None = None
    checksum: str | None = None
    status: Status = Status.NOT_LOADED
    error: str | None = None
    download_progress: float = 0.0
    downloaded: bool = False
    download_job_id: str | None = None
    # The file's mtime when it was verified: size + this stamp make "still verified" cheap.
    file_mtime_ns: int | None = None
    # The catalogue changed the URL or checksum of a downloaded copy: it is no longer trusted.
    outdated: bool = False
    # Why it is outdated, when known (the catalogue changed while it downloaded).
    outdated_reason: str | None = None
    # False: nothing proved the copy whole (no catalogue size or sha256, no length from the
    # server, no confirmation); its checksum is not trusted and the next download fetches again.
    confirmed: bool = True
    unconfirmed_reason: str | None = None
    # The entry left the catalogue; the row and any file are kept until deleted.
    in_catalog: bool = True
    # A Hub source: the commit the copy on disk came from, and the head of its branch when
    # last asked (differs: the source moved on upstream; `update` fetches it).
    source_commit: str | None = None
    upstream_commit: str | None = None
    # A multi-file dataset: its files (dsm.domain.hub.ManifestFile dicts); None for one file.
    manifest: list[dict[str, Any]] | None = None

    @property
    def moved_upstream(self) -> bool:
        return bool(self.upstream_commit and self.upstream_commit != self.source_commit)

    # Where the verified copy came from: "origin", a mirror's URL, or "team cache".
    served_by: str | None = None
    # Tried in order when original_url fails for good (catalogue "mirrors").
    mirrors: list[str] = field(default_factory=list)
    # A dataset of several files (catalogue "files"): {url, path, expected_size,
    # expected_sha256} each, the URLs kept redacted; empty for a dataset of one original_url.
    files: list[dict[str, Any]] = field(default_factory=list)
    # The archive kind to unpack into local_path (catalogue "extract"); None: kept as is.
    extract: str | None = None
    # An unpacked copy: how many files and bytes it holds (the list is under the home).
    file_count: int | None = None
    unpacked_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        # Every field is a plain value: no deep copy (dataclasses.asdict) is needed.
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        if self.manifest is not None:  # the one nested value: a copy, not the row's own list
            out["manifest"] = [dict(f) for f in self.manifest]
        out["mirrors"] = list(self.mirrors)
        out["files"] = [dict(f) for f in self.files]
        out["status"] = self.status.value
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Dataset:
        """Build from stored JSON; raises ValueError naming the field that is malformed.

        Unknown keys are ignored and missing ones take their defaults (rows written by an
        older dsm); a value of the wrong JSON type is an error, never passed on.
        """
        return cls(**_checked(raw))

    @staticmethod
    def check_dict(raw: dict[str, Any]) -> None:
        """`from_dict`'s checks alone (nothing is built: a store's every row is checked at
        open, and building 10,000 of them cost half of that)."""
        _known_keys(raw)
        _status(raw)

    def set_status(self, new: Status) -> None:
        check_transition(self.name, self.status, new)
        self.status = new


def _checked(raw: dict[str, Any]) -> dict[str, Any]:
    """The arguments of Dataset for a stored row; ValueError naming what is malformed."""
    kwargs = {key: raw[key] for key in _known_keys(raw)}
    kwargs["status"] = _status(raw)
    return kwargs


def _known_keys(raw: dict[str, Any]) -> tuple[str, ...]:
    """Check a stored row but its status; its keys that are fields (dsm.domain.rows)."""
    name = raw.get("name")
    if not isinstance(name, str):
        raise ValueError("dataset row without a string 'name'")
    known = _SCHEMA.known_keys(raw, name)
    mirrors, files, manifest = raw.get("mirrors"), raw.get("files"), raw.get("manifest")
    if mirrors and not all(isinstance(v, str) for v in mirrors):
        raise ValueError(f"dataset {name}: field 'mirrors' must list strings")
    if files:
        _FILE_SCHEMA.check_items(files, f"{name}: files")
    if manifest:
        _MANIFEST_SCHEMA.check_items(manifest, f"{name}: manifest")
    local_path = raw.get("local_path")
    problem = escape_problem(local_path) if isinstance(local_path, str) else None
    if problem:  # every job of the row failed naming a path the catalogue did not give
        raise ValueError(f"dataset {name}: field 'local_path' {local_path!r} {problem}")
    return known


def _status(raw: dict[str, Any]) -> Status:
    value = raw.get("status", Status.NOT_LOADED.value)
    status = _STATUSES.get(value) if isinstance(value, str) else None
    if status is None:
        raise ValueError(f"dataset {raw['name']}: unknown status {value!r}")
    return status


_SCHEMA = RowSchema(Dataset, "dataset", checked_elsewhere=("status",))
_FILE_SCHEMA = RowSchema(CatalogFile, "dataset", checked_elsewhere=())
_MANIFEST_SCHEMA = RowSchema(ManifestFile, "dataset", checked_elsewhere=())
_STATUSES: dict[str, Status] = {s.value: s for s in Status}


_FIELD_NAMES = tuple(f.name for f in fields(Dataset))


def hub_followed(rows: Iterable[Dataset]) -> list[tuple[Dataset, HubRef]]:
    """Downloaded Hub datasets whose source names a branch or tag, not a commit: those whose
    upstream `dsm list` and the dashboard ask the Hub about."""
    out: list[tuple[Dataset, HubRef]] = []
    for ds in rows:
        if ds.downloaded and ds.source_commit and is_hub(ds.original_url):
            ref = parse_hub_url(ds.original_url)
            if not ref.pinned:
                out.append((ds, ref))
    return out
