"""Hugging Face Hub sources, pure: the `hf://datasets/{org}/{name}@{revision}/{path}` form,
which paths a glob selects, and the manifest of a multi-file dataset.

A manifest lists every file of a dataset as {path, url, size, sha256 | git_blob, mtime_ns}:
`path` is relative to the dataset's folder, `url` where the bytes come from (for the Hub,
the resolve URL at the commit), and the expected hash is the Hub's LFS sha256 or, for a small
file kept in git itself, its git blob id. It is stored on the dataset row; a catalogue entry
with a `files` list (`catalogue_listing`) is the same kind of dataset, fetched, verified and
deleted by the same code; the dataset's checksum is one hash over it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_GLOB_CHARS = frozenset("*?[")


def is_hub(url: str) -> bool:
    return url.startswith(HF_SCHEME)


def is_commit(revision: str) -> bool:
    return COMMIT_RE.fullmatch(revision) is not None


@dataclass(frozen=True)
class HubRef:
    """One parsed `hf://datasets/...` source."""

    repo: str  # "org/name"
    revision: str  # a branch, a tag or a 40-hex commit
    path: str  # a file, a directory or a glob; "" for the whole repo

    @property
    def pinned(self) -> bool:
        return is_commit(self.revision)

    @property
    def is_glob(self) -> bool:
        return any(c in _GLOB_CHARS for c in self.path)

    @property
    def listing_root(self) -> str:
        """The folder whose recursive listing holds every selected file: the parent of a
        file or directory (the listing says which it is), the fixed part before a glob."""
        parts = self.path.split("/") if self.path else []
        if not self.is_glob:
            return "/".join(parts[:-1])
        fixed: list[str] = []
        for part in parts:
            if any(c in _GLOB_CHARS for c in part):
                break
            fixed.append(part)
        return "/".join(fixed)

    def selects(self, path: str) -> bool:
        """Whether a repo file belongs to this source: the file itself, a file below the
        directory, or a match of the glob (`*` never crosses a `/`, as in the Hub's fs)."""
        if not self.path:
            return True
        if not self.is_glob:
            return path == self.path or path.startswith(self.path.rstrip("/") + "/")
        want, have = self.path.split("/"), path.split("/")
        return len(want) == len(have) and all(
            fnmatch.fnmatchcase(h, w) for h, w in zip(have, want, strict=True)
        )


def parse_hub_url(url: str) -> HubRef:
    """Parse `hf://datasets/{org}/{name}@{revision}/{path}`; ValueError names the problem."""
    form = "hf://datasets/{org}/{name}@{revision}/{path}"
    if not is_hub(url):
        raise ValueError(f"{url!r} is not an {HF_SCHEME} URL")
    rest = url[len(HF_SCHEME) :]
    kind, _, rest = rest.partition("/")
    if kind != "datasets":
        raise ValueError(f"{url!r}: only dataset repos are supported ({form})")
    org, _, rest = rest.partition("/")
    name_rev, _, path = rest.partition("/")
    name, at, revision = name_rev.partition("@")
    if not at or not revision:
        raise ValueError(f"{url!r} must name a revision: {form}")
    for label, part in (("org", org), ("name", name)):
        if not _REPO_PART.fullmatch(part):
            raise ValueError(f"{url!r}: bad repo {label} {part!r}")
    segments = path.split("/") if path else []
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"{url!r}: path {path!r} must be relative, without '.', '..' or '//'")
    if "**" in path:
        raise ValueError(f"{url!r}: '**' is not supported; use one '*' per folder level")
    return HubRef(f"{org}/{name}", revision, path)


def format_hub_url(ref: HubRef, revision: str) -> str:
    return f"{HF_SCHEME}datasets/{ref.repo}@{revision}/{ref.path}"


# -- the Hub's HTTP routes (huggingface_hub's own) ------------------------------------------
def revision_url(endpoint: str, ref: HubRef) -> str:
    return f"{endpoint}/api/datasets/{ref.repo}/revision/{quote(ref.revision, safe='')}"


def tree_url(endpoint: str, ref: HubRef, commit: str, folder: str) -> str:
    sub = "/" + quote(folder, safe="") if folder else ""
    return f"{endpoint}/api/datasets/{ref.repo}/tree/{commit}{sub}?recursive=true"


def resolve_url(endpoint: str, repo: str, commit: str, path: str) -> str:
    return f"{endpoint}/datasets/{repo}/resolve/{commit}/{quote(path)}"


# -- manifests -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestFile:
    path: str  # below the dataset's folder (for the Hub: the repo path)
    url: str
    size: int
    sha256: str | None = None  # the expected sha256 (LFS oid), when known
    git_blob: str | None = None  # else the git blob id (sha1 of "blob {size}\0" + bytes)
    mtime_ns: int | None = None  # once installed: the stamp that makes "still verified" cheap

    @property
    def expected(self) -> str:
        """The one expected hash, tagged with its kind."""
        return f"sha256:{self.sha256}" if self.sha256 else f"git-blob:{self.git_blob}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ManifestFile:
        return cls(
            path=str(raw["path"]),
            url=str(raw["url"]),
            size=int(raw["size"]),
            sha256=raw.get("sha256"),
            git_blob=raw.get("git_blob"),
            mtime_ns=raw.get("mtime_ns"),
        )


@dataclass(frozen=True)
class CatalogFile:
    """One file of a dataset of several files (a catalogue entry's and a row's `files`)."""

    url: str
    path: str  # below the dataset's folder (local_path), normalised ("a//b" is "a/b")
    expected_size: int
    expected_sha256: str  # lowercase

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def catalogue_listing(entries: list[dict[str, Any]]) -> list[ManifestFile]:
    """A catalogue `files` list ({url, path, expected_size, expected_sha256}, validated) as
    the manifest it is fetched against: a dataset of several files, like a Hub folder."""
    return [
        ManifestFile(str(e["path"]), str(e["url"]), int(e["expected_size"]), e["expected_sha256"])
        for e in entries
    ]


CASE_NOTE = "on a case-insensitive file system (macOS, Windows)"


def folded(path: str) -> str:
    """`path` as a case-insensitive file system that ignores Unicode forms compares names
    (macOS's APFS and HFS+, Windows's NTFS): paths folded alike are one file there. Unicode
    caseless matching (NFD, casefold), then NFC."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", path).casefold())


@dataclass(frozen=True)
class Clash:
    """A file of a listing that cannot be written beside an earlier one (`other`): `how` is
    "duplicate of", "inside" (a file below another file) or "a folder holding" (a file where
    another's folder is); `by_case`: only where names differing in letter case or Unicode
    form are one (CASE_NOTE), with `path` and `theirs` as listed."""

    index: int
    how: str
    other: int
    by_case: bool
    path: str
    theirs: str

    def case_note(self) -> str:
        """What a message adds when the clash is `by_case` (else nothing)."""
        if not self.by_case:
            return ""
        return (
            f" {CASE_NOTE}, where letter case and Unicode form do not tell names apart "
            f"({self.path!r}, {self.theirs!r})"
        )


def _below(path: str, folder: str) -> bool:
    return path.startswith(folder) and path[len(folder) : len(folder) + 1] == "/"


@dataclass(slots=True)
class _Node:
    """One folded name of a listing: the first file listed at it, the first below it."""

    file: tuple[int, str] | None = None
    folder: tuple[int, str] | None = None
    below: dict[str, _Node] = field(default_factory=dict)


class Clashes:
    """The files of one listing, added one at a time, that cannot all be written, compared
    `folded`: a catalogue, a Hub repo or an archive that names `A.json` and `a.json` is one
    file on macOS and Windows, where the second overwrote the first. One node per folded
    name (not each folder's full path): time and memory grow with the names' length, not
    its square (an archive member may be 256 folders deep)."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, index: int, rel: str, *, folder: bool = False) -> Clash | None:
        """The clash of file (or `folder`) `rel`, a normalised relative POSIX path, with one
        added before, if any; `rel` is added either way."""
        *path, name = folded(rel).split("/")
        mine = (index, rel + "/" if folder else rel)  # a folder's `theirs` ends in "/"
        node, above = self._root, None
        for part in [*path, name] if folder else path:
            node = node.below.get(part) or node.below.setdefault(part, _Node())
            above = node.file or above  # the deepest file a folder of `rel` is named as
            node.folder = node.folder or mine
        if folder:
            return None if above is None else _inside(index, above, mine[1], rel)
        leaf = node.below.get(name) or node.below.setdefault(name, _Node())
        found = leaf.file
        leaf.file = leaf.file or mine
        if found is not None:
            return Clash(index, "duplicate of", found[0], found[1] != rel, rel, found[1])
        if above is not None:
            return _inside(index, above, rel, rel)
        if leaf.folder is not None:
            other, theirs = leaf.folder
            return Clash(index, "a folder holding", other, not _below(theirs, rel), rel, theirs)
        return None


def _inside(index: int, above: tuple[int, str], mine: str, rel: str) -> Clash:
    """`rel` (`mine`: as compared) under the file `above`."""
    return Clash(index, "inside", above[0], not _below(mine, above[1]), rel, above[1])


def clashes(paths: Iterable[tuple[int, str]]) -> Iterator[Clash]:
    """Every clash of a listing (`Clashes`): `paths` are (index, normalised relative POSIX
    path) pairs."""
    found = Clashes()
    for index, rel in paths:
        if (clash := found.add(index, rel)) is not None:
            yield clash


def manifest_checksum(files: list[ManifestFile]) -> str:
    """The dataset's checksum: sha256 over the sorted lines "path<TAB>kind:hash<LF>"."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        digest.update(f"{f.path}\t{f.expected}\n".encode())
    return digest.hexdigest()


def git_blob_header(size: int) -> bytes:
    return f"blob {size}\0".encode()
