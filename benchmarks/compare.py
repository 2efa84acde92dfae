#!/usr/bin/env python3
"""cymqtt and mosquitto side by side: the standard scenarios, one broker after the other, in one
run (GitHub issue "Speed, connections and memory, measured side by side with mosquitto").

    .venv/bin/python benchmarks/compare.py                 # every scenario, ~10 s each
    .venv/bin/python benchmarks/compare.py --quick         # shorter runs (about 3 minutes)
    .venv/bin/python benchmarks/compare.py --scenarios p2p_qos0,conn

Each broker is started by this script on a free port (mosquitto from a generated config: one
listener on 127.0.0.1, anonymous, max_queued_messages 1000, max_inflight_messages 32, no
persistence), pinned to CPU 0 with `taskset`, and stopped after its run; the load generator
(`cymqtt-bench`) is pinned to CPU 1. A fresh broker serves each scenario.

Scenarios (scaled to a 2-core machine):
    p2p_qos0   100 pairs, 64 B, QoS 0, as fast as flow control allows
    p2p_qos1   the same at QoS 1 (32 in flight per publisher)
    fanout     1 publisher at a fixed rate -> 1,000 subscribers, QoS 0
    fanin      1,000 publishers at 10 msg/s -> 1 subscriber on bench/fanin/#, QoS 0
    latency    100 pairs at a fixed total rate: half of mosquitto's p2p QoS 0 maximum measured
               earlier in the run
    conn       ~19,000 idle connections (the open-file limit is 20,000 per process): connect
               rate, and broker memory per connection = (VmRSS after - VmRSS before) / N
    p2p_qos0_flood  overload: 100 pairs, QoS 0, 64 B, publishers as fast as their sockets take
               it (--max-ahead 0): delivered and offered msg/s, loss %, latency
    fairness   50 pairs at 200 msg/s each, alone and then beside one flooding QoS 0 pair (a
               second cymqtt-bench process): the paced pairs' p99 latency with and without
    retained   100,000 retained messages stored, then new subscribers to ret/# at QoS 0 and 1
               and to ret/7/+/x (1,000 topics): how many arrive and how fast

Writes benchmarks/results/<YYYY-MM-DD>.md (a table per scenario: each broker's figures and the
ratio cymqtt/mosquitto), charts (matplotlib): <date>-throughput.png (bars), <date>-latency.png
(each broker's p50/p90/p99/max as labelled dots on a line, per scenario) and
<date>-connections.png (memory per connection, connect rate, connections held), and the raw
figures as <date>.json (git-ignored). `--charts-from <date>.json` redraws the charts and the
report of an earlier run without running anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCENARIOS = ("p2p_qos0", "p2p_qos1", "fanout", "fanin", "latency", "conn", "p2p_qos0_flood",
             "fairness", "retained")
# A flooding publisher's SO_SNDBUF: without a cap the kernel lets each socket's send buffer
# grow to 4 MB, and 100 publishers bury the run under ~400 MB of backlog (seconds of latency,
# and messages still queued when the run ends counted as lost).
FLOOD_SNDBUF = 65536
BROKERS = ("cymqtt", "mosquitto")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
max_queued_messages 1000
max_inflight_messages 32
persistence false
log_dest stderr
log_type error
log_type warning
connection_messages false
"""


def die(text: str) -> None:
    print(f"compare.py: {text}", file=sys.stderr)
    sys.exit(2)


def log(text: str) -> None:
    print(f"compare.py: {text}", file=sys.stderr, flush=True)


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(p, os.X_OK):
            return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kb(pid: int, key: str = "VmRSS") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_run_delay_s(pid: int) -> float | None:
    """Seconds `pid` spent runnable but waiting for a CPU (schedstat): other load on the CPU."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    if cpu is None:
        return cmd
    return ["taskset", "-c", cpu, *cmd]


# -- brokers ----------------------------------------------------------------------------------

_DATA_DIR_SUPPORT: dict[str, bool] = {}


def _has_data_dir(python: str) -> bool:
    # Whether that cymqtt persists (and so takes --data-dir): builds before persistence do not.
    if python not in _DATA_DIR_SUPPORT:
        out = subprocess.run([python, "-m", "cymqtt", "--help"], capture_output=True,
                             text=True, timeout=30).stdout
        _DATA_DIR_SUPPORT[python] = "--data-dir" in out
    return _DATA_DIR_SUPPORT[python]


class Broker:
    """One broker process started by this script."""

    def __init__(self, kind: str, cpu: str | None, mosquitto: str, workdir: Path,
                 python: str | None = None) -> None:
        self.kind = kind
        self.python = python or sys.executable     # the interpreter that runs `-m cymqtt`
        self.cpu = cpu
        self.mosquitto = mosquitto
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.logfile = None

    def start(self) -> None:
        self.port = free_port()
        if self.kind == "mosquitto":
            conf = self.workdir / f"mosquitto-{self.port}.conf"
            conf.write_text(MOSQUITTO_CONF.format(port=self.port))
            cmd = [self.mosquitto, "-c", str(conf)]
        else:
            cmd = [self.python, "-m", "cymqtt", "--host", "127.0.0.1", "--port",
                   str(self.port), "--log-level", "warning"]
            if _has_data_dir(self.python):
                # The command's default (persistence on), in a store of its own per start,
                # so no scenario inherits another's retained messages or sessions.
                cmd += ["--data-dir", str(self.workdir / f"data-{self.port}")]
        self.logfile = open(self.workdir / f"{self.kind}-{self.port}.log", "w+")
        # taskset execs the broker, so the pid is the broker's own.
        self.proc = subprocess.Popen(pinned(self.cpu, cmd), stdout=self.logfile,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start (code {self.proc.returncode}):"
                                   f" {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on port {self.port} within 15 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kb(self) -> int | None:
        return proc_status_kb(self.pid)

    def cpu_s(self) -> float | None:
        return proc_cpu_s(self.pid)

    def run_delay_s(self) -> float | None:
        return proc_run_delay_s(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 5) -> str:
        if self.logfile is None:
            return ""
        self.logfile.flush()
        self.logfile.seek(0)
        lines = [ln.rstrip() for ln in self.logfile.readlines() if ln.strip()]
        return " | ".join(lines[-n:])

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.logfile is not None:
            self.logfile.close()
            self.logfile = None


# -- the load generator -----------------------------------------------------------------------

def run_bench(args: list[str], port: int, cpu: str | None, timeout: float,
              on_line=None, label: str = "", nice: int = 0) -> dict:
    """Run cymqtt-bench; stream its stderr (prefixed) and return its JSON line."""
    cmd = pinned(cpu, [sys.executable, "-m", "cymqtt.bench", *args, "--port", str(port),
                       "--interval", "2"])
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    out_lines: list[str] = []
    t_out = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
    t_out.start()

    def pump_err() -> None:
        for line in proc.stderr:
            print(f"    {label}| {line.rstrip()}", file=sys.stderr, flush=True)
            if on_line is not None:
                on_line(line)

    t_err = threading.Thread(target=pump_err, daemon=True)
    t_err.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{label}: cymqtt-bench ran past {timeout:.0f} s; stopping it")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    t_out.join(5)
    t_err.join(5)
    for line in reversed(out_lines):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{label}: cymqtt-bench printed no result (exit {proc.returncode})")


# -- scenarios --------------------------------------------------------------------------------

def scenario_args(name: str, o: argparse.Namespace, calib: dict) -> tuple[list[str], str, float]:
    """(bench arguments, description, expected seconds) for scenario `name`."""
    d = o.duration
    if name == "p2p_qos0":
        return (["pubsub", "--name", name, "--pairs", "100", "--qos", "0", "--size", "64",
                 "--duration", str(d)],
                "100 pairs on distinct topics, 64 B payload, QoS 0, as fast as flow control "
                f"allows (TCP back-pressure, and at most {100} messages per publisher ahead "
                f"of its subscriber), {d:g} s", d)
    if name == "p2p_qos1":
        return (["pubsub", "--name", name, "--pairs", "100", "--qos", "1", "--size", "64",
                 "--inflight", "32", "--duration", str(d)],
                f"100 pairs, 64 B payload, QoS 1, 32 messages in flight per publisher, "
                f"{d:g} s", d)
    if name == "fanout":
        return (["pubsub", "--name", name, "--pubs", "1", "--subs", "1000", "--topic",
                 "bench/fanout", "--qos", "0", "--size", "64", "--rate", str(o.fanout_rate),
                 "--duration", str(d)],
                f"1 publisher at {o.fanout_rate:g} msg/s -> 1,000 subscribers of one topic "
                f"(= {o.fanout_rate * 1000:,.0f} deliveries/s offered), QoS 0, 64 B, {d:g} s",
                d + 2)
    if name == "fanin":
        return (["pubsub", "--name", name, "--pubs", "1000", "--subs", "1", "--topic",
                 "bench/fanin/%i", "--sub-topic", "bench/fanin/#", "--qos", "0", "--size", "64",
                 "--rate", "10", "--duration", str(d)],
                f"1,000 publishers at 10 msg/s (bench/fanin/%i) -> 1 subscriber on "
                f"bench/fanin/#, QoS 0, 64 B, {d:g} s", d + 2)
    if name == "latency":
        total = calib["latency_rate"]
        per_pair = total / 100
        return (["pubsub", "--name", name, "--pairs", "100", "--qos", "0", "--size", "64",
                 "--rate", f"{per_pair:.3f}", "--duration", str(d)],
                f"100 pairs at a fixed {total:,.0f} msg/s in total ({calib['latency_basis']}), "
                f"QoS 0, 64 B, {d:g} s", d)
    if name == "conn":
        # Source addresses 127.0.0.1-4 (5,000 connections each): connect() stays fast even
        # with the ports of earlier runs in TIME_WAIT.
        return (["conn", "--name", name, "--clients", str(o.conns), "--procs", "2",
                 "--duration", str(o.hold), "--keepalive", "60", "--max-pending", "100",
                 "--conns-per-addr", "5000"],
                f"{o.conns:,} idle connections (MQTT 3.1.1, keep alive 60 s) opened as fast as "
                f"100 handshakes in flight allow (2 load processes, source addresses "
                f"127.0.0.x, 5,000 each), held {o.hold:g} s", o.hold + 30)
    if name == "p2p_qos0_flood":
        return (flood_args(name, 100, "bench/%i", d),
                "100 pairs, 64 B payload, QoS 0, publishers writing as fast as their sockets "
                f"take it (--max-ahead 0: no end-to-end flow control; SO_SNDBUF "
                f"{FLOOD_SNDBUF // 1024} KB), {d:g} s. Offered = what the broker accepted from "
                "the publishers per second; loss = sent - received, after a drain", d + 15)
    if name == "fairness":
        return (["pubsub", "--name", "fairness_paced", "--pairs", "50", "--topic", "paced/%i",
                 "--qos", "0", "--size", "64", "--rate", "200", "--duration", str(d),
                 "--drain", "3"],
                "50 pairs at 200 msg/s each (10,000 msg/s), QoS 0, 64 B, first alone, then "
                "beside one flooding pair (QoS 0, --max-ahead 0, SO_SNDBUF "
                f"{FLOOD_SNDBUF // 1024} KB, topic flood/1) run by a second cymqtt-bench "
                f"process at nice 10 on the same CPU, {d:g} s each", d + 15)
    if name == "retained":
        return (["retained", "--name", name, "--count", "100000", "--width", "1000",
                 "--sub", "ret/#:0", "--sub", "ret/#:1", "--sub", "ret/7/+/x:0",
                 "--timeout", "5"],
                "100,000 retained messages (64 B, stored at QoS 1, topics ret/<a>/<b>/x), then "
                "a new subscriber to ret/# at QoS 0, one at QoS 1 (acknowledging each "
                "PUBLISH) and one to ret/7/+/x (1,000 topics) at QoS 0; seconds from "
                "SUBSCRIBE to the last expected message, giving up after 5 s without one",
                90)
    raise ValueError(name)


def flood_args(name: str, pairs: int, topic: str, seconds: float) -> list[str]:
    return ["pubsub", "--name", name, "--pairs", str(pairs), "--topic", topic, "--qos", "0",
            "--size", "64", "--max-ahead", "0", "--sndbuf", str(FLOOD_SNDBUF),
            "--duration", f"{seconds:g}", "--drain", "3"]


def run_fairness(broker: Broker, o: argparse.Namespace, args: list[str], expect_s: float,
                 rec: dict) -> dict:
    """The paced pairs alone (rec["baseline"]), then beside the flood (returned; the flood's
    own result goes to rec["flood"])."""
    label = f"fairness/{broker.kind}"
    rec["baseline"] = run_bench(args, broker.port, o.load_cpu, timeout=expect_s + 90,
                                label=label + "/alone")
    flooding = threading.Event()
    flood: dict = {}

    def on_line(line: str) -> None:
        if "pubs connected" in line:
            flooding.set()

    def run_flood() -> None:
        try:
            flood["res"] = run_bench(flood_args("fairness_flood", 1, "flood/%i", o.duration + 4),
                                     broker.port, o.load_cpu, timeout=expect_s + 90,
                                     on_line=on_line, label=label + "/flood", nice=10)
        except Exception as exc:       # reported with the result
            flood["error"] = str(exc)
        flooding.set()

    t = threading.Thread(target=run_flood, daemon=True)
    t.start()
    flooding.wait(60)
    time.sleep(1.0)                    # the flood has filled its buffers
    res = run_bench(args, broker.port, o.load_cpu, timeout=expect_s + 90, label=label)
    t.join(expect_s + 120)
    rec["flood"] = flood.get("res") or {}
    if "error" in flood:
        rec["flood_error"] = flood["error"]
    return res


def run_one(name: str, kind: str, o: argparse.Namespace, calib: dict, mosquitto: str,
            workdir: Path) -> dict:
    args, desc, expect_s = scenario_args(name, o, calib)
    broker = Broker(kind, o.broker_cpu, mosquitto, workdir, o.cymqtt_python)
    broker.start()
    rec: dict = {"scenario": name, "broker": kind, "description": desc, "args": args}
    try:
        time.sleep(1.0)                          # let it settle before the "before" figures
        rss_before = broker.rss_kb()
        cpu_before = broker.cpu_s()
        wait_before = broker.run_delay_s()
        rec["rss_before_kb"] = rss_before
        held = threading.Event()
        rss_during: list[int] = []

        def on_line(line: str) -> None:
            if "holding" in line and not held.is_set():
                held.set()

        sampler = None
        if name == "conn":
            def sample() -> None:
                if held.wait(expect_s + 60):
                    time.sleep(min(2.0, o.hold / 2))
                    kb = broker.rss_kb()
                    if kb is not None:
                        rss_during.append(kb)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        t0 = time.monotonic()
        if name == "fairness":
            res = run_fairness(broker, o, args, expect_s, rec)
        else:
            res = run_bench(args, broker.port, o.load_cpu, timeout=expect_s + 90,
                            on_line=on_line, label=f"{name}/{kind}")
        wall = time.monotonic() - t0
        if sampler is not None:
            held.set()
            sampler.join(5)
        cpu_after = broker.cpu_s()
        wait_after = broker.run_delay_s()
        rec["bench"] = res
        rec["wall_s"] = round(wall, 2)
        # CPU as a share of one core over the measured window (publishing, or connecting and
        # holding); connect and drain phases fall in the numerator only, so it reads a little
        # high, the same way for both brokers.
        window = res.get("duration_s") or 0
        if name in ("fairness", "retained"):
            window = 0                   # several runs, or no fixed one: CPU seconds only
        if name == "conn":
            window += res.get("connect_time_s") or 0
        if cpu_before is not None and cpu_after is not None:
            cpu = cpu_after - cpu_before
            rec["broker_cpu_s"] = round(cpu, 2)
            if window > 0:
                rec["broker_cpu_pct"] = round(100 * cpu / window, 1)
            if res.get("received") and window > 0:
                rec["broker_us_per_delivery"] = round(1e6 * cpu / res["received"], 2)
        if window > 0:
            rec["bench_cpu_pct"] = round(100 * res.get("bench_cpu_s", 0) / window, 1)
            # Time spent runnable but without a CPU: other processes on the machine.
            if wait_before is not None and wait_after is not None:
                rec["broker_cpu_wait_pct"] = round(100 * (wait_after - wait_before) / window, 1)
            rec["bench_cpu_wait_pct"] = round(100 * res.get("bench_cpu_wait_s", 0) / window, 1)
        if rss_during:
            rec["rss_after_kb"] = rss_during[0]
            n = res.get("connected") or 0
            if n and rss_before is not None:
                rec["kb_per_conn"] = round((rss_during[0] - rss_before) / n, 2)
        rec["broker_alive_after"] = broker.alive()
        if not broker.alive():
            rec["broker_log"] = broker.log_tail()
    finally:
        broker.stop()
    return rec


# -- report -----------------------------------------------------------------------------------

def fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    if isinstance(v, (int, float)):
        return f"{v:,.0f}" if abs(v) >= 100 or digits == 0 else f"{v:,.2f}"
    return str(v)


def ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}"


def lat(rec: dict | None, key: str):
    if not rec:
        return None
    lat_ms = rec.get("bench", {}).get("latency_ms")
    return None if not lat_ms else lat_ms.get(key)


def b(rec: dict | None, key: str):
    if not rec:
        return None
    return rec.get("bench", {}).get(key)


METRICS = {
    # scenario -> [(label, getter, digits)]
    "throughput": [
        ("delivered msg/s (higher is better)", lambda r: b(r, "recv_per_s"), 0),
        ("published msg/s", lambda r: b(r, "sent_per_s"), 0),
        ("received / expected", lambda r: f"{fmt(b(r, 'received'))} / {fmt(b(r, 'expected'))}"
         if r else None, 0),
        ("lost", lambda r: b(r, "lost"), 0),
        ("latency p50 ms (lower is better)", lambda r: lat(r, "p50"), 2),
        ("latency p99 ms (lower is better)", lambda r: lat(r, "p99"), 2),
        ("latency max ms", lambda r: lat(r, "max"), 2),
        ("broker CPU, % of one core", lambda r: r.get("broker_cpu_pct") if r else None, 0),
        ("broker CPU per delivery, us (lower is better)",
         lambda r: r.get("broker_us_per_delivery") if r else None, 2),
        ("load generator CPU, % of one core", lambda r: r.get("bench_cpu_pct") if r else None, 0),
        ("broker / load generator waiting for a CPU, %",
         lambda r: f"{fmt(r.get('broker_cpu_wait_pct'))} / {fmt(r.get('bench_cpu_wait_pct'))}"
         if r else None, 0),
        ("errors", lambda r: b(r, "errors"), 0),
    ],
    "conn": [
        ("connections held", lambda r: b(r, "connected"), 0),
        ("connect rate /s (higher is better)", lambda r: b(r, "connect_rate_per_s"), 0),
        ("broker RSS before, MB", lambda r: r.get("rss_before_kb") / 1024
         if r and r.get("rss_before_kb") else None, 1),
        ("broker RSS with all connected, MB", lambda r: r.get("rss_after_kb") / 1024
         if r and r.get("rss_after_kb") else None, 1),
        ("broker memory per connection, KB (lower is better)",
         lambda r: r.get("kb_per_conn") if r else None, 2),
        ("still connected at the end", lambda r: b(r, "connected_at_end"), 0),
        ("broker CPU, s", lambda r: r.get("broker_cpu_s") if r else None, 2),
        ("errors", lambda r: b(r, "errors"), 0),
    ],
    "p2p_qos0_flood": [
        ("delivered msg/s (higher is better)", lambda r: b(r, "recv_per_s"), 0),
        ("offered msg/s (what the broker took from the publishers)",
         lambda r: b(r, "sent_per_s"), 0),
        ("received / sent", lambda r: f"{fmt(b(r, 'received'))} / {fmt(b(r, 'expected'))}"
         if r else None, 0),
        ("loss, % (lower is better)", lambda r: loss_pct(r and r.get("bench")), 1),
        ("latency p50 ms (lower is better)", lambda r: lat(r, "p50"), 2),
        ("latency p99 ms (lower is better)", lambda r: lat(r, "p99"), 2),
        ("broker CPU, % of one core", lambda r: r.get("broker_cpu_pct") if r else None, 0),
        ("broker CPU per delivery, us (lower is better)",
         lambda r: r.get("broker_us_per_delivery") if r else None, 2),
        ("load generator CPU, % of one core", lambda r: r.get("bench_cpu_pct") if r else None, 0),
        ("errors", lambda r: b(r, "errors"), 0),
    ],
    "fairness": [
        ("paced p99 ms alone", lambda r: sub_lat(r, "baseline", "p99"), 2),
        ("paced p99 ms beside the flood (lower is better)", lambda r: lat(r, "p99"), 2),
        ("paced p99 beside the flood / alone (lower is better)",
         lambda r: (lat(r, "p99") / sub_lat(r, "baseline", "p99"))
         if lat(r, "p99") and sub_lat(r, "baseline", "p99") else None, 2),
        ("paced p50 ms alone / beside the flood",
         lambda r: f"{fmt(sub_lat(r, 'baseline', 'p50'), 2)} / {fmt(lat(r, 'p50'), 2)}"
         if r else None, 0),
        ("paced loss, % alone / beside the flood",
         lambda r: f"{fmt(loss_pct(r.get('baseline')), 1)} / {fmt(loss_pct(r.get('bench')), 1)}"
         if r else None, 0),
        ("flood delivered msg/s", lambda r: (r.get("flood") or {}).get("recv_per_s")
         if r else None, 0),
        ("flood offered msg/s", lambda r: (r.get("flood") or {}).get("sent_per_s")
         if r else None, 0),
        ("flood loss, %", lambda r: loss_pct(r and r.get("flood")), 1),
        ("errors (paced alone + beside + flood)",
         lambda r: sum((r.get(k) or {}).get("errors", 0) for k in ("baseline", "bench", "flood"))
         if r else None, 0),
    ],
}
NO_RATIO = {"errors", "lost", "loss, % (lower is better)", "flood loss, %",
            "errors (paced alone + beside + flood)"}


def loss_pct(res: dict | None):
    if not res or not res.get("expected"):
        return None
    return 100.0 * (res.get("lost") or 0) / res["expected"]


def sub_lat(rec: dict | None, part: str, key: str):
    lat_ms = ((rec or {}).get(part) or {}).get("latency_ms")
    return None if not lat_ms else lat_ms.get(key)


def retained_rows(recs: dict[str, dict]) -> list:
    """One pair of rows per subscription of the retained scenario."""
    def sub(r, k):
        subs = (r or {}).get("bench", {}).get("subscriptions") or []
        return subs[k] if k < len(subs) else None

    def seconds(x):
        # Only a complete delivery has a time to compare; an incomplete one says where it ended.
        if not x or x.get("seconds") is None:
            return None
        return x["seconds"] if x.get("complete") else f"incomplete (last at {x['seconds']:.3f})"

    any_rec = next((r for r in recs.values() if r.get("bench", {}).get("subscriptions")), None)
    rows = [("stored, s", lambda r: (r or {}).get("bench", {}).get("store_s"), 2)]
    for k, s in enumerate(any_rec["bench"]["subscriptions"] if any_rec else []):
        what = f"{s['filter']} QoS {s['qos']}"
        rows.append((f"{what}: received of {s['expected']:,} (higher is better)",
                     lambda r, k=k: (sub(r, k) or {}).get("received"), 0))
        rows.append((f"{what}: seconds (lower is better)",
                     lambda r, k=k: seconds(sub(r, k)), 3))
    rows.append(("errors", lambda r: (r or {}).get("bench", {}).get("errors"), 0))
    return rows

TITLES = {
    "p2p_qos0": "p2p, QoS 0", "p2p_qos1": "p2p, QoS 1", "fanout": "Fan-out",
    "fanin": "Fan-in", "latency": "Latency at a fixed rate", "conn": "Idle connections",
    "p2p_qos0_flood": "Overload: p2p QoS 0 flood", "fairness": "Fairness beside a flood",
    "retained": "Retained delivery",
}


def table(name: str, recs: dict[str, dict]) -> list[str]:
    c, m = recs.get("cymqtt"), recs.get("mosquitto")
    if name == "retained":
        rows = retained_rows(recs)
    else:
        rows = METRICS.get(name, METRICS["throughput"])
    out = ["| | cymqtt | mosquitto | cymqtt / mosquitto |", "|---|---:|---:|---:|"]
    for label, get, digits in rows:
        vc, vm = get(c), get(m)
        r = ratio(vc, vm) if isinstance(vc, (int, float)) and isinstance(vm, (int, float)) \
            and label not in NO_RATIO else ""
        out.append(f"| {label} | {fmt(vc, digits)} | {fmt(vm, digits)} | {r} |")
    return out


def charts(results: dict, out_dir: Path, stem: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        log("matplotlib is not installed (pip install matplotlib); no charts")
        return []
    made = []
    colors = {"cymqtt": "#1f77b4", "mosquitto": "#8c8c8c"}
    thr = [s for s in ("p2p_qos0", "p2p_qos1", "fanout", "fanin", "latency", "p2p_qos0_flood")
           if s in results]
    if thr:
        fig, axes = plt.subplots(1, len(thr), figsize=(3.2 * len(thr), 3.6), squeeze=False)
        for ax, s in zip(axes[0], thr):
            vals = [b(results[s].get(k), "recv_per_s") or 0 for k in BROKERS]
            ax.bar(BROKERS, vals, color=[colors[k] for k in BROKERS])
            ax.set_title(TITLES[s], fontsize=10)
            ax.set_ylabel("delivered msg/s" if s == thr[0] else "")
            for i, v in enumerate(vals):
                ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
        fig.suptitle("Throughput (delivered messages per second)")
        fig.tight_layout()
        path = out_dir / f"{stem}-throughput.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path.name)
    if thr:
        # A dot plot per scenario: each broker's latency percentiles joined by a line, every
        # point labelled with its value. Dots sit on a log axis without a baseline, so a 0.3 ms
        # p50 beside a 300 ms p99 stays visible (bars on a log axis start from an arbitrary
        # floor, which made small values look empty).
        pcts = ("p50", "p90", "p99", "max")
        fig, axes = plt.subplots(1, len(thr), figsize=(3.4 * len(thr), 3.8), squeeze=False)
        for ax, s in zip(axes[0], thr):
            top, low = 0.0, float("inf")
            series = {k: [lat(results[s].get(k), q) for q in pcts] for k in BROKERS}
            for k, marker in zip(BROKERS, ("o", "s")):
                pts = [(i, v) for i, v in enumerate(series[k]) if v is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                top, low = max(top, *ys), min(low, *ys)
                ax.plot(xs, ys, marker=marker, color=colors[k], label=k, linewidth=1.2)
                for x, y in pts:
                    # The higher of the two points is labelled above, the lower one below.
                    others = [series[o][x] for o in BROKERS if o != k and series[o][x]]
                    above = not others or y >= max(others)
                    ax.annotate(_ms(y), (x, y), textcoords="offset points",
                                xytext=(0, 7 if above else -13), ha="center",
                                fontsize=7, color=colors[k])
            ax.set_xticks(range(len(pcts)), pcts)
            ax.set_xlim(-0.4, len(pcts) - 0.6)
            if top > 0:
                ax.set_yscale("log")
                ax.set_ylim(max(low, 0.001) / 2.5, top * 2.5)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(TITLES[s], fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            if s == thr[0]:
                ax.set_ylabel("latency, ms (log scale)")
                ax.legend(fontsize=8)
        fig.suptitle("End-to-end latency by percentile (lower is better)")
        fig.tight_layout()
        path = out_dir / f"{stem}-latency.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path.name)
    conn = results.get("conn") or {}
    if any(conn.get(k) for k in BROKERS):
        panels = [("memory per connection, KB (lower is better)",
                   lambda r: r.get("kb_per_conn") if r else None, 2),
                  ("connect rate, connections/s (higher is better)",
                   lambda r: b(r, "connect_rate_per_s"), 0),
                  ("connections held", lambda r: b(r, "connected"), 0)]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6),
                                 squeeze=False)
        for ax, (title, get, digits) in zip(axes[0], panels):
            vals = [get(conn.get(k)) for k in BROKERS]
            ax.bar(BROKERS, [v or 0 for v in vals], color=[colors[k] for k in BROKERS])
            for i, v in enumerate(vals):
                ax.annotate("-" if v is None else f"{v:,.{digits}f}", (i, v or 0),
                            ha="center", va="bottom", fontsize=8)
            ax.set_ylim(0, max([v or 0 for v in vals] + [0]) * 1.15 or 1)
            ax.set_title(title, fontsize=9)
        fig.suptitle("Idle connections: memory and connect rate")
        fig.tight_layout()
        path = out_dir / f"{stem}-connections.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path.name)
    return made


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def git_rev(root: Path = ROOT) -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return rev + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def write_report(results: dict, meta: dict, out_dir: Path, stem: str, pngs: list[str]) -> Path:
    lines = [f"# cymqtt vs mosquitto, {meta['date']}", ""]
    lines.append(f"Command: `{meta['command']}`" + (" (quick: shorter runs)" if meta["quick"]
                                                      else ""))
    m = meta["machine"]
    lines.append("")
    lines.append(f"Machine: {m.get('cpus')} CPUs ({m.get('cpu', '?')}), Linux {m.get('kernel')},"
                 f" Python {m.get('python')}, load average at start "
                 f"{' '.join(m.get('loadavg_at_start', []))}. cymqtt {meta['cymqtt']} "
                 f"(git {meta['git']}), {meta['mosquitto_version']}.")
    lines.append("")
    lines.append(f"Each broker ran alone, pinned to CPU {meta['broker_cpu']}; the load generator "
                 f"(`cymqtt-bench`, one uvloop process unless noted) ran on CPU "
                 f"{meta['load_cpu']}. A fresh broker served each scenario. mosquitto config: "
                 "`max_queued_messages 1000`, `max_inflight_messages 32`, no persistence; "
                 "cymqtt defaults (inflight 32, queue 1,000). The latency figures are end to end "
                 "(publisher send time in the payload, read by the subscriber). When the load "
                 "generator's CPU is near 100 % the figure is its limit, not the broker's; the "
                 "broker's CPU time per delivered message compares the brokers either way. "
                 "\"Waiting for a CPU\" is time a process was runnable while other programs "
                 "held its CPU (/proc/PID/schedstat): the machine's background load, which "
                 "skews that run.")
    lines.append("")
    for name in SCENARIOS:
        if name not in results:
            continue
        recs = results[name]
        lines.append(f"## {TITLES[name]}")
        lines.append("")
        any_rec = next(iter(recs.values()))
        lines.append(any_rec["description"] + ".")
        lines.append("")
        lines.extend(table(name, recs))
        for k in BROKERS:
            r = recs.get(k)
            if not r:
                continue
            notes = list(r.get("bench", {}).get("notes", []))
            for part in ("baseline", "flood"):
                notes += [f"{part}: {n}" for n in (r.get(part) or {}).get("notes", [])]
            if r.get("flood_error"):
                notes.append(f"flood run failed: {r['flood_error']}")
            for sub in r.get("bench", {}).get("subscriptions") or []:
                if sub.get("error"):
                    notes.append(f"{sub['filter']} QoS {sub['qos']}: {sub['error']}")
            if r.get("error"):
                notes.append(f"run failed: {r['error']}")
            if r.get("broker_alive_after") is False:
                notes.append(f"the broker died during the run: {r.get('broker_log', '')}")
            detail = r.get("bench", {}).get("error_detail") or {}
            if detail:
                notes.append("errors: " + "; ".join(f"{n} x {t}" for t, n in detail.items()))
            for n in notes:
                lines.append("")
                lines.append(f"- {k}: {n}")
        lines.append("")
    if pngs:
        for p in pngs:
            lines.append(f"![{p}]({p})")
            lines.append("")
    lines.append(f"Raw figures: `{stem}.json` (not committed).")
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="shorter runs (4 s instead of 10 s)")
    p.add_argument("--brokers", default=",".join(BROKERS), help="default: cymqtt,mosquitto")
    p.add_argument("--out", default=str(RESULTS), help="results directory")
    p.add_argument("--broker-cpu", default="0", help="CPU list for the broker (taskset)")
    p.add_argument("--load-cpu", default="1", help="CPU list for the load generator")
    p.add_argument("--fanout-rate", type=float, default=200.0,
                   help="fan-out publisher rate, msg/s (x 1,000 subscribers; default 200, "
                        "above mosquitto's fan-out saturation on this machine, so the ratio "
                        "compares capacities)")
    p.add_argument("--conns", type=int, default=19000,
                   help="idle connections in the conn scenario (default 19,000: the open-file "
                        "limit is 20,000 per process)")
    p.add_argument("--no-charts", action="store_true")
    p.add_argument("--charts-from", metavar="JSON",
                   help="run nothing: redraw the charts (and the report) of an earlier run "
                        "from its <date>.json, next to it")
    p.add_argument("--cymqtt-python", metavar="PYTHON",
                   help="interpreter whose cymqtt is the broker under test (default: this one); "
                        "e.g. another checkout's .venv/bin/python, for before/after runs with "
                        "the same load generator")
    o = p.parse_args(argv)
    if o.charts_from:
        src = Path(o.charts_from)
        try:
            data = json.loads(src.read_text())
        except (OSError, ValueError) as exc:
            die(f"cannot read {src}: {exc}")
        pngs = charts(data["results"], src.parent, src.stem)
        report = write_report(data["results"], data["meta"], src.parent, src.stem, pngs)
        log(f"wrote {report}" + (", " + ", ".join(pngs) if pngs else ""))
        return 0
    o.duration = 4.0 if o.quick else 10.0
    o.hold = 4.0 if o.quick else 10.0
    chosen = [s.strip() for s in o.scenarios.split(",") if s.strip()]
    for s in chosen:
        if s not in SCENARIOS:
            die(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    brokers = [k.strip() for k in o.brokers.split(",") if k.strip()]
    for k in brokers:
        if k not in BROKERS:
            die(f"unknown broker {k!r}; choose from {', '.join(BROKERS)}")

    mosquitto = find_mosquitto()
    if mosquitto is None:
        die("mosquitto is not installed; it is the peer every figure is compared with. Install "
            "it with `make tools` (Debian/Ubuntu: sudo apt-get install mosquitto "
            "mosquitto-clients)")
    if shutil.which("taskset") is None:
        log("taskset not found (util-linux): brokers and load run unpinned")
        o.broker_cpu = o.load_cpu = None
    elif (os.cpu_count() or 1) < 2:
        log("one CPU only: brokers and load share it")
        o.broker_cpu = o.load_cpu = None
    try:
        import cymqtt._fast  # noqa: F401
        from cymqtt._version import __version__ as cy_version
    except ImportError as exc:
        die(f"{exc}")
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if "conn" in chosen and o.conns + 200 > hard:
            log(f"the open-file limit is {hard}; conn scenario lowered to {hard - 1000:,}")
            o.conns = max(100, hard - 1000)
        if soft < hard:   # brokers inherit it
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    mv = subprocess.run([mosquitto, "-h"], capture_output=True, text=True).stdout.splitlines()
    mosquitto_version = mv[0].strip() if mv else "mosquitto"

    out_dir = Path(o.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    # The broker's checkout: this one, or the one whose .venv/bin/python --cymqtt-python names.
    broker_root = Path(o.cymqtt_python).absolute().parents[2] if o.cymqtt_python else ROOT
    meta = {"date": date, "quick": o.quick, "git": git_rev(broker_root), "cymqtt": cy_version,
            "mosquitto_version": mosquitto_version, "machine": machine(),
            "broker_cpu": o.broker_cpu, "load_cpu": o.load_cpu,
            "command": " ".join([".venv/bin/python", "benchmarks/compare.py",
                                 *(argv if argv is not None else sys.argv[1:])])}
    results: dict[str, dict[str, dict]] = {}
    calib: dict = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cymqtt-compare-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)       # mosquitto drops root for its own user
        for name in chosen:
            if name == "latency":
                base = results.get("p2p_qos0", {}).get("mosquitto")
                top = b(base, "recv_per_s")
                if not top:
                    log("latency: measuring mosquitto's p2p QoS 0 maximum first (3 s)")
                    saved = o.duration
                    o.duration = 3.0
                    try:
                        top = b(run_one("p2p_qos0", "mosquitto", o, calib, mosquitto, workdir),
                                "recv_per_s")
                    finally:
                        o.duration = saved
                top = top or 20000.0
                calib["latency_rate"] = top / 2
                calib["latency_basis"] = f"half of mosquitto's p2p QoS 0 maximum, {top:,.0f} msg/s"
            results[name] = {}
            for kind in brokers:
                log(f"{name} on {kind} ...")
                try:
                    rec = run_one(name, kind, o, calib, mosquitto, workdir)
                except Exception as exc:       # report it and go on with the next run
                    log(f"{name} on {kind} failed: {exc}")
                    rec = {"scenario": name, "broker": kind, "error": str(exc),
                           "description": scenario_args(name, o, calib)[1]}
                results[name][kind] = rec
                bench = rec.get("bench", {})
                if name == "retained":
                    log(f"{name} on {kind}: " + "; ".join(
                        f"{s['filter']} QoS {s['qos']} {s['received']:,}/{s['expected']:,} in "
                        f"{s['seconds']} s" for s in bench.get("subscriptions", [])))
                    continue
                log(f"{name} on {kind}: delivered {bench.get('recv_per_s', 0):,.0f}/s, "
                    f"connected {bench.get('connected', 0):,}, lost {bench.get('lost')}, "
                    f"latency {bench.get('latency_ms')}, broker CPU {rec.get('broker_cpu_pct')}%"
                    + (f", {rec['kb_per_conn']} KB/conn" if "kb_per_conn" in rec else ""))
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    stem = date
    (out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results},
                                                     indent=1))
    pngs = [] if o.no_charts else charts(results, out_dir, stem)
    report = write_report(results, meta, out_dir, stem, pngs)
    print(report.read_text())
    log(f"wrote {report}, {stem}.json" + (", " + ", ".join(pngs) if pngs else "")
        + f" in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
