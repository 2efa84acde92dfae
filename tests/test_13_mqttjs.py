"""MQTT 5 interoperability with MQTT.js v5 (GitHub issue "MQTT 5.0, all of it").

The scenarios live in tests/js/mqtt5.mjs (MQTT.js pinned by tests/js/package-lock.json); each runs
as `node mqtt5.mjs <port> <scenario>` against a real broker on a real socket, bounded by its own
deadline and by the subprocess timeout here, and prints one line of JSON with what its clients saw.
Spec references are to MQTT 5.0 (OASIS, 2019).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def node_ready():
    """node plus MQTT.js installed from the lock file (npm ci when node_modules is missing)."""
    if NODE is None:
        pytest.skip("node is not installed: the MQTT.js interoperability tests need Node.js")
    if not (JS_DIR / "node_modules" / "mqtt" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: cannot install MQTT.js"
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"npm ci failed in {JS_DIR}:\n{done.stderr[-2000:]}"
    return NODE


def run_js(node: str, port: int, scenario: str) -> dict:
    done = subprocess.run([node, "mqtt5.mjs", str(port), scenario], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=30)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert lines, (f"scenario {scenario}: no JSON from node (exit {done.returncode})\n"
                   f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    assert result.get("ok") is True, f"scenario {scenario} failed: {result.get('error')}"
    assert done.returncode == 0, done.stderr[-2000:]
    return result


def test_mqttjs_v5_user_properties_and_subscription_identifiers(broker, node_ready):
    """MQTT.js connects with MQTT 5, subscribes with Subscription Identifiers 7 and 268,435,455
    and publishes with user properties (one key repeated), content type, payload format indicator
    and message expiry.

    - "The Server MUST send all User Properties unaltered in a PUBLISH packet when forwarding the
      Application Message to a Client" and "MUST maintain the order of User Properties"
      [MQTT-3.3.2-17, MQTT-3.3.2-18].
    - Content Type and Payload Format Indicator are sent unaltered to all subscribers
      [MQTT-3.3.2-20, MQTT-3.3.2-4].
    - Overlapping subscriptions: the message carries every matching Subscription Identifier
      [MQTT-3.3.4-3]; "1 to 268,435,455" is the identifier's range (section 3.8.2.1.2).
    """
    out = run_js(node_ready, broker.port, "basic")
    assert out["connack"]["topicAliasMaximum"] == broker.broker.config.topic_alias_maximum
    first, second = out["messages"]
    assert first["topic"] == "js/basic/a/x" and first["payload"] == "hello"
    props = first["properties"]
    assert props["userProperties"] == {"region": "eu", "tag": ["first", "second"]}
    assert props["contentType"] == "text/plain"
    assert props["payloadFormatIndicator"] is True
    # Forwarded at once: the remaining expiry is still the full 120 s (rounded up).
    assert 0 < props["messageExpiryInterval"] <= 120
    assert sorted(props["subscriptionIdentifier"]) == [7, 268435455]
    # js/basic/plain matches js/basic/# (id 7) and js/basic/plain (no identifier).
    assert second["topic"] == "js/basic/plain"
    assert second["properties"].get("subscriptionIdentifier") == [7]
    assert "userProperties" not in second["properties"]


def test_mqttjs_topic_aliases_both_ways(broker, node_ready):
    """The MQTT.js publisher sets Topic Alias 1 with a topic, reuses it with an empty topic, remaps
    it to another topic, and another MQTT.js client assigns aliases itself; the subscriber, which
    announced a Topic Alias Maximum, receives every message under its real topic.

    - "A sender can modify the Topic Alias mapping by sending another PUBLISH in the same Network
      Connection with the same Topic Alias value and a different non-zero length Topic Name"
      (section 3.3.2.3.4).
    - Outbound, the broker may use aliases up to the client's Topic Alias Maximum
      [MQTT-3.1.2-26]: the wire shows topic + alias first, then an empty topic + alias.
    """
    out = run_js(node_ready, broker.port, "alias")
    assert out["broker_topic_alias_maximum"] == broker.broker.config.topic_alias_maximum
    msgs = out["messages"]
    assert [(m["topic"], m["payload"]) for m in msgs] == [
        ("js/alias/t", "one"), ("js/alias/t", "two"), ("js/alias/u", "three"),
        ("js/alias/u", "four"), ("js/alias/auto", "five"), ("js/alias/auto", "six")]
    # What the broker put on the wire to the subscriber: every alias within the subscriber's
    # maximum of 10, the first use of an alias with its topic, repeats with an empty topic.
    seen: dict[int, str] = {}
    for m in msgs:
        alias = m["properties"].get("topicAlias")
        assert alias is None or 1 <= alias <= 10, m
        if m["wire_topic"] == "":
            assert alias is not None and seen.get(alias) == m["topic"], m
        elif alias is not None:
            seen[alias] = m["wire_topic"]
    assert any(m["wire_topic"] == "" for m in msgs), "the broker never used an outbound alias"


@pytest.mark.broker_config(response_information="js/reply/{client_id}/")
def test_mqttjs_request_response_round_trip(broker, node_ready):
    """Request/response with MQTT.js on both sides: the requester asks for Response Information,
    builds its response topic from it, and sends two requests with Response Topic and
    Correlation Data; the responder answers each on the response topic with the same correlation
    data.

    - "The Server MUST send the Response Topic unaltered to all subscribers receiving the
      Application Message" [MQTT-3.3.2-15]; likewise the Correlation Data [MQTT-3.3.2-16].
    - Request Response Information = 1 lets the Server return Response Information in CONNACK
      (section 3.1.2.11.6 / 3.2.2.3.15).
    """
    out = run_js(node_ready, broker.port, "reqres")
    assert out["response_information"] == "js/reply/js-requester/"
    replies = out["replies"]
    assert [r["payload"] for r in replies] == ["answer to ping", "answer to pong"]
    assert [r["properties"]["correlationData"]["hex"] for r in replies] == ["c0ffee01",
                                                                          "c0ffee02"]
    assert all(r["topic"] == "js/reply/js-requester/answer" for r in replies)
    assert all(r["properties"]["userProperties"] == {"status": "ok"} for r in replies)
