#!/usr/bin/env python3
"""Crash test from outside: kill -9 the `cymqtt` command at random moments mid-flood.

Each round starts the broker on a data directory, floods it with QoS 1 or QoS 2 messages from
a paho-mqtt publisher (persistent session) to two persistent paho subscribers (one online,
one offline until the end), kills the broker with SIGKILL after a random 0.1-2 s, starts it
again and lets paho reconnect by itself (it re-sends what was unacknowledged, PUBREL
included). It then checks what the broker promised: every message the publisher saw
acknowledged (paho's on_publish: PUBACK, or PUBCOMP for QoS 2) reaches both subscribers, in
order; at QoS 2 none twice. Exit status 1 on the first broken promise.

    .venv/bin/python benchmarks/crashtest.py --rounds 20 --qos 2

The clients are paho's, not the test suite's: the broker is checked as a user's clients see it.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int, data_dir: str) -> subprocess.Popen:
    conf = os.path.join(data_dir, "crash.toml")
    with open(conf, "w") as f:
        f.write(f'port = {port}\nlog_level = "warning"\nmax_queued = 1000000\n'
                f'data_dir = "{data_dir}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "cymqtt", "-c", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the broker did not start")


class Subscriber:
    def __init__(self, port: int, client_id: str, qos: int) -> None:
        self.got: list[int] = []
        self.lock = threading.Lock()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=False)
        c.reconnect_delay_set(0.1, 0.5)
        c.on_message = self._on_message
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("crash/#", qos)
        self.subscribed = threading.Event()
        c.on_subscribe = lambda cl, u, mid, codes, p: self.subscribed.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        if not self.subscribed.wait(10):     # else the first messages would have no taker
            raise SystemExit(f"{client_id}: no SUBACK")

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.got.append(int(msg.payload))

    def close(self) -> None:
        close(self.client)


def close(client: mqtt.Client) -> None:
    # Disconnect and stop its reconnecting; paho's network thread is a daemon, and joining it
    # (loop_stop) can wait on a reconnect attempt, so it is left to end by itself.
    client.reconnect_delay_set(3600, 3600)
    client.disconnect()


class Publisher:
    def __init__(self, port: int, client_id: str, qos: int) -> None:
        self.acked: list[int] = []
        self.seq_of: dict[int, int] = {}
        self.early: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.qos = qos
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=False)
        c.max_inflight_messages_set(64)
        c.max_queued_messages_set(256)
        c.reconnect_delay_set(0.1, 0.5)
        c.on_publish = self._on_publish
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_publish(self, client, userdata, mid, rc, props) -> None:
        # (paho's network thread, holding paho's own lock: never call into paho from here)
        with self.lock:
            seq = self.seq_of.pop(mid, None)
            if seq is None:
                self.early.add(mid)          # acknowledged before _run recorded it
            else:
                self.acked.append(seq)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            info = self.client.publish("crash/t", str(seq + 1), qos=self.qos)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.001)
                continue
            seq += 1
            with self.lock:
                if info.mid in self.early:
                    self.early.discard(info.mid)
                    self.acked.append(seq)
                else:
                    self.seq_of[info.mid] = seq

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def round_(n: int, qos: int, rng: random.Random) -> bool:
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        broker = start(port, data_dir)
        tag = f"{os.getpid()}-{n}"
        offline = Subscriber(port, f"off-{tag}", qos)
        time.sleep(0.3)
        offline.close()
        online = Subscriber(port, f"on-{tag}", qos)
        publisher = Publisher(port, f"pub-{tag}", qos)
        time.sleep(rng.uniform(0.1, 2.0))
        broker.send_signal(signal.SIGKILL)
        broker.wait()
        with publisher.lock:
            promised = list(publisher.acked)
        broker = start(port, data_dir)
        try:
            time.sleep(1.0)
            publisher.close()
            back = Subscriber(port, f"off-{tag}", qos)
            deadline = time.monotonic() + 30
            ok = True
            for name, sub in (("online", online), ("offline", back)):
                while not set(promised) <= set(sub.got) and time.monotonic() < deadline:
                    time.sleep(0.1)
                with sub.lock:
                    got = list(sub.got)
                missing = sorted(set(promised) - set(got))
                firsts = list(dict.fromkeys(got))
                twice = len(got) - len(set(got))
                problems = []
                if missing:
                    problems.append(f"{len(missing)} acknowledged messages missing "
                                    f"(first {missing[:5]})")
                if firsts != sorted(firsts):
                    problems.append("out of order")
                if qos == 2 and twice:
                    problems.append(f"{twice} QoS 2 messages delivered twice")
                print(f"round {n}: {name} subscriber got {len(set(got))} of "
                      f"{len(promised)} acknowledged (+{twice} repeats): "
                      f"{'; '.join(problems) or 'ok'}", flush=True)
                ok = ok and not problems
            for c in (online, back):
                c.close()
            close(publisher.client)
            return ok
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--qos", type=int, choices=(1, 2), default=2)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    rng = random.Random(args.seed)
    for n in range(1, args.rounds + 1):
        if not round_(n, args.qos, rng):
            return 1
    print(f"{args.rounds} rounds at QoS {args.qos}: every acknowledged message delivered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
