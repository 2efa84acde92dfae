"""SQLiteStore: the durable store, one SQLite file in WAL mode (stdlib sqlite3).

Commits come from the journal's writer thread, one transaction per batch. With
``sync="normal"`` (SQLite's synchronous=NORMAL in WAL mode) a committed batch is in the
operating system's hands when `commit` returns: it survives the broker being killed (kill -9,
a crash) but not the machine losing power. ``sync="full"`` fsyncs the WAL on every commit,
which survives power loss and costs one fsync per group (not per message).

The broker must always start: `load` checks the file (PRAGMA quick_check) and, when it cannot
be read or is damaged, moves it aside as ``<name>.corrupt-<UTC time>`` with one ERROR line
naming what was lost, and starts from an empty file.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time

from cymqtt.config import ConfigError
from cymqtt.store.base import Batch, Snapshot, Store, StoreError, StoreFull

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger("cymqtt.store")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, properties BLOB, expires REAL, sender TEXT);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, message INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT PRIMARY KEY, version INTEGER NOT NULL, expiry INTEGER NOT NULL,
    requested_expiry INTEGER NOT NULL, disconnected REAL, will INTEGER, will_delay INTEGER)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
    client_id TEXT NOT NULL, filter TEXT NOT NULL, options INTEGER NOT NULL, sub_id INTEGER,
    PRIMARY KEY (client_id, filter)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, client_id TEXT NOT NULL, message INTEGER NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, sub_ids BLOB, shared BLOB,
    pid INTEGER NOT NULL, state INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inbound (
    client_id TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (client_id, pid)) WITHOUT ROWID;
"""

# Each Batch change set: its table, its columns, and its key column (None: a composite key,
# deleted row by row; those tables change rarely).
_TABLES = {
    "sessions": ("sessions", "client_id, version, expiry, requested_expiry, disconnected, "
                 "will, will_delay", "client_id"),
    "messages": ("messages", "id, topic, payload, qos, retain, properties, expires, sender",
                 "id"),
    "retained": ("retained", "topic, message", "topic"),
    "subs": ("subscriptions", "client_id, filter, options, sub_id", None),
    "entries": ("entries", "client_id, seq, message, qos, retain, sub_ids, shared, pid, state",
                "seq"),
}
_DELETE_BY_ROW = {
    "subs": "DELETE FROM subscriptions WHERE client_id = ? AND filter = ?",
}
CHUNK = 256    # rows per statement at most; chunks are powers of two, so the statements' texts
               # repeat and sqlite3's statement cache saves parsing them again


class SQLiteStore(Store):
    """:param path: the database file (its directory is created).
    :param sync: "normal" (survives a crash) or "full" (also survives power loss).
    :param max_bytes: a size limit (SQLite's max_page_count); a commit past it fails as on a
        full disk. None: only the disk limits it."""

    def __init__(self, path: str, sync: str = "normal", max_bytes: int | None = None) -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        self.path = path
        self.name = path
        self.sync = sync
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None

    # -- opening -------------------------------------------------------------------------------

    def load(self) -> Snapshot:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data_dir {directory}: cannot create it: {exc.strerror}") \
                from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"data_dir {directory}: not writable (the store needs it)")
        try:
            db = self._open()
            snapshot = _read(db)
        except sqlite3.DatabaseError as exc:
            self._set_aside(str(exc))
            db = self._open()
            snapshot = Snapshot()
        self._db = db
        return snapshot

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are ours (BEGIN ... COMMIT in commit()).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")      # takes effect on a new file
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot use WAL journal mode (got {mode})")
            db.execute(f"PRAGMA synchronous = {self.sync.upper()}")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif version[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version[0]}, this cymqtt "
                                            f"reads {SCHEMA_VERSION}")
            if self.max_bytes is not None:
                page = db.execute("PRAGMA page_size").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {max(self.max_bytes // page, 2)}")
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, why: str) -> None:
        # Keep the damaged file (and its WAL) for inspection, and say what is lost with it.
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.path}.corrupt-{stamp}"
        lost = _what_is_in(self.path)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, aside + suffix)
        log.error("store %s cannot be read (%s): moved aside to %s and starting empty; lost "
                  "with it: %s", self.path, why, aside, lost)

    # -- writing (the journal's writer thread) ---------------------------------------------------

    def commit(self, batch: Batch) -> None:
        db = self._db
        assert db is not None, "load() first"
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write(db, batch)
            except BaseException:
                if db.in_transaction:    # (SQLite rolled back itself on SQLITE_FULL)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "full" in text or "disk" in text.lower():
                raise StoreFull(f"{self.path}: {text}") from None
            raise StoreError(f"{self.path}: {text}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    @staticmethod
    def _write(db: sqlite3.Connection, batch: Batch) -> None:
        # Many rows per statement: one sqlite3_step (and one release of the GIL, which the
        # event loop thread wants back) per few thousand rows rather than per row.
        for cid in batch.ended:
            for table in ("subscriptions", "inbound"):
                db.execute(f"DELETE FROM {table} WHERE client_id = ?", (cid,))
        for name, (table, columns, key) in _TABLES.items():
            changes = getattr(batch, name)
            if not changes:
                continue
            gone = [k for k, row in changes.items() if row is None]
            if gone and key is None:
                db.executemany(_DELETE_BY_ROW[name], gone)
            elif gone:
                for chunk in _chunks(gone):
                    db.execute(f"DELETE FROM {table} WHERE {key} IN "
                               f"({','.join('?' * len(chunk))})", chunk)
            if name == "retained":
                rows = [(topic, mid) for topic, mid in changes.items() if mid is not None]
            else:
                rows = [row for row in changes.values() if row is not None]
            if rows:
                width = columns.count(",") + 1
                one = "(" + ",".join("?" * width) + ")"
                for chunk in _chunks(rows):
                    db.execute(f"INSERT OR REPLACE INTO {table} ({columns}) VALUES "
                               + ",".join([one] * len(chunk)),
                               [v for row in chunk for v in row])
        if batch.inbound:
            db.executemany("INSERT OR IGNORE INTO inbound VALUES (?,?)",
                           [k for k, put in batch.inbound.items() if put])
            db.executemany("DELETE FROM inbound WHERE client_id = ? AND pid = ?",
                           [k for k, put in batch.inbound.items() if not put])
        if batch.meta:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", batch.meta.items())

    def compact(self) -> None:
        """Return free pages to the file system once a quarter of the file is free, and
        checkpoint the WAL back into the database (so neither grows without bound)."""
        db = self._db
        if db is None:
            return
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free > 256 and free * 4 > pages:
            db.executescript(f"PRAGMA incremental_vacuum({free});")   # (steps to the end)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                pass
            self._db.close()
            self._db = None


def _chunks(items: list):
    # CHUNK items at a time, then the rest in power-of-two pieces (256 + 64 + 4 + 1 for 325).
    i, n = 0, len(items)
    size = CHUNK
    while i < n:
        while size > n - i:
            size //= 2
        yield items[i:i + size]
        i += size


def _read(db: sqlite3.Connection) -> Snapshot:
    s = Snapshot()
    s.messages = {row[0]: row for row in db.execute("SELECT * FROM messages")}
    s.retained = dict(db.execute("SELECT topic, message FROM retained"))
    s.sessions = db.execute("SELECT * FROM sessions").fetchall()
    s.subs = db.execute("SELECT * FROM subscriptions").fetchall()
    s.entries = db.execute("SELECT client_id, seq, message, qos, retain, sub_ids, shared, "
                           "pid, state FROM entries ORDER BY client_id, seq").fetchall()
    s.inbound = db.execute("SELECT * FROM inbound").fetchall()
    s.meta = dict(db.execute("SELECT key, value FROM meta"))
    return s


def _what_is_in(path: str) -> str:
    # Row counts of a damaged file, as far as it can still be read.
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return "everything it held (unreadable)"
    parts = []
    try:
        for table in ("retained", "sessions", "entries"):
            try:
                n = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except sqlite3.DatabaseError:
                return "everything it held (unreadable)"
            parts.append(f"{n} {'queued messages' if table == 'entries' else table}")
    finally:
        db.close()
    return ", ".join(parts)
