"""A stop while a transfer connects: a TLS handshake a server never answers, a connect that
hangs (a full backlog: the SYN is dropped). Both waited in the system's connect or
OpenSSL's handshake for the connect timeout (30 s) before a cancel, SIGTERM or the
dashboard's quit could end the job; they end as a stop during a body read does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dsm.config import CONNECT_TIMEOUT
from dsm.domain.jobs import Job, JobStatus, JobType
from dsm.engine.engine import Engine
from tests.conftest import CatalogFn
from tests.enginehelp import run_jobs, setup, until

pytestmark = pytest.mark.anyio
SYN_SENT = "02"  # a socket's state in /proc/net/tcp
STOP_LIMIT = CONNECT_TIMEOUT / 3  # a deadline for the whole run, far below the connect timeout


@contextlib.contextmanager
def mute_server() -> Iterator[tuple[int, threading.Event]]:
    """Accepts connections and never sends a byte: a TLS ClientHello gets no answer."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, held = threading.Event(), []

    def serve() -> None:
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                held.append(listener.accept()[0])
                accepted.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for conn in held:
            conn.close()


def _connecting(port: int) -> int:
    """How many sockets of this machine are sending a SYN to `port` (Linux)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = [line.split() for line in lines]
    return sum(f[2].endswith(f":{port:04X}") and f[3] == SYN_SENT for f in fields)


@contextlib.contextmanager
def full_backlog() -> Iterator[tuple[int, threading.Event]]:
    """A port whose backlog is full and never accepted from: a connect to it hangs."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fills = [socket.socket() for _ in range(3)]
    for fill in fills:
        fill.setblocking(False)
        fill.connect_ex(("127.0.0.1", port))
    before, connecting = _connecting(port), threading.Event()

    def watch() -> None:  # a SYN more than the fills': dsm is connecting
        while not connecting.is_set() and listener.fileno() != -1:
            if _connecting(port) > before:
                connecting.set()
            connecting.wait(0.01)

    threading.Thread(target=watch, daemon=True).start()
    try:
        yield port, connecting
    finally:
        connecting.set()
        listener.close()
        for fill in fills:
            fill.close()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
@pytest.mark.parametrize("where", ["tls-handshake", "connect"])
async def test_a_stop_while_connecting_ends_the_job_at_once(
    where: str, home: Path, catalog: CatalogFn
) -> None:
    server, scheme = (
        (mute_server(), "https") if where == "tls-handshake" else (full_backlog(), "http")
    )
    with server as (port, reached):
        settings, repo = setup(home, catalog(a=f"{scheme}://127.0.0.1:{port}/a.bin"))

        async def cancel(engine: Engine, jobs: list[Job]) -> None:
            await until(reached.is_set)  # the connection is being made
            assert await engine.cancel(jobs[0].id)

        # The job ends, and the engine with it (it waits for its transfer threads), well
        # before the connect timeout.
        with anyio.fail_after(STOP_LIMIT):
            run = await run_jobs(settings, repo, JobType.DOWNLOAD, "a", during=cancel)
    assert run.job.status == JobStatus.CANCELED
