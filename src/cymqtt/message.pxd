# Compiled with message.py: a Message is an extension type (C fields), its frame() cpdef.
cdef class Message:
    cdef public str topic
    cdef public object payload
    cdef public int qos
    cdef public bint retain
    cdef public dict properties
    cdef public object expires_at
    cdef public object sender
    cdef public long long sid
    cdef int _key
    cdef object _frame
    cdef dict _frames
    cpdef bytes frame(self, int version, int qos, bint retain, int packet_id=*, bint dup=*, list sub_ids=*, double now=*)
