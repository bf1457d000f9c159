"""`dsm serve`'s HTTP API (Starlette) over the job engine; every error is an RFC 9457 problem.

Requests read the store, so the jobs of a dashboard or a `--run-job` on the same data home
show up here. This process's own unfinished jobs are taken from the engine instead, whose
progress is fresher than the store's (written once a second).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dsm.api.schema import (
    IDEMPOTENCY_KEY_MAX,
    PROBLEM_MEDIA,
    SCHEMAS,
    openapi,
)
from dsm.config import Settings
from dsm.domain.jobs import PARAMS_SCHEMA, Job, JobStatus, JobType, parse_params
from dsm.domain.model import Dataset
from dsm.domain.paging import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, page_of
from dsm.engine.engine import Engine
from dsm.errors import BadInput
from dsm.repository import Repository, StoreError, UnknownDataset

T = TypeVar("T")
REQUEST_FIELDS = frozenset(SCHEMAS["JobRequest"]["properties"])
JOB_TYPES = frozenset(t.value for t in JobType)
JOB_STATUSES = frozenset(s.value for s in JobStatus)


class Problem(Exception):
    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, dict(headers or {})

    def response(self) -> JSONResponse:
        body = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        return JSONResponse(body, self.status, self.headers, media_type=PROBLEM_MEDIA)


def as_problem(exc: Exception) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, HTTPException):  # Starlette's own: no route (404), wrong method (405)
        return Problem(exc.status_code, exc.detail, exc.headers)
    if isinstance(exc, BadInput):  # the engine's params check, naming the field
        return Problem(422, str(exc))
    assert isinstance(exc, StoreError), exc  # on_error is registered for these four only
    return Problem(503, str(exc))


async def on_error(request: Request, exc: Exception) -> Response:
    return as_problem(exc).response()


# -- request parsing ------------------------------------------------------------------------
def int_query(query: QueryParams, name: str, high: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    # isdigit alone would let int() see huge or non-ASCII digit strings
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) else 0
    if not 1 <= value <= high:
        raise Problem(422, f"{name} must be an integer from 1 to {high}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Page:
    size: int
    number: int

    @classmethod
    def of(cls, query: QueryParams) -> Page:
        """page_size, and page or its seed name page_number (both only if they agree)."""
        size = int_query(query, "page_size", MAX_PAGE_SIZE)
        given = (int_query(query, name, MAX_PAGE) for name in ("page", "page_number"))
        numbers = {n for n in given if n is not None}
        if len(numbers) > 1:
            raise Problem(422, "page and page_number disagree; give one of them")
        return cls(DEFAULT_PAGE_SIZE if size is None else size, numbers.pop() if numbers else 1)

    def body(
        self, key: str, rows: Sequence[T], render: Callable[[T], dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "page_size": self.size,
            "page_number": self.number,
            "total": len(rows),
            key: [render(r) for r in page_of(rows, self.number, self.size)],
        }


async def json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise Problem(400, f"request body is not valid JSON: {exc}") from None


def parse_job_request(body: Any) -> tuple[JobType, dict[str, Any], str | None]:
    """Check the shape of a POST /jobs body; the params themselves are the engine's to check."""
    if not isinstance(body, dict):
        raise Problem(422, "request body must be a JSON object")
    extra = sorted(set(body) - REQUEST_FIELDS)
    if extra:
        raise Problem(422, f"unknown field(s): {', '.join(extra)}")
    kind = body.get("type")
    if not isinstance(kind, str) or kind not in JOB_TYPES:
        raise Problem(422, f"'type' must be one of: {', '.join(sorted(JOB_TYPES))}")
    params = body.get("params")
    if not isinstance(params, dict):
        raise Problem(422, "'params' is required and must be a JSON object")
    key = body.get("idempotency_key")
    if "idempotency_key" in body and not (
        isinstance(key, str) and 1 <= len(key) <= IDEMPOTENCY_KEY_MAX
    ):
        raise Problem(422, f"'idempotency_key' must be a string of 1 to {IDEMPOTENCY_KEY_MAX}")
    return JobType(kind), params, key


# -- the routes -----------------------------------------------------------------------------
class Api:
    def __init__(self, settings: Settings, repo: Repository) -> None:
        self.repo = repo
        self.engine = Engine(settings, repo)
        # Looking a key up, submitting and recording the key must not interleave.
        self._keys = anyio.Lock()

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args)

    async def _fresh(self, stored: list[Job]) -> list[Job]:
        live = {j.id: j for j in await self.engine.snapshot()}
        return [j if j.status.finished else live.get(j.id, j) for j in stored]

    async def _job(self, job_id: str) -> Job:
        stored = await self._store(self.repo.job, job_id)
        if stored is None:
            raise Problem(404, "job not found")
        return (await self._fresh([stored]))[0]

    async def list_datasets(self, request: Request) -> Response:
        page = Page.of(request.query_params)
        rows = await self._store(self.repo.datasets)
        return JSONResponse(page.body("datasets", rows, Dataset.to_dict))

    async def get_dataset(self, request: Request) -> Response:
        try:
            ds = await self._store(self.repo.dataset, request.path_params["name"])
        except UnknownDataset:
            raise Problem(404, "dataset not found") from None
        return JSONResponse(ds.to_dict())

    async def job_params(self, request: Request) -> Response:
        return JSONResponse(PARAMS_SCHEMA)

    async def jobs(self, request: Request) -> Response:
        """One route for both methods, so a 405 lists them both in Allow."""
        return await (self.submit_job if request.method == "POST" else self.list_jobs)(request)

    async def list_jobs(self, request: Request) -> Response:
        query = request.query_params
        page = Page.of(query)
        status, dataset = query.get("status"), query.get("dataset")
        if status is not None and status not in JOB_STATUSES:
            raise Problem(422, f"status must be one of: {', '.join(sorted(JOB_STATUSES))}")
        jobs = [
            j
            for j in await self._fresh(await self._store(self.repo.jobs))
            if status in (None, j.status) and dataset in (None, j.dataset)
        ]
        jobs.sort(key=lambda j: j.created_ms, reverse=True)
        return JSONResponse(page.body("jobs", jobs, Job.to_dict))

    async def get_job(self, request: Request) -> Response:
        return JSONResponse((await self._job(request.path_params["id"])).to_dict())

    async def submit_job(self, request: Request) -> Response:
        job_type, params, key = parse_job_request(await json_body(request))
        if key is None:
            job = await self.engine.submit(job_type, params)
        else:
            async with self._keys:
                job = await self._submit_once(job_type, params, key)
        return JSONResponse(job.to_dict(), 202)

    async def _submit_once(self, job_type: JobType, params: dict[str, Any], key: str) -> Job:
        known = await self._store(self.repo.job_by_idempotency_key, key)
        if known is None:
            job = await self.engine.submit(job_type, params)
            await self._store(self.repo.remember_idempotency_key, job.id, key)
            return job
        names = await self._store(lambda: {d.name for d in self.repo.datasets()})
        replayed = parse_params(params, names)  # a replay must be a valid request too
        if (known.type, known.dataset) != (job_type, replayed.dataset):
            raise Problem(
                422, f"idempotency_key was already used for a {known.type} of {known.dataset}"
            )
        return (await self._fresh([known]))[0]

    async def cancel_job(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        await self._job(job_id)  # unknown: 404 before anything else
        if await self.engine.cancel(job_id):
            return JSONResponse((await self._job(job_id)).to_dict(), 202)
        job = await self._job(job_id)
        if job.status.finished:
            raise Problem(409, f"job already finished: {job.status}")
        raise Problem(409, "another dsm process runs this job; cancel it there")


class BearerAuth:
    """Refuse every HTTP request without `Authorization: Bearer <token>`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            # compare_digest: the time taken must not tell how much of a guess was right
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token
            ):
                problem = Problem(
                    401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
                )
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings,
    repo: Repository,
    token: str | None,
    on_ready: Callable[[], None] = lambda: None,
) -> Starlette:
    """The ASGI app; its lifespan runs the engine (workers, adoption of orphaned jobs)."""
    api = Api(settings, repo)
    document = openapi(token is not None, [d.name for d in repo.datasets()])

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with api.engine.running():
            on_ready()
            yield

    routes = [
        Route("/datasets", api.list_datasets, methods=["GET"]),
        Route("/datasets/{name}", api.get_dataset, methods=["GET"]),
        Route("/job_params/dataset", api.job_params, methods=["GET"]),
        Route("/jobs", api.jobs, methods=["GET", "POST"]),
        Route("/jobs/{id}", api.get_job, methods=["GET"]),
        Route("/jobs/{id}/cancel", api.cancel_job, methods=["POST"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
    ]
    handled = (Problem, HTTPException, BadInput, StoreError)
    return Starlette(
        routes=routes,
        exception_handlers=dict.fromkeys(handled, on_error),
        middleware=[Middleware(BearerAuth, token=token)] if token else [],
        lifespan=lifespan,
    )
