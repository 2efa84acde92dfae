"""The listeners a broker accepts connections on, built from its config.

Today one TCP listener (`host`, `port`); TLS and WebSocket listeners (`[[listeners]]`) are
further `Listener` kinds here. Every accepted socket becomes a `net.Connection` driving a
`ClientProtocol`; the set of open ones is kept here for the sweep and for shutdown.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cymqtt.net.accept import AcceptServer, start_server
from cymqtt.net.connection import READ_SIZE, Connection, Endpoint, Flusher

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config
    from cymqtt.context import Context

__all__ = ["ListenerSet", "ListenerSpec"]

log = logging.getLogger("cymqtt.net")


@dataclass(frozen=True)
class ListenerSpec:
    """One listening socket: where, and what it speaks."""

    name: str
    host: str
    port: int
    protocol: str = "mqtt"


def specs_from_config(config: Config) -> list[ListenerSpec]:
    return [ListenerSpec("mqtt", config.host, config.port)]


class ListenerSet:
    """Binds every listener of the config and tracks the connections they accept."""

    def __init__(self, ctx: Context, specs: list[ListenerSpec]) -> None:
        self._ctx = ctx
        self.specs = specs
        self.connections: set[Connection] = set()
        self._servers: list[tuple[ListenerSpec, AcceptServer]] = []
        self.flusher: Flusher | None = None
        self._endpoints: dict[str, Endpoint] = {}

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind them all; raises OSError (port in use, say) with nothing left bound."""
        self.bind_loop(loop)
        try:
            for spec in self.specs:
                # Accepted by net/accept.py, not loop.create_server: the same behaviour at the
                # open-file limit on asyncio and uvloop (refused, counted, logged).
                server = await start_server(
                    loop, lambda name=spec.name: self.make_connection(name),
                    spec.host, spec.port, self._ctx.metrics, backlog=4096)
                self._servers.append((spec, server))
                log.debug("listening on %s:%d (%s)", spec.host, self._port_of(server),
                          spec.protocol)
        except BaseException:
            self.close()
            raise

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use `loop` for the coalesced writes (start() does this)."""
        self.flusher = Flusher(loop, self._ctx.metrics)
        read_buffer = memoryview(bytearray(READ_SIZE))
        self._endpoints = {spec.name: Endpoint(spec.name, self.flusher, self.connections,
                                               read_buffer)
                           for spec in self.specs}

    def make_connection(self, listener: str = "mqtt") -> Connection:
        """The asyncio protocol for one accepted socket of `listener` (after bind_loop)."""
        assert self.flusher is not None, "bind_loop() first"
        return Connection(self._ctx, self._endpoints[listener])

    @staticmethod
    def _port_of(server: AcceptServer) -> int:
        return server.sockets[0].getsockname()[1] if server.sockets else 0

    @property
    def bound(self) -> list[tuple[str, str, int]]:
        """(name, host, port) of each bound listener, with the port actually chosen."""
        return [(spec.name, spec.host, self._port_of(server)) for spec, server in self._servers]

    def close(self) -> None:
        """Stop accepting (open connections stay until the broker closes them)."""
        for _, server in self._servers:
            server.close()
        self._servers.clear()

    def flush(self) -> None:
        if self.flusher is not None:
            self.flusher.flush()
