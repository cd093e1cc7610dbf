# Declarations for the compiled build only: Cython reads them with client.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
cimport cython

from bgdeploy.router.exchange cimport Exchange
from bgdeploy.router.flow cimport FlowControl
from bgdeploy.router.route_core cimport RouteCore


cdef class Limits:
    cdef public Py_ssize_t max_head, max_body  # C integers: compared per request
    cdef public double header_timeout, idle_timeout, upstream_timeout, stream_idle_timeout


cdef class ClientConnection(FlowControl):
    cdef public Limits limits
    cdef public RouteCore table  # typed: C access to the route and the clock
    cdef public object parser, queue, tunnel_to
    cdef public Exchange current, active  # typed: C access to the exchange's fields
    cdef public object peer, _forwarded, _url, _headers
    cdef public object _batch, last_activity, head_started, peer_port
    cdef public Py_ssize_t _head_bytes, _body_left, _body_seen
    cdef public bint http11, _partial, _closing, preview

    # C calls from the compiled request path (still callable from Python).
    @cython.locals(length=Py_ssize_t, end=Py_ssize_t, body=Py_ssize_t)
    cpdef bint _fast_request(self, bytes data)
    cpdef write(self, data)
    cpdef exchange_finished(self, Exchange ex)
