# Compiled with router.py: route() reaches the trie, the match cache and the sessions in C.
cimport cython
from cymqtt._fast.topics cimport TopicTrie
from cymqtt.message cimport Message
from cymqtt.session cimport Session, Subscription

cdef class Router:
    cdef public TopicTrie trie
    cdef public object retained
    cdef public bint retain_available
    cdef public str strategy
    cdef dict _rr
    cdef dict _sticky
    cdef object _rng
    cdef public list congested
    cdef dict _matches
    cdef Py_ssize_t _match_refs
    cdef public object bus
    cdef public object forward
    cdef public set unrouted
    cdef object __weakref__

    @cython.locals(matches=dict, subs=list, sub=Subscription, session=Session, r=int, refs=Py_ssize_t)
    cpdef int route(self, Message msg, double now, bint remote=*) except -1
