"""The cluster's two JetStream key-value buckets, as the NATS bus keeps them.

`<name>_retained`: one entry per retained topic, every change (a delete too) carrying the
node and its sequence number. Every node applies every change in the bucket's order, its own
too unless nothing came between its write and its echo, so all nodes end with the bucket's
last value per topic; subscribers read the node's own store (the fast path).

`<name>_sessions`: for each persistent session, the node holding it, its expiry, its
subscriptions and when its client left (not its queue, which is that node's store's): a node
that a client reconnects to when its node is gone takes the session on from there.

Writes go out with the bus's other changes of the tick (published on the bulk connection,
no round trip each); a session's record is packed then, once however often it changed.
"""
from __future__ import annotations

import asyncio
import logging
import marshal
import time
from typing import TYPE_CHECKING, Any

from nats.errors import Error as NatsError

from cymqtt.cluster.wire import kv_key, kv_topic, pack_message, pack_session, unpack_message, \
    unpack_session
from cymqtt.config import ConfigError
from cymqtt.consts import NEVER
from cymqtt.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.cluster.nats import NatsBus
    from cymqtt.session import Session

__all__ = ["Buckets"]

log = logging.getLogger("cymqtt.cluster")

DELETE = {"KV-Operation": "DEL"}


class Buckets:
    def __init__(self, bus: NatsBus, prefix: str) -> None:
        self._bus = bus
        self._retained_name = f"{prefix}_retained"
        self._sessions_name = f"{prefix}_sessions"
        self._sessions = None                      # the sessions bucket, once started
        self._ready = asyncio.Event()
        # This tick's changes: retained (topic, value, deleted) in order; sessions by client
        # id (None: delete).
        self._retained_out: list[tuple[str, bytes, bool]] = []
        self._sessions_out: dict[str, Session | None] = {}
        self._sent: dict[str, int] = {}            # topic -> our last write not seen back
        self._seq = 0
        self._recorded: set[str] = set()           # client ids with a record in the bucket
        self.giving: str | None = None             # the client id being handed over
        self._watcher = None                       # the retained bucket's, once started

    async def start(self) -> asyncio.Task:
        """Open (or create) both buckets and load every retained message into the node's
        store; returns the task that follows the retained bucket from then on."""
        retained = await self._open(self._retained_name)
        self._sessions = await self._open(self._sessions_name)
        watcher = self._watcher = await retained.watchall()
        task = asyncio.create_task(self._watch(watcher), name="cymqtt-cluster-retained")
        await self._ready.wait()
        return task

    async def stop(self) -> None:
        """Stop following the retained bucket (its consumer's tasks end with it)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.stop()
            except (NatsError, OSError):
                pass

    async def _open(self, name: str):
        js = self._bus._shared_nc.jetstream()
        try:
            try:
                return await js.key_value(name)
            except NatsError:
                return await js.create_key_value(bucket=name, history=1)
        except NatsError as exc:
            raise ConfigError(f"[cluster]: the NATS server has no JetStream for the retained "
                              f"messages and sessions ({exc}); start nats-server with -js") \
                from None

    # -- the tick's changes --------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._retained_out or self._sessions_out)

    def take(self) -> list[tuple[str, bytes, dict | None]]:
        """The tick's changes as (subject, payload, headers) to publish."""
        bus = self._bus
        out = [(f"$KV.{self._retained_name}.{kv_key(topic)}", value,
                DELETE if deleted else None) for topic, value, deleted in self._retained_out]
        self._retained_out = []
        wall = time.time()
        for cid, session in self._sessions_out.items():
            subject = f"$KV.{self._sessions_name}.{kv_key(cid)}"
            if session is None:
                out.append((subject, b"", DELETE))
            else:
                out.append((subject, marshal.dumps((
                    bus.node, bus._inc, None if session.client is not None else wall,
                    pack_session(session, 0.0, window=False))), None))
        self._sessions_out = {}
        return out

    # -- retained messages ---------------------------------------------------------------------

    def retained_changed(self, msg: Message) -> None:
        if msg.topic.startswith("$SYS/"):
            return                 # each node's own (cymqtt.sys_topics)
        bus = self._bus
        self._seq += 1
        self._sent[msg.topic] = self._seq
        packed = pack_message(msg, bus._ctx.clock()) if msg.payload else None
        # (a delete carries who and when too: the watchers order it as any change)
        self._retained_out.append((msg.topic, marshal.dumps(
            (time.time(), bus.node, self._seq, packed)), packed is None))
        bus._changed()

    async def _watch(self, watcher) -> None:
        bus = self._bus
        ctx = bus._ctx
        store = ctx.router.retained
        n = 0
        async for entry in watcher:
            if entry is None:
                if not self._ready.is_set():
                    self._ready.set()
                    if n:
                        log.info("cluster: %d retained messages from the bucket", n)
                continue
            try:
                topic = kv_topic(entry.key)
                wall, node, seq, packed = marshal.loads(entry.value)
                now = ctx.clock()
                msg = Message(topic, b"", 0, True) if packed is None else \
                    unpack_message(packed, now - max(0.0, time.time() - wall))[0]
            except (EOFError, ValueError, TypeError):
                if entry.operation not in ("DEL", "PURGE"):    # (one not of ours: gone)
                    bus.counters["cluster_bad_messages"] += 1
                continue
            if node == bus.node and self._sent.get(topic) == seq:
                del self._sent[topic]          # ours, and nothing came between: we have it
                continue
            self._sent.pop(topic, None)        # someone else's came between: take the order
            if not msg.expired(ctx.clock()):
                store.store(msg)
            n += 1

    # -- persistent sessions -------------------------------------------------------------------

    def note(self, session: Session) -> None:
        """`session` changed (connected, left, subscribed): its record follows."""
        cid = session.client_id
        if session.expiry_interval:
            self._recorded.add(cid)
            self._record(cid, session)
        elif cid in self._recorded:             # (an MQTT 5 client reconnected with 0)
            self._recorded.discard(cid)
            self._record(cid, None)

    def ended(self, client_id: str) -> None:
        if client_id in self._recorded:
            self._recorded.discard(client_id)
            if client_id != self.giving:        # (handed over: the new node writes it)
                self._record(client_id, None)

    def _record(self, client_id: str, session: Session | None) -> None:
        if self._sessions is None:
            return
        self._sessions_out[client_id] = session
        self._bus._changed()

    async def recover(self, client_id: str, answered: set[str]) -> bool:
        """No node that `answered` a claim holds `client_id`'s session: take it on from the
        bucket when the node that left it there is gone, or did not answer in time (it may
        have given the session up, too late for the claim), and it has not expired. True
        when it did."""
        bus = self._bus
        registry = bus._ctx.registry
        try:
            entry = await self._sessions.get(kv_key(client_id))
            node, inc, left, packed = marshal.loads(entry.value)
        except (NatsError, EOFError, ValueError, TypeError):
            return False            # (KeyNotFoundError is a NatsError: none)
        peer: Any = bus._peers.get(node)
        if registry.get(client_id) is not None or (node == bus.node and inc == bus._inc) \
                or (peer is not None and peer.inc == inc and node in answered):
            return False            # here, or its node answered without handing it over
        now = bus._ctx.clock()
        session, _ = unpack_session(packed, bus._ctx.config, now)
        wall = time.time()
        gone = left if left is not None else wall     # (it was connected when its node died)
        if session.expiry_interval != NEVER and gone + session.expiry_interval <= wall:
            return False
        registry.adopt(session, [], now)
        log.warning("client %s: its session was on node %s, which is gone or did not "
                    "answer: taken on here with its %d subscriptions (the messages queued "
                    "there come here if that node comes back)", client_id, node,
                    len(session.subscriptions))
        return True
