# Declarations for the compiled build only: Cython reads them with route_core.py, Python
# never does. RouteTable (a Python subclass) sets them; the request path reads them in C.
cdef class RouteCore:
    cdef public object active, kept
    cdef public dict targets
    cdef public double clock
    cdef public bint controlled, draining
