#!/usr/bin/env python3
"""Idle connections held by `cymqtt --workers N`: memory per connection and connect rate.

    flock -o /tmp/cpu.lock .venv/bin/python benchmarks/workers_idle.py       # ~1 minute
    .venv/bin/python benchmarks/workers_idle.py --run 2:4000 --no-mosquitto  # a quick look

Each run (`--run WORKERS:CONNECTIONS`, repeatable; default 3:45000 and 1:15000, the target of
issue 13: `--workers 3` holding 45,000 idle connections at <= 2 KB each) starts
`python -m cymqtt --workers N` on a free port (no persistence, no connection log lines), then
opens the connections from several load processes: the open-file limit is 20,000 per process
here, so at most --per-process connections each (default 11,250), each process from its own
loopback source address (127.0.RUN.X) so no source runs out of ephemeral ports. A connection is
a raw socket sending an MQTT 3.1.1 CONNECT (clean session, keep alive 0: never timed out) and
reading its CONNACK; at most --window handshakes are under way per process.

Measured: the sum over the workers of VmRSS (/proc/PID/status) growth, from after start-up to
after the last CONNACK (and a settle), divided by the connections; the connect rate (all
connections over the time from the first connect to the last CONNACK, all processes
together); that every connection got CONNACK 0 and is still open when measured; and each
worker's share (its open descriptors). mosquitto holding the run's smaller count is the peer,
measured the same way in the same run (--no-mosquitto skips it). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTED = re.compile(r"\d+ workers \(pids ([\d, ]+)\)")
LISTENING = re.compile(r"listening on [\w.:]+:(\d+)")
CONNACK_OK = b"\x20\x02\x00\x00"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)    # Linux
SETTLE = 2.0          # seconds between the last CONNACK and the measurement


def log(text: str) -> None:
    print(f"[workers_idle] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_frame(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


# -- the load side: one process per slice of the connections ------------------------------------

def load(port: int, source: str, prefix: str, n: int, window: int, go, conn) -> None:
    """Open `n` connections from `source`, at most `window` handshakes at once; report
    (connacks, {failure: count}, first connect, last CONNACK) on `conn`, then on request how many
    are still open, then close them all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the parent stops us
    sel = selectors.DefaultSelector()
    held: list[socket.socket] = []  # got CONNACK 0
    got: dict[int, bytes] = {}      # fd -> CONNACK bytes read so far, while handshaking
    failures: collections.Counter[str] = collections.Counter()     # why -> how many
    started = 0

    def fail(s: socket.socket, why: str) -> None:
        failures[why] += 1
        got.pop(s.fileno(), None)
        sel.unregister(s)
        s.close()

    go.wait()
    t0 = time.time()
    while len(held) + failures.total() < n:
        while started < n and len(got) < window:
            s = socket.socket()
            s.setblocking(False)
            # The source port is picked at connect() for the whole 4-tuple, not at bind()
            # among ports free for every destination (a search that grows with each one).
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
            got[s.fileno()] = b""
            sel.register(s, selectors.EVENT_WRITE, f"{prefix}-{started}")
            started += 1
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            except OSError as exc:
                fail(s, f"connect: {exc.strerror}")
        for key, events in sel.select(10.0):
            s = key.fileobj
            if events & selectors.EVENT_WRITE:
                if err := s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    fail(s, f"connect: {os.strerror(err)}")
                else:
                    s.send(connect_frame(key.data))
                    sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                data = got[s.fileno()] + s.recv(4 - len(got[s.fileno()]))
            except OSError as exc:
                fail(s, f"read: {exc.strerror}")
                continue
            if data and len(data) < 4 and CONNACK_OK.startswith(data):
                got[s.fileno()] = data
            elif data == CONNACK_OK:
                del got[s.fileno()]
                sel.unregister(s)
                held.append(s)
            else:
                fail(s, "closed before CONNACK" if not data else f"CONNACK {data!r}")
    t1 = time.time()
    conn.send((len(held), dict(failures), t0, t1))
    conn.recv()                     # "check": the broker has been measured
    check = selectors.DefaultSelector()
    for s in held:
        check.register(s, selectors.EVENT_READ)
    closed = len(check.select(0))   # an idle connection that reads anything was closed
    conn.send(len(held) - closed)
    conn.recv()                     # "close"
    for s in held:
        s.close()


# -- the broker side ----------------------------------------------------------------------------

@dataclass
class Result:
    broker: str
    workers: int
    connections: int
    connacks: int
    held: int
    seconds: float
    rss_before_kib: int
    rss_after_kib: int
    shares: list[int]

    @property
    def per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) * 1024 / self.connections


def start_cymqtt(workers: int, port: int, tmp: str) -> tuple[subprocess.Popen, list[int]]:
    conf = Path(tmp) / "cymqtt.toml"
    conf.write_text(f"port = {port}\nworkers = {workers}\nconnection_messages = false\n"
                    "sys_interval = 0\npersistence = false\n")
    errors = Path(tmp) / "cymqtt.log"
    with open(errors, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cymqtt", "-c", str(conf)], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=out)
    pattern = STARTED if workers > 1 else LISTENING
    deadline = time.monotonic() + 60
    while not (m := pattern.search(errors.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"cymqtt --workers {workers} did not start:\n"
                             f"{errors.read_text()}")
        time.sleep(0.1)
    return proc, [int(p) for p in m.group(1).split(", ")] if workers > 1 else [proc.pid]


def broker_warnings(tmp: str) -> list[str]:
    path = Path(tmp) / "cymqtt.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [ln for ln in lines if " WARNING " in ln or " ERROR " in ln]


def start_mosquitto(binary: str, port: int, tmp: str) -> tuple[subprocess.Popen, list[int]]:
    conf = Path(tmp) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "connection_messages false\nlog_dest none\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("mosquitto did not start") from None
            time.sleep(0.05)
    return proc, [proc.pid]


def measure(run: int, broker: str, workers: int, connections: int,
            o: argparse.Namespace) -> Result:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="workers-idle-") as tmp:
        if broker == "cymqtt":
            proc, pids = start_cymqtt(workers, port, tmp)
        else:
            proc, pids = start_mosquitto(o.mosquitto, port, tmp)
        try:
            time.sleep(1.0)         # start-up allocations done
            before = sum(rss_kib(p) for p in pids)
            fds_before = [open_fds(p) for p in pids]
            procs = -(-connections // o.per_process)
            go = mp.Event()
            pipes, loaders = [], []
            for k in range(procs):
                n = min(o.per_process, connections - k * o.per_process)
                parent, child = mp.Pipe()
                p = mp.Process(target=load, args=(port, f"127.0.{run}.{10 + k}", f"c{k}", n,
                                                  o.window, go, child))
                p.start()
                pipes.append(parent)
                loaders.append(p)
            go.set()
            reports = [c.recv() for c in pipes]
            connacks = sum(r[0] for r in reports)
            failures: collections.Counter[str] = collections.Counter()
            for r in reports:
                failures.update(r[1])
            seconds = max(r[3] for r in reports) - min(r[2] for r in reports)
            time.sleep(SETTLE)
            after = sum(rss_kib(p) for p in pids)
            shares = [open_fds(p) - b for p, b in zip(pids, fds_before)]
            for c in pipes:
                c.send("check")
            held = sum(c.recv() for c in pipes)
            for c in pipes:
                c.send("close")
            for p in loaders:
                p.join(30)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for line in broker_warnings(tmp):
                log(f"broker: {line}")
    r = Result(broker, workers, connections, connacks, held, seconds, before, after, shares)
    if failures:
        log(f"{broker} workers={workers}: failed: " + ", ".join(
            f"{n} {why}" for why, n in failures.most_common()))
    log(f"{broker} workers={workers}: {connacks}/{connections} CONNACKs, {held} held, "
        f"{connections / seconds:,.0f} conn/s, {r.per_connection:,.0f} B per connection")
    return r


def table(results: list[Result]) -> str:
    rows = ["| broker | processes | connections | CONNACK 0 | still open | connect rate | "
            "RSS before (sum) | RSS after (sum) | RSS growth per connection | per worker |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        name = f"cymqtt --workers {r.workers}" if r.broker == "cymqtt" else r.broker
        rows.append(f"| {name} | {len(r.shares)} | {r.connections:,} | {r.connacks:,} | "
                    f"{r.held:,} | {r.connections / r.seconds:,.0f}/s | "
                    f"{r.rss_before_kib / 1024:.1f} MiB | {r.rss_after_kib / 1024:.1f} MiB | "
                    f"{r.per_connection:,.0f} B | {', '.join(f'{s:,}' for s in r.shares)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", metavar="WORKERS:CONNECTIONS",
                   help="a run (repeatable; default 3:45000 and 1:15000)")
    p.add_argument("--per-process", type=int, default=11250,
                   help="connections per load process (the open-file limit is per process)")
    p.add_argument("--window", type=int, default=256, help="handshakes under way per process")
    p.add_argument("--no-mosquitto", action="store_true", help="skip the mosquitto peer")
    o = p.parse_args(argv)
    runs = [tuple(int(x) for x in r.split(":")) for r in (o.run or ["3:45000", "1:15000"])]
    o.mosquitto = None if o.no_mosquitto else (
        shutil.which("mosquitto") or next((b for b in ("/usr/sbin/mosquitto",)
                                           if os.access(b, os.X_OK)), None))
    mp.set_start_method("fork")
    # (each run connects from addresses of its own, 127.0.RUN.X: none of the ports an earlier
    # run left in TIME_WAIT is in the way)
    results = [measure(i + 1, "cymqtt", w, n, o) for i, (w, n) in enumerate(runs)]
    if o.mosquitto:
        results.append(measure(len(runs) + 1, "mosquitto", 1, min(n for _, n in runs), o))
    print(table(results))
    return 0 if all(r.connacks == r.held == r.connections for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
