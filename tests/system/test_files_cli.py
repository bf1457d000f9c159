"""A dataset of several files (a catalogue `files` list) through the installed `dsm`: the
headless download, `show`, `list --json`, a bad list refused with exit 2, and the API."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CatalogFn, run_dsm, sha
from tests.httpserver import FileServer
from tests.integration.test_files import BODIES, entry, hub_formula, served
from tests.system.apiserver import ApiServer
from tests.system.test_library import call


def test_download_show_and_list_a_files_dataset(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog([entry(served(server))])
    run = run_dsm("--run-job", "download", "--dataset", "set", home=home, catalog_path=cat)
    assert run.returncode == 0, run.stderr
    folder = home / "data" / "set"
    for path, body in BODIES.items():
        assert sha((folder / path).read_bytes()) == sha(body)
    shown = run_dsm("show", "set", home=home, catalog_path=cat)
    assert shown.returncode == 0, shown.stderr
    pairs = [line.split(None, 1) for line in shown.stdout.splitlines()]
    fields = {p[0]: p[1] for p in pairs if len(p) == 2}
    assert fields["status"] == "downloaded" and fields["file_count"] == "3"
    assert fields["checksum"] == hub_formula(BODIES) and fields["served_by"] == "origin"
    assert (fields["files"], fields["manifest"], fields["mirrors"]) == ("3", "3", "-")
    assert f'"url": "{server.url("train.jsonl")}"' in shown.stdout  # an item a line
    page = run_dsm("list", "--json", home=home, catalog_path=cat)
    row = json.loads(page.stdout)["datasets"][0]
    assert (row["name"], row["file_count"], row["size"]) == (
        "set",
        3,
        sum(len(b) for b in BODIES.values()),
    )
    assert sorted(f["path"] for f in row["manifest"]) == sorted(BODIES)
    assert {f["url"] for f in row["manifest"]} == {f["url"] for f in row["files"]}
    info = call("[(d.url, d.file_count, d.served_by) for d in dsm.datasets()]", home, cat)
    assert info == {"value": [[f"3 files from {server.base}", 3, "origin"]]}
    again = run_dsm("--run-job", "verify", "--dataset", "set", home=home, catalog_path=cat)
    assert again.returncode == 0, again.stderr
    gone = run_dsm("--run-job", "delete", "--dataset", "set", home=home, catalog_path=cat)
    assert gone.returncode == 0, gone.stderr
    assert not folder.exists()


def test_a_bad_files_list_exits_2_naming_every_problem(home: Path, catalog: CatalogFn) -> None:
    good = {"url": "http://127.0.0.1:9/a", "path": "a", "expected_size": 1}
    listed = [
        {**good, "expected_sha256": "0" * 64},
        {**good, "url": "ftp://h/b", "path": "../b", "expected_sha256": "0" * 64},
        {**good, "path": "a/c", "expected_sha256": "0" * 64},
    ]
    cat = catalog([entry(listed, original_url="http://127.0.0.1:9/x")])
    result = run_dsm("list", home=home, catalog_path=cat)
    assert result.returncode == 2
    where = "entry 0 ('set'): field "
    for field in ("'original_url'", "'files[1].url'", "'files[1].path'", "'files[2].path'"):
        assert where + field in result.stderr, result.stderr
    assert not (home / "db.json").exists()


def test_the_api_shows_the_files_and_the_file_count(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog([entry(served(server))])
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0
    api = ApiServer(home, cat)
    try:
        body = api.client.get("/datasets/set").json()
    finally:
        api.stop()
    assert (body["file_count"], body["served_by"], body["status"]) == (3, "origin", "downloaded")
    assert len(body["files"]) == 3 and len(body["manifest"]) == 3
