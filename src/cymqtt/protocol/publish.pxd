# Compiled with publish.py: PUBLISH and PUBACK handling typed against the classes it drives.
cimport cython
from cymqtt._fast.codec cimport Publish, PubAck
from cymqtt.message cimport Message
from cymqtt.protocol.client cimport ClientProtocol
from cymqtt.router cimport Router
from cymqtt.context cimport Context

@cython.locals(router=Router, n=int)
cpdef int route(ClientProtocol proto, Message msg, double now) except -1
cpdef _hold(ClientProtocol proto, Router router)
@cython.locals(qos=int, msg=Message, router=Router, n=int, now=double, ctx=Context)
cpdef handle_publish(ClientProtocol proto, Publish pkt)
cpdef bint _receive_qos2(ClientProtocol proto, Publish pkt) except -1
@cython.locals(qos=int, n=int)
cpdef _publish_durably(ClientProtocol proto, Publish pkt, Message msg, journal, double now)
cpdef handle_puback(ClientProtocol proto, PubAck pkt)
