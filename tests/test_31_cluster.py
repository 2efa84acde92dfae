"""A cluster of brokers on a real nats-server (with JetStream), each node on its own event loop
and port, driven by paho clients: routing between nodes (only where a route matches), topics
that need escaping, overlapping filters, shared subscriptions as NATS queue groups, retained
messages in the JetStream bucket, client-id takeover with the session handed over, nodes
leaving and dying, and hostile bytes on the cluster's subjects."""
from __future__ import annotations

import marshal
import socket
import subprocess
import sys
import time

import pytest

from cymqtt.config import ClusterConfig, ConfigError
from helpers_paho import V5, V311, PahoClient, wait_until
from _testbase import BrokerThread, free_port, nats_server_binary

nats = pytest.importorskip("nats")


class NatsServer:
    """A real nats-server with JetStream on a free loopback port."""

    def __init__(self, store_dir: str) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", store_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nats-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(str(tmp_path / "nats"))
    yield server
    server.stop()


@pytest.fixture
def cluster(request, nats_server):
    """make(node, **overrides) -> a BrokerThread that is node `node` of one cluster."""
    nodes: list[BrokerThread] = []

    def make(node: str, name: str = "t", **overrides) -> BrokerThread:
        cfg = ClusterConfig(nats=(nats_server.url,), node=node, name=name,
                            node_timeout=overrides.pop("node_timeout", 1.5))
        bt = BrokerThread(request.config.getoption("--loop"), cluster=cfg, **overrides)
        nodes.append(bt)
        return bt

    yield make
    for bt in nodes:
        bt.stop()


@pytest.fixture
def clients():
    made: list[PahoClient] = []

    def make(port: int, client_id: str = "", protocol: int = V5, **kwargs) -> PahoClient:
        c = PahoClient(port, client_id, protocol, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _stats(bt: BrokerThread) -> dict:
    return bt.call(bt.broker.stats)


def test_qos1_between_nodes_none_lost_in_order(cluster, clients):
    a, b = cluster("a"), cluster("b")
    assert _stats(a)["cluster_nodes"] == 2 and _stats(b)["cluster_nodes"] == 2
    sub = clients(a.port, "sub")
    sub.subscribe("pairs/+/data", 1)          # SUBACK: node b routes it to a from now on
    pub = clients(b.port, "pub")
    for i in range(500):
        pub.publish("pairs/7/data", str(i), qos=1, wait=False)
    got = sub.wait_messages(500)
    assert [int(m.payload) for m in got] == list(range(500))
    assert all(m.qos == 1 for m in got)
    assert _stats(b)["cluster_forwarded"] >= 500


def test_nothing_goes_to_nats_without_a_matching_route(cluster, clients):
    a, b = cluster("a"), cluster("b")
    sub = clients(a.port, "sub")
    sub.subscribe("routed/#", 0)
    pub_b = clients(b.port, "pub-b")
    for i in range(50):
        pub_b.publish("routed/x", str(i), qos=1)        # a subscribes: forwarded
        pub_b.publish("unrouted/x", str(i), qos=1)      # nobody does: stays on b
    assert len(sub.wait_messages(50)) == 50
    assert _stats(b)["cluster_forwarded"] == 50
    pub_a = clients(a.port, "pub-a")
    for i in range(50):
        pub_a.publish("routed/x", b"x", qos=1)          # b has no routes at all
    assert len(sub.wait_messages(100)) == 100
    assert _stats(a)["cluster_forwarded"] == 0


def test_a_topic_that_went_nowhere_is_forwarded_once_a_node_subscribes(cluster, clients):
    """Node b remembers the topics no other node subscribes to (the router then skips the bus
    for them); a subscription anywhere, or its end, makes b look again."""
    a, b = cluster("a"), cluster("b")
    holder = clients(a.port, "holder")
    holder.subscribe("elsewhere/#", 0)            # a has a route, so b's router asks the bus
    pub = clients(b.port, "pub")
    for i in range(20):
        pub.publish("late/x", str(i), qos=1)      # nobody subscribes: remembered as such
    assert _stats(b)["cluster_forwarded"] == 0
    sub = clients(a.port, "sub")
    sub.subscribe("late/+", 1)                    # SUBACK: b has the route
    for i in range(20):
        pub.publish("late/x", str(i), qos=1)
    assert [int(m.payload) for m in sub.wait_messages(20)] == list(range(20))
    assert _stats(b)["cluster_forwarded"] == 20
    sub.client.unsubscribe("late/+")
    wait_until(lambda: _stats(b)["cluster_routes_remote"] == 1, timeout=5)   # holder's only
    for i in range(20):
        pub.publish("late/x", str(i), qos=1)
    assert _stats(b)["cluster_forwarded"] == 20
    time.sleep(0.3)
    assert len(sub.messages) == 20


def test_fanout_reaches_subscribers_on_every_node(cluster, clients):
    nodes = [cluster(n) for n in ("a", "b", "c")]
    subs = [clients(bt.port, f"s{i}-{j}") for i, bt in enumerate(nodes) for j in range(3)]
    for s in subs:
        s.subscribe("fan/#", 1)
    pub = clients(nodes[1].port, "pub")
    for i in range(100):
        pub.publish(f"fan/{i % 5}", str(i), qos=1, wait=False)
    for s in subs:
        assert sorted(int(m.payload) for m in s.wait_messages(100)) == list(range(100))
    time.sleep(0.3)
    assert all(len(s.messages) == 100 for s in subs)      # no duplicates


def test_overlapping_filters_on_one_node_get_one_copy_each(cluster, clients):
    a, b = cluster("a"), cluster("b")
    plus = clients(a.port, "plus")
    plus.subscribe("o/+", 0)
    hash_ = clients(a.port, "hash")
    hash_.subscribe("o/#", 0)
    both = clients(a.port, "both")
    both.subscribe("o/+", 1)
    both.subscribe("#", 1)
    pub = clients(b.port, "pub")
    for i in range(20):
        pub.publish("o/x", str(i), qos=1)
    pub.publish("o", b"parent", qos=1)             # `o/#` matches `o` itself, `o/+` does not
    assert len(plus.wait_messages(20)) == 20
    assert len(hash_.wait_messages(21)) == 21
    assert len(both.wait_messages(21)) == 21
    time.sleep(0.3)
    assert len(plus.messages) == 20 and len(hash_.messages) == 21 and len(both.messages) == 21
    assert _stats(a)["cluster_received"] == 21         # one copy for the node, not per filter


@pytest.mark.parametrize("topic", ["a.b/c", "sp ace/x", "star/*", "gt/>", "a//b", "/lead",
                                   "trail/", "%25/x", "ünï/cödé", "$app/x"])
def test_topics_that_need_escaping_cross_exactly(cluster, clients, topic):
    a, b = cluster("a"), cluster("b")
    exact = clients(a.port, "exact")
    exact.subscribe(topic, 1)
    wild = clients(a.port, "wild")
    wild.subscribe("+/+", 1)
    decoy = clients(a.port, "decoy")
    decoy.subscribe("a/b/c", 1)
    if topic.startswith("$"):          # (clients may not publish to $-topics; the broker may)
        b.call(lambda: b.broker.publish(topic, b"payload", qos=1))
    else:
        clients(b.port, "pub").publish(topic, b"payload", qos=1)
    got = exact.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [(topic, b"payload")]
    time.sleep(0.2)
    two_levels = topic.count("/") == 1 and not topic.startswith("$")
    assert len(wild.messages) == (1 if two_levels else 0)
    assert decoy.messages == []


def test_sys_topics_stay_on_their_node(cluster, clients):
    a, b = cluster("a", sys_interval=1), cluster("b", sys_interval=1)
    watcher = clients(a.port, "w")
    watcher.subscribe("$SYS/#", 0)
    watcher.wait_messages(5)
    assert _stats(b)["cluster_forwarded"] == 0


def test_shared_subscription_one_member_cluster_wide(cluster, clients):
    a, b, c = cluster("a"), cluster("b"), cluster("c")
    members = [clients(a.port, "m-a"), clients(b.port, "m-b"), clients(b.port, "m-b2")]
    for m in members:
        m.subscribe("$share/g/jobs/#", 1)
    other_group = clients(a.port, "o-a")
    other_group.subscribe("$share/h/jobs/#", 1)
    plain = clients(c.port, "plain")
    plain.subscribe("jobs/#", 1)
    pub = clients(c.port, "pub")
    n = 300
    for i in range(n):
        pub.publish(f"jobs/{i % 3}", str(i), qos=1, wait=False)
    wait_until(lambda: sum(len(m.messages) for m in members) >= n)
    assert len(plain.wait_messages(n)) == n
    assert len(other_group.wait_messages(n)) == n      # a group of its own
    time.sleep(0.3)
    got = sorted(int(x.payload) for m in members for x in m.messages)
    assert got == list(range(n))                       # each to exactly one member
    assert len(members[0].messages) > 0 and len(members[1].messages) + \
        len(members[2].messages) > 0                    # both nodes take part


def test_shared_group_with_members_on_the_publishers_node_too(cluster, clients):
    a, b = cluster("a"), cluster("b")
    local = clients(a.port, "local")
    local.subscribe("$share/g/w", 1)
    remote = clients(b.port, "remote")
    remote.subscribe("$share/g/w", 1)
    pub = clients(a.port, "pub")
    for i in range(200):
        pub.publish("w", str(i), qos=1, wait=False)
    wait_until(lambda: len(local.messages) + len(remote.messages) >= 200)
    time.sleep(0.3)
    got = sorted(int(m.payload) for m in local.messages + remote.messages)
    assert got == list(range(200))
    assert local.messages and remote.messages


def test_retained_reaches_every_node_and_late_joiners(cluster, clients):
    a, b = cluster("a"), cluster("b")
    pub = clients(b.port, "pub")
    for i in range(50):
        pub.publish(f"ret/{i}", f"v{i}", qos=1, retain=True)
    pub.publish("ret/gone", b"x", qos=1, retain=True)
    pub.publish("ret/gone", b"", qos=1, retain=True)      # deleted
    wait_until(lambda: a.call(lambda: a.broker.retained_count) == 50)
    sub = clients(a.port, "sub")
    sub.subscribe("ret/#", 1)
    got = sub.wait_messages(50)
    assert sorted(m.payload for m in got) == sorted(f"v{i}".encode() for i in range(50))
    assert all(m.retain for m in got)
    c = cluster("c")                                         # joins later: from the bucket
    assert c.call(lambda: c.broker.retained_count) == 50
    late = clients(c.port, "late")
    late.subscribe("ret/7", 0)
    assert late.wait_messages(1)[0].payload == b"v7"


def test_retained_last_writer_wins_on_every_node(cluster, clients):
    a, b = cluster("a"), cluster("b")
    pa, pb = clients(a.port, "pa"), clients(b.port, "pb")
    for i in range(30):
        pa.publish("race", f"a{i}", qos=0, retain=True, wait=False)
        pb.publish("race", f"b{i}", qos=0, retain=True, wait=False)
    pa.publish("race", "a-done", qos=1, retain=True)
    pb.publish("race", "b-done", qos=1, retain=True)
    time.sleep(1.0)

    def value(bt):
        msg = bt.call(lambda: bt.broker._router.retained.get("race"))
        return msg.payload

    wait_until(lambda: value(a) == value(b))
    assert value(a) in (b"a-done", b"b-done")


def test_takeover_across_nodes_hands_the_session_over(cluster, clients):
    a, b = cluster("a"), cluster("b")
    first = clients(a.port, "dev", session_expiry=300, clean=False)
    first.subscribe("cmd/dev", 1)
    first.subscribe("all/#", 1)
    pub = clients(a.port, "pub")
    first.drop()                                       # gone, session kept on a
    for i in range(5):
        pub.publish("cmd/dev", f"q{i}", qos=1)         # queued on a
    second = clients(b.port, "dev", session_expiry=300, clean=False)
    assert second.session_present is True
    assert [m.payload for m in second.wait_messages(5)] == [f"q{i}".encode()
                                                            for i in range(5)]
    assert a.call(lambda: a.broker.session("dev")) is None
    pub.publish("all/x", b"after", qos=1)              # a now routes it to b
    assert second.wait_messages(6)[-1].payload == b"after"
    # And back again, while connected: a closes b's client with 0x8E... b closes it.
    third = clients(a.port, "dev", session_expiry=300, clean=False)
    assert third.session_present is True
    assert second.wait_disconnected() == 0x8E
    pub.publish("cmd/dev", b"home", qos=1)
    # ("after" may come again first, DUP: b handed it over before its PUBACK was in)
    wait_until(lambda: b"home" in third.payloads())


def test_takeover_with_clean_start_ends_the_old_session(cluster, clients):
    a, b = cluster("a"), cluster("b")
    old = clients(a.port, "dev", protocol=V311, clean=False)
    old.subscribe("x", 1)
    new = clients(b.port, "dev", protocol=V311, clean=True)
    assert new.session_present is False
    assert old.wait_disconnected() is not None
    wait_until(lambda: a.call(lambda: a.broker.session("dev")) is None)
    assert b.call(lambda: b.broker.session("dev")).subscriptions == {}


def test_a_node_that_leaves_takes_its_routes(cluster, clients):
    a, b = cluster("a"), cluster("b")
    sub = clients(b.port, "sub")
    sub.subscribe("t/#", 0)
    wait_until(lambda: _stats(a)["cluster_routes_remote"] == 1)
    sub.close()
    b.stop()
    wait_until(lambda: _stats(a)["cluster_nodes"] == 1)
    assert _stats(a)["cluster_routes_remote"] == 0


def test_a_node_that_dies_is_dropped_after_its_timeout(cluster, clients, nats_server,
                                                       tmp_path):
    a = cluster("a")
    conf = tmp_path / "b.toml"
    conf.write_text(f'port = 0\npersistence = false\n[cluster]\nnats = "{nats_server.url}"\n'
                    f'node = "b"\nname = "t"\nnode_timeout = 1.5\n')
    proc = subprocess.Popen([sys.executable, "-m", "cymqtt", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _stats(a)["cluster_nodes"] == 2, timeout=15)
    finally:
        proc.kill()
        proc.wait()
    t0 = time.monotonic()
    wait_until(lambda: _stats(a)["cluster_nodes"] == 1, timeout=10)
    assert time.monotonic() - t0 < 5


def test_hostile_bytes_on_the_cluster_subjects_are_counted_and_ignored(cluster, clients,
                                                                       nats_server):
    import asyncio

    a, b = cluster("a"), cluster("b")
    sub = clients(a.port, "sub")
    sub.subscribe("h/#", 1)

    async def attack() -> None:
        nc = await nats.connect(nats_server.url)
        for subject in ("t.n.a", "t.ctl.hb", "t.ctl.route", "t.ctl.claim", "t.ctl.bye",
                        "t.ctl.progress.a", "t.ctl.late.a"):
            for junk in (b"", b"\x00\xff garbage", marshal.dumps((1, "h/x")),
                         marshal.dumps((99, "h/x", b"p", 1, 0, None, None, None, "z"))):
                await nc.publish(subject, junk)
        await nc.flush()
        await nc.close()

    asyncio.run(attack())
    pub = clients(b.port, "pub")
    pub.publish("h/ok", b"still fine", qos=1)
    assert sub.wait_messages(1)[0].payload == b"still fine"
    assert _stats(a)["cluster_bad_messages"] > 0
    assert _stats(a)["cluster_nodes"] == 2


def test_unreachable_nats_is_one_clear_error(request):
    cfg = ClusterConfig(nats=(f"nats://127.0.0.1:{free_port()}",), node="x")
    with pytest.raises(ConfigError, match="cannot reach NATS"):
        BrokerThread(request.config.getoption("--loop"), cluster=cfg)


def test_nats_without_jetstream_is_one_clear_error(request, tmp_path):
    port = free_port()
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _connectable(port))
        cfg = ClusterConfig(nats=(f"nats://127.0.0.1:{port}",), node="x")
        with pytest.raises(ConfigError, match="JetStream"):
            BrokerThread(request.config.getoption("--loop"), cluster=cfg)
    finally:
        proc.terminate()
        proc.wait()


def _connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def test_cluster_config_from_toml_and_its_errors(tmp_path):
    from cymqtt.config import config_from_dict
    c = config_from_dict({"cluster": {"nats": ["nats://h1:4222", "nats://h2:4222"],
                                      "node": "n1", "user": "u", "password": "p"}})
    assert c.cluster.nats == ("nats://h1:4222", "nats://h2:4222") and c.cluster.node == "n1"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"cluster": {"nats": 5, "node": "a.b", "user": "u", "nod": 1}})
    text = str(exc.value)
    assert "'nats' must be a string or a list of strings" in text
    assert "did you mean 'node'" in text
    with pytest.raises(ConfigError, match="'node' must be a name"):
        config_from_dict({"cluster": {"nats": "nats://x:1", "node": "a.b"}})
    with pytest.raises(ConfigError, match="'user' and 'password' go together"):
        config_from_dict({"cluster": {"nats": "nats://x:1", "user": "u"}})


def test_stats_show_the_whole_broker(cluster, clients):
    a, b = cluster("a"), cluster("b")
    for i in range(3):
        clients(a.port, f"a{i}")
    clients(b.port, "b0")
    wait_until(lambda: _stats(a)["clients_connected"] == 4 and
               _stats(b)["clients_connected"] == 4, timeout=5)
    assert a.call(a.broker.node_stats)["clients_connected"] == 3
    assert _stats(a)["cluster_nodes"] == 2


def test_a_restarted_node_drops_sessions_that_moved_on(cluster, clients):
    from cymqtt.store import MemoryStore
    store = MemoryStore()
    a = cluster("a")
    b = cluster("b", store=store)
    old = clients(b.port, "dev", session_expiry=600, clean=False)
    old.subscribe("d/#", 1)
    old.close()
    wait_until(lambda: b.call(lambda: b.broker.stats()["store_commits"]) > 0)
    b.stop()
    wait_until(lambda: _stats(a)["cluster_nodes"] == 1)
    # b is down: a takes the session on from the cluster's sessions bucket
    back = clients(a.port, "dev", session_expiry=600, clean=False)
    assert back.session_present is True
    back.close()
    b2 = cluster("b", store=store)                  # restores "dev", finds it on a
    assert b2.call(lambda: b2.broker.session("dev")) is None
    again = clients(b2.port, "dev", session_expiry=600, clean=False)
    assert again.session_present is True            # a's, handed over


def test_a_restarted_node_hands_over_what_it_still_had_for_a_moved_session(cluster, clients):
    """Messages queued for a persistent session on a node that then went down (acknowledged
    to their publisher, so in its store) reach the client where it came back: the restarted
    node hands them to the node that holds the session now, after what came since."""
    from cymqtt.store import MemoryStore
    store = MemoryStore()
    a = cluster("a")
    b = cluster("b", store=store)
    dev = clients(b.port, "dev", session_expiry=600, clean=False)
    dev.subscribe("d/#", 1)
    dev.close()
    pub = clients(b.port, "pub-b")
    for i in range(3):
        pub.publish("d/x", f"queued {i}", qos=1)       # queued for dev on b, committed
    pub.close()
    b.stop()
    wait_until(lambda: _stats(a)["cluster_nodes"] == 1)
    back = clients(a.port, "dev", session_expiry=600, clean=False)
    assert back.session_present is True               # from the sessions bucket
    clients(a.port, "pub-a").publish("d/x", b"since", qos=1)
    assert back.wait_messages(1)[0].payload == b"since"
    b2 = cluster("b", store=store)                  # restores dev with its 3, finds it on a
    got = back.wait_messages(4)
    assert [m.payload for m in got] == [b"since", b"queued 0", b"queued 1", b"queued 2"]
    assert b2.call(lambda: b2.broker.session("dev")) is None
    assert _stats(a)["cluster_late_messages"] == 3


def test_the_rest_api_lists_and_acts_on_every_node(cluster, clients):
    import json
    import urllib.request

    from cymqtt.config import HttpConfig
    a = cluster("a", http=HttpConfig(port=0))
    b = cluster("b")
    ca = clients(a.port, "on-a")
    ca.subscribe("x/a", 1)
    cb = clients(b.port, "on-b")
    cb.subscribe("x/b", 1)
    base = f"http://127.0.0.1:{a.broker.http_port}/api/v1"

    def get(path: str, method: str = "GET") -> dict:
        req = urllib.request.Request(base + path, method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    page = get("/clients")
    assert page["total"] == 2
    assert [c["client_id"] for c in page["items"]] == ["on-a", "on-b"]
    assert get("/clients?limit=1&page=2")["items"][0]["client_id"] == "on-b"
    detail = get("/clients/on-b")
    assert [s["topic_filter"] for s in detail["subscriptions"]] == ["x/b"]
    subs = get("/subscriptions")
    assert [(s["client_id"], s["topic_filter"]) for s in subs["items"]] == [
        ("on-a", "x/a"), ("on-b", "x/b")]
    assert get("/clients/on-b", "DELETE") == {"disconnected": "on-b"}
    assert cb.wait_disconnected() == 0x98
    wait_until(lambda: get("/clients")["total"] == 1)


def test_a_session_whose_node_died_is_taken_on_with_its_subscriptions(cluster, clients,
                                                                      nats_server, tmp_path):
    a = cluster("a")
    conf = tmp_path / "b.toml"
    b_port = free_port()
    conf.write_text(f'port = {b_port}\npersistence = false\n[cluster]\n'
                    f'nats = "{nats_server.url}"\nnode = "b"\nname = "t"\nnode_timeout = 1.5\n')
    proc = subprocess.Popen([sys.executable, "-m", "cymqtt", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _stats(a)["cluster_nodes"] == 2 and _connectable(b_port),
                   timeout=15)
        dev = clients(b_port, "dev", session_expiry=600, clean=False)
        dev.subscribe("d/#", 1)
        dev.subscribe("$share/g/jobs", 1)
        time.sleep(0.3)                               # (its record reaches the bucket)
    finally:
        proc.kill()                                   # kill -9: no goodbye
        proc.wait()
    dev.close()
    wait_until(lambda: _stats(a)["cluster_nodes"] == 1, timeout=10)
    back = clients(a.port, "dev", session_expiry=600, clean=False)
    assert back.session_present is True
    assert _stats(a)["cluster_sessions_recovered"] == 1
    clients(a.port, "pub").publish("d/1", b"after the crash", qos=1)
    assert back.wait_messages(1)[0].payload == b"after the crash"
    fresh = clients(a.port, "other", session_expiry=600, clean=False)
    assert fresh.session_present is False             # nothing made up for unknown ids
