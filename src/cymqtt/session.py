"""Session: the per-client state that outlives a connection (EMQ's session/channel split).

Subscriptions, the outbound QoS window and its queue, inbound QoS 2 ids awaiting PUBREL, expiry,
and the will of the connection attached now. A session knows nothing of sockets or of the MQTT
rules that fill it (protocol/, registry.py): while a client is attached, `client` is that
connection's `ClientProtocol`, reached only through the `Client` interface below.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable

from cymqtt._fast.inflight import AWAIT_PUBCOMP, InboundQoS2, OutboundWindow
from cymqtt.consts import NEVER, PUBACK, PUBREC

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.message import Message

__all__ = ["Backlog", "Client", "Journal", "NEVER", "Session", "Subscription", "Will"]

CONGESTED = 2      # Session.deliver: delivered, but the client is not keeping up (see deliver)
RELEASE_BATCH = 256    # queued messages moved into the window per step while the socket takes them


def _end_flight(w: OutboundWindow, pid: int, qos: int) -> bool:
    # Free `pid` from the window without its client's acknowledgements.
    if qos == 1:
        return w.puback(pid)
    w.pubrec(pid)
    return w.pubcomp(pid)


class Subscription:
    """One subscription of one session. `options` is the SUBSCRIBE options byte."""

    __slots__ = ("session", "topic_filter", "full_filter", "group", "qos", "no_local",
                 "retain_as_published", "retain_handling", "sub_id")

    def __init__(self, session: Session, full_filter: str, topic_filter: str,
                 group: str | None, options: int, sub_id: int | None) -> None:
        self.session = session
        self.full_filter = full_filter        # as subscribed, $share/{group}/ included
        self.topic_filter = topic_filter      # what the trie matches
        self.group = group                    # shared subscription group, or None
        self.qos = options & 3
        self.no_local = bool(options & 4)
        self.retain_as_published = bool(options & 8)
        self.retain_handling = (options >> 4) & 3
        self.sub_id = sub_id

    def __repr__(self) -> str:
        return f"Subscription({self.session.client_id!r}, {self.full_filter!r}, qos={self.qos})"


class Backlog:
    """The retained messages one new subscription has still to receive, in order, from `pos`
    on. `current(topic)` is the retained store's lookup: a message replaced or deleted since the
    SUBSCRIBE is skipped, so a slow stream never delivers a value older than one already sent."""

    __slots__ = ("messages", "pos", "qos", "sub_ids", "current")

    def __init__(self, messages: list, qos: int, sub_ids: list | None,
                 current: Callable[[str], object]) -> None:
        self.messages = messages
        self.pos = 0
        self.qos = qos
        self.sub_ids = sub_ids
        self.current = current

    def __len__(self) -> int:
        return len(self.messages) - self.pos


class Client:
    """What a session needs of the connection attached to it: the base of `ClientProtocol` and
    of `MessageStream`. Compiled, a session reads these fields and calls these methods in C."""

    __slots__ = ("writable", "paused_since", "receive_maximum")

    def __init__(self) -> None:
        self.writable = True        # its socket takes more; False while the transport pushes back
        self.paused_since = 0.0     # when it last became unwritable
        self.receive_maximum = 65535    # the client's MQTT 5 receive maximum (65535: none sent)

    def send_publish(self, msg: Message, qos: int, retain: bool, packet_id: int, dup: bool,
                     sub_ids: list | None, now: float) -> None:
        raise NotImplementedError

    def send_pubrel(self, packet_id: int) -> None:
        raise NotImplementedError

    def unthrottle(self) -> None:
        """Read this (publishing) client again: the session it was waiting for drained."""

    def kick(self, reason_code: int, text: str) -> None:
        """Close this connection: a newer one took its session over (registry.connect)."""
        raise NotImplementedError


class Journal:
    """What a persistent session tells its store about its outbound window: the base of
    `store.Journal` (compiled, a session calls these in C). Every item the window holds is
    ``(msg, retain, sub_ids, shared, key)``; `key` numbers the entry in the store (0 in a
    session no store follows), from `seq`."""

    __slots__ = ("seq", "durable")

    def __init__(self) -> None:
        self.seq = 0         # the last entry key handed out (Session.deliver)
        self.durable = 0     # entries with keys up to this one are committed

    def queued(self, session: Session, item: tuple, qos: int, pid: int) -> None:
        """The window took `item`: in flight under `pid` (> 0) or queued (-1)."""

    def sent(self, session: Session, item: tuple, pid: int) -> None:
        """A queued item went in flight under `pid`."""

    def released(self, session: Session, item: tuple, pid: int) -> None:
        """The client sent PUBREC for `pid`: it now awaits PUBCOMP (PUBREL is re-sent)."""

    def done(self, session: Session, item: tuple, delivered: bool = True) -> None:
        """The item left the window for good: acknowledged, expired or refused by the client
        (`delivered`), or given to another member of its shared group (not)."""


class Will:
    __slots__ = ("message", "delay")

    def __init__(self, message: Message, delay: int) -> None:
        self.message = message
        self.delay = delay


class Session:
    __slots__ = ("client_id", "subscriptions", "window", "inbound", "client", "will",
                 "expiry_interval", "requested_expiry", "expires_at", "version", "waiters",
                 "last_ack", "receive_maximum", "observer", "backlog", "dropped_slow", "access",
                 "journal", "_config", "__weakref__")

    def __init__(self, client_id: str, config) -> None:
        self.client_id = client_id
        self.subscriptions: dict[str, Subscription] = {}
        self.window: OutboundWindow | None = None      # created on first QoS>0 delivery
        self.inbound: InboundQoS2 | None = None        # created on first inbound QoS 2
        self.client: Client | None = None              # the attached connection, or None
        self.will: Will | None = None                  # the attached connection's will
        self.expiry_interval = 0                       # seconds after disconnect; NEVER = never
        self.requested_expiry = 0                      # what the CONNECT asked for (MQTT 5)
        self.expires_at: float | None = None           # loop time, while offline
        self.version = 4
        self.waiters: set | None = None     # publishers throttled until our queue drains
        self.last_ack = 0.0                 # when the client last acknowledged a message
        self.receive_maximum = 65535        # the attached client's (MQTT 5), for the window
        # Told of every message the window accepts and every completed flow (a store, a
        # cluster: registry.RegistryListener); None when nobody listens, which costs one test.
        self.observer = None
        self.backlog: deque[Backlog] | None = None    # retained messages still to send
        self.dropped_slow = 0               # QoS 0 messages dropped while the client stalled
        # What the client may receive (access.Access, set at CONNECT), None when nothing is
        # restricted; the router asks it before each delivery.
        self.access = None
        # The store's journal while the session is persistent (expiry > 0), else None.
        self.journal: Journal | None = None
        self._config = config

    # -- outbound ------------------------------------------------------------------------------

    def attach(self, client: Client, version: int) -> None:
        """A client (re)connected to this session."""
        self.client = client
        self.version = version
        self.expires_at = None
        self.receive_maximum = client.receive_maximum
        if self.window is not None:
            self.window.receive_maximum = client.receive_maximum

    def _window(self) -> OutboundWindow:
        w = self.window
        if w is None:
            c = self._config
            w = self.window = OutboundWindow(c.max_inflight, c.max_queued, c.queue_qos0)
            w.receive_maximum = self.receive_maximum
        return w

    def deliver(self, msg: Message, qos: int, retain: bool, sub_ids: list | None,
                now: float, shared: tuple | None = None) -> int:
        """Route `msg` to this session at `qos`. Returns 1 when it was sent or queued, 0 when
        it was dropped, and CONGESTED when the client is draining, but slower than it is fed:
        the router then holds the publisher's input until it catches up (`waiters`).
        `shared` is the (group, filter) of the shared subscription that picked this session."""
        client = self.client
        if qos == 0 and client is not None:
            if client.writable:
                client.send_publish(msg, 0, retain, 0, False, sub_ids, now)
                return 1
            if now - client.paused_since < self._config.stall_timeout:
                # Its socket is full but was writable a moment ago: send (one message past
                # the mark per publisher, which is then held) rather than drop.
                client.send_publish(msg, 0, retain, 0, False, sub_ids, now)
                return CONGESTED
            # Stalled: nobody waits for it, and its QoS 0 messages go (counted).
            self.dropped_slow += 1
            return 0
        w = self.window
        if w is None:
            w = self._window()
        j = self.journal
        online = client is not None and client.writable
        if j is None:
            item = (msg, retain, sub_ids, shared, 0)
        else:
            j.seq += 1
            item = (msg, retain, sub_ids, shared, j.seq)
            if qos == 2:
                # Exactly once across a crash: a persistent session is sent a QoS 2 message
                # only once it is committed (the journal releases it then).
                online = False
        pid = w.submit(item, qos, online)
        if pid >= -1:                                    # accepted: in flight or queued
            if j is not None:
                j.queued(self, item, qos, pid)
            if self.observer is not None:
                self.observer.message_queued(self, msg, qos)
        if pid >= 0:
            if pid and w.inflight_count == 1:
                self.last_ack = now        # the window was empty: progress is timed from now
            client.send_publish(msg, qos, retain, pid, False, sub_ids, now)
            return 1
        if pid == -1:
            # Queued. Congested when the queue is past two windows (or half the queue, when that
            # is smaller: enough to keep the window full, short enough that messages do not
            # wait long) and the client is draining. A stalled one is not waited for: its queue
            # fills and drops, as with mosquitto, rather than slowing every publisher down.
            q = w.queued_count
            if client is not None and (q >= 2 * w.window or q * 2 >= w.max_queued) \
                    and self.draining(now):
                return CONGESTED
            return 1
        return 0

    def draining(self, now: float) -> bool:
        """The attached client is making progress: its socket was writable within the last
        `stall_timeout` seconds, and it acknowledged a message within it (or has nothing in
        flight)."""
        client = self.client
        stall = self._config.stall_timeout
        if client is None or (not client.writable and now - client.paused_since >= stall):
            return False
        w = self.window
        return w is None or not w.inflight_count or now - self.last_ack < stall

    def release(self, now: float) -> None:
        """Send what waits while the client's socket takes it: queued messages into the window
        (after acks, when the socket drains again, on reconnect), then the retained messages
        new subscriptions still have to receive; then let throttled publishers read again."""
        client = self.client
        if client is None:
            return
        w = self.window
        j = self.journal
        if w is not None and w.queued_count:
            while w.queued_count and client.writable:
                if j is not None:
                    # One at a time: a QoS 2 message waits for its commit (see deliver).
                    head = w.peek()
                    if head[4] > j.durable and head[0].qos == 2:
                        break
                    batch = w.release(1)
                else:
                    batch = w.release(RELEASE_BATCH)
                if not batch:
                    break            # the window is full: acks will call us again
                for pid, qos, item in batch:
                    msg, retain, sub_ids, _, _ = item
                    if msg.expired(now):
                        # It frees the slot it was given; the loop gives that slot to the
                        # next one now rather than after an ack that may never come.
                        if pid:
                            _end_flight(w, pid, qos)
                            if j is not None:
                                j.done(self, item)
                        continue
                    if pid and j is not None:
                        j.sent(self, item, pid)
                    client.send_publish(msg, qos, retain, pid, False, sub_ids, now)
        if self.backlog is not None and client.writable:
            self._send_backlog(now)
        if self.waiters is not None and client.writable and (
                w is None or (w.queued_count * 2 <= w.window
                              and w.queued_count * 4 <= w.max_queued)):
            self.wake_waiters()

    def wake_waiters(self) -> None:
        """Let the publishers we throttled read again (our queue drained, or we went away)."""
        waiters = self.waiters
        self.waiters = None
        if waiters:
            for publisher in waiters:
                publisher.unthrottle()

    def add_backlog(self, feed: Backlog, now: float) -> None:
        """Retained messages for a new subscription: they go out as the socket (and, for
        QoS 1/2, the window) takes them, never more than fits in one loop iteration, and
        never dropped for lack of room."""
        if self.backlog is None:
            self.backlog = deque()
        self.backlog.append(feed)
        self.release(now)

    def _send_backlog(self, now: float) -> None:
        client = self.client
        feeds = self.backlog
        while feeds:
            feed = feeds[0]
            messages = feed.messages
            current = feed.current
            ids = feed.sub_ids
            i = feed.pos
            n = len(messages)
            send = client.send_publish
            while i < n and client.writable:
                msg = messages[i]
                if current(msg.topic) is not msg or (msg.expires_at is not None
                                                     and now >= msg.expires_at):
                    i += 1               # replaced, deleted or expired since the SUBSCRIBE
                    continue
                qos = msg.qos if msg.qos < feed.qos else feed.qos
                if qos == 0:
                    send(msg, 0, True, 0, False, ids, now)
                else:
                    w = self._window()
                    q = w.queued_count
                    if (q or w.inflight_count >= w.window) and \
                            q >= min(w.window, w.max_queued):
                        break            # no room that cannot overflow: acks make some
                    j = self.journal
                    if j is None:
                        item = (msg, True, ids, None, 0)
                    else:
                        j.seq += 1
                        item = (msg, True, ids, None, j.seq)
                    pid = w.submit(item, qos, j is None or qos < 2)
                    if pid >= -1:
                        if j is not None:
                            j.queued(self, item, qos, pid)
                        if self.observer is not None:
                            self.observer.message_queued(self, msg, qos)
                    if pid > 0:
                        if w.inflight_count == 1:
                            self.last_ack = now
                        send(msg, qos, True, pid, False, ids, now)
                i += 1
            feed.pos = i
            if i < n:
                return
            feeds.popleft()
        self.backlog = None

    def resume(self, now: float) -> None:
        """A client re-attached: re-send everything unacknowledged (DUP), then the queue."""
        w = self.window
        client = self.client
        if client is None:
            return
        self.last_ack = now            # what it has in flight is timed from its return
        if w is not None:
            for pid, qos, state, item in w.resend():
                msg, retain, sub_ids, _, _ = item
                if state == AWAIT_PUBCOMP:
                    client.send_pubrel(pid)
                else:
                    client.send_publish(msg, qos, retain, pid, True, sub_ids, now)
        self.release(now)

    def retry(self, interval: float, now: float) -> None:
        """MQTT 3.x: re-send (DUP) what has waited `interval` seconds for its ack on a live
        connection. The window stamps each message the first time it is checked."""
        client = self.client
        for pid, qos, state, item in self.window.due(now, interval):
            msg, retain, sub_ids, _, _ = item
            if state == AWAIT_PUBCOMP:
                client.send_pubrel(pid)
            else:
                client.send_publish(msg, qos, retain, pid, True, sub_ids, now)

    def forget(self, pid: int, qos: int, now: float) -> bool:
        """End `pid`'s flow as if the client had completed it: a message too large for the
        client, or one it refused (MQTT 5 PUBREC >= 0x80 [MQTT-4.3.3-4])."""
        w = self.window
        if w is None:
            return False
        item = w.get(pid) if self.journal is not None else None
        if not _end_flight(w, pid, qos):
            return False
        if item is not None:
            self.journal.done(self, item)
        if w.queued_count or self.backlog is not None:
            self.release(now)
        return True

    def ack(self, kind: int, pid: int, now: float) -> bool:
        """PUBACK, PUBREC or PUBCOMP (`kind`, a packet type) from the client; False if the id
        is unknown or in another state."""
        w = self.window
        if w is None:
            return False
        self.last_ack = now
        j = self.journal
        item = None if j is None else w.get(pid)
        if kind == PUBACK:
            ok = w.puback(pid)
        elif kind == PUBREC:
            ok = w.pubrec(pid)
            if ok and item is not None:
                j.released(self, item, pid)
            return ok
        else:
            ok = w.pubcomp(pid)
        if ok:
            if item is not None:
                j.done(self, item)
            if self.observer is not None:
                self.observer.message_acked(self, pid)
            if w.queued_count or self.backlog is not None:
                self.release(now)
        return ok

    def take_shared(self) -> list:
        """Remove and return, as (qos, item), the messages this session received through shared
        subscriptions and that another member of the group should get instead: everything
        queued (not yet sent) and QoS 1 in flight [MQTT-4.8.2-3]. A QoS 2 delivery under way
        stays with this client, and is never given to another one even when the session ends
        [MQTT-4.8.2-4, MQTT-4.8.2-5]. Everything else stays, with its packet id and state."""
        w = self.window
        if w is None or not len(w):
            return []
        inflight = w.take_inflight()
        queued = w.drain_queue()
        out = []
        for pid, qos, state, item in inflight:
            if item[3] is not None and qos == 1:
                out.append((qos, item))
                continue
            self.put_back(item, qos, pid, state)
        for qos, item in queued:
            if item[3] is not None:
                out.append((qos, item))
            else:
                w.submit(item, qos, False)
        return out

    def put_back(self, item: tuple, qos: int, pid: int, state: int) -> int:
        """Put a message back in the window as it was (from a store, from another node, or
        after take_shared): in flight under `pid` when it is set (a QoS 2 one in `state`
        AWAIT_PUBCOMP awaits PUBCOMP again), else queued. Returns what `submit` returned:
        `pid` when it went back in flight (the window is not full), -1 when queued."""
        w = self._window()
        if not pid:
            return w.submit(item, qos, False)
        # submit() takes the first free id after last_pid: with the queue empty, this one.
        last = w.last_pid
        w.last_pid = pid - 1
        got = w.submit(item, qos, True)
        if got == pid and state == AWAIT_PUBCOMP:
            w.pubrec(pid)
        w.last_pid = last
        return got

    @property
    def has_shared(self) -> bool:
        return any(sub.group is not None for sub in self.subscriptions.values())

    @property
    def connected(self) -> bool:
        return self.client is not None

    @property
    def inflight(self) -> int:
        return 0 if self.window is None else self.window.inflight_count

    @property
    def dropped(self) -> int:
        """Messages dropped for this session: queue limits, and QoS 0 while it stalled."""
        return self.dropped_slow + (0 if self.window is None else self.window.dropped)

    @property
    def dropped_queue_full(self) -> int:
        return 0 if self.window is None else self.window.dropped

    @property
    def retained_pending(self) -> int:
        """Retained messages its new subscriptions have still to receive."""
        return 0 if self.backlog is None else sum(len(f) for f in self.backlog)

    @property
    def queued(self) -> int:
        return 0 if self.window is None else self.window.queued_count

    # -- inbound QoS 2 -------------------------------------------------------------------------

    def inbound_qos2(self, receive_maximum: int) -> InboundQoS2:
        if self.inbound is None:
            self.inbound = InboundQoS2(receive_maximum)
        return self.inbound

    def __repr__(self) -> str:
        return f"Session({self.client_id!r}, online={self.client is not None})"
