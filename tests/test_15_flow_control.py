"""Back-pressure from subscribers to publishers (DESIGN hot-path rule 6 and "no lost QoS 1/2
messages"): when a publisher feeds a live subscriber faster than it acknowledges, the broker
stops reading the publisher (the rest of its chunk included) until the subscriber's queue
drains, instead of dropping from that queue. A stalled subscriber is not waited for."""
import threading
import time

import pytest

from cymqtt._fast.codec import Connect, PubAck, Publish, Subscribe, encode
from _testbase import RawClient


def _acking_subscriber(port: int, received: list, stop: threading.Event) -> RawClient:
    sub = RawClient(port, 4)
    sub.send_packet(Connect("acker", version=4))
    assert sub.recv_packet().reason_code == 0
    sub.send_packet(Subscribe(1, [("flow/t", 1)]))
    assert sub.recv_packet().name == "SUBACK"

    def run():
        while not stop.is_set():
            try:
                p = sub.recv_packet(timeout=0.2)
            except (TimeoutError, OSError):
                continue
            if p is None:
                return
            if p.name == "PUBLISH":
                received.append(p.payload)
                time.sleep(0.0005)           # a subscriber slower than the publisher
                sub.send_packet(PubAck(4, p.packet_id))

    threading.Thread(target=run, daemon=True).start()
    return sub


@pytest.mark.broker_config(max_queued=20, max_inflight=2)
def test_pipelined_qos1_burst_to_a_slow_subscriber_loses_nothing(broker):
    received: list = []
    stop = threading.Event()
    sub = _acking_subscriber(broker.port, received, stop)
    pub = RawClient(broker.port, 4)
    pub.send_packet(Connect("burst", version=4))
    assert pub.recv_packet().reason_code == 0
    try:
        # warm up: the subscriber has acknowledged recently, so it counts as draining
        pub.send_packet(Publish("flow/t", b"0", 1, packet_id=1))
        assert pub.recv_packet().name == "PUBACK"
        deadline = time.monotonic() + 5
        while not broker.call(lambda: broker.broker.session("acker").last_ack):
            assert time.monotonic() < deadline, "the warm-up PUBACK never reached the broker"
            time.sleep(0.01)
        n = 300
        pub.send(b"".join(encode(Publish("flow/t", str(i).encode(), 1, packet_id=i % 60000 + 1))
                          for i in range(1, n + 1)))
        acks = 0
        while acks < n:
            p = pub.recv_packet(timeout=10)
            assert p is not None and p.name == "PUBACK"
            acks += 1
        deadline = time.monotonic() + 15
        while len(received) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert received == [str(i).encode() for i in range(n + 1)]
        assert broker.call(lambda: broker.broker.session("acker").dropped) == 0
    finally:
        stop.set()
        sub.close()
        pub.close()


@pytest.mark.broker_config(max_queued=10, max_inflight=1)
def test_a_subscriber_that_never_acks_does_not_slow_the_publisher(broker):
    """Its queue fills and drops (counted), as with mosquitto; the publisher is not paused."""
    sub = RawClient(broker.port, 4)
    sub.send_packet(Connect("deaf", version=4))
    assert sub.recv_packet().reason_code == 0
    sub.send_packet(Subscribe(1, [("flow/t", 1)]))
    assert sub.recv_packet().name == "SUBACK"
    pub = RawClient(broker.port, 4)
    pub.send_packet(Connect("p", version=4))
    assert pub.recv_packet().reason_code == 0
    n = 100
    pub.send(b"".join(encode(Publish("flow/t", b"x", 1, packet_id=i)) for i in range(1, n + 1)))
    for _ in range(n):
        assert pub.recv_packet(timeout=5).name == "PUBACK"
    assert broker.call(lambda: broker.broker.session("deaf").dropped) == n - 1 - 10
    assert not broker.call(lambda: broker.broker.session("p").client.throttled)
