"""Shared fixtures: a real broker on a real socket, run on its own event loop in a thread.

`broker` starts one with the test's overrides (`@pytest.mark.broker_config(max_queued=5)`) on a
free port; tests talk to it with real clients (paho-mqtt, mosquitto_pub/sub, raw sockets) and
may read its state through `BrokerThread.call(fn)`, which runs `fn` on the broker's loop.
`BrokerThread` and `RawClient` live in _testbase.py; test modules import them from there.
The loop is asyncio or uvloop (`--loop=uvloop`, or CYMQTT_TEST_LOOP=uvloop).
`workers` (helpers_workers.py) starts the real `cymqtt --workers N` command.
"""
from __future__ import annotations

import os
from typing import Any

import pytest

from _testbase import BrokerThread, RawClient
from helpers_workers import workers  # noqa: F401 (the fixture of test_32 and test_35)
from cymqtt._fast.codec import Connect


def pytest_addoption(parser):
    parser.addoption("--loop", default=os.environ.get("CYMQTT_TEST_LOOP", "asyncio"),
                     choices=["asyncio", "uvloop"], help="event loop the test broker runs on")


def pytest_configure(config):
    config.addinivalue_line("markers", "broker_config(**kw): Config overrides for `broker`")


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    """Each test runs in an empty directory of its own, so the `cymqtt` commands it starts
    keep their data (./cymqtt-data, persistence being on for the command) apart from every
    other test's and out of the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


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
def raw():
    """raw(port, client_id, properties=..., expect=0) -> a RawClient past its MQTT 5 CONNACK
    (`.connack`); expect=None accepts any CONNACK."""
    made: list[RawClient] = []

    def make(port: int, client_id: str, properties: dict | None = None, *,
             clean_start: bool = True, keepalive: int = 60, expect: int | None = 0,
             **connect_kw) -> RawClient:
        c = RawClient(port, 5)
        made.append(c)
        c.send_packet(Connect(client_id, version=5, clean_start=clean_start,
                              keepalive=keepalive, properties=properties, **connect_kw))
        ack = c.recv_packet()
        assert ack is not None and ack.name == "CONNACK", f"expected CONNACK, got {ack!r}"
        if expect is not None:
            assert ack.reason_code == expect, f"CONNACK reason 0x{ack.reason_code:02X}"
        c.connack = ack
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def paho(broker):
    """paho(client_id, protocol) -> a connected helpers_paho.PahoClient; all closed at teardown."""
    from helpers_paho import ClientPool

    pool = ClientPool(broker.port)
    yield pool
    pool.close_all()
