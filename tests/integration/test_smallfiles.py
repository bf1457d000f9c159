"""Many small files (issue 17): a batch reuses a few pooled connections, the store is written in
batches yet a kill -9 costs no download of a file already in place, and finished jobs are
pruned so the store stays proportional to the catalogue."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dsm.domain.events import EventKind, JobEvent
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.engine.engine import Engine
from tests.conftest import CatalogFn, blob, dsm_command, dsm_env, run_dsm, wait_for
from tests.enginehelp import check_home, entries, run_jobs, setup
from tests.httpserver import FileServer

BATCH = 200


def small_files(count: int, size: int = 2_000) -> dict[str, bytes]:
    return {f"s{i:03d}": blob(1000 + i, size) for i in range(count)}


@pytest.mark.anyio
async def test_a_batch_of_200_small_downloads_opens_a_few_connections(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """Every job draws on the engine's one pooled client: the server sees at most one
    connection per worker, not one per download."""
    files = small_files(BATCH)
    settings, repo = setup(home, catalog(entries(server, files, with_sha=True)))
    events: list[JobEvent] = []
    async with Engine(settings, repo, [events.append]).running() as engine:
        await engine.submit_many(JobType.DOWNLOAD, [{"dataset": n} for n in files])
        await engine.wait_idle()
    ended = [e.job.status for e in events if e.kind == EventKind.FINISHED]
    assert ended == [JobStatus.COMPLETED] * BATCH
    assert sum(len(server.requests(f"{n}.bin")) for n in files) == BATCH
    assert 1 <= server.connections <= settings.workers, server.connections
    check_home(home, catalog(entries(server, files, with_sha=True)), files)


def test_a_kill_9_during_small_downloads_fetches_no_installed_file_again(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The store hears of finished jobs in batches; a process killed between a batch and the
    next leaves files in place the store does not know yet. The next run proves them by
    their hash (the install record beside them) and downloads only the rest."""
    files = small_files(BATCH)
    cat = catalog(entries(server, files, with_sha=True))
    data = home / "data"
    cmd = [*dsm_command(), "--run-job", "download", "--all"]
    with subprocess.Popen(cmd, env=dsm_env(home, cat), stderr=subprocess.DEVNULL) as proc:
        wait_for(lambda: data.exists() and len(list(data.glob("s???"))) >= BATCH // 4, 60)
        proc.kill()
    installed = {p.name for p in data.glob("s???")}
    assert len(installed) < BATCH, "the kill came too late to test anything"
    again = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, timeout=120)
    assert again.returncode == 0, again.stderr
    check_home(home, cat, files)
    for name in installed:
        assert len(server.requests(f"{name}.bin")) == 1, f"{name} was downloaded again"


@pytest.mark.anyio
async def test_finished_jobs_are_pruned_to_the_newest_and_the_newest_failure(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    files = small_files(5)
    cat = catalog(
        [
            *entries(server, files, with_sha=True),
            {
                "name": "bad",
                "description": "bad",
                "original_url": server.url("bad.bin"),
                "local_path": "data/bad",
            },
        ]
    )
    settings, repo = setup(home, cat)
    names = [*files, "bad"]
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, *names)
    assert first.jobs[-1].status == JobStatus.FAILED  # 404
    server.add("bad.bin", b"now it is there")
    second = await run_jobs(settings, repo, JobType.DOWNLOAD, *names)
    assert [j.status for j in second.jobs] == [JobStatus.SKIPPED] * 5 + [JobStatus.COMPLETED]
    third = await run_jobs(settings, repo, JobType.DOWNLOAD, *names)
    kept = {j.id for j in repo.jobs()}
    # The newest job of each dataset, plus bad's failure of the first run.
    assert kept == {j.id for j in third.jobs} | {first.jobs[-1].id}


@pytest.mark.anyio
async def test_the_jobs_a_submission_supersedes_go_at_once(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """An update of every dataset: from its submission on, the store holds the new jobs and
    each dataset's newest failure, not the finished jobs they replace (20,000 jobs for the
    whole run of an `update --all` on 10,000 datasets)."""
    files = small_files(5)
    bad = {"name": "bad", "description": "bad", "original_url": server.url("bad.bin")}
    cat = catalog([*entries(server, files, with_sha=True), {**bad, "local_path": "data/bad"}])
    settings, repo = setup(home, cat)
    names = [*files, "bad"]
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, *names)
    assert first.jobs[-1].status == JobStatus.FAILED  # 404
    seen: list[set[str]] = []

    async def look(engine: Engine, jobs: list[Job]) -> None:
        seen.append({j.id for j in repo.jobs()})

    second = await run_jobs(settings, repo, JobType.UPDATE, *names, during=look)
    assert seen == [{j.id for j in second.jobs} | {first.jobs[-1].id}]


def test_a_second_all_with_nothing_to_do_keeps_the_store_the_same_size(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """Each `--all` with nothing to do replaces every dataset's job by its skipped one in
    the same write: one job per dataset, db.json the same size run after run."""
    files = small_files(30)
    cat = catalog(entries(server, files, with_sha=True))
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0
    db = home / "db.json"
    sizes = []
    for _ in range(3):
        again = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
        assert again.returncode == 0, again.stderr
        assert again.stderr.count(": skipped: already downloaded") == len(files)
        sizes.append(db.stat().st_size)
        stored = json.loads(db.read_bytes())
        assert len(stored["jobs"]) == len(files)
        assert {j["status"] for j in stored["jobs"].values()} == {"skipped"}
    assert sizes[1] == sizes[2], sizes
    assert sum(len(server.requests(f"{n}.bin")) for n in files) == len(files)
