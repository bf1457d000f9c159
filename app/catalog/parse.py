"""Reading and validating a catalogue file: every error at once, each naming its place."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dsm.catalog.paths import Resolver
from dsm.domain.hub import is_hub, parse_hub_url
from dsm.errors import CatalogError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")  # matched against the lower-cased value
FIELDS = {
    "name",
    "description",
    "original_url",
    "local_path",
    "expected_size",
    "expected_sha256",
    "extract",
    "mirrors",
}
# The archive kinds dsm unpacks (dsm.engine.unpack.KINDS; the catalogue sits below the engine).
EXTRACT_KINDS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "gz")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    original_url: str
    local_path: str
    expected_size: int | None = None
    expected_sha256: str | None = None
    extract: str | None = None
    mirrors: tuple[str, ...] = ()


def _http_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} must be an http or https URL with a host"
    return None


def _archive_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) pairs for the fields of issue 15: extract and mirrors."""
    errs: list[tuple[str, str]] = []
    if "files" in raw:
        errs.append(("files", "several files per dataset are not supported yet"))
    kind, mirrors = raw.get("extract"), raw.get("mirrors", [])
    if kind is not None and kind not in EXTRACT_KINDS:
        errs.append(("extract", f"{kind!r} must be one of {', '.join(EXTRACT_KINDS)}"))
    if not isinstance(mirrors, list):
        errs.append(("mirrors", "must be a list of http or https URLs"))
    else:
        for i, url in enumerate(mirrors):
            problem = _http_problem(url) if isinstance(url, str) else "must be a string"
            if problem:
                errs.append((f"mirrors[{i}]", problem))
    url = raw.get("original_url")
    for key in ("extract", "mirrors"):
        if key in raw and isinstance(url, str) and is_hub(url):
            errs.append((key, "is not supported for a Hugging Face (hf://) source"))
    return errs


def _entry_errors(
    raw: dict[str, Any], resolve: Resolver
) -> tuple[list[tuple[str, str]], Path | None]:
    """(field, problem) pairs for one entry, and its resolved file when the path is sound."""
    errs: list[tuple[str, str]] = []
    target: Path | None = None
    for key in sorted(set(raw) - FIELDS - {"files"}):
        errs.append((key, "unknown field"))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        errs.append(("name", f"{name!r} must match [a-z0-9][a-z0-9._-]*"))
    if not isinstance(raw.get("description", ""), str):
        errs.append(("description", "must be a string"))
    url = raw.get("original_url")
    if not isinstance(url, str):
        errs.append(("original_url", "is required and must be a string"))
    elif is_hub(url):
        try:
            parse_hub_url(url)
        except ValueError as exc:
            errs.append(("original_url", str(exc)))
    elif _http_problem(url):
        errs.append(("original_url", f"{url!r} must be an http or https URL with a host, or hf://"))
    local = raw.get("local_path")
    if not isinstance(local, str):
        errs.append(("local_path", "is required and must be a string"))
    else:
        try:
            target = resolve(local)
        except ValueError as exc:
            errs.append(("local_path", str(exc)))
    size = raw.get("expected_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        errs.append(("expected_size", f"{size!r} must be a non-negative integer"))
    sha = raw.get("expected_sha256")
    if sha is not None and (not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower())):
        errs.append(("expected_sha256", f"{sha!r} must be 64 hex characters"))
    errs.extend(_archive_errors(raw))
    return errs, target


def _entry(raw: dict[str, Any]) -> CatalogEntry:
    """A validated entry as the catalogue's value object (checksums stored lowercase)."""
    sha = raw.get("expected_sha256")
    return CatalogEntry(
        name=raw["name"],
        description=raw.get("description", ""),
        original_url=raw["original_url"],
        local_path=raw["local_path"],
        expected_size=raw.get("expected_size"),
        expected_sha256=sha.lower() if isinstance(sha, str) else None,
        extract=raw.get("extract"),
        mirrors=tuple(raw.get("mirrors", ())),
    )


def parse_catalog(text: str, source: Path, home: Path) -> list[CatalogEntry]:
    """Validate catalogue text; raises CatalogError listing every problem."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise CatalogError(f"{source}: invalid JSON: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise CatalogError(f'{source}: must be an object with a "datasets" list')
    problems: list[str] = [
        f"{source}: unknown top-level field {key!r}" for key in sorted(set(doc) - {"datasets"})
    ]
    entries: list[CatalogEntry] = []
    resolve = Resolver(home)
    seen: dict[str, int] = {}
    paths: dict[Path, str] = {}  # resolved file -> dataset
    folders: dict[Path, str] = {}  # every folder above a file -> the first dataset below it
    for index, raw in enumerate(doc["datasets"]):
        if not isinstance(raw, dict):
            problems.append(f"{source}: entry {index}: must be an object")
            continue
        label = f"entry {index}" + (
            f" ({raw['name']!r})" if isinstance(raw.get("name"), str) else ""
        )
        errs, key = _entry_errors(raw, resolve)
        name = raw.get("name")
        if isinstance(name, str):
            if name in seen:
                errs.append(("name", f"duplicate of entry {seen[name]}"))
            seen.setdefault(name, index)
        if key is not None:
            if key in paths:
                errs.append(("local_path", f"same file as dataset {paths[key]!r}"))
            else:
                # One dataset's file cannot be a folder that holds another's.
                outer = next((paths[up] for up in key.parents if up in paths), None)
                if outer is not None:
                    errs.append(("local_path", f"inside the file of dataset {outer!r}"))
                elif key in folders:
                    errs.append(("local_path", f"a folder holding dataset {folders[key]!r}'s file"))
            paths.setdefault(key, str(name))
            for parent in key.parents:
                folders.setdefault(parent, str(name))
        problems.extend(f"{source}: {label}: field {f!r}: {p}" for f, p in errs)
        if not errs:
            entries.append(_entry(raw))
    if problems:
        raise CatalogError("bad catalogue:\n  " + "\n  ".join(problems))
    return entries


def read_catalog(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_catalog(path: Path, home: Path) -> list[CatalogEntry]:
    return parse_catalog(read_catalog(path), path, home)
