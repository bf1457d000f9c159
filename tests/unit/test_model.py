"""The dataset entity: its fields, the status lifecycle, and how rows come back from the store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsm.api.schema import SCHEMAS
from dsm.domain.model import ACTIVE, AT_REST, TRANSITIONS, Dataset, Status
from dsm.domain.relpath import escape_problem
from dsm.errors import InvalidTransition
from dsm.repository import Repository
from dsm.store import Store, StoreCorrupt
from tests.conftest import CatalogFn, make_settings, open_repo

# The seed's column names, in JSON and in the store, plus the catalogue's optional fields.
SEED_COLUMNS = {
    "name",
    "description",
    "original_url",
    "local_path",
    "updated_at_ms",
    "downloaded_at_ms",
    "size",
    "checksum",
    "status",
    "error",
    "download_progress",
    "downloaded",
    "download_job_id",
}
CATALOGUE_FIELDS = {"expected_size", "expected_sha256", "extract", "mirrors", "files"}
# dsm's own additions, documented in the README.
EXTRA_FIELDS = {
    "file_mtime_ns",
    "outdated",
    "outdated_reason",
    "in_catalog",
    "confirmed",
    "unconfirmed_reason",
    "source_commit",
    "upstream_commit",
    "manifest",
    "served_by",
    "file_count",
    "unpacked_size",
}


def test_fields_are_the_seed_columns_plus_the_catalogue_ones() -> None:
    assert set(Dataset(name="x").to_dict()) == SEED_COLUMNS | CATALOGUE_FIELDS | EXTRA_FIELDS


def test_status_values() -> None:
    assert {s.value for s in Status} == {
        "not_loaded",
        "queued",
        "downloading",
        "verifying",
        "downloaded",
        "deleting",
        "canceled",
        "error",
    }
    assert Status.NOT_LOADED.label == "not loaded"
    assert set(Status) == ACTIVE | AT_REST and not ACTIVE & AT_REST


ALL_PAIRS = list(itertools.product(Status, Status))
ALLOWED = [(a, b) for a, b in ALL_PAIRS if a == b or b in TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a, b in ALL_PAIRS if not (a == b or b in TRANSITIONS[a])]


def test_the_table_forbids_what_the_lifecycle_forbids() -> None:
    """Spot checks that the one table says what the lifecycle means."""
    for bad in [
        (Status.NOT_LOADED, Status.DOWNLOADED),  # nothing becomes downloaded without a job
        (Status.NOT_LOADED, Status.DOWNLOADING),  # a download is queued first
        (Status.NOT_LOADED, Status.VERIFYING),
        (Status.ERROR, Status.DOWNLOADED),
        (Status.CANCELED, Status.DOWNLOADING),
        (Status.DOWNLOADED, Status.VERIFYING),
    ]:
        assert bad in FORBIDDEN, bad
    for good in [
        (Status.NOT_LOADED, Status.QUEUED),
        (Status.QUEUED, Status.DOWNLOADING),
        (Status.DOWNLOADING, Status.VERIFYING),
        (Status.VERIFYING, Status.DOWNLOADED),
        (Status.DOWNLOADING, Status.ERROR),
        (Status.DOWNLOADED, Status.DELETING),
        (Status.DELETING, Status.NOT_LOADED),
    ]:
        assert good in ALLOWED, good
    assert len(FORBIDDEN) >= 15


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=lambda s: s.value)
def test_allowed_transition(old: Status, new: Status) -> None:
    ds = Dataset(name="x", status=old)
    ds.set_status(new)
    assert ds.status is new


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=lambda s: s.value)
def test_invalid_transition_raises(old: Status, new: Status) -> None:
    ds = Dataset(name="x", status=old)
    with pytest.raises(InvalidTransition, match=f"dataset x: {old.value} -> {new.value}"):
        ds.set_status(new)
    assert ds.status is old


def test_invalid_transition_through_the_repository_writes_nothing(
    home: Path, catalog: CatalogFn
) -> None:
    repo = open_repo(make_settings(home, catalog(alpha="http://127.0.0.1:9/a")))
    db = home / "db.json"
    before = db.read_bytes()
    with pytest.raises(InvalidTransition):
        repo.change("alpha", Status.DOWNLOADED, downloaded=True, size=3)
    assert db.read_bytes() == before
    fresh = Repository(Store(db)).dataset("alpha")
    assert fresh.status is Status.NOT_LOADED and not fresh.downloaded and fresh.size is None
    # The same repository still works and still sees the stored row, not the half change.
    assert repo.dataset("alpha").status is Status.NOT_LOADED
    repo.change("alpha", Status.QUEUED)
    assert Repository(Store(db)).dataset("alpha").status is Status.QUEUED


# -- the stored form --------------------------------------------------------------------
json_text = st.text(st.characters(codec="utf-8"), max_size=30)
maybe_int = st.none() | st.integers(min_value=0, max_value=2**63)
datasets = st.builds(
    Dataset,
    name=st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
    description=json_text,
    original_url=json_text,
    # Any path inside the home (one leading out is a corrupt row: test_store.py)
    local_path=json_text.filter(lambda p: escape_problem(p) is None),
    expected_size=maybe_int,
    expected_sha256=st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    updated_at_ms=st.integers(min_value=0, max_value=2**53),
    downloaded_at_ms=maybe_int,
    size=maybe_int,
    checksum=st.none() | json_text,
    status=st.sampled_from(Status),
    error=st.none() | json_text,
    download_progress=st.floats(min_value=0, max_value=100),
    downloaded=st.booleans(),
    download_job_id=st.none() | st.uuids().map(str),
    file_mtime_ns=maybe_int,
    outdated=st.booleans(),
    in_catalog=st.booleans(),
    source_commit=st.none() | st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
    upstream_commit=st.none() | st.from_regex(r"[0-9a-f]{40}", fullmatch=True),
    manifest=st.none()
    | st.lists(
        st.fixed_dictionaries(
            {"path": json_text, "url": json_text, "size": st.integers(0, 2**53)},
            optional={"sha256": json_text, "mtime_ns": st.integers(0, 2**63)},
        ),
        max_size=3,
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(datasets, min_size=1, max_size=4, unique_by=lambda d: d.name))
def test_store_round_trip_keeps_every_field(tmp_path: Path, rows: list[Dataset]) -> None:
    db = tmp_path / "roundtrip.json"
    db.unlink(missing_ok=True)
    store = Store(db)
    with store.transaction():
        for ds in rows:
            store.put("datasets", ds.name, ds.to_dict())
    # A second Store reads the file itself, as another process would.
    stored = {d["name"]: d for d in Store(db).all("datasets")}
    assert set(stored) == {d.name for d in rows}
    for ds in rows:
        assert stored[ds.name] == ds.to_dict()
        back = Dataset.from_dict(stored[ds.name])
        assert back == ds
        assert back.status is ds.status
    # The file holds the seed's column names as keys, under the datasets table.
    on_disk = json.loads(db.read_bytes())
    assert set(on_disk) == {"datasets"}
    for doc in on_disk["datasets"].values():
        assert set(doc) == SEED_COLUMNS | CATALOGUE_FIELDS | EXTRA_FIELDS


def test_repository_save_round_trip(home: Path) -> None:
    repo = Repository(Store(home / "db.json"))
    ds = Dataset(
        name="full",
        description="all fields set",
        original_url="https://example.invalid/f",
        local_path="data/f",
        expected_size=12,
        expected_sha256="ab" * 32,
        downloaded_at_ms=1_700_000_000_000,
        size=12,
        checksum="ab" * 32,
        status=Status.DOWNLOADED,
        error=None,
        download_progress=100.0,
        downloaded=True,
        download_job_id="0b9c7c53-2d5e-4c3a-9a43-1f3f6f3d1c11",
        file_mtime_ns=123,
        outdated=True,
        in_catalog=False,
    )
    repo.save(ds)
    assert ds.updated_at_ms > 0
    assert Repository(Store(home / "db.json")).dataset("full") == ds


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"description": "no name"}, "without a string 'name'"),
        ({"name": 7}, "without a string 'name'"),
        ({"name": "a", "status": "finished"}, "dataset a: unknown status 'finished'"),
        ({"name": "a", "status": None}, "dataset a: unknown status None"),
        ({"name": "a", "size": "12"}, "dataset a: field 'size' is '12', expected an integer"),
        ({"name": "a", "size": True}, "field 'size' is True"),
        ({"name": "a", "downloaded": 1}, "field 'downloaded' is 1, expected true or false"),
        ({"name": "a", "download_progress": "50%"}, "field 'download_progress'"),
        ({"name": "a", "description": None}, "field 'description' is None"),
        ({"name": "a", "error": ["x"]}, "field 'error'"),
    ],
)
def test_malformed_row_is_reported(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Dataset.from_dict(row)


def test_malformed_row_through_the_repository_is_store_corrupt(home: Path) -> None:
    db = home / "db.json"
    db.write_text(json.dumps({"datasets": {"a": {"name": "a", "size": "big"}}}))
    with pytest.raises(StoreCorrupt, match=str(db)):
        Repository(Store(db)).datasets()
    with pytest.raises(StoreCorrupt, match="field 'size'"):
        Repository(Store(db)).dataset("a")


def test_rows_from_an_older_dsm_take_defaults() -> None:
    ds = Dataset.from_dict({"name": "old", "status": "downloaded", "unknown_key": 1})
    assert ds.status is Status.DOWNLOADED and ds.in_catalog and not ds.outdated
    assert ds.download_progress == 0.0
    # An integer progress is a JSON number like any other.
    assert Dataset.from_dict({"name": "p", "download_progress": 50}).download_progress == 50


def test_the_api_describes_the_archive_and_mirror_fields() -> None:
    props = SCHEMAS["Dataset"]["properties"]
    assert props["mirrors"] == {"type": "array", "items": {"type": "string"}}
    for name in ("file_count", "unpacked_size"):
        assert props[name] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["extract"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert props["files"] == {"type": "array", "items": {"type": "object"}}


def test_mirrors_are_copied_out_and_checked_in() -> None:
    ds = Dataset(name="x", mirrors=["http://a/x"])
    ds.to_dict()["mirrors"].append("http://b/x")
    assert ds.mirrors == ["http://a/x"]
    with pytest.raises(ValueError, match="field 'mirrors' must list strings"):
        Dataset.from_dict({"name": "x", "mirrors": [1]})


def test_files_are_copied_out_and_checked_in() -> None:
    ds = Dataset(name="x", files=[{"path": "a", "url": "http://a/a"}])
    ds.to_dict()["files"][0]["path"] = "b"
    assert ds.files[0]["path"] == "a"
    with pytest.raises(ValueError, match=r"dataset x: files\[0\] is 'a', expected an object"):
        Dataset.from_dict({"name": "x", "files": ["a"]})
