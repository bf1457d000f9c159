"""HTTP plumbing shared by the single-stream and segmented transfers: requests, the typed
errors (dsm.errors) built from responses and exceptions, the stop/progress channel between
the event loop and transfer threads, the per-host connection cap and the job's retry budget."""

from __future__ import annotations

import contextlib
import email.utils
import errno
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from dsm.config import DEFAULT_DOWNLOAD_MAX_BYTES, is_loopback
from dsm.domain.hub import git_blob_header
from dsm.domain.redact import public_url, redact_text, redact_url
from dsm.errors import (
    BadResponse,
    DiskError,
    DiskFull,
    HttpStatusError,
    NetworkError,
    Stalled,
    TransferError,
    Unreachable,
)
from dsm.transfer.partfile import FileId
from dsm.transfer.proxy import RoutedClient
from dsm.transfer.wire import HEAD, Awaited, awaiting
from dsm.version import __version__

MAX_REDIRECTS = 10
# A number in a header: ASCII digits only (str.isdigit and \d take '²' and other scripts'
# digits, which int() and float() refuse or read), and at most 20 in a size (int() refuses
# more than 4300; no file has 10**20 bytes): a server's other numbers are malformed.
DIGITS = re.compile(r"[0-9]+")
SIZE = r"([0-9]{1,20})"
RETRY_AFTER_CAP = 600.0
USER_AGENT = f"dsm/{__version__}"
HTML_SUFFIXES = (".html", ".htm")


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    written: FileId  # the file hashed (partfile.file_id): the only one its install places
    git_blob: str | None = None  # when the policy asks for it (a small Hub file kept in git)
    # Why the transfer cannot prove the body is whole (no length, no confirmation); None
    # when it can. Expectations of the catalogue may still prove it (engine handlers).
    unproven: str | None = None


class Digest:
    """The hashes of one file, taken in the one pass over its bytes: SHA-256, and the git
    blob id (sha1 of "blob {size}\\0" + bytes) when the size is known up front and asked for."""

    def __init__(self, blob_size: int | None = None) -> None:
        self.sha = hashlib.sha256()
        self.blob = None if blob_size is None else hashlib.sha1(git_blob_header(blob_size))

    def update(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        if self.blob is not None:
            self.blob.update(data)

    def fetched(self, size: int, written: FileId, unproven: str | None = None) -> Fetched:
        blob = self.blob.hexdigest() if self.blob is not None else None
        return Fetched(size, self.sha.hexdigest(), written, git_blob=blob, unproven=unproven)


HeadersFn = Callable[[str], dict[str, str]]


def base_headers() -> dict[str, str]:
    """Sent with every request: who we are, and the bytes exactly as stored on the server."""
    return {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


def content_coding(headers: httpx.Headers) -> str | None:
    """A response's Content-Encoding, lower-cased; None for none or identity. dsm asks for
    identity but keeps a coded body as sent (the hash names the bytes on disk)."""
    value = headers.get("content-encoding", "").strip().lower()
    return None if value in ("", "identity") else value


@dataclass(frozen=True)
class Policy:
    """How a transfer behaves: stall detection, segmenting, the pause before a segment's retry."""

    stall_timeout: float
    segments: int = 1
    segment_min: int = 64 << 20
    retry_delay: float = 0.0
    git_blob: bool = False  # also compute the git blob id of the file
    # curl's --speed-limit/--speed-time: a body slower than this many bytes/s for this many
    # seconds is Stalled (retried); a limit of 0 turns it off.
    low_speed_limit: int = 0
    low_speed_time: float = 60.0
    # The largest body taken without the catalogue's size (DSM_DOWNLOAD_MAX_BYTES).
    max_size: int = DEFAULT_DOWNLOAD_MAX_BYTES


class RetryBudget:
    """The retries one job may still spend. There is one per job: the engine draws from it
    before it tries the whole transfer again, and every segment of a segmented transfer draws
    from the same one (from its own thread), so a job never retries more than `max_retries`
    times in all."""

    def __init__(self, retries: int) -> None:
        self.left = max(0, retries)
        self._lock = threading.Lock()

    def draw(self) -> bool:
        """Take one retry; False when none is left."""
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


class Slot:
    """One connection's place under the per-host cap; released once, early or at exit."""

    def __init__(self, sem: threading.BoundedSemaphore) -> None:
        self._sem = sem
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._sem.release()


class HostSlots:
    """A cap on connections per host, shared by every job and segment of one engine."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, url: str, ctl: Control) -> Iterator[Slot]:
        host = urlsplit(url).netloc.lower()
        with self._lock:
            sem = self._sems.setdefault(host, threading.BoundedSemaphore(self.per_host))
        while not sem.acquire(timeout=0.1):
            ctl.check()
        slot = Slot(sem)
        try:
            yield slot
        finally:
            slot.release()


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if DIGITS.fullmatch(value.strip()):  # any length: float() has no digit limit
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when - time.time(), RETRY_AFTER_CAP))


@dataclass(frozen=True)
class Answer:
    """What a response said, as the resume planner needs it: no body, no connection."""

    status: int
    headers: httpx.Headers
    url: str  # where the redirects led
    reason: str = ""

    @classmethod
    def of(cls, resp: httpx.Response, url: str) -> Answer:
        return cls(resp.status_code, resp.headers, url, resp.reason_phrase)


def http_error(answer: Answer) -> HttpStatusError:
    """An unwanted status; the type's `transient` says whether it can heal."""
    return HttpStatusError(
        f"HTTP {answer.status} {answer.reason} from {public_url(answer.url)}",
        answer.status,
        retry_after(answer.headers.get("retry-after")),
    )


OFFLINE = "this machine offline? (DSM_OFFLINE=1 skips the network)"


def _unreachable(exc: httpx.HTTPError, url: str) -> Unreachable | None:
    """A name that does not resolve or a port that refuses: found in the exception's causes."""
    if not isinstance(exc, httpx.ConnectError):  # a proxy's failure is a ProxyError
        return None
    try:
        parsed = exc.request.url  # where a redirect led, not the URL asked for
    except RuntimeError:  # no request attached
        parsed = httpx.URL(url)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return Unreachable(f"cannot resolve {parsed.host}: is {OFFLINE}")
        if isinstance(cause, ConnectionRefusedError):
            where = f"{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
            return Unreachable(f"connection refused by {where}: is the server down, or {OFFLINE}")
        cause = cause.__cause__ or cause.__context__
    return None


def network_error(exc: httpx.HTTPError, url: str, stall_timeout: float) -> TransferError:
    unreachable = _unreachable(exc, url)
    if unreachable is not None:
        return unreachable
    url = public_url(url)
    if isinstance(exc, httpx.ReadTimeout):
        return Stalled(f"stalled: no data for {stall_timeout:g} s from {url}")
    if isinstance(exc, httpx.ConnectTimeout):
        return NetworkError(f"connect timeout to {url}")
    msg = redact_text(f"{type(exc).__name__}: {exc or 'connection failed'} ({url})")
    # A transport error (a dropped connection) can heal; a decoding error cannot.
    return NetworkError(msg) if isinstance(exc, httpx.TransportError) else BadResponse(msg)


@dataclass(frozen=True)
class Env:
    """What one transfer works with, passed down to the single-stream or segmented path."""

    client: httpx.Client
    host_headers: HeadersFn
    policy: Policy
    slots: HostSlots
    ctl: Control
    budget: RetryBudget

    def stream_args(
        self, url: str, headers: dict[str, str]
    ) -> tuple[httpx.Client, str, dict[str, str], HeadersFn, float, Callable[[], None]]:
        """open_stream's arguments for a GET of `url`: a stop ends the wait for a head too."""
        return (
            self.client,
            url,
            headers,
            self.host_headers,
            self.policy.stall_timeout,
            self.ctl.check,
        )


class Stopped(BaseException):
    """The caller canceled: not a transfer failure, so no handler of TransferError sees it."""


class Control:
    """Shared between the event loop and the transfer threads: progress out, stop in."""

    def __init__(self) -> None:
        self.done = 0
        self.total: int | None = None
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._interrupted = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def watching(self, resp: httpx.Response) -> Iterator[None]:
        """While reading `resp`, a stop shuts its socket so a blocked read returns at once."""
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            sock = None
        if sock is not None:
            with self._lock:
                self._socks.add(sock)
                if self._interrupted:  # sticky: a read that starts after the interrupt ends too
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        try:
            self.check()
            yield
        finally:
            if sock is not None:
                with self._lock:
                    self._socks.discard(sock)

    def add(self, n: int) -> None:
        """Count `n` more bytes received (only the thread that reads calls it)."""
        self.done += n

    def stop(self) -> None:
        with self._lock:  # waits for a `settle` in progress: its effect is then known
            self._stop.set()
        self.interrupt()

    def settle(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the transfer thread unless a stop came first; a stop that comes while
        it runs waits for it. Whoever stopped the transfer can then tell whether `fn` ran."""
        with self._lock:
            self.check()
            fn()

    def interrupt(self) -> None:
        """Break every read in flight (their threads see a network error), without a stop."""
        with self._lock:
            self._interrupted = True
            for sock in self._socks:
                # shutdown (not close) wakes a recv blocked in a reader thread.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        if self._stop.is_set():
            raise Stopped

    def pause(self, seconds: float) -> None:
        """Sleep in a transfer thread, waking at once on a stop."""
        self._stop.wait(seconds)
        self.check()


def secure_origin(url: httpx.URL) -> bool:
    """Where credentials may go: https, or plain http to this machine."""
    return url.scheme == "https" or is_loopback(url.host)


def joined(url: str, ref: str, what: str) -> str:
    """`ref` (a redirect's Location, a Link) resolved against `url`; BadResponse saying
    `what` points at it for a reference no URL parser takes (the server's fault, not a bug)."""
    try:
        target = urljoin(url, ref)
        httpx.URL(target)  # what the next request parses
    except (httpx.InvalidURL, ValueError) as exc:
        cut = ref if len(ref) <= 200 else f"{ref[:200]}... ({len(ref)} characters)"
        raise BadResponse(f"{what} that is no URL ({exc}): {redact_text(cut)!r}") from None
    return target


def _get(client: httpx.Client, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
    if isinstance(client, RoutedClient):  # the engine's: the short way to the transport
        return client.stream_get(url, headers)
    return client.send(client.build_request("GET", url, headers=headers), stream=True)


@contextlib.contextmanager
def open_stream(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    host_headers: HeadersFn,
    head_s: float,
    check: Callable[[], None] = lambda: None,
) -> Iterator[tuple[httpx.Response, str]]:
    """GET with redirects followed by hand: only to http(s), each hop gets its own origin's
    headers (scheme, host, port), so a token never follows a redirect to another origin; a
    URL's `user:password@` goes over https or to this machine only. Each answer's head must
    arrive within `head_s` of its first read, `check` (a stop) is called while it is awaited
    (dsm.transfer.wire)."""
    for _ in range(MAX_REDIRECTS + 1):
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise BadResponse(f"refusing to follow a redirect to {public_url(url)}")
        if parsed.userinfo and not secure_origin(parsed):
            raise BadResponse(
                f"refusing to send the password in {redact_url(url)} over plain http: "
                "use https (credentials travel over https only, or to this machine)"
            )
        with awaiting(Awaited(head_s, url, HEAD, check)):
            resp = _get(client, parsed, {**headers, **host_headers(url)})
        location = resp.headers.get("location")
        if resp.is_redirect and location:
            resp.close()
            url = joined(url, location, f"{public_url(url)} redirects to a Location")
            continue
        try:
            yield resp, url
        finally:
            resp.close()
        return
    raise BadResponse(f"more than {MAX_REDIRECTS} redirects from {url}")


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes FIRST-LAST/TOTAL` -> (first, last, total or None for `*`); None if malformed."""
    m = re.fullmatch(rf"bytes {SIZE}-{SIZE}/(?:{SIZE}|\*)", (value or "").strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), None if m.group(3) is None else int(m.group(3))


def parse_unsatisfied(value: str | None) -> int | None:
    """The size in a 416's `Content-Range: bytes */SIZE`."""
    m = re.fullmatch(rf"bytes \*/{SIZE}", (value or "").strip())
    return int(m.group(1)) if m else None


def looks_like_html(headers: httpx.Headers, target: Path) -> bool:
    """An HTML page (a login or error page) where the target is not itself HTML."""
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype in ("text/html", "application/xhtml+xml") and not target.name.lower().endswith(
        HTML_SUFFIXES
    )


def disk_error(exc: OSError, part: Path) -> DiskError:
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"disk full while writing {part}")
    return DiskError(f"cannot write {part}: {exc.strerror or exc}")
