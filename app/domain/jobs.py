"""Jobs: their types, statuses, parameters (with the JSON Schema users see) and stored form."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar

from dsm.domain.rows import RowSchema
from dsm.errors import BadInput

# The error text of a job stopped by `pause`: it waits, partial kept, until resumed.
PAUSED_MESSAGE = "paused"


class JobType(StrEnum):
    DOWNLOAD = "download"
    UPDATE = "update"
    DELETE = "delete"
    VERIFY = "verify"

    @property
    def queue(self) -> str:
        return "maintenance" if self in (JobType.DELETE, JobType.VERIFY) else "download"


class JobStatus(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMEOUT = "timeout"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.WAITING, JobStatus.RUNNING, JobStatus.RETRYING)

    @property
    def ok(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.SKIPPED)


PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Dataset job parameters",
    "type": "object",
    "properties": {
        "dataset": {"type": "string", "minLength": 1, "description": "name of the dataset"},
        "force_download": {
            "type": "boolean",
            "default": False,
            "description": "download again even when a verified copy is on disk",
        },
    },
    "required": ["dataset"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class JobParams:
    dataset: str
    force_download: bool = False


_PARAM_NAMES = frozenset(PARAMS_SCHEMA["properties"])


def parse_params(raw: object, known: set[str] | frozenset[str]) -> JobParams:
    """Check params against PARAMS_SCHEMA and the known dataset names; BadInput names the field."""
    if not isinstance(raw, dict):
        raise BadInput("job params must be a JSON object")
    extra = sorted(raw.keys() - _PARAM_NAMES)
    if extra:
        raise BadInput(f"job params: unknown field(s): {', '.join(extra)}")
    name = raw.get("dataset")
    if not isinstance(name, str) or not name:
        raise BadInput("job params: 'dataset' is required and must be a non-empty string")
    force = raw.get("force_download", False)
    if not isinstance(force, bool):
        raise BadInput("job params: 'force_download' must be true or false")
    if name not in known:
        raise BadInput(f"job params: dataset not found: {name}")
    return JobParams(dataset=name, force_download=force)


@dataclass(slots=True)  # ~5x smaller than a dict per instance: 10,000 of them at once
class Job:
    type: JobType
    dataset: str
    params: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    queue: str = ""
    status: JobStatus = JobStatus.WAITING
    attempts: int = 0
    progress: float = 0.0
    bytes_done: int = 0
    bytes_total: int | None = None
    rate: float = 0.0
    error: str | None = None
    created_ms: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    retry_at_ms: int | None = None  # while retrying: when the next attempt starts
    # Which process runs it: a lock file that process holds while alive (crash recovery).
    owner: str | None = None
    # What a download fetches against, recorded when it starts (URL, expected size and
    # sha256): the row takes these values at the end, not the catalogue's of that moment.
    expect: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.queue = self.queue or self.type.queue

    def to_dict(self) -> dict[str, Any]:
        # params and expect hold plain JSON values: a copy of each dict is enough (asdict's
        # deep copy was ~1 ms a job, three times a job).
        out = {name: getattr(self, name) for name in _JOB_FIELDS}
        out["type"] = self.type.value
        out["status"] = self.status.value
        out["params"] = dict(self.params)
        out["expect"] = None if self.expect is None else dict(self.expect)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Job:
        """Build from a stored row; ValueError naming the field of another type or value
        (a row damaged or written by hand fails at open, not in a job)."""
        job_id = raw.get("id")
        if not isinstance(job_id, str):
            raise ValueError("job row without a string 'id'")
        kwargs = {k: raw[k] for k in _SCHEMA.known_keys(raw, job_id)}
        kwargs["type"] = _enum(JobType, raw, "type", job_id)
        kwargs["status"] = _enum(JobStatus, raw, "status", job_id)
        for name in _REQUIRED:
            if name not in raw:
                raise ValueError(f"job {job_id}: field {name!r} is missing")
        force = raw["params"].get("force_download", False)
        if not isinstance(force, bool):  # what the handlers read
            raise ValueError(f"job {job_id}: params.force_download is {force!r}, not a boolean")
        return cls(**kwargs)

    @property
    def force_download(self) -> bool:
        """Fetch even over a verified copy (params, false when absent)."""
        return bool(self.params.get("force_download", False))


E = TypeVar("E", JobType, JobStatus)


def _enum(kind: type[E], raw: dict[str, Any], name: str, job_id: str) -> E:
    value: Any = raw.get(name)
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"job {job_id}: unknown {name} {value!r}") from None


_JOB_FIELDS = tuple(f.name for f in fields(Job))
_SCHEMA = RowSchema(Job, "job", checked_elsewhere=("type", "status"))
_REQUIRED = ("dataset", "params")
