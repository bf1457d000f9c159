"""Hub sources (`hf://datasets/...`) against the Hub stand-in: resolving to a commit, single
and multi-file datasets, the Hub's hashes as the expected ones, the token's reach, gated
repos, offline mode, a branch that moves on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import dsm
import dsm.transfer.hub
from dsm.domain.events import EventKind
from dsm.domain.hub import ManifestFile, manifest_checksum
from dsm.domain.jobs import JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine import files
from dsm.engine.hubjob import refresh_upstream
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.enginehelp import run_jobs, setup
from tests.httpserver import FileServer
from tests.hubserver import TOKEN, HubServer, git_blob, hf_url
from tests.system.apiserver import ApiServer

pytestmark = pytest.mark.anyio

REPO = "acme/bench"
FILES = {
    "README.md": b"# bench\n",
    "data/test-00000-of-00002.parquet": blob(10, 200_000),
    "data/test-00001-of-00002.parquet": blob(11, 150_000),
    "data/train-00000-of-00001.parquet": blob(12, 90_000),
    "extra/notes.txt": b"small file kept in git\n",
}


def entry(name: str, url: str, local_path: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "original_url": url, "local_path": local_path, **more}


def env_for(hub: HubServer, tmp_path: Path, **more: str) -> dict[str, str]:
    """The Hub stand-in as HF_ENDPOINT; an empty HF_HOME, so no token unless a test gives one."""
    return {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), **more}


async def test_one_lfs_file_is_fetched_at_the_resolved_commit_from_the_cdn(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    commit = hub.commit(REPO, FILES)
    path = "data/test-00000-of-00002.parquet"
    cat = catalog([entry("one", hf_url(REPO, "main", path), "data/one.parquet")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "one")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    ds = run.dataset("one")
    assert (home / "data/one.parquet").read_bytes() == FILES[path]
    assert (ds.source_commit, ds.checksum, ds.size) == (commit, sha(FILES[path]), 200_000)
    # The branch was asked once; the bytes were read at the commit, never at `main`.
    assert hub.requests("/api/")[0].path == f"/api/datasets/{REPO}/revision/main"
    resolves = hub.requests(f"/datasets/{REPO}/resolve/")
    assert resolves and all(f"/resolve/{commit}/" in s.path for s in resolves)
    assert [s.host for s in hub.requests("/cdn/")] == [hub.cdn_host]


async def test_a_glob_makes_a_multi_file_dataset_under_its_folder(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    commit = hub.commit(REPO, FILES)
    hub.page_size = 2  # the tree listing comes in pages linked by `Link: rel="next"`
    cat = catalog([entry("split", hf_url(REPO, commit, "data/test-*.parquet"), "sets/split")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "split")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    wanted = [p for p in FILES if p.startswith("data/test-")]
    folder = home / "sets/split"
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert on_disk == wanted  # the repo paths below the folder, nothing else
    for p in wanted:
        assert (folder / p).read_bytes() == FILES[p]
    ds = run.dataset("split")
    assert ds.size == sum(len(FILES[p]) for p in wanted) == run.job.bytes_done
    listing = files.manifest_of(ds)
    assert listing is not None and [f.path for f in listing] == wanted
    assert [f.sha256 for f in listing] == [sha(FILES[p]) for p in wanted]
    assert ds.checksum == manifest_checksum(listing)
    assert not (home / "sets/split.part").exists()
    # A pinned commit needs no revision call; the listing was read page by page.
    assert not hub.requests(f"/api/datasets/{REPO}/revision/")
    assert len(hub.requests(f"/api/datasets/{REPO}/tree/{commit}/data")) == 2
    # verify covers every file; a changed byte in one fails it, naming the file.
    assert (await run_jobs(settings, repo, JobType.VERIFY, "split")).job.status == (
        JobStatus.COMPLETED
    )
    victim = folder / wanted[1]
    victim.write_bytes(b"x" + FILES[wanted[1]][1:])
    bad = await run_jobs(settings, repo, JobType.VERIFY, "split")
    assert bad.job.status == JobStatus.FAILED
    assert wanted[1] in (bad.job.error or "") and "checksum mismatch" in (bad.job.error or "")
    # The catalogue may pin the whole set: its expected sha256 is the manifest checksum.
    pinned = catalog(
        [
            entry(
                "split",
                hf_url(REPO, commit, "data/test-*.parquet"),
                "sets/split",
                expected_sha256="0" * 64,
            )
        ]
    )
    settings, repo = setup(home, pinned, **env_for(hub, tmp_path))
    fetches = len(hub.requests("/cdn/"))
    other = await run_jobs(settings, repo, JobType.DOWNLOAD, "split", force=True)
    assert other.job.status == JobStatus.FAILED
    assert f"expected sha256 {'0' * 64}, got {ds.checksum}" in (other.job.error or "")
    assert len(hub.requests("/cdn/")) == fetches  # refused from the listing alone
    # delete removes the whole folder.
    gone = await run_jobs(settings, repo, JobType.DELETE, "split")
    assert gone.job.status == JobStatus.COMPLETED and not folder.exists()
    assert gone.dataset("split").manifest is None


async def test_a_directory_keeps_git_and_lfs_files_checked_by_their_own_hash(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    commit = hub.commit(REPO, FILES)
    cat = catalog([entry("all", hf_url(REPO, commit, "extra"), "sets/all")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "all")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    listing = files.manifest_of(run.dataset("all"))
    note = FILES["extra/notes.txt"]
    assert listing == [
        ManifestFile(
            "extra/notes.txt",
            f"{hub.endpoint}/datasets/{REPO}/resolve/{commit}/extra/notes.txt",
            len(note),
            git_blob=git_blob(note),
            mtime_ns=(home / "sets/all/extra/notes.txt").stat().st_mtime_ns,
        )
    ]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("extra/notes.txt", "expected git blob"),  # a git file: its blob id
        ("data/train-00000-of-00001.parquet", "expected sha256"),  # LFS: its sha256
    ],
)
async def test_bytes_that_differ_from_the_hubs_hash_are_rejected(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path, path: str, problem: str
) -> None:
    hub.commit(REPO, FILES)
    hub.broken.add(path)
    cat = catalog([entry("bad", hf_url(REPO, "main", path), "data/bad")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "bad")
    assert run.job.status == JobStatus.FAILED
    assert "checksum mismatch" in (run.job.error or "") and problem in (run.job.error or "")
    assert not (home / "data/bad").exists() and not (home / "data/bad.part").exists()


async def test_gated_repo_without_a_token_fails_at_once_saying_how_to_log_in(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    hub.commit("acme/gated", {"t.parquet": blob(5, 30_000)}, gated=True)
    cat = catalog([entry("g", hf_url("acme/gated", "main", "t.parquet"), "data/g")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "g")
    assert run.job.status == JobStatus.FAILED
    error = run.job.error or ""
    assert "acme/gated is gated or private" in error and "no token" in error
    assert "hf auth login" in error and "HF_TOKEN" in error
    assert run.job.attempts == 1 and not run.kinds(EventKind.RETRYING)
    assert len(hub.requests("/api/")) == 1
    wrong = await run_jobs(settings, repo, JobType.DOWNLOAD, "g", hf_token="hf_wrong")
    assert "token was refused" in (wrong.job.error or "")


@pytest.mark.parametrize("how", ["HF_TOKEN", "token file"])
async def test_the_token_reaches_the_endpoint_and_never_the_cdn(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path, how: str
) -> None:
    data = blob(6, 30_000)
    hub.commit("acme/gated", {"t.parquet": data, "small.txt": b"hi\n"}, gated=True)
    cat = catalog([entry("g", hf_url("acme/gated", "main", "*"), "data/g")])
    env = env_for(hub, tmp_path)
    if how == "HF_TOKEN":
        env["HF_TOKEN"] = TOKEN
    else:  # what `hf auth login` writes
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf/token").write_text(TOKEN + "\n")
    settings, repo = setup(home, cat, **env)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "g")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data/g/t.parquet").read_bytes() == data
    endpoint = [s for s in hub.seen if not s.path.startswith("/cdn/")]
    assert endpoint and all(s.authorization == f"Bearer {TOKEN}" for s in endpoint)
    cdn = hub.requests("/cdn/")
    assert cdn and all(s.authorization is None for s in cdn)


@pytest.mark.parametrize("switch", ["DSM_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_makes_no_request_skips_verified_and_fails_missing(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path, switch: str
) -> None:
    hub.commit(REPO, FILES)
    cat = catalog(
        [
            entry("have", hf_url(REPO, "main", "extra/notes.txt"), "data/have.txt"),
            entry("want", hf_url(REPO, "main", "README.md"), "data/want.md"),
        ]
    )
    env = env_for(hub, tmp_path)
    first = run_dsm(
        "--run-job", "download", "--dataset", "have", home=home, catalog_path=cat, env=env
    )
    assert first.returncode == 0, first.stderr
    before = len(hub.seen)
    off = {**env, switch: "1"}
    skip = run_dsm(
        "--run-job", "download", "--dataset", "have", home=home, catalog_path=cat, env=off
    )
    assert skip.returncode == 0 and "skipped" in skip.stderr
    miss = run_dsm(
        "--run-job", "download", "--dataset", "want", home=home, catalog_path=cat, env=off
    )
    assert miss.returncode == 1 and "offline" in miss.stderr
    listed = run_dsm("list", home=home, catalog_path=cat, env=off)
    assert listed.returncode == 0
    assert len(hub.seen) == before  # not one request


async def test_a_moved_branch_is_marked_and_update_keeps_the_old_copy_until_verified(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    path = "data/train-00000-of-00001.parquet"
    old = hub.commit(REPO, FILES)
    cat = catalog([entry("m", hf_url(REPO, "main", "data/train-*"), "sets/m")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    assert (await run_jobs(settings, repo, JobType.DOWNLOAD, "m")).job.status == (
        JobStatus.COMPLETED
    )
    assert refresh_upstream(settings, repo) == 0 and not repo.dataset("m").moved_upstream
    new_bytes = blob(99, 120_000)
    new = hub.commit(REPO, {**FILES, path: new_bytes})
    assert refresh_upstream(settings, repo) == 1
    ds = repo.dataset("m")
    assert ds.moved_upstream and (ds.source_commit, ds.upstream_commit) == (old, new)
    # A download of a verified copy does not follow the branch; an update does. A new
    # commit whose bytes fail the check is not installed: the old copy stays, verified.
    skip = await run_jobs(settings, repo, JobType.DOWNLOAD, "m")
    assert skip.job.status == JobStatus.SKIPPED
    hub.broken.add(path)
    bad = await run_jobs(settings, repo, JobType.UPDATE, "m")
    assert bad.job.status == JobStatus.FAILED and "checksum mismatch" in (bad.job.error or "")
    assert (home / "sets/m" / path).read_bytes() == FILES[path]
    ds = repo.dataset("m")
    assert ds.source_commit == old and files.still_verified(home, ds)
    assert ds.status == Status.DOWNLOADED
    hub.broken.clear()
    good = await run_jobs(settings, repo, JobType.UPDATE, "m")
    assert good.job.status == JobStatus.COMPLETED, good.job.error
    assert (home / "sets/m" / path).read_bytes() == new_bytes
    ds = repo.dataset("m")
    assert (ds.source_commit, ds.moved_upstream) == (new, False)
    again = await run_jobs(settings, repo, JobType.UPDATE, "m")
    assert again.job.status == JobStatus.SKIPPED and new in (again.job.error or "")


def test_show_and_list_name_the_commit_and_the_move(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    old = hub.commit(REPO, FILES)
    cat = catalog([entry("s", hf_url(REPO, "main", "README.md"), "data/s.md")])
    env = env_for(hub, tmp_path)
    got = run_dsm("--run-job", "download", "--dataset", "s", home=home, catalog_path=cat, env=env)
    assert got.returncode == 0, got.stderr
    shown = json.loads(run_dsm("show", "s", "--json", home=home, catalog_path=cat, env=env).stdout)
    assert shown["source_commit"] == old
    api = ApiServer(home, cat, **env)
    try:
        assert api.client.get("/datasets/s").json()["source_commit"] == old
    finally:
        api.stop()
    info = dsm.datasets(home=home, catalog=cat)
    assert [(i.name, i.commit) for i in info] == [("s", old)]
    listed = run_dsm("list", home=home, catalog_path=cat, env=env).stdout
    assert "upstream" not in listed
    new = hub.commit(REPO, {**FILES, "README.md": b"# bench v2\n"})
    listed = run_dsm("list", home=home, catalog_path=cat, env=env).stdout
    assert f"(upstream moved: {old[:8]} -> {new[:8]})" in listed
    revision_calls = len(hub.requests(f"/api/datasets/{REPO}/revision/"))
    off = run_dsm("list", home=home, catalog_path=cat, env={**env, "DSM_OFFLINE": "1"}).stdout
    assert "upstream moved" in off  # the last answer is kept; offline asks nothing
    assert len(hub.requests(f"/api/datasets/{REPO}/revision/")) == revision_calls


async def test_a_failed_multi_file_download_resumes_keeping_the_files_it_verified(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    commit = hub.commit(REPO, FILES)
    first, second = "data/test-00000-of-00002.parquet", "data/test-00001-of-00002.parquet"
    hub.broken.add(second)
    cat = catalog([entry("r", hf_url(REPO, commit, "data/test-*"), "sets/r")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    bad = await run_jobs(settings, repo, JobType.DOWNLOAD, "r")
    assert bad.job.status == JobStatus.FAILED and second in (bad.job.error or "")
    assert (home / "sets/r.part" / first).read_bytes() == FILES[first]  # verified, kept
    assert not (home / "sets/r").exists()
    assert bad.dataset("r").status == Status.ERROR
    hub.broken.clear()
    before = len(hub.requests("/cdn/"))
    good = await run_jobs(settings, repo, JobType.DOWNLOAD, "r")
    assert good.job.status == JobStatus.COMPLETED, good.job.error
    assert len(hub.requests("/cdn/")) == before + 1  # only the file that failed
    assert (home / "sets/r" / second).read_bytes() == FILES[second]
    assert not (home / "sets/r.part").exists()


def test_an_unreachable_hub_leaves_the_upstream_hint_alone(
    home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    commit = "a" * 40
    cat = catalog([entry("u", hf_url("acme/x", "main", "a.txt"), "data/u")])
    settings, repo = setup(
        home, cat, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf")
    )
    repo.change("u", None, downloaded=True, source_commit=commit, upstream_commit=commit)
    assert refresh_upstream(settings, repo) == 0  # the connection is refused: no answer
    assert repo.dataset("u").upstream_commit == commit


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"[" * 100_000, "that is not JSON"),  # json's recursion limit
        (b"{" + b" " * (70 << 20) + b"}", "more than 64 MiB"),  # kept in memory whole
    ],
    ids=["nested-too-deeply", "too-large"],
)
def test_a_hub_answer_that_is_no_usable_json_fails_the_job_clearly(
    server: FileServer, home: Path, catalog: CatalogFn, body: bytes, said: str
) -> None:
    """A Hub (or a proxy posing as one) answering its API with JSON Python cannot hold: the
    job fails naming it, no internal error, no unbounded read into memory."""
    server.add("api/datasets/org/set/revision/main", body, content_type="application/json")
    cat = catalog([entry("set", hf_url("org/set", "main", "a.json"), "data/a.json")])
    run = run_dsm(
        "--run-job", "download", "--all", home=home, catalog_path=cat, HF_ENDPOINT=server.base
    )
    assert run.returncode == 1, run.stderr
    assert said in run.stderr and "internal error" not in run.stderr


def posing_hub(server: FileServer, pages: list[list[str]], loop: bool = False) -> str:
    """`server` as a Hub whose tree listing of org/set comes in `pages` (of file paths, one
    byte each), each linking to the next; `loop`: the last links back to the first. Returns
    the tree's first URL."""
    commit = hashlib.sha1(b"posing hub").hexdigest()
    sha = json.dumps({"sha": commit}).encode()
    server.add("api/datasets/org/set/revision/main", sha, content_type="application/json")
    urls = [f"api/datasets/org/set/tree/{commit}?recursive=true"]
    urls += [f"{urls[0]}&cursor={n}" for n in range(1, len(pages))]
    for n, paths in enumerate(pages):
        entries = [{"type": "file", "path": p, "size": 1, "oid": git_blob(b"x")} for p in paths]
        server.add(urls[n], json.dumps(entries).encode(), content_type="application/json")
        after = (
            urls[0] if loop and n == len(pages) - 1 else urls[n + 1] if n + 1 < len(pages) else None
        )
        if after is not None:
            server.always(urls[n], headers={"Link": f'<{server.url(after)}>; rel="next"'})
    for paths in pages:
        for p in paths:
            server.add(f"datasets/org/set/resolve/{commit}/{p}", b"x")
    return server.url(urls[0])


@pytest.mark.parametrize(
    ("pages", "loop", "said"),
    [
        ([["a.json"]], True, "loops ("),
        ([["a.json"], ["b.json"]], True, "loops ("),
        ([["a.json"], ["b.json"], ["c.json"], ["d.json"]], False, "goes on past 3 pages ("),
        ([["a.json", "b.json"], ["a.json"]], False, "lists 'a.json' twice"),
        ([["a", "a/b.json"]], False, "lists 'a/b.json' inside the file 'a'"),
        ([["a/b.json"], ["a"]], False, "lists the file 'a' where 'a/b.json' needs a folder"),
        (
            [["README.md"], ["readme.md"]],
            False,
            "lists 'readme.md' twice on a case-insensitive file system (macOS, Windows), "
            "where letter case and Unicode form do not tell names apart ('readme.md', "
            "'README.md')",
        ),
        ([["a//b.json"]], False, "lists 'a//b.json', no plain path"),
        ([["./a.json"]], False, "lists './a.json', no plain path"),
        ([["a.json\x1b[2J"]], False, "lists 'a.json\\x1b[2J', no plain path"),
        ([["a.json\x00"]], False, "lists 'a.json\\x00', no plain path"),
        ([["d/" * 256 + "a.json"]], False, "..., a path more than 256 levels deep"),
    ],
    ids=[
        "loops-to-itself",
        "loops-back",
        "endless",
        "duplicate",
        "inside-a-file",
        "on-a-folder",
        "duplicate-but-for-case",
        "empty-segment",
        "dot-segment",
        "escape",
        "nul",
        "too-deep",
    ],
)
async def test_a_hub_listing_that_is_no_tree_fails_the_job(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pages: list[list[str]],
    loop: bool,
    said: str,
) -> None:
    """A Hub (or a proxy posing as one) whose tree listing links back to a page it sent, goes
    on without end, or lists paths no folder can hold: the job fails naming it, after one
    request per page, and nothing is recorded (a loop made 10,000 requests and a "verified"
    dataset of 10,000 copies of one file)."""
    monkeypatch.setattr(dsm.transfer.hub, "MAX_PAGES", 3)
    first = posing_hub(server, pages, loop)
    cat = catalog([entry("set", "hf://datasets/org/set@main/", "data/set")])
    settings, repo = setup(home, cat, HF_ENDPOINT=server.base, HF_HOME=str(tmp_path / "hf"))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.FAILED
    assert "the Hub's tree listing of org/set " in (run.job.error or "")
    assert said in (run.job.error or ""), run.job.error
    tree = first.removeprefix(server.base)
    assert len([s for s in server.seen if s.path.startswith(tree)]) == min(len(pages), 3)
    assert not repo.dataset("set").downloaded and not (home / "data" / "set").exists()


@pytest.mark.parametrize("link", ["http://[zz/", "http://127.0.0.1:1/" + "a" * 70_000])
async def test_a_next_link_that_is_no_url_fails_the_job(
    server: FileServer, home: Path, catalog: CatalogFn, tmp_path: Path, link: str
) -> None:
    """A tree listing whose Link rel="next" no URL parser takes: the job fails naming it
    (was an internal error)."""
    first = posing_hub(server, [["a.json"]], loop=False)
    server.always(first.removeprefix(server.base), headers={"Link": f'<{link}>; rel="next"'})
    cat = catalog([entry("set", "hf://datasets/org/set@main/", "data/set")])
    settings, repo = setup(home, cat, HF_ENDPOINT=server.base, HF_HOME=str(tmp_path / "hf"))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.FAILED
    error = run.job.error or ""
    assert "internal error" not in error and "links to a next page that is no URL" in error, error
    assert len(error) < 1000
