"""`cymqtt --workers N` as one broker (issue 13): what a client gets does not depend on the
worker the kernel gave it to.

Every test starts the real command (`python -m cymqtt --workers 2`: a supervisor, two workers
sharing the port with SO_REUSEPORT, meeting as nodes "worker-1" and "worker-2" on the
supervisor's nats-server), places real paho clients on a chosen worker (`paho_on` retries
with new client ids until the log says the client landed there; `port_to` and `paho_from`
connect one client id from a local port that lands there), and checks fan-out, shared
subscriptions, client-id takeover with the session handed over, a persistent session whose
worker is killed, and the whole-broker figures of /api/v1/stats, /metrics and $SYS.
test_32_workers covers starting, stopping and restarting, p2p QoS 1 and retained messages.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import marshal
import os
import re
import signal

import pytest

from cymqtt.cluster.wire import kv_key
from helpers_paho import V5, V311, PahoClient, wait_until
from helpers_workers import alive, free_port, landed_on, paho_from, paho_on, port_to

nats = pytest.importorskip("nats")

pytestmark = pytest.mark.loop_independent      # (every broker here is a process of its own)


# -- what one worker answers over HTTP --------------------------------------------------------

def stats_and_metrics(http_port: int) -> tuple[dict, dict[str, float]]:
    """/api/v1/stats and /metrics over one HTTP/1.1 connection, so from one worker (whichever
    the kernel gave the connection to)."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    try:
        conn.request("GET", "/api/v1/stats")
        r = conn.getresponse()
        assert r.status == 200
        stats = json.loads(r.read())
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        metrics = {}
        for line in r.read().decode().splitlines():
            if line.startswith("cymqtt_") and "{" not in line:
                name, _, value = line.partition(" ")
                metrics[name] = float(value)
        return stats, metrics
    finally:
        conn.close()


def both_workers_show(http_port: int, want: dict[str, int],
                      metrics: dict[str, int] | None = None) -> dict[str, dict]:
    """Wait until each worker has answered /api/v1/stats with the figures `want` (and
    /metrics with `metrics`); returns each worker's answer. The workers are told apart by
    their route counts: the one whose clients hold more filters is worker 1 (each test sees
    to that). Another worker's figures are as of its last heartbeat (every node_timeout / 3,
    1 s): hence the wait."""
    answered: dict[str, dict] = {}
    last: dict[str, dict] = {}

    def both() -> bool:
        stats, got = stats_and_metrics(http_port)
        assert stats["cluster_nodes"] == 2, stats
        local, remote = stats["cluster_routes_local"], stats["cluster_routes_remote"]
        assert local != remote, stats
        worker = "worker-1" if local > remote else "worker-2"
        last[worker] = {k: stats[k] for k in want} | {k: got[k] for k in metrics or {}}
        if all(stats[k] == v for k, v in want.items()) and \
                all(got[k] == v for k, v in (metrics or {}).items()):
            answered[worker] = stats
        return len(answered) == 2
    try:
        wait_until(both, timeout=20, interval=0.05,
                   what=f"both workers answering {want} {metrics or ''}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; their last answers: {last}") from None
    return answered


# -- fan-out and shared subscriptions ---------------------------------------------------------

def test_fanout_reaches_subscribers_on_both_workers(workers):
    """One publisher on worker 1; two subscribers on each worker. Every subscriber gets
    every message, QoS 0 and QoS 1, once each, in the order published (the last one, QoS 1,
    comes last: once it is in, nothing else is on its way)."""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    subs = [paho_on(w, port, f"worker-{k}", f"sub-{k}-{j}") for k in (1, 2) for j in range(2)]
    for s in subs:
        s.subscribe("fan/#", qos=1)                 # SUBACK: both workers have the route
    pub = paho_on(w, port, "worker-1", "pub")
    n = 100
    sent = [(f"0:{i}".encode(), 0) for i in range(n)] + [(f"1:{i}".encode(), 1)
                                                         for i in range(n)]
    for payload, qos in sent:
        pub.publish(f"fan/{qos}", payload, qos=qos, wait=False)
    pub.publish("fan/1", b"end", qos=1)             # waits for its PUBACK
    sent.append((b"end", 1))
    for s in subs:
        wait_until(lambda: b"end" in s.payloads(), timeout=15,
                   what=f"the last message at {s.client_id}")
        assert [(m.payload, m.qos) for m in s.messages] == sent, s.client_id
    for c in [*subs, pub]:
        c.close()
    assert w.stop() == 0


def test_shared_subscription_one_member_cluster_wide(workers):
    """`$share/g/jobs/#` with two members on each worker. From a publisher on worker 1, then
    from one on worker 2: each of 200 QoS 1 messages reaches exactly one member, none is
    lost, and members on both workers get some. (Markers published after each round until
    every member has one: a member's messages come in order, so once its marker is in,
    nothing of the round is still on its way to it.)"""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    members = [paho_on(w, port, f"worker-{k}", f"m-{k}-{j}") for k in (1, 2)
               for j in range(2)]
    for m in members:
        m.subscribe("$share/g/jobs/#", qos=1)
    n = 200
    for origin in ("worker-1", "worker-2"):
        for m in members:
            m.clear()
        pub = paho_on(w, port, origin, f"pub-{origin}")
        for i in range(n):
            pub.publish(f"jobs/{i % 4}", str(i), qos=1, wait=False)
        markers = 0
        while not all(any(p.startswith(b"end") for p in m.payloads()) for m in members):
            assert markers < 200, "200 markers and some member got none"
            marker = f"end-{markers}".encode()
            pub.publish("jobs/end", marker, qos=1)
            got = wait_until(lambda: [m for m in members if marker in m.payloads()],
                             timeout=15, what=f"{marker!r} at a member")
            assert len(got) == 1 and got[0].payloads().count(marker) == 1, marker
            markers += 1
        jobs = {m.client_id: [int(p) for p in m.payloads() if not p.startswith(b"end")]
                for m in members}
        assert sorted(j for got in jobs.values() for j in got) == list(range(n)), origin
        for k in (1, 2):
            assert sum(len(jobs[m.client_id]) for m in members[2 * k - 2:2 * k]) > 0, \
                (origin, k, {c: len(j) for c, j in jobs.items()})
        pub.close()
    for m in members:
        m.close()
    assert w.stop() == 0


# -- client ids: takeover and a killed worker -------------------------------------------------

@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
def test_takeover_across_workers_hands_the_session_over(workers, protocol):
    """A persistent session ("dev": MQTT 5 session expiry 300 s, or 3.1.1 clean session 0)
    on worker 1 with a subscription. The same client id connects on worker 2: the old
    connection is closed (MQTT 5: DISCONNECT 0x8E), the CONNACK says session present, and
    the subscription goes on delivering there, from either worker. Then the client leaves,
    QoS 1 messages are queued for it on worker 2, and it comes back on worker 1: session
    present, the queued messages in order, and the subscription still works."""
    port = free_port()
    w = workers("--workers", "2", "-p", str(port), "--no-persistence")
    persistent = dict(protocol=protocol, clean=False) if protocol == V311 else \
        dict(protocol=protocol, clean=False, session_expiry=300)
    pub1 = paho_on(w, port, "worker-1", "pub1")
    pub2 = paho_on(w, port, "worker-2", "pub2")
    first = paho_from(port, port_to(w, port, "worker-1"), "dev", **persistent)
    assert landed_on(w, ["dev"]) == {"dev": "worker-1"}
    assert first.session_present is False
    first.subscribe("cmd/dev", qos=1)
    pub2.publish("cmd/dev", b"before", qos=1)
    assert first.wait_messages(1)[0].payload == b"before"

    second = paho_from(port, port_to(w, port, "worker-2"), "dev", **persistent)
    assert landed_on(w, ["dev"]) == {"dev": "worker-2"}
    assert second.session_present is True
    rc = first.wait_disconnected()
    if protocol == V5:
        assert rc == 0x8E, f"DISCONNECT reason {rc:#x}"
    pub1.publish("cmd/dev", b"after takeover", qos=1)       # worker 1 routes it to worker 2
    assert second.wait_messages(1)[0].payload == b"after takeover"

    second.disconnect()                    # the session stays on worker 2, and gets a queue
    for i in range(5):
        pub2.publish("cmd/dev", f"queued {i}", qos=1)       # queued there when PUBACKed
    third = paho_from(port, port_to(w, port, "worker-1"), "dev", **persistent)
    assert landed_on(w, ["dev"]) == {"dev": "worker-1"}
    assert third.session_present is True
    queued = [f"queued {i}".encode() for i in range(5)]
    wait_until(lambda: [p for p in third.payloads() if p.startswith(b"queued")] == queued,
               timeout=10, what="the 5 queued messages, in order")
    # (Besides them, only a re-send (DUP) of "after takeover" may come first: second's
    # PUBACK for it may have gone out after its DISCONNECT, which the broker does not read.)
    others = [m for m in third.messages if not m.payload.startswith(b"queued")]
    assert all(m.dup and m.payload == b"after takeover" for m in others), others
    pub2.publish("cmd/dev", b"home", qos=1)                 # worker 2 routes it to worker 1
    wait_until(lambda: b"home" in third.payloads(), timeout=10, what="'home'")
    for c in (first, second, third, pub1, pub2):
        c.close()
    assert w.stop() == 0


def session_record(nats_url: str, client_id: str) -> tuple | None:
    """The record of `client_id`'s session in the cluster's sessions bucket (README: Cluster,
    "Nodes come and go"): (node, its run, when the client left or None, the session)."""
    async def get() -> tuple | None:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value("cymqtt_sessions")
            try:
                entry = await kv.get(kv_key(client_id))
            except nats.js.errors.KeyNotFoundError:
                return None
            return marshal.loads(entry.value) if entry.value else None
        finally:
            await nc.close()
    return asyncio.run(get())


@pytest.mark.parametrize("back_on, when", [("worker-1", "down"), ("worker-1", "restarted"),
                                           ("worker-2", "restarted")],
                         ids=["on-1-while-2-is-down", "on-1-after-2-restarted",
                              "on-2-after-it-restarted"])
def test_a_session_whose_worker_is_killed_comes_back(workers, tmp_path, back_on, when):
    """A persistent 3.1.1 session on worker 2 (persistence on, --data-dir in tmp_path), its
    client gone, three QoS 1 messages queued for it there (PUBACKed, so in worker 2's
    store). kill -9 worker 2 (the supervisor restarts it). The client comes back: at once,
    so on worker 1, the only one listening until worker 2 is back; or once worker 2 is back,
    on worker 1 or on worker 2. In every case it gets session present, its subscription
    (a message published after the CONNACK reaches it) and the three queued messages, in
    order, and the session is in one place: both workers count 2 sessions (the client's and
    a publisher's), none of them offline.

    What happens to the messages queued on the dead worker, as the README (Cluster, "Nodes
    come and go") and cluster/nats.py say:
    - back on worker 1 while worker 2 is down: worker 1 takes the session on from the
      cluster's sessions bucket, subscriptions only ("the messages that were queued on the
      dead node come back only if that node does"); they do: the restarted worker 2
      restores them from its store, finds the session on worker 1 and hands them over, so
      they arrive after what came since;
    - back on worker 1 after the restart: worker 2 (its store restored) hands the session
      over with its queue, as any takeover;
    - back on worker 2 after the restart: its own store has the session and the queue."""
    port, http_port = free_port(), free_port()
    w = workers("--workers", "2", "-p", str(port), "--data-dir", str(tmp_path / "data"),
                "--http", str(http_port))
    cid = "dev"      # (paho_on would leave the sessions of its misses on worker 1)
    dev = paho_from(port, port_to(w, port, "worker-2"), cid, protocol=V311, clean=False)
    assert landed_on(w, [cid])[cid] == "worker-2"
    dev.subscribe("d/#", qos=1)             # SUBACK once committed to worker 2's store
    dev.disconnect()
    pub2 = paho_on(w, port, "worker-2", "pub2")
    queued = [f"queued {i}".encode() for i in range(3)]
    for payload in queued:
        pub2.publish("d/x", payload, qos=1)    # PUBACK once committed for the offline dev
    pub2.close()
    wait_until(lambda: (r := session_record(w.nats_url, cid)) is not None and
               r[0] == "worker-2" and r[2] is not None, timeout=10,
               what="worker 2's record of the session, with its client gone")
    victim = w.pids[1]
    os.kill(victim, signal.SIGKILL)
    w.wait_for(re.compile(rf"worker 2 \(pid {victim}\) killed by SIGKILL"))
    restarted = re.compile(r"worker 2 restarted: pid (\d+)")
    persistent = dict(protocol=V311, clean=False, timeout=10)
    if when == "down":
        # (now: the supervisor waits 0.5 s before it restarts worker 2, which then takes
        # longer than that to start listening)
        back = PahoClient(port, cid, **persistent)
        assert landed_on(w, [cid])[cid] == "worker-1"
    else:
        new_pid = int(w.wait_for(restarted, timeout=30).group(1))
        back = paho_from(port, port_to(w, port, back_on), cid, **persistent)
        assert landed_on(w, [cid])[cid] == back_on
    assert back.session_present is True
    pub1 = paho_on(w, port, "worker-1", "pub1")
    pub1.publish("d/x", b"since", qos=1)
    if when == "down":
        assert back.wait_messages(1, timeout=10)[0].payload == b"since"
        w.wait_for(re.compile(rf"worker-1 cymqtt\.cluster: client {re.escape(cid)}: its "
                              r"session was on node worker-2, which is gone or did not "
                              r"answer: taken on here with its 1 subscriptions"))
        new_pid = int(w.wait_for(restarted, timeout=30).group(1))
        expected = [b"since", *queued]
    else:
        expected = [*queued, b"since"]
    got = back.wait_messages(4, timeout=15)
    assert [m.payload for m in got] == expected
    if back_on == "worker-1":
        handed = r"3 messages it was due on a node that was down came from there" \
            if when == "down" else \
            r"session handed over by node worker-2 \(1 subscriptions, 3 messages\)"
        w.wait_for(re.compile(rf"worker-1 cymqtt\.cluster: client {re.escape(cid)}: "
                              + handed))
    # The session is in one place: 2 sessions in the whole broker (back's and pub1's), none
    # without its client (no copy left on worker 2), as both workers say. (Worker 1 holds
    # back's filter, worker 2 none.)
    both_workers_show(http_port, {"sessions": 2, "clients_disconnected": 0,
                                  "clients_connected": 2})
    back.close()
    pub1.close()
    assert w.stop() == 0
    assert not alive(new_pid)               # the restarted worker stopped with the rest


# -- whole-broker figures ----------------------------------------------------------------------

def test_stats_metrics_and_sys_show_the_whole_broker(workers, tmp_path):
    """Three clients on worker 1, one on worker 2, each with its own subscriptions, and a
    `$SYS/broker/clients/connected` subscriber on each worker (sys_interval 1 s); one
    message published on each worker. Both workers answer /api/v1/stats and /metrics (told
    apart by their route counts) with the whole broker's figures, gauges and counters: 6
    clients connected, 6 connections, 6 sessions, 6 subscriptions, 2 messages received. Each
    $SYS subscriber sees 6 clients connected: each worker publishes the whole broker's
    figures to its own clients."""
    port, http_port = free_port(), free_port()
    conf = tmp_path / "cymqtt.toml"
    conf.write_text(f"port = {port}\nworkers = 2\nsys_interval = 1\n")
    w = workers("-c", str(conf), "--http", str(http_port), "--no-persistence")
    on_1 = [paho_on(w, port, "worker-1", f"a{i}") for i in range(3)]
    for i, c in enumerate(on_1):
        c.subscribe(f"fig/a/{i}", qos=1)              # worker 1: 3 routes of its own
    on_2 = paho_on(w, port, "worker-2", "b")
    on_2.subscribe("fig/b", qos=1)                    # worker 2: 1
    watchers = [paho_on(w, port, f"worker-{k}", f"sys{k}") for k in (1, 2)]
    for c in watchers:
        c.subscribe("$SYS/broker/clients/connected", qos=0)
    clients = [*on_1, on_2, *watchers]
    on_1[0].publish("fig/b", b"from worker 1", qos=1)
    on_2.publish("fig/a/0", b"from worker 2", qos=1)
    assert on_2.wait_messages(1)[0].payload == b"from worker 1"
    assert on_1[0].wait_messages(1)[0].payload == b"from worker 2"
    # (worker 1 holds 4 filters, worker 2 2, $SYS included)
    both_workers_show(
        http_port, {"clients_connected": 6, "connections": 6, "sessions": 6,
                    "subscriptions": 6, "messages_received": 2},
        {"cymqtt_clients_connected": 6, "cymqtt_connections": 6, "cymqtt_sessions": 6,
         "cymqtt_subscriptions": 6, "cymqtt_messages_received_total": 2})
    for c in watchers:
        wait_until(lambda: c.messages and c.messages[-1].payload == b"6", timeout=10,
                   what=f"$SYS/broker/clients/connected = 6 at {c.client_id}")
    for c in clients:
        c.close()
    assert w.stop() == 0

