"""The dataset table: one row per dataset keyed by its name, updated cell by cell."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

from app import humanize
from app.jobs import Job, JobStatus
from app.model import Dataset, Status

BAR_WIDTH = 10
PROGRESS_WIDTH = BAR_WIDTH + 5  # the bar, a space and "100%"
ERROR_WIDTH_MIN = 10
NAME_WIDTH_MAX = 20

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
CELL_PADDING = 1  # DataTable's default, on each side of every cell
SCROLLBAR = 2
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
        "name": Text(ds.name, overflow="ellipsis", no_wrap=True),
        "status": status,
        "progress": progress_cell(shown_progress(ds, job)),
        "size": Text(humanize.size(total), justify="right"),
        "rate": Text(speed, justify="right"),
        "downloaded": Text(humanize.when(ds.downloaded_at_ms)[:10] if ds.downloaded_at_ms else ""),
        "error": Text(error, style="red", overflow="ellipsis", no_wrap=True),
    }


Row = tuple[Dataset, Job | None, bool]


class DatasetTable(DataTable[Text]):
    """Cells of every dataset are kept here (shown or filtered out); `show` picks which rows
    appear and in what order, `show_row` touches only the cells that changed."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(
            id=id,
            cursor_type="row",
            zebra_stripes=True,
            # Without it the cursor row's colours flatten the progress bar.
            cursor_foreground_priority="renderable",
        )
        self._cells: dict[str, dict[str, Text]] = {}
        self._sorted_by = "name"
        self._width = 0

    @property
    def highlighted(self) -> str | None:
        """The name of the dataset under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def shown(self) -> list[str]:
        """The names of the rows on display, in order."""
        return [str(row.key.value) for row in self.ordered_rows]

    def set_data(self, rows: Iterable[Row]) -> None:
        """Replace every dataset's cells (nothing is redrawn until `show`)."""
        self._cells = {ds.name: row_cells(ds, job, marked) for ds, job, marked in rows}

    def show(self, names: list[str], sorted_by: str) -> None:
        """Show these rows in this order, keeping the cursor's dataset highlighted. Only a new
        set of rows (a filter) rebuilds the table; a new order just sorts it."""
        if sorted_by != self._sorted_by:
            self._sorted_by = sorted_by
            for col in self.columns.values():
                col.label = self._label(str(col.key.value))
        if set(names) == set(self.shown()) and self.columns:
            keep = self.highlighted
            position = {name: i for i, name in enumerate(names)}
            self.sort("name", key=lambda cell: position[cell.plain])
            self._keep_cursor(keep)
        else:
            self._fill(names)

    def _label(self, key: str) -> Text:
        label = next(c.label for c in COLUMNS if c.key == key)
        return Text(f"{label} ▼" if key == self._sorted_by else label)

    def _keep_cursor(self, name: str | None) -> None:
        if name is not None and name in self._row_locations:
            self.move_cursor(row=self.get_row_index(name), animate=False)

    def _fill(self, names: list[str]) -> None:
        keep = self.highlighted
        self.clear(columns=True)
        widths = {"name": min(NAME_WIDTH_MAX, max((len(n) for n in self._cells), default=4))}
        used = sum((c.width or widths[c.key]) + 2 * CELL_PADDING for c in COLUMNS[:-1])
        # The error column takes the room left, so a wide terminal shows more of it.
        widths["error"] = max(ERROR_WIDTH_MIN, self.size.width - used - SCROLLBAR - 2)
        for col in COLUMNS:
            self.add_column(self._label(col.key), key=col.key, width=col.width or widths[col.key])
        for name in names:
            row = self._cells[name]
            self.add_row(*(row[c.key] for c in COLUMNS), key=name)
        self._keep_cursor(keep)

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        # Every column has a fixed width and every row one line, so DataTable's measuring of
        # each new cell (seconds at 10,000 rows) would change nothing: skip it, keep the rest.
        super()._update_dimensions(())

    def on_resize(self, event: events.Resize) -> None:
        """Give the error column the new room: same rows, same order."""
        if event.size.width != self._width:
            self._width = event.size.width
            self._fill(self.shown())

    def show_row(self, ds: Dataset, job: Job | None, marked: bool) -> None:
        """Update the cells of one dataset that changed (on screen if its row is shown)."""
        old = self._cells.setdefault(ds.name, {})
        shown = ds.name in self._row_locations
        for key, cell in row_cells(ds, job, marked).items():
            if old.get(key) != cell:
                old[key] = cell
                if shown:
                    self.update_cell(ds.name, key, cell)
