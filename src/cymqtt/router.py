"""Router: publish -> topic trie -> sessions; shared subscription picks; retained messages.

Knows sessions, never connections. The trie (compiled) holds one `Subscription` per
(filter, key): key is the client id, or (group, client id) for a shared subscription.
"""
from __future__ import annotations

import random
import zlib
from typing import TYPE_CHECKING

from cymqtt._fast.topics import TopicTrie
from cymqtt.retain import MemoryRetainStore, RetainStore
from cymqtt.session import CONGESTED

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.message import Message
    from cymqtt.session import Session, Subscription


def split_shared(full_filter: str) -> tuple[str | None, str]:
    """("group", "filter") for $share/group/filter, (group "$queue", filter) for $queue/filter,
    (None, filter) otherwise."""
    if full_filter.startswith("$share/"):
        group, _, topic_filter = full_filter[7:].partition("/")
        return group, topic_filter
    if full_filter.startswith("$queue/"):
        return "$queue", full_filter[7:]
    return None, full_filter


# The match cache's bounds: topics, and subscriptions held by all its lists together (a few
# topics matching thousands of wildcard filters each must not keep millions of references).
MATCH_CACHE_SIZE = 10_000
MATCH_CACHE_REFS = 200_000


def _trie_key(sub: Subscription):
    # One trie entry per (filter, client); a shared subscription's key carries its group.
    return sub.session.client_id if sub.group is None else (sub.group, sub.session.client_id)


class Router:
    """Delivery of published messages to matching sessions."""

    def __init__(self, strategy: str = "round_robin", retained: RetainStore | None = None,
                 rng: random.Random | None = None, retain_available: bool = True) -> None:
        self.trie = TopicTrie()
        self.retained = retained if retained is not None else MemoryRetainStore()
        self.retain_available = retain_available
        self.strategy = strategy
        self._rr: dict[tuple[str, str], int] = {}
        self._sticky: dict[tuple[str, str], str] = {}
        self._rng = rng or random.Random()
        # Sessions the last route() left congested (see Session.deliver); protocol.publish
        # takes them to slow the publisher down, and route() drops what nobody took.
        self.congested: list[Session] = []
        # topic -> trie.match(topic). Most traffic repeats its topics; any subscribe or
        # unsubscribe clears it, and it is cleared when it reaches MATCH_CACHE_SIZE topics or
        # MATCH_CACHE_REFS subscriptions in all.
        self._matches: dict[str, list] = {}
        self._match_refs = 0
        # In a cluster: the bus (cluster.Bus), told of retained changes; and its `forward`
        # while some other node has a route at all (else None: a publish costs one test).
        # `unrouted`: topics the bus found no other node subscribes to (its route table keeps
        # the set, and empties it on any route change); a publish on one is not offered to
        # forward(), so it costs a set lookup where no remote subscription matches.
        self.bus = None
        self.forward = None
        self.unrouted: set[str] = set()

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, sub: Subscription) -> bool:
        """Add or replace; True when the subscription is new."""
        self._clear_matches()
        return self.trie.subscribe(sub.topic_filter, _trie_key(sub), sub)

    def unsubscribe(self, sub: Subscription) -> bool:
        self._clear_matches()
        return self.trie.unsubscribe(sub.topic_filter, _trie_key(sub))

    def _clear_matches(self) -> None:
        if self._matches:
            self._matches.clear()
        self._match_refs = 0

    def remove_session(self, session: Session) -> None:
        for sub in session.subscriptions.values():
            self.unsubscribe(sub)
        session.subscriptions.clear()

    @property
    def subscription_count(self) -> int:
        return len(self.trie)

    # -- publishing ----------------------------------------------------------------------------

    def route(self, msg: Message, now: float, remote: bool = False) -> int:
        """A message published (by a client, a will, the broker): keep it when it is retained,
        then deliver it. Returns the number of deliveries; sessions it left congested are in
        `congested` for the caller to act on (protocol.publish slows the publisher down); a
        route whose caller has no publisher to slow (a will, the broker) leaves them there, and
        the next route drops them.

        In a cluster the bus forwards it to the nodes that subscribe to it, and takes the
        shared groups with a member elsewhere. `remote`: it came from another node, whose
        bus did that (and stored it when retained): it goes to this node's plain
        subscriptions only (the cluster picks shared-group members itself)."""
        if self.congested:
            self.congested = []
        remote_groups = None
        if not remote:
            if msg.retain and self.retain_available:
                self.retained.store(msg)
                if self.bus is not None:
                    self.bus.retained_changed(msg)
            if self.forward is not None and msg.topic not in self.unrouted:
                remote_groups = self.forward(msg)
        # Delivery to every matching session (one function: this is the hot path).
        matches = self._matches
        subs = matches.get(msg.topic)
        if subs is None:
            subs = self.trie.match(msg.topic)
            refs = self._match_refs + len(subs)
            if len(matches) >= MATCH_CACHE_SIZE or refs > MATCH_CACHE_REFS:
                matches.clear()
                refs = len(subs)
            self._match_refs = refs
            matches[msg.topic] = subs
        if not subs:
            return 0
        if len(subs) == 1:
            sub = subs[0]
            if sub.group is not None:
                if remote or (remote_groups is not None and sub.group in remote_groups):
                    return 0
                return self._deliver_shared({(sub.group, sub.topic_filter): subs}, msg, now)
            session = sub.session
            if sub.no_local and session.client_id == msg.sender:
                return 0
            if session.access is not None and not session.access.can_receive(msg.topic):
                return 0
            r = session.deliver(msg, sub.qos if sub.qos < msg.qos else msg.qos,
                                msg.retain and sub.retain_as_published,
                                [sub.sub_id] if sub.sub_id else None, now)
            if r == CONGESTED:
                self.congested.append(session)
            return 1 if r else 0
        return self._deliver_plain(subs, msg, now, remote_groups, remote)

    def _deliver_plain(self, subs: list, msg: Message, now: float,
                       remote_groups: frozenset | None, remote: bool) -> int:
        # Several matches: one delivery per session at the highest QoS of its matching
        # subscriptions, carrying all their identifiers [MQTT-3.3.4-2, MQTT-3.3.4-3].
        # Shared groups are picked from too, unless the message came from another node
        # (`remote`) or the cluster picks for the group (`remote_groups`).
        per_session: dict = {}
        shared: dict | None = None
        sender = msg.sender
        for sub in subs:
            if sub.group is not None:
                if remote or (remote_groups is not None and sub.group in remote_groups):
                    continue
                if shared is None:
                    shared = {}
                shared.setdefault((sub.group, sub.topic_filter), []).append(sub)
                continue
            session = sub.session
            if sub.no_local and session.client_id == sender:
                continue
            if session.access is not None and not session.access.can_receive(msg.topic):
                continue
            entry = per_session.get(session)
            if entry is None:
                per_session[session] = [sub.qos, sub.retain_as_published,
                                        [sub.sub_id] if sub.sub_id else None]
            else:
                if sub.qos > entry[0]:
                    entry[0] = sub.qos
                entry[1] = entry[1] or sub.retain_as_published
                if sub.sub_id:
                    if entry[2] is None:
                        entry[2] = [sub.sub_id]
                    else:
                        entry[2].append(sub.sub_id)
        n = 0
        mq = msg.qos
        for session, (qos, rap, ids) in per_session.items():
            n += self._deliver(session, msg, qos if qos < mq else mq, msg.retain and rap, ids,
                               now)
        if shared:
            n += self._deliver_shared(shared, msg, now)
        return n

    def deliver_shared_key(self, key: tuple[str, str], msg: Message, now: float) -> int:
        """The cluster picked this node's members of the shared subscription `key` (group,
        filter) for `msg`, published on another node: deliver it to one of them."""
        members = [s for s in self.trie.match(msg.topic)
                   if s.group == key[0] and s.topic_filter == key[1]]
        return self._deliver_shared({key: members}, msg, now) if members else 0

    def _deliver_shared(self, groups: dict, msg: Message, now: float) -> int:
        n = 0
        topic = msg.topic
        for key, members in groups.items():
            if any(m.session.access is not None for m in members):
                # Only members that may read the topic take part [a denied one never gets it].
                members = [m for m in members if m.session.access is None
                           or m.session.access.can_receive(topic)]
                if not members:
                    continue
            sub = self.pick(key, members, msg)
            if sub is not None:
                qos = sub.qos if sub.qos < msg.qos else msg.qos
                ids = [sub.sub_id] if sub.sub_id else None
                n += self._deliver(sub.session, msg, qos, False, ids, now, key)
        return n

    def _deliver(self, session: Session, msg: Message, qos: int, retain: bool,
                 ids: list | None, now: float, shared: tuple | None = None) -> int:
        # 1 when delivered (sent or queued), 0 when dropped; notes sessions left congested.
        r = session.deliver(msg, qos, retain, ids, now, shared)
        if r == CONGESTED:
            self.congested.append(session)
        return 1 if r else 0

    def redispatch(self, qos: int, item: tuple, leaving: Session, now: float) -> bool:
        """Give a shared-subscription message that `leaving` did not acknowledge to another
        connected member of its group. False when there is none."""
        msg, _, _, key, _ = item
        group, topic_filter = key
        members = [s for s in self.trie.match(msg.topic)
                   if s.group == group and s.topic_filter == topic_filter
                   and s.session is not leaving and s.session.client is not None
                   and (s.session.access is None or s.session.access.can_receive(msg.topic))]
        if not members:
            return False
        sub = self.pick(key, members, msg)
        ids = [sub.sub_id] if sub.sub_id else None
        sub.session.deliver(msg, min(qos, sub.qos), False, ids, now, key)
        return True

    def pick(self, key: tuple[str, str], members: list, msg: Message) -> Subscription | None:
        """One member of a shared group for `msg`, preferring members that are connected."""
        online = [s for s in members if s.session.client is not None] or members
        if len(online) == 1:
            return online[0]
        online.sort(key=lambda s: s.session.client_id)
        strategy = self.strategy
        if strategy == "round_robin":
            i = self._rr.get(key, -1) + 1
            self._rr[key] = i
            return online[i % len(online)]
        if strategy == "random":
            return self._rng.choice(online)
        if strategy == "hash_clientid":
            return online[zlib.crc32((msg.sender or "").encode()) % len(online)]
        if strategy == "hash_topic":
            return online[zlib.crc32(msg.topic.encode()) % len(online)]
        # sticky: keep the member picked last while it stays connected
        chosen = self._sticky.get(key)
        for s in online:
            if s.session.client_id == chosen:
                return s
        s = self._rng.choice(online)
        self._sticky[key] = s.session.client_id
        return s
