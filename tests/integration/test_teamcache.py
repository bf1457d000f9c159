"""The team cache's S3 client against a real S3 API server (moto's) on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from dsm.domain.jobs import JobStatus, JobType
from dsm.domain.redact import redact_url
from dsm.transfer.partfile import write_sidecar
from dsm.transfer.s3cache import (
    CacheError,
    TeamCache,
    object_key,
    pointer_key,
    s3_config,
    source_id,
)
from tests.conftest import CatalogFn, blob, sha
from tests.enginehelp import Run, run_jobs, setup
from tests.httpserver import FileServer
from tests.s3server import S3


def cache_for(s3: S3, bucket: str, **env: str) -> TeamCache:
    return TeamCache(f"s3://{bucket}/team", env={**s3.env, "HOME": "/nonexistent", **env})


def test_publish_writes_the_object_and_a_pointer_once(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    data = blob(1, 300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    cache = cache_for(s3, bucket)

    assert cache.publish(path, sha(data), len(data), "https://Example.org:443/d/f.bin")
    assert not cache.publish(path, sha(data), len(data), "https://example.org/d/f.bin")

    key = f"team/{object_key(sha(data))}"
    assert key == f"team/sha256/{sha(data)[:2]}/{sha(data)}"
    assert s3.read(bucket, key) == data
    pointer = json.loads(s3.read(bucket, f"team/{pointer_key('https://example.org/d/f.bin')}"))
    assert pointer["source"] == "https://example.org/d/f.bin"
    assert (pointer["sha256"], pointer["size"]) == (sha(data), len(data))
    assert len(s3.keys(bucket)) == 2


def test_find_by_checksum_or_by_source_pointer(s3: S3, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    data = blob(2, 50_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    cache = cache_for(s3, bucket)
    assert cache.find(sha(data), "http://h/f") is None
    assert cache.find(None, "http://h/f") is None
    cache.publish(path, sha(data), len(data), "http://h/f")

    by_sum = cache.find(sha(data), "http://elsewhere/x")
    by_source = cache.find(None, "http://H:80/f")
    assert by_sum is not None and by_source is not None
    assert (by_source.sha256, by_source.size) == (sha(data), len(data))
    assert "X-Amz-Signature=" in by_source.url  # a presigned URL the transfer code can GET


@pytest.mark.parametrize(
    "pointer",
    [b"not json", b"[" * 100_000, b'"a string"'],
    ids=["not-json", "nested-too-deeply", "not-an-object"],
)
def test_a_damaged_pointer_is_as_if_absent(s3: S3, pointer: bytes) -> None:
    """Anyone with write access to the bucket may leave any bytes there: the cache never
    fails a job, so a pointer that is not ours (even JSON nested too deeply) is no pointer."""
    bucket = s3.new_bucket()
    s3.write(bucket, f"team/{pointer_key('http://h/f')}", pointer)
    assert cache_for(s3, bucket).find(None, "http://h/f") is None


def publish_at_once(s3: S3, bucket: str, path: Path, source: str, machines: int) -> list[bool]:
    """`machines` threads publish the file at `path` for `source` at the same moment; what
    each publish returned (any exception fails the test)."""
    data = path.read_bytes()
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(machines)

    def publish() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(cache_for(s3, bucket).publish(path, sha(data), len(data), source))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(machines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    return results


def test_the_first_verified_pointer_wins_a_race(s3: S3, tmp_path: Path) -> None:
    """Two machines publish the same source at once: one object, one pointer, no failure."""
    bucket = s3.new_bucket()
    path = tmp_path / "f.bin"
    path.write_bytes(blob(3, 200_000))
    results = publish_at_once(s3, bucket, path, "http://h/f", machines=4)
    assert len(results) == 4 and results.count(True) >= 1
    assert len(s3.keys(bucket)) == 2


def test_an_unreachable_endpoint_is_a_cache_error(tmp_path: Path) -> None:
    cache = TeamCache(
        "s3://team/x",
        env={
            "AWS_ACCESS_KEY_ID": "a",
            "AWS_SECRET_ACCESS_KEY": "b",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "HOME": str(tmp_path),
        },
    )
    with pytest.raises(CacheError, match="s3://team/x: look-up: "):
        cache.find("0" * 64, "http://h/f")
    with pytest.raises(CacheError):
        cache.ping()


def test_a_missing_bucket_is_a_cache_error(s3: S3) -> None:
    with pytest.raises(CacheError):
        cache_for(s3, "no-such-bucket").ping()


def test_settings_come_from_the_environment_then_the_profile_files(tmp_path: Path) -> None:
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n"
        "[team]\naws_access_key_id = T\naws_secret_access_key = TS\naws_session_token = TT\n"
    )
    (aws / "config").write_text(
        "[default]\nregion = eu-west-1\n[profile team]\nregion = eu-north-1\n"
        "endpoint_url = http://127.0.0.1:9000\n"
    )
    home = {"HOME": str(tmp_path)}
    assert s3_config(home) == {
        "access_key_id": "D",
        "secret_access_key": "DS",
        "region": "eu-west-1",
    }
    assert s3_config({**home, "AWS_PROFILE": "team"}) == {
        "access_key_id": "T",
        "secret_access_key": "TS",
        "session_token": "TT",
        "region": "eu-north-1",
        "endpoint": "http://127.0.0.1:9000",
    }
    env = {**home, "AWS_PROFILE": "team", "AWS_ACCESS_KEY_ID": "E", "AWS_REGION": "us-east-2"}
    got = s3_config(env)
    assert (got["access_key_id"], got["region"]) == ("E", "us-east-2")


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://Example.ORG:443/a/b.bin", "https://example.org/a/b.bin"),
        ("http://user:pw@host:80/x#frag", "http://host/x"),
        ("http://host:8080/x?rev=2", "http://host:8080/x?rev=2"),
        ("hf://datasets/org/name@0123/data.parquet", "hf://datasets/org/name@0123/data.parquet"),
    ],
)
def test_source_ids_are_normalised(url: str, normal: str) -> None:
    assert source_id(url) == normal


def test_a_cache_url_must_name_a_bucket() -> None:
    with pytest.raises(ValueError, match="s3://BUCKET/PREFIX"):
        TeamCache("http://bucket/x")


# -- the engine with a team cache ------------------------------------------------------


def cache_env(s3: S3, bucket: str, **extra: str) -> dict[str, str]:
    return {**s3.env, "DSM_CACHE_URL": f"s3://{bucket}/team", **extra}


def entry(url: str, data: bytes | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "name": "gsm8k",
        "description": "test",
        "original_url": url,
        "local_path": "data/gsm8k.jsonl",
    }
    if data is not None:
        out |= {"expected_size": len(data), "expected_sha256": sha(data)}
    return out


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], dict[str, str]]:
    """Set the process environment for the test's duration (the S3 client reads it)."""

    def use(env: dict[str, str]) -> dict[str, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return use


async def download(
    tmp_path: Path, home_name: str, cat: Path, env: dict[str, str]
) -> tuple[Run, Path]:
    home = tmp_path / home_name
    home.mkdir()
    for key, value in env.items():
        assert os.environ.get(key) == value, "call aws_env(env) first"
    settings, repo = setup(home, cat, **env)
    return await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k"), home


@pytest.mark.anyio
async def test_a_verified_download_is_published_and_another_home_takes_it_from_the_cache(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    bucket = s3.new_bucket()
    data = blob(10, 500_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket))

    first, _ = await download(tmp_path, "a", cat, env)
    assert first.job.status == JobStatus.COMPLETED
    assert first.dataset("gsm8k").served_by == "origin"
    assert s3.read(bucket, f"team/{object_key(sha(data))}") == data

    server.stop()  # the origin is gone: only the cache can serve the second machine
    second, home = await download(tmp_path, "b", cat, env)
    assert second.job.status == JobStatus.COMPLETED, second.job.error
    assert second.dataset("gsm8k").served_by == "team cache"
    assert (home / "data" / "gsm8k.jsonl").read_bytes() == data
    assert len(server.requests("gsm8k.jsonl")) == 1


@pytest.mark.anyio
async def test_without_a_catalogue_checksum_the_source_pointer_finds_the_file(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    bucket = s3.new_bucket()
    data = blob(11, 80_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data))])
    env = aws_env(cache_env(s3, bucket))
    await download(tmp_path, "a", cat, env)
    server.stop()
    second, home = await download(tmp_path, "b", cat, env)
    assert second.dataset("gsm8k").served_by == "team cache"
    assert second.dataset("gsm8k").checksum == sha(data)
    assert (home / "data" / "gsm8k.jsonl").read_bytes() == data


@pytest.mark.anyio
async def test_a_corrupted_cache_object_is_refused_and_the_origin_serves(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    bucket = s3.new_bucket()
    data = blob(12, 300_000)
    s3.write(bucket, f"team/{object_key(sha(data))}", blob(99, 300_000))  # same size, wrong bytes
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    run, home = await download(tmp_path, "a", cat, aws_env(cache_env(s3, bucket)))
    assert run.job.status == JobStatus.COMPLETED
    assert run.dataset("gsm8k").served_by == "origin"
    assert (home / "data" / "gsm8k.jsonl").read_bytes() == data
    assert len(server.requests("gsm8k.jsonl")) == 1
    assert any("held a bad object for gsm8k" in r.getMessage() for r in caplog.records)
    # The origin's verified file replaced it (tests/integration/test_teamcache_lies.py).
    assert s3.read(bucket, f"team/{object_key(sha(data))}") == data


@pytest.mark.anyio
async def test_two_homes_racing_both_complete_and_one_object_is_kept(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    bucket = s3.new_bucket()
    data = blob(13, 400_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket))
    runs: list[Run] = []

    async def one(name: str) -> None:
        runs.append((await download(tmp_path, name, cat, env))[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    assert [r.job.status for r in runs] == [JobStatus.COMPLETED] * 2
    assert s3.keys(bucket) == sorted(
        [f"team/{object_key(sha(data))}", f"team/{pointer_key(server.url('gsm8k.jsonl'))}"]
    )


@pytest.mark.anyio
async def test_read_only_credentials_never_publish(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    bucket = s3.new_bucket()
    data = blob(14, 50_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = aws_env(cache_env(s3, bucket, DSM_CACHE_PUSH="0"))
    run, _ = await download(tmp_path, "a", cat, env)
    assert run.job.status == JobStatus.COMPLETED
    assert s3.keys(bucket) == []


@pytest.mark.anyio
@pytest.mark.parametrize("trouble", ["unreachable endpoint", "missing bucket"])
async def test_a_cache_that_fails_falls_back_to_the_origin_with_one_warning(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    trouble: str,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    data = blob(15, 60_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = cache_env(s3, "no-such-bucket")
    if trouble == "unreachable endpoint":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    run, home = await download(tmp_path, "a", cat, aws_env(env))
    assert run.job.status == JobStatus.COMPLETED
    assert run.dataset("gsm8k").served_by == "origin"
    assert (home / "data" / "gsm8k.jsonl").read_bytes() == data
    warnings = [r.getMessage() for r in caplog.records if r.name == "dsm.cache"]
    assert len(warnings) == 1 and "using the origin" in warnings[0], warnings


@pytest.mark.anyio
async def test_a_partial_from_an_earlier_presigned_url_is_resumed(
    s3: S3,
    server: FileServer,
    tmp_path: Path,
    catalog: CatalogFn,
    caplog: pytest.LogCaptureFixture,
    aws_env: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    """A download from the cache cut by a restart goes on from its partial file: the new
    presigned URL differs from the one the sidecar names, the object behind it does not."""
    bucket = s3.new_bucket()
    data = blob(17, 600_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    env = aws_env(cache_env(s3, bucket))
    cache = cache_for(s3, bucket)
    cache.publish(path, sha(data), len(data), "http://elsewhere/f")
    found = cache.find(sha(data), "http://elsewhere/f")
    assert found is not None
    head = s3.client().head_object(Bucket=bucket, Key=f"team/{object_key(sha(data))}")  # type: ignore[attr-defined]
    home = tmp_path / "a"
    part = home / "data" / "gsm8k.jsonl.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:250_000])
    earlier = redact_url(found.url).replace("X-Amz-Date=", "X-Amz-Date=1")  # another presign
    write_sidecar(part, {"url": earlier, "etag": head["ETag"], "total": len(data)})
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    server.stop()  # only the cache can serve

    caplog.set_level(logging.INFO, logger="werkzeug")  # moto's request log: status per GET
    settings, repo = setup(home, cat, **env)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert run.dataset("gsm8k").served_by == "team cache"
    assert (home / "data" / "gsm8k.jsonl").read_bytes() == data
    seen = [re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage()) for r in caplog.records]
    gets = [line for line in seen if "GET /" in line and object_key(sha(data)) in line]
    assert gets and all('" 206 ' in line for line in gets), gets  # ranged: the partial went on
