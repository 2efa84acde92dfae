# Compiled with metrics.py: the broker's counters as C integers (incremented per packet).
cdef class Metrics:
    cdef public long long bytes_received
    cdef public long long bytes_sent
    cdef public long long messages_received
    cdef public long long messages_sent
    cdef public long long dropped_too_large
    cdef public long long dropped_ended_sessions
    cdef public long long dropped_ended_slow
    cdef public long long dropped_refused
    cdef public long long connections_total
    cdef public long long clients_total
    cdef public long long connections_refused_fd_limit
    cdef public double started
