"""The store seam: what survives a restart, as rows, and the interface a store implements.

The broker's loop never talks to a store directly: `store.Journal` turns registry and session
events into a `Batch` of row changes, and a writer thread hands each batch to `Store.commit`
in one transaction (group commit). At start `Store.load` returns everything as a `Snapshot`,
which the journal turns back into sessions, subscriptions, windows and retained messages.

Rows are plain tuples, in the column order of the SQLite tables (store/sqlite.py):

    message    (id, topic, payload, qos, retain, properties, expires, sender)
    retained   topic -> message id
    session    (client_id, version, expiry, requested_expiry, disconnected, will_id, will_delay)
    sub        (client_id, filter, options, sub_id)
    entry      (client_id, seq, message id, qos, retain, sub_ids, shared, pid, state); seq
               numbers entries across all sessions, in the order they were made
    inbound    (client_id, pid)

`properties`, `sub_ids` and `shared` are marshal-encoded (or None); `expires` and
`disconnected` are wall-clock seconds (time.time()), so expiry counts the time the broker was
down; `disconnected` is None for a session whose client was connected at the last commit. An
entry's `pid` is 0 while it is queued, its `state` the window's InflightState (0: queued).
A message body is one row, referenced by every entry, retained topic and will that holds it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batch", "Snapshot", "Store", "StoreError", "StoreFull"]


class StoreError(Exception):
    """A commit failed (the batch is kept and tried again)."""


class StoreFull(StoreError):
    """The disk (or the store's size limit) is full."""


class Batch:
    """Row changes since the last commit, coalesced by key: a value of None deletes the row,
    so a row written and deleted again before its commit costs one no-op DELETE. `ended`
    lists sessions whose subscriptions and inbound ids all go first (their entries are deleted
    one by one: the journal knows them); `acks` are
    the acknowledgements that wait for this batch's commit, `wake` the
    sessions whose QoS 2 messages may go out once it is committed."""

    __slots__ = ("messages", "retained", "sessions", "subs", "entries", "inbound", "ended",
                 "meta", "acks", "seq", "mid", "wake")

    def __init__(self) -> None:
        self.messages: dict[int, tuple | None] = {}
        self.retained: dict[str, int | None] = {}
        self.sessions: dict[str, tuple | None] = {}
        self.subs: dict[tuple[str, str], tuple | None] = {}
        self.entries: dict[int, tuple | None] = {}
        self.inbound: dict[tuple[str, int], bool] = {}
        self.ended: list[str] = []
        self.meta: dict[str, Any] = {}
        self.acks: list[Any] = []       # journal._Held
        self.seq = 0                 # the journal's last entry key when this batch was cut
        self.mid = 0                 # ... and its next message id
        self.wake: set = set()       # sessions to release once it is committed

    def __bool__(self) -> bool:
        return bool(self.messages or self.retained or self.sessions or self.subs or
                    self.entries or self.inbound or self.ended or self.meta or self.acks)

    def end_session(self, client_id: str) -> None:
        """Every row of `client_id` goes (its session row too): forget what this batch still
        had to write for it, and delete the rest first at commit."""
        for table in (self.subs, self.inbound):
            for key in [k for k in table if k[0] == client_id]:
                del table[key]
        self.sessions[client_id] = None
        self.ended.append(client_id)

    def merge(self, newer: Batch) -> None:
        """Take `newer`'s changes on top of these (a failed commit is retried with them)."""
        for cid in newer.ended:
            self.end_session(cid)
        self.messages.update(newer.messages)
        self.retained.update(newer.retained)
        self.sessions.update(newer.sessions)
        self.subs.update(newer.subs)
        self.entries.update(newer.entries)
        self.inbound.update(newer.inbound)
        self.meta.update(newer.meta)
        self.acks.extend(newer.acks)

    @property
    def writes(self) -> int:
        """Rows this batch changes."""
        return (len(self.messages) + len(self.retained) + len(self.sessions) + len(self.subs)
                + len(self.entries) + len(self.inbound) + len(self.ended))


@dataclass
class Snapshot:
    """Everything a store holds, as loaded at start (entries in (client_id, seq) order)."""

    messages: dict[int, tuple] = field(default_factory=dict)
    retained: dict[str, int] = field(default_factory=dict)
    sessions: list[tuple] = field(default_factory=list)
    subs: list[tuple] = field(default_factory=list)
    entries: list[tuple] = field(default_factory=list)
    inbound: list[tuple] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Store(ABC):
    """Where the broker's durable state lives. `load` runs once, at start; `commit`, `compact`
    and `close` run on the journal's writer thread, one at a time."""

    #: what log lines call it (a file name, or "memory")
    name: str = "store"

    @abstractmethod
    def load(self) -> Snapshot:
        """Everything stored. A store that cannot be read starts empty (and says so)."""

    @abstractmethod
    def commit(self, batch: Batch) -> None:
        """Apply `batch` in one transaction; raises StoreFull or StoreError (nothing of the
        batch is then applied)."""

    def compact(self) -> None:
        """Give back space freed by deleted rows (called now and then)."""

    def size(self) -> int:
        """Bytes used (0 when not known)."""
        return 0

    def close(self) -> None:
        """Release the store; no commit follows."""
