"""Journal: the loop side of the store. It follows the broker (registry events, session window
hooks, retained changes), collects row changes in a `Batch`, and commits each batch on one
writer thread while the next one fills (group commit: one transaction covers everything a
loop iteration, or a commit's duration, produced).

The durability rule (DESIGN rule 8): an acknowledgement that promises a message is safe
(PUBACK, PUBREC, PUBCOMP) and a SUBACK of a persistent session go out only once what the
packet changed is committed; `ack()` holds them with the batch they wait for, in order per
client. Only persistent sessions (expiry > 0) are followed, and only their QoS 1/2
deliveries, so messages that reach clean sessions or QoS 0 never touch the disk.

A grace period before the cut: a QoS 1 delivery sent at once to a persistent session's
connected client (the PUBACK of the PUBLISH that caused it held for it) is kept out of the
batches for up to GRACE seconds. When its subscriber acknowledges it within that time, which
is the rule under load, the message has been delivered, nothing it promised needs the disk,
and its publisher's PUBACK goes out at once: the entry and its body are never written (they
would have cost four row changes: both inserted, then both deleted). Only a delivery still
unacknowledged after GRACE is written, and its PUBACK waits for that commit as before, so
what is acknowledged is never less safe; it can wait GRACE longer.
"""
from __future__ import annotations

import asyncio
import logging
import marshal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from cymqtt._fast.inflight import AWAIT_PUBACK, AWAIT_PUBCOMP, AWAIT_PUBREC
from cymqtt.consts import NEVER
from cymqtt.message import Message
from cymqtt.registry import RegistryListener
from cymqtt.retain import MemoryRetainStore
from cymqtt.router import split_shared
from cymqtt.session import Journal as WindowJournal
from cymqtt.session import Session, Subscription, Will
from cymqtt.store.base import Batch, Snapshot, Store, StoreFull

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config
    from cymqtt.registry import Registry
    from cymqtt.router import Router

__all__ = ["DurableRetained", "Journal"]

log = logging.getLogger("cymqtt.store")

COMMIT_DELAY = 0.002        # seconds a batch gathers before it is cut (and after a commit)
GRACE = 0.05                # seconds a delivery in flight may be acknowledged before it is written
COMPACT_INTERVAL = 60.0     # seconds between compactions (on the writer thread)
RETRY_INTERVAL = 1.0        # seconds between attempts while commits fail (full disk)
HEARTBEAT = 2.0             # the store learns the broker is alive at least this often


def _blob(value: Any) -> bytes | None:
    return None if value is None else marshal.dumps(value)


def _unblob(data: bytes | None) -> Any:
    return None if data is None else marshal.loads(data)


class _Held:
    """An acknowledgement waiting until what it promises is safe: committed (`commit` set, or
    when the batch it went out with commits), or, for a PUBACK/PUBREC whose message wrote only
    queue entries, once each of those (`left`) was acknowledged by its subscriber first."""

    __slots__ = ("client", "frame", "left", "commit", "done", "young")

    def __init__(self, client: Any, frame: bytes, left: int, commit: bool) -> None:
        self.client = client
        self.frame = frame
        self.left = left
        self.commit = commit
        self.done = False
        self.young = 0          # of its entries, those still in their grace period


class DurableRetained(MemoryRetainStore):
    """The retained messages in memory (the fast path), each change also journaled."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self._journal = journal

    def store(self, msg: Message) -> None:
        if msg.topic.startswith("$SYS/"):
            super().store(msg)          # the broker's own state, published afresh each time
            return
        old = self._index.get(msg.topic)
        super().store(msg)
        self._journal.retained(msg.topic, old, msg if msg.payload else None)

    def _expired(self, msg: Message) -> None:
        if msg.sid:
            self._journal.retained(msg.topic, msg, None)

    def restore(self, msg: Message) -> None:
        """Put back a message loaded from the store (not journaled again)."""
        self._index.set(msg.topic, msg)


class Journal(WindowJournal):
    """:param store: where batches go. :param clock: the broker's (monotonic) clock; stored
    times are wall-clock (time.time()), converted at the edges.

    A registry listener (registry.RegistryListener's events) by its methods rather than by
    inheritance: it is compiled as an extension type (journal.pxd), whose base must be one
    too; the per-message events stay RegistryListener's own no-ops, so the registry gives
    sessions no observer for it."""

    session_created = RegistryListener.session_created
    message_queued = RegistryListener.message_queued
    message_acked = RegistryListener.message_acked

    def __init__(self, store: Store, config: Config, clock: Callable[[], float]) -> None:
        self.store = store
        self._config = config
        self._clock = clock
        self.seq = 0                   # the last entry key handed out (Session.deliver)
        self.durable = 0               # entries with keys up to this one are committed
        self._wake: set[Session] = set()     # sessions with QoS 2 entries awaiting commit
        self.ops = 0                   # row changes so far; ack() compares it to a mark
        self.failing = False           # the last commit failed: refuse what needs the store
        self.batch = Batch()
        self._next_mid = 1
        # Entries with keys above _cut_seq, and messages with ids from _cut_mid on, were made
        # after the last batch went to the writer: they are in no commit, so dropping them
        # needs no DELETE (a message acknowledged before its commit costs no disk work).
        self._cut_seq = 0
        self._cut_mid = 1
        self._durable_mid = 1
        # Deliveries in their grace period (see the module's doc): entry key -> row, the keys
        # in the order they were made, the bodies only they refer to, and (time, last entry
        # key then) marks that tell how old an entry is.
        self._young: dict[int, tuple] = {}
        self._order: deque[int] = deque()
        self._young_msgs: dict[int, Message] = {}
        self._marks: deque[tuple[float, int]] = deque()
        self._grace = GRACE
        self._aging: asyncio.TimerHandle | None = None
        self._refs: dict[int, int] = {}            # message id -> rows referring to it
        self._rows: dict[str, dict[int, tuple]] = {}   # client id -> entry key -> row
        self._wills: dict[str, int] = {}           # client id -> its session row's will
        # Acknowledgements held for a client, in the order they must go out, and the held
        # PUBACK/PUBREC each uncommitted entry of a message is part of (see `ack`).
        self._held: dict[Any, deque[_Held]] = {}
        self._promised: dict[int, _Held] = {}
        # The entry keys routing a PUBACK/PUBREC's message makes (Session.deliver ->
        # queued), noted while `collecting` (protocol.publish sets it before routing).
        self.collecting = False
        self._collect: list[int] | None = None
        self._registry: Registry | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cymqtt-store")
        self._committing: Batch | None = None
        self._scheduled = False
        self._last_compact = time.monotonic()
        self._last_commit = 0.0
        self._idle: asyncio.Event | None = None
        # counters, for stats() and the notes: commits, rows and messages written
        self.commits = 0
        self.rows_written = 0
        self.acks_held = 0
        self.delivered_first = 0       # held entries acknowledged before a commit needed them
        self.failures = 0

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, registry: Registry) -> None:
        self._registry = registry
        registry.add_listener(self)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._idle = asyncio.Event()
        self._idle.set()
        self._schedule()

    async def close(self) -> None:
        """Commit what is left, wait for it, and close the store."""
        loop = self._loop
        if loop is not None:
            self._grace = 0.0        # what is in its grace period goes with the next cut
            if self._aging is not None:
                self._aging.cancel()
                self._aging = None
            for _ in range(3):       # what is in flight, then what came meanwhile, then a retry
                if self._committing is None and not self.batch and not self._young:
                    break
                if self._committing is None:
                    self._flush()
                assert self._idle is not None
                await self._idle.wait()
            if self.batch.writes:
                log.error("store %s: %d changes could not be committed before the broker "
                          "stopped (%s)", self.store.name, self.batch.writes,
                          "commits are failing" if self.failing else "still committing")
        self._loop = None
        await asyncio.get_running_loop().run_in_executor(self._writer, self.store.close)
        self._writer.shutdown(wait=True)

    # -- restoring -----------------------------------------------------------------------------

    def restore(self, registry: Registry, router: Router, now: float) -> dict[str, int]:
        """Load the store into the broker (before it serves): retained messages, sessions
        (offline, expiring from the time their client left, the broker's downtime included),
        their subscriptions, windows and queues, inbound QoS 2 ids, and pending wills.
        Returns what was restored, by kind."""
        snap = self.store.load()
        wall = time.time()
        alive = snap.meta.get("alive", wall)
        messages: dict[int, Message] = {}

        def message(mid: int) -> Message | None:
            msg = messages.get(mid)
            if msg is None:
                row = snap.messages.get(mid)
                if row is None:
                    return None
                _, topic, payload, qos, retain, props, expires, sender = row
                msg = Message(topic, payload, qos, bool(retain), _unblob(props),
                              None if expires is None else now + (expires - wall), sender)
                msg.sid = mid
                messages[mid] = msg
            return msg

        self._next_mid = max(snap.messages, default=0) + 1
        retained = router.retained
        n_retained = 0
        for topic, mid in snap.retained.items():
            msg = message(mid)
            if msg is None or msg.expired(now):
                self.batch.retained[topic] = None
                continue
            retained.restore(msg)   # type: ignore[attr-defined]
            self._hold(mid)
            n_retained += 1
        sessions: dict[str, Session] = {}
        for cid, version, expiry, requested, left, will_id, will_delay in snap.sessions:
            connected = left is None      # its client was connected when the broker stopped
            if connected:
                left = alive
            will = None
            if will_id is not None:
                wmsg = message(will_id)
                # A delayed will whose time came before the broker stopped was published.
                if wmsg is not None and (connected or left + will_delay > alive):
                    will = (left + will_delay, Will(wmsg, will_delay))
            if expiry != NEVER and left + expiry <= wall:
                self.batch.end_session(cid)          # expired while the broker was down
                if will is not None:
                    registry.publish_will(will[1], now)
                continue
            session = Session(cid, self._config)
            session.version = version
            session.expiry_interval = expiry
            session.requested_expiry = requested
            session.expires_at = None if expiry == NEVER else now + (left + expiry - wall)
            session.journal = self
            registry.restore(session, None if will is None else
                             (now + max(0.0, will[0] - wall), will[1]))
            self._rows[cid] = {}
            if will is not None:
                self._wills[cid] = self._hold(will_id)
            if connected:      # it left when the broker stopped; its will is pending now
                self.batch.sessions[cid] = (cid, version, expiry, requested, left,
                                            None if will is None else will_id, will_delay)
            sessions[cid] = session
        n_subs = 0
        for cid, full_filter, options, sub_id in snap.subs:
            session = sessions.get(cid)
            if session is None:
                continue
            group, topic_filter = split_shared(full_filter)
            sub = Subscription(session, full_filter, topic_filter, group, options, sub_id)
            session.subscriptions[full_filter] = sub
            router.subscribe(sub)
            n_subs += 1
        n_entries = self._restore_entries(snap, sessions, message)
        for cid, pid in snap.inbound:
            session = sessions.get(cid)
            if session is not None:
                session.inbound_qos2(65535).receive(pid)
        self.seq = self.durable = self._cut_seq = max((e[1] for e in snap.entries), default=0)
        self._cut_mid = self._durable_mid = self._next_mid
        orphans = [mid for mid in snap.messages if mid not in self._refs]
        for mid in orphans:
            self.batch.messages[mid] = None
        return {"retained": n_retained, "sessions": len(sessions), "subscriptions": n_subs,
                "queued": n_entries}

    def _restore_entries(self, snap: Snapshot, sessions: dict[str, Session],
                         message: Callable[[int], Message | None]) -> int:
        # Each window as it was: in-flight entries under their packet ids (a QoS 2 one that
        # got PUBREC awaits PUBCOMP again), then the queue, in order.
        by_client: dict[str, list[tuple]] = {}
        for row in snap.entries:
            if row[0] in sessions:
                by_client.setdefault(row[0], []).append(row)
            else:
                self.batch.entries[row[1]] = None
        n = 0
        for cid, rows in by_client.items():
            session = sessions[cid]
            w = session._window()
            last = 0
            rows.sort(key=lambda r: (r[7] == 0, r[1]))    # in flight first, each in order
            for row in rows:
                _, seq, mid, qos, retain, sub_ids, shared, pid, state = row
                msg = message(mid)
                if msg is None:
                    self.batch.entries[seq] = None
                    continue
                shared = _unblob(shared)
                item = (msg, bool(retain), _unblob(sub_ids),
                        None if shared is None else tuple(shared), seq)
                got = session.put_back(item, qos, pid, state)
                if pid:
                    last = max(last, pid)
                    if got != pid:       # did not fit the window: it goes again as new
                        row = row[:7] + (0, 0)
                self._rows[cid][seq] = row
                self._hold(mid)
                n += 1
            w.last_pid = last
        return n

    # -- the session window (session.Journal) ---------------------------------------------------

    def queued(self, session: Session, item: tuple, qos: int, pid: int) -> None:
        if not qos:
            return                       # QoS 0 promises nothing across a restart
        msg = item[0]
        # Sent now to a client, for a PUBLISH whose PUBACK is held: it gets its grace period.
        young = pid > 0 and qos == 1 and self.collecting
        mid = self._ref(msg, young)
        sub_ids = item[2]
        shared = item[3]
        if pid == -1 and qos == 2:
            self._wake.add(session)       # sent once committed (Session.deliver)
        if self.collecting:
            if self._collect is None:
                self._collect = [item[4]]
            else:
                self._collect.append(item[4])
        row = (session.client_id, item[4], mid, qos, 1 if item[1] else 0,
               None if sub_ids is None else marshal.dumps(sub_ids),
               None if shared is None else marshal.dumps(shared),
               pid if pid > 0 else 0, (AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC)
               if pid > 0 else 0)
        seq = row[1]
        if young:
            self._young[seq] = row        # (so _put_entry keeps it out of the batch)
        self._put_entry(row)
        if not young:
            return
        self._order.append(seq)
        self.ops += 1
        now = time.monotonic()
        marks = self._marks
        if not marks or now - marks[-1][0] >= self._grace / 8:
            marks.append((now, seq))
        if self._aging is None:
            self._age_later()

    def sent(self, session: Session, item: tuple, pid: int) -> None:
        row = self._rows[session.client_id].get(item[4])
        if row is not None:
            self._put_entry(row[:7] + (pid, AWAIT_PUBACK if row[3] == 1 else AWAIT_PUBREC))

    def released(self, session: Session, item: tuple, pid: int) -> None:
        row = self._rows[session.client_id].get(item[4])
        if row is not None:
            self._put_entry(row[:7] + (pid, AWAIT_PUBCOMP))

    def done(self, session: Session, item: tuple, delivered: bool = True) -> None:
        """`delivered`: acknowledged by the client (or expired, or refused by it), so what
        its publisher was promised holds; False when it moved to another session."""
        cid = session.client_id
        rows = self._rows.get(cid)
        row = None if rows is None else rows.pop(item[4], None)
        if row is None:
            return
        seq = row[1]
        held = self._promised.pop(seq, None)
        young = seq in self._young
        if held is not None:                  # (one test of its own: gcc then knows it)
            if young or seq > self._cut_seq:
                if not delivered:
                    held.commit = True
                else:
                    held.left -= 1
                    self.delivered_first += 1
                    if not held.left and not held.commit:
                        held.done = True      # delivered before any commit needed it
                        self._release(held.client)
                if young:
                    self._grown(held)
        self._drop_entry(row)
        if not young:
            self._changed()

    def _put_entry(self, row: tuple) -> None:
        seq = row[1]
        self._rows[row[0]][seq] = row
        if seq in self._young:
            self._young[seq] = row            # (sent again: still in its grace period)
            return
        self.batch.entries[seq] = row
        self._changed()

    def _drop_entry(self, row: tuple) -> None:
        # An entry in its grace period, or made since the last cut, is in no commit yet:
        # forget it, nothing to delete.
        seq = row[1]
        young = self._young
        if young and young.pop(seq, None) is not None:
            if not young:
                self._order.clear()
        elif seq > self._cut_seq:
            self.batch.entries.pop(seq, None)
        else:
            self.batch.entries[seq] = None
        self._deref(row[2])

    def _grown(self, held: _Held) -> None:
        # One of `held`'s entries left its grace period (acknowledged, written or gone): once
        # none is left there, it waits for the next commit unless it is done.
        held.young -= 1
        if not held.young and not held.done:
            self.batch.acks.append(held)
            self._schedule()

    def _age(self) -> None:
        # The cut's first step: entries GRACE old or more still in their grace period go into
        # the batch, with the bodies they need; the acknowledgements waiting for them follow.
        young = self._young
        if not young:
            return
        now = time.monotonic()
        marks = self._marks
        marks.append((now, self.seq))
        limit = now - self._grace
        old = 0
        while marks and marks[0][0] <= limit:
            old = marks.popleft()[1]
        if not old:
            return
        order = self._order
        batch = self.batch
        bodies = self._young_msgs
        promised = self._promised
        while order and order[0] <= old:
            row = young.pop(order.popleft(), None)
            if row is None:
                continue                      # acknowledged meanwhile
            seq = row[1]
            batch.entries[seq] = row
            body = bodies.pop(row[2], None)
            if body is not None:
                batch.messages[row[2]] = body
            held = promised.get(seq)
            if held is not None:
                self._grown(held)
        if not young:
            order.clear()

    def _age_later(self) -> None:
        # Come back when the oldest entry in its grace period has had it.
        if self._aging is not None or not self._young or self._loop is None:
            return
        order, young = self._order, self._young
        while order[0] not in young:
            order.popleft()
        first = order[0]
        born = next((t for t, seq in self._marks if seq >= first), None)
        delay = self._grace if born is None else born + self._grace - time.monotonic()
        self._aging = self._loop.call_later(max(delay, COMMIT_DELAY), self._aged)

    def _aged(self) -> None:
        self._aging = None
        if self._committing is None and not self._scheduled:
            self._flush()
        # (else the flush under way or due ages them, and comes back here)

    # -- inbound QoS 2 (protocol.publish) ----------------------------------------------------

    def inbound(self, session: Session, pid: int, awaiting: bool) -> None:
        """A persistent session's client sent a new QoS 2 message under `pid` (awaiting
        PUBREL), or released it."""
        self.batch.inbound[(session.client_id, pid)] = awaiting
        self._changed()

    # -- retained (DurableRetained) ------------------------------------------------------------

    def retained(self, topic: str, old: Message | None, new: Message | None) -> None:
        if new is not None:
            self.batch.retained[topic] = self._ref(new)
        elif old is not None:
            self.batch.retained[topic] = None
        if old is not None and old.sid:
            self._deref(old.sid)
        self._changed()

    # -- registry events -----------------------------------------------------------------------

    def session_connected(self, session: Session) -> None:
        cid = session.client_id
        if session.expiry_interval:
            session.journal = self
            self._rows.setdefault(cid, {})
            self._put_session(session, None, session.will)
        elif cid in self._rows:
            # It outlives its connection no more (MQTT 5 expiry 0): forget it now.
            self._forget(cid)
            session.journal = None

    def session_disconnected(self, session: Session) -> None:
        cid = session.client_id
        if cid not in self._rows:
            return
        pending = self._registry.pending_wills.get(cid) if self._registry else None
        self._put_session(session, time.time(), None if pending is None else pending[1])

    def session_ended(self, session: Session) -> None:
        session.journal = None
        if session.client_id in self._rows:
            self._forget(session.client_id)

    def subscribed(self, session: Session, sub: Subscription) -> None:
        if session.journal is not None:
            cid = session.client_id
            options = sub.qos | (4 if sub.no_local else 0) | (8 if sub.retain_as_published
                                                               else 0) | (sub.retain_handling << 4)
            self.batch.subs[(cid, sub.full_filter)] = (cid, sub.full_filter, options,
                                                       sub.sub_id)
            self._changed()

    def unsubscribed(self, session: Session, sub: Subscription) -> None:
        if session.journal is not None:
            self.batch.subs[(session.client_id, sub.full_filter)] = None
            self._changed()

    def _put_session(self, session: Session, left: float | None, will: Will | None) -> None:
        cid = session.client_id
        old = self._wills.pop(cid, None)
        will_id = None
        if will is not None:
            will_id = self._wills[cid] = self._ref(will.message)
        if old is not None:           # after the new reference: the same will stays written
            self._deref(old)
        self.batch.sessions[cid] = (cid, session.version, session.expiry_interval,
                                    session.requested_expiry, left, will_id,
                                    will.delay if will is not None else None)
        self._changed()

    def _forget(self, cid: str) -> None:
        rows = self._rows.pop(cid, {})
        for row in rows.values():
            held = self._promised.pop(row[1], None)
            if held is not None:
                held.commit = True            # the session went: its batch's commit decides
                if row[1] in self._young:
                    self._grown(held)
            self._drop_entry(row)
        will = self._wills.pop(cid, None)
        if will is not None:
            self._deref(will)
        self.batch.end_session(cid)
        self._changed()

    # -- message bodies ------------------------------------------------------------------------

    def _ref(self, msg: Message, young: bool = False) -> int:
        # One more row refers to `msg`: write its body the first time (unless only entries
        # in their grace period refer to it).
        mid = msg.sid
        refs = self._refs
        if mid and mid in refs:
            refs[mid] += 1
            if not young and self._young_msgs:
                body = self._young_msgs.pop(mid, None)
                if body is not None:
                    self.batch.messages[mid] = body
            return mid
        if not mid:
            mid = msg.sid = self._next_mid
            self._next_mid += 1
        refs[mid] = 1
        if young:
            self._young_msgs[mid] = msg
        else:
            self.batch.messages[mid] = msg      # its row is made at the cut, if still needed
        return mid

    def _hold(self, mid: int) -> int:
        # One more reference to a message loaded from the store (its row is there).
        self._refs[mid] = self._refs.get(mid, 0) + 1
        return mid

    def _deref(self, mid: int) -> None:
        refs = self._refs
        n = refs.get(mid, 0) - 1
        if n > 0:
            refs[mid] = n
        else:
            refs.pop(mid, None)
            if self._young_msgs and self._young_msgs.pop(mid, None) is not None:
                pass                          # only ever referred to in a grace period
            elif mid >= self._cut_mid:        # written since the last cut: in no commit yet
                self.batch.messages.pop(mid, None)
            else:
                self.batch.messages[mid] = None

    # -- acknowledgements ----------------------------------------------------------------------

    def ack(self, client: Any, frame: bytes, mark: int) -> None:
        """Send `frame` to `client` now when nothing was written since `mark` (an earlier
        `ops`) and none of its acknowledgements is held; else once what was written is safe:
        committed, or, for a message that wrote nothing but queue entries, delivered and
        acknowledged by every subscriber first (then the entries never reach the disk).
        Per client, acknowledgements go out in the order they were made [MQTT-4.6.0-2]."""
        entries = self._collect
        if entries is not None:
            self._collect = None
        self.collecting = False
        if self.ops == mark and client not in self._held:
            client.send(frame)
            return
        n = 0 if entries is None else len(entries)
        held = _Held(client, frame, n, self.ops - mark > n or not n)
        if self.ops == mark:
            held.done = True          # it waits only for the client's earlier ones
        elif n:
            promised = self._promised
            young = self._young
            for seq in entries:
                promised[seq] = held
                if seq in young:
                    held.young += 1
        queue = self._held.get(client)
        if queue is None:
            queue = self._held[client] = deque()
        queue.append(held)
        if not held.done:
            self.acks_held += 1
            if not held.young:        # (else once its entries leave their grace period)
                self.batch.acks.append(held)
                self._schedule()

    def _release(self, client: Any) -> None:
        # Send the client's acknowledgements that are due, in order.
        queue = self._held.get(client)
        if queue is None:
            return
        connected = client.session is not None
        while queue and queue[0].done:
            held = queue.popleft()
            if connected:
                client.send(held.frame)
        if not queue:
            del self._held[client]

    def needs_store(self, msg: Message, router: Router) -> bool:
        """Whether routing `msg` would write to the store (asked while commits fail)."""
        if msg.retain:
            return True
        return msg.qos > 0 and any(s.qos and s.session.journal is not None
                                   for s in router.trie.match(msg.topic))

    # -- committing ----------------------------------------------------------------------------

    def _changed(self) -> None:
        self.ops += 1
        if not self._scheduled and self._committing is None and self._loop is not None:
            self._scheduled = True
            self._loop.call_later(COMMIT_DELAY, self._flush)

    def _schedule(self) -> None:
        if not self._scheduled and self._committing is None and self._loop is not None \
                and self.batch:
            self._scheduled = True
            self._loop.call_later(COMMIT_DELAY, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._committing is not None or self._loop is None:
            return
        self._age()
        batch = self.batch
        if not batch:
            self._age_later()
            return
        self.batch = Batch()
        batch.seq = self._cut_seq = self.seq
        batch.mid = self._cut_mid = self._next_mid
        batch.wake, self._wake = self._wake, set()
        if not batch.writes and not batch.meta:
            # Only acknowledgements, whose deliveries were all acknowledged meanwhile:
            # nothing to write, nothing to wait for.
            self._committed(batch, None, wrote=False)
            return
        wall = batch.meta["alive"] = time.time()
        clock = self._clock()
        messages = batch.messages
        for mid, msg in messages.items():
            if isinstance(msg, Message):      # (a retried batch holds rows already)
                messages[mid] = (mid, msg.topic, msg.payload, msg.qos, 1 if msg.retain else 0,
                                 _blob(msg.properties), None if msg.expires_at is None
                                 else wall + (msg.expires_at - clock), msg.sender)
        self._committing = batch
        assert self._idle is not None
        self._idle.clear()
        loop = self._loop
        future = self._writer.submit(self._commit, batch)

        def done(f) -> None:
            try:
                loop.call_soon_threadsafe(self._committed, batch, f.exception())
            except RuntimeError:          # the loop is closed: the process is ending
                pass
        future.add_done_callback(done)

    def _commit(self, batch: Batch) -> None:
        # The writer thread.
        self.store.commit(batch)
        now = time.monotonic()
        if now - self._last_compact >= COMPACT_INTERVAL:
            self._last_compact = now
            try:
                self.store.compact()
            except Exception:  # pragma: no cover - compaction is best effort
                log.exception("store %s: compaction failed", self.store.name)

    def _committed(self, batch: Batch, exc: BaseException | None, wrote: bool = True) -> None:
        self._committing = None
        if exc is not None:
            self._failed(batch, exc)
            return
        if self.failing:
            self.failing = False
            log.warning("store %s: commits succeed again; QoS 1/2 messages are accepted",
                        self.store.name)
        if wrote:
            self.commits += 1
            self.rows_written += batch.writes
            self._last_commit = time.monotonic()
        self.durable = batch.seq
        self._durable_mid = batch.mid
        if batch.wake:
            now = self._clock()
            for session in batch.wake:
                if session.client is not None:
                    session.release(now)
        clients = set()
        for held in batch.acks:
            held.done = True
            clients.add(held.client)
        for client in clients:
            self._release(client)
        if self.batch:
            # What came during the commit goes next, after a moment more to gather (a
            # delivery acknowledged meanwhile is dropped from the batch, never written).
            self._scheduled = True
            self._loop.call_later(COMMIT_DELAY, self._flush)
        else:
            self._age_later()
            if self._idle is not None:
                self._idle.set()

    def _failed(self, batch: Batch, exc: BaseException) -> None:
        # Keep every change (the newer ones on top) and try again shortly; meanwhile
        # protocol.publish refuses QoS 1/2 messages that need the store.
        self.failures += 1
        if not self.failing:
            self.failing = True
            what = "the disk is full" if isinstance(exc, StoreFull) else "a commit failed"
            log.error("store %s: %s (%s); QoS 1/2 messages that need the store are refused "
                      "until a commit succeeds (retrying every %g s)", self.store.name, what,
                      exc, RETRY_INTERVAL)
        batch.merge(self.batch)
        self._wake |= batch.wake
        self._cut_seq = self.durable          # what it held is in no commit after all
        self._cut_mid = self._durable_mid
        self.batch = batch
        if self._loop is not None:
            self._loop.call_later(RETRY_INTERVAL, self._flush)
        if self._idle is not None:
            self._idle.set()

    def tick(self) -> None:
        """From the broker's sweep: tell the store the broker is alive (wills and expiry of
        the sessions connected at a crash count from the last such time)."""
        if self._committing is None and time.monotonic() - self._last_commit >= HEARTBEAT:
            self.batch.meta["alive"] = time.time()
            self._last_commit = time.monotonic()
            self._changed()

    def stats(self) -> dict[str, int]:
        return {"store_commits": self.commits, "store_rows_written": self.rows_written,
                "store_acks_held": self.acks_held,
                "store_delivered_before_commit": self.delivered_first,
                "store_in_grace": len(self._young),
                "store_failures": self.failures,
                "store_bytes": self.store.size()}
