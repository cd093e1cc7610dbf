"""The router's request path, compiled by Cython from the same .py files that run without it.

The modules named in COMPILED are plain Python (Cython's pure-Python mode): Cython
compiles each into an extension module that sits next to its source, and
``BGDEPLOY_NO_EXTENSIONS=1`` makes bgdeploy import the sources instead (see
bgdeploy/router/__init__.py). A ``.pxd`` file next to a module declares its classes'
attributes, so that the compiled classes are extension types with C fields: without
them compiled code ran slower than CPython 3.11's own interpreter. Everything else is
in pyproject.toml.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

# The per-request work of the router, as the profile names it (see tools/bench.py).
COMPILED = ("http11", "fastpath", "flow", "upstream", "exchange", "client")


setup(
    ext_modules=cythonize(
        [Extension(f"bgdeploy.router.{m}", [f"bgdeploy/router/{m}.py"]) for m in COMPILED],
        compiler_directives={
            "language_level": "3",
            # The annotations are for readers and type checkers: the compiled build
            # must accept exactly what the pure-Python build accepts.
            "annotation_typing": False,
        },
    ),
)
