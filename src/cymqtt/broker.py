"""Broker: the public facade. It wires the parts, starts and stops them, publishes from the
program embedding it, and answers questions about its state. It holds no MQTT rules itself
(those are in protocol/, registry.py, router.py and session.py).

    async with Broker(port=0) as broker:
        print(broker.port)            # the port it picked
        broker.publish("greetings", b"hello", retain=True)
        ...                           # clients connect to 127.0.0.1:broker.port
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from cymqtt._fast.codec import encode_publish, validate_topic_filter, validate_topic_name
from cymqtt._fast.consts import Property
from cymqtt._version import __version__
from cymqtt.access import Authorizer
from cymqtt.cluster import Bus, make_bus
from cymqtt.auth import Authenticator
from cymqtt.config import Config, ConfigError
from cymqtt.consts import (
    P_SERVER_REFERENCE, RC_ADMINISTRATIVE_ACTION, RC_KEEP_ALIVE_TIMEOUT, RC_SERVER_MOVED,
    RC_SERVER_SHUTTING_DOWN, RC_USE_ANOTHER_SERVER,
)
from cymqtt.context import Context, load_acl_file, load_password_file
from cymqtt.message import Message
from cymqtt.metrics import collect
from cymqtt.net.connection import Connection
from cymqtt.net.listeners import ListenerSet, specs_from_config
from cymqtt.registry import RegistryListener
from cymqtt.session import Session
from cymqtt.store import DurableRetained, Journal, SQLiteStore, Store
from cymqtt.stream import MessageStream
from cymqtt import logs, sys_topics, timers
from cymqtt.net.accept import open_file_limit

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.http.server import HttpServer

__all__ = ["Broker", "RELOADABLE"]

log = logging.getLogger("cymqtt.broker")

# The keys Broker.reload() applies to a running broker, each with when it takes effect; any
# other key that changed needs a restart (and keeps its old value until then). Handlers read
# ctx.config afresh, so a key whose users all do needs only a line here; one held elsewhere
# also needs a line in Broker._apply (log level, timers, $SYS task). Keys are left out when
# clients were told the old value in CONNACK (maximum_qos, topic_alias_maximum, ...).
RELOADABLE: dict[str, str] = {
    "log_level": "now",
    "connection_messages": "now",
    "validate_utf8_payload": "now",
    "connect_timeout": "now",
    "write_timeout": "now",
    "retry_interval": "now",
    "sys_interval": "now",
    "max_keepalive": "new connections",
    "server_keep_alive": "new connections",
    "max_packet_size": "new connections",
    "allow_zero_length_client_id": "new connections",
    "response_information": "new connections",
    "redirect_to": "new connections",
    "redirect_permanent": "new connections",
    "session_expiry_default": "new connections",
    "max_session_expiry": "new connections",
    "max_inflight": "new sessions",
    "max_queued": "new sessions",
    "queue_qos0": "new sessions",
    "stall_timeout": "new sessions",
    "password_file": "new connections",
    "acl_file": "now",
    "max_connections": "now",
    "max_publish_rate": "new connections",
    "max_subscriptions_per_client": "now",
    "max_topic_length": "now",
    "max_topic_levels": "now",
}


class Broker:
    """An MQTT 3.1 / 3.1.1 / 5.0 broker.

    :param config: a `Config`; keyword arguments override its fields
        (``Broker(port=0, max_queued=100)``).
    :param authenticators: MQTT 5 enhanced-authentication methods besides the built-in
        SCRAM-SHA-256 (see `cymqtt.auth.Authenticator`).
    :param authorizers: what clients may publish, subscribe to and receive, beside the
        config's acl_file (see `cymqtt.access.Authorizer`); a denial from any of them wins.
    :param clock: the broker's one clock (seconds, monotonic); every deadline uses it. Tests
        inject their own to play time forward.
    :param store: where retained messages and persistent sessions survive a restart (see
        `cymqtt.store`); by default an SQLite file when the config persists
        (`Config.store_path()`), else none.

    ``await start()`` binds and returns once the broker accepts connections; ``await stop()``
    disconnects every client (MQTT 5: reason 0x8B) and closes the listeners. Use it as an async
    context manager to get both.
    """

    def __init__(self, config: Config | None = None, *,
                 authenticators: list[Authenticator] | None = None,
                 authorizers: list[Authorizer] | None = None,
                 clock: Callable[[], float] = time.monotonic, store: Store | None = None,
                 **overrides: Any) -> None:
        config = config or Config()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self._clock = clock
        # Slow checks (password hashes) run here, off the event loop.
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                        thread_name_prefix="cymqtt-auth")
        if store is None and config.store_path() is not None:
            store = SQLiteStore(config.store_path(), config.store_sync)
        self._journal = Journal(store, config, clock) if store is not None else None
        self._ctx = ctx = Context.create(
            config, authenticators, clock, authorizers, self._offload,
            DurableRetained(self._journal) if self._journal is not None else None)
        if self._journal is not None:
            ctx.journal = self._journal
            self._journal.attach(ctx.registry)
        # The cluster ([cluster]); one node's LocalBus does nothing.
        self._bus: Bus = make_bus(config)
        self._metrics = ctx.metrics
        self._router = ctx.router
        self._registry = ctx.registry
        self._listeners = ListenerSet(self._ctx, specs_from_config(config))
        self._limits = timers.Limits(config.connect_timeout, config.write_timeout,
                                     config.retry_interval)
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self._closed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: weakref.WeakSet[MessageStream] = weakref.WeakSet()
        # The REST API, /metrics and the dashboard ([http]); it reads this facade only.
        self._http: HttpServer | None = None
        if config.http is not None:
            from cymqtt.http.server import HttpServer  # (aiohttp: imported only when needed)
            self._http = HttpServer(self, config.http)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listeners and start the sweep. Raises OSError when a port is taken."""
        self._loop = loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._metrics.started = self._clock()
        if self._journal is not None:
            self._restore()
            self._journal.start(loop)
        if self._bus.active:
            await self._bus.start(self._ctx, self.node_stats, self._answer)
        try:
            await self._listeners.start(loop)
        except BaseException:
            await self._bus.close()
            raise
        if self._http is not None:
            try:
                await self._http.start()
            except BaseException:           # (http.BindError: its port is taken)
                self._listeners.close()
                self._listeners.release()
                raise
        self._running = True
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="cymqtt-sweep"))
        if self.config.sys_interval > 0:
            self._tasks.append(asyncio.create_task(self._sys_forever(self.config.sys_interval),
                                                   name="cymqtt-sys"))
        for name, host, port in self._listeners.bound:
            log.info("cymqtt %s listening on %s:%d", __version__, host, port)
        if self._http is not None:
            log.info("HTTP API, /metrics and dashboard at %s", self._http.url)

    def _restore(self) -> None:
        # What the store kept, back before the first client connects (synchronously: the
        # broker serves nobody yet).
        t0 = time.perf_counter()
        got = self._journal.restore(self._registry, self._router, self._clock())
        if any(got.values()):
            log.info("store %s: restored %d retained messages, %d sessions with %d "
                     "subscriptions and %d queued messages in %.2f s", self._journal.store.name,
                     got["retained"], got["sessions"], got["subscriptions"], got["queued"],
                     time.perf_counter() - t0)

    @property
    def port(self) -> int:
        """The port of the (first) listener (useful with port=0)."""
        bound = self._listeners.bound
        return bound[0][2] if bound else (self.config.port or 0)

    @property
    def listeners(self) -> list[dict[str, Any]]:
        """Each bound listener: name, host, port (the one chosen, with port 0), protocol,
        tls, mtls, clients connected through it and its max_connections."""
        return self._listeners.describe()

    @property
    def http_port(self) -> int | None:
        """The port of the HTTP API, metrics and dashboard (once started, the one chosen with
        port 0), or None when there is no [http] listener."""
        return self._http.port if self._http is not None else None

    def _offload(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def stop(self) -> None:
        """Disconnect every client and close the listeners. Wills are not published."""
        if not self._running:
            return
        self._running = False
        if self._http is not None:
            await self._http.stop()
        self._listeners.close()
        for stream in list(self._streams):
            stream.close()
        redirect = self.config.redirect_to
        for conn in list(self._listeners.connections):
            if redirect:
                conn.protocol.shutdown(
                    RC_SERVER_MOVED if self.config.redirect_permanent else RC_USE_ANOTHER_SERVER,
                    "use another server", {P_SERVER_REFERENCE: redirect})
            else:
                conn.protocol.shutdown(RC_SERVER_SHUTTING_DOWN, "server shutting down",
                                       why="broker shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        self._listeners.flush()
        self._listeners.release_later()
        await asyncio.sleep(0)
        await self._bus.close()
        if self._journal is not None:
            await self._journal.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._closed is not None:
            self._closed.set()
        log.info("cymqtt stopped")

    async def serve_forever(self) -> None:
        """Start (if needed) and run until stop() is called."""
        if not self._running:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- embedding API -------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | bytearray | str = b"", qos: int = 0,
                retain: bool = False, properties: dict | None = None) -> int | None:
        """Publish a message from inside the program, as if a client had; returns the number of
        sessions it was delivered (or queued) to. Thread-safe: called from another thread than
        the running broker's loop, it checks its arguments there, schedules the delivery on the
        loop (``loop.call_soon_threadsafe``) and returns None, the count being unknown yet.

        :raises ValueError: a topic that is not a valid PUBLISH topic name (empty, wildcards,
            U+0000, over 65,535 bytes), a QoS other than 0, 1 or 2, or a payload that is not
            bytes or str.
        """
        if not isinstance(topic, str):
            raise ValueError(f"topic must be a str, not {type(topic).__name__}")
        try:
            validate_topic_name(topic)
        except ValueError as exc:           # a CodecError
            raise ValueError(f"cannot publish to {topic[:60]!r}: {exc}") from None
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        if isinstance(payload, str):
            payload = payload.encode()
        elif isinstance(payload, bytearray):
            payload = bytes(payload)
        elif not isinstance(payload, bytes):
            raise ValueError(f"payload must be bytes or str, not {type(payload).__name__}")
        if properties is not None and not isinstance(properties, dict):
            raise ValueError("properties must be a dict of MQTT 5 property id -> value")
        try:    # encoding once checks the topic's length and every property before delivery
            encode_publish(topic, payload, qos, bool(retain), False, 1 if qos else 0,
                           properties, 5)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot publish to {topic[:60]!r}: {exc}") from None
        msg = Message(topic, payload, qos, bool(retain), properties or None)
        loop = self._loop
        if loop is not None and _running_loop() is not loop:
            loop.call_soon_threadsafe(self._route_message, msg)
            return None
        return self._route_message(msg)

    def _route_message(self, msg: Message) -> int:
        now = self._clock()
        msg.start_expiry(now)
        return self._router.route(msg, now)

    def subscribe(self, topic_filter: str, qos: int = 0) -> MessageStream:
        """Receive the messages matching `topic_filter` in the program, as a subscriber would
        (retained ones first; QoS the lower of the published and `qos`)::

            async with broker.subscribe("sensors/#", qos=1) as messages:
                async for msg in messages:      # msg.topic, .payload, .qos, .retain
                    ...

        It is subscribed when this returns, so nothing published afterwards is missed. Call it
        on the broker's loop; ``close()`` (or leaving ``async with``, or ``stop()``) ends it.

        :raises ValueError: a filter a SUBSCRIBE could not carry, or a QoS other than 0..2.
        """
        stream = MessageStream(self._router, self.config, self._clock, topic_filter, qos)
        self._streams.add(stream)
        return stream

    def add_listener(self, listener: RegistryListener) -> None:
        """Receive the registry's session events (created, ended, subscribed, unsubscribed,
        message queued, acked): how a store or a cluster follows the broker."""
        self._registry.add_listener(listener)

    # -- introspection -------------------------------------------------------------------------

    def now(self) -> float:
        """The broker's clock."""
        return self._clock()

    def session(self, client_id: str) -> Session | None:
        """The session of `client_id`, or None. Read it; do not change it."""
        return self._registry.get(client_id)

    def session_ids(self) -> list[str]:
        """Client ids that have a session (connected or not)."""
        return list(self._registry.sessions)

    def pending_will_ids(self) -> list[str]:
        """Client ids whose will waits for its delay to pass."""
        return list(self._registry.pending_wills)

    @property
    def connection_count(self) -> int:
        """Open sockets, including those that have not sent CONNECT yet."""
        return len(self._listeners.connections)

    @property
    def clients_connected(self) -> int:
        """Connections with a session (CONNACK sent)."""
        return self._registry.connected_count()

    def clients(self) -> list[dict[str, Any]]:
        """One dict per connected client (see `client()`)."""
        return [self._client_info(conn) for conn in self._listeners.connections
                if conn.protocol.session is not None]

    def client(self, client_id: str) -> dict[str, Any] | None:
        """The connected client `client_id`: client id, protocol version, peer address, user
        name, keep alive, listener, subscriptions, and its message counters (received from
        it, sent to it, in flight, queued, retained still to send, dropped); None when it is
        not connected."""
        session = self._registry.get(client_id)
        client = session.client if session is not None else None
        if client is None:
            return None
        conn = client.io
        return self._client_info(conn) if isinstance(conn, Connection) else None

    @staticmethod
    def _client_info(conn: Connection) -> dict[str, Any]:
        p = conn.protocol
        s = p.session
        return {
            "client_id": p.client_id, "protocol": p.version, "peer": conn.peer,
            "username": p.username, "keepalive": p.keepalive, "listener": conn.listener,
            "subscriptions": len(s.subscriptions), "received": p.received, "sent": p.sent,
            "inflight": s.inflight, "queued": s.queued, "retained_pending": s.retained_pending,
            "dropped": s.dropped,
        }

    @property
    def retained_count(self) -> int:
        return len(self._router.retained)

    # -- introspection for operators (what the HTTP API pages through) --------------------------
    # Lists of keys (strings), sorted, so that a caller pages through 20,000 clients without a
    # dict per client; it asks `client()`, `subscription()`, `retained_message()` for the page.

    def client_ids(self, search: str | None = None) -> list[str]:
        """The client ids of the connected clients, sorted; with `search`, only those that
        contain it (case-insensitive)."""
        needle = search.casefold() if search else None
        ids = [p.client_id for p in (c.protocol for c in self._listeners.connections)
               if p.session is not None
               and (needle is None or needle in p.client_id.casefold())]
        ids.sort()
        return ids

    def subscriptions(self, client_id: str | None = None,
                      search: str | None = None) -> list[tuple[str, str]]:
        """(client id, topic filter as subscribed) of every session's subscriptions, connected
        or not, sorted; `client_id` keeps one client's, `search` those whose filter contains
        it (case-insensitive)."""
        if client_id is not None:
            session = self._registry.get(client_id)
            sessions = [session] if session is not None else []
        else:
            sessions = list(self._registry.sessions.values())
        needle = search.casefold() if search else None
        keys = [(s.client_id, f) for s in sessions for f in s.subscriptions
                if needle is None or needle in f.casefold()]
        keys.sort()
        return keys

    def subscription(self, client_id: str, topic_filter: str) -> dict[str, Any] | None:
        """The subscription of `client_id` to `topic_filter` (as subscribed, `$share/...`
        included): client id, topic filter, shared group, QoS, the MQTT 5 options
        (no local, retain as published, retain handling), subscription identifier and whether
        its client is connected; None when there is none."""
        session = self._registry.get(client_id)
        sub = session.subscriptions.get(topic_filter) if session is not None else None
        if sub is None:
            return None
        return {"client_id": client_id, "topic_filter": sub.full_filter, "group": sub.group,
                "qos": sub.qos, "no_local": sub.no_local,
                "retain_as_published": sub.retain_as_published,
                "retain_handling": sub.retain_handling, "subscription_identifier": sub.sub_id,
                "connected": session.client is not None}

    def client_infos(self, client_ids: list[str]) -> list[dict[str, Any]]:
        """`client()` of each of `client_ids` connected here, in their order."""
        infos = (self.client(cid) for cid in client_ids)
        return [info for info in infos if info is not None]

    def subscription_infos(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """`subscription()` of each (client id, filter) of `keys` held here, in their order."""
        infos = (self.subscription(cid, f) for cid, f in keys)
        return [info for info in infos if info is not None]

    #: what `everywhere()` may ask every node of a cluster
    ANSWERS = frozenset({"client_ids", "client_infos", "subscriptions", "subscription_infos",
                         "disconnect"})

    async def everywhere(self, question: str, *args: Any) -> list[Any]:
        """The answers of every node of the broker to `question` (a method of ANSWERS called
        with `args`), this node's first: one answer alone, but in a cluster or with
        --workers, where each node knows its own clients (the REST API lists them all)."""
        return [self._answer(question, args), *await self._bus.ask(question, args)]

    def _answer(self, question: str, args: tuple) -> Any:
        if question not in self.ANSWERS:
            raise ValueError(f"{question!r} is not a question a node answers")
        return getattr(self, question)(*args)

    def retained_topics(self, topic_filter: str = "#") -> list[str]:
        """The topics with a retained message matching `topic_filter`, sorted. As for a
        subscriber, `#` and `+` leave out `$` topics (ask for `$SYS/#` to see those).

        :raises ValueError: `topic_filter` is not a valid topic filter.
        """
        validate_topic_filter(topic_filter)
        topics = [m.topic for m in self._router.retained.match(topic_filter, self._clock())]
        topics.sort()
        return topics

    def retained_message(self, topic: str) -> dict[str, Any] | None:
        """The retained message of `topic`: topic, payload (bytes), QoS, seconds until it
        expires (None: never) and its MQTT 5 properties by lower-case name
        (``content_type``, ``user_property``, ...); None when the topic has none."""
        msg = self._router.retained.get(topic)
        now = self._clock()
        if msg is None or msg.expired(now):
            return None
        props = {Property(k).name.lower(): v for k, v in (msg.properties or {}).items()}
        return {"topic": msg.topic, "payload": msg.payload, "qos": msg.qos,
                "expires_in": None if msg.expires_at is None else msg.expires_at - now,
                "properties": props}

    def delete_retained(self, topic: str) -> bool:
        """Delete the retained message of `topic`, as an empty retained PUBLISH would, but
        delivering nothing to subscribers; False when the topic had none."""
        if self.retained_message(topic) is None:
            return False
        gone = Message(topic, b"", 0, True)
        self._router.retained.store(gone)
        self._bus.retained_changed(gone)          # (in a cluster, on every node)
        return True

    def disconnect(self, client_id: str, reason_code: int = RC_ADMINISTRATIVE_ACTION,
                   reason: str = "administrative action") -> bool:
        """Close the connection of `client_id`; MQTT 5 clients are sent DISCONNECT with
        `reason_code` (default 0x98, administrative action) and `reason` first. Like any
        connection the broker closes, its will is published and its session stays (a
        persistent one keeps its subscriptions and queues for it). False when it is not
        connected."""
        session = self._registry.get(client_id)
        client = session.client if session is not None else None
        conn = client.io if client is not None else None
        if not isinstance(conn, Connection):
            return False
        conn.protocol.disconnect(reason_code, reason, why=f"{reason} (Broker.disconnect)")
        return True

    def stats(self) -> dict[str, int]:
        """Every counter and gauge, by name (what $SYS and metrics endpoints show). In a
        cluster (and with --workers), of the whole broker: every node's `node_stats()` as of
        its last heartbeat (under a second old) added up, but for uptime and the retained
        messages, which every node has."""
        stats = self.node_stats()
        if self._bus.active:
            stats = self._bus.whole(stats)
        stats.update(self._bus.stats())
        return stats

    def node_stats(self) -> dict[str, int]:
        """`stats()` of this node (this process) alone."""
        stats = collect(self._metrics, self._registry, self._router,
                        len(self._listeners.connections), self._clock())
        if self._journal is not None:
            stats.update(self._journal.stats())
        return stats

    # -- operations ----------------------------------------------------------------------------

    def reload(self, config: Config) -> dict[str, Any]:
        """Take what `config` changes that can change without dropping a client (the keys of
        `RELOADABLE`, each from the moment it names); log one line per key applied and one
        naming the keys that need a restart (those keep their old values). The `cymqtt`
        command calls this on SIGHUP with the config file read again.

        :return: ``{"changed": {key: (old, new)}, "restart": [key, ...]}``
        """
        old = self.config
        config = self._reload_files(config)
        diff = [f.name for f in dataclasses.fields(Config)
                if f.compare and getattr(old, f.name) != getattr(config, f.name)]
        apply = [k for k in diff if k in RELOADABLE]
        restart = [k for k in diff if k not in RELOADABLE]
        new = old.replace(**{k: getattr(config, k) for k in apply}) if apply else old
        self.config = self._ctx.config = new
        self._registry.use_config(new)
        self._apply(old, new, apply)
        for k in apply:
            log.info("reload: %s = %r (was %r; applies to %s)", k, getattr(new, k),
                     getattr(old, k), RELOADABLE[k])
        if restart:
            log.warning("reload: changed but only applied on restart: %s", ", ".join(restart))
        if not diff:
            log.info("reload: no changes")
        return {"changed": {k: (getattr(old, k), getattr(new, k)) for k in apply},
                "restart": restart}

    def _reload_files(self, config: Config) -> Config:
        # The password and ACL files are read again on every reload (their content may have
        # changed when their names did not). One that does not load leaves the current one in
        # place (one line); `config` then keeps the current name.
        ctx = self._ctx
        try:
            passwords = load_password_file(config.password_file)
        except ConfigError as exc:
            log.warning("reload failed, keeping the current password file: %s", exc)
            config = config.replace(password_file=self.config.password_file)
        else:
            ctx.auth.passwords = passwords
            if passwords is not None:
                log.info("reload: password_file %s read: %d users", config.password_file,
                         len(passwords))
        try:
            acl = load_acl_file(config.acl_file)
        except ConfigError as exc:
            log.warning("reload failed, keeping the current ACL file: %s", exc)
            return config.replace(acl_file=self.config.acl_file)
        ctx.access.acl = acl
        if acl is not None:
            log.info("reload: acl_file %s read: %d rules", config.acl_file, len(acl.rules))
        # Every session sees the new rules from now on, connected or not (an offline one
        # keeps the user name it last connected with).
        for session in self._registry.sessions.values():
            client = session.client
            username = client.username if client is not None else \
                session.access.username if session.access is not None else None
            session.access = ctx.access.for_client(session.client_id, username)
        return config

    def _apply(self, old: Config, new: Config, keys: list[str]) -> None:
        # What reading ctx.config afresh does not cover.
        self._listeners.admission.limit = new.max_connections
        if "log_level" in keys:
            logs.set_level(new.log_level)
        self._limits = timers.Limits(new.connect_timeout, new.write_timeout,
                                     new.retry_interval)
        if "sys_interval" in keys and self._running:
            for task in [t for t in self._tasks if t.get_name() == "cymqtt-sys"]:
                task.cancel()
                self._tasks.remove(task)
            if new.sys_interval > 0:
                self._tasks.append(asyncio.create_task(self._sys_forever(new.sys_interval),
                                                       name="cymqtt-sys"))

    def describe(self) -> list[str]:
        """A one-screen state report, line by line (the `cymqtt` command logs it on SIGUSR1)."""
        st = self.stats()
        try:
            loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        except RuntimeError:
            loop = "not running"
        soft, hard = open_file_limit()
        try:
            fds = str(len(os.listdir("/proc/self/fd")))
        except OSError:
            fds = "?"
        listen = ", ".join(f"{h}:{p}" for _, h, p in self._listeners.bound) or "none"
        return [
            f"cymqtt {__version__}: up {st['uptime']} s, loop {loop}, pid {os.getpid()}, "
            f"listening on {listen}",
            f"connections: {st['connections']} open ({st['clients_connected']} clients "
            f"connected), {st['connections_total']} accepted since start, "
            f"{st['connections_refused_fd_limit']} refused at the open-file limit; "
            f"open files {fds} of {soft if soft >= 0 else 'unlimited'} "
            f"(hard {hard if hard >= 0 else 'unlimited'})",
            f"sessions: {st['sessions']} ({st['clients_disconnected']} offline), "
            f"pending wills {st['pending_wills']}",
            f"subscriptions: {st['subscriptions']}, retained messages: "
            f"{st['retained_messages']}",
            f"messages: in flight {st['inflight_messages']}, queued {st['queued_messages']}, "
            f"received {st['messages_received']}, sent {st['messages_sent']}, dropped "
            f"{st['messages_dropped']} (queue full {st['messages_dropped_queue_full']}, slow "
            f"consumer {st['messages_dropped_slow_consumer']}, too large "
            f"{st['messages_dropped_too_large']})",
            f"bytes: received {st['bytes_received']}, sent {st['bytes_sent']}",
        ] + ([] if self._journal is None else [
            f"store {self._journal.store.name}: {st['store_commits']} commits, "
            f"{st['store_rows_written']} rows written, {st['store_acks_held']} "
            f"acknowledgements held ({st['store_delivered_before_commit']} deliveries "
            f"acknowledged before a commit, {st['store_in_grace']} in their grace period), "
            f"{st['store_failures']} failed commits, "
            f"{st['store_bytes']} bytes"])

    # -- the sweep -----------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(timers.SWEEP_INTERVAL)
            try:
                self._sweep(self._clock())
                if self._journal is not None:
                    self._journal.tick()
            except Exception:  # pragma: no cover - a bug, but the broker must keep serving
                log.exception("sweep failed")

    def _sweep(self, now: float) -> None:
        """Carry out every timed rule due at `now` (timers.check says which)."""
        clients = [c.protocol for c in self._listeners.connections]
        registry = self._registry
        limits = self._limits
        for kind, target in timers.check(now, clients, registry, limits):
            if kind == timers.CONNECT_TIMEOUT:
                log.info("%s: no CONNECT within %.0f s; closing", target.peer,
                         limits.connect_timeout)
                target.abort()
            elif kind == timers.KEEPALIVE_EXPIRED:
                why = f"keep alive timeout (nothing received for 1.5 x {target.keepalive} s)"
                if not target.logged:       # else its disconnect line says it
                    log.info("client %s: %s; closing", target.client_id, why)
                target.disconnect(RC_KEEP_ALIVE_TIMEOUT, "keep alive timeout", why=why)
            elif kind == timers.WRITE_STALLED:
                why = (f"write timeout (socket unwritable for {now - target.paused_since:.0f} s,"
                       f" write_timeout {limits.write_timeout:g} s)")
                if not target.logged:
                    log.info("client %s: %s; closing", target.client_id, why)
                target.abort(why)
            elif kind == timers.RETRY_DUE:
                if target.session is not None:
                    target.session.retry(limits.retry_interval, now)
            elif kind == timers.SESSION_EXPIRED:
                if registry.get(target.client_id) is target:
                    log.debug("session %s expired", target.client_id)
                    registry.end(target, now)
            elif kind == timers.WILL_DUE:
                registry.fire_will(target, now)

    async def _sys_forever(self, interval: float) -> None:
        while True:
            now = self._clock()
            for topic, value in sys_topics.topics(self.stats()).items():
                self._router.route(Message(topic, value.encode(), 0, True), now)
            await asyncio.sleep(interval)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
