"""A plain-Python model of cymqtt._fast.inflight: OutboundWindow and InboundQoS2.

Written to be obviously right, never fast: a dict of in-flight entries (its insertion order is
the send order), a list for the queue, a set for inbound ids. The compiled module must behave
exactly like this under any sequence of calls (tests/fast/test_inflight.py checks that).
"""

AWAIT_PUBACK = 4
AWAIT_PUBREC = 5
AWAIT_PUBCOMP = 7

MAX_PID = 65535


class Entry:
    def __init__(self, qos, msg):
        self.qos = qos
        self.state = AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC
        self.msg = msg
        self.sent = None            # time of the last (re)send; None = not stamped yet


class OutboundWindow:
    def __init__(self, max_inflight=32, max_queued=1000, queue_qos0=False):
        if not 1 <= max_inflight <= MAX_PID:
            raise ValueError("max_inflight must be 1..65535")
        if max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.queue_qos0 = queue_qos0
        self.receive_maximum = MAX_PID
        self.dropped = 0
        self.last_pid = 0
        self.inflight = {}          # pid -> Entry, in send order
        self.queue = []             # [(qos, msg)], oldest first

    @property
    def window(self):
        return min(self.max_inflight, self.receive_maximum)

    @property
    def inflight_count(self):
        return len(self.inflight)

    @property
    def queued_count(self):
        return len(self.queue)

    def __len__(self):
        return len(self.inflight) + len(self.queue)

    def _next_pid(self):
        pid = self.last_pid
        while True:
            pid = pid + 1 if pid < MAX_PID else 1
            if pid not in self.inflight:
                self.last_pid = pid
                return pid

    def _send(self, msg, qos):
        pid = self._next_pid()
        self.inflight[pid] = Entry(qos, msg)
        return pid

    def _queue(self, msg, qos):
        if len(self.queue) >= self.max_queued:
            if qos == 0:
                self.dropped += 1
                return -2
            for i, (q, _) in enumerate(self.queue):
                if q == 0:
                    del self.queue[i]
                    self.dropped += 1
                    break
            else:
                self.dropped += 1
                return -2
        self.queue.append((qos, msg))
        return -1

    def submit(self, msg, qos, online):
        if qos == 0:
            if online:
                return 0
            if not self.queue_qos0:
                self.dropped += 1
                return -2
            return self._queue(msg, 0)
        if qos not in (1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        if online and not self.queue and len(self.inflight) < self.window:
            return self._send(msg, qos)
        return self._queue(msg, qos)

    def _ack(self, pid, state):
        entry = self.inflight.get(pid)
        if entry is None or entry.state != state:
            return False
        del self.inflight[pid]
        return True

    def puback(self, pid):
        return self._ack(pid, AWAIT_PUBACK)

    def pubcomp(self, pid):
        return self._ack(pid, AWAIT_PUBCOMP)

    def pubrec(self, pid):
        entry = self.inflight.get(pid)
        if entry is None or entry.state != AWAIT_PUBREC:
            return False
        entry.state = AWAIT_PUBCOMP
        entry.sent = None
        return True

    def release(self):
        out = []
        while self.queue:
            qos, msg = self.queue[0]
            if qos == 0:
                out.append((0, 0, msg))
            elif len(self.inflight) < self.window:
                out.append((self._send(msg, qos), qos, msg))
            else:
                break
            del self.queue[0]
        return out

    def resend(self):
        out = []
        for pid, e in self.inflight.items():
            e.sent = None
            out.append((pid, e.qos, e.state, e.msg))
        return out

    def drain_queue(self):
        out, self.queue = self.queue, []
        return out

    def take_inflight(self):
        out = [(pid, e.qos, e.state, e.msg) for pid, e in self.inflight.items()]
        self.inflight = {}
        return out

    def mark_sent(self, pid, now):
        entry = self.inflight.get(pid)
        if entry is None:
            return False
        entry.sent = now
        return True

    def due(self, now, timeout):
        out = []
        for pid, e in self.inflight.items():
            if e.sent is None:
                e.sent = now
            elif e.sent + timeout <= now:
                e.sent = now
                out.append((pid, e.qos, e.state, e.msg))
        return out


class InboundQoS2:
    def __init__(self, receive_maximum=65535):
        if not 1 <= receive_maximum <= MAX_PID:
            raise ValueError("receive_maximum must be 1..65535")
        self.receive_maximum = receive_maximum
        self.pending = set()

    def __len__(self):
        return len(self.pending)

    def __contains__(self, pid):
        return pid in self.pending

    def receive(self, pid):
        if not 1 <= pid <= MAX_PID:
            raise ValueError("packet id must be 1..65535")
        if pid in self.pending:
            return 0
        if len(self.pending) >= self.receive_maximum:
            return -1
        self.pending.add(pid)
        return 1

    def release(self, pid):
        if pid in self.pending:
            self.pending.remove(pid)
            return True
        return False

    def clear(self):
        self.pending.clear()
