"""The listeners a broker accepts connections on, built from its config.

The top-level `host`/`port` and each `[[listeners]]` table: MQTT over plain TCP, or over TLS
(stdlib `ssl`, which asyncio and uvloop both drive) with optional client certificates (mTLS);
with `protocol = "websockets"`, MQTT over WebSocket on either (net/websocket.py). Listener
names say which: "mqtt:1883", "mqtts:8883", "ws:8080", "wss:8081". Every accepted socket
becomes a `net.Connection` (a `WebSocketConnection` on a WebSocket listener) driving a
`ClientProtocol`; the set of open ones is kept here for the sweep and for shutdown, and the
connection counts `max_connections` limits. On Linux, plain-TCP sockets (MQTT and WebSocket)
get the broker's own transport, a `Stream` of one epoll `Reactor` per loop (net/_stream.pyx:
about 170 bytes per connection where a uvloop transport takes 1.3 KB); TLS sockets, and every
socket elsewhere, get the loop's.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cymqtt.config import ConfigError, ListenerConfig
from cymqtt.net import _stream
from cymqtt.net.accept import AcceptServer, start_server
from cymqtt.net.connection import LINGER, READ_SIZE, Admission, Connection, Endpoint, Flusher
from cymqtt.net.websocket import WebSocketConnection

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config
    from cymqtt.context import Context

__all__ = ["NO_REUSE_PORT", "ListenerSet", "ListenerSpec", "specs_from_config", "tls_context"]

log = logging.getLogger("cymqtt.net")

# A listener's `protocol` -> the asyncio protocol class of its connections, and its names'
# scheme (plain, TLS).
CONNECTION_TYPES: dict[str, type[Connection]] = {"mqtt": Connection,
                                                  "websockets": WebSocketConnection}
SCHEMES = {"mqtt": ("mqtt", "mqtts"), "websockets": ("ws", "wss")}

NO_REUSE_PORT = ("workers > 1 needs SO_REUSEPORT (processes sharing a port), which this "
                 "platform does not have; run one process (workers = 1)")


@dataclass(frozen=True)
class ListenerSpec:
    """One listening socket: where, what it speaks, its TLS context (None: plain TCP), and
    whether other processes share its port (SO_REUSEPORT)."""

    name: str
    config: ListenerConfig
    ssl: ssl.SSLContext | None = None
    reuse_port: bool = False

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        return self.config.port


def specs_from_config(config: Config) -> list[ListenerSpec]:
    """Every listener of `config`, TLS contexts loaded, shared (SO_REUSEPORT) with the other
    workers when `config.workers` > 1. Raises ConfigError naming the listener and the file when
    a certificate or key cannot be used, or when the platform cannot share ports."""
    reuse_port = config.workers > 1
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(NO_REUSE_PORT)
    listeners = list(config.listeners)
    if config.port is not None:
        listeners.insert(0, ListenerConfig(config.port, config.host))
    specs = []
    names: set[str] = set()
    for lc in listeners:
        name = f"{SCHEMES[lc.protocol][lc.tls]}:{lc.port}"
        if name in names:
            name = f"{name}@{lc.host}"
        names.add(name)
        specs.append(ListenerSpec(name, lc, tls_context(lc, name) if lc.tls else None,
                                  reuse_port))
    return specs


def tls_context(lc: ListenerConfig, name: str) -> ssl.SSLContext:
    """The server-side TLS context of a listener: its certificate chain and key, the CA for
    client certificates (required or optional), the minimum version and ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if lc.tls_version == "tlsv1.3" \
        else ssl.TLSVersion.TLSv1_2
    for key in ("certfile", "keyfile", "cafile"):
        path = getattr(lc, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"listener {name}: cannot read {key} {path}: "
                              f"{exc.strerror}") from None
    try:
        ctx.load_cert_chain(lc.certfile, lc.keyfile)
    except ssl.SSLError as exc:
        raise ConfigError(f"listener {name}: certfile {lc.certfile} and keyfile {lc.keyfile} "
                          f"are not a PEM certificate and its private key "
                          f"({exc.reason or exc})") from None
    if lc.cafile is not None:
        try:
            ctx.load_verify_locations(cafile=lc.cafile)
        except ssl.SSLError as exc:
            raise ConfigError(f"listener {name}: cafile {lc.cafile} holds no usable PEM CA "
                              f"certificate ({exc.reason or exc})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if lc.require_certificate else ssl.CERT_OPTIONAL
    if lc.ciphers is not None:
        try:
            ctx.set_ciphers(lc.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"listener {name}: ciphers {lc.ciphers!r} selects no cipher "
                              "OpenSSL knows") from None
    return ctx


class ListenerSet:
    """Binds every listener of the config and tracks the connections they accept."""

    def __init__(self, ctx: Context, specs: list[ListenerSpec]) -> None:
        self._ctx = ctx
        self.specs = specs
        self.connections: set[Connection] = set()
        self._servers: list[tuple[ListenerSpec, AcceptServer]] = []
        self.flusher: Flusher | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self.admission = Admission(ctx.config.max_connections)
        self.reactor: _stream.Reactor | None = None

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind them all; raises OSError (port in use, say) with nothing left bound."""
        self.bind_loop(loop)
        try:
            for spec in self.specs:
                # Accepted by net/accept.py, not loop.create_server: the same behaviour at the
                # open-file limit on asyncio and uvloop (refused, counted, logged).
                server = await start_server(
                    loop, lambda name=spec.name: self.make_connection(name),
                    spec.host, spec.port, self._ctx.metrics, backlog=4096, ssl=spec.ssl,
                    reuse_port=spec.reuse_port, reactor=self.reactor)
                self._servers.append((spec, server))
        except BaseException:
            self.close()
            self.release()
            raise

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` for the coalesced writes (start() does this)."""
        self.flusher = Flusher(loop, self._ctx.metrics)
        if _stream.AVAILABLE:
            self.release()
            self.reactor = _stream.Reactor(loop, read_size=READ_SIZE)
        read_buffer = memoryview(bytearray(READ_SIZE))
        self._endpoints = {spec.name: Endpoint(spec.name, self.flusher, self.connections,
                                               read_buffer, spec.config, self.admission)
                           for spec in self.specs}

    def make_connection(self, listener: str | None = None) -> Connection:
        """The asyncio protocol for one accepted socket of `listener` (the first one by
        default; after bind_loop)."""
        assert self.flusher is not None, "bind_loop() first"
        endpoint = self._endpoints[listener or self.specs[0].name]
        protocol = endpoint.config.protocol if endpoint.config is not None else "mqtt"
        return CONNECTION_TYPES[protocol](self._ctx, endpoint)

    @staticmethod
    def _port_of(server: AcceptServer) -> int:
        return server.sockets[0].getsockname()[1] if server.sockets else 0

    @property
    def bound(self) -> list[tuple[str, str, int]]:
        """(name, host, port) of each bound listener, with the port actually chosen."""
        return [(spec.name, spec.host, self._port_of(server)) for spec, server in self._servers]

    def describe(self) -> list[dict]:
        """Each bound listener: name, host, port, protocol, tls, mtls, connected clients and
        its max_connections (for logs, $SYS and the HTTP API)."""
        out = []
        for spec, server in self._servers:
            lc = spec.config
            out.append({"name": spec.name, "host": lc.host, "port": self._port_of(server),
                        "protocol": lc.protocol, "tls": spec.ssl is not None,
                        "mtls": lc.require_certificate,
                        "clients": self._endpoints[spec.name].active,
                        "max_connections": lc.max_connections})
        return out

    def close(self) -> None:
        """Stop accepting (open connections stay until the broker closes them)."""
        for _, server in self._servers:
            server.close()
        self._servers.clear()

    def release(self, delay: float = 0.0) -> None:
        """Close the reactor after `delay` seconds (those still open then are aborted): after
        close(), once the connections had LINGER seconds to end."""
        reactor, self.reactor = self.reactor, None
        if reactor is not None:
            if delay > 0:
                reactor.loop.call_later(delay, reactor.close)
            else:
                reactor.close()

    def release_later(self) -> None:
        """release() once the connections closed now had their LINGER seconds."""
        self.release(LINGER + 0.5)

    def flush(self) -> None:
        if self.flusher is not None:
            self.flusher.flush()
