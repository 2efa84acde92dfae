"""The coordinator: plans the clients, starts the worker processes, walks them through the
phases (connect subscribers, connect publishers, publish, drain, stop) and adds up their
counters into one result dict.

It runs no event loop: it waits on the workers' pipes with multiprocessing.connection.wait and
prints a progress line to stderr every --interval seconds.
"""
from __future__ import annotations

import ipaddress
import math
import multiprocessing
import multiprocessing.connection
import os
import socket
import sys
import time
from collections import Counter
from typing import Any, Callable

from cymqtt.bench import stats
from cymqtt.bench.worker import worker_main

PORTS_PER_ADDRESS = 28_000      # ephemeral ports 32768-60999 on Linux: ~28,000 per source address
FD_RESERVE = 64                 # file descriptors a worker needs besides its sockets


class BenchError(Exception):
    """A usage or environment problem; the CLI prints it as one line."""


# -- topics -----------------------------------------------------------------------------------

def expand(pattern: str, index: int) -> str:
    return pattern.replace("%i", str(index))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (+ and #; $-topics are not matched by leading wildcards)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f = topic_filter.split("/")
    t = topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t):
            return False
        if part != "+" and part != t[i]:
            return False
    return len(f) == len(t)


def delivery_weights(pub_topics: list[str], sub_filters: list[str]) -> list[int]:
    """For each publisher topic, how many subscribers receive a message sent to it."""
    exact: Counter = Counter()
    wild: Counter = Counter()
    for f in sub_filters:
        if "+" in f or "#" in f:
            wild[f] += 1
        else:
            exact[f] += 1
    cache: dict[str, int] = {}
    out = []
    for t in pub_topics:
        w = cache.get(t)
        if w is None:
            w = exact.get(t, 0) + sum(n for f, n in wild.items() if topic_matches(f, t))
            cache[t] = w
        out.append(w)
    return out


# -- plan -------------------------------------------------------------------------------------

def _resolve(host: str) -> str:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BenchError(f"cannot resolve --host {host!r} ({exc})") from None
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return info[4][0]
    return infos[0][4][0]  # pragma: no cover


def _fd_limit() -> int:
    try:
        import resource
        return resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ImportError, ValueError, OSError):  # pragma: no cover
        return 1 << 20


def build_plan(o: dict) -> tuple[list[dict], dict]:
    """Per-worker plans and a summary. `o` holds the parsed options (see cli.py)."""
    procs = o["procs"]
    prefix = o["client_prefix"] or f"cyb{os.getpid() % 100000}"
    roles: dict[str, list[tuple[int, str, str | None, int]]] = {}
    n_subs, n_pubs, n_conns = o["subs"], o["pubs"], o["conns"]
    if n_subs:
        roles["sub"] = [(i, f"{prefix}-s{i}", expand(o["sub_topic"], i), 0)
                        for i in range(1, n_subs + 1)]
    if n_pubs:
        topics = [expand(o["topic"], i) for i in range(1, n_pubs + 1)]
        if n_subs:
            weights = delivery_weights(topics, [s[2] for s in roles["sub"]])
        else:
            weights = [0] * n_pubs
        roles["pub"] = [(i, f"{prefix}-p{i}", topics[i - 1], weights[i - 1])
                        for i in range(1, n_pubs + 1)]
    if n_conns:
        roles["conn"] = [(i, f"{prefix}-c{i}", None, 0) for i in range(1, n_conns + 1)]
    total = n_subs + n_pubs + n_conns

    # Source addresses: explicit, or automatic on loopback past ~28,000 connections.
    ifaddrs = [a.strip() for a in (o["ifaddrs"] or "").split(",") if a.strip()]
    per_addr = 0
    host_ip = _resolve(o["host"])
    per_source = o["conns_per_addr"] or PORTS_PER_ADDRESS
    if not ifaddrs and total > per_source:
        if ipaddress.ip_address(host_ip).is_loopback and ":" not in host_ip:
            n = math.ceil(total / per_source)
            ifaddrs = [f"127.0.0.{k + 1}" for k in range(n)]
            per_addr = math.ceil(total / n)
        else:
            print(f"cymqtt-bench: warning: {total} connections from one source address may "
                  "run out of ephemeral ports; give several with --ifaddrs", file=sys.stderr)

    # Deal clients to workers: index i -> worker (i-1) % procs, so pair i stays together.
    plans = []
    ordinal_base = {"sub": 0, "pub": n_subs, "conn": n_subs + n_pubs}
    for wid in range(procs):
        clients = {}
        for role, specs in roles.items():
            clients[role] = [(i, cid, topic, w, ordinal_base[role] + i - 1, 0)
                             for (i, cid, topic, w) in specs if (i - 1) % procs == wid]
        if clients.get("pub") and clients.get("sub"):
            # Deliveries to this worker's own subscribers: what its flow control can see.
            local = delivery_weights([s[2] for s in clients["pub"]],
                                     [s[2] for s in clients["sub"]])
            clients["pub"] = [s[:5] + (lw,) for s, lw in zip(clients["pub"], local)]
        plans.append({"opts": dict(o, host=host_ip), "clients": clients, "ifaddrs": ifaddrs,
                      "per_addr": per_addr, "total_pubs": n_pubs})
    most = max(sum(len(v) for v in p["clients"].values()) for p in plans)
    limit = _fd_limit()
    if most + FD_RESERVE > limit:
        need = math.ceil(total / max(1, limit - FD_RESERVE))
        raise BenchError(f"{most} connections per process exceed the open-file limit ({limit}); "
                         f"use --procs {need} or more")
    summary = {"clients": total, "ifaddrs": ifaddrs, "prefix": prefix,
               "expected_per_message": sum(s[3] for s in roles.get("pub", []))}
    return plans, summary


# -- coordinator ------------------------------------------------------------------------------

class Coordinator:
    def __init__(self, o: dict, mode: str, out=sys.stderr) -> None:
        self.o = o
        self.mode = mode                 # "conn", "pub", "sub", "pubsub"
        self.out = out
        self.quiet = o["quiet"]
        self.interval = o["interval"]
        self.workers: list = []
        self.chans: list = []
        self.alive: set = set()
        self.progress: dict[int, dict] = {}
        self.connected_info: dict[str, list[dict]] = {}
        self.pub_done: dict[int, dict] = {}
        self.finals: dict[int, dict] = {}
        self.fatal: list[str] = []
        self.notes: list[str] = []
        self.t_begin = time.monotonic()
        self._last_print = self.t_begin
        self._last_totals: dict[str, int] = {}
        self._phase = "start"
        self.interrupted = False

    # -- messages --

    def _handle(self, wid: int, msg: tuple) -> None:
        kind = msg[0]
        if kind == "progress":
            self.progress[wid] = msg[1]
        elif kind == "connected":
            self.connected_info.setdefault(msg[1], []).append(msg[2])
        elif kind == "pub_done":
            self.pub_done[wid] = msg[1]
        elif kind == "final":
            self.finals[wid] = msg[1]
        elif kind == "fatal":
            self.fatal.append(msg[1])

    def _poll(self, timeout: float) -> None:
        live = [self.chans[w] for w in self.alive]
        if not live:
            time.sleep(min(timeout, 0.05))
            return
        for chan in multiprocessing.connection.wait(live, timeout):
            wid = self.chans.index(chan)
            try:
                while chan.poll():
                    self._handle(wid, chan.recv())
            except (EOFError, OSError):
                self.alive.discard(wid)
                if wid not in self.finals:
                    code = self.workers[wid].exitcode
                    self.fatal.append(f"worker {wid} ended early (exit code {code})")

    def totals(self) -> dict[str, int]:
        t: Counter = Counter()
        for p in self.progress.values():
            t.update(p)
        return dict(t)

    def wait(self, done: Callable[[], bool], timeout: float | None,
             stall: float | None = None, stall_keys=("sent", "acked", "received")) -> str:
        """Pump messages until done() ('done'), timeout ('timeout'), no progress in the
        stall_keys counters for `stall` s ('stalled'), or every worker died ('dead')."""
        start = time.monotonic()
        last_change = start
        last_sig = None
        while True:
            if done():
                return "done"
            if not self.alive:
                return "dead"
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                return "timeout"
            if stall is not None:
                t = self.totals()
                sig = tuple(t.get(k, 0) for k in stall_keys)
                if sig != last_sig:
                    last_sig, last_change = sig, now
                elif now - last_change >= stall:
                    return "stalled"
            try:
                self._poll(0.05)
            except KeyboardInterrupt:
                self.interrupted = True
                return "interrupted"
            self._maybe_print()

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        dt = now - self._last_print
        if self.quiet or (dt < self.interval and not force) or dt <= 0:
            return
        t = self.totals()
        last = self._last_totals
        rate = {k: (t.get(k, 0) - last.get(k, 0)) / dt for k in ("sent", "received")}
        if self._phase.startswith("connect"):
            role = self._phase.split()[-1]
            want = {"sub": self.o["subs"], "pub": self.o["pubs"], "conn": self.o["conns"]}[role]
            conn_rate = (t.get("connected", 0) - last.get("connected", 0)) / dt
            line = (f"connecting {role}s: connected {t.get('connected', 0):,} "
                    f"({want:,} {role}s)  {conn_rate:,.0f} conn/s")
        else:
            line = (f"{self._phase}: connected {t.get('connected', 0):,}  "
                    f"sent {rate['sent']:,.0f}/s  recv {rate['received']:,.0f}/s  "
                    f"total sent {t.get('sent', 0):,} recv {t.get('received', 0):,}")
        line += f"  errors {t.get('errors', 0)}"
        print(f"[{now - self.t_begin:6.1f}s] {line}", file=self.out, flush=True)
        self._last_print = now
        self._last_totals = t

    def broadcast(self, msg: tuple) -> None:
        for wid in list(self.alive):
            try:
                self.chans[wid].send(msg)
            except (OSError, EOFError):
                self.alive.discard(wid)

    def say(self, text: str) -> None:
        print(f"cymqtt-bench: {text}", file=self.out, flush=True)

    # -- the run --

    def run(self) -> dict:
        o = self.o
        plans, summary = build_plan(o)
        self.summary = summary
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        for wid, plan in enumerate(plans):
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(target=worker_main, args=(wid, plan, child), daemon=True,
                            name=f"cymqtt-bench-{wid}")
            p.start()
            child.close()
            self.workers.append(p)
            self.chans.append(parent)
            self.alive.add(wid)
        try:
            self._phases()
        except KeyboardInterrupt:
            self.interrupted = True
            self.notes.append("interrupted")
        finally:
            self._finish()
        return self.result()

    def _connect(self, role: str) -> bool:
        self._phase = f"connect {role}"
        self.broadcast(("connect", role))
        n = {"sub": o_get(self.o, "subs"), "pub": o_get(self.o, "pubs"),
             "conn": o_get(self.o, "conns")}[role]
        outcome = self.wait(lambda: len(self.connected_info.get(role, [])) >= len(self.alive),
                            None, stall=self.o["connect_timeout"] + 10,
                            stall_keys=("connected", "errors"))
        if outcome != "done":
            self.notes.append(f"connecting {role}s: {outcome}")
            return False
        infos = self.connected_info[role]
        ok = sum(i["ok"] for i in infos)
        if not self.quiet:
            took = max(i["t_last"] for i in infos) - min(i["t_first"] for i in infos)
            self.say(f"{ok:,} of {n:,} {role}s connected in {took:.2f} s")
        return ok > 0 or n == 0

    def _phases(self) -> None:
        o = self.o
        mode = self.mode
        for role in ("sub", "pub", "conn"):
            if o[{"sub": "subs", "pub": "pubs", "conn": "conns"}[role]]:
                if not self._connect(role) or self.interrupted:
                    return
        if mode == "conn":
            self._phase = "hold"
            ok = sum(i["ok"] for i in self.connected_info.get("conn", []))
            self.say(f"all connected ({ok}), holding for {o['duration']} s")
            self.hold_start = time.monotonic()
            self.wait(lambda: False, o["duration"])
            self.hold_s = time.monotonic() - self.hold_start
            return
        if mode == "sub":
            self._phase = "run"
            self.say(f"subscribed, listening for {o['duration']} s")
            self.wait(lambda: False, o["duration"])
            return
        # pub / pubsub
        self._phase = "run"
        duration = o["duration"]
        t0 = time.monotonic() + 0.05
        self.t_start = t0
        self.broadcast(("start", t0, duration))
        limit = (duration + o["drain"] + 10) if duration else None
        outcome = self.wait(lambda: len(self.pub_done) >= len(self.alive), limit,
                            stall=o["drain"] if not duration else None)
        if outcome in ("stalled", "timeout"):
            self.notes.append(f"publishing {outcome}; stopped")
            self.broadcast(("stop_publishing",))
            self.wait(lambda: len(self.pub_done) >= len(self.alive), o["drain"] + 2)
        if mode == "pubsub" and not self.interrupted:
            self._phase = "drain"
            expected = sum(d["expected"] for d in self.pub_done.values())
            outcome = self.wait(lambda: self.totals().get("received", 0) >= expected,
                                o["drain"] * 3, stall=o["drain"], stall_keys=("received",))
            if outcome != "done" and expected:
                self.notes.append(f"drain {outcome} with "
                                  f"{expected - self.totals().get('received', 0):,} "
                                  "messages missing")

    def _finish(self) -> None:
        self._maybe_print(force=True)
        self._phase = "stop"
        self.broadcast(("stop",))
        self.wait(lambda: len(self.finals) >= len(self.workers) or not self.alive, 20)
        for p in self.workers:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)
        for c in self.chans:
            c.close()

    # -- result --

    def result(self) -> dict[str, Any]:
        o = self.o
        f = list(self.finals.values())

        def total(key: str) -> int:
            return sum(x[key] for x in f)

        connect_ok: Counter = Counter()
        errors_detail: Counter = Counter()
        hist = stats.new_histogram()
        max_lat = 0
        for x in f:
            connect_ok.update(x["connect_ok"])
            errors_detail.update(x["error_detail"])
            stats.merge(hist, x["hist"])
            max_lat = max(max_lat, x["max_latency_us"])
        for text in self.fatal:
            errors_detail[text] += 1
        connect_time = 0.0
        for role, infos in self.connected_info.items():
            connect_time += max(i["t_last"] for i in infos) - min(i["t_first"] for i in infos)
        connected = sum(connect_ok.values())
        sent, received = total("sent") if f else 0, total("received") if f else 0
        first_tx = min((x["first_tx_ns"] for x in f if x["first_tx_ns"]), default=0)
        last_tx = max((x["last_tx_ns"] for x in f), default=0)
        first_rx = min((x["first_rx_ns"] for x in f if x["first_rx_ns"]), default=0)
        last_rx = max((x["last_rx_ns"] for x in f), default=0)
        duration = 0.0
        if self.mode in ("pub", "pubsub"):
            if o["duration"] and not o["count"]:
                duration = float(o["duration"])
            elif first_tx and last_tx:
                duration = (last_tx - first_tx) / 1e9
            elif o["duration"]:
                duration = float(o["duration"])
        elif self.mode == "conn":
            duration = getattr(self, "hold_s", 0.0)
        elif self.mode == "sub":
            duration = (last_rx - first_rx) / 1e9 if first_rx else float(o["duration"])
        recv_window = 0.0
        if last_rx:
            start = first_tx if (first_tx and self.mode == "pubsub") else first_rx
            recv_window = (last_rx - start) / 1e9
        expected = total("expected") if (f and self.mode == "pubsub") else None
        lost = extra = None
        if expected is not None:
            lost = max(0, expected - received)
            extra = max(0, received - expected)
            if extra:
                self.notes.append(f"{extra:,} messages more than expected arrived (duplicates, "
                                  "or another publisher on the same topics)")
        errors = sum(errors_detail.values())
        scenario = o["name"] or self.default_name()
        res: dict[str, Any] = {
            "scenario": scenario,
            "command": self.mode,
            "broker": f"{o['host']}:{o['port']}",
            "transport": o.get("ws") or "tcp",          # tcp, ws or wss
            "version": o["version"],
            "qos": o["qos"] if self.mode != "conn" else None,
            "size": o["size"] if self.mode in ("pub", "pubsub") else None,
            "pubs": o["pubs"], "subs": o["subs"], "conns": o["conns"],
            "rate": o["rate"] if self.mode in ("pub", "pubsub") else None,
            "clients": self.summary["clients"],
            "connected": connected,
            "connected_at_end": total("connected_at_stop") if f else 0,
            "sent": sent,
            "acked": total("acked") if f else 0,
            "received": received,
            "expected": expected,
            "lost": lost,
            "extra": extra,
            "duplicates": total("duplicates") if f else 0,
            "duration_s": round(duration, 3),
            "sent_per_s": round(sent / duration, 1) if duration and sent else 0.0,
            "recv_per_s": round(received / recv_window, 1) if recv_window > 0 else 0.0,
            "latency_ms": stats.summary_ms(hist, max_lat),
            "connect_rate_per_s": round(connected / connect_time, 1) if connect_time > 0 else 0.0,
            "connect_time_s": round(connect_time, 3),
            "pings": total("pings") if f else 0,
            "pongs": total("pongs") if f else 0,
            "lost_connections": total("lost_connections") if f else 0,
            "errors": errors,
            "error_detail": dict(errors_detail.most_common(10)),
            "notes": self.notes,
            "procs": o["procs"],
            "bench_cpu_s": round(sum(x["cpu_s"] for x in f), 2),
            "bench_cpu_wait_s": round(sum(x.get("cpu_wait_s", 0.0) for x in f), 2),
            "interrupted": self.interrupted,
        }
        return res

    def default_name(self) -> str:
        o = self.o
        if self.mode != "pubsub":
            return self.mode
        if o["pairs"]:
            return "p2p"
        if o["pubs"] == 1 and o["subs"] > 1:
            return "fanout"
        if o["subs"] == 1 and o["pubs"] > 1:
            return "fanin"
        return "pubsub"


def o_get(o: dict, key: str) -> int:
    return o.get(key) or 0
