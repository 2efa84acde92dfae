"""What survives a restart: the store seam (`Store`), its in-memory and SQLite
implementations, and the `Journal` that follows the broker and commits in groups."""
from cymqtt.store.base import Batch, Snapshot, Store, StoreError, StoreFull
from cymqtt.store.journal import DurableRetained, Journal
from cymqtt.store.memory import MemoryStore
from cymqtt.store.sqlite import SQLiteStore

__all__ = ["Batch", "DurableRetained", "Journal", "MemoryStore", "SQLiteStore", "Snapshot",
           "Store", "StoreError", "StoreFull"]
