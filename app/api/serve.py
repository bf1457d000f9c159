"""`dsm serve`: bind, decide on auth, run the API on uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import uvicorn

from dsm.api.app import create_app
from dsm.config import Settings
from dsm.errors import BadInput, DsmError
from dsm.repository import Repository

TOKEN_VAR = "DSM_API_TOKEN"
GRACEFUL_SHUTDOWN_S = 10


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen now, so a bad address fails before the engine starts and `--port 0`
    can report the port it got; connections wait in the backlog until the app is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OverflowError:
        raise BadInput(f"--port must be from 0 to 65535, got {port}") from None
    except OSError as exc:  # in use, or an address this machine does not have
        raise DsmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(settings: Settings, repo: Repository, host: str, port: int) -> int:
    token = os.environ.get(TOKEN_VAR) or None
    if token is None and not is_loopback(host):
        raise BadInput(
            f"refusing to serve on {host}: an address beyond loopback needs {TOKEN_VAR} set "
            "(clients then send 'Authorization: Bearer <token>')"
        )
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"

    def announce() -> None:
        print(f"dsm: serving on {url}", file=sys.stderr, flush=True)

    app = create_app(settings, repo, token, on_ready=announce)
    config = uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
