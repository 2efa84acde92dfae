"""cymqtt-bench (GitHub issue "Speed, connections and memory, measured side by side with
mosquitto", items 1 and 2): the load generator run as `python -m cymqtt.bench` against a real
broker started by the test. The JSON line it prints must count what really happened: every
message sent is received (QoS 1/2: nothing lost), every connection is seen by the broker.

Small numbers, a few seconds each; nothing here asserts a timing.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time


from cymqtt.bench import stats
from cymqtt.bench.runner import delivery_weights, topic_matches

TIMEOUT = 60


def bench(port: int, *args: str,
          timeout: float = TIMEOUT) -> tuple[dict, subprocess.CompletedProcess]:
    r = subprocess.run([sys.executable, "-m", "cymqtt.bench", *args, "--port", str(port),
                        "--interval", "0.5"],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return last_json(r.stdout), r


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    json_lines = [ln for ln in lines if ln.startswith("{")]
    assert len(json_lines) == 1, stdout
    assert lines[-1] == json_lines[0], "the JSON line comes last"
    return json.loads(json_lines[0])


# -- end to end against the broker fixture ---------------------------------------------------

def test_pubsub_pairs_qos1_count_everything_arrives(broker):
    r, proc = bench(broker.port, "pubsub", "--pairs", "5", "--qos", "1", "--count", "200")
    assert r["scenario"] == "p2p"
    assert r["connected"] == 10
    assert r["sent"] == r["acked"] == r["received"] == r["expected"] == 1000
    assert r["lost"] == 0
    assert r["errors"] == 0, r["error_detail"]
    lat = r["latency_ms"]
    assert lat is not None and 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
    for key in ("duration_s", "sent_per_s", "recv_per_s", "connect_rate_per_s"):
        assert key in r
    # the human table is there too, before the JSON line
    assert "expected / lost" in proc.stdout


def test_pubsub_qos2_mqtt5(broker):
    r, _ = bench(broker.port, "pubsub", "-V", "5", "--pairs", "3", "--qos", "2",
                 "--count", "100", "--inflight", "8")
    assert r["version"] == 5
    assert r["sent"] == r["acked"] == r["received"] == 300
    assert r["lost"] == 0 and r["duplicates"] == 0
    assert r["errors"] == 0, r["error_detail"]


def test_pubsub_fanout_counts_every_delivery(broker):
    r, _ = bench(broker.port, "pubsub", "--pubs", "1", "--subs", "20", "--topic", "bench/x",
                 "--qos", "1", "--count", "50", "--rate", "500")
    assert r["scenario"] == "fanout"
    assert r["sent"] == 50
    assert r["expected"] == r["received"] == 1000
    assert r["lost"] == 0
    assert r["errors"] == 0, r["error_detail"]


def test_pubsub_fanin_over_two_processes(broker):
    r, _ = bench(broker.port, "pubsub", "--pubs", "10", "--subs", "1", "--topic", "bench/%i",
                 "--sub-topic", "bench/#", "--qos", "1", "--count", "20", "--procs", "2")
    assert r["scenario"] == "fanin"
    assert r["procs"] == 2
    assert r["sent"] == r["received"] == 200
    assert r["lost"] == 0
    assert r["errors"] == 0, r["error_detail"]


def test_pubsub_qos0_duration(broker):
    # QoS 0 as fast as flow control allows, for a bounded time: whatever it reports adds up.
    r, _ = bench(broker.port, "pubsub", "--pairs", "2", "--qos", "0", "--duration", "1")
    assert r["sent"] > 0
    assert r["expected"] == r["sent"]
    assert r["received"] + r["lost"] == r["expected"]
    assert r["errors"] == 0, r["error_detail"]


def test_flood_against_a_sink_counts_what_the_sink_read():
    # --max-ahead 0: publishers write as fast as the sockets take it, while the subscribers
    # read (and time) what benchmarks/sink.py sends them. What the bench calls sent is what
    # the sink read, frame for frame.
    import os
    import signal
    import socket
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([sys.executable, os.path.join(root, "benchmarks", "sink.py"),
                             "--port", str(port), "--deliver", "5000", "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in sink.stderr.readline()
        r, _ = bench(port, "pubsub", "--pairs", "4", "--qos", "0", "--max-ahead", "0",
                     "--duration", "1", "--drain", "0.5", "--sndbuf", "65536")
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=TIMEOUT)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    s = json.loads(out.strip().splitlines()[-1])
    assert r["sent"] > 0 and s["publishes_read"] == r["sent"]
    assert 0 < r["received"] <= s["delivered"]
    assert r["latency_ms"] is not None
    assert r["errors"] == 0, r["error_detail"]


def test_conn_holds_connections_the_broker_sees(broker):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cymqtt.bench", "conn", "--clients", "50", "--duration", "3",
         "--port", str(broker.port), "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if "holding" in line:
                break
        seen = broker.call(lambda: broker.broker.clients_connected)
        assert seen == 50
        # stderr is the reader's to the end (communicate() would close it under the reader)
        out = proc.stdout.read()
        proc.wait(timeout=TIMEOUT)
        reader.join(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    r = last_json(out)
    assert r["scenario"] == "conn"
    assert r["connected"] == 50 and r["connected_at_end"] == 50
    assert r["errors"] == 0, r["error_detail"]
    assert r["connect_rate_per_s"] > 0
    # and they all went away cleanly
    end = time.monotonic() + 10
    while broker.call(lambda: broker.broker.clients_connected) and time.monotonic() < end:
        time.sleep(0.05)
    assert broker.call(lambda: broker.broker.clients_connected) == 0


def test_pub_and_sub_commands_together(broker):
    sub = subprocess.Popen(
        [sys.executable, "-m", "cymqtt.bench", "sub", "--clients", "2", "--topic", "bench/#",
         "--qos", "1", "--duration", "4", "--port", str(broker.port), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 20
        while broker.call(lambda: broker.broker.clients_connected) < 2:
            assert time.monotonic() < end, "subscribers never connected"
            time.sleep(0.05)
        time.sleep(0.3)   # let the subscriptions land
        r, _ = bench(broker.port, "pub", "--clients", "2", "--qos", "1", "--count", "50")
        assert r["sent"] == r["acked"] == 100
        assert r["lost"] is None and r["expected"] is None
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    s = last_json(out)
    assert s["received"] == 200, err
    assert s["errors"] == 0, s["error_detail"]


def test_usage_errors_are_one_line():
    r = subprocess.run([sys.executable, "-m", "cymqtt.bench", "pubsub", "--pubs", "1"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("cymqtt-bench: ") and "\n" not in r.stderr.strip()
    r = subprocess.run([sys.executable, "-m", "cymqtt.bench", "pub", "--size", "4"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and "--size" in r.stderr


def test_refused_connections_are_counted_not_crashed():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                  # nothing listens there now
    r = subprocess.run([sys.executable, "-m", "cymqtt.bench", "conn", "--clients", "3",
                        "--duration", "0.2", "--port", str(port), "--quiet"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1
    res = last_json(r.stdout)
    assert res["connected"] == 0 and res["errors"] == 3


# -- pieces ----------------------------------------------------------------------------------

def test_histogram_percentiles_are_close():
    hist = stats.new_histogram()
    values = list(range(1, 10001))              # 1 us .. 10 ms
    for v in values:
        hist[stats.bucket(v)] += 1
    for q in (50, 90, 99):
        exact = values[int(len(values) * q / 100) - 1]
        got = stats.percentile(hist, q)
        assert abs(got - exact) / exact < 0.04, (q, got, exact)
    s = stats.summary_ms(hist, 10000)
    assert s["max"] == 10.0 and s["p99"] <= s["max"]
    assert stats.summary_ms(stats.new_histogram(), None) is None


def test_topic_matching_and_weights():
    assert topic_matches("bench/#", "bench/1")
    assert topic_matches("bench/+", "bench/1")
    assert not topic_matches("bench/+", "bench/1/2")
    assert topic_matches("#", "a/b") and not topic_matches("#", "$SYS/x")
    assert delivery_weights(["bench/1", "bench/2"], ["bench/1", "bench/#", "bench/#"]) == [3, 2]


def test_retained_stores_then_times_each_subscription(broker):
    r, proc = bench(broker.port, "retained", "--count", "500", "--width", "50",
                    "--sub", "ret/#:0", "--sub", "ret/#:1", "--sub", "ret/3/+/x:1",
                    "--timeout", "10", "--settle", "0.2")
    assert r["command"] == "retained" and r["stored"] == 500 and r["store_qos"] == 1
    assert [(s["filter"], s["qos"], s["expected"]) for s in r["subscriptions"]] == [
        ("ret/#", 0, 500), ("ret/#", 1, 500), ("ret/3/+/x", 1, 50)]
    for s in r["subscriptions"]:
        # every message arrives once, flagged RETAIN; QoS 1 ones were acknowledged (else the
        # broker's inflight window of 32 would have stopped the flow)
        assert s["received"] == s["retained"] == s["expected"], s
        assert s["complete"] and s["error"] is None and s["seconds"] > 0
    assert r["errors"] == 0
    assert "ret/3/+/x QoS 1" in proc.stdout
    # the broker holds what was stored
    assert broker.call(lambda: broker.broker.retained_count) == 500
