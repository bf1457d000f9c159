"""Where dsm keeps its data and how jobs behave: flags, then environment, then defaults."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from dsm.domain.hub import DEFAULT_ENDPOINT
from dsm.domain.redact import redact_url
from dsm.errors import BadInput

log = logging.getLogger(__name__)

DEFAULT_RETRY_DELAY = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_JOB_TIMEOUT = 10 * 3600.0
DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_WORKERS = 4
DEFAULT_SEGMENTS = 4
MAX_WORKERS = 256
MAX_SEGMENTS = 64
DEFAULT_SEGMENT_MIN = 64 << 20
DEFAULT_HOST_CONNECTIONS = 8
DEFAULT_LOW_SPEED_LIMIT = 1024  # bytes/s ...
DEFAULT_LOW_SPEED_TIME = 60.0  # ... for this many seconds: the transfer is stalled
CONNECT_TIMEOUT = 30.0
# The largest file taken without the catalogue's expected_size (DSM_DOWNLOAD_MAX_BYTES): a
# body without a length is cut off past it instead of filling the disk.
DEFAULT_DOWNLOAD_MAX_BYTES = 1 << 40
# Unpacking stops at these (a decompression bomb): DSM_EXTRACT_MAX_BYTES / _MAX_MEMBERS.
DEFAULT_EXTRACT_MAX_BYTES = 64 << 30
DEFAULT_EXTRACT_MAX_MEMBERS = 1_000_000
# ... and at an xz or LZMA stream whose decoder would allocate more (its dictionary; xz -9
# needs 65 MiB): DSM_EXTRACT_MAX_MEMORY.
DEFAULT_EXTRACT_MAX_MEMORY = 256 << 20


def bundled_catalog() -> Path:
    """The catalogue shipped inside the package (the top-level datasets.json)."""
    return Path(str(resources.files("dsm") / "datasets.json"))


@dataclass(frozen=True)
class Settings:
    home: Path
    catalog: Path
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delay: float = DEFAULT_RETRY_DELAY
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    workers: int = DEFAULT_WORKERS
    maintenance_workers: int = 1
    # Large files are fetched as this many byte ranges in parallel (1 turns it off) ...
    segments: int = DEFAULT_SEGMENTS
    # ... when they are at least this big.
    segment_min: int = DEFAULT_SEGMENT_MIN
    # Connections to one host across all jobs, segments included.
    host_connections: int = DEFAULT_HOST_CONNECTIONS
    # Slower than low_speed_limit bytes/s for low_speed_time seconds: stalled (0: no limit).
    low_speed_limit: int = DEFAULT_LOW_SPEED_LIMIT
    low_speed_time: float = DEFAULT_LOW_SPEED_TIME
    # Extra request headers per host, from DSM_HEADERS ("host=Name: value; ...").
    host_headers: tuple[tuple[str, str, str], ...] = ()
    # The Hub (HF_ENDPOINT, a mirror or proxy) and its token (HF_TOKEN, else the file `hf
    # auth login` writes): sent to the endpoint's own origin only (dsm.transfer.hub).
    hf_endpoint: str = DEFAULT_ENDPOINT
    hf_token: str | None = None
    # DSM_OFFLINE=1 or HF_HUB_OFFLINE=1: no network request at all.
    offline: bool = False
    # The team cache (s3://BUCKET/PREFIX, DSM_CACHE_URL), and whether verified downloads are
    # published to it (DSM_CACHE_PUSH=0 for read-only credentials).
    cache_url: str | None = None
    cache_push: bool = True
    download_max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES
    extract_max_bytes: int = DEFAULT_EXTRACT_MAX_BYTES
    extract_max_members: int = DEFAULT_EXTRACT_MAX_MEMBERS
    extract_max_memory: int = DEFAULT_EXTRACT_MAX_MEMORY

    @property
    def db_path(self) -> Path:
        return self.home / "db.json"

    @property
    def lock_dir(self) -> Path:
        return self.home / ".locks"


T = TypeVar("T", int, float)


def _number(
    name: str,
    raw: str | None,
    default: T,
    convert: Callable[[str], T],
    minimum: T,
    maximum: T | None = None,
) -> T:
    if raw is None or raw == "":
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise BadInput(f"{name}={raw!r} is not a valid number") from None
    if not math.isfinite(value):
        raise BadInput(f"{name}={raw!r} must be a finite number")
    if value < minimum:
        raise BadInput(f"{name}={raw!r} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise BadInput(f"{name}={raw!r} must be at most {maximum}")
    return value


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_ORIGIN_KEY = re.compile(r"(?:(https?)://)?([a-z0-9._-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?")


def header_key(raw: str) -> str:
    """A DSM_HEADERS key as matched against URLs: `host`, `host:port` or `scheme://host[:port]`
    (lower case); BadInput naming it otherwise."""
    key = raw.strip().lower()
    m = _ORIGIN_KEY.fullmatch(key)
    if not m or (m.group(3) and not 0 < int(m.group(3)) < 65536):
        raise BadInput(
            f"DSM_HEADERS key {raw.strip()!r} is not a host, host:port or https://host[:port]"
        )
    if m.group(1) == "http" and not is_loopback(m.group(2)):
        log.warning(
            "dsm: warning: DSM_HEADERS headers for %s are never sent: credentials go over "
            "https only (or to this machine)",
            key,
        )
    return key


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where credentials may go over plain http."""
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def offline(env: Mapping[str, str]) -> bool:
    """DSM_OFFLINE, or HF_HUB_OFFLINE which users already set on compute nodes."""
    return any(_flag(n, env.get(n), default=False) for n in ("DSM_OFFLINE", "HF_HUB_OFFLINE"))


def hf_endpoint(env: Mapping[str, str]) -> str:
    raw = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    if not re.fullmatch(r"https?://[^/?#\s@]+(/[^?#\s]*)?", raw):
        # No user and password either: every resolve URL (the store's manifests, errors)
        # is built on the endpoint, and the Hub's credential is the token (HF_TOKEN).
        raise BadInput(
            f"HF_ENDPOINT={redact_url(raw)!r} must be an http(s) URL such as "
            f"{DEFAULT_ENDPOINT}, without a user or password (give a token in HF_TOKEN)"
        )
    return raw


def hf_token(env: Mapping[str, str]) -> str | None:
    """HF_TOKEN, else the file `hf auth login` writes (HF_TOKEN_PATH, $HF_HOME/token,
    ~/.cache/huggingface/token), as huggingface_hub reads them."""
    if env.get("HF_TOKEN", "").strip():
        return env["HF_TOKEN"].strip()
    hf_home = env.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())
    path = Path(env.get("HF_TOKEN_PATH") or Path(hf_home).expanduser() / "token")
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):  # no login: public repos still work
        return None


def parse_host_headers(raw: str) -> tuple[tuple[str, str, str], ...]:
    """Parse DSM_HEADERS: entries `host=Name: value` separated by newlines or ';'. The key
    names an origin (see `header_key`); the header goes to that origin only."""
    out: list[tuple[str, str, str]] = []
    for entry in raw.replace("\n", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        host, sep, header = entry.partition("=")
        name, colon, value = header.partition(":")
        if not sep or not colon or not host.strip() or not name.strip():
            raise BadInput(f"DSM_HEADERS entry {entry!r} is not of the form 'host=Name: value'")
        if not _HEADER_NAME.fullmatch(name.strip()):
            raise BadInput(f"DSM_HEADERS entry {entry!r}: {name.strip()!r} is no header name")
        out.append((header_key(host), name.strip(), value.strip()))
    return tuple(out)


# Numeric settings: field -> (environment variable, default, type, minimum[, maximum]). The
# CLI's flag of the same name (`--max-retries`) wins over the variable where there is one.
# A maximum where each unit costs up front: DSM_WORKERS=100000000 started that many tasks
# before the first job (1 GB in 20 s and growing), as many segments would be as many threads.
_NUMBERS: dict[str, tuple[Any, ...]] = {
    "max_retries": ("DSM_MAX_RETRIES", DEFAULT_MAX_RETRIES, int, 0),
    "retry_delay": ("DSM_RETRY_DELAY", DEFAULT_RETRY_DELAY, float, 0.0),
    "job_timeout": ("DSM_JOB_TIMEOUT", DEFAULT_JOB_TIMEOUT, float, 0.001),
    "stall_timeout": ("DSM_STALL_TIMEOUT", DEFAULT_STALL_TIMEOUT, float, 0.001),
    "workers": ("DSM_WORKERS", DEFAULT_WORKERS, int, 1, MAX_WORKERS),
    "segments": ("DSM_SEGMENTS", DEFAULT_SEGMENTS, int, 1, MAX_SEGMENTS),
    "segment_min": ("DSM_SEGMENT_MIN", DEFAULT_SEGMENT_MIN, int, 1),
    "host_connections": ("DSM_HOST_CONNECTIONS", DEFAULT_HOST_CONNECTIONS, int, 1),
    "low_speed_limit": ("DSM_LOW_SPEED_LIMIT", DEFAULT_LOW_SPEED_LIMIT, int, 0),
    "low_speed_time": ("DSM_LOW_SPEED_TIME", DEFAULT_LOW_SPEED_TIME, float, 0.001),
    "download_max_bytes": ("DSM_DOWNLOAD_MAX_BYTES", DEFAULT_DOWNLOAD_MAX_BYTES, int, 1),
    "extract_max_bytes": ("DSM_EXTRACT_MAX_BYTES", DEFAULT_EXTRACT_MAX_BYTES, int, 0),
    "extract_max_members": ("DSM_EXTRACT_MAX_MEMBERS", DEFAULT_EXTRACT_MAX_MEMBERS, int, 1),
    "extract_max_memory": ("DSM_EXTRACT_MAX_MEMORY", DEFAULT_EXTRACT_MAX_MEMORY, int, 1 << 20),
}


def _numbers(flags: Mapping[str, str | None], env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, (var, default, convert, *bounds) in _NUMBERS.items():
        flag = flags.get(field)
        name, raw = (
            (f"--{field.replace('_', '-')}", flag) if flag is not None else (var, env.get(var))
        )
        out[field] = _number(name, raw, default, convert, *bounds)
    return out


def load_settings(
    *,
    home: str | None = None,
    catalog: str | None = None,
    max_retries: str | None = None,
    retry_delay: str | None = None,
    job_timeout: str | None = None,
    stall_timeout: str | None = None,
    workers: str | None = None,
    cache_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings; a flag (given as its raw string) wins over the environment."""
    env = os.environ if env is None else env
    flags = {
        "max_retries": max_retries,
        "retry_delay": retry_delay,
        "job_timeout": job_timeout,
        "stall_timeout": stall_timeout,
        "workers": workers,
    }
    home_raw = home if home is not None else env.get("DSM_HOME")
    home_path = Path(home_raw or platformdirs.user_data_dir("dsm")).expanduser().absolute()
    catalog_raw = catalog if catalog is not None else env.get("DSM_CATALOG")
    catalog_path = Path(catalog_raw).expanduser().absolute() if catalog_raw else bundled_catalog()
    cache_name, cache_raw = (
        ("--cache-url", cache_url)
        if cache_url is not None
        else ("DSM_CACHE_URL", env.get("DSM_CACHE_URL"))
    )
    return Settings(
        home=home_path,
        catalog=catalog_path,
        **_numbers(flags, env),
        host_headers=parse_host_headers(env.get("DSM_HEADERS", "")),
        hf_endpoint=hf_endpoint(env),
        hf_token=hf_token(env),
        offline=offline(env),
        cache_url=_cache_url(cache_name, cache_raw),
        cache_push=_flag("DSM_CACHE_PUSH", env.get("DSM_CACHE_PUSH"), default=True),
    )


def _cache_url(name: str, raw: str | None) -> str | None:
    if not raw:
        return None
    scheme, sep, rest = raw.partition("://")
    bucket = rest.split("/")[0]
    if scheme != "s3" or not sep or not bucket or "@" in bucket:
        raise BadInput(
            f"{name}={redact_url(raw)!r}: a team cache URL looks like s3://BUCKET/PREFIX, "
            "with no credentials in it (they come from the AWS settings)"
        )
    return raw


def _flag(name: str, raw: str | None, *, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise BadInput(f"{name}={raw!r}: use 1 or 0")


# Filesystems on which file locks are unreliable or silently no-ops (huggingface_hub #2038,
# #2399, #2543; datasets #6744): two hosts could write one partial file.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "ceph", "fuse.sshfs", "9p"}
)


def network_filesystem(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The type of the network filesystem `path` lives on, or None (local, or unknown)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    best, kind = "", ""
    target = str(path.absolute())
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None
