"""Idempotency keys of POST /jobs, kept in the job's own store document.

The key lives beside the job (the store merges the engine's later writes into the document), so
it survives restarts and is pruned with its job. One job can carry several keys: the engine
hands an identical unfinished job to a second request that came with another key.
"""

from __future__ import annotations

from dsm.domain.jobs import Job
from dsm.repository import JOBS, Repository

FIELD = "idempotency_keys"


def find(repo: Repository, key: str) -> Job | None:
    for doc in repo.store.all(JOBS):
        if key in doc.get(FIELD, ()):
            return Job.from_dict(doc)
    return None


def remember(repo: Repository, job_id: str, key: str) -> None:
    with repo.store.transaction():
        doc = repo.store.get(JOBS, job_id)
        if doc is not None:
            repo.store.update(JOBS, job_id, {FIELD: [*doc.get(FIELD, ()), key]})
