"""Shared fixtures: a live HTTP server on loopback, a data home, catalogues, the dsm command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dsm.catalog.parse import load_catalog
from dsm.catalog.sync import register
from dsm.config import Settings, load_settings
from dsm.repository import Repository
from dsm.store import Store
from tests.httpserver import FileServer
from tests.hubserver import HubServer
from tests.s3server import s3  # noqa: F401  (the fixture: a real S3 API server)

# Fast retries and short stalls so fault tests finish in seconds; they are settings, not sleeps.
TEST_ENV = {
    "DSM_RETRY_DELAY": "0.05",
    "DSM_STALL_TIMEOUT": "2",
    "DSM_MAX_RETRIES": "3",
    "TEXTUAL_ANIMATIONS": "none",
    # Online unless a test says otherwise, whatever the developer's shell has set.
    "DSM_OFFLINE": "0",
    "HF_HUB_OFFLINE": "0",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def mount_tmpfs(folder: Path, size: str) -> None:
    """A file system of `size` of its own at `folder` (made if missing): a tmpfs, which only
    root may mount; the test is skipped elsewhere. The caller unmounts it (`umount -R`)."""
    folder.mkdir(exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    mounted = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system (needs root): {mounted.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 16 MiB of its own (`mount_tmpfs`)."""
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, "16m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def hub() -> Iterator[HubServer]:
    """A Hugging Face Hub stand-in on 127.0.0.1 (its CDN on localhost)."""
    srv = HubServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


CatalogFn = Callable[..., Path]


@pytest.fixture
def catalog(tmp_path: Path) -> CatalogFn:
    """Write a catalogue: catalog(name=url, ...) or catalog(entries=[{...}, ...])."""

    def write(entries: list[dict[str, Any]] | None = None, **urls: str) -> Path:
        rows = list(entries or [])
        rows += [
            {"name": n, "description": f"test {n}", "original_url": u, "local_path": f"data/{n}"}
            for n, u in urls.items()
        ]
        path = tmp_path / "catalog.json"
        path.write_text(json.dumps({"datasets": rows}))
        return path

    return write


def make_settings(home: Path, catalog_path: Path, **env: str) -> Settings:
    return load_settings(home=str(home), catalog=str(catalog_path), env={**TEST_ENV, **env})


def open_repo(settings: Settings) -> Repository:
    repo = Repository(Store(settings.db_path))
    register(repo, load_catalog(settings.catalog, settings.home))
    return repo


def dsm_command() -> list[str]:
    """The installed console script when there is one, else the module."""
    exe = shutil.which("dsm", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "dsm"]


def dsm_env(home: Path, catalog_path: Path | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **TEST_ENV, "DSM_HOME": str(home), **extra}
    if catalog_path is not None:
        env["DSM_CATALOG"] = str(catalog_path)
    return env


def start_dsm(*args: str, home: Path, catalog_path: Path) -> subprocess.Popen[bytes]:
    """The installed dsm started in the background on this home, its output discarded (a
    process another one, or a test, then acts beside, or kills)."""
    return subprocess.Popen(
        [*dsm_command(), *args],
        env=dsm_env(home, catalog_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_dsm(
    *args: str,
    home: Path,
    catalog_path: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dsm_command(), *args],
        env=dsm_env(home, catalog_path, **(env or {}), **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def blob(seed: int, size: int = 400_000) -> bytes:
    """Deterministic test content of any size, different for each seed."""
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll until predicate() is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
