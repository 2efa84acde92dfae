"""WebSocket and secure WebSocket listeners (`protocol = "websockets"`): MQTT over RFC 6455 with
real clients over real sockets (paho-mqtt `transport="websockets"`, MQTT.js over ws:// and
wss://) and a hand-written raw client (tests/ws_client.py) for what no library sends.

Spec references: MQTT 5.0 and 3.1.1 section 6 ("Using WebSocket as a network transport"),
RFC 6455 (the WebSocket protocol; close codes in section 7.4.1).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from _testbase import Cli, RawClient, free_port
from cymqtt._fast.codec import Connect, Disconnect, Publish, Subscribe, encode
from cymqtt.config import ConfigError, ListenerConfig, config_from_dict, load_config
from cymqtt.mosquitto_conf import load as load_conf
from cymqtt.net.websocket import FRAME_SLACK
from helpers_paho import V5, V311, PahoClient, wait_until
from ws_client import (
    BINARY, CLOSE, CONT, PING, PONG, TEXT, HandshakeRefused, RawWebSocket, frame,
)

trustme = pytest.importorskip("trustme")

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")
CONNACK, PUBLISH, PUBACK, SUBACK, DISCONNECT = 2, 3, 4, 9, 14


class Pki:
    """A CA and a server certificate for 127.0.0.1 (trustme), as PEM files."""

    def __init__(self, tmp: Path) -> None:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.ca = tmp / "ca.pem"
        self.ca.write_bytes(ca.cert_pem.bytes())
        self.cert = tmp / "server.pem"
        self.cert.write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
        self.key = tmp / "server.key"
        self.key.write_bytes(server.private_key_pem.bytes())

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def ws_listener(**kw) -> ListenerConfig:
    return ListenerConfig(0, "127.0.0.1", protocol="websockets", **kw)


@pytest.fixture
def wsb(make_broker, pki):
    """A broker with three listeners: mqtt (TCP), ws and wss; `.ports` by scheme."""
    bt = make_broker(port=0, listeners=(
        ws_listener(), ws_listener(certfile=str(pki.cert), keyfile=str(pki.key))))
    bt.ports = {info["name"].split(":")[0]: info["port"] for info in bt.broker.listeners}
    return bt


def raw_connect(port: int, client_id: str, version: int = 4, **kw) -> RawWebSocket:
    ws = RawWebSocket(port, version=version, tls=kw.pop("tls", None))
    ws.send_packet(Connect(client_id, version=version, **kw))
    ack = ws.recv_packet()
    assert ack is not None and ack.type == CONNACK and ack.reason_code == 0, ack
    return ws


def still_serving(bt) -> None:
    """A WebSocket client and a TCP client still exchange a message."""
    sub = PahoClient(bt.ports["ws"], "canary-sub", V311, transport="websockets")
    pub = PahoClient(bt.ports["mqtt"], "canary-pub", V311)
    try:
        sub.subscribe("canary", 1)
        pub.publish("canary", b"alive", qos=1)
        assert [m.payload for m in sub.wait_messages(1)] == [b"alive"]
    finally:
        sub.close()
        pub.close()


# -- listeners and config -----------------------------------------------------------------------

def test_listeners_are_named_by_scheme_and_show_their_protocol(wsb):
    """ws:PORT and wss:PORT beside mqtt:PORT; Broker.listeners says protocol and TLS."""
    by_name = {info["name"].split(":")[0]: info for info in wsb.broker.listeners}
    assert set(by_name) == {"mqtt", "ws", "wss"}
    assert (by_name["ws"]["protocol"], by_name["ws"]["tls"]) == ("websockets", False)
    assert (by_name["wss"]["protocol"], by_name["wss"]["tls"]) == ("websockets", True)
    assert by_name["mqtt"]["protocol"] == "mqtt"


def test_toml_and_mosquitto_conf_listeners(tmp_path):
    """`protocol = "websockets"` in a [[listeners]] table, and mosquitto's `protocol websockets`
    in a listener section, give the same listener (no warning); an unknown protocol is one
    error line naming the choices."""
    toml = tmp_path / "cymqtt.toml"
    toml.write_text('[[listeners]]\nport = 9001\nprotocol = "websockets"\n')
    assert load_config(str(toml)).listeners == (ListenerConfig(9001, protocol="websockets"),)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener 9001 127.0.0.1\nprotocol websockets\nallow_anonymous true\n")
    config, warnings = load_conf(str(conf))
    assert config.listeners == (ListenerConfig(9001, protocol="websockets"),)
    assert warnings == []
    with pytest.raises(ConfigError) as err:
        config_from_dict({"listeners": [{"port": 9001, "protocol": "ws"}]})
    assert err.value.errors == ["[[listeners]] #1: 'protocol' must be one of mqtt, websockets, "
                                "not 'ws'"]


def test_cymqtt_command_serves_a_mosquitto_conf_websocket_listener(tmp_path, request):
    """`cymqtt -c mosquitto.conf` with a TCP and a WebSocket listener: paho over WebSocket
    reaches a TCP subscriber."""
    tcp, ws = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {tcp} 127.0.0.1\nlistener {ws} 127.0.0.1\n"
                    "protocol websockets\nallow_anonymous true\n")
    cli = Cli(request.config.getoption("--loop"), "-c", str(conf))
    try:
        cli.wait_for(rf"listening on 127.0.0.1:{ws}\b")
        sub = PahoClient(tcp, "tcp-sub", V311)
        pub = PahoClient(ws, "ws-pub", V5, transport="websockets")
        sub.subscribe("conf/#", 1)
        pub.publish("conf/x", b"from ws", qos=1)
        assert [m.payload for m in sub.wait_messages(1)] == [b"from ws"]
        sub.close()
        pub.close()
    finally:
        assert cli.stop() == 0


# -- real clients -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [V311, V5])
def test_paho_websocket_and_tcp_clients_route_both_ways(wsb, version):
    """A paho subscriber over ws:// gets what a TCP client publishes and the other way round;
    QoS 1 and 2 complete over WebSocket [MQTT-6.0.0-2]."""
    ws_sub = PahoClient(wsb.ports["ws"], "ws-sub", version, transport="websockets")
    tcp_sub = PahoClient(wsb.ports["mqtt"], "tcp-sub", version)
    ws_pub = PahoClient(wsb.ports["ws"], "ws-pub", version, transport="websockets")
    tcp_pub = PahoClient(wsb.ports["mqtt"], "tcp-pub", version)
    try:
        ws_sub.subscribe("to/ws", 2)
        tcp_sub.subscribe("to/tcp", 2)
        tcp_pub.publish("to/ws", b"tcp->ws", qos=1)
        ws_pub.publish("to/tcp", b"ws->tcp", qos=2)
        assert [(m.payload, m.qos) for m in ws_sub.wait_messages(1)] == [(b"tcp->ws", 1)]
        assert [(m.payload, m.qos) for m in tcp_sub.wait_messages(1)] == [(b"ws->tcp", 2)]
        clients = {c["client_id"]: c for c in wsb.call(lambda: wsb.broker.clients())}
        assert clients["ws-sub"]["listener"].startswith("ws:")
        assert clients["tcp-sub"]["listener"].startswith("mqtt:")
    finally:
        for c in (ws_sub, tcp_sub, ws_pub, tcp_pub):
            c.close()


def test_paho_over_secure_websocket(wsb, pki):
    """paho with tls_set over wss://, verifying the server certificate."""
    tls = {"ca_certs": str(pki.ca)}
    sub = PahoClient(wsb.ports["wss"], "wss-sub", V5, transport="websockets", tls=tls)
    pub = PahoClient(wsb.ports["ws"], "ws-pub", V5, transport="websockets")
    try:
        sub.subscribe("secure/#", 1)
        pub.publish("secure/x", b"s" * 100_000, qos=1)
        assert [m.payload for m in sub.wait_messages(1)] == [b"s" * 100_000]
    finally:
        sub.close()
        pub.close()


@pytest.fixture(scope="module")
def node_ready():
    if NODE is None:
        pytest.skip("node is not installed: the MQTT.js tests need Node.js")
    if not (JS_DIR / "node_modules" / "mqtt" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: cannot install MQTT.js"
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"npm ci failed in {JS_DIR}:\n{done.stderr[-2000:]}"
    return NODE


@pytest.mark.parametrize("sub_scheme,pub_scheme,version", [
    ("ws", "ws", 4), ("wss", "mqtt", 5), ("mqtt", "wss", 4), ("ws", "wss", 5)])
def test_mqttjs_over_ws_and_wss(wsb, pki, node_ready, sub_scheme, pub_scheme, version):
    """MQTT.js (node) subscribes and publishes over ws:// and wss:// (path /mqtt), mixed with
    TCP: QoS 0, 1, 2 and a 200 KB message arrive intact."""
    def url(scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{wsb.ports[scheme]}" + ("/mqtt" if "ws" in scheme else "")

    done = subprocess.run(
        [node_ready, "websockets.mjs", url(sub_scheme), url(pub_scheme), str(version)],
        cwd=JS_DIR, capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "NODE_EXTRA_CA_CERTS": str(pki.ca)})
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from node (exit {done.returncode}): {done.stderr[-2000:]}"
    out = json.loads(lines[-1])
    assert out["ok"], out["error"]
    assert [(m["topic"], m["qos"], m["payload"], m["intact"]) for m in out["messages"]] == [
        ("ws/js/q0", 0, "zero", True), ("ws/js/q1", 1, "one", True),
        ("ws/js/q2", 2, "two", True), ("ws/js/big", 1, f"{200 * 1024} bytes", True)]


def test_fan_out_to_200_websocket_clients(wsb):
    """200 WebSocket subscribers each receive the one message a TCP client publishes."""
    subs = []
    try:
        for i in range(200):
            ws = raw_connect(wsb.ports["ws"], f"fan-{i}")
            ws.send_packet(Subscribe(1, [("fan/out", 0)]))
            subs.append(ws)
        for ws in subs:
            assert ws.recv_packet().type == SUBACK
        pub = RawClient(wsb.port)
        pub.send_packet(Connect("fan-pub"))
        assert pub.recv_packet().type == CONNACK
        pub.send_packet(Publish("fan/out", b"to all", 1, packet_id=1))
        assert pub.recv_packet().type == PUBACK
        got = [ws.recv_packet() for ws in subs]
        assert {(p.type, p.topic, p.payload) for p in got} == {(PUBLISH, "fan/out", b"to all")}
        pub.close()
    finally:
        for ws in subs:
            ws.close()


def bench(port: int, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "cymqtt.bench", *args, "--port", str(port),
                        "--quiet"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize("transport,qos", [("ws", 1), ("wss", 2)])
def test_bench_tool_over_websocket(wsb, pki, transport, qos):
    """`cymqtt-bench --ws` and `--wss --cafile`: every message is acked and received."""
    tls = ["--cafile", str(pki.ca)] if transport == "wss" else []
    r = bench(wsb.ports[transport], "pubsub", f"--{transport}", *tls, "--pairs", "3",
              "--qos", str(qos), "--count", "300", "-V", "5")
    assert r["transport"] == transport and r["connected"] == 6
    assert r["sent"] == r["acked"] == r["received"] == r["expected"] == 900
    assert r["errors"] == 0, r["error_detail"]


def test_bench_unframer_matches_python_websockets_frames():
    """The bench's compiled reader of the broker's frames (_wire.WsUnframer) gives back what
    python-websockets framed, over any split of the stream, and stops at a control frame."""
    import random

    from websockets.protocol import OPEN
    from websockets.server import ServerProtocol

    from cymqtt.bench._wire import WsUnframer
    rnd = random.Random(27)
    server = ServerProtocol(state=OPEN)
    payloads = [rnd.randbytes(rnd.choice([0, 1, 125, 126, 65535, 65536, 70000]))
                for _ in range(40)]
    for p in payloads:
        server.send_binary(p)
    stream = b"".join(server.data_to_send())
    for _ in range(10):
        unframer, got, i = WsUnframer(), b"", 0
        while i < len(stream):
            k = rnd.randint(1, 9000)
            data, rest = unframer.feed(stream[i:i + k])
            assert rest is None
            got, i = got + data, i + k
        assert got == b"".join(payloads)
    server.send_binary(b"abc")
    server.send_ping(b"x")
    server.send_binary(b"def")
    unframer = WsUnframer()
    assert unframer.feed(b"".join(server.data_to_send())) == (b"abc", b"\x89\x01x\x82\x03def")
    assert unframer.stopped


def test_bench_tool_says_why_a_handshake_fails(wsb):
    """--ws against a TCP listener: the connections fail, each counted with its reason."""
    r = subprocess.run([sys.executable, "-m", "cymqtt.bench", "conn", "--ws", "-c", "2",
                        "-d", "0.1", "--connect-timeout", "3", "--port", str(wsb.port),
                        "--quiet"], capture_output=True, text=True, timeout=60)
    out = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 1 and out["connected"] == 0
    assert out["error_detail"].get(
        "connection lost: closed before the WebSocket handshake completed") == 2, out


# -- framing ------------------------------------------------------------------------------------

def test_packets_split_byte_by_byte_across_frames(wsb):
    """MQTT packets need not be aligned on frame boundaries [MQTT-6.0.0-2]: CONNECT, SUBSCRIBE
    and a QoS 1 PUBLISH, one byte per frame, some as the continuation frames of one fragmented
    message, are read as if they came in one piece."""
    data = (encode(Connect("bytes"), 4) + encode(Subscribe(1, [("split/#", 1)]), 4)
            + encode(Publish("split/x", b"one byte at a time", 1, packet_id=7), 4))
    ws = RawWebSocket(wsb.ports["ws"])
    for i, b in enumerate(data):
        if i < 20:                                 # whole one-byte messages
            ws.send_frame(BINARY, bytes([b]))
        elif i == 20:                              # then one fragmented message
            ws.send_frame(BINARY, bytes([b]), fin=False)
        else:
            ws.send_frame(CONT, bytes([b]), fin=i == len(data) - 1)
    got = [ws.recv_packet() for _ in range(4)]
    assert [p.type for p in got[:2]] == [CONNACK, SUBACK]
    by_type = {p.type: p for p in got[2:]}      # its PUBACK and its delivery, in either order
    assert (by_type[PUBACK].packet_id, by_type[PUBLISH].topic, by_type[PUBLISH].payload) == (
        7, "split/x", b"one byte at a time")
    ws.close()


def test_many_packets_in_one_frame(wsb):
    """CONNECT, SUBSCRIBE and 100 QoS 1 PUBLISHes in a single frame: every ack and every
    message (delivered at QoS 0, the subscription's) comes back, in order."""
    data = encode(Connect("packed"), 4) + encode(Subscribe(1, [("packed/#", 0)]), 4) + b"".join(
        encode(Publish(f"packed/{i}", b"%d" % i, 1, packet_id=i + 1), 4) for i in range(100))
    ws = RawWebSocket(wsb.ports["ws"])
    ws.send_mqtt(data)
    got = [ws.recv_packet() for _ in range(202)]
    assert [p.type for p in got[:2]] == [CONNACK, SUBACK]
    assert [p.packet_id for p in got if p.type == PUBACK] == list(range(1, 101))
    assert [p.payload for p in got if p.type == PUBLISH] == [b"%d" % i for i in range(100)]
    ws.close()


def test_ping_is_answered_and_subprotocol_selected(wsb):
    """A ping frame gets a pong with its payload (RFC 6455 5.5.2); the broker selected the
    `mqtt` subprotocol [MQTT-6.0.0-4], and `mqttv3.1` for a client offering only that."""
    ws = raw_connect(wsb.ports["ws"], "pinger")
    assert ws.subprotocol == "mqtt"
    ws.send_frame(PING, b"are you there")
    assert ws.recv_frame() == (PONG, True, b"are you there")
    old = RawWebSocket(wsb.ports["ws"], subprotocol="mqttv3.1", version=3)
    assert old.subprotocol == "mqttv3.1"
    old.send_packet(Connect("old", version=3))
    assert old.recv_packet().type == CONNACK
    ws.close()
    old.close()


def test_client_close_frame_is_answered_and_publishes_the_will(wsb):
    """A client's close frame (no DISCONNECT) is echoed, the socket ends, and the session ends
    as for a lost connection: its will is published [MQTT-3.1.2-8]."""
    watcher = PahoClient(wsb.ports["mqtt"], "watcher", V311)
    watcher.subscribe("will/#", 0)
    ws = raw_connect(wsb.ports["ws"], "leaver", will_topic="will/leaver", will_payload=b"gone")
    ws.send_frame(CLOSE, (1000).to_bytes(2, "big") + b"bye")
    assert ws.recv_close() == (1000, "bye")
    assert ws.closed()
    assert [m.payload for m in watcher.wait_messages(1)] == [b"gone"]
    watcher.close()


def test_broker_closes_with_1000_after_refusing_connect(make_broker):
    """A listener at its max_connections refuses the next client with CONNACK 0x97 (MQTT 5),
    then a close frame 1000: the same limits as TCP."""
    bt = make_broker(port=None, listeners=(ws_listener(max_connections=1),))
    port = bt.broker.listeners[0]["port"]
    first = raw_connect(port, "first", version=5)
    second = RawWebSocket(port, version=5)
    second.send_packet(Connect("second", version=5))
    ack = second.recv_packet()
    assert (ack.type, ack.reason_code) == (CONNACK, 0x97)
    assert second.recv_close()[0] == 1000
    assert second.closed()
    first.close()


def test_keep_alive_applies_to_websocket_clients(wsb):
    """A WebSocket client silent past 1.5 x its keep alive is disconnected (MQTT 5: DISCONNECT
    0x8D, then close 1000), pings or not [MQTT-3.1.2-24]."""
    ws = raw_connect(wsb.ports["ws"], "sleepy", version=5, keepalive=10)
    ws.send_frame(PING, b"")                      # WebSocket pings are not MQTT activity
    assert ws.recv_frame()[0] == PONG
    wsb.clock.advance(16)
    wsb.sweep()
    pkt = ws.recv_packet()
    assert (pkt.type, pkt.reason_code) == (DISCONNECT, 0x8D)
    assert ws.recv_close()[0] == 1000
    ws.close()


def test_a_websocket_subscriber_that_stops_reading_is_pushed_back_then_dropped(make_broker):
    """Back-pressure as for TCP: a WebSocket subscriber that never reads fills its socket, the
    broker's transport pushes back (the session is unwritable), and after write_timeout the
    client is disconnected; the TCP publisher flooding it is still served."""
    bt = make_broker(port=0, listeners=(ws_listener(),), write_timeout=5.0)
    ws_port = bt.broker.listeners[1]["port"]
    stalled = RawWebSocket(ws_port, rcvbuf=4096)
    stalled.send_packet(Connect("stalled"))
    stalled.send_packet(Subscribe(1, [("flood/t", 0)]))
    assert [stalled.recv_packet().type for _ in range(2)] == [CONNACK, SUBACK]
    pub = RawClient(bt.port)
    pub.send_packet(Connect("flooder"))
    assert pub.recv_packet().type == CONNACK
    batch = b"".join(encode(Publish("flood/t", bytes(8192)), 4) for _ in range(20))

    def stalled_state():
        s = bt.broker.session("stalled")
        return None if s is None or s.client is None else (s.client.tx_paused,
                                                             s.client.writable)
    sent = 0
    while bt.call(stalled_state) != (True, False):
        assert sent < 4000, "the stalled subscriber's socket never filled up"
        pub.send(batch)
        sent += 20
    bt.clock.advance(6.0)
    bt.sweep()
    assert bt.call(lambda: bt.broker.session("stalled")) is None
    assert stalled.closed(10)
    pub.send(b"\xc0\x00")                        # PINGREQ
    assert pub.recv_packet().type == 13              # PINGRESP
    pub.close()


def test_connection_messages_name_websocket_endings(wsb, caplog):
    """The connection log lines a TCP client gets, with the WebSocket reason: the client's
    close frame, and a text frame the broker refused."""
    caplog.set_level(logging.INFO, logger="cymqtt")

    def line(pattern: str) -> None:
        rx = re.compile(pattern)
        wait_until(lambda: any(rx.fullmatch(r.getMessage()) for r in caplog.records), 5,
                   what=f"a log line {pattern!r}")
    polite = raw_connect(wsb.ports["ws"], "polite")
    line(r"New client connected from 127\.0\.0\.1:\d+ as polite \(p2, c1, k60\)")
    polite.send_frame(CLOSE, (1001).to_bytes(2, "big"))
    line(r"Client polite closed its connection \(WebSocket close 1001\)")
    rude = raw_connect(wsb.ports["ws"], "rude")
    rude.send_frame(TEXT, b"{}")
    line(r"Client rude disconnected: WebSocket close 1003 \(MQTT over WebSocket takes binary "
         r"frames only \[MQTT-6\.0\.0-1\]\)")
    polite.close()
    rude.close()


# -- what is refused ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw,status,why", [
    ({"subprotocol": None}, 400, b"missing subprotocol"),
    ({"subprotocol": "chat"}, 400, b"invalid subprotocol"),
    ({"upgrade": False}, 426, b"Connection"),
    ({"version": "8"}, 400, b"Sec-WebSocket-Version"),
], ids=["no-subprotocol", "other-subprotocol", "not-websocket", "wrong-version"])
def test_bad_handshakes_get_an_http_error(wsb, kw, status, why):
    """A handshake the broker cannot take gets an HTTP error naming the reason, then the
    socket closes; other clients are not affected [MQTT-6.0.0-3]."""
    ws = RawWebSocket(wsb.ports["ws"], connect=False)
    with pytest.raises(HandshakeRefused) as refused:
        ws.handshake(**kw)
    assert refused.value.status == status
    assert why in refused.value.response
    ws.close()
    still_serving(wsb)


def test_mqtt_bytes_on_a_websocket_port_are_dropped(wsb):
    """Raw MQTT (no HTTP upgrade) on a WebSocket listener: the socket is closed, nothing is
    answered."""
    raw = RawClient(wsb.ports["ws"])
    raw.send_packet(Connect("lost"))
    assert raw.closed()
    assert raw.pending == []
    still_serving(wsb)


@pytest.mark.parametrize("case,code", [
    ("text", 1003), ("oversized", 1009), ("unmasked", 1002)])
def test_bad_frames_are_closed_with_their_code(wsb, case, code):
    """A text frame (1003 unsupported data [MQTT-6.0.0-1]), a frame larger than
    max_packet_size + FRAME_SLACK (1009, refused from its header), an unmasked frame (1002,
    RFC 6455 5.1): a close frame with that code, the socket closed, everyone else served."""
    ws = raw_connect(wsb.ports["ws"], f"bad-{case}")
    if case == "text":
        ws.send_frame(TEXT, b"hello")
    elif case == "oversized":
        limit = wsb.broker.config.max_packet_size + FRAME_SLACK
        ws.send(frame(BINARY, b"", length=limit + 1))
    else:
        ws.send_frame(BINARY, encode(Disconnect(), 4), mask=False)
    assert ws.recv_close()[0] == code
    assert ws.closed()
    still_serving(wsb)


def test_largest_frame_is_taken(wsb):
    """A frame of up to max_packet_size + FRAME_SLACK bytes is read: a packet of the largest
    size the broker takes, plus small ones packed with it."""
    limit = wsb.broker.config.max_packet_size + FRAME_SLACK
    ws = raw_connect(wsb.ports["ws"], "big-frame")
    data = encode(Publish("big/x", bytes(wsb.broker.config.max_packet_size - 100), 1,
                          packet_id=1), 4)
    while limit - len(data) > 5000:
        data += encode(Publish("big/pad", bytes(4000)), 4)
    data += encode(Publish("big/pad", bytes(limit - len(data) - 20)), 4)
    assert limit - 20 <= len(data) <= limit
    ws.send_mqtt(data)
    assert ws.recv_packet().type == PUBACK
    ws.close()
