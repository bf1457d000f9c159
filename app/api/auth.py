"""The API token: where it comes from, how it is checked, and how guessing is slowed down.

`DSM_API_TOKEN` wins; otherwise the token file that `dsm serve --print-token` creates (like
Jupyter's) turns auth on whenever it exists. A token is at least MIN_TOKEN characters, and
the file must be readable by its owner only, or `dsm serve` refuses to start.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from dsm.api.problem import Problem
from dsm.errors import BadInput

TOKEN_VAR = "DSM_API_TOKEN"
TOKEN_FILE = "api-token"
MIN_TOKEN = 32
FAILURES_ALLOWED = 5  # wrong tokens in a row before a client waits
FAILURES_FORGIVEN_PER_S = 1.0  # then one more try per second
MAX_CLIENTS_TRACKED = 4096


def _checked(token: str, source: str) -> str:
    if len(token) < MIN_TOKEN:
        raise BadInput(
            f"{source}: the API token must be at least {MIN_TOKEN} characters, got "
            f"{len(token)}; `dsm serve --print-token` makes one"
        )
    return token


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def read_token_file(path: Path) -> str | None:
    """The token in the file, None if there is none; BadInput if others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the API token file: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            raise BadInput(f"{path}: others may read the API token file; chmod 600 {path}")
        return _checked(f.read().strip(), str(path))


def load_token(env: dict[str, str] | os._Environ[str], home: Path) -> str | None:
    given = env.get(TOKEN_VAR)
    if given:
        return _checked(given, TOKEN_VAR)
    return read_token_file(token_path(home))


def create_token(home: Path) -> str:
    """The token file's token, made now (mode 0600, never over an existing file) if new."""
    path = token_path(home)
    known = read_token_file(path)
    if known is not None:
        return known
    token = secrets.token_urlsafe(32)  # 43 characters, 256 bits
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another `--print-token` won the race: use its token
        return create_token(home)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class FailureBuckets:
    """A token bucket per client address, spent by wrong tokens: FAILURES_ALLOWED in a row,
    then one per 1/FAILURES_FORGIVEN_PER_S seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (level, when)

    def _level(self, client: str) -> float:
        level, when = self._buckets.get(client, (FAILURES_ALLOWED, self.clock()))
        return min(FAILURES_ALLOWED, level + (self.clock() - when) * FAILURES_FORGIVEN_PER_S)

    def wait_s(self, client: str) -> int:
        """Whole seconds the client must wait before its token is checked again; 0: now."""
        missing = 1 - self._level(client)
        return math.ceil(missing / FAILURES_FORGIVEN_PER_S) if missing > 0 else 0

    def failed(self, client: str) -> None:
        if len(self._buckets) >= MAX_CLIENTS_TRACKED:  # forget the clients that are even
            full = [c for c in self._buckets if self._level(c) >= FAILURES_ALLOWED]
            for c in full or list(self._buckets)[: MAX_CLIENTS_TRACKED // 2]:
                del self._buckets[c]
        self._buckets[client] = (self._level(client) - 1, self.clock())


class BearerAuth:
    """Refuse every HTTP request without `Authorization: Bearer <token>`; a client that
    keeps guessing gets 429 (with Retry-After) and its guesses are not even checked."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()
        self.failures = FailureBuckets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.refusal(scope)
            if problem is not None:
                await problem.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Problem | None:
        authorization = Headers(scope=scope).get("authorization")
        if authorization is None:
            # No guess, so not counted: requests without a token (a probe, a page's <img>
            # in a loop) must not make the token's holder on the same address wait.
            return Problem(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        client = (scope.get("client") or ("unknown",))[0]
        wait = self.failures.wait_s(client)
        if wait:
            return Problem(429, "too many wrong tokens; wait", {"Retry-After": str(wait)})
        scheme, _, given = authorization.partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return None
        self.failures.failed(client)
        return Problem(401, "wrong bearer token", {"WWW-Authenticate": "Bearer"})
