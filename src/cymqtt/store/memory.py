"""MemoryStore: the store interface kept in dicts, for tests and for embedding.

Nothing reaches a disk, but the rows outlive the broker that wrote them: give one MemoryStore
to a second `Broker(store=...)` and it starts where the first stopped, which is how tests
check restoring without files. Commits go through the same journal and batches as SQLite.
"""
from __future__ import annotations

import threading

from cymqtt.store.base import Batch, Snapshot, Store, StoreFull

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """:param max_rows: refuse commits (StoreFull) that would hold more rows than this, as a
        full disk does (None: no limit)."""

    name = "memory"

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows
        self.commits = 0
        self._lock = threading.Lock()
        self._tables = Snapshot()
        self._subs: dict[tuple[str, str], tuple] = {}
        self._entries: dict[int, tuple] = {}
        self._sessions: dict[str, tuple] = {}
        self._inbound: set[tuple[str, int]] = set()

    def load(self) -> Snapshot:
        with self._lock:
            t = self._tables
            return Snapshot(dict(t.messages), dict(t.retained), list(self._sessions.values()),
                            list(self._subs.values()), sorted(self._entries.values()),
                            sorted(self._inbound), dict(t.meta))

    def rows(self) -> int:
        t = self._tables
        return (len(t.messages) + len(t.retained) + len(self._sessions) + len(self._subs)
                + len(self._entries) + len(self._inbound))

    def commit(self, batch: Batch) -> None:
        with self._lock:
            if self.max_rows is not None and self.rows() + batch.writes > self.max_rows:
                raise StoreFull(f"memory store holds {self.max_rows} rows at most")
            t = self._tables
            for cid in batch.ended:
                for table in (self._subs,):
                    for key in [k for k in table if k[0] == cid]:
                        del table[key]
                self._inbound = {k for k in self._inbound if k[0] != cid}
            _apply(t.messages, batch.messages)
            _apply(t.retained, batch.retained)
            _apply(self._sessions, batch.sessions)
            _apply(self._subs, batch.subs)
            _apply(self._entries, batch.entries)
            for key, put in batch.inbound.items():
                if put:
                    self._inbound.add(key)
                else:
                    self._inbound.discard(key)
            t.meta.update(batch.meta)
            self.commits += 1


def _apply(table: dict, changes: dict) -> None:
    for key, row in changes.items():
        if row is None:
            table.pop(key, None)
        else:
            table[key] = row
