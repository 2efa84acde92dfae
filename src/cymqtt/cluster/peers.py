"""The other nodes as one node sees them: each `Peer` (its incarnation, route version, last
heartbeat, flow-control state), the `RouteTable` of their filters that decides whether a
publish goes to NATS at all, and the small waitables the NATS bus hands out."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections import deque
from typing import Any

from cymqtt._fast.topics import TopicTrie

__all__ = ["Gate", "Peer", "RouteTable", "SlowGate", "Wait", "default_node", "queue_name"]

ROUTE_CACHE_SIZE = 10_000


def default_node() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{os.getpid()}"


def queue_name(key: tuple[str, str]) -> str:
    # One NATS queue group per (group, filter): NATS groups queue subscribers by name across
    # the subjects a message matches, MQTT by (group, filter).
    return "q" + hashlib.sha1(f"{key[0]}\x00{key[1]}".encode()).hexdigest()[:20]


class SlowGate:
    """Stands for a node that is behind in the congested list of a route (as a congested
    session does), so protocol.publish holds the publisher until the node catches up."""

    __slots__ = ("client", "waiters")

    def __init__(self) -> None:
        self.client = True           # (protocol.publish skips sessions without a client)
        self.waiters: set | None = None

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, None
        for publisher in waiters or ():
            publisher.unthrottle()


class Peer:
    __slots__ = ("node", "inc", "version", "latest", "seen", "routes", "stats", "syncing",
                 "gate", "outstanding", "pending")

    def __init__(self, node: str, inc: int, now: float) -> None:
        self.node = node
        self.inc = inc
        self.version = -1            # the route version our table of it is at; -1: none yet
        self.latest = -1             # the highest version it told us of
        self.seen = now
        self.routes: set[tuple[str | None, str]] = set()
        self.stats: dict[str, Any] = {}
        self.syncing = False
        # Flow control: our batches it has not reported processing, (batch number, size).
        self.gate = SlowGate()
        self.outstanding: deque[tuple[int, int]] = deque()
        self.pending = 0


class Gate:
    """In the waiters of congested sessions, for messages from other nodes (`_hold_back`):
    a congested session that drains calls `unthrottle`, as it does for a local publisher."""

    __slots__ = ("future", "count")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future = loop.create_future()
        self.count = 0

    def unthrottle(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class Wait:
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


class RouteTable:
    """Every other node's filters: `lookup(topic)` says which nodes subscribe to it and
    which shared groups have members elsewhere, from a cache of recent topics cleared on
    any change (most traffic repeats its topics; routes change rarely). The recent topics
    that no other node subscribes to are also in `unrouted`, which the router tests before
    it offers a publish to the bus (Router.unrouted), so those cost no call."""

    def __init__(self) -> None:
        self._plain = TopicTrie()                 # (filter, node) -> node
        self._shared = TopicTrie()                # ((group, filter), node) -> group
        self._cache: dict[str, tuple[frozenset | None, frozenset | None]] = {}
        self.unrouted: set[str] = set()           # the cached topics that go nowhere else
        self.size = 0                             # routes, all nodes together

    def lookup(self, topic: str) -> tuple[frozenset | None, frozenset | None]:
        """(nodes with a plain subscription matching `topic`, shared groups with a member
        matching it elsewhere), each None when there is none."""
        hit = self._cache.get(topic)
        if hit is None:
            if topic.startswith("$SYS/"):
                hit = (None, None)                # each node's own (cymqtt.sys_topics)
            else:
                hit = (frozenset(self._plain.match(topic)) or None,
                       frozenset(self._shared.match(topic)) or None)
            if len(self._cache) >= ROUTE_CACHE_SIZE:
                self._clear()
            self._cache[topic] = hit
            if hit == (None, None):
                self.unrouted.add(topic)
        return hit

    def _clear(self) -> None:
        self._cache.clear()
        self.unrouted.clear()                     # (the router's set: the same object)

    def set(self, peer: Peer, add: bool, key: tuple[str | None, str]) -> None:
        """Add or remove `peer`'s route `key` ((group or None, filter))."""
        group, topic_filter = key
        if add == (key in peer.routes):
            return
        self.size += 1 if add else -1
        if add:
            peer.routes.add(key)
            if group is None:
                self._plain.subscribe(topic_filter, (topic_filter, peer.node), peer.node)
            else:
                self._shared.subscribe(topic_filter, (key, peer.node), group)
        else:
            peer.routes.discard(key)
            if group is None:
                self._plain.unsubscribe(topic_filter, (topic_filter, peer.node))
            else:
                self._shared.unsubscribe(topic_filter, (key, peer.node))
        self._clear()

    def drop(self, peer: Peer) -> None:
        """Every route of `peer` (it left, died or restarted)."""
        for key in list(peer.routes):
            self.set(peer, False, key)
