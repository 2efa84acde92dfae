"""Small helpers around paho-mqtt 2.x for black-box broker tests.

`PahoClient` wraps one paho client running its network loop in a thread (`loop_start`). It
records every message it receives in a thread-safe list, the CONNACK it got and the DISCONNECT
(or socket close) that ended it, and offers blocking calls that wait with a deadline:

    c = PahoClient(port, "sub", protocol=V5)          # connects and waits for CONNACK
    c.subscribe("a/#", qos=1)                          # waits for SUBACK
    PahoClient(port, "pub", protocol=V311).publish("a/b", b"x", qos=1)   # waits for PUBACK
    msgs = c.wait_messages(1)                          # polls until 1 message, or fails

`wait_until(pred)` polls any condition with a deadline. Nothing here sleeps for a fixed time
beyond its polling interval, and nothing here knows the broker under test.
"""
from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["V31", "V311", "V5", "Received", "PahoClient", "ClientPool", "wait_until",
           "props"]

V31 = mqtt.MQTTv31
V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5

DEFAULT_TIMEOUT = 5.0


def wait_until(pred: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT,
               interval: float = 0.01, what: str = "condition") -> Any:
    """Poll `pred` until it returns something truthy (returned) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def props(packet_type: int, **values: Any) -> Properties:
    """paho MQTT 5 properties: props(PacketTypes.CONNECT, SessionExpiryInterval=60)."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


@dataclass
class Received:
    """One message as a client received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False
    properties: dict = field(default_factory=dict)


def _props_dict(p: Properties | None) -> dict:
    if p is None:
        return {}
    try:
        return dict(p.json())
    except Exception:  # pragma: no cover - paho versions differ
        return {}


class PahoClient:
    """One paho client (MQTT 3.1, 3.1.1 or 5) with its loop in a background thread.

    :param port: broker port on `host`.
    :param client_id: "" lets the broker assign one (MQTT 5, or 3.1.1 with clean session).
    :param protocol: V31, V311 or V5.
    :param clean: clean session (3.x) or clean start (5).
    :param session_expiry: MQTT 5 session expiry interval for CONNECT (None: not sent).
    :param will: dict(topic=..., payload=..., qos=0, retain=False, properties=None).
    :param connect: connect now and wait for CONNACK (else call `connect()` later).
    :param expect_rc: fail unless CONNACK carries this code (None: accept anything).
    :param tls: arguments of paho's `tls_set` (ca_certs, certfile, keyfile): connect over TLS.
    :param transport: "tcp", or "websockets" (MQTT over WebSocket, path /mqtt).
    """

    def __init__(self, port: int, client_id: str = "", protocol: int = V5, *,
                 clean: bool = True, session_expiry: int | None = None, keepalive: int = 60,
                 will: dict | None = None, username: str | None = None,
                 password: str | None = None, host: str = "127.0.0.1",
                 connect_properties: Properties | None = None, connect: bool = True,
                 expect_rc: int | None = 0, timeout: float = DEFAULT_TIMEOUT,
                 tls: dict | None = None, transport: str = "tcp") -> None:
        self.port = port
        self.host = host
        self.protocol = protocol
        self.clean = clean
        self.keepalive = keepalive
        self.timeout = timeout
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._acked = threading.Condition()
        self._subacks: dict[int, list[int]] = {}
        self.connack_event = threading.Event()
        self.connack_rc: int | None = None
        self.session_present: bool | None = None
        self.connack_properties: dict = {}
        self.disconnected = threading.Event()
        self.disconnect_rc: int | None = None
        self.disconnect_properties: dict = {}
        kwargs: dict[str, Any] = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                      client_id=client_id, protocol=protocol,
                                      reconnect_on_failure=False, transport=transport)
        if protocol != V5:
            kwargs["clean_session"] = clean
        self.client = c = mqtt.Client(**kwargs)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        if tls is not None:
            c.tls_set(**tls)          # ca_certs=..., certfile=..., keyfile=...
        if username is not None:
            c.username_pw_set(username, password)
        if will is not None:
            c.will_set(will["topic"], will.get("payload", b""), will.get("qos", 0),
                       will.get("retain", False), will.get("properties"))
        self._connect_properties = connect_properties
        if session_expiry is not None:
            if self._connect_properties is None:
                self._connect_properties = Properties(PacketTypes.CONNECT)
            self._connect_properties.SessionExpiryInterval = session_expiry
        self._started = False
        if connect:
            self.connect(expect_rc=expect_rc)

    # -- callbacks (paho's thread) --------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack_rc = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self.session_present = bool(flags.session_present)
        self.connack_properties = _props_dict(properties)
        self.connack_event.set()

    def _on_message(self, client, userdata, msg) -> None:
        r = Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup),
                     _props_dict(getattr(msg, "properties", None)))
        with self._lock:
            self._messages.append(r)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnect_rc = reason_code.value if hasattr(reason_code, "value") else int(
            reason_code)
        self.disconnect_properties = _props_dict(properties)
        self.disconnected.set()

    # -- actions ----------------------------------------------------------------------------------

    def connect(self, expect_rc: int | None = 0) -> int:
        """Connect, wait for CONNACK and return its reason code."""
        kwargs: dict[str, Any] = dict(keepalive=self.keepalive)
        if self.protocol == V5:
            kwargs["clean_start"] = self.clean
            if self._connect_properties is not None:
                kwargs["properties"] = self._connect_properties
        self.client.connect(self.host, self.port, **kwargs)
        self.client.loop_start()
        self._started = True
        if not self.connack_event.wait(self.timeout):
            raise AssertionError(f"no CONNACK within {self.timeout} s")
        assert self.connack_rc is not None
        if expect_rc is not None:
            assert self.connack_rc == expect_rc, f"CONNACK reason {self.connack_rc:#x}"
        return self.connack_rc

    @property
    def client_id(self) -> str:
        cid = self.client._client_id
        return cid.decode() if isinstance(cid, bytes) else cid

    def subscribe(self, topic: str, qos: int = 0, *, options: Any = None,
                  properties: Properties | None = None) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted QoS / reason codes."""
        if self.protocol == V5 and options is not None:
            rc, mid = self.client.subscribe(topic, options=options, properties=properties)
        elif self.protocol == V5:
            rc, mid = self.client.subscribe(topic, qos, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed: {rc}"
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._subacks, self.timeout):
                raise AssertionError(f"no SUBACK for {topic!r} within {self.timeout} s")
            return self._subacks.pop(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        codes = [rc.value if hasattr(rc, "value") else int(rc) for rc in reason_codes]
        with self._acked:
            self._subacks[mid] = codes
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, properties: Properties | None = None,
                wait: bool = True) -> mqtt.MQTTMessageInfo:
        """Publish; with `wait`, return once the flow is complete (sent / PUBACK / PUBCOMP)."""
        info = self.client.publish(topic, payload, qos, retain, properties)
        if wait:
            info.wait_for_publish(self.timeout)
            assert info.is_published(), f"PUBLISH to {topic!r} not completed"
        return info

    def disconnect(self, reasoncode: Any = None, properties: Properties | None = None) -> None:
        """A normal DISCONNECT, then stop the loop."""
        self.client.disconnect(reasoncode, properties)
        self.disconnected.wait(self.timeout)
        self.client.loop_stop()
        self._started = False

    def drop(self) -> None:
        """Close the socket without DISCONNECT (as if the client crashed or the network died)."""
        sock = self.client.socket()
        if sock is not None:
            sock = getattr(sock, "_socket", sock)     # over WebSocket: paho's wrapper's socket
            try:
                sock.shutdown(socket.SHUT_RDWR)   # no DISCONNECT; also wakes paho's loop
            except OSError:
                pass
        self.client.loop_stop()
        self._started = False
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Stop everything, whatever state the client is in (for fixture teardown)."""
        if self._started:
            self.drop()

    # -- what was received ------------------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages if topic is None or m.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def wait_messages(self, n: int, timeout: float | None = None,
                      topic: str | None = None) -> list[Received]:
        """Wait until at least `n` messages (on `topic`, if given) arrived; returns them all."""
        def enough():
            got = [m for m in self.messages if topic is None or m.topic == topic]
            return got if len(got) >= n else None

        return wait_until(enough, self.timeout if timeout is None else timeout,
                          what=f"{n} message(s){'' if topic is None else ' on ' + topic}")

    def wait_disconnected(self, timeout: float | None = None) -> int | None:
        """Wait until the broker ended the connection; returns the disconnect reason code."""
        if not self.disconnected.wait(self.timeout if timeout is None else timeout):
            raise AssertionError("the connection was not closed")
        return self.disconnect_rc

    def is_connected(self) -> bool:
        return self.client.is_connected()


class ClientPool:
    """Makes `PahoClient`s for one port and closes them all at the end (use in a fixture)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients: list[PahoClient] = []

    def __call__(self, client_id: str = "", protocol: int = V5, **kwargs: Any) -> PahoClient:
        kwargs.setdefault("connect", True)
        c = PahoClient(self.port, client_id, protocol, connect=False,
                       **{k: v for k, v in kwargs.items() if k not in ("connect", "expect_rc")})
        self.clients.append(c)
        if kwargs["connect"]:
            c.connect(expect_rc=kwargs.get("expect_rc", 0))
        return c

    def close_all(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:  # pragma: no cover - teardown must go on
                pass
        self.clients.clear()
