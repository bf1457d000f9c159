"""TinyDB persistence for dsm: atomic, cross-process safe, knows nothing of the domain."""

from store.db import Store
from store.storage import StoreCorrupt, StoreError

__all__ = ["Store", "StoreCorrupt", "StoreError"]
