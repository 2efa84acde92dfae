# cymqtt-bench's compiled loops: the per-message work of the load generator, in C.
#
# PublishFiller   n PUBLISH frames from one template, stamped (time, publisher, sequence),
#                 in one bytes object: what the QoS 0 flood pump writes.
# DeliveryReader  one connection's received bytes -> PUBLISH frames counted, their latency
#                 stamps read into a LatencyHistogram, QoS 1/2 acks written; any other packet
#                 is handed back whole for the Python FrameParser.
# LatencyHistogram the log-linear histogram of stats.py, as a C array.
# WsUnframer      --ws: the broker's WebSocket data frames -> their payloads, in one walk.

from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef enum:
    HIST_SMALL = 32                      # stats.SMALL: below this (us) one bucket per value
    HIST_MAX_BITS = 40                   # stats.MAX_BITS
    HIST_SIZE = (40 << 4) + 16           # stats.SIZE
    STAMP_SIZE = 16                      # client.HEADER_SIZE: >Q time, >I publisher, >I seq


cdef class LatencyHistogram:
    cdef uint64_t counts[HIST_SIZE]      # bucket -> samples
    cdef readonly uint64_t total         # samples in all buckets
    cdef readonly int64_t max_us         # largest sample seen (0 when none)
    cdef void add_us(self, int64_t us) noexcept


cdef class PublishFiller:
    cdef readonly bytes frame            # the template: one complete PUBLISH frame
    cdef readonly Py_ssize_t length      # len(frame)
    cdef readonly Py_ssize_t stamp_off   # offset of the 16-byte stamp (start of the payload)
    cdef readonly Py_ssize_t pid_off     # offset of the packet id; -1 for QoS 0
    cdef readonly uint32_t index         # the publisher's index, written into every stamp


cdef class DeliveryReader:
    cdef public int version              # 3, 4 or 5 (5: PUBLISH carries a property length)
    cdef LatencyHistogram hist           # None: count only, read no stamps
    cdef bytearray _tail                 # an incomplete frame held from the last feed, or None
    cdef bytearray _acks                 # PUBACK/PUBREC/PUBCOMP frames owed to the sender
    cdef bytearray _other                # complete non-PUBLISH frames, for the Python parser
    cdef set _q2                         # QoS 2 ids PUBREC'd and not yet released (PUBREL)
    cdef readonly uint64_t received      # PUBLISH frames counted (QoS 2 resends are not)
    cdef readonly uint64_t retained      # ... of them with the RETAIN flag
    cdef readonly uint64_t duplicates    # DUP-flagged frames, and QoS 2 resends of a held id
    cdef readonly object error           # text of the first malformed frame, or None

    cdef Py_ssize_t _scan(self, const unsigned char *p, Py_ssize_t n, int64_t now_ns) except -1
    cdef int _publish(self, const unsigned char *body, Py_ssize_t rl, int flags,
                      int64_t now_ns) except -1


cdef class WsUnframer:
    cdef bytearray _tail                 # an incomplete frame held from the last feed, or None
    cdef readonly bint stopped           # a non-data frame came: the rest is not for us

    cdef bytes _join(self, bytes buf, list spans, Py_ssize_t total)
