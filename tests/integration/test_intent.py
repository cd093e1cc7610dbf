"""Operator intent sticks: each automatic actor (the router's control loop, its exit
watcher's heal, cron's `bgdeploy reconcile`) works toward what the operator recorded.

One test per defect of the intent issue, through the CLI with a real router and real
daemons; each failed on the code before the desired state existed.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from bgdeploy.control.app import App
from bgdeploy.processes import process_matches
from tests.conftest import demo_command, poll_until
from tests.integration.conftest import free_port, make_app

pytestmark = pytest.mark.slow


def status(router) -> dict:  # noqa: ANN001 - RouterRun
    return httpx.get(f"{router.admin_url}/api/status", timeout=5).json()


def wait_passes(router, n: int = 8) -> None:  # noqa: ANN001
    """Let the router's control loop run n more passes (each one could act)."""
    start = status(router)["control_loop"]["passes"]
    poll_until(
        lambda: status(router)["control_loop"]["passes"] >= start + n,
        30,
        interval=0.05,
        what=f"{n} control-loop passes",
    )


def active(app: App):  # noqa: ANN201
    reg = app.registry
    return reg.boot(reg.deployment(app.service).active_boot_id)


def serving(app: App, router, version: str) -> bool:  # noqa: ANN001
    boot = active(app)
    if (
        boot is None
        or boot.version != version
        or not process_matches(boot.pid, boot.pid_create_time)
    ):
        return False
    try:
        r = httpx.get(f"{router.url}/", timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json()["version"] == version


def versions_started(app: App, version: str) -> int:
    return sum(1 for b in app.registry.boots(app.service) if b.version == version)


def test_a_heal_restarts_the_running_version_never_a_quarantined_installed_one(
    stack, tmp_path, cli
):
    """Defect 1: 2.0 was rolled back and quarantined while the version file still says
    2.0; a kill -9 of the good 1.0 restarts 1.0, and 2.0 is never started again."""
    (tmp_path / "VERSION").write_text("1.0\n")
    faults = tmp_path / "faults-{version}.json"
    (tmp_path / "faults-2.0.json").write_text(json.dumps({"fail_health_after": 0.3}))
    app, router = stack(
        flags=["--fault-file", str(faults)],
        daemon_extra='version_file = "VERSION"',
        interval=0.2,
        stable=10,
    )
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy").code == 0
    (tmp_path / "VERSION").write_text("2.0\n")
    assert cli("--config", cfg, "deploy").code == 0  # healthy at first, then failing
    poll_until(
        lambda: (
            "2.0" in app.registry.quarantined_versions(app.service)
            and app.registry.deployment(app.service).state == "idle"
        ),
        30,
        what="2.0 rolled back by the control loop and quarantined",
    )
    assert active(app).version == "1.0"
    assert versions_started(app, "2.0") == 1

    killed = active(app)
    os.killpg(killed.pid, signal.SIGKILL)
    poll_until(
        lambda: active(app).boot_id != killed.boot_id and serving(app, router, "1.0"),
        30,
        what="1.0 restarted by the heal",
    )
    poll_until(lambda: app.registry.deployment(app.service).state == "idle", 30, what="idle")
    wait_passes(router)
    assert serving(app, router, "1.0")
    assert versions_started(app, "2.0") == 1, "the quarantined 2.0 was started again"
    st = status(router)
    assert "2.0 is quarantined" in st["decision"], st["decision"]


def test_a_manual_rollback_after_a_finalize_sticks_until_a_new_installed_version(
    stack, tmp_path, cli
):
    """Defect 2: `rollback --reason` after a finalize is not undone by the control loop;
    the reason is in history and status; a new installed version ends it."""
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"', interval=0.2, stable=2)
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy").code == 0
    (tmp_path / "VERSION").write_text("2.0\n")
    assert cli("--config", cfg, "deploy").code == 0
    poll_until(lambda: app.registry.deployment(app.service).state == "idle", 30, what="finalize")

    r = cli("--config", cfg, "rollback", "--reason", "bad numbers")
    assert r.code == 0, r.err
    assert serving(app, router, "1.0")
    wait_passes(router, 10)
    assert serving(app, router, "1.0"), "the control loop undid the operator's rollback"
    assert versions_started(app, "2.0") == 1
    st = json.loads(cli("--config", cfg, "status", "--json").out)
    assert st["intent"]["mode"] == "rolled_back" and st["intent"]["reason"] == "bad numbers"
    assert "2.0" in st["quarantined_versions"]
    assert "rolled back by operator (bad numbers)" in st["decision"]
    events = json.loads(cli("--config", cfg, "history", "--json").out)
    assert any("bad numbers" in (e["reason"] or "") for e in events if e["event"] == "begin")
    assert any(e["event"] == "operator_rollback" for e in events)

    (tmp_path / "VERSION").write_text("3.0\n")  # a new installed version ends it
    poll_until(lambda: serving(app, router, "3.0"), 30, what="3.0 auto-deployed")
    assert app.registry.intents.read(app.service).mode == "installed"


def test_deploy_version_pins_until_unpin(stack, tmp_path, cli):
    """Defect 3: `deploy --version 2.0` while the version file says 1.0 stays; `status`
    shows the pin; `unpin` lets the control loop deploy 1.0 again."""
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"', interval=0.2, stable=2)
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy").code == 0
    assert cli("--config", cfg, "deploy", "--version", "2.0").code == 0
    wait_passes(router, 12)
    assert serving(app, router, "2.0"), "an automatic actor deployed over the pin"
    assert versions_started(app, "1.0") == 1
    st = json.loads(cli("--config", cfg, "status", "--json").out)
    assert (st["intent"]["mode"], st["intent"]["version"]) == ("pinned", "2.0")
    assert "pinned by bgdeploy deploy --version 2.0" in cli("--config", cfg, "status").out

    r = cli("--config", cfg, "unpin")
    assert r.code == 0 and "follows the installed version (1.0)" in r.out, r.out
    poll_until(lambda: serving(app, router, "1.0"), 30, what="1.0 deployed after unpin")


def test_down_is_not_undone_by_cron_reconcile(stack, tmp_path, cli):
    """Defect 4: after `down`, cron's `reconcile` starts nothing and says why (exit 0);
    `doctor` passes, saying the service is down by operator."""
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"', interval=0.2, stable=2)
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy").code == 0
    assert cli("--config", cfg, "down").code == 0
    for args in (["reconcile"], ["reconcile", "--dry-run"]):
        r = cli("--config", cfg, *args)
        assert r.code == 0 and "down by operator" in r.out, (args, r.out)
    assert not app.registry.boots(app.service, live_only=True)
    assert all(
        not process_matches(b.pid, b.pid_create_time) for b in app.registry.boots(app.service)
    )
    doc = cli("--config", cfg, "doctor")
    assert doc.code == 0 and "down by operator" in doc.out, doc.out


def test_up_with_a_changed_config_reloads_the_running_router(stack, tmp_path, cli):
    """Defect 5: `up` with a misspelt daemon.command, the file fixed, `up` again: the
    running router reloads onto the fixed file and says so, so its own heal later
    starts the daemon with the fixed command."""
    (tmp_path / "VERSION").write_text("1.0\n")
    good = demo_command("--boot-id", "{boot_id}")
    bad = [good[0], str(tmp_path / "no_such_daemon.py"), *good[2:]]
    app, router = stack(
        command=bad,
        daemon_extra='version_file = "VERSION"',
        interval=0.2,
        stable=2,
        startup=5.0,
    )
    cfg = Path(app.config.path)
    assert cli("--config", cfg, "deploy").code == 1  # the misspelt command
    cfg.write_text(cfg.read_text().replace(bad[1], good[1]))
    st = json.loads(cli("--config", cfg, "status", "--json").out)
    assert st["router"]["config_current"] is False
    r = cli("--config", cfg, "up")
    assert r.code == 0, r.err
    assert "reloaded: bgdeploy.toml changed" in r.out, r.out
    assert serving(app, router, "1.0")
    st = json.loads(cli("--config", cfg, "status", "--json").out)
    assert st["router"]["config_current"] is True

    killed = active(app)
    os.killpg(killed.pid, signal.SIGKILL)  # the router's heal uses its (new) config
    poll_until(
        lambda: active(app).boot_id != killed.boot_id and serving(app, router, "1.0"),
        30,
        what="the router's heal with the fixed command",
    )


def test_a_lifecycle_command_without_a_router_says_nothing_serves(tmp_path, cli):
    """Defect 6: `deploy` and `rollback` with no router work on the registry but say,
    in one line, that nothing serves the fixed address, and how to fix it."""
    port = free_port()
    app = make_app(tmp_path, extra=f"\n[router]\nport = {port}\nadmin_port = {free_port()}\n")
    cfg = str(app.config.path)
    try:
        r = cli("--config", cfg, "deploy", "--version", "1.0")
        assert r.code == 0
        assert f"Nothing serves 127.0.0.1:{port}" in r.err and "bgdeploy up" in r.err, r.err
        assert cli("--config", cfg, "deploy", "--version", "2.0").code == 0
        r = cli("--config", cfg, "rollback", "--reason", "test")
        assert r.code == 0 and f"Nothing serves 127.0.0.1:{port}" in r.err, r.err
    finally:
        cli("--config", cfg, "down")
        app.close()


def test_an_idle_loop_ticks_quietly_and_still_follows_the_installed_version_and_a_pin(
    stack, tmp_path, cli
):
    """Idle, the control loop's ticks read nothing (quiet passes: an idle router costs
    little CPU) while the registry and the version file stay the same; a new installed
    version, then an operator's pin, are acted on all the same, and it goes quiet again."""
    (tmp_path / "VERSION").write_text("1.0\n")
    app, router = stack(daemon_extra='version_file = "VERSION"', interval=0.2, stable=2)
    cfg = str(app.config.path)
    assert cli("--config", cfg, "deploy").code == 0
    poll_until(lambda: app.registry.deployment(app.service).state == "idle", 30, what="idle")

    def quiet() -> int:
        return status(router)["control_loop"]["quiet_passes"]

    start = quiet()
    poll_until(lambda: quiet() >= start + 5, 30, interval=0.05, what="5 quiet ticks while idle")

    (tmp_path / "VERSION").write_text("2.0\n")
    poll_until(lambda: serving(app, router, "2.0"), 30, what="2.0 auto-deployed")
    poll_until(lambda: app.registry.deployment(app.service).state == "idle", 30, what="idle")
    start = quiet()
    poll_until(lambda: quiet() >= start + 5, 30, interval=0.05, what="quiet again after it")

    assert cli("--config", cfg, "deploy", "--version", "1.0").code == 0  # a pin
    wait_passes(router, 12)
    assert serving(app, router, "1.0"), "a quiet tick undid the operator's pin"
    st = status(router)
    assert st["control_loop"]["passes"] > st["control_loop"]["quiet_passes"]
