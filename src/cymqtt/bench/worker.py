"""A bench worker: one process, one uvloop loop, a share of the clients.

The coordinator (runner.py) drives every worker through a pipe with a few commands:

    ("connect", role)          connect this worker's clients of `role` ("sub", "pub", "conn");
                               answers ("connected", role, info)
    ("start", t0, duration)    publishers start at monotonic time t0 and stop after `duration`
                               seconds (None: when --count is reached); answers ("pub_done", info)
                               once every publisher has stopped and has no message in flight
    ("stop",)                  disconnect everything; answers ("final", counters) and exits

and the worker sends ("progress", counters) every PROGRESS_PERIOD seconds in between.

Pacing:
- QoS 0 at --rate 0 ("flood"): a pump callback runs once per loop iteration and gives every
  publisher whose transport is not paused one batch of frames; pause_writing/resume_writing
  (back-pressure from the broker) take a publisher out of and back into the pump.
- QoS 1/2 at --rate 0: each publisher keeps --inflight messages unacknowledged; every batch of
  acks read refills the window.
- --rate R > 0: a heap of publishers ordered by their next due time; one timer per due time,
  each due publisher sends what its schedule says it owes (capped by its window and by
  back-pressure). Publishers start staggered over the first 1/R seconds.
"""
from __future__ import annotations

import asyncio
import heapq
import os
import socket
import ssl
import time
from collections import Counter

from cymqtt.bench._wire import LatencyHistogram
from cymqtt.bench.client import BenchClient, PublishTemplate
from cymqtt.bench.websocket import WebSocketAdapter

PROGRESS_PERIOD = 0.2
TICK = 0.001                  # fixed-rate publishing: the shortest gap between two ticks
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_ERROR_KINDS = 20


def run_delay_s() -> float:
    """Seconds this process has spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    def __init__(self, wid: int, plan: dict, chan) -> None:
        self.wid = wid
        self.plan = plan
        self.chan = chan
        o = plan["opts"]
        self.host = o["host"]
        self.port = o["port"]
        self.version = o["version"]
        self.keepalive = o["keepalive"]
        self.username = o.get("username")
        self.password = None if o.get("password") is None else o["password"].encode()
        self.persistent_subs = bool(o.get("persistent_subs"))
        self.qos = o["qos"]
        self.size = o["size"]
        self.rate = float(o["rate"] or 0)
        self.count = o["count"] or 0
        self.inflight = o["inflight"]
        self.high_water = o["high_water"]
        self.sndbuf = o.get("sndbuf", 0)
        # MQTT over WebSocket (--ws, --wss): the URI of the handshake and the TLS context.
        self.ws_uri = ws_uri(o)
        self.tls = tls_context(o)
        self.batch_bytes = o["batch_bytes"]
        self.connect_rate = float(o["connect_rate"] or 0) / max(1, o["procs"])
        self.max_pending = max(1, o["max_pending"] // max(1, o["procs"]))
        self.connect_timeout = o["connect_timeout"]
        self.drain = o["drain"]
        self.max_ahead = o["max_ahead"] if (self.qos == 0 and not self.rate) else 0
        self.budget = 0                  # deliveries to local subscribers allowed in flight
        self.local_expected = 0
        self.throttled = False
        self._rr = 0
        self._throttle_handle: asyncio.TimerHandle | None = None
        self.total_pubs = plan["total_pubs"]
        self.loop: asyncio.AbstractEventLoop | None = None
        # counters, read by progress reports
        self.connected = 0
        self.connect_ok: Counter = Counter()
        self.connect_failed: Counter = Counter()
        self.connect_first: dict[str, float] = {}
        self.connect_last: dict[str, float] = {}
        self.sent = 0
        self.expected = 0
        self.acked = 0
        self.received = 0
        self.pings = 0
        self.pongs = 0
        self.lost_connections = 0
        self.errors: Counter = Counter()
        self.error_count = 0
        self.hist = LatencyHistogram()      # every subscriber's DeliveryReader adds to it
        self.first_rx_ns = 0
        self.last_rx_ns = 0
        self.first_tx_ns = 0
        self.last_tx_ns = 0
        # clients
        self.clients: list[BenchClient] = []
        self.pubs: list[BenchClient] = []
        self.subs: list[BenchClient] = []
        self._dirty: list[BenchClient] = []
        self._flush_handle: asyncio.Handle | None = None
        # publishing
        self.publishing = False
        self.finished_pubs = 0
        self._pub_done_sent = False
        self._pump_handle: asyncio.Handle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._stop_handle: asyncio.TimerHandle | None = None
        self._heap: list = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._cpu0 = time.process_time()
        self._wait0 = run_delay_s()

    # -- plumbing used by the clients ----------------------------------------------------------

    def error(self, text: str) -> None:
        self.error_count += 1
        if text in self.errors or len(self.errors) < MAX_ERROR_KINDS:
            self.errors[text] += 1
        else:
            self.errors["(other)"] += 1

    def mark_dirty(self, c: BenchClient) -> None:
        self._dirty.append(c)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        now = time.monotonic()
        for c in dirty:
            c.flush(now)

    def _send(self, msg) -> None:
        try:
            self.chan.send(msg)
        except (OSError, EOFError, BrokenPipeError):  # coordinator gone
            self._stopping = True

    # -- connecting ----------------------------------------------------------------------------

    def _source_address(self, ordinal: int) -> str | None:
        # `ordinal`: the connection's 0-based number among all the run's connections.
        addrs = self.plan["ifaddrs"]
        if not addrs:
            return None
        per = self.plan["per_addr"]
        if per:
            return addrs[min(len(addrs) - 1, ordinal // per)]
        return addrs[ordinal % len(addrs)]

    def _protocol(self, c: BenchClient) -> asyncio.Protocol:
        # The socket's asyncio protocol: the client itself, or its WebSocket adapter.
        return c if self.ws_uri is None else WebSocketAdapter(c, self.ws_uri)

    async def _open(self, c: BenchClient, source: str | None) -> None:
        loop = self.loop
        tls = {} if self.tls is None else {"ssl": self.tls, "server_hostname": self.host}
        if source is None:
            await loop.create_connection(lambda: self._protocol(c), self.host, self.port, **tls)
            return
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
            sock.bind((source, 0))
            await loop.sock_connect(sock, (self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.create_connection(lambda: self._protocol(c), sock=sock, **tls)
        except BaseException:
            sock.close()
            raise

    async def _connect_one(self, c: BenchClient, ordinal: int, topic_filter: str | None,
                           sem: asyncio.Semaphore) -> bool:
        loop = self.loop
        ok = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                c.waiter = loop.create_future()
                await self._open(c, self._source_address(ordinal))
                await c.waiter
                if topic_filter is not None:
                    c.waiter = loop.create_future()
                    c.send(c.subscribe_frame(topic_filter))
                    await c.waiter
            ok = True
            self.connect_last[c.role] = time.monotonic()
        except asyncio.CancelledError:
            c.abort()
            raise
        except Exception as exc:
            self.error(f"connect: {_describe(exc)}")
            c.closing = True
            c.finished = True
            c.abort()
        finally:
            c.waiter = None
            sem.release()
        return ok

    async def connect_role(self, role: str) -> None:
        specs = self.plan["clients"].get(role, [])
        sem = asyncio.Semaphore(self.max_pending)
        rate = self.connect_rate
        start = time.monotonic()
        self.connect_first[role] = start
        tasks = []
        made: list[BenchClient] = []
        for i, spec in enumerate(specs):
            if self._stopping:
                break
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sem.acquire()
            index, client_id, topic, weight, ordinal, local_weight = spec
            c = BenchClient(self, role, index, client_id, topic)
            topic_filter = None
            if role == "pub":
                c.tpl = PublishTemplate(topic, self.size, self.qos, self.version)
                c.filler = c.tpl.filler(index)
                c.weight = weight
                c.local_weight = local_weight
            elif role == "sub":
                topic_filter = topic
            made.append(c)
            self.clients.append(c)
            tasks.append(self.loop.create_task(self._connect_one(c, ordinal, topic_filter, sem)))
        results = await asyncio.gather(*tasks) if tasks else []
        good = [c for c, ok in zip(made, results) if ok]
        if role == "pub":
            self.pubs.extend(good)
        elif role == "sub":
            self.subs.extend(good)
        self.connect_ok[role] += len(good)
        self.connect_failed[role] += len(made) - len(good)
        self._send(("connected", role, {
            "ok": len(good), "failed": len(made) - len(good),
            "t_first": start, "t_last": self.connect_last.get(role, start)}))

    # -- publishing ----------------------------------------------------------------------------

    def start(self, t0: float, duration: float | None) -> None:
        delay = t0 - time.monotonic()
        self.loop.call_later(max(0.0, delay), self._begin, duration)

    def _begin(self, duration: float | None) -> None:
        self.publishing = True
        now = time.monotonic()
        self.first_tx_ns = time.monotonic_ns()
        if duration:
            self._stop_handle = self.loop.call_later(duration, self.stop_publishing)
        pubs = self.pubs
        if not pubs:
            self._report_pub_done()
            return
        if self.rate:
            heap = self._heap
            for k, c in enumerate(pubs):
                c.t0 = now + ((c.index - 1) / max(1, self.total_pubs)) / self.rate
                c.next_due = c.t0
                heap.append((c.t0, k, c))
            heapq.heapify(heap)
            self._tick()
        elif self.qos == 0:
            if self.max_ahead:
                self.budget = self.max_ahead * sum(c.local_weight for c in pubs)
            self._pump()
        else:
            now_ns = time.monotonic_ns()
            for c in pubs:
                self._emit(c, min(c.window, c.count or c.window), now_ns)
            self.flush()

    def _emit(self, c: BenchClient, n: int, now_ns: int) -> None:
        if n <= 0:
            return
        c.send(c.make_frames(n, now_ns))
        self.sent += n
        self.expected += n * c.weight
        self.local_expected += n * c.local_weight
        self.last_tx_ns = now_ns
        if c.count and c.sent >= c.count:
            self.maybe_finish(c)

    def _pump(self) -> None:
        # QoS 0 flood: one batch per publisher that is not paused, once per loop iteration.
        self._pump_handle = None
        if not self.publishing:
            return
        now_ns = time.monotonic_ns()
        budget = self.budget
        pubs = self.pubs
        if budget and len(pubs) > 1:       # rotate, so a short budget is shared fairly
            k = self._rr = (self._rr + 1) % len(pubs)
            pubs = pubs[k:] + pubs[:k]
        for c in pubs:
            if c.finished or c.paused or c.transport is None:
                continue
            n = max(1, self.batch_bytes // c.tpl.length)
            if c.count:
                n = min(n, c.count - c.sent)
            if budget and c.local_weight:
                # End-to-end flow control: stay at most --max-ahead messages per publisher
                # ahead of what this process's subscribers have received.
                room = (budget - (self.local_expected - self.received)) // c.local_weight
                if room <= 0:
                    self.throttled = True
                    break
                n = min(n, room)
            self._emit(c, n, now_ns)
        self.flush()
        if self.throttled:
            if self._throttle_handle is None:
                self._throttle_handle = self.loop.call_later(1.0, self._throttle_check,
                                                             self.received)
            return
        for c in self.pubs:
            if not (c.finished or c.paused or c.transport is None):
                self._pump_handle = self.loop.call_soon(self._pump)
                break

    def _tick(self) -> None:
        # Fixed rate: every publisher whose next message is due sends what it owes.
        self._tick_handle = None
        if not self.publishing:
            return
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        heap = self._heap
        rate = self.rate
        cap = max(1, self.batch_bytes // max(1, self.size))
        while heap and heap[0][0] <= now:
            _, k, c = heapq.heappop(heap)
            if c.finished or c.transport is None:
                continue
            n = int((now - c.t0) * rate) + 1 - c.sent
            if c.count:
                n = min(n, c.count - c.sent)
            if self.qos:
                n = min(n, c.window - len(c.inflight or ()))
            if c.paused:
                n = 0
            self._emit(c, min(n, cap), now_ns)
            if not c.finished and not (c.count and c.sent >= c.count):
                c.next_due = max(c.t0 + c.sent / rate, now + 0.001)
                heapq.heappush(heap, (c.next_due, k, c))
        self.flush()
        if heap:
            # At least 1 ms between ticks: the loop's timers have that resolution anyway, and
            # a due time every 0.1 ms (1,000 publishers at 10 msg/s) would otherwise make the
            # loop spin.
            self._tick_handle = self.loop.call_later(max(TICK, heap[0][0] - now), self._tick)

    def refill(self, c: BenchClient) -> None:
        """After acks (QoS 1/2): send what the window (and the rate) allows."""
        if not self.publishing or c.finished or c.transport is None:
            return
        if c.count and c.sent >= c.count:
            return
        inflight = c.inflight
        n = c.window - (len(inflight) if inflight else 0)
        if n <= 0:
            return
        if self.rate:
            n = min(n, int((time.monotonic() - c.t0) * self.rate) + 1 - c.sent)
        if c.count:
            n = min(n, c.count - c.sent)
        self._emit(c, n, time.monotonic_ns())

    def _throttle_check(self, received_before: int) -> None:
        # Nothing arrived for 1 s while throttled: what is missing was dropped (QoS 0 may
        # be); write it off rather than wait for it forever.
        self._throttle_handle = None
        if not self.throttled or not self.publishing:
            return
        if self.received == received_before:
            self.local_expected = self.received
            self.unthrottle()
        else:
            self._throttle_handle = self.loop.call_later(1.0, self._throttle_check,
                                                         self.received)

    def unthrottle(self) -> None:
        # Called by subscribers while the pump waits for deliveries to catch up.
        if self.local_expected - self.received <= self.budget * 3 // 4:
            self.throttled = False
            if self.publishing and self._pump_handle is None:
                self._pump_handle = self.loop.call_soon(self._pump)

    def resumed(self, c: BenchClient) -> None:
        if not self.publishing:
            return
        if self.qos:
            self.refill(c)
        elif not self.rate and self._pump_handle is None:
            self._pump_handle = self.loop.call_soon(self._pump)

    def maybe_finish(self, c: BenchClient) -> None:
        if c.finished:
            return
        if self.publishing and not (c.count and c.sent >= c.count):
            return
        if c.inflight:
            return
        c.finished = True
        self.publisher_finished(c)

    def publisher_finished(self, c: BenchClient) -> None:
        self.finished_pubs += 1
        if self.finished_pubs >= len(self.pubs):
            self._report_pub_done()

    def stop_publishing(self) -> None:
        if not self.publishing:
            return
        self.publishing = False
        for h in (self._pump_handle, self._tick_handle, self._stop_handle):
            if h is not None:
                h.cancel()
        self._pump_handle = self._tick_handle = self._stop_handle = None
        self.flush()
        for c in self.pubs:
            self.maybe_finish(c)
        if not self._pub_done_sent:
            # QoS 1/2: wait (bounded) for the last acks.
            self.loop.call_later(self.drain, self._give_up_on_acks)

    def _give_up_on_acks(self) -> None:
        if self._pub_done_sent:
            return
        unacked = sum(len(c.inflight or ()) for c in self.pubs if not c.finished)
        if unacked:
            self.error(f"messages never acknowledged ({unacked})")
        for c in self.pubs:
            if not c.finished:
                c.finished = True
                self.finished_pubs += 1
        self._report_pub_done()

    def _report_pub_done(self) -> None:
        if self._pub_done_sent:
            return
        self._pub_done_sent = True
        if self.publishing:          # every publisher reached --count
            self.publishing = False
            for h in (self._pump_handle, self._tick_handle, self._stop_handle):
                if h is not None:
                    h.cancel()
        self._send(("pub_done", {"sent": self.sent, "expected": self.expected,
                                 "first_tx_ns": self.first_tx_ns,
                                 "last_tx_ns": self.last_tx_ns}))

    # -- periodic ------------------------------------------------------------------------------

    def counters(self) -> dict:
        return {"connected": self.connected, "sent": self.sent, "acked": self.acked,
                "received": self.received, "expected": self.expected,
                "errors": self.error_count}

    async def _progress_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PROGRESS_PERIOD)
            self._send(("progress", self.counters()))

    async def _keepalive_forever(self) -> None:
        ka = self.keepalive
        if not ka:
            return
        margin = max(0.5, ka * 0.1)
        while not self._stopping:
            await asyncio.sleep(min(1.0, ka / 4))
            now = time.monotonic()
            for c in self.clients:
                if c.connected and not c.closing and now - c.last_tx >= ka - margin:
                    c.ping(now)
            self.flush()

    # -- stopping ------------------------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping = True
        self.publishing = False
        for h in (self._pump_handle, self._tick_handle, self._stop_handle):
            if h is not None:
                h.cancel()
        for t in self._tasks:
            t.cancel()
        self.flush()
        connected_at_stop = self.connected
        # DISCONNECT, then let the broker close first: the TIME_WAIT socket then stays on its
        # side instead of holding one of our ephemeral ports for a minute (the next run's
        # connect() would have to search past it).
        for c in self.clients:
            c.disconnect()
        deadline = time.monotonic() + 2.0
        while any(c.transport is not None for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for c in self.clients:
            if c.transport is not None:
                c.transport.close()
        deadline = time.monotonic() + 1.0
        while any(c.transport is not None for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for c in self.clients:
            if c.transport is not None:
                c.abort()
        await asyncio.sleep(0)
        self._send(("final", {
            "wid": self.wid,
            "connect_ok": dict(self.connect_ok), "connect_failed": dict(self.connect_failed),
            "connected_at_stop": connected_at_stop,
            "sent": self.sent, "expected": self.expected, "acked": self.acked,
            "received": self.received,
            "duplicates": sum(c.reader.duplicates for c in self.clients),
            "pings": self.pings, "pongs": self.pongs,
            "lost_connections": self.lost_connections,
            "errors": self.error_count, "error_detail": dict(self.errors),
            "hist": self.hist.to_list(), "max_latency_us": self.hist.max_us,
            "first_rx_ns": self.first_rx_ns, "last_rx_ns": self.last_rx_ns,
            "first_tx_ns": self.first_tx_ns, "last_tx_ns": self.last_tx_ns,
            "cpu_s": time.process_time() - self._cpu0,
            "cpu_wait_s": run_delay_s() - self._wait0,
        }))

    # -- main ----------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        commands: asyncio.Queue = asyncio.Queue()
        fd = self.chan.fileno()

        def readable() -> None:
            try:
                while self.chan.poll():
                    commands.put_nowait(self.chan.recv())
            except (EOFError, OSError):
                loop.remove_reader(fd)
                commands.put_nowait(("stop",))

        loop.add_reader(fd, readable)
        self._tasks.append(loop.create_task(self._progress_forever()))
        self._tasks.append(loop.create_task(self._keepalive_forever()))
        connecting: list[asyncio.Task] = []
        try:
            while True:
                cmd = await commands.get()
                kind = cmd[0]
                if kind == "connect":
                    connecting.append(loop.create_task(self.connect_role(cmd[1])))
                elif kind == "start":
                    self.start(cmd[1], cmd[2])
                elif kind == "stop_publishing":
                    self.stop_publishing()
                elif kind == "stop":
                    for t in connecting:
                        t.cancel()
                    for t in connecting:
                        try:
                            await t
                        except BaseException:
                            pass
                    await self.stop()
                    break
        finally:
            try:
                loop.remove_reader(fd)
            except Exception:  # pragma: no cover
                pass


def ws_uri(o: dict) -> str | None:
    """The WebSocket URI the clients' handshake names (None: MQTT over plain TCP)."""
    scheme = o.get("ws")
    if scheme is None:
        return None
    host = f"[{o['host']}]" if ":" in o["host"] else o["host"]
    return f"{scheme}://{host}:{o['port']}{o.get('ws_path') or '/mqtt'}"


def tls_context(o: dict) -> ssl.SSLContext | None:
    """The clients' TLS context for --wss: the broker's certificate checked against --cafile,
    or not checked at all without one (a benchmark, like mosquitto_pub --insecure)."""
    if o.get("ws") != "wss":
        return None
    if o.get("cafile"):
        ctx = ssl.create_default_context(cafile=o["cafile"])
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def worker_main(wid: int, plan: dict, chan) -> None:
    """Process entry point."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the coordinator handles Ctrl-C
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover
        pass
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(Worker(wid, plan, chan).run())
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # report, then die: the coordinator prints it
        try:
            chan.send(("fatal", f"worker {wid} (pid {os.getpid()}): {_describe(exc)}"))
        except Exception:
            pass
        raise
    finally:
        chan.close()
