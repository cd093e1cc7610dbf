# Declarations for the compiled build only: Cython reads them with upstream.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
# A cimported class makes the compiled module import its module first: client, exchange
# and upstream import only classes from each other at module level (see balancing.py).
cimport cython

from bgdeploy.router.exchange cimport Exchange
from bgdeploy.router.flow cimport FlowControl
from bgdeploy.router.route_core cimport RouteCore


cdef class Upstream


cdef class Replica:
    cdef public object boot_id, port
    cdef public list idle
    cdef public long outstanding, requests, errors  # C integers: no Python int per count
    cdef public double down_until

    # C calls from the compiled request path (still callable from Python).
    cpdef Upstream take(self)
    cpdef give_back(self, Upstream up)


cdef class Upstream(FlowControl):
    cdef public Replica replica  # typed: C access to its pool and counts
    cdef public Exchange exchange  # typed: C access to the exchange's fields
    cdef public RouteCore table  # typed: C access to the clock
    cdef public object boot_id, port, boot_line, parser, uses
    cdef public object _headers, _reason, latency
    cdef public Py_ssize_t _body_left
    cdef public double last_read
    cdef public bint tunnel, keep_alive, _head_done, _partial
    cdef public dict statuses

    # C calls from the compiled request path (still callable from Python).
    @cython.locals(length=Py_ssize_t, status=int, end=Py_ssize_t, body=Py_ssize_t)
    cpdef bint _fast_response(self, Exchange ex, bytes data)
    cpdef write(self, data)
