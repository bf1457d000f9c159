"""`dsm serve`'s HTTP API (Starlette) over the job engine; every error is an RFC 9457 problem.

Requests read the store, so the jobs of a dashboard or a `--run-job` on the same data home
show up here. This process's own unfinished jobs are taken from the engine instead, whose
progress is fresher than the store's (written once a second).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dsm.api.auth import BearerAuth
from dsm.api.events import EventHub
from dsm.api.guard import JsonBody, SameOrigin
from dsm.api.problem import Problem, SafeJSONResponse
from dsm.api.schema import CANCEL_REQUEST, IDEMPOTENCY_KEY_MAX, SCHEMAS, openapi
from dsm.api.validate import check
from dsm.catalog.parse import read_json
from dsm.config import Settings
from dsm.domain.jobs import PARAMS_SCHEMA, Job, JobStatus, JobType
from dsm.domain.model import Dataset
from dsm.domain.paging import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_PAGE_SIZE, page_of
from dsm.domain.redact import redact_doc
from dsm.engine.engine import Engine
from dsm.errors import BadInput, DsmError
from dsm.repository import Repository, StoreError, UnknownDataset

T = TypeVar("T")
JOB_STATUSES = frozenset(s.value for s in JobStatus)
SHUTDOWN_MESSAGE = "interrupted by shutdown; resumes at the next start"
DEFS = {**SCHEMAS, "JobParams": PARAMS_SCHEMA}


def as_problem(exc: Exception) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, HTTPException):  # Starlette's own: no route (404), wrong method (405)
        return Problem(exc.status_code, exc.detail, exc.headers)
    if isinstance(exc, BadInput):  # a field check, naming the field
        return Problem(422, str(exc))
    if isinstance(exc, StoreError):
        return Problem(503, str(exc))
    # A bug: the client gets a problem, the log the traceback (Starlette re-raises it).
    return Problem(500, f"internal error: {type(exc).__name__}")


async def on_error(request: Request, exc: Exception) -> Response:
    return as_problem(exc).response()


def render_dataset(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = redact_doc(ds.to_dict())
    return out


def render_job(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = redact_doc(job.to_dict())
    return out


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


async def json_body(request: Request, schema: dict[str, Any], required: bool = True) -> Any:
    """The body, checked against `schema`; an optional body may be empty. Parsed on the
    event loop: guard.MAX_BODY bounds it to a few ms, and in a thread json's C decoder
    would hold the GIL all the same."""
    raw = await request.body()
    if not raw and not required:
        return {}
    if not raw:
        raise Problem(400, "the request needs a JSON body")
    try:
        body = read_json(raw)
    except ValueError as exc:  # bad JSON and bad UTF-8 too
        raise Problem(400, f"request body is not valid JSON: {exc}") from None
    check(schema, body, "body", DEFS)
    return body


def idempotency_key(request: Request, body: dict[str, Any]) -> str | None:
    """The key from the Idempotency-Key header or the body field (both: they must agree)."""
    header = request.headers.get("idempotency-key")
    if header is not None and not 1 <= len(header) <= IDEMPOTENCY_KEY_MAX:
        raise Problem(422, f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
    field = body.get("idempotency_key")
    if header is not None and field is not None and header != field:
        raise Problem(422, "the Idempotency-Key header and idempotency_key field differ")
    return header if header is not None else field


# -- the routes -----------------------------------------------------------------------------
class Api:
    def __init__(self, settings: Settings, repo: Repository) -> None:
        self.repo = repo
        self.hub = EventHub(self.snapshot)
        self.engine = Engine(settings, repo, listeners=[self.hub.publish])
        # Stopping the server (SIGTERM, SIGINT) suspends running jobs, as quitting the
        # dashboard does: partial files kept, rows queued, resumed by the next start.
        self.engine.suspend_on_exit = True
        self.engine.suspend_message = SHUTDOWN_MESSAGE

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

    async def snapshot(self) -> dict[str, Any]:
        """What /events sends a client that missed too much: datasets and unfinished jobs."""
        jobs = await self._fresh(await self._store(self.repo.jobs))
        return {
            "datasets": [d.to_dict() for d in await self._store(self.repo.datasets)],
            "jobs": [j.to_dict() for j in jobs if not j.status.finished],
        }

    async def list_datasets(self, request: Request) -> Response:
        page = Page.of(request.query_params)
        rows = await self._store(self.repo.datasets)
        return SafeJSONResponse(page.body("datasets", rows, render_dataset))

    async def get_dataset(self, request: Request) -> Response:
        try:
            ds = await self._store(self.repo.dataset, request.path_params["name"])
        except UnknownDataset:
            raise Problem(404, "dataset not found") from None
        return SafeJSONResponse(render_dataset(ds))

    async def job_params(self, request: Request) -> Response:
        return SafeJSONResponse(PARAMS_SCHEMA)

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
        return SafeJSONResponse(page.body("jobs", jobs, render_job))

    async def get_job(self, request: Request) -> Response:
        return SafeJSONResponse(render_job(await self._job(request.path_params["id"])))

    async def submit_job(self, request: Request) -> Response:
        """202 with a new job; 200 with the unfinished twin, or the job the key names."""
        body = await json_body(request, SCHEMAS["JobRequest"])
        key = idempotency_key(request, body)
        submitted = await self.engine.submit_many(
            JobType(body["type"]), [body["params"]], key, others_twins=True
        )
        (job,) = submitted
        return SafeJSONResponse(render_job(job), 202 if job.id in submitted.created else 200)

    async def cancel_job(self, request: Request) -> Response:
        await json_body(request, CANCEL_REQUEST, required=False)
        job_id = request.path_params["id"]
        await self._job(job_id)  # unknown: 404 before anything else
        if await self.engine.cancel(job_id):
            return SafeJSONResponse(render_job(await self._job(job_id)), 202)
        job = await self._job(job_id)
        if job.status.finished:
            raise Problem(409, f"job already finished: {job.status}")
        raise Problem(409, "another dsm process runs this job; cancel it there")

    async def events(self, request: Request) -> Response:
        stream = self.hub.stream(request.headers.get("last-event-id"))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


class EngineLifespan:
    """The ASGI app with the engine running for the server's life (the lifespan protocol).

    A start or stop that fails for a reason dsm can say (a home it cannot use: a read-only
    disk, a file where its lock folder goes) is kept in `failure` and reported to the server
    without a traceback; `dsm serve` then says it in one line. Any other is a bug, and
    uvicorn logs its traceback."""

    def __init__(self, app: ASGIApp, api: Api, on_ready: Callable[[Api], None]) -> None:
        self.app, self.api, self.on_ready = app, api, on_ready
        self.failure: Exception | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await receive()  # lifespan.startup
        phase = "startup"
        try:
            async with self.api.engine.running():
                self.on_ready(self.api)
                await send({"type": "lifespan.startup.complete"})
                phase = "shutdown"
                try:
                    await receive()  # lifespan.shutdown
                finally:
                    self.api.hub.close()
        except (StoreError, DsmError, OSError) as exc:
            self.failure = exc
            await send({"type": f"lifespan.{phase}.failed", "message": ""})
            return
        await send({"type": "lifespan.shutdown.complete"})


def create_app(
    settings: Settings,
    repo: Repository,
    token: str | None,
    hosts: frozenset[str],
    on_ready: Callable[[Api], None] = lambda api: None,
) -> EngineLifespan:
    """The ASGI app; its lifespan runs the engine (workers, adoption of orphaned jobs).
    `hosts`: the Host header values it answers to (guard.host_names)."""
    api = Api(settings, repo)
    document = openapi(token is not None, [d.name for d in repo.datasets()])

    async def get_openapi(request: Request) -> Response:
        return SafeJSONResponse(document)

    routes = [
        Route("/datasets", api.list_datasets, methods=["GET"]),
        Route("/datasets/{name}", api.get_dataset, methods=["GET"]),
        Route("/events", api.events, methods=["GET"]),
        Route("/job_params/dataset", api.job_params, methods=["GET"]),
        Route("/jobs", api.jobs, methods=["GET", "POST"]),
        Route("/jobs/{id}", api.get_job, methods=["GET"]),
        Route("/jobs/{id}/cancel", api.cancel_job, methods=["POST"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
    ]
    # Outermost first: a request from elsewhere is refused before its token is looked at,
    # a wrong token before its body is read.
    middleware = [Middleware(SameOrigin, hosts=hosts)]
    middleware += [Middleware(BearerAuth, token=token)] if token else []
    middleware += [Middleware(JsonBody, routes=routes)]
    handled = (Problem, HTTPException, BadInput, StoreError, Exception)
    app = Starlette(
        routes=routes, exception_handlers=dict.fromkeys(handled, on_error), middleware=middleware
    )
    return EngineLifespan(app, api, on_ready)
