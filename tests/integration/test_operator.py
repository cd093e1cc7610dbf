"""Operator experience: status, doctor catching real faults, history, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from bgdeploy.registry import migrate
from tests.conftest import BOOT_KEYS, STATUS_KEYS, poll_until, run_bgdeploy
from tests.integration.conftest import deploy


def doctor(app) -> tuple[int, dict]:
    proc = run_bgdeploy(
        "--config", str(app.config.path), "doctor", "--json", cwd=app.config.base_dir
    )
    return proc.returncode, {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


@pytest.fixture
def live(stack, tmp_path):
    app, router = stack(daemon_extra='version_file = "VERSION"')
    (tmp_path / "VERSION").write_text("1.0\n")
    first = deploy(app, "1.0")
    return app, router, first.boot_id


@pytest.mark.slow
def test_status_json_matches_the_documented_shape_and_table_shows_it(live, cli):
    app, router, boot_id = live
    res = cli("--config", app.config.path, "status", "--json")
    st = json.loads(res.out)
    assert set(st) == STATUS_KEYS
    assert set(st["active"]) == BOOT_KEYS and st["active"]["boot_id"] == boot_id
    assert st["router"]["url"] == router.url and st["router"]["admin_url"] == router.admin_url
    assert st["state"] == "switched" and st["generation"] == 1
    api = httpx.get(router.admin_url + "/api/status").json()
    # The router adds its control loop's passes and last decision.
    assert set(api) == STATUS_KEYS | {"control_loop"} and api["active"]["boot_id"] == boot_id
    table = cli("--config", app.config.path, "status")
    assert table.code == 0
    for needle in ("generation 1", "switched", boot_id, "1.0", router.url, "lock"):
        assert needle in table.out
    hist = json.loads(cli("--config", app.config.path, "history", "--json").out)
    assert [e["event"] for e in hist][:3] == ["switch", "candidate_ready", "begin"]


@pytest.mark.slow
def test_doctor_passes_on_a_healthy_stack(live):
    app, _, _ = live
    code, checks = doctor(app)
    assert code == 0, checks
    assert all(c["status"] != "fail" for c in checks.values())


@pytest.mark.slow
def test_doctor_catches_a_killed_active_daemon(live):
    app, router, boot_id = live
    router.stop()  # a running router would restart the daemon at once (issue 16)
    os.killpg(app.registry.boot(boot_id).pid, signal.SIGKILL)
    code, checks = doctor(app)
    assert code == 1 and checks["active boot"]["status"] == "fail"
    assert "not running" in checks["active boot"]["message"]
    assert "reconcile" in checks["active boot"]["fix"]


@pytest.mark.slow
def test_doctor_catches_a_stopped_router_and_a_taken_port(live):
    app, router, _ = live
    router.stop()
    code, checks = doctor(app)
    assert code == 1 and checks["router"]["message"] == "the router is not running"
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", app.config.router.port))
    squatter.listen()
    try:
        code, checks = doctor(app)
    finally:
        squatter.close()
    assert code == 1 and f"taken by pid {os.getpid()}" in checks["router"]["message"]


@pytest.mark.slow
def test_doctor_catches_an_orphaned_daemon(live):
    app, router, _ = live
    from bgdeploy.boots import BootProcesses

    router.stop()  # its control loop would stop the orphan before doctor looks
    orphan_id = app.registry.create_boot("default", 1, "0.9")
    BootProcesses(app.config, app.registry).spawn(orphan_id)
    code, checks = doctor(app)
    assert code == 1 and orphan_id in checks["orphans"]["message"]


@pytest.mark.slow
def test_doctor_catches_a_registry_behind_the_migration_head(live):
    app, router, _ = live
    router.stop()
    app.close()
    engine = create_engine(app.config.registry_url)
    _migrate(engine, "0001", down=True)
    try:
        code, checks = doctor(app)
    finally:
        _migrate(engine, "head")  # so that the fixture can read the boots it stops
    assert code == 1 and checks["registry"]["status"] == "fail"
    assert "migration head is" in checks["registry"]["message"]
    assert "bgdeploy init" in checks["registry"]["fix"]


def _migrate(engine, revision, down=False):
    from alembic import command

    cfg = migrate.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.mark.slow
def test_metrics_parse_and_carry_the_documented_series(live):
    app, router, boot_id = live
    for _ in range(5):
        httpx.get(router.url + "/")
    text = httpx.get(router.admin_url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "bgdeploy_requests",
        "bgdeploy_inflight_requests",
        "bgdeploy_upstream_errors",
        "bgdeploy_switches",
        "bgdeploy_route_age_seconds",
        "bgdeploy_open_connections",
        "bgdeploy_active_boot_info",
        "bgdeploy_response_seconds",
    ):
        assert name in families, name
    answered = {
        s.labels["le"]: s.value
        for s in families["bgdeploy_response_seconds"].samples
        if s.labels.get("boot") == boot_id and s.name.endswith("_bucket")
    }
    assert answered["+Inf"] >= 5 and answered["0.001"] <= answered["10"] <= answered["+Inf"]
    ok = [
        s
        for s in families["bgdeploy_requests"].samples
        if s.labels == {"boot": boot_id, "code": "200"} and s.name.endswith("_total")
    ]
    assert ok and ok[0].value >= 5
    active = families["bgdeploy_active_boot_info"].samples
    assert active[0].labels["boot"] == boot_id


@pytest.mark.slow
def test_status_reports_in_flight_requests(live, cli):
    app, router, boot_id = live
    import threading

    t = threading.Thread(target=lambda: httpx.get(router.url + "/slow?ms=3000", timeout=10))
    t.start()
    try:
        poll_until(
            lambda: (
                json.loads(cli("--config", app.config.path, "status", "--json").out)["active"][
                    "inflight"
                ]
                == 1
            ),
            5,
            what="the in-flight request to show",
        )
    finally:
        t.join()


@pytest.mark.slow
def test_status_watch_redraws_in_a_terminal(live):
    """A real terminal (tmux): the table redraws when a deploy changes the registry."""
    import shutil
    import subprocess
    import sys

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed here (make test installs it where apt-get works)")
    app, _, first = live
    session = f"bgdeploy-watch-{os.getpid()}"
    cmd = f"{sys.executable} -m bgdeploy --config {app.config.path} status --watch"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd], check=True
    )

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout

    try:
        poll_until(
            lambda: "generation 1" in screen() and first in screen(), 20, what="the first frame"
        )
        second = deploy(app, "2.0")

        def redrawn() -> bool:
            # One capture per look: the watch may have drawn a frame from the middle of
            # the deploy (generation 2, state starting); wait for the one after it, where
            # the new boot is active and the old one is kept warm as standby.
            frame = screen()
            return "generation 2" in frame and second.boot_id in frame and "standby" in frame

        poll_until(redrawn, 20, what="the table to redraw after the deploy")
        frame = screen()
        assert first in frame and second.boot_id in frame
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        poll_until(
            lambda: (
                subprocess.run(
                    ["tmux", "has-session", "-t", session], capture_output=True
                ).returncode
                != 0
            ),
            10,
            what="status --watch to end on Ctrl-C",
        )
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_dashboard_command_prints_the_admin_url(tmp_path, cli):
    from tests.conftest import write_config

    path = write_config(tmp_path)
    res = cli("--config", path, "dashboard")
    assert res.code == 0 and res.out.strip() == "http://127.0.0.1:47778/"
