"""Security defaults: loopback binds, a read-only admin listener, private files, no bodies
in logs."""

from __future__ import annotations

import json
import stat

import httpx
import psutil
import pytest

from tests.conftest import run_bgdeploy, write_config
from tests.integration.conftest import serve


@pytest.fixture
def served(stack):
    app, router, _ = serve(stack)
    return app, router


@pytest.mark.slow
def test_router_and_admin_listen_on_loopback_only(served):
    app, router = served
    listening = [
        c.laddr
        for c in psutil.Process(router.proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    ports = {app.config.router.port, app.config.router.admin_port}
    assert {a.port for a in listening} == ports
    assert all(a.ip == "127.0.0.1" for a in listening)


@pytest.mark.slow
def test_admin_listener_is_read_only(served):
    _, router = served
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        resp = httpx.request(method, router.admin_url + "/api/status", content=b"{}")
        assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"


@pytest.mark.slow
def test_state_files_are_private_and_logs_hold_no_bodies(served):
    app, router = served
    secret = "bgdeploy-secret-body-7f3a9c"
    resp = httpx.post(router.url + "/echo", content=secret.encode())
    assert resp.text == secret
    state = app.config.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(app.config.logs_dir.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        if path.is_file():
            if path.suffix in (".log", ".db") or path.name.endswith(".lock"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            if path.suffix == ".log":
                assert secret not in path.read_text(errors="replace"), path
    router_log = app.config.base_dir / "router.log"
    assert secret not in router_log.read_text(errors="replace")


def test_doctor_warns_when_the_router_is_not_on_loopback(tmp_path):
    write_config(tmp_path)
    path = tmp_path / "bgdeploy.toml"
    path.write_text(path.read_text() + '\n[router]\nhost = "0.0.0.0"\n')
    proc = run_bgdeploy("doctor", "--json", cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["router address"]["status"] == "warn"
    assert "reachable from other machines" in checks["router address"]["message"]
