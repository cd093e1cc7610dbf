# Declarations for the compiled build only: Cython reads them with fastpath.py, Python
# never does. They make the scan a C loop over the buffer: no Python object per byte.
cimport cython

cdef bytes TOKEN, TARGET, VALUE
cdef tuple METHODS
cdef int OTHER, SLOW, LENGTH, CONNECTION, HOST


@cython.locals(p="const unsigned char*", i=Py_ssize_t, last=Py_ssize_t, c="unsigned char")
cpdef Py_ssize_t scan_head_end(bytes data)

@cython.locals(k=Py_ssize_t)
cdef bint _at(const unsigned char* p, Py_ssize_t at, bytes word)

@cython.locals(k=Py_ssize_t)
cdef bint _lower_is(const unsigned char* p, Py_ssize_t at, Py_ssize_t n, bytes word)

@cython.locals(k=Py_ssize_t, c=int)
cdef bint _letters(const unsigned char* p, Py_ssize_t at, Py_ssize_t end)

cdef int _kind(const unsigned char* p, Py_ssize_t at, Py_ssize_t n, bint request)

@cython.locals(
    end=Py_ssize_t, p="const unsigned char*", tok="const unsigned char*",
    val="const unsigned char*", target="const unsigned char*", status=int, i=Py_ssize_t,
    a=int, b=int, c=int, pos=Py_ssize_t, stop=Py_ssize_t, length="long long",
    conn_start=Py_ssize_t, conn_end=Py_ssize_t, host_start=Py_ssize_t, host_end=Py_ssize_t,
    name=Py_ssize_t, n=Py_ssize_t, start=Py_ssize_t, raw_end=Py_ssize_t, vend=Py_ssize_t,
    kind=int, k=Py_ssize_t,
)
cdef object _scan(bytes data, Py_ssize_t max_head, bint request)
