"""MQTT 3.1.1 re-sends unacknowledged messages on a live connection after retry_interval
(section 4.4 allows it for 3.1.1); MQTT 5 re-sends only on reconnect [MQTT-4.4.0-1]."""
import time

import pytest

from cymqtt._fast.codec import Connect, PubAck, Subscribe


def _subscriber(raw_client, version):
    s = raw_client(version)
    s.send_packet(Connect("slow", version=version))
    assert s.recv_packet().reason_code == 0
    s.send_packet(Subscribe(1, [("r/#", 1)]))
    assert s.recv_packet().name == "SUBACK"
    return s


@pytest.mark.broker_config(retry_interval=5)
def test_v311_unacked_qos1_is_resent_with_dup_after_retry_interval(broker, raw_client):
    sub = _subscriber(raw_client, 4)
    broker.call(lambda: broker.broker.publish("r/1", b"x", qos=1))
    first = sub.recv_packet()
    assert first.name == "PUBLISH" and not first.dup
    broker.sweep(0)            # stamps the message
    broker.sweep(2)            # not yet due
    with pytest.raises(TimeoutError):
        sub.recv_packet(timeout=0.3)
    broker.sweep(6)
    again = sub.recv_packet()
    assert again.name == "PUBLISH" and again.dup and again.packet_id == first.packet_id
    sub.send_packet(PubAck(4, first.packet_id))
    deadline = time.monotonic() + 5
    while broker.call(lambda: broker.broker.session("slow").inflight):
        assert time.monotonic() < deadline, "PUBACK not processed"
        time.sleep(0.01)
    broker.sweep(20)
    with pytest.raises(TimeoutError):
        sub.recv_packet(timeout=0.3)


@pytest.mark.broker_config(retry_interval=5)
def test_v5_is_not_resent_on_a_live_connection(broker, raw_client):
    sub = _subscriber(raw_client, 5)
    broker.call(lambda: broker.broker.publish("r/1", b"x", qos=1))
    assert sub.recv_packet().name == "PUBLISH"
    broker.sweep(0)
    broker.sweep(60)
    with pytest.raises(TimeoutError):
        sub.recv_packet(timeout=0.3)
