"""Fixtures of the API tests: a catalogue served by a local FileServer, a live `dsm serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CatalogFn
from tests.httpserver import FileServer
from tests.system.apiserver import ApiServer, humaneval_bytes


@pytest.fixture
def data() -> bytes:
    return humaneval_bytes()


@pytest.fixture
def catalog_path(server: FileServer, catalog: CatalogFn, data: bytes) -> Path:
    """humaneval (the seed's example name) and a slow dataset, both served on 127.0.0.1."""
    server.add("humaneval.jsonl.gz", data)
    server.add("slow.bin", bytes(4 << 20))
    server.always("slow.bin", rate=64 * 1024)  # about a minute: long enough to act on it
    return catalog(
        humaneval=server.url("humaneval.jsonl.gz"),
        mbpp=server.url("humaneval.jsonl.gz"),
        slow=server.url("slow.bin"),
    )


@pytest.fixture
def api(home: Path, catalog_path: Path) -> Iterator[ApiServer]:
    srv = ApiServer(home, catalog_path)
    yield srv
    srv.stop()
