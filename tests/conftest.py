"""Shared fixtures: a real broker on a real socket, run on its own event loop in a thread.

`broker` starts one with the test's overrides (`@pytest.mark.broker_config(max_queued=5)`) on a
free port; tests talk to it with real clients (paho-mqtt, mosquitto_pub/sub, raw sockets) and
may read its state through `BrokerThread.call(fn)`, which runs `fn` on the broker's loop.
The loop is asyncio or uvloop (`--loop=uvloop`, or CYMQTT_TEST_LOOP=uvloop).
"""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import pytest

from cymqtt._fast.codec import FrameParser, encode


def pytest_addoption(parser):
    parser.addoption("--loop", default=os.environ.get("CYMQTT_TEST_LOOP", "asyncio"),
                     choices=["asyncio", "uvloop"], help="event loop the test broker runs on")


def pytest_configure(config):
    config.addinivalue_line("markers", "broker_config(**kw): Config overrides for `broker`")


class BrokerThread:
    """A Broker running on its own loop in a daemon thread."""

    def __init__(self, loop_kind: str = "asyncio", **overrides: Any) -> None:
        from cymqtt.broker import Broker

        overrides.setdefault("port", 0)
        overrides.setdefault("host", "127.0.0.1")
        overrides.setdefault("sys_interval", 0)
        self.broker = Broker(**overrides)
        if loop_kind == "uvloop":
            import uvloop
            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="cymqtt-test-broker")
        self._thread.start()
        self.run(self.broker.start())
        self.host = "127.0.0.1"
        self.port = self.broker.port

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        fut: Future = Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # pragma: no cover - reported to the test
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout)

    def sweep(self, advance: float = 0.0) -> None:
        """Run the broker's timed rules as if `advance` seconds had passed."""
        self.call(lambda: self.broker.sweep(self.broker.now() + advance))

    def stop(self) -> None:
        try:
            self.run(self.broker.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


@pytest.fixture
def broker(request):
    marker = request.node.get_closest_marker("broker_config")
    overrides = dict(marker.kwargs) if marker else {}
    bt = BrokerThread(request.config.getoption("--loop"), **overrides)
    yield bt
    bt.stop()


@pytest.fixture
def make_broker(request):
    """Start extra brokers with explicit overrides: make_broker(max_queued=3)."""
    started: list[BrokerThread] = []

    def make(**overrides: Any) -> BrokerThread:
        bt = BrokerThread(request.config.getoption("--loop"), **overrides)
        started.append(bt)
        return bt

    yield make
    for bt in started:
        bt.stop()


class RawClient:
    """A socket speaking MQTT bytes, for byte-exact and hostile-input tests."""

    def __init__(self, port: int, version: int = 4, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.parser = FrameParser(version)
        self.pending: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_packet(self, packet) -> None:
        self.send(encode(packet, self.parser.version))

    def recv_packet(self, timeout: float = 5.0):
        """The next packet; None when the broker closed the connection."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet from the broker")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.pending.extend(self.parser.feed(data))
            assert self.parser.error is None, self.parser.error
        return self.pending.pop(0)

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the broker closes the socket within `timeout` (packets are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.pending.extend(self.parser.feed(data))
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client(broker):
    clients: list[RawClient] = []

    def make(version: int = 4) -> RawClient:
        c = RawClient(broker.port, version)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def paho(broker):
    """paho(client_id, protocol) -> a connected helpers_paho.PahoClient; all closed at teardown."""
    from helpers_paho import ClientPool

    pool = ClientPool(broker.port)
    yield pool
    pool.close_all()
