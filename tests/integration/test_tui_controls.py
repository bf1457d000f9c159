"""Pilot tests of Dashboard v2 (issue 13) with the real engine against the local server:
quitting with many jobs, pause/resume, cancel all, retry failed, the retry countdown, pending
actions, the live job log, re-sorting, moving keys, marks, copying a path, ctrl+c."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dsm.domain.display import RowView
from dsm.domain.jobs import PAUSED_MESSAGE, Job, JobStatus
from dsm.domain.model import Status
from dsm.engine.engine import SUSPENDED_MESSAGE
from dsm.repository import Repository
from dsm.tui.app import UI_SWITCH_INTERVAL, DashboardApp
from tests.conftest import CatalogFn, make_settings, open_repo, run_dsm
from tests.httpserver import FileServer
from tests.tui_helpers import SIZE, cell, loaded, make_app, messages, until

pytestmark = pytest.mark.anyio
BIG = os.urandom(1_600_000)  # over 1 MiB: the partial file is written in batches of 1 MiB


def serve(server: FileServer, catalog: CatalogFn, *names: str, rate: float | None = None) -> Path:
    urls = {}
    for name in names:
        urls[name] = server.add(f"{name}.bin", BIG)
        if rate:
            server.always(f"{name}.bin", rate=rate)
    return catalog(**urls)


class CountingRepository(Repository):
    """The real repository, counting the batches of jobs marked waiting."""

    batches: list[int]

    def mark_waiting(self, jobs: list[Job]) -> None:
        self.batches.append(len(jobs))
        super().mark_waiting(jobs)


@contextmanager
def counting_app(home: Path, catalog_path: Path) -> Iterator[tuple[DashboardApp, list[int]]]:
    settings = make_settings(home, catalog_path)
    open_repo(settings).close()  # registers the catalogue
    repo = CountingRepository.open(settings.db_path)
    assert isinstance(repo, CountingRepository)
    repo.batches = []
    yield DashboardApp(settings, repo), repo.batches


async def test_quit_with_many_queued_jobs_holds_them_in_one_write(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    names = [f"ds-{i:03d}" for i in range(300)]
    url = server.add("slow.bin", BIG)
    server.always("slow.bin", rate=20_000)
    with counting_app(home, catalog(**dict.fromkeys(names, url))) as (app, batches):
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await loaded(pilot)
            await pilot.press("a")
            await until(pilot, lambda: app.state.totals(0).queued >= 290)
            await pilot.press("q")
            await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
            await pilot.press("y")
            await until(pilot, lambda: "stopping 300 jobs…" in str(app.summary.render()))
            await until(pilot, lambda: app.return_code == 0)
    running = app.settings.workers
    assert batches[0] == 300 - running  # every job no worker had picked: one write
    jobs = app.repo.jobs()
    assert len(jobs) == 300 and all(j.status == JobStatus.WAITING for j in jobs)
    assert {j.error for j in jobs} == {SUSPENDED_MESSAGE}
    assert all(app.repo.dataset(n).status == Status.QUEUED for n in names)


async def test_ctrl_c_quits_like_q(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("slash")  # even from the filter bar
        await pilot.press("ctrl+c")
        await until(pilot, lambda: app.return_code == 0)


async def test_p_pauses_keeping_the_partial_and_p_resumes_from_it(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = serve(server, catalog, "alpha", rate=400_000)
    app = make_app(home, cat)
    part = home / "data" / "alpha.part"
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: part.exists() and part.stat().st_size > 0)
        await pilot.press("p")
        await until(pilot, lambda: cell(app, "alpha", "status") == "paused")
        assert cell(app, "alpha", "info") == "paused: p resumes"
        kept = part.stat().st_size
        (stored,) = app.repo.jobs()
        assert (stored.status, stored.error) == (JobStatus.WAITING, PAUSED_MESSAGE)
        await until(pilot, lambda: "1 paused" in str(app.summary.render()))
        # `dsm list` beside it said `queued 12.3%` of the paused row, as of one that waits.
        listed = await asyncio.to_thread(run_dsm, "list", home=home, catalog_path=cat)
        (line,) = [x for x in listed.stdout.splitlines() if x.startswith("alpha ")]
        assert line.split()[1] == "queued" and line.endswith("(paused)")
        shown = await asyncio.to_thread(run_dsm, "show", "alpha", home=home, catalog_path=cat)
        assert shown.stdout.splitlines()[-1].split(None, 2)[2].startswith("paused: ")
        server.persistent.clear()  # full speed from here
        await pilot.press("p")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded", within=20)
    assert server.requests("alpha.bin")[-1].range_start == kept
    assert (home / "data" / "alpha").read_bytes() == BIG
    assert len(app.repo.jobs()) == 1  # the same job went on


async def test_pause_all_resume_all_and_cancel_all(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma", rate=100_000))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("a")
        await until(pilot, lambda: app.state.own_active == 3)
        await pilot.press("P")
        await until(pilot, lambda: app.state.totals(0).paused == 3)
        assert all(cell(app, n, "status") == "paused" for n in ("alpha", "beta", "gamma"))
        await pilot.press("R")
        await until(pilot, lambda: app.state.totals(0).paused == 0)
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloading")
        await pilot.press("C")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        await pilot.press("y")
        await until(pilot, lambda: app.state.own_active == 0)
        assert {cell(app, n, "status") for n in ("alpha", "beta", "gamma")} <= {
            "canceled",
            "not loaded",
        }
    assert all(j.status == JobStatus.CANCELED for j in app.repo.jobs())


async def test_retrying_row_shows_attempt_cause_countdown_and_r_retries_failed(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "flaky", "broken"))
    server.fault("flaky.bin", times=1, status=503, headers={"Retry-After": "3"})
    server.always("broken.bin", status=404)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("j", "d")  # flaky (broken sorts first)
        await until(pilot, lambda: cell(app, "flaky", "status") == "retrying")
        info = cell(app, "flaky", "info")
        assert info.startswith("attempt 2/4 · 503 · next in ") and info.endswith(" s")
        await until(pilot, lambda: "1 retrying" in str(app.summary.render()))
        await until(pilot, lambda: cell(app, "flaky", "status") == "downloaded", within=20)
        await pilot.press("g", "d")
        await until(pilot, lambda: cell(app, "broken", "status") == "error")
        assert cell(app, "broken", "info") == "HTTP 404 Not Found"
        server.persistent.clear()
        await pilot.press("r")
        await until(pilot, lambda: any("retrying 1 failed" in m for m in messages(app)))
        await until(pilot, lambda: cell(app, "broken", "status") == "downloaded")


async def test_c_says_cancel_pending_at_once(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", rate=50_000))
    shown: list[tuple[str, str]] = []  # (status, info) of every version of alpha's row
    show_row = app.table.show_row

    def recording(row: RowView) -> bool:
        changed = show_row(row)
        if changed and row.ds.name == "alpha":
            shown.append((cell(app, "alpha", "status"), cell(app, "alpha", "info")))
        return changed

    app.table.show_row = recording  # type: ignore[method-assign]
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloading")
        await pilot.press("c")
        await until(pilot, lambda: cell(app, "alpha", "status") == "canceled")
    asked = shown.index(("downloading", "cancel pending"))  # drawn before the engine answered
    assert shown[asked + 1 :] and shown[-1] == ("canceled", "")


async def test_job_log_is_live(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    app = make_app(home, serve(server, catalog, "alpha", rate=300_000))
    before = sys.getswitchinterval()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        assert sys.getswitchinterval() == UI_SWITCH_INTERVAL  # the UI thread waits less
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloading")
        await pilot.press("l")
        assert app.log_open and not app.table.display  # in the table's place, at once
        assert app.job_log.log_view.has_focus
        log = app.job_log.log_view

        def line() -> str:
            return log.line_text(0).plain

        await until(pilot, lambda: "running" in line())
        assert line().split()[:2] == ["download", "alpha"]
        assert line().split()[3] == "1"  # attempts, while it runs
        await until(pilot, lambda: "completed" in line(), within=20)
        assert "downloading" not in str(app.summary.render())  # the summary stays live too
        await pilot.press("escape")
        assert not app.log_open and app.table.display and app.table.has_focus
    assert sys.getswitchinterval() == before


async def test_a_retrying_row_shows_the_bytes_it_has_on_disk(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "flaky"))
    server.fault("flaky.bin", times=1, drop_after=1_200_000)  # a partial file, then
    server.fault("flaky.bin", times=1, status=503, headers={"Retry-After": "3"})
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "flaky", "status") == "retrying")
        job = app.state.job_for("flaky")
        assert job is not None and job.bytes_done >= 1 << 20  # the batches already written
        percent = int(100 * job.bytes_done / len(BIG))
        assert cell(app, "flaky", "progress").endswith(f" {percent:3d}%") and percent > 60
        await until(pilot, lambda: cell(app, "flaky", "status") == "downloaded", within=20)


async def test_rows_resort_when_their_sorted_field_changes(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("s")  # by status: all not loaded, then by name
        assert app.table.shown() == ["alpha", "beta", "gamma"]
        await pilot.press("d")  # alpha becomes downloaded: it moves after the others
        await until(pilot, lambda: app.table.shown() == ["beta", "gamma", "alpha"])
        assert app.table.highlighted == "alpha"  # the cursor went with its row


async def test_moving_keys_marks_escape_and_copy(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("G")
        assert app.table.highlighted == "gamma"
        await pilot.press("k")
        assert app.table.highlighted == "beta"
        await pilot.press("g")
        assert app.table.highlighted == "alpha"
        await pilot.press("j")
        assert app.table.highlighted == "beta"
        await pilot.press("space", "space")
        assert app.state.marked == {"beta", "gamma"}
        await until(pilot, lambda: "2 marked" in str(app.summary.render()))
        await pilot.press("escape")
        assert not app.state.marked and cell(app, "beta", "mark") == " "
        await pilot.press("y")
        path = str(home / "data" / "gamma")
        assert app.clipboard == path
        await until(pilot, lambda: f"copied: {path}" in messages(app))


async def test_help_and_palette_list_the_new_keys(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        shown = " ".join(str(k) for k, _ in app.screen.keys)  # type: ignore[attr-defined]
        for key in ("p", "P", "R", "C", "r", "S", "y", "esc", "j / down", "g / home"):
            assert key in shown
    helps = {k.help for k in app.KEY_ACTIONS}
    for words in ("pause", "resume every", "cancel every", "retry every failed", "copy"):
        assert any(words in h for h in helps)
