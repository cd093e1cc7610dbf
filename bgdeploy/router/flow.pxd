# Declarations for the compiled build only: Cython reads them with flow.py, Python never does.
# Each attribute the class sets must be declared here (the extension type has no __dict__).
cdef class FlowControl:
    cdef public object transport
    cdef public bint closed
    cdef public bint read_paused
