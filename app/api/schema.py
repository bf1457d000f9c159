"""The OpenAPI 3.1 document of `dsm serve`, with entity schemas derived from the dataclasses.

Deriving Dataset and Job from their fields keeps the document in step with `to_dict`, which
is what the API sends; the routes and their answers are written out here by hand.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Any

from dsm.api.events import DATASET, EVENT_NAMES, PROGRESS_INTERVAL_S, SNAPSHOT
from dsm.api.guard import BODY_TIMEOUT_S, MAX_BODY
from dsm.api.problem import PROBLEM_MEDIA
from dsm.domain.jobs import PARAMS_SCHEMA, Job, JobStatus, JobType
from dsm.domain.model import Dataset
from dsm.domain.paging import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE
from dsm.version import __version__

IDEMPOTENCY_KEY_MAX = 200
CANCEL_REQUEST: dict[str, Any] = {
    "type": "object",
    "description": "no fields; the body may be empty",
    "properties": {},
    "additionalProperties": False,
}

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _type_schema(hint: Any) -> dict[str, Any]:
    if isinstance(hint, type) and issubclass(hint, Enum):
        return {"type": "string", "enum": [m.value for m in hint]}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if typing.get_origin(hint) is dict:
        return {"type": "object"}
    if typing.get_origin(hint) is list:  # a multi-file dataset's manifest
        return {"type": "array", "items": _type_schema(typing.get_args(hint)[0])}
    optional = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) and len(optional) == 1:
        return {"anyOf": [_type_schema(optional[0]), {"type": "null"}]}
    raise TypeError(f"no JSON Schema for {hint!r}")


def dataclass_schema(cls: type[Any], description: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return {
        "type": "object",
        "description": description,
        "properties": {n: _type_schema(hints[n]) for n in names},
        "required": names,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA: {"schema": _ref("Problem")}}}


def _page_schema(key: str, item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            "page_number": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            "total": {"type": "integer", "minimum": 0, "description": "rows on all pages"},
            key: {"type": "array", "items": _ref(item)},
        },
        "required": ["page_size", "page_number", "total", key],
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


PAGING = [
    _query(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
        "rows per page",
    ),
    _query(
        "page",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
        "page number, from 1",
    ),
    _query(
        "page_number",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
        "the same as `page` (the seed's name)",
    ),
]
BAD_QUERY = _problem("a query parameter is malformed or out of range")
SCHEMAS: dict[str, Any] = {
    "Dataset": dataclass_schema(Dataset, "a dataset: catalogue entry and local state"),
    "Job": dataclass_schema(Job, "a job of any dsm process sharing this data home"),
    "DatasetPage": _page_schema("datasets", "Dataset"),
    "JobPage": _page_schema("jobs", "Job"),
    "JobRequest": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": [t.value for t in JobType]},
            "params": _ref("JobParams"),
            "idempotency_key": {
                "type": "string",
                "minLength": 1,
                "maxLength": IDEMPOTENCY_KEY_MAX,
                "description": "a retry with the same key returns the job of the first request; "
                "the same key with a different request is a 422 (also the Idempotency-Key "
                "header)",
            },
        },
        "required": ["type", "params"],
        "additionalProperties": False,
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "required": ["type", "title", "status", "detail"],
    },
}
JOB_LINKS = {
    op: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
    for op in ("getJob", "cancelJob")
}
EVENTS_DESCRIPTION = f"""Server-Sent Events (text/event-stream) of this server's jobs and their
datasets. Each event has an increasing `id`, an `event` (one of {", ".join(EVENT_NAMES)}) and
JSON `data`: `{{"kind", "job", "dataset", "eta_s"}}` (`dataset` when it changed, else null).
`{DATASET}`: the job's dataset changed state (downloading, verifying, ...). `progress` comes
at most every {PROGRESS_INTERVAL_S:g} s per job; a job that fails ends with `finished`, its
`status` and `error`. Reconnect with `Last-Event-ID` to get every event but `progress` that
was missed; if they are no longer kept, a `{SNAPSHOT}` event comes first with
`{{"datasets": [...], "jobs": [unfinished jobs]}}`. Comments (`: keepalive`) keep idle
streams open. URLs have credentials redacted, as everywhere in this API."""
PATHS: dict[str, Any] = {
    "/datasets": {
        "get": {
            "operationId": "listDatasets",
            "summary": "datasets, by name, one page at a time",
            "parameters": PAGING,
            "responses": {"200": _json(_ref("DatasetPage"), "one page"), "422": BAD_QUERY},
        }
    },
    "/datasets/{name}": {
        "get": {
            "operationId": "getDataset",
            "parameters": [_path("name", "dataset name")],
            "responses": {
                "200": _json(_ref("Dataset"), "the dataset"),
                "404": _problem("dataset not found"),
            },
        }
    },
    "/events": {
        "get": {
            "operationId": "streamEvents",
            "summary": "a live stream of job and dataset events (Server-Sent Events)",
            "description": EVENTS_DESCRIPTION,
            "parameters": [
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "the id of the last event received, to resume after it",
                }
            ],
            "responses": {
                "200": {
                    "description": "the stream; it ends when the server stops",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/job_params/dataset": {
        "get": {
            "operationId": "getJobParamsSchema",
            "summary": "the JSON Schema of job params (as `dsm job-params` prints)",
            "responses": {"200": _json({"type": "object"}, "a JSON Schema")},
        }
    },
    "/jobs": {
        "get": {
            "operationId": "listJobs",
            "summary": "jobs of every process on this data home, newest first",
            "parameters": [
                *PAGING,
                _query(
                    "status",
                    {"type": "string", "enum": [s.value for s in JobStatus]},
                    "only jobs in this status",
                ),
                _query("dataset", {"type": "string"}, "only jobs of this dataset"),
            ],
            "responses": {"200": _json(_ref("JobPage"), "one page"), "422": BAD_QUERY},
        },
        "post": {
            "operationId": "submitJob",
            "summary": "queue a job; an identical unfinished job is returned instead of a twin",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
                    "description": "the same as the body field `idempotency_key`",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("JobRequest")}},
            },
            "responses": {
                "202": {**_json(_ref("Job"), "the job, queued now"), "links": JOB_LINKS},
                "200": {
                    **_json(
                        _ref("Job"),
                        "an unfinished job with the same type and params (of any dsm process "
                        "on this data home), or the job the idempotency key names",
                    ),
                    "links": JOB_LINKS,
                },
                "422": _problem(
                    "a field is invalid (`detail` names it), or the idempotency key was used "
                    "for a different request"
                ),
            },
        },
    },
    "/jobs/{id}": {
        "get": {
            "operationId": "getJob",
            "parameters": [_path("id", "job id")],
            "responses": {"200": _json(_ref("Job"), "the job"), "404": _problem("job not found")},
        }
    },
    "/jobs/{id}/cancel": {
        "post": {
            "operationId": "cancelJob",
            "parameters": [_path("id", "job id")],
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": CANCEL_REQUEST}},
            },
            "responses": {
                "422": _problem("the body has fields"),
                "202": _json(_ref("Job"), "cancel requested; the job stops within a second"),
                "404": _problem("job not found"),
                "409": _problem("the job has finished, or another process runs it"),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "getOpenAPI",
            "responses": {"200": _json({"type": "object"}, "this document")},
        }
    },
}


# What the middleware (app/api/guard.py, auth.py) answers for every route.
COMMON = {
    "400": _problem("no Host header, or (POST) a body that is not JSON"),
    "403": _problem("a cross-site request: Origin or Sec-Fetch-Site names another site"),
    "421": _problem("the Host header is not a name of this server (DNS rebinding)"),
    "503": _problem("the store is locked by another process too long or unwritable"),
}
POSTS = {
    "408": _problem(f"the body did not arrive within {BODY_TIMEOUT_S:g} s"),
    "413": _problem(f"the body is over {MAX_BODY} bytes"),
    "415": _problem("the Content-Type is not application/json"),
}


def _job_params(datasets: Sequence[str]) -> dict[str, Any]:
    """PARAMS_SCHEMA, with the catalogue's names as examples of `dataset`."""
    schema = {k: v for k, v in PARAMS_SCHEMA.items() if k != "$schema"}
    dataset = {**schema["properties"]["dataset"], "examples": list(datasets)}
    return {**schema, "properties": {**schema["properties"], "dataset": dataset}}


def openapi(token_required: bool, datasets: Sequence[str]) -> dict[str, Any]:
    """The document; with a token, every operation also declares bearer auth and its 401."""
    common = dict(COMMON)
    extra: dict[str, Any] = {}
    if token_required:
        common["401"] = _problem("missing or wrong bearer token")
        common["429"] = _problem("too many wrong tokens from this address; see Retry-After")
        extra = {"security": [{"bearer": []}]}
    paths = {
        path: {
            method: {
                **op,
                "responses": {**op["responses"], **common, **(POSTS if method == "post" else {})},
            }
            for method, op in ops.items()
        }
        for path, ops in PATHS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "dsm", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, "JobParams": _job_params(datasets)},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        **extra,
    }
