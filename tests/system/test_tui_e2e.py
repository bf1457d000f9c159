"""The installed `dsm` dashboard in a real terminal (tmux): start, press keys, read the screen."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CatalogFn, dsm_command, dsm_env, wait_for
from tests.httpserver import FileServer

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    """One tmux session on a private server socket, so no user session is touched."""

    def __init__(self, socket: str, command: str, env: dict[str, str]) -> None:
        self.base = ["tmux", "-L", socket]
        self.env = env
        self._tmux("new-session", "-d", "-s", "dsm", "-x", "120", "-y", "40", command)

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args], env=self.env, capture_output=True, text=True, timeout=10
        )

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "dsm").stdout

    def line(self, word: str) -> str:
        return next((ln for ln in self.screen().splitlines() if word in ln), "")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "dsm", *keys)

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def terminal(server: FileServer, home: Path, catalog: CatalogFn) -> Iterator[Terminal]:
    body = os.urandom(200_000)
    catalog_path = catalog(alpha=server.add("alpha.bin", body), beta=server.add("beta.bin", body))
    env = dsm_env(home, catalog_path)
    # The pane's shell gets the test home and catalogue explicitly: never the real ones.
    exported = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("DSM_HOME", "DSM_CATALOG"))
    command = f"env {exported} {shlex.join(dsm_command())}; echo dsm exited $?; sleep 30"
    term = Terminal(f"dsm-test-{os.getpid()}", command, env)
    try:
        yield term
    finally:
        term.close()


def test_dashboard_in_tmux(terminal: Terminal, home: Path) -> None:
    wait_for(lambda: "2 datasets" in terminal.screen(), timeout=20)
    assert "not loaded" in terminal.line("alpha") and "not loaded" in terminal.line("beta")
    terminal.keys("d")
    wait_for(lambda: "downloaded" in terminal.line("alpha") and "100%" in terminal.line("alpha"))
    assert "not loaded" in terminal.line("beta")
    assert (home / "data" / "alpha").stat().st_size == 200_000
    terminal.keys("?")
    wait_for(lambda: "what it does" in terminal.screen())
    terminal.keys("Escape")
    wait_for(lambda: "what it does" not in terminal.screen())
    terminal.keys("q")
    wait_for(lambda: "dsm exited 0" in terminal.screen(), timeout=10)
