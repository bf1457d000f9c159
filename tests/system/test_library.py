"""The Python API (`import dsm`), called from fresh interpreters against the live local server."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from dsm.domain.jobs import JobStatus
from dsm.repository import Repository
from dsm.store import Store
from tests.conftest import CatalogFn, blob, dsm_env, sha, wait_for
from tests.httpserver import FileServer

# Evaluates one API call in a fresh interpreter and prints its result, or the error caught.
CALL = textwrap.dedent(
    """
    import json, sys
    import dsm
    try:
        value = eval(sys.argv[1])
    except dsm.DatasetError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                          "dataset": exc.dataset}))
    else:
        print(json.dumps({"value": value if isinstance(value, list) else str(value)}))
    """
)


def start(expr: str, home: Path, catalog_path: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CALL, expr],
        env=dsm_env(home, catalog_path, **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert err == ""  # stderr is no terminal here: no progress line, nothing else
    result: dict[str, Any] = json.loads(out)
    return result


def call(expr: str, home: Path, catalog_path: Path, **env: str) -> dict[str, Any]:
    return finish(start(expr, home, catalog_path, **env))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def jobs_of(home: Path, name: str) -> list[JobStatus]:
    return [j.status for j in Repository(Store(home / "db.json")).jobs() if j.dataset == name]


@pytest.fixture
def alpha(server: FileServer, catalog: CatalogFn) -> tuple[bytes, Path]:
    body = blob(1)
    url = server.add("alpha.bin", body)
    entry = {"name": "alpha", "original_url": url, "local_path": "data/alpha.bin"}
    return body, catalog(entries=[{**entry, "expected_sha256": sha(body)}])


def test_ensure_downloads_then_skips_without_a_request(
    home: Path, server: FileServer, alpha: tuple[bytes, Path]
) -> None:
    body, cat = alpha
    first = call('dsm.ensure("alpha")', home, cat)
    target = home / "data" / "alpha.bin"
    assert first == {"value": str(target)}
    assert target.read_bytes() == body
    assert len(server.requests("alpha.bin")) == 1

    again = call('dsm.ensure("alpha")', home, cat)
    assert again == first
    assert len(server.requests("alpha.bin")) == 1  # verified copy: no request at all
    assert call('dsm.path("alpha")', home, cat) == first
    assert call('dsm.verify("alpha")', home, cat) == first
    assert call('dsm.ensure_all(["alpha"])', home, cat) == {"value": str({"alpha": target})}


def test_force_downloads_again(home: Path, server: FileServer, alpha: tuple[bytes, Path]) -> None:
    _, cat = alpha
    first = call('dsm.ensure("alpha")', home, cat)
    assert call('dsm.ensure("alpha", force=True)', home, cat) == first
    assert len(server.requests("alpha.bin")) == 2


def test_wrong_checksum_raises_integrity_error(
    home: Path, server: FileServer, catalog: CatalogFn
) -> None:
    url = server.add("alpha.bin", blob(1))
    wrong = sha(blob(2))
    entry = {"name": "alpha", "original_url": url, "local_path": "data/a.bin"}
    cat = catalog(entries=[{**entry, "expected_sha256": wrong}])
    result = call('dsm.ensure("alpha")', home, cat)
    assert result["error"] == "IntegrityError"
    assert result["dataset"] == "alpha"
    assert f"expected sha256 {wrong}, got {sha(blob(1))}" in result["message"]
    assert not (home / "data" / "a.bin").exists()  # never installed
    assert call('dsm.path("alpha")', home, cat)["error"] == "OfflineError"


def test_changed_copy_fails_verify_then_ensure_fetches_again(
    home: Path, server: FileServer, alpha: tuple[bytes, Path]
) -> None:
    body, cat = alpha
    target = home / "data" / "alpha.bin"
    call('dsm.ensure("alpha")', home, cat)
    target.write_bytes(body[::-1])
    result = call('dsm.verify("alpha")', home, cat)
    assert result["error"] == "IntegrityError"
    assert "checksum mismatch on disk" in result["message"]
    assert call('dsm.ensure("alpha")', home, cat) == {"value": str(target)}
    assert target.read_bytes() == body
    assert len(server.requests("alpha.bin")) == 2


def test_unreachable_server_raises_network_error(home: Path, catalog: CatalogFn) -> None:
    cat = catalog(alpha=f"http://127.0.0.1:{closed_port()}/alpha.bin")
    result = call('dsm.ensure("alpha")', home, cat, DSM_MAX_RETRIES="1")
    assert result["error"] == "NetworkError"
    assert "connection refused by 127.0.0.1" in result["message"]  # fails fast (issue 18)
    assert "after 2 attempts" in result["message"]


def test_offline_mode_makes_no_request(
    home: Path, server: FileServer, alpha: tuple[bytes, Path]
) -> None:
    _, cat = alpha
    missing = call('dsm.ensure("alpha")', home, cat, DSM_OFFLINE="1")
    assert missing["error"] == "OfflineError"
    assert server.requests("alpha.bin") == []
    path = call('dsm.ensure("alpha")', home, cat)["value"]
    assert call('dsm.ensure("alpha")', home, cat, DSM_OFFLINE="1") == {"value": path}
    forced = call('dsm.ensure("alpha", force=True)', home, cat, DSM_OFFLINE="1")
    assert forced["error"] == "OfflineError"
    assert len(server.requests("alpha.bin")) == 1
    bad = call('dsm.ensure("alpha")', home, cat, DSM_OFFLINE="maybe")
    assert bad["error"] == "DatasetError"
    assert "DSM_OFFLINE='maybe'" in bad["message"]


def test_unknown_name_raises_not_found(home: Path, alpha: tuple[bytes, Path]) -> None:
    _, cat = alpha
    for expr in ('dsm.ensure("nope")', 'dsm.path("nope")', 'dsm.ensure_all(["alpha", "nope"])'):
        result = call(expr, home, cat)
        assert result["error"] == "NotFoundError", expr
        assert result["dataset"] == "nope"


def test_datasets_lists_records(home: Path, alpha: tuple[bytes, Path]) -> None:
    body, cat = alpha
    expr = "[(d.name, d.verified, d.size, d.path.name) for d in dsm.datasets()]"
    assert call(expr, home, cat) == {"value": [["alpha", False, None, "alpha.bin"]]}
    call('dsm.ensure("alpha")', home, cat)
    assert call(expr, home, cat) == {"value": [["alpha", True, len(body), "alpha.bin"]]}


def test_async_twin_on_a_running_loop(home: Path, alpha: tuple[bytes, Path]) -> None:
    _, cat = alpha
    expr = '__import__("asyncio").run(dsm.aensure("alpha"))'
    assert call(expr, home, cat) == {"value": str(home / "data" / "alpha.bin")}
    inside = textwrap.dedent(
        """
        import asyncio, dsm
        async def main():
            try:
                dsm.ensure("alpha")
            except RuntimeError as exc:
                print(exc)
        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", inside],
        env=dsm_env(home, cat),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "use `await dsm.aensure()`" in result.stdout, result.stderr


def test_eight_processes_download_once(
    home: Path, server: FileServer, alpha: tuple[bytes, Path]
) -> None:
    """Eight ranks at once: the first holds the dataset's lock while the server holds its
    answer until every rank has recorded its job; then one download, seven skips."""
    body, cat = alpha
    gate = threading.Event()
    server.fault("alpha.bin", gate=gate)
    ranks = [start('dsm.ensure("alpha")', home, cat, DSM_STALL_TIMEOUT="60") for _ in range(8)]
    try:
        wait_for(lambda: len(server.requests("alpha.bin")) == 1, timeout=60)
        wait_for(lambda: len(jobs_of(home, "alpha")) == 8, timeout=60)
    finally:
        gate.set()
    results = [finish(p) for p in ranks]
    assert results == [{"value": str(home / "data" / "alpha.bin")}] * 8
    assert len(server.requests("alpha.bin")) == 1
    assert (home / "data" / "alpha.bin").read_bytes() == body
    # Every rank's job ended well; the store keeps the newest (ledger.jobs_to_prune).
    statuses = jobs_of(home, "alpha")
    assert statuses and set(statuses) <= {JobStatus.COMPLETED, JobStatus.SKIPPED}


def on_terminal(expr: str, home: Path, catalog_path: Path) -> tuple[dict[str, Any], bytes]:
    """Run one call with stderr a terminal (a pty); its result and what it drew there."""
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", CALL, expr],
        env=dsm_env(home, catalog_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=sub,
        text=True,
    )
    os.close(sub)
    drawn = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main)
    result: dict[str, Any] = json.loads(proc.communicate(timeout=90)[0])
    return result, drawn


def test_progress_is_drawn_on_a_terminal_only(home: Path, alpha: tuple[bytes, Path]) -> None:
    """On a terminal the line is drawn unless progress=False; `finish` checks that a captured
    (not a terminal) stderr stays empty."""
    _, cat = alpha
    want = {"value": str(home / "data" / "alpha.bin")}
    result, drawn = on_terminal('dsm.ensure("alpha")', home, cat)
    assert result == want
    assert b"download alpha: completed" in drawn
    result, drawn = on_terminal('dsm.ensure("alpha", force=True, progress=False)', home, cat)
    assert result == want
    assert drawn == b""
