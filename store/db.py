"""The dsm store: `datasets` keyed by name and `jobs` keyed by id, in one TinyDB file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from tinydb import TinyDB
from tinydb.table import Document, Table

from store.storage import AtomicJSONStorage

Doc = dict[str, Any]


def _id(key: str) -> int:
    """KeyedTable's ids are strings; TinyDB's annotations only know int ids."""
    return cast(int, key)


class KeyedTable(Table):
    """Documents keyed by a string (dataset name, job id) instead of TinyDB's counter."""

    document_id_class = str  # type: ignore[assignment]


class _TinyDB(TinyDB):
    table_class = KeyedTable


class Store:
    """Typed access to the two tables; every write is one locked, atomic transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _TinyDB(path, storage=AtomicJSONStorage)
        self._storage = cast(AtomicJSONStorage, self._db.storage)
        self._tables = {n: self._db.table(n, cache_size=0) for n in ("datasets", "jobs")}

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Group writes into one locked read-modify-write of the file."""
        with self._storage.transaction():
            yield self

    def check(self) -> None:
        """Parse the file now, so a corrupt store is reported before anything else happens."""
        self._storage.read()

    @property
    def identity(self) -> tuple[int, int, int] | None:
        """Changes whenever any process rewrites the file (for cheap change polling)."""
        return self._storage.identity

    # -- reads -------------------------------------------------------------------------
    def all(self, table: str) -> list[Doc]:
        return [dict(d) for d in self._tables[table].all()]

    def get(self, table: str, key: str) -> Doc | None:
        doc = self._tables[table].get(doc_id=_id(key))
        return dict(doc) if doc is not None else None

    # -- writes ------------------------------------------------------------------------
    def put(self, table: str, key: str, doc: Doc) -> None:
        """Insert a document, or merge it into the one stored under `key`."""
        with self.transaction():
            self._tables[table].upsert(Document(doc, doc_id=_id(key)))

    def update(self, table: str, key: str, fields: Doc) -> bool:
        """Merge fields into an existing document; False when it does not exist."""
        with self.transaction():
            t = self._tables[table]
            if not t.contains(doc_id=_id(key)):
                return False
            t.update(fields, doc_ids=[_id(key)])
            return True

    def remove(self, table: str, key: str) -> None:
        with self.transaction():
            t = self._tables[table]
            if t.contains(doc_id=_id(key)):
                t.remove(doc_ids=[_id(key)])

    def close(self) -> None:
        self._db.close()
