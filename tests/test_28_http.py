"""The HTTP listener (GitHub issue 11, part 2): Prometheus `/metrics`, the REST API under
`/api/v1/`, its OpenAPI description, the bearer token and the JSON errors.

A real broker with an `[http]` listener on free ports; real MQTT clients (paho, RawClient)
connect, subscribe and publish; the API is asked over real HTTP (urllib) and what it answers
must follow what the test did.
"""
from __future__ import annotations

import base64
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _testbase import RawClient
from cymqtt._fast.codec import Connect, Subscribe
from cymqtt.config import HttpConfig
from helpers_http import HTTP, Api, quote
from helpers_paho import V5, V311, PahoClient, props, wait_until
from mqtt5_helpers import expect_disconnect, next_packet
from paho.mqtt.packettypes import PacketTypes


@pytest.fixture
def bt(make_broker):
    return make_broker(http=HTTP)


@pytest.fixture
def api(bt):
    return Api(bt.broker.http_port)


@pytest.fixture
def clients():
    made: list = []
    yield made
    for c in made:
        c.close()


def raw_connect(port: int, client_id: str, version: int = 4, **kw) -> RawClient:
    c = RawClient(port, version)
    c.send_packet(Connect(client_id, version=version, **kw))
    ack = next_packet(c, "CONNACK")
    assert ack.reason_code == 0
    return c


def scrape(api: Api) -> dict[str, dict[tuple, float]]:
    """name -> {labels as sorted tuples: value} of every sample."""
    status, text = api.get("/metrics")
    assert status == 200
    assert api.last_headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


# -- /metrics --------------------------------------------------------------------------------

def test_metrics_follow_connections_and_messages(bt, api, clients):
    sub = PahoClient(bt.port, "m-sub", V5)
    pub = PahoClient(bt.port, "m-pub", V311)
    idle = RawClient(bt.port)            # a socket that never sends CONNECT
    clients += [sub, pub, idle]
    sub.subscribe("m/#", qos=1)
    for i in range(5):
        pub.publish(f"m/{i}", b"x" * 10, qos=1)
    pub.publish("m/kept", b"retained", qos=0, retain=True)
    sub.wait_messages(6)

    def acked() -> dict | None:
        # The subscriber's PUBACKs may still be on their way when it has the messages.
        m = scrape(api)
        return m if value(m, "cymqtt_inflight_messages") == 0 else None

    m = wait_until(acked, what="the subscriber's acks")
    assert value(m, "cymqtt_connections") == 3
    assert value(m, "cymqtt_clients_connected") == 2
    assert value(m, "cymqtt_sessions") == 2
    assert value(m, "cymqtt_subscriptions") == 1
    assert value(m, "cymqtt_retained_messages") == 1
    assert value(m, "cymqtt_messages_received_total") == 6
    assert value(m, "cymqtt_messages_sent_total") == 6
    assert value(m, "cymqtt_bytes_received_total") > 6 * 10
    assert value(m, "cymqtt_bytes_sent_total") > 6 * 10
    assert value(m, "cymqtt_queued_messages") == 0
    for reason in ("queue_full", "slow_consumer", "too_large", "refused"):
        assert value(m, "cymqtt_messages_dropped_total", reason=reason) == 0
    name = bt.broker.listeners[0]["name"]
    assert value(m, "cymqtt_listener_connections", listener=name) == 2
    assert value(m, "cymqtt_build_info", version=api.ok("GET", "/api/v1/stats")["version"]) == 1
    # prometheus_client's process and platform collectors, in this server's own registry
    assert value(m, "process_cpu_seconds_total") > 0
    assert "python_info" in m

    pub.disconnect()
    wait_until(lambda: value(scrape(api), "cymqtt_clients_connected") == 1,
               what="the scrape to see the publisher go")


def test_metrics_count_drops_by_reason(make_broker, clients):
    bt = make_broker(http=HTTP, max_queued=2, max_inflight=1)
    api = Api(bt.broker.http_port)
    # A persistent session that is offline: its queue holds 2 and drops the other 3.
    slow = PahoClient(bt.port, "slow", V311, clean=False)
    clients.append(slow)
    slow.subscribe("d/#", qos=1)
    bt.call(lambda: bt.broker.disconnect("slow"))
    wait_until(lambda: bt.call(lambda: bt.broker.client("slow")) is None, what="slow gone")
    for i in range(5):
        bt.publish(f"d/{i}", b"x", qos=1)
    m = scrape(api)
    assert value(m, "cymqtt_messages_dropped_total", reason="queue_full") == 3
    assert value(m, "cymqtt_queued_messages") == 2
    assert value(m, "cymqtt_sessions_offline") == 1


def test_metrics_speak_openmetrics_when_asked(api):
    status, text = api.call("GET", "/metrics",
                            headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert api.last_headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_two_brokers_do_not_share_a_registry(make_broker, bt, api, clients):
    other = make_broker(http=HTTP)
    clients.append(raw_connect(other.port, "only-on-the-other"))
    assert value(scrape(api), "cymqtt_clients_connected") == 0
    assert value(scrape(Api(other.broker.http_port)), "cymqtt_clients_connected") == 1


# -- clients ---------------------------------------------------------------------------------

def test_clients_are_paginated_and_searchable(bt, api, clients):
    ids = [f"dev-{i:03d}" for i in range(300)] + ["Other/1", "other 2"]
    clients += [raw_connect(bt.port, cid) for cid in ids]

    first = api.ok("GET", "/api/v1/clients", limit=40)
    assert (first["total"], first["page"], first["limit"], first["pages"]) == (302, 1, 40, 8)
    assert len(first["items"]) == 40
    items = api.all_pages("/api/v1/clients", 40)
    assert [c["client_id"] for c in items] == sorted(ids)       # each once, in order

    found = api.ok("GET", "/api/v1/clients", search="DEV-01")   # case-insensitive substring
    assert [c["client_id"] for c in found["items"]] == [f"dev-{i:03d}" for i in range(10, 20)]
    assert found["total"] == 10
    assert api.ok("GET", "/api/v1/clients", search="other")["total"] == 2
    assert api.ok("GET", "/api/v1/clients", search="nobody")["items"] == []

    beyond = api.ok("GET", "/api/v1/clients", page=10**12, limit=1000)
    assert beyond["items"] == [] and beyond["total"] == 302
    assert api.ok("GET", "/api/v1/clients")["limit"] == 100          # the default


@pytest.mark.parametrize("query, needle", [
    ("page=0", "'page' must be >= 1"),
    ("page=-3", "'page' must be >= 1"),
    ("limit=0", "'limit' must be 1..1000"),
    ("limit=1001", "'limit' must be 1..1000"),
    ("page=abc", "'page' must be an integer"),
    ("page=" + "9" * 5000, "'page' must be an integer"),
    ("page=1&page=2", "'page' given 2 times"),
    ("pag=2", "did you mean 'page'?"),
    ("zzz=1", "unknown query parameter 'zzz'"),
])
def test_bad_query_parameters_are_400(api, query, needle):
    status, body = api.call("GET", "/api/v1/clients?" + query)
    assert status == 400, body
    assert needle in body["error"]


def test_one_client_in_detail(bt, api, clients):
    c = PahoClient(bt.port, "sensor/7 é", V5, username="alice", keepalive=30)
    clients.append(c)
    c.subscribe("cmd/7/#", qos=1)
    c.subscribe("$share/grp/jobs", qos=2)
    c.publish("status/7", b"up", qos=1)

    got = api.ok("GET", "/api/v1/clients/" + quote("sensor/7 é"))
    assert got["client_id"] == "sensor/7 é"
    assert got["protocol"] == "5.0"
    assert got["username"] == "alice"
    assert got["keepalive"] == 30
    assert got["address"].startswith("127.0.0.1:")
    assert got["listener"] == bt.broker.listeners[0]["name"]
    assert got["subscription_count"] == 2
    assert (got["received"], got["inflight"], got["queued"], got["dropped"]) == (1, 0, 0, 0)
    subs = {s["topic_filter"]: s for s in got["subscriptions"]}
    assert subs["cmd/7/#"]["qos"] == 1 and subs["cmd/7/#"]["group"] is None
    assert subs["$share/grp/jobs"]["group"] == "grp" and subs["$share/grp/jobs"]["qos"] == 2
    assert all(s["connected"] for s in subs.values())

    bt.publish("cmd/7/reboot", b"now", qos=1)
    c.wait_messages(1)
    assert api.ok("GET", "/api/v1/clients/" + quote("sensor/7 é"))["sent"] == 1

    v3 = raw_connect(bt.port, "old", 3, keepalive=0)
    clients.append(v3)
    assert api.ok("GET", "/api/v1/clients/old")["protocol"] == "3.1"
    status, body = api.call("GET", "/api/v1/clients/nobody")
    assert status == 404 and body == {"error": "no connected client 'nobody'"}


def test_delete_disconnects_an_mqtt5_client_with_0x98(bt, api, raw, clients):
    c = raw(bt.port, "kick/me")
    v311 = raw_connect(bt.port, "kick-v311")
    clients.append(v311)
    assert api.ok("DELETE", "/api/v1/clients/" + quote("kick/me")) == {"disconnected": "kick/me"}
    expect_disconnect(c, 0x98)                  # administrative action
    wait_until(lambda: bt.call(lambda: bt.broker.client("kick/me")) is None,
               what="the broker to drop kick/me")
    assert api.call("DELETE", "/api/v1/clients/" + quote("kick/me"))[0] == 404
    assert api.call("GET", "/api/v1/clients/" + quote("kick/me"))[0] == 404

    api.ok("DELETE", "/api/v1/clients/kick-v311")    # MQTT 3.x: the socket closes
    assert v311.closed()


def test_disconnected_persistent_session_keeps_its_subscriptions(bt, api, clients):
    c = PahoClient(bt.port, "keeper", V5, clean=False, session_expiry=300)
    clients.append(c)
    c.subscribe("keep/#", qos=1)
    api.ok("DELETE", "/api/v1/clients/keeper")
    assert c.disconnected.wait(5) and c.disconnect_rc == 0x98
    subs = api.ok("GET", "/api/v1/subscriptions", client_id="keeper")["items"]
    assert [(s["topic_filter"], s["connected"]) for s in subs] == [("keep/#", False)]


# -- subscriptions ---------------------------------------------------------------------------

def test_subscriptions_are_paginated_and_filterable(bt, api, clients):
    for i in range(40):
        c = raw_connect(bt.port, f"s-{i:02d}", 5)
        clients.append(c)
        c.send_packet(Subscribe(1, [(f"room/{i}/temp", 1), (f"room/{i}/hum", 0 | 4),
                                    ("$share/g/alerts", 2)]))
        next_packet(c, "SUBACK")
    listing = api.all_pages("/api/v1/subscriptions", 25)
    assert len(listing) == 120
    keys = [(s["client_id"], s["topic_filter"]) for s in listing]
    assert keys == sorted(keys) and len(set(keys)) == 120

    mine = api.ok("GET", "/api/v1/subscriptions", client_id="s-07")["items"]
    assert [s["topic_filter"] for s in mine] == ["$share/g/alerts", "room/7/hum", "room/7/temp"]
    hum = mine[1]
    assert (hum["qos"], hum["no_local"], hum["retain_as_published"], hum["retain_handling"],
            hum["group"], hum["subscription_identifier"]) == (0, True, False, 0, None, None)
    assert mine[0]["group"] == "g"

    temps = api.ok("GET", "/api/v1/subscriptions", search="TEMP", limit=1000)
    assert temps["total"] == 40
    assert api.ok("GET", "/api/v1/subscriptions", client_id="nobody")["total"] == 0


# -- retained --------------------------------------------------------------------------------

def test_retained_messages_list_get_and_delete(bt, api, clients):
    for i in range(150):
        bt.publish(f"ret/{i:03d}/state", f"value {i}", qos=1, retain=True)
    bt.publish("$SYS/custom", b"hidden from #", retain=True)
    pub = PahoClient(bt.port, "ret-pub", V5)
    clients.append(pub)
    p = props(PacketTypes.PUBLISH, ContentType="application/octet-stream",
              UserProperty=[("k", "v")], MessageExpiryInterval=3600)
    pub.publish("bin/blob", b"\x00\xff\x10", qos=1, retain=True, properties=p)

    listing = api.ok("GET", "/api/v1/retained", limit=200)
    assert listing["total"] == 151                       # '#' leaves $SYS out
    assert listing["items"][0] == {"topic": "bin/blob", "qos": 1, "size": 3,
                                   "preview": "\x00\ufffd\x10"}
    page = api.ok("GET", "/api/v1/retained", filter="ret/+/state", page=2, limit=100)
    assert (page["total"], len(page["items"])) == (150, 50)
    assert page["items"][0]["topic"] == "ret/100/state"
    assert api.ok("GET", "/api/v1/retained", filter="$SYS/#")["items"][0]["topic"] == \
        "$SYS/custom"

    one = api.ok("GET", "/api/v1/retained/ret/007/state")      # the slashes as they are
    assert (one["payload"], one["encoding"], one["qos"]) == ("value 7", "utf-8", 1)
    assert one["expires_in"] is None and one["properties"] == {}
    blob = api.ok("GET", "/api/v1/retained/" + quote("bin/blob"))
    assert base64.b64decode(blob["payload"]) == b"\x00\xff\x10"
    assert blob["encoding"] == "base64"
    assert blob["properties"]["content_type"] == "application/octet-stream"
    assert blob["properties"]["user_property"] == [["k", "v"]]
    assert 3590 < blob["expires_in"] <= 3600

    assert api.ok("DELETE", "/api/v1/retained/ret/007/state") == {"deleted": "ret/007/state"}
    assert api.call("GET", "/api/v1/retained/ret/007/state")[0] == 404
    assert api.call("DELETE", "/api/v1/retained/ret/007/state")[0] == 404
    assert bt.call(lambda: bt.broker.retained_count) == 151
    status, body = api.get("/api/v1/retained", filter="ret/#/x")
    assert status == 400 and "'filter' is not a topic filter" in body["error"]


# -- publish ---------------------------------------------------------------------------------

def test_publish_reaches_subscribers(bt, api, clients):
    sub = PahoClient(bt.port, "p-sub", V5)
    clients.append(sub)
    sub.subscribe("p/#", qos=2)
    assert api.ok("POST", "/api/v1/publish", {"topic": "p/text", "payload": "héllo", "qos": 1}) \
        == {"topic": "p/text", "delivered": 1}
    api.ok("POST", "/api/v1/publish", {"topic": "p/bin", "payload": "AAH/", "encoding": "base64",
                                       "qos": 2, "retain": True})
    api.ok("POST", "/api/v1/publish", {"topic": "p/empty"})
    got = sub.wait_messages(3)       # (in order within one QoS only: compared sorted)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        ("p/bin", b"\x00\x01\xff", 2), ("p/empty", b"", 0), ("p/text", "héllo".encode(), 1)]
    assert api.ok("GET", "/api/v1/retained/p/bin")["payload"] == "AAH/"


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "body is not valid JSON"),
    (b"\xff\xfe", "body is not"),
    (b"[1, 2]", "body must be a JSON object, not an array"),
    (b'"topic"', "body must be a JSON object, not a string"),
    (b"{}", "field 'topic' is required"),
    (b'{"topic": "a", "qos": 3}', "field 'qos' must be one of 0, 1, 2"),
    (b'{"topic": "a", "qos": "1"}', "field 'qos' must be an integer, not a string"),
    (b'{"topic": "a", "qos": true}', "field 'qos' must be an integer, not a boolean"),
    (b'{"topic": "a", "retain": 1}', "field 'retain' must be true or false"),
    (b'{"topic": "a", "payload": null}', "field 'payload' must be a string, not null"),
    (b'{"topic": "a", "qos": 1, "extra": 1}', "unknown field 'extra'"),
    (b'{"topic": "a", "retian": true}', "did you mean 'retain'?"),
    (b'{"topic": "a/#"}', "wildcard"),
    (b'{"topic": ""}', "cannot publish"),
    (b'{"topic": 5}', "field 'topic' must be a string"),
    (b'{"topic": "a", "payload": "%%%", "encoding": "base64"}', "not valid base64"),
    (b'{"topic": "a", "encoding": "latin-1"}', "'encoding' must be one of"),
    (b'{"topic": "a", "payload": "\\ud800"}', "lone surrogate"),
])
def test_publish_refuses_bad_bodies(api, body, needle):
    status, got = api.call("POST", "/api/v1/publish", raw=body)
    assert status == 400, got
    assert needle in got["error"], got


def test_publish_body_over_the_limit_is_413(make_broker):
    bt = make_broker(http=HTTP, max_packet_size=1000)
    api = Api(bt.broker.http_port)
    body = json.dumps({"topic": "big", "payload": "x" * 100_000}).encode()
    status, got = api.call("POST", "/api/v1/publish", raw=body)
    assert status == 413 and "body too large" in got["error"]


# -- stats, listeners, OpenAPI ---------------------------------------------------------------

def test_stats_and_listeners(bt, api, clients):
    clients.append(raw_connect(bt.port, "st-1"))
    st = api.ok("GET", "/api/v1/stats")
    assert st["clients_connected"] == 1 and st["connections"] == 1
    assert set(bt.call(bt.broker.stats)) <= set(st)
    listeners = api.ok("GET", "/api/v1/listeners")
    (mqtt,) = listeners["listeners"]
    assert (mqtt["port"], mqtt["clients"], mqtt["tls"]) == (bt.port, 1, False)
    assert listeners["http"] == {"host": "127.0.0.1", "port": bt.broker.http_port,
                                 "url": f"http://127.0.0.1:{bt.broker.http_port}/",
                                 "token_required": False}


def test_openapi_describes_every_endpoint_and_each_answers(bt, api, clients):
    c = PahoClient(bt.port, "oa/client", V5)
    clients.append(c)
    c.subscribe("oa/#", qos=1)
    bt.publish("oa/kept", b"1", retain=True)
    doc = api.ok("GET", "/api/v1/openapi.json")
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    fill = {"{client_id}": quote("oa/client"), "{topic}": "oa/kept"}
    bodies = {"post": {"topic": "oa/x", "payload": "hi"}}
    answered = []
    # DELETEs last: they remove the client and the topic the other calls read.
    for path, ops in sorted(doc["paths"].items()):
        for method in sorted(ops, key=lambda m: m == "delete"):
            url = path
            for k, v in fill.items():
                url = url.replace(k, v)
            status, body = api.call(method.upper(), url, bodies.get(method))
            assert status == 200, (method, path, body)
            ref = ops[method]["responses"]["200"]["content"]["application/json"]["schema"]
            schema = schemas[ref["$ref"].rsplit("/", 1)[1]]
            missing = set(schema.get("required", ())) - set(body)
            assert not missing, (method, path, missing)
            for p in ops[method]["parameters"]:
                if p["in"] == "query":      # each declared parameter is accepted
                    sample = "1" if p["schema"]["type"] == "integer" else "x"
                    q = api.call(method.upper(), f"{url}?{p['name']}={sample}")[0]
                    assert q in (200, 404), (method, path, p["name"], q)
            answered.append((method, path))
    assert len(answered) == 11
    assert api.call("GET", "/api/v1/sessions")[0] == 404            # not in the document


# -- token, errors, headers ------------------------------------------------------------------

def test_token_guards_the_api_only(make_broker):
    bt = make_broker(http=HttpConfig(port=0, token="s3cret"))
    api = Api(bt.broker.http_port)
    status, body = api.call("GET", "/api/v1/stats")
    assert status == 401 and "Authorization: Bearer" in body["error"]
    assert api.last_headers["WWW-Authenticate"].startswith("Bearer")
    assert api.call("GET", "/api/v1/stats", token="wrong") == (401, {"error": "wrong token"})
    assert api.call("GET", "/api/v1/stats", headers={"Authorization": "Basic czNjcmV0"})[0] == 401
    assert api.call("GET", "/api/v1/nowhere")[0] == 401          # before routing
    assert api.call("POST", "/api/v1/publish", {"topic": "t"})[0] == 401
    assert api.call("GET", "/api/v1/stats", token="s3cret")[0] == 200
    assert api.call("GET", "/api/v1/stats", headers={"Authorization": "bearer s3cret"})[0] == 200
    doc = api.call("GET", "/api/v1/openapi.json", token="s3cret")[1]
    assert doc["security"] == [{"bearer": []}]
    assert api.call("GET", "/metrics")[0] == 200                    # Prometheus and the page
    assert api.call("GET", "/")[0] == 200


def test_errors_are_json_with_their_status(api):
    status, body = api.call("PUT", "/api/v1/stats", {})
    assert status == 405 and body == {
        "error": "method PUT is not allowed on /api/v1/stats (allowed: GET)"}
    assert api.last_headers["Allow"] == "GET"
    status, body = api.call("GET", "/api/v1/publish")
    assert status == 405 and "allowed: POST" in body["error"]
    status, body = api.call("GET", "/api/v2/clients")
    assert status == 404 and body["error"].startswith("no such endpoint: GET /api/v2/clients")
    assert api.last_headers["X-Content-Type-Options"] == "nosniff"
    status, body = api.call("GET", "/static/../../../etc/passwd")
    assert status in (403, 404) and "error" in body


def test_dashboard_page_and_its_files_are_served(api):
    status, html = api.call("GET", "/")
    assert status == 200 and "<canvas" in html
    csp = api.last_headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for name in ("dashboard.js", "dashboard.css"):
        assert f"/static/{name}" in html
        assert api.call("GET", f"/static/{name}")[0] == 200


# -- config, embedding and the command -------------------------------------------------------

def test_http_config_errors_come_all_at_once():
    from cymqtt.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"http": {"prot": 80, "host": 1, "token": ""}})
    assert err.value.errors == ["[http]: unknown key 'prot'; did you mean 'port'?",
                                "[http]: 'host' must be str, not 1",
                                "[http]: 'port' is required"]
    with pytest.raises(ConfigError) as err:
        config_from_dict({"http": {"port": 70000, "token": " x"}, "htp": 1})
    assert err.value.errors == [
        "[http]: 'port' must be a port number 0..65535, not 70000",
        "[http]: 'token' must be a non-empty string without surrounding spaces (leave it out "
        "for no token)",
        "unknown config key 'htp'; did you mean 'http'?"]
    with pytest.raises(ConfigError, match=r"'http' must be a table \(\[http\]\), not int"):
        config_from_dict({"http": 8080})
    assert config_from_dict({"http": {"port": 8080}}).http == HttpConfig(8080)
    assert "token" not in repr(HttpConfig(8080, token="secret"))


def test_embedded_broker_serves_http_and_a_taken_port_leaves_nothing_bound():
    import asyncio
    import socket

    from cymqtt.broker import Broker
    from cymqtt.http.errors import BindError

    async def main() -> None:
        async with Broker(port=0, sys_interval=0, http=HttpConfig(port=0)) as broker:
            loop = asyncio.get_running_loop()
            status, _ = await loop.run_in_executor(
                None, Api(broker.http_port).call, "GET", "/api/v1/stats")
            assert status == 200
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            broker = Broker(port=0, sys_interval=0, http=HttpConfig(port=port))
            with pytest.raises(BindError) as err:
                await broker.start()
            assert str(err.value) == (
                f"HTTP port {port} on 127.0.0.1 is already in use; stop the other server or "
                f"choose another ([http] port, or --http PORT)")
            assert broker.listeners == []            # the MQTT listener was closed again

    asyncio.run(main())


def test_the_command_serves_http_from_the_config_file_and_from_the_flag(tmp_path):
    from _testbase import Cli

    conf = tmp_path / "cymqtt.toml"
    conf.write_text('port = 0\nsys_interval = 0\n[http]\nport = 0\ntoken = "t0k"\n')
    for args in (("-c", str(conf)), ("-p", "0", "--http", "0")):
        cli = Cli("asyncio", *args)
        try:
            m = cli.wait_for(r"dashboard at http://127\.0\.0\.1:(\d+)/")
            api = Api(int(m.group(1)), token="t0k" if "-c" in args else None)
            assert api.ok("GET", "/api/v1/listeners")["listeners"][0]["port"] == cli.port
        finally:
            assert cli.stop() == 0
        assert not any("Traceback" in line for line in cli.lines)


def test_the_command_says_in_one_line_that_the_http_port_is_taken(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "cymqtt", "-p", "0", "--http", str(port)],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cymqtt: HTTP port {port} on 127.0.0.1 is already in use" in r.stderr
    conf = tmp_path / "bad.toml"
    conf.write_text("[http]\nprot = 8080\n")
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-c", str(conf)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"cymqtt: {conf}: [http]: unknown key 'prot'; did you mean 'port'?",
        f"cymqtt: {conf}: [http]: 'port' is required"]


def test_a_changed_http_table_waits_for_a_restart(bt, api):
    port = bt.broker.http_port
    new = bt.broker.config.replace(http=HttpConfig(port=0, token="later"))
    assert bt.call(lambda: bt.broker.reload(new))["restart"] == ["http"]
    assert bt.broker.http_port == port
    assert api.call("GET", "/api/v1/stats")[0] == 200         # still no token asked
