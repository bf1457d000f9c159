"""The dsm store: `datasets` keyed by name and `jobs` keyed by id, in one TinyDB file."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar, cast

from tinydb import TinyDB
from tinydb.table import Table

from dsm.store.storage import AtomicJSONStorage

Doc = dict[str, Any]
T = TypeVar("T")
PARSED_ROWS = 256  # rows `get_as` keeps parsed


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
        # Rows parsed by `get_as`, by the identity of the stored document: every write puts
        # a new document object, so a changed row is never served from here. Bounded: a
        # job reads its own row a few times in a row, nothing needs more.
        self._parsed: dict[tuple[str, str], tuple[Doc, Any]] = {}

    def transaction(self, defer: bool = False) -> AbstractContextManager[None]:
        """Group writes into one locked read-modify-write of the file; with `defer`, written
        later by `flush` or the next transaction without it (AtomicJSONStorage.transaction)."""
        return self._storage.transaction(defer)

    def open_deferred(self) -> AbstractContextManager[bool]:
        """Whether a deferred change can be made now without I/O (AtomicJSONStorage)."""
        return self._storage.open_deferred()

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

    def check_each(self, table: str, check: Callable[[str, Doc], object]) -> None:
        """Call `check` on every key and document in place (no copies: it must not change
        them)."""
        with self._storage.mutex:
            for key, doc in self._storage.read().get(table, {}).items():
                check(key, doc)

    def keys(self, table: str) -> list[str]:
        with self._storage.mutex:
            return list(self._storage.read().get(table, {}))

    def where(
        self,
        table: str,
        field: str,
        values: frozenset[Any],
        only: tuple[str, ...] | None = None,
    ) -> list[Doc]:
        """Copies of the documents whose `field` is one of `values` (the others are not
        copied: most jobs are finished, most rows at rest); with `only`, of those fields."""
        with self._storage.mutex:
            rows = self._storage.read().get(table, {}).values()
            if only is None:
                return [dict(d) for d in rows if d.get(field) in values]
            return [{k: d.get(k) for k in only} for d in rows if d.get(field) in values]

    def project(self, table: str, only: tuple[str, ...]) -> list[Doc]:
        """These fields of every document (cheaper than copying them whole)."""
        with self._storage.mutex:
            return [
                {k: d.get(k) for k in only} for d in self._storage.read().get(table, {}).values()
            ]

    def get(self, table: str, key: str) -> Doc | None:
        # The table's dict directly, as `all` (TinyDB's Table.get builds a Document first).
        with self._storage.mutex:
            doc = self._storage.read().get(table, {}).get(key)
            return dict(doc) if doc is not None else None

    def get_as(
        self, table: str, key: str, build: Callable[[Doc], T], copy: Callable[[T], T]
    ) -> T | None:
        """`build(get(table, key))`, reusing the last build of the same stored document:
        `copy` of it (the caller may change what it gets)."""
        with self._storage.mutex:
            doc = self._storage.read().get(table, {}).get(key)
            if doc is None:
                return None
            hit = self._parsed.get((table, key))
            if hit is not None and hit[0] is doc:
                return copy(cast(T, hit[1]))
            built = build(dict(doc))
            self._remember(table, key, doc, copy(built))
            return built

    def _remember(self, table: str, key: str, doc: Doc, built: object) -> None:
        if len(self._parsed) >= PARSED_ROWS:
            self._parsed.clear()
        self._parsed[table, key] = (doc, built)

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

    def put_many(
        self, table: str, docs: dict[str, Doc], built: dict[str, Any] | None = None
    ) -> None:
        """Insert or merge many documents in one transaction (none: no write); `built`: what
        `get_as` is to return for some of them (the caller's object that `doc` was made from)."""
        if not docs:
            return
        with self.transaction():
            rows = self._rows(table)
            for key, doc in docs.items():
                rows[key] = merged = {**rows.get(key, {}), **doc}
                if built is not None and key in built:
                    self._remember(table, key, merged, built[key])

    def update(self, table: str, key: str, fields: Doc) -> bool:
        """Merge fields into an existing document; False when it does not exist."""
        with self.transaction():
            old = self._storage.read().get(table, {}).get(key)
            if old is None:
                return False
            self._rows(table)[key] = {**old, **fields}  # a new document: see get_as
            return True

    def remove(self, table: str, key: str) -> None:
        self.remove_many(table, [key])

    def remove_many(self, table: str, keys: Iterable[str]) -> None:
        """Remove the documents stored under `keys` (absent ones are no error), at once."""
        with self.transaction():
            rows = self._storage.read().get(table, {})
            gone = [k for k in keys if k in rows]
            if gone:
                rows = self._rows(table)
                for key in gone:
                    del rows[key]

    def close(self) -> None:
        self._db.close()
