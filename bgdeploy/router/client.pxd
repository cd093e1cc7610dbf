# Declarations for the compiled build only: Cython reads them with client.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
from bgdeploy.router.exchange cimport Exchange
from bgdeploy.router.flow cimport FlowControl


cdef class ClientConnection(FlowControl):
    cdef public object table, limits, parser, queue, tunnel_to
    cdef public Exchange current, active  # typed: C access to the exchange's fields
    cdef public object peer, _forwarded, _url, _headers, _head_bytes, _body_left
    cdef public object _batch, last_activity, head_started, _body_seen, peer_port
    cdef public bint http11, _partial, _closing, preview

    # C calls from the compiled request path (still callable from Python).
    cpdef bint _fast_request(self, bytes data)
    cpdef write(self, data)
    cpdef exchange_finished(self, Exchange ex)
