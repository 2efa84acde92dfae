"""The cluster on NATS: nodes meet on a NATS server (or NATS cluster) and nothing else.

Subjects (``<p>`` is `[cluster] name`, "cymqtt" by default; topics escaped by cluster.wire):

    <p>.n.<node>              messages for <node>'s plain subscriptions: all of a tick's
                              messages that its routes match, whatever their topics
    <p>.s.<group>.<topic>     a message for a shared group: NATS queue group per (group, filter),
                              so exactly one node, then one member there
    <p>.ctl.hb                each node's heartbeat: name, incarnation, route version, stats
    <p>.ctl.route             routes added and removed (acknowledged by every live node)
    <p>.ctl.sync.<node>       request: a node's whole route table
    <p>.ctl.claim             request: give up this client id (and hand its session over)
    <p>.ctl.probe             request: which of these client ids have a session on you
    <p>.ctl.ask               request: a question of the REST API (Broker.everywhere)
    <p>.ctl.progress.<node>   the last of <node>'s message batches this node processed
    <p>.ctl.bye               a node leaving
    $KV.<p>_retained.<key>    retained messages (JetStream key-value buckets: buckets.py)
    $KV.<p>_sessions.<key>    each persistent session's node, expiry and subscriptions

A node has three connections to NATS: messages, control, and bulk (shared-group messages,
which must echo to its own queue subscriptions, and JetStream), so that a backlog of messages
never holds up a heartbeat, a route or a claim.

Routing. Each node tells the others the filters its clients hold (`route`), and they keep a
route table (a topic trie of every other node's filters): a publish goes to NATS only when the
table matches its topic, and then to the subject of each node that holds a match, batched per
loop tick: one NATS message per node per tick, whatever the topics, and one copy per node
however many of its filters match. A SUBACK waits until every live node has the new route, so
a message published anywhere after it reaches the subscriber. (The first design subscribed
each node on NATS to its filters as subjects and published each topic on its own subject: one
NATS message per topic per tick, so where every device publishes on a topic of its own, 18 us
of broker CPU per crossing message (8-11 us this way), and a nats-py subscription of 7.6 KB per
filter; benchmarks/results/2026-12-02-cluster.md. Shared groups still work that way, since
NATS queue groups pick their member.)

Back-pressure. Messages from another node that leave subscribers congested wait, as a local
publisher does. Each batch is numbered and each receiver reports what it processed; a node
more than FLOW_HIGH messages behind holds the publishers (on the sending node) whose
messages go to it, through TCP, as a congested local subscriber does.

Liveness. Heartbeats every node_timeout / 3; a node silent for node_timeout is dropped with its
routes (its clients reconnect elsewhere). A node whose route version jumped (a lost update, a
restart under the same name, a healed partition) is asked for its whole table.

Retained messages live in a bucket, every node applying every change in the bucket's order;
persistent sessions have a record in another, which a node takes a session on from when its
client comes back and its node is gone (buckets.py).

Client ids. A CONNECT asks every live node to give the client id up; the one that holds its
session closes that client (5.0 DISCONNECT 0x8E) and sends the session (subscriptions,
in-flight messages under their packet ids, queue) in its reply; the CONNECT goes on here.

A node that restarts with sessions from its store asks the others which of those client ids
they hold (their clients came back elsewhere meanwhile): those are dropped here.

Delivery between nodes is NATS core's: at most once. Nothing is lost on a healthy network
(flow control keeps nodes from being cut off as slow consumers), but a node that dies takes
what it had not forwarded yet, and a QoS 1/2 publisher's PUBACK does not wait for other
nodes.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import marshal
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable

import nats
from nats.errors import Error as NatsError, SlowConsumerError

from cymqtt.cluster.base import Bus
from cymqtt.cluster.buckets import Buckets
from cymqtt.cluster.peers import Gate, Peer, RouteTable, Wait, default_node, queue_name
from cymqtt.cluster.wire import (
    escape_level, filter_subjects, message_fields, pack_messages, pack_session, topic_subject, unpack_messages,
    unpack_session,
)
from cymqtt.config import ConfigError
from cymqtt.message import Message
from cymqtt.protocol.publish import THROTTLE_MAX

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import ClusterConfig
    from cymqtt.context import Context
    from cymqtt.session import Session, Subscription

__all__ = ["NatsBus"]

log = logging.getLogger("cymqtt.cluster")

# Flow control between nodes: publishers whose messages go to a node with more than
# FLOW_HIGH of ours not yet processed are held until it is under FLOW_LOW.
FLOW_HIGH = 20_000
FLOW_LOW = 5_000
PROGRESS_DELAY = 0.005        # a receiver reports what it processed at most this often
# Figures that are the same on every node, not a node's share: not added up by whole().
_NODE_ONLY = frozenset({"uptime", "retained_messages"})
QUEUE = "q"


class NatsBus(Bus):
    active = True

    def __init__(self, cfg: ClusterConfig) -> None:
        self._cfg = cfg
        self.node = cfg.node or default_node()
        p = self._prefix = cfg.name
        self._n = f"{p}.n"
        self._s = f"{p}.s"
        self._ctl = f"{p}.ctl"
        self._buckets = Buckets(self, p)           # retained messages, session records
        self._inc = time.time_ns()                 # this run of the node
        self._version = 0                          # changes to our routes, announced in order
        # Three connections, so that a backlog of messages never holds up the control traffic
        # (heartbeats, routes, claims): messages (subscriptions and plain publishes); control;
        # and bulk (shared-group publishes, which must echo to this node's own queue
        # subscriptions, and JetStream: the buckets).
        self._nc = None
        self._ctl_nc = None
        self._shared_nc = None
        self._ctx: Context | None = None
        self._node_stats: Callable[[], dict[str, int]] = dict
        self._answer: Callable[[str, tuple], Any] = lambda q, a: None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Our routes: (group, filter) -> client ids holding it; by client, for session ends.
        self._holders: dict[tuple[str | None, str], set[str]] = {}
        self._by_client: dict[str, set[tuple[str | None, str]]] = {}
        self._nats_subs: dict[tuple[str | None, str], list] = {}   # (none for plain routes)
        self._ops: asyncio.Queue | None = None     # route changes, applied in order
        self._settle: list[asyncio.Future] = []    # SUBACKs waiting for their routes
        # The other nodes and their routes.
        self._peers: dict[str, Peer] = {}
        self._table = RouteTable()
        # Outgoing messages of this tick: node -> [message_fields] (plain subscriptions), and
        # for shared groups (group, topic) -> [message_fields].
        self._out: dict[str, list] = {}
        self._out_shared: dict[tuple[str, str], list] = {}
        self._flushing = False
        self._inbox = ""
        self._waits: dict[str, Wait] = {}
        self._tasks: list[asyncio.Task] = []       # the long-lived ones
        self._sends: set[asyncio.Future] = set()   # forwarding, one per tick that forwarded
        self._background: set[asyncio.Future] = set()
        self._pending_ops = 0
        self._seq = 0                              # our message batches, numbered
        self._slow: set[str] = set()               # nodes behind on our batches
        self._progress: dict[str, int] = {}        # origin -> its last batch we processed
        self._reporting = False
        self._connected = False
        self._closing = False
        self.counters = {"cluster_forwarded": 0, "cluster_received": 0,
                         "cluster_bad_messages": 0,
                         "cluster_too_big": 0, "cluster_claims": 0, "cluster_handovers_in": 0,
                         "cluster_handovers_out": 0, "cluster_sessions_recovered": 0,
                         "cluster_held_back": 0, "cluster_dropped_slow": 0,
                         "cluster_flow_held": 0, "cluster_late_messages": 0}

    # -- joining and leaving -------------------------------------------------------------------

    async def start(self, ctx: Context, stats: Callable[[], dict[str, int]],
                    answer: Callable[[str, tuple], Any]) -> None:
        self._ctx = ctx
        self._node_stats = stats
        self._answer = answer
        self._loop = asyncio.get_running_loop()
        self._ops = asyncio.Queue()
        urls = ", ".join(self._cfg.nats)
        try:
            # (nats-py retries a server it cannot reach for ever: the first time, give up)
            wait = 2.5 * len(self._cfg.nats) + 1
            self._ctl_nc = await asyncio.wait_for(nats.connect(**self._options("control")),
                                                  wait)
            self._nc = await asyncio.wait_for(nats.connect(**self._options("messages")), wait)
            self._shared_nc = await asyncio.wait_for(nats.connect(**self._options("bulk")),
                                                     wait)
            self._connected = True
        except (OSError, NatsError, ssl.SSLError, asyncio.TimeoutError) as exc:
            await self.close()
            raise ConfigError(f"[cluster]: cannot reach NATS at {urls}: "
                              f"{exc or type(exc).__name__} (is nats-server running there? "
                              "check [cluster] nats and its credentials)") from None
        nc = self._ctl_nc
        self._inbox = nc.new_inbox()
        await nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        await nc.subscribe(f"{self._ctl}.hb", cb=self._on_heartbeat)
        await nc.subscribe(f"{self._ctl}.route", cb=self._on_route)
        await nc.subscribe(f"{self._ctl}.sync.{self.node}", cb=self._on_sync)
        await nc.subscribe(f"{self._ctl}.claim", cb=self._on_claim)
        await nc.subscribe(f"{self._ctl}.bye", cb=self._on_bye)
        try:
            self._tasks.append(await self._buckets.start())
        except BaseException:
            await self.close()
            raise
        await nc.subscribe(f"{self._ctl}.probe", cb=self._on_probe)
        await nc.subscribe(f"{self._ctl}.ask", cb=self._on_ask)
        await nc.subscribe(f"{self._ctl}.progress.{self.node}", cb=self._on_progress)
        await nc.subscribe(f"{self._ctl}.late.{self.node}", cb=self._on_late)
        await self._nc.subscribe(self._node_subject(self.node), cb=self._take)
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
        self._routes_changed()
        ctx.cluster = self
        self._tasks.append(asyncio.create_task(self._apply_ops(), name="cymqtt-cluster-routes"))
        log.info("cluster: node %s joined %s over NATS at %s (%d other node%s)", self.node,
                 self._prefix, nc.connected_url.netloc if nc.connected_url else urls,
                 len(self._peers), "" if len(self._peers) == 1 else "s")

    def _options(self, role: str) -> dict[str, Any]:
        cfg = self._cfg
        opts: dict[str, Any] = {
            "servers": list(cfg.nats), "name": f"cymqtt {self.node} {role}",
            "no_echo": role != "bulk", "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5, "connect_timeout": 2, "error_cb": self._on_error,
        }
        if role == "control":
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
        if self._nc is not None and self._nc.is_connected:
            self._flush_out()
            await self._drain_out()
        if self._shared_nc is not None and self._shared_nc.is_connected:
            await self._buckets.stop()
        for nc in (self._nc, self._shared_nc, self._ctl_nc):
            if nc is None or nc.is_closed:
                continue
            try:
                if nc is self._ctl_nc and nc.is_connected:
                    await nc.publish(f"{self._ctl}.bye", marshal.dumps((self.node, self._inc)))
                await nc.flush(timeout=1)
            except (NatsError, asyncio.TimeoutError, OSError):
                pass
            await nc.close()
        if self._ctx is not None and self._ctx.router.bus is self:
            self._ctx.router.bus = None
            self._ctx.router.forward = None
            self._ctx.router.unrouted = set()
            self._ctx.cluster = None

    # -- routing out ---------------------------------------------------------------------------

    def forward(self, msg: Message) -> frozenset[str] | None:
        topic = msg.topic
        nodes, groups = self._table.lookup(topic)
        if nodes is None and groups is None:
            return None
        fields = message_fields(msg, self._ctx.clock())
        if nodes is not None:
            out = self._out
            for node in nodes:
                batch = out.get(node)
                if batch is None:
                    batch = out[node] = []
                batch.append(fields)
            if self._slow and not self._slow.isdisjoint(nodes):
                # A node it goes to is behind: slow the publisher down, as a congested
                # local subscriber does (protocol.publish holds it until the node catches up).
                self._ctx.router.congested.extend(
                    self._peers[n].gate for n in nodes & self._slow if n in self._peers)
        if groups is not None:
            shared = self._out_shared
            for group in groups:
                batch = shared.get((group, topic))
                if batch is None:
                    batch = shared[(group, topic)] = []
                batch.append(fields)
        self._changed()
        return groups

    def retained_changed(self, msg: Message) -> None:
        self._buckets.retained_changed(msg)

    def _routes_changed(self) -> None:
        # The router calls forward() only while some other node has a route at all, and
        # not for a topic the table found no route for (until the next change).
        router = self._ctx.router
        if router.bus is self:
            router.forward = self.forward if self._table.size else None
            router.unrouted = self._table.unrouted

    def _changed(self) -> None:
        # Something to send: at the end of this tick, with everything else of it.
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        # Once per tick: everything forwarded during it goes to NATS in one go.
        self._flushing = False
        if self._out or self._out_shared or self._buckets.changed:
            out, shared = self._out, self._out_shared
            self._out, self._out_shared = {}, {}
            task = asyncio.ensure_future(self._send(out, shared, self._buckets.take()))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    def _spawn(self, coro) -> asyncio.Future:
        # A background step (a sync with a node, a claim); kept until it is done (the loop
        # holds tasks weakly) and for close() to cancel.
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _packed(self, fields: list, limit: int) -> list[tuple[bytes, int, int]]:
        # A tick's messages for one node (or one group's on one topic) as one NATS payload,
        # or as several in order when they do not fit in `limit` bytes (halves, until they
        # do): (payload, its batch number, messages) each. A message too big on its own is
        # counted and left out.
        self._seq += 1
        data = pack_messages(fields, self.node, self._seq)
        if len(data) <= limit:
            return [(data, self._seq, len(fields))]
        self._seq -= 1
        if len(fields) == 1:
            self.counters["cluster_too_big"] += 1
            return []
        half = len(fields) // 2
        return self._packed(fields[:half], limit) + self._packed(fields[half:], limit)

    async def _send(self, out: dict, shared: dict, writes: list) -> None:
        # A tick's messages: one NATS message per node they go to, whatever their topics, and
        # one per group and topic for a shared group's.
        nc = self._nc
        shared_nc = self._shared_nc
        limit = nc.max_payload
        sent = 0
        try:
            for node, fields in out.items():
                subject = self._node_subject(node)
                for data, seq, n in self._packed(fields, limit):
                    await nc.publish(subject, data)
                    self._sent(node, seq, n)
                    sent += n
            for (group, topic), fields in shared.items():
                # On the bulk connection, which echoes, since this node's own members must
                # be among those NATS picks from.
                subject = topic_subject(f"{self._s}.{escape_level(group)}", topic)
                for data, _, n in self._packed(fields, limit):
                    await shared_nc.publish(subject, data)
                    sent += n
            for subject, value, headers in writes:      # (the buckets)
                if len(value) <= limit:
                    await shared_nc.publish(subject, value, headers=headers)
                else:
                    self.counters["cluster_too_big"] += 1
        except NatsError as exc:
            log.warning("cluster: could not forward %d messages to NATS: %s",
                        sum(map(len, out.values())) + sum(map(len, shared.values())) - sent,
                        exc)
        finally:
            self.counters["cluster_forwarded"] += sent

    async def _drain_out(self) -> None:
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    # -- routing in ----------------------------------------------------------------------------

    async def _take(self, m, key: tuple[str, str] | None = None) -> None:
        # One batch from another node: sent to this node (`key` None), to our plain
        # subscriptions, or through our NATS queue subscription for the shared group `key`,
        # to one member; each message waiting while the one before left subscribers
        # congested.
        ctx = self._ctx
        now = ctx.clock()
        try:
            msgs, origin, seq = unpack_messages(m.data, now)
        except ValueError:
            self.counters["cluster_bad_messages"] += 1
            return
        router = ctx.router
        for msg in msgs:
            if key is None:
                router.route(msg, now, True)
            else:
                router.deliver_shared_key(key, msg, now)
            if router.congested:
                await self._hold_back(router)
                now = ctx.clock()
        self.counters["cluster_received"] += len(msgs)
        self._processed(origin, seq)

    def _node_subject(self, node: str) -> str:
        return f"{self._n}.{escape_level(node)}"

    # -- flow control between nodes -------------------------------------------------------------
    # Each batch a node sends is numbered; each receiver reports, at most every
    # PROGRESS_DELAY, the last number it processed (its delivery held back or not); the sender
    # counts what each node has not processed yet and, past FLOW_HIGH, holds the publishers
    # whose messages go there. So a node that is behind slows the publishers on the others
    # down through TCP, as a congested local subscriber does, instead of their messages
    # piling up in NATS until it is cut off as a slow consumer.

    def _sent(self, node: str, seq: int, n: int) -> None:
        peer = self._peers.get(node)
        if peer is None:
            return
        peer.outstanding.append((seq, n))
        peer.pending += n
        if peer.pending > FLOW_HIGH and node not in self._slow:
            self._slow.add(node)
            self.counters["cluster_flow_held"] += 1

    def _processed(self, origin: str, seq: int) -> None:
        if seq > self._progress.get(origin, 0):
            self._progress[origin] = seq
            if not self._reporting:
                self._reporting = True
                self._loop.call_later(PROGRESS_DELAY, self._report)

    def _report(self) -> None:
        self._reporting = False
        progress, self._progress = self._progress, {}
        if progress and self._ctl_nc is not None and self._ctl_nc.is_connected:
            self._spawn(self._send_progress(progress))

    async def _send_progress(self, progress: dict[str, int]) -> None:
        try:
            for origin, seq in progress.items():
                await self._ctl_nc.publish(f"{self._ctl}.progress.{origin}",
                                           marshal.dumps((self.node, seq)))
        except NatsError:
            pass

    async def _on_progress(self, m) -> None:
        try:
            node, seq = marshal.loads(m.data)
            peer = self._peers.get(node)
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        if peer is None or not isinstance(seq, int):
            return
        out = peer.outstanding
        while out and out[0][0] <= seq:
            peer.pending -= out.popleft()[1]
        if node in self._slow and peer.pending <= FLOW_LOW:
            self._slow.discard(node)
            peer.gate.wake()

    async def _hold_back(self, router) -> None:
        # Back-pressure for messages from other nodes, as for a local publisher: the last
        # route left draining subscribers congested, so this subscription's messages wait
        # (in the NATS client, up to its pending limits) until they drain, THROTTLE_MAX at
        # most. Other subscriptions' messages go on meanwhile.
        congested = router.congested
        router.congested = []
        gate = Gate(self._loop)
        for session in congested:
            if session.client is None:
                continue
            if session.waiters is None:
                session.waiters = set()
            session.waiters.add(gate)
            gate.count += 1
        if gate.count:
            self.counters["cluster_held_back"] += 1
            try:
                await asyncio.wait_for(gate.future, THROTTLE_MAX)
            except asyncio.TimeoutError:
                pass

    # -- our routes (registry events) ----------------------------------------------------------

    def subscribed(self, session: Session, sub: Subscription) -> None:
        key = (sub.group, sub.topic_filter)
        self._buckets.note(session)
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
        self._buckets.note(session)

    def session_ended(self, session: Session) -> None:
        for key in self._by_client.pop(session.client_id, ()):
            self._release(key, session.client_id)
        self._buckets.ended(session.client_id)

    def session_connected(self, session: Session) -> None:
        self._buckets.note(session)

    def session_disconnected(self, session: Session) -> None:
        self._buckets.note(session)

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
        # What queued up meanwhile, in one go: subscribe on NATS, make sure the server has
        # those subscriptions, then tell the others (so that what they send on hearing of it
        # arrives) in one announcement, and only then unsubscribe what went.
        ops = self._ops
        while True:
            keys = dict.fromkeys([(await ops.get())[1]])
            while not ops.empty():
                keys[ops.get_nowait()[1]] = None
            self._pending_ops = 1
            try:
                added = [k for k in keys if k in self._holders and k not in self._nats_subs]
                removed = [k for k in keys if k not in self._holders and k in self._nats_subs]
                for key in added:
                    await self._nats_subscribe(key)
                if added:
                    await self._nc.flush(timeout=self._cfg.claim_timeout)
                if added or removed:
                    await self._announce(added, removed)
                for key in removed:
                    await self._nats_unsubscribe(key)
            except (NatsError, asyncio.TimeoutError) as exc:
                log.warning("cluster: %d route changes not made on NATS: %s", len(keys), exc)
            finally:
                self._pending_ops = 0
            if ops.empty() and self._settle:
                waiting, self._settle = self._settle, []
                for fut in waiting:
                    if not fut.done():
                        fut.set_result(None)

    async def _nats_subscribe(self, key: tuple[str | None, str]) -> None:
        # A plain route needs nothing on NATS (the others send to this node's subject what
        # their route table says is ours); a shared group's is a NATS queue subscription.
        group, topic_filter = key
        subs = []
        if group is not None:
            prefix = f"{self._s}.{escape_level(group)}"
            subs = [await self._nc.subscribe(s, queue=queue_name(key),
                                             cb=functools.partial(self._take, key=key))
                    for s in filter_subjects(prefix, topic_filter)]
        self._nats_subs[key] = subs

    async def _nats_unsubscribe(self, key: tuple[str | None, str]) -> None:
        for sub in self._nats_subs.pop(key, ()):
            await sub.unsubscribe()

    async def _announce(self, added: list, removed: list) -> None:
        # Every live node answers once it routes accordingly (a SUBACK waits for that).
        self._version += 1
        data = marshal.dumps((self.node, self._inc, self._version, added, removed))
        peers = {p.node for p in self._peers.values()}
        if peers:
            await self._request(f"{self._ctl}.route", data, peers, self._cfg.claim_timeout)
        else:
            await self._ctl_nc.publish(f"{self._ctl}.route", data)

    # -- other nodes' routes -------------------------------------------------------------------

    async def _on_route(self, m) -> None:
        try:
            node, inc, version, added, removed = marshal.loads(m.data)
            changes = [(True, (g, f)) for g, f in added] + [(False, (g, f)) for g, f in removed]
            if not isinstance(node, str) or not all(
                    isinstance(f, str) and (g is None or isinstance(g, str))
                    for _, (g, f) in changes):
                raise TypeError("not a route")
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        peer = self._peers.get(node)
        if peer is None or peer.inc != inc:
            peer = self._meet(node, inc)
        peer.latest = max(peer.latest, version)
        peer.seen = time.monotonic()
        if version > peer.version:
            # Out of step (a lost update, or its table still on its way): take these now,
            # since its node waits for our answer before its SUBACK, and the whole table
            # again.
            for add, key in changes:
                self._table.set(peer, add, key)
            self._routes_changed()
            if version == peer.version + 1:
                peer.version = version
            else:
                self._resync(peer)
        if m.reply:
            await self._ctl_nc.publish(m.reply, marshal.dumps(self.node))

    def _meet(self, node: str, inc: int) -> Peer:
        old = self._peers.get(node)
        if old is not None:
            self._drop(old, "restarted")
        peer = self._peers[node] = Peer(node, inc, time.monotonic())
        self._resync(peer)
        return peer

    def _resync(self, peer: Peer) -> None:
        if peer.syncing:
            return
        peer.syncing = True
        self._spawn(self._sync(peer))

    async def _sync(self, peer: Peer) -> None:
        try:
            m = await self._ctl_nc.request(f"{self._ctl}.sync.{peer.node}", b"",
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
            self._table.set(peer, False, key)
        for key in wanted - peer.routes:
            self._table.set(peer, True, key)
        self._routes_changed()
        peer.version = version

    async def _on_sync(self, m) -> None:
        routes = list(self._nats_subs)
        await self._ctl_nc.publish(m.reply, marshal.dumps((self.node, self._inc, self._version,
                                                       routes)))

    def _drop(self, peer: Peer, why: str) -> None:
        if self._peers.get(peer.node) is peer:
            del self._peers[peer.node]
        self._slow.discard(peer.node)
        peer.gate.wake()
        self._table.drop(peer)
        self._routes_changed()
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
        if self._ctl_nc is not None and self._ctl_nc.is_connected:
            await self._ctl_nc.publish(f"{self._ctl}.hb", marshal.dumps(
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
        if isinstance(exc, SlowConsumerError):
            # Messages from other nodes past a subscription's pending limit (this node
            # is far behind): dropped by the NATS client, counted.
            self.counters["cluster_dropped_slow"] += 1
        elif self._connected:              # (before, start() says it once)
            log.warning("cluster: NATS: %s", exc)

    # -- requests with many replies ------------------------------------------------------------

    async def _request(self, subject: str, data: bytes, nodes: set[str],
                       timeout: float) -> list:
        token = secrets.token_hex(8)
        fut = self._loop.create_future()
        wait = self._waits[token] = Wait(set(nodes), fut)
        wait.timer = self._loop.call_later(timeout, wait.finish)
        try:
            await self._ctl_nc.publish(subject, data, reply=f"{self._inbox}.{token}")
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
        if clean_start:
            # Nothing to hand over: tell the others to let go (a node holding the client id
            # closes that client and ends its session), without waiting for them.
            if self._peers:
                self._spawn(self._ctl_nc.publish(
                    f"{self._ctl}.claim", marshal.dumps((self.node, client_id, True))))
            return None
        if not self._peers and self._ctx.registry.get(client_id) is not None:
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
            answered = {r[0] for r in replies if isinstance(r, tuple)}
            if await self._buckets.recover(client_id, answered):
                self.counters["cluster_sessions_recovered"] += 1
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
        # As a SUBACK does: the CONNACK goes once the routes of a session taken on here are
        # known to every node, so nothing published after it misses the client.
        settled = self.routes_settled()
        if settled is not None:
            await settled

    async def _drop_stale_sessions(self) -> None:
        # Sessions this node's store kept while it was down: a client that came back in the
        # meantime got a session on another node, and that one is the client's now. What
        # this node still had for it (queued, or sent and not acknowledged: acknowledged to
        # its publishers, so not to be lost) goes to that node, after what came since.
        registry = self._ctx.registry
        ids = list(registry.sessions)
        if not ids or not self._peers:
            return
        replies = await self._request(f"{self._ctl}.probe", marshal.dumps((self.node, ids)),
                                      set(self._peers), self._cfg.claim_timeout)
        held = {cid: r[0] for r in replies if isinstance(r, tuple) for cid in r[1]}
        now = self._ctx.clock()
        for cid, node in held.items():
            session = registry.get(cid)
            if session is None or session.client is not None:
                continue
            w = session.window
            n = 0 if w is None else w.inflight_count + w.queued_count
            if n:
                data = pack_session(session, now)          # (takes the window out)
                try:
                    m = await self._ctl_nc.request(f"{self._ctl}.late.{node}", data,
                                                   timeout=self._cfg.claim_timeout)
                    taken = m.data == b"1"
                except (NatsError, asyncio.TimeoutError):
                    taken = False
                if not taken:
                    log.warning("client %s: node %s, which holds its session now, did not "
                                "take the %d messages this node still had for it; dropped",
                                cid, node, n)
            registry.pending_wills.pop(cid, None)      # its client is alive, elsewhere
            registry.end(session, now)
        if held:
            log.info("cluster: %d sessions from the store are held by other nodes now (their "
                     "clients came back while this node was down): theirs are kept, with "
                     "what this node still had for them", len(held))

    async def _on_late(self, m) -> None:
        # A node that was down hands over what it still had for a session that is ours now.
        try:
            session, items = unpack_session(m.data, self._ctx.config, self._ctx.clock())
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        ours = self._ctx.registry.get(session.client_id)
        if ours is not None:
            n = self._ctx.registry.append_late(ours, items, self._ctx.clock())
            self.counters["cluster_late_messages"] += n
            log.info("client %s: %d messages it was due on a node that was down came from "
                     "there", session.client_id, n)
        if m.reply:
            await self._ctl_nc.publish(m.reply, b"1" if ours is not None else b"0")

    async def _on_probe(self, m) -> None:
        try:
            node, ids = marshal.loads(m.data)
        except (EOFError, ValueError, TypeError):
            self.counters["cluster_bad_messages"] += 1
            return
        sessions = self._ctx.registry.sessions
        if m.reply and isinstance(ids, list):
            await self._ctl_nc.publish(m.reply, marshal.dumps(
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
            self._buckets.giving = client_id
            try:
                given = ctx.registry.give_away(client_id, clean_start, now)
            finally:
                self._buckets.giving = None
            if given is None:
                packed = None
            else:
                self.counters["cluster_handovers_out"] += 1
                log.info("client %s: session handed over to node %s", client_id, node)
        if m.reply:
            await self._ctl_nc.publish(m.reply, marshal.dumps((self.node, packed)))

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
            if len(data) > self._ctl_nc.max_payload:
                data = marshal.dumps((self.node, None, "answer too big"))
                log.warning("cluster: the answer to %s from node %s is over NATS's "
                            "max_payload; left out", question, node)
            await self._ctl_nc.publish(m.reply, data)

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
