"""Reading and validating a catalogue file: every error at once, each naming its place."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from dsm.catalog.paths import Resolver, member_problem
from dsm.domain.hub import (
    CatalogFile,
    catalogue_listing,
    clashes,
    is_hub,
    manifest_checksum,
    parse_hub_url,
)
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
    "files",
}
FILE_FIELDS = ("url", "path", "expected_size", "expected_sha256")
# The archive kinds dsm unpacks (dsm.engine.unpack.KINDS; the catalogue sits below the engine).
EXTRACT_KINDS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "gz")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    original_url: str  # "" for a dataset of several files
    local_path: str
    expected_size: int | None = None
    expected_sha256: str | None = None
    extract: str | None = None
    mirrors: tuple[str, ...] = ()
    files: tuple[CatalogFile, ...] = ()


def _http_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        sound = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a broken IPv6 literal ("http://[::1")
        sound = False
    return None if sound else f"{url!r} must be an http or https URL with a host"


def _archive_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) pairs for the fields of issue 15: extract and mirrors."""
    errs: list[tuple[str, str]] = []
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


def _size_problem(size: Any) -> str | None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"{size!r} must be a non-negative integer"
    return None


def _sha_problem(sha: Any) -> str | None:
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower()):
        return f"{sha!r} must be 64 hex characters"
    return None


def _file_errors(index: int, raw: Any) -> tuple[list[tuple[str, str]], PurePosixPath | None]:
    """(field, problem) pairs for files[index], and its normalised path when that is sound."""
    place = f"files[{index}]"
    if not isinstance(raw, dict):
        return [(place, f"must be an object with {', '.join(FILE_FIELDS)}")], None
    errs = [(f"{place}.{k}", "unknown field") for k in sorted(set(raw) - set(FILE_FIELDS))]
    url, path = raw.get("url"), raw.get("path")
    problem = _http_problem(url) if isinstance(url, str) else "is required and must be a string"
    if problem:
        errs.append((f"{place}.url", problem))
    # Both required: the manifest (and so the dataset's checksum) is known before a byte is
    # fetched, and no file is called verified without its own size and hash.
    for key, check in (("expected_size", _size_problem), ("expected_sha256", _sha_problem)):
        problem = check(raw.get(key)) if key in raw else "is required"
        if problem:
            errs.append((f"{place}.{key}", problem))
    if not isinstance(path, str):
        return [*errs, (f"{place}.path", "is required and must be a string")], None
    problem = member_problem(path)
    if problem:
        return [*errs, (f"{place}.path", f"{path!r} {problem}")], None
    return errs, PurePosixPath(str(path))


def _files_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) pairs for a `files` list: each file, paths that clash, the fields it
    excludes, and the entry's expected size and sha256 (the total and the manifest hash)."""
    listed = raw["files"]
    if not isinstance(listed, list) or not listed:
        return [("files", f"must be a non-empty list of objects with {', '.join(FILE_FIELDS)}")]
    errs: list[tuple[str, str]] = [
        (key, "cannot be combined with files (a dataset of several files has no one URL)")
        for key in ("original_url", "mirrors", "extract")
        if key in raw
    ]
    rels: list[tuple[int, str]] = []
    for index, item in enumerate(listed):
        file_errs, rel = _file_errors(index, item)
        errs.extend(file_errs)
        if rel is not None:
            rels.append((index, str(rel)))
    for clash in clashes(rels):
        said = {"inside": f"inside files[{clash.other}], which is a file"}.get(
            clash.how, f"{clash.how} files[{clash.other}]"
        )
        errs.append((f"files[{clash.index}].path", said + clash.case_note()))
    if not errs:
        errs.extend(_totals_errors(raw, [_file(f).to_dict() for f in listed]))
    return errs


def _totals_errors(raw: dict[str, Any], listed: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """An entry's own expected size and sha256 of several files are their total and the
    manifest checksum (as for a Hub folder): a catalogue that says otherwise is wrong."""
    listing = catalogue_listing(listed)
    total, digest = sum(f.size for f in listing), manifest_checksum(listing)
    size, sha = raw.get("expected_size"), raw.get("expected_sha256")
    errs: list[tuple[str, str]] = []
    if isinstance(size, int) and size != total:
        errs.append(("expected_size", f"{size!r} is not the files' total size {total}"))
    if isinstance(sha, str) and sha.lower() != digest:
        errs.append(("expected_sha256", f"{sha!r} is not the files' manifest hash {digest}"))
    return errs


def _entry_errors(
    raw: dict[str, Any], resolve: Resolver
) -> tuple[list[tuple[str, str]], str | None]:
    """(field, problem) pairs for one entry, and its resolved file (`Resolver.text`) when the
    path is sound."""
    errs: list[tuple[str, str]] = []
    target: str | None = None
    for key in sorted(set(raw) - FIELDS):
        errs.append((key, "unknown field"))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        errs.append(("name", f"{name!r} must match [a-z0-9][a-z0-9._-]*"))
    if not isinstance(raw.get("description", ""), str):
        errs.append(("description", "must be a string"))
    url = raw.get("original_url")
    if "files" in raw:
        errs.extend(_files_errors(raw))
    elif not isinstance(url, str):
        errs.append(("original_url", "is required (or files) and must be a string"))
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
            target = resolve.text(local)
        except ValueError as exc:
            errs.append(("local_path", str(exc)))
    for key, check in (("expected_size", _size_problem), ("expected_sha256", _sha_problem)):
        problem = check(raw[key]) if raw.get(key) is not None else None
        if problem:
            errs.append((key, problem))
    errs.extend(_archive_errors(raw))
    return errs, target


def _file(raw: dict[str, Any]) -> CatalogFile:
    return CatalogFile(
        url=raw["url"],
        path=str(PurePosixPath(raw["path"])),
        expected_size=raw["expected_size"],
        expected_sha256=raw["expected_sha256"].lower(),
    )


def _entry(raw: dict[str, Any]) -> CatalogEntry:
    """A validated entry as the catalogue's value object (checksums stored lowercase)."""
    sha = raw.get("expected_sha256")
    return CatalogEntry(
        name=raw["name"],
        description=raw.get("description", ""),
        original_url=raw.get("original_url", ""),
        local_path=raw["local_path"],
        expected_size=raw.get("expected_size"),
        expected_sha256=sha.lower() if isinstance(sha, str) else None,
        extract=raw.get("extract"),
        mirrors=tuple(raw.get("mirrors", ())),
        files=tuple(_file(f) for f in raw.get("files", ())),
    )


class KeyTwice(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: json.loads keeps the last of two, and a reader
    that keeps the first (a reviewer, a proxy's filter) would see another document."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        key = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise KeyTwice(f"the key {key!r} appears twice in one object")
    return obj


def read_json(text: str | bytes) -> Any:
    """json.loads whose every failure is a ValueError naming the problem: a JSONDecodeError
    (with its position), or JSON Python will not hold (nested too deeply, an integer of more
    than 4300 digits), or one that is ambiguous (a key twice in an object), or a string that
    is no text (a lone surrogate)."""
    try:
        if isinstance(text, bytes):  # as json.loads decodes it (UTF-8, -16 or -32), once
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        doc = json.loads(text, object_pairs_hook=_unique)
    except (json.JSONDecodeError, KeyTwice):
        raise
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # the digit limit's advice (sys.set_int_max_str_digits) is not ours
        raise ValueError(str(exc).partition(";")[0]) from None
    if _MAY_HOLD_SURROGATE.search(text):  # a catalogue without one is not walked
        _refuse_surrogates(doc)
    return doc


# A lone surrogate comes as a `\uD800`-style escape or as itself (the surrogateescape of
# arguments, or encoded in bytes: decoded with surrogatepass).
_MAY_HOLD_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _refuse_surrogates(doc: Any) -> None:
    """A string holding half of a UTF-16 pair is valid JSON but no text: UTF-8 cannot hold
    it, so the store could not record it (every run failed naming db.json). Walked without
    recursion: json.loads has already taken the nesting as deep as the stack allows."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                _text(f"the key at {where or 'the top'}", key)
                stack.append((f"{where}.{key}" if where else key, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str):
            _text(f"the string at {where or 'the top'}", value)


def _text(what: str, value: str) -> None:
    if (found := _SURROGATE.search(value)) is not None:
        raise ValueError(f"{what} holds {found.group()!r}, half of a UTF-16 pair: no text")


def parse_catalog(text: str, source: Path, home: Path) -> list[CatalogEntry]:
    """Validate catalogue text; raises CatalogError listing every problem."""
    try:
        doc = read_json(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(
            f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except ValueError as exc:
        raise CatalogError(f"{source}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise CatalogError(f'{source}: must be an object with a "datasets" list')
    problems: list[str] = [
        f"{source}: unknown top-level field {key!r}" for key in sorted(set(doc) - {"datasets"})
    ]
    entries: list[CatalogEntry] = []
    resolve = Resolver(home)
    seen: dict[str, int] = {}
    files: list[tuple[int, str]] = []  # each sound entry's file, relative to the home
    inside = os.path.join(resolve.root, "")  # a file's path begins with the home and a "/"
    labels: dict[int, str] = {}
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
            files.append((index, key[len(inside) :]))
            labels[index] = label
        problems.extend(f"{source}: {label}: field {f!r}: {p}" for f, p in errs)
        if not errs:
            entries.append(_entry(raw))
    problems += [f"{source}: {labels[i]}: field 'local_path': {p}" for i, p in _shared(files, doc)]
    if problems:
        raise CatalogError("bad catalogue:\n  " + "\n  ".join(problems))
    return entries


_SHARED = {
    "duplicate of": "same file as dataset {}",
    "inside": "inside the file of dataset {}",
    "a folder holding": "a folder holding dataset {}'s file",
}


def _shared(files: list[tuple[int, str]], doc: dict[str, Any]) -> list[tuple[int, str]]:
    """(entry index, problem) for each dataset whose file is another's, inside it (one
    dataset's file cannot be a folder holding another's), or over its folder: also where
    only letter case or Unicode form tells them apart (macOS, Windows: `hub.clashes`)."""
    return [
        (c.index, _SHARED[c.how].format(repr(doc["datasets"][c.other].get("name"))) + c.case_note())
        for c in clashes(files)
    ]


def read_catalog(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalogue: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_catalog(path: Path, home: Path) -> list[CatalogEntry]:
    return parse_catalog(read_catalog(path), path, home)
