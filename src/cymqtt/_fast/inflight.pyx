# cython: language_level=3
"""Per-session QoS bookkeeping: OutboundWindow and InboundQoS2.

Sans-I/O. The session layer reports what was routed to a session and what its client acked; these
objects answer with what to send: packet ids, the messages to (re)send and in which state. There
are no sockets, loops or timers here; time comes in as a ``now`` argument.

Memory: an idle window holds no storage. Its in-flight slab is allocated on the first QoS 1/2
message (8 entries of 32 bytes, doubled on demand up to ``max_inflight``) and its queue ring on
the first queued message (8 x 16 bytes, doubled up to ``max_queued``); both are freed again when
they empty after growing past the default window (32). The messages themselves are referenced,
never copied. Because they are held in C arrays the cyclic GC does not see them: a message must
not refer back to its window (MQTT messages are plain records, so none does).
"""
cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.string cimport memcpy

cdef enum:
    MAX_PID = 65535
    PM_MIN = 16          # buckets in a new PidMap
    PM_KEEP = 64         # an emptied PidMap up to this many buckets keeps its table
    FL_MIN = 8           # in-flight slab entries allocated first
    FL_KEEP = 32         # an emptied slab up to this size is kept (the default window)
    Q_MIN = 8            # queue ring slots allocated first
    Q_KEEP = 32          # an emptied ring up to this size is kept

__all__ = ("OutboundWindow", "InboundQoS2", "InflightState",
           "AWAIT_PUBACK", "AWAIT_PUBREC", "AWAIT_PUBCOMP")

# The states as module constants too (IntEnum members; resend() returns the plain ints).
globals().update(InflightState.__members__)


# ---------------------------------------------------------------------------------------------
# PidMap: packet id -> 16-bit value. Open addressing with linear probing and backward-shift
# deletion (no tombstones), load factor <= 1/2. Ids are allocated in sequence, so `pid & mask`
# spreads them over consecutive buckets: lookups almost always touch one or two words.

cdef inline int pm_find(PidMap *m, uint32_t pid) noexcept:
    """The bucket holding `pid`, or -1."""
    cdef uint32_t i, b
    if m.count == 0:
        return -1
    i = pid & m.mask
    while True:
        b = m.table[i]
        if b == 0:
            return -1
        if (b >> 16) == pid:
            return <int>i
        i = (i + 1) & m.mask


cdef int pm_grow(PidMap *m) except -1:
    cdef uint32_t n = (m.mask + 1) * 2 if m.table != NULL else PM_MIN
    cdef uint32_t *old = m.table
    cdef uint32_t old_n = m.mask + 1 if old != NULL else 0
    cdef uint32_t *t = <uint32_t *>PyMem_Calloc(n, sizeof(uint32_t))
    cdef uint32_t j, i, b
    if t == NULL:
        raise MemoryError()
    m.table = t
    m.mask = n - 1
    for j in range(old_n):
        b = old[j]
        if b:
            i = (b >> 16) & m.mask
            while t[i]:
                i = (i + 1) & m.mask
            t[i] = b
    PyMem_Free(old)
    return 0


cdef inline int pm_put(PidMap *m, uint32_t pid, uint32_t value) except -1:
    """Add `pid` -> `value`; `pid` must be absent."""
    cdef uint32_t i
    if (m.count + 1) * 2 > m.mask + 1:      # also true while the table is NULL (mask 0)
        pm_grow(m)
    i = pid & m.mask
    while m.table[i]:
        i = (i + 1) & m.mask
    m.table[i] = (pid << 16) | value
    m.count += 1
    return 0


cdef inline void pm_remove_at(PidMap *m, uint32_t i) noexcept:
    """Empty bucket `i`, moving later members of its probe run back into the hole."""
    cdef uint32_t j = i, k, b
    while True:
        j = (j + 1) & m.mask
        b = m.table[j]
        if b == 0:
            break
        k = (b >> 16) & m.mask
        # b stays put when its home bucket k lies cyclically in (i, j].
        if i < j:
            if i < k <= j:
                continue
        elif i < k or k <= j:
            continue
        m.table[i] = b
        i = j
    m.table[i] = 0
    m.count -= 1


cdef inline void pm_free(PidMap *m) noexcept:
    PyMem_Free(m.table)
    m.table = NULL
    m.mask = 0
    m.count = 0


cdef inline int32_t pm_value(PidMap *m, int bucket) noexcept:
    return m.table[bucket] & 0xFFFF


cdef inline int _check_pid_range(int value, str what) except -1:
    if value < 1 or value > MAX_PID:
        raise ValueError(f"{what} must be 1..65535, got {value}")
    return 0


# ---------------------------------------------------------------------------------------------

@cython.final
cdef class OutboundWindow:
    """The outbound QoS state of one session: what the broker has sent the client and awaits an
    acknowledgement for (the window), and what waits for room (the queue).

    :param max_inflight: messages in flight at most (1..65535); the client's MQTT 5 receive
        maximum narrows it (see ``receive_maximum``).
    :param max_queued: messages queued at most; beyond that the drop policy applies (QoS 0 first).
    :param queue_qos0: queue QoS 0 messages while the client is offline instead of dropping them.

    What to call:

    - For each message routed to the session, ``submit(msg, qos, online)``; send what it says.
    - On PUBACK ``puback(pid)``, on PUBREC ``pubrec(pid)`` (then send PUBREL), on PUBCOMP
      ``pubcomp(pid)``. A False answer means the id is unknown or in the wrong state (MQTT 5:
      reason 0x92). After a True ``puback``/``pubcomp`` call ``release()`` and send what it returns.
    - On reconnect (session present), send what ``resend()`` returns, then what ``release()``
      returns.

    Packet ids go round-robin over 1..65535 and never repeat an id still in flight. Messages go
    out in the order they were submitted: while anything is queued, new QoS 1/2 messages queue
    behind it. QoS 0 never enters the window; while online it is always sent at once.
    """

    def __cinit__(self):
        self._fl_head = -1
        self._fl_tail = -1
        self._fl_free = -1

    def __init__(self, int max_inflight=32, int max_queued=1000, bint queue_qos0=False):
        _check_pid_range(max_inflight, "max_inflight")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.queue_qos0 = queue_qos0
        self._receive_maximum = MAX_PID
        self._window = max_inflight

    def __dealloc__(self):
        self._free_flights()
        self._free_queue()

    def __repr__(self):
        return (f"<OutboundWindow inflight={self._fl_count}/{self._window} "
                f"queued={self._q_count}/{self.max_queued} dropped={self.dropped}>")

    def __len__(self):
        return self._fl_count + self._q_count

    @property
    def inflight_count(self) -> int:
        """Messages in flight (sent, awaiting PUBACK, PUBREC or PUBCOMP)."""
        return self._fl_count

    @property
    def queued_count(self) -> int:
        """Messages waiting in the queue."""
        return self._q_count

    @property
    def window(self) -> int:
        """The effective window: min(max_inflight, receive_maximum)."""
        return self._window

    @property
    def receive_maximum(self) -> int:
        """The client's receive maximum (MQTT 5 CONNECT property 0x21; 65535 when absent).

        Set it on every CONNECT. Narrowing it never drops what is already in flight: new
        messages wait until fewer than ``window`` are in flight."""
        return self._receive_maximum

    @receive_maximum.setter
    def receive_maximum(self, int value):
        _check_pid_range(value, "receive_maximum")
        self._receive_maximum = value
        self._window = value if value < self.max_inflight else self.max_inflight

    @property
    def last_pid(self) -> int:
        """The packet id allocated last (0 before the first); the next is the first id after it,
        wrapping 65535 -> 1, that is not in flight. Settable, e.g. to continue a restored
        session's sequence."""
        return self._last_pid

    @last_pid.setter
    def last_pid(self, int value):
        if value < 0 or value > MAX_PID:
            raise ValueError(f"last_pid must be 0..65535, got {value}")
        self._last_pid = value

    # -- the window ------------------------------------------------------------------------

    cpdef int submit(self, object msg, int qos, bint online) except -3:
        """A message routed to this session at `qos` (already downgraded to the subscription's).

        :return: a packet id > 0: send it now as QoS 1/2 (it is in flight, awaiting PUBACK or
            PUBREC); 0: send it now as QoS 0; -1: it was queued (window full, earlier messages
            queued, or offline); -2: it was dropped (queue full, or offline QoS 0 without
            ``queue_qos0``).

        Drop policy with the queue full: a new QoS 0 message is dropped; else the oldest queued
        QoS 0 message is dropped to make room; else the new message is dropped. Every drop
        counts in ``dropped``."""
        if qos == 0:
            if online:
                return 0
            if not self.queue_qos0:
                self.dropped += 1
                return -2
            return self._queue_or_drop(msg, 0)
        if qos != 1 and qos != 2:
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if online and self._q_count == 0 and self._fl_count < self._window:
            return self._start_flight(msg, qos)
        return self._queue_or_drop(msg, qos)

    cpdef bint puback(self, int pid) noexcept:
        """PUBACK for `pid`: frees its slot. False if `pid` is not awaiting a PUBACK."""
        cdef int b = self._find(pid)
        if b < 0 or self._fl[pm_value(&self._ids, b)].state != AWAIT_PUBACK:
            return False
        self._end_flight(b)
        return True

    cpdef bint pubrec(self, int pid) noexcept:
        """PUBREC for `pid`: it now awaits PUBCOMP; send PUBREL. False if `pid` is not awaiting a
        PUBREC (a repeated PUBREC included).

        An MQTT 5 PUBREC with a reason code >= 0x80 ends the flow without PUBREL: call
        ``pubrec(pid)`` then ``pubcomp(pid)`` to free the id, then ``release()``."""
        cdef int b = self._find(pid)
        cdef Flight *e
        if b < 0:
            return False
        e = &self._fl[pm_value(&self._ids, b)]
        if e.state != AWAIT_PUBREC:
            return False
        e.state = AWAIT_PUBCOMP
        e.sent = -1.0
        return True

    cpdef bint pubcomp(self, int pid) noexcept:
        """PUBCOMP for `pid`: frees its slot. False if `pid` is not awaiting a PUBCOMP."""
        cdef int b = self._find(pid)
        if b < 0 or self._fl[pm_value(&self._ids, b)].state != AWAIT_PUBCOMP:
            return False
        self._end_flight(b)
        return True

    cpdef list release(self, int limit=-1):
        """Move queued messages into the window while there is room, oldest first, at most
        `limit` of them (-1: no limit).

        :return: ``[(pid, qos, msg)]`` to send now, in order; pid 0 for QoS 0 messages (which
            leave the queue without taking a slot). Call it after a True ``puback``/``pubcomp``
            and after ``resend()`` on reconnect, only while the client is online."""
        cdef list out = []
        cdef int qos, pid
        cdef object msg
        while self._q_count and limit != 0:
            limit -= 1
            qos = self._q[self._q_head].qos
            if qos == 0:
                msg = self._dequeue(&qos)
                out.append((0, 0, msg))
            elif self._fl_count < self._window:
                pid = self._start_flight(<object>self._q[self._q_head].msg, qos)
                msg = self._dequeue(&qos)
                out.append((pid, qos, msg))
            else:
                break
        return out

    cpdef list resend(self):
        """Everything in flight, in send order, for a reconnecting client.

        :return: ``[(pid, qos, state, msg)]``: re-send PUBLISH with DUP=1 for ``AWAIT_PUBACK``
            and ``AWAIT_PUBREC``, PUBREL for ``AWAIT_PUBCOMP``. Then call ``release()``."""
        cdef list out = []
        cdef int32_t i = self._fl_head
        cdef Flight *e
        while i >= 0:
            e = &self._fl[i]
            e.sent = -1.0
            out.append((e.pid, e.qos, e.state, <object>e.msg))
            i = e.next
        return out

    cpdef list drain_queue(self):
        """Remove and return everything queued, oldest first, as ``[(qos, msg)]``."""
        cdef list out = []
        cdef uint32_t k
        cdef Queued *e
        for k in range(self._q_count):
            e = &self._q[(self._q_head + k) & (self._q_cap - 1)]
            out.append((e.qos, <object>e.msg))
        self._free_queue()
        return out

    cpdef list take_inflight(self):
        """Remove and return everything in flight, in send order, as ``[(pid, qos, state, msg)]``
        (for redispatching a shared subscription's messages when a member leaves). Their packet
        ids become free."""
        cdef list out = []
        cdef int32_t i = self._fl_head
        cdef Flight *e
        while i >= 0:
            e = &self._fl[i]
            out.append((e.pid, e.qos, e.state, <object>e.msg))
            i = e.next
        self._free_flights()
        return out

    cpdef object peek(self):
        """The message at the head of the queue (the next ``release()`` sends), or None."""
        if not self._q_count:
            return None
        return <object>self._q[self._q_head].msg

    cpdef object get(self, int pid):
        """The message in flight under `pid` (as submitted), or None: what a store needs to
        know which entry an acknowledgement completes before ``puback``/``pubcomp`` frees it."""
        cdef int b = self._find(pid)
        if b < 0:
            return None
        return <object>self._fl[pm_value(&self._ids, b)].msg

    # -- resend on a live connection (MQTT 3.1.1 only; MQTT 5 forbids it [MQTT-4.4.0-1]) --------

    cpdef bint mark_sent(self, int pid, double now) noexcept:
        """Record that `pid` was (re)sent at `now`. Optional: ``due()`` stamps unstamped entries
        itself. False if `pid` is not in flight."""
        cdef int b = self._find(pid)
        if b < 0:
            return False
        self._fl[pm_value(&self._ids, b)].sent = now
        return True

    cpdef list due(self, double now, double timeout):
        """Entries whose last send is at least `timeout` old, in send order, as
        ``[(pid, qos, state, msg)]`` like ``resend()``; they are stamped `now` (the caller re-sends
        them). Entries never stamped (new ones, and those just moved by ``pubrec()`` or listed by
        ``resend()``) are stamped `now` and not returned, so without ``mark_sent()`` an entry comes
        due between `timeout` and `timeout` + one sweep interval after it was sent. One pass
        over the window, no per-message timers."""
        cdef list out = []
        cdef int32_t i = self._fl_head
        cdef Flight *e
        while i >= 0:
            e = &self._fl[i]
            if e.sent < 0:
                e.sent = now
            elif e.sent + timeout <= now:
                e.sent = now
                out.append((e.pid, e.qos, e.state, <object>e.msg))
            i = e.next
        return out

    # -- internals ---------------------------------------------------------------------------

    cdef int _find(self, int pid) noexcept:
        # The PidMap bucket of in-flight `pid`, or -1.
        if pid < 1 or pid > MAX_PID:
            return -1
        return pm_find(&self._ids, <uint32_t>pid)

    cdef int _start_flight(self, object msg, int qos) except -1:
        # Allocate a packet id and a slab entry for `msg`, append it in send order; return the id.
        cdef int pid = self._last_pid
        cdef int32_t i, n
        cdef Flight *fl
        cdef Flight *e
        # Fewer than 65535 ids are in flight (count < window <= 65535), so this ends.
        while True:
            pid = pid + 1 if pid < MAX_PID else 1
            if pm_find(&self._ids, <uint32_t>pid) < 0:
                break
        if self._fl_free < 0 and self._fl_used == self._fl_cap:
            n = self._fl_cap * 2 if self._fl_cap else FL_MIN
            if n > self.max_inflight:
                n = self.max_inflight
            fl = <Flight *>PyMem_Realloc(self._fl, n * sizeof(Flight))
            if fl == NULL:
                raise MemoryError()
            self._fl = fl
            self._fl_cap = n
        i = self._fl_free if self._fl_free >= 0 else self._fl_used
        pm_put(&self._ids, <uint32_t>pid, <uint32_t>i)        # the one step that can fail
        if self._fl_free >= 0:
            self._fl_free = self._fl[i].next
        else:
            self._fl_used += 1
        e = &self._fl[i]
        Py_INCREF(msg)
        e.msg = <PyObject *>msg
        e.sent = -1.0
        e.pid = <uint16_t>pid
        e.qos = <uint8_t>qos
        e.state = AWAIT_PUBACK if qos == 1 else AWAIT_PUBREC
        e.next = -1
        e.prev = self._fl_tail
        if self._fl_tail >= 0:
            self._fl[self._fl_tail].next = i
        else:
            self._fl_head = i
        self._fl_tail = i
        self._fl_count += 1
        self._last_pid = pid
        return pid

    cdef void _end_flight(self, int bucket) noexcept:
        # Remove the entry at PidMap `bucket` from the window; its message reference goes last,
        # after the structure is consistent (a finaliser may run).
        cdef int32_t i = pm_value(&self._ids, bucket)
        cdef Flight *e = &self._fl[i]
        cdef PyObject *msg = e.msg
        pm_remove_at(&self._ids, <uint32_t>bucket)
        e.msg = NULL
        if e.prev >= 0:
            self._fl[e.prev].next = e.next
        else:
            self._fl_head = e.next
        if e.next >= 0:
            self._fl[e.next].prev = e.prev
        else:
            self._fl_tail = e.prev
        self._fl_count -= 1
        if self._fl_count == 0:
            if self._fl_cap > FL_KEEP:
                self._free_flights()          # after a burst: give the storage back
            else:
                self._fl_used = 0             # restart at entry 0: the hot loop stays in one line
                self._fl_free = -1
        else:
            e.next = self._fl_free
            self._fl_free = i
        Py_XDECREF(msg)

    cdef void _free_flights(self) noexcept:
        # Drop every in-flight entry and the storage (the window is empty afterwards).
        cdef Flight *fl = self._fl
        cdef int32_t n = self._fl_used, i
        self._fl = NULL
        self._fl_cap = 0
        self._fl_used = 0
        self._fl_count = 0
        self._fl_head = -1
        self._fl_tail = -1
        self._fl_free = -1
        pm_free(&self._ids)
        for i in range(n):
            Py_XDECREF(fl[i].msg)
        PyMem_Free(fl)

    cdef int _queue_or_drop(self, object msg, int qos) except -3:
        if self._q_count >= <uint32_t>self.max_queued:
            if qos == 0 or self._q0 == 0:
                self.dropped += 1
                return -2
            self._drop_oldest_qos0()
            self.dropped += 1
        self._enqueue(msg, qos)
        return -1

    cdef int _enqueue(self, object msg, int qos) except -1:
        cdef uint32_t n, first
        cdef Queued *q
        cdef Queued *e
        if self._q_count == self._q_cap:
            n = self._q_cap * 2 if self._q_cap else Q_MIN
            q = <Queued *>PyMem_Malloc(n * sizeof(Queued))
            if q == NULL:
                raise MemoryError()
            # Unwrap the ring into the new array: oldest first, at index 0.
            first = self._q_cap - self._q_head
            if first > self._q_count:
                first = self._q_count
            if first:
                memcpy(q, &self._q[self._q_head], first * sizeof(Queued))
            if self._q_count > first:
                memcpy(&q[first], self._q, (self._q_count - first) * sizeof(Queued))
            PyMem_Free(self._q)
            self._q = q
            self._q_cap = n
            self._q_head = 0
        e = &self._q[(self._q_head + self._q_count) & (self._q_cap - 1)]
        Py_INCREF(msg)
        e.msg = <PyObject *>msg
        e.qos = qos
        self._q_count += 1
        if qos == 0:
            self._q0 += 1
        return 0

    cdef object _dequeue(self, int *qos):
        # Pop the oldest queued message (the queue is not empty); its QoS goes to qos[0].
        cdef Queued *e = &self._q[self._q_head]
        cdef object msg = <object>e.msg
        Py_XDECREF(e.msg)                     # `msg` holds the reference now
        qos[0] = e.qos
        if e.qos == 0:
            self._q0 -= 1
        self._q_head = (self._q_head + 1) & (self._q_cap - 1)
        self._q_count -= 1
        if self._q_count == 0:
            if self._q_cap > Q_KEEP:
                self._free_queue()
            else:
                self._q_head = 0
        return msg

    cdef void _drop_oldest_qos0(self) noexcept:
        # Remove the oldest queued QoS 0 message (there is one): shift the QoS 1/2 messages
        # ahead of it back one slot, so the cost is the number of those, not the queue length.
        cdef uint32_t mask = self._q_cap - 1, h = self._q_head, k = 0
        cdef PyObject *p
        while self._q[(h + k) & mask].qos != 0:
            k += 1
        p = self._q[(h + k) & mask].msg
        while k:
            self._q[(h + k) & mask] = self._q[(h + k - 1) & mask]
            k -= 1
        self._q_head = (h + 1) & mask
        self._q_count -= 1
        self._q0 -= 1
        Py_XDECREF(p)

    cdef void _free_queue(self) noexcept:
        # Drop every queued message and the ring.
        cdef Queued *q = self._q
        cdef uint32_t n = self._q_count, h = self._q_head, mask = self._q_cap - 1, k
        self._q = NULL
        self._q_cap = 0
        self._q_head = 0
        self._q_count = 0
        self._q0 = 0
        for k in range(n):
            Py_XDECREF(q[(h + k) & mask].msg)
        PyMem_Free(q)


# ---------------------------------------------------------------------------------------------

@cython.final
cdef class InboundQoS2:
    """Packet ids of QoS 2 PUBLISHes received from the client and not yet released by PUBREL,
    so that a re-sent PUBLISH (DUP) is not delivered twice [MQTT-4.3.3-9].

    :param receive_maximum: the receive maximum the broker announced (CONNACK property 0x21):
        how many may await PUBREL at once.

    On each QoS 2 PUBLISH call ``receive(pid)``; on PUBREL ``release(pid)`` and send PUBCOMP.
    Storage is a small hash table allocated on the first id; an empty instance holds none.
    """

    def __init__(self, int receive_maximum=65535):
        _check_pid_range(receive_maximum, "receive_maximum")
        self._receive_maximum = receive_maximum

    def __dealloc__(self):
        pm_free(&self._ids)

    def __repr__(self):
        return f"<InboundQoS2 pending={self._ids.count}/{self._receive_maximum}>"

    def __len__(self):
        return self._ids.count

    def __contains__(self, pid):
        return type(pid) is int and 1 <= pid <= MAX_PID and pm_find(&self._ids, pid) >= 0

    @property
    def receive_maximum(self) -> int:
        """How many ids may await PUBREL at once."""
        return self._receive_maximum

    @receive_maximum.setter
    def receive_maximum(self, int value):
        _check_pid_range(value, "receive_maximum")
        self._receive_maximum = value

    cpdef int receive(self, int pid) except -2:
        """A QoS 2 PUBLISH with packet id `pid` (1..65535).

        :return: 1: new, deliver it and send PUBREC; 0: a duplicate of one awaiting PUBREL, do not
            deliver it, send PUBREC again; -1: it would exceed ``receive_maximum`` (disconnect
            with 0x93)."""
        _check_pid_range(pid, "packet id")
        if pm_find(&self._ids, <uint32_t>pid) >= 0:
            return 0
        if self._ids.count >= <uint32_t>self._receive_maximum:
            return -1
        pm_put(&self._ids, <uint32_t>pid, 0)
        return 1

    cpdef bint release(self, int pid) noexcept:
        """PUBREL for `pid`: True if it was pending. Send PUBCOMP either way (MQTT 5: with reason
        0x92 when False)."""
        cdef int b
        if pid < 1 or pid > MAX_PID:
            return False
        b = pm_find(&self._ids, <uint32_t>pid)
        if b < 0:
            return False
        pm_remove_at(&self._ids, <uint32_t>b)
        if self._ids.count == 0 and self._ids.mask + 1 > PM_KEEP:
            pm_free(&self._ids)
        return True

    cpdef clear(self):
        """Forget every pending id (a clean start)."""
        pm_free(&self._ids)
