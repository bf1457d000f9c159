"""Helpers for the dashboard tests: build the app on a test home, wait on its state."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from textual import events
from textual.keys import _character_to_key
from textual.pilot import Pilot
from textual.widgets import Static

from dsm.domain.model import Dataset, Status
from dsm.repository import Repository
from dsm.tui.app import DashboardApp
from tests.conftest import make_settings, open_repo

SIZE = (120, 40)


def make_app(home: Path, catalog_path: Path) -> DashboardApp:
    settings = make_settings(home, catalog_path)
    return DashboardApp(settings, open_repo(settings))


async def until(pilot: Pilot[int], predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Let the app run until predicate() holds; fail the test at the deadline."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await pilot.pause(0.02)


async def loaded(pilot: Pilot[int]) -> DashboardApp:
    """Wait for the first store read and the engine; returns the app."""
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await until(pilot, lambda: app.table.row_count > 0 and app.engine_ready)
    return app


CONTROL_KEYS = {"\r": "enter", "\x1b": "escape"}


async def burst(pilot: Pilot[int], text: str, paste: str = "") -> None:
    """Type `text` (then paste `paste`) as one terminal read delivers it: every key queued
    before the app handles the first. `Pilot.press` waits for the app to idle after each
    key, so it never shows what a paste, a script or a fast typist does."""
    app = pilot.app
    for char in text:
        app.post_message(events.Key(CONTROL_KEYS.get(char) or _character_to_key(char), char))
    if paste:
        app.post_message(events.Paste(paste))
    await pilot.pause()


def cell(app: DashboardApp, name: str, column: str) -> str:
    return app.table.cell(name, column).plain


def text_of(app: DashboardApp, selector: str) -> str:
    """The plain text a Static shows."""
    console = Console(width=SIZE[0], record=True, file=io.StringIO())
    console.print(app.query_one(selector, Static).content)
    return console.export_text()


def messages(app: DashboardApp) -> list[str]:
    """The notifications raised so far (Textual keeps no public list of them)."""
    return app.notices


def put_row(repo: Repository, name: str, status: Status, **fields: object) -> None:
    """Write a row as if an engine had left it so (no transition check: test set-up)."""
    ds: Dataset = repo.dataset(name)
    ds.status = status
    for key, value in fields.items():
        setattr(ds, key, value)
    repo.save(ds)
