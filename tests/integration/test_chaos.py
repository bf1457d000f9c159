"""Chaos: kill -9 at random instants, a full disk, processes racing on one home."""

from __future__ import annotations

import errno
import hashlib
import json
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.domain.model import Status
from dsm.engine import files
from dsm.engine.engine import Engine
from dsm.engine.ledger import Ledger
from dsm.transfer import partfile
from dsm.transfer import single as transfer
from dsm.transfer.http import Digest, Fetched
from dsm.transfer.partfile import sidecar_path
from tests.conftest import (
    CatalogFn,
    blob,
    dsm_command,
    dsm_env,
    make_settings,
    mount_tmpfs,
    open_repo,
    run_dsm,
    sha,
    start_dsm,
    wait_for,
)
from tests.enginehelp import check_home, entries, run_jobs, setup, until
from tests.httpserver import FileServer
from tests.integration.test_archives import zip_of

SOAK_TRIALS = 20


def start_download_all(home: Path, cat: Path) -> subprocess.Popen[bytes]:
    """`dsm --run-job download --all` on `home`, in the background, silent."""
    return start_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)


@pytest.mark.slow
def test_kill_9_soak(server: FileServer, tmp_path: Path, catalog: CatalogFn) -> None:
    rng = random.Random(20261126)
    files = {f"f{i}": blob(i, 3_000_000 + i * 100_000) for i in range(3)}
    cat = catalog(entries(server, files, with_sha=True))
    for name in files:
        server.always(f"{name}.bin", rate=6_000_000)
    total = sum(len(d) for d in files.values())
    for trial in range(SOAK_TRIALS):
        home = tmp_path / f"trial{trial}"
        home.mkdir()
        before = sum(server.bytes_sent(f"{n}.bin") for n in files)
        proc = start_download_all(home, cat)
        time.sleep(rng.uniform(0.05, 0.6))  # the random kill instant, not a synchronisation
        proc.kill()
        proc.wait()
        again = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, timeout=60)
        assert again.returncode == 0, again.stderr
        check_home(home, cat, files)
        fetched = sum(server.bytes_sent(f"{n}.bin") for n in files) - before
        assert fetched < 1.5 * total, f"trial {trial}: fetched {fetched} for {total}"


def test_crash_between_rename_and_store_update_needs_no_download(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(7, 500_000)
    cat = catalog(entries(server, {"a": data}, with_sha=True))
    target = home / "data" / "a"
    part = sidecar_path(target.with_name("a.part"))
    target.parent.mkdir(parents=True)
    target.with_name("a.part").write_bytes(data)
    from dsm.engine import files as files_mod

    written = files_mod.hash_file(target.with_name("a.part"), False)
    files_mod.install(target, written, None)  # then "crash"
    assert part.exists()
    proc = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    assert server.requests("a.bin") == []
    check_home(home, cat, {"a": data})
    assert not part.exists()


def test_a_copy_in_place_with_the_catalogue_hash_needs_no_download_but_update_fetches_it(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A small file with a catalogue SHA-256 gets no install record: a kill after its rename
    leaves only the file, which the catalogue's hash proves (a wrong one is fetched again);
    `update` takes no such shortcut."""
    good, stale = blob(8, 40_000), blob(9, 40_000)
    cat = catalog(entries(server, {"a": good, "b": good}, with_sha=True))
    (home / "data").mkdir(parents=True)
    (home / "data" / "a").write_bytes(good)  # as a killed run leaves it: no record beside
    (home / "data" / "b").write_bytes(stale)
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    assert server.requests("a.bin") == [], "a copy the catalogue's hash proves was fetched"
    assert len(server.requests("b.bin")) == 1
    check_home(home, cat, {"a": good, "b": good})
    (home / "data" / "a").touch()  # the store no longer vouches for it (its stamp changed)
    proc = run_dsm("--run-job", "update", "--dataset", "a", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests("a.bin")) == 1
    assert not sidecar_path(home / "data" / "a.part").exists()


def test_a_small_partial_without_its_sidecar_is_fetched_again_whole(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A small body's sidecar is written only when its transfer stops short; a partial a
    kill -9 left without one proves nothing, so it is fetched from byte 0."""
    data = blob(10, 300_000)
    cat = catalog(entries(server, {"a": data}, with_sha=True))
    (home / "data").mkdir(parents=True)
    (home / "data" / "a.part").write_bytes(blob(11, 100_000))  # not even the same bytes
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    (req,) = server.requests("a.bin")
    assert req.range_start in (None, 0) and "if-range" not in req.headers
    check_home(home, cat, {"a": data})


@pytest.mark.parametrize("size", [100_000, 1_000_000, 5_000_000])
@pytest.mark.parametrize("with_sha", [True, False])
def test_a_finished_download_leaves_only_its_file(
    server: FileServer, home: Path, catalog: CatalogFn, size: int, with_sha: bool
) -> None:
    """One read, several reads, the big-body pipeline; with a catalogue hash (no install
    record) or without: no sidecar is left beside the file."""
    data = blob(14, size)
    cat = catalog(entries(server, {"a": data}, with_sha=with_sha))
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    check_home(home, cat, {"a": data})


def test_a_small_transfer_killed_after_its_first_read_resumes(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A small body longer than one read has its sidecar on disk from the end of that read
    on: a kill -9 (no chance to write anything at exit) still leaves a resumable partial."""
    data = blob(13, 1_000_000)
    cat = catalog(entries(server, {"a": data}, with_sha=True))
    server.fault("a.bin", stall_after=600_000)
    proc = start_download_all(home, cat)
    part = home / "data" / "a.part"
    try:
        wait_for(lambda: sidecar_path(part).exists(), timeout=30)
    finally:
        proc.kill()
        proc.wait()
        server.release.set()
    assert 0 < part.stat().st_size <= 600_000
    again = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert again.returncode == 0, again.stderr
    _, second = server.requests("a.bin")
    assert "if-range" in second.headers and (second.range_start or 0) >= 262_144
    check_home(home, cat, {"a": data})


@pytest.mark.anyio
async def test_a_small_transfer_cut_short_keeps_a_sidecar_and_resumes(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    data = blob(12, 300_000)
    settings, repo = setup(home, catalog(entries(server, {"a": data}, with_sha=True)))
    server.fault("a.bin", drop_after=120_000)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.COMPLETED and run.job.attempts == 2
    first, second = server.requests("a.bin")
    assert first.range_start in (None, 0) and "if-range" in second.headers
    assert (second.range_start or 0) >= 100_000 and second.status == 206
    assert (home / "data" / "a").read_bytes() == data


@pytest.mark.anyio
async def test_enospc_at_the_write_boundary(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blob(8, 3_000_000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)))
    real_write = transfer._Sink.write

    def write(self: transfer._Sink, chunk: bytes) -> None:
        if self.size + len(chunk) > 1_500_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, chunk)

    monkeypatch.setattr(transfer._Sink, "write", write)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert "disk full while writing" in (run.job.error or "")
    assert len(server.requests("a.bin")) == 1  # not retried blindly
    ds = repo.dataset("a")
    assert ds.status == Status.ERROR and not ds.downloaded and "disk full" in (ds.error or "")
    assert not (home / "data" / "a").exists()


def test_disk_full_on_a_real_small_filesystem(
    server: FileServer, tmp_path: Path, catalog: CatalogFn
) -> None:
    home = tmp_path / "small"
    mount_tmpfs(home, "2m")
    try:
        data = blob(9, 6_000_000)
        cat = catalog(a=server.add("a.bin", data), b=server.add("b.bin", b"small"))
        # No length and no range support: the size is unknown, so the free space is
        # checked as the body arrives: it stops while 5% of the disk is left, not at ENOSPC.
        server.always("a.bin", no_length=True, ignore_range=True)
        ok = run_dsm("--run-job", "download", "--dataset", "b", home=home, catalog_path=cat)
        assert ok.returncode == 0, ok.stderr
        before = json.loads((home / "db.json").read_text())["datasets"]["b"]
        proc = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
        assert proc.returncode == 1
        reserve = shutil.disk_usage(home).total // 20
        assert re.search(
            r"download a: failed: stopped at byte \d+: the server sent no length and "
            rf"{re.escape(str(home / 'data'))} has \d+ bytes free; {reserve} are kept free",
            proc.stderr,
        ), proc.stderr
        assert len(server.requests("a.bin")) == 1
        after = json.loads((home / "db.json").read_text())  # the store is intact
        assert after["datasets"]["b"]["checksum"] == before["checksum"]
        assert after["datasets"]["a"]["status"] == "error"
        assert not after["datasets"]["a"]["downloaded"]
        assert not (home / "data" / "a").exists()
        assert (home / "data" / "b").read_bytes() == b"small"
    finally:
        subprocess.run(["umount", str(home)], check=True)


def test_a_store_disk_full_for_seconds_is_said_once_on_a_real_filesystem(
    server: FileServer, tmp_path: Path, catalog: CatalogFn
) -> None:
    """The home (db.json) on a 1 MiB disk that fills up while a download runs into a data
    folder on another disk: every commit fails for seconds (one identical line each, and
    exit 0, before). One error line, one when the store is written again, exit 1."""
    home = tmp_path / "small"
    mount_tmpfs(home, "1m")
    try:
        mount_tmpfs(home / "data", "16m")
        data = blob(13, 1_500_000)
        cat = catalog(a=server.add("a.bin", data))
        server.always("a.bin", rate=300_000)  # five seconds: commits every 0.2 s meanwhile
        proc = subprocess.Popen(
            [*dsm_command(), "--run-job", "download", "--dataset", "a"],
            env=dsm_env(home, cat),
            stderr=subprocess.PIPE,
            text=True,
        )
        part = home / "data" / "a.part"
        wait_for(lambda: part.exists() and part.stat().st_size > 0)
        filler = home / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        wait_for(lambda: part.stat().st_size > 900_000)  # three seconds of failed commits
        filler.unlink()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert err.count("No space left on device") == 1, err
        assert "the store is written again" in err
        assert (home / "data" / "a").read_bytes() == data
    finally:
        subprocess.run(["umount", "-R", str(home)], check=True)


def test_two_processes_on_overlapping_datasets(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    files = {f"o{i}": blob(20 + i, 1_500_000) for i in range(4)}
    cat = catalog(entries(server, files, with_sha=True))
    for name in files:
        server.always(f"{name}.bin", rate=4_000_000)
    procs = [
        subprocess.Popen(
            [*dsm_command(), "--run-job", "download", *args],
            env=dsm_env(home, cat),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (
            ["--dataset", "o0", "--dataset", "o1", "--dataset", "o2"],
            ["--dataset", "o1", "--dataset", "o2", "--dataset", "o3"],
        )
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    check_home(home, cat, files)
    for name in files:  # no dataset downloaded twice
        assert len(server.requests(f"{name}.bin")) == 1, name
    # The store keeps the newest job of each dataset (ledger.jobs_to_prune): all ended well.
    jobs = open_repo(make_settings(home, cat)).jobs()
    assert sorted(j.dataset for j in jobs) == sorted(files)
    assert all(j.status in (JobStatus.COMPLETED, JobStatus.SKIPPED) for j in jobs)


def test_store_stays_consistent_while_another_process_downloads(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    files = {"big": blob(30, 4_000_000)}
    cat = catalog(entries(server, files, with_sha=True))
    server.always("big.bin", rate=3_000_000)
    proc = start_download_all(home, cat)
    seen: set[str] = set()

    def done() -> bool:
        rows = json.loads((home / "db.json").read_text())["datasets"]  # always parses
        seen.add(rows["big"]["status"])
        return bool(rows["big"]["status"] == "downloaded")

    wait_for(lambda: (home / "db.json").exists(), timeout=10)
    wait_for(done, timeout=30)
    assert proc.wait(timeout=10) == 0
    assert "downloading" in seen


@pytest.mark.parametrize(
    ("planted", "env"),
    [
        ("a.part", {}),
        ("a.part", {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}),
        ("a.part.json.tmp", {}),
    ],
    ids=["partial", "segmented-partial", "sidecar-temp"],
)
def test_a_link_planted_at_a_partial_name_is_never_written_through(
    server: FileServer,
    home: Path,
    tmp_path: Path,
    catalog: CatalogFn,
    planted: str,
    env: dict[str, str],
) -> None:
    """Another user of a shared home (or any process) links `<local_path>.part` to a file
    outside it: dsm wrote the download over that file and moved the link into place."""
    outside = tmp_path / "outside" / "precious"
    outside.parent.mkdir()
    outside.write_bytes(b"precious\n")
    data = blob(9, 3_000_000)
    cat = catalog(a=server.add("a.bin", data))
    (home / "data").mkdir()
    (home / "data" / planted).symlink_to(outside)
    proc = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat, env=env)
    assert outside.read_bytes() == b"precious\n"
    assert proc.returncode == 1, proc.stderr
    assert f"{home / 'data' / planted} is a symbolic link" in proc.stderr, proc.stderr
    assert not (home / "data" / "a").is_symlink()


def test_a_link_planted_at_the_file_list_of_an_archive_is_never_written_through(
    server: FileServer, home: Path, tmp_path: Path, catalog: CatalogFn
) -> None:
    """The same at `.archives/<name>/manifest.json.tmp`, the list of an unpacked archive."""
    outside = tmp_path / "precious"
    outside.write_bytes(b"precious\n")
    url = server.add("a.zip", zip_of({"x.txt": b"x"}))
    cat = catalog([{"name": "a", "original_url": url, "local_path": "data/a", "extract": "zip"}])
    (home / ".archives" / "a").mkdir(parents=True)
    (home / ".archives" / "a" / "manifest.json.tmp").symlink_to(outside)
    proc = run_dsm("--run-job", "download", "--dataset", "a", home=home, catalog_path=cat)
    assert outside.read_bytes() == b"precious\n"
    assert proc.returncode == 1 and "manifest.json.tmp is a symbolic link" in proc.stderr


@pytest.mark.anyio
@pytest.mark.parametrize(
    "env", [{}, {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}], ids=["single", "segmented"]
)
@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
async def test_a_folder_swapped_for_a_link_after_the_check_is_never_written_through(
    server: FileServer,
    home: Path,
    tmp_path: Path,
    catalog: CatalogFn,
    env: dict[str, str],
    openat2: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dataset's folder is checked (no link out of the home) when the job starts; another
    user of a shared home swaps it for a link to a folder outside while the server is asked:
    dsm wrote the partial, and then the dataset, through it (the path was given to the
    system again). Now each folder is entered without following a link: the job fails
    naming it, nothing is written outside."""
    if not openat2:  # a kernel without openat2 (before 5.6), or a seccomp filter refusing it
        monkeypatch.setattr(partfile, "_no_links_open", None)
    outside = tmp_path / "outside"
    outside.mkdir()
    data = blob(10, 3_000_000)
    gate = threading.Event()
    url = server.add("a.bin", data)
    server.always("a.bin", gate=gate)
    cat = catalog(
        [
            {
                "name": "a",
                "description": "t",
                "original_url": url,
                "local_path": "sub/a.bin",
            }
        ]
    )
    (home / "sub").mkdir(parents=True)
    settings, repo = setup(home, cat, **env)

    async def swap(engine: Engine, jobs: list[Job]) -> None:
        await until(lambda: bool(server.requests("a.bin")))  # checked, and asking
        (home / "sub").rename(home / "sub.moved")
        (home / "sub").symlink_to(outside)
        gate.set()

    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=swap)
    assert list(outside.iterdir()) == []
    assert run.job.status == JobStatus.FAILED
    assert f"{home / 'sub'} is a symbolic link" in (run.job.error or ""), run.job.error


def hostile_to_the_partial(monkeypatch: pytest.MonkeyPatch, part: Path, how: str) -> list[bool]:
    """Another program removes the `.part` (a clean-up of `*.part`), puts another file in
    its place, or removes its folder, once dsm has written and hashed it and before it is
    moved into place."""
    real = Digest.fetched
    done: list[bool] = []  # [whether the other file took the freed inode's number]

    def fetched(self: Digest, *args: Any, **kw: Any) -> Fetched:
        out = real(self, *args, **kw)
        if not done:
            done.append(False)
            if how == "folder-removed":
                shutil.rmtree(part.parent)
                return out
            number = part.stat().st_ino
            part.unlink()
            if how == "replaced":
                part.write_bytes(b"not the bytes dsm hashed")
            if how == "replaced-same-inode":
                done[0] = _take_the_inode(part, number)
        return out

    monkeypatch.setattr(Digest, "fetched", fetched)
    return done


def _take_the_inode(part: Path, number: int) -> bool:
    """Another file at `part` with the inode number dsm's freed file had (as `rm a.part;
    cp other a.part` may give it), where the file system hands it out again."""
    for n in range(200):
        other = part.with_name(f"other{n}")
        other.write_bytes(b"not the bytes dsm hashed")
        if other.stat().st_ino == number:
            other.replace(part)
            return True
    part.write_bytes(b"not the bytes dsm hashed")
    return False


HOSTILE_SAID = {
    "removed": "{part} was removed before it was moved into place",
    "replaced": "{part} was swapped for another file than the one dsm wrote and hashed",
    "replaced-same-inode": "{part} was swapped for another file than the one dsm wrote",
    "folder-removed": "cannot write {part}: No such file or directory",
}


SEGMENTED = {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "1000000"}
# Not `replaced-same-inode` with segments: their file is open until its install, so its inode
# is never freed for another file to take.
HOSTILE_CASES = [
    pytest.param(how, env, id=f"{how}-{name}")
    for how in HOSTILE_SAID
    for name, env in (("single", {}), ("segmented", SEGMENTED))
    if not (how == "replaced-same-inode" and env)
]


@pytest.mark.anyio
@pytest.mark.parametrize(("how", "env"), HOSTILE_CASES)
async def test_a_partial_removed_or_replaced_before_its_rename_is_never_installed(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    env: dict[str, str],
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Removed (the file or its folder): the job failed `internal error: FileNotFoundError`,
    a traceback logged. Replaced by `rm; cp` (the other file may take the freed inode's
    number): installed and recorded with the hash of the bytes dsm wrote. Now the job fails
    naming the partial, nothing of the other file is installed, and the next run works."""
    data = blob(12, 3_000_000)
    settings, repo = setup(home, catalog(a=server.add("a.bin", data)), **env)
    part = home / "data" / "a.part"
    took = hostile_to_the_partial(monkeypatch, part, how)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    if how == "replaced-same-inode" and not took[0]:
        pytest.skip("this file system did not hand the freed inode number out again")
    assert run.job.status == JobStatus.FAILED
    assert HOSTILE_SAID[how].format(part=part) in (run.job.error or ""), run.job.error
    assert not (home / "data" / "a").exists() and not run.dataset("a").downloaded
    assert not (home / "dsm-error.log").exists()
    again = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert again.job.status == JobStatus.COMPLETED, again.job.error
    assert (home / "data" / "a").read_bytes() == data
    assert again.dataset("a").checksum == sha(data)


@pytest.mark.anyio
async def test_an_update_whose_partial_is_replaced_keeps_the_old_copy(
    server: FileServer, home: Path, catalog: CatalogFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on the way that checks a file after its transfer (a dataset with mirrors),
    for an update: the verified copy in place and its record stay as they were."""
    old, new = blob(13, 300_000), blob(14, 300_000)
    url = server.add("a.bin", old)
    mirror = server.url("mirror/a.bin")
    entry = {"name": "a", "original_url": url, "mirrors": [mirror], "local_path": "data/a"}
    settings, repo = setup(home, catalog([entry]))
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert first.job.status == JobStatus.COMPLETED, first.job.error
    server.add("a.bin", new)
    hostile_to_the_partial(monkeypatch, home / "data" / "a.part", "replaced")
    run = await run_jobs(settings, repo, JobType.UPDATE, "a")
    assert run.job.status == JobStatus.FAILED
    assert "was swapped for another file than the one dsm wrote" in (run.job.error or "")
    assert (home / "data" / "a").read_bytes() == old
    ds = repo.dataset("a")
    assert (ds.downloaded, ds.checksum) == (True, sha(old))
    assert not (home / "data" / "a.part").exists()
    assert not (home / "dsm-error.log").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("way", ["single", "segmented", "mirror", "files"])
async def test_a_part_swapped_for_another_file_before_its_install_is_never_installed(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    """Between the transfer's last write and the rename, another process of a shared home
    (same owner) moves another file to the `.part`'s name (`mv other.bin a.bin.part`): it
    was installed and recorded with the hash of the bytes dsm wrote. Each way a verified
    partial is renamed into place (transfer thread, segments, the job's own verification as
    for mirrors, the Hub and the team cache, a file of a `files` list) refuses it: the job
    fails naming the partial, nothing of the other file stays."""
    data = blob(12, 3_000_000)
    url, sha = server.add("a.bin", data), hashlib.sha256(data).hexdigest()
    entry: dict[str, Any] = {"name": "a", "description": "t", "local_path": "sub/a.bin"}
    part = home / "sub" / "a.bin.part"
    if way == "files":
        entry["files"] = [{"url": url, "path": "x.bin", "expected_size": len(data)}]
        entry["files"][0]["expected_sha256"] = sha
        part = part / "x.bin.part"
    else:
        entry |= {"original_url": url, "expected_sha256": sha}
    if way == "mirror":
        entry["mirrors"] = [server.add("b.bin", data)]
    env = {"DSM_SEGMENTS": "4", "DSM_SEGMENT_MIN": "100000"} if way == "segmented" else {}
    settings, repo = setup(home, catalog([entry]), **env)
    check = "file_problem" if way == "files" else "integrity_problem"
    checked = getattr(files, check)

    def swapped_first(*args: Any) -> str | None:  # the check before the install
        if part.is_file() and part.stat().st_size == len(data):
            (part.parent / "other.bin").write_bytes(b"not the dataset")
            (part.parent / "other.bin").replace(part)
        return cast("str | None", checked(*args))

    monkeypatch.setattr(files, check, swapped_first)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED, run.job.error
    assert f"{part} was swapped for another file than the one dsm wrote and hashed" in (
        run.job.error or ""
    )
    assert not run.dataset("a").downloaded
    found = [p.read_bytes() for p in (home / "sub").rglob("*") if p.is_file()]
    assert b"not the dataset" not in found


def test_jobs_of_another_type_a_killed_run_left_do_not_run_in_the_next(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """`dsm --run-job delete --all` killed once it had recorded its jobs, then `download
    --all`: the second run adopted the orphaned deletes beside its downloads and ran both, in
    either order, so it removed what it had fetched and exited 0 (found by a kill -9
    harness). The run's request is the newest word on its datasets: orphans of another type
    end canceled, never run."""
    data = blob(41, 50_000)
    cat = catalog(a=server.add("a.bin", data))
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0
    repo = open_repo(make_settings(home, cat))
    params = {"dataset": "a", "force_download": False}
    orphan = Job(JobType.DELETE, "a", params, owner="a-killed-process", created_ms=1)
    repo.save_job(orphan)  # what the killed run left: its job waiting, the row queued
    repo.change("a", Status.QUEUED, download_job_id=orphan.id)
    again = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert again.returncode == 0, again.stderr
    assert (home / "data" / "a").read_bytes() == data
    repo = open_repo(make_settings(home, cat))
    assert repo.dataset("a").status == Status.DOWNLOADED
    ended = repo.job(orphan.id)
    assert ended is not None and ended.status == JobStatus.CANCELED, ended
    assert "superseded by a download" in (ended.error or "")


def test_a_batch_is_written_though_a_folder_it_syncs_was_removed_since(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A recorded install syncs its folder before the batched store write; a later job of the
    same batch (a delete of the unpacked dataset) had removed the folder: the sync failed the
    whole write, every change of the batch was lost (a job left 'running' for good, its row
    'verifying'), found by a kill harness. A folder that is gone has nothing to sync."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(42, 1000))))
    ledger = Ledger(settings, repo, "me")
    job = Job(JobType.DOWNLOAD, "a", {"dataset": "a", "force_download": False}, owner="me")
    ledger.record_queued([job], None, {}, False)
    ledger.claim(job)
    folder = home / ".archives" / "a"
    folder.mkdir(parents=True)
    done = {"size": 1000, "checksum": "0" * 64, "file_mtime_ns": 1}
    with repo.transaction(defer=True):
        ledger.record_done(job, done, folder)
    folder.rmdir()
    repo.flush()
    assert open_repo(settings).dataset("a").status == Status.DOWNLOADED


def test_a_job_claims_a_row_a_lost_write_left_active(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A store write that failed (a full disk) lost a job's end: its row stayed 'verifying',
    pointing at that job. The next job of the dataset (which holds its lock, so no other
    works on it) failed with an internal error, `verifying -> downloading is not allowed`."""
    settings, repo = setup(home, catalog(a=server.add("a.bin", blob(43, 1000))))
    ledger = Ledger(settings, repo, "me")
    repo.change("a", Status.QUEUED, download_job_id="a-job-whose-end-was-lost")
    repo.change("a", Status.VERIFYING)
    job = Job(JobType.DOWNLOAD, "a", {"dataset": "a", "force_download": False}, owner="me")
    ledger.claim(job)
    assert ledger.set_status(job, Status.DOWNLOADING, {}).status == Status.DOWNLOADING


@pytest.mark.anyio
@pytest.mark.parametrize("mirrored", [False, True], ids=["early-install", "verify-then-install"])
async def test_a_full_disk_at_the_install_record_fails_the_job_clearly(
    server: FileServer,
    home: Path,
    catalog: CatalogFn,
    monkeypatch: pytest.MonkeyPatch,
    mirrored: bool,
) -> None:
    """A file without a catalogue sha256 is moved into place after a record of its hash (for
    a crash before the store hears of it); on a full disk (a 10 MiB tmpfs, found by a kill
    harness) that record's write failed the job as an internal error with a traceback. Now a
    disk error as for the transfer's writes: named, the partial dropped for the store's room."""
    url = server.add("a.bin", blob(45, 300_000))
    entry = {"name": "a", "original_url": url, "local_path": "data/a"}
    settings, repo = setup(home, catalog([entry | ({"mirrors": [url]} if mirrored else {})]))
    real = partfile.write_sidecar

    def full(part: Path, meta: dict[str, object]) -> None:
        if "installed_sha256" in meta:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(part, meta)

    monkeypatch.setattr("dsm.engine.files.write_sidecar", full)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a")
    assert run.job.status == JobStatus.FAILED
    assert (run.job.error or "").startswith("disk full while writing"), run.job.error
    assert repo.dataset("a").status == Status.ERROR
    assert not (home / "data" / "a").exists()
    assert not (home / "data" / "a.part").exists()
    assert not (home / "dsm-error.log").exists()


def _sha_only(server: FileServer, data: bytes, kind: str | None = None) -> list[dict[str, Any]]:
    """A catalogue of one dataset `a` served as `data`, naming its sha256 but not its size
    (as most catalogues written by hand do); `kind`: unpacked as that archive kind."""
    entry = {"name": "a", "original_url": server.add("a.bin", data), "local_path": "data/a"}
    return [entry | {"expected_sha256": sha(data)} | ({"extract": kind} if kind else {})]


def test_verify_after_an_update_killed_before_its_record_says_what_is_on_disk(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """An update killed between its rename and its store record leaves the catalogue's new
    bytes in place, the row naming the copy before. verify held the recorded size against
    the file the catalogue's sha256 names (`size mismatch on disk: expected 300000 bytes
    (recorded at download)`, the row turned error); it now checks what the catalogue asks
    and records the copy it hashed."""
    old, new = blob(40, 300_000), blob(41, 400_000)
    cat = catalog(_sha_only(server, old))
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0
    catalog(_sha_only(server, new))
    (home / "data" / "a").write_bytes(new)  # what the killed update had moved into place
    proc = run_dsm("--run-job", "verify", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["status"], row["size"], row["checksum"]) == ("downloaded", len(new), sha(new))


def test_verify_after_an_archive_update_killed_before_its_tree_names_the_stale_tree(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """Killed once the new archive was kept, before its tree took the old one's place: the
    archive is the catalogue's, the tree may not be. verify says so (it said `size mismatch
    on disk ... (recorded at download)` of the very archive the catalogue names), and
    download unpacks the kept archive, fetching nothing."""
    old, new = zip_of({"x.txt": blob(42, 1000)}), zip_of({"y.txt": blob(43, 2000)})
    cat = catalog(_sha_only(server, old, "zip"))
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0
    catalog(_sha_only(server, new, "zip"))
    (home / ".archives" / "a" / "archive.zip").write_bytes(new)
    proc = run_dsm("--run-job", "verify", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 1
    assert "the unpacked copy is recorded from another (an update did not finish)" in proc.stderr
    fetched = len(server.requests("a.bin"))
    proc = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests("a.bin")) == fetched
    assert sorted(p.name for p in (home / "data" / "a").iterdir()) == ["y.txt"]


def test_verify_after_an_update_killed_before_its_record_of_a_size_only_entry_records_it(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """As above, the catalogue naming only the size: verify passed on the catalogue's size
    but kept the record of the copy before, so the row said `changed on disk: v verifies
    it` however often v verified it (and the engine no longer counted the copy verified)."""
    old, new = blob(44, 300_000), blob(45, 400_000)

    def size_only(data: bytes) -> list[dict[str, Any]]:
        url = server.add("a.bin", data)
        return [
            {"name": "a", "original_url": url, "local_path": "data/a", "expected_size": len(data)}
        ]

    cat = catalog(size_only(old))
    assert run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat).returncode == 0
    catalog(size_only(new))
    (home / "data" / "a").write_bytes(new)  # what the killed update had moved into place
    proc = run_dsm("--run-job", "verify", "--all", home=home, catalog_path=cat)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(run_dsm("show", "a", "--json", home=home, catalog_path=cat).stdout)
    assert (row["size"], row["checksum"]) == (len(new), sha(new))
    shown = run_dsm("show", "a", home=home, catalog_path=cat).stdout
    assert "changed on disk" not in shown
