"""Connection messages (`connection_messages`, mosquitto's lines) and `max_keepalive`
(mosquitto's cap), GitHub issue 15. Real brokers on real sockets (the `make_broker` fixture, on
the run's loop), real clients (paho-mqtt 2, raw sockets); log lines read with caplog.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import time

import pytest

from _testbase import RawClient
from cymqtt._fast.codec import Connect
from helpers_paho import V5, V311, PahoClient, wait_until

NEW = r"New client connected from 127\.0\.0\.1:\d+ as "


@pytest.fixture
def lines(caplog):
    """The messages of cymqtt.connections so far (a function)."""
    caplog.set_level(logging.INFO, logger="cymqtt")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "cymqtt.connections"]


def wait_line(lines, pattern: str) -> str:
    rx = re.compile(pattern)
    return wait_until(lambda: next((ln for ln in lines() if rx.fullmatch(ln)), None), 5,
                      what=f"a log line matching {pattern!r} (got {lines()})")


def raw_connect(port: int, client_id: str, version: int = 4, keepalive: int = 60,
                clean: bool = True, **kw) -> tuple[RawClient, int]:
    c = RawClient(port, version)
    c.send_packet(Connect(client_id, version=version, keepalive=keepalive, clean_start=clean,
                          **kw))
    ack = c.recv_packet()
    assert ack is not None and ack.name == "CONNACK"
    return c, ack.reason_code


# -- connection messages -------------------------------------------------------------------------

def test_connect_and_disconnect_lines_name_the_client_and_why(make_broker, lines):
    """One line per connect, mosquitto's format (p = protocol, c = clean start, e = session
    expiry, k = keep alive, u = user name), and one per disconnect with the reason."""
    bt = make_broker(max_keepalive=60)
    # MQTT 5, user name, DISCONNECT with a reason code.
    a = PahoClient(bt.port, "alice-5", V5, keepalive=30, username="alice", password="pw")
    wait_line(lines, NEW + r"alice-5 \(p5, c1, k30, u'alice'\)")
    a.client.disconnect()
    wait_line(lines, r"Client alice-5 disconnected \(0x00 normal disconnection\)")
    a.close()
    # MQTT 3.1.1 persistent session, closed without DISCONNECT.
    r, rc = raw_connect(bt.port, "raw-311", clean=False)
    assert rc == 0
    wait_line(lines, NEW + r"raw-311 \(p2, c0, e7200, k60\)")
    r.close()
    wait_line(lines, r"Client raw-311 closed its connection")
    # MQTT 3.1, DISCONNECT.
    r, _ = raw_connect(bt.port, "raw-31", version=3, keepalive=10)
    wait_line(lines, NEW + r"raw-31 \(p1, c1, k10\)")
    r.send(b"\xe0\x00")
    wait_line(lines, r"Client raw-31 disconnected")
    r.close()


def test_disconnect_reasons_takeover_protocol_error_keepalive_socket_error_shutdown(
        make_broker, lines):
    bt = make_broker()
    old, _ = raw_connect(bt.port, "twice")
    new, _ = raw_connect(bt.port, "twice")
    wait_line(lines, r"Client twice disconnected: session taken over by a newer connection")
    new.close()
    old.close()

    bad, _ = raw_connect(bt.port, "bad-5", version=5)
    bad.send(b"\x30\x00")                  # a PUBLISH without its topic
    wait_line(lines, r"Client bad-5 disconnected: .* \(0x81 malformed packet\)")
    bad.close()

    ka, _ = raw_connect(bt.port, "sleepy", keepalive=2)
    bt.clock.advance(3.5)
    bt.sweep()
    wait_line(lines, r"Client sleepy disconnected: keep alive timeout \(nothing received for "
                     r"1\.5 x 2 s\)")
    ka.close()

    rst, _ = raw_connect(bt.port, "reset")
    rst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rst.sock.close()                       # RST, not FIN
    wait_line(lines, r"Client reset disconnected: socket error: .*(reset|104).*")

    last, _ = raw_connect(bt.port, "at-shutdown", version=5)
    bt.run(bt.broker.stop())
    wait_line(lines, r"Client at-shutdown disconnected: broker shutting down")
    last.close()


def test_connection_messages_off(make_broker, lines):
    bt = make_broker(connection_messages=False)
    c, _ = raw_connect(bt.port, "quiet")
    c.close()
    p = PahoClient(bt.port, "quiet-5", V5)
    p.close()
    time.sleep(0.2)
    assert lines() == []


# -- max_keepalive -------------------------------------------------------------------------------

@pytest.mark.parametrize("asked,given", [(120, 60), (5, None), (0, 60), (60, None)])
def test_max_keepalive_caps_mqtt5_clients(make_broker, asked, given):
    """max_keepalive = 60: a client asking for more, or for none (0), is told 60 (CONNACK
    server keep alive) and held to it; one asking for less keeps its own (no property)."""
    bt = make_broker(max_keepalive=60)
    c = PahoClient(bt.port, f"ka-{asked}", V5, keepalive=asked)
    try:
        assert c.connack_properties.get("ServerKeepAlive") == given
        info = bt.call(lambda: bt.broker.client(f"ka-{asked}"))
        assert info["keepalive"] == (given or asked)
    finally:
        c.close()


def test_max_keepalive_refuses_mqtt3_clients_asking_for_more_or_none(make_broker):
    """MQTT 3.x has no server keep alive: as mosquitto >= 2.0.12, a client asking for more
    than max_keepalive, or for 0, is refused with CONNACK 2 (identifier rejected)."""
    bt = make_broker(max_keepalive=60)
    for asked in (61, 0):
        c, rc = raw_connect(bt.port, f"v3-{asked}", keepalive=asked)
        assert rc == 2
        assert c.closed()
        c.close()
    c = PahoClient(bt.port, "v3-ok", V311, keepalive=60)
    assert c.connack_rc == 0
    c.close()


def test_default_max_keepalive_caps_nothing_and_server_keep_alive_still_wins(make_broker):
    bt = make_broker()
    c, rc = raw_connect(bt.port, "v3-none", keepalive=0)
    assert rc == 0
    c.close()
    c = PahoClient(bt.port, "v5-long", V5, keepalive=3600)
    assert "ServerKeepAlive" not in c.connack_properties
    c.close()
    bt2 = make_broker(server_keep_alive=20, max_keepalive=60)
    c = PahoClient(bt2.port, "imposed", V5, keepalive=5)
    assert c.connack_properties.get("ServerKeepAlive") == 20
    c.close()


def test_capped_keepalive_is_enforced(make_broker):
    """A client that asked for 0 (none) under max_keepalive = 2 is disconnected after
    1.5 x 2 s of silence (MQTT 5: DISCONNECT 0x8D)."""
    bt = make_broker(max_keepalive=2)
    c, rc = raw_connect(bt.port, "silent", version=5, keepalive=0)
    assert rc == 0
    bt.clock.advance(3.5)
    bt.sweep()
    p = c.recv_packet()
    assert p is not None and p.name == "DISCONNECT" and p.reason_code == 0x8D
    c.close()
