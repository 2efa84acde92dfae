"""Helpers for tests of `cymqtt --workers N` (test_32_workers, test_35_across_workers).

`Workers` starts the real command (`python -m cymqtt --workers N ...`) in a subprocess and
reads its log from stderr line by line in a thread; the `workers` fixture (conftest.py
imports it, so every test module has it) starts any number and makes sure that nothing
they started (supervisor, workers, nats-server) outlives the test:

    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    c = paho_on(w, port, "worker-2", "sub")     # a paho client the kernel gave to worker 2
    landed_on(w, ["some-id"])                   # -> {"some-id": "worker-1"}, from the log

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT hashes the
connection's addresses and ports over the group of listening sockets): `paho_on` retries
with new client ids until one lands where asked; `port_to` finds a local port whose
connections land on a given worker, for a client id that must connect there
(`paho_from`).
"""
from __future__ import annotations

import functools
import itertools
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from helpers_paho import V311, PahoClient
from _testbase import free_port

__all__ = ["CONNACK_OK", "CONNECTED", "STARTED", "Workers", "alive", "children",
           "connect_frame", "connect_many", "free_port", "landed_on", "mqtt_connect",
           "paho_from", "paho_on", "port_to", "processes_with", "workers"]

STARTED = re.compile(r"(\d+) workers \(pids ([\d, ]+)\) serve .* meeting on NATS (\S+)"
                     r"(?: \(nats-server pid (\d+), store ([^)]+)\))?; supervisor pid (\d+)")
CONNECTED = re.compile(r"INFO (worker-\d+) cymqtt\.connections: New client connected .* as "
                       r"(\S+) ")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def processes_with(*words: str) -> list[int]:
    """Live processes whose command line holds every one of `words`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    argv = fh.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(word in argv for word in words) and alive(int(entry)):
                out.append(int(entry))
    return out


def connect_frame(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keep alive 0 (never timed out)."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


CONNACK_OK = b"\x20\x02\x00\x00"


def mqtt_connect(port: int, client_id: str) -> socket.socket:
    """A raw MQTT connection that got its CONNACK."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(connect_frame(client_id))
    assert s.recv(4) == CONNACK_OK, client_id
    return s


class Workers:
    """`python -m cymqtt --workers N ARGS`, its stderr read line by line in a thread."""

    def __init__(self, *args: str, env: dict | None = None, wait: bool = True) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cymqtt", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._matched: set[int] = set()     # indices of the lines wait_for returned
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            m = self.wait_for(STARTED)
            self.pids = [int(p) for p in m.group(2).split(", ")]
            self.nats_url = m.group(3)
            self.nats_pid = int(m.group(4)) if m.group(4) else None
            self.nats_store = m.group(5)
            assert int(m.group(6)) == self.proc.pid
            assert len(self.pids) == int(m.group(1))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: re.Pattern, timeout: float = 15.0) -> re.Match:
        """The first line matching `pattern` that no earlier call returned, among the lines
        read so far and those still to come (lines arrive in whatever order the workers
        write them)."""
        for i, line in enumerate(self.seen):
            if i not in self._matched and (m := pattern.search(line)):
                self._matched.add(i)
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r}; got {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            m = pattern.search(line)
            if m:
                self._matched.add(len(self.seen) - 1)
                return m

    def finish(self) -> list[str]:
        """After the process ended: every line it wrote."""
        self._reader.join(5)
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return self.seen

    @property
    def everything(self) -> list[int]:
        """The supervisor, its workers and its nats-server."""
        return [self.proc.pid, *self.pids] + ([self.nats_pid] if self.nats_pid else [])

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.finish()
        return rc


@pytest.fixture
def workers():
    started: list[Workers] = []

    def start(*args: str, **kw) -> Workers:
        w = Workers(*args, **kw)
        started.append(w)
        return w

    yield start
    for w in started:            # whatever the test did: nothing it started stays
        pids = w.everything if hasattr(w, "pids") else [w.proc.pid]
        if w.proc.poll() is None:
            pids += children(w.proc.pid)        # (a restarted worker is not in w.pids)
            w.proc.kill()
            w.proc.wait(5)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def landed_on(w: Workers, client_ids: list[str]) -> dict[str, str]:
    """client id -> the worker ("worker-2") whose log says it connected."""
    where: dict[str, str] = {}
    while not set(client_ids) <= set(where):
        m = w.wait_for(CONNECTED, timeout=5)
        where[m.group(2)] = m.group(1)
    return {c: where[c] for c in client_ids}


def connect_many(port: int, prefix: str, n: int = 24) -> tuple[list[str], list[socket.socket]]:
    ids = [f"{prefix}-{i}" for i in range(n)]
    return ids, [mqtt_connect(port, c) for c in ids]


def paho_on(w: Workers, port: int, worker: str, prefix: str, protocol: int = V311,
            **kw) -> PahoClient:
    """A paho client that the kernel gave to `worker` (clients landing elsewhere are closed
    and another is tried: each lands on either with even odds). Its client id is
    `<prefix>-<i>`, for the first i that landed there."""
    for i in range(40):
        c = PahoClient(port, f"{prefix}-{i}", protocol=protocol, **kw)
        if landed_on(w, [c.client_id])[c.client_id] == worker:
            return c
        c.close()
    raise AssertionError(f"40 connections and none on {worker}")


_probes = itertools.count()
_RESET = struct.pack("ii", 1, 0)        # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT


def port_to(w: Workers, port: int, worker: str) -> int:
    """A local port of 127.0.0.1 whose connections to `port` land on `worker`, while the
    workers' listening sockets stay the same (the kernel picks the listener by a hash of
    the connection's addresses and ports). Found by connecting (a clean 3.1.1 probe, which
    leaves no session) until one lands there; the probe is closed with a reset, so that the
    port is free again at once (no TIME_WAIT) for `paho_from`."""
    for _ in range(40):
        s = socket.socket()
        try:
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
            s.connect(("127.0.0.1", port))
            probe = f"probe-{next(_probes)}"
            s.sendall(connect_frame(probe))
            assert s.recv(4) == CONNACK_OK
            local = s.getsockname()[1]
            there = landed_on(w, [probe])[probe]
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        finally:
            s.close()
        if there == worker:
            return local
    raise AssertionError(f"40 local ports and none lands on {worker}")


def paho_from(port: int, local_port: int, client_id: str, expect_rc: int | None = 0,
              **kw) -> PahoClient:
    """A PahoClient (arguments as PahoClient's) connecting from 127.0.0.1:`local_port`, so
    to the worker `port_to` found for that port."""
    c = PahoClient(port, client_id, connect=False, **kw)
    c.client.connect = functools.partial(c.client.connect, bind_address="127.0.0.1",
                                         bind_port=local_port)
    c.connect(expect_rc=expect_rc)
    return c
