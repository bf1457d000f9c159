"""A local stand-in for the Hugging Face Hub on 127.0.0.1, speaking the routes huggingface_hub
uses for dataset repos (tests/integration/test_hubserver.py proves it with huggingface_hub):

    GET  /api/datasets/{repo}[/revision/{rev}]            the commit a revision names
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]?recursive=true
                                                          files with size, oid, lfs.oid
                                                          (paged: Link rel="next")
    HEAD|GET /datasets/{repo}/resolve/{rev}/{path}        a git file: 200 with the bytes;
                                                          an LFS file: 302 to the CDN
    GET  /cdn/{sha256}                                    the CDN, on another host name

The API answers on the host name 127.0.0.1 (the endpoint) and the CDN on `localhost` (same
port): a request to either on the other's name is refused, so a client that sends the token
to the CDN or fetches the CDN on the endpoint's name is caught. Commits are made by the test
(`commit`), so a branch moves when a test says so; a repo may be gated (needs the token).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

TOKEN = "hf_test_token_0123456789"
LFS_MIN = 1024  # files this big are stored in LFS (redirected to the CDN), smaller in git


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return len(self.data) >= LFS_MIN

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The LFS pointer file git keeps in place of the bytes."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {len(self.data)}\n"
        ).encode()

    @property
    def oid(self) -> str:
        """The git blob id the tree lists: of the pointer for an LFS file."""
        return git_blob(self.pointer if self.lfs else self.data)

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "file",
            "oid": self.oid,
            "size": len(self.data),
            "path": self.path,
        }
        if self.lfs:
            out["lfs"] = {
                "oid": self.sha256,
                "size": len(self.data),
                "pointerSize": len(self.pointer),
            }
        return out


@dataclass
class HubRepo:
    name: str
    gated: bool = False
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def at(self, revision: str) -> str | None:
        """The commit a branch, tag or commit id names."""
        return self.refs.get(revision) or (revision if revision in self.commits else None)


@dataclass
class Seen:
    method: str
    host: str
    path: str
    authorization: str | None
    status: int = 0


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up is not a server error


class HubServer:
    def __init__(self, page_size: int = 1000) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.seen: list[Seen] = []
        self.page_size = page_size
        self.broken: set[str] = set()  # paths whose bytes are sent corrupted (a bad mirror)
        self._lock = threading.Lock()
        self._httpd = _Quiet(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_host(self) -> str:
        return f"localhost:{self.port}"

    def commit(
        self, repo: str, files: dict[str, bytes], *, branch: str = "main", gated: bool = False
    ) -> str:
        """A new commit holding exactly `files`, at the head of `branch`; returns its id
        (the sha1 of its content and parent, as git's are content hashes)."""
        with self._lock:
            r = self.repos.setdefault(repo, HubRepo(repo))
            r.gated = r.gated or gated
            parent = r.refs.get(branch, "")
            digest = hashlib.sha1(f"{repo}\n{parent}\n".encode())
            for path in sorted(files):
                digest.update(f"{path}\t{git_blob(files[path])}\n".encode())
            sha = digest.hexdigest()
            r.commits[sha] = {p: HubFile(p, d) for p, d in files.items()}
            r.refs[branch] = sha
            return sha

    def requests(self, prefix: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.startswith(prefix)]

    def served(self, f: HubFile) -> bytes:
        """The bytes sent for a file: its own, or with the first byte flipped if broken."""
        if f.path not in self.broken:
            return f.data
        return bytes([f.data[0] ^ 0xFF]) + f.data[1:]

    def _file_by_sha(self, sha256: str) -> HubFile | None:
        for r in self.repos.values():
            for files in r.commits.values():
                for f in files.values():
                    if f.lfs and f.sha256 == sha256:
                        return f
        return None


API_REVISION = re.compile(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/?]+))?")
API_TREE = re.compile(r"/api/datasets/([^/]+/[^/]+)/tree/([^/?]+)(?:/([^?]*))?")
RESOLVE = re.compile(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/([^?]+)")
CDN = re.compile(r"/cdn/([0-9a-f]{64})")


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        seen: Seen
        body: bool

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        # -- plumbing ----------------------------------------------------------------
        def _send(
            self, status: int, payload: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.seen.status = status
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.body:
                self.wfile.write(payload)

        def _json(self, value: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(value).encode()
            self._send(200, body, {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"X-Error-Code": code, "X-Error-Message": message}
            self._send(status, body, {"Content-Type": "application/json", **headers})

        def _route(self, body: bool) -> None:
            self.body = body
            url = urlsplit(self.path)
            host = self.headers.get("Host", "")
            self.seen = Seen(self.command, host, url.path, self.headers.get("Authorization"))
            with hub._lock:
                hub.seen.append(self.seen)
            if CDN.fullmatch(url.path):
                if host != hub.cdn_host:
                    return self._error(404, "WrongHost", f"the CDN answers on {hub.cdn_host}")
                return self._cdn(CDN.fullmatch(url.path))  # type: ignore[arg-type]
            if host != f"127.0.0.1:{hub.port}":
                return self._error(404, "WrongHost", "the API answers on 127.0.0.1")
            for pattern, action in (
                (API_REVISION, self._revision),
                (API_TREE, self._tree),
                (RESOLVE, self._resolve),
            ):
                m = pattern.fullmatch(url.path)
                if m:
                    return action(m, parse_qs(url.query))
            return self._error(404, "NotFound", f"no route {url.path}")

        def _repo(self, name: str, revision: str) -> tuple[HubRepo, str] | None:
            """The repo and commit, after the gate; None when an error was sent."""
            repo = hub.repos.get(name)
            if repo is None:
                self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}")
                return None
            if repo.gated:
                auth = self.headers.get("Authorization")
                if auth is None:
                    self._error(401, "GatedRepo", f"Access to dataset {name} is restricted.")
                    return None
                if auth != f"Bearer {TOKEN}":
                    self._error(403, "GatedRepo", f"Access to dataset {name} is restricted.")
                    return None
            commit = repo.at(unquote(revision))
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
                return None
            return repo, commit

        # -- routes ------------------------------------------------------------------
        def _revision(self, m: re.Match[str], _q: dict[str, list[str]]) -> None:
            found = self._repo(m.group(1), m.group(2) or "main")
            if found is None:
                return
            repo, commit = found
            siblings = [{"rfilename": p} for p in sorted(repo.commits[commit])]
            self._json(
                {
                    "_id": repo.name,
                    "id": repo.name,
                    "sha": commit,
                    "private": False,
                    "gated": "auto" if repo.gated else False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": siblings,
                }
            )

        def _tree(self, m: re.Match[str], q: dict[str, list[str]]) -> None:
            found = self._repo(m.group(1), m.group(2))
            if found is None:
                return
            repo, commit = found
            folder = unquote(m.group(3) or "").strip("/")
            recursive = q.get("recursive", ["false"])[0].lower() == "true"
            files = repo.commits[commit]
            prefix = folder + "/" if folder else ""
            if folder and not any(p.startswith(prefix) for p in files):
                return self._error(404, "EntryNotFound", f"{folder} does not exist")
            entries: dict[str, dict[str, Any]] = {}
            for path in sorted(files):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix) :].split("/")
                for depth in range(1, len(rest)):
                    d = prefix + "/".join(rest[:depth])
                    if recursive or depth == 1:
                        entries.setdefault(
                            d,
                            {
                                "type": "directory",
                                "oid": git_blob(d.encode()),
                                "size": 0,
                                "path": d,
                            },
                        )
                if recursive or len(rest) == 1:
                    entries[path] = files[path].entry()
            listing = list(entries.values())
            start = int(q.get("cursor", ["0"])[0])
            page = listing[start : start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(listing):
                query = f"recursive={str(recursive).lower()}&cursor={start + hub.page_size}"
                nxt = f"{hub.endpoint}{urlsplit(self.path).path}?{query}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._json(page, headers)

        def _resolve(self, m: re.Match[str], _q: dict[str, list[str]]) -> None:
            found = self._repo(m.group(1), m.group(2))
            if found is None:
                return
            repo, commit = found
            f = repo.commits[commit].get(unquote(m.group(3)))
            if f is None:
                return self._error(404, "EntryNotFound", f"{unquote(m.group(3))} does not exist")
            headers = {"X-Repo-Commit": commit}
            if f.lfs:
                headers |= {
                    "Location": f"http://{hub.cdn_host}/cdn/{f.sha256}?Expires=1&Signature=x",
                    "ETag": f'"{f.oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(len(f.data)),
                }
                return self._send(302, b"", headers)
            self._bytes(hub.served(f), f'"{f.oid}"', headers)

        def _cdn(self, m: re.Match[str]) -> None:
            f = hub._file_by_sha(m.group(1))
            if f is None:
                return self._error(404, "NotFound", "no such object")
            self._bytes(hub.served(f), f'"{f.sha256}"', {})

        def _bytes(self, data: bytes, etag: str, headers: dict[str, str]) -> None:
            """The bytes, honouring Range with If-Range as a CDN does."""
            headers = {"ETag": etag, "Accept-Ranges": "bytes", **headers}
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            if rng and (if_range is None or if_range == etag):
                lo = int(rng.group(1))
                hi = int(rng.group(2)) if rng.group(2) else len(data) - 1
                if lo >= len(data):
                    return self._send(
                        416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"}
                    )
                hi = min(hi, len(data) - 1)
                headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
                return self._send(206, data[lo : hi + 1], headers)
            self._send(200, data, headers)

    return Handler


def hf_url(repo: str, revision: str, path: str) -> str:
    return f"hf://datasets/{repo}@{revision}/{path}"


def resolve(hub: HubServer, repo: str, commit: str, path: str) -> str:
    return f"{hub.endpoint}/datasets/{repo}/resolve/{commit}/{quote(path)}"
