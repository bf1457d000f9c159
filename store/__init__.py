"""TinyDB persistence for dsm: atomic, cross-process safe, knows nothing of the domain."""

from dsm.store.db import Store
from dsm.store.storage import StoreCorrupt, StoreError, StoreFull

__all__ = ["Store", "StoreCorrupt", "StoreError", "StoreFull"]
