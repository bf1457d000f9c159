"""The dataset table on its own, at 10,000 rows: what is rendered, the cursor, clicks, markup."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.message import Message
from textual.strip import Strip

from dsm.domain.display import RowView, retry_text, short_cause
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Dataset, Status
from dsm.widgets.dataset_table import (
    BAR_DONE,
    BAR_LEFT,
    COLOUR,
    COLUMNS,
    MONO,
    PERCENT_WIDTH,
    DatasetTable,
    bar,
    fit,
    layout,
)

pytestmark = pytest.mark.anyio
ROWS = 10_000
SIZE = (120, 30)
PAGE = SIZE[1] - 1  # rows under the header line


def name(i: int) -> str:
    return f"ds-{i:05d}"


class TableApp(App[None]):
    """Just the table, fed 10,000 datasets; keeps the messages it posts."""

    def __init__(self, datasets: list[Dataset]) -> None:
        super().__init__()
        self.datasets = datasets
        self.table = DatasetTable(id="table")
        self.heard: list[Message] = []

    def compose(self) -> ComposeResult:
        yield self.table

    def on_mount(self) -> None:
        self.table.set_data(
            RowView(ds, None, False, info=short_cause(ds.error)) for ds in self.datasets
        )
        self.table.show([ds.name for ds in self.datasets], sorted_by="name")

    @on(DatasetTable.RowHighlighted)
    @on(DatasetTable.RowSelected)
    @on(DatasetTable.HeaderSelected)
    def _heard(self, message: Message) -> None:
        self.heard.append(message)


def make_app(n: int = ROWS) -> TableApp:
    return TableApp([Dataset(name(i)) for i in range(n)])


@contextmanager
def rendered_rows(table: DatasetTable) -> Iterator[Counter[str]]:
    """Count render_line calls per row key (the header counts as "header")."""
    seen: Counter[str] = Counter()
    render = table.render_line

    def counting(y: int) -> Strip:
        index = round(table.scroll_y) + y - 1
        shown = table.shown()
        seen["header" if y == 0 else shown[index] if index < len(shown) else "blank"] += 1
        return render(y)

    table.render_line = counting  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del table.render_line


def line_text(table: DatasetTable, y: int) -> str:
    return table.render_line(y).text


def highlighted_heard(app: TableApp) -> list[str | None]:
    return [m.name for m in app.heard if isinstance(m, DatasetTable.RowHighlighted)]


async def test_a_progress_update_re_renders_only_that_row() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.table
        with rendered_rows(table) as seen:
            changed = Dataset(name(3), status=Status.DOWNLOADING, download_progress=40.0)
            table.show_row(RowView(changed, None, False))
            await pilot.pause()
        assert seen == Counter({name(3): 1})
        assert "40%" in line_text(table, 1 + 3) and "downloading" in line_text(table, 1 + 3)
        with rendered_rows(table) as seen:
            table.show_row(RowView(changed, None, False))  # the same cells: nothing to redraw
            table.show_row(RowView(Dataset(name(5000), download_progress=1.0), None, False))
            await pilot.pause()
        assert not seen
        assert table.cell(name(5000), "progress").plain.endswith("  1%")


async def test_only_visible_rows_render() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        with rendered_rows(app.table) as seen:
            app.table.refresh()
            await pilot.pause()
        assert seen["header"] == 1
        assert sum(seen.values()) <= SIZE[1]
        assert set(seen) - {"header"} == {name(i) for i in range(PAGE)}


async def test_cursor_keys_move_and_scroll() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.table
        assert table.highlighted == name(0) and highlighted_heard(app) == [name(0)]
        await pilot.press("down", "down", "up")
        assert table.highlighted == name(1)
        await pilot.press("pagedown")
        assert table.highlighted == name(1 + PAGE)
        assert line_text(table, PAGE).lstrip().startswith(name(1 + PAGE))  # scrolled into view
        await pilot.press("pageup")
        assert table.highlighted == name(1)
        await pilot.press("end")
        assert table.highlighted == name(ROWS - 1)
        await pilot.pause()
        assert line_text(table, PAGE).lstrip().startswith(name(ROWS - 1))
        await pilot.press("down")  # stays on the last row
        assert table.highlighted == name(ROWS - 1)
        await pilot.press("home")
        assert table.highlighted == name(0)
        await pilot.pause()
        assert line_text(table, 1).lstrip().startswith(name(0))
        assert highlighted_heard(app)[-1] == name(0)
        await pilot.press("enter")
        assert any(isinstance(m, DatasetTable.RowSelected) for m in app.heard)


async def test_sort_keeps_the_cursor_on_its_row_and_filter_falls_back_to_the_first() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.table
        await pilot.press("down", "down")
        everyone = table.shown()
        table.show(everyone[::-1], sorted_by="status")  # any new order: a list swap
        await pilot.pause()
        assert table.highlighted == name(2)
        assert table.shown()[0] == name(ROWS - 1)
        assert "Status ▲" in line_text(table, 0) and "Name ▲" not in line_text(table, 0)
        assert line_text(table, PAGE).lstrip().startswith(name(2))  # still in view
        table.show([name(7), name(9)], sorted_by="status")  # a filter that hides the cursor row
        await pilot.pause()
        assert table.row_count == 2 and table.highlighted == name(7)
        assert highlighted_heard(app)[-1] == name(7)
        table.show([], sorted_by="status")
        assert table.highlighted is None


async def test_clicks_highlight_select_and_sort() -> None:
    app = make_app(50)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.table
        await pilot.click("#table", offset=(5, 4))  # the fourth row
        assert table.highlighted == name(3)
        assert not any(isinstance(m, DatasetTable.RowSelected) for m in app.heard)
        await pilot.click("#table", offset=(5, 4))  # again: selects it
        selected = [m for m in app.heard if isinstance(m, DatasetTable.RowSelected)]
        assert [m.name for m in selected] == [name(3)]
        size_x = next(x for x in range(SIZE[0]) if table.column_at(x) == "size")
        await pilot.click("#table", offset=(size_x, 0))
        headers = [m for m in app.heard if isinstance(m, DatasetTable.HeaderSelected)]
        assert [m.column for m in headers] == ["size"]


async def test_user_strings_are_never_markup() -> None:
    tricky = ["imagenet[v2]", "x[/y]", "[bold]loud"]
    app = TableApp([Dataset(n, error=f"bad {n}", status=Status.ERROR) for n in tricky])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        lines = [line_text(app.table, y) for y in (1, 2, 3)]
        for text, shown in zip(tricky, lines, strict=True):
            assert text in shown and f"bad {text}" in shown


async def test_80_columns_fit_without_scrolling_and_name_stays() -> None:
    app = make_app(100)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.table
        assert table.virtual_size.width <= 80 and table.scroll_x == 0
        header = line_text(table, 0)
        for label in ("Name", "Status", "Progress", "Size", "Rate", "ETA", "Error"):
            assert label in header
        await pilot.press(*["right"] * 10)  # nothing to scroll to: Name stays on the left
        await pilot.pause()
        assert table.scroll_x == 0 and line_text(table, 1).lstrip().startswith(name(0))


def test_layout_drops_low_value_columns_and_gives_room_to_errors() -> None:
    assert list(layout(40, 10)) == ["mark", "name", "status", "info"]
    for width in (40, 60, 79, 119, 199):
        widths = layout(width, 30)
        assert sum(widths.values()) + len(widths) - 1 == width  # no scrolling, no gap
    narrow = layout(79, 30)
    assert set(narrow) == {c.key for c in COLUMNS}  # every column at 80x24
    wide = layout(119, 23)
    lent = wide["rate"] + wide["eta"] + 2
    assert wide["info"] + lent >= 60  # a failed row's 60-character error, whole, at 120
    widest = layout(199, 40)
    assert widest["name"] == 40 and widest["progress"] > wide["progress"]


async def test_a_failed_row_shows_its_error_whole_at_120_columns() -> None:
    error = "checksum mismatch: expected sha256 9f9f9f9f…, got 0a0a0a0a…!"  # 60 characters
    assert len(error) == 60
    app = TableApp([Dataset("gsm8k", status=Status.ERROR, error=error)])
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        assert error in line_text(app.table, 1)


def test_bar_is_full_only_at_100_and_differs_by_glyph() -> None:
    for percent in (0.0, 7.5, 42.0, 99.9, 100.0, 130.0):
        for width in (10, 25):
            assert bar(percent, width, COLOUR).cell_len == width
    almost = bar(99.9, 15, COLOUR).plain
    assert BAR_LEFT in almost and almost.endswith(" 99%")
    assert bar(100.0, 15, COLOUR).plain == BAR_DONE * 10 + " 100%"
    assert bar(50.0, 15, MONO).plain == BAR_DONE * 5 + BAR_LEFT * 5 + "  50%"
    assert PERCENT_WIDTH == 5


def test_no_color_keeps_status_error_and_mark_readable() -> None:
    for role in (Status.ERROR, "error-text", "mark", "retrying", "paused", "info"):
        style = MONO[role]
        assert any(word in style for word in ("bold", "reverse", "italic")), role
        assert not any(c in style for c in ("red", "cyan", "yellow", "magenta")), role


async def test_retrying_row_says_attempt_cause_and_countdown() -> None:
    job = Job(JobType.DOWNLOAD, "flaky", {}, status=JobStatus.RETRYING, attempts=1)
    job.error = "attempt 1 failed: HTTP 503 Service Unavailable from http://h/f; retrying in 4.0 s"
    job.retry_at_ms = 10_000
    info = retry_text(job, 5, 6_100)
    assert info == "attempt 2/5 · 503 · next in 4 s"
    app = TableApp([])
    async with app.run_test(size=(80, 24)) as pilot:
        app.table.set_data(
            [RowView(Dataset("flaky", status=Status.DOWNLOADING), job, False, info=info)]
        )
        app.table.show(["flaky"], "name")
        await pilot.pause()
        line = line_text(app.table, 1)
        assert "retrying" in line and info in line


def test_cells_fit_their_width() -> None:
    assert fit(Text("a-very-long-dataset-name"), 10).plain == "a-very-lo…"
    assert fit(Text("1 KiB", justify="right"), 8).plain == "   1 KiB"
    assert fit(Text("abc"), 5).plain == "abc  "
    assert [c.key for c in COLUMNS][:4] == ["mark", "name", "status", "progress"]
