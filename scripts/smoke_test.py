#!/usr/bin/env python3
"""Smoke test of an installed cymqtt: start its `cymqtt` command, do a publish/subscribe round
trip with real clients, fetch the dashboard, its files, /metrics and the REST API from its HTTP
listener (the wheel ships them, and their dependencies install), stop it by pid.

Run with the interpreter of the environment that holds the wheel (cibuildwheel's test venv, the
fresh venv of scripts/testinstalled.sh); it never imports the checkout. The broker listens on
127.0.0.1 with --port 0 and --http 0, and the test reads the ports it got from its log lines, so
no other process can take them in between.

Clients: mosquitto_pub/mosquitto_sub (Debian's mosquitto-clients) when they are on PATH, else
paho-mqtt (cibuildwheel's test containers and the macOS/Windows runners have no mosquitto);
--require-mosquitto makes their absence a failure (what this repository's CI asks).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

TIMEOUT = 20.0


def cymqtt_command() -> list[str]:
    """The installed console script next to this interpreter (what `pip install` put there)."""
    bindir = os.path.dirname(sys.executable)
    exe = shutil.which("cymqtt", path=bindir)
    if exe is None:
        sys.exit(f"smoke: no `cymqtt` command in {bindir}: the wheel's entry point is missing")
    return [exe]


class Broker:
    """The installed broker as a child process; its log is read on a thread."""

    def __init__(self) -> None:
        cmd = cymqtt_command() + ["--host", "127.0.0.1", "--port", "0", "--http", "0",
                                  "--log-level", "info"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines: list[str] = []
        self.port = 0
        self.http_port = 0
        self.loop = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(TIMEOUT) or not self.port:
            self.stop()
            sys.exit("smoke: the broker did not report its port:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m and not self.port:
                self.port = int(m.group(1))
            m = re.search(r"dashboard at http://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.http_port = int(m.group(1))
            m = re.search(r"event loop: (\w+)", line)
            if m:
                self.loop = m.group(1)
                self._ready.set()
        self._ready.set()

    def stop(self) -> int:
        """Stop the broker this test started, by its pid (SIGTERM; TerminateProcess on Windows)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def round_trip_mosquitto(port: int, payload: str) -> str:
    # A retained QoS 1 publish reaches the subscriber whether it subscribed before the publish
    # (live delivery) or after it (retained delivery): no sleep, no race.
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "smoke/#", "-q", "1",
         "-C", "1", "-W", str(int(TIMEOUT)), "-v", "-i", "smoke-sub"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "smoke/one",
                    "-q", "1", "-r", "-m", payload, "-i", "smoke-pub"],
                   check=True, timeout=TIMEOUT)
    out, err = sub.communicate(timeout=TIMEOUT + 5)
    if sub.returncode != 0:
        raise SystemExit(f"smoke: mosquitto_sub exited {sub.returncode}: {err.strip()}")
    return out.strip()


def round_trip_paho(port: int, payload: str) -> str:
    import paho.mqtt.client as mqtt

    got: list[str] = []
    done = threading.Event()

    def on_message(client, userdata, msg):
        got.append(f"{msg.topic} {msg.payload.decode()}")
        done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="smoke-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("smoke/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="smoke-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish("smoke/one", payload, qos=1, retain=True).wait_for_publish(TIMEOUT)
    ok = done.wait(TIMEOUT)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    if not ok:
        raise SystemExit("smoke: paho subscriber got nothing")
    return got[0]


def fetch_http(port: int) -> list[str]:
    """The dashboard page and its files, /metrics and /api/v1/stats: what each answered."""
    seen = []
    for path, needle in (("/", "<canvas"), ("/static/dashboard.js", "use strict"),
                         ("/static/dashboard.css", "--bg"), ("/metrics", "cymqtt_connections"),
                         ("/api/v1/stats", '"uptime"')):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as resp:
            body = resp.read().decode()
        if resp.status != 200 or needle not in body:
            raise SystemExit(f"smoke: GET {path} answered {resp.status} without {needle!r}")
        seen.append(path)
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--require-mosquitto", action="store_true",
                    help="fail when mosquitto_pub/mosquitto_sub are not on PATH")
    args = ap.parse_args()

    version = subprocess.run(cymqtt_command() + ["--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    print(f"smoke: {version}")
    have_mosquitto = bool(shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub"))
    if args.require_mosquitto and not have_mosquitto:
        sys.exit("smoke: mosquitto_pub/mosquitto_sub not on PATH "
                 "(scripts/install-test-tools.sh installs Debian's mosquitto-clients)")

    broker = Broker()
    try:
        if broker.loop != "uvloop":
            why = ("uvloop has no Windows build" if sys.platform == "win32"
                   else "uvloop is not installed")
            print(f"smoke: event loop {broker.loop} ({why})")
        else:
            print("smoke: event loop uvloop")
        payload = f"hello from {os.getpid()}"
        if have_mosquitto:
            client = "mosquitto_pub/mosquitto_sub"
            got = round_trip_mosquitto(broker.port, payload)
        else:
            client = "paho-mqtt (mosquitto clients not on PATH)"
            got = round_trip_paho(broker.port, payload)
        if got != f"smoke/one {payload}":
            raise SystemExit(f"smoke: expected {payload!r} on smoke/one, got {got!r}")
        print(f"smoke: round trip through 127.0.0.1:{broker.port} with {client}: ok")
        if not broker.http_port:
            raise SystemExit("smoke: the broker did not report its HTTP port")
        paths = fetch_http(broker.http_port)
        print(f"smoke: HTTP on 127.0.0.1:{broker.http_port}: {', '.join(paths)}: ok")
    finally:
        rc = broker.stop()
    log = "".join(broker.lines)
    if "Traceback" in log:
        sys.exit("smoke: the broker logged a traceback:\n" + log)
    # SIGTERM is handled (a clean stop, exit 0); Windows' TerminateProcess gives exit 1.
    if rc != 0 and sys.platform != "win32":
        sys.exit(f"smoke: the broker exited {rc} on SIGTERM:\n" + log)
    print(f"smoke: broker pid {broker.proc.pid} stopped (exit {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
