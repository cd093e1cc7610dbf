# Declarations for the compiled build only: Cython reads them with exchange.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
cdef class Exchange:
    cdef public object client, method, head, route, upstream, pending, pending_size
    cdef public object retry_buffer, retry_size, attempts, started, canary_cookie
    cdef public object replica
    cdef public bint chunked_request, keep_alive, upgrade, request_complete
    cdef public bint got_response_bytes, response_started, chunk_response, close_after
    cdef public bint bodyless, done, interim, counted, streaming, held_once
