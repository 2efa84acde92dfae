"""Broker: the public API. Owns the config, the listener, sessions, the router and the one
periodic sweep (keep alive, CONNECT timeout, stalled writers, session expiry, delayed wills).

    async with Broker(port=0) as broker:
        print(broker.port)            # the port it picked
        ...                           # clients connect to 127.0.0.1:broker.port
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from cymqtt._version import __version__
from cymqtt.auth import Authenticator, ScramSha256
from cymqtt.config import Config
from cymqtt.connection import Connection
from cymqtt.handlers import CONN_ACTIVE, CONN_AUTH, CONN_NEW
from cymqtt.message import Message
from cymqtt.props import P_SERVER_REFERENCE
from cymqtt.router import Router
from cymqtt.session import NEVER, Session, Will
from cymqtt import sys_topics

log = logging.getLogger("cymqtt.broker")

SWEEP_INTERVAL = 0.5   # seconds between sweeps; keep alive is enforced to within this
THROTTLE_MAX = 0.5     # longest a publisher waits for congested subscribers before reading on


class Stats:
    """Counters for $SYS and metrics. Plain attributes: incremented on the hot path."""

    __slots__ = ("bytes_received", "bytes_sent", "messages_received", "messages_sent",
                 "dropped_too_large", "connections_total", "clients_total", "started")

    def __init__(self) -> None:
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.messages_sent = 0
        self.dropped_too_large = 0
        self.connections_total = 0
        self.clients_total = 0
        self.started = time.monotonic()


class Broker:
    """An MQTT 3.1 / 3.1.1 / 5.0 broker.

    :param config: a `Config`; keyword arguments override its fields
        (``Broker(port=0, max_queued=100)``).

    ``await start()`` binds and returns once the broker accepts connections; ``await stop()``
    disconnects every client (MQTT 5: reason 0x8B) and closes the listener. Use it as an async
    context manager to get both.
    """

    def __init__(self, config: Config | None = None, *,
                 authenticators: list[Authenticator] | None = None, **overrides: Any) -> None:
        self.config = (config or Config()).replace(**overrides) if overrides else (
            config or Config())
        # MQTT 5 enhanced authentication, by method; SCRAM-SHA-256 for the configured users.
        self.authenticators: dict[str, Authenticator] = {}
        if self.config.users:
            scram = ScramSha256(self.config.users)
            self.authenticators[scram.method] = scram
        for a in authenticators or ():
            self.authenticators[a.method] = a
        self.stats = Stats()
        self.router = Router(self.config.shared_subscription_strategy)
        self.sessions: dict[str, Session] = {}
        self.offline: dict[str, Session] = {}          # sessions waiting for expiry
        self.pending_wills: dict[str, tuple[float, Will]] = {}
        self.connections: set[Connection] = set()
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listener and start the sweep. Raises OSError when the port is taken."""
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self.stats.started = time.monotonic()
        self._server = await self._loop.create_server(
            lambda: Connection(self), self.config.host, self.config.port,
            reuse_address=True, backlog=4096)
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="cymqtt-sweep"))
        if self.config.sys_interval > 0:
            self._tasks.append(asyncio.create_task(
                sys_topics.publish_forever(self, self.config.sys_interval), name="cymqtt-sys"))
        log.info("cymqtt %s listening on %s:%d", __version__, self.config.host, self.port)

    @property
    def port(self) -> int:
        """The port the listener is bound to (useful with port=0)."""
        if self._server is None or not self._server.sockets:
            return self.config.port
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Disconnect every client and close the listener."""
        if self._server is None:
            return
        self._server.close()
        redirect = self.config.redirect_to
        for conn in list(self.connections):
            conn.clean_exit = True
            if redirect:
                conn.disconnect(0x9D if self.config.redirect_permanent else 0x9C,
                                "use another server", {P_SERVER_REFERENCE: redirect})
            else:
                conn.disconnect(0x8B, "server shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        self._flush()
        await asyncio.sleep(0)
        self._server = None
        if self._closed is not None:
            self._closed.set()
        log.info("cymqtt stopped")

    async def serve_forever(self) -> None:
        """Start (if needed) and run until stop() is called."""
        if self._server is None:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- embedding API -------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, properties: dict | None = None) -> int:
        """Publish a message from inside the program; returns the number of deliveries."""
        if isinstance(payload, str):
            payload = payload.encode()
        msg = Message(topic, payload, qos, retain, properties)
        msg.start_expiry(self.now())
        return self.route(msg)

    # -- used by connections and handlers ------------------------------------------------------

    now = staticmethod(time.monotonic)

    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        # One write per dirty connection per loop iteration.
        self._flush_handle = None
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        sent = 0
        for conn in dirty:
            sent += conn.flush()
        self.stats.bytes_sent += sent

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def route(self, msg: Message, publisher: Connection | None = None) -> int:
        """Deliver `msg`; when it leaves draining subscribers congested (Session.deliver), the
        `publisher` stops being read until they drain (at most THROTTLE_MAX seconds)."""
        if msg.retain and self.config.retain_available:
            self.router.retained.store(msg)
        router = self.router
        n = router.publish(msg, self.now())
        if router.congested:
            congested = router.congested
            router.congested = []
            if publisher is not None:
                for session in congested:
                    conn = session.conn
                    if conn is None or conn is publisher:
                        continue     # never wait for ourselves
                    if session.waiters is None:
                        session.waiters = set()
                    session.waiters.add(publisher)
                    publisher.throttle(THROTTLE_MAX)
        return n

    def on_connection_made(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.stats.connections_total += 1

    def on_client_connected(self, conn: Connection) -> None:
        self.stats.clients_total += 1

    @property
    def clients_connected(self) -> int:
        return sum(1 for c in self.connections if c.session is not None)

    def on_connection_lost(self, conn: Connection) -> None:
        self.connections.discard(conn)
        session = conn.session
        if session is None or session.conn is not conn:
            return
        now = self.now()
        session.conn = None
        session.wake_waiters()
        ending = session.expiry_interval == 0
        self._redispatch_shared(session, ending, now)
        self.process_will(conn, now, session_ending=ending)
        conn.session = None
        if ending:
            self.end_session(session, now)
        else:
            session.expires_at = (None if session.expiry_interval == NEVER
                                  else now + session.expiry_interval)
            self.offline[session.client_id] = session

    def process_will(self, conn: Connection, now: float, session_ending: bool) -> None:
        """The connection ended without DISCONNECT: publish its will, now or after its delay
        (MQTT 5: the delay ends early when the session ends) [MQTT-3.1.2-8]."""
        will = conn.will
        conn.will = None
        if will is None or conn.clean_exit:
            return
        session = conn.session
        if will.delay and not session_ending and session is not None:
            delay = will.delay
            if session.expiry_interval != NEVER:
                delay = min(delay, session.expiry_interval)
            self.pending_wills[conn.client_id] = (now + delay, will)
        else:
            self.publish_will(will, now)

    def publish_will(self, will: Will, now: float) -> None:
        msg = will.message
        msg.start_expiry(now)
        log.debug("publishing will of %s to %r", msg.sender, msg.topic)
        self.route(msg)

    def cancel_will(self, client_id: str) -> None:
        self.pending_wills.pop(client_id, None)

    def _redispatch_shared(self, session: Session, ending: bool, now: float) -> None:
        # Shared-subscription messages the leaving member did not acknowledge go to another
        # member (MQTT 5 section 4.8.2); when none is connected they stay with this session.
        if session.window is None or not session.has_shared:
            return
        for qos, item in session.take_shared():
            if not self.router.redispatch(qos, item, session, now) and not ending:
                session.window.submit(item, qos, False)

    def end_session(self, session: Session, now: float) -> None:
        """Discard a session: its subscriptions, queue and inflight messages."""
        self._redispatch_shared(session, True, now)
        self.router.remove_session(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        self.offline.pop(session.client_id, None)
        pending = self.pending_wills.pop(session.client_id, None)
        if pending is not None:
            self.publish_will(pending[1], now)

    # -- the sweep -----------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.sweep(self.now())
            except Exception:  # pragma: no cover - a bug, but the broker must keep serving
                log.exception("sweep failed")

    def sweep(self, now: float) -> None:
        """Every timed rule, checked against `now` (one pass; no per-connection timers)."""
        config = self.config
        retry = config.retry_interval
        for conn in list(self.connections):
            state = conn.state
            if state == CONN_NEW or state == CONN_AUTH:
                if now - conn.created > config.connect_timeout:
                    log.info("%s: no CONNECT within %.0f s; closing", conn.peer,
                             config.connect_timeout)
                    conn.abort()
            elif state == CONN_ACTIVE:
                if conn.keepalive and now - conn.last_rx > 1.5 * conn.keepalive:
                    log.info("client %s: keep alive %d s expired; closing", conn.client_id,
                             conn.keepalive)
                    conn.disconnect(0x8D, "keep alive timeout")
                elif not conn.writable and now - conn.paused_since > config.write_timeout:
                    log.info("client %s: socket unwritable for %.0f s; closing",
                             conn.client_id, now - conn.paused_since)
                    conn.abort()
                elif retry and conn.version < 5 and conn.writable:
                    session = conn.session
                    if session is not None and session.window is not None and \
                            session.window.inflight_count:
                        session.retry(retry, now)
        if self.offline:
            for session in [s for s in self.offline.values()
                            if s.expires_at is not None and now >= s.expires_at]:
                log.debug("session %s expired", session.client_id)
                self.end_session(session, now)
        if self.pending_wills:
            for client_id, (deadline, will) in list(self.pending_wills.items()):
                if now >= deadline:
                    del self.pending_wills[client_id]
                    self.publish_will(will, now)

    def uptime(self) -> int:
        return math.floor(time.monotonic() - self.stats.started)
