"""Issue 18, point 9: a dashboard whose engine cannot start says so at once, with the cause,
and offers to quit (the engine is started in a worker whose errors do not end the app)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsm.widgets.screens import ConfirmScreen
from tests.conftest import CatalogFn
from tests.tui_helpers import SIZE, make_app, messages, until

pytestmark = pytest.mark.anyio


async def test_an_engine_that_fails_to_start_is_reported_and_quit_is_offered(
    home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", "ftp://127.0.0.1:9")  # no proxy httpx can use
    app = make_app(home, catalog(a="http://127.0.0.1:9/f"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        # The notification is a message of its own: it may land after the screen is pushed.
        await until(pilot, lambda: any("engine failed to start" in m for m in messages(app)))
        (said,) = [m for m in messages(app) if "engine failed to start" in m]
        assert "the proxy ftp://127.0.0.1:9 cannot be used" in said
        await pilot.press("y")
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 1
