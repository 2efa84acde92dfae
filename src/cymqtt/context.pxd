# Compiled with context.py: what handlers reach per packet (router, metrics) in C.
from cymqtt.metrics cimport Metrics
from cymqtt.router cimport Router

cdef class Context:
    cdef public object config
    cdef public object registry
    cdef public Router router
    cdef public object retained
    cdef public object auth
    cdef public object access
    cdef public Metrics metrics
    cdef public object clock
    cdef public object journal
    cdef public object cluster
