"""find_or_add_jobs: a twin or a key is one job, also between processes on one store."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.repository import IdempotencyMismatch, Repository
from dsm.store import Store

REQUEST = {"type": "download", "dataset": "a", "force_download": False}


def new_job(dataset: str = "a", force: bool = False) -> Job:
    return Job(JobType.DOWNLOAD, dataset, {"dataset": dataset, "force_download": force})


def submit(path: str, key: str | None) -> str:
    repo = Repository(Store(Path(path)))
    request = REQUEST if key else None
    (job,) = repo.find_or_add_jobs([new_job()], key=key, request=request)
    return job.id


@pytest.mark.parametrize("key", [None, "k"])
def test_processes_racing_make_one_job(tmp_path: Path, key: str | None) -> None:
    path = str(tmp_path / "db.json")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.starmap(submit, [(path, key)] * 8)
    assert len(set(ids)) == 1
    assert [j.id for j in Repository(Store(Path(path))).jobs()] == [ids[0]]


def test_twins_keys_and_what_is_not_a_twin(tmp_path: Path) -> None:
    repo = Repository(Store(tmp_path / "db.json"))
    first, other = repo.find_or_add_jobs([new_job(), new_job("b")])
    (twin,) = repo.find_or_add_jobs([new_job()], key="k", request=REQUEST)
    assert twin.id == first.id  # the key now names the twin, stored in the same write
    assert repo.find_or_add_jobs([new_job(force=True)])[0].id != first.id  # other params
    assert repo.find_or_add_jobs([new_job()], lambda j: False)[0].id != first.id  # not reusable
    with pytest.raises(IdempotencyMismatch, match="force_download"):
        repo.find_or_add_jobs([new_job()], key="k", request={**REQUEST, "force_download": True})
    first.status = JobStatus.COMPLETED
    repo.save_job(first)
    # A finished job is no twin, but its key still names it.
    assert repo.find_or_add_jobs([new_job()], key="k", request=REQUEST)[0].id == first.id
    fresh = repo.find_or_add_jobs([new_job()], key="k2", request=REQUEST)[0]
    assert fresh.id not in (first.id, other.id)
