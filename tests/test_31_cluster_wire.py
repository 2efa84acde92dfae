"""cluster/wire.py without a network: topic levels to NATS tokens and back one to one, NATS's
subject matching over the subjects a filter becomes agreeing with MQTT's matching (checked
against a model of NATS's rules), and messages and sessions surviving the trip between nodes."""
from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from cymqtt._fast.inflight import AWAIT_PUBACK, AWAIT_PUBCOMP
from cymqtt._fast.topics import TopicTrie
from cymqtt.cluster.wire import (
    escape_level, filter_subjects, kv_key, kv_topic, message_fields, pack_message,
    pack_messages, pack_session, topic_subject, unpack_message, unpack_messages,
    unpack_session,
)
from cymqtt.config import Config
from cymqtt.message import Message
from cymqtt.session import Session, Subscription

import pytest

TOKEN = re.compile(r"^[^\s.*>]+$")


def _nats_match(pattern: str, subject: str) -> bool:
    # NATS's rule: `*` is one token, `>` (last) one or more, anything else itself.
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


topics = st.lists(st.text(alphabet=st.sampled_from("ab.* >%ü_-0"), max_size=3), min_size=1,
                  max_size=4).map("/".join)


@given(st.text(max_size=12).filter(lambda t: "/" not in t))
def test_a_level_becomes_one_valid_token(level):
    token = escape_level(level)
    assert TOKEN.match(token), token


@given(st.lists(st.text(max_size=6).filter(lambda t: "/" not in t), min_size=1, max_size=5),
       st.lists(st.text(max_size=6).filter(lambda t: "/" not in t), min_size=1, max_size=5))
def test_escaping_is_one_to_one(a, b):
    ta, tb = "/".join(a), "/".join(b)
    assert (topic_subject("p", ta) == topic_subject("p", tb)) == (ta == tb)


def test_the_common_case_is_the_topic_with_dots():
    assert topic_subject("p.m", "sensors/3/temp") == "p.m.sensors.3.temp"
    assert topic_subject("p.m", "a.b/ c//") == "p.m.a%2Eb.%20c.%.%"
    assert filter_subjects("p.m", "a/+/#") == ["p.m.a.*.>", "p.m.a.*"]
    assert filter_subjects("p.m", "#") == ["p.m.>"]


@settings(max_examples=400)
@given(topics, st.lists(st.sampled_from(["a", "b", "+", "*", ".", "", "ü", "%"]), min_size=1,
                        max_size=4), st.booleans())
def test_nats_matching_agrees_with_mqtt(topic, filter_levels, hash_end):
    topic_filter = "/".join(filter_levels + (["#"] if hash_end else []))
    trie = TopicTrie()
    trie.subscribe(topic_filter, 1, 1)
    mqtt = bool(trie.match(topic))
    subject = topic_subject("p", topic)
    nats = any(_nats_match(s, subject) for s in filter_subjects("p", topic_filter))
    assert nats == mqtt, (topic, topic_filter)


@given(st.text(max_size=40))
def test_kv_keys_round_trip(topic):
    key = kv_key(topic)
    assert re.match(r"^[-/_=.A-Za-z0-9]+$", key)
    assert kv_topic(key) == topic


def test_a_message_travels_with_its_properties_and_the_time_it_has_left():
    props = {3: "text/plain", 9: b"corr", 38: [("k", "v"), ("k", "w")], 2: 60}
    msg = Message("a/b", b"\x00payload", 1, True, props, 100.0 + 60, "sender-1")
    data = pack_message(msg, 100.0, "node-a")
    back, origin = unpack_message(data, 5000.0)
    assert (back.topic, back.payload, back.qos, back.retain, back.properties, back.sender) == \
        ("a/b", b"\x00payload", 1, True, props, "sender-1")
    assert back.expires_at == 5060.0 and origin == "node-a"


def test_a_ticks_messages_on_one_topic_travel_together_in_order():
    msgs = [Message("t", str(i).encode(), i % 3, False, None, None, "s") for i in range(50)]
    back, origin, seq = unpack_messages(
        pack_messages([message_fields(m, 0.0) for m in msgs], "a", 7), 0.0)
    assert (origin, seq) == ("a", 7)
    assert [(m.payload, m.qos) for m in back] == [(m.payload, m.qos) for m in msgs]
    with pytest.raises(ValueError, match="not one"):
        unpack_message(pack_messages([message_fields(m, 0.0) for m in msgs[:2]]), 0.0)


def test_a_batch_over_the_nats_payload_limit_goes_as_several_in_order():
    """NatsBus._packed: a tick's messages for one node in as few NATS payloads as fit the
    server's max_payload, numbered one after the other, in order; a message that cannot fit
    on its own is counted and left out."""
    pytest.importorskip("nats")
    from cymqtt.cluster.nats import NatsBus
    from cymqtt.config import ClusterConfig

    bus = NatsBus(ClusterConfig(nats=("nats://127.0.0.1:1",), node="a"))
    msgs = [Message("t", bytes([i]) * 300, 1, False, None, None, "s") for i in range(40)]
    fields = [message_fields(m, 0.0) for m in msgs]
    assert [(seq, n) for _, seq, n in bus._packed(fields, 1 << 20)] == [(1, 40)]
    parts = bus._packed(fields, 4096)
    assert len(parts) > 3 and all(len(data) <= 4096 for data, _, _ in parts)
    assert [seq for _, seq, _ in parts] == list(range(2, 2 + len(parts)))
    back = [m for data, _, _ in parts for m in unpack_messages(data, 0.0)[0]]
    assert [m.payload for m in back] == [m.payload for m in msgs]
    huge = message_fields(Message("t", b"x" * 5000, 0, False, None, None, "s"), 0.0)
    parts = bus._packed([fields[0], huge, fields[1]], 4096)
    assert [m.payload for data, _, _ in parts for m in unpack_messages(data, 0.0)[0]] == \
        [msgs[0].payload, msgs[1].payload]
    assert bus.counters["cluster_too_big"] == 1


@pytest.mark.parametrize("junk", [b"", b"\x00\xff", b"\xe9" * 10,
                                  __import__("marshal").dumps((2, "t", b"", 0)),
                                  __import__("marshal").dumps((1, "a", 1, [(5, b"p", 0, 0, None,
                                                                          None, None)])),
                                  __import__("marshal").dumps((1, "a", 1, [("t", b"p", 3, 0,
                                                                            None, None, None)])),
                                  __import__("marshal").dumps((1, "a", 1, [("t", b"p")])),
                                  __import__("marshal").dumps((1, 5, 1, [])),
                                  __import__("marshal").dumps((1, "a", "x", []))])
def test_what_no_node_sent_is_refused(junk):
    with pytest.raises(ValueError):
        unpack_message(junk, 0.0)


def test_a_session_is_handed_over_with_its_window_as_it_stood():
    config = Config(max_inflight=3)
    s = Session("dev", config)
    s.version, s.expiry_interval, s.requested_expiry = 5, 300, 600
    s.subscriptions["a/#"] = Subscription(s, "a/#", "a/#", None, 1 | 4, 7)
    s.subscriptions["$share/g/b"] = Subscription(s, "$share/g/b", "b", "g", 2 | 8 | 16, None)
    msgs = [Message(f"a/{i}", str(i).encode(), 2 if i % 2 else 1) for i in range(6)]
    w = s._window()
    for m in msgs:
        w.submit((m, False, [7], None, 0), m.qos, True)
    w.pubrec(2)                                  # the second one (QoS 2) got PUBREC
    data = pack_session(s, 0.0)
    back, items = unpack_session(data, config, 0.0)
    assert (back.client_id, back.version, back.expiry_interval, back.requested_expiry) == \
        ("dev", 5, 300, 600)
    subs = {f: (x.group, x.topic_filter, x.qos, x.no_local, x.retain_as_published,
                x.retain_handling, x.sub_id) for f, x in back.subscriptions.items()}
    assert subs == {"a/#": (None, "a/#", 1, True, False, 0, 7),
                    "$share/g/b": ("g", "b", 2, False, True, 1, None)}
    assert [(m.payload, qos, pid, state) for m, _, _, _, qos, pid, state in items] == [
        (b"0", 1, 1, 0), (b"1", 2, 2, AWAIT_PUBCOMP), (b"2", 1, 3, 0),
        (b"3", 2, 0, 0), (b"4", 1, 0, 0), (b"5", 2, 0, 0)]
    # Put back on the other node, the window is as it was: 1..3 in flight, 2 awaiting PUBCOMP.
    for msg, retain, sub_ids, shared, qos, pid, state in items:
        back.put_back((msg, retain, sub_ids, shared, 0), qos, pid, state)
    states = [(pid, state) for pid, _, state, _ in back.window.resend()]
    assert states == [(1, AWAIT_PUBACK), (2, AWAIT_PUBCOMP), (3, AWAIT_PUBACK)]
    assert back.window.queued_count == 3
