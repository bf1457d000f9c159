"""`dsm serve`: bind, decide on auth and names, run the API on uvicorn until SIGINT/SIGTERM.

Stopping suspends the running jobs (the next start resumes them from their partial files);
open /events streams end at once so that shutdown does not wait for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from dsm.api.app import Api, create_app
from dsm.api.auth import TOKEN_VAR, create_token, load_token, token_path
from dsm.api.guard import host_names, is_loopback, is_wildcard
from dsm.api.protocol import MAX_CONNECTIONS, MAX_HEADER_BYTES, GuardedH11Protocol
from dsm.config import Settings
from dsm.domain.redact import redact_text
from dsm.errors import BadInput, DsmError
from dsm.repository import Repository

GRACEFUL_SHUTDOWN_S = 10
KEEP_ALIVE_S = 5  # an idle connection between requests is closed after this


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen now, so a bad address fails before the engine starts and `--port 0`
    can report the port it got; connections wait in the backlog until the app is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=MAX_CONNECTIONS)
    except OverflowError:
        raise BadInput(f"--port must be from 0 to 65535, got {port}") from None
    except OSError as exc:  # in use, or an address this machine does not have
        raise DsmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class RedactingFilter(logging.Filter):
    """Every log line (message and traceback) with credentials in URLs redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Message and arguments one by one: uvicorn's access formatter unpacks the args.
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(a) if isinstance(a, str) else a for a in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def redact_logs() -> None:
    """dsm's own loggers write to stderr like uvicorn's; every handler redacts."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    dsm_log = logging.getLogger("dsm")
    dsm_log.addHandler(handler)
    dsm_log.setLevel(logging.INFO)
    dsm_log.propagate = False
    for name in ("dsm", "uvicorn", "uvicorn.access"):
        for h in logging.getLogger(name).handlers:
            h.addFilter(RedactingFilter())


class Server(uvicorn.Server):
    """uvicorn's server; a stop signal also ends the /events streams."""

    api: Api | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def ready(self, api: Api) -> None:
        self.api, self.loop = api, asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.api is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.api.hub.close)
        super().handle_exit(sig, frame)


def check_exposure(host: str, token: str | None, allowed_hosts: Sequence[str]) -> None:
    if token is None and not is_loopback(host):
        raise BadInput(
            f"refusing to serve on {host}: an address beyond loopback needs {TOKEN_VAR} set "
            "or a token file (`dsm serve --print-token`); clients send "
            "'Authorization: Bearer <token>'"
        )
    if is_wildcard(host) and not allowed_hosts:
        raise BadInput(
            f"serving on {host} answers to no name: give --allowed-host NAME for each name "
            "clients use to reach this machine"
        )


def serve(
    settings: Settings,
    repo: Repository,
    host: str,
    port: int,
    allowed_hosts: Sequence[str] = (),
    print_token: bool = False,
) -> int:
    if print_token:
        print(create_token(settings.home))
        print(f"dsm: the token is in {token_path(settings.home)}", file=sys.stderr)
        return 0
    token = load_token(os.environ, settings.home)
    check_exposure(host, token, allowed_hosts)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"

    def ready(api: Api) -> None:
        server.ready(api)
        print(f"dsm: serving on {url}", file=sys.stderr, flush=True)

    hosts = host_names(bound_host, bound_port, allowed_hosts)
    app = create_app(settings, repo, token, hosts, on_ready=ready)
    config = uvicorn.Config(
        app,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        http=GuardedH11Protocol,
        # Off: uvicorn trusts X-Forwarded-For from 127.0.0.1, which would let a local client
        # pick the address its wrong tokens are counted against.
        proxy_headers=False,
        # No WebSocket route exists, and an upgrade would pass the guard's Host and Origin
        # checks (GuardedH11Protocol sees plain HTTP): none is ever accepted.
        ws="none",
    )
    server = Server(config)
    redact_logs()  # after uvicorn's Config has set up its loggers
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn's exit when the engine could not start
        if app.failure is not None:
            raise app.failure from None
        raise
    if app.failure is not None:  # the engine could not stop cleanly
        raise app.failure
    return 0
