"""The Hugging Face Hub's HTTP API, as huggingface_hub speaks it, on the engine's client.

A source `hf://datasets/{repo}@{revision}/{path}` is resolved in two calls: the revision
(`/api/datasets/{repo}/revision/{rev}`) gives the commit, unless the revision already is
one; the tree at that commit (`/api/datasets/{repo}/tree/{commit}/{folder}?recursive=true`,
paged by `Link: rel="next"`) gives each file's size, LFS sha256 and git blob id. Files are
then fetched from `/datasets/{repo}/resolve/{commit}/{path}`, always at the commit, never
at a branch that can move while we read it. The resolve answer is a 302 to a CDN on another
host; the token goes to the endpoint's origin only (`auth_headers`), so it never follows.

Blocking calls: the engine runs them in a worker thread.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from dsm.domain.hub import (
    HubRef,
    ManifestFile,
    clashes,
    is_commit,
    resolve_url,
    revision_url,
    tree_url,
)
from dsm.domain.model import MAX_DEPTH
from dsm.errors import AccessDenied, BadResponse, HttpStatusError
from dsm.transfer.http import (
    Answer,
    base_headers,
    http_error,
    joined,
    network_error,
    open_stream,
)
from dsm.transfer.wire import Awaited, awaiting

LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_PAGES = 10_000  # a tree of ten million files: far past any dataset, short of a loop
MAX_JSON = 64 << 20  # bytes of one API answer
ANSWER = "the Hub's answer"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def auth_headers(endpoint: str, token: str | None, url: str) -> dict[str, str]:
    """The token for a request to `url`: only to the endpoint's own origin (never to the CDN
    a resolve redirects to), and only over https unless the endpoint is on loopback."""
    if not token or _origin(url) != _origin(endpoint):
        return {}
    scheme, host, _ = _origin(url)
    if scheme != "https" and not _is_loopback(host):
        return {}
    return {"Authorization": f"Bearer {token}"}


def _listing(url: str) -> str:
    """Which listing a tree URL pages through: its path, however its `/` are escaped (the
    host may differ: a mirror may pass the Hub's own links on)."""
    return unquote(urlsplit(url).path)


@dataclass(frozen=True)
class Hub:
    """One endpoint, its token, and the client, stall timeout and file limit of the engine."""

    client: httpx.Client
    endpoint: str
    token: str | None
    headers: Callable[[str], dict[str, str]]  # every header for a URL (token included)
    stall_timeout: float
    max_files: int  # files one listing may name (DSM_EXTRACT_MAX_MEMBERS)

    def get_json(self, url: str, ref: HubRef) -> tuple[Any, httpx.Headers]:
        """GET an API URL; a 401/403 is AccessDenied at once, other errors typed as usual."""
        headers = base_headers() | {"Accept": "application/json"}
        try:
            with open_stream(self.client, url, headers, self.headers, self.stall_timeout) as (
                resp,
                final,
            ):
                answer = Answer.of(resp, final)
                if resp.status_code in (401, 403):
                    raise AccessDenied(self._denied(ref, resp.status_code))
                if resp.status_code == 404:
                    raise HttpStatusError(
                        f"not found on the Hub: dataset repo {ref.repo} at revision "
                        f"{ref.revision!r} ({resp.headers.get('x-error-message', 'HTTP 404')}); "
                        f"a private repo also answers so without a token: {LOGIN_HINT}",
                        404,
                    )
                if resp.status_code != 200:
                    raise http_error(answer)
                body = self._body(resp, url)
        except httpx.HTTPError as exc:
            raise network_error(exc, url, self.stall_timeout) from exc
        try:
            return json.loads(body), resp.headers
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise BadResponse(f"the Hub answered {url} with something that is not JSON") from None

    def _body(self, resp: httpx.Response, url: str) -> bytearray:
        """An answer's body, at most MAX_JSON bytes, whole within the stall timeout of its
        first read: each read's own timeout let a Hub sending a byte now and then hold a
        job, and `dsm list` (the upstream hint), for ever."""
        body = bytearray()
        with awaiting(Awaited(self.stall_timeout, url, ANSWER)):
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_JSON:  # held in memory whole: a real page is < 1 MiB
                    raise BadResponse(f"the Hub answered {url} with more than 64 MiB")
        return body

    def _denied(self, ref: HubRef, status: int) -> str:
        why = "the token was refused" if self.token else "no token was given"
        return (
            f"dataset repo {ref.repo} is gated or private (HTTP {status} from {self.endpoint}: "
            f"{why}); accept its terms on the Hub, then {LOGIN_HINT}"
        )

    def commit(self, ref: HubRef) -> str:
        """The commit the revision names now (no request when it already is a commit)."""
        if ref.pinned:
            return ref.revision
        data, _ = self.get_json(revision_url(self.endpoint, ref), ref)
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not is_commit(sha):
            raise BadResponse(f"the Hub gave no commit for {ref.repo}@{ref.revision}")
        return sha

    def files(self, ref: HubRef, commit: str) -> list[ManifestFile]:
        """The files the source selects at `commit`, each with its expected hash. A listing
        that never ends, loops, or names a file twice or inside another is BadResponse (it
        was taken as it came: 10,000 pages of one file looping to itself made a "verified"
        dataset of 10,000 copies)."""
        first = tree_url(self.endpoint, ref, commit, ref.listing_root)
        url: str | None = first
        out: list[ManifestFile] = []
        pages: set[str] = set()
        while url is not None:
            if url in pages or len(pages) >= MAX_PAGES:
                why = "loops" if url in pages else f"goes on past {MAX_PAGES} pages"
                raise BadResponse(f"the Hub's tree listing of {ref.repo} {why} ({url})")
            pages.add(url)
            page, headers = self.get_json(url, ref)
            if not isinstance(page, list):
                raise BadResponse(f"the Hub's tree listing of {ref.repo} is not a list")
            out += [f for e in page if (f := self._file(ref, commit, e)) is not None]
            if len(out) > self.max_files:  # each held (a page of 100,000 took 40 MB), then fetched
                raise BadResponse(
                    f"the Hub's tree listing of {ref.repo} names more than {self.max_files} "
                    "files, the most one dataset may have (DSM_EXTRACT_MAX_MEMBERS)"
                )
            nxt = httpx.Response(200, headers=headers).links.get("next", {}).get("url")
            what = f"the Hub's tree listing of {ref.repo} links to a next page"
            url = joined(url, nxt, what) if nxt else None
            # The next page is of the same listing (the same path, a cursor added): another
            # (the moving branch's) would mix two commits' files into one called the commit.
            if url is not None and _listing(url) != _listing(first):
                raise BadResponse(
                    f"the Hub's tree listing of {ref.repo} puts its next page in another "
                    f"listing ({url})"
                )
        if not out:
            raise BadResponse(
                f"{ref.path or '/'} matches no file in dataset repo {ref.repo} at commit {commit}"
            )
        listed = ((i, str(PurePosixPath(f.path))) for i, f in enumerate(out))
        clash = next(clashes(listed), None)
        if clash is not None:
            path, other = out[clash.index].path, out[clash.other].path
            said = {
                "duplicate of": f"{path!r} twice",
                "inside": f"{path!r} inside the file {other!r}",
            }.get(clash.how, f"the file {path!r} where {other!r} needs a folder")
            raise BadResponse(
                f"the Hub's tree listing of {ref.repo} lists {said}{clash.case_note()}"
            )
        return sorted(out, key=lambda f: f.path)

    def _file(self, ref: HubRef, commit: str, entry: Any) -> ManifestFile | None:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            return None
        path, size, oid = entry.get("path"), entry.get("size"), entry.get("oid")
        if not isinstance(path, str) or not ref.selects(path):
            return None
        # A git path is plain (a "a//b" file was pruned as unlisted once in place: an internal
        # error) and printable (an escape in a name rewrites the terminal that shows it).
        if PurePosixPath(path).as_posix() != path or not path.isprintable():
            raise BadResponse(f"the Hub's tree listing of {ref.repo} lists {path!r}, no plain path")
        if path.count("/") >= MAX_DEPTH:
            raise BadResponse(
                f"the Hub's tree listing of {ref.repo} lists {path[:200]!r}..., a path more "
                f"than {MAX_DEPTH} levels deep"
            )
        lfs = entry.get("lfs")
        sha256 = lfs.get("oid") if isinstance(lfs, dict) else None
        if not isinstance(size, int) or not isinstance(sha256 or oid, str):
            raise BadResponse(f"the Hub's tree entry for {ref.repo}/{path} lacks a size or hash")
        return ManifestFile(
            path=path,
            url=resolve_url(self.endpoint, ref.repo, commit, path),
            size=size,
            sha256=sha256,
            git_blob=None if sha256 else oid,
        )
