"""The dataset table: one line per dataset keyed by its name, on Textual's Line API.

DataTable re-renders every visible cell whenever any cell changes (~45 ms of CPU a frame at
10,000 rows) and rebuilds its row map on removals. Here the rows on display are a plain list of
names: sorting and filtering replace that list; each row renders into a Strip cached under
(name, version, look), and a changed row refreshes its own line only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dsm import humanize
from dsm.domain.jobs import Job, JobStatus
from dsm.domain.model import Dataset, Status

BAR_WIDTH = 10
PROGRESS_WIDTH = BAR_WIDTH + 5  # the bar, a space and "100%"
ERROR_WIDTH_MIN = 10
NAME_WIDTH_MAX = 20
CELL_PADDING = 1  # on each side of every cell
HEADER_LINES = 1
# Enough for a few screens of rows in each look; stale versions age out.
STRIP_CACHE_SIZE = 2048
LOOK_CLASS = {"cursor": "dataset-table--cursor", "even": "dataset-table--even-row"}

STATUS_STYLE: dict[Status, str] = {
    Status.NOT_LOADED: "dim",
    Status.QUEUED: "cyan",
    Status.DOWNLOADING: "bold cyan",
    Status.VERIFYING: "bold blue",
    Status.DOWNLOADED: "green",
    Status.DELETING: "yellow",
    Status.CANCELED: "yellow",
    Status.ERROR: "bold red",
}


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None  # None: computed (name: the widest name; error: the room left)


COLUMNS = (
    Column("mark", " ", 1),
    Column("name", "Name", None),
    Column("status", "Status", 11),
    Column("progress", "Progress", PROGRESS_WIDTH),
    Column("size", "Size", 10),
    Column("rate", "Rate · ETA", 17),
    Column("downloaded", "Downloaded", 10),  # the date; the detail pane has the time
    Column("error", "Error", None),
)
# Columns a header click may sort by (the others have no useful order).
SORTABLE = ("name", "status", "size", "progress")


def progress_cell(percent: float) -> Text:
    """A fixed-width bar with the percent beside it."""
    percent = min(100.0, max(0.0, percent))
    done = round(BAR_WIDTH * percent / 100)
    bar = Text("━" * done, style="green" if percent >= 100 else "cyan")
    bar.append("━" * (BAR_WIDTH - done), style="grey30")
    bar.append(f" {percent:3.0f}%")
    return bar


def shown_progress(ds: Dataset, job: Job | None) -> float:
    """The live job's progress while it transfers, else the stored one."""
    if job is not None and job.status == JobStatus.RUNNING and job.bytes_total:
        return job.progress
    return 100.0 if ds.status == Status.DOWNLOADED else ds.download_progress


def row_cells(ds: Dataset, job: Job | None, marked: bool) -> dict[str, Text]:
    """Every cell of a dataset's row; user strings are Text so they are never parsed as markup."""
    status = Text(ds.status.label, style=STATUS_STYLE[ds.status])
    if job is not None and job.status == JobStatus.RETRYING:
        status = Text("retrying", style="bold yellow")
    elif ds.moved_upstream:  # its Hub branch has a newer commit: `update` fetches it
        status.append(" ↑", style="bold yellow")
    speed = ""
    if job is not None and job.status == JobStatus.RUNNING and job.rate > 0:
        speed = humanize.rate(job.rate)
        if job.bytes_total:
            speed += " " + humanize.duration((job.bytes_total - job.bytes_done) / job.rate)
    total = ds.size if ds.size is not None else ds.expected_size
    if total is None and job is not None:
        total = job.bytes_total
    error = (ds.error or "").splitlines()[0] if ds.error else ""
    return {
        "mark": Text("●" if marked else " ", style="bold magenta"),
        "name": Text(ds.name),
        "status": status,
        "progress": progress_cell(shown_progress(ds, job)),
        "size": Text(humanize.size(total), justify="right"),
        "rate": Text(speed, justify="right"),
        "downloaded": Text(humanize.when(ds.downloaded_at_ms)[:10] if ds.downloaded_at_ms else ""),
        "error": Text(error, style="red"),
    }


def fit(cell: Text, width: int) -> Text:
    """The cell cut (with an ellipsis) or padded to exactly `width` cells, as it justifies."""
    room = width - cell.cell_len
    fitted = cell.copy()
    if room < 0:
        fitted.truncate(width, overflow="ellipsis")
    elif cell.justify == "right":
        fitted.pad_left(room)
    else:
        fitted.pad_right(room)
    return fitted


Row = tuple[Dataset, Job | None, bool]
Look = Literal["cursor", "even", "odd"]


class DatasetTable(ScrollView, can_focus=True):
    """Cells of every dataset are kept here (shown or filtered out); `show` picks which rows
    appear and in what order, `show_row` re-renders a row only when one of its cells changed.

    Line 0 of the widget is the header, fixed while the rows scroll under it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor_up", "Up", show=False),
        Binding("down", "cursor_down", "Down", show=False),
        Binding("pageup", "cursor_page_up", "Page up", show=False),
        Binding("pagedown", "cursor_page_down", "Page down", show=False),
        Binding("home", "cursor_first", "First", show=False),
        Binding("end", "cursor_last", "Last", show=False),
        Binding("enter", "select_cursor", "Select", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "dataset-table--header",
        "dataset-table--cursor",
        "dataset-table--even-row",
    }
    # The styles DataTable uses, so the dashboard looks as before; the gutter is kept for the
    # scrollbar so the columns' widths never depend on whether it shows.
    DEFAULT_CSS = """
    DatasetTable {
        background: $surface;
        color: $foreground;
        scrollbar-gutter: stable;
        &:focus {
            background-tint: $foreground 5%;
            & > .dataset-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .dataset-table--header {
                background-tint: $foreground 5%;
            }
        }
        &:dark > .dataset-table--even-row {
            background: $surface-darken-1 40%;
        }
        & > .dataset-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .dataset-table--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .dataset-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    class _TableMessage(Message):
        def __init__(self, table: DatasetTable) -> None:
            super().__init__()
            self.table = table

        @property
        def control(self) -> DatasetTable:
            return self.table

    class RowHighlighted(_TableMessage):
        """The cursor is on another dataset (None: no rows on display)."""

        def __init__(self, table: DatasetTable, name: str | None) -> None:
            super().__init__(table)
            self.name = name

    class RowSelected(_TableMessage):
        """Enter, or a click on the row under the cursor."""

        def __init__(self, table: DatasetTable, name: str) -> None:
            super().__init__(table)
            self.name = name

    class HeaderSelected(_TableMessage):
        """A click on a column's header."""

        def __init__(self, table: DatasetTable, column: str) -> None:
            super().__init__(table)
            self.column = column

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._cells: dict[str, dict[str, Text]] = {}
        self._versions: dict[str, int] = {}  # bumped when a row's cells change
        self._rows: list[str] = []  # the names on display, in order
        self._index: dict[str, int] = {}  # name -> position in _rows
        self._cursor = 0
        self._reported: str | None = None  # the last highlighted name told to the app
        self._sorted_by = "name"
        self._widths: dict[str, int] = {}
        self._strips: LRUCache[tuple[str, int, Look], Strip] = LRUCache(STRIP_CACHE_SIZE)
        self._header: Strip | None = None

    # -- reading -----------------------------------------------------------------------
    @property
    def highlighted(self) -> str | None:
        """The name of the dataset under the cursor."""
        return self._rows[self._cursor] if self._rows else None

    @property
    def row_count(self) -> int:
        return len(self._rows)

    def shown(self) -> list[str]:
        """The names of the rows on display, in order."""
        return list(self._rows)

    def cell(self, name: str, column: str) -> Text:
        """What a dataset's cell holds (shown or filtered out)."""
        return self._cells[name][column]

    def column_at(self, x: int) -> str | None:
        """The column under x (counted from the table's left edge, not the view's)."""
        left = 0
        for col in COLUMNS:
            left += self._widths.get(col.key, 0) + 2 * CELL_PADDING
            if x < left:
                return col.key
        return None

    # -- feeding -----------------------------------------------------------------------
    def set_data(self, rows: Iterable[Row]) -> None:
        """Replace every dataset's cells (nothing is redrawn until `show`)."""
        self._cells = {ds.name: row_cells(ds, job, marked) for ds, job, marked in rows}
        self._layout()

    def show(self, names: list[str], sorted_by: str) -> None:
        """Show these rows in this order, keeping the cursor's dataset highlighted (or the
        first row when a filter hid it). A list swap: the view renders only what is on screen."""
        keep = self.highlighted
        self._rows = names
        self._index = {name: i for i, name in enumerate(names)}
        if sorted_by != self._sorted_by:
            self._sorted_by = sorted_by
            self._header = None
        self._set_virtual_size()
        self.refresh()
        self._move_cursor(self._index.get(keep, 0) if keep is not None else 0)

    def show_row(self, ds: Dataset, job: Job | None, marked: bool) -> None:
        """Take a dataset's cells; redraw its line if it is on screen and any cell changed."""
        cells = row_cells(ds, job, marked)
        if self._cells.get(ds.name) == cells:
            return
        self._cells[ds.name] = cells
        self._versions[ds.name] = self._versions.get(ds.name, 0) + 1
        index = self._index.get(ds.name)
        if index is not None:
            self._refresh_row(index)

    # -- layout ------------------------------------------------------------------------
    def _layout(self) -> None:
        """Column widths: the name column fits the longest name, the error column the rest."""
        widest = max((cell_len(name) for name in self._cells), default=0)
        widths = {c.key: c.width for c in COLUMNS if c.width is not None}
        widths["name"] = max(len("Name"), min(NAME_WIDTH_MAX, widest))
        used = sum(widths.values()) + 2 * CELL_PADDING * len(COLUMNS)
        # The error column takes the room left, so a wide terminal shows more of it.
        widths["error"] = max(ERROR_WIDTH_MIN, self.scrollable_content_region.width - used)
        if widths != self._widths:
            self._widths = widths
            self._forget_strips()
            self._set_virtual_size()

    def _set_virtual_size(self) -> None:
        width = sum(self._widths.values()) + 2 * CELL_PADDING * len(COLUMNS)
        self.virtual_size = Size(width, len(self._rows) + HEADER_LINES)

    def _forget_strips(self) -> None:
        self._strips.clear()
        self._header = None
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self._layout()

    def notify_style_update(self) -> None:
        """Focus, blur and a theme change restyle every line."""
        super().notify_style_update()
        self._forget_strips()

    # -- rendering ---------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        if not self._widths:  # not laid out yet: the first resize does it and redraws
            return Strip.blank(width, self.rich_style)
        if y < HEADER_LINES:
            strip = self._header_strip()
        else:
            index = scroll_y + y - HEADER_LINES
            if index >= len(self._rows):
                return Strip.blank(width, self.rich_style)
            strip = self._row_strip(index)
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _header_strip(self) -> Strip:
        if self._header is None:
            labels = {
                c.key: Text(f"{c.label} ▼" if c.key == self._sorted_by else c.label)
                for c in COLUMNS
            }
            self._header = self._strip(
                labels, self.get_component_rich_style("dataset-table--header")
            )
        return self._header

    def _row_strip(self, index: int) -> Strip:
        name = self._rows[index]
        look: Look = "cursor" if index == self._cursor else "odd" if index % 2 else "even"
        key = (name, self._versions.get(name, 0), look)
        strip = self._strips.get(key)
        if strip is None:
            base = self.rich_style
            if look in LOOK_CLASS:
                base += self.get_component_rich_style(LOOK_CLASS[look])
            strip = self._strips[key] = self._strip(self._cells[name], base)
        return strip

    def _strip(self, cells: dict[str, Text], style: Style) -> Strip:
        """One line of cells over `style`; a cell's own colours win (the cursor row keeps the
        progress bar's colours)."""
        line = Text(end="", no_wrap=True)
        pad = " " * CELL_PADDING
        for col in COLUMNS:
            line.append(pad)
            line.append_text(fit(cells[col.key], self._widths[col.key]))
            line.append(pad)
        segments = Segment.apply_style(line.render(self.app.console), style)
        return Strip(segments, line.cell_len)

    def _refresh_row(self, index: int) -> None:
        """Redraw one row's line, when it is on screen."""
        top = round(self.scroll_y)
        if top <= index < top + self._page():
            self.refresh_line(index + HEADER_LINES)

    def _page(self) -> int:
        """How many rows fit under the header."""
        return max(1, self.scrollable_content_region.height - HEADER_LINES)

    # -- the cursor --------------------------------------------------------------------
    def _move_cursor(self, index: int) -> None:
        """Put the cursor on a row, scroll it into view, and tell the app what it is on."""
        index = max(0, min(index, len(self._rows) - 1))
        if index != self._cursor:
            self._refresh_row(self._cursor)
            self._cursor = index
            self._refresh_row(index)
        top = round(self.scroll_y)
        if index < top:
            self.scroll_to(y=index, animate=False)
        elif index >= top + self._page():
            self.scroll_to(y=index - self._page() + 1, animate=False)
        if self.highlighted != self._reported:
            self._reported = self.highlighted
            self.post_message(self.RowHighlighted(self, self.highlighted))

    def action_cursor_up(self) -> None:
        self._move_cursor(self._cursor - 1)

    def action_cursor_down(self) -> None:
        self._move_cursor(self._cursor + 1)

    def action_cursor_page_up(self) -> None:
        self._move_cursor(self._cursor - self._page())

    def action_cursor_page_down(self) -> None:
        self._move_cursor(self._cursor + self._page())

    def action_cursor_first(self) -> None:
        self._move_cursor(0)

    def action_cursor_last(self) -> None:
        self._move_cursor(len(self._rows) - 1)

    def action_select_cursor(self) -> None:
        if self.highlighted is not None:
            self.post_message(self.RowSelected(self, self.highlighted))

    def on_click(self, event: events.Click) -> None:
        """A header click sorts; a click on a row highlights it, a second click selects it."""
        offset = event.get_content_offset(self)
        if offset is None:
            return
        scroll_x, scroll_y = self.scroll_offset
        if offset.y < HEADER_LINES:
            column = self.column_at(offset.x + scroll_x)
            if column is not None:
                self.post_message(self.HeaderSelected(self, column))
            return
        index = scroll_y + offset.y - HEADER_LINES
        if index == self._cursor:
            self.action_select_cursor()
        elif index < len(self._rows):
            self._move_cursor(index)
