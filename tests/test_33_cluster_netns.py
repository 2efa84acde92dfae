"""A cluster across hosts: three nodes, each in a network namespace of its own with its own
address on a bridge, meeting on a nats-server (JetStream) in the root namespace; paho clients
in the root namespace talk to each node's address. QoS 1 between hosts, retained messages,
client-id takeover with the session handed over, and a node partitioned away (its link taken
down) and back.

Each node is a real `python -m cymqtt -c node.toml` run under `ip netns exec`; its figures
come from its HTTP API (`/api/v1/stats`, `/api/v1/subscriptions`). Everything (bridge,
namespaces, veth pairs, processes) is made by the module fixture and removed at its end, also
when a test fails. Needs root and a usable `ip netns`; skipped with the reason otherwise.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from _testbase import nats_server_binary
from helpers_paho import V5, PahoClient, wait_until

# Not run again on uvloop by make test: each node is `python -m cymqtt` in a namespace of its own.
pytestmark = pytest.mark.loop_independent

pytest.importorskip("nats")

NODES = ("a", "b", "c")
NODE_TIMEOUT = 1.5                 # [cluster] node_timeout of every node
MQTT_PORT = 1883                   # each node has an address of its own: fixed ports do
HTTP_PORT = 8080
TAG = f"cmq33-{os.getpid()}"       # names of what this run makes (dead runs' leftovers: below)
SUBNET = f"10.213.{os.getpid() % 200 + 20}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=10)


def _netns_unusable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{TAG}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        run = _ip("netns", "exec", probe, "ip", "link", "set", "lo", "up", check=False)
        if run.returncode != 0:
            return f"`ip netns exec` failed: {run.stderr.strip()}"
        veth = _ip("link", "add", f"{TAG[3:]}p", "type", "veth", "peer", "name", "eth1",
                   "netns", probe, check=False)
        if veth.returncode != 0:
            return f"cannot make a veth pair: {veth.stderr.strip()}"
    finally:
        _ip("link", "del", f"{TAG[3:]}p", check=False)
        _ip("netns", "del", probe, check=False)
    return None


def _remove_dead_runs_leftovers() -> None:
    # A run killed before its teardown (kill -9) leaves its namespaces and bridge behind;
    # only ours (cmq33-<pid>-...) whose pid is gone are removed.
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(r"(cmq33-(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            _ip("netns", "del", m.group(1), check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        m = re.search(r"\d+: (q33-(\d+)br)[:@]", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            _ip("link", "del", m.group(1), check=False)


_why = _netns_unusable()
if _why is not None:
    pytest.skip(f"multi-host cluster tests need network namespaces: {_why}",
                allow_module_level=True)


def _connectable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


class Node:
    """One broker in its own network namespace, at its own address."""

    def __init__(self, name: str, index: int, tmp) -> None:
        self.name = name
        self.ns = f"{TAG}-{name}"
        self.host_if = f"q33-{os.getpid()}{name}"       # its end of the veth in the root ns
        self.addr = f"{SUBNET}.{11 + index}"
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"{name}.log"
        self.conf = tmp / f"{name}.toml"

    def make_host(self, bridge: str, nats_url: str) -> None:
        """Its namespace, its veth pair (one end on the bridge) and its node.toml."""
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0",
            "netns", self.ns)
        _ip("link", "set", self.host_if, "master", bridge, "up")
        for args in (("addr", "add", f"{self.addr}/24", "dev", "eth0"),
                     ("link", "set", "eth0", "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.ns, "ip", *args)
        self.conf.write_text(
            f'host = "{self.addr}"\nport = {MQTT_PORT}\npersistence = false\n'
            f'[http]\nhost = "{self.addr}"\nport = {HTTP_PORT}\n'
            f'[cluster]\nnats = "{nats_url}"\nnode = "{self.name}"\nname = "{TAG}"\n'
            f'node_timeout = {NODE_TIMEOUT}\n')

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "cymqtt", "-c",
                 str(self.conf)], stdout=log, stderr=subprocess.STDOUT)

    def wait_serving(self) -> None:
        wait_until(lambda: self.proc.poll() is not None or self._answers(), timeout=20,
                   what=f"node {self.name} to serve its HTTP API")
        assert self.proc.poll() is None, f"node {self.name} ended: {self.log_tail()}"

    def _answers(self) -> bool:
        try:
            self.api("stats")
            return True
        except OSError:
            return False

    def api(self, path: str) -> dict:
        url = f"http://{self.addr}:{HTTP_PORT}/api/v1/{path}"
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)

    def stats(self) -> dict:
        return self.api("stats")

    def client(self, client_id: str, **kwargs) -> PahoClient:
        return PahoClient(MQTT_PORT, client_id, V5, host=self.addr, **kwargs)

    def link(self, up: bool) -> None:
        """Plug or pull this host's cable (its veth end on the bridge)."""
        _ip("link", "set", self.host_if, "up" if up else "down")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _ip("netns", "del", self.ns, check=False)        # (takes its veth pair with it)
        _ip("link", "del", self.host_if, check=False)


class Hosts:
    """The bridge, the nats-server on it and the nodes; `remove()` undoes whatever of it
    `make()` made, also after a failure half-way."""

    NATS_PORT = 4222

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.bridge = f"q33-{os.getpid()}br"
        self.nats: subprocess.Popen | None = None
        self.nodes = {name: Node(name, i, tmp) for i, name in enumerate(NODES)}

    def make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.nats = subprocess.Popen(
            [nats_server_binary(), "-js", "-a", f"{SUBNET}.1", "-p", str(self.NATS_PORT),
             "-sd", str(self.tmp / "nats")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.nats.poll() is not None or
                   _connectable(f"{SUBNET}.1", self.NATS_PORT), timeout=10,
                   what="nats-server")
        assert self.nats.poll() is None, "nats-server ended at start"
        url = f"nats://{SUBNET}.1:{self.NATS_PORT}"
        for node in self.nodes.values():
            node.make_host(self.bridge, url)
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_serving()
        for node in self.nodes.values():
            wait_until(lambda n=node: n.stats()["cluster_nodes"] == len(NODES), timeout=10,
                       what=f"node {node.name} to see all {len(NODES)} nodes")

    def remove(self) -> None:
        for node in self.nodes.values():
            node.remove()
        if self.nats is not None and self.nats.poll() is None:
            self.nats.terminate()
            self.nats.wait(10)
        _ip("link", "del", self.bridge, check=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    _remove_dead_runs_leftovers()
    h = Hosts(tmp_path_factory.mktemp("netns"))
    try:
        h.make()
        yield h
    finally:
        h.remove()


@pytest.fixture
def nodes(hosts):
    """(a, b, c), the three nodes; their log tails show with a failing test's output."""
    yield tuple(hosts.nodes[n] for n in NODES)
    for node in hosts.nodes.values():
        print(f"--- node {node.name}: {node.log} ---\n{node.log_tail()}")


@pytest.fixture
def clients():
    made: list[PahoClient] = []

    def make(node: Node, client_id: str, **kwargs) -> PahoClient:
        c = node.client(client_id, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_each_node_is_a_host_of_its_own(nodes, clients):
    for node in nodes:
        assert node.addr in json.dumps(node.api("listeners")["listeners"])
        assert node.stats()["cluster_nodes"] == 3
        clients(node, f"h-{node.name}")
        # The client came over the bridge, from the root namespace's address on it.
        assert node.api(f"clients/h-{node.name}")["address"].startswith(f"{SUBNET}.1:")


def test_qos1_from_host_b_to_a_none_lost_in_order(nodes, clients):
    a, b, c = nodes
    sub = clients(a, "q-sub")
    sub.subscribe("hosts/+/q1", 1)                 # SUBACK: b routes it to a from now on
    pub = clients(b, "q-pub")
    n = 400
    for i in range(n):
        pub.publish("hosts/7/q1", str(i), qos=1, wait=False)
    got = sub.wait_messages(n, timeout=15)
    assert [int(m.payload) for m in got] == list(range(n))
    assert all(m.qos == 1 and not m.dup for m in got)
    assert b.stats()["cluster_forwarded"] >= n


def test_retained_from_host_b_reaches_a_new_subscriber_on_c(nodes, clients):
    a, b, c = nodes
    pub = clients(b, "r-pub")
    pub.publish("hosts/ret/1", b"from b", qos=1, retain=True)

    def on_c() -> bool:
        try:
            return c.api("retained/hosts/ret/1")["payload"] == "from b"
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            return False

    wait_until(on_c, timeout=5, what="the retained message on node c")
    late = clients(c, "r-late")
    late.subscribe("hosts/ret/#", 1)
    got = late.wait_messages(1)
    assert [(m.topic, m.payload, m.retain) for m in got] == [("hosts/ret/1", b"from b", True)]


def test_client_id_takeover_across_hosts(nodes, clients):
    a, b, c = nodes
    dev = clients(a, "dev", clean=False, session_expiry=300)
    dev.subscribe("hosts/cmd/dev", 1)
    dev.drop()                                      # the device goes away; a keeps its session
    pub = clients(b, "t-pub")
    for i in range(5):
        pub.publish("hosts/cmd/dev", f"queued {i}", qos=1)     # b -> a, queued there
    # (stats() adds up every node's figures; b and c queue nothing for anyone)
    wait_until(lambda: a.stats()["queued_messages"] + a.stats()["inflight_messages"] >= 5,
               what="the 5 messages queued on node a")
    moved = clients(c, "dev", clean=False, session_expiry=300)  # it comes back on host c
    assert moved.session_present is True
    assert [m.payload for m in moved.wait_messages(5)] == [f"queued {i}".encode()
                                                           for i in range(5)]
    # (the REST API lists every node's: one session, one subscription, in the whole broker)
    for node in (a, c):
        subs = node.api("subscriptions?client_id=dev")
        assert [s["topic_filter"] for s in subs["items"]] == ["hosts/cmd/dev"]
    pub.publish("hosts/cmd/dev", b"to c", qos=1)   # b now routes it to c
    assert moved.wait_messages(6)[-1].payload == b"to c"
    # And while it is connected on c, a connection to a takes it over: c closes it (0x8E).
    back = clients(a, "dev", clean=False, session_expiry=300)
    assert back.session_present is True
    assert moved.wait_disconnected() == 0x8E
    assert c.api("subscriptions?client_id=dev")["total"] == 1
    pub.publish("hosts/cmd/dev", b"to a", qos=1)
    wait_until(lambda: b"to a" in back.payloads(), what="'to a' on node a")


def test_partitioned_node_is_dropped_and_comes_back(nodes, clients):
    a, b, c = nodes
    held = clients(b, "p-held")
    held.subscribe("hosts/onlyb/#", 1)             # a filter only b holds
    wait_until(lambda: a.stats()["cluster_routes_remote"] >= 1 and
               c.stats()["cluster_routes_remote"] >= 1, what="b's route on a and c")
    routes_a = a.stats()["cluster_routes_remote"]
    routes_c = c.stats()["cluster_routes_remote"]
    pub = clients(a, "p-pub")
    pub.publish("hosts/onlyb/x", b"before", qos=1)
    assert held.wait_messages(1)[0].payload == b"before"

    b.link(False)                                  # pull b's cable
    try:
        t0 = time.monotonic()
        for node in (a, c):
            wait_until(lambda n=node: n.stats()["cluster_nodes"] == 2,
                       timeout=NODE_TIMEOUT + 2.0, what=f"node {node.name} to drop b")
        print(f"a and c dropped b {time.monotonic() - t0:.2f} s after its link went down")
        assert a.stats()["cluster_routes_remote"] < routes_a
        assert c.stats()["cluster_routes_remote"] < routes_c
        forwarded = a.stats()["cluster_forwarded"]
        for i in range(10):
            pub.publish("hosts/onlyb/x", f"during {i}", qos=1)    # nobody else holds it
        assert a.stats()["cluster_forwarded"] == forwarded          # not sent to NATS
        assert "node b silent" in a.log_tail()
        # a and c still route between themselves.
        on_c = clients(c, "p-c")
        on_c.subscribe("hosts/ac", 1)
        pub.publish("hosts/ac", b"a to c", qos=1)
        assert on_c.wait_messages(1)[0].payload == b"a to c"
        # b, cut off, drops the other two as well: each when its own last heartbeat is
        # node_timeout old, so wait for both before the cable goes back in.
        wait_until(lambda: "node a silent" in b.log_tail() and "node c silent" in b.log_tail(),
                   timeout=NODE_TIMEOUT + 2.0, what="node b to drop a and c")
    finally:
        b.link(True)                               # plug it back in

    t0 = time.monotonic()
    for node in (a, b, c):
        wait_until(lambda n=node: n.stats()["cluster_nodes"] == 3, timeout=15,
                   what=f"node {node.name} to see all three again")
    print(f"all three saw each other {time.monotonic() - t0:.2f} s after the link came up")
    wait_until(lambda: a.stats()["cluster_routes_remote"] >= routes_a, timeout=5,
               what="b's routes back on a")
    pub.publish("hosts/onlyb/x", b"after", qos=1)
    wait_until(lambda: b"after" in held.payloads(), what="'after' on node b")
    # What a published while b was away did not reach b (NATS core: at most once).
    assert not any(p.startswith(b"during") for p in held.payloads())
