# Compiled with journal.py: the per-message bookkeeping of persistent sessions (entries in and
# out of the batch, the grace period, held acknowledgements) in C, called from Session in C.
cimport cython
from cymqtt.message cimport Message
from cymqtt.session cimport Journal as WindowJournal, Session


cdef class _Held:
    cdef public object client
    cdef public bytes frame
    cdef public Py_ssize_t left
    cdef public bint commit
    cdef public bint done
    cdef public Py_ssize_t young


cdef class Journal(WindowJournal):
    cdef public object store
    cdef public object _config
    cdef public object _clock
    cdef public set _wake
    cdef public long long ops
    cdef public bint failing
    cdef public object batch
    cdef public long long _next_mid
    cdef public long long _cut_seq
    cdef public long long _cut_mid
    cdef public long long _durable_mid
    cdef public dict _young
    cdef public object _order
    cdef public dict _young_msgs
    cdef public object _marks
    cdef public double _grace
    cdef public object _aging
    cdef public dict _refs
    cdef public dict _rows
    cdef public dict _wills
    cdef public dict _held
    cdef public dict _promised
    cdef public bint collecting
    cdef public list _collect
    cdef public object _registry
    cdef public object _loop
    cdef public object _writer
    cdef public object _committing
    cdef public bint _scheduled
    cdef public double _last_compact
    cdef public double _last_commit
    cdef public object _idle
    cdef public long long commits
    cdef public long long rows_written
    cdef public long long acks_held
    cdef public long long delivered_first
    cdef public long long failures
    cdef object __weakref__

    @cython.locals(young=bint, mid=long, seq=long, now=double)
    cpdef queued(self, Session session, tuple item, int qos, int pid)
    cpdef sent(self, Session session, tuple item, int pid)
    cpdef released(self, Session session, tuple item, int pid)
    @cython.locals(rows=dict, row=tuple, seq=long, held=_Held, young=bint)
    cpdef done(self, Session session, tuple item, bint delivered=*)
    @cython.locals(seq=long)
    cpdef _put_entry(self, tuple row)
    @cython.locals(seq=long, young=dict)
    cpdef _drop_entry(self, tuple row)
    cpdef _grown(self, _Held held)
    @cython.locals(mid=long, refs=dict)
    cpdef long _ref(self, Message msg, bint young=*) except -1
    @cython.locals(refs=dict, n=long)
    cpdef _deref(self, long mid)
    @cython.locals(held=_Held, n=Py_ssize_t)
    cpdef ack(self, client, bytes frame, long long mark)
    @cython.locals(held=_Held)
    cpdef _release(self, client)
    cpdef _changed(self)
    cpdef _schedule(self)
