# Compiled with client.py: one connection's per-packet path (input, dispatch, outbox) in C.
cimport cython
from cymqtt._fast.codec cimport FrameParser
from cymqtt.message cimport Message
from cymqtt.session cimport Client
from cymqtt.context cimport Context

cdef class ClientProtocol(Client):
    cdef public Context ctx
    cdef public object io
    cdef public FrameParser parser
    cdef public int state
    cdef public object session
    cdef public object client_id
    cdef public int version
    cdef public int keepalive
    cdef public double last_rx
    cdef public double created
    cdef public list outbox
    cdef public Py_ssize_t out_bytes
    cdef public bint tx_paused
    cdef public Py_ssize_t max_packet_out
    cdef public dict aliases_in
    cdef public dict aliases_out
    cdef public int alias_out_max
    cdef public bint problem_info
    cdef public object username
    cdef public object auth
    cdef public bint throttled
    cdef public long long throttles
    cdef public bint waiting
    cdef public list pending
    cdef public long long received
    cdef public long long sent
    cdef public object rate
    cdef public bint logged
    cdef public object close_reason

    cpdef receive_data(self, data)
    @cython.locals(i=Py_ssize_t)
    cpdef _dispatch(self, list packets)
    cpdef send(self, bytes frame)
    cpdef bytes data_to_send(self)
    cpdef send_publish(self, Message msg, int qos, bint retain, int packet_id, bint dup,
                       list sub_ids, double now)
    cpdef send_pubrel(self, int packet_id)
    cpdef unthrottle(self)
