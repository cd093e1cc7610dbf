# Declarations for the compiled build only: Cython reads them with upstream.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
from bgdeploy.router.flow cimport FlowControl


cdef class Replica:
    cdef public object boot_id, port, idle, outstanding, requests, errors, down_until


cdef class Upstream(FlowControl):
    cdef public object boot_id, port, replica, boot_line, table, exchange, parser, uses
    cdef public object _headers, _reason, _body_left, last_read, latency
    cdef public bint tunnel, keep_alive, _head_done, _partial
    cdef public dict statuses

    # C calls from the compiled request path (still callable from Python).
    cpdef bint _fast_response(self, ex, bytes data)
    cpdef write(self, data)
