"""The team cache as a lying server or a careless teammate leaves it: a download takes
from it only what proves to be the dataset, and never fails or hangs because of it."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from dsm.domain.jobs import JobStatus, JobType
from dsm.transfer.s3cache import object_key
from tests.conftest import CatalogFn, blob, sha
from tests.enginehelp import run_jobs, setup
from tests.httpserver import FileServer
from tests.integration.test_teamcache import aws_env, cache_env, entry
from tests.s3server import S3

pytestmark = pytest.mark.anyio
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
    home = tmp_path / "a"
    home.mkdir()
    settings, repo = setup(home, cat, **env)
    run = await run_jobs(settings, repo, JobType.DOWNLOAD, "gsm8k")
    assert run.job.status == JobStatus.COMPLETED, run.job.error
    assert run.dataset("gsm8k").served_by == "origin"
    assert (home / "data/gsm8k.jsonl").read_bytes() == data
    assert object_gets(caplog, key) == []
    warned = [r.getMessage() for r in caplog.records if r.name == "dsm.cache"]
    assert any(f"held a bad object for gsm8k (sha256 {sha(data)}" in w for w in warned), warned
