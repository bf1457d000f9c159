"""Pilot tests of every dashboard key path, with the real engine against the local server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from textual.command import CommandList

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.tui.feed import DatasetReader, JobReader, StoreWatch
from dsm.tui.state import INTERRUPTED, DashboardState
from dsm.widgets.screens import FilterBar
from tests.conftest import (
    CatalogFn,
    make_settings,
    open_repo,
    run_dsm,
    start_dsm,
    wait_for,
)
from tests.httpserver import FileServer
from tests.tui_helpers import (
    SIZE,
    burst,
    cell,
    loaded,
    make_app,
    messages,
    put_row,
    text_of,
    until,
)

pytestmark = pytest.mark.anyio
BODY = os.urandom(300_000)


def serve(server: FileServer, catalog: CatalogFn, *names: str, rate: float | None = None) -> Path:
    """Serve one file per name (throttled when rate is given); returns the catalogue."""
    urls = {}
    for name in names:
        urls[name] = server.add(f"{name}.bin", BODY)
        if rate:
            server.always(f"{name}.bin", rate=rate)
    return catalog(**urls)


async def test_d_downloads_the_highlighted_row(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        assert cell(app, "alpha", "progress").endswith("100%")
        assert cell(app, "beta", "status") == "not loaded"
        assert (home / "data" / "alpha").read_bytes() == BODY
        await until(pilot, lambda: "1 downloaded" in str(app.query_one("#summary").render()))
        await pilot.press("d")  # again: skipped, and the user is told why
        await until(pilot, lambda: any("already downloaded" in m for m in messages(app)))
    assert len(server.requests("alpha.bin")) == 1


async def test_f_downloads_again(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        await pilot.press("f")
        await until(pilot, lambda: len(server.requests("alpha.bin")) == 2)
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
    assert [j.type for j in app.repo.jobs()] == [JobType.DOWNLOAD, JobType.UPDATE]


@pytest.mark.parametrize(("answer", "kept"), [("y", False), ("n", True), ("escape", True)])
async def test_x_deletes_after_confirmation(
    server: FileServer, home: Path, catalog: CatalogFn, answer: str, kept: bool
) -> None:
    app = make_app(home, serve(server, catalog, "alpha"))
    target = home / "data" / "alpha"
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        await pilot.press("x")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        await pilot.press(answer)
        await until(pilot, lambda: len(app.screen_stack) == 1)
        if kept:
            await pilot.pause(0.3)  # a delete would have been submitted by now
            assert cell(app, "alpha", "status") == "downloaded"
        else:
            await until(pilot, lambda: cell(app, "alpha", "status") == "not loaded")
            assert cell(app, "alpha", "progress").endswith(" 0%")
    assert target.exists() == kept


async def test_c_cancels_a_throttled_download(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", rate=50_000))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloading")
        await until(pilot, lambda: cell(app, "alpha", "rate") != "")
        await pilot.press("c")
        await until(pilot, lambda: cell(app, "alpha", "status") == "canceled")
        assert app.state.own_active == 0
        await pilot.press("c")  # nothing left to cancel: said so
        await until(pilot, lambda: any("nothing to cancel" in m for m in messages(app)))


async def test_slash_filters_as_you_type(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("slash", "e", "t")
        await until(pilot, lambda: app.table.row_count == 1)
        assert app.table.highlighted == "beta"
        await pilot.press("enter", "d")  # enter keeps the filter and goes back to the table
        await until(pilot, lambda: cell(app, "beta", "status") == "downloaded")
        await pilot.press("slash", *"downloaded")  # the filter matches the status too
        await until(pilot, lambda: app.table.row_count == 1)
        await pilot.press("escape")
        await until(pilot, lambda: app.table.row_count == 3)
        assert app.focused is app.table


async def test_esc_on_the_table_clears_the_marks_then_the_filter(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """After `enter` the filter stays, its bar open: esc on the table cleared only marks, so
    the README's "esc clears" left the filter in place until `/` then esc."""
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("slash", "a", "enter")  # alpha, beta, gamma: every name has an a
        await pilot.press("slash", "backspace", *"et", "enter")
        await until(pilot, lambda: app.table.row_count == 1)
        assert app.focused is app.table
        await pilot.press("space")
        assert app.state.marked == {"beta"}
        await pilot.press("escape")  # the marks first: the filter stays
        assert not app.state.marked and app.query_one(FilterBar).value == "et"
        await pilot.press("escape")  # no marks: the filter
        await until(pilot, lambda: app.table.row_count == 3)
        bar = app.query_one(FilterBar)
        assert bar.value == "" and not bar.has_class("-open") and app.focused is app.table
        await pilot.press("escape")  # nothing left to clear: nothing happens
        assert app.table.row_count == 3 and app.focused is app.table


@pytest.mark.parametrize(
    ("typed", "pasted"),
    [("/pdf-xlsx-data", ""), ("/", "pdf-xlsx-data"), ("\r\x1b/pdf-xlsx-data", "")],
    # The last: enter and esc typed for the table just before `/` never submit or close the
    # filter they reach the app after.
    ids=["typed", "pasted", "after-enter-esc"],
)
async def test_keys_right_after_slash_are_filter_text(
    server: FileServer, home: Path, catalog: CatalogFn, typed: str, pasted: str
) -> None:
    """`/` and what follows it in the same read (a script, a paste, a fast typist): all of it
    is filter text, whatever reaches the app before the focus moves. Once, the keys behind
    `/` reached the table: d, a and f started downloads, x asked to delete, s sorted."""
    app = make_app(home, serve(server, catalog, "alpha", "beta", "pdf-xlsx-data"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        sort = (app.state.sort, app.state.reverse)
        await burst(pilot, typed, pasted)
        bar = app.query_one(FilterBar)
        assert bar.value == "pdf-xlsx-data"
        assert app.focused is bar
        assert len(app.screen_stack) == 1 and not app.log_open  # no confirm (x), no log (l)
        assert (app.state.sort, app.state.reverse) == sort and not app.state.marked
        assert app.state.own_active == 0 and app.repo.jobs() == []
        await until(pilot, lambda: app.table.row_count == 1)
        await pilot.press("enter", "d")  # enter keeps the filter; d downloads the row shown
        await until(pilot, lambda: cell(app, "pdf-xlsx-data", "status") == "downloaded")
        # A job the burst had started would have been submitted before this one.
        jobs = [(j.dataset, j.type) for j in app.repo.jobs()]
        assert jobs == [("pdf-xlsx-data", JobType.DOWNLOAD)]
        assert {app.repo.dataset(n).status for n in ("alpha", "beta")} == {Status.NOT_LOADED}


async def test_slash_in_the_filter_is_text(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`/` opens the filter before the focused widget sees the key; in the filter it is text."""
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("slash", "a", "slash", "b")
        assert app.query_one(FilterBar).value == "a/b"
        assert "filter" not in {b.binding.action for b in app.active_bindings.values()}


async def test_space_marks_rows_for_d(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("space", "space")  # marks alpha and beta (space moves down)
        assert cell(app, "alpha", "mark") == "●"
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "beta", "status") == "downloaded")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        assert cell(app, "gamma", "status") == "not loaded"
        assert cell(app, "alpha", "mark") == " "  # acting on marks clears them
    assert not server.requests("gamma.bin")


async def test_a_downloads_everything_not_downloaded(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("a")
        for name in ("alpha", "beta", "gamma"):
            await until(pilot, lambda n=name: cell(app, n, "status") == "downloaded")  # type: ignore[misc]
        await pilot.press("a")
        await until(pilot, lambda: "every dataset is downloaded" in messages(app))


async def test_a_downloads_a_copy_removed_by_hand_again(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`a` left a row saying `missing on disk` as it was: its store status is downloaded."""
    app = make_app(home, serve(server, catalog, "alpha", "beta"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("a")
        await until(pilot, lambda: app.state.totals(0).downloaded == 2)
        await pilot.press("a")
        await until(pilot, lambda: any("every dataset is downloaded" in m for m in messages(app)))
        (home / "data" / "beta").unlink()
        await until(pilot, lambda: cell(app, "beta", "info").startswith("missing on disk"))
        await pilot.press("a")
        await until(pilot, lambda: (home / "data" / "beta").exists())
        await until(pilot, lambda: cell(app, "beta", "info") == "")
    assert (home / "data" / "beta").read_bytes() == BODY
    assert [len(server.requests(f"{n}.bin")) for n in ("alpha", "beta")] == [1, 2]


async def test_a_pressed_before_the_rows_are_read_downloads_them_once_read(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start the table is empty until the first store read (seconds at 10,000 datasets
    on a busy machine): `a` then said "every dataset is downloaded" and did nothing."""
    release = threading.Event()
    read = DatasetReader.read

    def held_read(self: DatasetReader) -> list[Dataset]:
        release.wait(30)
        return read(self)

    monkeypatch.setattr(DatasetReader, "read", held_read)
    app = make_app(home, serve(server, catalog, "alpha", "beta"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.press("a")
        await until(pilot, lambda: "reading the datasets: the action follows" in messages(app))
        release.set()
        await loaded(pilot)
        for name in ("alpha", "beta"):
            await until(pilot, lambda n=name: cell(app, n, "status") == "downloaded")  # type: ignore[misc]
        assert "every dataset is downloaded" not in messages(app)


async def test_failure_notifies_with_the_cause(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, catalog(broken=server.url("missing[/x].bin")))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "broken", "status") == "error")
        await until(pilot, lambda: any("404" in m for m in messages(app)))
        assert "404" in cell(app, "broken", "info")
        await until(pilot, lambda: "1 failed" in str(app.query_one("#summary").render()))


async def test_s_and_header_clicks_sort(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta", "gamma"))

    def order() -> list[str]:
        return app.table.shown()

    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("down", "down", "d")  # gamma: downloaded, so first by status... last
        await until(pilot, lambda: cell(app, "gamma", "status") == "downloaded")
        await pilot.press("s")
        assert app.state.sort == "status"
        assert order() == ["alpha", "beta", "gamma"]  # not loaded sorts before downloaded
        assert app.table.highlighted == "gamma"  # the cursor follows its row
        await pilot.press("s")  # size: only gamma has one
        assert order()[0] == "gamma"
        await pilot.press("s")  # progress: gamma's 100% first
        assert app.state.sort == "progress" and order()[0] == "gamma"
        await pilot.press("s", "s")  # rate, then back to name
        assert app.state.sort == "name" and order() == ["alpha", "beta", "gamma"]
        await pilot.press("S")  # reverses, and the header says so
        assert order() == ["gamma", "beta", "alpha"] and app.table.highlighted == "gamma"
        assert "Name ▼" in app.table.render_line(0).text
        status_x = next(x for x in range(SIZE[0]) if app.table.column_at(x) == "status")
        await pilot.click("#table", offset=(status_x, 0))  # the Status header
        assert app.state.sort == "status" and not app.state.reverse
        await pilot.click("#table", offset=(status_x, 0))  # again: reversed
        assert app.state.reverse and order()[0] == "gamma"
        assert "Status ▼" in app.table.render_line(0).text


async def test_enter_l_and_help_screens(server: FileServer, home: Path, catalog: CatalogFn) -> None:
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        detail = app.query_one("#detail")
        await pilot.press("enter")
        assert detail.has_class("-open")
        body = text_of(app, "#detail-body")
        assert server.url("alpha.bin") in body and str(home / "data" / "alpha") in body
        await until(pilot, lambda: "completed" in text_of(app, "#detail-body"))
        await pilot.press("enter")
        assert not detail.has_class("-open")
        await pilot.press("l")
        assert app.log_open
        await pilot.press("d", "x")  # dashboard keys are off over the log: no job, no question
        assert len(app.screen_stack) == 1
        await pilot.press("escape")
        assert not app.log_open and app.table.display and not detail.display  # as it was
        await pilot.press("enter", "l")
        assert not detail.display
        await pilot.press("l")  # l closes the log it opened
        assert not app.log_open and detail.display  # the open pane is back
        await pilot.press("l")
        app.job_log.action_close()
        app.job_log.action_close()  # two close keys typed before the first was handled
        await pilot.pause()
        assert not app.log_open  # closed, not closed and opened again
        await pilot.press("enter")
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("question_mark")
        await until(pilot, lambda: len(app.screen_stack) == 1)
    assert len(app.repo.jobs()) == 1


async def test_the_detail_pane_says_a_copy_removed_by_hand_is_missing(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The row said `missing on disk` but the detail pane, open on it, said `downloaded`."""
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d", "enter")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        assert "missing on disk" not in text_of(app, "#detail-body")
        (home / "data" / "alpha").unlink()
        await until(pilot, lambda: "missing on disk" in text_of(app, "#detail-body"))
        assert "downloaded (missing on disk: d fetches it again)" in text_of(app, "#detail-body")
        await pilot.press("d")
        await until(pilot, lambda: (home / "data" / "alpha").exists())
        await until(pilot, lambda: "missing on disk" not in text_of(app, "#detail-body"))
        assert "downloaded" in text_of(app, "#detail-body")


async def test_v_verifies_a_copy_changed_on_disk(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The row said `changed on disk: v verifies it`, and the dashboard had no `v`."""
    app = make_app(home, serve(server, catalog, "alpha", "beta"))
    copy = home / "data" / "alpha"
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded")
        os.utime(copy, ns=(1_000_000_000, 1_000_000_000))  # touched: the same bytes
        await until(pilot, lambda: cell(app, "alpha", "info").startswith("changed on disk: v"))
        await pilot.press("v")
        await until(
            pilot, lambda: "alpha: verified, the copy on disk is as recorded" in messages(app)
        )
        await until(pilot, lambda: cell(app, "alpha", "info") == "")
        with copy.open("ab") as f:
            f.write(b"x")
        await pilot.press("v")
        await until(pilot, lambda: cell(app, "alpha", "status") == "error")
        assert any(m.startswith("alpha failed: size mismatch on disk") for m in messages(app))
        await pilot.press("j", "v")  # beta is not downloaded: said so, not `already downloaded`
        await until(pilot, lambda: "beta: not downloaded: nothing to verify" in messages(app))


async def test_command_palette_runs_actions(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("ctrl+p", *"every dataset")
        await until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0)
        await pilot.pause(0.3)  # let the list settle on the best match
        await pilot.press("enter")
        await until(pilot, lambda: cell(app, "beta", "status") == "downloaded")
        assert cell(app, "alpha", "status") == "downloaded"


async def test_the_palette_runs_no_row_action_over_the_job_log(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha", "beta"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("l")
        assert app.log_open
        await pilot.press("ctrl+p", *"every dataset")
        await until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0)
        await pilot.pause(0.3)  # let the list settle on the best match
        await pilot.press("enter")
        await until(pilot, lambda: len(app.screen_stack) == 1)
        await pilot.pause()
        assert app.log_open and app.repo.jobs() == []
        assert server.requests("alpha.bin") == [] and server.requests("beta.bin") == []


async def test_another_process_shows_within_two_seconds(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    catalog_path = serve(server, catalog, "alpha")
    app = make_app(home, catalog_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        done = await asyncio.to_thread(
            run_dsm, "--run-job", "download", "--dataset", "alpha", home=home,
            catalog_path=catalog_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        await until(pilot, lambda: cell(app, "alpha", "status") == "downloaded", within=2.0)
        assert len(app.state.jobs) == 1


async def test_quit_with_a_running_job_keeps_the_partial_and_resumes(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    # Over 1 MiB: the transfer writes the partial file in batches of 1 MiB.
    big = os.urandom(1_600_000)
    catalog_path = catalog(alpha=server.add("alpha.bin", big))
    server.always("alpha.bin", rate=300_000)  # seconds of transfer: quit lands mid-way
    part = home / "data" / "alpha.part"
    app = make_app(home, catalog_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await until(pilot, lambda: part.exists() and part.stat().st_size > 0)
        await pilot.press("q")
        await until(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        await pilot.press("y")
        await until(pilot, lambda: app.return_code is not None)
    kept = part.stat().st_size
    assert 0 < kept < len(big)
    assert app.repo.dataset("alpha").status == Status.QUEUED  # suspended, not canceled

    server.persistent.clear()  # full speed now
    again = make_app(home, catalog_path)
    async with again.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)  # no key pressed: the next start resumes the job by itself
        await until(pilot, lambda: cell(again, "alpha", "status") == "downloaded")
    resumed = server.requests("alpha.bin")[-1]
    assert resumed.range_start == kept
    assert (home / "data" / "alpha").read_bytes() == big


async def test_q_without_jobs_quits_at_once(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    app = make_app(home, serve(server, catalog, "alpha"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        await pilot.press("q")
        await until(pilot, lambda: app.return_code == 0)


# -- the state behind the view, without an app -------------------------------------------
def _job(status: JobStatus, progress: float = 0.0) -> Job:
    return Job(JobType.DOWNLOAD, "alpha", {}, id="j1", status=status, progress=progress)


def test_state_ignores_progress_of_a_finished_job() -> None:
    state = DashboardState(own_engine="me")
    state.apply_snapshot([Dataset("alpha")], [])
    state.apply_job(_job(JobStatus.WAITING))
    state.apply_job(_job(JobStatus.RUNNING, 40.0))
    assert state.job_for("alpha") is not None and state.job_for("alpha").progress == 40.0  # type: ignore[union-attr]
    state.apply_job(_job(JobStatus.COMPLETED, 100.0))
    state.apply_job(_job(JobStatus.RUNNING, 50.0))  # a tick that arrived late
    assert state.job_for("alpha") is None and state.own_active == 0


def test_state_keeps_a_row_newer_than_a_store_read() -> None:
    state = DashboardState(own_engine="me")
    state.apply_snapshot([Dataset("alpha", updated_at_ms=1)], [])
    newer = Dataset("alpha", status=Status.QUEUED, updated_at_ms=5)
    state.apply_job(_job(JobStatus.WAITING), newer)
    change = state.apply_snapshot([Dataset("alpha", updated_at_ms=3)], [])
    assert state.datasets["alpha"].status == Status.QUEUED and not change.names
    change = state.apply_snapshot([Dataset("alpha", updated_at_ms=3), Dataset("beta")], [])
    assert change.structural


def test_state_totals_follow_every_change() -> None:
    def done(name: str, at: int) -> Dataset:
        return Dataset(name, status=Status.DOWNLOADED, downloaded=True, size=7, updated_at_ms=at)

    state = DashboardState(own_engine="me")
    state.apply_snapshot([Dataset("a"), Dataset("b", status=Status.ERROR), Dataset("c")], [])
    state.apply_job(_job(JobStatus.COMPLETED), done("a", 2))
    state.apply_snapshot([state.datasets["a"], done("c", 3)], [])  # b is gone
    rows = state.datasets.values()
    totals = state.totals(shown=2)
    assert (totals.datasets, totals.downloaded, totals.failed, totals.bytes_on_disk) == (
        2,
        2,
        0,
        14,
    )
    assert totals.downloaded == sum(d.status == Status.DOWNLOADED for d in rows)


def test_dataset_reader_rebuilds_only_changed_rows(home: Path, catalog: CatalogFn) -> None:
    repo = open_repo(
        make_settings(home, catalog(alpha="http://127.0.0.1:9/a", beta="http://127.0.0.1:9/b"))
    )
    reader = DatasetReader(repo)
    first = {ds.name: ds for ds in reader.read()}
    put_row(repo, "beta", Status.ERROR, error="boom")
    second = {ds.name: ds for ds in reader.read()}
    assert second["alpha"] is first["alpha"]
    assert second["beta"] is not first["beta"] and second["beta"].error == "boom"
    assert sorted(second.values(), key=lambda d: d.name) == repo.datasets()


def test_a_row_whose_downloading_process_was_killed_says_it_is_interrupted(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A --run-job killed (-9) mid-download writes nothing more: the dashboard's store poll
    probes the owner of another process's unfinished job, and the row says interrupted
    (it said downloading, at the dead process's last rate, for as long as the dashboard
    ran: only a store change made it read again)."""
    gate = threading.Event()
    cat = serve(server, catalog, "alpha")
    server.always("alpha.bin", gate=gate)
    settings = make_settings(home, cat)
    repo = open_repo(settings)
    watch = StoreWatch(repo, settings.lock_dir, "dashboard")
    state = DashboardState(own_engine="dashboard")
    other = start_dsm("--run-job", "download", "--dataset", "alpha", home=home, catalog_path=cat)
    try:
        wait_for(lambda: bool(server.requests("alpha.bin")))
        wait_for(lambda: any(j.status == JobStatus.RUNNING for j in repo.jobs()))
        read = watch.poll()
        assert read is not None and read.dead == frozenset()
        state.apply_snapshot(read.datasets, read.jobs, read.dead)
        assert state.row("alpha").job is not None and state.row("alpha").info == ""
        assert watch.poll() is None  # nothing changed: no read
    finally:
        other.kill()
        other.wait()
        gate.set()
    read = watch.poll()  # the store did not change; its owner died
    assert read is not None and read.dead == {read.jobs[0].owner}
    assert state.apply_snapshot(read.datasets, read.jobs, read.dead).names == {"alpha"}
    assert state.row("alpha").job is None
    assert state.row("alpha").info == INTERRUPTED
    assert state.totals(1).downloading == 0


def test_headless_modules_never_import_textual() -> None:
    code = (
        "import sys, dsm.cli, dsm.headless, dsm.engine.engine, dsm.engine.thread, dsm.store\n"
        "assert 'textual' not in sys.modules, 'textual imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_job_reader_rebuilds_only_changed_jobs(home: Path, catalog: CatalogFn) -> None:
    repo = open_repo(make_settings(home, catalog(alpha="http://127.0.0.1:9/a")))
    old, new = (
        Job(JobType.DOWNLOAD, "alpha", {}, id=i, created_ms=n) for n, i in ((2, "j2"), (1, "j1"))
    )
    repo.save_jobs([old, new])
    reader = JobReader(repo)
    first = reader.read()
    assert [j.id for j in first] == ["j1", "j2"]  # oldest first, as Repository.jobs
    old.status = JobStatus.FAILED
    repo.save_job(old)
    second = reader.read()
    assert second[0] is first[0] and second[1] is not first[1]
    assert second == repo.jobs()
