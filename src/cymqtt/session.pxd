# Compiled with session.py: the types and methods that routing and acknowledgements reach in C.
cimport cython
from cymqtt._fast.inflight cimport OutboundWindow, InboundQoS2
from cymqtt.message cimport Message

cdef class Session


cdef class Subscription:
    cdef public Session session
    cdef public str topic_filter
    cdef public str full_filter
    cdef public object group
    cdef public int qos
    cdef public bint no_local
    cdef public bint retain_as_published
    cdef public int retain_handling
    cdef public object sub_id


cdef class Client:
    cdef public bint writable
    cdef public double paused_since
    cdef public int receive_maximum

    cpdef send_publish(self, Message msg, int qos, bint retain, int packet_id, bint dup,
                       list sub_ids, double now)
    cpdef send_pubrel(self, int packet_id)
    cpdef unthrottle(self)


cdef class Journal:
    cdef public long long seq
    cdef public long long durable

    cpdef queued(self, Session session, tuple item, int qos, int pid)
    cpdef sent(self, Session session, tuple item, int pid)
    cpdef released(self, Session session, tuple item, int pid)
    cpdef done(self, Session session, tuple item, bint delivered=*)


cdef class Session:
    cdef public str client_id
    cdef public dict subscriptions
    cdef public OutboundWindow window
    cdef public InboundQoS2 inbound
    cdef public Client client
    cdef public object will
    cdef public object expiry_interval
    cdef public object requested_expiry
    cdef public object expires_at
    cdef public int version
    cdef public object waiters
    cdef public double last_ack
    cdef public int receive_maximum
    cdef public object observer
    cdef public object backlog
    cdef public long long dropped_slow
    cdef public object access
    cdef public Journal journal
    cdef public object _config
    cdef object __weakref__

    cpdef OutboundWindow _window(self)
    @cython.locals(w=OutboundWindow, pid=int, q=int, client=Client, j=Journal)
    cpdef int deliver(self, Message msg, int qos, bint retain, list sub_ids, double now,
                      tuple shared=*) except -1
    @cython.locals(w=OutboundWindow, client=Client)
    cpdef bint draining(self, double now) except -1
    @cython.locals(w=OutboundWindow, pid=int, qos=int, msg=Message, client=Client, j=Journal)
    cpdef release(self, double now)
    @cython.locals(w=OutboundWindow, ok=bint, j=Journal)
    cpdef bint ack(self, int kind, int pid, double now) except -1
