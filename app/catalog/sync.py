"""Registering a catalogue into the store: idempotent, never trusting a changed source."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dsm.catalog.parse import CatalogEntry, parse_catalog, read_catalog
from dsm.catalog.secrets import stored_url
from dsm.config import Settings
from dsm.domain.model import Dataset
from dsm.errors import BadInput, DsmError
from dsm.repository import Repository
from dsm.version import __version__


def _catalog_fields(ds: Dataset) -> tuple[object, ...]:
    return (
        ds.description,
        ds.original_url,
        ds.local_path,
        ds.expected_size,
        ds.expected_sha256,
        ds.extract,
        ds.mirrors,
        ds.files,
        ds.outdated,
        ds.in_catalog,
    )


def _apply(ds: Dataset, entry: CatalogEntry) -> bool:
    """Bring a stored row's static fields in line with its entry; True when anything changed.
    The row keeps the URL without its credentials (catalog/secrets.py)."""
    before = _catalog_fields(ds)
    url = stored_url(entry.original_url)
    was = stored_url(ds.original_url)  # a row stored before URLs were kept redacted
    listed = [f.to_dict() | {"url": stored_url(f.url)} for f in entry.files]
    source_changed = (
        was != url
        or ds.files != listed
        or ds.local_path != entry.local_path
        or ds.expected_size != entry.expected_size
        or ds.expected_sha256 != entry.expected_sha256
        or ds.extract != entry.extract
    )
    if ds.downloaded and source_changed:
        # A copy fetched from another URL, or that the new checksum contradicts, is not
        # trusted: the next download fetches again. A new checksum that agrees is fine.
        agrees = (
            was == url
            and ds.files == listed
            and ds.local_path == entry.local_path
            and entry.expected_sha256 in (None, ds.checksum)
            and entry.expected_size in (None, ds.size)
            and ds.extract == entry.extract
        )
        if not agrees and not ds.outdated:
            ds.outdated_reason = "the catalogue changed the source or checksum of this copy"
        ds.outdated = ds.outdated or not agrees
    ds.description = entry.description
    ds.original_url = url
    ds.local_path = entry.local_path
    ds.expected_size = entry.expected_size
    ds.expected_sha256 = entry.expected_sha256
    ds.extract = entry.extract
    ds.mirrors = [stored_url(m) for m in entry.mirrors]
    ds.files = listed
    ds.in_catalog = True
    return _catalog_fields(ds) != before


def register(repo: Repository, entries: list[CatalogEntry]) -> int:
    """Add new entries as not_loaded, refresh existing rows; returns how many rows changed.

    Rows whose entry left the catalogue stay (their files are the user's data) with
    `in_catalog` false, until a delete job removes them. Nothing is written when nothing changed.
    """
    changed: list[Dataset] = []
    with repo.transaction():
        stored = {ds.name: ds for ds in repo.datasets()}
        for entry in entries:
            ds = stored.pop(entry.name, None) or Dataset(name=entry.name)
            if _apply(ds, entry):
                changed.append(ds)
        for ds in stored.values():
            if ds.in_catalog:
                ds.in_catalog = False
                changed.append(ds)
        if changed:
            repo.save_many(changed)
    return len(changed)


def sync_catalog(repo: Repository, path: Path, home: Path) -> int:
    """Validate and register the catalogue, unless this very text was registered last.

    Validating and registering 10,000 entries takes most of a second; every start of dsm
    would pay it. The stamp (path, SHA-256 of the text, dsm version) is stored with the rows
    it produced, in the same transaction. Paths are still checked again by every job.
    """
    text = read_catalog(path)
    stamp = {
        "path": str(path),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "dsm": __version__,
        # Rows of older stores still hold credentials (in any URL, mirrors too): register again.
        "urls": "redacted: original_url, mirrors, files",
    }
    if repo.catalog_stamp() == stamp | {"rows": _rows_digest(repo)}:
        return 0
    entries = parse_catalog(text, path, home)
    with repo.transaction():
        changed = register(repo, entries)
        # The rows it left are part of the stamp: a row removed by hand (or a store edited
        # otherwise) no longer matches, and the next start registers the catalogue again.
        repo.set_catalog_stamp(stamp | {"rows": _rows_digest(repo)})
    return changed


def _rows_digest(repo: Repository) -> str:
    """The stored rows' names, hashed: a few milliseconds for 10,000 rows."""
    return hashlib.sha256("\n".join(sorted(repo.dataset_names())).encode()).hexdigest()


def open_home(settings: Settings) -> Repository:
    """Create the data home, check the store, validate and register the catalogue (in that
    order: nothing is written unless the catalogue and the store are both sound). Shared by
    the command line and the Python API."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BadInput(f"data home {settings.home} is not a directory") from None
    except OSError as exc:
        raise DsmError(f"cannot create data home {settings.home}: {exc.strerror or exc}") from None
    repo = Repository.open(settings.db_path)
    sync_catalog(repo, settings.catalog, settings.home)
    return repo
