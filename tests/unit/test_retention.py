"""Retention (dsm.engine.ledger.jobs_to_prune) over stored job rows, with clocks that jump."""

from __future__ import annotations

from dsm.engine.ledger import jobs_to_prune
from dsm.repository import now_ms

YEAR_MS = 365 * 86_400 * 1000


def row(job_id: str, created_ms: int, status: str = "completed") -> dict[str, object]:
    return {"id": job_id, "dataset": "a", "status": status, "created_ms": created_ms, "owner": "x"}


def test_the_newest_job_of_a_dataset_is_kept() -> None:
    now = now_ms()
    assert jobs_to_prune([row("old", now - 2000), row("new", now - 1000)]) == ["old"]


def test_a_job_made_while_the_clock_was_ahead_is_not_kept_over_newer_ones() -> None:
    """A job stamped a year ahead (the clock set back since) was 'newest' for that year:
    each later job of the dataset was pruned once finished, its record lost."""
    now = now_ms()
    docs = [row("from-the-future", now + YEAR_MS), row("today", now - 1000)]
    assert jobs_to_prune(docs) == ["from-the-future"]
    assert jobs_to_prune([row("from-the-future", now + YEAR_MS)]) == []  # the only one: kept
