"""The installed `dsm` dashboard in a real terminal (tmux): start, press keys, read the screen."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsm.domain.jobs import JobStatus, JobType
from dsm.repository import Repository
from tests.conftest import CatalogFn, dsm_command, dsm_env, wait_for
from tests.httpserver import FileServer

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    """One tmux session on a private server socket, so no user session is touched."""

    def __init__(
        self, socket: str, command: str, env: dict[str, str], size: tuple[int, int] = (120, 40)
    ) -> None:
        self.base = ["tmux", "-L", socket]
        self.env = env
        width, height = (str(n) for n in size)
        self._tmux("new-session", "-d", "-s", "dsm", "-x", width, "-y", height, command)

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

    def flags(self) -> dict[str, str]:
        """The pane's terminal modes: alternate screen, cursor shown, mouse reporting."""
        names = ("alternate_on", "cursor_flag", "mouse_any_flag", "mouse_button_flag")
        shown = self._tmux(
            "display-message", "-p", "-t", "dsm", " ".join(f"#{{{n}}}" for n in names)
        )
        return dict(zip(names, shown.stdout.split(), strict=True))

    def title(self) -> str:
        """The pane's title, which an OSC 0 or 2 escape sequence sets."""
        return self._tmux("display-message", "-p", "-t", "dsm", "#{pane_title}").stdout

    def dsm_pid(self) -> int:
        """The dsm process: the child of the pane's shell."""
        shell = self._tmux("list-panes", "-t", "dsm", "-F", "#{pane_pid}").stdout.strip()
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", shell], capture_output=True, text=True
        ).stdout.split()
        return int(children[0])

    def close(self) -> None:
        self._tmux("kill-server")


def open_terminal(
    server: FileServer, home: Path, catalog: CatalogFn, size: tuple[int, int]
) -> Iterator[Terminal]:
    body = os.urandom(200_000)
    names = {
        "alpha": server.add("alpha.bin", body),
        "beta": server.add("beta.bin", body),
        "a-dataset-with-a-long-name": server.add("long.bin", body),
        "broken": server.url("missing.bin"),
    }
    server.always("long.bin", rate=20_000)  # still running when the test quits
    term = dashboard(dsm_env(home, catalog(**names)), size)
    try:
        yield term
    finally:
        term.close()


def dashboard(env: dict[str, str], size: tuple[int, int] = (120, 40)) -> Terminal:
    """dsm's dashboard in a new tmux terminal; the pane says how it exited."""
    # The pane's shell gets the test home and catalogue explicitly: never the real ones.
    exported = " ".join(f"{k}={shlex.quote(env[k])}" for k in ("DSM_HOME", "DSM_CATALOG"))
    command = f"env {exported} {shlex.join(dsm_command())}; echo dsm exited $?; sleep 30"
    return Terminal(f"dsm-test-{os.getpid()}", command, env, size)


@pytest.fixture
def terminal(server: FileServer, home: Path, catalog: CatalogFn) -> Iterator[Terminal]:
    yield from open_terminal(server, home, catalog, (120, 40))


@pytest.fixture
def small_terminal(server: FileServer, home: Path, catalog: CatalogFn) -> Iterator[Terminal]:
    yield from open_terminal(server, home, catalog, (80, 24))


def test_dashboard_in_tmux(terminal: Terminal, home: Path) -> None:
    wait_for(lambda: "4 datasets" in terminal.screen(), timeout=20)
    assert "not loaded" in terminal.line("alpha") and "not loaded" in terminal.line("beta")
    terminal.keys("j", "d")  # alpha, under the long name
    wait_for(lambda: "downloaded" in terminal.line("alpha") and "100%" in terminal.line("alpha"))
    assert "not loaded" in terminal.line("beta")
    assert (home / "data" / "alpha").stat().st_size == 200_000
    # A copy removed by hand: the store still says downloaded, the dashboard looks.
    (home / "data" / "alpha").unlink()
    wait_for(lambda: "missing on disk" in terminal.line("alpha"))
    terminal.keys("d")
    wait_for(lambda: "downloaded" in terminal.line("alpha") and (home / "data" / "alpha").exists())
    assert "missing on disk" not in terminal.line("alpha")
    terminal.keys("?")
    wait_for(lambda: "what it does" in terminal.screen())
    terminal.keys("Escape")
    wait_for(lambda: "what it does" not in terminal.screen())
    terminal.keys("q")
    wait_for(lambda: "dsm exited 0" in terminal.screen(), timeout=10)


def filter_shows(term: Terminal, text: str) -> bool:
    """The filter bar (docked over the footer) holds `text` and has the keys."""
    *_, bar, footer = term.screen().splitlines()
    return text in bar and "Clear filter" in footer


def test_keys_sent_with_slash_are_filter_text(terminal: Terminal, home: Path) -> None:
    """`/` and letters in one send-keys (one write to the terminal, as a script or a paste
    does): the letters are the filter, none is a dashboard key (a downloads every dataset,
    l opens the log, p pauses)."""
    wait_for(lambda: "4 datasets" in terminal.screen(), timeout=20)
    terminal.keys("/", "a", "l", "p", "h", "a")
    wait_for(lambda: filter_shows(terminal, "alpha") and "1 of 4 shown" in terminal.screen())
    summary = terminal.line("4 datasets")
    assert "downloading" not in summary and "queued" not in summary
    assert "not loaded" in terminal.line("alpha")
    terminal.keys("Enter")  # keeps the filter and hands the keys back to the table
    wait_for(lambda: "d Download" in terminal.screen().splitlines()[-1])
    terminal.keys("d")  # downloads the one row shown
    wait_for(lambda: "downloaded" in terminal.line("alpha"))
    terminal.keys("/", "Escape")  # every row again: none but alpha was started
    wait_for(lambda: "4 datasets" in terminal.screen() and "shown" not in terminal.screen())
    for name in ("beta", "a-dataset", "broken"):
        assert "not loaded" in terminal.line(name)
    terminal.keys("q")
    wait_for(lambda: "dsm exited 0" in terminal.screen(), timeout=10)
    jobs = Repository.open(home / "db.json").jobs()
    assert [(j.dataset, j.type) for j in jobs] == [("alpha", JobType.DOWNLOAD)]


def test_80x24_fits_and_sigterm_restores_the_terminal(small_terminal: Terminal, home: Path) -> None:
    term = small_terminal
    wait_for(lambda: "4 datasets" in term.screen(), timeout=20)
    header = term.line("Name")
    for label in ("Name", "Status", "Progress", "Size", "Rate", "ETA", "Error"):
        assert label in header
    assert all(len(line) <= 80 for line in term.screen().splitlines())
    assert "? Help" in term.screen().splitlines()[-1]  # the footer starts with help
    term.keys("G", "d")  # broken (sorted last): fails, and says why on its row
    wait_for(lambda: "HTTP 404" in term.line("broken"))
    term.keys("g", "d")  # the long-named one downloads slowly
    wait_for(lambda: "downloading" in term.line("a-dataset"))
    assert term.flags()["alternate_on"] == "1"
    os.kill(term.dsm_pid(), signal.SIGTERM)
    wait_for(lambda: "dsm exited 0" in term.screen(), timeout=10)
    assert term.flags() == {
        "alternate_on": "0",
        "cursor_flag": "1",
        "mouse_any_flag": "0",
        "mouse_button_flag": "0",
    }
    assert "Terminated" not in term.screen()
    repo = Repository.open(home / "db.json")
    (job,) = [j for j in repo.jobs() if j.dataset == "a-dataset-with-a-long-name"]
    assert job.status == JobStatus.WAITING  # suspended: it resumes at the next start


def running(pid: int) -> bool:
    """The process is there and not a zombie (its parent, gone, may never reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_closed_terminal_ends_the_dashboard(terminal: Terminal, home: Path) -> None:
    """The terminal goes away (a closed window, a lost ssh session: SIGHUP, then writes to it
    fail): dsm suspends its jobs and exits, never lingering with its jobs held."""
    term = terminal
    wait_for(lambda: "4 datasets" in term.screen(), timeout=20)
    term.keys("g", "d")  # the long-named one downloads slowly
    wait_for(lambda: "downloading" in term.line("a-dataset"))
    pid = term.dsm_pid()
    term.close()  # tmux closes the pane's terminal
    wait_for(lambda: not running(pid), timeout=30)
    repo = Repository.open(home / "db.json")
    (job,) = [j for j in repo.jobs() if j.dataset == "a-dataset-with-a-long-name"]
    assert job.status == JobStatus.WAITING  # suspended: it resumes at the next start


def test_sighup_with_the_terminal_still_open_quits_and_restores_it(
    terminal: Terminal, home: Path
) -> None:
    """A `kill -HUP` by hand: the terminal is there, so dsm quits as on SIGTERM (restoring
    it), not as for a closed one."""
    term = terminal
    wait_for(lambda: "4 datasets" in term.screen(), timeout=20)
    assert term.flags()["alternate_on"] == "1"
    os.kill(term.dsm_pid(), signal.SIGHUP)
    wait_for(lambda: "dsm exited 0" in term.screen(), timeout=10)
    assert term.flags()["alternate_on"] == "0" and term.flags()["mouse_any_flag"] == "0"


def test_catalogue_text_cannot_drive_the_dashboard_s_terminal(
    server: FileServer, home: Path, catalog: CatalogFn
) -> None:
    """A description with an OSC (set the window title), colours, a bidi override and a C1
    CSI: the detail pane shows them as escapes, the terminal never receives them."""
    hostile = "evil \x1b]2;PWNED\x07 \x1b[41mred\x1b[0m \u202eexe.txt \x9b31m"
    entry = {"name": "alpha", "description": hostile, "local_path": "data/alpha"}
    entry["original_url"] = server.add("alpha.bin", b"x" * 100)
    term = dashboard(dsm_env(home, catalog(entries=[entry])))
    try:
        wait_for(lambda: "alpha" in term.screen(), timeout=20)
        term.keys("Enter")  # the detail pane
        wait_for(lambda: "description" in term.screen())
        assert r"evil \x1b]2;PWNED\x07 \x1b[41mred\x1b[0m \u202eexe.txt \x9b31m" in term.screen()
        assert "PWNED" not in term.title()
    finally:
        term.close()
