"""The team cache as a lying server or a careless teammate leaves it: a download takes
from it only what proves to be the dataset, and never fails or hangs because of it."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from dsm.domain.jobs import JobStatus, JobType
from dsm.domain.redact import redact_url
from dsm.transfer.partfile import write_sidecar
from dsm.transfer.s3cache import UPLOAD, CacheError, object_key, pointer_key
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.enginehelp import Run, run_jobs, setup
from tests.httpserver import FileServer
from tests.integration.test_teamcache import (
    aws_env,
    cache_env,
    cache_for,
    download,
    entry,
    publish_at_once,
)
from tests.s3server import S3, Lie, LyingS3

pytestmark = pytest.mark.anyio
UPLOAD_TIMEOUT = float(UPLOAD[0]["timeout"].removesuffix("s"))  # obstore's one timeout before
__all__ = ["aws_env"]  # a fixture, used by name


async def test_an_update_without_a_catalogue_checksum_goes_to_the_origin(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """A source whose file changed (no checksum in the catalogue): the pointer a teammate
    left names the old file. An update asks for the origin's file now, not the copy the
    cache kept of it (it was served that copy again, called updated), and the cache's
    pointer then names the new file."""
    old, new = blob(1, 70_000), blob(2, 70_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", old))])
    env = aws_env(cache_env(s3, s3.new_bucket()))
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
    settings, repo = setup(homes[0], cat, **env)
    first = await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k")
    assert first.dataset("gsm8k").checksum == sha(old)
    server.add("gsm8k.jsonl", new)  # the source moved on
    updated = await run_jobs(settings, repo, JobType.UPDATE, "gsm8k")
    assert updated.job.status == JobStatus.COMPLETED, updated.job.error
    assert (updated.dataset("gsm8k").checksum, updated.dataset("gsm8k").served_by) == (
        sha(new),
        "origin",
    )
    assert (homes[0] / "data/gsm8k.jsonl").read_bytes() == new
    server.stop()  # a teammate's download now comes from the cache: the new file
    settings, repo = setup(homes[1], cat, **env)
    second = await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k")
    assert second.job.status == JobStatus.COMPLETED, second.job.error
    assert second.dataset("gsm8k").served_by == "team cache"
    assert (homes[1] / "data/gsm8k.jsonl").read_bytes() == new


def object_gets(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    """The GETs of `key` moto's request log saw."""
    seen = [re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage()) for r in caplog.records]
    return [line for line in seen if "GET /" in line and key in line]


async def test_a_cache_object_of_another_size_than_the_catalogues_is_not_fetched(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """An object filed under the dataset's sha256 whose size is not the catalogue's (a
    teammate's damaged upload, or one made to waste the download): its size says it is not
    the file, so it is not downloaded; the origin serves and a warning names the object."""
    bucket = s3.new_bucket()
    data = blob(3, 50_000)
    key = object_key(sha(data))
    s3.write(bucket, f"team/{key}", blob(4, 2_000_000))
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket))
    caplog.set_level(logging.INFO, logger="werkzeug")  # moto's request log
    run, home = await download(tmp_path, "a", cat, env)
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert run.dataset("gsm8k").served_by == "origin"
    assert (home / "data/gsm8k.jsonl").read_bytes() == data
    assert object_gets(caplog, key) == []
    warned = [r.getMessage() for r in caplog.records if r.name == "dsm.cache"]
    assert any(f"held a bad object for gsm8k (sha256 {sha(data)}" in w for w in warned), warned


SECRETS = ("PASSWORDX", "SECRETKEYX", "SESSIONTOKENX")


def secret_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIDX",
        "AWS_SECRET_ACCESS_KEY": "SECRETKEYX",
        "AWS_SESSION_TOKEN": "SESSIONTOKENX",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "HOME": "/nonexistent",
    }


@pytest.mark.parametrize(
    ("endpoint", "said"),
    [
        ("http://127.0.0.1:9", "(Connection refused)"),
        ("http://minio:PASSWORDX@127.0.0.1:9", "holds a user and password"),
    ],
    ids=["refused", "password-in-endpoint"],
)
def test_a_failing_cache_names_the_cause_and_no_credential(
    server: FileServer, home: Path, catalog: CatalogFn, endpoint: str, said: str
) -> None:
    """`dsm cache status` and a download's warning name why the cache failed (the cause was
    cut off after the request URL) and print no credential: an endpoint given with its user
    and password (in every message, and in every presigned URL) is refused."""
    data = blob(5, 20_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = secret_env(endpoint) | {"DSM_CACHE_URL": "s3://bkt/t"}
    status = run_dsm("cache", "status", home=home, catalog_path=cat, env=env)
    assert status.returncode == 1
    assert "NOT reachable" in status.stdout and said in status.stdout, status.stdout
    run = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, env=env)
    assert run.returncode == 0, run.stderr
    assert "team cache: the look-up failed" in run.stderr and said in run.stderr, run.stderr
    shown = run_dsm("show", "gsm8k", "--json", home=home, catalog_path=cat, env=env)
    for text in (status.stdout, status.stderr, run.stdout, run.stderr, shown.stdout):
        assert not [s for s in SECRETS if s in text], text


def test_credentials_in_the_cache_url_are_refused_without_printing_them(
    home: Path, catalog: CatalogFn
) -> None:
    cat = catalog([])
    env = secret_env("http://127.0.0.1:9") | {"DSM_CACHE_URL": "s3://AKIDX:SECRETKEYX@bkt/t"}
    got = run_dsm("cache", "status", home=home, catalog_path=cat, env=env)
    assert got.returncode == 2, got.stdout + got.stderr
    assert "no credentials" in got.stderr and "SECRETKEYX" not in got.stdout + got.stderr


@pytest.mark.parametrize(
    "text",
    [
        "[default]\naws_access_key_id = AKIDX\naws_secret_access_key SECRETKEYX\n",
        "aws_secret_access_key = SECRETKEYX\n",
    ],
    ids=["no-equals-sign", "no-section"],
)
def test_a_broken_profile_file_is_named_without_its_lines(
    home: Path, catalog: CatalogFn, tmp_path: Path, text: str
) -> None:
    """configparser quotes the line it cannot read: the one with the secret key, here."""
    creds = tmp_path / "credentials"
    creds.write_text(text)
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(creds),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "HOME": "/nonexistent",
        "DSM_CACHE_URL": "s3://bkt/t",
    }
    got = run_dsm("cache", "status", home=home, catalog_path=catalog([]), env=env)
    assert got.returncode == 1
    assert f"cannot read AWS settings {creds}: " in got.stdout and " line " in got.stdout
    assert "SECRETKEYX" not in got.stdout + got.stderr, got.stdout


def test_a_large_file_is_published_in_parts_even_by_racing_machines(s3: S3, tmp_path: Path) -> None:
    """A file above one part goes up in parts streamed from disk (a create-only put is one
    request whose body obstore held in memory whole: 300 MiB took 513 MiB, and S3 refuses a
    single PUT above 5 GiB), also when three machines publish it at once: one whole object."""
    bucket = s3.new_bucket()
    data = blob(6, 12 << 20)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    publish_at_once(s3, bucket, path, "http://h/big", machines=3)
    key = f"team/{object_key(sha(data))}"
    head = s3.client().head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    assert "-" in head["ETag"]  # a multipart upload's ETag: "<md5 of the parts' md5s>-<n>"
    assert s3.read(bucket, key) == data


@pytest.mark.parametrize("named", ["../../x", "a/../../b", "", "Z" * 64, "0" * 64 + "/.."])
def test_a_pointer_naming_no_sha256_is_as_if_absent(s3: S3, named: str) -> None:
    """A pointer anyone with write access left, naming a key that is no sha256 (a path that
    climbs out of the prefix): no pointer, not a failing cache (which rests a minute)."""
    bucket = s3.new_bucket()
    s3.write(bucket, f"team/{pointer_key('http://h/f')}", json.dumps({"sha256": named}).encode())
    assert cache_for(s3, bucket).find(None, "http://h/f") is None


@pytest.fixture
def liar(s3: S3) -> Iterator[LyingS3]:
    front = LyingS3(s3.endpoint)
    yield front
    front.stop()


async def through_the_liar(
    s3: S3,
    liar: LyingS3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
    data: bytes,
    lie: Lie,
) -> Run:
    """`data` published to the cache, its GET answered with `lie` by the front `liar`, then
    downloaded as gsm8k (also served by the origin) into tmp_path/a: the job completed with
    the right bytes."""
    bucket = s3.new_bucket()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    cache_for(s3, bucket).publish(path, sha(data), len(data), "http://elsewhere/f")
    liar.lie("GET", object_key(sha(data)), lie)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket, AWS_ENDPOINT_URL=liar.endpoint))
    home = tmp_path / "a"
    home.mkdir()
    settings, repo = setup(home, cat, **env)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k", stall_timeout=1.0)
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert (home / "data/gsm8k.jsonl").read_bytes() == data
    return run


@pytest.mark.parametrize(
    ("lie", "said"),
    [(Lie(status=403), "HTTP 403"), (Lie(status=500), "HTTP 500"), (Lie(stall=True), "stall")],
    ids=["forbidden", "server-error", "stalled-body"],
)
async def test_a_cache_object_that_cannot_be_read_falls_back_to_the_origin(
    s3: S3,
    liar: LyingS3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
    lie: Lie,
    said: str,
) -> None:
    """The cache holds the object (its HEAD answers) but its GET is refused, fails or stops
    half way: the job completes from the origin, one warning names the failure and carries
    no part of the presigned URL's signature or credential."""
    data = blob(7, 300_000)
    run = await through_the_liar(s3, liar, server, tmp_path, catalog, aws_env, data, lie)
    assert run.dataset("gsm8k").served_by == "origin"
    gets = [p for m, p, _ in liar.seen if m == "GET" and object_key(sha(data)) in p]
    assert gets and "X-Amz-Signature=" in gets[0]  # the cache was asked, through a presign
    warned = [r.getMessage() for r in caplog.records if r.name == "dsm.cache"]
    assert len(warned) == 1 and "the download failed" in warned[0], warned
    assert said in warned[0], warned
    signature = gets[0].split("X-Amz-Signature=")[1].split("&")[0]
    assert signature not in warned[0] and "testing/" not in warned[0]


def test_push_of_a_file_damaged_on_disk_publishes_nothing(
    s3: S3, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A byte of a verified copy flipped on disk with its size and mtime unchanged (a bad
    sector, a tool that restores times): `dsm cache push` must not file those bytes under the
    verified sha256. Objects are never replaced, so the whole team would fetch the bad object
    and throw it away at every download until someone removed it by hand."""
    bucket = s3.new_bucket()
    data = blob(8, 40_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = {**s3.env, "HOME": str(home), "DSM_CACHE_PUSH": "0", "DSM_CACHE_URL": f"s3://{bucket}/t"}
    got = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, env=env)
    assert got.returncode == 0, got.stderr
    path = home / "data/gsm8k.jsonl"
    st = path.stat()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    pushed = run_dsm("cache", "push", "--all", home=home, catalog_path=cat, env=env)
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert "gsm8k" in pushed.stdout + pushed.stderr and "sha256" in pushed.stdout + pushed.stderr
    assert s3.keys(bucket) == []


async def origin_then_cache(
    tmp_path: Path, server: FileServer, cat: Path, env: dict[str, str], data: bytes
) -> list[Run]:
    """The dataset downloaded in two homes, the second with the origin stopped (only the
    cache can serve it); each run completes with `data` in place."""
    runs = []
    for n, name in enumerate("ab"):
        if n:
            server.stop()
        run, home = await download(tmp_path, name, cat, env)
        assert run.job.status == JobStatus.COMPLETED, run.job.error
        assert (home / "data/gsm8k.jsonl").read_bytes() == data
        runs.append(run)
    return runs


@pytest.mark.parametrize("checksum", [True, False], ids=["with-checksum", "by-pointer"])
async def test_a_source_with_credentials_is_shared_without_them(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
    checksum: bool,
) -> None:
    """A catalogue URL with `user:password@`: the store keeps it redacted
    (`http://[redacted]@host/...`), which urllib refuses to parse (a bracketed host that is
    no IPv6 address): the look-up by pointer and the publish failed the job with an internal
    error. It is shared under the URL without its credentials, which no pointer holds."""
    data = blob(9, 30_000)
    url = server.add("gsm8k.jsonl", data).replace("://", "://user:PASSWORDX@")
    cat = catalog([entry(url, data if checksum else None)])
    bucket = s3.new_bucket()
    env = aws_env(cache_env(s3, bucket))
    runs = await origin_then_cache(tmp_path, server, cat, env, data)
    assert [r.dataset("gsm8k").served_by for r in runs] == ["origin", "team cache"]
    pointer = s3.read(bucket, f"team/{pointer_key(url)}")
    assert b"PASSWORDX" not in pointer and b"redacted" not in pointer


async def test_a_partial_from_an_origin_with_credentials_does_not_stop_the_cache(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """A download from a URL with `user:password@` cut short leaves a partial whose sidecar
    names the URL redacted (`http://[redacted]@host/...`); the next run finds the file in
    the cache and compares the sidecar's URL with the presigned one: urllib refused to parse
    it and the job failed with an internal error."""
    bucket = s3.new_bucket()
    data = blob(10, 60_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    cache_for(s3, bucket).publish(path, sha(data), len(data), "http://elsewhere/f")
    url = server.add("gsm8k.jsonl", data).replace("://", "://user:PASSWORDX@")
    home = tmp_path / "a"
    part = home / "data" / "gsm8k.jsonl.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:20_000])
    write_sidecar(part, {"url": redact_url(url), "etag": '"x"', "total": len(data)})
    cat = catalog([entry(url, data)])
    settings, repo = setup(home, cat, **aws_env(cache_env(s3, bucket)))
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert run.dataset("gsm8k").served_by == "team cache"
    assert (home / "data/gsm8k.jsonl").read_bytes() == data


def test_push_never_publishes_an_unconfirmed_copy(
    s3: S3, server: FileServer, tmp_path: Path, catalog: CatalogFn
) -> None:
    """A body without length, validators or ranges, cut at 70,000 of 200,000 bytes: the copy
    is kept `confirmed: false`, and never shared. `dsm cache push` published it anyway, with
    a pointer for its source: a teammate then got the cut file from the cache, recorded as a
    confirmed, verified download."""
    bucket = s3.new_bucket()
    data = blob(11, 200_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data, etag=None, last_modified=False))])
    server.always("gsm8k.jsonl", no_length=True, ignore_range=True)
    server.fault("gsm8k.jsonl", no_length=True, ignore_range=True, drop_after=70_000)
    env = {**s3.env, "DSM_CACHE_URL": f"s3://{bucket}/team", "HOME": str(tmp_path)}
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
    cut = run_dsm("--run-job", "download", "--all", home=homes[0], catalog_path=cat, env=env)
    assert cut.returncode == 1 and "not confirmed" in cut.stderr, cut.stderr
    assert s3.keys(bucket) == []  # the download did not share it
    pushed = run_dsm("cache", "push", "--all", home=homes[0], catalog_path=cat, env=env)
    assert "pushed" not in pushed.stdout.replace("not pushed", ""), pushed.stdout
    assert "not confirmed" in pushed.stdout
    assert s3.keys(bucket) == []
    other = run_dsm("--run-job", "download", "--all", home=homes[1], catalog_path=cat, env=env)
    assert (homes[1] / "data/gsm8k.jsonl").read_bytes() == data, other.stderr


def test_push_never_publishes_an_outdated_copy(
    s3: S3, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """The catalogue moves a dataset to a new URL (a new version): its verified copy is now
    `outdated`, the row names the new source and holds the old file. `dsm cache push` filed
    a pointer from the new source to the old file, which a teammate then took as the new
    version, verified."""
    bucket = s3.new_bucket()
    old, new = blob(12, 30_000), blob(13, 30_000)
    cat = catalog([entry(server.add("v1.jsonl", old))])
    env = {**s3.env, "DSM_CACHE_URL": f"s3://{bucket}/team", "HOME": str(home)}
    first = {**env, "DSM_CACHE_PUSH": "0"}
    got = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, env=first)
    assert got.returncode == 0, got.stderr
    cat = catalog([entry(server.add("v2.jsonl", new))])
    assert setup(home, cat)[1].dataset("gsm8k").outdated
    pushed = run_dsm("cache", "push", "--all", home=home, catalog_path=cat, env=env)
    assert "outdated" in pushed.stdout and "pushed       gsm8k" not in pushed.stdout
    assert s3.keys(bucket) == []


def test_a_pointer_too_large_to_be_ours_is_not_read(s3: S3, tmp_path: Path) -> None:
    """A pointer is a few hundred bytes; one of 1 MiB (a teammate's mistake, or 300 MB to
    fill the memory of every machine that looks the source up: it was read whole, 900 MB
    at its peak) is as if absent, unread."""
    bucket = s3.new_bucket()
    data = blob(14, 10_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    cache = cache_for(s3, bucket)
    cache.publish(path, sha(data), len(data), "http://h/f")
    assert cache.find(None, "http://h/f") is not None
    padded = {"sha256": sha(data), "size": len(data), "pad": "x" * (1 << 20)}
    s3.write(bucket, f"team/{pointer_key('http://h/f')}", json.dumps(padded).encode())
    assert cache.find(None, "http://h/f") is None


def test_a_missing_bucket_is_named_by_s3s_own_code(s3: S3) -> None:
    """The cause of a failure is in the answer's body, past the first line obstore shows."""
    with pytest.raises(CacheError, match=r"404 Not Found.* \(NoSuchBucket\)$"):
        cache_for(s3, "no-such-bucket").ping()


async def test_a_bad_cache_object_is_replaced_by_the_verified_file(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """An object of the right size whose bytes do not hash to its key (a damaged upload): the
    machine that finds it fetches the origin's file, and its upload, which checks the bytes
    it sends against the key, replaces the object. It was kept for good: every teammate
    fetched it whole at each download, to refuse it."""
    bucket = s3.new_bucket()
    data = blob(15, 300_000)
    key = f"team/{object_key(sha(data))}"
    s3.write(bucket, key, blob(16, 300_000))
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket))
    runs = await origin_then_cache(tmp_path, server, cat, env, data)
    assert [r.dataset("gsm8k").served_by for r in runs] == ["origin", "team cache"]
    assert s3.read(bucket, key) == data
    assert sum("held a bad object" in r.getMessage() for r in caplog.records) == 1


async def test_a_cache_that_never_answers_costs_a_short_wait_once_per_process(
    s3: S3,
    liar: LyingS3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """An endpoint that accepts connections and never answers a look-up: the job goes to
    the origin after the look-up's short time-out (it waited obstore's 30 s, each job), and
    the next engine of the process (a script's second `dsm.library` call) leaves the resting
    cache alone and says nothing more (each engine waited, and warned, again)."""
    bucket = s3.new_bucket()
    data = blob(8, 50_000)
    liar.lie("HEAD", object_key(sha(data)), Lie(hang=True))
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket, AWS_ENDPOINT_URL=liar.endpoint))
    with anyio.fail_after(UPLOAD_TIMEOUT / 2):  # a deadline, far above the look-up's
        first, _ = await download(tmp_path, "a", cat, env)
    asked = len(liar.seen)
    second, home = await download(tmp_path, "b", cat, env)
    for run in (first, second):
        assert run.job.status == JobStatus.COMPLETED, run.job.error
        assert run.dataset("gsm8k").served_by == "origin"
    assert (home / "data/gsm8k.jsonl").read_bytes() == data
    assert asked == 1 and len(liar.seen) == asked  # the second engine asked nothing
    warned = [r.getMessage() for r in caplog.records if r.name == "dsm.cache"]
    assert len(warned) == 1 and "the look-up failed" in warned[0], warned


async def test_a_download_from_the_cache_cut_short_resumes_from_the_cache(
    s3: S3,
    liar: LyingS3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """The cache's GET stops half way, once: the download goes on from its partial with a
    Range to the cache (it started again from zero at the origin), no warning, the origin
    never asked."""
    data = blob(9, 400_000)
    lie = Lie(stall=True, once=True)
    run = await through_the_liar(s3, liar, server, tmp_path, catalog, aws_env, data, lie)
    assert run.dataset("gsm8k").served_by == "team cache"
    ranges = [r for m, p, r in liar.asked if m == "GET" and object_key(sha(data)) in p]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert server.requests("gsm8k.jsonl") == []
    assert not [r for r in caplog.records if r.name == "dsm.cache" and r.levelno >= logging.WARNING]
