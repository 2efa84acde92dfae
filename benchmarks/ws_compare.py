#!/usr/bin/env python3
"""MQTT over WebSocket against MQTT over TCP, cymqtt beside mosquitto, in one run.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/ws_compare.py            # ~6 minutes
    .venv/bin/python benchmarks/ws_compare.py --duration 5 --repeat 1        # a quick look

(Not named websockets.py: a script's folder comes first on sys.path, so that name would shadow
the websockets package for the other scripts here, benchmarks/sink.py among them.)

Each broker listens on TCP and on WebSocket (cymqtt: a [[listeners]] table with
`protocol = "websockets"`; mosquitto: `listener N` + `protocol websockets`, which Debian's
mosquitto 2.0.11 serves only beside a TCP listener), pinned to CPU 0 with taskset; the load
generator (`cymqtt-bench pubsub`, with `--ws` for WebSocket) runs on CPU 1. A fresh broker
serves each run. Scenarios, as in compare.py:

    p2p_qos0   100 pairs, 64 B, QoS 0, as fast as flow control allows
    p2p_qos1   100 pairs, 64 B, QoS 1, 32 in flight per publisher

Every (scenario, broker, transport) runs --repeat times, interleaved; the report takes the
median of the delivered msg/s and gives ratios: WebSocket/TCP for each broker, and cymqtt over
WebSocket against mosquitto over WebSocket and over TCP. Writes --out (Markdown) and prints it.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402  (benchmarks/ is not a package)
    ROOT, find_mosquitto, free_port, git_rev, log, machine, pinned, proc_cpu_s, run_bench,
)

SCENARIOS = {
    "p2p_qos0": ["--pairs", "100", "--qos", "0", "--size", "64"],
    "p2p_qos1": ["--pairs", "100", "--qos", "1", "--size", "64", "--inflight", "32"],
}
TRANSPORTS = ("tcp", "ws")
CYMQTT_TOML = """\
log_level = "warning"
connection_messages = false
sys_interval = 0
[[listeners]]
port = {tcp}
[[listeners]]
port = {ws}
protocol = "websockets"
"""
MOSQUITTO_CONF = """\
listener {tcp} 127.0.0.1
listener {ws} 127.0.0.1
protocol websockets
allow_anonymous true
max_queued_messages 1000
max_inflight_messages 32
persistence false
log_dest stderr
log_type error
log_type warning
connection_messages false
"""


class TwoListenerBroker:
    """A broker process with a TCP and a WebSocket listener."""

    def __init__(self, kind: str, cpu: str, workdir: Path, mosquitto: str | None) -> None:
        self.kind, self.cpu, self.workdir, self.mosquitto = kind, cpu, workdir, mosquitto
        self.ports = {"tcp": free_port(), "ws": free_port()}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> TwoListenerBroker:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(**self.ports))
            cmd = [self.mosquitto, "-c", str(conf)]
        else:
            conf = self.workdir / "cymqtt.toml"
            conf.write_text(CYMQTT_TOML.format(**self.ports))
            cmd = [sys.executable, "-m", "cymqtt", "-c", str(conf)]
        self.log = open(self.workdir / f"{self.kind}.log", "a+")
        self.proc = subprocess.Popen(pinned(self.cpu, cmd), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        import socket
        deadline = time.monotonic() + 15
        for port in self.ports.values():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} exited at start; see {self.log.name}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.kind} is not listening on {port}") from None
                    time.sleep(0.05)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid) or 0.0

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def run(scenario: str, kind: str, transport: str, o: argparse.Namespace,
        mosquitto: str | None, workdir: Path) -> dict:
    args = ["pubsub", "--name", scenario, *SCENARIOS[scenario], "--duration", str(o.duration)]
    if transport == "ws":
        args.append("--ws")
    with TwoListenerBroker(kind, o.broker_cpu, workdir, mosquitto) as b:
        cpu0 = b.cpu_s()
        r = run_bench([*args, "--quiet"], b.ports[transport], o.load_cpu, o.duration + 30,
                      label=f"{kind}/{transport}/{scenario}")
        r["broker_cpu_s"] = round(b.cpu_s() - cpu0, 2)
    log(f"{scenario} {kind} over {transport}: {r['recv_per_s']:,.0f} msg/s delivered, "
        f"lost {r['lost']}, errors {r['errors']}, broker CPU {r['broker_cpu_s']} s")
    return r


def mosquitto_ran(results: dict) -> bool:
    return any(kind == "mosquitto" for kind, _, _ in results)


def per_cpu(r: dict) -> float | None:
    """Messages delivered per second of broker CPU: what a broker costs per message, also
    when the load generator, not the broker, set the pace."""
    return r["received"] / r["broker_cpu_s"] if r["broker_cpu_s"] else None


def report(results: dict, o: argparse.Namespace) -> str:
    def med(kind: str, transport: str, scenario: str) -> float | None:
        runs = results.get((kind, transport, scenario), [])
        return statistics.median(r["recv_per_s"] for r in runs) if runs else None

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    def num(v: float | None) -> str:
        return f"{v:,.0f}" if v else "-"

    m = machine()
    lines = [
        f"# MQTT over WebSocket vs TCP, cymqtt and mosquitto ({datetime.date.today()})", "",
        f"git {git_rev()}; {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs; Python "
        f"{m.get('python', '?')}; broker on CPU {o.broker_cpu}, cymqtt-bench on CPU "
        f"{o.load_cpu} (taskset); a fresh broker per run, each run {o.duration:g} s, "
        f"{o.repeat} run(s) per cell (median).", "",
        "Command:", "", "    flock /tmp/cpu.lock .venv/bin/python benchmarks/ws_compare.py "
        f"--duration {o.duration:g} --repeat {o.repeat}"
        + ("" if mosquitto_ran(results) else " --no-mosquitto"), "",
        "Each run is `cymqtt-bench pubsub --pairs 100 --size 64 --qos Q --duration D "
        "[--ws] --port P` against a broker that listens on a TCP and a WebSocket port.", "",
        "| scenario | cymqtt TCP | cymqtt WS | cymqtt WS/TCP | mosquitto TCP | mosquitto WS "
        "| mosquitto WS/TCP | cymqtt WS / mosquitto WS | cymqtt WS / mosquitto TCP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SCENARIOS:
        ct, cw = med("cymqtt", "tcp", s), med("cymqtt", "ws", s)
        mt, mw = med("mosquitto", "tcp", s), med("mosquitto", "ws", s)
        lines.append(f"| {s} | {num(ct)} | {num(cw)} | {ratio(cw, ct)} | {num(mt)} | {num(mw)} "
                     f"| {ratio(mw, mt)} | {ratio(cw, mw)} | {ratio(cw, mt)} |")
    lines += ["", "Delivered messages per second (median of the runs). The same per second "
              "of broker CPU (what a message costs the broker, whoever set the pace):", "",
              "| scenario | cymqtt TCP | cymqtt WS | cymqtt WS/TCP | mosquitto TCP "
              "| mosquitto WS | mosquitto WS/TCP | cymqtt WS / mosquitto WS |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def eff(kind: str, transport: str, s: str) -> float | None:
        vals = [v for v in map(per_cpu, results.get((kind, transport, s), [])) if v]
        return statistics.median(vals) if vals else None
    for s in SCENARIOS:
        ct, cw = eff("cymqtt", "tcp", s), eff("cymqtt", "ws", s)
        mt, mw = eff("mosquitto", "tcp", s), eff("mosquitto", "ws", s)
        lines.append(f"| {s} | {num(ct)} | {num(cw)} | {ratio(cw, ct)} | {num(mt)} | {num(mw)} "
                     f"| {ratio(mw, mt)} | {ratio(cw, mw)} |")
    lines += ["", "Every run: loss, latency, CPU (a bench CPU close to the run's length means "
              "the load generator, on its one CPU, set the pace):", "",
              "| scenario | broker | transport | delivered msg/s | lost | errors | p50 ms "
              "| p99 ms | broker CPU s | bench CPU s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (kind, transport, s), runs in results.items():
        for r in runs:
            lat = r.get("latency_ms") or {}
            lines.append(f"| {s} | {kind} | {transport} | {r['recv_per_s']:,.0f} | {r['lost']} "
                         f"| {r['errors']} | {lat.get('p50', '-')} | {lat.get('p99', '-')} "
                         f"| {r['broker_cpu_s']} | {r['bench_cpu_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--repeat", type=int, default=2, help="runs per cell (default 2)")
    p.add_argument("--broker-cpu", default="0", help="CPU list for the broker (default 0)")
    p.add_argument("--load-cpu", default="1", help="CPU list for cymqtt-bench (default 1)")
    p.add_argument("--no-mosquitto", action="store_true", help="cymqtt only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                        f"{datetime.date.today()}-websockets.md"))
    o = p.parse_args(argv)
    mosquitto = None if o.no_mosquitto else find_mosquitto()
    if mosquitto is None and not o.no_mosquitto:
        log("mosquitto not found: cymqtt only")
    kinds = ["cymqtt"] + (["mosquitto"] if mosquitto else [])
    results: dict[tuple[str, str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cymqtt-ws-bench-") as tmp:
        for _ in range(o.repeat):
            for s in SCENARIOS:
                for kind in kinds:
                    for transport in TRANSPORTS:
                        r = run(s, kind, transport, o, mosquitto, Path(tmp))
                        results.setdefault((kind, transport, s), []).append(r)
    text = report(results, o)
    Path(o.out).write_text(text)
    print(text)
    log(f"wrote {o.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
