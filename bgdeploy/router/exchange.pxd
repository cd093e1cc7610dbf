# Declarations for the compiled build only: Cython reads them with exchange.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
# A cimported class makes the compiled module import its module first: client, exchange
# and upstream import only classes from each other at module level (see balancing.py).
from bgdeploy.router.client cimport ClientConnection
from bgdeploy.router.upstream cimport Replica, Upstream


cdef class Exchange:
    cdef public ClientConnection client  # typed: C access to the connection's fields
    cdef public Upstream upstream  # typed: C access to the connection's fields
    cdef public object method, head, route, pending, pending_size
    cdef public object retry_buffer, retry_size, attempts, started, canary_cookie
    cdef public Replica replica  # typed: its counts are C integers
    cdef public bint chunked_request, keep_alive, upgrade, request_complete
    cdef public bint got_response_bytes, response_started, chunk_response, close_after
    cdef public bint bodyless, done, interim, counted, streaming, held_once

    # C calls from the compiled request path (still callable from Python).
    cpdef attach(self, Upstream up)
    cpdef request_done(self)
    cpdef send_head(self, Upstream up, int status, bint upstream_keep_alive, bytes head, bytes body=*)
    cpdef response_complete(self, Upstream up)
    cpdef _release_count(self)
