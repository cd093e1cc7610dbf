# Declarations for the compiled build only: Cython reads them with client.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
from bgdeploy.router.flow cimport FlowControl


cdef class ClientConnection(FlowControl):
    cdef public object table, limits, parser, current, active, queue, tunnel_to
    cdef public object peer, _forwarded, _url, _headers, _head_bytes, _body_left
    cdef public object _batch, last_activity, head_started, _body_seen, peer_port
    cdef public bint http11, _partial, _closing, preview
