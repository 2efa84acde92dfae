"""Registry: the one owner of sessions, from CONNECT to expiry.

Client id -> `Session`: create, take over, attach and detach a client, subscribe and
unsubscribe, expire (given `now`), end; the wills of attached clients and the delayed wills of
gone ones live here too, so a session's whole life is in this file. What must outlive the
process (a store) or be known to other nodes (a cluster) subscribes to its events through
`add_listener`; nothing else writes sessions.

Sans-I/O: no loop, no clock (every method that needs the time takes `now`), no sockets. An
attached client is reached through the `session.Client` interface (`kick()` closes one whose
session was taken over).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cymqtt.consts import NEVER, RC_SESSION_TAKEN_OVER
from cymqtt.session import Session, Subscription, Will

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config
    from cymqtt.message import Message
    from cymqtt.metrics import Metrics
    from cymqtt.router import Router
    from cymqtt.session import Client

__all__ = ["Registry", "RegistryListener"]

log = logging.getLogger("cymqtt.registry")


class RegistryListener:
    """Events of the registry, for a store or a cluster to act on. Override what you need; the
    defaults do nothing. Called synchronously on the loop thread, so keep them short (queue the
    work, commit it off the loop)."""

    def session_created(self, session: Session) -> None:
        """A new session (CONNECT with clean start, or an unknown client id)."""

    def session_ended(self, session: Session) -> None:
        """A session is gone: clean disconnect, expiry, or replaced by a clean start."""

    def session_connected(self, session: Session) -> None:
        """A client attached to the session (new or present), with its expiry, protocol
        version and will set from its CONNECT."""

    def session_disconnected(self, session: Session) -> None:
        """The session's client went away and the session stays (until it expires); a will
        it delayed is in the registry's `pending_wills`."""

    def subscribed(self, session: Session, sub: Subscription) -> None:
        """A subscription was added or replaced (same filter, new options)."""

    def unsubscribed(self, session: Session, sub: Subscription) -> None:
        """A subscription was removed by UNSUBSCRIBE (not when its session ended)."""

    def message_queued(self, session: Session, msg: Message, qos: int) -> None:
        """The session's window accepted `msg` (sent now, or queued behind the window)."""

    def message_acked(self, session: Session, packet_id: int) -> None:
        """The client completed the flow of `packet_id` (PUBACK, or PUBCOMP for QoS 2)."""


class _Fanout(RegistryListener):
    # Every event to every listener, in the order they were added.
    def __init__(self, listeners: list[RegistryListener]) -> None:
        self.listeners = listeners

    def session_created(self, session: Session) -> None:
        for listener in self.listeners:
            listener.session_created(session)

    def session_ended(self, session: Session) -> None:
        for listener in self.listeners:
            listener.session_ended(session)

    def session_connected(self, session: Session) -> None:
        for listener in self.listeners:
            listener.session_connected(session)

    def session_disconnected(self, session: Session) -> None:
        for listener in self.listeners:
            listener.session_disconnected(session)

    def subscribed(self, session: Session, sub: Subscription) -> None:
        for listener in self.listeners:
            listener.subscribed(session, sub)

    def unsubscribed(self, session: Session, sub: Subscription) -> None:
        for listener in self.listeners:
            listener.unsubscribed(session, sub)

    def message_queued(self, session: Session, msg: Message, qos: int) -> None:
        for listener in self.listeners:
            listener.message_queued(session, msg, qos)

    def message_acked(self, session: Session, packet_id: int) -> None:
        for listener in self.listeners:
            listener.message_acked(session, packet_id)


class Registry:
    """Sessions by client id; the offline ones by expiry; delayed wills by deadline."""

    def __init__(self, config: Config, router: Router, metrics: Metrics) -> None:
        self._config = config
        self._router = router
        self._metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.offline: dict[str, Session] = {}        # detached sessions waiting for expiry
        self.pending_wills: dict[str, tuple[float, Will]] = {}   # client id -> (due, will)
        self._events = _Fanout([])     # session events; message events via Session.observer
        self._observer: RegistryListener | None = None   # None while nobody listens

    # -- events --------------------------------------------------------------------------------

    def add_listener(self, listener: RegistryListener) -> None:
        """Receive every event from now on (sessions that exist already included). The
        per-message events (queued, acked) cost each delivery a call, so sessions only get an
        observer once a listener overrides one of them."""
        self._events.listeners.append(listener)
        kind = type(listener)
        if kind.message_queued is RegistryListener.message_queued and \
                kind.message_acked is RegistryListener.message_acked:
            return
        self._observer = self._events
        for session in self.sessions.values():
            session.observer = self._observer

    def use_config(self, config: Config) -> None:
        """Sessions created from now on take their limits from `config` (Broker.reload)."""
        self._config = config

    # -- reading -------------------------------------------------------------------------------

    def get(self, client_id: str) -> Session | None:
        return self.sessions.get(client_id)

    def connected_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.client is not None)

    # -- connect and disconnect ----------------------------------------------------------------

    def connect(self, client: Client, client_id: str, clean_start: bool, version: int,
                expiry: int, requested_expiry: int, will: Will | None,
                now: float) -> tuple[Session, bool]:
        """Attach `client` to the session of `client_id`, taking it over from a connection that
        holds it [MQTT-3.1.4-2] and starting afresh on clean start [MQTT-3.1.2-4]. Returns the
        session and whether it was present (CONNACK session present)."""
        session = self.sessions.get(client_id)
        # A session with expiry 0 lasts as long as its connection [MQTT-3.1.2-6], so taking
        # over that connection ends it, whatever the new CONNECT's clean start says.
        fresh = clean_start or (session is not None and session.expiry_interval == 0)
        if session is not None and session.client is not None:
            old = session.client
            log.info("client %s: taken over by a new connection", client_id)
            self._process_will(session, now, ending=fresh)
            session.client = None
            old.kick(RC_SESSION_TAKEN_OVER, "session taken over")
        present = session is not None and not fresh
        if present:
            self.pending_wills.pop(client_id, None)   # reconnected in time [MQTT-3.1.3-9]
        else:
            if session is not None:
                self.end(session, now)
            session = Session(client_id, self._config)
            session.observer = self._observer
            self.sessions[client_id] = session
            self._events.session_created(session)
        self.offline.pop(client_id, None)
        session.expiry_interval = expiry
        session.requested_expiry = requested_expiry
        session.will = will
        session.attach(client, version)
        self._events.session_connected(session)
        return session, present

    def restore(self, session: Session, pending_will: tuple[float, Will] | None) -> None:
        """Put back an offline session a store kept (its expiry set), with the (due, will)
        still to publish, before the broker serves."""
        session.observer = self._observer
        self.sessions[session.client_id] = session
        self.offline[session.client_id] = session
        if pending_will is not None:
            self.pending_wills[session.client_id] = pending_will

    # -- another node (cluster) ------------------------------------------------------------

    def give_away(self, client_id: str, clean_start: bool, now: float) -> Session | None:
        """A CONNECT for `client_id` arrived at another node: close its connection here as a
        takeover does (5.0 DISCONNECT 0x8E, its will handled the same way) and let go of its
        session. Returns the session, subscriptions and window intact, for the other node to
        go on with; None when there is none here, or it ends (clean start, expiry 0)."""
        session = self.sessions.get(client_id)
        if session is None:
            return None
        ending = clean_start or session.expiry_interval == 0
        if session.client is not None:
            old = session.client
            log.info("client %s: taken over by a connection to another node", client_id)
            self._process_will(session, now, ending)
            session.client = None
            old.kick(RC_SESSION_TAKEN_OVER, "session taken over")
        if ending:
            self.end(session, now)
            return None
        self.pending_wills.pop(client_id, None)          # its client is back, elsewhere
        for sub in session.subscriptions.values():
            self._router.unsubscribe(sub)
        del self.sessions[client_id]
        self.offline.pop(client_id, None)
        self._events.session_ended(session)      # (here: the store and routes forget it)
        return session

    def adopt(self, session: Session, items: list, now: float) -> None:
        """A session handed over by another node (`give_away` there), before its client's
        CONNECT goes on here: its subscriptions, and its window's `items` ((msg, retain,
        sub_ids, shared, qos, pid, state), in flight first) back in order."""
        old = self.sessions.get(session.client_id)
        if old is not None:
            self.end(old, now)
        session.observer = self._observer
        self.sessions[session.client_id] = session
        self.offline[session.client_id] = session
        self._events.session_created(session)
        self._events.session_connected(session)          # (the store takes it on)
        for sub in session.subscriptions.values():
            self._router.subscribe(sub)
            self._events.subscribed(session, sub)
        self.restore_window(session, items)

    def restore_window(self, session: Session, items: list) -> None:
        """Put `items` ((msg, retain, sub_ids, shared, qos, pid, state), in flight first) back
        in `session`'s window as they were, under their packet ids."""
        last = 0
        for msg, retain, sub_ids, shared, qos, pid, state in items:
            self._put(session, (msg, retain, sub_ids, shared), qos, pid, state)
            if pid:
                last = max(last, pid)
        if last:
            session.window.last_pid = last

    def append_late(self, session: Session, items: list, now: float) -> int:
        """Messages `session` was due on a node that was down while its client came here:
        queued after what it has (those another node had sent get a packet id here; one
        its client already received at QoS 2, awaiting PUBCOMP there, is not sent again).
        Returns how many were queued."""
        n = 0
        for msg, retain, sub_ids, shared, qos, _pid, state in items:
            if state:
                continue
            if self._put(session, (msg, retain, sub_ids, shared), qos, 0, 0) >= -1:
                n += 1
        if n and session.client is not None:
            session.release(now)
        return n

    @staticmethod
    def _put(session: Session, fields: tuple, qos: int, pid: int, state: int) -> int:
        # One message into the window (Session.put_back), followed by the store's journal.
        j = session.journal
        key = 0
        if j is not None:
            j.seq += 1
            key = j.seq
        item = fields + (key,)
        got = session.put_back(item, qos, pid, state)
        if j is not None and got >= -1:
            j.queued(session, item, qos, got)
            if got > 0 and state:
                j.released(session, item, got)
        return got

    def detach(self, session: Session, now: float) -> None:
        """Its connection is gone: publish or delay the will, then end the session or keep it
        until it expires."""
        session.client = None
        session.wake_waiters()
        ending = session.expiry_interval == 0
        self._redispatch_shared(session, ending, now)
        self._process_will(session, now, ending)
        if ending:
            self.end(session, now)
        else:
            session.expires_at = (None if session.expiry_interval == NEVER
                                  else now + session.expiry_interval)
            self.offline[session.client_id] = session
            self._events.session_disconnected(session)

    def discard_will(self, session: Session) -> None:
        """The client disconnected normally (DISCONNECT without 0x04), or the broker is
        shutting down: its will is not published [MQTT-3.1.2-10]."""
        session.will = None

    def end(self, session: Session, now: float) -> None:
        """Discard a session: its subscriptions, queue and inflight messages. A delayed will
        still waiting is published now (MQTT 5: the earlier of delay and session end)."""
        self._redispatch_shared(session, True, now)
        self._router.remove_session(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            self._metrics.dropped_ended_sessions += session.dropped_queue_full
            self._metrics.dropped_ended_slow += session.dropped_slow
            self._events.session_ended(session)
        self.offline.pop(session.client_id, None)
        pending = self.pending_wills.pop(session.client_id, None)
        if pending is not None:
            self.publish_will(pending[1], now)

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, session: Session, sub: Subscription) -> bool:
        """Add or replace `sub`; True when the session had that filter already."""
        existed = sub.full_filter in session.subscriptions
        session.subscriptions[sub.full_filter] = sub
        self._router.subscribe(sub)
        self._events.subscribed(session, sub)
        return existed

    def unsubscribe(self, session: Session, full_filter: str) -> bool:
        """False when the session has no such subscription."""
        sub = session.subscriptions.pop(full_filter, None)
        if sub is None:
            return False
        self._router.unsubscribe(sub)
        self._events.unsubscribed(session, sub)
        return True

    # -- time ----------------------------------------------------------------------------------

    def expired(self, now: float) -> list[Session]:
        """Offline sessions whose expiry has passed (read only; `end` each one)."""
        return [s for s in self.offline.values()
                if s.expires_at is not None and now >= s.expires_at]

    def wills_due(self, now: float) -> list[str]:
        """Client ids whose delayed will is due (read only; `fire_will` each one)."""
        return [cid for cid, (due, _) in self.pending_wills.items() if now >= due]

    def fire_will(self, client_id: str, now: float) -> None:
        pending = self.pending_wills.pop(client_id, None)
        if pending is not None:
            self.publish_will(pending[1], now)

    # -- wills ---------------------------------------------------------------------------------

    def _process_will(self, session: Session, now: float, ending: bool) -> None:
        # The connection ended without a normal DISCONNECT: publish its will now, or after its
        # delay (MQTT 5: the delay ends early when the session ends) [MQTT-3.1.2-8].
        will = session.will
        session.will = None
        if will is None:
            return
        if will.delay and not ending:
            delay = will.delay
            if session.expiry_interval != NEVER:
                delay = min(delay, session.expiry_interval)
            self.pending_wills[session.client_id] = (now + delay, will)
        else:
            self.publish_will(will, now)

    def publish_will(self, will: Will, now: float) -> None:
        msg = will.message
        msg.start_expiry(now)           # a will's message expiry runs from its publication
        log.debug("publishing will of %s to %r", msg.sender, msg.topic)
        self._router.route(msg, now)

    def _redispatch_shared(self, session: Session, ending: bool, now: float) -> None:
        # Shared-subscription messages the leaving member did not acknowledge go to another
        # member (MQTT 5 section 4.8.2); when none is connected they stay with this session.
        if session.window is None or not session.has_shared:
            return
        journal = session.journal
        for qos, item in session.take_shared():
            if self._router.redispatch(qos, item, session, now):
                if journal is not None:
                    journal.done(session, item, False)     # it is the other member's now
            elif not ending:
                session.window.submit(item, qos, False)
