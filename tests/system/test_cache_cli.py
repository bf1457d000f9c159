"""The team cache from the installed `dsm` command, against a real S3 API server."""

from __future__ import annotations

import json
from pathlib import Path

from dsm.transfer.s3cache import object_key
from tests.conftest import CatalogFn, blob, run_dsm, sha
from tests.httpserver import FileServer
from tests.integration.test_teamcache import entry
from tests.s3server import S3


def test_cache_status_and_push_from_the_installed_command(
    s3: S3, server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    bucket = s3.new_bucket()
    data = blob(16, 40_000)
    cat = catalog([entry(server.add("gsm8k.jsonl", data), data)])
    env = {**s3.env, "HOME": str(home), "DSM_CACHE_PUSH": "0"}
    url = f"s3://{bucket}/team"

    got = run_dsm("--run-job", "download", "--all", home=home, catalog_path=cat, env=env)
    assert got.returncode == 0, got.stderr
    status = run_dsm(
        "cache", "status", "--json", "--cache-url", url, home=home, catalog_path=cat, env=env
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) | {"error": None} == {
        "url": url,
        "reachable": True,
        "error": None,
        "held": 0,
        "known": 1,
        "total": 1,
    }

    pushed = run_dsm(
        "cache", "push", "--all", "--cache-url", url, home=home, catalog_path=cat, env=env
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed       gsm8k" in pushed.stdout
    assert s3.read(bucket, f"team/{object_key(sha(data))}") == data
    status = run_dsm("cache", "status", "--cache-url", url, home=home, catalog_path=cat, env=env)
    assert "holds        1 of 1 datasets" in status.stdout

    down = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    status = run_dsm("cache", "status", "--cache-url", url, home=home, catalog_path=cat, env=down)
    assert status.returncode == 1
    assert "NOT reachable" in status.stdout
    assert "Traceback" not in status.stderr


def test_cache_commands_without_a_cache_or_with_a_bad_url(home: Path, catalog: CatalogFn) -> None:
    cat = catalog(alpha="http://127.0.0.1:9/a")
    got = run_dsm("cache", "status", home=home, catalog_path=cat)
    assert got.returncode == 1
    assert "no team cache: set DSM_CACHE_URL or --cache-url" in got.stderr
    got = run_dsm("cache", "push", home=home, catalog_path=cat, DSM_CACHE_URL="s3://b/p")
    assert got.returncode == 2
    assert "dsm cache push takes dataset names or --all" in got.stderr
    got = run_dsm("cache", "status", home=home, catalog_path=cat, DSM_CACHE_URL="https://b/p")
    assert got.returncode == 2
    assert "DSM_CACHE_URL='https://b/p'" in got.stderr
