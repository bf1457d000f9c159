"""Running the real engine in-process for tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from dsm.config import Settings
from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobType
from dsm.domain.model import ACTIVE, Dataset, Status
from dsm.engine.engine import Engine
from dsm.repository import Repository
from tests.conftest import make_settings, open_repo
from tests.httpserver import FileServer


@dataclass
class Run:
    settings: Settings
    repo: Repository
    jobs: list[Job]
    events: list[JobEvent] = field(default_factory=list)

    @property
    def job(self) -> Job:
        return self.jobs[0]

    def dataset(self, name: str) -> Dataset:
        return self.repo.dataset(name)

    def kinds(self, kind: EventKind) -> list[JobEvent]:
        return [e for e in self.events if e.kind == kind]


def setup(home: Path, catalog_path: Path, **env: str) -> tuple[Settings, Repository]:
    settings = make_settings(home, catalog_path, **env)
    return settings, open_repo(settings)


async def run_jobs(
    settings: Settings,
    repo: Repository,
    job_type: JobType,
    *names: str,
    force: bool = False,
    during: Callable[[Engine, list[Job]], Any] | None = None,
    **overrides: Any,
) -> Run:
    """Submit one job per name, optionally act while they run, wait for all to finish."""
    if overrides:
        settings = replace(settings, **overrides)
    events: list[JobEvent] = []
    async with Engine(settings, repo, [events.append]).running() as engine:
        jobs = [
            await engine.submit(job_type, {"dataset": n, "force_download": force}) for n in names
        ]
        if during is not None:
            await during(engine, jobs)
        await engine.wait_idle()
    stored = [repo.job(j.id) for j in jobs]
    assert all(j is not None for j in stored)
    return Run(settings, repo, [j for j in stored if j is not None], events)


def finished(events: list[JobEvent]) -> list[JobEvent]:
    return [e for e in events if e.kind == EventKind.FINISHED]


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll (yielding to the loop) until predicate() holds; fail at the deadline."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polling state another component owns
            await anyio.sleep(0.01)


def entries(server: FileServer, files: dict[str, bytes], with_sha: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, data in files.items():
        e: dict[str, Any] = {
            "name": name,
            "description": name,
            "original_url": server.add(f"{name}.bin", data),
            "local_path": f"data/{name}",
        }
        if with_sha:
            e["expected_sha256"] = hashlib.sha256(data).hexdigest()
        out.append(e)
    return out


def check_home(home: Path, cat: Path, files: dict[str, bytes]) -> None:
    """Every file verifies, the store parses, no row is left active."""
    json.loads((home / "db.json").read_text())
    repo = open_repo(make_settings(home, cat))
    for name, data in files.items():
        ds = repo.dataset(name)
        assert ds.status == Status.DOWNLOADED and ds.status not in ACTIVE, (name, ds.status)
        assert (home / "data" / name).read_bytes() == data
        assert ds.checksum == hashlib.sha256(data).hexdigest()
    left = sorted(p.name for p in (home / "data").iterdir())
    assert left == sorted(files), sorted(set(left) ^ set(files))
