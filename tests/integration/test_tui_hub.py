"""The dashboard and Hub sources: the offline title, a branch that moved on upstream (marked
in the table and explained in the detail pane with the commit on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsm.domain.model import Status
from dsm.tui.app import DashboardApp
from tests.conftest import CatalogFn, make_settings, open_repo
from tests.hubserver import HubServer, hf_url
from tests.tui_helpers import SIZE, cell, loaded, put_row, text_of, until

pytestmark = pytest.mark.anyio


async def test_offline_shows_in_the_title(home: Path, catalog: CatalogFn, tmp_path: Path) -> None:
    cat = catalog(alpha="http://127.0.0.1:9/never")
    settings = make_settings(home, cat, DSM_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    app = DashboardApp(settings, open_repo(settings))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert "OFFLINE" in app.sub_title
    online = make_settings(home, cat, HF_HOME=str(tmp_path / "hf"))
    app = DashboardApp(online, open_repo(online))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert "OFFLINE" not in app.sub_title


async def test_a_moved_branch_is_marked_once_per_run(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    old = hub.commit("acme/x", {"a.txt": b"one\n"})
    new = hub.commit("acme/x", {"a.txt": b"two\n"})
    path = home / "data" / "alpha"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"one\n")
    cat = catalog(alpha=hf_url("acme/x", "main", "a.txt"))
    settings = make_settings(home, cat, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf"))
    repo = open_repo(settings)
    stamp = {"size": 4, "file_mtime_ns": path.stat().st_mtime_ns, "downloaded": True}
    put_row(repo, "alpha", Status.DOWNLOADED, source_commit=old, **stamp)
    app = DashboardApp(settings, repo)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await until(pilot, lambda: cell(app, "alpha", "status").endswith("↑"))
        await pilot.press("enter")  # the detail pane names both commits
        body = "".join(text_of(app, "#detail-body").split())  # long hashes fold over lines
        assert f"upstreammovedtocommit{new}" in body and f"commit{old}" in body
    assert len(hub.requests("/api/datasets/acme/x/revision/main")) == 1
    assert not hub.requests("/datasets/acme/x/resolve/")  # only the revision was asked
