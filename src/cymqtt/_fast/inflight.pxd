# The QoS bookkeeping of one session: OutboundWindow (messages the broker sends: packet ids,
# in-flight states, the session queue) and InboundQoS2 (client QoS 2 ids awaiting PUBREL).
# Sans-I/O: acks in, what to send out; time only as a `now` argument.

from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t


cpdef enum InflightState:
    # What an outbound in-flight message waits for. The value is that packet's type.
    AWAIT_PUBACK = 4                 # QoS 1 PUBLISH sent
    AWAIT_PUBREC = 5                 # QoS 2 PUBLISH sent
    AWAIT_PUBCOMP = 7                # QoS 2 PUBREC received, PUBREL sent


ctypedef struct PidMap:
    # Packet id -> 16-bit value; open addressing, linear probing, home bucket = pid & mask
    # (ids are handed out in sequence, so they rarely collide). NULL table while empty.
    uint32_t *table                  # buckets: pid << 16 | value; 0 = empty (pid 0 is never used)
    uint32_t mask                    # buckets - 1 (a power of two); 0 while table is NULL
    uint32_t count                   # ids present


ctypedef struct Flight:
    # One outbound message in flight: a slab entry linked into send order.
    PyObject *msg                    # owned reference; NULL while the entry is free
    double sent                      # last (re)send time for due(); < 0 = not stamped yet
    int32_t prev                     # previous entry in send order; -1 at the oldest
    int32_t next                     # next entry in send order, or in the free list; -1 at the end
    uint16_t pid                     # packet id, 1..65535
    uint8_t qos                      # 1 or 2
    uint8_t state                    # InflightState


ctypedef struct Queued:
    # One message waiting in the session queue.
    PyObject *msg                    # owned reference
    int qos                          # 0, 1 or 2


cdef class OutboundWindow:
    cdef readonly int max_inflight       # configured ceiling on messages in flight (1..65535)
    cdef readonly int max_queued         # queue limit; beyond it the drop policy applies
    cdef readonly bint queue_qos0        # queue QoS 0 while offline (else drop it)
    cdef readonly Py_ssize_t dropped     # messages dropped by the queue policy, ever
    cdef int _receive_maximum            # the client's receive maximum (65535 when it sent none)
    cdef int _window                     # min(max_inflight, _receive_maximum)
    cdef int _last_pid                   # round-robin cursor: the packet id allocated last
    # In flight: a slab of Flight entries (grown by doubling up to max_inflight, freed when the
    # window empties after a burst), linked in send order, plus packet id -> slab index.
    cdef Flight *_fl                     # NULL until the first QoS 1/2 message goes out
    cdef int32_t _fl_cap                 # entries allocated
    cdef int32_t _fl_used                # entries ever handed out since the slab was last empty
    cdef int32_t _fl_count               # entries in flight
    cdef int32_t _fl_head                # oldest in send order; -1 when empty
    cdef int32_t _fl_tail                # newest in send order; -1 when empty
    cdef int32_t _fl_free                # free list through Flight.next; -1 when empty
    cdef PidMap _ids                     # packet id -> slab index
    # Queue: a FIFO ring of Queued records (power-of-two capacity, grown by doubling).
    cdef Queued *_q                      # NULL while nothing is queued (after a drain or burst)
    cdef uint32_t _q_cap                 # ring slots allocated
    cdef uint32_t _q_head                # ring index of the oldest message
    cdef uint32_t _q_count               # messages queued
    cdef uint32_t _q0                    # of which QoS 0

    cpdef int submit(self, object msg, int qos, bint online) except -3
    cpdef bint puback(self, int pid) noexcept
    cpdef bint pubrec(self, int pid) noexcept
    cpdef bint pubcomp(self, int pid) noexcept
    cpdef list release(self, int limit=*)
    cpdef list resend(self)
    cpdef list drain_queue(self)
    cpdef list take_inflight(self)
    cpdef object get(self, int pid)
    cpdef object peek(self)
    cpdef bint mark_sent(self, int pid, double now) noexcept
    cpdef list due(self, double now, double timeout)
    cdef int _find(self, int pid) noexcept
    cdef int _start_flight(self, object msg, int qos) except -1
    cdef void _end_flight(self, int bucket) noexcept
    cdef void _free_flights(self) noexcept
    cdef int _queue_or_drop(self, object msg, int qos) except -3
    cdef int _enqueue(self, object msg, int qos) except -1
    cdef object _dequeue(self, int *qos)
    cdef void _drop_oldest_qos0(self) noexcept
    cdef void _free_queue(self) noexcept


cdef class InboundQoS2:
    cdef int _receive_maximum            # ids that may await PUBREL at once (the broker's own)
    cdef PidMap _ids                     # ids awaiting PUBREL (values unused)

    cpdef int receive(self, int pid) except -2
    cpdef bint release(self, int pid) noexcept
    cpdef clear(self)
