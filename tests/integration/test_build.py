"""Which build of the router's request path runs: compiled by default, pure Python on request.

`make test` runs this file twice, the second time with BGDEPLOY_NO_EXTENSIONS=1 in
the environment, as it runs the other router tests: the expected build follows it.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from bgdeploy.router import NO_EXTENSIONS, build
from tests.conftest import run_bgdeploy

EXPECTED = "pure-python" if NO_EXTENSIONS else "compiled"
REQUEST_PATH = (
    "client",
    "exchange",
    "upstream",
    "fastpath",
    "http11",
    "flow",
    "balancing",
    "route_core",
)


def test_this_process_imports_the_expected_build():
    """A dev venv (`make install`: an editable install) really loads the compiled modules."""
    assert build() == EXPECTED
    for name in REQUEST_PATH:
        path = importlib.import_module(f"bgdeploy.router.{name}").__file__
        assert path.endswith(".py") == NO_EXTENSIONS, path


@pytest.mark.parametrize("name", (*REQUEST_PATH, "routes", "worker"))
def test_each_request_path_module_imports_on_its_own(name):
    """Compiled, a class that one module cimports from another (the .pxd files) makes it
    import that module before running its own code, so a function or constant imported
    back from a module not yet run fails there: each module, imported first by a fresh
    process, must load (the rule: client, exchange and upstream import only classes
    from each other)."""
    subprocess.run([sys.executable, "-c", f"import bgdeploy.router.{name}"], check=True)


def status_and_doctor(app) -> tuple[str, str]:
    args = ("--config", str(app.config.path))
    st = json.loads(run_bgdeploy(*args, "status", "--json", cwd=app.config.base_dir).stdout)
    doc = json.loads(run_bgdeploy(*args, "doctor", "--json", cwd=app.config.base_dir).stdout)
    (router,) = [c for c in doc["checks"] if c["name"] == "router"]
    return st["router"]["build"], router["message"]


@pytest.mark.slow
def test_status_and_doctor_say_which_build_the_router_runs(served):
    app, _, _ = served
    st, doctor = status_and_doctor(app)
    assert st == EXPECTED
    assert f"router build: {EXPECTED}" in doctor


@pytest.mark.slow
def test_the_switch_on_the_router_process_selects_the_pure_python_build(stack):
    app, _ = stack(router_env={"BGDEPLOY_NO_EXTENSIONS": "1"})
    st, doctor = status_and_doctor(app)
    assert st == "pure-python"
    assert "router build: pure-python" in doctor
