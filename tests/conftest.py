"""Shared fixtures: a real broker on a real socket, run on its own event loop in a thread.

`broker` starts one with the test's overrides (`@pytest.mark.broker_config(max_queued=5)`) on a
free port; tests talk to it with real clients (paho-mqtt, mosquitto_pub/sub, raw sockets) and
may read its state through `BrokerThread.call(fn)`, which runs `fn` on the broker's loop.
`BrokerThread` and `RawClient` live in _testbase.py; test modules import them from there.
The loop is asyncio or uvloop (`--loop=uvloop`, or CYMQTT_TEST_LOOP=uvloop).
"""
from __future__ import annotations

import os
from typing import Any

import pytest

from _testbase import BrokerThread, RawClient


def pytest_addoption(parser):
    parser.addoption("--loop", default=os.environ.get("CYMQTT_TEST_LOOP", "asyncio"),
                     choices=["asyncio", "uvloop"], help="event loop the test broker runs on")


def pytest_configure(config):
    config.addinivalue_line("markers", "broker_config(**kw): Config overrides for `broker`")


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
def paho(broker):
    """paho(client_id, protocol) -> a connected helpers_paho.PahoClient; all closed at teardown."""
    from helpers_paho import ClientPool

    pool = ClientPool(broker.port)
    yield pool
    pool.close_all()
