"""Snapshots of the dashboard with fixed data: main screen (120x40, 80x24, 200x50, NO_COLOR,
light theme), detail pane, confirm modal, help, job log, a filter with marks.

No download runs and every time is fixed, so the screens are the same on every run. The
home is a fixed path because the detail pane shows where files live.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.tui.app import DashboardApp
from tests.tui_helpers import SIZE, loaded, make_app, put_row, until

SNAP_ROOT = Path(tempfile.gettempdir()) / "dsm-snapshot-home"
AT = 1_735_732_800_000  # 2025-01-01 12:00 UTC
SnapCompare = Callable[..., bool]


@pytest.fixture
def snap_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[DashboardApp]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    shutil.rmtree(SNAP_ROOT, ignore_errors=True)
    home = SNAP_ROOT / "home"
    home.mkdir(parents=True)
    names = ["arc-challenge", "gsm8k", "humaneval", "mbpp", "mmlu"]
    rows = [
        {
            "name": n,
            # Never fetched: nothing runs in these tests. Brackets prove no markup parsing.
            "original_url": f"http://127.0.0.1:9/{n}.parquet",
            "local_path": f"datasets/{n}.parquet",
            "description": f"{n} benchmark [v2] x[/y]",
        }
        for n in names
    ]
    catalog_path = SNAP_ROOT / "catalog.json"
    catalog_path.write_text(json.dumps({"datasets": rows}))
    app = make_app(home, catalog_path)
    repo = app.repo
    sha = "9f" * 32
    done = {"downloaded": True, "downloaded_at_ms": AT, "download_progress": 100.0}
    put_row(repo, "humaneval", Status.DOWNLOADED, size=83_920, checksum=sha, **done)
    put_row(repo, "mbpp", Status.DOWNLOADED, size=1_240_000, checksum=sha, **done)
    for name in ("humaneval", "mbpp"):  # on disk: else the rows say `missing on disk`
        (home / "datasets").mkdir(exist_ok=True)
        (home / "datasets" / f"{name}.parquet").write_bytes(b"")
    error = "HTTP 404 Not Found from http://127.0.0.1:9/gsm8k.parquet [/y] (after 4 attempts)"
    put_row(repo, "gsm8k", Status.ERROR, error=error, download_job_id="job-2")
    put_row(repo, "mmlu", Status.CANCELED, download_progress=42.0, expected_size=5_000_000)
    for i, (kind, status, err) in enumerate(
        [
            (JobType.DOWNLOAD, JobStatus.FAILED, "HTTP 503 Service Unavailable"),
            (JobType.DOWNLOAD, JobStatus.FAILED, error),
        ]
    ):
        when = AT + i * 60_000
        job = Job(kind, "gsm8k", {"dataset": "gsm8k"}, id=f"job-{i + 1}", status=status)
        job.attempts, job.error, job.created_ms, job.finished_ms = 4, err, when, when + 5000
        repo.save_job(job)
    yield app
    shutil.rmtree(SNAP_ROOT, ignore_errors=True)
    monkeypatch.delenv("TZ")
    time.tzset()


@pytest.fixture
def home_for_no_color(monkeypatch: pytest.MonkeyPatch, snap_app: DashboardApp) -> DashboardApp:
    """The same home, in an app made with NO_COLOR set (Textual reads it at construction)."""
    monkeypatch.setenv("NO_COLOR", "1")
    return make_app(snap_app.settings.home, snap_app.settings.catalog)


def after(
    *keys: str, screen: str | None = None, theme: str | None = None
) -> Callable[[Pilot[int]], Awaitable[None]]:
    """Load, press keys, and wait for the named screen (if any) before the snapshot."""

    async def run_before(pilot: Pilot[int]) -> None:
        app = await loaded(pilot)
        await until(pilot, lambda: "5 datasets" in str(app.query_one("#summary").render()))
        if theme:
            app.theme = theme
        await pilot.press(*keys)
        if screen:
            await until(pilot, lambda: type(app.screen).__name__ == screen)
        await until(pilot, lambda: app.settled)  # the summary shows the marks
        await pilot.pause()

    return run_before


def test_main_screen(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    assert snap_compare(snap_app, terminal_size=SIZE, run_before=after())


def test_detail_pane(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    assert snap_compare(snap_app, terminal_size=SIZE, run_before=after("down", "enter"))


def test_confirm_modal(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    run_before = after("space", "space", "x", screen="ConfirmScreen")
    assert snap_compare(snap_app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    run_before = after("question_mark", screen="HelpScreen")
    assert snap_compare(snap_app, terminal_size=SIZE, run_before=run_before)


def test_main_screen_small_terminal(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    assert snap_compare(snap_app, terminal_size=(80, 24), run_before=after())


def test_main_screen_wide_terminal(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    assert snap_compare(snap_app, terminal_size=(200, 30), run_before=after())


def test_main_screen_no_color(snap_compare: SnapCompare, home_for_no_color: DashboardApp) -> None:
    assert snap_compare(home_for_no_color, terminal_size=(80, 24), run_before=after("space"))


def test_main_screen_light_theme(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    run_before = after("space", theme="textual-light")
    assert snap_compare(snap_app, terminal_size=(80, 24), run_before=run_before)


def test_filter_and_marks_in_the_summary(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    run_before = after("space", "space", "slash", "m", "enter")
    assert snap_compare(snap_app, terminal_size=(80, 24), run_before=run_before)


def test_job_log(snap_compare: SnapCompare, snap_app: DashboardApp) -> None:
    run_before = after("l")
    assert snap_compare(snap_app, terminal_size=(80, 24), run_before=run_before)
