"""The router's request path, compiled by Cython from the same .py files that run without it.

The modules named in COMPILED are plain Python (Cython's pure-Python mode): Cython
compiles each into an extension module that sits next to its source, and
``BGDEPLOY_NO_EXTENSIONS=1`` makes bgdeploy import the sources instead (see
bgdeploy/router/__init__.py). A ``.pxd`` file next to a module declares its classes'
attributes, so that the compiled classes are extension types with C fields: without
them compiled code ran slower than CPython 3.11's own interpreter. Everything else is
in pyproject.toml.

Compiling is optional: where Cython, a C compiler or the Python headers are missing
(slim images, CI runners), the install goes on with the pure-Python modules, which
are the same behaviour, tested by the same suite; the build says so once.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The per-request work of the router, as the profile names it (see tools/bench.py).
COMPILED = (
    "http11",
    "fastpath",
    "flow",
    "upstream",
    "exchange",
    "client",
    "balancing",
    "route_core",
)

PURE_NOTICE = (
    "bgdeploy: the router's request path could not be compiled ({why}); installing the "
    "pure-Python build instead (same behaviour, somewhat more CPU per request). "
    "`bgdeploy status` shows which build runs; install a C compiler and the Python "
    "headers, then reinstall, to compile it."
)


def say_pure(why: str) -> None:
    print(PURE_NOTICE.format(why=why), file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """Build the extensions if this machine can; else leave the .py modules to run."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - no compiler configured, at all
            say_pure(f"{type(e).__name__}: {e}")

    def build_extensions(self) -> None:
        try:
            super().build_extensions()
        except Exception as e:  # noqa: BLE001 - CompileError, LinkError, a missing header...
            # None or all: a half-compiled request path would mix two builds.
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            compiler = getattr(self.compiler, "compiler_so", None) or ["the C compiler"]
            say_pure(f"{type(e).__name__} from {compiler[0]}")


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        say_pure("Cython is not installed")
        return []
    return cythonize(
        [Extension(f"bgdeploy.router.{m}", [f"bgdeploy/router/{m}.py"]) for m in COMPILED],
        compiler_directives={
            "language_level": "3",
            # The annotations are for readers and type checkers: the compiled build
            # must accept exactly what the pure-Python build accepts.
            "annotation_typing": False,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
