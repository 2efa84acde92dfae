#!/usr/bin/env python3
"""Take docs/dashboard.png: a broker with an [http] listener, a few MQTT clients with some
traffic (rates that rise and fall, clients that come and go, a few drops), and the dashboard
in headless Chromium (Debian's chromium and chromium-driver, driven by selenium).

    .venv/bin/python scripts/dashboard_screenshot.py [--seconds 150] [--out docs/dashboard.png]

Everything listens on 127.0.0.1 on free ports and stops at the end.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from cymqtt.config import HttpConfig
from cymqtt.testing import BrokerThread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def client(port: int, client_id: str, v5: bool = True, **connect: object) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                    **({} if v5 else {"clean_session": connect.pop("clean", True)}))
    if "username" in connect:
        c.username_pw_set(str(connect.pop("username")))
    c.connect("127.0.0.1", port, keepalive=int(connect.pop("keepalive", 60)))
    c.loop_start()
    return c


def traffic(port: int, stop: threading.Event, seconds: float) -> list[mqtt.Client]:
    """Subscribers at once; sensors joining over the first third; a publish rate that swells."""
    made = [client(port, "ops-console", username="ops"),
            client(port, "historian-01", v5=False, username="historian"),
            client(port, "alarm-router", keepalive=30)]
    made[0].subscribe("plant/#", 0)
    made[1].subscribe("plant/+/temperature", 1)
    made[2].subscribe("$share/alarms/plant/+/alarm", 1)
    # An offline persistent session: the alarms past its queue (max_queued) are dropped.
    slow = client(port, "archiver-standby", v5=False, clean=False)
    slow.subscribe("plant/+/alarm", 1)
    time.sleep(0.3)
    slow.disconnect()
    slow.loop_stop()
    sensors: list[mqtt.Client] = []

    def run() -> None:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            t = time.monotonic() - start
            want = min(12, 2 + int(t / (seconds / 3) * 10))
            while len(sensors) < want:
                i = len(sensors) + 1
                c = client(port, f"line-{(i - 1) % 4 + 1}/sensor-{i:02d}", v5=i % 3 != 0,
                           keepalive=15 if i % 2 else 60, username=f"gateway-{(i - 1) % 4 + 1}")
                c.publish(f"plant/line-{i}/model", f"TH-{200 + i}".encode(), 1, retain=True)
                sensors.append(c)
            rate = 40 + 30 * len(sensors) * (1.2 + math.sin(t / 14))
            for k, c in enumerate(sensors):
                topic = f"plant/line-{k + 1}/temperature"
                c.publish(topic, f"{21 + 3 * math.sin(t / 9 + k):.2f}".encode(), 1 if k % 2 else 0)
                if n % 10 == k:
                    c.publish(f"plant/line-{k + 1}/alarm", b'{"level":"warn"}', 1)
            n += 1
            time.sleep(len(sensors) / rate)

    threading.Thread(target=run, daemon=True).start()
    return made + sensors


def browser(width: int, height: int) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    opts.add_argument("--force-device-scale-factor=1")
    opts.add_argument("--user-data-dir=" + tempfile.mkdtemp(prefix="cymqtt-chrome-"))
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=290.0, help="traffic before the shot")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    ap.add_argument("--size", default="1440x1100", help="window WIDTHxHEIGHT")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    stop = threading.Event()
    with BrokerThread(http=HttpConfig(port=0), max_queued=50, sys_interval=0) as bt:
        for i in range(1, 7):
            bt.publish(f"plant/line-{i}/setpoint", f"{20 + i / 2:.1f}", qos=1, retain=True)
        driver = browser(width, height)
        made: list[mqtt.Client] = []
        try:
            driver.get(f"http://127.0.0.1:{bt.broker.http_port}/")
            made = traffic(bt.port, stop, args.seconds)
            time.sleep(args.seconds)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            stop.set()
            driver.quit()
            for c in made:
                c.loop_stop()
    print(f"{args.out}: {os.path.getsize(args.out) // 1024} KB")


if __name__ == "__main__":
    main()
