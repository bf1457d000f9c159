"""The API token of `dsm serve`: long enough, made for the user, kept private."""

from __future__ import annotations

import stat
from pathlib import Path

from dsm.api.auth import MIN_TOKEN, TOKEN_FILE
from tests.conftest import run_dsm
from tests.system.apiserver import ApiServer, assert_problem


def test_a_short_token_is_refused(home: Path, catalog_path: Path) -> None:
    out = run_dsm(
        "serve", "--port", "0", home=home, catalog_path=catalog_path, DSM_API_TOKEN="s3cret"
    )
    assert out.returncode == 2
    assert "DSM_API_TOKEN" in out.stderr and str(MIN_TOKEN) in out.stderr


def test_print_token_makes_a_private_token_that_the_server_then_requires(
    home: Path, catalog_path: Path
) -> None:
    out = run_dsm("serve", "--print-token", home=home, catalog_path=catalog_path)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert len(token) >= MIN_TOKEN
    path = home / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    again = run_dsm("serve", "--print-token", home=home, catalog_path=catalog_path)
    assert again.stdout.strip() == token  # made once, then read
    srv = ApiServer(home, catalog_path)  # no DSM_API_TOKEN: the file's token is on
    try:
        assert_problem(srv.client.get("/datasets"), 401, "token")
        good = {"Authorization": f"Bearer {token}"}
        assert srv.client.get("/datasets", headers=good).status_code == 200
    finally:
        srv.stop()


def test_a_token_file_others_can_read_is_refused(home: Path, catalog_path: Path) -> None:
    path = home / TOKEN_FILE
    path.write_text("x" * 40)
    path.chmod(0o644)
    out = run_dsm("serve", "--port", "0", home=home, catalog_path=catalog_path)
    assert out.returncode == 2 and "chmod 600" in out.stderr


def test_a_wildcard_address_needs_the_names_clients_use(home: Path, catalog_path: Path) -> None:
    out = run_dsm(
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        home=home,
        catalog_path=catalog_path,
        DSM_API_TOKEN="t" * MIN_TOKEN,
    )
    assert out.returncode == 2 and "--allowed-host" in out.stderr
