"""Start-up registration is skipped when the very same catalogue text was registered last."""

from __future__ import annotations

import json
from pathlib import Path

from dsm.catalog.sync import sync_catalog
from dsm.repository import Repository
from dsm.store import Store
from tests.conftest import CatalogFn


def test_unchanged_catalogue_is_not_parsed_again(home: Path, catalog: CatalogFn) -> None:
    cat = catalog(a="http://127.0.0.1:9/a", b="http://127.0.0.1:9/b")
    repo = Repository(Store(home / "db.json"))
    assert sync_catalog(repo, cat, home) == 2
    before = (home / "db.json").stat().st_mtime_ns
    assert sync_catalog(repo, cat, home) == 0
    assert (home / "db.json").stat().st_mtime_ns == before  # nothing written

    # Proof that the second call skipped registration: a row edited behind its back stays.
    repo.change("a", description="edited")
    assert sync_catalog(repo, cat, home) == 0
    assert repo.dataset("a").description == "edited"

    # Any change to the text (even whitespace) registers again, and heals the row.
    cat.write_text(cat.read_text() + "\n")
    assert sync_catalog(repo, cat, home) == 1
    assert repo.dataset("a").description == "test a"


def test_another_catalogue_file_registers(home: Path, tmp_path: Path, catalog: CatalogFn) -> None:
    cat = catalog(a="http://127.0.0.1:9/a")
    repo = Repository(Store(home / "db.json"))
    sync_catalog(repo, cat, home)
    other = tmp_path / "other.json"
    other.write_text(cat.read_text())
    repo.change("a", description="edited")
    sync_catalog(repo, other, home)  # same text, other path: registered again
    assert repo.dataset("a").description == "test a"
    stamp = json.loads((home / "db.json").read_text())["meta"]["catalog"]
    assert stamp["path"] == str(other)
