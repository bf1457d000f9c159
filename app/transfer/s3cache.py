"""A team cache on S3-compatible object storage: content-addressed, verified, create-only.

Layout under `s3://BUCKET/PREFIX`:
- `sha256/<first two hex>/<sha256>`: one immutable object per verified file;
- `sources/<sha256 of the source id>.json`: a small pointer (source, sha256, size, validator,
  verified_at) so a machine can find a file whose checksum it does not know yet.
Both are written with create-only conditional puts: the first verified copy wins and nothing is
ever overwritten. Reads go through presigned URLs, so the bytes travel through dsm's own
transfer code (resume, progress, single-pass SHA-256) like any other URL.

Every failure of the cache (network, credentials, throttling, a missing bucket) is a
`CacheError`; the engine then falls back to the origin, so the cache can never fail a job.
obstore is used (one small wheel, conditional puts and presigned URLs, the AWS settings read
the way the AWS SDKs read them); the AWS profile files, which obstore does not read, are read
here.
"""

from __future__ import annotations

import configparser
import contextlib
import datetime
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import S3Store

from dsm.domain.redact import REDACTED, redact_text, redact_url, without_userinfo

PRESIGN_FOR = datetime.timedelta(hours=1)
MAX_POINTER = 64 << 10  # bytes of a pointer: dsm writes a few hundred
PART_SIZE = 8 << 20  # bytes of one part of an upload (S3's least is 5 MiB)
PARTS_AT_ONCE = 4  # parts in flight (held in memory) per upload
# A cache is an optimisation: one that accepts connections and never answers must cost a
# job little more than the origin. Every request but an upload's is small (a HEAD, a pointer
# of a few hundred bytes, a listing): the whole request within LOOKUP_TIMEOUT, its one retry
# only for a quick failure (a reset, a 503), never after a time-out. A look-up that waited
# 30 s (obstore's one timeout, for uploads too) cost each job 30 s before the origin.
LOOKUP_TIMEOUT = 3.0
LOOKUP = (
    {"timeout": f"{LOOKUP_TIMEOUT:g}s", "connect_timeout": "2s"},
    {"max_retries": 1, "retry_timeout": datetime.timedelta(seconds=LOOKUP_TIMEOUT)},
)
UPLOAD = (  # a part of PART_SIZE per request: time for a slow link
    {"timeout": "30s", "connect_timeout": "3s"},
    {"max_retries": 1, "retry_timeout": datetime.timedelta(seconds=10)},
)
_ENV_KEYS = {  # obstore config key -> (environment variable, profile file key)
    "access_key_id": ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
    "session_token": ("AWS_SESSION_TOKEN", "aws_session_token"),
    "region": ("AWS_REGION", "region"),
    "endpoint": ("AWS_ENDPOINT_URL", "endpoint_url"),
}


class CacheError(Exception):
    """The team cache could not be used; the caller falls back to the origin."""


class NotTheFile(CacheError):
    """The file to publish is not the one verified: it changed on disk since."""


def _checked(path: Path, sha256: str, size: int) -> Iterator[bytes]:
    """The file's bytes for an upload, hashed as they go: bytes that are not the verified
    file (changed on disk since, with its size and mtime: a flipped bit) end the upload
    before it completes, so no object is made. Filed under the verified hash, they would stay
    for good (objects are never replaced) and cost every teammate a download to refuse."""
    digest, seen = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            seen += len(block)
            yield block
    if (seen, digest.hexdigest()) != (size, sha256):
        raise NotTheFile(
            f"{path} changed on disk since it was verified: {seen} bytes, sha256 "
            f"{digest.hexdigest()}, not the {size} bytes, sha256 {sha256} verified"
        )


@dataclass(frozen=True)
class CachedFile:
    """A verified file the cache holds, and a presigned URL to read it."""

    sha256: str
    size: int
    url: str


def source_id(url: str) -> str:
    """The normalised source a pointer is filed under: scheme and host in lower case, no
    credentials, no fragment, no default port (a Hub source passes `hf://...@commit/path`)."""
    bare = without_userinfo(url)  # the store keeps "[redacted]@", which urllib refuses
    try:
        parts = urlsplit(bare)
        host = (parts.hostname or "").lower()
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        port = f":{parts.port}" if parts.port and parts.port != default else ""
    except ValueError:  # a broken port or IPv6 literal: the URL as given, never an error
        return bare.partition("#")[0]
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path or '/'}{query}"


def object_key(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


def pointer_key(source: str) -> str:
    return f"sources/{hashlib.sha256(source_id(source).encode()).hexdigest()}.json"


def _profile(env: Mapping[str, str]) -> dict[str, str]:
    """The AWS profile files' values for the active profile (`AWS_PROFILE`, else default)."""
    name = env.get("AWS_PROFILE") or "default"
    home = Path(env.get("HOME") or Path.home())
    out: dict[str, str] = {}
    files = (
        (env.get("AWS_CONFIG_FILE") or home / ".aws" / "config", f"profile {name}"),
        (env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials", name),
    )
    for path, section in files:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise CacheError(f"cannot read AWS settings {path}: {_config_error(exc)}") from None
        for sect in (section, name):  # the config file also accepts a bare [default]
            if parser.has_section(sect):
                out.update(parser.items(sect))
    return out


def s3_config(env: Mapping[str, str]) -> dict[str, str]:
    """obstore's S3 settings: the environment first, then the AWS profile files."""
    profile = _profile(env)
    config: dict[str, str] = {}
    for key, (var, file_key) in _ENV_KEYS.items():
        value = env.get(var) or profile.get(file_key)
        if value:
            config[key] = value
    if "region" not in config and env.get("AWS_DEFAULT_REGION"):
        config["region"] = env["AWS_DEFAULT_REGION"]
    return config


def _config_error(exc: configparser.Error) -> str:
    """What is wrong with a profile file and where, without the line itself: configparser
    quotes it, and it may be the one holding the secret key."""
    errors = getattr(exc, "errors", None)  # ParsingError: (line number, line) pairs
    line = getattr(exc, "lineno", None) or (errors[0][0] if errors else None)
    what = type(exc).__name__.removesuffix("Error").replace("Parsing", "syntax")
    return f"{what} error" + (f" at line {line}" if line else "")


_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIMING = re.compile(r" in [0-9.]+\s*[a-zµ]*s\b[^-]*")  # " in 3.2ms, after 1 retries, ..."
# The cause in a word: the system's (`Connection refused`), else S3's error code.
_CAUSE = re.compile(r'message: "([^"]*)"|<Code>(\w{1,64})</Code>')


def _short(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """obstore's messages carry the whole HTTP exchange: its first line without timings,
    with the cause in a word (`Connection refused`, `NoSuchBucket`), every URL redacted (the
    endpoint may hold a user and password) and the settings' secrets masked."""
    text = str(exc).strip()
    lines = text.splitlines()
    first = lines[0] if lines else type(exc).__name__
    _, cause_sep, cause = first.rpartition("source: ")
    short = " ".join(_TIMING.sub(" ", cause if cause_sep else first).split()).rstrip(" :")
    if causes := _CAUSE.findall(text):
        short += f" ({''.join(causes[-1])})"
    short = redact_text(short)
    for secret in secrets:
        short = short.replace(secret, REDACTED)
    return short[:400]


class TeamCache:
    """The cache at `url` (`s3://BUCKET/PREFIX`)."""

    def __init__(self, url: str, *, push: bool = True, env: Mapping[str, str] | None = None):
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or "@" in parts.netloc:
            raise ValueError(
                f"team cache URL must look like s3://BUCKET/PREFIX, with no credentials in it "
                f"(they come from the AWS settings), got {redact_url(url)!r}"
            )
        self.url = url.rstrip("/")
        self.push = push
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self._env = os.environ if env is None else env
        self._stores: dict[bool, S3Store] = {}  # upload? -> its client
        self._secrets: tuple[str, ...] = ()  # masked in every message

    @property
    def where(self) -> str:
        """The cache and the endpoint that serves it (one bucket name, two services)."""
        return f"{self.url} at {self._env.get('AWS_ENDPOINT_URL', 'AWS')}"

    def _s3(self, upload: bool = False) -> S3Store:
        if upload not in self._stores:
            config = s3_config(self._env)
            # Masked where they appear; a value of a few characters would mask every
            # word holding them (`t` rewrote `http`), and is no secret worth hiding.
            hidden = ("secret_access_key", "session_token")
            self._secrets = tuple(v for k, v in config.items() if k in hidden and len(v) >= 6)
            endpoint = config.get("endpoint", "")
            if without_userinfo(endpoint) != endpoint:
                # It would reach every presigned URL (beside the signature: S3 refuses two
                # kinds of authentication), its sidecar, and the messages.
                raise CacheError(
                    f"{self.url}: the endpoint {redact_url(endpoint)} holds a user and "
                    "password: give the keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
            timeouts, retry = UPLOAD if upload else LOOKUP
            options: dict[str, Any] = dict(timeouts)
            if endpoint.startswith("http://"):
                options["allow_http"] = True
            try:
                self._stores[upload] = S3Store(
                    self.bucket,
                    prefix=self.prefix or None,
                    config=config,  # type: ignore[arg-type]
                    client_options=options,  # type: ignore[arg-type]
                    retry_config=retry,  # type: ignore[arg-type]
                )
            except (BaseError, ValueError) as exc:
                raise CacheError(f"{self.url}: {_short(exc, self._secrets)}") from None
        return self._stores[upload]

    def _call(self, what: str, fn: Any, *args: Any, upload: bool = False, **kwargs: Any) -> Any:
        """`fn(store, *args, **kwargs)`, its failures a CacheError; `upload`: the client with
        an upload's timeouts, else a look-up's."""
        try:
            return fn(self._s3(upload), *args, **kwargs)
        except (FileNotFoundError, AlreadyExistsError):
            raise
        except (BaseError, OSError, ValueError, RuntimeError) as exc:
            raise CacheError(f"{self.url}: {what}: {_short(exc, self._secrets)}") from None

    # -- reading ---------------------------------------------------------------------
    def size_of(self, sha256: str) -> int | None:
        """The size of the object for `sha256`, or None when the cache does not hold it."""
        try:
            meta = self._call("look-up", obstore.head, object_key(sha256))
        except FileNotFoundError:
            return None
        return int(meta["size"])

    def pointer(self, source: str) -> dict[str, Any] | None:
        """The pointer a machine left for `source`, or None."""
        try:
            got = self._call("pointer", obstore.get, pointer_key(source))
        except FileNotFoundError:
            return None
        if got.meta["size"] > MAX_POINTER:  # read into memory whole: 300 MB took 900 MB
            return None  # not ours: as if absent
        raw = self._call("pointer", lambda _: got.bytes())
        try:
            doc = json.loads(bytes(raw))
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            return None  # not ours, or damaged: as if absent
        # Its sha256 names an object key: anything but 64 hex digits is no pointer of ours
        # (a key that climbs out of the prefix failed the look-up: the cache rested a minute).
        named = doc.get("sha256") if isinstance(doc, dict) else None
        return doc if isinstance(named, str) and _SHA256.fullmatch(named) else None

    def find(self, sha256: str | None, source: str) -> CachedFile | None:
        """The cached file for a known checksum, or for the source's pointer when the
        checksum is not known yet; None when the cache holds neither."""
        if sha256 is None:
            doc = self.pointer(source)
            if doc is None:
                return None
            sha256 = str(doc["sha256"])
        size = self.size_of(sha256)
        if size is None:
            return None
        url = self._call("presign", obstore.sign, "GET", object_key(sha256), PRESIGN_FOR)
        return CachedFile(sha256, size, str(url))

    # -- writing ---------------------------------------------------------------------
    def publish(
        self,
        path: Path,
        sha256: str,
        size: int,
        source: str,
        validator: str | None = None,
        *,
        fresh: bool = False,
        bad: bool = False,
    ) -> bool:
        """Upload a verified file and its pointer; True when this call wrote the object
        (False: another machine was first, which is just as good). The object is written
        once, unless the one there is `bad` (its bytes did not hash to its key) or of another
        size: then replaced (was: kept for good, each teammate fetching it to refuse it).
        The pointer is create-only too, unless the file is `fresh` from its origin: then it
        names what the source serves now (a source that changed would be served its old file
        for ever)."""
        held = self.size_of(sha256)
        created = held is None or bad or held != size
        if created:
            # Above one part, in parts streamed from disk: a create-only put is one request
            # whose body obstore holds in memory whole (300 MiB took 513 MiB; S3 refuses a
            # single PUT above 5 GiB). Overwriting this key is harmless: the upload checks
            # that its bytes hash to it, and a part upload is only seen once complete.
            big = size > PART_SIZE
            try:
                self._call(
                    "upload",
                    obstore.put,
                    object_key(sha256),
                    _checked(path, sha256, size),
                    mode="overwrite" if big or held is not None else "create",
                    upload=True,
                    use_multipart=big,
                    chunk_size=PART_SIZE,
                    max_concurrency=PARTS_AT_ONCE,
                )
            except AlreadyExistsError:
                created = False  # a race with another machine: the same bytes by definition
        pointer = {
            "source": source_id(source),
            "sha256": sha256,
            "size": size,
            "validator": validator,
            "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        body = json.dumps(pointer).encode()
        mode = "overwrite" if fresh else "create"
        with contextlib.suppress(AlreadyExistsError):  # a copy pushed later never replaces it
            self._call("pointer", obstore.put, pointer_key(source), body, mode=mode)
        return created

    def ping(self) -> None:
        """Raise CacheError unless the bucket answers."""
        # A listing, not a HEAD: a missing bucket and a missing object both answer 404 to HEAD.
        self._call("reach", obstore.list_with_delimiter, "sources/")
