"""What the cluster costs (GitHub issue 13, "Cost and scaling").

    flock -o /tmp/cpu.lock .venv/bin/python benchmarks/cluster_bench.py [--parts a,b,mem]
        [--duration 6] [--repeats 3] [--json out.json]

Every server (brokers, nats-server) runs pinned to CPU 0 with `taskset`, every load generator
(`cymqtt-bench pubsub`, 100 pairs, 64 B) on CPU 1. Runs of the variants being compared
alternate (off, on, off, on, ...) and each figure is the median of --repeats runs.

a  single-node speed with the cluster layer off and on, where no remote subscription matches:
   one broker without [cluster] ("off") beside one broker with [cluster] ("on") that shares a
   cluster with a second, idle node (so heartbeats and the route table are live). With
   --idle-routes N (default 100) a client on the idle node holds N filters dev/<i>/+/state that
   no publish matches, so every publish on "on" looks its topic up in the route table; 0
   leaves the table empty (the router then never calls the bus). QoS 0 and 1,
   paced (--rate per publisher) and flat out. Reported: delivered msg/s, p99 latency, broker
   CPU seconds per million messages, and on / off ratios.
b  cross-node p2p: publishers on node A, subscribers on node B ("cross"), against everything
   on node A ("local"); both nodes and nats-server share CPU 0, so the figures are per core.
   Reported: delivered msg/s, loss, p99, and (c) the measured per-message costs: CPU of the
   brokers and of nats-server per forwarded message, NATS messages and bytes per message
   (nats-server's monitoring /varz: in_msgs, out_msgs, in_bytes, out_bytes).
mem  RSS growth of one broker per 10,000 idle connections, cluster off and on (each CONNECT
   on a cluster node is a client-id claim over NATS: the connect rate is reported too), and
   the memory of 10,000 distinct filters held by node B, on B, on node A (its route table)
   and in nats-server.
overload  (not in the default) cross-node QoS 1 flat out for 20 s: the backlog between nodes,
   the memory it takes, and whether node b holds node a for dead meanwhile.

Cross-node runs use `cymqtt-bench` with its subscribers' connections sent to node B's port
(the `_load` sub-command below wraps the bench worker's connect; the bench itself talks to one
broker).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
PAIRS = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime + stime


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Nats:
    def __init__(self, tmp: str) -> None:
        self.port, self.mport = _free_port(), _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            _pin(0) + [os.path.join(os.path.dirname(PY), "nats-server"), "-js",
                       "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.mport),
                       "-sd", os.path.join(tmp, "nats")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self._up, 10, "nats-server")

    def _up(self) -> bool:
        try:
            self.varz()
            return True
        except OSError:
            return False

    def varz(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.mport}/varz")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Node:
    """`python -m cymqtt -c node.toml` on CPU 0, with [http] for its stats."""

    def __init__(self, tmp: str, name: str, nats: Nats | None = None, nodes: int = 1) -> None:
        self.name = name
        self.port, self.http = _free_port(), _free_port()
        conf = os.path.join(tmp, f"{name}.toml")
        text = (f'host = "127.0.0.1"\nport = {self.port}\npersistence = false\n'
                f'log_level = "warning"\n[http]\nport = {self.http}\n')
        if nats is not None:
            text += f'[cluster]\nnats = "{nats.url}"\nnode = "{name}"\nname = "bench"\n'
        with open(conf, "w") as f:
            f.write(text)
        self.log = open(os.path.join(tmp, f"{name}.log"), "wb")
        self.proc = subprocess.Popen(_pin(0) + [PY, "-m", "cymqtt", "-c", conf],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid        # (taskset execs the broker: same pid)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {name} ended; see {self.log.name}")
            try:
                return self.stats().get("cluster_nodes", 1) >= nodes
            except OSError:
                return False
        _wait(ready, 20, f"node {name}")

    def stats(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.http}/api/v1/stats")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _bench(args: list[str], port: int, sub_port: int | None = None) -> dict:
    """One cymqtt-bench run on CPU 1; its JSON line."""
    if sub_port is None:
        cmd = [PY, "-m", "cymqtt.bench"]
    else:
        cmd = [PY, os.path.abspath(__file__), "_load", str(sub_port), "--"]
    out = subprocess.run(_pin(1) + cmd + args + ["--port", str(port), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"cymqtt-bench gave nothing: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def _pubsub(qos: int, rate: float, duration: float, pairs: int) -> list[str]:
    return ["pubsub", "--pairs", str(pairs), "--qos", str(qos), "--size", "64",
            "--rate", str(rate), "--duration", str(duration), "--drain", "2"]


def _measured(run, servers: list, nats: Nats | None) -> dict:
    """Run `run()` (a bench) and add the servers' CPU and NATS traffic during it."""
    cpu0 = {s.name: _cpu_s(s.pid) for s in servers}
    ncpu0 = _cpu_s(nats.proc.pid) if nats else 0.0
    v0 = nats.varz() if nats else {}
    result = run()
    result["cpu_s"] = {s.name: _cpu_s(s.pid) - cpu0[s.name] for s in servers}
    if nats:
        v1 = nats.varz()
        result["nats_cpu_s"] = _cpu_s(nats.proc.pid) - ncpu0
        result["nats"] = {k: v1[k] - v0[k] for k in ("in_msgs", "out_msgs", "in_bytes",
                                                     "out_bytes")}
    return result


# -- the parts ----------------------------------------------------------------------------------

# Paced: 100 publishers x 300 msg/s = 30,000 msg/s for (a); 100 x 100 = 10,000 msg/s for (b),
# where two nodes and nats-server share one core (30,000 cross-node msg/s fill it).
SCENARIOS_A = [("QoS 0 paced", 0, 300.0), ("QoS 1 paced", 1, 300.0),
               ("QoS 0 flat out", 0, 0.0), ("QoS 1 flat out", 1, 0.0)]
SCENARIOS_B = [("QoS 0 paced", 0, 100.0), ("QoS 1 paced", 1, 100.0),
               ("QoS 0 flat out", 0, 0.0), ("QoS 1 flat out", 1, 0.0)]


def _chosen(scenarios: list, o) -> list:
    """The scenarios --scenarios names, paced ones at --paced-rate when given."""
    return [(title, qos, o.paced_rate if rate and o.paced_rate else rate)
            for title, qos, rate in scenarios if o.scenarios is None or
            any(w.strip() in title for w in o.scenarios.split(","))]


def part_a(tmp: str, o) -> list[dict]:
    nats = Nats(tmp)
    off = Node(tmp, "off")
    on = Node(tmp, "on", nats, nodes=1)
    idle = Node(tmp, "idle", nats, nodes=2)
    _wait(lambda: on.stats()["cluster_nodes"] == 2, 10, "the two cluster nodes")
    holder = None
    if o.idle_routes:
        holder = _subscribe_many(idle, o.idle_routes)
        _wait(lambda: on.stats()["cluster_routes_remote"] >= o.idle_routes, 60,
              f"{o.idle_routes} routes on the 'on' node")
    rows = []
    try:
        for title, qos, rate in _chosen(SCENARIOS_A, o):
            runs: dict[str, list[dict]] = {"off": [], "on": []}
            for i in range(o.repeats):
                for node in ((off, on) if i % 2 == 0 else (on, off)):    # (alternate first)
                    servers = [node] + ([idle] if node is on else [])
                    r = _measured(lambda: _bench(_pubsub(qos, rate, o.duration, o.pairs), node.port),
                                  servers, nats if node is on else None)
                    runs[node.name].append(r)
                    print(f"a {title} {node.name}: {r['recv_per_s']:.0f} msg/s lost "
                          f"{r['lost']} p99 {r['latency_ms']['p99']} ms cpu {r['cpu_s']}",
                          file=sys.stderr)
            rows.append({"scenario": title, "qos": qos, "rate": rate, "runs": runs,
                         "idle_routes": o.idle_routes,
                         "forwarded_on": on.stats()["cluster_forwarded"]})
    finally:
        if holder is not None:
            holder.loop_stop()
            holder.disconnect()
        for s in (idle, on, off):
            s.stop()
        nats.stop()
    return rows


def part_b(tmp: str, o) -> list[dict]:
    nats = Nats(tmp)
    a = Node(tmp, "a", nats, nodes=1)
    b = Node(tmp, "b", nats, nodes=2)
    _wait(lambda: a.stats()["cluster_nodes"] == 2, 10, "the two nodes")
    rows = []
    try:
        for title, qos, rate in _chosen(SCENARIOS_B, o):
            runs: dict[str, list[dict]] = {"local": [], "cross": []}
            for i in range(o.repeats):
                for mode in (("local", "cross") if i % 2 == 0 else ("cross", "local")):
                    args = _pubsub(qos, rate, o.duration, o.pairs)
                    f0 = a.stats()["cluster_forwarded"]
                    r = _measured(lambda: _bench(args, a.port,
                                                 b.port if mode == "cross" else None),
                                  [a, b], nats)
                    r["forwarded"] = a.stats()["cluster_forwarded"] - f0
                    runs[mode].append(r)
                    print(f"b {title} {mode}: {r['recv_per_s']:.0f} msg/s lost {r['lost']} "
                          f"p99 {r['latency_ms']['p99']} ms cpu {r['cpu_s']} nats "
                          f"{r['nats_cpu_s']:.2f} s {r['nats']} fwd {r['forwarded']}",
                          file=sys.stderr)
            rows.append({"scenario": title, "qos": qos, "rate": rate, "runs": runs})
    finally:
        for s in (b, a):
            s.stop()
        nats.stop()
    return rows


def part_overload(tmp: str, o) -> dict:
    """Cross-node QoS 1 flat out for --overload-duration s (drain 30 s): A acknowledges what
    it forwards at once, so nothing slows its publishers to what B takes; sampled each second:
    A's and nats-server's RSS; and what B logged of the cluster meanwhile."""
    import threading

    nats = Nats(tmp)
    a = Node(tmp, "o-a", nats, nodes=1)
    b = Node(tmp, "o-b", nats, nodes=2)
    samples: list = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(1.0):
            samples.append((round(time.monotonic() - t0), _rss_kb(a.pid) // 1024,
                            _rss_kb(nats.proc.pid) // 1024))
    try:
        _wait(lambda: a.stats()["cluster_nodes"] == 2, 10, "the two nodes")
        sampler = threading.Thread(target=sample)
        sampler.start()
        args = _pubsub(1, 0.0, o.overload_duration, o.pairs)
        args[args.index("--drain") + 1] = "30"
        v0 = nats.varz()
        try:
            r = _bench(args, a.port, b.port)
        finally:
            done.set()
            sampler.join()
        v1 = nats.varz()
        counts = {"nats_" + k: v1[k] - v0[k] for k in ("in_msgs", "out_msgs", "slow_consumers")}
        for name, node in (("a", a), ("b", b)):
            st = node.stats()     # (b's own figures: a's are 0 or come from its heartbeat)
            counts.update({f"{name}_{k}": st[k] for k in (
                "cluster_forwarded", "cluster_received", "messages_dropped")})
    finally:
        for s in (b, a):
            s.stop()
        nats.stop()
    with open(os.path.join(tmp, "o-b.log"), errors="replace") as f:
        silent = [line.strip() for line in f if "cymqtt.cluster" in line]
    out = {"result": {k: r[k] for k in ("sent", "received", "lost", "sent_per_s",
                                        "recv_per_s", "latency_ms")},
           "rss_mb": samples, "b_log": silent, "counts": counts}
    print(f"overload: {out}", file=sys.stderr)
    return out


def table_overload(ov: dict) -> str:
    r = ov["result"]
    peak_a = max((s[1] for s in ov["rss_mb"]), default=0)
    peak_n = max((s[2] for s in ov["rss_mb"]), default=0)
    lines = [f"A acknowledged {r['sent_per_s']:,.0f} msg/s, B delivered "
             f"{r['recv_per_s']:,.0f} msg/s; {r['received']:,} of {r['sent']:,} arrived "
             f"(lost {r['lost']:,}); latency p50 {r['latency_ms']['p50'] / 1000:.1f} s, "
             f"p99 {r['latency_ms']['p99'] / 1000:.1f} s; RSS peak: node a {peak_a} MB, "
             f"nats-server {peak_n} MB.", "",
             "Counters: " + ", ".join(f"{k} {v:,}" for k, v in ov["counts"].items()) + ".",
             "", "node b's log:", ""]
    lines += [f"    {line}" for line in ov["b_log"]] or ["    (nothing)"]
    return "\n".join(lines)


def _hold_connections(node: Node, n: int, extra: list[str] | None = None) -> dict:
    """RSS of `node` before and while `cymqtt-bench conn` holds n idle connections to it."""
    before = _rss_kb(node.pid)
    proc = subprocess.Popen(_pin(1) + [PY, "-m", "cymqtt.bench", "conn", "-c", str(n),
                                       "--duration", "600", "--port", str(node.port),
                                       "--quiet"] + (extra or []),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t0 = time.monotonic()
    try:
        _wait(lambda: node.stats()["clients_connected"] >= n, 120, f"{n} connections")
        took = time.monotonic() - t0
        time.sleep(1.0)                  # (let the last handshakes' garbage go)
        during = _rss_kb(node.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"rss_before_kb": before, "rss_during_kb": during, "connect_s": took,
            "per_conn_b": (during - before) * 1024 / n}


def part_mem(tmp: str, o) -> dict:
    n = o.connections
    out: dict = {}
    off = Node(tmp, "m-off")
    try:
        out["off"] = _hold_connections(off, n)
        out["filters_off"] = _filter_memory(off, o.filters)
    finally:
        off.stop()
    nats = Nats(tmp)
    try:
        a = Node(tmp, "m-a", nats, nodes=1)
        b = Node(tmp, "m-b", nats, nodes=2)
        try:
            out["on"] = _hold_connections(a, n)
            out["routes"] = _route_memory(a, b, nats, o.filters)
        finally:
            b.stop()
            a.stop()
    finally:
        nats.stop()
    print(f"mem: {out}", file=sys.stderr)
    return out


def _subscribe_many(node: Node, n: int):
    """One paho client on `node` subscribing to n distinct filters dev/<i>/+/state."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="route-holder")
    c.connect("127.0.0.1", node.port)
    c.loop_start()
    batch = 500
    for start in range(0, n, batch):
        c.subscribe([(f"dev/{i}/+/state", 0) for i in range(start, min(n, start + batch))])
    return c


def _filter_memory(node: Node, n: int) -> dict:
    """RSS growth of a broker without [cluster] per filter it holds (the baseline)."""
    rss0 = _rss_kb(node.pid)
    c = _subscribe_many(node, n)
    try:
        _wait(lambda: node.stats()["subscriptions"] >= n, 120, f"{n} subscriptions")
        time.sleep(1.0)
        return {"filters": n, "per_filter_b": (_rss_kb(node.pid) - rss0) * 1024 / n}
    finally:
        c.loop_stop()
        c.disconnect()


def _route_memory(a: Node, b: Node, nats: Nats, n: int) -> dict:
    """Memory of n distinct filters held on b: on b, in a's route table, in nats-server."""
    rss0 = {"a": _rss_kb(a.pid), "b": _rss_kb(b.pid), "nats": _rss_kb(nats.proc.pid)}
    subs0 = nats.varz().get("subscriptions", 0)
    t0 = time.monotonic()
    c = _subscribe_many(b, n)
    try:
        _wait(lambda: a.stats()["cluster_routes_remote"] >= n, 300, f"{n} routes on a")
        took = time.monotonic() - t0
        time.sleep(1.0)
        rss1 = {"a": _rss_kb(a.pid), "b": _rss_kb(b.pid), "nats": _rss_kb(nats.proc.pid)}
        subs1 = nats.varz().get("subscriptions", 0)
    finally:
        c.loop_stop()
        c.disconnect()
    return {"filters": n, "seconds_until_a_has_them": took,
            "nats_subscriptions": subs1 - subs0,
            "per_filter_b": {k: (rss1[k] - rss0[k]) * 1024 / n for k in rss0}}


# -- the report ---------------------------------------------------------------------------------

def _med(runs: list[dict], f) -> float:
    return statistics.median(f(r) for r in runs)


def _cpu_per_m(r: dict, names=None) -> float:
    cpu = sum(v for k, v in r["cpu_s"].items() if names is None or k in names)
    return cpu / max(1, r["received"]) * 1e6


def table_a(rows: list[dict]) -> str:
    out = ["| scenario | off msg/s | on msg/s | on/off | off p99 ms | on p99 ms | "
           "off CPU s/M msg | on CPU s/M msg (node) | CPU on/off | lost off/on |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        off, on = row["runs"]["off"], row["runs"]["on"]
        mo, mn = (_med(x, lambda r: r["recv_per_s"]) for x in (off, on))
        co = _med(off, lambda r: _cpu_per_m(r, {"off"}))
        cn = _med(on, lambda r: _cpu_per_m(r, {"on"}))
        out.append(f"| {row['scenario']} | {mo:,.0f} | {mn:,.0f} | {mn / mo:.3f} | "
                   f"{_med(off, lambda r: r['latency_ms']['p99']):.2f} | "
                   f"{_med(on, lambda r: r['latency_ms']['p99']):.2f} | {co:.2f} | {cn:.2f} | "
                   f"{cn / co:.3f} | {sum(r['lost'] for r in off)}/"
                   f"{sum(r['lost'] for r in on)} |")
    return "\n".join(out)


def table_b(rows: list[dict]) -> str:
    out = ["| scenario | local msg/s | cross msg/s | cross/local | lost local/cross | "
           "local p99 ms | cross p99 ms |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lo, cr = row["runs"]["local"], row["runs"]["cross"]
        ml, mc = (_med(x, lambda r: r["recv_per_s"]) for x in (lo, cr))
        out.append(f"| {row['scenario']} | {ml:,.0f} | {mc:,.0f} | {mc / ml:.3f} | "
                   f"{sum(r['lost'] for r in lo)}/{sum(r['lost'] for r in cr)} | "
                   f"{_med(lo, lambda r: r['latency_ms']['p99']):.2f} | "
                   f"{_med(cr, lambda r: r['latency_ms']['p99']):.2f} |")
    return "\n".join(out)


def table_c(rows: list[dict]) -> str:
    out = ["| scenario | brokers CPU µs/msg local | brokers CPU µs/msg cross: a (sends) + "
           "b (receives) | bus µs/msg (difference) | nats-server CPU µs/msg | "
           "NATS msgs in+out per msg | NATS bytes in per msg | NATS bytes out per msg |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lo, cr = row["runs"]["local"], row["runs"]["cross"]
        cl = _med(lo, lambda r: _cpu_per_m(r))
        cc = _med(cr, lambda r: _cpu_per_m(r))
        ca = _med(cr, lambda r: _cpu_per_m(r, {"a"}))
        cb = _med(cr, lambda r: _cpu_per_m(r, {"b"}))
        nc = _med(cr, lambda r: r["nats_cpu_s"] / max(1, r["received"]) * 1e6)
        nm = _med(cr, lambda r: (r["nats"]["in_msgs"] + r["nats"]["out_msgs"]) /
                  max(1, r["received"]))
        bi = _med(cr, lambda r: r["nats"]["in_bytes"] / max(1, r["received"]))
        bo = _med(cr, lambda r: r["nats"]["out_bytes"] / max(1, r["received"]))
        out.append(f"| {row['scenario']} | {cl:.2f} | {cc:.2f}: {ca:.2f} + {cb:.2f} | "
                   f"{cc - cl:.2f} | {nc:.2f} | "
                   f"{nm:.2f} | {bi:.0f} | {bo:.0f} |")
    return "\n".join(out)


def table_mem(m: dict) -> str:
    out = ["| broker | idle connections | RSS before MB | RSS holding MB | bytes per "
           "connection | seconds to connect all |", "|---|---|---|---|---|---|"]
    for k in ("off", "on"):
        r = m[k]
        out.append(f"| cluster {k} | {m['connections']:,} | {r['rss_before_kb'] / 1024:.1f} | "
                   f"{r['rss_during_kb'] / 1024:.1f} | {r['per_conn_b']:,.0f} | "
                   f"{r['connect_s']:.1f} |")
    rt = m["routes"]
    out += ["", f"{rt['filters']:,} distinct filters `dev/<i>/+/state` on node b "
            f"({rt['nats_subscriptions']:,} NATS subscriptions; node a had all of them in its "
            f"route table {rt['seconds_until_a_has_them']:.1f} s after the first SUBSCRIBE):",
            "", "| process | RSS growth per filter, bytes |", "|---|---|"]
    out.append(f"| a broker without [cluster] (the same {m['filters_off']['filters']:,} "
               f"filters) | {m['filters_off']['per_filter_b']:,.0f} |")
    for k, label in (("b", "node b (holds them)"), ("a", "node a (route table)"),
                     ("nats", "nats-server")):
        out.append(f"| {label} | {rt['per_filter_b'][k]:,.0f} |")
    return "\n".join(out)


def _load(argv: list[str]) -> int:
    """`_load SUB_PORT -- <cymqtt-bench args>`: the bench, with its subscribers on SUB_PORT."""
    sub_port = int(argv[0])
    args = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    from cymqtt.bench import cli, worker

    async def _open(self, c, source):
        if source is not None or self.tls is not None or self.ws_uri is not None:
            raise RuntimeError("_load supports plain TCP from the default source only")
        port = sub_port if c.role == "sub" else self.port
        await self.loop.create_connection(lambda: self._protocol(c), self.host, port)

    worker.Worker._open = _open          # (the workers are forked: they inherit it)
    return cli.main(args)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return _load(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="a,b,mem",
                   help="a, b, mem, overload (default a,b,mem)")
    p.add_argument("--overload-duration", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant (median)")
    p.add_argument("--scenarios", default=None,
                   help="only scenarios whose title contains one of these (comma-separated), "
                        "e.g. 'flat out' or 'QoS 0 paced'")
    p.add_argument("--pairs", type=int, default=PAIRS,
                   help="(a, b) publisher/subscriber pairs, each on a topic of its own")
    p.add_argument("--paced-rate", type=float, default=None,
                   help="(a, b) msg/s per publisher in the paced scenarios (default 300 for a, "
                        "100 for b); e.g. --pairs 1000 --paced-rate 20: many topics, few "
                        "messages each, so a tick's messages do not batch by topic")
    p.add_argument("--idle-routes", type=int, default=100,
                   help="(a) filters held on the idle node, matching no publish (0: none)")
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--filters", type=int, default=10_000)
    p.add_argument("--json", default=None, help="write every run's figures here")
    p.add_argument("--from-json", default=None,
                   help="run nothing: print the tables of a --json file again")
    o = p.parse_args()
    if o.from_json:
        with open(o.from_json) as f:
            report(json.load(f))
        return 0
    parts = set(o.parts.split(","))
    results: dict = {"duration": o.duration, "repeats": o.repeats}
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        if "a" in parts:
            results["a"] = part_a(tmp, o)
        if "b" in parts:
            results["b"] = part_b(tmp, o)
        if "mem" in parts:
            results["mem"] = part_mem(tmp, o)
            results["mem"]["connections"] = o.connections
        if "overload" in parts:
            results["overload"] = part_overload(tmp, o)
    if o.json:
        with open(o.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results)
    return 0


def report(results: dict) -> None:
    if "a" in results:
        print("\n### (a) cluster layer off / on, no remote subscription matches\n")
        print(table_a(results["a"]))
    if "b" in results:
        print("\n### (b) cross-node p2p: publishers on a, subscribers on b\n")
        print(table_b(results["b"]))
        print("\n### (c) per-message costs of the bus\n")
        print(table_c(results["b"]))
    if "mem" in results:
        print("\n### memory\n")
        print(table_mem(results["mem"]))
    if "overload" in results:
        print("\n### cross-node QoS 1 overload\n")
        print(table_overload(results["overload"]))


if __name__ == "__main__":
    sys.exit(main())
