"""A Hub, a copy on disk and a branch that do not agree: nothing but the bytes the Hub lists
at the recorded commit is ever recorded as that commit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anyio
import pytest

import dsm.engine.hubjob
from dsm.domain.events import EventKind
from dsm.domain.jobs import JobStatus, JobType
from dsm.engine import files
from dsm.engine.hubjob import refresh_upstream
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.enginehelp import run_jobs, setup
from tests.httpserver import FileServer
from tests.hubserver import HubServer, git_blob, hf_url
from tests.integration.test_hub import REPO, entry, env_for, posing_hub

pytestmark = pytest.mark.anyio

PATH = "data/train-00000-of-00001.parquet"


async def test_a_copy_a_crash_left_of_another_commit_is_not_recorded_as_the_new_one(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    """A run verified commit A's file and moved it into place, then died before the store
    heard of it; meanwhile the branch moved to B. The next run resolves B: the file in place
    (A's bytes, its install record intact) is not B's and must not be recorded as B."""
    old_bytes, new_bytes = blob(1, 90_000), blob(2, 90_000)
    hub.commit(REPO, {PATH: old_bytes})
    target = home / "data/t.parquet"
    target.parent.mkdir(parents=True)
    files.part_of(target).write_bytes(old_bytes)
    files.install(target, files.hash_file(files.part_of(target), False), None)  # then "crash"
    new = hub.commit(REPO, {PATH: new_bytes})
    cat = catalog([entry("t", hf_url(REPO, "main", PATH), "data/t.parquet")])
    settings, repo = setup(home, cat, **env_for(hub, tmp_path))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "t")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    ds = run.dataset("t")
    assert ds.source_commit == new
    assert (ds.checksum, target.read_bytes()) == (sha(new_bytes), new_bytes)


def test_a_hub_endpoint_with_a_password_is_refused_without_showing_it(
    hub: HubServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    """HF_ENDPOINT with a user and password (a private mirror behind basic auth): every
    resolve URL is built on it, so the password landed in the store's manifest (db.json, read
    by every user of the home) and in errors. It is refused, exit 2, without printing it."""
    commit = hub.commit(REPO, {"a/x.txt": b"x\n"})
    cat = catalog([entry("ok", hf_url(REPO, commit, "a"), "sets/ok")])
    endpoint = hub.endpoint.replace("://", "://mirror:PASSWORDX@")
    env = env_for(hub, tmp_path, HF_ENDPOINT=endpoint)
    got = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, env=env)
    assert got.returncode == 2
    assert "HF_ENDPOINT=" in got.stderr and "without a user or password" in got.stderr
    assert "PASSWORDX" not in got.stdout + got.stderr
    assert not hub.seen and not (home / "sets/ok").exists()


async def test_a_tree_listing_whose_next_page_is_another_listing_fails(
    server: FileServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    """The Hub pages a tree listing with `Link: rel="next"` to the same listing with a
    cursor. A next page of another listing (the moving branch's instead of the commit's)
    mixed two commits' files into one recorded as the commit (a file the branch had deleted
    went missing, unnoticed): the job fails naming it, and nothing is recorded."""
    commit = hashlib.sha1(b"posing hub").hexdigest()
    sha_doc = json.dumps({"sha": commit}).encode()
    server.add("api/datasets/org/set/revision/main", sha_doc, content_type="application/json")
    first = f"api/datasets/org/set/tree/{commit}?recursive=true"
    other = "api/datasets/org/set/tree/main?recursive=true&cursor=1"
    for url, path in ((first, "a.json"), (other, "b.json")):
        listed = [{"type": "file", "path": path, "size": 1, "oid": git_blob(b"x")}]
        server.add(url, json.dumps(listed).encode(), content_type="application/json")
        server.add(f"datasets/org/set/resolve/{commit}/{path}", b"x")
    server.always(first, headers={"Link": f'<{server.url(other)}>; rel="next"'})
    cat = catalog([entry("set", "hf://datasets/org/set@main/", "data/set")])
    settings, repo = setup(home, cat, HF_ENDPOINT=server.base, HF_HOME=str(tmp_path / "hf"))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.FAILED
    assert "its next page in another listing" in (run.job.error or ""), run.job.error
    assert not repo.dataset("set").downloaded and not (home / "data/set").exists()


REVISION = "api/datasets/org/set/revision/main"


async def test_a_hub_answer_sent_a_byte_now_and_then_is_stalled(
    server: FileServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    """A Hub (or a proxy posing as one) sending its answer a byte every 0.5 s: each read's
    own timeout (2 s here) never trips, and the body was read as long as it went on (a
    JSON of 100 KB held the job a day, and a cancel's thread with it). An answer must
    arrive whole within the stall timeout of its first read: stalled, retried."""
    posing_hub(server, [["a.json"]])
    server.fault(REVISION, rate=2)  # ~60 bytes: 30 s
    cat = catalog([entry("set", "hf://datasets/org/set@main/", "data/set")])
    settings, repo = setup(home, cat, HF_ENDPOINT=server.base, HF_HOME=str(tmp_path / "hf"))
    with anyio.fail_after(60):
        run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    (retry,) = [e.job.error or "" for e in run.kinds(EventKind.RETRYING)]
    said = f"the Hub's answer did not arrive whole within 2 s from {server.url(REVISION)}"
    assert said in retry, retry
    assert (home / "data/set/a.json").read_bytes() == b"x"


def test_a_hub_trickling_its_answer_cannot_hold_up_the_upstream_hint(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dsm list` asks where a followed branch is now, a hint that must not hold it up: an
    answer a byte every 0.5 s held `dsm list` as long as the Hub went on (a plain client, a
    timeout per read). Each answer comes whole within the hint's time, or the hint is left
    as it was."""
    monkeypatch.setattr(dsm.engine.hubjob, "UPSTREAM_TIMEOUT", 1.0)
    posing_hub(server, [["a.json"]])  # the branch is at another commit than the copy's
    server.always(REVISION, rate=2)
    commit = "a" * 40
    cat = catalog([entry("set", "hf://datasets/org/set@main/", "data/set")])
    settings, repo = setup(home, cat, HF_ENDPOINT=server.base, HF_HOME=str(tmp_path / "hf"))
    repo.change("set", None, downloaded=True, source_commit=commit, upstream_commit=commit)
    assert refresh_upstream(settings, repo) == 0
    assert repo.dataset("set").upstream_commit == commit
    assert len(server.requests(REVISION)) == 1  # asked once, not again and again


async def test_a_hub_listing_of_more_files_than_a_dataset_may_have_fails(
    server: FileServer, home: Path, catalog: CatalogFn, tmp_path: Path
) -> None:
    """A tree listing that goes on page after page of files (a Hub or a proxy posing as
    one): each file was held until the end (100,000 a page: 1.2 GB in 45 s, growing), then
    fetched and recorded. It may name at most DSM_EXTRACT_MAX_MEMBERS files, as an archive
    may hold members: the job fails naming it, and the next page is not asked for."""
    pages = [[f"{p}{n}.json" for n in range(2)] for p in "abc"]
    first = posing_hub(server, pages)
    cat = catalog([entry("set", "hf://datasets/org/set@main/", "data/set")])
    env = {"HF_ENDPOINT": server.base, "HF_HOME": str(tmp_path / "hf")}
    settings, repo = setup(home, cat, DSM_EXTRACT_MAX_MEMBERS="3", **env)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.FAILED
    said = (
        "the Hub's tree listing of org/set names more than 3 files, the most one dataset may have"
    )
    assert said in (run.job.error or ""), run.job.error
    tree = first.removeprefix(server.base)
    assert len([s for s in server.seen if s.path.startswith(tree)]) == 2
    assert not repo.dataset("set").downloaded and not (home / "data" / "set").exists()
