"""The router: the fixed ingress that forwards each request to the active boot.

The request path (client, exchange, upstream, balancing, route_core, fastpath,
http11, flow) has two builds of one source: the .py files, and extension modules
compiled from those same files by Cython at install time (setup.py; the .pxd files
only declare the compiled classes' attributes). Python imports a compiled module
ahead of its source; ``BGDEPLOY_NO_EXTENSIONS=1`` in the environment of a process
makes it import the sources instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path

HERE = Path(__file__).parent
NO_EXTENSIONS = os.environ.get("BGDEPLOY_NO_EXTENSIONS", "") not in ("", "0")


class SourceFinder:
    """Finds this package's modules in their .py files, never in a compiled twin."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        package, _, leaf = name.rpartition(".")
        source = HERE / f"{leaf}.py"
        if package != __name__ or not source.is_file():
            return None
        return importlib.util.spec_from_file_location(name, source)


if NO_EXTENSIONS:
    sys.meta_path.insert(0, SourceFinder)


def build() -> str:
    """The build of the request path this process runs: "compiled" or "pure-python"."""
    from bgdeploy.router import client

    return "compiled" if client.__file__.endswith(tuple(EXTENSION_SUFFIXES)) else "pure-python"
