"""Connection churn leaves nothing behind: sessions, subscriptions, connections, wills and the
router's match cache all return to empty (a leak here is a slow death for a long-lived broker)."""
import gc
import time

from cymqtt._fast.codec import Connect, Disconnect, Publish, Subscribe
from _testbase import RawClient


def test_connect_subscribe_leave_cycles_leave_no_state(broker):
    for i in range(300):
        c = RawClient(broker.port, 5 if i % 2 else 4)
        version = 5 if i % 2 else 4
        c.send_packet(Connect(f"churn-{i % 7}", version=version, will_topic="churn/will",
                              will_payload=b"x"))
        assert c.recv_packet().reason_code == 0
        c.send_packet(Subscribe(1, [(f"churn/{i}/#", 1), ("$share/g/churn/s", 1)]))
        assert c.recv_packet().name == "SUBACK"
        c.send_packet(Publish(f"churn/{i}/x", b"m", 1, packet_id=1))
        assert c.recv_packet() is not None
        if i % 3:
            c.send_packet(Disconnect())     # clean exit
        c.close()                           # else: dropped, the will goes

    def settled():
        s = broker.broker.stats()
        return (s["connections"], s["sessions"], s["clients_disconnected"], s["pending_wills"],
                s["subscriptions"])

    deadline = time.monotonic() + 5
    while broker.call(settled) != (0, 0, 0, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.call(settled) == (0, 0, 0, 0, 0)
    gc.collect()
    assert broker.call(lambda: len(broker.broker._listeners.flusher.dirty)) == 0
