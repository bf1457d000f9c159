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
from textual.widgets import Input

from dsm import humanize
from dsm.domain.display import RowView, eta, is_paused, shown_progress
from dsm.domain.jobs import JobStatus
from dsm.domain.model import Status

PERCENT_WIDTH = 5  # a space and "100%"
BAR_MIN, BAR_MAX = 5, 40
GAP = 1  # spaces between cells
HEADER_LINES = 1
# Enough for a few screens of rows in each look; stale versions age out.
STRIP_CACHE_SIZE = 2048
LOOK_CLASS = {"cursor": "dataset-table--cursor", "even": "dataset-table--even-row"}
BAR_DONE, BAR_LEFT = "█", "░"  # done and remaining differ by glyph, not only by colour

# Styles by role. Colour carries meaning twice over: every role is also bold, reversed or a
# glyph, so with NO_COLOR (MONO) a status, an error and a mark stay readable.
COLOUR: dict[str, str] = {
    "mark": "bold magenta",
    "marked-name": "bold underline",
    "error-text": "bold red",
    "info": "yellow",
    "bar-done": "cyan",
    "bar-full": "green",
    "bar-left": "dim",
    Status.NOT_LOADED: "dim",
    Status.QUEUED: "cyan",
    Status.DOWNLOADING: "bold cyan",
    Status.VERIFYING: "bold blue",
    Status.DOWNLOADED: "green",
    Status.DELETING: "yellow",
    Status.CANCELED: "yellow",
    Status.ERROR: "bold reverse red",
    "retrying": "bold yellow",
    "paused": "italic yellow",
}
MONO: dict[str, str] = {
    **{key: "" for key in COLOUR},
    "mark": "bold",
    "marked-name": "bold underline",
    "error-text": "bold",
    "info": "italic",
    Status.DOWNLOADING: "bold",
    Status.VERIFYING: "bold",
    Status.ERROR: "bold reverse",
    "retrying": "bold",
    "paused": "italic",
}


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # the fixed width, or the least a flexible column gets
    justify: Literal["left", "right"] = "left"


COLUMNS = (
    Column("mark", " ", 1),
    Column("name", "Name", 12),
    Column("status", "Status", 11),
    Column("progress", "Progress", BAR_MIN + PERCENT_WIDTH),
    Column("size", "Size", 8, "right"),
    Column("rate", "Rate", 10, "right"),
    Column("eta", "ETA", 6, "right"),
    Column("info", "Error / Info", 14),
)
# When the minimum widths do not fit, these go first (their values are in the detail pane).
DROP_ORDER = ("size", "eta", "rate", "progress")
# A blank rate and ETA (a failed, retrying or queued row) lend their room to the info cell.
SPANNED = ("rate", "eta", "info")
# Columns a header click may sort by (the others have no useful order).
SORTABLE = ("name", "status", "size", "progress", "rate")
DESCENDING = ("size", "progress", "rate")  # sorted largest first unless reversed
INFO_WANTED = 60  # an error of up to 60 characters is shown whole when the room is there


def layout(width: int, widest_name: int) -> dict[str, int]:
    """Column widths for a view `width` cells wide: no horizontal scrolling, ever. Low-value
    columns drop out first; spare room goes in turns to the info cell, the name (never wider
    than the widest name) and the bar."""
    keys = [c.key for c in COLUMNS]
    mins = {c.key: c.width for c in COLUMNS}
    mins["name"] = max(len("Name ▲"), min(mins["name"], widest_name))

    def used(ks: list[str]) -> int:
        return sum(mins[k] for k in ks) + GAP * (len(ks) - 1)

    for key in DROP_ORDER:
        if used(keys) <= width:
            break
        keys.remove(key)
    widths = {k: mins[k] for k in keys}
    for key in ("info", "name"):  # still too narrow (40 columns): squeeze the flexible ones
        widths[key] -= min(widths[key] - 4, max(0, used(keys) - width))
        mins[key] = widths[key]
    spare = max(0, width - used(keys))
    # A failed row's error also takes the blank rate and ETA cells (see SPANNED).
    lent = sum(widths[k] + GAP for k in SPANNED[:-1] if k in widths)
    steps = (
        ("info", 24),
        ("name", min(widest_name, 24)),
        ("info", INFO_WANTED - lent),
        ("progress", 20),
        ("name", widest_name),
        ("info", INFO_WANTED),
        ("progress", BAR_MAX + PERCENT_WIDTH),
    )
    for key, most in steps:
        if key in widths:
            grow = min(spare, max(0, most - widths[key]))
            widths[key] += grow
            spare -= grow
    widths["info"] += spare  # the rest: long errors and retry texts
    return widths


def bar(percent: float, width: int, palette: dict[str, str]) -> Text:
    """A bar `width` cells wide and the percent beside it; full only at 100 % (cells and
    percent are rounded down)."""
    percent = min(100.0, max(0.0, percent))
    cells = max(0, width - PERCENT_WIDTH)
    done = int(cells * percent / 100)
    full = percent >= 100
    out = Text(BAR_DONE * done, style=palette["bar-full" if full else "bar-done"])
    out.append(BAR_LEFT * (cells - done), style=palette["bar-left"])
    out.append(f" {int(percent):3d}%")
    return out


def status_cell(row: RowView, palette: dict[str, str]) -> Text:
    job = row.job
    if job is not None and job.status == JobStatus.RETRYING:
        return Text("retrying", style=palette["retrying"])
    if is_paused(job):
        return Text("paused", style=palette["paused"])
    status = Text(row.ds.status.label, style=palette[row.ds.status])
    if row.ds.moved_upstream:  # its Hub branch has a newer commit: `update` fetches it
        status.append(" ↑", style=palette["info"])
    return status


def row_cells(row: RowView, palette: dict[str, str]) -> dict[str, Text]:
    """Every cell of a dataset's row but the bar (drawn at the column's width); user strings
    are Text so they are never parsed as markup."""
    ds, job = row.ds, row.job
    running = job is not None and job.status == JobStatus.RUNNING
    total = ds.size if ds.size is not None else ds.expected_size
    if total is None and job is not None:
        total = job.bytes_total
    left = job.bytes_total - job.bytes_done if job is not None and job.bytes_total else None
    seconds = eta(left, row.rate) if running else None
    failed = ds.status == Status.ERROR and row.info
    info_style = palette["error-text" if failed else "info"]
    return {
        "mark": Text("●" if row.marked else " ", style=palette["mark"]),
        "name": Text(ds.name, style=palette["marked-name"] if row.marked else ""),
        "status": status_cell(row, palette),
        "progress": Text(f"{shown_progress(ds, job):.3f}"),
        "size": Text(humanize.size(total), justify="right"),
        "rate": Text(humanize.rate(row.rate) if running and row.rate else "", justify="right"),
        "eta": Text(humanize.duration(seconds) if seconds is not None else "", justify="right"),
        "info": Text(row.info, style=info_style),
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


Look = Literal["cursor", "even", "odd"]


class LineView(ScrollView):
    """A Line API view that looks its own style up once, not on every line: `rich_style`
    walks every ancestor's styles, and asked two or three times a line it took ~30 ms of a
    40-line repaint. Kept until the styles change (focus, blur, theme)."""

    _base: Style | None = None

    @property
    def base_style(self) -> Style:
        if self._base is None:
            self._base = self.rich_style
        return self._base

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base = None


class DatasetTable(LineView, can_focus=True):
    """Cells of every dataset are kept here (shown or filtered out); `show` picks which rows
    appear and in what order, `show_row` re-renders a row only when one of its cells changed.

    Line 0 of the widget is the header, fixed while the rows scroll under it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "cursor_page_up", "Page up", show=False),
        Binding("pagedown", "cursor_page_down", "Page down", show=False),
        Binding("home,g", "cursor_first", "First", show=False),
        Binding("end,G", "cursor_last", "Last", show=False),
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
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
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
        self._sorted_by = ("name", False)
        self._widths: dict[str, int] = {}
        self._strips: LRUCache[tuple[str, int, Look], Strip] = LRUCache(STRIP_CACHE_SIZE)
        self._header: Strip | None = None

    @property
    def palette(self) -> dict[str, str]:
        """Colours, or with NO_COLOR bold, italic and reverse only."""
        return MONO if self.app.no_color else COLOUR

    # -- reading -----------------------------------------------------------------------
    @property
    def highlighted(self) -> str | None:
        """The name of the dataset under the cursor."""
        return self._rows[self._cursor] if self._rows else None

    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def widths(self) -> dict[str, int]:
        """The columns on display and their widths."""
        return dict(self._widths)

    def shown(self) -> list[str]:
        """The names of the rows on display, in order."""
        return list(self._rows)

    def cell(self, name: str, column: str) -> Text:
        """What a dataset's cell holds (shown or filtered out); the progress cell holds the
        bar at the column's width."""
        cells = self._cells[name]
        if column == "progress":
            return bar(
                float(cells["progress"].plain), self._widths.get("progress", 10), self.palette
            )
        return cells[column]

    def column_at(self, x: int) -> str | None:
        """The column under x (counted from the table's left edge)."""
        left = 0
        for key, width in self._widths.items():
            left += width + GAP
            if x < left:
                return key
        return None

    # -- feeding -----------------------------------------------------------------------
    def set_data(self, rows: Iterable[RowView]) -> None:
        """Replace every dataset's cells (nothing is redrawn until `show`)."""
        palette = self.palette
        self._cells = {row.ds.name: row_cells(row, palette) for row in rows}
        self._layout()

    def show(self, names: list[str], sorted_by: str, reverse: bool = False) -> None:
        """Show these rows in this order, keeping the cursor's dataset highlighted (or the
        first row when a filter hid it). A list swap: the view renders only what is on screen."""
        keep = self.highlighted
        self._rows = names
        self._index = {name: i for i, name in enumerate(names)}
        if (sorted_by, reverse) != self._sorted_by:
            self._sorted_by = (sorted_by, reverse)
            self._header = None
        self._set_virtual_size()
        self.refresh()
        self._move_cursor(self._index.get(keep, 0) if keep is not None else 0)

    def show_row(self, row: RowView) -> bool:
        """Take a dataset's cells; redraw its line if it is on screen and any cell changed.
        True when a cell changed."""
        name = row.ds.name
        cells = row_cells(row, self.palette)
        if self._cells.get(name) == cells:
            return False
        self._cells[name] = cells
        self._versions[name] = self._versions.get(name, 0) + 1
        index = self._index.get(name)
        if index is not None:
            self._refresh_row(index)
        return True

    # -- layout ------------------------------------------------------------------------
    def _layout(self) -> None:
        """Column widths for the view's width (see `layout`)."""
        widest = max((cell_len(name) for name in self._cells), default=0)
        widths = layout(self.scrollable_content_region.width, widest)
        if widths != self._widths:
            self._widths = widths
            self._forget_strips()
            self._set_virtual_size()

    def _set_virtual_size(self) -> None:
        self.virtual_size = Size(
            self.scrollable_content_region.width, len(self._rows) + HEADER_LINES
        )

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
        scroll_y = self.scroll_offset.y
        width = self.scrollable_content_region.width
        if not self._widths:  # not laid out yet: the first resize does it and redraws
            return Strip.blank(width, self.base_style)
        if y < HEADER_LINES:
            strip = self._header_strip()
        else:
            index = scroll_y + y - HEADER_LINES
            if index >= len(self._rows):
                return Strip.blank(width, self.base_style)
            strip = self._row_strip(index)
        return strip.crop_extend(0, width, self.base_style)

    def _header_strip(self) -> Strip:
        if self._header is None:
            key, reverse = self._sorted_by
            # Size, progress and rate sort largest first: their arrow points down.
            arrow = " ▼" if reverse != (key in DESCENDING) else " ▲"
            labels = {
                c.key: Text(c.label + (arrow if c.key == key else ""), justify=c.justify)
                for c in COLUMNS
            }
            self._header = self._strip(
                labels, self.get_component_rich_style("dataset-table--header"), span=False
            )
        return self._header

    def _row_strip(self, index: int) -> Strip:
        name = self._rows[index]
        look: Look = "cursor" if index == self._cursor else "odd" if index % 2 else "even"
        key = (name, self._versions.get(name, 0), look)
        strip = self._strips.get(key)
        if strip is None:
            base = self.base_style
            if look in LOOK_CLASS:
                base += self.get_component_rich_style(LOOK_CLASS[look])
            cells = dict(self._cells[name])
            if "progress" in self._widths:
                cells["progress"] = self.cell(name, "progress")
            strip = self._strips[key] = self._strip(cells, base, span=True)
        return strip

    def _strip(self, cells: dict[str, Text], style: Style, span: bool) -> Strip:
        """One line of cells over `style`; a cell's own colours win (the cursor row keeps the
        bar's colours). With `span`, blank rate and ETA cells lend their room to the info."""
        line = Text(end="", no_wrap=True)
        widths = dict(self._widths)
        if span and not any(cells[k].plain for k in SPANNED[:-1] if k in widths):
            lent = [k for k in SPANNED[:-1] if k in widths]
            widths["info"] += sum(widths.pop(k) + GAP for k in lent)
        for i, (key, width) in enumerate(widths.items()):
            if i:
                line.append(" " * GAP)
            line.append_text(fit(cells[key], width))
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

    def on_key(self, event: events.Key) -> None:
        """Drop a key that was queued here before a text box took the focus (`/` moves it
        the moment it arrives, so a key typed just before it in the same read may still be
        waiting): left to bubble it would act on the text box (enter submits, esc clears)."""
        if isinstance(self.screen.focused, Input):
            event.prevent_default()
            event.stop()

    def on_click(self, event: events.Click) -> None:
        """A header click sorts; a click on a row highlights it, a second click selects it."""
        offset = event.get_content_offset(self)
        if offset is None:
            return
        scroll_y = self.scroll_offset.y
        if offset.y < HEADER_LINES:
            column = self.column_at(offset.x)
            if column is not None:
                self.post_message(self.HeaderSelected(self, column))
            return
        index = scroll_y + offset.y - HEADER_LINES
        if index == self._cursor:
            self.action_select_cursor()
        elif index < len(self._rows):
            self._move_cursor(index)
