"""Modal screens (confirm, help) and the filter bar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.keys import REPLACED_KEYS, key_to_character
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: `y` confirms, `n` or escape cancels."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; max-width: 90%; height: auto; max-height: 80%;
        border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmScreen #question { text-style: bold; }
    ConfirmScreen #keys { margin-top: 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, question: str, details: str = "") -> None:
        super().__init__()
        self.question = question
        self.details = details

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(self.question), id="question")
            if self.details:
                yield Static(Text(self.details), id="details")
            yield Static("[b]y[/b] yes    [b]n[/b] / [b]esc[/b] no", id="keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class _Closable(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close", show=False),
    ]

    def action_close(self) -> None:
        self.dismiss(None)


class HelpScreen(_Closable):
    """Every key and what it does."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 72; max-width: 95%; height: auto; max-height: 90%;
        border: thick $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("question_mark", "close", "Close", show=False)]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, title="Keys", title_style="bold")
        table.add_column("key", style="bold cyan", no_wrap=True)
        table.add_column("what it does")
        for key, text in self.keys:
            table.add_row(Text(key), Text(text))
        with VerticalScroll():
            yield Static(table)
            yield Static(Text("esc, q or ? closes this screen", style="dim"))


class FilterBar(Input):
    """Filter as you type; escape clears the filter and hides the bar."""

    DEFAULT_CSS = "FilterBar { dock: bottom; display: none; } FilterBar.-open { display: block; }"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear", "Clear filter")]

    class Cleared(Message):
        """The user cleared the filter."""

        def __init__(self, bar: FilterBar) -> None:
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> FilterBar:
            return self.bar

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="filter: name, description or status", id=id)

    def check_consume_key(self, key: str, character: str | None) -> bool:
        """Keys the bar types are no one's bindings while it has the focus. Textual finds no
        character for the keys it renames (slash for solidus, minus, at): the dashboard's
        `/`, resolved before the bar sees it, would then open the filter again, never a `/`."""
        character = character or key_to_character(REPLACED_KEYS.get(key, key))
        return super().check_consume_key(key, character)

    def action_clear(self) -> None:
        self.value = ""
        self.post_message(self.Cleared(self))
