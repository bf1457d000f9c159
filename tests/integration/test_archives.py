"""Archives and mirrors with the real engine, a live server and real files: download and
unpack, verify after tampering, re-unpack without a download, delete, a hostile archive, a
cancel in the middle of an unpack, and mirrors tried in order when the origin fails."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine import unpack
from dsm.engine.engine import Engine
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.enginehelp import run_jobs, setup, until
from tests.httpserver import FileServer

pytestmark = pytest.mark.anyio
HOLD = 10.0  # the longest a blocked unpack waits for the test (a deadline, not a pause)


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


V1 = {"a.txt": b"alpha\n" * 100, "sub/b.bin": blob(1, 50_000)}
V2 = {f"f{i}.bin": blob(10 + i, 20_000) for i in range(5)}


def arc(url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "arc", "original_url": url, "local_path": "data/arc", "extract": "zip", **extra}


async def test_download_unpacks_and_keeps_the_archive_outside_the_tree(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = zip_of(V1)
    settings, repo = setup(
        home, catalog([arc(server.add("a.zip", body), expected_sha256=sha(body))])
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    tree = home / "data" / "arc"
    assert {str(p.relative_to(tree)) for p in tree.rglob("*")} == {"a.txt", "sub", "sub/b.bin"}
    assert (tree / "sub" / "b.bin").read_bytes() == V1["sub/b.bin"]
    assert (home / ".archives" / "arc" / "archive.zip").read_bytes() == body
    ds = repo.dataset("arc")
    assert ds.status == Status.DOWNLOADED and ds.checksum == sha(body) and ds.size == len(body)
    assert (ds.file_count, ds.unpacked_size) == (2, sum(len(d) for d in V1.values()))
    assert ds.served_by == "origin"
    again = await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    assert again.job.status == JobStatus.SKIPPED and len(server.requests("a.zip")) == 1
    shown = run_dsm("show", "arc", "--json", home=home, catalog_path=settings.catalog)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["file_count"], doc["unpacked_size"], doc["served_by"]) == (
        2,
        ds.unpacked_size,
        "origin",
    )
    listed = run_dsm("list", "--json", home=home, catalog_path=settings.catalog)
    row = json.loads(listed.stdout)["datasets"][0]
    assert (row["extract"], row["file_count"]) == ("zip", 2)


async def test_verify_finds_a_tampered_file_and_a_reunpack_needs_no_download(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog([arc(server.add("a.zip", zip_of(V1)))]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    (home / "data" / "arc" / "sub" / "b.bin").write_bytes(b"tampered")
    verify = await run_jobs(settings, repo, JobType.VERIFY, "arc")
    assert verify.job.status == JobStatus.FAILED
    assert "'sub/b.bin'" in (verify.job.error or "")
    assert repo.dataset("arc").status == Status.ERROR
    again = await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    assert again.job.status == JobStatus.COMPLETED, again.job.error
    assert len(server.requests("a.zip")) == 1  # unpacked again from the kept archive
    assert (home / "data" / "arc" / "sub" / "b.bin").read_bytes() == V1["sub/b.bin"]
    assert (await run_jobs(settings, repo, JobType.VERIFY, "arc")).job.status == JobStatus.COMPLETED


async def test_delete_removes_the_tree_the_archive_and_a_partial(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(home, catalog([arc(server.add("a.zip", zip_of(V1)))]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    (home / ".archives" / "arc" / "archive.zip.part").write_bytes(b"partial of a next version")
    run = await run_jobs(settings, repo, JobType.DELETE, "arc")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert not (home / "data" / "arc").exists()
    assert not (home / ".archives" / "arc").exists()
    ds = repo.dataset("arc")
    assert ds.status == Status.NOT_LOADED and ds.file_count is None and ds.checksum is None


async def test_a_hostile_archive_fails_the_job_naming_the_member(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = zip_of({"ok.txt": b"fine", "../../escaped.txt": b"evil"})
    settings, repo = setup(home, catalog([arc(server.add("a.zip", body))]))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    assert run.job.status == JobStatus.FAILED
    assert "'../../escaped.txt'" in (run.job.error or "")
    assert not list(home.parent.rglob("escaped.txt"))
    assert not (home / "data" / "arc").exists() and not (home / "data" / "arc.part").exists()
    assert repo.dataset("arc").status == Status.ERROR


async def test_a_bomb_is_stopped_by_the_configured_limit(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    settings, repo = setup(
        home,
        catalog([arc(server.add("a.zip", zip_of({"bomb": b"\0" * (2 << 20)})))]),
        DSM_EXTRACT_MAX_BYTES=str(1 << 20),
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    assert run.job.status == JobStatus.FAILED
    assert "member 'bomb': unpacked size exceeds 1048576 bytes (DSM_EXTRACT_MAX_BYTES)" in (
        run.job.error or ""
    )
    assert not (home / "data" / "arc.part").exists()


async def test_a_cancel_mid_unpack_leaves_the_previous_copy_whole(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, repo = setup(home, catalog([arc(server.add("a.zip", zip_of(V1)))]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "arc")
    old_sum = repo.dataset("arc").checksum
    server.add("a.zip", zip_of(V2))
    inside, release = threading.Event(), threading.Event()
    real_file = unpack._Writer.file

    def file_then_hold(self: unpack._Writer, rel: Any, source: Any) -> None:
        real_file(self, rel, source)
        if len(self.files) == 2:  # the new copy is half out
            inside.set()
            release.wait(HOLD)

    monkeypatch.setattr(unpack._Writer, "file", file_then_hold)

    async def cancel(engine: Engine, jobs: list[Job]) -> None:
        await until(inside.is_set)
        assert (home / "data" / "arc.part" / "f1.bin").exists()  # the unpack is under way
        await engine.cancel(jobs[0].id)
        release.set()

    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "arc", force=True, during=cancel)
    assert run.job.status == JobStatus.CANCELED
    tree = home / "data" / "arc"
    assert {str(p.relative_to(tree)) for p in tree.rglob("*")} == {"a.txt", "sub", "sub/b.bin"}
    assert (tree / "a.txt").read_bytes() == V1["a.txt"]
    assert not (home / "data" / "arc.part").exists()
    ds = repo.dataset("arc")
    assert ds.status == Status.DOWNLOADED and ds.checksum == old_sum
    assert (await run_jobs(settings, repo, JobType.VERIFY, "arc")).job.status == JobStatus.COMPLETED


# -- mirrors ---------------------------------------------------------------------------------
def mirrored(server: FileServer, body: bytes, *mirrors: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "m",
        "original_url": server.url("origin.bin"),
        "local_path": "data/m.bin",
        "mirrors": list(mirrors),
        **extra,
    }


async def test_a_mirror_serves_when_the_origin_is_gone(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = blob(5)
    server.add("origin.bin", body)
    server.always("origin.bin", status=404)
    # The server routes by path and query: this is the mirror's URL with a signature.
    mirror = server.add("mirror.bin?sig=1", body).replace("http://", "http://user:secret@")
    settings, repo = setup(
        home, catalog([mirrored(server, body, mirror, expected_sha256=sha(body))])
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "m")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data" / "m.bin").read_bytes() == body
    assert len(server.requests("origin.bin")) == 1  # a 404 is not retried
    assert repo.dataset("m").served_by == server.url("mirror.bin")  # no password, no query
    assert "secret" not in (home / "db.json").read_text()  # the store keeps mirrors redacted


async def test_mirrors_after_the_origin_retry_budget_and_only_with_the_same_bytes(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = blob(6)
    server.add("origin.bin", body)
    server.always("origin.bin", status=503)
    wrong = server.add("wrong.bin", blob(7))
    good = server.add("good.bin", body)
    settings, repo = setup(
        home, catalog([mirrored(server, body, wrong, good, expected_sha256=sha(body))])
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "m")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert len(server.requests("origin.bin")) == 1 + settings.max_retries
    assert len(server.requests("wrong.bin")) == 1
    ds = repo.dataset("m")
    assert ds.served_by == good and ds.checksum == sha(body)


async def test_without_a_checksum_a_mirror_must_match_the_copy_verified_before(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = blob(8)
    server.add("origin.bin", body)
    other = server.add("other.bin", blob(9))
    settings, repo = setup(home, catalog([mirrored(server, body, other)]))
    await run_jobs(settings, repo, JobType.DOWNLOAD, "m")
    server.always("origin.bin", status=410)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "m", force=True)
    assert run.job.status == JobStatus.FAILED
    error = run.job.error or ""
    assert f"{server.url('origin.bin')}: HTTP 410" in error
    assert f"{other}: checksum mismatch: expected sha256 {sha(body)}" in error
    assert repo.dataset("m").checksum == sha(body)  # the verified copy stays
    assert (home / "data" / "m.bin").read_bytes() == body


async def test_a_partial_from_the_origin_is_not_resumed_from_a_mirror(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    body = blob(10, 600_000)
    server.add("origin.bin", body)
    server.fault("origin.bin", drop_after=200_000)
    server.always("origin.bin", status=404)
    mirror = server.add("mirror.bin", body)
    settings, repo = setup(
        home, catalog([mirrored(server, body, mirror, expected_sha256=sha(body))])
    )
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "m")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert server.requests("origin.bin")[1].range_start == 200_000  # the origin resumed ...
    # ... the mirror starts from zero (a fresh start may ask for `bytes=0-` to learn the size)
    assert [r.range_start or 0 for r in server.requests("mirror.bin")] == [0]
    assert server.bytes_sent("mirror.bin") == len(body)
    assert (home / "data" / "m.bin").read_bytes() == body
