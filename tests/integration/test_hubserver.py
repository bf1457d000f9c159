"""The Hub stand-in (tests/hubserver.py) is faithful: huggingface_hub itself downloads from it.

Each test runs huggingface_hub in a fresh interpreter with HF_ENDPOINT pointing at the
stand-in (huggingface_hub reads its settings once, at import), so dsm's tests run against
the protocol huggingface_hub speaks, not a guess of it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import blob
from tests.hubserver import TOKEN, HubServer

REPO = "acme/tiny"
FILES = {
    "README.md": b"# tiny\nA test repo.\n",  # small: kept in git, served directly
    "data/test-00000-of-00001.parquet": blob(1, 300_000),  # LFS: 302 to the CDN
    "data/train-00000-of-00001.parquet": blob(2, 50_000),
}


def run_hf(hub: HubServer, tmp_path: Path, code: str, token: str | None = None) -> object:
    """Run `code` (which sets `out`) with huggingface_hub against the stand-in; its JSON."""
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "PATH": "/usr/bin:/bin",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if token:
        env["HF_TOKEN"] = token
    script = (
        "import json\nfrom huggingface_hub import *\nfrom huggingface_hub import errors\n"
        f"{code}\nprint(json.dumps(out))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_hf_hub_download_reads_a_git_file_and_an_lfs_file(hub: HubServer, tmp_path: Path) -> None:
    commit = hub.commit(REPO, FILES)
    out = run_hf(
        hub,
        tmp_path,
        f"""
a = hf_hub_download({REPO!r}, "README.md", repo_type="dataset")
b = hf_hub_download({REPO!r}, "data/test-00000-of-00001.parquet", repo_type="dataset")
meta = get_hf_file_metadata(hf_hub_url({REPO!r}, "data/test-00000-of-00001.parquet",
                                       repo_type="dataset"))
out = [a, b, meta.commit_hash, meta.etag, meta.size, meta.location]
""",
    )
    assert isinstance(out, list)
    readme, parquet, meta_commit, etag, size, location = out
    assert Path(readme).read_bytes() == FILES["README.md"]
    assert Path(parquet).read_bytes() == FILES["data/test-00000-of-00001.parquet"]
    # huggingface_hub keyed its cache by the commit it read from X-Repo-Commit ...
    assert f"/snapshots/{commit}/" in parquet
    # ... and took the LFS sha256 from X-Linked-Etag, the size from X-Linked-Size, and the
    # CDN (another host name) from Location. Its blob is named by that sha256, which it checks.
    sha = hashlib.sha256(FILES["data/test-00000-of-00001.parquet"]).hexdigest()
    assert (meta_commit, etag, size) == (commit, sha, 300_000)
    assert location.startswith(f"http://{hub.cdn_host}/cdn/{sha}")
    assert Path(parquet).resolve().name == sha
    cdn = hub.requests("/cdn/")
    assert cdn and all(s.host == hub.cdn_host for s in cdn)


def test_snapshot_download_lists_the_tree_at_the_resolved_commit(
    hub: HubServer, tmp_path: Path
) -> None:
    old = hub.commit(REPO, {"data/old.parquet": blob(3, 5000)})
    new = hub.commit(REPO, FILES)  # the branch moved on
    out = run_hf(
        hub,
        tmp_path,
        f"""
new = snapshot_download({REPO!r}, repo_type="dataset")
old = snapshot_download({REPO!r}, repo_type="dataset", revision={old!r})
api = HfApi()
tree = [f.path for f in api.list_repo_tree({REPO!r}, repo_type="dataset", recursive=True)]
out = [new, old, api.dataset_info({REPO!r}).sha, tree]
""",
    )
    assert isinstance(out, list)
    new_dir, old_dir, sha, tree = out
    assert sha == new
    for path, data in FILES.items():
        assert (Path(new_dir) / path).read_bytes() == data
    assert Path(new_dir).name == new and Path(old_dir).name == old
    assert sorted(p.name for p in Path(old_dir).rglob("*") if p.is_file()) == ["old.parquet"]
    assert set(FILES) <= set(tree) and "data" in tree
    assert hub.requests(f"/api/datasets/{REPO}/revision/main")
    assert hub.requests(f"/api/datasets/{REPO}/tree/{new}")


def test_gated_repo_needs_the_token_and_it_never_reaches_the_cdn(
    hub: HubServer, tmp_path: Path
) -> None:
    hub.commit("acme/gated", {"test.parquet": blob(4, 20_000)}, gated=True)
    code = """
try:
    hf_hub_download("acme/gated", "test.parquet", repo_type="dataset")
    out = "downloaded"
except errors.GatedRepoError:
    out = "gated"
"""
    assert run_hf(hub, tmp_path, code) == "gated"
    assert run_hf(hub, tmp_path / "with-token", code, token=TOKEN) == "downloaded"
    api = [s for s in hub.requests("/datasets/acme/gated/") if s.authorization]
    assert api and all(s.authorization == f"Bearer {TOKEN}" for s in api)
    assert hub.requests("/cdn/")
    assert all(s.authorization is None for s in hub.requests("/cdn/"))
