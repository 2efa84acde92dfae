"""`cymqtt-bench retained`: store many retained messages, then time how fast new subscribers
get them.

    cymqtt-bench retained --count 100000 --sub 'ret/#:0' --sub 'ret/#:1' --sub 'ret/7/+/x:0'

Phase 1 (unless --no-store): one connection publishes --count retained messages at
--store-qos (default 1, so that a QoS 1 subscription gets them at QoS 1: a retained message is
delivered at the lower of its QoS and the subscription's), one topic each, laid out as
<prefix>/<a>/<b>/x with a = i // --width and b = i % --width (so with the default width
1,000, `ret/7/+/x` matches 1,000 of 100,000 topics). QoS 1/2 go in batches of 1,000 with at
most two batches unacknowledged; the phase ends with a PINGREQ, whose PINGRESP comes after the
broker has handled every PUBLISH before it.

Phase 2, for each --sub FILTER:QOS in turn: a new clean connection subscribes and counts the
PUBLISH frames that arrive (acknowledging QoS 1/2 through the compiled DeliveryReader) until it
has as many as the stored topics the filter matches, or until nothing has arrived for
--timeout seconds; then it listens --settle seconds more, so that extra messages are counted
too. "seconds" runs from sending SUBSCRIBE to the expected-th message (or the last one).

A summary table and then one JSON line go to stdout, like the other commands.
"""
from __future__ import annotations

import asyncio
import os
import time

from cymqtt._fast.codec import (
    Connect, FrameParser, Subscribe, encode, encode_ack, encode_publish,
)
from cymqtt.bench._wire import DeliveryReader
from cymqtt.bench.runner import BenchError, topic_matches

PINGREQ = b"\xc0\x00"
DISCONNECT_FRAME = b"\xe0\x00"
CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, PINGRESP = 2, 4, 5, 6, 7, 9, 13
STORE_BATCH = 1000              # PUBLISH frames per write while storing


def topics(prefix: str, count: int, width: int) -> list[str]:
    return [f"{prefix}/{i // width}/{i % width}/x" for i in range(count)]


def parse_sub(text: str) -> tuple[str, int]:
    """'ret/#:1' -> ('ret/#', 1); no ':QOS' means QoS 0."""
    filt, sep, qos = text.rpartition(":")
    if not sep or qos not in ("0", "1", "2"):
        return text, 0
    return filt, int(qos)


class RetainedClient(asyncio.Protocol):
    """One connection: a Python parser for the handshake, the compiled reader for PUBLISH."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.reader = DeliveryReader(version, None)
        self.parser = FrameParser(version)
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[int, asyncio.Future] = {}    # packet type -> future
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.received = 0
        self.acked = 0                                  # PUBACK/PUBCOMP for our publishes
        self.first_ns = 0
        self.last_ns = 0
        self.target = 0
        self.target_ns = 0
        self.progress = asyncio.Event()
        self.error: str | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        got = self.reader.feed(data, now)
        if got:
            self.received += got
            self.last_ns = now
            if not self.first_ns:
                self.first_ns = now
            if self.target and not self.target_ns and self.received >= self.target:
                self.target_ns = now
            self.progress.set()
        acks = self.reader.take_acks()
        if acks is not None:
            self.transport.write(acks)
        others = self.reader.take_others()
        if others is not None:
            for p in self.parser.feed(others):
                t = p.type
                if t == PUBACK or t == PUBCOMP:
                    self.acked += 1
                    self.progress.set()
                elif t == PUBREC:
                    self.transport.write(encode_ack(PUBREL, p.packet_id, 0, None,
                                                    self.version))
                fut = self.waiters.pop(t, None)
                if fut is not None and not fut.done():
                    fut.set_result(p)
        err = self.reader.error or self.parser.error
        if err is not None:
            self.error = f"bad frame from the broker: {err}"
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(exc)
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed by the broker"))
        self.progress.set()

    def expect(self, ptype: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[ptype] = fut
        return fut

    async def close(self) -> None:
        if self.transport is None:
            return
        self.transport.write(DISCONNECT_FRAME)
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), 2.0)
        except (TimeoutError, asyncio.TimeoutError):
            if self.transport is not None:
                self.transport.abort()


async def _connect(o: dict, client_id: str) -> RetainedClient:
    loop = asyncio.get_running_loop()
    c = RetainedClient(o["version"])
    async with asyncio.timeout(o["connect_timeout"]):
        await loop.create_connection(lambda: c, o["host"], o["port"])
        ack = c.expect(CONNACK)
        c.transport.write(encode(Connect(client_id, version=o["version"], clean_start=True,
                                         keepalive=0), o["version"]))
        p = await ack
    if p.reason_code:
        raise ConnectionError(f"CONNACK reason 0x{p.reason_code:02X}")
    return c


async def _store(o: dict, names: list[str], prefix: str) -> dict:
    c = await _connect(o, f"{prefix}-store")
    payload = bytes(o["size"])
    qos, v = o["store_qos"], o["version"]
    t0 = time.monotonic()
    try:
        for k in range(0, len(names), STORE_BATCH):
            if qos:
                # at most two batches unacknowledged; ids 1..60,000 never collide in flight
                while c.acked < k - STORE_BATCH:
                    c.progress.clear()
                    await asyncio.wait_for(c.progress.wait(), o["timeout"])
                    if c.transport is None:
                        raise ConnectionError("connection closed by the broker")
            c.transport.write(b"".join(
                encode_publish(t, payload, qos, True, False, (i % 60000) + 1 if qos else 0,
                               None, v)
                for i, t in enumerate(names[k:k + STORE_BATCH], k)))
            if c.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.001)      # let the broker catch up: don't hold 100 MB
        while qos and c.acked < len(names) and c.transport is not None:
            c.progress.clear()
            await asyncio.wait_for(c.progress.wait(), o["timeout"])
        pong = c.expect(PINGRESP)
        c.transport.write(PINGREQ)
        await asyncio.wait_for(pong, o["timeout"] + len(names) / 10_000)
    finally:
        await c.close()
    return {"stored": len(names), "store_qos": qos,
            "store_s": round(time.monotonic() - t0, 3)}


async def _subscribe(o: dict, filt: str, qos: int, expected: int, client_id: str) -> dict:
    rec = {"filter": filt, "qos": qos, "expected": expected, "received": 0, "retained": 0,
           "duplicates": 0, "seconds": None, "per_s": None, "complete": False, "error": None}
    try:
        c = await _connect(o, client_id)
    except (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError) as exc:
        rec["error"] = f"connect: {exc or type(exc).__name__}"
        return rec
    c.target = expected
    suback = c.expect(SUBACK)
    t0 = time.monotonic_ns()
    c.transport.write(encode(Subscribe(1, [(filt, qos)]), o["version"]))
    try:
        p = await asyncio.wait_for(suback, o["timeout"])
        refused = [rc for rc in p.reason_codes if rc >= 0x80]
        if refused:
            rec["error"] = f"SUBACK refused (0x{refused[0]:02X})"
        # Until the expected count, or --timeout without progress; then --settle more.
        while c.transport is not None and rec["error"] is None:
            if expected and c.received >= expected:
                break
            c.progress.clear()
            try:
                await asyncio.wait_for(c.progress.wait(), o["timeout"])
            except (TimeoutError, asyncio.TimeoutError):
                break
        seen = -1
        while c.transport is not None and seen != c.received:
            seen = c.received
            await asyncio.sleep(o["settle"])
    except (ConnectionError, TimeoutError, asyncio.TimeoutError) as exc:
        rec["error"] = str(exc) or type(exc).__name__
    end_ns = c.target_ns or c.last_ns
    rec.update(received=c.received, retained=c.reader.retained,
               duplicates=c.reader.duplicates, complete=c.received == expected)
    if end_ns:
        rec["seconds"] = round((end_ns - t0) / 1e9, 6)
        rec["per_s"] = round(min(c.received, expected or c.received) / rec["seconds"], 1) \
            if rec["seconds"] > 0 else None
    if c.error and not rec["error"]:
        rec["error"] = c.error
    if c.transport is None and not rec["error"]:
        rec["error"] = "connection closed by the broker"
    await c.close()
    return rec


async def run_retained(o: dict) -> dict:
    prefix = o["client_prefix"] or f"cyb{os.getpid() % 100000}"
    names = topics(o["prefix"], o["count"], o["width"])
    res: dict = {"scenario": o["name"] or "retained", "command": "retained",
                 "broker": f"{o['host']}:{o['port']}", "version": o["version"],
                 "size": o["size"], "count": o["count"], "width": o["width"],
                 "stored": 0, "store_s": None, "subscriptions": [], "errors": 0, "notes": []}
    if o["store"]:
        try:
            res.update(await _store(o, names, prefix))
        except (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError) as exc:
            res["errors"] += 1
            res["notes"].append(f"storing failed: {exc or type(exc).__name__}")
            return res
    for k, (filt, qos) in enumerate(o["retained_subs"]):
        expected = sum(1 for t in names if topic_matches(filt, t))
        rec = await _subscribe(o, filt, qos, expected, f"{prefix}-r{k + 1}")
        res["errors"] += rec["error"] is not None
        res["subscriptions"].append(rec)
    return res


def run(o: dict) -> dict:
    if o["count"] < 1 or o["width"] < 1:
        raise BenchError("--count and --width must be at least 1")
    try:
        import uvloop
        return uvloop.run(run_retained(o))
    except ImportError:  # pragma: no cover
        return asyncio.run(run_retained(o))


def summary_table(r: dict) -> str:
    lines = [f"cymqtt-bench {r['scenario']} (retained) against {r['broker']}, "
             f"{r['count']:,} topics, {r['size']} B payload"]
    if r["store_s"] is not None:
        lines.append(f"  stored                 {r['stored']:,} in {r['store_s']:.2f} s")
    for s in r["subscriptions"]:
        took = "-" if s["seconds"] is None else f"{s['seconds']:.3f} s"
        line = (f"  {s['filter']} QoS {s['qos']:<3} {s['received']:,} of {s['expected']:,} "
                f"in {took}")
        if s["per_s"]:
            line += f" ({s['per_s']:,.0f}/s)"
        if s["retained"] != s["received"]:
            line += f", {s['retained']:,} with RETAIN set"
        if s["error"]:
            line += f"; {s['error']}"
        lines.append(line)
    for note in r["notes"]:
        lines.append(f"  note                   {note}")
    return "\n".join(lines)
