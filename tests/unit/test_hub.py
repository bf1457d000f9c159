"""Hub sources, pure parts: the hf:// form, what a glob selects, manifests, where the token
goes, and the Hub settings (HF_ENDPOINT, HF_TOKEN and the login file, the offline switches)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dsm.catalog.parse import parse_catalog
from dsm.config import load_settings
from dsm.domain.hub import (
    HubRef,
    ManifestFile,
    clashes,
    manifest_checksum,
    parse_hub_url,
    tree_url,
)
from dsm.errors import BadInput, CatalogError
from dsm.transfer.http import Digest
from dsm.transfer.hub import auth_headers

COMMIT = "7dce6050a7d6d172f3cc5c32aa97f52fa1a2e544"  # openai_humaneval's, from the catalogue


@pytest.mark.parametrize(
    ("url", "ref"),
    [
        (
            f"hf://datasets/openai/openai_humaneval@{COMMIT}/openai_humaneval/test.parquet",
            HubRef("openai/openai_humaneval", COMMIT, "openai_humaneval/test.parquet"),
        ),
        ("hf://datasets/a/b@main/data/*.parquet", HubRef("a/b", "main", "data/*.parquet")),
        ("hf://datasets/a/b@v1.0/", HubRef("a/b", "v1.0", "")),
        ("hf://datasets/a/b@main", HubRef("a/b", "main", "")),
    ],
)
def test_hf_urls_parse(url: str, ref: HubRef) -> None:
    assert parse_hub_url(url) == ref


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("hf://models/a/b@main/x", "only dataset repos"),
        ("hf://datasets/a/b/x.parquet", "must name a revision"),
        ("hf://datasets/a/b@/x", "must name a revision"),
        ("hf://datasets/a/@main/x", "bad repo name ''"),
        ("hf://datasets/a b/c@main/x", "bad repo org 'a b'"),
        ("hf://datasets/a/b@main/../x", "must be relative"),
        ("hf://datasets/a/b@main/x//y", "must be relative"),
        ("hf://datasets/a/b@main/**/*.parquet", r"'\*\*' is not supported"),
    ],
)
def test_bad_hf_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_hub_url(url)


@pytest.mark.parametrize(
    ("path", "root", "inside", "outside"),
    [
        ("data/test.parquet", "data", ["data/test.parquet"], ["data/test.parquet.bak"]),
        ("main", "", ["main/a.parquet", "main/x/b"], ["mainly/a", "other/main/a"]),
        (
            "*/test-*.parquet",
            "",
            ["algebra/test-0.parquet"],
            ["a/b/test-0.parquet", "test-0.parquet"],
        ),
        ("all/test-*", "all", ["all/test-0"], ["all/train-0", "other/test-0"]),
        ("*.csv", "", ["a.csv"], ["x/a.csv", "a.csv.gz"]),
    ],
)
def test_a_source_selects_its_file_folder_or_glob(
    path: str, root: str, inside: list[str], outside: list[str]
) -> None:
    ref = HubRef("a/b", "main", path)
    assert ref.listing_root == root
    assert all(ref.selects(p) for p in inside)
    assert not any(ref.selects(p) for p in outside)


def test_tree_and_revision_urls_quote_like_huggingface_hub() -> None:
    ref = HubRef("a/b", "refs/pr/1", "sub dir/x")
    assert tree_url("https://h", ref, COMMIT, "sub dir") == (
        f"https://h/api/datasets/a/b/tree/{COMMIT}/sub%20dir?recursive=true"
    )


def test_the_manifest_checksum_is_one_hash_over_the_sorted_files() -> None:
    a = ManifestFile("b/x", "u1", 3, sha256="11" * 32)
    b = ManifestFile("a/y", "u2", 4, git_blob="22" * 20, mtime_ns=5)
    text = f"a/y\tgit-blob:{'22' * 20}\nb/x\tsha256:{'11' * 32}\n"
    assert manifest_checksum([a, b]) == hashlib.sha256(text.encode()).hexdigest()
    assert manifest_checksum([b, a]) == manifest_checksum([a, b])
    assert ManifestFile.from_dict(b.to_dict()) == b


def test_the_git_blob_id_is_git_hash_object() -> None:
    digest = Digest(blob_size=6)
    digest.update(b"hello\n")
    # `git hash-object` of "hello\n", a value git users know.
    assert digest.fetched(6, (0, 0, 0, 0)).git_blob == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert Digest().fetched(0, (0, 0, 0, 0)).git_blob is None


@pytest.mark.parametrize(
    ("endpoint", "url", "sent"),
    [
        ("https://huggingface.co", "https://huggingface.co/api/datasets/a/b", True),
        ("https://huggingface.co", "https://huggingface.co:443/datasets/a/b/resolve/x/y", True),
        ("https://huggingface.co", "https://cdn-lfs.hf.co/repos/x", False),  # the CDN
        ("https://huggingface.co", "http://huggingface.co/api/x", False),  # clear text
        ("https://mirror.example", "https://huggingface.co/api/x", False),  # not the endpoint
        ("http://mirror.example", "http://mirror.example/api/x", False),  # clear text
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/x", True),  # loopback
        ("http://127.0.0.1:8080", "http://localhost:8080/cdn/x", False),  # another host
        ("http://127.0.0.1:8080", "http://127.0.0.1:9090/api/x", False),  # another port
    ],
)
def test_the_token_goes_to_the_endpoints_origin_only(endpoint: str, url: str, sent: bool) -> None:
    assert bool(auth_headers(endpoint, "hf_x", url)) is sent
    assert auth_headers(endpoint, None, url) == {}


def test_token_from_hf_token_else_the_login_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hf_from_file\n")
    base = {"HF_HOME": str(tmp_path)}
    assert load_settings(home=str(tmp_path), env=base).hf_token == "hf_from_file"
    with_env = {**base, "HF_TOKEN": "hf_env"}
    assert load_settings(home=str(tmp_path), env=with_env).hf_token == "hf_env"
    none = {"HF_HOME": str(tmp_path / "nowhere")}
    assert load_settings(home=str(tmp_path), env=none).hf_token is None


def test_hf_endpoint_and_offline_switches(tmp_path: Path) -> None:
    s = load_settings(home=str(tmp_path), env={"HF_ENDPOINT": "https://hf-mirror.example/"})
    assert s.hf_endpoint == "https://hf-mirror.example" and not s.offline
    assert load_settings(home=str(tmp_path), env={}).hf_endpoint == "https://huggingface.co"
    for switch in ("DSM_OFFLINE", "HF_HUB_OFFLINE"):
        assert load_settings(home=str(tmp_path), env={switch: "1"}).offline
    with pytest.raises(BadInput, match="HF_ENDPOINT='ftp://x'"):
        load_settings(home=str(tmp_path), env={"HF_ENDPOINT": "ftp://x"})
    with pytest.raises(BadInput, match="HF_HUB_OFFLINE='maybe'"):
        load_settings(home=str(tmp_path), env={"HF_HUB_OFFLINE": "maybe"})


def test_the_catalogue_names_every_bad_hf_entry(tmp_path: Path) -> None:
    rows = [
        {"name": "a", "original_url": "hf://datasets/x/y/z", "local_path": "a"},
        {
            "name": "b",
            "original_url": "hf://models/x/y@main/*.csv",
            "local_path": "b",
            "expected_sha256": "0" * 64,
        },
        {"name": "c", "original_url": f"hf://datasets/x/y@{COMMIT}/d/*.csv", "local_path": "c"},
    ]
    with pytest.raises(CatalogError) as err:
        parse_catalog(json.dumps({"datasets": rows}), tmp_path / "c.json", tmp_path)
    message = str(err.value)
    assert "entry 0 ('a'): field 'original_url'" in message and "must name a revision" in message
    assert "entry 1 ('b'): field 'original_url'" in message and "only dataset repos" in message
    assert "'c'" not in message


@pytest.mark.parametrize(
    ("paths", "want"),
    [
        (["a/b.json", "a/b.json"], [(1, "duplicate of", 0, False)]),
        (["a/B.json", "A/b.json"], [(1, "duplicate of", 0, True)]),
        (["a", "a/b/c.json"], [(1, "inside", 0, False)]),
        (["A", "a/b/c.json"], [(1, "inside", 0, True)]),
        (["a/b/c.json", "a/b"], [(1, "a folder holding", 0, False)]),
        (["a/b/c.json", "A/B"], [(1, "a folder holding", 0, True)]),
        (["ab/c.json", "a", "abc", "ab.json"], []),  # a name that begins another's: no folder
        (["caf\u00e9.json", "CAFE\u0301.json"], [(1, "duplicate of", 0, True)]),  # NFC, NFD
    ],
)
def test_clashes_compares_paths_as_a_case_insensitive_file_system_does(
    paths: list[str], want: list[tuple[int, str, int, bool]]
) -> None:
    found = [(c.index, c.how, c.other, c.by_case) for c in clashes(enumerate(paths))]
    assert found == want
