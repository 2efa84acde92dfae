# The topic index. TopicTrie holds the subscriptions and is searched with a concrete topic name
# on every PUBLISH (the hot path). TopicStore holds the retained messages, one per topic name,
# and is searched with a topic filter on every SUBSCRIBE. Both take filters and topic names that
# the caller has already validated; `$share/{group}/` prefixes are stripped before they get here.


cdef class _TrieNode:
    # One filter level. Wildcards live in their own fields, not in `children`, so match() finds
    # them without a dict probe. A node whose four fields are all None is pruned.
    cdef dict children               # literal level (str) -> _TrieNode; None while empty
    cdef _TrieNode plus              # the '+' child; None while absent
    cdef dict subs                   # key -> value, filters ending at this level; None while empty
    cdef dict hash_subs              # key -> value, filters ending here + '/#'; None while empty

    cdef inline bint empty(self) noexcept   # all four fields None: the node can be pruned


cdef class TopicTrie:
    cdef _TrieNode _root             # the level before the first; never pruned
    cdef Py_ssize_t _count           # number of (filter, key) subscriptions

    cpdef bint subscribe(self, str topic_filter, object key, object value) except -1
    cpdef bint unsubscribe(self, str topic_filter, object key) except -1
    cpdef list match(self, str topic)
    cpdef object get(self, str topic_filter, object key)
    cpdef list filters(self)
    cdef _TrieNode _descend(self, list levels, Py_ssize_t n, list path)
    cdef dict _subs_of(self, str topic_filter)


cdef class _StoreNode:
    cdef dict children               # level (str) -> _StoreNode; None while empty
    cdef object value                # the value stored for the topic ending here, if has_value
    cdef bint has_value


cdef class TopicStore:
    cdef _StoreNode _root            # the level before the first; never holds a value
    cdef dict _values                # topic -> value: get(), len() and items() without a walk

    cpdef object set(self, str topic, object value)
    cpdef bint delete(self, str topic) except -1
    cpdef object get(self, str topic)
    cpdef list match(self, str topic_filter)
    cpdef list items(self)
