"""The dsm store: `datasets` keyed by name and `jobs` keyed by id, in one TinyDB file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from tinydb import TinyDB
from tinydb.table import Table

from dsm.store.storage import AtomicJSONStorage

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
        self._tables = {
            n: self._db.table(n, cache_size=0) for n in ("datasets", "jobs", "meta", "cancels")
        }

    @contextmanager
    def transaction(self, defer: bool = False) -> Iterator[Store]:
        """Group writes into one locked read-modify-write of the file; with `defer`, written
        later by `flush` or the next transaction without it (AtomicJSONStorage.transaction)."""
        with self._storage.transaction(defer):
            yield self

    @contextmanager
    def open_deferred(self) -> Iterator[bool]:
        """Whether a deferred change can be made now without I/O (AtomicJSONStorage)."""
        with self._storage.open_deferred() as ready:
            yield ready

    def flush(self) -> None:
        """Write the deferred changes and release the lock."""
        self._storage.flush()

    @property
    def pending(self) -> bool:
        return self._storage.pending

    def check_room(self) -> None:
        """StoreFull unless there is room to write the store now."""
        self._storage.check_room()

    def before_write(self, key: object, fn: Callable[[], None]) -> None:
        self._storage.before_write(key, fn)

    def check(self) -> None:
        """Parse the file now, so a corrupt store is reported before anything else happens."""
        self._storage.read()

    @property
    def identity(self) -> tuple[int, int, int] | None:
        """Changes whenever any process rewrites the file (for cheap change polling)."""
        return self._storage.identity

    # -- reads -------------------------------------------------------------------------
    # Reads copy the documents while holding the storage's mutex: the parsed tables are
    # shared and a transaction in another thread changes them in place.
    def all(self, table: str) -> list[Doc]:
        # The tables' dicts directly: TinyDB's Table.all copies every document into a
        # Document first (half the time of a 10,000-row read).
        with self._storage.mutex:
            return [dict(d) for d in self._storage.read().get(table, {}).values()]

    def get(self, table: str, key: str) -> Doc | None:
        with self._storage.mutex:
            doc = self._tables[table].get(doc_id=_id(key))
            return dict(doc) if doc is not None else None

    # -- writes ------------------------------------------------------------------------
    # Writes change the transaction's tables in place: TinyDB's Table.update/upsert rebuild
    # the whole table dict for every document (O(n) each), which made registering 10,000
    # catalogue entries take 20 s; here a batch of n writes costs O(n) plus one file write.
    def _rows(self, table: str) -> dict[str, Doc]:
        data = self._storage.read()
        rows = data.setdefault(table, {})
        self._storage.write(data)  # marks the transaction dirty; the file is written at its end
        return rows

    def put(self, table: str, key: str, doc: Doc) -> None:
        """Insert a document, or merge it into the one stored under `key`."""
        self.put_many(table, {key: doc})

    def put_many(self, table: str, docs: dict[str, Doc]) -> None:
        """Insert or merge many documents in one transaction."""
        with self.transaction():
            rows = self._rows(table)
            for key, doc in docs.items():
                rows[key] = {**rows.get(key, {}), **doc}

    def update(self, table: str, key: str, fields: Doc) -> bool:
        """Merge fields into an existing document; False when it does not exist."""
        with self.transaction():
            if self.get(table, key) is None:
                return False
            self._rows(table)[key].update(fields)
            return True

    def remove(self, table: str, key: str) -> None:
        with self.transaction():
            if self.get(table, key) is not None:
                del self._rows(table)[key]

    def close(self) -> None:
        self._db.close()
