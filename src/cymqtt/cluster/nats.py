"""The cluster on NATS: nodes meet on a NATS server (or NATS cluster) and nothing else.

Subjects (``<p>`` is `[cluster] name`, "cymqtt" by default; topics escaped by cluster.wire):

    <p>.m.<topic>             a message, to every node subscribed to a matching filter
    <p>.s.<group>.<topic>     a message for a shared group: NATS queue group per (group, filter),
                              so exactly one node, then one member there
    <p>.ctl.hb                each node's heartbeat: name, incarnation, route version, stats
    <p>.ctl.route             a route added or removed (acknowledged by every live node)
    <p>.ctl.sync.<node>       request: a node's whole route table
    <p>.ctl.claim             request: give up this client id (and hand its session over)
    <p>.ctl.probe             request: which of these client ids have a session on you
    <p>.ctl.bye               a node leaving
    $KV.<p>_retained.<key>    retained messages (a JetStream key-value bucket)
    $KV.<p>_sessions.<key>    each persistent session's node, expiry and subscriptions: a
                              node takes it on when the client comes back and its node is gone

Routing. Each node subscribes on NATS to the filters its clients hold, and tells the others
(`route`), which keep a route table (a topic trie of every other node's filters): a publish
goes to NATS only when the table matches its topic, batched per loop tick. A node that holds
`a/+` and `a/#` receives a message on `a/b` once per NATS subscription; it takes the copy that
came through the smallest of its filters that match and drops the others. A SUBACK waits
until every live node has the new route, so a message published anywhere after it reaches
the subscriber.

Liveness. Heartbeats every node_timeout / 3; a node silent for node_timeout is dropped with its
routes (its clients reconnect elsewhere). A node whose route version jumped (a lost update, a
restart under the same name, a healed partition) is asked for its whole table.

Retained messages live in the bucket: every node applies every change in the order the bucket
has it (its own too, unless nothing else came between), so all nodes end with the bucket's
last value for each topic; subscribers read the local store, the fast path.

Client ids. A CONNECT asks every live node to give the client id up; the one that holds its
session closes that client (5.0 DISCONNECT 0x8E) and sends the session (subscriptions,
in-flight messages under their packet ids, queue) in its reply; the CONNECT goes on here.

A node that restarts with sessions from its store asks the others which of those client ids
they hold (their clients came back elsewhere meanwhile): those are dropped here.

Delivery between nodes is NATS core's: at most once. Messages are not lost on a healthy
network (a NATS server drops a slow consumer only past its pending limits), but a node that
dies takes what it had not forwarded yet, and a QoS 1/2 publisher's PUBACK does not wait for
other nodes.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import marshal
import os
import secrets
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable

import nats
from nats.errors import Error as NatsError

from cymqtt._fast.topics import TopicTrie
from cymqtt.cluster.base import Bus
from cymqtt.cluster.wire import (
    escape_level, filter_subjects, kv_key, kv_topic, pack_message, pack_session,
    topic_subject, unpack_message, unpack_session,
)
from cymqtt.config import ConfigError
from cymqtt.consts import NEVER
from cymqtt.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import ClusterConfig, Config
    from cymqtt.context import Context
    from cymqtt.session import Session, Subscription

__all__ = ["NatsBus"]

log = logging.getLogger("cymqtt.cluster")

ROUTE_CACHE_SIZE = 10_000
# Figures that are the same on every node, not a node's share: not added up by whole().
_NODE_ONLY = frozenset({"uptime", "retained_messages"})
QUEUE = "q"


def _default_node() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{os.getpid()}"


def _queue_name(key: tuple[str, str]) -> str:
    # One NATS queue group per (group, filter): NATS groups queue subscribers by name across
    # the subjects a message matches, MQTT by (group, filter).
    return "q" + hashlib.sha1(f"{key[0]}\x00{key[1]}".encode()).hexdigest()[:20]


class _Peer:
    __slots__ = ("node", "inc", "version", "latest", "seen", "routes", "stats", "syncing")

    def __init__(self, node: str, inc: int, now: float) -> None:
        self.node = node
        self.inc = inc
        self.version = -1            # the route version our table of it is at; -1: none yet
        self.latest = -1             # the highest version it told us of
        self.seen = now
        self.routes: set[tuple[str | None, str]] = set()
        self.stats: dict[str, Any] = {}
        self.syncing = False


class _Wait:
    """Replies expected from `nodes` to one request; done when all came or at the timeout."""

    __slots__ = ("nodes", "replies", "future", "timer")

    def __init__(self, nodes: set[str], future: asyncio.Future) -> None:
        self.nodes = nodes
        self.replies: list = []
        self.future = future
        self.timer: asyncio.TimerHandle | None = None

    def reply(self, node: str, value: Any) -> None:
        if node in self.nodes:
            self.nodes.discard(node)
            self.replies.append(value)
        if not self.nodes:
            self.finish()

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.future.done():
            self.future.set_result(self.replies)


class NatsBus(Bus):
    active = True

    def __init__(self, cfg: ClusterConfig, config: Config) -> None:
        self._cfg = cfg
        self._config = config
        self.node = cfg.node or _default_node()
        p = self._prefix = cfg.name
        self._m = f"{p}.m"
        self._s = f"{p}.s"
        self._ctl = f"{p}.ctl"
        self._bucket = f"{p}_retained"
        self._sessions_bucket = f"{p}_sessions"
        self._sessions_kv = None
        # This tick's changes to the sessions bucket: client id -> record, None: delete.
        self._session_out: dict[str, bytes | None] = {}
        self._giving: str | None = None            # the client id give_away is handing over
        self._recorded: set[str] = set()           # client ids with a record there
        self._inc = time.time_ns()                 # this run of the node
        self._version = 0                          # changes to our routes, announced in order
        self._nc = None                            # subscriptions, control, plain publishes
        self._shared_nc = None                     # shared-group publishes (see _publish)
        self._ctx: Context | None = None
        self._node_stats: Callable[[], dict[str, int]] = dict
        self._answer: Callable[[str, tuple], Any] = lambda q, a: None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Our routes: (group, filter) -> client ids holding it; by client, for session ends.
        self._holders: dict[tuple[str | None, str], set[str]] = {}
        self._by_client: dict[str, set[tuple[str | None, str]]] = {}
        self._nats_subs: dict[tuple[str | None, str], list] = {}
        self._plain = TopicTrie()                  # our plain filters, to drop the extra copies
        self._ops: asyncio.Queue | None = None     # route changes, applied in order
        self._settle: list[asyncio.Future] = []    # SUBACKs waiting for their routes
        # The other nodes and their routes.
        self._peers: dict[str, _Peer] = {}
        self._routes = TopicTrie()                 # (filter, node) -> node
        self._shared_routes = TopicTrie()          # ((group, filter), node) -> group
        self._cache: dict[str, tuple[bool, frozenset | None]] = {}
        # Outgoing messages of this tick: (subject, data, shared).
        self._out: list[tuple[str, bytes, bool]] = []
        self._kv_out: list[tuple[str, bytes | None]] = []
        self._flushing = False
        self._kv_sent: dict[str, int] = {}         # topic -> our last put not yet seen back
        self._kv_seq = 0
        self._inbox = ""
        self._waits: dict[str, _Wait] = {}
        self._tasks: list[asyncio.Task] = []       # the long-lived ones
        self._sends: set[asyncio.Future] = set()   # forwarding, one per tick that forwarded
        self._background: set[asyncio.Future] = set()
        self._pending_ops = 0
        self._closing = False
        self._connected = False
        self._closing = False
        self._retained_ready: asyncio.Event | None = None
        self.counters = {"cluster_forwarded": 0, "cluster_received": 0,
                         "cluster_duplicates_dropped": 0, "cluster_bad_messages": 0,
                         "cluster_too_big": 0, "cluster_claims": 0, "cluster_handovers_in": 0,
                         "cluster_handovers_out": 0, "cluster_sessions_recovered": 0}

    # -- joining and leaving -------------------------------------------------------------------

    async def start(self, ctx: Context, stats: Callable[[], dict[str, int]],
                    answer: Callable[[str, tuple], Any]) -> None:
        self._ctx = ctx
        self._node_stats = stats
        self._answer = answer
        self._loop = asyncio.get_running_loop()
        self._ops = asyncio.Queue()
        self._retained_ready = asyncio.Event()
        urls = ", ".join(self._cfg.nats)
        try:
            # (nats-py retries a server it cannot reach for ever: the first time, give up)
            wait = 2.5 * len(self._cfg.nats) + 1
            self._nc = await asyncio.wait_for(nats.connect(**self._options(True)), wait)
            self._shared_nc = await asyncio.wait_for(nats.connect(**self._options(False)), wait)
            self._connected = True
        except (OSError, NatsError, ssl.SSLError, asyncio.TimeoutError) as exc:
            await self.close()
            raise ConfigError(f"[cluster]: cannot reach NATS at {urls}: "
                              f"{exc or type(exc).__name__} (is nats-server running there? "
                              "check [cluster] nats and its credentials)") from None
        nc = self._nc
        self._inbox = nc.new_inbox()
        await nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        await nc.subscribe(f"{self._ctl}.hb", cb=self._on_heartbeat)
        await nc.subscribe(f"{self._ctl}.route", cb=self._on_route)
        await nc.subscribe(f"{self._ctl}.sync.{self.node}", cb=self._on_sync)
        await nc.subscribe(f"{self._ctl}.claim", cb=self._on_claim)
        await nc.subscribe(f"{self._ctl}.bye", cb=self._on_bye)
        try:
            await self._start_retained()
        except BaseException:
            await self.close()
            raise
        await nc.subscribe(f"{self._ctl}.probe", cb=self._on_probe)
        await nc.subscribe(f"{self._ctl}.ask", cb=self._on_ask)
        self._tasks.append(asyncio.create_task(self._beat(), name="cymqtt-cluster-heartbeat"))
        # Meet the others: they answer a heartbeat from a node they do not know with theirs,
        # and we ask each one we hear of for its routes.
        await self._heartbeat()
        await nc.flush()
        await asyncio.sleep(0.2)
        pending = [p for p in self._peers.values() if p.syncing]
        for _ in range(20):
            if not any(p.syncing for p in pending):
                break
            await asyncio.sleep(0.05)
        await self._drop_stale_sessions()
        # From now on the routes follow the registry; the sessions the store restored first.
        ctx.registry.add_listener(self)
        for session in list(ctx.registry.sessions.values()):
            for sub in session.subscriptions.values():
                self.subscribed(session, sub)
        ctx.router.bus = self
        ctx.cluster = self
        self._tasks.append(asyncio.create_task(self._apply_ops(), name="cymqtt-cluster-routes"))
        log.info("cluster: node %s joined %s over NATS at %s (%d other node%s)", self.node,
                 self._prefix, nc.connected_url.netloc if nc.connected_url else urls,
                 len(self._peers), "" if len(self._peers) == 1 else "s")

    def _options(self, no_echo: bool) -> dict[str, Any]:
        cfg = self._cfg
        opts: dict[str, Any] = {
            "servers": list(cfg.nats), "name": f"cymqtt {self.node}", "no_echo": no_echo,
            "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
            "connect_timeout": 2, "error_cb": self._on_error,
        }
        if no_echo:
            opts["disconnected_cb"] = self._on_disconnected
            opts["reconnected_cb"] = self._on_reconnected
        if cfg.token is not None:
            opts["token"] = cfg.token
        if cfg.user is not None:
            opts["user"] = cfg.user
            opts["password"] = cfg.password
        if cfg.credentials is not None:
            opts["user_credentials"] = cfg.credentials
        if cfg.tls_ca_file or cfg.tls_cert_file or any(u.startswith("tls://") for u in cfg.nats):
            tls = ssl.create_default_context(cafile=cfg.tls_ca_file)
            if cfg.tls_cert_file:
                tls.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
            opts["tls"] = tls
        return opts

    async def close(self) -> None:
        self._closing = True
        tasks = self._tasks + list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        for fut in self._settle:
            if not fut.done():
                fut.set_result(None)
        self._settle.clear()
        for nc in (self._nc, self._shared_nc):
            if nc is None or nc.is_closed:
                continue
            try:
                if nc is self._nc and nc.is_connected:
                    self._flush_out()
                    await self._drain_out()
                    await nc.publish(f"{self._ctl}.bye", marshal.dumps((self.node, self._inc)))
                await nc.flush(timeout=1)
            except (NatsError, asyncio.TimeoutError, OSError):
                pass
            await nc.close()
        if self._ctx is not None and self._ctx.router.bus is self:
            self._ctx.router.bus = None
            self._ctx.cluster = None

    # -- routing out ---------------------------------------------------------------------------

    def forward(self, msg: Message) -> frozenset[str] | None:
        topic = msg.topic
        hit = self._cache.get(topic)
        if hit is None:
            if topic.startswith("$SYS/"):
                plain, groups = False, None       # each node's own (cymqtt.sys_topics)
            else:
                plain = bool(self._routes.match(topic))
                groups = frozenset(self._shared_routes.match(topic)) or None
            if len(self._cache) >= ROUTE_CACHE_SIZE:
                self._cache.clear()
            hit = self._cache[topic] = (plain, groups)
        plain, groups = hit
        if msg.retain:
            self.retained_changed(msg)
        if not plain and groups is None:
            return None
        data = pack_message(msg, self._ctx.clock(), self.node)
        out = self._out
        if plain:
            out.append((topic_subject(self._m, topic), data, False))
        if groups is not None:
            for group in groups:
                out.append((topic_subject(f"{self._s}.{escape_level(group)}", topic), data,
                            True))
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush_out)
        return groups

    def retained_changed(self, msg: Message) -> None:
        if msg.topic.startswith("$SYS/"):
            return                 # each node's own (cymqtt.sys_topics)
        self._kv_seq += 1
        self._kv_sent[msg.topic] = self._kv_seq
        value = None if not msg.payload else marshal.dumps(
            (time.time(), self.node, self._kv_seq, pack_message(msg, self._ctx.clock())))
        self._kv_out.append((msg.topic, value))
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        # Once per tick: everything forwarded during it goes to NATS in one go.
        self._flushing = False
        if self._out or self._kv_out or self._session_out:
            out, self._out = self._out, []
            kv, self._kv_out = self._kv_out, []
            sessions = self._records(self._session_out)
            self._session_out = {}
            task = asyncio.ensure_future(self._send(out, kv, sessions))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    def _spawn(self, coro) -> asyncio.Future:
        # A background step (a sync with a node, a claim); kept until it is done (the loop
        # holds tasks weakly) and for close() to cancel.
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _send(self, out: list, kv: list, sessions: list) -> None:
        nc = self._nc
        shared_nc = self._shared_nc
        limit = nc.max_payload
        try:
            for subject, data, shared in out:
                if len(data) > limit:
                    self.counters["cluster_too_big"] += 1
                    continue
                # A shared-group message goes out on the second connection: the first one
                # does not echo, and this node's own members must be among those NATS picks.
                await (shared_nc if shared else nc).publish(subject, data)
                self.counters["cluster_forwarded"] += 1
            for topic, value in kv:
                subject = f"$KV.{self._bucket}.{kv_key(topic)}"
                if value is None:
                    await nc.publish(subject, b"", headers={"KV-Operation": "DEL"})
                elif len(value) <= limit:
                    await nc.publish(subject, value)
                else:
                    self.counters["cluster_too_big"] += 1
            for client_id, record in sessions:
                subject = f"$KV.{self._sessions_bucket}.{kv_key(client_id)}"
                if record is None:
                    await nc.publish(subject, b"", headers={"KV-Operation": "DEL"})
                elif len(record) <= limit:
                    await nc.publish(subject, record)
        except NatsError as exc:
            log.warning("cluster: could not forward %d messages to NATS: %s", len(out), exc)

    async def _drain_out(self) -> None:
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    # -- routing in ----------------------------------------------------------------------------

    def _plain_handler(self, topic_filter: str):
        async def on_message(m) -> None:
            ctx = self._ctx
            now = ctx.clock()
            try:
                msg, origin = unpack_message(m.data, now)
            except ValueError:
                self.counters["cluster_bad_messages"] += 1
                return
            matched = self._plain.match(msg.topic)
            # One copy per NATS subscription that matched: keep the one through the
            # smallest of our filters that match in MQTT's terms (`#` skips `$` topics).
            if not matched or min(matched) != topic_filter:
                self.counters["cluster_duplicates_dropped"] += 1
                return
            self.counters["cluster_received"] += 1
            ctx.router.route(msg, now, True)
        return on_message

    def _shared_handler(self, key: tuple[str, str]):
        async def on_message(m) -> None:
            ctx = self._ctx
            now = ctx.clock()
            try:
                msg, _ = unpack_message(m.data, now)
            except ValueError:
                self.counters["cluster_bad_messages"] += 1
                return
            self.counters["cluster_received"] += 1
            ctx.router.deliver_shared_key(key, msg, now)
        return on_message

    # -- our routes (registry events) ----------------------------------------------------------

    def subscribed(self, session: Session, sub: Subscription) -> None:
        key = (sub.group, sub.topic_filter)
        self._note_session(session)
        keys = self._by_client.setdefault(session.client_id, set())
        if key in keys:
            return
        keys.add(key)
        holders = self._holders.get(key)
        if holders is None:
            holders = self._holders[key] = set()
            self._ops.put_nowait(("+", key))
        holders.add(session.client_id)

    def unsubscribed(self, session: Session, sub: Subscription) -> None:
        keys = self._by_client.get(session.client_id)
        key = (sub.group, sub.topic_filter)
        if keys is not None and key in keys:
            keys.discard(key)
            self._release(key, session.client_id)
        self._note_session(session)

    def session_ended(self, session: Session) -> None:
        for key in self._by_client.pop(session.client_id, ()):
            self._release(key, session.client_id)
        cid = session.client_id
        if cid in self._recorded:
            self._recorded.discard(cid)
            if cid != self._giving:            # (handed over: the new node writes it)
                self._session_record(cid, None)

    def session_connected(self, session: Session) -> None:
        self._note_session(session)

    def session_disconnected(self, session: Session) -> None:
        self._note_session(session)

    # -- persistent sessions in the cluster's bucket ---------------------------------------------
    # Each node keeps there, for each of its persistent sessions, what a node needs to take it
    # on if this one dies for good: its expiry, subscriptions and when its client left (not
    # its queue, which is this node's store's).

    def _note_session(self, session: Session) -> None:
        cid = session.client_id
        if session.expiry_interval:
            self._recorded.add(cid)
            self._session_record(cid, session)
        elif cid in self._recorded:             # (an MQTT 5 client reconnected with 0)
            self._recorded.discard(cid)
            self._session_record(cid, None)

    def _session_record(self, client_id: str, session: Session | None) -> None:
        # Written with the tick's other changes (packed then, once however often it changed).
        if self._sessions_kv is None:
            return
        self._session_out[client_id] = session
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush_out)

    def _records(self, changed: dict[str, Session | None]) -> list[tuple[str, bytes | None]]:
        wall = time.time()
        return [(cid, None if session is None else marshal.dumps(
                    (self.node, self._inc, None if session.client is not None else wall,
                     pack_session(session, 0.0, window=False))))
                for cid, session in changed.items()]

    async def _recover(self, client_id: str) -> None:
        # No live node holds the session: it may be in the bucket, left by a node that died.
        registry = self._ctx.registry
        try:
            entry = await self._sessions_kv.get(kv_key(client_id))
            node, inc, left, packed = marshal.loads(entry.value)
        except (NatsError, EOFError, ValueError, TypeError):
            return                  # (KeyNotFoundError is a NatsError: none)
        peer = self._peers.get(node)
        if registry.get(client_id) is not None or (node == self.node and inc == self._inc) \
                or (peer is not None and peer.inc == inc):
            return                  # here, or its node is alive and did not hand it over
        now = self._ctx.clock()
        session, _ = unpack_session(packed, self._ctx.config, now)
        wall = time.time()
        gone = left if left is not None else wall     # (it was connected when its node died)
        if session.expiry_interval != NEVER and gone + session.expiry_interval <= wall:
            return
        registry.adopt(session, [], now)
        self.counters["cluster_sessions_recovered"] += 1
        log.warning("client %s: its session was on node %s, which is gone: taken on here "
                    "with its %d subscriptions (the messages queued there are lost)",
                    client_id, node, len(session.subscriptions))

    def _release(self, key: tuple[str | None, str], client_id: str) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(client_id)
        if not holders:
            del self._holders[key]
            self._ops.put_nowait(("-", key))

    def routes_settled(self) -> asyncio.Future | None:
        """A future done once every route change made so far is known to every live node
        (a SUBACK waits for it); None when there is nothing to wait for."""
        if not self._peers or self._ops is None or (self._ops.empty() and
                                                    not self._pending_ops):
            return None
        fut = self._loop.create_future()
        self._settle.append(fut)
        return fut

    async def _apply_ops(self) -> None:
        # One at a time, in order: subscribe on NATS before telling the others (so what they
        # send on hearing of it arrives), tell them before unsubscribing.
        ops = self._ops
        while True:
            op, key = await ops.get()
            self._pending_ops = 1
            try:
                if op == "+" and key in self._holders and key not in self._nats_subs:
                    await self._nats_subscribe(key)
                    await self._announce(op, key)
                elif op == "-" and key not in self._holders and key in self._nats_subs:
                    await self._announce(op, key)
                    await self._nats_unsubscribe(key)
            except NatsError as exc:
                log.warning("cluster: route %s %r not changed on NATS: %s", op, key, exc)
            finally:
                self._pending_ops = 0
            if ops.empty() and self._settle:
                waiting, self._settle = self._settle, []
                for fut in waiting:
                    if not fut.done():
                        fut.set_result(None)

    async def _nats_subscribe(self, key: tuple[str | None, str]) -> None:
        group, topic_filter = key
        nc = self._nc
        if group is None:
            subs = [await nc.subscribe(s, cb=self._plain_handler(topic_filter))
                    for s in filter_subjects(self._m, topic_filter)]
            self._plain.subscribe(topic_filter, topic_filter, topic_filter)
        else:
            prefix = f"{self._s}.{escape_level(group)}"
            subs = [await nc.subscribe(s, queue=_queue_name(key),
                                       cb=self._shared_handler(key))
                    for s in filter_subjects(prefix, topic_filter)]
        self._nats_subs[key] = subs

    async def _nats_unsubscribe(self, key: tuple[str | None, str]) -> None:
        if key[0] is None:
            self._plain.unsubscribe(key[1], key[1])
        for sub in self._nats_subs.pop(key, ()):
            await sub.unsubscribe()

    async def _announce(self, op: str, key: tuple[str | None, str]) -> None:
        self._version += 1
        data = marshal.dumps((self.node, self._inc, self._version, op, key[0], key[1]))
        peers = {p.node for p in self._peers.values()}
        if not peers:
            await self._nc.publish(f"{self._ctl}.route", data)
            return
        replies = await self._request(f"{self._ctl}.route", data, peers,
                                      self._cfg.claim_timeout)
        del replies

    # -- other nodes' routes -------------------------------------------------------------------

    async def _on_route(self, m) -> None:
        try:
            node, inc, version, op, group, topic_filter = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        peer = self._peers.get(node)
        if peer is None or peer.inc != inc:
            peer = self._meet(node, inc)
        peer.latest = max(peer.latest, version)
        peer.seen = time.monotonic()
        if version == peer.version + 1:
            peer.version = version
            self._set_route(peer, op == "+", (group, topic_filter))
        elif version > peer.version:
            # Out of step (a lost update, or its table is still on its way): take this one
            # now, since its node waits for our answer before its SUBACK, and the whole
            # table again.
            self._set_route(peer, op == "+", (group, topic_filter))
            self._resync(peer)
        if m.reply:
            await self._nc.publish(m.reply, marshal.dumps(self.node))

    def _set_route(self, peer: _Peer, add: bool, key: tuple[str | None, str]) -> None:
        group, topic_filter = key
        if add:
            if key in peer.routes:
                return
            peer.routes.add(key)
            if group is None:
                self._routes.subscribe(topic_filter, (topic_filter, peer.node), peer.node)
            else:
                self._shared_routes.subscribe(topic_filter, (key, peer.node), group)
        else:
            if key not in peer.routes:
                return
            peer.routes.discard(key)
            if group is None:
                self._routes.unsubscribe(topic_filter, (topic_filter, peer.node))
            else:
                self._shared_routes.unsubscribe(topic_filter, (key, peer.node))
        self._cache.clear()

    def _meet(self, node: str, inc: int) -> _Peer:
        old = self._peers.get(node)
        if old is not None:
            self._drop(old, "restarted")
        peer = self._peers[node] = _Peer(node, inc, time.monotonic())
        self._resync(peer)
        return peer

    def _resync(self, peer: _Peer) -> None:
        if peer.syncing:
            return
        peer.syncing = True
        self._spawn(self._sync(peer))

    async def _sync(self, peer: _Peer) -> None:
        try:
            m = await self._nc.request(f"{self._ctl}.sync.{peer.node}", b"",
                                       timeout=self._cfg.node_timeout)
            node, inc, version, routes = marshal.loads(m.data)
        except (NatsError, asyncio.TimeoutError, EOFError, ValueError, TypeError) as exc:
            log.warning("cluster: node %s did not send its routes (%s); asking again at its "
                        "next heartbeat", peer.node, exc or type(exc).__name__)
            return
        finally:
            peer.syncing = False
        if self._peers.get(peer.node) is not peer or inc != peer.inc:
            return
        if version < peer.latest:
            self._resync(peer)             # a change overtook the table: ask again
            return
        wanted = {(g, f) for g, f in routes}
        for key in peer.routes - wanted:
            self._set_route(peer, False, key)
        for key in wanted - peer.routes:
            self._set_route(peer, True, key)
        peer.version = version

    async def _on_sync(self, m) -> None:
        routes = list(self._nats_subs)
        await self._nc.publish(m.reply, marshal.dumps((self.node, self._inc, self._version,
                                                       routes)))

    def _drop(self, peer: _Peer, why: str) -> None:
        if self._peers.get(peer.node) is peer:
            del self._peers[peer.node]
        for key in list(peer.routes):
            self._set_route(peer, False, key)
        for wait in self._waits.values():
            wait.reply(peer.node, None)         # (it will not answer)
        log.log(logging.INFO if why == "left" else logging.WARNING,
                "cluster: node %s %s; its routes dropped", peer.node, why)

    # -- liveness ------------------------------------------------------------------------------

    async def _beat(self) -> None:
        interval = self._cfg.node_timeout / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
            except NatsError:
                pass
            now = time.monotonic()
            for peer in list(self._peers.values()):
                if now - peer.seen > self._cfg.node_timeout:
                    self._drop(peer, f"silent for {now - peer.seen:.1f} s")

    async def _heartbeat(self) -> None:
        if self._nc is not None and self._nc.is_connected:
            await self._nc.publish(f"{self._ctl}.hb", marshal.dumps(
                (self.node, self._inc, self._version, self._local_stats())))

    def _local_stats(self) -> dict[str, int]:
        return {k: v for k, v in self._node_stats().items()
                if isinstance(v, int) and not k.startswith("cluster_")}

    async def _on_heartbeat(self, m) -> None:
        try:
            node, inc, version, stats = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        peer = self._peers.get(node)
        if peer is None or peer.inc != inc:
            log.info("cluster: node %s joined", node)
            peer = self._meet(node, inc)
            await self._heartbeat()             # so that it learns of us now
        peer.seen = time.monotonic()
        peer.stats = stats
        peer.latest = max(peer.latest, version)
        if version != peer.version and not peer.syncing:
            self._resync(peer)

    async def _on_bye(self, m) -> None:
        try:
            node, inc = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            return
        peer = self._peers.get(node)
        if peer is not None and peer.inc == inc:
            self._drop(peer, "left")

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("cluster: lost NATS; messages to other nodes wait for it")

    async def _on_reconnected(self) -> None:
        log.warning("cluster: NATS is back; relearning the other nodes' routes")
        for peer in list(self._peers.values()):
            self._resync(peer)
        await self._heartbeat()

    async def _on_error(self, exc: Exception) -> None:
        if self._connected:              # (before, start() says it once)
            log.warning("cluster: NATS: %s", exc)

    # -- requests with many replies ------------------------------------------------------------

    async def _request(self, subject: str, data: bytes, nodes: set[str],
                       timeout: float) -> list:
        token = secrets.token_hex(8)
        fut = self._loop.create_future()
        wait = self._waits[token] = _Wait(set(nodes), fut)
        wait.timer = self._loop.call_later(timeout, wait.finish)
        try:
            await self._nc.publish(subject, data, reply=f"{self._inbox}.{token}")
            return await fut
        finally:
            self._waits.pop(token, None)

    async def _on_reply(self, m) -> None:
        wait = self._waits.get(m.subject.rpartition(".")[2])
        if wait is None:
            return
        try:
            value = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            return
        node = value[0] if isinstance(value, tuple) else value
        wait.reply(node, value)

    # -- client ids ----------------------------------------------------------------------------

    def claim(self, client_id: str, clean_start: bool) -> asyncio.Future | None:
        if not self._peers and (clean_start or self._ctx.registry.get(client_id) is not None):
            return None
        self.counters["cluster_claims"] += 1
        return self._spawn(self._claim(client_id, clean_start))

    async def _claim(self, client_id: str, clean_start: bool) -> None:
        replies = await self._request(
            f"{self._ctl}.claim", marshal.dumps((self.node, client_id, clean_start)),
            set(self._peers), self._cfg.claim_timeout) if self._peers else []
        ctx = self._ctx
        if not clean_start and not any(isinstance(r, tuple) and r[1] is not None
                                       for r in replies):
            await self._recover(client_id)
        for reply in replies:
            if not isinstance(reply, tuple) or reply[1] is None:
                continue
            now = ctx.clock()
            try:
                session, items = unpack_session(reply[1], ctx.config, now)
            except (EOFError, ValueError, TypeError) as exc:
                log.warning("cluster: the session of %s from node %s is unreadable (%s); it "
                            "starts afresh", client_id, reply[0], exc)
                continue
            ctx.registry.adopt(session, items, now)
            self.counters["cluster_handovers_in"] += 1
            log.info("client %s: session handed over by node %s (%d subscriptions, %d "
                     "messages)", client_id, reply[0], len(session.subscriptions), len(items))

    async def _drop_stale_sessions(self) -> None:
        # Sessions this node's store kept while it was down: a client that came back in the
        # meantime got a session on another node, and that one is the client's now.
        registry = self._ctx.registry
        ids = list(registry.sessions)
        if not ids or not self._peers:
            return
        replies = await self._request(f"{self._ctl}.probe", marshal.dumps((self.node, ids)),
                                      set(self._peers), self._cfg.claim_timeout)
        held = {cid for r in replies if isinstance(r, tuple) for cid in r[1]}
        now = self._ctx.clock()
        for cid in held:
            session = registry.get(cid)
            if session is not None and session.client is None:
                registry.pending_wills.pop(cid, None)      # its client is alive, elsewhere
                registry.end(session, now)
        if held:
            log.info("cluster: %d sessions from the store are held by other nodes now (their "
                     "clients came back while this node was down): theirs are kept",
                     len(held))

    async def _on_probe(self, m) -> None:
        try:
            node, ids = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        sessions = self._ctx.registry.sessions
        if m.reply and isinstance(ids, list):
            await self._nc.publish(m.reply, marshal.dumps(
                (self.node, [cid for cid in ids if cid in sessions])))

    async def _on_claim(self, m) -> None:
        try:
            node, client_id, clean_start = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        ctx = self._ctx
        now = ctx.clock()
        packed = None
        session = ctx.registry.get(client_id)
        if session is not None:
            # Packed before the registry lets go (it keeps the subscriptions for that).
            packed = pack_session(session, now) if not clean_start else None
            self._giving = client_id
            try:
                given = ctx.registry.give_away(client_id, clean_start, now)
            finally:
                self._giving = None
            if given is None:
                packed = None
            else:
                self.counters["cluster_handovers_out"] += 1
                log.info("client %s: session handed over to node %s", client_id, node)
        if m.reply:
            await self._nc.publish(m.reply, marshal.dumps((self.node, packed)))

    # -- retained messages ---------------------------------------------------------------------

    async def _bucket_kv(self, name: str):
        js = self._nc.jetstream()
        try:
            try:
                return await js.key_value(name)
            except NatsError:
                return await js.create_key_value(bucket=name, history=1)
        except NatsError as exc:
            raise ConfigError(f"[cluster]: the NATS server has no JetStream for the retained "
                              f"messages and sessions ({exc}); start nats-server with -js") \
                from None

    async def _start_retained(self) -> None:
        kv = await self._bucket_kv(self._bucket)
        self._sessions_kv = await self._bucket_kv(self._sessions_bucket)
        watcher = await kv.watchall()
        self._tasks.append(asyncio.create_task(self._watch(watcher),
                                               name="cymqtt-cluster-retained"))
        await self._retained_ready.wait()

    async def _watch(self, watcher) -> None:
        ctx = self._ctx
        store = ctx.router.retained
        n = 0
        async for entry in watcher:
            if entry is None:
                if not self._retained_ready.is_set():
                    self._retained_ready.set()
                    if n:
                        log.info("cluster: %d retained messages from the bucket", n)
                continue
            try:
                topic = kv_topic(entry.key)
            except ValueError:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                if self._kv_sent.get(topic) is None:
                    store.store(Message(topic, b"", 0, True))
                else:
                    self._kv_sent.pop(topic)
                n += 1
                continue
            try:
                wall, node, seq, packed = marshal.loads(entry.value)
                now = ctx.clock()
                msg, _ = unpack_message(packed, now - max(0.0, time.time() - wall))
            except (EOFError, ValueError, TypeError):
                self.counters["cluster_bad_messages"] += 1
                continue
            if node == self.node and self._kv_sent.get(topic) == seq:
                del self._kv_sent[topic]       # ours, and nothing came between: we have it
                continue
            self._kv_sent.pop(topic, None)     # someone else's came between: take the order
            if not msg.expired(ctx.clock()):
                store.store(msg)
            n += 1

    # -- what the whole cluster looks like ------------------------------------------------------

    async def ask(self, question: str, args: tuple) -> list[Any]:
        if not self._peers:
            return []
        replies = await self._request(f"{self._ctl}.ask",
                                      marshal.dumps((self.node, question, args)),
                                      set(self._peers), self._cfg.claim_timeout)
        return [r[1] for r in replies if isinstance(r, tuple) and r[2] is None]

    async def _on_ask(self, m) -> None:
        try:
            node, question, args = marshal.loads(m.data)
            answer, error = self._answer(question, tuple(args)), None
        except (EOFError, ValueError, TypeError) as exc:
            answer, error = None, str(exc)
        if m.reply:
            try:
                data = marshal.dumps((self.node, answer, error))
            except ValueError as exc:
                data = marshal.dumps((self.node, None, str(exc)))
            if len(data) > self._nc.max_payload:
                data = marshal.dumps((self.node, None, "answer too big"))
                log.warning("cluster: the answer to %s from node %s is over NATS's "
                            "max_payload; left out", question, node)
            await self._nc.publish(m.reply, data)

    def peers(self) -> dict[str, dict[str, Any]]:
        """The other live nodes, each with the stats of its last heartbeat."""
        return {name: dict(p.stats, routes=len(p.routes)) for name, p in self._peers.items()}

    def whole(self, local: dict[str, int]) -> dict[str, int]:
        out = dict(local)
        for peer in self._peers.values():
            for key, value in peer.stats.items():
                if key not in _NODE_ONLY:
                    out[key] = out.get(key, 0) + value
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["cluster_nodes"] = len(self._peers) + 1
        out["cluster_routes_local"] = len(self._nats_subs)
        out["cluster_routes_remote"] = sum(len(p.routes) for p in self._peers.values())
        return out
