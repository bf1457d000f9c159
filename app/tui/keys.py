"""The dashboard's keys: one table feeds the bindings, the footer, the help screen and the
command palette, so they never disagree."""

from __future__ import annotations

from textual.binding import Binding, BindingType

from dsm.tui.commands import KeyAction

KEY_ACTIONS = (
    # First in the footer: at 80 columns the footer has room for a few keys only.
    KeyAction("question_mark", "?", "help", "Help", "show every key and what it does"),
    KeyAction(
        "q,ctrl+q,ctrl+c", "q / ^q / ^c", "quit_dashboard", "Quit", "quit (asks if jobs run)"
    ),
    KeyAction("d", "d", "download", "Download", "download the highlighted or marked datasets"),
    KeyAction(
        "slash",
        "/",
        "filter",
        "Filter",
        "filter on name, description, status (esc clears)",
        priority=True,  # keys typed right after `/` are filter text, never dashboard actions
    ),
    KeyAction("s", "s", "sort", "Sort", "sort by the next column: name, status, size, ..."),
    KeyAction("S", "S", "reverse_sort", "Reverse", "reverse the sort order", footer=False),
    KeyAction("l", "l", "job_log", "Log", "open the live job log (all jobs, newest first)"),
    KeyAction("f", "f", "force", "Force", "force a re-download (an update job)", footer=False),
    KeyAction("v", "v", "verify", "Verify", "re-hash the copy on disk (a verify job)", False),
    KeyAction("x", "x", "delete", "Delete", "delete the local files, after confirming", False),
    KeyAction("c", "c", "cancel", "Cancel", "cancel the running or waiting job", footer=False),
    KeyAction("C", "C", "cancel_all", "Cancel all", "cancel every job, after confirming", False),
    KeyAction("p", "p", "pause", "Pause", "pause the job (partial kept), or resume it", False),
    KeyAction("P", "P", "pause_all", "Pause all", "pause every job", footer=False),
    KeyAction("R", "R", "resume_all", "Resume all", "resume every paused job", footer=False),
    KeyAction("r", "r", "retry_failed", "Retry", "retry every failed dataset", footer=False),
    KeyAction("a", "a", "download_all", "All", "download every dataset not on disk", False),
    KeyAction(
        "space", "space", "mark", "Mark", "mark or unmark a row; d f v x c p act on marks", False
    ),
    KeyAction(
        "escape", "esc", "clear_marks", "Unmark", "clear every mark (none: the filter)", False
    ),
    KeyAction("y", "y", "copy_path", "Copy path", "copy the dataset's local path", False),
    KeyAction("enter", "enter", "toggle_detail", "Detail", "show or hide the detail pane", False),
)
# Keys the table handles itself; listed so help and the palette show them.
MOVES = (
    ("j / down, k / up", "move the cursor"),
    ("g / home, G / end", "first / last row"),
    ("pageup, pagedown", "a page up / down"),
    ("click a header", "sort by it; again: reverse"),
    ("ctrl+p", "command palette: every action by name"),
)
KEY_BINDINGS: list[BindingType] = [
    Binding(k.key, k.action, k.label, show=k.footer, priority=k.priority) for k in KEY_ACTIONS
]
ACTION_NAMES = frozenset(k.action for k in KEY_ACTIONS)
OVER_LOG = frozenset({"help", "job_log", "quit_dashboard"})  # the keys still on over the log
