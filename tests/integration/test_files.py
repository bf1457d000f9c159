"""Datasets of several files (a catalogue `files` list) with the real engine, a live server
and real files: download into the folder, the manifest checksum, one file failing and a
re-run that fetches only it, a wrong sha256, verify after corruption or loss, delete; and a
catalogue entry that changes kind (unpacked archive, several files, one file) over a copy
already on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from dsm.config import Settings
from dsm.domain.hub import ManifestFile
from dsm.domain.jobs import JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine import files
from dsm.errors import Swapped
from dsm.repository import Repository
from dsm.transfer.partfile import sidecar_path, write_sidecar
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.enginehelp import run_jobs, setup
from tests.httpserver import FileServer
from tests.integration.test_archives import zip_of
from tests.tui_helpers import SIZE, loaded, make_app, text_of, until

pytestmark = pytest.mark.anyio

BODIES = {
    "train.jsonl": blob(1, 300_000),
    "splits/test.jsonl": blob(2, 120_000),
    "splits/dev.jsonl": blob(3, 50_000),
}


def served(server: FileServer, bodies: dict[str, bytes] = BODIES) -> list[dict[str, Any]]:
    """A `files` list of `bodies`, each served by `server` under its own name."""
    return [
        {
            "url": server.add(path.replace("/", "-"), body),
            "path": path,
            "expected_size": len(body),
            "expected_sha256": sha(body),
        }
        for path, body in bodies.items()
    ]


def entry(listed: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "set", "local_path": "data/set", "files": listed, **extra}


def hub_formula(bodies: dict[str, bytes]) -> str:
    """The Hub's manifest checksum written out: sha256 over sorted "path<TAB>sha256:hex<LF>"."""
    lines = "".join(f"{p}\tsha256:{sha(bodies[p])}\n" for p in sorted(bodies))
    return hashlib.sha256(lines.encode()).hexdigest()


def on_disk(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def requests(server: FileServer) -> dict[str, int]:
    return {p: len(server.requests(p.replace("/", "-"))) for p in BODIES}


async def test_every_file_lands_in_the_folder_checked_and_recorded(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    total = sum(len(b) for b in BODIES.values())
    cat = catalog([entry(served(server), expected_size=total, expected_sha256=hub_formula(BODIES))])
    settings, repo = setup(home, cat)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    folder = home / "data" / "set"
    assert on_disk(folder) == BODIES
    assert not (home / "data" / "set.part").exists()
    ds = run.dataset("set")
    assert ds.status == Status.DOWNLOADED and ds.size == total == run.job.bytes_done
    assert ds.checksum == hub_formula(BODIES)  # the Hub's manifest formula
    listing = files.manifest_of(ds)
    assert listing is not None and sorted(f.path for f in listing) == sorted(BODIES)
    assert (ds.file_count, ds.served_by) == (3, "origin")
    assert files.still_verified(home, ds)
    again = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert again.job.status == JobStatus.SKIPPED
    assert requests(server) == dict.fromkeys(BODIES, 1)


async def test_one_file_failing_keeps_the_others_and_a_rerun_fetches_only_it(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog([entry(served(server))]))
    server.always("splits-test.jsonl", status=404)  # not retried: fails at once
    bad = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert bad.job.status == JobStatus.FAILED
    assert "splits/test.jsonl" in (bad.job.error or "") and "404" in (bad.job.error or "")
    staging = home / "data" / "set.part"
    assert (staging / "train.jsonl").read_bytes() == BODIES["train.jsonl"]  # verified, kept
    assert not (home / "data" / "set").exists()  # never half a tree at local_path
    ds = bad.dataset("set")
    assert ds.status == Status.ERROR and not ds.downloaded and ds.manifest is None
    del server.persistent["/splits-test.jsonl"]
    # The next file is cut off once: it resumes from where it stopped (the normal transfer).
    server.fault("splits-dev.jsonl", drop_after=20_000)
    good = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert good.job.status == JobStatus.COMPLETED, good.job.error
    assert requests(server) == {"train.jsonl": 1, "splits/test.jsonl": 2, "splits/dev.jsonl": 2}
    assert server.requests("splits-dev.jsonl")[1].range_start == 20_000
    assert on_disk(home / "data" / "set") == BODIES
    assert good.dataset("set").checksum == hub_formula(BODIES)


async def test_files_of_an_earlier_listing_never_reach_the_folder(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    listed = served(server)
    settings, repo = setup(home, catalog([entry(listed)]))
    server.always("splits-dev.jsonl", status=404)
    server.fault("splits-test.jsonl", drop_after=10_000)  # a partial left behind
    server.fault("splits-test.jsonl", status=404)
    bad = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert bad.job.status == JobStatus.FAILED
    staging = home / "data" / "set.part"
    assert (staging / "train.jsonl").exists() and (staging / "splits" / "test.jsonl.part").exists()
    del server.persistent["/splits-dev.jsonl"]
    settings, repo = setup(home, catalog([entry([listed[2]])]))  # the catalogue changed
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert on_disk(home / "data" / "set") == {"splits/dev.jsonl": BODIES["splits/dev.jsonl"]}


async def test_a_wrong_sha256_on_one_file_fails_and_keeps_the_old_copy_whole(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    listed = served(server)
    good_sha, listed[1]["expected_sha256"] = listed[1]["expected_sha256"], "0" * 64
    settings, repo = setup(home, catalog([entry(listed)]))
    fresh = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert fresh.job.status == JobStatus.FAILED
    assert fresh.dataset("set").status == Status.ERROR and not fresh.dataset("set").downloaded
    assert not (home / "data" / "set").exists()
    listed[1]["expected_sha256"] = good_sha
    settings, repo = setup(home, catalog([entry(listed)]))
    assert (await run_jobs(settings, repo, JobType.DOWNLOAD, "set")).job.status == (
        JobStatus.COMPLETED
    )
    listed[1]["expected_sha256"] = "0" * 64  # the catalogue now expects other bytes
    settings, repo = setup(home, catalog([entry(listed)]))
    assert repo.dataset("set").outdated
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.FAILED
    error = run.job.error or ""
    assert "splits/test.jsonl: checksum mismatch" in error and "0" * 64 in error
    assert on_disk(home / "data" / "set") == BODIES  # the old copy, whole
    staging = home / "data" / "set.part"
    assert not (staging / "splits" / "test.jsonl").exists()  # the wrong bytes are not kept
    assert not (staging / "splits" / "test.jsonl.part").exists()
    ds = run.dataset("set")  # still the old copy, marked outdated: never the new one
    assert ds.outdated and ds.checksum == hub_formula(BODIES)


async def failed_verify(settings: Settings, repo: Repository) -> str:
    """The error of a verify that must fail; the row says error, not downloaded."""
    run = await run_jobs(settings, repo, JobType.VERIFY, "set")
    ds = run.dataset("set")
    assert run.job.status == JobStatus.FAILED and ds.status == Status.ERROR and not ds.downloaded
    return run.job.error or ""


async def test_verify_finds_a_bad_or_missing_file_a_download_fetches_only_it_delete_all(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog([entry(served(server))]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    folder = home / "data" / "set"
    (folder / "splits" / "dev.jsonl").write_bytes(b"tampered")
    assert "splits/dev.jsonl: size mismatch" in await failed_verify(settings, repo)
    fixed = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert fixed.job.status == JobStatus.COMPLETED, fixed.job.error
    assert requests(server) == {"train.jsonl": 1, "splits/test.jsonl": 1, "splits/dev.jsonl": 2}
    assert on_disk(folder) == BODIES
    (folder / "train.jsonl").unlink()
    assert "train.jsonl" in await failed_verify(settings, repo)
    (home / "data" / "set.part").mkdir()  # a staging folder left by a failed download
    gone = await run_jobs(settings, repo, JobType.DELETE, "set")
    assert gone.job.status == JobStatus.COMPLETED, gone.job.error
    assert not folder.exists() and not (home / "data" / "set.part").exists()
    ds = gone.dataset("set")
    assert ds.status == Status.NOT_LOADED and ds.manifest is None and ds.file_count is None


async def test_show_and_list_name_the_file_count_and_the_urls_that_served_them(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    listed = served(server)
    listed[0]["url"] = listed[0]["url"].replace("http://", "http://user:pw9@") + "?token=tk9"
    server.add("train.jsonl?token=tk9", BODIES["train.jsonl"])
    cat = catalog([entry(listed)])
    settings, repo = setup(home, cat)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    shown = run_dsm("show", "set", "--json", home=home, catalog_path=cat)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["file_count"], doc["served_by"], doc["size"]) == (3, "origin", run.job.bytes_done)
    urls = {f["path"]: f["url"] for f in doc["manifest"]}
    assert urls["splits/dev.jsonl"] == server.url("splits-dev.jsonl")
    assert "[redacted]" in urls["train.jsonl"]
    row = json.loads(run_dsm("list", "--json", home=home, catalog_path=cat).stdout)["datasets"][0]
    assert row["file_count"] == 3 and len(row["files"]) == 3
    for text in (shown.stdout, (home / "db.json").read_text()):
        assert "pw9" not in text and "tk9" not in text


async def test_the_detail_pane_names_the_files_and_their_origin(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    cat = catalog([entry(served(server))])
    settings, repo = setup(home, cat)
    await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    app = make_app(home, cat)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: "origin" in text_of(app, "#detail-body"))
        lines = [" ".join(line.split()) for line in text_of(app, "#detail-body").splitlines()]
    assert f"URL 3 files from {server.base}" in lines
    assert "files 3" in lines and "served by origin" in lines
    assert not any(line.startswith("unpacked") for line in lines)


# -- a catalogue entry that changes kind over a copy on disk ------------------------------
async def test_dropping_extract_replaces_the_unpacked_tree_with_the_file(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = zip_of(BODIES)
    url = server.add("set.zip", body)
    plain = {"name": "set", "original_url": url, "local_path": "data/set"}
    settings, repo = setup(home, catalog([{**plain, "extract": "zip"}]))
    assert (await run_jobs(settings, repo, JobType.DOWNLOAD, "set")).job.status == (
        JobStatus.COMPLETED
    )
    assert (home / "data" / "set").is_dir() and (home / ".archives" / "set").is_dir()
    settings, repo = setup(home, catalog([plain]))  # the catalogue no longer unpacks it
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "set").read_bytes() == body  # the file where the tree was
    assert not (home / ".archives" / "set").exists()
    assert not list((home / "data").glob("set.part*"))
    ds = run.dataset("set")
    assert (ds.file_count, ds.unpacked_size, ds.checksum) == (None, None, sha(body))
    assert (await run_jobs(settings, repo, JobType.VERIFY, "set")).job.status == (
        JobStatus.COMPLETED
    )


async def test_delete_after_dropping_extract_removes_the_tree_and_the_archive(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    plain = {"name": "set", "original_url": server.add("set.zip", zip_of(BODIES))}
    settings, repo = setup(home, catalog([{**plain, "local_path": "data/set", "extract": "zip"}]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    settings, repo = setup(home, catalog([{**plain, "local_path": "data/set"}]))
    run = await run_jobs(settings, repo, JobType.DELETE, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert not (home / "data" / "set").exists() and not (home / ".archives" / "set").exists()


async def test_several_files_and_one_file_replace_each_other(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    one = blob(9, 1000)
    plain = {"name": "set", "original_url": server.add("one.bin", one), "local_path": "data/set"}
    settings, repo = setup(home, catalog([plain]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    settings, repo = setup(home, catalog([entry(served(server))]))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert on_disk(home / "data" / "set") == BODIES
    settings, repo = setup(home, catalog([plain]))
    back = await run_jobs(settings, repo, JobType.DOWNLOAD, "set")
    assert back.job.status == JobStatus.COMPLETED, back.job.error
    assert (home / "data" / "set").read_bytes() == one
    ds = back.dataset("set")
    assert (ds.manifest, ds.file_count, ds.checksum) == (None, None, sha(one))


def test_forget_install_drops_only_the_record_of_that_copy(tmp_path: Path) -> None:
    path = tmp_path / "data" / "a.bin"
    path.parent.mkdir()
    path.write_bytes(b"x")
    record = sidecar_path(files.part_of(path))
    files.forget_install(path, "abc")  # no record: nothing to do
    write_sidecar(files.part_of(path), {"installed_sha256": "abc", "size": 1})
    files.forget_install(path, "newer")  # names another copy: kept
    assert record.exists()
    files.forget_install(path, "abc")
    assert not record.exists()
    assert path.read_bytes() == b"x"


def test_a_file_replacing_a_tree_is_refused_when_swapped_and_the_tree_comes_back(
    tmp_path: Path,
) -> None:
    """A file takes the place of the dataset's unpacked tree (the catalogue dropped
    `extract`): its `.part` swapped for another file before the rename is refused, and the
    tree, moved aside for the rename, is back in place (it stayed at `.part.old`)."""
    target, part = tmp_path / "d", tmp_path / "d.part"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "kept.txt").write_bytes(b"the unpacked copy")
    part.write_bytes(b"the bytes dsm hashed")
    fetched = files.hash_file(part, False)
    (tmp_path / "other.bin").write_bytes(b"not the dataset")
    (tmp_path / "other.bin").replace(part)
    with pytest.raises(Swapped, match="swapped for another file"):
        files.install(target, fetched, None)
    assert (target / "sub" / "kept.txt").read_bytes() == b"the unpacked copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_kept_file_swapped_after_its_check_is_not_staged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of the copy in place, checked, is linked into the staging folder (a download
    after a failed verify): another file put at its name between the check and the link is
    not staged as the checked one (it is fetched instead)."""
    data = b"the verified file"
    kept, dest = tmp_path / "tree" / "x.bin", tmp_path / "tree.part" / "x.bin"
    kept.parent.mkdir()
    kept.write_bytes(data)
    want = ManifestFile("x.bin", "http://127.0.0.1/x.bin", len(data), sha(data))
    link = os.link

    def swapped_first(src: Path, dst: Path, **kw: bool) -> None:
        (tmp_path / "other.bin").write_bytes(b"not the dataset!!")  # the same size
        (tmp_path / "other.bin").replace(kept)
        link(src, dst, **kw)

    monkeypatch.setattr(os, "link", swapped_first)
    assert not files.stage(dest, kept, want)
    assert not dest.exists()
    monkeypatch.setattr(os, "link", link)
    kept.write_bytes(data)
    assert files.stage(dest, kept, want) and dest.read_bytes() == data
